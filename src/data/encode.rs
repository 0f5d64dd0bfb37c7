//! Feature encoding: Arrow columns → dense `f32` rows plus hashed
//! categorical indices, and labels → numbers.
//!
//! The [`FeatureSpec`] is saved inside every model file, so `predict`
//! applies exactly the preprocessing training used.

use std::collections::HashMap;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};
use arrow::record_batch::RecordBatch;

use fnv::FnvHasher;
use std::hash::Hasher;
use std::sync::Arc;

pub use super::file_rows::FileRows;
use super::hashing::{column_prefix, slot};
pub use super::labels::Labels;
use crate::error::{Error, Location, Result};
pub use crate::plan::features::{
    is_numeric_type, is_token_type, FeatureSpec, NumericFeature, Weighting,
};
pub use crate::source::files::unique_column;
pub use crate::spec::classes::{check_classes, MAX_CLASSES};
use crate::spec::OnMissing;

/// Decoded rows of one unit (or one input batch).
#[derive(Debug, Clone, Default)]
pub struct Block {
    /// Rows kept (after `skip_row`).
    pub rows: usize,
    /// Numeric features per row.
    pub p: usize,
    /// Row-major `rows × p` numeric values, preprocessed.
    pub dense: Vec<f32>,
    /// Row-major `rows × p` numeric values in `f64` before centring and
    /// scaling (missing ones filled); only when asked for ([`decode_raw`]),
    /// empty otherwise.
    pub raw: Vec<f64>,
    /// Categorical columns per row.
    pub c: usize,
    /// Row-major `rows × c` hashed slots (in `[0, 2^hash_bits)`).
    pub hashed: Vec<u32>,
    /// Row-major `rows × c` values of the hashed slots: the signs (±1, or
    /// 0 for a missing token), times the values of a cross's numeric
    /// features.
    pub signs: Vec<f32>,
    /// Label per row: the value (regression) or class index; empty if not
    /// read. One byte a row while every label is a class index.
    pub label: Labels,
    /// Label tokens per row, when classes are still being discovered.
    pub tokens: Vec<String>,
    /// Row index inside the source file of each kept row.
    pub file_row: FileRows,
    /// Weight per row (`data.weight` when training; empty: every row
    /// weighs 1). Decoded as the column holds it; training rows are then
    /// given their class weight and the job's scale ([`Block::weigh`]).
    pub weight: Vec<f64>,
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
            if !src.raw.is_empty() {
                self.raw
                    .extend_from_slice(&src.raw[i * src.p..(i + 1) * src.p]);
            }
            self.hashed
                .extend_from_slice(&src.hashed[i * src.c..(i + 1) * src.c]);
            self.signs
                .extend_from_slice(&src.signs[i * src.c..(i + 1) * src.c]);
            if let Some(y) = src.label.get(i) {
                self.label.push(y);
            }
            if let Some(r) = src.file_row.get(i) {
                self.file_row.push(r);
            }
            if let Some(&w) = src.weight.get(i) {
                self.weight.push(w);
            }
        }
        self.rows += idx.len();
    }

    /// Appends every row of `other` (same feature layout), moving them.
    pub fn append(&mut self, mut other: Block) {
        if self.rows == 0 {
            self.p = other.p;
            self.c = other.c;
        }
        self.rows += other.rows;
        self.dense.append(&mut other.dense);
        self.raw.append(&mut other.raw);
        self.hashed.append(&mut other.hashed);
        self.signs.append(&mut other.signs);
        self.label.append(&mut other.label);
        self.tokens.append(&mut other.tokens);
        self.file_row.append(&mut other.file_row);
        self.weight.append(&mut other.weight);
    }

    /// Removes every row, keeping the buffers.
    pub fn clear(&mut self) {
        self.rows = 0;
        self.dense.clear();
        self.raw.clear();
        self.hashed.clear();
        self.signs.clear();
        self.label.clear();
        self.tokens.clear();
        self.file_row.clear();
        self.weight.clear();
    }

    /// Calls `f` with each row's index and its numeric values in `f64`
    /// before centring and scaling: [`Block::raw`]'s, or, where the scan
    /// left `raw` empty ([`decode_scan`]), `dense`'s, which then hold them
    /// exactly.
    pub fn raw_rows(&self, mut f: impl FnMut(usize, &[f64])) {
        let p = self.p;
        if p == 0 {
            (0..self.rows).for_each(|i| f(i, &[]));
        } else if self.raw.is_empty() {
            let mut row = vec![0.0; p];
            for (i, values) in self.dense.chunks_exact(p).take(self.rows).enumerate() {
                row.iter_mut()
                    .zip(values)
                    .for_each(|(x, &v)| *x = f64::from(v));
                f(i, &row);
            }
        } else {
            for (i, values) in self.raw.chunks_exact(p).take(self.rows).enumerate() {
                f(i, values);
            }
        }
    }

    /// The weight of row `i` (1 without a weight column).
    #[inline]
    pub fn weight_of(&self, i: usize) -> f64 {
        self.weight.get(i).copied().unwrap_or(1.0)
    }

    /// Turns the decoded weights of training rows into the weights the
    /// loss takes: each times its class's weight (by the row's class
    /// index) and the job's `scale`. Nothing to do without weights.
    pub fn weigh(&mut self, weighting: Option<&Weighting>) {
        let Some(w) = weighting else { return };
        if self.weight.is_empty() {
            self.weight = vec![1.0; self.rows];
        }
        for (i, v) in self.weight.iter_mut().enumerate() {
            let class = self
                .label
                .get(i)
                .and_then(|y| w.class.get(y as usize))
                .copied()
                .unwrap_or(1.0);
            *v = *v * class * w.scale;
        }
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
    /// Builds the map from names in index order (checked by
    /// [`check_classes`] where they come from a user or a file).
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
    /// The name of class `k` (empty if there is none).
    pub fn name(&self, k: usize) -> String {
        self.names.get(k).cloned().unwrap_or_default()
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

/// Canonical text of a number used as a token: integers without a fraction.
pub fn number_token(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn column<'b>(batch: &'b RecordBatch, name: &str, origin: &Origin) -> Result<&'b ArrayRef> {
    unique_column(&batch.schema(), name, origin.file)?;
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

/// The largest magnitude a number may have: models compute in `f32` inputs
/// (and `f64` sums), so a value beyond `f32` range is as unusable as NaN.
pub const MAX_VALUE: f64 = f32::MAX as f64;

/// Why a number cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    Null,
    NaN,
    Infinite,
    /// Finite, but beyond ±[`MAX_VALUE`].
    OutOfRange,
    /// In range, but beyond ±[`MAX_VALUE`] after `(x − center) / scale`.
    OutOfRangeScaled,
}

impl Bad {
    fn describe(self, v: f64, f: Option<&NumericFeature>) -> String {
        match self {
            Bad::Null => "null value".into(),
            Bad::NaN => "NaN".into(),
            Bad::Infinite => "infinite value".into(),
            Bad::OutOfRange => {
                format!("value {v:e} is outside the range tidemill computes in (±{MAX_VALUE:e})")
            }
            Bad::OutOfRangeScaled => {
                let (c, s) = f.map_or((0.0, 1.0), |f| (f.center, f.scale));
                format!(
                    "value {v:e} becomes {:e} after standardisation (center {c:e}, scale {s:e}), outside ±{MAX_VALUE:e}",
                    (v - c) / s
                )
            }
        }
    }
}

/// What is wrong with value `i` of a feature column, if anything.
#[inline]
fn badness(a: &Float64Array, i: usize, f: &NumericFeature) -> Option<Bad> {
    if a.is_null(i) {
        return Some(Bad::Null);
    }
    let v = a.value(i);
    if v.abs() <= MAX_VALUE {
        if scaled_in_range(v, f) {
            None
        } else {
            Some(Bad::OutOfRangeScaled)
        }
    } else if v.is_nan() {
        Some(Bad::NaN)
    } else if v.is_infinite() {
        Some(Bad::Infinite)
    } else {
        Some(Bad::OutOfRange)
    }
}

/// True if every value is present and usable (the common case, checked fast).
fn all_usable(a: &Float64Array, f: &NumericFeature) -> bool {
    if a.null_count() != 0 {
        return false;
    }
    if is_identity(f) {
        // In range once scaled exactly when in range (`scaled` is `v`);
        // no early exit, so that the check vectorises.
        a.values()
            .iter()
            .fold(true, |ok, &v| ok & (v.abs() <= MAX_VALUE))
    } else {
        a.values()
            .iter()
            .all(|&v| v.abs() <= MAX_VALUE && scaled_in_range(v, f))
    }
}

/// Is centring and scaling by `f` the identity (centre +0, scale 1: the
/// statistics scan's spec, and every feature of a job that does not
/// standardise)? Then [`scaled`] gives `v` itself, bit for bit, for every
/// number `v` (`-0.0 − +0.0` is `-0.0`; `v / 1` is `v`), and the division
/// can be skipped.
#[inline]
fn is_identity(f: &NumericFeature) -> bool {
    f.center.to_bits() == 0 && f.scale == 1.0
}

/// Value `v` centred and scaled by `f`, in `f64`: the one formula of
/// [`decode`] and [`restandardize`].
#[inline]
fn scaled(v: f64, f: &NumericFeature) -> f64 {
    (v - f.center) / f.scale
}

/// Is usable value `v` still within ±[`MAX_VALUE`] once centred and scaled?
#[inline]
fn scaled_in_range(v: f64, f: &NumericFeature) -> bool {
    scaled(v, f).abs() <= MAX_VALUE
}

/// What a model sees of value `v` (filled if it was missing): centred,
/// scaled, rounded to `f32`.
#[inline]
fn standardized(v: f64, f: &NumericFeature) -> f32 {
    scaled(v, f) as f32
}

/// Rows a numeric column is copied into a row-major block at a time: the
/// block's rows for every column of a chunk stay in cache.
const TRANSPOSE_ROWS: usize = 512;

/// Rewrites in place, into what [`decode`] with the final `spec` gives for
/// the same rows, a block the statistics scan decoded with centre 0, scale 1
/// and `NaN` for every unusable number (`crate::plan::Plan::scan_spec`, the
/// same label use and no weights): each value is taken from [`Block::raw`]
/// where the block kept it, else from [`Block::dense`] (which the caller
/// has checked holds it exactly), filled where it is `NaN`, then centred and
/// scaled by the same arithmetic as [`decode`]. `raw` is emptied.
///
/// Returns `false`, leaving the block unusable, where a usable value falls
/// beyond ±[`MAX_VALUE`] once standardised: [`decode`] handles that under
/// `spec.on_missing` (an error, a dropped row), so the caller must decode
/// the rows again. Hashed slots are kept as they are, so the caller must
/// not use this where a cross takes a numeric feature's value.
pub fn restandardize(block: &mut Block, spec: &FeatureSpec) -> bool {
    let p = block.p;
    if p == 0 {
        block.raw = Vec::new();
        return true;
    }
    let from_raw = !block.raw.is_empty();
    if from_raw {
        block.dense = vec![0.0; block.raw.len()];
    }
    for r in 0..block.rows {
        for (j, f) in spec.numeric.iter().enumerate().take(p) {
            let k = r * p + j;
            let x = if from_raw {
                block.raw[k]
            } else {
                f64::from(block.dense[k])
            };
            // `standardized` of the filled or usable value, the range
            // checked on the same quotient.
            let y = if x.is_nan() {
                scaled(f.fill, f)
            } else {
                // `scaled_in_range`: a NaN quotient is refused too.
                match scaled(x, f) {
                    y if y.abs() <= MAX_VALUE => y,
                    _ => return false,
                }
            };
            block.dense[k] = y as f32;
        }
    }
    block.raw = Vec::new();
    true
}

/// True if every value of the scan's block `b` (its `raw` values) is held
/// exactly in `dense` (`NaN` for `NaN`): the values were `f32`s, or small
/// integers, so the block need not keep `raw` for [`restandardize`].
pub fn dense_is_exact(b: &Block) -> bool {
    // `decode_scan` keeps no `raw` where `dense` is exact by type.
    (b.raw.is_empty() && b.dense.len() == b.rows * b.p)
        || b.raw.len() == b.dense.len()
            && b.raw
                .iter()
                .zip(&b.dense)
                .all(|(&r, &d)| r == f64::from(d) || (r.is_nan() && d.is_nan()))
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
    if t.is_unsigned_integer() {
        // Through u64: values above i64::MAX are tokens too, not nulls.
        let a = cast(array, &DataType::UInt64, name, origin)?;
        let a = a.as_primitive::<UInt64Type>();
        return Ok((0..a.len())
            .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
            .collect());
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

/// A categorical column's tokens as Arrow text: strings as they are (any
/// string or dictionary type, cast to `Utf8`), integers and booleans
/// written as [`token_values`] writes them.
fn token_text(array: &ArrayRef, name: &str, origin: &Origin) -> Result<ArrayRef> {
    let t = array.data_type();
    if !is_token_type(t) || t.is_integer() || matches!(t, DataType::Boolean) {
        return Ok(Arc::new(StringArray::from(token_values(
            array, name, origin,
        )?)));
    }
    cast(array, &DataType::Utf8, name, origin)
}

/// A batch's categorical columns as decoding hashes them: each column's
/// text (`None` for a cross) and each cross's members (by position).
struct Tokens<'a> {
    text: Vec<Option<&'a StringArray>>,
    members: &'a [Vec<usize>],
}

impl Tokens<'_> {
    /// Writes column `k`'s token of row `i` into `h`: the text, or a
    /// cross's members' tokens joined by [`crate::spec::CROSS`], as the
    /// cross's name joins them. `false` if it is missing (`h` is then of
    /// no use).
    fn write(&self, k: usize, i: usize, h: &mut FnvHasher) -> bool {
        match self.text[k] {
            Some(a) => {
                if a.is_null(i) {
                    return false;
                }
                h.write(a.value(i).as_bytes());
                true
            }
            None => {
                for (n, &m) in self.members[k].iter().enumerate() {
                    if n > 0 {
                        h.write(crate::spec::CROSS.as_bytes());
                    }
                    if !self.write(m, i, h) {
                        return false;
                    }
                }
                true
            }
        }
    }
}

/// A label column: numbers (compared by value) or textual tokens.
enum LabelColumn {
    Numeric(Float64Array),
    Tokens(Vec<Option<String>>),
}

/// The hint for a missing label: only dropping the row helps.
pub const LABEL_HINT: &str = "set data.on_missing = \"skip_row\" to drop such rows";
/// A null weight as decoded: a NaN of its own bits, told apart from a NaN
/// the column holds (only a null is a missing weight; a NaN is an error).
pub const NULL_WEIGHT: f64 = f64::from_bits(0x7FF8_0000_DEAD_0001);

/// Is `w` the decoded null weight ([`NULL_WEIGHT`])?
pub fn is_null_weight(w: f64) -> bool {
    w.to_bits() == NULL_WEIGHT.to_bits()
}

/// The hint for a bad weight.
pub const WEIGHT_HINT: &str = "a weight (data.weight) is a finite number ≥ 0 on every row; set data.on_missing = \"skip_row\" to drop rows without one";
/// The hint for a missing feature value when training.
pub const FEATURE_HINT: &str =
    "set data.on_missing = \"zero\" | \"mean\" | \"skip_row\" to allow it";

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

    /// What makes the label of row `i` unusable (null, NaN, infinite, or
    /// out of range), if anything.
    fn missing(&self, i: usize) -> Option<String> {
        match self {
            LabelColumn::Numeric(a) => {
                if a.is_null(i) {
                    return Some("missing label (null)".into());
                }
                let v = a.value(i);
                if v.is_nan() {
                    Some("label is NaN".into())
                } else if v.is_infinite() {
                    Some(format!("label is {v}"))
                } else if v.abs() > MAX_VALUE {
                    Some(format!(
                        "label {v:e} is outside the range tidemill computes in (±{MAX_VALUE:e})"
                    ))
                } else {
                    None
                }
            }
            LabelColumn::Tokens(t) => t[i].is_none().then(|| "missing label (null)".into()),
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
/// Unusable numeric values — null, NaN, infinite, or beyond ±[`MAX_VALUE`]
/// before or after standardisation — follow `spec.on_missing`: `error`
/// fails with the file, row group, column and row; `skip_row` drops the
/// row; `zero` and `mean` put in the feature's `fill`. An unusable label is
/// always an error unless the policy is `skip_row`.
pub fn decode(
    batch: &RecordBatch,
    spec: &FeatureSpec,
    label: LabelUse,
    origin: &Origin,
) -> Result<Block> {
    decode_with(batch, spec, label, origin, Keep::Dense)
}

/// [`decode`], also keeping each numeric value in `f64` before centring
/// and scaling ([`Block::raw`]): what the statistics scan needs.
pub fn decode_raw(
    batch: &RecordBatch,
    spec: &FeatureSpec,
    label: LabelUse,
    origin: &Origin,
) -> Result<Block> {
    decode_with(batch, spec, label, origin, Keep::Raw)
}

/// The statistics scan's decoding (with its spec: centre 0, scale 1 for
/// every feature): [`decode_raw`], except that [`Block::raw`] is left
/// empty where every numeric column's type converts to `f32` exactly
/// (`f32`, `f16`, 8- and 16-bit integers, booleans). `dense` then holds
/// every value as read, `NaN` for an unusable one, and
/// [`Block::raw_rows`] gives the same `f64`s `raw` would have held,
/// without writing them.
pub fn decode_scan(
    batch: &RecordBatch,
    spec: &FeatureSpec,
    label: LabelUse,
    origin: &Origin,
) -> Result<Block> {
    let exact = spec.numeric.iter().all(|f| {
        is_identity(f)
            && batch
                .column_by_name(&f.name)
                .is_some_and(|c| exact_in_f32(c.data_type()))
    });
    let keep = if exact { Keep::Exact } else { Keep::Raw };
    decode_with(batch, spec, label, origin, keep)
}

/// What [`decode_with`] keeps beside the model's `dense` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: training's decoding, which refuses a cross's value beyond
    /// the range.
    Dense,
    /// The `f64`s before centring and scaling ([`decode_raw`]): values may
    /// be missing (`NaN`), so a cross's value is not checked.
    Raw,
    /// Nothing, `dense` holding the values exactly ([`decode_scan`]), with
    /// the checks of [`Keep::Raw`].
    Exact,
}

/// Does every value of an Arrow column of type `t` convert to `f32`
/// exactly (and so round-trip through `f64` and back)?
fn exact_in_f32(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Float16
            | DataType::Float32
            | DataType::Int8
            | DataType::Int16
            | DataType::UInt8
            | DataType::UInt16
            | DataType::Boolean
    )
}

fn decode_with(
    batch: &RecordBatch,
    spec: &FeatureSpec,
    label: LabelUse,
    origin: &Origin,
    how: Keep,
) -> Result<Block> {
    let keep_raw = how == Keep::Raw;
    let n = batch.num_rows();
    let mut keep = vec![true; n];
    let skip = spec.on_missing == OnMissing::SkipRow;

    let mut numeric = Vec::with_capacity(spec.numeric.len());
    for f in &spec.numeric {
        let values = numeric_array(column(batch, &f.name, origin)?, &f.name, origin)?;
        let clean = all_usable(&values, f);
        if !clean {
            for (i, k) in keep.iter_mut().enumerate() {
                if let Some(bad) = badness(&values, i, f) {
                    match spec.on_missing {
                        OnMissing::Error => {
                            return Err(Error::MissingValue {
                                location: Box::new(origin.at(&f.name, i)),
                                what: bad.describe(values.value(i), Some(f)),
                                hint: FEATURE_HINT.into(),
                            })
                        }
                        OnMissing::SkipRow => *k = false,
                        OnMissing::Zero | OnMissing::Mean => {}
                    }
                }
            }
        }
        numeric.push((values, clean));
    }
    // Categorical columns as Arrow text (no string per cell); a cross is
    // its members' tokens joined, hashed as it is read.
    let mut texts: Vec<Option<ArrayRef>> = Vec::with_capacity(spec.categorical.len());
    let mut members: Vec<Vec<usize>> = Vec::with_capacity(spec.categorical.len());
    for c in &spec.categorical {
        match spec.cross(c) {
            // A cross follows its columns. Numeric members scale the
            // cross's value (below), they add nothing to its token.
            Some(cross) => {
                let of = cross
                    .of
                    .iter()
                    .filter(|m| !spec.is_numeric(m))
                    .map(|m| {
                        let at = spec.categorical.iter().position(|x| x == m);
                        at.filter(|&k| k < texts.len()).ok_or_else(|| {
                            Error::Internal(format!("cross '{c}' of '{m}', which is not before it"))
                        })
                    })
                    .collect::<Result<Vec<usize>>>()?;
                texts.push(None);
                members.push(of);
            }
            // A column's missing tokens are handled before the next
            // column is read (a cross's are its members', handled before).
            None => {
                let text = token_text(column(batch, c, origin)?, c, origin)?;
                if text.null_count() > 0 {
                    match spec.on_missing {
                        OnMissing::Error => {
                            if let Some(i) = (0..n).find(|&i| text.is_null(i)) {
                                return Err(Error::MissingValue {
                                    location: Box::new(origin.at(c, i)),
                                    what: "null value".into(),
                                    hint: FEATURE_HINT.into(),
                                });
                            }
                        }
                        OnMissing::SkipRow => {
                            for (i, k) in keep.iter_mut().enumerate() {
                                if text.is_null(i) {
                                    *k = false;
                                }
                            }
                        }
                        OnMissing::Zero | OnMissing::Mean => {}
                    }
                }
                texts.push(Some(text));
                members.push(Vec::new());
            }
        }
    }
    let tokens = Tokens {
        text: texts
            .iter()
            .map(|t| t.as_ref().map(|a| a.as_string::<i32>()))
            .collect(),
        members: &members,
    };
    let labels = match label {
        LabelUse::Skip => None,
        _ => {
            let values =
                LabelColumn::read(column(batch, &spec.label, origin)?, &spec.label, origin)?;
            for (i, k) in keep.iter_mut().enumerate() {
                if let Some(what) = values.missing(i) {
                    if skip {
                        *k = false;
                    } else {
                        return Err(Error::MissingValue {
                            location: Box::new(origin.at(&spec.label, i)),
                            what,
                            hint: LABEL_HINT.into(),
                        });
                    }
                }
            }
            Some(values)
        }
    };
    // Weights are read as they are (a null as NaN) and checked on the
    // training rows only, once they are split from the held-out ones
    // (`crate::data::window`).
    let weights = match (label, spec.weight.as_ref().and_then(|w| w.column.as_ref())) {
        (LabelUse::Skip, _) | (_, None) => None,
        (_, Some(w)) => Some(numeric_array(column(batch, w, origin)?, w, origin)?),
    };

    let rows = keep.iter().filter(|&&k| k).count();
    let p = spec.numeric.len();
    let c = spec.categorical.len();
    let mut block = Block {
        rows,
        p,
        c,
        dense: Vec::with_capacity(rows * p),
        raw: Vec::new(),
        hashed: Vec::with_capacity(rows * c),
        signs: Vec::with_capacity(rows * c),
        label: Labels::default(),
        tokens: Vec::new(),
        file_row: FileRows::default(),
        weight: Vec::new(),
    };
    let kept: Vec<usize> = (0..n).filter(|&i| keep[i]).collect();
    block
        .file_row
        .extend(kept.iter().map(|&i| origin.first_row + i as u64));
    if let Some(values) = weights {
        block.weight = kept
            .iter()
            .map(|&i| {
                if values.is_null(i) {
                    NULL_WEIGHT
                } else {
                    values.value(i)
                }
            })
            .collect();
    }
    block.dense.resize(rows * p, 0.0);
    if keep_raw {
        block.raw.resize(rows * p, 0.0);
    }
    let every_row = rows == n;
    for start in (0..rows).step_by(TRANSPOSE_ROWS) {
        let end = (start + TRANSPOSE_ROWS).min(rows);
        for (j, (f, (values, clean))) in spec.numeric.iter().zip(&numeric).enumerate() {
            let raw = values.values();
            if *clean && every_row {
                // Row `r` is file row `r`, every value usable and in range.
                let identity = is_identity(f);
                for (r, &v) in raw.iter().enumerate().take(end).skip(start) {
                    block.dense[r * p + j] = if identity {
                        v as f32
                    } else {
                        standardized(v, f)
                    };
                    if keep_raw {
                        block.raw[r * p + j] = v;
                    }
                }
                continue;
            }
            for (r, &i) in kept.iter().enumerate().take(end).skip(start) {
                let v = if *clean || badness(values, i, f).is_none() {
                    raw[i]
                } else {
                    f.fill
                };
                // In range by the checks above (fill values are training means).
                block.dense[r * p + j] = standardized(v, f);
                if keep_raw {
                    block.raw[r * p + j] = v;
                }
            }
        }
    }
    // Per categorical column, the numeric features (by index) whose
    // values scale it: a cross's numeric members.
    let scales: Vec<Vec<usize>> = spec
        .categorical
        .iter()
        .map(|c| {
            spec.cross(c).map_or_else(Vec::new, |cross| {
                cross
                    .of
                    .iter()
                    .filter_map(|m| spec.numeric.iter().position(|f| f.name == *m))
                    .collect()
            })
        })
        .collect();
    let prefixes: Vec<u64> = spec.categorical.iter().map(|c| column_prefix(c)).collect();
    for (r, &i) in kept.iter().enumerate() {
        for (k, (col, scale)) in spec.categorical.iter().zip(&scales).enumerate() {
            let mut hasher = FnvHasher::with_key(prefixes[k]);
            if !tokens.write(k, i, &mut hasher) {
                // A missing token: no slot.
                block.hashed.push(0);
                block.signs.push(0.0);
                continue;
            }
            let (h, mut s) = slot(hasher.finish(), spec.hash_bits);
            for &j in scale {
                s *= block.dense[r * p + j];
            }
            // (The scan's raw values may be missing: NaN there.)
            if how == Keep::Dense && !s.is_finite() {
                return Err(Error::MissingValue {
                    location: Box::new(origin.at(col, i)),
                    what: "a cross's value beyond ±3.4e38 (the product of its numeric features)"
                        .into(),
                    hint: "standardise the features (data.standardize = true) or rescale them"
                        .into(),
                });
            }
            block.hashed.push(h);
            block.signs.push(s);
        }
    }
    if let Some(values) = labels {
        match (label, &values) {
            (LabelUse::Skip, _) => {}
            (LabelUse::Value, LabelColumn::Numeric(a)) => {
                block.label.extend(kept.iter().map(|&i| a.value(i)));
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
                        Some(k) => block.label.push(k as f64),
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

/// The rows of row-major `v` (`w` values a row) whose flag is set.
fn pick_rows<T: Copy>(v: &[T], w: usize, flags: &[bool]) -> Vec<T> {
    flags
        .iter()
        .enumerate()
        .filter(|(_, &k)| k)
        .flat_map(|(i, _)| v[i * w..(i + 1) * w].iter().copied())
        .collect()
}

/// The rows of row-major `v` (`w` values a row) in `order`.
fn gather_rows<T: Copy>(v: &[T], w: usize, order: &[usize]) -> Vec<T> {
    order
        .iter()
        .flat_map(|&i| v[i * w..(i + 1) * w].iter().copied())
        .collect()
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
        self.dense = pick_rows(&self.dense, p, &flags);
        if !self.raw.is_empty() {
            self.raw = pick_rows(&self.raw, p, &flags);
        }
        self.signs = pick_rows(&self.signs, c, &flags);
        self.hashed = pick_rows(&self.hashed, c, &flags);
        if !self.label.is_empty() {
            self.label = self.label.pick(&flags);
        }
        if !self.tokens.is_empty() {
            self.tokens = flags
                .iter()
                .zip(&self.tokens)
                .filter(|(&k, _)| k)
                .map(|(_, t)| t.clone())
                .collect();
        }
        self.file_row = self.file_row.pick(&flags);
        if !self.weight.is_empty() {
            self.weight = pick_rows(&self.weight, 1, &flags);
        }
        self.rows = rows;
    }

    /// Reorders rows by `order` (a permutation of `0..rows`).
    pub fn permute(&mut self, order: &[usize]) {
        let (p, c) = (self.p, self.c);
        self.dense = gather_rows(&self.dense, p, order);
        if !self.raw.is_empty() {
            self.raw = gather_rows(&self.raw, p, order);
        }
        self.signs = gather_rows(&self.signs, c, order);
        self.hashed = gather_rows(&self.hashed, c, order);
        if !self.label.is_empty() {
            self.label = self.label.gather(order);
        }
        self.file_row = self.file_row.gather(order);
        if !self.weight.is_empty() {
            self.weight = gather_rows(&self.weight, 1, order);
        }
    }

    /// Bytes held by the decoded values.
    pub fn heap_bytes(&self) -> usize {
        self.dense.len() * 4
            + self.raw.len() * 8
            + self.hashed.len() * 4
            + self.signs.len() * 4
            + self.label.heap_bytes()
            + self.file_row.heap_bytes()
            + self.weight.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::hashing::hash_token;
    use arrow::array::{
        BooleanArray, DictionaryArray, Float32Array, Int32Array, Int64Array, StringArray,
        UInt64Array,
    };
    use arrow::datatypes::Int32Type;
    use std::sync::Arc;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    fn numeric(name: &str, fill: f64, center: f64, scale: f64) -> NumericFeature {
        NumericFeature {
            name: name.into(),
            fill,
            center,
            scale,
        }
    }

    fn spec(
        numeric: Vec<NumericFeature>,
        categorical: &[&str],
        on_missing: OnMissing,
    ) -> FeatureSpec {
        FeatureSpec {
            label: "y".into(),
            numeric,
            categorical: categorical.iter().map(|c| c.to_string()).collect(),
            crosses: Vec::new(),
            hash_bits: 10,
            on_missing,
            classes: None,
            weight: None,
        }
    }

    fn origin() -> Origin<'static> {
        Origin {
            file: Path::new("data/f.parquet"),
            row_group: Some(2),
            first_row: 100,
        }
    }

    fn labels(n: usize) -> ArrayRef {
        Arc::new(Float64Array::from(
            (0..n).map(|i| i as f64).collect::<Vec<_>>(),
        ))
    }

    /// The error's location and its `what`.
    fn missing(e: Error) -> (String, u64, String, String) {
        match e {
            Error::MissingValue {
                location,
                what,
                hint,
            } => {
                assert_eq!(location.file, Path::new("data/f.parquet"));
                assert_eq!(location.row_group, Some(2));
                (location.column.unwrap(), location.row.unwrap(), what, hint)
            }
            other => panic!("expected a missing value, got {other:?}"),
        }
    }

    /// The scan decodes a cross scaled by a numeric feature whatever its
    /// value (a missing one is `NaN` there, a product beyond the range
    /// may be in range once standardised), with or without the `f64`s.
    #[test]
    fn the_scan_takes_any_value_of_a_scaled_cross() {
        for (a, kind) in [
            (vec![Some(1.0f32), None], "f32, missing"),
            (
                vec![Some(3e20), Some(-2e20)],
                "f32, product beyond the range",
            ),
        ] {
            let b = batch(vec![
                ("a", Arc::new(Float32Array::from(a.clone())) as ArrayRef),
                ("d", Arc::new(Float32Array::from(a))),
                ("c", Arc::new(StringArray::from(vec!["u", "v"]))),
                ("y", labels(2)),
            ]);
            let mut s = spec(
                vec![
                    numeric("a", f64::NAN, 0.0, 1.0),
                    numeric("d", f64::NAN, 0.0, 1.0),
                ],
                &["c", "c×a×d"],
                OnMissing::Zero,
            );
            s.crosses = vec![cross("c×a×d", &["c", "a", "d"])];
            let raw = decode_raw(&b, &s, LabelUse::Value, &origin());
            let scan = decode_scan(&b, &s, LabelUse::Value, &origin());
            assert!(raw.is_ok(), "{kind}: {raw:?}");
            let scan = scan.unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert!(scan.raw.is_empty(), "{kind}");
            assert_eq!(scan.hashed, raw.unwrap().hashed, "{kind}");
            // Training's decoding refuses the product beyond the range.
            if kind.contains("beyond") {
                assert!(decode(&b, &s, LabelUse::Value, &origin()).is_err());
            }
        }
    }

    /// Under `error`, a null in a categorical column is reported before a
    /// later column is read (its type, its presence); and a cross's slot
    /// is pinned: FNV-1a of `origin×dest`, 0x1f, `JFK×LAX`, splitmix64
    /// finalised, computed outside tidemill.
    #[test]
    fn categorical_columns_fail_in_order_and_crosses_keep_their_slots() {
        let b = batch(vec![
            (
                "a",
                Arc::new(StringArray::from(vec![None, Some("x")])) as ArrayRef,
            ),
            ("b", Arc::new(Float64Array::from(vec![1.0, 2.0]))),
            ("y", labels(2)),
        ]);
        let s = spec(Vec::new(), &["a", "b"], OnMissing::Error);
        assert_eq!(
            first_missing(&b, &s),
            ("a".into(), 100, "null value".into())
        );

        let b = batch(vec![
            (
                "origin",
                Arc::new(StringArray::from(vec!["JFK"])) as ArrayRef,
            ),
            ("dest", Arc::new(StringArray::from(vec!["LAX"]))),
            ("y", labels(1)),
        ]);
        let mut s = spec(
            Vec::new(),
            &["origin", "dest", "origin×dest"],
            OnMissing::Error,
        );
        s.hash_bits = 18;
        s.crosses = vec![cross("origin×dest", &["origin", "dest"])];
        let block = decode(&b, &s, LabelUse::Value, &origin()).unwrap();
        assert_eq!((block.hashed[2], block.signs[2]), (11273, 1.0));
    }

    /// The column, row and `what` of the missing value decoding `b` with
    /// `s` fails on.
    fn first_missing(b: &RecordBatch, s: &FeatureSpec) -> (String, u64, String) {
        let (column, row, what, _) = missing(decode(b, s, LabelUse::Value, &origin()).unwrap_err());
        (column, row, what)
    }

    /// A cross named `name` of columns `of`.
    fn cross(name: &str, of: &[&str]) -> crate::plan::features::Cross {
        crate::plan::features::Cross {
            name: name.into(),
            of: of.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn numeric_columns_of_every_type_are_centred_scaled_and_rounded_to_f32() {
        let b = batch(vec![
            ("a", Arc::new(Int32Array::from(vec![1, -3, 7])) as ArrayRef),
            ("b", Arc::new(Float32Array::from(vec![0.1f32, 2.5, -1e-3]))),
            ("c", Arc::new(BooleanArray::from(vec![true, false, true]))),
            ("d", Arc::new(UInt64Array::from(vec![u64::MAX, 0, 5]))),
            ("y", Arc::new(Float64Array::from(vec![1.5, -2.0, 3.25]))),
        ]);
        let s = spec(
            vec![
                numeric("a", 0.0, 2.0, 4.0),
                numeric("b", 0.0, 0.5, 3.0),
                numeric("c", 0.0, 0.0, 1.0),
                numeric("d", 0.0, 1e19, 1e18),
            ],
            &[],
            OnMissing::Error,
        );
        let block = decode_raw(&b, &s, LabelUse::Value, &origin()).unwrap();
        let raw = [
            [1.0, f64::from(0.1f32), 1.0, 18_446_744_073_709_551_615.0],
            [-3.0, 2.5, 0.0, 0.0],
            [7.0, f64::from(-1e-3f32), 1.0, 5.0],
        ];
        let (centers, scales) = ([2.0, 0.5, 0.0, 1e19], [4.0, 3.0, 1.0, 1e18]);
        assert_eq!((block.rows, block.p, block.c), (3, 4, 0));
        for (r, values) in raw.iter().enumerate() {
            for (j, &v) in values.iter().enumerate() {
                assert_eq!(block.raw[r * 4 + j], v);
                let want = ((v - centers[j]) / scales[j]) as f32;
                assert_eq!(
                    block.dense[r * 4 + j].to_bits(),
                    want.to_bits(),
                    "row {r} col {j}"
                );
            }
        }
        assert_eq!(block.label.to_vec(), [1.5, -2.0, 3.25]);
        assert_eq!(block.file_row.to_vec(), [100, 101, 102]);
        // decode keeps no raw copy.
        assert!(decode(&b, &s, LabelUse::Value, &origin())
            .unwrap()
            .raw
            .is_empty());
    }

    /// One feature column `x` with values `v` (center `c`, scale `s`).
    fn one(v: Vec<Option<f64>>, c: f64, s: f64, on_missing: OnMissing) -> Result<Block> {
        let n = v.len();
        let b = batch(vec![
            ("x", Arc::new(Float64Array::from(v)) as ArrayRef),
            ("y", labels(n)),
        ]);
        let sp = spec(vec![numeric("x", 7.5, c, s)], &[], on_missing);
        decode(&b, &sp, LabelUse::Value, &origin())
    }

    #[test]
    fn unusable_values_are_classified_and_located() {
        let max = f64::from(f32::MAX);
        let above = f64::from_bits(max.to_bits() + 1);
        let cases: [(f64, f64, f64, &str); 6] = [
            (f64::NAN, 0.0, 1.0, "NaN"),
            (f64::INFINITY, 0.0, 1.0, "infinite value"),
            (f64::NEG_INFINITY, 0.0, 1.0, "infinite value"),
            (above, 0.0, 1.0, "is outside the range"),
            (-above, 0.0, 1.0, "is outside the range"),
            (1e30, 0.0, 1e-10, "after standardisation"),
        ];
        for (v, c, s, what) in cases {
            let e = one(vec![Some(1.0), Some(2.0), Some(v)], c, s, OnMissing::Error).unwrap_err();
            let (column, row, got, hint) = missing(e);
            assert_eq!((column.as_str(), row), ("x", 102), "{v}");
            assert!(got.contains(what), "{v}: {got}");
            assert_eq!(hint, FEATURE_HINT);
        }
        let (_, row, what, _) =
            missing(one(vec![None, Some(1.0)], 0.0, 1.0, OnMissing::Error).unwrap_err());
        assert_eq!((row, what.as_str()), (100, "null value"));
        // The edges of the f32 range are usable, before and after scaling.
        let ok = one(
            vec![Some(max), Some(-max), Some(max / 2.0)],
            0.0,
            1.0,
            OnMissing::Error,
        )
        .unwrap();
        assert_eq!(ok.dense, [f32::MAX, -f32::MAX, f32::MAX / 2.0]);
        let ok = one(vec![Some(max / 2.0)], -max / 2.0, 1.0, OnMissing::Error).unwrap();
        assert_eq!(ok.dense, [f32::MAX]);
    }

    #[test]
    fn unusable_values_follow_the_policy() {
        let v = || {
            vec![
                Some(1.0),
                None,
                Some(f64::NAN),
                Some(4.0),
                Some(1e39),
                Some(6.0),
            ]
        };
        let skip = one(v(), 1.0, 2.0, OnMissing::SkipRow).unwrap();
        assert_eq!(skip.rows, 3);
        assert_eq!(skip.file_row.to_vec(), [100, 103, 105]);
        assert_eq!(skip.dense, [0.0, 1.5, 2.5]);
        assert_eq!(skip.label.to_vec(), [0.0, 3.0, 5.0]);
        // zero and mean put in the feature's fill (raw units), then scale it.
        for policy in [OnMissing::Zero, OnMissing::Mean] {
            let filled = one(v(), 1.0, 2.0, policy).unwrap();
            let f = ((7.5 - 1.0) / 2.0) as f32;
            assert_eq!(filled.dense, [0.0, f, f, 1.5, f, 2.5]);
            assert_eq!(filled.file_row.to_vec(), [100, 101, 102, 103, 104, 105]);
        }
    }

    #[test]
    fn missing_labels_fail_unless_rows_are_skipped() {
        let b = batch(vec![
            (
                "x",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    None,
                    Some(f64::INFINITY),
                    Some(0.5),
                ])),
            ),
        ]);
        let mut s = spec(vec![numeric("x", 0.0, 0.0, 1.0)], &[], OnMissing::Zero);
        let (column, row, what, hint) =
            missing(decode(&b, &s, LabelUse::Value, &origin()).unwrap_err());
        assert_eq!(
            (column.as_str(), row, what.as_str()),
            ("y", 101, "missing label (null)")
        );
        assert_eq!(hint, LABEL_HINT);
        s.on_missing = OnMissing::SkipRow;
        let block = decode(&b, &s, LabelUse::Value, &origin()).unwrap();
        assert_eq!(
            (
                block.label.to_vec().as_slice(),
                block.file_row.to_vec().as_slice()
            ),
            ([1.0, 0.5].as_slice(), [100, 103].as_slice())
        );
        // Not read for prediction: no label, no failure.
        s.on_missing = OnMissing::Error;
        let block = decode(&b, &s, LabelUse::Skip, &origin()).unwrap();
        assert_eq!((block.rows, block.label.len()), (4, 0));
    }

    #[test]
    fn categorical_tokens_hash_by_their_text() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![Some("7"), Some("red"), None]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), Some(-1), Some(0)]));
        let big: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX, 1, 2]));
        let bools: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true]));
        let dict: ArrayRef = Arc::new(
            vec![Some("7"), Some("red"), None]
                .into_iter()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let b = batch(vec![
            ("s", strings),
            ("i", ints),
            ("u", big),
            ("t", bools),
            ("d", dict),
            ("y", labels(3)),
        ]);
        let s = spec(Vec::new(), &["s", "i", "u", "t", "d"], OnMissing::Zero);
        let block = decode(&b, &s, LabelUse::Value, &origin()).unwrap();
        assert_eq!((block.rows, block.p, block.c), (3, 0, 5));
        let expect = |row: usize, col: usize, name: &str, token: &str| {
            let (h, sign) = hash_token(name, token, 10);
            assert_eq!(
                (block.hashed[row * 5 + col], block.signs[row * 5 + col]),
                (h, sign),
                "row {row} column {name} token {token}"
            );
            assert!(h < 1024 && (sign == 1.0 || sign == -1.0));
        };
        expect(0, 0, "s", "7");
        expect(1, 0, "s", "red");
        expect(0, 1, "i", "7");
        expect(1, 1, "i", "-1");
        expect(0, 2, "u", "18446744073709551615");
        expect(0, 3, "t", "1");
        expect(1, 3, "t", "0");
        expect(0, 4, "d", "7");
        expect(1, 4, "d", "red");
        // The same text in another column is another token.
        assert_ne!(hash_token("s", "7", 28), hash_token("i", "7", 28));
        // A null token contributes nothing under zero …
        assert_eq!((block.hashed[2 * 5], block.signs[2 * 5]), (0, 0.0));
        assert_eq!(block.signs[2 * 5 + 4], 0.0);
        // … drops its row under skip_row, and fails under error.
        let s = spec(Vec::new(), &["s", "i"], OnMissing::SkipRow);
        assert_eq!(
            decode(&b, &s, LabelUse::Value, &origin())
                .unwrap()
                .file_row
                .to_vec(),
            [100, 101]
        );
        let s = spec(Vec::new(), &["i", "s"], OnMissing::Error);
        assert_eq!(
            first_missing(&b, &s),
            ("s".into(), 102, "null value".into())
        );
    }

    #[test]
    fn class_labels_match_by_value_or_by_name() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let map = ClassMap::new(&names(&["-1", "1.0", "2.5"]));
        let y: ArrayRef = Arc::new(Float64Array::from(vec![1.0, -1.0, 2.5, 1.0]));
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![-1, 1]));
        let s = spec(Vec::new(), &[], OnMissing::Error);
        let decode_y = |y: ArrayRef, use_: LabelUse| {
            let b = batch(vec![("y", y)]);
            decode(&b, &s, use_, &origin())
        };
        assert_eq!(
            decode_y(y.clone(), LabelUse::Classes(&map))
                .unwrap()
                .label
                .to_vec(),
            [1.0, 0.0, 2.0, 1.0]
        );
        assert_eq!(
            decode_y(ints, LabelUse::Classes(&map))
                .unwrap()
                .label
                .to_vec(),
            [0.0, 1.0]
        );
        // -0.0 is the class "0".
        let zero = ClassMap::new(&names(&["0", "1"]));
        let signed: ArrayRef = Arc::new(Float64Array::from(vec![-0.0, 1.0]));
        assert_eq!(
            decode_y(signed, LabelUse::Classes(&zero))
                .unwrap()
                .label
                .to_vec(),
            [0.0, 1.0]
        );
        // A value not among the classes names itself and the classes.
        let odd: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 3.0]));
        match decode_y(odd, LabelUse::Classes(&map)).unwrap_err() {
            Error::UnknownLabel {
                location,
                value,
                classes,
            } => {
                assert_eq!((location.row, value.as_str()), (Some(101), "3"));
                assert_eq!(classes, "-1, 1.0, 2.5");
            }
            other => panic!("{other:?}"),
        }
        // String labels match by name, exactly.
        let income = ClassMap::new(&names(&["<=50K", ">50K"]));
        let text: ArrayRef = Arc::new(StringArray::from(vec![">50K", "<=50K", ">50K"]));
        assert_eq!(
            decode_y(text, LabelUse::Classes(&income))
                .unwrap()
                .label
                .to_vec(),
            [1.0, 0.0, 1.0]
        );
        let near: ArrayRef = Arc::new(StringArray::from(vec![">50K", ">50K."]));
        assert!(matches!(
            decode_y(near, LabelUse::Classes(&income)),
            Err(Error::UnknownLabel { value, .. }) if value == ">50K."
        ));
        // Class discovery sees canonical tokens.
        assert_eq!(
            decode_y(y, LabelUse::Tokens).unwrap().tokens,
            ["1", "-1", "2.5", "1"]
        );
        // A regression label must be a number.
        let text: ArrayRef = Arc::new(StringArray::from(vec!["abc", "3"]));
        match decode_y(text, LabelUse::Value).unwrap_err() {
            Error::BadLabel { location, message } => {
                assert_eq!(location.row, Some(100));
                assert_eq!(message, "regression label 'abc' is not a number");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn class_lists_are_checked() {
        let check =
            |v: &[&str]| check_classes(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(check(&["a", "b", "1"]), Ok(()));
        assert_eq!(check(&[]), Err("no classes".into()));
        let e = check(&["a", "b", "a"]).unwrap_err();
        assert!(e.contains("'a' is listed twice (positions 0 and 2)"), "{e}");
        for same in [["1", "1.0"], ["-0", "0"], ["1e1", "10"]] {
            let e = check(&same).unwrap_err();
            assert!(e.contains("are the same number"), "{same:?}: {e}");
        }
        assert_eq!(number_token(3.0), "3");
        assert_eq!(number_token(-0.0), "0");
        assert_eq!(number_token(2.5), "2.5");
        assert_eq!(number_token(1e15), "1000000000000000");
        assert_eq!(number_token(1e16), "10000000000000000");
    }

    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, Just, Strategy};

    /// One value of a generated column: a small integer (exact in `f32`),
    /// an `f32`, any `f64`, huge, NaN, infinite, or null.
    fn cell() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            4 => (-1000i32..1000).prop_map(|i| Some(f64::from(i))),
            4 => any::<f32>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| Some(f64::from(v))),
            4 => (-1e6f64..1e6).prop_map(Some),
            1 => prop_oneof![Just(1e30), Just(-3e38), Just(4e38)].prop_map(Some),
            1 => Just(Some(f64::NAN)),
            1 => Just(Some(f64::INFINITY)),
            1 => Just(None),
        ]
    }

    proptest::proptest! {
        /// Every decoded value is its own formula, `((v − centre) / scale)`
        /// rounded to `f32` (or the fill's, where a value is unusable and
        /// the row kept), whichever path decoding takes: columns with and
        /// without unusable values, dropped rows, the identity (centre +0,
        /// scale 1, where the division is skipped) and a centre of −0
        /// (where it is not: `−0 − (−0)` is `+0`), and blocks of more
        /// rows than one transposed chunk.
        #[test]
        fn decoded_values_are_the_formula_on_every_path(
            columns in proptest::collection::vec(
                (prop_oneof![Just(0.0f64), Just(-0.0f64), -10.0f64..10.0],
                 prop_oneof![Just(1.0f64), 1e-3f64..1e3],
                 -5.0f64..5.0, any::<bool>()),
                1..4),
            rows in prop_oneof![1usize..40, 500usize..1300],
            seed in any::<u64>(),
            skip in any::<bool>(),
        ) {
            let mut state = seed | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let mut cols: Vec<(String, ArrayRef)> = Vec::new();
            let mut feats = Vec::new();
            let mut values: Vec<Vec<Option<f64>>> = Vec::new();
            for (j, (center, scale, fill, dirty)) in columns.iter().enumerate() {
                let name = format!("x{j}");
                let col: Vec<Option<f64>> = (0..rows)
                    .map(|_| {
                        let r = next();
                        match (dirty, r % 97) {
                            (true, 0) => None,
                            (true, 1) => Some(f64::NAN),
                            (true, 2) => Some(1e300),
                            (_, 3) => Some(-0.0),
                            (_, 4) => Some(0.0),
                            _ => Some((r >> 11) as f64 / (1u64 << 53) as f64 * 2e4 - 1e4),
                        }
                    })
                    .collect();
                cols.push((name.clone(), Arc::new(Float64Array::from(col.clone())) as ArrayRef));
                feats.push(numeric(&name, *fill, *center, *scale));
                values.push(col);
            }
            cols.push(("y".into(), labels(rows)));
            let b = RecordBatch::try_from_iter(cols).unwrap();
            let policy = if skip { OnMissing::SkipRow } else { OnMissing::Zero };
            let sp = spec(feats, &[], policy);
            let usable = |v: Option<f64>, f: &NumericFeature| {
                v.is_some_and(|v| v.abs() <= MAX_VALUE && ((v - f.center) / f.scale).abs() <= MAX_VALUE)
            };
            for keep_raw in [false, true] {
                let how = if keep_raw { Keep::Raw } else { Keep::Dense };
                let d = decode_with(&b, &sp, LabelUse::Value, &origin(), how).unwrap();
                let kept: Vec<usize> = (0..rows)
                    .filter(|&i| !skip || sp.numeric.iter().zip(&values).all(|(f, c)| usable(c[i], f)))
                    .collect();
                prop_assert_eq!(d.rows, kept.len());
                let p = sp.numeric.len();
                for (r, &i) in kept.iter().enumerate() {
                    for (j, f) in sp.numeric.iter().enumerate() {
                        let v = if usable(values[j][i], f) { values[j][i].unwrap_or(f.fill) } else { f.fill };
                        let want = ((v - f.center) / f.scale) as f32;
                        prop_assert_eq!(d.dense[r * p + j].to_bits(), want.to_bits(), "row {} feature {}", i, j);
                        if keep_raw {
                            prop_assert_eq!(d.raw[r * p + j].to_bits(), v.to_bits());
                        }
                    }
                    prop_assert_eq!(d.file_row.at(r), origin().first_row + i as u64);
                }
            }
        }

        /// Every hashed slot is `hash_token` of the column's text, a
        /// cross's being its members' tokens joined by `×` (times its
        /// numeric members' values): strings of any text (empty, non-ASCII,
        /// the separator itself) in `Utf8` and `LargeUtf8`, nulls, crosses
        /// of two and three columns; a missing member leaves the cross no
        /// slot under `zero`, drops the row under `skip_row` and is
        /// reported on its first row under `error`.
        #[test]
        fn hashed_slots_are_the_tokens_text(
            a in proptest::collection::vec(proptest::option::weighted(0.9, "[a-c×é]{0,3}"), 1..30),
            large in any::<bool>(),
            b_nulls in any::<bool>(),
            policy in prop_oneof![Just(OnMissing::Zero), Just(OnMissing::SkipRow), Just(OnMissing::Error)],
        ) {
            let n = a.len();
            let b_col: Vec<Option<String>> = (0..n)
                .map(|i| (!b_nulls || i % 5 != 4).then(|| format!("b{}", i % 4)))
                .collect();
            let x: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 3.0).collect();
            let a_arr: ArrayRef = if large {
                Arc::new(arrow::array::LargeStringArray::from(a.clone()))
            } else {
                Arc::new(StringArray::from(a.clone()))
            };
            let bt = batch(vec![
                ("a", a_arr),
                ("b", Arc::new(StringArray::from(b_col.clone())) as ArrayRef),
                ("x", Arc::new(Float64Array::from(x.clone())) as ArrayRef),
                ("y", labels(n)),
            ]);
            let mut sp = spec(vec![numeric("x", 0.0, 0.0, 1.0)], &["a", "b", "a×b", "b×x×a"], policy);
            sp.crosses = vec![
                cross("a×b", &["a", "b"]),
                cross("b×x×a", &["b", "x", "a"]),
            ];
            let decoded = decode(&bt, &sp, LabelUse::Value, &origin());
            // Under `error`, the first column with a null (`a` before `b`)
            // is reported at its first null row.
            let first_null = a.iter().position(Option::is_none).map(|i| ("a", i))
                .or_else(|| b_col.iter().position(Option::is_none).map(|i| ("b", i)));
            if policy == OnMissing::Error {
                if let Some((col, i)) = first_null {
                    let (column, row, _, _) = missing(decoded.unwrap_err());
                    prop_assert_eq!((column.as_str(), row), (col, origin().first_row + i as u64));
                    return Ok(());
                }
            }
            let d = decoded.unwrap();
            let kept: Vec<usize> = (0..n)
                .filter(|&i| policy != OnMissing::SkipRow || (a[i].is_some() && b_col[i].is_some()))
                .collect();
            prop_assert_eq!(d.rows, kept.len());
            for (r, &i) in kept.iter().enumerate() {
                let none = (0, 0.0);
                let one = |col: &str, t: Option<&str>| t.map_or(none, |t| hash_token(col, t, 10));
                let want: Vec<(u32, f32)> = match (a[i].as_deref(), b_col[i].as_deref()) {
                    (Some(ai), Some(bi)) => {
                        let (h, s) = hash_token("b×x×a", &format!("{bi}×{ai}"), 10);
                        vec![
                            hash_token("a", ai, 10),
                            hash_token("b", bi, 10),
                            hash_token("a×b", &format!("{ai}×{bi}"), 10),
                            (h, s * x[i] as f32),
                        ]
                    }
                    (ai, bi) => vec![one("a", ai), one("b", bi), none, none],
                };
                for (k, (h, s)) in want.into_iter().enumerate() {
                    prop_assert_eq!(d.hashed[r * 4 + k], h, "row {} column {}", i, k);
                    prop_assert_eq!(d.signs[r * 4 + k].to_bits(), s.to_bits(), "row {} column {}", i, k);
                }
            }
        }

        /// The scan's decoding gives every row the `f64`s `decode_raw`
        /// keeps, bit for bit (NaN where unusable), and the same `dense`;
        /// it leaves `raw` empty exactly where every numeric column's type
        /// converts to `f32` exactly.
        #[test]
        fn scan_rows_are_the_raw_values(
            kinds in proptest::collection::vec(0u8..5, 1..4),
            cells in proptest::collection::vec(cell(), 1..60),
        ) {
            let rows = cells.len();
            let mut cols: Vec<(String, ArrayRef)> = Vec::new();
            let mut draft = Vec::new();
            for (j, kind) in kinds.iter().enumerate() {
                let name = format!("x{j}");
                let shift = |v: f64| v * (j as f64 + 1.0);
                let array: ArrayRef = match kind {
                    0 => Arc::new(Float32Array::from(cells.iter().map(|v| v.map(|v| shift(v) as f32)).collect::<Vec<_>>())),
                    1 => Arc::new(arrow::array::Int16Array::from(cells.iter().map(|v| v.filter(|v| v.is_finite()).map(|v| (shift(v) as i64).clamp(-32768, 32767) as i16)).collect::<Vec<_>>())),
                    2 => Arc::new(BooleanArray::from(cells.iter().map(|v| v.map(|v| v > 0.0)).collect::<Vec<_>>())),
                    3 => Arc::new(Int32Array::from(cells.iter().map(|v| v.filter(|v| v.is_finite()).map(|v| shift(v) as i32)).collect::<Vec<_>>())),
                    _ => Arc::new(Float64Array::from(cells.iter().map(|v| v.map(shift)).collect::<Vec<_>>())),
                };
                cols.push((name.clone(), array));
                draft.push(numeric(&name, f64::NAN, 0.0, 1.0));
            }
            cols.push(("y".into(), labels(rows)));
            let b = RecordBatch::try_from_iter(cols).unwrap();
            let sp = spec(draft, &[], OnMissing::Zero);
            let raw = decode_raw(&b, &sp, LabelUse::Value, &origin()).unwrap();
            let scan = decode_scan(&b, &sp, LabelUse::Value, &origin()).unwrap();
            prop_assert_eq!(scan.raw.is_empty(), kinds.iter().all(|&k| k <= 2));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&scan.dense), bits(&raw.dense));
            let p = sp.numeric.len();
            let mut seen = 0;
            scan.raw_rows(|i, row| {
                seen += 1;
                for (j, &x) in row.iter().enumerate() {
                    let want = raw.raw[i * p + j];
                    assert!(x.to_bits() == want.to_bits() || (x.is_nan() && want.is_nan()), "row {i} column {j}: {x} against {want}");
                }
            });
            prop_assert_eq!(seen, rows);
        }

        /// The statistics scan's decoding (centre 0, scale 1, NaN for
        /// every unusable number), slimmed to one copy and standardised in
        /// place, is bit for bit what decoding with the final spec gives,
        /// or is refused exactly where that decoding meets a value beyond
        /// the range once standardised (which `on_missing` decides).
        #[test]
        fn restandardized_scan_blocks_are_what_decoding_gives(
            columns in proptest::collection::vec(
                (proptest::collection::vec(cell(), 1..40), any::<bool>(),
                 -10.0f64..10.0, prop_oneof![Just(1.0f64), 1e-12f64..1e3], -5.0f64..5.0),
                1..4),
            policy in prop_oneof![Just(OnMissing::Zero), Just(OnMissing::Mean), Just(OnMissing::SkipRow)],
            categorical in any::<bool>(),
        ) {
            let rows = columns.iter().map(|c| c.0.len()).min().unwrap_or(0);
            let mut cols: Vec<(String, ArrayRef)> = Vec::new();
            let (mut draft, mut last) = (Vec::new(), Vec::new());
            for (j, (values, as_f32, center, scale, fill)) in columns.iter().enumerate() {
                let name = format!("x{j}");
                let values = &values[..rows];
                let array: ArrayRef = if *as_f32 {
                    Arc::new(Float32Array::from(values.iter().map(|v| v.map(|v| v as f32)).collect::<Vec<_>>()))
                } else {
                    Arc::new(Float64Array::from(values.to_vec()))
                };
                cols.push((name.clone(), array));
                draft.push(numeric(&name, f64::NAN, 0.0, 1.0));
                last.push(numeric(&name, *fill, *center, *scale));
            }
            cols.push(("c".into(), Arc::new(StringArray::from((0..rows).map(|i| format!("t{}", i % 3)).collect::<Vec<_>>()))));
            cols.push(("y".into(), labels(rows)));
            let b = RecordBatch::try_from_iter(cols).unwrap();
            let cats: &[&str] = if categorical { &["c"] } else { &[] };
            let scan_policy = if policy == OnMissing::Mean { OnMissing::Zero } else { policy };
            let scan = spec(draft, cats, scan_policy);
            let fin = spec(last, cats, policy);
            let mut scanned = decode_scan(&b, &scan, LabelUse::Value, &origin()).unwrap();
            let exact = dense_is_exact(&scanned);
            if exact {
                scanned.raw = Vec::new();
            } else {
                scanned.dense = Vec::new();
            }
            let decoded = decode(&b, &fin, LabelUse::Value, &origin());
            if restandardize(&mut scanned, &fin) {
                let d = decoded.unwrap();
                prop_assert_eq!(scanned.rows, d.rows);
                prop_assert!(scanned.raw.is_empty());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&scanned.dense), bits(&d.dense));
                prop_assert_eq!(&scanned.hashed, &d.hashed);
                prop_assert_eq!(bits(&scanned.signs), bits(&d.signs));
                prop_assert_eq!(&scanned.label, &d.label);
                prop_assert_eq!(&scanned.file_row, &d.file_row);
            } else {
                // Refused: decoding meets a value out of range once
                // standardised, and fails (or drops its row) over it.
                let scaled_out = (0..rows).any(|i| {
                    fin.numeric.iter().enumerate().any(|(j, f)| {
                        let v = columns[j].0[i].map(|v| if columns[j].1 { f64::from(v as f32) } else { v });
                        v.is_some_and(|v| v.abs() <= MAX_VALUE && !scaled_in_range(v, f))
                    })
                });
                prop_assert!(scaled_out);
                match policy {
                    OnMissing::SkipRow => prop_assert!(decoded.unwrap().rows < rows),
                    _ => prop_assert!(decoded.is_ok()),
                }
            }
        }
    }
}
