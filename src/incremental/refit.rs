//! Forgetting rows of a model without sufficient statistics (logistic,
//! softmax, hinge, and least squares by L-BFGS): its optimum is
//! re-optimised, warm-started from the previous model, over the rows that
//! remain — the same optimum as training from scratch on them, reached in
//! fewer iterations (docs/incremental.md).
//!
//! The state ([`super::store::StateDir`], statistics `rows`) holds no rows
//! of its own: the rows are `data.train`'s, read again with the forgotten
//! keys left out ([`crate::source::parquet::RowFilter`]). So that this is
//! the data the model was trained on, the state records the number and
//! the key digest of every row of `data.train` when it was built, and
//! every `forget` reads the keys again and compares.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::normal::{KeyDigest, Normal};
use super::store::{Generation, SourceStamp, StateDir, STATE_VERSION};
use super::{keys_of, stamp, svm, Fitted, PendingState};
use crate::cluster::Cluster;
use crate::data::encode::Origin;
use crate::data::partition::WINDOW_ROWS;
use crate::error::{Error, Result};
use crate::model::file::{DataStamp, ModelFile};
use crate::plan::Plan;
use crate::source::parquet::RowFilter;
use crate::source::DataSource;
use crate::spec::{ModelKind, Pipeline};

/// The statistics name of a re-optimised model's state.
pub const ROWS: &str = "rows";

/// Every key of `plan`'s training data: their ids, with the number and
/// digest of the rows, failing on a repeated key.
fn source_keys(source: &dyn DataSource, key: &str) -> Result<(HashSet<u128>, SourceStamp)> {
    let key = key.to_string();
    let mut ids = HashSet::new();
    let (mut rows, mut digest) = (0u64, KeyDigest::default());
    for unit in source.units() {
        let path = source.unit_path(unit).to_path_buf();
        let mut first_row = unit.file_row;
        for batch in source.open(unit, std::slice::from_ref(&key), WINDOW_ROWS)? {
            let batch = batch?;
            let origin = Origin {
                file: &path,
                row_group: Some(unit.row_group),
                first_row,
            };
            for (i, k) in keys_of(&batch, &key, &origin)?.iter().enumerate() {
                let d = KeyDigest::of(k);
                if !ids.insert(d.id()) {
                    return Err(Error::Keys {
                        path: path.clone(),
                        message: format!(
                            "key '{k}' of data.key = '{key}' occurs more than once (again at row {}): a key names one row",
                            first_row + i as u64
                        ),
                    });
                }
                rows += 1;
                digest.add(&d);
            }
            first_row += batch.num_rows() as u64;
        }
    }
    Ok((ids, SourceStamp { rows, keys: digest }))
}

/// A `train` with `[output] state` and L-BFGS, begun: the state
/// directory locked (and checked) before training; the keys are read
/// after it ([`Begun::finish`]), so that a cluster's processes are not
/// kept waiting to connect.
pub struct Begun {
    dir: StateDir,
    lock: std::fs::File,
    seq: u64,
    key: String,
    job: super::store::JobStamp,
    source: Arc<crate::source::parquet::ParquetSource>,
    limit: u32,
    kind: ModelKind,
    l2: f64,
}

/// Locks the state of `plan` for a `train`; see [`Begun`].
pub fn begin(plan: &Plan) -> Result<Begun> {
    let (dir_path, key) = match (&plan.pipeline.output.state, &plan.pipeline.data.key) {
        (Some(d), Some(k)) => (d.clone(), k.clone()),
        _ => {
            return Err(Error::Internal(
                "a state without a directory or a key".into(),
            ))
        }
    };
    let dir = StateDir::open(&dir_path)?;
    let lock = dir.lock()?;
    let job = stamp(&plan.pipeline, &plan.draft, &key);
    super::retrainable(&dir, &job)?;
    Ok(Begun {
        seq: dir.next_seq()?,
        dir,
        lock,
        job,
        key,
        source: Arc::clone(&plan.train),
        limit: plan.pipeline.train.epochs,
        kind: plan.pipeline.model.kind,
        l2: plan.pipeline.model.l2,
    })
}

impl Begun {
    /// After training: checks that `model` is the optimum (not stopped by
    /// `train.epochs`), reads every key of the data (a repeated one is an
    /// error), and returns the generation to commit once the model is
    /// written, with the model's data stamp set.
    pub fn finish(self, model: &mut ModelFile) -> Result<PendingState> {
        optimum(model, self.kind, self.limit, self.source.as_ref(), self.l2)?;
        let (_, source) = source_keys(self.source.as_ref(), &self.key)?;
        let generation = Generation {
            version: STATE_VERSION,
            job: self.job,
            stats: Normal {
                rows: source.rows as i64,
                keys: source.keys,
                ..Normal::default()
            },
            runs: Vec::new(),
            forgotten: BTreeMap::new(),
            source: Some(source),
            extended: false,
            stream: None,
            unmatched: Default::default(),
        };
        model.training.data = Some(DataStamp {
            key: self.key,
            rows: source.rows,
            keys_blake3_sum: source.keys.hex(),
        });
        Ok(PendingState {
            dir: self.dir,
            seq: self.seq,
            generation,
            keep: 2,
            _lock: self.lock,
        })
    }
}

/// Makes `model`, trained by L-BFGS over `source`, the optimum: a hinge
/// model is solved exactly from it ([`svm::polish`]: L-BFGS only gives
/// the start); any other must have converged ([`converged`]).
fn optimum(
    model: &mut ModelFile,
    kind: ModelKind,
    limit: u32,
    source: &dyn DataSource,
    l2: f64,
) -> Result<()> {
    if kind == ModelKind::Hinge {
        svm::polish(model, source, l2)?;
        return Ok(());
    }
    converged(model, limit)
}

/// Fails if L-BFGS ran out of iterations rather than converging: a model
/// a forget must match is the optimum, or nothing.
fn converged(model: &ModelFile, limit: u32) -> Result<()> {
    if model.training.epochs >= limit {
        return Err(Error::Unsolvable {
            message: format!(
                "L-BFGS used all train.epochs = {limit} iterations without reaching optimizer.gradient_tolerance: a model kept with [output] state must be the optimum (raise train.epochs)"
            ),
        });
    }
    Ok(())
}

/// `tidemill forget` for a model re-optimised by L-BFGS: checks the
/// request against `data.train` and the state, then trains warm-started
/// from the model at `output.model` over the rows that remain.
pub fn forget(pipeline: &Pipeline, keys_path: &str, cluster: &Cluster) -> Result<Fitted> {
    let source_path = Path::new(keys_path);
    let model_path = pipeline
        .output
        .model
        .clone()
        .ok_or_else(|| Error::PipelineValue {
            key: "output.model".into(),
            message:
                "forget re-optimises from the model it keeps up to date: name it (or --model-out)"
                    .into(),
        })?;
    let super::Request {
        dir,
        dir_path,
        lock,
        seq,
        generation,
        mut plan,
        key,
        keys,
    } = super::open_request(pipeline, keys_path)?;
    let recorded = generation.source.ok_or_else(|| Error::Checkpoint {
        path: dir_path.clone(),
        message: "the state records no source rows".into(),
    })?;
    // The rows the model was trained on must be the rows read now.
    let (present, now) = source_keys(plan.train.as_ref(), &key)?;
    if now != recorded {
        return Err(Error::Keys {
            path: plan.train.reference().to_path_buf(),
            message: format!(
                "data.train holds {} rows (keys digest {}), the state was built from {} rows (keys digest {}): the rows must stay as they were for the model to be re-optimised over those that remain (train into a new state directory)",
                now.rows,
                now.keys.hex(),
                recorded.rows,
                recorded.keys.hex()
            ),
        });
    }
    let again: Vec<&String> = keys
        .iter()
        .filter(|k| generation.forgotten.contains_key(&KeyDigest::of(k).id()))
        .collect();
    if !again.is_empty() {
        return Err(Error::Keys {
            path: source_path.to_path_buf(),
            message: format!(
                "{} key(s) were forgotten already: {} (nothing changed)",
                again.len(),
                super::list_keys(&again)
            ),
        });
    }
    let unknown: Vec<&String> = keys
        .iter()
        .filter(|k| !present.contains(&KeyDigest::of(k).id()))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Keys {
            path: source_path.to_path_buf(),
            message: format!(
                "{} key(s) were never inserted into the state {}: {} (nothing changed)",
                unknown.len(),
                dir_path.display(),
                super::list_keys(&unknown)
            ),
        });
    }
    let init = crate::train::warm::InitModel::load(&model_path)?;
    // The rows present after this request: the stamp's, less every key
    // forgotten.
    let mut next = generation.clone();
    for k in &keys {
        next.forgotten.insert(KeyDigest::of(k).id(), k.clone());
    }
    let mut stats = Normal {
        rows: recorded.rows as i64,
        keys: recorded.keys,
        ..Normal::default()
    };
    for k in next.forgotten.values() {
        let mut gone = KeyDigest::of(k);
        gone.negate();
        stats.keys.add(&gone);
        stats.rows -= 1;
    }
    // The model to start from must be the state's (the rows it was
    // trained on are the rows the state holds now), or the model this
    // same request wrote before its state commit failed.
    let holds = init.file.training.data.as_ref();
    let of = |d: &DataStamp, s: &Normal| {
        d.key == key && d.rows == s.rows.max(0) as u64 && d.keys_blake3_sum == s.keys.hex()
    };
    if holds.is_none_or(|d| !of(d, &generation.stats) && !of(d, &stats)) {
        return Err(Error::Checkpoint {
            path: model_path.clone(),
            message: format!(
                "this is not the model of the state {} (its training.data says {}, the state holds {} rows with keys digest {}): forget re-optimises from the state's own model (output.model, or --model-out naming it)",
                dir_path.display(),
                holds.map_or_else(
                    || "nothing".to_string(),
                    |d| format!("{} rows with keys digest {}", d.rows, d.keys_blake3_sum)
                ),
                generation.stats.rows,
                generation.stats.keys.hex()
            ),
        });
    }
    next.stats = stats.clone();
    let dropped: Arc<HashSet<u128>> = Arc::new(next.forgotten.keys().copied().collect());
    let mut source = (*plan.train).clone();
    source.drop = Some(RowFilter {
        column: key.clone(),
        drop: Arc::new(move |k: &str| dropped.contains(&KeyDigest::of(k).id())),
    });
    plan.train = Arc::new(source);
    // Its checkpoints are the training's, not this re-optimisation's.
    plan.pipeline.output.checkpoint = None;
    let limit = plan.pipeline.train.epochs;
    let (kind, l2) = (plan.pipeline.model.kind, plan.pipeline.model.l2);
    let train = Arc::clone(&plan.train);
    let report = crate::train::run_job(plan, Some(init), false, cluster)?;
    let mut model: ModelFile = report.model.ok_or_else(|| Error::Worker {
        worker: 0,
        message: "finished without a model".into(),
    })?;
    optimum(&mut model, kind, limit, train.as_ref(), l2)?;
    model.training.data = Some(DataStamp {
        key,
        rows: stats.rows.max(0) as u64,
        keys_blake3_sum: stats.keys.hex(),
    });
    Ok(Fitted {
        model,
        stats,
        state: Some(PendingState {
            dir,
            seq: seq + 1,
            generation: next,
            keep: 2,
            _lock: lock,
        }),
    })
}
