//! The feature spec a plan drafts from the schema: which columns are
//! numeric features, which are hashed, and which is the label. Statistics
//! fill in centring, scaling and classes later; decoding rows with a spec
//! lives in [`crate::data::encode`].
//!
//! The [`FeatureSpec`] is saved inside every model file, so `predict`
//! applies exactly the preprocessing training used.

use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

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
    /// Hashed categorical columns, crosses included (after the columns
    /// they cross).
    pub categorical: Vec<String>,
    /// The crosses among [`Self::categorical`]: each one's name and the
    /// columns whose tokens it joins (`crate::spec::cross_name`). Always
    /// written (binary checkpoints and messages read fields by position);
    /// a model file without it has none.
    #[serde(default)]
    pub crosses: Vec<Cross>,
    /// The hashed space has `2^hash_bits` slots (after the numeric features).
    pub hash_bits: u32,
    /// Missing-value policy.
    pub on_missing: OnMissing,
    /// Class names in index order (classifiers).
    pub classes: Option<Vec<String>>,
    /// How training weighs rows (`data.weight`, `model.class_weight`).
    /// Never written: prediction reads no weights, and a job's plan sets
    /// it from its pipeline.
    #[serde(skip)]
    pub weight: Option<Weighting>,
}

/// How training rows are weighted (`data.weight`, `model.class_weight`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Weighting {
    /// The sample-weight column, if any (else every row weighs 1 before
    /// its class weight).
    pub column: Option<String>,
    /// Each class's weight, by class index (empty until the scan has
    /// counted the classes, or without class weights).
    pub class: Vec<f64>,
    /// `n / Σ w`: the training rows over their total weight (class weights
    /// included), so that the rows weigh `n` in all: the objective of the
    /// rows repeated, with the same step sizes (1 until the scan).
    pub scale: f64,
}

/// A cross of categorical columns (and numeric features), hashed as one
/// more column: its token on a row is the categorical members' tokens
/// joined by `×` (null if one is null), and its value the token's sign
/// times the numeric members' values (as the model sees them: filled,
/// centred and scaled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cross {
    /// The column name it is hashed under (`origin×dest`).
    pub name: String,
    /// The columns it crosses, in order: categorical columns, and numeric
    /// features whose values scale it.
    pub of: Vec<String>,
}

impl FeatureSpec {
    /// The cross named `name`, if that categorical column is one.
    pub fn cross(&self, name: &str) -> Option<&Cross> {
        self.crosses.iter().find(|c| c.name == name)
    }

    /// True if `name` is a numeric feature.
    pub fn is_numeric(&self, name: &str) -> bool {
        self.numeric.iter().any(|f| f.name == name)
    }

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

    /// The feature columns to read (a cross's columns are among them).
    pub fn feature_columns(&self) -> Vec<String> {
        self.numeric
            .iter()
            .map(|f| f.name.clone())
            .chain(
                self.categorical
                    .iter()
                    .filter(|c| self.cross(c).is_none())
                    .cloned(),
            )
            .collect()
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
