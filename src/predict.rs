//! Applying a saved model to a table: the `predict` and `eval` commands.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::data::encode::{decode, Block, ClassMap, LabelUse, Origin};
use crate::error::{Error, Result};
use crate::io::atomic::{OutputSet, Request};
use crate::io::table::{self, Format, TableOutput};
use crate::metrics::curves::{Calibration, Curves, Roc, ScoreKind, CALIBRATION_BINS};
use crate::metrics::{EvalPartial, Metrics};
use crate::model::file::ModelFile;
use crate::model::Model;
use crate::spec::{ModelKind, OnMissing};

/// A loaded model ready to score tables.
pub struct Scorer {
    path: std::path::PathBuf,
    file: ModelFile,
    model: Box<dyn Model>,
    /// The probability above which a binary classifier predicts its
    /// second class.
    threshold: f64,
}

impl Scorer {
    /// How a CSV input is typed for this model: its numeric features (and
    /// a regression's label) as numbers, every other column as text.
    pub fn csv_columns(&self) -> table::CsvColumns {
        let f = &self.file.features;
        let mut numeric: Vec<String> = f.numeric.iter().map(|n| n.name.clone()).collect();
        if self.model.kind() == crate::spec::ModelKind::Linear {
            numeric.push(f.label.clone());
        }
        table::CsvColumns::Numeric(numeric)
    }

    /// Loads a model file.
    pub fn load(path: &std::path::Path) -> Result<Scorer> {
        let file = ModelFile::load(path)?;
        let model = file.load_model(path)?;
        Ok(Scorer {
            path: path.to_path_buf(),
            file,
            model,
            threshold: 0.5,
        })
    }

    /// Sets the decision threshold (`--threshold`): a binary classifier
    /// (logistic, or a network with a logistic head) predicts its second
    /// class where the probability is above `t`, strictly between 0 and 1.
    pub fn set_threshold(&mut self, t: f64) -> Result<()> {
        let usage = |message: String| Error::Usage {
            option: "--threshold".into(),
            message,
        };
        if self.model.kind().prediction_kind() != crate::spec::ModelKind::Logistic {
            return Err(usage(format!(
                "applies to binary classifiers, which output a probability; this model is {}",
                self.model.kind().name()
            )));
        }
        if !(t > 0.0 && t < 1.0) {
            return Err(usage(format!(
                "{t} is not a probability strictly between 0 and 1"
            )));
        }
        self.threshold = t;
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &dyn Model {
        self.model.as_ref()
    }

    fn classes(&self) -> Vec<String> {
        self.file.features.classes.clone().unwrap_or_else(|| {
            (0..self.model.outputs().max(2))
                .map(|i| i.to_string())
                .collect()
        })
    }

    /// The prediction columns this model adds.
    pub fn output_fields(&self) -> Vec<Field> {
        output_fields(self.model.kind(), &self.classes())
    }

    /// Decodes a batch as the model was trained to; a bad value's hint
    /// speaks of the model's policy, not of a pipeline key.
    fn decode(&self, batch: &RecordBatch, label: LabelUse, origin: &Origin) -> Result<Block> {
        decode(batch, &self.file.features, label, origin).map_err(|e| match e {
            Error::MissingValue { location, what, .. } => Error::MissingValue {
                location,
                what,
                hint: format!(
                    "the model was trained with data.on_missing = \"{}\", which decides how it treats such values: clean the input, or retrain with another policy",
                    self.file.features.on_missing.name()
                ),
            },
            other => other,
        })
    }

    /// Scores a batch: one column per output field, null where a row was
    /// skipped under `on_missing = "skip_row"`.
    pub fn score(&self, batch: &RecordBatch, origin: &Origin) -> Result<Vec<ArrayRef>> {
        let block = self.decode(batch, LabelUse::Skip, origin)?;
        let n = batch.num_rows();
        let k = self.model.outputs();
        let mut cols = Predictions::new(self.model.kind(), self.classes(), k, n)
            .with_threshold(self.threshold);
        let mut out = vec![0.0; k];
        let mut kept = block
            .file_row
            .iter()
            .map(|r| (r - origin.first_row) as usize)
            .peekable();
        let mut bi = 0;
        for i in 0..n {
            if kept.peek() != Some(&i) {
                cols.push(None);
                continue;
            }
            kept.next();
            if !self.model.predict_row(&block, bi, &mut out) {
                return Err(Error::Model {
                    path: self.path.clone(),
                    message: format!(
                        "its output for {}, row {} is not finite: the weights overflow on this row",
                        origin.file.display(),
                        origin.first_row + i as u64
                    ),
                });
            }
            bi += 1;
            cols.push(Some(&out));
        }
        Ok(cols.finish())
    }

    /// Evaluates the model on a labelled batch.
    pub fn evaluate(
        &self,
        batch: &RecordBatch,
        origin: &Origin,
        partial: &mut EvalPartial,
    ) -> Result<()> {
        let spec = &self.file.features;
        let map = spec.classes.as_ref().map(|c| ClassMap::new(c));
        let label = match (&map, self.model.kind()) {
            (_, ModelKind::Linear) | (None, _) => LabelUse::Value,
            (Some(m), _) => LabelUse::Classes(m),
        };
        let block = self.decode(batch, label, origin)?;
        partial.add_block(self.model.as_ref(), &block);
        Ok(())
    }
}

/// `tidemill predict`: scores `input` into `output`, keeping the `keep`
/// columns of the input in front of the predictions. The output is
/// prepared before anything is read (an unwritable path fails at once) and
/// appears only once it is complete; it may not be the model or the input.
pub fn predict(
    model: &std::path::Path,
    input: &str,
    output: &str,
    format: Option<Format>,
    keep: &[String],
    threshold: Option<f64>,
) -> Result<u64> {
    let out_path = std::path::Path::new(output);
    let mut outputs = OutputSet::prepare(
        &[Request::file_or_stdout("--output", out_path)],
        &[("--model", model), ("--input", std::path::Path::new(input))],
    )?;
    // Refused before anything is read (stdin may be a live producer).
    let format = match format {
        Some(f) => f,
        None => Format::for_output("--output", output)?,
    };
    let mut scorer = Scorer::load(model)?;
    if let Some(t) = threshold {
        scorer.set_threshold(t)?;
    }
    let source = table::open(input, &scorer.csv_columns())?;
    let in_schema = source.schema.clone();
    // Checked here too: an input without rows has no batch to fail on.
    let features = &scorer.file.features;
    let used = features.feature_columns();
    if let Some(name) = used.iter().find(|n| in_schema.field_with_name(n).is_err()) {
        return Err(Error::missing_column(
            std::path::Path::new(input),
            name,
            &in_schema,
        ));
    }
    let mut fields = Vec::new();
    let mut keep_idx = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if let Some(k) = keep.iter().find(|k| !seen.insert(k.as_str())) {
        return Err(Error::PipelineValue {
            key: "--keep".into(),
            message: format!("'{k}' is listed twice"),
        });
    }
    for k in keep {
        let i = in_schema
            .index_of(k)
            .map_err(|_| Error::missing_column(input, k, &in_schema))?;
        keep_idx.push(i);
        fields.push(in_schema.field(i).clone());
    }
    for f in scorer.output_fields() {
        if keep.contains(f.name()) {
            return Err(Error::PipelineValue {
                key: "--keep".into(),
                message: format!("'{}' clashes with a prediction column", f.name()),
            });
        }
        fields.push(f);
    }
    if scorer.file.features.on_missing == OnMissing::SkipRow {
        tracing::info!("rows with missing values get null predictions (model trained with on_missing = skip_row)");
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let mut out = TableOutput::create(&outputs.outputs()[0], format, Arc::clone(&schema))?;
    let mut rows = 0u64;
    for item in source {
        let (batch, origin) = item?;
        let o = Origin {
            file: &origin.path,
            row_group: origin.row_group,
            first_row: origin.first_row,
        };
        let mut cols: Vec<ArrayRef> = keep_idx
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        cols.extend(scorer.score(&batch, &o)?);
        let b = RecordBatch::try_new(Arc::clone(&schema), cols).map_err(|e| Error::Ipc {
            path: output.into(),
            message: e.to_string(),
        })?;
        out.write(&b)?;
        rows += batch.num_rows() as u64;
    }
    out.finish()?;
    outputs.commit()?;
    Ok(rows)
}

/// `tidemill eval`: metrics of a model on a labelled table.
pub fn evaluate(model: &std::path::Path, input: &str) -> Result<Metrics> {
    let scorer = Scorer::load(model)?;
    let partial = evaluate_partial(&scorer, input)?;
    finish(&scorer, partial, input)
}

/// `tidemill eval --curves`: metrics of a binary classifier on a
/// labelled table, and its ROC curve and calibration table written to
/// `curves` (a `.json` file, prepared before the model is read).
pub fn evaluate_with_curves(
    model: &std::path::Path,
    input: &str,
    curves: &std::path::Path,
) -> Result<Metrics> {
    let is_json = curves
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if !is_json {
        return Err(Error::Usage {
            option: "--curves".into(),
            message: format!(
                "{}: the curves are written as JSON: name the file .json",
                curves.display()
            ),
        });
    }
    let mut outputs = OutputSet::prepare(
        &[Request::file("--curves", curves)],
        &[("--model", model), ("--input", std::path::Path::new(input))],
    )?;
    let scorer = Scorer::load(model)?;
    let kind = scorer.model.kind().prediction_kind();
    let score = match kind {
        ModelKind::Logistic => ScoreKind::Probability,
        ModelKind::Hinge => ScoreKind::DecisionValue,
        other => {
            return Err(Error::Usage {
                option: "--curves".into(),
                message: format!(
                "ROC curves and calibration are for binary classifiers (logistic, hinge); {} is {}",
                model.display(),
                if other == ModelKind::Linear {
                    "a regression model".to_string()
                } else {
                    format!(
                        "a {}-class {} model",
                        scorer.classes().len(),
                        scorer.model.kind().name()
                    )
                }
            ),
            })
        }
    };
    let partial = evaluate_partial(&scorer, input)?;
    let scores = partial.scores.clone();
    let metrics = finish(&scorer, partial, input)?;
    let roc = Roc::of(&scores).ok_or_else(|| Error::Usage {
        option: "--curves".into(),
        message: format!(
            "{input}: all {} labelled rows are of one class: a ROC curve needs both",
            scores.len()
        ),
    })?;
    let positives = scores.iter().filter(|s| s.1).count() as u64;
    let file = Curves {
        model: model.display().to_string(),
        input: input.to_string(),
        kind: scorer.model.kind().name().into(),
        score,
        positive_class: scorer
            .classes()
            .get(1)
            .cloned()
            .unwrap_or_else(|| "1".into()),
        rows: scores.len() as u64,
        positives,
        negatives: scores.len() as u64 - positives,
        auc: roc.area(),
        roc,
        calibration: (score == ScoreKind::Probability)
            .then(|| Calibration::of(&scores, CALIBRATION_BINS)),
    };
    let text = serde_json::to_string(&file)
        .map_err(|e| Error::Internal(format!("curves as JSON: {e}")))?;
    for o in outputs.outputs() {
        o.write_all(text.as_bytes())?;
        o.write_all(b"\n")?;
    }
    outputs.commit()?;
    Ok(metrics)
}

/// Every row of `input` scored by `scorer`, as an evaluation partial.
fn evaluate_partial(scorer: &Scorer, input: &str) -> Result<EvalPartial> {
    let mut partial = EvalPartial::default();
    for item in table::open(input, &scorer.csv_columns())? {
        let (batch, origin) = item?;
        let o = Origin {
            file: &origin.path,
            row_group: origin.row_group,
            first_row: origin.first_row,
        };
        scorer.evaluate(&batch, &o, &mut partial)?;
    }
    if partial.rows == 0 {
        return Err(Error::NoRows {
            what: input.to_string(),
            purpose: "evaluate".into(),
        });
    }
    Ok(partial)
}

/// The finished metrics of `partial`.
fn finish(scorer: &Scorer, partial: EvalPartial, input: &str) -> Result<Metrics> {
    partial
        .finish(scorer.model.kind())
        .map_err(|message| Error::Model {
            path: scorer.path.clone(),
            message: format!("on {input}: {message}"),
        })
}

/// The prediction columns of a `kind` model with these class names (as
/// `predict` writes them, and `stream --predictions-out`).
pub fn output_fields(kind: ModelKind, classes: &[String]) -> Vec<Field> {
    match kind.prediction_kind() {
        ModelKind::Linear => vec![Field::new("prediction", DataType::Float64, true)],
        ModelKind::Logistic => vec![
            Field::new("prediction", DataType::Utf8, true),
            Field::new("probability", DataType::Float64, true),
        ],
        ModelKind::Hinge => vec![
            Field::new("prediction", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ],
        ModelKind::Softmax | ModelKind::GaussianNb | ModelKind::MultinomialNb => {
            std::iter::once(Field::new("prediction", DataType::Utf8, true))
                .chain(
                    classes
                        .iter()
                        .map(|c| Field::new(format!("probability_{c}"), DataType::Float64, true)),
                )
                .collect()
        }
    }
}

/// Builds the [`output_fields`] columns from each row's
/// [`crate::model::Model::predict_row`] outputs (`None`: a skipped row,
/// null).
pub struct Predictions {
    kind: ModelKind,
    threshold: f64,
    classes: Vec<String>,
    label: StringBuilder,
    values: Vec<Float64Builder>,
}

impl Predictions {
    /// Columns for `n` rows of a `kind` model with `k` outputs.
    pub fn new(kind: ModelKind, classes: Vec<String>, k: usize, n: usize) -> Predictions {
        let kind = kind.prediction_kind();
        let values = match kind {
            ModelKind::Softmax => k,
            _ => 1,
        };
        Predictions {
            kind,
            threshold: 0.5,
            classes,
            label: StringBuilder::new(),
            values: (0..values)
                .map(|_| Float64Builder::with_capacity(n))
                .collect(),
        }
    }

    /// The probability above which a binary classifier's row is its second
    /// class (0.5 unless set).
    pub fn with_threshold(mut self, threshold: f64) -> Predictions {
        self.threshold = threshold;
        self
    }

    /// Adds a row's outputs.
    pub fn push(&mut self, out: Option<&[f64]>) {
        let Some(out) = out else {
            self.label.append_null();
            self.values.iter_mut().for_each(|v| v.append_null());
            return;
        };
        let class = |i: usize| {
            self.classes
                .get(i)
                .cloned()
                .unwrap_or_else(|| i.to_string())
        };
        match self.kind {
            ModelKind::Linear => self.values[0].append_value(out[0]),
            ModelKind::Logistic => {
                self.label
                    .append_value(class(usize::from(out[0] > self.threshold)));
                self.values[0].append_value(out[0]);
            }
            ModelKind::Hinge => {
                self.label.append_value(class(usize::from(out[0] > 0.0)));
                self.values[0].append_value(out[0]);
            }
            ModelKind::Softmax | ModelKind::GaussianNb | ModelKind::MultinomialNb => {
                let best = (0..out.len()).fold(0, |b, j| if out[j] > out[b] { j } else { b });
                self.label.append_value(class(best));
                for (v, &p) in self.values.iter_mut().zip(out) {
                    v.append_value(p);
                }
            }
        }
    }

    /// The columns.
    pub fn finish(mut self) -> Vec<ArrayRef> {
        let mut cols: Vec<ArrayRef> = Vec::new();
        if self.kind != ModelKind::Linear {
            cols.push(Arc::new(self.label.finish()));
        }
        for mut v in self.values {
            cols.push(Arc::new(v.finish()));
        }
        cols
    }
}
