//! What the training dataflow hands to a checkpoint at an epoch boundary:
//! each shard owner's state (in its strategy's own encoding), the
//! collector's records and early-stopping state, and each worker's replica
//! states where workers train replicas (`model-average`). The dataflow routes
//! these pieces to worker 0; the strategy decides what they hold and the
//! checkpoint store writes them (see docs/fault-tolerance.md).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use super::Failure;
use crate::error::{Error, Result};
use crate::metrics::sink::EpochRecord;
use crate::spec::CheckpointEvery;

/// When checkpoints are taken: after the last epoch (L-BFGS iteration),
/// and every `n` epochs, or whenever the optimizer's steps pass a multiple
/// of `n` (inside an epoch at the end of the round that passes it; at the
/// epoch's boundary, after its evaluation, when that round is the epoch's
/// last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// How often.
    pub every: CheckpointEvery,
    /// The epochs the job runs at most (`train.epochs`).
    pub epochs: u32,
}

impl Cadence {
    /// Epochs between checkpoints, for a cadence in epochs.
    pub fn epochs(every: u32, epochs: u32) -> Cadence {
        Cadence {
            every: CheckpointEvery::Epochs(every),
            epochs,
        }
    }

    /// True if the boundary after `epoch` epochs (1-based) is checkpointed;
    /// `steps` is the optimizer's step count there and `last` the steps of
    /// the epoch's last round.
    pub fn due_at_epoch(&self, epoch: u32, steps: u64, last: u64) -> bool {
        epoch >= self.epochs
            || match self.every {
                CheckpointEvery::Epochs(n) => epoch.is_multiple_of(n.max(1)),
                CheckpointEvery::Steps(n) => passes(steps, last, n),
            }
    }

    /// True if a checkpoint falls after a round inside an epoch (not its
    /// last) that ran `k` steps and ended at step count `steps`.
    pub fn due_at_step(&self, steps: u64, k: u64) -> bool {
        match self.every {
            CheckpointEvery::Epochs(_) => false,
            CheckpointEvery::Steps(n) => passes(steps, k, n),
        }
    }
}

/// True if the `k` steps that ended at step count `steps` passed a
/// multiple of `n`.
fn passes(steps: u64, k: u64, n: u64) -> bool {
    let n = n.max(1);
    steps / n > steps.saturating_sub(k) / n
}

/// Whose state a [`Part`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartOf {
    /// A shard owner's: its shards and the state every owner shares.
    Owner,
    /// A worker's replicas (`model-average`): their optimizer states, by
    /// replica number.
    Replica,
}

/// A piece of a checkpoint, encoded by the strategy, sent to worker 0.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// Where in the job: the optimizer's step count (L-BFGS: iterations),
    /// which numbers the checkpoint.
    pub position: u64,
    /// Epochs (L-BFGS iterations) completed.
    pub epoch: u32,
    /// The worker it comes from.
    pub worker: u32,
    /// Whose state it is.
    pub of: PartOf,
    /// The strategy's encoding.
    pub bytes: Vec<u8>,
}

/// The collector's state after closing an epoch (or before the first).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CollectorState {
    /// The epoch records so far, as JSON lines (records skip absent
    /// fields, which only a self-describing format reads back).
    pub records: String,
    /// Early stopping: the best value of the watched metric so far.
    pub early_best: Option<f64>,
    /// Early stopping: evaluations since the best one.
    pub early_since: u32,
    /// Optimizer steps at the previous record.
    pub last_steps: u64,
    /// Seconds of training before this boundary.
    pub elapsed_s: f64,
}

impl CollectorState {
    /// The records as [`EpochRecord`]s.
    pub fn epoch_records(&self) -> Result<Vec<EpochRecord>> {
        self.records
            .lines()
            .map(|l| {
                serde_json::from_str(l).map_err(|e| {
                    Error::Internal(format!("a saved epoch record does not read: {e}"))
                })
            })
            .collect()
    }
}

/// The collector's states by epochs completed, on worker 0: filled by the
/// collector, read by the checkpoint sink (a checkpoint inside epoch
/// `e + 1` carries the state after epoch `e`).
pub type CollectorStates = Rc<RefCell<BTreeMap<u32, CollectorState>>>;

/// What the checkpoint sink hands to its writer: the position, the epochs
/// completed, the parts (ordered by kind, then worker) and the collector's
/// state there.
pub type Gathered = (u64, u32, Vec<Part>, CollectorState);

/// Extension trait: gather checkpoint parts on worker 0.
pub trait SaveCheckpoints {
    /// Sends every [`Part`] to worker 0 and, once a round's parts are all
    /// in (the frontier has passed it) and hold the owners' state, calls
    /// `write` with them and the collector's state. A failed write is
    /// recorded in `failure`, which stops the job (the gradient operator
    /// checks it every round); it replaces a stop request there.
    fn save_checkpoints(
        self,
        states: CollectorStates,
        write: impl FnMut(Gathered) -> Result<()> + 'static,
        failure: Rc<RefCell<Option<Failure>>>,
    );
}

impl SaveCheckpoints for StreamVec<'_, u64, Part> {
    fn save_checkpoints(
        self,
        states: CollectorStates,
        mut write: impl FnMut(Gathered) -> Result<()> + 'static,
        failure: Rc<RefCell<Option<Failure>>>,
    ) {
        let mut pending: BTreeMap<u64, Vec<Part>> = BTreeMap::new();
        self.sink(
            Exchange::new(|_p: &Part| 0u64),
            "SaveCheckpoints",
            move |(input, frontier)| {
                input.for_each(|cap, data| {
                    if let Some(&t) = cap.least() {
                        pending.entry(t).or_default().append(data);
                    }
                });
                while let Some((&t, _)) = pending.first_key_value() {
                    if frontier.less_equal(&t) {
                        break;
                    }
                    let Some((_, mut parts)) = pending.pop_first() else {
                        break;
                    };
                    // Replicas send their state at every evaluation; only
                    // a round where the owners saved theirs is a checkpoint.
                    let Some(owner) = parts.iter().find(|p| p.of == PartOf::Owner) else {
                        continue;
                    };
                    // A failure in a later round does not spoil this
                    // state: it is written (an incomplete one is refused
                    // below).
                    let (position, epoch) = (owner.position, owner.epoch);
                    parts.sort_by_key(|p| (p.of == PartOf::Replica, p.worker));
                    let state = {
                        let mut states = states.borrow_mut();
                        let state = states.get(&epoch).cloned();
                        // Older states are never needed again.
                        states.retain(|&e, _| e >= epoch);
                        state
                    };
                    let result = match state {
                        Some(state) if parts.iter().all(|p| p.epoch == epoch) => {
                            write((position, epoch, parts, state))
                        }
                        _ => Err(Error::Internal(format!(
                            "the checkpoint at step {position} (epoch {epoch}) is incomplete: the collector's state or a part is missing"
                        ))),
                    };
                    if let Err(e) = result {
                        // A failed write outranks a stop request, which
                        // would say the job was checkpointed where it
                        // stopped.
                        let mut failure = failure.borrow_mut();
                        if failure.as_ref().is_none_or(Failure::is_stop) {
                            *failure = Some(Failure::from(&e));
                        }
                    }
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_every_n_epochs_and_after_the_last() {
        let c = Cadence::epochs(3, 10);
        let due: Vec<u32> = (1..=12).filter(|&e| c.due_at_epoch(e, 0, 1)).collect();
        assert_eq!(due, [3, 6, 9, 10, 11, 12]);
        assert!(
            !c.due_at_step(9, 1),
            "a cadence in epochs never cuts an epoch"
        );
        let every = Cadence::epochs(1, 2);
        assert!(every.due_at_epoch(1, 0, 1) && every.due_at_epoch(2, 0, 1));
    }

    #[test]
    fn checkpoints_in_steps_fall_where_a_round_passes_a_multiple() {
        let c = Cadence {
            every: CheckpointEvery::Steps(10),
            epochs: 100,
        };
        // Rounds of one step: at 10, 20, …
        let due: Vec<u64> = (1..=35).filter(|&s| c.due_at_step(s, 1)).collect();
        assert_eq!(due, [10, 20, 30]);
        // Rounds of 4 steps (model-average, sync_every = 4): the round that
        // ends at 12 passed 10, the one that ends at 20 reached 20.
        let due: Vec<u64> = (1..=6)
            .map(|r| 4 * r)
            .filter(|&s| c.due_at_step(s, 4))
            .collect();
        assert_eq!(due, [12, 20]);
        // An epoch whose last round passes a multiple is checkpointed at its
        // boundary; one that does not is not (before the last epoch).
        assert!(c.due_at_epoch(3, 30, 1));
        assert!(!c.due_at_epoch(3, 33, 1));
        assert!(c.due_at_epoch(100, 1001, 1), "the last epoch always is");
    }
}
