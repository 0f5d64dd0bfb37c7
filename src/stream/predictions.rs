//! `stream --predictions-out`: every row's progressive score (made by the
//! model before it trained on the row), with the input columns named by
//! `--keep`, in input order, as an Arrow IPC stream (stdout: `-`) or a
//! Parquet / Arrow IPC file. A file appears when the stream ends (or
//! stops); stdout gets each step's rows as soon as every worker's are in.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::engine::Scores;
use crate::error::{Error, Result};
use crate::io::atomic::{OutputSet, Request};
use crate::io::table::{Format, TableOutput};
use crate::predict::{output_fields, Predictions};
use crate::spec::ModelKind;

/// Where the leader writes predictions.
pub struct PredictionSink {
    outputs: Option<OutputSet>,
    table: Option<TableOutput>,
    schema: SchemaRef,
    keep: Vec<usize>,
    kind: ModelKind,
    classes: Vec<String>,
    k: usize,
    workers: usize,
    /// The kept columns of rows cut but not yet written, in order.
    pending: VecDeque<RecordBatch>,
    next_step: u64,
    path: String,
    /// Rows written.
    pub rows: u64,
}

impl PredictionSink {
    /// Prepares `path` (`-`: stdout) for the predictions of a `kind` model
    /// with `classes` and `k` outputs, keeping the `keep` columns of an
    /// input with `input` schema; the first step is `first_step`.
    #[allow(clippy::too_many_arguments)] // the output, the model, the input
    pub fn open(
        path: &str,
        keep: &[String],
        input: &Schema,
        input_path: &str,
        kind: ModelKind,
        classes: Vec<String>,
        k: usize,
        workers: usize,
        first_step: u64,
    ) -> Result<PredictionSink> {
        let mut seen = std::collections::HashSet::new();
        let mut fields = Vec::new();
        let mut idx = Vec::new();
        for name in keep {
            if !seen.insert(name.as_str()) {
                return Err(Error::Usage {
                    option: "--keep".into(),
                    message: format!("'{name}' is listed twice"),
                });
            }
            let i = input
                .index_of(name)
                .map_err(|_| Error::missing_column(input_path, name, input))?;
            idx.push(i);
            fields.push(input.field(i).clone());
        }
        for f in output_fields(kind, &classes) {
            if keep.contains(f.name()) {
                return Err(Error::Usage {
                    option: "--keep".into(),
                    message: format!("'{}' clashes with a prediction column", f.name()),
                });
            }
            fields.push(f);
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let inputs: Vec<(&str, &Path)> = match input_path {
            "-" => Vec::new(),
            p => vec![("--input", Path::new(p))],
        };
        let mut outputs = OutputSet::prepare(
            &[Request::file_or_stdout(
                "--predictions-out",
                Path::new(path),
            )],
            &inputs,
        )?;
        let table = TableOutput::create(
            &outputs.outputs()[0],
            Format::for_output("--predictions-out", path)?,
            Arc::clone(&schema),
        )?;
        Ok(PredictionSink {
            outputs: Some(outputs),
            table: Some(table),
            schema,
            keep: idx,
            kind,
            classes,
            k,
            workers,
            pending: VecDeque::new(),
            next_step: first_step,
            path: path.to_string(),
            rows: 0,
        })
    }

    /// Rows the leader cut into a batch, in order.
    pub fn cut(&mut self, batches: &[RecordBatch]) -> Result<()> {
        for b in batches {
            let kept = b.project(&self.keep).map_err(|e| {
                Error::Internal(format!("cannot keep the --keep columns of the input: {e}"))
            })?;
            self.pending.push_back(kept);
        }
        Ok(())
    }

    /// Writes every step whose predictions are all in, in step order.
    pub fn drain(&mut self, scores: &mut BTreeMap<u64, Vec<Scores>>) -> Result<()> {
        loop {
            let complete = scores
                .get(&self.next_step)
                .is_some_and(|v| v.len() == self.workers);
            if !complete {
                return Ok(());
            }
            let Some(mut msgs) = scores.remove(&self.next_step) else {
                return Ok(());
            };
            self.next_step += 1;
            msgs.sort_by_key(|m| m.from);
            let n: usize = msgs.iter().map(|m| m.rows.len()).sum();
            if n == 0 {
                continue;
            }
            let kept = self.take(n)?;
            let mut p = Predictions::new(self.kind, self.classes.clone(), self.k, n);
            for row in msgs.iter().flat_map(|m| m.rows.iter()) {
                p.push(row.as_deref());
            }
            let mut cols: Vec<ArrayRef> = kept.columns().to_vec();
            cols.extend(p.finish());
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), cols).map_err(|e| {
                Error::Internal(format!("cannot assemble a batch of predictions: {e}"))
            })?;
            if let Some(t) = self.table.as_mut() {
                t.write(&batch)?;
                t.flush()?;
            }
            self.rows += n as u64;
        }
    }

    /// The next `n` rows of the kept columns.
    fn take(&mut self, n: usize) -> Result<RecordBatch> {
        let mut parts = Vec::new();
        let mut have = 0;
        while have < n {
            let Some(b) = self.pending.pop_front() else {
                return Err(Error::Internal(format!(
                    "{} predictions came for {have} rows cut",
                    n
                )));
            };
            let want = n - have;
            if b.num_rows() > want {
                self.pending.push_front(b.slice(want, b.num_rows() - want));
                parts.push(b.slice(0, want));
                have = n;
            } else {
                have += b.num_rows();
                parts.push(b);
            }
        }
        let schema = parts
            .first()
            .map_or_else(|| Arc::new(Schema::empty()), |b| b.schema());
        arrow::compute::concat_batches(&schema, &parts).map_err(|e| {
            Error::Internal(format!(
                "cannot put the kept columns together for {}: {e}",
                self.path
            ))
        })
    }

    /// Finishes the table and commits the output.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(t) = self.table.take() {
            t.finish()?;
        }
        if let Some(o) = self.outputs.take() {
            o.commit()?;
        }
        Ok(self.rows)
    }
}
