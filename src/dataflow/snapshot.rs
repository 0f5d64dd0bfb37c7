//! What the training dataflow hands to a checkpoint at an epoch boundary:
//! each shard owner's state (in its strategy's own encoding), the
//! collector's records and early-stopping state, and each worker's replica
//! state where workers keep one (`model-average`). The dataflow routes
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

/// When checkpoints are taken: after every `every`-th epoch (L-BFGS
/// iteration) and after the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Epochs between checkpoints (at least 1).
    pub every: u32,
    /// The epochs the job runs at most (`train.epochs`).
    pub epochs: u32,
}

impl Cadence {
    /// True if the boundary after `epoch` epochs (1-based) is checkpointed.
    pub fn due(&self, epoch: u32) -> bool {
        epoch >= self.epochs || epoch.is_multiple_of(self.every.max(1))
    }
}

/// One shard owner's state at the boundary after `epoch` epochs, encoded
/// by its strategy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerPart {
    /// The boundary: epochs (L-BFGS iterations) completed.
    pub epoch: u32,
    /// The worker that owns the shards.
    pub worker: u32,
    /// The strategy's encoding of the owned shards.
    pub bytes: Vec<u8>,
}

/// The collector's state after closing an epoch, and the workers' replica
/// states that reached it with the epoch's evaluation.
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
    /// Each worker's replica state, by worker index (empty unless workers
    /// keep replicas).
    pub replicas: Vec<Vec<u8>>,
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

/// The collector's states by boundary, on worker 0: filled by the
/// collector, taken by the checkpoint sink.
pub type CollectorStates = Rc<RefCell<BTreeMap<u32, CollectorState>>>;

/// Extension trait: gather the owners' checkpoint parts on worker 0.
pub trait SaveCheckpoints {
    /// Sends every [`OwnerPart`] to worker 0 and, once a boundary's parts
    /// are all in (the frontier has passed its round), calls `write` with
    /// the boundary, its parts (ordered by worker) and the collector's
    /// state there. A failed write is recorded in `failure`, which stops
    /// the job (the gradient operator checks it every round).
    fn save_checkpoints(
        self,
        states: CollectorStates,
        write: impl FnMut(u32, Vec<OwnerPart>, CollectorState) -> Result<()> + 'static,
        failure: Rc<RefCell<Option<Failure>>>,
    );
}

impl SaveCheckpoints for StreamVec<'_, u64, OwnerPart> {
    fn save_checkpoints(
        self,
        states: CollectorStates,
        mut write: impl FnMut(u32, Vec<OwnerPart>, CollectorState) -> Result<()> + 'static,
        failure: Rc<RefCell<Option<Failure>>>,
    ) {
        let mut pending: BTreeMap<u64, Vec<OwnerPart>> = BTreeMap::new();
        self.sink(
            Exchange::new(|_p: &OwnerPart| 0u64),
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
                    if failure.borrow().is_some() {
                        continue;
                    }
                    parts.sort_by_key(|p| p.worker);
                    let Some(epoch) = parts.first().map(|p| p.epoch) else {
                        continue;
                    };
                    let state = states.borrow_mut().remove(&epoch);
                    let result = match state {
                        Some(state) if parts.iter().all(|p| p.epoch == epoch) => {
                            write(epoch, parts, state)
                        }
                        _ => Err(Error::Internal(format!(
                            "the checkpoint after epoch {epoch} is incomplete: the collector's state or an owner's part is missing"
                        ))),
                    };
                    if let Err(e) = result {
                        failure.borrow_mut().get_or_insert(Failure::from(&e));
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
        let c = Cadence {
            every: 3,
            epochs: 10,
        };
        let due: Vec<u32> = (1..=12).filter(|&e| c.due(e)).collect();
        assert_eq!(due, [3, 6, 9, 10, 11, 12]);
        let every = Cadence {
            every: 1,
            epochs: 2,
        };
        assert!(every.due(1) && every.due(2));
    }
}
