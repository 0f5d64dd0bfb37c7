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
}

/// A cross of categorical columns, hashed as one more column: its token on
/// a row is the members' tokens joined by `×` (null if one is null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cross {
    /// The column name it is hashed under (`origin×dest`).
    pub name: String,
    /// The categorical columns it crosses, in order.
    pub of: Vec<String>,
}

impl FeatureSpec {
    /// The cross named `name`, if that categorical column is one.
    pub fn cross(&self, name: &str) -> Option<&Cross> {
        self.crosses.iter().find(|c| c.name == name)
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
