//! The job plan: everything every worker must agree on before the dataflow
//! starts, computed identically in every process from the pipeline and the
//! files' footers. It sits above [`crate::spec`] and [`crate::source`] and
//! below everything that reads rows.

pub mod features;

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};

use crate::error::{Error, Result};
use crate::source::files::Source;
use crate::source::parquet::ParquetSource;
use crate::source::staged::Staged;
use crate::spec::{ModelKind, OnMissing, Pipeline, ValidationSpec};
use features::{is_numeric_type, is_token_type, Cross, FeatureSpec, NumericFeature};

/// A checked, resolved training job.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Training data.
    pub train: Arc<ParquetSource>,
    /// Validation data from separate files.
    pub validation_files: Option<Arc<ParquetSource>>,
    /// Fraction of training rows held out, if validation is by fraction.
    pub validation_fraction: Option<Holdout>,
    /// The feature spec before statistics (no centring, scaling or classes).
    pub draft: FeatureSpec,
    /// True if the label column holds strings.
    pub string_label: bool,
    /// Parquet copies of inputs that are not Parquet files (`-`, Arrow
    /// IPC, CSV), held as long as the plan.
    pub staged: Arc<Staged>,
}

impl Plan {
    /// Resolves files, columns and types; inputs that are not Parquet
    /// files are copied into Parquet first ([`Staged`]).
    pub fn new(pipeline: Pipeline) -> Result<Plan> {
        let d = &pipeline.data;
        let mut staged = Staged::default();
        let mut text = d.categorical.clone();
        text.extend(d.key.iter().cloned());
        let train_paths = staged
            .stage(&d.train, "data.train", &text)
            .map_err(|e| named_by(e, "data.train"))?;
        let validation_paths = match &d.validation {
            Some(ValidationSpec::Files(paths)) => Some(
                staged
                    .stage(paths, "data.validation.path", &text)
                    .map_err(|e| named_by(e, "data.validation.path"))?,
            ),
            _ => None,
        };
        let probe = Source::open(&train_paths, &[])?;
        let reference = probe.reference();
        let Draft {
            spec: draft,
            features,
            string_label,
        } = draft(&pipeline, reference.schema(), &reference.path)?;
        let mut columns = features.clone();
        columns.push(d.label.clone());
        columns.extend(d.key.iter().cloned());
        // Validation files need no weights: validation rows are not weighted.
        let validation_columns = columns.clone();
        columns.extend(d.weight.iter().cloned());
        let source = Source::open(&train_paths, &columns)?;
        if let Some((a, b)) = source.repeated_file() {
            return Err(Error::PipelineValue {
                key: "data.train".into(),
                message: format!(
                    "{} and {} are the same file: its rows would be trained on twice",
                    a.display(),
                    b.display()
                ),
            });
        }
        let (validation_files, validation_fraction) = match &d.validation {
            None => (None, None),
            Some(ValidationSpec::Fraction(f)) => (None, Some(Holdout::Fraction(*f))),
            Some(ValidationSpec::Fold { fold, folds }) => (
                None,
                Some(Holdout::Fold {
                    fold: *fold,
                    folds: *folds,
                }),
            ),
            Some(ValidationSpec::Files(_)) => {
                let vs = Source::open(
                    validation_paths.as_deref().unwrap_or(&[]),
                    &validation_columns,
                )?;
                if let Some(f) = vs.shared_file(&source) {
                    return Err(Error::PipelineValue {
                        key: "data.validation.path".into(),
                        message: format!(
                            "{} is also a training file: validation would score rows the model was trained on",
                            f.display()
                        ),
                    });
                }
                // The validation files must match the training types too.
                for c in &validation_columns {
                    let want = source.reference().column_type(c)?;
                    let got = vs.reference().column_type(c)?;
                    if want != got {
                        return Err(Error::SchemaDrift {
                            file: vs.reference().path.clone(),
                            reference: source.reference().path.clone(),
                            difference: format!("column '{c}' has type {got} instead of {want}"),
                        });
                    }
                }
                (
                    Some(Arc::new(ParquetSource::new(vs, d.max_unit_rows))),
                    None,
                )
            }
        };
        let train = Arc::new(ParquetSource::new(source, d.max_unit_rows));
        Ok(Plan {
            pipeline,
            train,
            validation_files,
            validation_fraction,
            draft,
            string_label,
            staged: Arc::new(staged),
        })
    }

    /// The spec used by the statistics scan: raw values, missing as NaN.
    pub fn scan_spec(&self) -> FeatureSpec {
        let mut s = self.draft.clone();
        for f in &mut s.numeric {
            f.fill = f64::NAN;
        }
        if s.on_missing == OnMissing::Mean {
            s.on_missing = OnMissing::Zero;
        }
        s
    }
}

/// Which training rows are held out for validation, decided per row from
/// `(seed, file, row)`: independent of units and workers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Holdout {
    /// A seeded fraction (`data.validation = { fraction = F }`).
    Fraction(f64),
    /// Fold `fold` of `folds` (`data.validation = { fold = I, folds = K }`,
    /// `tidemill cv`): every row is in exactly one fold.
    Fold {
        /// The fold held out (0-based).
        fold: u32,
        /// Folds in all.
        folds: u32,
    },
}

/// The feature spec before statistics that `pipeline` makes of a table with
/// `schema` (read from `file`, named in messages): features, their kinds,
/// the label's type, all checked.
pub struct Draft {
    /// The spec (no centring, scaling or classes).
    pub spec: FeatureSpec,
    /// The feature columns, in order.
    pub features: Vec<String>,
    /// True if the label column holds strings.
    pub string_label: bool,
}

/// An input that is not there, named by the pipeline key that lists it.
fn named_by(e: Error, key: &str) -> Error {
    match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => Error::Io {
            path: std::path::PathBuf::from(format!("{} (named by {key})", path.display())),
            source,
        },
        other => other,
    }
}

/// Checks `pipeline`'s columns against `schema` (of `file`) and drafts the
/// feature spec: what [`Plan::new`] does with the first training file, and
/// what `stream` does with its input's schema.
pub fn draft(pipeline: &Pipeline, schema: &Schema, file: &Path) -> Result<Draft> {
    let d = &pipeline.data;
    let label_type = column_type(schema, &d.label, file)?.clone();
    // A misspelt exclusion would silently leave its column in the
    // features (a label leak, say): every name must be a column.
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if let Some(bad) = d.exclude.iter().find(|e| !names.contains(&e.as_str())) {
        let hint = crate::error::hint(bad, &names);
        return Err(Error::PipelineValue {
            key: "data.exclude".into(),
            message: format!("'{bad}' is not a column of {}{hint}", file.display()),
        });
    }
    if let Some(key) = d.key.as_ref().filter(|k| !names.contains(&k.as_str())) {
        let hint = crate::error::hint(key, &names);
        return Err(Error::PipelineValue {
            key: "data.key".into(),
            message: format!("'{key}' is not a column of {}{hint}", file.display()),
        });
    }
    if let Some(w) = &d.weight {
        if !names.contains(&w.as_str()) {
            let hint = crate::error::hint(w, &names);
            return Err(Error::PipelineValue {
                key: "data.weight".into(),
                message: format!("'{w}' is not a column of {}{hint}", file.display()),
            });
        }
        let t = column_type(schema, w, file)?;
        if !is_numeric_type(t) || matches!(t, DataType::Boolean) {
            return Err(Error::ColumnType {
                file: file.to_path_buf(),
                column: w.clone(),
                found: t.to_string(),
                expected: "a weight column (data.weight) holds integers or floats".into(),
            });
        }
    }
    if let Some(clash) = d
        .interactions
        .iter()
        .map(|c| crate::spec::cross_name(c))
        .find(|n| names.contains(&n.as_str()))
    {
        return Err(Error::PipelineValue {
            key: "data.interactions".into(),
            message: format!(
                "the cross '{clash}' has the name of a column of {}: rename that column, or leave the cross out",
                file.display()
            ),
        });
    }
    // A window's time column orders rows; it is not trained on by default.
    let window_column = match &pipeline.stream.window {
        Some(crate::spec::WindowSpec::Time { column, .. }) => Some(column.as_str()),
        _ => None,
    };
    let features: Vec<String> = match &d.features {
        Some(f) => f.clone(),
        None => schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| {
                *n != d.label
                    && !d.exclude.contains(n)
                    && Some(n) != d.key.as_ref()
                    && Some(n) != d.weight.as_ref()
                    && Some(n.as_str()) != window_column
            })
            .collect(),
    };
    if features.is_empty() {
        return Err(Error::PipelineValue {
            key: "data.features".into(),
            message: "no feature columns".into(),
        });
    }
    for c in &d.categorical {
        if !features.contains(c) {
            let why = if names.contains(&c.as_str()) {
                " (it is a column, left out of the features: the label, the key, excluded or not listed)".to_string()
            } else {
                let listed: Vec<&str> = features.iter().map(String::as_str).collect();
                match crate::error::nearest(c, &listed) {
                    Some(n) => format!(" (did you mean '{n}'?)"),
                    None => format!(", nor a column of {}", file.display()),
                }
            };
            return Err(Error::PipelineValue {
                key: "data.categorical".into(),
                message: format!("'{c}' is not a feature column{why}"),
            });
        }
    }
    for (i, cross) in d.interactions.iter().enumerate() {
        let key = format!("data.interactions[{i}]");
        if let Some(m) = cross.iter().find(|m| !features.contains(m)) {
            let listed: Vec<&str> = features.iter().map(String::as_str).collect();
            let why = match crate::error::nearest(m, &listed) {
                Some(n) => format!(" (did you mean '{n}'?)"),
                None if names.contains(&m.as_str()) => {
                    " (it is a column, left out of the features)".to_string()
                }
                None => format!(", nor a column of {}", file.display()),
            };
            return Err(Error::PipelineValue {
                key,
                message: format!("'{m}' is not a feature column{why}"),
            });
        }
        let numeric_member = cross.iter().any(|m| !d.categorical.contains(m));
        if numeric_member && pipeline.optimizer == crate::spec::OptimizerSpec::Exact {
            return Err(Error::PipelineValue {
                key,
                message: "a cross with a numeric feature scales a hashed slot by the feature's value; optimizer.kind = 'exact' takes crosses of categorical columns only".into(),
            });
        }
    }
    let mut numeric = Vec::new();
    for name in &features {
        let t = column_type(schema, name, file)?;
        if d.categorical.contains(name) {
            if !is_token_type(t) {
                return Err(Error::ColumnType {
                    file: file.to_path_buf(),
                    column: name.clone(),
                    found: t.to_string(),
                    expected: "a categorical column must hold strings or integers".into(),
                });
            }
        } else if is_numeric_type(t) {
            numeric.push(NumericFeature {
                name: name.clone(),
                fill: 0.0,
                center: 0.0,
                scale: 1.0,
            });
        } else {
            return Err(Error::ColumnType {
                file: file.to_path_buf(),
                column: name.clone(),
                found: t.to_string(),
                expected: "a numeric feature needs an integer, float or boolean column; list it in data.categorical to hash it, or in data.exclude to drop it".into(),
            });
        }
    }
    let string_label = !is_numeric_type(&label_type);
    let kind = pipeline.model.kind;
    if string_label && !is_token_type(&label_type) {
        return Err(Error::ColumnType {
            file: file.to_path_buf(),
            column: d.label.clone(),
            found: label_type.to_string(),
            expected: "a label must be numeric or a string".into(),
        });
    }
    if string_label && kind == ModelKind::Linear {
        return Err(Error::ColumnType {
            file: file.to_path_buf(),
            column: d.label.clone(),
            found: label_type.to_string(),
            expected: "a linear (regression) model needs a numeric label".into(),
        });
    }
    if string_label && matches!(kind, ModelKind::Logistic | ModelKind::Hinge) && d.classes.is_none()
    {
        return Err(Error::PipelineValue {
            key: "data.classes".into(),
            message: format!(
                "label '{}' holds strings: declare data.classes = [\"<negative>\", \"<positive>\"]",
                d.label
            ),
        });
    }
    Ok(Draft {
        spec: FeatureSpec {
            label: d.label.clone(),
            numeric,
            categorical: d
                .categorical
                .iter()
                .cloned()
                .chain(d.interactions.iter().map(|c| crate::spec::cross_name(c)))
                .collect(),
            crosses: d
                .interactions
                .iter()
                .map(|c| Cross {
                    name: crate::spec::cross_name(c),
                    of: c.clone(),
                })
                .collect(),
            hash_bits: d.hash_bits,
            on_missing: d.on_missing,
            classes: None,
            weight: (d.weight.is_some() || pipeline.model.class_weight.is_some()).then(|| {
                features::Weighting {
                    column: d.weight.clone(),
                    class: Vec::new(),
                    scale: 1.0,
                }
            }),
        },
        features,
        string_label,
    })
}

/// The type of `column` in `schema` (of `file`), or why there is none.
fn column_type<'a>(schema: &'a Schema, column: &str, file: &Path) -> Result<&'a DataType> {
    crate::source::files::unique_column(schema, column, file)?;
    match schema.field_with_name(column) {
        Ok(f) => Ok(f.data_type()),
        Err(_) => Err(Error::missing_column(file, column, schema)),
    }
}
