//! `model-parallel` for a network (`model.kind = "mlp"`): each worker
//! holds a slice of every hidden layer's units ([`NetworkSlice`]) and the
//! workers exchange exact partial pre-activations forward and slices of
//! `∂loss/∂z` backward ([`crate::dataflow::layers`]); every worker reads
//! every row, all its columns.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{ConnectLoop, Exchange, Feedback, Inspect, OkErr};
use timely::worker::Worker;

use super::{LoopInput, LoopOutcome};
use crate::data::cache::WorkerData;
use crate::data::encode::FeatureSpec;
use crate::dataflow::gradient::FinalParams;
use crate::dataflow::layers::{LayerContext, LayerMsg, LayerOut, LayerSteps, SliceMsg};
use crate::dataflow::liveness;
use crate::dataflow::{Failure, Phase};
use crate::error::Error;
use crate::model::mlp::Shape;
use crate::model::unit_split::NetworkSlice;
use crate::optim::Penalty;
use crate::spec::{ModelSpec, NetworkSpec};

/// Each worker's slice of the network of `model` over `features`.
pub fn slices(
    model: &ModelSpec,
    network: &NetworkSpec,
    features: &FeatureSpec,
    peers: usize,
) -> Vec<NetworkSlice> {
    let shape = Shape::of(model.kind, network, features);
    (0..peers)
        .map(|w| NetworkSlice::new(shape.clone(), network.activation, w, peers))
        .collect()
}

/// Trains a network split by hidden units over the workers.
pub fn run(
    worker: &mut Worker,
    input: LoopInput<'_>,
    network: &NetworkSpec,
) -> Result<LoopOutcome, Failure> {
    let index = worker.index();
    let peers = worker.peers();
    let plan = Arc::clone(&input.plan);
    let p = &plan.pipeline;
    let all = slices(&p.model, network, &input.spec, peers);
    let slice = all[index].clone();
    let shape = Shape::of(p.model.kind, network, &input.spec);
    let len = shape.len();
    if input.init.is_some_and(|i| i.len() != len) {
        return Err(Failure::from(&Error::Internal(format!(
            "starting weights for {len} parameters of another length"
        ))));
    }
    // This worker's slice of the starting weights, drawn here (never the
    // whole network).
    let globals = slice.globals();
    let start: Vec<f64> = match input.init {
        Some(init) => globals.iter().map(|&g| init[g]).collect(),
        None => shape.starts(network.activation, network.seed, &globals),
    };
    let steps_per_epoch = input.steps.steps();
    let has_validation = input.has_validation();
    let label_ref = input.label_ref();
    // Every worker reads every row (as worker 0 of 1), every column.
    let data = WorkerData::new(
        0,
        1,
        Arc::clone(&plan),
        input.spec.clone(),
        input.rows,
        input.steps,
    )
    .with_scanned(input.scanned);
    let records = Rc::new(RefCell::new(Vec::new()));
    let finished = Rc::new(RefCell::new(None));
    let failure = Rc::new(RefCell::new(None));
    let gathered: Rc<RefCell<Vec<SliceMsg>>> = Rc::new(RefCell::new(Vec::new()));
    let ctx = LayerContext {
        init: start,
        index,
        peers,
        data,
        slice,
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
    };
    let sink = Rc::clone(&gathered);
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(move |scope| {
        let (handle, rounds) = scope.feedback::<Vec<LayerMsg>>(1);
        let (next, done) = rounds
            .broadcast()
            .layer_steps(ctx)
            .ok_err::<Vec<LayerMsg>, _, Vec<SliceMsg>, _, _>(|out| match out {
                LayerOut::Round(m) => Ok(m),
                LayerOut::Done(s) => Err(s),
            });
        next.connect_loop(handle);
        done.exchange(|_s: &SliceMsg| 0)
            .inspect(move |s: &SliceMsg| sink.borrow_mut().push(s.clone()));
    });
    liveness::run(worker, dataflow, input.heartbeat);
    if let Some(f) = failure.borrow_mut().take() {
        return Err(f);
    }
    let Some(done) = *finished.borrow() else {
        return Err(Failure::from(&Error::Internal(
            "network model-parallel training ended without finishing".into(),
        )));
    };
    let mut outcome = LoopOutcome {
        result: None,
        records: std::mem::take(&mut *records.borrow_mut()),
        held: Vec::new(),
    };
    if index == 0 {
        let mut theta = vec![0.0; len];
        let mut held = vec![0u64; peers];
        let mut came = vec![false; peers];
        for s in gathered.borrow().iter() {
            came[s.from as usize] = true;
            let globals = all[s.from as usize].globals();
            if globals.len() != s.values.len() {
                return Err(Failure::from(&Error::Internal(format!(
                    "worker {} sent {} parameters for a slice of {}",
                    s.from,
                    s.values.len(),
                    globals.len()
                ))));
            }
            held[s.from as usize] = s.values.len() as u64;
            for (&g, &v) in globals.iter().zip(&s.values) {
                theta[g] = v;
            }
        }
        if came.contains(&false) {
            return Err(Failure::from(&Error::Internal(
                "a worker's slice did not reach worker 0".into(),
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
