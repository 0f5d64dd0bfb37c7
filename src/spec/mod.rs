//! Pipeline specification: the TOML file a user writes, parsed in two stages.
//!
//! [`raw`] holds the serde structs (unknown keys are errors that name the
//! key); [`Pipeline::from_raw`] checks values and fills defaults into the
//! typed structs below, with errors naming the dotted key.

pub mod classes;
pub mod metric;
pub mod overrides;
pub mod raw;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use raw::{
    RawData, RawModel, RawOptimizer, RawOutput, RawPaths, RawPipeline, RawStream, RawTrain,
    RawValidation,
};

/// A validated pipeline: everything needed to train, nothing unchecked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pipeline {
    /// Data source and feature encoding.
    pub data: DataSpec,
    /// Model family and penalties.
    pub model: ModelSpec,
    /// Optimizer and its settings.
    pub optimizer: OptimizerSpec,
    /// Epochs, strategy, sharding, early stopping.
    pub train: TrainSpec,
    /// Output files.
    pub output: OutputSpec,
    /// `tidemill stream`: batches and snapshots.
    pub stream: StreamSpec,
}

/// `[stream]`: how `tidemill stream` cuts its input into batches and
/// publishes the model (see docs/streaming.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSpec {
    /// Rows per batch (default 4096).
    pub batch_rows: usize,
    /// A live source's batch also ends this many seconds after its first
    /// row arrived, however few rows it has.
    pub batch_seconds: Option<f64>,
    /// Training passes over each batch (default 1); rows are scored before
    /// the first.
    pub passes: u32,
    /// A replay's rows are sorted by this column (stable) before they flow.
    pub order_by: Option<String>,
    /// A snapshot of the model every this many batches (default: none by
    /// count).
    pub snapshot_every: Option<u64>,
    /// A snapshot at least this often (seconds, default 1), at a batch's
    /// end.
    pub snapshot_seconds: f64,
    /// Numbered snapshots `model-NNNNNN.json` kept beside the model file
    /// (default 0: none).
    pub snapshot_keep: usize,
    /// Batches in the rolling progressive metrics (default 10).
    pub rolling_batches: usize,
    /// Keep every row's score for the whole stream's exact AUC in the
    /// summary (16 bytes a row). Default (`None`): for a replay, which
    /// ends, yes; for a live source (stdin, a watched directory), which
    /// may not, no, so that its memory stays bounded.
    pub stream_auc: Option<bool>,
    /// A sliding window: rows leave the model (are retracted) once they
    /// fall out of it (exact models; docs/incremental.md).
    pub window: Option<WindowSpec>,
}

/// `[stream] window`: which rows an exact model holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WindowSpec {
    /// Rows whose `column` is within `length` of the largest value seen:
    /// `ts > max_ts − length`.
    Time {
        /// A timestamp, date, text timestamp or numeric column.
        column: String,
        /// The length, in seconds if `in_seconds` (a duration such as
        /// `"7d"`), else in the column's own units (a number).
        length: f64,
        /// Whether `length` is a duration.
        in_seconds: bool,
    },
    /// The last `n` rows.
    Rows(u64),
}

/// Parses `"7d"`, `"36h"`, `"90m"`, `"30s"`, `"2w"` into seconds.
pub fn parse_duration(text: &str) -> Option<f64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number.trim().parse().ok()?;
    let unit = match unit.trim() {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return None,
    };
    (n.is_finite() && n > 0.0).then_some(n * unit)
}

fn window_spec(w: &Option<crate::spec::raw::RawWindow>) -> Result<Option<WindowSpec>> {
    let Some(w) = w else { return Ok(None) };
    match (&w.column, &w.length, w.rows) {
        (None, None, Some(n)) if n >= 1 => Ok(Some(WindowSpec::Rows(n as u64))),
        (None, None, Some(n)) => Err(value_err(
            "stream.window.rows",
            format!("must be ≥ 1, got {n}"),
        )),
        (Some(column), Some(length), None) => {
            let (length, in_seconds) = match length {
                toml::Value::String(s) => (
                    parse_duration(s).ok_or_else(|| {
                        value_err(
                            "stream.window.length",
                            format!("'{s}' is not a duration such as \"7d\", \"12h\", \"30m\", \"45s\" or \"2w\""),
                        )
                    })?,
                    true,
                ),
                toml::Value::Integer(i) => (*i as f64, false),
                toml::Value::Float(f) => (*f, false),
                other => {
                    return Err(value_err(
                        "stream.window.length",
                        format!("must be a duration (\"7d\") or a number, got {other}"),
                    ))
                }
            };
            if !(length.is_finite() && length > 0.0) {
                return Err(value_err(
                    "stream.window.length",
                    format!("must be > 0, got {length}"),
                ));
            }
            Ok(Some(WindowSpec::Time {
                column: column.clone(),
                length,
                in_seconds,
            }))
        }
        _ => Err(value_err(
            "stream.window",
            "give either { column = \"ts\", length = \"7d\" } or { rows = N }",
        )),
    }
}

/// What to do with null, NaN or infinite feature values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Fail with the location of the value (default).
    Error,
    /// Replace with 0.
    Zero,
    /// Replace with the training mean of the column.
    Mean,
    /// Drop the row.
    SkipRow,
}

impl OnMissing {
    /// The name used in pipelines.
    pub fn name(self) -> &'static str {
        match self {
            OnMissing::Error => "error",
            OnMissing::Zero => "zero",
            OnMissing::Mean => "mean",
            OnMissing::SkipRow => "skip_row",
        }
    }
}

/// How units are assigned to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partition {
    /// Contiguous, row-balanced ranges of units per worker.
    Slice,
    /// A seeded permutation of units per epoch, rows permuted inside units.
    Shuffle,
}

/// The most folds of `data.validation = { fold, folds }` and `tidemill cv`.
pub const MAX_FOLDS: u32 = 100;

/// Validation rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ValidationSpec {
    /// Hold out a seeded fraction of training rows.
    Fraction(f64),
    /// Read a separate source.
    Files(Vec<PathBuf>),
    /// Hold out fold `fold` of `folds` (k-fold cross-validation, `tidemill
    /// cv`).
    Fold {
        /// The fold held out (0-based).
        fold: u32,
        /// Folds in all.
        folds: u32,
    },
}

/// `[data]`, checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataSpec {
    /// Training files or directories.
    pub train: Vec<PathBuf>,
    /// Validation rows, if any.
    pub validation: Option<ValidationSpec>,
    /// Label column.
    pub label: String,
    /// The row key (`data.key`): what `tidemill forget` names rows by, and
    /// what the model's data digest is made of (`optimizer.kind = "exact"`).
    pub key: Option<String>,
    /// Explicit feature list, or `None` for "every column but label/exclude".
    pub features: Option<Vec<String>>,
    /// Columns left out of the default feature list.
    pub exclude: Vec<String>,
    /// Hashed categorical columns.
    pub categorical: Vec<String>,
    /// Crosses of categorical columns, each hashed as one more column
    /// named by [`cross_name`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interactions: Vec<Vec<String>>,
    /// The sample-weight column (`data.weight`): training counts a row of
    /// weight `w` as `w` rows (docs/pipelines.md, "Weights").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    /// Hashed space is `2^hash_bits`.
    pub hash_bits: u32,
    /// Declared label classes.
    pub classes: Option<Vec<String>>,
    /// Standardise numeric features.
    pub standardize: bool,
    /// Missing-value policy.
    pub on_missing: OnMissing,
    /// Partitioning of units over workers.
    pub partition: Partition,
    /// Seed for shuffling and splitting.
    pub seed: u64,
    /// Keep decoded units between epochs.
    pub cache: bool,
    /// Largest unit in rows.
    pub max_unit_rows: usize,
    /// Most units one mini-batch step draws from.
    pub units_per_step: usize,
}

/// Model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Least squares, loss `½(y−ŷ)²`.
    Linear,
    /// Binary logistic regression, log loss.
    Logistic,
    /// Multinomial logistic regression.
    Softmax,
    /// Linear SVM, hinge loss `max(0, 1 − y·ŷ)` with y ∈ {−1, 1}.
    Hinge,
    /// Gaussian naive Bayes: per class, a normal density per feature
    /// (fitted exactly from counts and moments, `optimizer.kind = "exact"`).
    GaussianNb,
    /// Multinomial naive Bayes over non-negative counts and hashed
    /// categorical tokens, with additive (Laplace/Lidstone) smoothing.
    MultinomialNb,
}

impl ModelKind {
    /// The name used in pipelines.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Linear => "linear",
            ModelKind::Logistic => "logistic",
            ModelKind::Softmax => "softmax",
            ModelKind::Hinge => "hinge",
            ModelKind::GaussianNb => "gaussian_nb",
            ModelKind::MultinomialNb => "multinomial_nb",
        }
    }

    /// True for the classifiers.
    pub fn is_classifier(self) -> bool {
        !matches!(self, ModelKind::Linear)
    }

    /// True for the naive Bayes models.
    pub fn is_naive_bayes(self) -> bool {
        matches!(self, ModelKind::GaussianNb | ModelKind::MultinomialNb)
    }

    /// The kind whose predictions this kind's outputs are read as: a naive
    /// Bayes model's outputs are joint log-likelihoods per class, turned
    /// into the class posteriors by a softmax, exactly as softmax
    /// regression's margins are (so predictions, metrics and log loss
    /// treat them alike).
    pub fn prediction_kind(self) -> ModelKind {
        if self.is_naive_bayes() {
            ModelKind::Softmax
        } else {
            self
        }
    }
}

/// `[model]`, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Family: for a network (`model.kind = "mlp"`), its head's.
    pub kind: ModelKind,
    /// L2 penalty weight.
    pub l2: f64,
    /// L1 penalty weight.
    pub l1: f64,
    /// Fit an intercept.
    pub fit_intercept: bool,
    /// `multinomial_nb`: the additive smoothing `α` added to every count
    /// (1 is Laplace smoothing).
    #[serde(default)]
    pub alpha: f64,
    /// `gaussian_nb`: the share of the largest feature variance added to
    /// every class's variances, for stability (as scikit-learn's
    /// `var_smoothing`).
    #[serde(default)]
    pub var_smoothing: f64,
    /// `model.kind = "mlp"`: the hidden layers under the head `kind`
    /// (docs/neural.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Classifiers: each class's rows weighted (`model.class_weight`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weight: Option<ClassWeight>,
}

/// `model.class_weight`: how much each class's rows count in training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// scikit-learn's `"balanced"`: class `c` weighs `n / (k · n_c)`, with
    /// `n` training rows, `k` classes and `n_c` rows of class `c` (rows
    /// counted, not weights).
    Balanced,
    /// A weight per class name (classes not named weigh 1).
    Given(std::collections::BTreeMap<String, f64>),
}

/// The most hidden layers a network may have.
pub const MAX_HIDDEN_LAYERS: usize = 16;

/// The widest hidden layer.
pub const MAX_HIDDEN_UNITS: usize = 1 << 16;

/// `model.kind = "mlp"`: a multilayer perceptron's hidden layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Hidden layers' widths, from the input up (at least one).
    pub hidden: Vec<usize>,
    /// The hidden layers' activation.
    pub activation: Activation,
    /// The initialisation's seed: the weights depend on it alone.
    pub seed: u64,
}

/// A hidden layer's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, z)`, with He initialisation.
    Relu,
    /// `tanh(z)`, with Glorot initialisation.
    Tanh,
}

impl Activation {
    /// The name used in pipelines and model files.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
        }
    }
}

/// Learning-rate schedules of the first-order methods; `t` counts steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// `η`.
    Constant,
    /// `η / (1 + decay·t)`.
    InverseTime {
        /// Decay per step.
        decay: f64,
    },
    /// `η / sqrt(1 + decay·t)`.
    InverseSqrt {
        /// Decay per step.
        decay: f64,
    },
    /// `η · decay^epoch`.
    Exponential {
        /// Factor per epoch, in (0, 1].
        decay: f64,
    },
}

impl Schedule {
    /// The learning rate at global step `t` in epoch `epoch`.
    pub fn rate(&self, base: f64, t: u64, epoch: u32) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::InverseTime { decay } => base / (1.0 + decay * t as f64),
            Schedule::InverseSqrt { decay } => base / (1.0 + decay * t as f64).sqrt(),
            Schedule::Exponential { decay } => base * decay.powi(epoch as i32),
        }
    }
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OptimizerSpec {
    /// Mini-batch SGD (proximal for L1).
    Sgd(FirstOrder),
    /// Heavy-ball momentum.
    Momentum {
        /// Shared settings.
        #[serde(flatten)]
        base: FirstOrder,
        /// Momentum coefficient in [0, 1).
        momentum: f64,
    },
    /// AdaGrad.
    Adagrad {
        /// Shared settings.
        #[serde(flatten)]
        base: FirstOrder,
        /// Added to the accumulator's square root.
        epsilon: f64,
    },
    /// Adam.
    Adam {
        /// Shared settings.
        #[serde(flatten)]
        base: FirstOrder,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator guard.
        epsilon: f64,
    },
    /// FTRL-Proximal (McMahan et al., 2013): per-coordinate rates
    /// `α / (β + √Σg²)`, L1 and L2 in closed form.
    Ftrl {
        /// Shared settings (`learning_rate` is α; the schedule must be constant).
        #[serde(flatten)]
        base: FirstOrder,
        /// β of the per-coordinate rate.
        beta: f64,
    },
    /// The exact solution from sufficient statistics, maintained under
    /// insertions and retractions (docs/incremental.md): ridge regression
    /// by Cholesky on the normal equations.
    Exact,
    /// Full-batch L-BFGS (OWL-QN when `l1 > 0`).
    Lbfgs {
        /// History length.
        memory: usize,
        /// Relative objective change that ends the run.
        tolerance: f64,
        /// If set, the run ends when the largest component of the
        /// objective's (pseudo-)gradient is at most this instead: the
        /// optimum to a known precision, whatever the starting point.
        #[serde(default)]
        gradient_tolerance: Option<f64>,
        /// Vector-free and sharded over `train.shards` owners
        /// ([`crate::optim::vector_free`]): the owners' work and memory
        /// divide among the workers. Same optimum, other rounding than the
        /// default (one owner holds every vector); the same bits on any
        /// worker count either way. (Left out of the job's identity when
        /// false, as before the key existed.)
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sharded: bool,
    },
}

/// Settings shared by the mini-batch methods.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FirstOrder {
    /// Base learning rate.
    pub learning_rate: f64,
    /// Rows per step.
    pub batch_size: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Lazy updates: a step visits only the coordinates its batch touched
    /// (see [`crate::optim::lazy`]); false visits every live coordinate.
    pub lazy: bool,
}

impl OptimizerSpec {
    /// The mini-batch settings, or `None` for full-batch L-BFGS.
    pub fn first_order(&self) -> Option<&FirstOrder> {
        match self {
            OptimizerSpec::Sgd(b) => Some(b),
            OptimizerSpec::Momentum { base, .. }
            | OptimizerSpec::Adagrad { base, .. }
            | OptimizerSpec::Adam { base, .. }
            | OptimizerSpec::Ftrl { base, .. } => Some(base),
            OptimizerSpec::Lbfgs { .. } | OptimizerSpec::Exact => None,
        }
    }
}

/// Distribution strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Synchronous: every step sums all workers' gradients.
    Allreduce,
    /// Local SGD: each replica (one per worker, or `train.replicas`) steps
    /// on its own rows, and the replicas are averaged (weighted by rows)
    /// every `sync_every` steps.
    ModelAverage,
    /// Sharded parameter server: workers push gradient partials to the shard
    /// owners and pull fresh shards, running up to `staleness` steps ahead
    /// of the slowest worker.
    ParamServer,
    /// Features and their weights split into one block per worker; workers
    /// exchange partial margins.
    ModelParallel,
}

impl Strategy {
    /// The name used in pipelines.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Allreduce => "allreduce",
            Strategy::ModelAverage => "model-average",
            Strategy::ParamServer => "param-server",
            Strategy::ModelParallel => "model-parallel",
        }
    }
}

/// The largest `data.hash_bits`: 2^28 hashed slots per output.
pub const MAX_HASH_BITS: u32 = 28;

/// The hard cap on how far a `param-server` worker may run ahead of the
/// slowest one, and what `staleness = "async"` means.
pub const MAX_STALENESS: u32 = 32;

/// `train.staleness`: how many steps a worker may run ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Staleness {
    /// At most this many steps (0 = bulk-synchronous).
    Bounded(u32),
    /// As far as the hard cap [`MAX_STALENESS`].
    Async,
}

impl Staleness {
    /// The bound in steps.
    pub fn bound(self) -> u32 {
        match self {
            Staleness::Bounded(s) => s,
            Staleness::Async => MAX_STALENESS,
        }
    }
}

/// `train.fold`: where an `allreduce` step's gradients are summed and the
/// optimizer steps. The model is the same bits either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fold {
    /// Every worker for a small model (see [`Fold::every_worker`]), the
    /// owners otherwise.
    #[default]
    Auto,
    /// Each shard's owner sums the shard's gradients from every worker and
    /// sends the new values to every worker: two trips over the network a
    /// step, each worker sending about two parameter vectors' worth
    /// whatever the worker count.
    Owners,
    /// Every worker receives every worker's gradients and steps the whole
    /// model itself: one trip a step, each worker sending one vector to
    /// every other worker.
    EveryWorker,
}

/// `train.fold = "auto"` folds on every worker while the gradients a
/// worker sends to the others in a step total at most this many
/// coordinates (parameters × (workers − 1)).
pub const EVERY_WORKER_MAX_COORDINATES: usize = 1 << 16;

impl Fold {
    /// Whether every worker folds, for a model of `params` parameters on
    /// `workers` workers (a strategy and optimizer that allow it).
    pub fn every_worker(self, params: usize, workers: usize) -> bool {
        workers > 1
            && match self {
                Fold::Auto => params.saturating_mul(workers - 1) <= EVERY_WORKER_MAX_COORDINATES,
                Fold::Owners => false,
                Fold::EveryWorker => true,
            }
    }
}

/// Early stopping on a validation metric.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Metric name (see `metrics`).
    pub metric: String,
    /// Epochs without improvement allowed.
    pub patience: u32,
    /// Smallest improvement that counts.
    pub min_delta: f64,
}

/// `[train]`, checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Epochs or L-BFGS iterations.
    pub epochs: u32,
    /// Distribution strategy.
    pub strategy: Strategy,
    /// Number of parameter shards.
    pub shards: usize,
    /// Local steps between averagings (`model-average`); `None` = once per epoch.
    pub sync_every: Option<u64>,
    /// Replicas that train (`model-average`); `None` = one per worker.
    /// With a count, replica `r` of `R` trains on worker `r·W/R` and the
    /// model is the same on any worker count `W`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// How far `param-server` workers may run ahead (0 for the other strategies).
    pub staleness: Staleness,
    /// The most parameters one worker may hold, if budgeted; checked once
    /// the model's size is known (after the statistics scan).
    pub max_worker_params: Option<u64>,
    /// Early stopping, if asked for.
    pub early_stopping: Option<EarlyStopping>,
    /// L-BFGS: the iterations evaluated (metrics record, early stopping)
    /// are every `eval_every`-th, the last, and those a checkpoint or a
    /// stop falls on; 1 for the other optimizers.
    #[serde(default = "one_u32")]
    pub eval_every: u32,
    /// `allreduce` with a first-order optimizer: where the gradients are
    /// folded ([`Fold`]); `Owners` for the other strategies and L-BFGS.
    #[serde(default)]
    pub fold: Fold,
}

fn one_u32() -> u32 {
    1
}

/// `[output]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Model file.
    pub model: Option<PathBuf>,
    /// Metrics JSONL.
    pub metrics: Option<PathBuf>,
    /// Checkpoints, if asked for.
    pub checkpoint: Option<CheckpointSpec>,
    /// The maintained state of an exact model (`[output] state`): its
    /// statistics and rows by key, what `tidemill forget` continues from
    /// (docs/incremental.md).
    pub state: Option<PathBuf>,
}

/// `[output] checkpoint*`: where and how often the training state is saved
/// (see docs/fault-tolerance.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSpec {
    /// The directory of the checkpoint files.
    pub dir: PathBuf,
    /// How often: after the last epoch, and every so many epochs or steps.
    pub every: CheckpointEvery,
    /// The newest checkpoints kept (at least 1).
    pub keep: usize,
}

/// `output.checkpoint_every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointEvery {
    /// Every `n` epochs (L-BFGS iterations).
    Epochs(u32),
    /// Whenever the optimizer steps pass a multiple of `n` (inside an
    /// epoch too): `"N steps"`.
    Steps(u64),
}

/// Checkpoints kept by default.
pub const DEFAULT_CHECKPOINT_KEEP: usize = 3;

/// Checkpoints inside an epoch need a point where no step is in flight and
/// steps are mini-batch steps.
fn steps_can_checkpoint(
    optimizer: &OptimizerSpec,
    train: &TrainSpec,
    data: &DataSpec,
) -> Result<()> {
    let why = if !data.cache {
        "with data.cache = false a unit's rows are streamed from its start, so a job cannot resume inside an epoch: give a number of epochs"
    } else if optimizer.first_order().is_none() {
        "L-BFGS takes one full-batch step per iteration: give a number of iterations"
    } else if train.strategy == Strategy::ParamServer && train.staleness.bound() > 0 {
        "with train.staleness > 0 steps are always in flight: give a number of epochs"
    } else {
        return Ok(());
    };
    Err(value_err("output.checkpoint_every", why))
}

/// `[output] checkpoint`, `checkpoint_every`, `checkpoint_keep`, checked.
fn checkpoint_spec(o: &RawOutput) -> Result<Option<CheckpointSpec>> {
    let Some(dir) = &o.checkpoint else {
        for (key, set) in [
            ("output.checkpoint_every", o.checkpoint_every.is_some()),
            ("output.checkpoint_keep", o.checkpoint_keep.is_some()),
        ] {
            if set {
                return Err(value_err(
                    key,
                    "has no effect without output.checkpoint = \"DIR\"",
                ));
            }
        }
        return Ok(None);
    };
    if dir.is_empty() {
        return Err(value_err("output.checkpoint", "names no directory"));
    }
    let every = match &o.checkpoint_every {
        None => CheckpointEvery::Epochs(1),
        Some(toml::Value::Integer(n)) if (1..=i64::from(u32::MAX)).contains(n) => {
            CheckpointEvery::Epochs(*n as u32)
        }
        Some(toml::Value::String(text)) => {
            let steps = text
                .trim()
                .strip_suffix("steps")
                .or_else(|| text.trim().strip_suffix("step"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .filter(|&n| n >= 1);
            match steps {
                Some(n) => CheckpointEvery::Steps(n),
                None => {
                    return Err(value_err(
                        "output.checkpoint_every",
                        format!("\"{text}\" is not \"N steps\" with N ≥ 1 (or a number of epochs)"),
                    ))
                }
            }
        }
        Some(v) => {
            return Err(value_err(
                "output.checkpoint_every",
                format!("must be a whole number of epochs ≥ 1 or \"N steps\", got {v}"),
            ))
        }
    };
    let keep = match o.checkpoint_keep {
        None => DEFAULT_CHECKPOINT_KEEP,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(value_err(
                "output.checkpoint_keep",
                format!("must be at least 1, got {n}"),
            ))
        }
    };
    Ok(Some(CheckpointSpec {
        dir: PathBuf::from(dir),
        every,
        keep,
    }))
}

/// Settles `optimizer.lazy` (see [`crate::optim::lazy`]): by default lazy
/// updates are on where they are exact — SGD, FTRL, and AdaGrad without a
/// penalty — and off where they change the algorithm (momentum, Adam,
/// AdaGrad with a penalty), which must be asked for.
fn lazy_updates(
    optimizer: &mut OptimizerSpec,
    model: &ModelSpec,
    asked: Option<bool>,
) -> Result<()> {
    let unpenalised = model.l1 == 0.0 && model.l2 == 0.0;
    let base = match optimizer {
        OptimizerSpec::Sgd(b) => {
            // An untouched weight decays by 1 − η·l2 per step; the closed
            // form needs that factor positive.
            let decays = b.learning_rate * model.l2 < 1.0;
            if asked == Some(true) && !decays {
                return Err(value_err(
                    "optimizer.lazy",
                    format!(
                        "lazy SGD needs learning_rate · l2 < 1 (got {} · {}): lower optimizer.learning_rate or model.l2, or set optimizer.lazy = false",
                        b.learning_rate, model.l2
                    ),
                ));
            }
            b.lazy = decays;
            b
        }
        OptimizerSpec::Ftrl { base, .. } => {
            base.lazy = true;
            base
        }
        OptimizerSpec::Adagrad { base, .. } => {
            base.lazy = unpenalised;
            base
        }
        OptimizerSpec::Momentum { base, .. } | OptimizerSpec::Adam { base, .. } => {
            base.lazy = false;
            base
        }
        OptimizerSpec::Lbfgs { .. } if asked.is_some() => {
            return Err(value_err(
                "optimizer.lazy",
                "applies to the first-order optimizers only: L-BFGS takes full-batch steps over every weight",
            ))
        }
        OptimizerSpec::Exact if asked.is_some() => {
            return Err(value_err(
                "optimizer.lazy",
                "applies to the first-order optimizers only: 'exact' takes no steps",
            ))
        }
        OptimizerSpec::Lbfgs { .. } | OptimizerSpec::Exact => return Ok(()),
    };
    if let Some(lazy) = asked {
        base.lazy = lazy;
    }
    Ok(())
}

/// `'other' is not one of a, b, c`, with the nearest as "did you mean".
fn not_one_of(other: &str, allowed: &[&str]) -> String {
    let hint = crate::error::hint(other, allowed);
    format!("'{other}' is not one of {}{hint}", allowed.join(", "))
}

/// The name of a cross of categorical columns, and the separator of its
/// tokens: the members joined by `×` (a cross of `origin` and `dest` is
/// the column `origin×dest`, whose token on a row is `JFK×LAX`).
pub fn cross_name(members: &[String]) -> String {
    members.join(CROSS)
}

/// What joins the members of a cross (names and tokens).
pub const CROSS: &str = "×";

/// The most replicas `train.replicas` may ask for.
pub const MAX_REPLICAS: usize = 4096;

fn value_err(key: &str, message: impl Into<String>) -> Error {
    Error::PipelineValue {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Fails if a list names something twice (a duplicate feature would get two
/// weights under one name; a duplicate class, two outputs for one label).
fn distinct(key: &str, list: &[String]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match list.iter().find(|v| !seen.insert(v.as_str())) {
        Some(v) => Err(value_err(key, format!("'{v}' is listed twice"))),
        None => Ok(()),
    }
}

fn paths(raw: &RawPaths) -> Vec<PathBuf> {
    match raw {
        RawPaths::One(p) => vec![PathBuf::from(p)],
        RawPaths::Many(ps) => ps.iter().map(PathBuf::from).collect(),
    }
}

fn positive(key: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(value_err(
            key,
            format!("must be a positive number, got {v}"),
        ))
    }
}

fn non_negative(key: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(value_err(key, format!("must be ≥ 0, got {v}")))
    }
}

fn unit_interval(key: &str, v: f64) -> Result<f64> {
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(value_err(key, format!("must be in [0, 1), got {v}")))
    }
}

impl Pipeline {
    /// Reads, overrides and validates a pipeline file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Pipeline> {
        let syntax = |message: String| Error::PipelineSyntax {
            path: path.to_path_buf(),
            message,
        };
        let bytes = crate::io::bounded::read(path, crate::io::bounded::MAX_PIPELINE_BYTES)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    syntax(format!("not a pipeline file: {e}"))
                }
                _ => Error::io(path, e),
            })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            syntax(format!(
                "not a pipeline file: not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Self::parse(&text, path, overrides)
    }

    /// Parses pipeline text (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Pipeline> {
        let syntax = |message: String| Error::PipelineSyntax {
            path: path.to_path_buf(),
            message,
        };
        let mut doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| syntax(e.to_string()))?;
        for assignment in overrides {
            overrides::apply(&mut doc, assignment)?;
        }
        // A mistake is blamed on the --set that names its key; else on the
        // file, if the file alone has one (reported with its line, as the
        // file alone is parsed from its text); else on the --set values.
        let raw: RawPipeline = RawPipeline::deserialize(doc).map_err(|e: toml::de::Error| {
            let message = overrides::suggest(e.to_string().trim());
            if let Some(a) = overrides::named(overrides, &message) {
                return Error::Override {
                    assignment: a.to_string(),
                    message,
                };
            }
            match toml::from_str::<RawPipeline>(text) {
                Err(own) => syntax(overrides::suggest(own.to_string().trim())),
                Ok(_) if overrides.is_empty() => syntax(message),
                Ok(_) => Error::Override {
                    assignment: overrides.join(" --set "),
                    message,
                },
            }
        })?;
        Self::from_raw(raw).map_err(|e| match e {
            Error::PipelineValue { key, message } => {
                let message = match overrides::setting(overrides, &key) {
                    Some(a) => format!("{message} (from --set {a})"),
                    None if overrides.is_empty() => format!("{message} (in {})", path.display()),
                    None => message,
                };
                Error::PipelineValue { key, message }
            }
            other => other,
        })
    }

    /// Checks a raw pipeline and fills in defaults.
    pub fn from_raw(raw: RawPipeline) -> Result<Pipeline> {
        let data = data_spec(raw.data)?;
        let model = model_spec(raw.model, data.classes.as_deref(), data.seed)?;
        let explicit = (
            raw.optimizer.tolerance.is_some(),
            raw.optimizer.gradient_tolerance.is_some(),
        );
        let optimizer = optimizer_spec(raw.optimizer, &model)?;
        let train = train_spec(raw.train, &optimizer, model.kind, data.validation.is_some())?;
        let checkpoint = checkpoint_spec(&raw.output)?;
        let stream = stream_spec(&raw.stream)?;
        if let Some(CheckpointEvery::Steps(_)) = checkpoint.as_ref().map(|c| c.every) {
            steps_can_checkpoint(&optimizer, &train, &data)?;
        }
        let state = raw.output.state.map(PathBuf::from);
        exact_fits(&optimizer, &model, &data, state.as_deref())?;
        weights_fit(&optimizer, &model, &data, &train, state.is_some())?;
        if model.network.is_some() {
            if train.strategy == Strategy::ModelParallel && checkpoint.is_some() {
                return Err(value_err(
                    "output.checkpoint",
                    "a network split by units over the workers (model-parallel) takes no checkpoints yet: use allreduce, param-server or model-average, whose checkpoints hold a network",
                ));
            }
            if state.is_some() {
                return Err(value_err(
                    "output.state",
                    "a state keeps what an exact or re-optimised linear model needs to forget rows; a network has none",
                ));
            }
        }
        let mut optimizer = optimizer;
        if let (
            Some(_),
            OptimizerSpec::Lbfgs {
                tolerance,
                gradient_tolerance,
                ..
            },
        ) = (&state, &mut optimizer)
        {
            let (explicit_tolerance, explicit_gradient) = explicit;
            if model.kind != ModelKind::Hinge {
                // A forget must reach the optimum a retrain reaches: both
                // stop on the gradient only, not on how the objective
                // moved (a `tolerance` is not used).
                *tolerance = 0.0;
                match (explicit_gradient, *gradient_tolerance) {
                    (false, _) => *gradient_tolerance = Some(STATE_GRADIENT_TOLERANCE),
                    (true, None) => {
                        return Err(value_err(
                            "optimizer.gradient_tolerance",
                            "with [output] state the run stops on the gradient alone (what a forget must reach too): give a tolerance > 0",
                        ))
                    }
                    (true, Some(_)) => {}
                }
            } else if !explicit_gradient {
                // Hinge has no gradient at the kink: L-BFGS only starts
                // it, and its dual is solved exactly after, from a start
                // that stops on the objective change.
                *gradient_tolerance = None;
                if !explicit_tolerance {
                    *tolerance = HINGE_STATE_TOLERANCE;
                }
            }
        }
        if stream.window.is_some() && optimizer != OptimizerSpec::Exact {
            return Err(value_err(
                "stream.window",
                "a window retracts the rows that leave it, which only an exact model (optimizer.kind = 'exact') can do",
            ));
        }
        Ok(Pipeline {
            data,
            model,
            optimizer,
            train,
            output: OutputSpec {
                model: raw.output.model.map(PathBuf::from),
                metrics: raw.output.metrics.map(PathBuf::from),
                checkpoint,
                state,
            },
            stream,
        })
    }
}

/// Where row weights (`data.weight`, `model.class_weight`) apply: to the
/// losses that gradient steps and L-BFGS fold over rows, under the
/// data-parallel strategies.
fn weights_fit(
    optimizer: &OptimizerSpec,
    model: &ModelSpec,
    data: &DataSpec,
    train: &TrainSpec,
    state: bool,
) -> Result<()> {
    let key = match (&data.weight, &model.class_weight) {
        (Some(_), _) => "data.weight",
        (None, Some(_)) => "model.class_weight",
        (None, None) => return Ok(()),
    };
    let refusal = if *optimizer == OptimizerSpec::Exact {
        Some("optimizer.kind = 'exact' fits from unweighted sums; weights need an iterative optimizer")
    } else if state {
        Some("a model with [output] state forgets rows by their count; weighted rows cannot be forgotten yet (leave out [output] state)")
    } else if train.strategy == Strategy::ModelParallel {
        Some("model-parallel does not weigh rows yet: use allreduce, param-server or model-average")
    } else {
        None
    };
    match refusal {
        Some(why) => Err(value_err(key, why)),
        None => Ok(()),
    }
}

/// L-BFGS's default `gradient_tolerance`, L-BFGS-B's (SciPy's `pgtol`):
/// the run ends when no component of the mean objective's
/// (pseudo-)gradient is larger.
pub const LBFGS_GRADIENT_TOLERANCE: f64 = 1e-5;

/// L-BFGS's default `tolerance`, L-BFGS-B's relative objective change
/// (`factr = 1e7` times the f64 machine epsilon): the run ends when an
/// iteration changes the objective by less than this fraction of it.
pub const LBFGS_TOLERANCE: f64 = 1e7 * f64::EPSILON;

/// L-BFGS's `gradient_tolerance` where a pipeline keeps `[output] state`
/// and none is given.
pub const STATE_GRADIENT_TOLERANCE: f64 = 1e-9;

/// L-BFGS's relative objective change for the start of a hinge model's
/// dual solve where a pipeline keeps `[output] state` and none is given.
pub const HINGE_STATE_TOLERANCE: f64 = 1e-12;

/// `train.epochs` (the iteration limit) of an L-BFGS pipeline that gives
/// none: generous, so that an unconfigured run ends by converging.
pub const LBFGS_DEFAULT_ITERATIONS: u32 = 1000;

/// The largest number of numeric features `optimizer.kind = "exact"`
/// takes: its statistics hold `p(p+1)/2` cross-products and every update
/// solves a `p × p` system (docs/incremental.md).
pub const EXACT_MAX_FEATURES: usize = 2048;

/// What `optimizer.kind = "exact"` needs of the data, and what an
/// `[output] state` needs of the optimizer.
fn exact_fits(
    optimizer: &OptimizerSpec,
    model: &ModelSpec,
    data: &DataSpec,
    state: Option<&Path>,
) -> Result<()> {
    let kind = model.kind;
    if kind.is_naive_bayes() && *optimizer != OptimizerSpec::Exact {
        return Err(value_err(
            "optimizer.kind",
            format!(
                "{} is fitted exactly from counts and moments: set optimizer.kind = 'exact'",
                kind.name()
            ),
        ));
    }
    if *optimizer != OptimizerSpec::Exact {
        if state.is_some() {
            if !matches!(optimizer, OptimizerSpec::Lbfgs { .. }) {
                return Err(value_err(
                    "output.state",
                    "a state to forget rows from belongs to optimizer.kind = 'exact' (the models whose training reduces to sums) or 'lbfgs' (re-optimised from the previous model over the rows that remain); a first-order optimizer's model depends on its path, not only on its rows",
                ));
            }
            if data.key.is_none() {
                return Err(value_err(
                    "data.key",
                    "[output] state keeps track of rows by their key so that they can be forgotten: name the key column",
                ));
            }
            if kind == ModelKind::Hinge && !model.fit_intercept {
                return Err(value_err(
                    "model.fit_intercept",
                    "with [output] state a hinge model is solved exactly through its dual, which finds the intercept too: leave fit_intercept = true",
                ));
            }
            if model.l1 > 0.0 {
                return Err(value_err(
                    "model.l1",
                    "with [output] state, forgetting re-optimises to the optimum a retrain reaches, found by its gradient; the l1 penalty has no gradient at 0 (use l2 only)",
                ));
            }
            if model.l2 == 0.0 {
                return Err(value_err(
                    "model.l2",
                    "with [output] state, forgetting must reach the one optimum a retrain reaches; without a penalty there may be none (separable classes) or many: set model.l2 > 0",
                ));
            }
            if kind == ModelKind::Softmax && data.classes.is_none() {
                return Err(value_err(
                    "data.classes",
                    "with [output] state, list the classes: forgetting every row of one would otherwise change the model's classes",
                ));
            }
            if data.validation.is_some() {
                return Err(value_err(
                    "data.validation",
                    "a model with a state is trained on every row of data.train, so that forgetting leaves the model of the rows that remain (evaluate it with `tidemill eval`)",
                ));
            }
        }
        return Ok(());
    }
    if kind == ModelKind::GaussianNb && !data.categorical.is_empty() {
        return Err(value_err(
            "data.categorical",
            "gaussian_nb models each numeric feature by a normal density; hashed categorical tokens are counts: use multinomial_nb",
        ));
    }
    if kind.is_naive_bayes() && data.standardize {
        return Err(value_err(
            "data.standardize",
            "naive Bayes models the values as they are (gaussian_nb is unchanged by scaling; multinomial_nb counts): leave it false",
        ));
    }
    if kind == ModelKind::Linear && !data.categorical.is_empty() {
        return Err(value_err(
            "data.categorical",
            format!(
                "'exact' keeps the cross-products of every pair of features, so it takes numeric features only (at most {EXACT_MAX_FEATURES}); hashed columns need an iterative optimizer"
            ),
        ));
    }
    if data.on_missing == OnMissing::Mean {
        return Err(value_err(
            "data.on_missing",
            "'mean' fills with a mean that changes as rows are added and forgotten, so an exact model cannot use it: use error, zero or skip_row",
        ));
    }
    if data.validation.is_some() {
        return Err(value_err(
            "data.validation",
            "'exact' trains on every row of data.train (evaluate the model with `tidemill eval`)",
        ));
    }
    if state.is_some() && data.key.is_none() {
        return Err(value_err(
            "data.key",
            "[output] state keeps rows by their key so that they can be forgotten: name the key column",
        ));
    }
    Ok(())
}

/// `[stream]`, checked.
fn stream_spec(r: &RawStream) -> Result<StreamSpec> {
    let count = |key: &str, v: Option<i64>, default: i64, min: i64| -> Result<i64> {
        let v = v.unwrap_or(default);
        if v < min {
            return Err(value_err(key, format!("must be ≥ {min}, got {v}")));
        }
        Ok(v)
    };
    let seconds = |key: &str, v: Option<f64>| -> Result<Option<f64>> {
        match v {
            Some(s) if !(s.is_finite() && s > 0.0) => Err(value_err(
                key,
                format!("must be a number of seconds > 0, got {s}"),
            )),
            other => Ok(other),
        }
    };
    Ok(StreamSpec {
        batch_rows: count("stream.batch_rows", r.batch_rows, 4096, 1)? as usize,
        batch_seconds: seconds("stream.batch_seconds", r.batch_seconds)?,
        passes: count("stream.passes", r.passes, 1, 1)?.min(i64::from(u32::MAX)) as u32,
        order_by: r.order_by.clone(),
        snapshot_every: match r.snapshot_every {
            Some(n) => Some(count("stream.snapshot_every", Some(n), 1, 1)? as u64),
            None => None,
        },
        snapshot_seconds: seconds("stream.snapshot_seconds", r.snapshot_seconds)?.unwrap_or(1.0),
        snapshot_keep: count("stream.snapshot_keep", r.snapshot_keep, 0, 0)? as usize,
        rolling_batches: count("stream.rolling_batches", r.rolling_batches, 10, 1)? as usize,
        stream_auc: r.stream_auc,
        window: window_spec(&r.window)?,
    })
}

/// `[data]`, checked.
fn data_spec(d: RawData) -> Result<DataSpec> {
    let train = paths(&d.train);
    if train.is_empty() {
        return Err(value_err("data.train", "names no files"));
    }
    let validation = match d.validation {
        None => None,
        Some(RawValidation {
            fold, folds, fraction, path,
        }) if fold.is_some() || folds.is_some() => {
            let (Some(fold), Some(folds), None, None) = (fold, folds, &fraction, &path) else {
                return Err(value_err(
                    "data.validation",
                    "a fold is { fold = I, folds = K } alone (no fraction or path)",
                ));
            };
            if !(2..=MAX_FOLDS).contains(&folds) || fold >= folds {
                return Err(value_err(
                    "data.validation.fold",
                    format!("fold {fold} of {folds}: folds must be in 2..={MAX_FOLDS}, and fold in 0..folds"),
                ));
            }
            Some(ValidationSpec::Fold { fold, folds })
        }
        Some(RawValidation {
            fraction: Some(_),
            path: Some(_),
            ..
        }) => {
            return Err(value_err(
                "data.validation",
                "give one of { fraction = F } (hold out training rows), { path = P } (separate files) or { fold = I, folds = K }, not two",
            ))
        }
        Some(RawValidation {
            fraction: None,
            path: None,
            ..
        }) => {
            return Err(value_err(
                "data.validation",
                "give { fraction = F } (hold out training rows), { path = P } (separate files) or { fold = I, folds = K }",
            ))
        }
        Some(RawValidation {
            fraction: Some(fraction),
            ..
        }) => {
            if !(fraction > 0.0 && fraction < 1.0) {
                return Err(value_err(
                    "data.validation.fraction",
                    format!("must be in (0, 1), got {fraction}"),
                ));
            }
            Some(ValidationSpec::Fraction(fraction))
        }
        Some(RawValidation {
            path: Some(path), ..
        }) => Some(ValidationSpec::Files(paths(&path))),
    };
    let on_missing = match d.on_missing.as_deref().unwrap_or("error") {
        "error" => OnMissing::Error,
        "zero" => OnMissing::Zero,
        "mean" => OnMissing::Mean,
        "skip_row" => OnMissing::SkipRow,
        other => {
            return Err(value_err(
                "data.on_missing",
                not_one_of(other, &["error", "zero", "mean", "skip_row"]),
            ))
        }
    };
    let partition = match d.partition.as_deref().unwrap_or("shuffle") {
        "slice" => Partition::Slice,
        "shuffle" => Partition::Shuffle,
        other => {
            return Err(value_err(
                "data.partition",
                not_one_of(other, &["slice", "shuffle"]),
            ))
        }
    };
    let hash_bits = d.hash_bits.unwrap_or(18);
    if !(1..=MAX_HASH_BITS).contains(&hash_bits) {
        return Err(value_err(
            "data.hash_bits",
            format!("must be in 1..={MAX_HASH_BITS}, got {hash_bits}"),
        ));
    }
    if let Some(f) = &d.features {
        distinct("data.features", f)?;
    }
    distinct("data.categorical", &d.categorical)?;
    distinct("data.exclude", &d.exclude)?;
    if d.categorical.contains(&d.label) {
        return Err(value_err(
            "data.categorical",
            format!("'{}' is the label", d.label),
        ));
    }
    if let Some(key) = &d.key {
        if *key == d.label {
            return Err(value_err("data.key", format!("'{key}' is the label")));
        }
        let listed = d.features.as_ref().is_some_and(|f| f.contains(key));
        if listed || d.categorical.contains(key) {
            return Err(value_err(
                "data.key",
                format!(
                    "'{key}' is also a feature: a row key identifies rows, it is not trained on"
                ),
            ));
        }
    }
    if let Some(f) = &d.features {
        if f.contains(&d.label) {
            return Err(value_err(
                "data.features",
                format!("'{}' is the label", d.label),
            ));
        }
        if let Some(c) = d.categorical.iter().find(|c| !f.contains(c)) {
            return Err(value_err(
                "data.categorical",
                format!("'{c}' is not in data.features"),
            ));
        }
    }
    for (i, cross) in d.interactions.iter().enumerate() {
        let key = format!("data.interactions[{i}]");
        if cross.len() < 2 {
            return Err(value_err(&key, "a cross needs two or more columns"));
        }
        distinct(&key, cross)?;
        if let Some(c) = cross
            .iter()
            .find(|c| **c == d.label || d.key.as_ref() == Some(*c))
        {
            return Err(value_err(
                &key,
                format!("'{c}' is the label or the row key, not a feature"),
            ));
        }
        if !cross.iter().any(|c| d.categorical.contains(c)) {
            let listed: Vec<&str> = d.categorical.iter().map(String::as_str).collect();
            let hint = cross
                .iter()
                .find_map(|c| crate::error::nearest(c, &listed))
                .map(|n| format!(" (did you mean '{n}'?)"))
                .unwrap_or_default();
            return Err(value_err(
                &key,
                format!(
                    "a cross hashes the tokens of at least one column of data.categorical (numeric features scale its value){hint}"
                ),
            ));
        }
        let name = cross_name(cross);
        if d.categorical.contains(&name)
            || d.interactions[..i].iter().any(|o| cross_name(o) == name)
        {
            return Err(value_err(&key, format!("'{name}' is listed twice")));
        }
    }
    if let Some(w) = &d.weight {
        let clash = if *w == d.label {
            Some("the label")
        } else if d.key.as_ref() == Some(w) {
            Some("the row key")
        } else if d.categorical.contains(w) || d.features.as_ref().is_some_and(|f| f.contains(w)) {
            Some("a feature")
        } else if d.interactions.iter().flatten().any(|c| c == w) {
            Some("crossed in data.interactions")
        } else {
            None
        };
        if let Some(what) = clash {
            return Err(value_err(
                "data.weight",
                format!("'{w}' is {what}: a weight column says how much each row counts, it is not trained on"),
            ));
        }
    }
    let max_unit_rows = d.max_unit_rows.unwrap_or(65_536);
    if max_unit_rows == 0 {
        return Err(value_err("data.max_unit_rows", "must be at least 1"));
    }
    let units_per_step = d.units_per_step.unwrap_or(4);
    if units_per_step == 0 {
        return Err(value_err("data.units_per_step", "must be at least 1"));
    }
    Ok(DataSpec {
        train,
        validation,
        label: d.label,
        key: d.key,
        features: d.features,
        exclude: d.exclude,
        categorical: d.categorical,
        interactions: d.interactions,
        weight: d.weight,
        hash_bits,
        classes: d.classes,
        standardize: d.standardize,
        on_missing,
        partition,
        seed: d.seed.unwrap_or(0),
        cache: d.cache.unwrap_or(true),
        max_unit_rows,
        units_per_step,
    })
}

/// `[model]`, checked (with the classes `[data]` declares).
fn model_spec(m: RawModel, classes: Option<&[String]>, data_seed: u64) -> Result<ModelSpec> {
    let network = network_spec(&m, classes, data_seed)?;
    let kind = match (m.kind.as_str(), &network) {
        (_, Some((head, _))) => *head,
        ("linear", _) => ModelKind::Linear,
        ("logistic", _) => ModelKind::Logistic,
        ("softmax", _) => ModelKind::Softmax,
        ("hinge", _) => ModelKind::Hinge,
        ("gaussian_nb", _) => ModelKind::GaussianNb,
        ("multinomial_nb", _) => ModelKind::MultinomialNb,
        (other, None) => {
            return Err(value_err(
                "model.kind",
                not_one_of(
                    other,
                    &[
                        "linear",
                        "logistic",
                        "softmax",
                        "hinge",
                        "gaussian_nb",
                        "multinomial_nb",
                        "mlp",
                    ],
                ),
            ))
        }
    };
    if kind.is_naive_bayes() {
        if classes.is_some() {
            return Err(value_err(
                "data.classes",
                "naive Bayes takes its classes from the rows present (a class without rows has no prior): leave data.classes out",
            ));
        }
        for (key, v) in [("model.l2", m.l2), ("model.l1", m.l1)] {
            if v != 0.0 {
                return Err(value_err(
                    key,
                    "naive Bayes has no penalty: its smoothing is model.alpha (multinomial_nb) or model.var_smoothing (gaussian_nb)",
                ));
            }
        }
        if m.fit_intercept.is_some() {
            return Err(value_err(
                "model.fit_intercept",
                "naive Bayes has class priors, not an intercept: leave it out",
            ));
        }
    }
    if m.alpha.is_some() && kind != ModelKind::MultinomialNb {
        return Err(value_err(
            "model.alpha",
            format!(
                "the smoothing of multinomial_nb; model.kind is '{}'",
                kind.name()
            ),
        ));
    }
    if m.var_smoothing.is_some() && kind != ModelKind::GaussianNb {
        return Err(value_err(
            "model.var_smoothing",
            format!(
                "the variance smoothing of gaussian_nb; model.kind is '{}'",
                kind.name()
            ),
        ));
    }
    let alpha = m.alpha.unwrap_or(1.0);
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(value_err(
            "model.alpha",
            format!("must be a number > 0 (a count of 0 would have probability 0), got {alpha}"),
        ));
    }
    let var_smoothing = m.var_smoothing.unwrap_or(1e-9);
    if !(var_smoothing.is_finite() && var_smoothing >= 0.0) {
        return Err(value_err(
            "model.var_smoothing",
            format!("must be a number ≥ 0, got {var_smoothing}"),
        ));
    }
    if let Some(classes) = classes {
        classes::check_classes(classes).map_err(|m| value_err("data.classes", m))?;
        if classes.len() > classes::MAX_CLASSES {
            return Err(value_err(
                "data.classes",
                format!(
                    "{} classes; at most {} are supported",
                    classes.len(),
                    classes::MAX_CLASSES
                ),
            ));
        }
        let want_two = matches!(kind, ModelKind::Logistic | ModelKind::Hinge);
        if want_two && classes.len() != 2 {
            return Err(value_err(
                "data.classes",
                format!(
                    "a binary model needs [negative, positive], got {} classes",
                    classes.len()
                ),
            ));
        }
        if kind == ModelKind::Softmax && classes.len() < 2 {
            return Err(value_err(
                "data.classes",
                "softmax needs at least 2 classes",
            ));
        }
        if kind == ModelKind::Linear {
            return Err(value_err(
                "data.classes",
                "a linear (regression) model has no classes",
            ));
        }
    }
    let model = ModelSpec {
        kind,
        l2: non_negative("model.l2", m.l2)?,
        l1: non_negative("model.l1", m.l1)?,
        fit_intercept: m.fit_intercept.unwrap_or(true),
        alpha: if kind == ModelKind::MultinomialNb {
            alpha
        } else {
            0.0
        },
        var_smoothing: if kind == ModelKind::GaussianNb {
            var_smoothing
        } else {
            0.0
        },
        network: network.map(|(_, n)| n),
        class_weight: class_weight(m.class_weight, kind, classes)?,
    };
    Ok(model)
}

/// `model.class_weight`, checked against the model's kind and the declared
/// classes (undeclared classes are checked once the scan has found them).
fn class_weight(
    raw: Option<raw::RawClassWeight>,
    kind: ModelKind,
    classes: Option<&[String]>,
) -> Result<Option<ClassWeight>> {
    let Some(raw) = raw else { return Ok(None) };
    const KEY: &str = "model.class_weight";
    if !kind.is_classifier() || kind.is_naive_bayes() {
        return Err(value_err(
            KEY,
            format!(
                "weighs the classes of a classifier trained by its loss (logistic, softmax, hinge, or an mlp with such a head); model.kind is '{}'",
                kind.name()
            ),
        ));
    }
    match raw {
        raw::RawClassWeight::Word(w) if w == "balanced" => Ok(Some(ClassWeight::Balanced)),
        raw::RawClassWeight::Word(w) => Err(value_err(
            KEY,
            format!(
                "{} (or a table of class = weight, e.g. {{ \"0\" = 1.0, \"1\" = 5.0 }})",
                not_one_of(&w, &["balanced"])
            ),
        )),
        raw::RawClassWeight::Table(t) => {
            if t.is_empty() {
                return Err(value_err(KEY, "the table names no class"));
            }
            if let Some((c, w)) = t.iter().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
                return Err(value_err(
                    KEY,
                    format!("class '{c}' has weight {w}: a weight is a finite number ≥ 0"),
                ));
            }
            if let Some(declared) = classes {
                if let Some(c) = t.keys().find(|c| !declared.contains(c)) {
                    let names: Vec<&str> = declared.iter().map(String::as_str).collect();
                    let hint = crate::error::hint(c, &names);
                    return Err(value_err(
                        KEY,
                        format!(
                            "'{c}' is not one of data.classes ({}){hint}",
                            declared.join(", ")
                        ),
                    ));
                }
            }
            Ok(Some(ClassWeight::Given(t)))
        }
    }
}

/// `model.kind = "mlp"`: the head and hidden layers; `None` for another
/// kind, which none of the network's keys may then be given to.
fn network_spec(
    m: &RawModel,
    classes: Option<&[String]>,
    data_seed: u64,
) -> Result<Option<(ModelKind, NetworkSpec)>> {
    if m.kind != "mlp" {
        let given = [
            ("model.hidden", m.hidden.is_some()),
            ("model.activation", m.activation.is_some()),
            ("model.head", m.head.is_some()),
            ("model.seed", m.seed.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(_, g)| *g) {
            return Err(value_err(
                key,
                format!(
                    "belongs to a network (model.kind = \"mlp\"); model.kind is '{}'",
                    m.kind
                ),
            ));
        }
        return Ok(None);
    }
    let head = match (m.head.as_deref(), classes.map(<[String]>::len)) {
        (Some("logistic"), _) => ModelKind::Logistic,
        (Some("softmax"), _) => ModelKind::Softmax,
        (Some("linear"), _) => ModelKind::Linear,
        (Some(other), _) => {
            return Err(value_err(
                "model.head",
                not_one_of(other, &["logistic", "softmax", "linear"]),
            ))
        }
        (None, Some(2)) => ModelKind::Logistic,
        (None, Some(n)) if n > 2 => ModelKind::Softmax,
        (None, Some(n)) => {
            return Err(value_err(
                "data.classes",
                format!("{n} class: a classifier needs at least 2"),
            ))
        }
        (None, None) => {
            return Err(value_err(
                "model.head",
                "say which: \"logistic\" (a binary label), \"softmax\" (classes) or \"linear\" (a value to regress); without data.classes the label alone does not tell",
            ))
        }
    };
    let hidden = m.hidden.clone().ok_or_else(|| {
        value_err(
            "model.hidden",
            "a network needs its hidden layers' widths, e.g. hidden = [64]",
        )
    })?;
    if hidden.is_empty() {
        return Err(value_err(
            "model.hidden",
            format!(
                "no layers; give 1 to {MAX_HIDDEN_LAYERS} widths (without hidden layers, use model.kind = \"{}\")",
                head.name()
            ),
        ));
    }
    if hidden.len() > MAX_HIDDEN_LAYERS {
        return Err(value_err(
            "model.hidden",
            format!(
                "{} layers; a network has at most {MAX_HIDDEN_LAYERS}",
                hidden.len()
            ),
        ));
    }
    let hidden = hidden
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            usize::try_from(w)
                .ok()
                .filter(|w| (1..=MAX_HIDDEN_UNITS).contains(w))
                .ok_or_else(|| {
                    value_err(
                        "model.hidden",
                        format!(
                            "layer {} has {w} units; a layer has 1 to {MAX_HIDDEN_UNITS}",
                            i + 1
                        ),
                    )
                })
        })
        .collect::<Result<Vec<usize>>>()?;
    let activation = match m.activation.as_deref().unwrap_or("relu") {
        "relu" => Activation::Relu,
        "tanh" => Activation::Tanh,
        other => {
            return Err(value_err(
                "model.activation",
                not_one_of(other, &["relu", "tanh"]),
            ))
        }
    };
    if m.l1 != 0.0 {
        return Err(value_err(
            "model.l1",
            "a network takes an L2 penalty (weight decay, model.l2) only",
        ));
    }
    Ok(Some((
        head,
        NetworkSpec {
            hidden,
            activation,
            seed: m.seed.unwrap_or(data_seed),
        },
    )))
}

/// `[optimizer]`, checked against the model.
fn optimizer_spec(o: RawOptimizer, model: &ModelSpec) -> Result<OptimizerSpec> {
    let default_kind = if model.network.is_some() {
        "adam"
    } else {
        "lbfgs"
    };
    let okind = o.kind.clone().unwrap_or_else(|| default_kind.into());
    if model.network.is_some() && !matches!(okind.as_str(), "sgd" | "momentum" | "adagrad" | "adam")
    {
        return Err(value_err(
            "optimizer.kind",
            format!("a network (model.kind = \"mlp\") trains by mini-batch steps: sgd, momentum, adagrad or adam, not '{okind}'"),
        ));
    }
    let first_order = || -> Result<FirstOrder> {
        let learning_rate = positive("optimizer.learning_rate", o.learning_rate.unwrap_or(0.1))?;
        let batch_size = o.batch_size.unwrap_or(256);
        if batch_size == 0 {
            return Err(value_err("optimizer.batch_size", "must be at least 1"));
        }
        let schedule = match o.schedule.as_deref().unwrap_or("constant") {
            "constant" => Schedule::Constant,
            s @ ("inverse_time" | "inverse_sqrt" | "exponential") => {
                let decay = o.decay.ok_or_else(|| {
                    value_err("optimizer.decay", format!("schedule '{s}' needs a decay"))
                })?;
                match s {
                    "inverse_time" => Schedule::InverseTime {
                        decay: positive("optimizer.decay", decay)?,
                    },
                    "inverse_sqrt" => Schedule::InverseSqrt {
                        decay: positive("optimizer.decay", decay)?,
                    },
                    _ => {
                        if !(decay > 0.0 && decay <= 1.0) {
                            return Err(value_err(
                                "optimizer.decay",
                                format!("exponential decay must be in (0, 1], got {decay}"),
                            ));
                        }
                        Schedule::Exponential { decay }
                    }
                }
            }
            other => {
                return Err(value_err(
                    "optimizer.schedule",
                    not_one_of(
                        other,
                        &["constant", "inverse_time", "inverse_sqrt", "exponential"],
                    ),
                ))
            }
        };
        Ok(FirstOrder {
            learning_rate,
            batch_size,
            schedule,
            // Set below, once the kind and the penalties are known.
            lazy: false,
        })
    };
    let mut optimizer = match okind.as_str() {
        k if k != "lbfgs" && o.sharded == Some(true) => {
            return Err(value_err(
                "optimizer.sharded",
                format!("applies to optimizer.kind = 'lbfgs' (its vectors sharded over the owners); '{k}' keeps per-coordinate state, already sharded"),
            ))
        }
        "sgd" => OptimizerSpec::Sgd(first_order()?),
        "momentum" => OptimizerSpec::Momentum {
            base: first_order()?,
            momentum: unit_interval("optimizer.momentum", o.momentum.unwrap_or(0.9))?,
        },
        "adagrad" => OptimizerSpec::Adagrad {
            base: first_order()?,
            epsilon: positive("optimizer.epsilon", o.epsilon.unwrap_or(1e-8))?,
        },
        "adam" => OptimizerSpec::Adam {
            base: first_order()?,
            beta1: unit_interval("optimizer.beta1", o.beta1.unwrap_or(0.9))?,
            beta2: unit_interval("optimizer.beta2", o.beta2.unwrap_or(0.999))?,
            epsilon: positive("optimizer.epsilon", o.epsilon.unwrap_or(1e-8))?,
        },
        "ftrl" => {
            let base = first_order()?;
            if base.schedule != Schedule::Constant {
                return Err(value_err(
                    "optimizer.schedule",
                    "FTRL has per-coordinate rates built in: use the constant schedule",
                ));
            }
            OptimizerSpec::Ftrl {
                base,
                beta: non_negative("optimizer.beta", o.beta.unwrap_or(1.0))?,
            }
        }
        "lbfgs" => {
            let memory = o.memory.unwrap_or(10);
            if memory == 0 {
                return Err(value_err("optimizer.memory", "must be at least 1"));
            }
            let tolerance = o
                .tolerance
                .map(|t| non_negative("optimizer.tolerance", t))
                .transpose()?;
            let gradient = o
                .gradient_tolerance
                .map(|g| non_negative("optimizer.gradient_tolerance", g))
                .transpose()?;
            // L-BFGS-B's tests and defaults; a gradient tolerance given
            // alone is the only test (as with `[output] state`), and 0
            // turns a test off.
            let (tolerance, gradient_tolerance) = match (tolerance, gradient) {
                (t, None) => (t.unwrap_or(LBFGS_TOLERANCE), Some(LBFGS_GRADIENT_TOLERANCE)),
                (t, Some(g)) => (t.unwrap_or(0.0), Some(g).filter(|&g| g > 0.0)),
            };
            OptimizerSpec::Lbfgs {
                memory,
                tolerance,
                gradient_tolerance,
                sharded: o.sharded.unwrap_or(false),
            }
        }
        "exact" => {
            if !(model.kind == ModelKind::Linear || model.kind.is_naive_bayes()) {
                return Err(value_err(
                    "optimizer.kind",
                    format!(
                        "'exact' fits the models whose training reduces to sums (linear: least squares and ridge; gaussian_nb, multinomial_nb); model.kind = '{}' has no sufficient statistics (use lbfgs)",
                        model.kind.name()
                    ),
                ));
            }
            if model.l1 > 0.0 {
                return Err(value_err(
                    "model.l1",
                    "'exact' solves ridge (l2) in closed form; an l1 penalty has no closed form (use lbfgs, which runs OWL-QN)",
                ));
            }
            OptimizerSpec::Exact
        }
        other => {
            return Err(value_err(
                "optimizer.kind",
                not_one_of(
                    other,
                    &[
                        "sgd", "momentum", "adagrad", "adam", "ftrl", "lbfgs", "exact",
                    ],
                ),
            ))
        }
    };

    lazy_updates(&mut optimizer, model, o.lazy)?;
    Ok(optimizer)
}

/// `[train]`, checked against the optimizer and model kind.
fn train_spec(
    t: RawTrain,
    optimizer: &OptimizerSpec,
    kind: ModelKind,
    has_validation: bool,
) -> Result<TrainSpec> {
    let epochs = t.epochs.unwrap_or(match optimizer {
        OptimizerSpec::Lbfgs { .. } => LBFGS_DEFAULT_ITERATIONS,
        _ => 10,
    });
    let eval_every = match (t.eval_every, optimizer) {
        (None, _) => 1,
        (Some(0), _) => return Err(value_err("train.eval_every", "must be at least 1")),
        (Some(n), OptimizerSpec::Lbfgs { .. }) => n,
        (Some(1), _) => 1,
        (Some(_), _) => {
            return Err(value_err(
                "train.eval_every",
                "applies to optimizer.kind = 'lbfgs', whose iterations are short; a first-order optimizer evaluates after every epoch",
            ))
        }
    };
    if epochs == 0 {
        return Err(value_err("train.epochs", "must be at least 1"));
    }
    let strategy = match t.strategy.as_deref().unwrap_or("allreduce") {
        "allreduce" => Strategy::Allreduce,
        "model-average" => Strategy::ModelAverage,
        "param-server" => Strategy::ParamServer,
        "model-parallel" => Strategy::ModelParallel,
        other => {
            return Err(value_err(
                "train.strategy",
                format!(
                    "'{other}' is not available; this version offers: allreduce, param-server, model-average, model-parallel"
                ),
            ))
        }
    };
    if strategy != Strategy::Allreduce && optimizer.first_order().is_none() {
        return Err(value_err(
            "train.strategy",
            format!("{} takes mini-batch steps: use optimizer.kind = sgd, momentum, adagrad, adam or ftrl (L-BFGS needs exact full-batch gradients; use allreduce)", strategy.name()),
        ));
    }
    if t.sync_every == Some(0) {
        return Err(value_err("train.sync_every", "must be at least 1"));
    }
    if t.sync_every.is_some() && strategy != Strategy::ModelAverage {
        return Err(value_err(
            "train.sync_every",
            format!(
                "only applies to strategy = \"model-average\" (this pipeline uses {})",
                strategy.name()
            ),
        ));
    }
    match t.replicas {
        Some(r) if strategy != Strategy::ModelAverage => {
            return Err(value_err(
                "train.replicas",
                format!(
                    "only applies to strategy = \"model-average\" (this pipeline uses {}; {r} replicas asked)",
                    strategy.name()
                ),
            ))
        }
        Some(r) if !(1..=MAX_REPLICAS).contains(&r) => {
            return Err(value_err(
                "train.replicas",
                format!("must be between 1 and {MAX_REPLICAS} (got {r})"),
            ))
        }
        _ => {}
    }
    let staleness = match t.staleness {
        None => Staleness::Bounded(0),
        Some(_) if strategy != Strategy::ParamServer => {
            return Err(value_err(
                "train.staleness",
                format!(
                    "only applies to strategy = \"param-server\" (this pipeline uses {})",
                    strategy.name()
                ),
            ))
        }
        Some(raw::RawStaleness::Word(w)) if w == "async" => Staleness::Async,
        Some(raw::RawStaleness::Steps(n)) if (0..=i64::from(MAX_STALENESS)).contains(&n) => {
            Staleness::Bounded(n as u32)
        }
        Some(other) => {
            let got = match other {
                raw::RawStaleness::Steps(n) => n.to_string(),
                raw::RawStaleness::Word(w) => format!("\"{w}\""),
            };
            return Err(value_err(
                "train.staleness",
                format!(
                    "expected a number of steps from 0 to {MAX_STALENESS} or \"async\", got {got}"
                ),
            ));
        }
    };
    let fold = match t.fold.as_deref() {
        None | Some("auto") if strategy == Strategy::Allreduce && optimizer.first_order().is_some() => {
            Fold::Auto
        }
        None | Some("auto") | Some("owners") => Fold::Owners,
        Some("every-worker") if strategy != Strategy::Allreduce => {
            return Err(value_err(
                "train.fold",
                format!(
                    "\"every-worker\" only applies to strategy = \"allreduce\" (this pipeline uses {})",
                    strategy.name()
                ),
            ))
        }
        Some("every-worker") if optimizer.first_order().is_none() => {
            return Err(value_err(
                "train.fold",
                "\"every-worker\" applies to the mini-batch optimizers (sgd, momentum, adagrad, adam, ftrl); L-BFGS keeps its vectors with the owners",
            ))
        }
        Some("every-worker") => Fold::EveryWorker,
        Some(other) => {
            return Err(value_err(
                "train.fold",
                not_one_of(other, &["auto", "owners", "every-worker"]),
            ))
        }
    };
    let shards = t.shards.unwrap_or(16);
    if shards == 0 {
        return Err(value_err("train.shards", "must be at least 1"));
    }
    let early_stopping = match t.early_stopping {
        None => None,
        Some(es) => {
            if !has_validation {
                return Err(value_err(
                    "train.early_stopping",
                    "needs validation rows: set data.validation",
                ));
            }
            let metric = es.metric.unwrap_or_else(|| "loss".to_string());
            metric::MetricKind::parse(&metric, kind)
                .map_err(|m| value_err("train.early_stopping.metric", m))?;
            Some(EarlyStopping {
                metric,
                patience: es.patience.unwrap_or(3).max(1),
                min_delta: non_negative(
                    "train.early_stopping.min_delta",
                    es.min_delta.unwrap_or(0.0),
                )?,
            })
        }
    };
    Ok(TrainSpec {
        epochs,
        strategy,
        shards,
        sync_every: t.sync_every,
        replicas: t.replicas,
        staleness,
        max_worker_params: match t.max_worker_params {
            Some(0) => return Err(value_err("train.max_worker_params", "must be at least 1")),
            m => m,
        },
        early_stopping,
        eval_every,
        fold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str =
        "[data]\ntrain = \"x.parquet\"\nlabel = \"y\"\n[model]\nkind = \"logistic\"\n";

    /// Lazy updates are on by default exactly where they do not change the
    /// algorithm; asking overrides, except where the closed form fails.
    #[test]
    fn lazy_updates_default_to_where_they_are_exact() {
        let lazy = |sets: &[&str]| -> Result<bool> {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            let p = Pipeline::parse(MIN, Path::new("p.toml"), &sets)?;
            Ok(p.optimizer.first_order().is_some_and(|f| f.lazy))
        };
        for (sets, want) in [
            (&["optimizer.kind=sgd", "model.l2=0.01"][..], true),
            (&["optimizer.kind=ftrl", "model.l1=0.01"][..], true),
            (&["optimizer.kind=adagrad"][..], true),
            (&["optimizer.kind=adagrad", "model.l2=0.01"][..], false),
            (&["optimizer.kind=adagrad", "model.l1=0.01"][..], false),
            (&["optimizer.kind=momentum"][..], false),
            (&["optimizer.kind=adam"][..], false),
            (&["optimizer.kind=adam", "optimizer.lazy=true"][..], true),
            (&["optimizer.kind=sgd", "optimizer.lazy=false"][..], false),
            // 1 − η·l2 ≤ 0: eager unless asked for, and then refused.
            (
                &[
                    "optimizer.kind=sgd",
                    "optimizer.learning_rate=2",
                    "model.l2=0.5",
                ][..],
                false,
            ),
        ] {
            assert_eq!(lazy(sets).unwrap(), want, "{sets:?}");
        }
        // Regression: L-BFGS ignored the key silently.
        let err = lazy(&["optimizer.kind=lbfgs", "optimizer.lazy=false"]).unwrap_err();
        assert!(
            err.to_string().contains("optimizer.lazy") && err.to_string().contains("L-BFGS"),
            "{err}"
        );
        let err = lazy(&[
            "optimizer.kind=sgd",
            "optimizer.learning_rate=2",
            "model.l2=0.5",
            "optimizer.lazy=true",
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("optimizer.lazy") && err.to_string().contains("< 1"),
            "{err}"
        );
    }

    #[test]
    fn defaults_fill_in() {
        let p = Pipeline::parse(MIN, Path::new("p.toml"), &[]).unwrap();
        assert_eq!(p.data.partition, Partition::Shuffle);
        assert_eq!(
            p.optimizer,
            OptimizerSpec::Lbfgs {
                memory: 10,
                tolerance: LBFGS_TOLERANCE,
                gradient_tolerance: Some(LBFGS_GRADIENT_TOLERANCE),
                sharded: false,
            }
        );
        assert_eq!(p.train.epochs, LBFGS_DEFAULT_ITERATIONS);
        assert_eq!(p.train.eval_every, 1);
        let sgd =
            Pipeline::parse(MIN, Path::new("p.toml"), &["optimizer.kind=sgd".into()]).unwrap();
        assert_eq!(sgd.train.epochs, 10);
    }

    /// `optimizer.sharded`: L-BFGS only, off by default and then absent
    /// from the job's identity (old checkpoints still match).
    #[test]
    fn sharded_lbfgs_is_opt_in() {
        let parse = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Pipeline::parse(MIN, Path::new("p.toml"), &sets)
        };
        let sharded =
            |p: &Pipeline| matches!(p.optimizer, OptimizerSpec::Lbfgs { sharded: true, .. });
        assert!(!sharded(&parse(&[]).unwrap()));
        assert!(sharded(&parse(&["optimizer.sharded=true"]).unwrap()));
        let identity = serde_json::to_string(&parse(&[]).unwrap().optimizer).unwrap();
        assert!(!identity.contains("sharded"), "{identity}");
        let err = parse(&["optimizer.kind=sgd", "optimizer.sharded=true"]).unwrap_err();
        assert!(err.to_string().contains("optimizer.sharded"), "{err}");
        assert!(parse(&["optimizer.kind=sgd", "optimizer.sharded=false"]).is_ok());
        assert!(parse(&["optimizer.sharded=true", "output.checkpoint=\"ck\""]).is_ok());
    }

    /// L-BFGS's tolerances: a gradient tolerance given alone is the only
    /// test, 0 turns a test off, `[output] state` stops on the gradient.
    #[test]
    fn lbfgs_tolerances_resolve() {
        let lbfgs = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            match Pipeline::parse(MIN, Path::new("p.toml"), &sets)
                .unwrap()
                .optimizer
            {
                OptimizerSpec::Lbfgs {
                    tolerance,
                    gradient_tolerance,
                    ..
                } => (tolerance, gradient_tolerance),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            lbfgs(&["optimizer.tolerance=1e-6"]),
            (1e-6, Some(LBFGS_GRADIENT_TOLERANCE))
        );
        assert_eq!(
            lbfgs(&["optimizer.gradient_tolerance=1e-7"]),
            (0.0, Some(1e-7))
        );
        assert_eq!(
            lbfgs(&[
                "optimizer.tolerance=1e-12",
                "optimizer.gradient_tolerance=0"
            ]),
            (1e-12, None)
        );
        assert_eq!(
            lbfgs(&[
                "output.state=\"s\"",
                "data.key=\"id\"",
                "model.kind=\"linear\"",
                "model.l2=0.01"
            ]),
            (0.0, Some(STATE_GRADIENT_TOLERANCE))
        );
        let state = ["output.state=\"s\"", "data.key=\"id\"", "model.l2=0.01"];
        let hinge = |more: &[&str]| lbfgs(&[&state[..], &["model.kind=\"hinge\""], more].concat());
        assert_eq!(hinge(&[]), (HINGE_STATE_TOLERANCE, None));
        assert_eq!(
            hinge(&["optimizer.gradient_tolerance=1e-6"]),
            (0.0, Some(1e-6))
        );
        assert_eq!(hinge(&["optimizer.tolerance=1e-8"]), (1e-8, None));
        let sets: Vec<String> = [
            &state[..],
            &["model.kind=\"linear\"", "optimizer.gradient_tolerance=0"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect();
        let err = Pipeline::parse(MIN, Path::new("p.toml"), &sets).unwrap_err();
        assert!(err.to_string().contains("gradient alone"), "{err}");
        for bad in ["optimizer.gradient_tolerance=-1", "optimizer.tolerance=nan"] {
            let err = Pipeline::parse(MIN, Path::new("p.toml"), &[bad.into()]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}: {err}");
        }
        let err = Pipeline::parse(
            MIN,
            Path::new("p.toml"),
            &["optimizer.kind=sgd".into(), "train.eval_every=5".into()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("train.eval_every"), "{err}");
    }

    /// `train.fold`: auto under `allreduce` with mini-batch steps, the
    /// owners elsewhere; "every-worker" refused where it does not apply;
    /// auto folds on every worker while a step's gradients to the other
    /// workers are at most 65,536 coordinates.
    #[test]
    fn fold_applies_to_allreduce_with_mini_batch_steps() {
        let fold = |sets: &[&str]| -> Result<Fold> {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            Ok(Pipeline::parse(MIN, Path::new("p.toml"), &sets)?.train.fold)
        };
        for (sets, want) in [
            (&["optimizer.kind=sgd"][..], Fold::Auto),
            (&["optimizer.kind=sgd", "train.fold=owners"], Fold::Owners),
            (
                &["optimizer.kind=adam", "train.fold=every-worker"],
                Fold::EveryWorker,
            ),
            (&["optimizer.kind=lbfgs"], Fold::Owners),
            (&["optimizer.kind=lbfgs", "train.fold=auto"], Fold::Owners),
            (
                &["optimizer.kind=sgd", "train.strategy=param-server"],
                Fold::Owners,
            ),
        ] {
            assert_eq!(fold(sets).unwrap(), want, "{sets:?}");
        }
        for (sets, says) in [
            (
                &["optimizer.kind=lbfgs", "train.fold=every-worker"][..],
                "L-BFGS",
            ),
            (
                &[
                    "optimizer.kind=sgd",
                    "train.strategy=model-average",
                    "train.fold=every-worker",
                ],
                "model-average",
            ),
            (
                &["optimizer.kind=sgd", "train.fold=everyone"],
                "every-worker",
            ),
        ] {
            let err = fold(sets).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{sets:?}: {err}");
            let text = err.to_string();
            assert!(text.contains("train.fold") && text.contains(says), "{text}");
        }
        assert!(Fold::Auto.every_worker(33, 2));
        assert!(Fold::Auto.every_worker(1 << 16, 2));
        assert!(!Fold::Auto.every_worker((1 << 16) + 1, 2));
        assert!(Fold::Auto.every_worker(4_096, 17));
        assert!(!Fold::Auto.every_worker(4_096, 18));
        assert!(!Fold::Auto.every_worker(33, 1));
        assert!(!Fold::EveryWorker.every_worker(33, 1));
        assert!(Fold::EveryWorker.every_worker(1 << 22, 2));
        assert!(!Fold::Owners.every_worker(33, 2));
    }

    #[test]
    fn unknown_key_is_named() {
        let text = format!("{MIN}lr = 3\n").replace("[model]\n", "[model]\nlearnig_rate = 1\n");
        let err = Pipeline::parse(&text, Path::new("p.toml"), &[]).unwrap_err();
        assert!(err.to_string().contains("learnig_rate"), "{err}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let err = Pipeline::parse(MIN, Path::new("p.toml"), &["optimizer.kind=newton".into()])
            .unwrap_err();
        assert!(err.to_string().contains("optimizer.kind"), "{err}");
        let err = Pipeline::parse(
            MIN,
            Path::new("p.toml"),
            &["data.validation={ fraction = 1.5 }".into()],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("data.validation.fraction"),
            "{err}"
        );
    }

    #[test]
    fn overrides_apply() {
        let p = Pipeline::parse(
            MIN,
            Path::new("p.toml"),
            &[
                "optimizer.kind=adam".into(),
                "optimizer.learning_rate=0.01".into(),
            ],
        )
        .unwrap();
        match p.optimizer {
            OptimizerSpec::Adam { base, .. } => assert_eq!(base.learning_rate, 0.01),
            other => panic!("{other:?}"),
        }
    }
}
