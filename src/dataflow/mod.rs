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
pub mod hooks;
pub mod layers;
pub mod liveness;
pub mod margins;
pub mod rounds;
pub mod scan;
pub mod snapshot;

use serde::{Deserialize, Serialize};

use crate::exact::{Bound, Exact, Wide};
use crate::metrics::EvalPartial;
use crate::optim::lazy::Stamp;
use crate::optim::lbfgs::Convergence;
pub use crate::optim::vector_free::Scalars;

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
    /// Fresher parameters for workers that run ahead (`param-server`):
    /// nothing to compute, only to read.
    Refresh,
    /// Sharded L-BFGS: no evaluation, only the sum over shards of the
    /// scalars the owners sent ([`ParamMsg::scalars`]), returned to them
    /// in [`GradMsg::reduced`].
    Reduce,
    /// Training is over; these are the final parameters.
    Final {
        /// Epochs (or iterations) run.
        epochs: u32,
        /// Final objective, when known.
        objective: Option<f64>,
        /// L-BFGS: why it ended before its iteration limit, if it did.
        converged_by: Option<Convergence>,
    },
}

/// One shard of the parameters, sent from its owner to every worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParamMsg {
    /// Shard id.
    pub shard: u32,
    /// What to do with them.
    pub phase: Phase,
    /// Optimizer updates folded into the values so far.
    pub version: u64,
    /// The owner's emission count for this shard (1, 2, …).
    pub seq: u64,
    /// The shard's values, whole or as changes since emission `seq - 1`.
    pub values: ShardValues,
    /// Lazy updates: when the values were published (`None`: eager
    /// updates, every value is the weight at `version`).
    pub lazy: Option<LazyHeader>,
    /// Sharded L-BFGS: the owner's partial sums over this shard, which
    /// every worker totals over the shards in shard order (empty
    /// otherwise).
    pub scalars: Scalars,
}

/// What readers of lazily updated shards need besides the values (see
/// [`crate::optim::lazy`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LazyHeader {
    /// The optimizer's clock after the step the values come from: the
    /// coordinates sent were brought up to date at it.
    pub stamp: Stamp,
    /// Every coordinate of the shard is up to date as of `stamp` (a flush,
    /// or a whole shard): the ones not sent are unchanged, not behind.
    pub flushed: bool,
    /// FTRL with a penalty: (offset, z, n) of the coordinates touched since
    /// the previous emission, offsets increasing. Readers compute weights
    /// at later steps from them ([`crate::optim::ftrl_weight`]); the
    /// weights of these coordinates at `stamp` are not sent.
    pub state: Vec<(u32, f64, f64)>,
}

impl LazyHeader {
    /// Serialized payload bytes (bincode layout).
    pub fn bytes(&self) -> u64 {
        8 + 16 + 16 + 1 + 8 + 20 * self.state.len() as u64
    }
}

/// The size rule of every message that can travel sparse: `entries`
/// (index, value) pairs of `entry_bytes` each are sent instead of `len`
/// dense values of `value_bytes` each when they are strictly smaller.
pub fn sparse_is_smaller(
    entries: usize,
    len: usize,
    entry_bytes: usize,
    value_bytes: usize,
) -> bool {
    entries * entry_bytes < len * value_bytes
}

/// Bytes of a dense parameter value (`f64`) and of a changed entry (`u32`
/// offset and `f64`).
const VALUE_BYTES: (usize, usize) = (8, 12);

/// Bytes of a dense exact partial (`i128`) and of a sparse entry (`u32`
/// offset and `i128`).
const PARTIAL_BYTES: (usize, usize) = (16, 20);

/// A shard's values as sent: whole, or only the coordinates that changed
/// since the owner's previous emission of the shard (wide hashed models
/// change few weights per step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShardValues {
    /// Every coordinate.
    Dense(Vec<f64>),
    /// (offset, new value) of the changed coordinates, offsets increasing.
    Delta(Vec<(u32, f64)>),
}

impl ShardValues {
    /// The sparse form of `len` values with these changed entries (sorted
    /// here), if it is the smaller one.
    pub fn sparse(mut entries: Vec<(u32, f64)>, len: usize) -> Option<ShardValues> {
        let (value, entry) = VALUE_BYTES;
        if !sparse_is_smaller(entries.len(), len, entry, value) {
            return None;
        }
        entries.sort_unstable_by_key(|e| e.0);
        Some(ShardValues::Delta(entries))
    }

    /// The cheaper form of `now`, given the values `before` it (same length)
    /// that every worker already holds.
    pub fn diff(before: Option<&[f64]>, now: &[f64]) -> ShardValues {
        let (value, entry) = VALUE_BYTES;
        let Some(before) = before.filter(|b| b.len() == now.len()) else {
            return ShardValues::Dense(now.to_vec());
        };
        let changed = || {
            before
                .iter()
                .zip(now)
                .enumerate()
                .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
        };
        if sparse_is_smaller(changed().count(), now.len(), entry, value) {
            ShardValues::Delta(changed().map(|(i, (_, &v))| (i as u32, v)).collect())
        } else {
            ShardValues::Dense(now.to_vec())
        }
    }

    /// Serialized payload bytes (bincode layout).
    pub fn bytes(&self) -> u64 {
        match self {
            ShardValues::Dense(v) => 4 + 8 + 8 * v.len() as u64,
            ShardValues::Delta(e) => 4 + 8 + 12 * e.len() as u64,
        }
    }
}

/// A failure reported through the dataflow so every worker stops cleanly:
/// the error itself, which reaches the user as the same variant (file, row
/// group, column and row included) whichever worker or process found it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure(pub Box<crate::error::Error>);

impl Failure {
    /// True for a request to stop at a checkpoint (a signal), which rides
    /// on a round's messages without failing it.
    pub fn is_stop(&self) -> bool {
        matches!(*self.0, crate::error::Error::Stopped { .. })
    }

    /// The error, to return to the caller.
    pub fn into_error(self) -> crate::error::Error {
        *self.0
    }
}

impl PartialEq for Failure {
    /// Failures are equal if they would read and exit the same.
    fn eq(&self, o: &Failure) -> bool {
        self.0.exit_code() == o.0.exit_code() && self.0.to_string() == o.0.to_string()
    }
}

impl From<&crate::error::Error> for Failure {
    fn from(e: &crate::error::Error) -> Self {
        Failure(Box::new(e.clone()))
    }
}

/// The message for a per-unit loss sum that cannot be summed exactly.
pub fn loss_message(loss: f64) -> String {
    if loss.is_finite() {
        format!(
            "a unit's loss sum is {loss:e}, beyond the {:e} that exact sums hold (rescale the label, or set data.standardize = true)",
            crate::exact::WIDE_LIMIT
        )
    } else {
        format!("the loss became {loss} (lower optimizer.learning_rate, or set data.standardize = true)")
    }
}

/// The message for gradient partials whose [`Bound`] does not hold.
pub fn bound_message(bound: Bound) -> String {
    format!(
        "the step's gradient partials sum to magnitudes of up to {:e}, beyond the {:e} that exact sums in 128-bit fixed point hold in every order: rescale the feature or label (data.standardize = true)",
        bound.to_f64(),
        crate::exact::SUM_LIMIT
    )
}

/// Exact partial sums over a shard's coordinates, dense or sparse.
///
/// Wide hashed models touch few coordinates per step: only the non-zero
/// ones travel then (as `(index, value)` pairs), whenever that is smaller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Partial {
    /// Every coordinate.
    Dense(Vec<Exact>),
    /// Non-zero coordinates, by offset inside the shard.
    Sparse {
        /// Coordinates in the shard.
        len: u32,
        /// (offset, value), offsets increasing.
        entries: Vec<(u32, Exact)>,
    },
}

impl Partial {
    /// The cheaper form of `values`.
    pub fn from_slice(values: &[Exact]) -> Partial {
        let nnz = values.iter().filter(|v| v.0 != 0).count();
        let (value, entry) = PARTIAL_BYTES;
        if sparse_is_smaller(nnz, values.len(), entry, value) {
            Partial::Sparse {
                len: values.len() as u32,
                entries: values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.0 != 0)
                    .map(|(i, &v)| (i as u32, v))
                    .collect(),
            }
        } else {
            Partial::Dense(values.to_vec())
        }
    }

    /// What [`Partial::from_slice`] makes of `values`, knowing that only the
    /// coordinates in `touched` (sorted, distinct, absolute: `offset` is the
    /// absolute index of `values[0]`) can be non-zero.
    pub fn from_touched(values: &[Exact], offset: usize, touched: &[usize]) -> Partial {
        let nnz = touched
            .iter()
            .filter(|&&i| values[i - offset].0 != 0)
            .count();
        let (value, entry) = PARTIAL_BYTES;
        if sparse_is_smaller(nnz, values.len(), entry, value) {
            Partial::Sparse {
                len: values.len() as u32,
                entries: touched
                    .iter()
                    .map(|&i| ((i - offset) as u32, values[i - offset]))
                    .filter(|(_, v)| v.0 != 0)
                    .collect(),
            }
        } else {
            Partial::Dense(values.to_vec())
        }
    }

    /// What [`Partial::from_slice`] makes of a vector of `len` coordinates
    /// whose non-zero ones are `entries` (offsets increasing).
    pub fn from_entries(len: usize, entries: Vec<(u32, Exact)>) -> Partial {
        let (value, entry) = PARTIAL_BYTES;
        if sparse_is_smaller(entries.len(), len, entry, value) {
            Partial::Sparse {
                len: len as u32,
                entries,
            }
        } else {
            let mut dense = vec![Exact::default(); len];
            for (i, v) in entries {
                dense[i as usize] = v;
            }
            Partial::Dense(dense)
        }
    }

    /// Coordinates covered.
    pub fn len(&self) -> usize {
        match self {
            Partial::Dense(v) => v.len(),
            Partial::Sparse { len, .. } => *len as usize,
        }
    }

    /// True if it covers no coordinates.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the partial into `acc` (of length [`Partial::len`]).
    pub fn add_into(self, acc: &mut [Exact]) {
        match self {
            Partial::Dense(v) => acc.iter_mut().zip(v).for_each(|(a, v)| *a += v),
            Partial::Sparse { entries, .. } => {
                for (i, v) in entries {
                    if let Some(a) = acc.get_mut(i as usize) {
                        *a += v;
                    }
                }
            }
        }
    }

    /// Serialized payload bytes (bincode layout).
    pub fn bytes(&self) -> u64 {
        match self {
            Partial::Dense(v) => 4 + 8 + 16 * v.len() as u64,
            Partial::Sparse { entries, .. } => 4 + 4 + 8 + 20 * entries.len() as u64,
        }
    }
}

/// A worker's gradient partial for one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradMsg {
    /// Shard id.
    pub shard: u32,
    /// Exact partial sums of the loss gradient over the shard's coordinates.
    pub values: Partial,
    /// Exact partial loss sum (all coordinates; the same in every shard's message).
    pub loss: Wide,
    /// Bound on the magnitude of `values` and of every partial sum behind
    /// them (the same in every shard's message): the owner sums the bounds
    /// with the values and fails the step where the total does not hold.
    pub bound: Bound,
    /// Rows in the partial.
    pub rows: u64,
    /// The total over shards of the round's [`ParamMsg::scalars`] (the
    /// same in every message of the round).
    pub reduced: Scalars,
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
    pub train_loss: Wide,
    /// Training rows behind `train_loss`.
    pub train_rows: u64,
    /// Payload bytes this worker exchanged with other workers since the
    /// previous evaluation (parameters received, gradients sent).
    pub bytes: u64,
    /// `param-server`: how many shard reads since the previous evaluation
    /// were `i` optimizer updates behind a synchronous run, for each `i`
    /// (empty for the other strategies).
    pub staleness: Vec<u64>,
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
    /// Evaluation partial for the collector (boxed: far larger than a
    /// gradient message, and sent once an epoch).
    Eval(Box<EvalMsg>),
    /// The worker's replica states for a checkpoint (`model-average`).
    Saved(snapshot::Part),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn partials_add_like_dense_vectors(values in proptest::collection::vec(prop_oneof![Just(0i128), -1000i128..1000], 0..200)) {
            let v: Vec<Exact> = values.iter().map(|&x| Exact(x)).collect();
            let p = Partial::from_slice(&v);
            prop_assert_eq!(p.len(), v.len());
            let mut acc = vec![Exact(7); v.len()];
            p.clone().add_into(&mut acc);
            let want: Vec<Exact> = v.iter().map(|&x| x + Exact(7)).collect();
            prop_assert_eq!(acc, want);
            let dense = Partial::Dense(v.clone()).bytes();
            prop_assert!(p.bytes() <= dense + 8);
        }
    }

    proptest! {
        #[test]
        fn shard_deltas_rebuild_the_values(
            before in proptest::collection::vec(-3.0f64..3.0, 1..100),
            edits in proptest::collection::vec((0usize..100, -3.0f64..3.0), 0..150),
        ) {
            let mut now = before.clone();
            for (i, v) in edits {
                let n = now.len();
                now[i % n] = v;
            }
            let mut rebuilt = before.clone();
            match ShardValues::diff(Some(&before), &now) {
                ShardValues::Dense(v) => rebuilt = v,
                ShardValues::Delta(e) => e.into_iter().for_each(|(i, v)| rebuilt[i as usize] = v),
            }
            prop_assert_eq!(rebuilt, now.clone());
            prop_assert_eq!(ShardValues::diff(None, &now), ShardValues::Dense(now.clone()));
        }
    }

    proptest! {
        #[test]
        fn touched_partials_equal_scanned_ones(values in proptest::collection::vec(prop_oneof![Just(0i128), Just(0i128), Just(0i128), -1000i128..1000], 1..300), offset in 0usize..50) {
            let v: Vec<Exact> = values.iter().map(|&x| Exact(x)).collect();
            // Touched: every non-zero coordinate, plus a few zero ones.
            let touched: Vec<usize> = (0..v.len()).filter(|&i| v[i].0 != 0 || i % 7 == 0).map(|i| i + offset).collect();
            prop_assert_eq!(Partial::from_touched(&v, offset, &touched), Partial::from_slice(&v));
        }
    }

    #[test]
    fn mostly_zero_partials_travel_sparse() {
        let mut v = vec![Exact(0); 1000];
        v[3] = Exact(5);
        assert!(matches!(Partial::from_slice(&v), Partial::Sparse { .. }));
        assert!(matches!(
            Partial::from_slice(&[Exact(1); 10]),
            Partial::Dense(_)
        ));
    }
}
