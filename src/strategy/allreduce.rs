//! `allreduce`: the synchronous (BSP) loop. Every step, every worker's
//! gradient partials are summed exactly by the shard owners, which step the
//! optimizer and broadcast the new parameters: the sharded loop with no
//! read-ahead and no replicas.

use timely::worker::Worker;

use super::driver::OwnerStep;
use super::sharded::{self, Sharding};
use super::{LoopInput, LoopOutcome, Strategy};
use crate::dataflow::Failure;

/// The `allreduce` strategy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allreduce;

impl Strategy for Allreduce {
    fn name(&self) -> &'static str {
        "allreduce"
    }

    fn train(&self, worker: &mut Worker, input: LoopInput<'_>) -> Result<LoopOutcome, Failure> {
        sharded::run(
            worker,
            input,
            Sharding {
                lag: 0,
                record_staleness: false,
                replica: None,
                owner: OwnerStep::Optimizer,
            },
        )
    }
}
