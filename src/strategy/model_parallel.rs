//! `model-parallel`: the features and their weights are split into one
//! block per worker (see [`FeatureBlock`]); each worker decodes only its
//! block's columns of every row and holds only its block's weights, and the
//! workers exchange partial margins, not parameters or gradients.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Exchange, Feedback, Inspect, OkErr};
use timely::worker::Worker;

use super::blocks;
use super::snapshot::{Assembled, Checkpointer, Stored};
use super::{LoopInput, LoopOutcome, Strategy};
use crate::data::cache::WorkerData;
use crate::data::encode::FeatureSpec;
use crate::dataflow::gradient::FinalParams;
use crate::dataflow::liveness;
use crate::dataflow::margins::{
    BlockCheckpoints, BlockMsg, MarginContext, MarginMsg, MarginOut, MarginSteps,
};
use crate::dataflow::snapshot::{CollectorStates, Gathered, Part, SaveCheckpoints};
use crate::dataflow::{Failure, Phase};
use crate::error::Error;
use crate::model::block::FeatureBlock;
use crate::model::Layout;
use crate::optim::Penalty;
use crate::spec::ModelSpec;

/// The `model-parallel` strategy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelParallel;

impl Strategy for ModelParallel {
    fn name(&self) -> &'static str {
        "model-parallel"
    }

    fn train(&self, worker: &mut Worker, input: LoopInput<'_>) -> Result<LoopOutcome, Failure> {
        run(worker, input)
    }

    /// The largest block.
    fn params_per_worker(&self, model: &ModelSpec, features: &FeatureSpec, workers: usize) -> u64 {
        if let Some(network) = &model.network {
            return super::network_parallel::slices(model, network, features, workers)
                .iter()
                .map(|s| s.len() as u64)
                .max()
                .unwrap_or(0);
        }
        FeatureBlock::split(Layout::new(model.kind, features), workers)
            .iter()
            .map(|b| b.len() as u64)
            .max()
            .unwrap_or(0)
    }

    fn over_budget_hint(&self, model: &ModelSpec, features: &FeatureSpec, budget: u64) -> String {
        if model.network.is_some() {
            return "run on more workers: each holds a share of every hidden layer's units".into();
        }
        let layout = Layout::new(model.kind, features);
        // The largest block holds k · (1 + ⌈d / w⌉) parameters.
        match (budget / layout.k as u64).checked_sub(1) {
            Some(per) if per > 0 => {
                let w = (layout.d as u64).div_ceil(per).max(1) as usize;
                let w = (w..w + 4)
                    .find(|&w| self.params_per_worker(model, features, w) <= budget)
                    .unwrap_or(w);
                format!("run on at least {w} workers")
            }
            _ => format!(
                "a block holds at least {} parameters (an intercept slot and one weight per output)",
                2 * layout.k
            ),
        }
    }

    fn out_of_memory_hint(&self) -> &'static str {
        "run on more processes, or lower data.hash_bits"
    }

    fn reads_every_row(&self) -> bool {
        true
    }

    /// The blocks are cut by the worker count and margins are summed block
    /// by block, so the model differs in its last bits between worker
    /// counts: a checkpoint resumes on the count that wrote it.
    fn resumes_on_any_worker_count(&self, _train: &crate::spec::TrainSpec) -> bool {
        false
    }

    fn one_worker_count_reason(&self) -> &'static str {
        "its blocks, and so the rounding of the margins summed over them, depend on the worker count"
    }
}

/// Builds and runs the model-parallel training dataflow on this worker.
#[allow(clippy::result_large_err)] // ok_err splits a stream, no error path
fn run(worker: &mut Worker, input: LoopInput<'_>) -> Result<LoopOutcome, Failure> {
    if let Some(network) = input.plan.pipeline.model.network.clone() {
        return super::network_parallel::run(worker, input, &network);
    }
    let index = worker.index();
    let peers = worker.peers();
    let plan = Arc::clone(&input.plan);
    let p = &plan.pipeline;
    // Blocks split the linear family's features: this strategy is specific
    // to it.
    let layout = Layout::new(p.model.kind, &input.spec);
    let init = input.init;
    let blocks = FeatureBlock::split(layout, peers);
    let block = blocks[index].clone();
    let steps_per_epoch = input.steps.steps();
    let has_validation = input.has_validation();
    let label_ref = input.label_ref();
    // Every worker reads every row (as worker 0 of 1), but only its columns.
    let data = WorkerData::new(
        0,
        1,
        Arc::clone(&plan),
        block.spec(&input.spec),
        input.rows,
        input.steps,
    )
    .with_scanned(input.scanned);

    let records = Rc::new(RefCell::new(Vec::new()));
    let finished = Rc::new(RefCell::new(None));
    let failure = Rc::new(RefCell::new(None));
    // A resumed job: this worker's block of the checkpoint; worker 0 keeps
    // the records. A failure here stops every worker at the first round.
    let resume = input.resume.as_deref().and_then(|saved| {
        let resumed =
            blocks::split(saved, &block, block.steps_lazily(&p.optimizer)).and_then(|state| {
                if index == 0 {
                    *records.borrow_mut() = saved.collector.epoch_records()?;
                }
                Ok((state, saved.collector.clone()))
            });
        resumed
            .map_err(|e| *failure.borrow_mut() = Some(Failure::from(&e)))
            .ok()
    });
    let states: CollectorStates = Rc::default();
    let takes_checkpoints = input.checkpoints.is_some();
    let checkpoints = input.checkpoints.as_ref().map(|c| {
        let (block, worker) = (block.clone(), index);
        BlockCheckpoints {
            cadence: c.cadence,
            states: Rc::clone(&states),
            encode: Box::new(move |s| blocks::encode(&block, worker, s)),
        }
    });
    // Worker 0 writes the checkpoints.
    let writer = Checkpointer::of(
        input.checkpoints.as_ref(),
        p.train.strategy.name(),
        peers,
        1,
    );
    let scan = input.scan.clone();
    let gathered: Rc<RefCell<Vec<BlockMsg>>> = Rc::new(RefCell::new(Vec::new()));
    let start: Vec<f64> = (0..block.len())
        .map(|i| match (init, block.global(i)) {
            (Some(t), Some(g)) => t[g],
            _ => 0.0,
        })
        .collect();
    let ctx = MarginContext {
        init: start,
        index,
        peers,
        data,
        block,
        kind: p.model.kind,
        optimizer: p.optimizer,
        penalty: Penalty {
            l2: p.model.l2,
            l1: p.model.l1,
        },
        fit_intercept: p.model.fit_intercept,
        epochs: p.train.epochs,
        steps_per_epoch,
        has_validation,
        label_ref,
        early_stopping: p.train.early_stopping.clone(),
        records: Rc::clone(&records),
        finished: Rc::clone(&finished),
        failure: Rc::clone(&failure),
        checkpoints,
        resume,
    };
    let sink = Rc::clone(&gathered);
    let save_failure = Rc::clone(&failure);
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(move |scope| {
        let (handle, partials) = scope.feedback::<Vec<MarginMsg>>(1);
        let (next, rest) = partials
            .broadcast()
            .margin_steps(ctx)
            .ok_err::<Vec<MarginMsg>, _, Vec<Result<BlockMsg, Part>>, _, _>(
                |out| match out {
                    MarginOut::Partial(m) => Ok(m),
                    MarginOut::Block(b) => Err(Ok(b)),
                    MarginOut::Saved(s) => Err(Err(s)),
                },
            );
        next.connect_loop(handle);
        let (finals, parts) =
            rest.ok_err::<Vec<BlockMsg>, _, Vec<Part>, _, _>(|out| out);
        finals
            .exchange(|_b: &BlockMsg| 0)
            .inspect(move |b: &BlockMsg| sink.borrow_mut().push(b.clone()));
        if !takes_checkpoints {
            return;
        }
        let write = move |(position, epoch, parts, collector): Gathered| match &writer {
            Some(w) => {
                let started = Instant::now();
                let (all, driver) = blocks::merge(layout.len(), &parts)?;
                if driver.epoch != epoch {
                    return Err(Error::Internal(format!(
                        "the blocks' state after epoch {} came for the checkpoint after epoch {epoch}",
                        driver.epoch
                    )));
                }
                let shard = Stored::of(
                    0,
                    &all.params,
                    &all.state,
                    all.best.as_deref(),
                    &all.live,
                    all.lazy.as_deref(),
                    None,
                );
                let state = Assembled {
                    position,
                    shards: vec![shard],
                    driver,
                    collector,
                    replicas: Vec::new(),
                    sharded: None,
                };
                w.save(started, state, &scan).map(|_| ())
            }
            None => Ok(()),
        };
        parts.save_checkpoints(states, write, save_failure);
    });
    liveness::run(worker, dataflow, input.heartbeat);
    if let Some(f) = failure.borrow_mut().take() {
        return Err(f);
    }
    let Some(done) = *finished.borrow() else {
        return Err(Failure::from(&Error::Internal(
            "model-parallel training ended without finishing".into(),
        )));
    };
    let mut outcome = LoopOutcome {
        result: None,
        records: std::mem::take(&mut *records.borrow_mut()),
        held: Vec::new(),
    };
    if index == 0 {
        let mut theta = vec![0.0; layout.len()];
        let mut held = vec![0u64; peers];
        for b in gathered.borrow().iter() {
            let block = &blocks[b.from as usize];
            held[b.from as usize] = b.values.len() as u64;
            for (i, &v) in b.values.iter().enumerate() {
                if let Some(g) = block.global(i) {
                    theta[g] = v;
                }
            }
        }
        if held.contains(&0) {
            return Err(Failure::from(&Error::Internal(
                "a worker's block did not reach worker 0".into(),
            )));
        }
        outcome.held = held;
        outcome.result = Some(FinalParams {
            theta,
            phase: Phase::Final {
                epochs: done.epochs,
                objective: None,
                converged_by: None,
            },
        });
    }
    Ok(outcome)
}
