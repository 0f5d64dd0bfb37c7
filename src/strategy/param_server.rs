//! `param-server`: sharded parameters with bounded staleness. The owners
//! release `staleness + 1` steps at once, so a worker may compute up to
//! `staleness` steps ahead of the slowest; it reads the freshest shards that
//! have already arrived (fresher than its round's own), and every read's
//! staleness is counted for the epoch records. With `staleness = 0` it is
//! `allreduce`. There is no central server: each worker owns its shards.

use timely::worker::Worker;

use super::driver::OwnerStep;
use super::sharded::{self, Sharding};
use super::{LoopInput, LoopOutcome, Strategy};
use crate::dataflow::Failure;

/// The `param-server` strategy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ParamServer;

impl Strategy for ParamServer {
    fn name(&self) -> &'static str {
        "param-server"
    }

    fn train(&self, worker: &mut Worker, input: LoopInput<'_>) -> Result<LoopOutcome, Failure> {
        // L-BFGS has one full-batch step per iteration: nothing to run ahead of.
        let lag = match input.plan.pipeline.optimizer.first_order() {
            Some(_) => u64::from(input.plan.pipeline.train.staleness.bound()),
            None => 0,
        };
        sharded::run(
            worker,
            input,
            Sharding {
                lag,
                record_staleness: true,
                replica: None,
                owner: OwnerStep::Optimizer,
            },
        )
    }
}
