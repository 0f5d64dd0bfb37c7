//! Units: fixed slices of rows defined by the data (row groups, cut into
//! parts of at most `max_unit_rows`), never by the worker count; and the
//! reader of one unit's columns.

use std::fs::File;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use super::files::{ParquetFile, Source};
use crate::error::{Error, Result};
use crate::io::guard;

/// A fixed slice of rows of one row group of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Position in the plan (0-based, dense).
    pub id: usize,
    /// Index of the file in the source.
    pub file: usize,
    /// Row group inside the file.
    pub row_group: usize,
    /// First row of the unit inside its row group.
    pub offset: usize,
    /// Rows in the unit.
    pub rows: usize,
    /// First row of the unit inside its file.
    pub file_row: u64,
}

/// Cuts a source into units, in file / row-group order.
pub fn cut(source: &Source, max_unit_rows: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (fi, file) in source.files.iter().enumerate() {
        let mut file_row = 0u64;
        for (rg, rows) in file.row_group_rows().into_iter().enumerate() {
            let parts = rows.div_ceil(max_unit_rows.max(1)).max(1);
            for p in 0..parts {
                // Balanced parts: sizes differ by at most one row.
                let start = p * rows / parts;
                let end = (p + 1) * rows / parts;
                if end > start {
                    units.push(Unit {
                        id: units.len(),
                        file: fi,
                        row_group: rg,
                        offset: start,
                        rows: end - start,
                        file_row: file_row + start as u64,
                    });
                }
            }
            file_row += rows as u64;
        }
    }
    units
}

/// A unit's batches, each decoded under [`guard::untrusted`]: a decoder
/// panic on malformed pages becomes an error, and ends the reader.
struct UnitReader {
    inner: ParquetRecordBatchReader,
    failed: bool,
}

impl Iterator for UnitReader {
    type Item = std::result::Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match guard::untrusted(|| self.inner.next()) {
            Ok(next) => next?.map_err(|e| e.to_string()),
            Err(msg) => Err(msg),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

/// A reader over the rows of `unit` of file `pf`, decoding only `columns`,
/// in batches of at most `batch_rows` rows.
fn file_reader(
    pf: &ParquetFile,
    unit: &Unit,
    columns: &[String],
    batch_rows: usize,
) -> Result<UnitReader> {
    let file = File::open(&pf.path).map_err(|e| Error::io(&pf.path, e))?;
    let schema = pf.schema();
    let mut indices = Vec::with_capacity(columns.len());
    for c in columns {
        pf.column_type(c)?;
        indices.push(
            schema
                .index_of(c)
                .map_err(|e| Error::parquet(&pf.path, e))?,
        );
    }
    let mask = ProjectionMask::roots(pf.metadata.parquet_schema(), indices);
    let rg_rows = pf.row_group_rows()[unit.row_group];
    let mut selectors = Vec::new();
    if unit.offset > 0 {
        selectors.push(RowSelector::skip(unit.offset));
    }
    selectors.push(RowSelector::select(unit.rows));
    let rest = rg_rows - unit.offset - unit.rows;
    if rest > 0 {
        selectors.push(RowSelector::skip(rest));
    }
    let bad = |e: &dyn std::fmt::Display| {
        Error::parquet(&pf.path, format!("row group {}: {e}", unit.row_group))
    };
    let inner = guard::untrusted(|| {
        ParquetRecordBatchReaderBuilder::new_with_metadata(file, pf.metadata.clone())
            .with_row_groups(vec![unit.row_group])
            .with_projection(mask)
            .with_row_selection(RowSelection::from(selectors))
            .with_batch_size(batch_rows.max(1))
            .build()
    })
    .map_err(|e| bad(&e))?
    .map_err(|e| bad(&e))?;
    Ok(UnitReader {
        inner,
        failed: false,
    })
}

/// The error for a unit whose columns failed to decode with `e`, naming
/// the column where it can: each column is read again on its own, and the
/// first that fails is the one with the corrupt page (a checksum mismatch,
/// a bad compressed block, a truncated chunk).
pub fn read_error(
    pf: &ParquetFile,
    unit: &Unit,
    columns: &[String],
    e: impl std::fmt::Display,
) -> Error {
    let fails_alone = |c: &String| match file_reader(pf, unit, std::slice::from_ref(c), 8192) {
        Ok(mut r) => r.any(|b| b.is_err()),
        Err(_) => true,
    };
    match columns.iter().find(|c| fails_alone(c)) {
        Some(c) => Error::parquet(
            &pf.path,
            format!("row group {}, column '{c}': {e}", unit.row_group),
        ),
        None => Error::parquet(&pf.path, format!("row group {}: {e}", unit.row_group)),
    }
}

/// A unit's batches with errors in their final form: a failed decode names
/// the file, row group and, where it can, the column ([`read_error`]); a
/// unit that ends short of its rows is an error too (a truncated file).
pub struct UnitBatches {
    file: Arc<ParquetFile>,
    unit: Unit,
    columns: Vec<String>,
    inner: UnitReader,
    read: usize,
    done: bool,
}

impl UnitBatches {
    /// Opens `unit` of `file`, decoding only `columns`, in batches of at
    /// most `batch_rows` rows.
    pub fn open(
        file: &Arc<ParquetFile>,
        unit: &Unit,
        columns: &[String],
        batch_rows: usize,
    ) -> Result<UnitBatches> {
        Ok(UnitBatches {
            inner: file_reader(file, unit, columns, batch_rows)?,
            file: Arc::clone(file),
            unit: *unit,
            columns: columns.to_vec(),
            read: 0,
            done: false,
        })
    }
}

impl Iterator for UnitBatches {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.done {
            return None;
        }
        let item = match self.inner.next() {
            Some(Ok(batch)) => {
                self.read += batch.num_rows();
                return Some(Ok(batch));
            }
            Some(Err(e)) => Err(read_error(&self.file, &self.unit, &self.columns, e)),
            None if self.read == self.unit.rows => {
                self.done = true;
                return None;
            }
            None => Err(Error::parquet(
                &self.file.path,
                format!(
                    "row group {}: expected {} rows, decoded {} (truncated file?)",
                    self.unit.row_group, self.unit.rows, self.read
                ),
            )),
        };
        self.done = true;
        Some(item)
    }
}
