//! The stream's dataflow. Time is the global step number: the leader
//! (worker 0) sends every worker its slice of step `s`'s rows at time `s`;
//! batches are runs of consecutive steps, and a batch has ended once the
//! frontier has passed its last step.
//!
//! ```text
//!  leader input ──StepIn (by worker)──► steps: score, gradient ──GradOut──► broadcast
//!                                          ▲ replica (shared)                 │
//!                                          └────────── apply: exact sum, step ◄┘
//! ```
//!
//! `steps` takes step `s` once its rows are all in and the worker's model
//! has applied the steps the strategy requires before `s`
//! ([`Sharing::needs_applied`]: every one for allreduce and model-parallel,
//! all but the last `staleness` for param-server, those up to the last
//! barrier for model-average); `apply` takes step `s` once the frontier
//! has passed it (and, under staleness, once the step that reads the model
//! before it was computed: [`Sharing::may_apply`]) and sums every worker's
//! partial and steps the replica, the same on every worker (model-average:
//! each replica stepped itself in `steps`; `apply` installs the replicas'
//! mean at a barrier; model-parallel: [`split::apply`]). No feedback
//! edge: `apply` wakes `steps` and `steps` wakes `apply`.
//!
//! `model-parallel` ([`split`]): `steps` computes the partial margins of
//! every row of the step over the worker's block, `apply` sums them and
//! steps the block, and at a batch end sends the block to worker 0, whose
//! batch ends once every block is in.

use std::cell::RefCell;
use std::io::Cursor;
use std::rc::Rc;
use std::sync::Arc;

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline as Local};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Exchange as _, Input, Inspect, OkErr, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::worker::Worker;

use super::publish::WholeModel;
use super::replica::{Replica, ReplicaState};
use super::sharing::{self, Sharing, SyncPart};
use super::split::{self, BlockAt, RowMap, Split};
use crate::data::encode::{decode, ClassMap, FeatureSpec, LabelUse, Origin};
use crate::dataflow::rounds::Rounds;
use crate::dataflow::{Failure, Partial};
use crate::error::Error;
use crate::exact::{Bound, Exact, Wide};
use crate::metrics::EvalPartial;
use crate::spec::{ModelKind, Pipeline, Strategy};

/// Rows in transit: a record batch, as an Arrow IPC stream between
/// processes (moved as it is between the threads of one).
#[derive(Debug, Clone)]
pub struct Rows(pub RecordBatch);

impl Serialize for Rows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        let mut w = StreamWriter::try_new(&mut bytes, &self.0.schema())
            .map_err(serde::ser::Error::custom)?;
        w.write(&self.0).map_err(serde::ser::Error::custom)?;
        w.finish().map_err(serde::ser::Error::custom)?;
        drop(w);
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Rows {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rows, D::Error> {
        let bytes: serde_bytes_like::Bytes = Deserialize::deserialize(d)?;
        let mut r =
            StreamReader::try_new(Cursor::new(bytes.0), None).map_err(serde::de::Error::custom)?;
        match r.next() {
            Some(Ok(b)) => Ok(Rows(b)),
            Some(Err(e)) => Err(serde::de::Error::custom(e)),
            None => Err(serde::de::Error::custom("no rows in a step's piece")),
        }
    }
}

mod serde_bytes_like {
    //! A byte buffer that reads what `serialize_bytes` wrote.
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};

    pub struct Bytes(pub Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = a.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

/// Some of a step's rows for one worker, with where they came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Piece {
    /// The rows.
    pub rows: Rows,
    /// Their file (`-`: stdin).
    pub origin: std::path::PathBuf,
    /// The file row of the first.
    pub file_row: u64,
}

/// Where every worker starts: the feature spec and the model's state, at
/// step `step`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Start {
    /// The feature spec.
    pub spec: FeatureSpec,
    /// The model.
    pub state: ReplicaState,
    /// The first step.
    pub step: u64,
}

/// A worker's share of one step, from the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepIn {
    /// The worker it is for.
    pub to: u32,
    /// The global step number (its timely time).
    pub step: u64,
    /// The batch it belongs to.
    pub batch: u64,
    /// The batch's last step (of its last pass).
    pub last_in_batch: bool,
    /// Nothing after this step is computed before it is applied (a batch's
    /// last step, a model-average sync, an empty step).
    pub barrier: bool,
    /// A snapshot follows this step (a batch's last step, or an empty step
    /// before the stream ends): a model-parallel stream gathers its blocks
    /// into the whole model here, and only here.
    pub snapshot: bool,
    /// First pass: score the rows before training on them.
    pub score: bool,
    /// The rows, by chunk ([`super::leader::CHUNK_ROWS`]).
    pub chunks: Vec<Vec<Piece>>,
    /// The start, with a worker's first step.
    pub start: Option<Arc<Start>>,
    /// A new feature spec from this step on (running statistics).
    pub spec: Option<Arc<FeatureSpec>>,
    /// The leader failed (the source, an output): the stream ends, every
    /// worker with this failure.
    pub failure: Option<Failure>,
}

/// A worker's result for one step, to every worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradOut {
    /// The worker.
    pub from: u32,
    /// The step.
    pub step: u64,
    /// Its batch.
    pub batch: u64,
    /// The batch's last step.
    pub last_in_batch: bool,
    /// A barrier ([`StepIn::barrier`]).
    pub barrier: bool,
    /// A snapshot follows ([`StepIn::snapshot`]).
    pub snapshot: bool,
    /// The gradient partial (none without rows, or for a local replica).
    pub grad: Option<Partial>,
    /// Exact loss sum.
    pub loss: Wide,
    /// Rows.
    pub rows: u64,
    /// The partial's bound.
    pub bound: Bound,
    /// Progressive validation of the rows.
    pub eval: Option<EvalPartial>,
    /// `model-parallel`: the partial margins of every row of the step
    /// ([`Split::margins`]).
    pub margins: Option<Vec<Exact>>,
    /// The process of this worker was asked to stop (SIGINT, SIGTERM).
    pub stop: bool,
    /// The worker failed.
    pub failure: Option<Failure>,
    /// A local replica at a barrier.
    pub sync: Option<Box<SyncPart>>,
}

/// A worker's predictions of one step's rows (`--predictions-out`), to the
/// leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scores {
    /// The worker.
    pub from: u32,
    /// The step.
    pub step: u64,
    /// Each row's prediction in the order of the worker's chunks (`None`:
    /// a row `on_missing = "skip_row"` dropped); empty for a step of a
    /// later pass.
    pub rows: Vec<Option<Vec<f64>>>,
}

/// What the step operator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StepOut {
    /// To every worker.
    Grad(Box<GradOut>),
    /// To the leader.
    Scores(Scores),
}

/// A batch that ended, as every worker saw it.
#[derive(Debug, Clone)]
pub struct BatchEnd {
    /// The batch.
    pub batch: u64,
    /// The next step.
    pub next_step: u64,
    /// Its rows (first pass).
    pub rows: u64,
    /// Its progressive validation.
    pub eval: EvalPartial,
    /// Exact training loss over its steps.
    pub loss: Wide,
    /// Rows behind `loss` (every pass).
    pub trained_rows: u64,
    /// A snapshot is published at this end ([`StepIn::snapshot`]).
    pub snapshot: bool,
}

/// What a worker's operators share.
#[derive(Default)]
pub struct Shared {
    /// The model, once the start has arrived.
    pub replica: Option<Replica>,
    /// `model-parallel`: this worker's block instead.
    pub split: Option<Split>,
    /// The current feature spec.
    pub spec: Option<FeatureSpec>,
    /// The next step to apply.
    pub next: u64,
    /// The first failure.
    pub failure: Option<Failure>,
    /// A worker of the job was asked to stop.
    pub stop_seen: bool,
    /// Batches that ended, oldest first (taken by the leader).
    pub ends: Vec<BatchEnd>,
    /// Predictions by step (on the leader), as they arrive.
    pub scores: std::collections::BTreeMap<u64, Vec<Scores>>,
    /// How the workers share the model.
    sharing: Option<Sharing>,
    /// The last step this worker computed.
    computed: Option<u64>,
    /// The last barrier step it computed.
    barrier: Option<u64>,
    /// A local replica: rows and optimizer steps since the last barrier.
    since: (u64, u64),
    /// The last step of the last batch that ended.
    last_end: Option<u64>,
    /// The batch in progress: progressive validation, loss, rows.
    pub(super) eval: EvalPartial,
    pub(super) loss: Wide,
    pub(super) trained: u64,
}

impl Shared {
    /// True once the start has arrived.
    fn started(&self) -> bool {
        self.replica.is_some() || self.split.is_some()
    }

    /// True if [`Shared::whole`] holds every batch that ended (a
    /// model-parallel stream's whole model is put together only for a
    /// snapshot).
    pub fn whole_is_current(&self) -> bool {
        match (&self.replica, &self.split) {
            (None, Some(split)) => split.whole_at() >= self.last_end,
            _ => true,
        }
    }

    /// The whole model (on the leader, at a batch end).
    pub fn whole(&self) -> Option<&dyn WholeModel> {
        match (&self.replica, &self.split) {
            (Some(r), _) => Some(r),
            (None, Some(s)) => s.whole().map(|w| w as &dyn WholeModel),
            (None, None) => None,
        }
    }

    /// The batch `batch` ended at step `t`: its progressive validation,
    /// loss and rows, taken.
    pub(super) fn end_batch(&mut self, batch: u64, t: u64, snapshot: bool) -> BatchEnd {
        let eval = std::mem::replace(&mut self.eval, EvalPartial::with_label_ref(Some(0.0)));
        self.last_end = Some(t);
        BatchEnd {
            snapshot,
            batch,
            next_step: t + 1,
            rows: eval.rows,
            eval,
            loss: std::mem::take(&mut self.loss),
            trained_rows: std::mem::take(&mut self.trained),
        }
    }
}

/// The handles a worker drives its stream with.
pub struct Handles {
    /// The leader's input (every worker has one; only the leader sends).
    pub input: InputHandleVec<u64, StepIn>,
    /// Passed a step once every worker has applied it.
    pub probe: ProbeHandle<u64>,
    /// The operators' shared state.
    pub shared: Rc<RefCell<Shared>>,
}

/// Builds the stream's dataflow on this worker; with `predict`, every
/// worker sends the leader its predictions of each scored step.
pub fn build(
    worker: &mut Worker,
    pipeline: Arc<Pipeline>,
    sharing: Sharing,
    predict: bool,
) -> Handles {
    let (index, peers) = (worker.index(), worker.peers());
    // Model-parallel: each worker sends its partial margins, and worker 0
    // writes the predictions from the summed ones.
    let blocks = sharing.every_row();
    let shared: Rc<RefCell<Shared>> = Rc::new(RefCell::new(Shared {
        sharing: Some(sharing),
        ..Shared::default()
    }));
    let mut input = InputHandleVec::new();
    let probe = ProbeHandle::new();
    let (steps_state, apply_state, scores_state, blocks_state) = (
        Rc::clone(&shared),
        Rc::clone(&shared),
        Rc::clone(&shared),
        Rc::clone(&shared),
    );
    let p = pipeline;
    worker.dataflow::<u64, _, _>(|scope| {
        let steps_activator = Rc::new(RefCell::new(None));
        let (wake, wake_gathered) = (Rc::clone(&steps_activator), Rc::clone(&steps_activator));
        // `steps` wakes `apply`: a stale step may be applied once the step
        // that reads it was computed.
        let apply_activator: Rc<RefCell<Option<timely::scheduling::Activator>>> =
            Rc::new(RefCell::new(None));
        let wake_apply = Rc::clone(&apply_activator);
        let rows = scope.input_from(&mut input);
        let (scope2, scope3) = (scope, scope);
        let out = rows
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<StepOut>>, _, _, _>(
                Exchange::new(|m: &StepIn| u64::from(m.to)),
                "StreamSteps",
                move |_cap, info| {
                    *steps_activator.borrow_mut() = Some(scope2.activator_for(info.address));
                    let mut rounds: Rounds<StepIn> = Rounds::default();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| rounds.add(cap, data, output.output_index()));
                        loop {
                            let ready = {
                                let s = steps_state.borrow();
                                match rounds.ready(frontier.frontier()) {
                                    Some((t, msgs)) => {
                                        let starts = msgs
                                            .iter()
                                            .any(|m| m.start.is_some() || m.failure.is_some());
                                        let needs = sharing.needs_applied(t, s.barrier);
                                        (s.started() && s.next >= needs) || starts
                                    }
                                    None => false,
                                }
                            };
                            if !ready {
                                break;
                            }
                            let Some((_, cap, msgs)) = rounds.pop_ready(frontier.frontier()) else {
                                break;
                            };
                            let (grad, scores) = one_step(
                                &p,
                                (index, peers),
                                &mut steps_state.borrow_mut(),
                                msgs,
                                predict && !blocks,
                            );
                            let mut session = output.session(&cap);
                            session.give(StepOut::Grad(Box::new(grad)));
                            if let Some(s) = scores {
                                session.give(StepOut::Scores(s));
                            }
                            if let Some(a) = wake_apply.borrow().as_ref() {
                                a.activate();
                            }
                        }
                    }
                },
            );
        let (grads, scores) = out.ok_err::<Vec<GradOut>, _, Vec<Scores>, _, _>(|o| match o {
            StepOut::Grad(g) => Ok(*g),
            StepOut::Scores(s) => Err(s),
        });
        scores.exchange(|_s: &Scores| 0).inspect(move |s: &Scores| {
            scores_state
                .borrow_mut()
                .scores
                .entry(s.step)
                .or_default()
                .push(s.clone());
        });
        let applied = grads
            .broadcast()
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<BlockAt>>, _, _, _>(
                Local,
                "StreamApply",
                move |_cap, info| {
                    *apply_activator.borrow_mut() = Some(scope3.activator_for(info.address));
                    let mut rounds: Rounds<GradOut> = Rounds::default();
                    move |(input, frontier), output| {
                        input.for_each(|cap, data| rounds.add(cap, data, output.output_index()));
                        loop {
                            let may = {
                                let s = apply_state.borrow();
                                rounds.ready(frontier.frontier()).is_some_and(|(t, _)| {
                                    s.failure.is_some()
                                        || sharing.may_apply(t, s.computed, s.barrier)
                                })
                            };
                            if !may {
                                break;
                            }
                            let Some((t, cap, msgs)) = rounds.pop_ready(frontier.frontier()) else {
                                break;
                            };
                            let predict = predict && blocks && index == 0;
                            let block = apply(&mut apply_state.borrow_mut(), t, msgs, predict);
                            // Model-parallel batch ends: the block, for worker 0.
                            if let Some(b) = block {
                                output.session(&cap).give(b);
                            }
                            if let Some(a) = wake.borrow().as_ref() {
                                a.activate();
                            }
                        }
                    }
                },
            );
        applied
            .clone()
            .exchange(|_b: &BlockAt| 0)
            .inspect(move |b: &BlockAt| {
                if split::gathered(&mut blocks_state.borrow_mut(), b.clone()) {
                    if let Some(a) = wake_gathered.borrow().as_ref() {
                        a.activate();
                    }
                }
            });
        applied.probe_with(&probe);
    });
    Handles {
        input,
        probe,
        shared,
    }
}

/// This worker's part of step `msgs[0].step`, and its predictions of the
/// step's rows when `predict`.
fn one_step(
    p: &Pipeline,
    (index, peers): (usize, usize),
    s: &mut Shared,
    msgs: Vec<StepIn>,
    predict: bool,
) -> (GradOut, Option<Scores>) {
    let head = msgs.first().cloned();
    let stop = crate::io::signals::stop_requested().is_some();
    let barrier = head.as_ref().is_some_and(|m| m.barrier);
    let snapshot = head.as_ref().is_some_and(|m| m.snapshot);
    let mut out = GradOut {
        from: index as u32,
        step: head.as_ref().map_or(0, |m| m.step),
        batch: head.as_ref().map_or(0, |m| m.batch),
        last_in_batch: head.as_ref().is_some_and(|m| m.last_in_batch),
        barrier,
        snapshot,
        sync: None,
        grad: None,
        loss: Wide::default(),
        rows: 0,
        bound: Bound::default(),
        eval: None,
        margins: None,
        stop,
        failure: None,
    };
    let mut scores = predict.then(|| Scores {
        from: index as u32,
        step: out.step,
        rows: Vec::new(),
    });
    s.computed = Some(out.step);
    if barrier {
        s.barrier = Some(out.step);
    }
    if let Some(f) = msgs.iter().find_map(|m| m.failure.clone()) {
        s.failure.get_or_insert(f);
    }
    if let Some(f) = s.failure.clone() {
        out.failure = Some(f);
        return (out, scores);
    }
    match step_rows(p, (index, peers), s, msgs, predict).and_then(|(partial, maps)| {
        let local = matches!(s.sharing, Some(Sharing::Local { .. }));
        local_step(s, &mut out, partial, local, index).map(|partial| (partial, maps))
    }) {
        Ok((partial, maps)) => {
            if let Some(sc) = scores.as_mut() {
                for (map, chunk) in maps.iter().zip(&partial.predictions) {
                    sc.rows
                        .extend(map.iter().map(|m| m.and_then(|i| chunk.get(i).cloned())));
                }
            }
            out.grad = partial.grad;
            out.loss = partial.loss;
            out.rows = partial.rows;
            out.bound = partial.bound;
            out.eval = partial.eval;
            out.margins = partial.margins;
        }
        Err(e) => {
            let f = Failure::from(&e);
            s.failure.get_or_insert(f.clone());
            out.failure = Some(f);
        }
    }
    (out, scores)
}

/// A local replica (model-average) steps on its own partial at once; at a
/// barrier it is brought up to date and goes to every worker in `out.sync`.
/// Replicas (`local` false) leave the partial to [`apply`].
fn local_step(
    s: &mut Shared,
    out: &mut GradOut,
    mut partial: super::replica::StepPartial,
    local: bool,
    index: usize,
) -> Result<super::replica::StepPartial, Error> {
    if !local {
        return Ok(partial);
    }
    let Some(replica) = s.replica.as_mut() else {
        return Err(Error::Internal(format!(
            "stream step {} came before the start",
            out.step
        )));
    };
    if let Some(grad) = partial.grad.take() {
        replica.step(vec![grad], partial.rows, partial.bound, out.batch, out.step)?;
        s.since.0 += partial.rows;
        s.since.1 += 1;
    }
    if out.barrier {
        replica.flush();
        let (rows, steps) = std::mem::take(&mut s.since);
        // A replica that trained nothing since the last barrier is that
        // barrier's, as every other one that did not: it sends nothing.
        if rows > 0 {
            out.sync = Some(Box::new(replica.sync_part(index as u32, rows, steps)));
        }
    }
    Ok(partial)
}

fn step_rows(
    p: &Pipeline,
    (index, peers): (usize, usize),
    s: &mut Shared,
    msgs: Vec<StepIn>,
    predict: bool,
) -> Result<(super::replica::StepPartial, Vec<RowMap>), Error> {
    let mut score = false;
    let mut chunks = Vec::new();
    let mut step = 0;
    for m in msgs {
        if let Some(start) = &m.start {
            match p.train.strategy {
                Strategy::ModelParallel => {
                    s.split = Some(Split::new(p, &start.spec, &start.state, index, peers)?);
                }
                _ => s.replica = Some(Replica::new(p, &start.spec, start.state.sparse_copy())?),
            }
            s.spec = Some(start.spec.clone());
            s.next = start.step;
        }
        if let Some(spec) = &m.spec {
            s.spec = Some((**spec).clone());
            if let Some(split) = s.split.as_mut() {
                split.respec(spec);
            }
        }
        score |= m.score;
        step = m.step;
        chunks.extend(m.chunks);
    }
    let (Some(spec), true) = (s.spec.as_ref(), s.started()) else {
        return Err(Error::Internal(format!(
            "stream step {step} came before the start"
        )));
    };
    // A model-parallel worker decodes its block's columns.
    let spec = s.split.as_ref().map_or(spec, Split::decode_spec);
    let map = spec.classes.as_ref().map(|c| ClassMap::new(c));
    let label = match (&map, p.model.kind) {
        (_, ModelKind::Linear) | (None, _) => LabelUse::Value,
        (Some(m), _) => LabelUse::Classes(m),
    };
    let mut blocks = Vec::with_capacity(chunks.len());
    let mut maps = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        let mut block = crate::data::encode::Block::default();
        let mut map = RowMap::new();
        let mut at = 0;
        for piece in chunk {
            let origin = Origin {
                file: &piece.origin,
                row_group: None,
                first_row: piece.file_row,
            };
            let decoded = decode(&piece.rows.0, spec, label, &origin)?;
            let mut kept = 0;
            for r in 0..piece.rows.0.num_rows() as u64 {
                if decoded.file_row.get(kept) == Some(piece.file_row + r) {
                    kept += 1;
                    map.push(Some(at));
                    at += 1;
                } else {
                    map.push(None);
                }
            }
            block.append(decoded);
        }
        blocks.push(block);
        maps.push(map);
    }
    let diverged = |message| Error::Diverged {
        epoch: 0,
        step,
        message,
    };
    if let Some(split) = s.split.as_mut() {
        let rows = blocks.iter().map(|b| b.rows as u64).sum();
        let margins = split.margins(blocks, maps, score).map_err(diverged)?;
        let partial = super::replica::StepPartial {
            margins: Some(margins),
            rows,
            ..Default::default()
        };
        return Ok((partial, Vec::new()));
    }
    let Some(replica) = s.replica.as_mut() else {
        return Err(Error::Internal(format!(
            "stream step {step} came before the start"
        )));
    };
    let partial = replica.partial(&blocks, score, predict).map_err(diverged)?;
    Ok((partial, maps))
}

/// Sums every worker's partial of step `t` and steps the replica (a local
/// replica: installs the replicas' mean at a barrier; a block:
/// [`split::apply`], which returns a model-parallel worker's block at a
/// batch end).
fn apply(s: &mut Shared, t: u64, msgs: Vec<GradOut>, predict: bool) -> Option<BlockAt> {
    if msgs.iter().any(|m| m.stop) {
        s.stop_seen = true;
    }
    if let Some(f) = msgs.iter().find_map(|m| m.failure.clone()) {
        s.failure.get_or_insert(f);
    }
    if s.failure.is_some() {
        s.next = t + 1;
        return None;
    }
    if s.split.is_some() {
        return split::apply(s, t, msgs, predict);
    }
    let head = msgs.first()?;
    let (batch, last, snapshot) = (head.batch, head.last_in_batch, head.snapshot);
    let mut partials = Vec::new();
    let mut syncs = Vec::new();
    let (mut rows, mut bound, mut loss) = (0u64, Bound::default(), Wide::default());
    for m in msgs {
        rows += m.rows;
        bound += m.bound;
        loss += m.loss;
        if let Some(e) = m.eval {
            if s.eval.rows == 0 {
                s.eval = EvalPartial::with_label_ref(Some(0.0));
            }
            s.eval.merge(e);
        }
        if let Some(g) = m.grad {
            partials.push(g);
        }
        if let Some(part) = m.sync {
            syncs.push(*part);
        }
    }
    let local = matches!(s.sharing, Some(Sharing::Local { .. }));
    let Some(replica) = s.replica.as_mut() else {
        s.failure
            .get_or_insert(Failure::from(&Error::Internal(format!(
                "stream step {t} applied before the start"
            ))));
        return None;
    };
    let stepped = if local {
        // Each replica stepped on its own rows already.
        match sharing::average(syncs) {
            Ok(Some((avg, mixed))) => replica.install(&avg, mixed, batch),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    } else {
        replica.step(partials, rows, bound, batch, t)
    };
    if let Err(e) = stepped {
        s.failure.get_or_insert(Failure::from(&e));
        s.next = t + 1;
        return None;
    }
    s.loss += loss;
    s.trained += rows;
    s.next = t + 1;
    if last {
        replica.flush();
        let end = s.end_batch(batch, t, snapshot);
        s.ends.push(end);
    }
    None
}
