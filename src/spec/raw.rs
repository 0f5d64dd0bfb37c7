//! The pipeline file as written: serde structs, no checks beyond types.
//!
//! Every table denies unknown fields, so a typo names the key it is in.

use serde::{Deserialize, Serialize};

/// A whole pipeline file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// What data to read and how to turn it into features.
    pub data: RawData,
    /// Which model to fit.
    pub model: RawModel,
    /// How to optimise.
    #[serde(default)]
    pub optimizer: RawOptimizer,
    /// How long and how to distribute.
    #[serde(default)]
    pub train: RawTrain,
    /// Where results go.
    #[serde(default)]
    pub output: RawOutput,
    /// How `tidemill stream` cuts and publishes a stream.
    #[serde(default)]
    pub stream: RawStream,
}

/// `[stream]`: what `tidemill stream` does with its input.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Rows per batch.
    pub batch_rows: Option<i64>,
    /// A live source's batch also ends this long after its first row.
    pub batch_seconds: Option<f64>,
    /// Training passes over each batch.
    pub passes: Option<i64>,
    /// A replay's rows sorted by this column first.
    pub order_by: Option<String>,
    /// A snapshot of the model every this many batches.
    pub snapshot_every: Option<i64>,
    /// And at least this often, in seconds.
    pub snapshot_seconds: Option<f64>,
    /// Numbered snapshots kept beside the model file (0: none).
    pub snapshot_keep: Option<i64>,
    /// Batches in the rolling progressive metrics.
    pub rolling_batches: Option<i64>,
    /// Keep every score for the whole stream's AUC.
    pub stream_auc: Option<bool>,
    /// A sliding window (exact models).
    pub window: Option<RawWindow>,
}

/// `[stream] window`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// The time column.
    pub column: Option<String>,
    /// How long rows stay: `"7d"`, `"12h"`, or a number in the column's units.
    pub length: Option<toml::Value>,
    /// Or: the last this many rows.
    pub rows: Option<i64>,
}

/// One path or a list of paths.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawPaths {
    /// A file or a directory.
    One(String),
    /// Several files or directories.
    Many(Vec<String>),
}

/// How to hold out validation rows: `{ fraction = F }` or `{ path = P }`
/// (exactly one; checked in [`super::Pipeline::from_raw`], so that the
/// message can say so).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidation {
    /// A seeded random fraction of the training rows, in (0, 1).
    pub fraction: Option<f64>,
    /// A separate data source: file, directory or list.
    pub path: Option<RawPaths>,
    /// Hold out fold `fold` (0-based) of `folds`.
    pub fold: Option<u32>,
    /// Folds in all (with `fold`).
    pub folds: Option<u32>,
}

/// `[data]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    /// Training data: a Parquet file, a directory of them, or a list.
    pub train: RawPaths,
    /// Validation rows.
    pub validation: Option<RawValidation>,
    /// Label column.
    pub label: String,
    /// Row key column (`optimizer.kind = "exact"`, `tidemill forget`).
    pub key: Option<String>,
    /// Feature columns; default every column but the label and `exclude`.
    pub features: Option<Vec<String>>,
    /// Columns left out of the default feature list.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Columns hashed as categorical tokens (string or integer columns).
    #[serde(default)]
    pub categorical: Vec<String>,
    /// Crosses of categorical columns, each hashed as one more column
    /// (`[["origin", "dest"]]`).
    #[serde(default)]
    pub interactions: Vec<Vec<String>>,
    /// Sample-weight column: a row of weight `w` counts as `w` rows.
    pub weight: Option<String>,
    /// Size of the hashed feature space is `2^hash_bits`.
    pub hash_bits: Option<u32>,
    /// Label classes in order; for binary models `[negative, positive]`.
    pub classes: Option<Vec<String>>,
    /// Standardise numeric features with statistics computed by the dataflow.
    #[serde(default)]
    pub standardize: bool,
    /// `error` (default), `zero`, `mean` or `skip_row`.
    pub on_missing: Option<String>,
    /// `slice` or `shuffle` (default).
    pub partition: Option<String>,
    /// Seed for shuffling and the validation split.
    pub seed: Option<u64>,
    /// Keep decoded units in memory between epochs (default true).
    pub cache: Option<bool>,
    /// Largest unit; bigger row groups are cut into parts of this many rows.
    pub max_unit_rows: Option<usize>,
    /// Most units one mini-batch step draws from (and a streaming job keeps open).
    pub units_per_step: Option<usize>,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// `linear`, `logistic`, `softmax`, `hinge`, `gaussian_nb`,
    /// `multinomial_nb` or `mlp`.
    pub kind: String,
    /// L2 penalty: `l2/2·‖w‖²`.
    #[serde(default)]
    pub l2: f64,
    /// L1 penalty: `l1·‖w‖₁`.
    #[serde(default)]
    pub l1: f64,
    /// Fit an (unpenalised) intercept; default true.
    pub fit_intercept: Option<bool>,
    /// `multinomial_nb`: additive smoothing; default 1.
    pub alpha: Option<f64>,
    /// `gaussian_nb`: variance smoothing; default 1e-9.
    pub var_smoothing: Option<f64>,
    /// `mlp`: hidden layers' widths, from the input up.
    pub hidden: Option<Vec<i64>>,
    /// `mlp`: `relu` (default) or `tanh`.
    pub activation: Option<String>,
    /// `mlp`: `logistic`, `softmax` or `linear`; by default chosen from
    /// `data.classes` (two: logistic, more: softmax).
    pub head: Option<String>,
    /// `mlp`: the initialisation's seed (default `data.seed`).
    pub seed: Option<u64>,
    /// Classifiers: `"balanced"`, or a weight per class name.
    pub class_weight: Option<RawClassWeight>,
}

/// `model.class_weight`: a word or a table of class → weight.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawClassWeight {
    /// `"balanced"`.
    Word(String),
    /// `{ "0" = 1.0, "1" = 5.0 }`.
    Table(std::collections::BTreeMap<String, f64>),
}

/// `[optimizer]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptimizer {
    /// `sgd`, `momentum`, `adagrad`, `adam`, `ftrl` or `lbfgs` (default).
    pub kind: Option<String>,
    /// Step size for the first-order methods.
    pub learning_rate: Option<f64>,
    /// Rows per step (first-order methods).
    pub batch_size: Option<usize>,
    /// `constant`, `inverse_time`, `inverse_sqrt` or `exponential`.
    pub schedule: Option<String>,
    /// Decay rate of the schedule.
    pub decay: Option<f64>,
    /// Momentum coefficient (momentum).
    pub momentum: Option<f64>,
    /// Adam β₁.
    pub beta1: Option<f64>,
    /// FTRL β.
    pub beta: Option<f64>,
    /// Adam β₂.
    pub beta2: Option<f64>,
    /// AdaGrad / Adam ε.
    pub epsilon: Option<f64>,
    /// Lazy updates for the first-order methods (default true).
    pub lazy: Option<bool>,
    /// L-BFGS history length.
    pub memory: Option<usize>,
    /// L-BFGS stops when the relative objective change falls below this.
    pub tolerance: Option<f64>,
    /// L-BFGS stops when the largest gradient component (of the mean
    /// objective) falls below this instead (default with `[output] state`:
    /// 1e-9).
    pub gradient_tolerance: Option<f64>,
    /// L-BFGS: shard its vectors over the owners and run the vector-free
    /// two-loop recursion (default false).
    pub sharded: Option<bool>,
}

/// `[train]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    /// Epochs (first-order) or iterations (L-BFGS).
    pub epochs: Option<u32>,
    /// L-BFGS: evaluate every so many iterations (default 1; the last is
    /// always evaluated).
    pub eval_every: Option<u32>,
    /// `allreduce` (default).
    pub strategy: Option<String>,
    /// Number of parameter shards (default 16); shard k lives on worker k mod W.
    pub shards: Option<usize>,
    /// `model-average`: local steps between averagings (default: one epoch).
    pub sync_every: Option<u64>,
    /// `model-average`: how many replicas train (default: one per worker);
    /// a fixed count makes the model independent of the worker count.
    pub replicas: Option<usize>,
    /// `param-server`: how many steps a worker may run ahead of the slowest
    /// (`0` = BSP, a number, or `"async"`).
    pub staleness: Option<RawStaleness>,
    /// The most parameters one worker may hold (a memory budget).
    pub max_worker_params: Option<u64>,
    /// `allreduce`: who folds the gradients into the parameters, `"owners"`
    /// or `"every-worker"` (default `"auto"`: every worker for a small
    /// model).
    pub fold: Option<String>,
    /// Stop when the validation metric stops improving.
    pub early_stopping: Option<RawEarlyStopping>,
}

/// `train.staleness`: a step count or a word.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawStaleness {
    /// Steps.
    Steps(i64),
    /// `"async"`.
    Word(String),
}

/// `[train.early_stopping]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEarlyStopping {
    /// Validation metric to watch (default: the model's loss).
    pub metric: Option<String>,
    /// Epochs without improvement before stopping (default 3).
    pub patience: Option<u32>,
    /// Smallest change that counts as an improvement (default 0).
    pub min_delta: Option<f64>,
}

/// `[output]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {
    /// Model file (JSON).
    pub model: Option<String>,
    /// Metrics, one JSON object per line.
    pub metrics: Option<String>,
    /// Checkpoint directory.
    pub checkpoint: Option<String>,
    /// Checkpoint interval: epochs (L-BFGS iterations) as a number.
    pub checkpoint_every: Option<toml::Value>,
    /// Checkpoints kept.
    pub checkpoint_keep: Option<i64>,
    /// The maintained state of an exact model.
    pub state: Option<String>,
}
