//! The sharded-parameter loop shared by `allreduce`, `param-server` and
//! `model-average`: shard owners hold the parameters, every worker computes
//! partials from the shards broadcast to it, and the owners fold the
//! partials exactly and emit the next round's shards through the feedback
//! edge. The frontier is the barrier: a round is folded only when no worker
//! can still send to it. The strategies differ only in the [`Sharding`]
//! policy they pass.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Concat, ConnectLoop, Feedback, OkErr};

use super::snapshot::{Checkpointer, Saved};
use timely::worker::Worker;

use super::driver::{Driver, OwnerPolicy, OwnerStep};
use super::{LoopInput, LoopOutcome};
use crate::data::cache::WorkerData;
use crate::dataflow::collect::{CollectContext, CollectMetrics};
use crate::dataflow::fold::{FoldOut, FoldShards};
use crate::dataflow::gradient::{GradientContext, Gradients, ReadAhead, Replica};
use crate::dataflow::hooks::Hooks;
use crate::dataflow::liveness;
use crate::dataflow::snapshot::{CollectorStates, Part, SaveCheckpoints};
use crate::dataflow::{owner, shard_ranges, EvalMsg, Failure, GradMsg, ParamMsg, WorkerOut};
use crate::error::Error;
use crate::exact::Wide;
use crate::optim::lazy::{Clock, Drift, Reader};
use crate::optim::{FirstOrderState, Penalty};
use crate::spec::OptimizerSpec;

/// A strategy's policy for the sharded loop.
pub struct Sharding {
    /// Rounds a worker may compute ahead of the slowest (0: synchronous).
    pub lag: u64,
    /// Count how stale each shard read is (for the epoch records).
    pub record_staleness: bool,
    /// Workers train replicas of their own instead of sending gradients.
    pub replica: Option<Box<dyn Replica>>,
    /// What the owners make of a round's sums.
    pub owner: OwnerStep,
}

/// The reader of a resumed job: what the owners last published, from the
/// checkpoint.
fn resumed_reader(reader: Reader, saved: &Saved) -> Result<Reader, Failure> {
    let clock = Clock::from_stamps(saved.driver.clock.clone()).ok_or_else(|| {
        Failure::from(&Error::Internal(
            "the checkpoint's lazy clock is not whole".into(),
        ))
    })?;
    let last = saved.concat(|s| s.lazy.as_deref().unwrap_or(&[]), 0);
    let z = saved.concat(|s| &s.state.m, 0.0);
    let n = saved.concat(|s| &s.state.v, 0.0);
    Ok(reader.resumed(&saved.params(), &last, (&z, &n), clock))
}

/// Builds and runs the sharded training dataflow on this worker.
#[allow(clippy::result_large_err)] // ok_err splits a stream, no error path
pub fn run(
    worker: &mut Worker,
    input: LoopInput<'_>,
    policy: Sharding,
) -> Result<LoopOutcome, Failure> {
    let index = worker.index();
    let peers = worker.peers();
    let plan = &input.plan;
    let p = &plan.pipeline;
    let kind = p.model.kind;
    let init = input.init;
    let model = input.model()?;
    let roles = model.roles();
    // Whole-vector L-BFGS keeps every vector with one owner.
    let shards = match p.optimizer {
        OptimizerSpec::Lbfgs { sharded: false, .. } => 1,
        _ => p.train.shards,
    };
    let ranges = shard_ranges(roles.len(), shards);
    // Every worker folds every shard (`train.fold`): one trip over the
    // network a step instead of two. Only a synchronous loop of plain
    // gradients; the spec allows it for `allreduce` alone.
    let every_worker = policy.lag == 0
        && policy.replica.is_none()
        && p.train.fold.every_worker(roles.len(), peers);
    if index == 0 {
        tracing::debug!(
            fold = if every_worker {
                "every-worker"
            } else {
                "owners"
            },
            params = roles.len(),
            workers = peers,
            "gradients folded"
        );
    }
    let owned: Vec<u32> = (0..ranges.len() as u32)
        .filter(|&k| every_worker || owner(k, peers) == index)
        .collect();
    let steps_per_epoch = input.steps.steps();
    let lag = policy.lag;
    let cadence = input.checkpoints.as_ref().map(|c| c.cadence);
    let mut driver = Driver::new(
        p,
        &roles,
        &ranges,
        &owned,
        steps_per_epoch,
        init,
        OwnerPolicy {
            lag,
            step: policy.owner,
        },
    )
    .checkpointed(index, cadence);
    let resume = input.resume.clone();
    if let Some(saved) = &resume {
        driver.resume(saved).map_err(|e| Failure::from(&e))?;
    }
    // Worker 0 writes the checkpoints.
    let writer = Checkpointer::of(
        input.checkpoints.as_ref(),
        p.train.strategy.name(),
        peers,
        ranges.len(),
    );
    let scan = input.scan.clone();
    let optimizer = p.optimizer;
    let penalty = Penalty {
        l2: p.model.l2,
        l1: p.model.l1,
    };
    // Without hashed features every step touches every weight: lazy
    // updates would be the eager ones plus a header per message. Replicas
    // are read from the owners as weights, never lazily.
    let lazy_reads = optimizer.first_order().is_some_and(|f| f.lazy)
        && roles.has_sparse()
        && policy.replica.is_none();
    let has_validation = input.has_validation();
    let label_ref = input.label_ref();
    let data = WorkerData::new(
        index,
        peers,
        std::sync::Arc::clone(plan),
        input.spec,
        input.rows,
        input.steps,
    )
    .with_scanned(input.scanned);

    let len = roles.len();
    let result = Rc::new(RefCell::new(None));
    let records = Rc::new(RefCell::new(Vec::new()));
    let failure = Rc::new(RefCell::new(None));
    let ctx = GradientContext {
        data,
        model,
        roles,
        shards: ranges,
        result: (index == 0).then(|| Rc::clone(&result)),
        index,
        peers,
        every_worker,
        failure: Rc::clone(&failure),
        replica: policy.replica,
        read_ahead: ReadAhead {
            lag,
            record_staleness: policy.record_staleness,
        },
        steps_per_epoch,
        hooks: Hooks::from_env(index),
        reader: lazy_reads
            .then(|| Reader::new(Drift::of(&optimizer, penalty), len))
            .flatten()
            .map(|r| {
                let r = r.start_at(&FirstOrderState::starting_at(
                    &optimizer,
                    init.unwrap_or(&[]),
                ));
                match &resume {
                    Some(saved) => resumed_reader(r, saved),
                    None => Ok(r),
                }
            })
            .transpose()?,
        label_ref,
        cadence,
        // Worker 0 carries the epoch's training loss so far.
        epoch_start: match (&resume, index) {
            (Some(saved), 0) => (saved.driver.epoch_loss, saved.driver.epoch_rows),
            _ => (Wide::default(), 0),
        },
    };
    let states: CollectorStates = Rc::default();
    let resumed_collector = resume.as_ref().map(|s| s.collector.clone());
    if let Some(state) = &resumed_collector {
        *records.borrow_mut() = state.epoch_records().map_err(|e| Failure::from(&e))?;
    }
    let collect = CollectContext {
        kind,
        has_validation,
        early_stopping: p.train.early_stopping.clone(),
        records: Rc::clone(&records),
        checkpoints: cadence.map(|c| (c, Rc::clone(&states))),
        resumed: resumed_collector,
    };
    let fold_failure = Rc::clone(&failure);
    // A synchronous loop's rounds are complete when every worker's
    // gradients are there, before the progress messages say so.
    let sync = (lag == 0).then(|| owned.clone());
    let save_failure = Rc::clone(&failure);
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(move |scope| {
        // A round's parameters come back `1 + lag` rounds later: with
        // `lag = s`, a worker can compute round r as soon as round r - s - 1
        // is folded, i.e. run up to s rounds ahead of the slowest worker.
        let (handle, params) = scope.feedback::<Vec<ParamMsg>>(1 + lag);
        // Every worker folds every shard: its own parameters are all it
        // reads, and every worker's gradients come to it.
        let params = if every_worker {
            params
        } else {
            params.broadcast()
        };
        let (grads, rest) = params
            .gradients(ctx)
            .ok_err::<Vec<GradMsg>, _, Vec<Result<EvalMsg, Part>>, _, _>(|out| match out {
                WorkerOut::Grad(g) => Ok(g),
                WorkerOut::Eval(e) => Err(Ok(*e)),
                WorkerOut::Saved(p) => Err(Err(p)),
            });
        let (evals, replicas) = rest.ok_err::<Vec<EvalMsg>, _, Vec<Part>, _, _>(|r| r);
        let control = evals.collect_metrics(collect).broadcast();
        let grads = if every_worker {
            grads.broadcast()
        } else {
            grads
        };
        let (params, parts) = grads
            .fold_shards(control, driver, fold_failure, sync, every_worker)
            .ok_err(|out| match out {
                FoldOut::Params(p) => Ok(p),
                FoldOut::Saved(s) => Err(s),
            });
        params.connect_loop(handle);
        if cadence.is_some() {
            let write = move |gathered| match &writer {
                Some(w) => w.write(gathered, &scan).map(|_| ()),
                None => Ok(()),
            };
            parts
                .concat(replicas)
                .save_checkpoints(states, write, save_failure);
        }
    });
    liveness::run(worker, dataflow, input.heartbeat);
    if let Some(f) = failure.borrow_mut().take() {
        return Err(f);
    }
    let outcome = LoopOutcome {
        result: result.borrow_mut().take(),
        records: std::mem::take(&mut *records.borrow_mut()),
        // Every worker holds a full replica of the parameters.
        held: vec![len as u64; peers],
    };
    Ok(outcome)
}
