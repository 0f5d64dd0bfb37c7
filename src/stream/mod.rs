//! `tidemill stream`: incremental training on a stream of rows, with
//! progressive validation (every row scored by the current model before it
//! is trained on), model snapshots while it runs, and checkpoints from
//! which `--resume` continues exactly once (see docs/streaming.md).
//!
//! The leader (worker 0 of process 0) reads the source ([`source`]), cuts
//! it into batches and steps ([`leader`]) and sends every worker its slice
//! of each step through the dataflow ([`engine`]). How the workers share
//! the model is the strategy's ([`sharing`]): under allreduce and
//! param-server every worker holds the whole model ([`replica`]) and steps
//! it from the exact sum of all workers' gradients, so the model is the
//! same bits on any number of workers and processes; under model-average
//! each worker steps its own replica and the replicas are averaged at
//! barriers; under model-parallel every worker holds one block of the
//! features and weights, gets every row and exchanges exact partial
//! margins ([`split`]). The leader publishes metrics,
//! snapshots and checkpoints at batch ends ([`publish`]).

pub mod engine;
pub mod exact;
pub mod leader;
pub mod predictions;
pub mod publish;
pub mod replica;
pub mod service;
pub mod sharing;
pub mod source;
pub mod split;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use timely::worker::Worker;

use crate::checkpoint::store::Store;
use crate::cluster::{Cluster, JobDescription};
use crate::data::encode::FeatureSpec;
use crate::dataflow::liveness::{self, Heartbeat, Watch};
use crate::dataflow::Failure;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::spec::{ModelKind, Pipeline, Strategy};
use crate::train::warm::InitModel;
use engine::{Handles, Start};
use leader::{Leader, Position, Statistics};
use publish::{At, Publisher, Saved, STREAM_PAYLOAD_VERSION};
use replica::Replica;
use source::{Feed, Input};

/// A stream job, as the command line gives it.
#[derive(Debug)]
pub struct StreamJob {
    /// The pipeline (outputs already overridden by flags).
    pub pipeline: Pipeline,
    /// The source.
    pub input: Input,
    /// A warm start: its weights, and its statistics frozen.
    pub init: Option<InitModel>,
    /// Continue from the newest checkpoint in `output.checkpoint`.
    pub resume: bool,
    /// Resuming from stdin: the row of the stream the producer's rows
    /// start at (0: it sends the stream again from its start).
    pub input_offset: u64,
    /// `--predictions-out`: a path, or `-` for stdout.
    pub predictions: Option<String>,
    /// `--keep`: input columns copied to the predictions.
    pub keep: Vec<String>,
    /// `--metrics-addr`: where the Prometheus endpoint listens.
    pub metrics_addr: Option<String>,
}

/// What a stream did (process 0).
#[derive(Debug, Clone, Serialize)]
pub struct StreamSummary {
    /// Rows consumed, over the whole stream (earlier runs of a resumed one
    /// included).
    pub rows: u64,
    /// Rows this run consumed.
    pub rows_this_run: u64,
    /// Batches.
    pub batches: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Progressive validation over the whole stream.
    pub progressive: Option<Metrics>,
    /// Rows this run consumed per second of its wall time.
    pub rows_per_second: f64,
    /// Seconds this run took.
    pub seconds: f64,
    /// Snapshots published.
    pub snapshots: u64,
    /// The signal the stream stopped on (it was checkpointed there).
    pub stopped_by: Option<String>,
}

/// The leader's side of a job, made on process 0 before timely starts.
struct LeaderSide {
    leader: Leader,
    publisher: Publisher,
    predictions: Option<predictions::PredictionSink>,
    service: Option<service::Service>,
    rows_before: u64,
    /// The checkpoint directory's lock, held while the stream runs.
    _lock: Option<std::fs::File>,
}

/// Runs a stream job on `cluster`; the summary comes back on process 0.
pub fn run(job: StreamJob, cluster: &Cluster) -> Result<Option<StreamSummary>> {
    let p = &job.pipeline;
    check(p)?;
    let started = Instant::now();
    let identity = identity(p, &job.input)?;
    let side = if cluster.is_leader() {
        Some(leader_side(&job, cluster.total_workers(), &identity)?)
    } else {
        None
    };
    let rows_before = side.as_ref().map_or(0, |s| s.rows_before);
    // A first SIGINT or SIGTERM ends the stream at the next batch end,
    // with a snapshot (and a checkpoint, if it takes them) there.
    crate::io::signals::stop_at_checkpoint();
    let side = Arc::new(Mutex::new(side));
    let pipeline = Arc::new(job.pipeline.clone());
    let predict = job.predictions.is_some();
    let description = JobDescription {
        identity: serde_json::json!({ "stream": identity }),
        labels: Default::default(),
    };
    // Several processes: a silent peer ends the stream (`--peer-timeout`).
    let watch = Watch::of(cluster);
    let guards = cluster.execute(
        move || Ok(description),
        move |worker| {
            let mine = match worker.index() {
                0 => side.lock().unwrap_or_else(PoisonError::into_inner).take(),
                _ => None,
            };
            worker_main(worker, Arc::clone(&pipeline), predict, watch.as_ref(), mine)
        },
    )?;
    let mut summary = None;
    let mut failure: Option<Failure> = None;
    for r in cluster.join(guards)? {
        match r {
            Err(f) => {
                failure.get_or_insert(f);
            }
            Ok(Some(s)) => summary = Some(s),
            Ok(None) => {}
        }
    }
    if let Some(f) = failure {
        return Err(f.into_error());
    }
    Ok(summary.map(|mut s: StreamSummary| {
        s.seconds = started.elapsed().as_secs_f64();
        s.rows_this_run = s.rows.saturating_sub(rows_before);
        s.rows_per_second = s.rows_this_run as f64 / s.seconds.max(1e-9);
        s
    }))
}

/// What `stream` refuses before it reads a row.
fn check(p: &Pipeline) -> Result<()> {
    if p.optimizer.first_order().is_none() {
        return Err(Error::PipelineValue {
            key: "optimizer.kind".into(),
            message: "stream takes online steps: use sgd, adagrad, ftrl, momentum or adam (L-BFGS needs all the data at once)".into(),
        });
    }
    if p.model.kind == ModelKind::Softmax && p.data.classes.is_none() {
        return Err(Error::PipelineValue {
            key: "data.classes".into(),
            message: "a stream cannot discover its classes before training: list them".into(),
        });
    }
    if p.model.network.is_some() && p.train.strategy == crate::spec::Strategy::ModelParallel {
        return Err(Error::PipelineValue {
            key: "train.strategy".into(),
            message: "a stream of a network split by hidden units is not built yet: stream it with allreduce, param-server or model-average".into(),
        });
    }
    if let Some(r) = p.train.replicas {
        return Err(Error::PipelineValue {
            key: "train.replicas".into(),
            message: format!("a stream keeps one replica per worker ({r} asked): leave train.replicas to `tidemill train`"),
        });
    }
    for (key, set) in [
        ("data.weight", p.data.weight.is_some()),
        ("model.class_weight", p.model.class_weight.is_some()),
    ] {
        if set {
            return Err(Error::PipelineValue {
                key: key.into(),
                message:
                    "a stream does not weigh rows yet: train weighted models with `tidemill train`"
                        .into(),
            });
        }
    }
    if p.data.validation.is_some() {
        tracing::info!("data.validation is not used by stream: every row is scored before it is trained on (progressive validation)");
    }
    Ok(())
}

/// The job's identity: the pipeline less its outputs, and the input.
fn identity(p: &Pipeline, input: &Input) -> Result<String> {
    let mut v = serde_json::to_value(p)
        .map_err(|e| Error::Internal(format!("cannot describe the pipeline: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("output");
        // What only says how it is published or distributed may change
        // between runs of one stream.
        o.remove("train");
        if let Some(s) = o.get_mut("stream").and_then(|s| s.as_object_mut()) {
            for k in [
                "snapshot_every",
                "snapshot_seconds",
                "snapshot_keep",
                "rolling_batches",
                "stream_auc",
            ] {
                s.remove(k);
            }
        }
        if let Some(d) = o.get_mut("data").and_then(|d| d.as_object_mut()) {
            d.remove("train");
            d.remove("validation");
        }
    }
    let source = match input {
        Input::Stdin => "-".to_string(),
        Input::Replay { path, .. } => canonical(path),
        Input::Watch { dir, .. } => format!("{} (watched)", canonical(dir)),
    };
    let v = serde_json::json!({ "pipeline": v, "input": source });
    serde_json::to_string(&v).map_err(|e| Error::Internal(format!("cannot describe the job: {e}")))
}

/// `path` made absolute, as far as it exists.
fn canonical(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Opens the source, settles the spec and the starting model, and loads the
/// checkpoint a resumed job continues from.
fn leader_side(job: &StreamJob, workers: usize, identity: &str) -> Result<LeaderSide> {
    let p = &job.pipeline;
    let lock = match &p.output.checkpoint {
        Some(c) => Some(lock(&c.dir)?),
        None => None,
    };
    let resumed = match (&p.output.checkpoint, job.resume) {
        (None, true) => {
            return Err(Error::Usage {
                option: "--resume".into(),
                message: "the pipeline takes no checkpoints: set output.checkpoint = \"DIR\""
                    .into(),
            })
        }
        (Some(c), true) => load(&c.dir, identity)?,
        (Some(c), false) => {
            let store = Store::at(&c.dir);
            if let Some(seq) = store.list().ok().and_then(|l| l.last().copied()) {
                return Err(Error::Usage {
                    option: "output.checkpoint".into(),
                    message: format!(
                        "{} already holds checkpoints (the newest is {}): pass --resume to continue the stream, or remove them",
                        c.dir.display(),
                        store.path(seq).display()
                    ),
                });
            }
            None
        }
        (None, false) => None,
    };
    let rows_done = resumed.as_ref().map_or(0, |r| r.rows);
    if job.input_offset > 0 && (!job.resume || job.input != Input::Stdin || resumed.is_none()) {
        return Err(Error::Usage {
            option: "--input-offset".into(),
            message: "says where a producer on stdin restarts a resumed stream: it needs --input - and --resume, and a checkpoint to resume from (there is none: start the producer at row 0)".into(),
        });
    }
    let skip = match (&job.input, &resumed) {
        (Input::Stdin, Some(r)) => {
            if job.input_offset > r.rows {
                return Err(Error::Usage {
                    option: "--input-offset".into(),
                    message: format!(
                        "the producer starts at row {}, past the {} rows the checkpoint holds: rows {}..{} would be lost",
                        job.input_offset, r.rows, r.rows, job.input_offset
                    ),
                });
            }
            r.rows - job.input_offset
        }
        (Input::Stdin, None) => 0,
        // Files in name order: the rows the checkpoint holds come first.
        (Input::Replay { .. } | Input::Watch { .. }, _) => rows_done,
    };
    let at_file = match &job.input {
        Input::Watch { .. } => resumed.as_ref().and_then(|r| r.file.clone()),
        _ => None,
    };
    let skip = if at_file.is_some() { 0 } else { skip };
    let feed = Feed::open(&job.input, p.stream.order_by.as_deref(), skip, at_file)?;
    let draft = crate::plan::draft(
        p,
        feed.schema(),
        std::path::Path::new(&job.input.describe()),
    )?;
    let (spec, state, stats, at) = match resumed.as_ref() {
        Some(r) => (
            r.spec.clone(),
            r.replica_state(),
            r.stats.clone(),
            Position {
                batches: r.batches,
                rows: r.rows,
                file: r.file.clone(),
                step: r.step,
            },
        ),
        None => {
            let mut spec = draft.spec;
            spec.classes = classes(p);
            let frozen = job.init.is_some();
            if let Some(init) = &job.init {
                // Frozen statistics: the warm-start model's.
                let saved = &init.file.features;
                for f in &mut spec.numeric {
                    if let Some(s) = saved.numeric.iter().find(|s| s.name == f.name) {
                        f.center = s.center;
                        f.scale = s.scale;
                        f.fill = s.fill;
                    }
                }
            }
            let theta = match &job.init {
                Some(init) => init.theta(&p.model, &spec)?,
                // A linear model starts at zero: allocated zeroed, not
                // copied, so that untouched hashed slots cost no pages.
                None if p.model.network.is_none() => {
                    vec![0.0; crate::model::param_count(&p.model, &spec)]
                }
                None => crate::model::build(&p.model, &spec, None)
                    .map_err(Error::Internal)?
                    .params()
                    .to_vec(),
            };
            let stats = Statistics::of(p, &spec, frozen);
            (
                spec,
                Replica::fresh(&p.optimizer, theta),
                stats,
                Position {
                    batches: 0,
                    rows: 0,
                    file: None,
                    step: 0,
                },
            )
        }
    };
    tracing::info!(statistics = %stats.describe(p), "feature statistics");
    let publisher = Publisher::new(
        p,
        job.input.describe(),
        job.input.is_live(),
        identity.to_string(),
        resumed.as_ref(),
    )?;
    let start = Start {
        spec,
        state,
        step: at.step,
    };
    let predictions = match &job.predictions {
        Some(path) => {
            let classes = start.spec.classes.clone().unwrap_or_default();
            let k = crate::model::Layout::new(p.model.kind, &start.spec).k;
            Some(predictions::PredictionSink::open(
                path,
                &job.keep,
                feed.schema(),
                &job.input.describe(),
                p.model.kind,
                classes,
                k,
                // Model-parallel: the leader scores every row.
                match p.train.strategy {
                    Strategy::ModelParallel => 1,
                    _ => workers,
                },
                at.step,
            )?)
        }
        None => {
            if !job.keep.is_empty() {
                return Err(Error::Usage {
                    option: "--keep".into(),
                    message: "keeps input columns beside the predictions: give --predictions-out"
                        .into(),
                });
            }
            None
        }
    };
    let service = match &job.metrics_addr {
        Some(addr) => Some(service::Service::start(addr)?),
        None => None,
    };
    let leader = Leader::new(
        p,
        feed,
        job.input.is_live(),
        workers,
        sharing::Sharing::of(p),
        start,
        stats,
        at,
    );
    Ok(LeaderSide {
        leader,
        publisher,
        predictions,
        service,
        rows_before: rows_done,
        _lock: lock,
    })
}

/// Locks the checkpoint directory `dir` (created if need be) for this run:
/// two streams writing one directory would interleave their checkpoints.
fn lock(dir: &std::path::Path) -> Result<std::fs::File> {
    crate::io::dir_lock::lock(dir, "output.checkpoint")
}

/// The class names of a classifier, as the pipeline gives them.
fn classes(p: &Pipeline) -> Option<Vec<String>> {
    match p.model.kind {
        ModelKind::Linear => None,
        _ => Some(
            p.data
                .classes
                .clone()
                .unwrap_or_else(|| vec!["0".into(), "1".into()]),
        ),
    }
}

/// The newest whole checkpoint in `dir` of this job.
fn load(dir: &std::path::Path, identity: &str) -> Result<Option<Saved>> {
    let Some(loaded) = Store::open(dir)?.newest()? else {
        tracing::info!(dir = %dir.display(), "no checkpoint to resume from: the stream starts at its beginning");
        return Ok(None);
    };
    let bad = |message: String| Error::Usage {
        option: "--resume".into(),
        message: format!("{}: {message}", loaded.path.display()),
    };
    // The layout first (the payload's leading u32): another layout does
    // not decode as this one.
    let version = loaded
        .payload
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_le_bytes);
    if version != Some(STREAM_PAYLOAD_VERSION) {
        return Err(bad(format!(
            "written in layout {}, this tidemill reads {STREAM_PAYLOAD_VERSION}: resume it with the tidemill that wrote it, or start the stream afresh",
            version.map_or_else(|| "?".into(), |v| v.to_string())
        )));
    }
    let saved: Saved = bincode::deserialize(&loaded.payload)
        .map_err(|e| bad(format!("not a stream checkpoint ({e})")))?;
    if saved.identity != identity {
        return Err(bad(format!(
            "it is another stream's (pipeline or input differ): {}",
            first_difference(&saved.identity, identity)
        )));
    }
    tracing::info!(checkpoint = %loaded.path.display(), batches = saved.batches, rows = saved.rows, "resuming");
    Ok(Some(saved))
}

/// The first key where two job descriptions differ, with both values.
fn first_difference(a: &str, b: &str) -> String {
    let (Ok(a), Ok(b)) = (
        serde_json::from_str::<serde_json::Value>(a),
        serde_json::from_str::<serde_json::Value>(b),
    ) else {
        return "unreadable description".into();
    };
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                for (k, va) in x {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match y.get(k) {
                        Some(vb) => {
                            if let Some(d) = walk(&p, va, vb) {
                                return Some(d);
                            }
                        }
                        None => return Some(format!("{p} is {va} there, absent here")),
                    }
                }
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{path}.{k} is absent there"))
            }
            _ if a != b => Some(format!("{path} is {a} there, {b} here")),
            _ => None,
        }
    }
    walk("", &a, &b).unwrap_or_else(|| "?".into())
}

impl LeaderSide {
    /// The gauges (`--metrics-addr`) after a batch end.
    fn show(&self) {
        let Some(service) = &self.service else {
            return;
        };
        // Called at a batch end, before the next batch is cut: the rows cut
        // are the rows trained on.
        let trained = self.leader.rows;
        let loss = |m: Option<Metrics>| m.map(|m| m.rmse.map_or(m.loss, |r| r * r));
        service.show(&service::Reading {
            rows: trained,
            rows_this_run: trained.saturating_sub(self.rows_before),
            batches: self.publisher.batches,
            lag: self.leader.held() as u64,
            loss: loss(self.publisher.progressive()),
            rolling_loss: loss(self.publisher.rolling()),
            snapshots: self.publisher.snapshots,
        });
    }
}

/// How long an idle leader waits before an empty step (which brings it a
/// stop request from another process).
const HEARTBEAT: Duration = Duration::from_millis(250);

/// One worker's stream: the leader drives it; the others follow.
fn worker_main(
    worker: &mut Worker,
    pipeline: Arc<Pipeline>,
    predict: bool,
    watch: Option<&Watch>,
    side: Option<LeaderSide>,
) -> std::result::Result<Option<StreamSummary>, Failure> {
    // First, so that every worker builds its dataflows in the same order.
    let mut heartbeat = watch.map(|w| Heartbeat::start(worker, w));
    let dataflow = worker.next_dataflow_index();
    let Handles {
        mut input,
        probe,
        shared,
    } = engine::build(
        worker,
        Arc::clone(&pipeline),
        sharing::Sharing::of(&pipeline),
        predict,
    );
    let Some(mut side) = side else {
        input.close();
        liveness::run(worker, dataflow, heartbeat.as_mut());
        if let Some(h) = heartbeat {
            h.finish(worker);
        }
        return match shared.borrow_mut().failure.take() {
            Some(f) => Err(f),
            None => Ok(None),
        };
    };
    let result = lead(
        worker,
        &mut side,
        &mut input,
        &probe,
        &shared,
        heartbeat.as_mut(),
    );
    if let Err(e) = &result {
        // Every worker ends with the leader's failure.
        for m in side.leader.failed(&Failure::from(e)) {
            input.advance_to(m.step);
            input.send(m);
        }
    }
    drop(input);
    liveness::run(worker, dataflow, heartbeat.as_mut());
    if let Some(h) = heartbeat {
        h.finish(worker);
    }
    if let Some(f) = shared.borrow_mut().failure.take() {
        return Err(f);
    }
    let stopped_by = result.map_err(|e| Failure::from(&e))?;
    if let Some(mut sink) = side.predictions.take() {
        let mut s = shared.borrow_mut();
        sink.drain(&mut s.scores)
            .and_then(|()| sink.finish())
            .map_err(|e| Failure::from(&e))?;
    }
    if stopped_by.is_none() && side.publisher.trained_rows_first_pass() == 0 {
        // A finite stream that ended without a row to train on: no model.
        return Err(Failure::from(&Error::NoRows {
            what: side.publisher.input().to_string(),
            purpose: "train on (every row was skipped, or the input was empty)".into(),
        }));
    }
    let s = shared.borrow();
    let (leader, publisher) = (&side.leader, &mut side.publisher);
    if let (Some(replica), Some(spec)) = (s.whole(), s.spec.as_ref()) {
        publisher
            .finish(&at(replica, spec, leader))
            .map_err(|e| Failure::from(&e))?;
    }
    Ok(Some(StreamSummary {
        rows: leader.rows,
        rows_this_run: 0,
        batches: leader.batches,
        steps: leader.step,
        progressive: publisher.progressive(),
        rows_per_second: 0.0,
        seconds: 0.0,
        snapshots: publisher.snapshots,
        stopped_by,
    }))
}

fn at<'a>(
    replica: &'a dyn publish::WholeModel,
    spec: &'a FeatureSpec,
    leader: &'a Leader,
) -> At<'a> {
    At {
        replica,
        spec,
        stats: &leader.stats,
        batches: leader.batches,
        rows: leader.rows,
        file: leader.file.clone(),
        step: leader.step,
    }
}

/// The leader's loop: publish what ended, send what the window allows,
/// step the dataflow; until the source ends or a stop is asked for (then
/// at the next batch end). Returns the signal that stopped it, if one did.
fn lead(
    worker: &mut Worker,
    side: &mut LeaderSide,
    input: &mut timely::dataflow::InputHandleVec<u64, engine::StepIn>,
    probe: &timely::dataflow::ProbeHandle<u64>,
    shared: &std::rc::Rc<std::cell::RefCell<engine::Shared>>,
    mut heartbeat: Option<&mut Heartbeat>,
) -> Result<Option<String>> {
    let mut last_progress = Instant::now();
    let mut last_sent = Instant::now();
    // Nothing is applied before the first step (a resumed stream's first
    // step is the checkpoint's).
    shared.borrow_mut().next = side.leader.step;
    loop {
        let (applied, ends, failure, stop_seen) = {
            let mut s = shared.borrow_mut();
            (
                s.next,
                std::mem::take(&mut s.ends),
                s.failure.clone(),
                s.stop_seen,
            )
        };
        if let Some(f) = failure {
            // Sent on to every worker: a failure only this one saw (a
            // model-parallel block's) must end the others too.
            return Err(f.into_error());
        }
        if !ends.is_empty() {
            {
                let s = shared.borrow();
                if let (Some(replica), Some(spec)) = (s.whole(), s.spec.as_ref()) {
                    for end in ends {
                        side.publisher
                            .batch_end(end, &at(replica, spec, &side.leader))?;
                    }
                }
            }
            side.show();
        }
        let signal = crate::io::signals::stop_requested();
        let stop = signal.is_some() || stop_seen;
        let idle = !side.leader.sending() && applied == side.leader.step;
        let mut msgs = Vec::new();
        if idle && (stop || side.leader.done()) {
            if shared.borrow().whole_is_current() {
                let by = stop.then(|| {
                    signal.map_or("a signal to another process", crate::error::signal_name)
                });
                return Ok(by.map(String::from));
            }
            // Model-parallel, the last batch end published nothing: its
            // blocks are put together for the final snapshot first.
            msgs = side.leader.before_snapshot();
        }
        let publisher = &side.publisher;
        let due = |batch: u64| publisher.due(batch);
        msgs.extend(side.leader.next_steps(applied, idle && !stop, &due)?);
        if msgs.is_empty() {
            if idle && side.leader.started() && last_sent.elapsed() >= HEARTBEAT {
                msgs = side.leader.heartbeat();
            }
        } else {
            last_sent = Instant::now();
        }
        if !msgs.is_empty() {
            last_sent = Instant::now();
        }
        if let Some(sink) = side.predictions.as_mut() {
            sink.cut(&std::mem::take(&mut side.leader.fresh))?;
            sink.drain(&mut shared.borrow_mut().scores)?;
        }
        for m in msgs {
            // Each step's slices at its own time.
            input.advance_to(m.step);
            input.send(m);
        }
        input.advance_to(side.leader.step);
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            tracing::info!(
                batches = side.publisher.batches,
                rows = side.leader.rows,
                steps = applied,
                "streaming"
            );
        }
        let _ = probe;
        worker.step_or_park(Some(Duration::from_millis(1)));
        if let Some(h) = heartbeat.as_deref_mut() {
            h.keep_alive(worker);
        }
    }
}
