//! `allreduce`: the synchronous (BSP) loop. Every step, every worker's
//! gradient partials are summed exactly by the shard owners, which step the
//! optimizer and broadcast the new parameters through the feedback edge.
//! The frontier is the barrier: a round is folded only when no worker can
//! still send to it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Feedback, OkErr};
use timely::worker::Worker;

use crate::data::cache::WorkerData;
use crate::data::encode::FeatureSpec;
use crate::data::partition::StepPlan;
use crate::dataflow::collect::{CollectContext, CollectMetrics};
use crate::dataflow::fold::FoldShards;
use crate::dataflow::gradient::{FinalParams, GradientContext, Gradients, LocalTraining};
use crate::dataflow::hooks::Hooks;
use crate::dataflow::scan::ScanResult;
use crate::dataflow::{owner, shard_ranges, EvalMsg, Failure, GradMsg, ParamMsg, WorkerOut};
use crate::metrics::sink::EpochRecord;
use crate::model::{Layout, LinearModel};
use crate::optim::lazy::{Clock, Drift, Lazy, Reader};
use crate::optim::{FirstOrderState, Penalty};
use crate::spec::Strategy;
use crate::strategy::driver::Driver;
use crate::train::plan::Plan;

/// What a worker brings home from the loop.
#[derive(Debug, Default)]
pub struct LoopOutcome {
    /// Final parameters (worker 0 only).
    pub result: Option<FinalParams>,
    /// Epoch records (worker 0 only).
    pub records: Vec<EpochRecord>,
    /// Parameters each worker held during training (worker 0 only).
    pub held: Vec<u64>,
}

/// The epoch's steps: waves of `units_per_step` units, `⌈rows / batch_size⌉`
/// steps per wave for mini-batch methods, one full-batch step for L-BFGS.
pub fn step_plan(plan: &Plan, train_rows: &[usize]) -> StepPlan {
    let batch = plan.pipeline.optimizer.first_order().map(|f| f.batch_size);
    StepPlan::new(train_rows, batch, plan.pipeline.data.units_per_step)
}

/// Builds and runs the training dataflow on this worker, starting from
/// `init` (zero if `None`).
#[allow(clippy::result_large_err)] // ok_err splits a stream, no error path
pub fn run(
    worker: &mut Worker,
    plan: Arc<Plan>,
    spec: FeatureSpec,
    scan: &ScanResult,
    init: Option<&[f64]>,
) -> Result<LoopOutcome, Failure> {
    let index = worker.index();
    let peers = worker.peers();
    let kind = plan.pipeline.model.kind;
    let layout = Layout::new(kind, &spec);
    let shards = match plan.pipeline.optimizer.first_order() {
        Some(_) => plan.pipeline.train.shards,
        None => 1,
    };
    let ranges = shard_ranges(layout.len(), shards);
    let owned: Vec<u32> = (0..ranges.len() as u32)
        .filter(|&k| owner(k, peers) == index)
        .collect();
    let rows: Vec<usize> = scan.train_rows.iter().map(|&r| r as usize).collect();
    let steps = step_plan(&plan, &rows);
    let steps_per_epoch = steps.steps();
    let lag = match plan.pipeline.train.strategy {
        Strategy::ParamServer => u64::from(plan.pipeline.train.staleness.bound()),
        _ => 0,
    };
    let driver = Driver::new(
        &plan.pipeline,
        layout,
        &ranges,
        &owned,
        steps_per_epoch,
        init,
    );
    let penalty = Penalty {
        l2: plan.pipeline.model.l2,
        l1: plan.pipeline.model.l1,
    };
    let optimizer = plan.pipeline.optimizer;
    // Without hashed features every step touches every weight: lazy
    // updates would be the eager ones plus a header per message.
    let lazy = optimizer.first_order().is_some_and(|f| f.lazy) && layout.has_hashed();
    let average = plan.pipeline.train.strategy == Strategy::ModelAverage;
    let data = WorkerData::new(index, peers, Arc::clone(&plan), spec, rows, steps);

    let result = Rc::new(RefCell::new(None));
    let records = Rc::new(RefCell::new(Vec::new()));
    let failure = Rc::new(RefCell::new(None));
    let ctx = GradientContext {
        data,
        model: LinearModel {
            kind,
            layout,
            theta: init.map_or_else(|| vec![0.0; layout.len()], <[f64]>::to_vec),
        },
        shards: ranges,
        result: Rc::clone(&result),
        keep_result: index == 0,
        index,
        peers,
        local: average.then(|| LocalTraining {
            spec: optimizer,
            penalty,
            fit_intercept: plan.pipeline.model.fit_intercept,
            sync_every: plan
                .pipeline
                .train
                .sync_every
                .unwrap_or(steps_per_epoch)
                .max(1),
            steps_per_epoch,
            state: FirstOrderState::starting_at(&plan.pipeline.optimizer, init.unwrap_or(&[])),
            grad: Vec::new(),
            lazy: lazy.then(|| Lazy::new(&optimizer, penalty)),
            clock: Clock::default(),
        }),
        failure: Rc::clone(&failure),
        lag,
        steps_per_epoch,
        record_staleness: plan.pipeline.train.strategy == Strategy::ParamServer,
        hooks: Hooks::from_env(index),
        reader: (lazy && !average)
            .then(|| Reader::new(Drift::of(&optimizer, penalty), layout.len()))
            .flatten()
            .map(|r| {
                r.start_at(&FirstOrderState::starting_at(
                    &optimizer,
                    init.unwrap_or(&[]),
                ))
            }),
        label_ref: (scan.label.n > 0).then(|| scan.label.mean()),
    };
    let collect = CollectContext {
        kind,
        has_validation: plan.validation_fraction.is_some() || plan.validation_files.is_some(),
        early_stopping: plan.pipeline.train.early_stopping.clone(),
        records: Rc::clone(&records),
    };
    let fold_failure = Rc::clone(&failure);
    worker.dataflow::<u64, _, _>(move |scope| {
        // A round's parameters come back `1 + lag` rounds later: with
        // `lag = s`, a worker can compute round r as soon as round r - s - 1
        // is folded, i.e. run up to s rounds ahead of the slowest worker.
        let (handle, params) = scope.feedback::<Vec<ParamMsg>>(1 + lag);
        let (grads, evals) = params
            .broadcast()
            .gradients(ctx)
            .ok_err::<Vec<GradMsg>, _, Vec<EvalMsg>, _, _>(|out| match out {
                WorkerOut::Grad(g) => Ok(g),
                WorkerOut::Eval(e) => Err(*e),
            });
        let control = evals.collect_metrics(collect).broadcast();
        grads
            .fold_shards(control, driver, fold_failure)
            .connect_loop(handle);
    });
    while worker.step_or_park(None) {}
    if let Some(f) = failure.borrow_mut().take() {
        return Err(f);
    }
    let outcome = LoopOutcome {
        result: result.borrow_mut().take(),
        records: std::mem::take(&mut *records.borrow_mut()),
        // Every worker holds a full replica of the parameters.
        held: vec![layout.len() as u64; peers],
    };
    Ok(outcome)
}
