//! Timely glue: the messages of the training loop and one operator per file.
//!
//! One round of the loop (timely time `r + 1` for round `r`):
//!
//! ```text
//!  fold (shard owners) ──ParamMsg──► broadcast ──► gradients (every worker)
//!       ▲                                              │ GradMsg (by shard owner)
//!       │◄─────────────────────────────────────────────┘
//!       │◄── Control ◄── broadcast ◄── collect (worker 0) ◄── EvalMsg
//!       └── feedback (+1) ──► next round
//! ```
//!
//! Everything between workers travels on timely channels, so the same code
//! runs on threads and across processes.

pub mod collect;
pub mod fold;
pub mod gradient;
pub mod scan;

use serde::{Deserialize, Serialize};

use crate::exact::Exact;
use crate::metrics::EvalPartial;

/// What a round asks the workers to do.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Phase {
    /// Compute the loss gradient of step `step` of epoch `epoch` (0-based).
    Train {
        /// Epoch whose data assignment and row order apply.
        epoch: u32,
        /// Step inside the epoch.
        step: u64,
    },
    /// Evaluate the parameters after `epoch` epochs (1-based).
    Eval {
        /// Epochs (or L-BFGS iterations) completed.
        epoch: u32,
        /// Optimizer steps so far.
        steps: u64,
        /// Objective at these parameters, when the optimizer knows it.
        objective: Option<f64>,
    },
    /// Training is over; these are the final parameters.
    Final {
        /// Epochs (or iterations) run.
        epochs: u32,
        /// Final objective, when known.
        objective: Option<f64>,
    },
}

/// One shard of the parameters, sent from its owner to every worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParamMsg {
    /// Shard id.
    pub shard: u32,
    /// What to do with them.
    pub phase: Phase,
    /// The shard's values.
    pub values: Vec<f64>,
}

/// A failure reported through the dataflow so every worker stops cleanly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The user-facing message.
    pub message: String,
    /// The exit code it maps to.
    pub code: u8,
}

impl From<&crate::error::Error> for Failure {
    fn from(e: &crate::error::Error) -> Self {
        Failure {
            message: e.to_string(),
            code: e.exit_code(),
        }
    }
}

/// A worker's gradient partial for one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradMsg {
    /// Shard id.
    pub shard: u32,
    /// Exact partial sums of the loss gradient over the shard's coordinates.
    pub values: Vec<Exact>,
    /// Exact partial loss sum (all coordinates; the same in every shard's message).
    pub loss: Exact,
    /// Rows in the partial.
    pub rows: u64,
    /// Set if the worker failed.
    pub failure: Option<Failure>,
}

/// A worker's evaluation partial, sent to worker 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalMsg {
    /// The round's phase (an `Eval`).
    pub phase: Phase,
    /// Validation partial.
    pub validation: EvalPartial,
    /// Exact sum of training batch losses since the previous evaluation.
    pub train_loss: Exact,
    /// Training rows behind `train_loss`.
    pub train_rows: u64,
    /// Payload bytes this worker exchanged with other workers since the
    /// previous evaluation (parameters received, gradients sent).
    pub bytes: u64,
    /// Set if the worker failed.
    pub failure: Option<Failure>,
}

/// The collector's decision after an evaluation, sent to every shard owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// Stop training (early stopping).
    pub stop: bool,
    /// These parameters are the best so far: keep a copy.
    pub best: bool,
    /// A worker failed: stop without a model.
    pub failure: Option<Failure>,
}

/// What a worker emits in a round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WorkerOut {
    /// Gradient partial for a shard owner.
    Grad(GradMsg),
    /// Evaluation partial for the collector.
    Eval(EvalMsg),
}

/// Contiguous, balanced ranges of `len` parameters cut into `shards` shards.
pub fn shard_ranges(len: usize, shards: usize) -> Vec<std::ops::Range<usize>> {
    let s = shards.clamp(1, len.max(1));
    (0..s).map(|k| (k * len / s)..((k + 1) * len / s)).collect()
}

/// The worker that owns shard `k` among `workers`.
pub fn owner(shard: u32, workers: usize) -> usize {
    shard as usize % workers.max(1)
}
