//! What a stream hands out as it runs, on the leader: a JSON line of
//! progressive metrics per batch, model snapshots (the model file replaced
//! atomically, numbered copies kept if asked), and checkpoints with every
//! snapshot.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::engine::BatchEnd;
use super::leader::Statistics;
use super::replica::ReplicaState;
use crate::checkpoint::store::Store;
use crate::data::encode::FeatureSpec;
use crate::error::{Error, Result};
use crate::metrics::{EvalPartial, Metrics};
use crate::model::file::{StreamStamp, TrainingSummary};
use crate::model::Model;
use crate::optim::lazy::Stamp;
use crate::spec::Pipeline;
use crate::strategy::snapshot::Stored;

/// The version of [`Saved`]'s layout.
pub const STREAM_PAYLOAD_VERSION: u32 = 2;

/// A stream's checkpoint: everything the rest of the stream depends on, at
/// a batch boundary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// [`STREAM_PAYLOAD_VERSION`].
    pub version: u32,
    /// The job (canonical JSON): the pipeline and the input.
    pub identity: String,
    /// Batches done.
    pub batches: u64,
    /// Rows of the source consumed.
    pub rows: u64,
    /// The file of the last row consumed (its name) and the rows of it
    /// read: where a watched directory continues.
    pub file: Option<(String, u64)>,
    /// Steps done.
    pub step: u64,
    /// The feature spec (statistics included).
    pub spec: FeatureSpec,
    /// The statistics' state.
    pub stats: Statistics,
    /// The model's parameters and optimizer state, sparse where few
    /// coordinates are set (a wide hashed model costs what its live
    /// weights cost).
    pub model: Stored,
    /// Lazy updates: the clock's stamps.
    pub clock: Vec<crate::optim::lazy::Stamp>,
    /// Optimizer steps.
    pub steps: u64,
    /// Progressive validation over the whole stream.
    pub cumulative: EvalPartial,
    /// And over the last batches.
    pub rolling: Vec<EvalPartial>,
    /// Snapshots published.
    pub snapshots: u64,
    /// Training rows over every pass.
    pub trained_rows: u64,
}

/// Where the leader publishes.
pub struct Publisher {
    pipeline: Pipeline,
    input: String,
    identity: String,
    model: Option<PathBuf>,
    metrics: Option<std::io::BufWriter<std::fs::File>>,
    store: Option<(Store, usize)>,
    every: Option<u64>,
    seconds: Duration,
    keep: usize,
    last_snapshot: Instant,
    /// Progressive validation over the whole stream, less the scores the
    /// AUC needs (16 bytes a row: they are in `scores`, this run's only).
    pub cumulative: EvalPartial,
    /// This run's (score, positive) pairs, for the whole-stream AUC; none
    /// are kept once they are not the whole stream's (a resumed run).
    scores: Option<Vec<(f64, bool)>>,
    /// Over the last `rolling_batches` batches.
    pub rolling: VecDeque<EvalPartial>,
    /// Snapshots published.
    pub snapshots: u64,
    /// Training rows over every pass.
    pub trained_rows: u64,
    /// Batches published (their ends handled).
    pub batches: u64,
    /// The batch index of the newest snapshot.
    published_at: Option<u64>,
    started: Instant,
}

/// The whole model a snapshot and a checkpoint are made of: the leader's
/// replica (`allreduce`), or every worker's block put together on the
/// leader (`model-parallel`: [`super::split::Whole`]).
pub trait WholeModel {
    /// The model.
    fn model(&self) -> &dyn Model;

    /// The parameters and optimizer state as a checkpoint keeps them, the
    /// lazy clock's stamps and the optimizer steps (at a batch boundary).
    fn stored(&self) -> (Stored, Vec<Stamp>, u64);
}

/// What the leader publishes from: the model and the position.
pub struct At<'a> {
    /// The whole model, at the batch boundary.
    pub replica: &'a dyn WholeModel,
    /// The spec.
    pub spec: &'a FeatureSpec,
    /// The statistics.
    pub stats: &'a Statistics,
    /// Batches done.
    pub batches: u64,
    /// Rows done.
    pub rows: u64,
    /// The file of the last row done, and the rows of it read.
    pub file: Option<(String, u64)>,
    /// Steps done.
    pub step: u64,
}

impl Publisher {
    /// A publisher for `pipeline` reading `input` (`live`: a source that
    /// may not end); metrics are appended to an existing file when
    /// `resumed`.
    pub fn new(
        pipeline: &Pipeline,
        input: String,
        live: bool,
        identity: String,
        resumed: Option<&Saved>,
    ) -> Result<Publisher> {
        let metrics = match &pipeline.output.metrics {
            Some(path) => {
                let fail = |action: &str, e: std::io::Error| Error::Output {
                    flag: "--metrics-out".into(),
                    path: path.clone(),
                    action: action.into(),
                    source: e,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| fail("cannot have its directory created", e))?;
                }
                if let Some(r) = resumed {
                    // The lines of batches after the checkpoint were
                    // written by the run that stopped: they come again.
                    keep_lines_before(path, r.batches)
                        .map_err(|e| fail("cannot be cut back to the checkpoint", e))?;
                }
                let mut o = std::fs::OpenOptions::new();
                o.create(true);
                if resumed.is_some() {
                    o.append(true);
                } else {
                    o.write(true).truncate(true);
                }
                let f = o.open(path).map_err(|e| Error::Output {
                    flag: "--metrics-out".into(),
                    path: path.clone(),
                    action: "cannot be opened".into(),
                    source: e,
                })?;
                Some(std::io::BufWriter::new(f))
            }
            None => None,
        };
        let store = match &pipeline.output.checkpoint {
            Some(c) => Some((Store::open(&c.dir)?, c.keep)),
            None => None,
        };
        let s = &pipeline.stream;
        Ok(Publisher {
            pipeline: pipeline.clone(),
            input,
            identity,
            model: pipeline.output.model.clone(),
            metrics,
            store,
            every: s.snapshot_every,
            seconds: Duration::from_secs_f64(s.snapshot_seconds),
            keep: s.snapshot_keep,
            last_snapshot: Instant::now(),
            cumulative: resumed.map_or_else(fresh, |r| r.cumulative.clone()),
            scores: (resumed.is_none() && s.stream_auc.unwrap_or(!live)).then(Vec::new),
            rolling: resumed.map_or_else(VecDeque::new, |r| r.rolling.iter().cloned().collect()),
            snapshots: resumed.map_or(0, |r| r.snapshots),
            trained_rows: resumed.map_or(0, |r| r.trained_rows),
            batches: resumed.map_or(0, |r| r.batches),
            published_at: resumed.map(|r| r.batches),
            started: Instant::now(),
        })
    }

    /// A batch ended: its metrics line, and a snapshot (with a checkpoint)
    /// if one is due.
    pub fn batch_end(&mut self, end: BatchEnd, at: &At<'_>) -> Result<()> {
        let kind = self.pipeline.model.kind;
        let mut whole = end.eval.clone();
        let scores = std::mem::take(&mut whole.scores);
        if let Some(all) = self.scores.as_mut() {
            all.extend(scores);
        }
        self.cumulative.merge(whole);
        self.rolling.push_back(end.eval.clone());
        while self.rolling.len() > self.pipeline.stream.rolling_batches.max(1) {
            self.rolling.pop_front();
        }
        self.trained_rows += end.trained_rows;
        self.batches = end.batch + 1;
        let rolling = self.rolling.iter().fold(fresh(), |mut a, e| {
            a.merge(e.clone());
            a
        });
        // Decided when the batch's last step was sent ([`Self::due`]).
        let due = end.snapshot;
        if due {
            self.publish(at)?;
        }
        if let Some(out) = self.metrics.as_mut() {
            let train_loss = end.loss.to_f64() / end.trained_rows.max(1) as f64;
            let line = serde_json::json!({
                "batch": end.batch,
                "rows": end.rows,
                "rows_total": at.rows,
                "steps": at.step,
                "train_loss": train_loss,
                "progressive": finish(end.eval, kind),
                "rolling": finish(rolling, kind),
                "cumulative": finish(self.cumulative.clone(), kind),
                "snapshot": due.then_some(self.snapshots),
                "seconds": self.started.elapsed().as_secs_f64(),
            });
            let text = serde_json::to_string(&line).map_err(|e| {
                Error::Internal(format!("cannot write a batch's metrics line: {e}"))
            })? + "\n";
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Error::Output {
                    flag: "--metrics-out".into(),
                    path: self.pipeline.output.metrics.clone().unwrap_or_default(),
                    action: "cannot be written".into(),
                    source: e,
                })?;
        }
        Ok(())
    }

    /// True if the end of batch `batch` (from 0) is to publish a snapshot:
    /// every `snapshot_every` batches, or `snapshot_seconds` after the last.
    pub fn due(&self, batch: u64) -> bool {
        self.every
            .is_some_and(|n| (batch + 1).is_multiple_of(n.max(1)))
            || self.last_snapshot.elapsed() >= self.seconds
    }

    /// The final snapshot and checkpoint, unless the last batch's were
    /// just published.
    pub fn finish(&mut self, at: &At<'_>) -> Result<()> {
        if self.published_at == Some(at.batches) && self.snapshots > 0 {
            return Ok(());
        }
        self.publish(at)
    }

    /// Progressive metrics over the whole stream; the AUC only where this
    /// run saw the whole stream (a resumed run's scores before its
    /// checkpoint are gone).
    pub fn progressive(&self) -> Option<Metrics> {
        let mut all = self.cumulative.clone();
        if let Some(scores) = &self.scores {
            all.scores = scores.clone();
        }
        finish(all, self.pipeline.model.kind)
    }

    /// Progressive metrics over the rolling window.
    pub fn rolling(&self) -> Option<Metrics> {
        let all = self.rolling.iter().fold(fresh(), |mut a, e| {
            a.merge(e.clone());
            a
        });
        finish(all, self.pipeline.model.kind)
    }

    /// The input, as the snapshots name it.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Rows scored (the first pass) over the whole stream.
    pub fn trained_rows_first_pass(&self) -> u64 {
        self.cumulative.rows
    }

    /// A snapshot and a checkpoint at `at`.
    fn publish(&mut self, at: &At<'_>) -> Result<()> {
        self.snapshots += 1;
        self.last_snapshot = Instant::now();
        self.published_at = Some(at.batches);
        if let Some(path) = self.model.clone() {
            let summary = TrainingSummary {
                epochs: u32::try_from(at.batches).unwrap_or(u32::MAX),
                rows: self.trained_rows,
                objective: None,
                optimizer: crate::train::optimizer_name(&self.pipeline),
                l2: self.pipeline.model.l2,
                l1: self.pipeline.model.l1,
                data: None,
            };
            let mut file = at.replica.model().to_file(at.spec, summary);
            file.stream = Some(StreamStamp {
                snapshot: self.snapshots,
                batches: at.batches,
                rows: at.rows,
                input: self.input.clone(),
            });
            let json = file.to_json()?;
            crate::io::atomic::write("--model-out", &path, json.as_bytes())?;
            if self.keep > 0 {
                let numbered = numbered(&path, self.snapshots);
                crate::io::atomic::write("--model-out", &numbered, json.as_bytes())?;
                self.prune_history(&path)?;
            }
        }
        if let Some((store, keep)) = &self.store {
            let (model, clock, steps) = at.replica.stored();
            let saved = Saved {
                version: STREAM_PAYLOAD_VERSION,
                identity: self.identity.clone(),
                batches: at.batches,
                rows: at.rows,
                file: at.file.clone(),
                step: at.step,
                spec: at.spec.clone(),
                stats: at.stats.clone(),
                model,
                clock,
                steps,
                cumulative: self.cumulative.clone(),
                rolling: self.rolling.iter().cloned().collect(),
                snapshots: self.snapshots,
                trained_rows: self.trained_rows,
            };
            let payload = bincode::serialize(&saved)
                .map_err(|e| Error::Internal(format!("cannot encode a stream checkpoint: {e}")))?;
            store.write(at.batches, &payload)?;
            store.prune(*keep)?;
        }
        Ok(())
    }

    /// Keeps the newest `keep` numbered snapshots beside `path`.
    fn prune_history(&self, path: &Path) -> Result<()> {
        let oldest_kept = self.snapshots.saturating_sub(self.keep as u64 - 1);
        for n in (1..oldest_kept).rev() {
            let old = numbered(path, n);
            match std::fs::remove_file(&old) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(Error::io(&old, e)),
            }
        }
        Ok(())
    }
}

impl Saved {
    /// The model's state as a replica starts from it.
    pub fn replica_state(&self) -> ReplicaState {
        let s = self.model.read();
        ReplicaState {
            theta: s.params,
            opt: s.state,
            live: s.live,
            lazy: s.lazy,
            clock: self.clock.clone(),
            steps: self.steps,
        }
    }
}

/// Keeps the metrics lines of batches before `batches` (an atomic rewrite).
pub(super) fn keep_lines_before(path: &Path, batches: u64) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["batch"].as_u64())
                .is_some_and(|b| b < batches)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    if kept.len() == text.len() {
        return Ok(());
    }
    crate::io::atomic::write("--metrics-out", path, kept.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// An empty progressive partial (labels relative to 0, as every worker's).
fn fresh() -> EvalPartial {
    EvalPartial::with_label_ref(Some(0.0))
}

/// The metrics of a partial, if it has rows (a number that cannot be
/// finished is left out, never made up).
fn finish(p: EvalPartial, kind: crate::spec::ModelKind) -> Option<Metrics> {
    if p.rows == 0 {
        return None;
    }
    p.finish(kind).ok()
}

/// `model-000042.json` beside `model.json`.
pub fn numbered(path: &Path, n: u64) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    path.with_file_name(format!("{stem}-{n:06}{ext}"))
}
