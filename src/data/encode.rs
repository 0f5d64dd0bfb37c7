//! Feature encoding: Arrow columns → dense `f32` rows plus hashed
//! categorical indices, and labels → numbers.
//!
//! The [`FeatureSpec`] is saved inside every model file, so `predict`
//! applies exactly the preprocessing training used.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::hashing::hash_token;
use crate::error::{Error, Location, Result};
use crate::spec::OnMissing;

/// A numeric feature and its preprocessing: missing → `fill`, then
/// `(x − center) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumericFeature {
    /// Column name.
    pub name: String,
    /// Value used for missing entries (raw units); unused under `error`/`skip_row`.
    pub fill: f64,
    /// Subtracted before scaling (the training mean when standardising, else 0).
    pub center: f64,
    /// Divisor (the training standard deviation when standardising, else 1).
    pub scale: f64,
}

/// Everything needed to turn a row of a table into model inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Label column.
    pub label: String,
    /// Numeric features in weight order.
    pub numeric: Vec<NumericFeature>,
    /// Hashed categorical columns.
    pub categorical: Vec<String>,
    /// The hashed space has `2^hash_bits` slots (after the numeric features).
    pub hash_bits: u32,
    /// Missing-value policy.
    pub on_missing: OnMissing,
    /// Class names in index order (classifiers).
    pub classes: Option<Vec<String>>,
}

impl FeatureSpec {
    /// Number of input dimensions: numeric features plus the hashed space.
    pub fn dim(&self) -> usize {
        self.numeric.len() + self.hashed_dim()
    }

    /// Size of the hashed space (0 without categorical columns).
    pub fn hashed_dim(&self) -> usize {
        if self.categorical.is_empty() {
            0
        } else {
            1usize << self.hash_bits
        }
    }

    /// The feature columns to read.
    pub fn feature_columns(&self) -> Vec<String> {
        self.numeric
            .iter()
            .map(|f| f.name.clone())
            .chain(self.categorical.iter().cloned())
            .collect()
    }
}

/// Decoded rows of one unit (or one input batch).
#[derive(Debug, Clone, Default)]
pub struct Block {
    /// Rows kept (after `skip_row`).
    pub rows: usize,
    /// Numeric features per row.
    pub p: usize,
    /// Row-major `rows × p` numeric values, preprocessed.
    pub dense: Vec<f32>,
    /// Categorical columns per row.
    pub c: usize,
    /// Row-major `rows × c` hashed slots (in `[0, 2^hash_bits)`).
    pub hashed: Vec<u32>,
    /// Row-major `rows × c` signs (±1, or 0 for a missing token).
    pub signs: Vec<f32>,
    /// Label per row: the value (regression) or class index; empty if not read.
    pub label: Vec<f32>,
    /// Label tokens per row, when classes are still being discovered.
    pub tokens: Vec<String>,
    /// Row index inside the source file of each kept row.
    pub file_row: Vec<u64>,
}

impl Block {
    /// Appends rows `idx` of `src` (same feature layout) to this block.
    pub fn push_rows(&mut self, src: &Block, idx: &[usize]) {
        if self.rows == 0 {
            self.p = src.p;
            self.c = src.c;
        }
        for &i in idx {
            self.dense
                .extend_from_slice(&src.dense[i * src.p..(i + 1) * src.p]);
            self.hashed
                .extend_from_slice(&src.hashed[i * src.c..(i + 1) * src.c]);
            self.signs
                .extend_from_slice(&src.signs[i * src.c..(i + 1) * src.c]);
            if let Some(&y) = src.label.get(i) {
                self.label.push(y);
            }
            if let Some(&r) = src.file_row.get(i) {
                self.file_row.push(r);
            }
        }
        self.rows += idx.len();
    }

    /// Removes every row, keeping the buffers.
    pub fn clear(&mut self) {
        self.rows = 0;
        self.dense.clear();
        self.hashed.clear();
        self.signs.clear();
        self.label.clear();
        self.tokens.clear();
        self.file_row.clear();
    }
}

/// How to read the label.
#[derive(Debug, Clone, Copy)]
pub enum LabelUse<'a> {
    /// Do not read it (prediction).
    Skip,
    /// Regression target.
    Value,
    /// Keep the textual token of each label (class discovery).
    Tokens,
    /// Map to class indices.
    Classes(&'a ClassMap),
}

/// Class name → index.
#[derive(Debug, Clone)]
pub struct ClassMap {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Classes whose names are numbers, sorted by value: numeric labels are
    /// matched by value, without formatting each row.
    values: Vec<(f64, usize)>,
}

impl ClassMap {
    /// Builds the map from names in index order.
    pub fn new(names: &[String]) -> ClassMap {
        let mut values: Vec<(f64, usize)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.parse::<f64>().ok().map(|v| (v, i)))
            .collect();
        values.sort_by(|a, b| a.0.total_cmp(&b.0));
        ClassMap {
            values,
            names: names.to_vec(),
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
        }
    }
    /// The class of a numeric label value.
    pub fn by_value(&self, v: f64) -> Option<usize> {
        let v = v + 0.0; // -0.0 is the class "0"
        self.values
            .binary_search_by(|(x, _)| x.total_cmp(&v))
            .ok()
            .map(|j| self.values[j].1)
    }

    /// Is `token` one of the classes?
    pub fn contains(&self, token: &str) -> bool {
        self.index.contains_key(token)
    }
    /// The names, comma separated (for messages).
    pub fn describe(&self) -> String {
        self.names.join(", ")
    }
}

/// Where a batch came from, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// File.
    pub file: &'a Path,
    /// Row group, if the batch is one.
    pub row_group: Option<usize>,
    /// File row of the batch's first row.
    pub first_row: u64,
}

impl Origin<'_> {
    fn at(&self, column: &str, i: usize) -> Location {
        Location {
            file: self.file.to_path_buf(),
            row_group: self.row_group,
            column: Some(column.to_string()),
            row: Some(self.first_row + i as u64),
        }
    }
}

/// Is the Arrow type usable as a numeric feature or regression label?
pub fn is_numeric_type(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// Is the Arrow type usable as a categorical token column?
pub fn is_token_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_token_type(v),
        t => t.is_integer() || matches!(t, DataType::Boolean),
    }
}

/// Canonical text of a number used as a token: integers without a fraction.
pub fn number_token(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn column<'b>(batch: &'b RecordBatch, name: &str, origin: &Origin) -> Result<&'b ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::missing_column(origin.file, name, &batch.schema()))
}

fn cast(array: &ArrayRef, to: &DataType, name: &str, origin: &Origin) -> Result<ArrayRef> {
    arrow::compute::cast(array, to).map_err(|e| Error::ColumnType {
        file: origin.file.to_path_buf(),
        column: name.to_string(),
        found: array.data_type().to_string(),
        expected: format!("cannot convert to {to}: {e}"),
    })
}

/// A numeric column cast to f64.
fn numeric_array(array: &ArrayRef, name: &str, origin: &Origin) -> Result<Float64Array> {
    if !is_numeric_type(array.data_type()) {
        return Err(Error::ColumnType {
            file: origin.file.to_path_buf(),
            column: name.to_string(),
            found: array.data_type().to_string(),
            expected: "a numeric feature needs an integer, float or boolean column (list string columns in data.categorical)".into(),
        });
    }
    let f = cast(array, &DataType::Float64, name, origin)?;
    Ok(f.as_primitive::<Float64Type>().clone())
}

/// What is wrong with value `i`, or `""` if it is a usable number.
#[inline]
fn badness(a: &Float64Array, i: usize) -> &'static str {
    if a.is_null(i) {
        "null value"
    } else {
        let v = a.value(i);
        if v.is_nan() {
            "NaN"
        } else if v.is_infinite() {
            "infinite value"
        } else {
            ""
        }
    }
}

/// True if every value is present and finite (the common case, checked fast).
fn all_finite(a: &Float64Array) -> bool {
    a.null_count() == 0 && a.values().iter().all(|v| v.is_finite())
}

/// Tokens of a column; `None` for nulls.
fn token_values(array: &ArrayRef, name: &str, origin: &Origin) -> Result<Vec<Option<String>>> {
    let t = array.data_type();
    if !is_token_type(t) {
        return Err(Error::ColumnType {
            file: origin.file.to_path_buf(),
            column: name.to_string(),
            found: t.to_string(),
            expected: "a categorical column must hold strings or integers".into(),
        });
    }
    if t.is_integer() || matches!(t, DataType::Boolean) {
        let a = cast(array, &DataType::Int64, name, origin)?;
        let a = a.as_primitive::<Int64Type>();
        return Ok((0..a.len())
            .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
            .collect());
    }
    let a = cast(array, &DataType::Utf8, name, origin)?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
        .collect())
}

/// A label column: numbers (compared by value) or textual tokens.
enum LabelColumn {
    Numeric(Float64Array),
    Tokens(Vec<Option<String>>),
}

impl LabelColumn {
    fn read(array: &ArrayRef, name: &str, origin: &Origin) -> Result<LabelColumn> {
        let t = array.data_type();
        if is_numeric_type(t) {
            Ok(LabelColumn::Numeric(numeric_array(array, name, origin)?))
        } else if is_token_type(t) {
            Ok(LabelColumn::Tokens(token_values(array, name, origin)?))
        } else {
            Err(Error::ColumnType {
                file: origin.file.to_path_buf(),
                column: name.to_string(),
                found: t.to_string(),
                expected: "a label must be numeric or a string".into(),
            })
        }
    }

    /// Is the label of row `i` missing (null, NaN or infinite)?
    fn missing(&self, i: usize) -> bool {
        match self {
            LabelColumn::Numeric(a) => !badness(a, i).is_empty(),
            LabelColumn::Tokens(t) => t[i].is_none(),
        }
    }

    /// The label of row `i` as text (messages and class discovery).
    fn token(&self, i: usize) -> String {
        match self {
            LabelColumn::Numeric(a) => number_token(a.value(i)),
            LabelColumn::Tokens(t) => t[i].clone().unwrap_or_default(),
        }
    }
}

/// Decodes a batch into a [`Block`] following `spec`.
///
/// Missing numeric values follow `spec.on_missing`: `error` fails with the
/// file, row group, column and row; `skip_row` drops the row; `zero` and
/// `mean` put in the feature's `fill`. A missing label is always an error
/// unless the policy is `skip_row`.
pub fn decode(
    batch: &RecordBatch,
    spec: &FeatureSpec,
    label: LabelUse,
    origin: &Origin,
) -> Result<Block> {
    let n = batch.num_rows();
    let mut keep = vec![true; n];
    let skip = spec.on_missing == OnMissing::SkipRow;

    let mut numeric = Vec::with_capacity(spec.numeric.len());
    for f in &spec.numeric {
        let values = numeric_array(column(batch, &f.name, origin)?, &f.name, origin)?;
        if all_finite(&values) {
            numeric.push(values);
            continue;
        }
        for (i, k) in keep.iter_mut().enumerate() {
            let bad = badness(&values, i);
            if !bad.is_empty() {
                match spec.on_missing {
                    OnMissing::Error => {
                        return Err(Error::MissingValue {
                            location: Box::new(origin.at(&f.name, i)),
                            what: bad.to_string(),
                        })
                    }
                    OnMissing::SkipRow => *k = false,
                    OnMissing::Zero | OnMissing::Mean => {}
                }
            }
        }
        numeric.push(values);
    }
    let mut tokens = Vec::with_capacity(spec.categorical.len());
    for c in &spec.categorical {
        let values = token_values(column(batch, c, origin)?, c, origin)?;
        if let Some(i) = values.iter().position(Option::is_none) {
            match spec.on_missing {
                OnMissing::Error => {
                    return Err(Error::MissingValue {
                        location: Box::new(origin.at(c, i)),
                        what: "null value".into(),
                    })
                }
                OnMissing::SkipRow => {
                    for (k, v) in values.iter().enumerate() {
                        if v.is_none() {
                            keep[k] = false;
                        }
                    }
                }
                OnMissing::Zero | OnMissing::Mean => {}
            }
        }
        tokens.push(values);
    }
    let labels = match label {
        LabelUse::Skip => None,
        _ => {
            let values =
                LabelColumn::read(column(batch, &spec.label, origin)?, &spec.label, origin)?;
            for (i, k) in keep.iter_mut().enumerate() {
                if values.missing(i) {
                    if skip {
                        *k = false;
                    } else {
                        return Err(Error::MissingValue {
                            location: Box::new(origin.at(&spec.label, i)),
                            what: "missing label (null or NaN)".into(),
                        });
                    }
                }
            }
            Some(values)
        }
    };

    let rows = keep.iter().filter(|&&k| k).count();
    let p = spec.numeric.len();
    let c = spec.categorical.len();
    let mut block = Block {
        rows,
        p,
        c,
        dense: Vec::with_capacity(rows * p),
        hashed: Vec::with_capacity(rows * c),
        signs: Vec::with_capacity(rows * c),
        label: Vec::new(),
        tokens: Vec::new(),
        file_row: Vec::with_capacity(rows),
    };
    let kept: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
    block
        .file_row
        .extend(kept.iter().map(|&i| origin.first_row + i as u64));
    block.dense.resize(rows * p, 0.0);
    for (j, (f, values)) in spec.numeric.iter().zip(&numeric).enumerate() {
        let clean = all_finite(values);
        let raw = values.values();
        for (r, &i) in kept.iter().enumerate() {
            let v = if clean || badness(values, i).is_empty() {
                raw[i]
            } else {
                f.fill
            };
            block.dense[r * p + j] = ((v - f.center) / f.scale) as f32;
        }
    }
    for &i in &kept {
        for (col, values) in spec.categorical.iter().zip(&tokens) {
            match &values[i] {
                Some(tok) => {
                    let (h, s) = hash_token(col, tok, spec.hash_bits);
                    block.hashed.push(h);
                    block.signs.push(s);
                }
                None => {
                    block.hashed.push(0);
                    block.signs.push(0.0);
                }
            }
        }
    }
    if let Some(values) = labels {
        match (label, &values) {
            (LabelUse::Skip, _) => {}
            (LabelUse::Value, LabelColumn::Numeric(a)) => {
                block.label.extend(kept.iter().map(|&i| a.value(i) as f32));
            }
            (LabelUse::Value, LabelColumn::Tokens(_)) => {
                let i = kept.first().copied().unwrap_or(0);
                return Err(Error::BadLabel {
                    location: Box::new(origin.at(&spec.label, i)),
                    message: format!("regression label '{}' is not a number", values.token(i)),
                });
            }
            (LabelUse::Tokens, _) => {
                block.tokens = kept.iter().map(|&i| values.token(i)).collect();
            }
            (LabelUse::Classes(map), _) => {
                for &i in &kept {
                    let k = match &values {
                        LabelColumn::Numeric(a) => map.by_value(a.value(i)),
                        LabelColumn::Tokens(t) => {
                            t[i].as_ref().and_then(|tok| map.index.get(tok).copied())
                        }
                    };
                    match k {
                        Some(k) => block.label.push(k as f32),
                        None => {
                            return Err(Error::UnknownLabel {
                                location: Box::new(origin.at(&spec.label, i)),
                                value: values.token(i),
                                classes: map.describe(),
                            })
                        }
                    }
                }
            }
        }
    }
    Ok(block)
}

impl Block {
    /// Keeps only the rows for which `keep(i)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let flags: Vec<bool> = (0..self.rows).map(&mut keep).collect();
        let rows = flags.iter().filter(|&&k| k).count();
        if rows == self.rows {
            return;
        }
        let (p, c) = (self.p, self.c);
        let pick = |v: &[f32], w: usize| -> Vec<f32> {
            flags
                .iter()
                .enumerate()
                .filter(|(_, &k)| k)
                .flat_map(|(i, _)| v[i * w..(i + 1) * w].iter().copied())
                .collect()
        };
        self.dense = pick(&self.dense, p);
        self.signs = pick(&self.signs, c);
        self.hashed = flags
            .iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .flat_map(|(i, _)| self.hashed[i * c..(i + 1) * c].iter().copied())
            .collect();
        if !self.label.is_empty() {
            self.label = pick(&self.label, 1);
        }
        if !self.tokens.is_empty() {
            self.tokens = flags
                .iter()
                .zip(&self.tokens)
                .filter(|(&k, _)| k)
                .map(|(_, t)| t.clone())
                .collect();
        }
        self.file_row = flags
            .iter()
            .zip(&self.file_row)
            .filter(|(&k, _)| k)
            .map(|(_, &r)| r)
            .collect();
        self.rows = rows;
    }

    /// Reorders rows by `order` (a permutation of `0..rows`).
    pub fn permute(&mut self, order: &[usize]) {
        let (p, c) = (self.p, self.c);
        let gather = |v: &[f32], w: usize| -> Vec<f32> {
            order
                .iter()
                .flat_map(|&i| v[i * w..(i + 1) * w].iter().copied())
                .collect()
        };
        self.dense = gather(&self.dense, p);
        self.signs = gather(&self.signs, c);
        self.hashed = order
            .iter()
            .flat_map(|&i| self.hashed[i * c..(i + 1) * c].iter().copied())
            .collect();
        if !self.label.is_empty() {
            self.label = gather(&self.label, 1);
        }
        self.file_row = order.iter().map(|&i| self.file_row[i]).collect();
    }

    /// Bytes held by the decoded values.
    pub fn heap_bytes(&self) -> usize {
        self.dense.len() * 4
            + self.hashed.len() * 4
            + self.signs.len() * 4
            + self.label.len() * 4
            + self.file_row.len() * 8
    }
}
