//! Exact incremental models (docs/incremental.md): training that reduces
//! to sums, maintained by differential dataflow under insertions and
//! retractions, so that forgetting rows leaves exactly the model of the
//! rows that remain.
//!
//! - [`normal`]: the sufficient statistics of least squares as an exact
//!   Abelian difference type;
//! - [`solve`]: ridge regression from them (Cholesky);
//! - [`bayes`]: naive Bayes from their per-class form;
//! - [`maintain`]: the differential dataflow over keys, statistics and
//!   forgotten keys;
//! - [`store`]: the state directory a later command continues from;
//! - this module: `tidemill train` with `optimizer.kind = "exact"` and
//!   `tidemill forget`.

pub mod bayes;
pub mod maintain;
pub mod normal;
pub mod refit;
pub mod solve;
pub mod store;
pub mod svm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use crate::cluster::Cluster;
use crate::data::encode::{decode_raw, Block, FeatureSpec, LabelUse, Origin};
use crate::data::partition::WINDOW_ROWS;
use crate::error::{Error, Location, Result};
use crate::model::file::{DataStamp, ModelFile, TrainingSummary};
use crate::model::{Layout, LinearModel, Model};
use crate::plan::Plan;
use crate::source::DataSource;
use crate::spec::{ModelKind, Pipeline};
use maintain::{Changes, RowRef, Seen};
use normal::{KeyDigest, Normal};
use solve::{Ridge, Unsolvable};
use store::{Generation, JobStamp, StateDir, StoredRow, STATE_VERSION};

/// What an exact training or forgetting produced (process 0).
#[derive(Debug)]
pub struct Fitted {
    /// The model file content.
    pub model: ModelFile,
    /// The statistics of the rows present.
    pub stats: Normal,
    /// The state generation to commit, if the pipeline keeps a state.
    pub state: Option<PendingState>,
}

/// A state generation made but not yet committed. The caller writes the
/// model first and then commits this: a failure in between leaves a model
/// newer than the state, and running the same command again (the same
/// keys are still in the state) brings both to the same point.
#[derive(Debug)]
pub struct PendingState {
    dir: StateDir,
    seq: u64,
    generation: Generation,
    /// Generations kept after the commit (1 after an erasure: no older
    /// one names a run that still holds the erased rows).
    keep: usize,
    /// The directory's lock, held from reading the state to committing.
    _lock: std::fs::File,
}

impl PendingState {
    /// Commits the generation (see [`StateDir::commit`]); returns its file.
    pub fn commit(self) -> Result<PathBuf> {
        // Every run the generation names must be here: processes on other
        // machines write theirs into their own copy of the directory.
        for run in &self.generation.runs {
            let path = self.dir.dir().join(run);
            if !path.is_file() {
                return Err(Error::Checkpoint {
                    path,
                    message: "a row run of this state is missing: with several processes, the state directory must be one directory they all write (a shared file system)".into(),
                });
            }
        }
        self.dir
            .commit_keeping(self.seq, &self.generation, self.keep)
    }
}

/// The key column's values of a batch as text (integers in decimal).
pub fn keys_of(batch: &RecordBatch, column: &str, origin: &Origin) -> Result<Vec<String>> {
    let at = |row: Option<u64>| {
        Box::new(Location {
            file: origin.file.to_path_buf(),
            row_group: origin.row_group,
            column: Some(column.to_string()),
            row,
        })
    };
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| Error::Internal(format!("the key column '{column}' was not read")))?;
    let text = arrow::compute::cast(array, &DataType::Utf8).map_err(|e| Error::MissingValue {
        location: at(None),
        what: format!("a key column of type {} ({e})", array.data_type()),
        hint: "a key must be text or an integer".into(),
    })?;
    let text = text.as_string::<i32>();
    (0..text.len())
        .map(|i| {
            if text.is_null(i) {
                Err(Error::MissingValue {
                    location: at(Some(origin.first_row + i as u64)),
                    what: "null key".into(),
                    hint: "every row needs a key to be forgotten by".into(),
                })
            } else {
                Ok(text.value(i).to_string())
            }
        })
        .collect()
}

/// The error for a value outside the exact range, where it is.
pub fn too_large(
    e: normal::TooLarge,
    spec: &FeatureSpec,
    file: &Path,
    row_group: Option<usize>,
    row: u64,
) -> Error {
    Error::MissingValue {
        location: Box::new(Location {
            file: file.to_path_buf(),
            row_group,
            column: Some(match e.feature {
                Some(j) => spec.numeric[j].name.clone(),
                None => spec.label.clone(),
            }),
            row: Some(row),
        }),
        what: format!("a value ({:e}) outside what exact sums hold", e.value),
        hint: format!(
            "exact models take values below {:e} in magnitude: rescale the column",
            normal::MAX_VALUE
        ),
    }
}

/// What a worker of `train` read.
#[derive(Default)]
struct Read {
    changes: Changes,
    stored: Vec<StoredRow>,
}

/// Reads this worker's units: keys, statistics and (when kept) rows.
fn read_units(
    plan: &Plan,
    spec: &FeatureSpec,
    worker: usize,
    peers: usize,
    keep: bool,
) -> Result<Read> {
    let key = plan.pipeline.data.key.clone();
    let kind = plan.pipeline.model.kind;
    let mut columns = spec.feature_columns();
    columns.push(spec.label.clone());
    columns.extend(key.iter().cloned());
    let mut read = Read::default();
    let source: &dyn DataSource = plan.train.as_ref();
    for unit in source.units().iter().filter(|u| u.id % peers == worker) {
        let path = source.unit_path(unit).to_path_buf();
        let mut stats = if kind.is_naive_bayes() {
            Normal::default()
        } else {
            Normal::zero_of(spec.numeric.len())
        };
        let mut first_row = unit.file_row;
        for batch in source.open(unit, &columns, WINDOW_ROWS)? {
            let batch = batch?;
            let origin = Origin {
                file: &path,
                row_group: Some(unit.row_group),
                first_row,
            };
            if kind.is_naive_bayes() {
                read_class_rows(
                    kind,
                    spec,
                    &batch,
                    &origin,
                    key.as_deref(),
                    (unit.id as u32, unit.row_group),
                    keep,
                    &mut stats,
                    &mut read,
                )?;
                first_row += batch.num_rows() as u64;
                continue;
            }
            let block = decode_raw(&batch, spec, LabelUse::Value, &origin)?;
            let keys = match &key {
                Some(k) => Some(keys_of(&batch, k, &origin)?),
                None => None,
            };
            let p = block.p;
            let texts: Option<Vec<String>> = keys.map(|k| {
                block
                    .file_row
                    .iter()
                    .map(|row| k[(row - first_row) as usize].clone())
                    .collect()
            });
            let digests: Vec<KeyDigest> = match &texts {
                Some(t) => t.iter().map(|k| KeyDigest::of(k)).collect(),
                None => vec![KeyDigest::default(); block.rows],
            };
            stats
                .add_rows(&digests, &block.raw, &block.label, p)
                .map_err(|(i, e)| {
                    too_large(e, spec, &path, Some(unit.row_group), block.file_row.at(i))
                })?;
            if let Some(texts) = texts {
                for (i, text) in texts.into_iter().enumerate() {
                    let id = digests[i].id();
                    read.changes
                        .keys
                        .push((id, (unit.id as u32, block.file_row.at(i))));
                    if keep {
                        read.stored.push(StoredRow {
                            id,
                            key: text,
                            x: block.raw[i * p..(i + 1) * p].to_vec(),
                            y: block.label.at(i),
                            class: None,
                            slots: Vec::new(),
                            place: None,
                        });
                    }
                }
            }
            first_row += batch.num_rows() as u64;
        }
        read.changes.inserted.push(stats);
    }
    Ok(read)
}

/// A naive Bayes row's class and token slots, read from a decoded block.
pub fn class_row(block: &Block, i: usize) -> (String, Vec<u32>) {
    let c = block.c;
    let slots = block.hashed[i * c..(i + 1) * c]
        .iter()
        .zip(&block.signs[i * c..(i + 1) * c])
        .filter(|(_, &s)| s != 0.0)
        .map(|(&h, _)| h)
        .collect();
    (block.tokens[i].clone(), slots)
}

/// The error for a negative value given to `multinomial_nb`, if row `i`
/// of `block` has one.
pub fn negative_count(spec: &FeatureSpec, block: &Block, i: usize, origin: &Origin) -> Result<()> {
    let p = block.p;
    match block.raw[i * p..(i + 1) * p].iter().position(|&v| v < 0.0) {
        None => Ok(()),
        Some(j) => Err(Error::MissingValue {
            location: Box::new(Location {
                file: origin.file.to_path_buf(),
                row_group: origin.row_group,
                column: Some(spec.numeric[j].name.clone()),
                row: Some(block.file_row.at(i)),
            }),
            what: format!("a negative value ({})", block.raw[i * p + j]),
            hint: "multinomial_nb takes counts or frequencies (values ≥ 0): use gaussian_nb for other values".into(),
        }),
    }
}

/// Reads a batch of naive Bayes rows into this unit's statistics (and
/// the keys and stored rows of `read`).
#[allow(clippy::too_many_arguments)]
fn read_class_rows(
    kind: ModelKind,
    spec: &FeatureSpec,
    batch: &RecordBatch,
    origin: &Origin,
    key: Option<&str>,
    (unit, row_group): (u32, usize),
    keep: bool,
    stats: &mut Normal,
    read: &mut Read,
) -> Result<()> {
    let block = decode_raw(batch, spec, LabelUse::Tokens, origin)?;
    let keys = match key {
        Some(k) => Some(keys_of(batch, k, origin)?),
        None => None,
    };
    let p = block.p;
    for i in 0..block.rows {
        if kind == ModelKind::MultinomialNb {
            negative_count(spec, &block, i, origin)?;
        }
        let row = block.file_row.at(i);
        let text = keys
            .as_ref()
            .map(|k| k[(row - origin.first_row) as usize].clone());
        let digest = text.as_deref().map(KeyDigest::of).unwrap_or_default();
        let (class, slots) = class_row(&block, i);
        let x = &block.raw[i * p..(i + 1) * p];
        stats
            .add_class_row(&digest, x, &class, &slots)
            .map_err(|e| too_large(e, spec, origin.file, Some(row_group), row))?;
        if let Some(text) = text {
            let id = digest.id();
            read.changes.keys.push((id, (unit, row)));
            if keep {
                read.stored.push(StoredRow {
                    id,
                    key: text,
                    x: x.to_vec(),
                    y: 0.0,
                    class: Some(class),
                    slots,
                    place: None,
                });
            }
        }
    }
    Ok(())
}

/// The job a state belongs to.
pub(crate) fn stamp(pipeline: &Pipeline, spec: &FeatureSpec, key: &str) -> JobStamp {
    let nb = pipeline.model.kind.is_naive_bayes();
    JobStamp {
        label: spec.label.clone(),
        key: key.to_string(),
        features: spec.numeric.iter().map(|f| f.name.clone()).collect(),
        on_missing: pipeline.data.on_missing.name().to_string(),
        // The naive Bayes kinds keep the same sums, but multinomial_nb
        // refuses negative values as they enter: a state is one kind's.
        statistics: if pipeline.optimizer != crate::spec::OptimizerSpec::Exact {
            refit::ROWS
        } else if nb {
            pipeline.model.kind.name()
        } else {
            "linear"
        }
        .into(),
        categorical: spec.categorical.clone(),
        hash_bits: if spec.categorical.is_empty() {
            0
        } else {
            spec.hash_bits
        },
    }
}

/// Solves the ridge problem of `pipeline` on the rows of `stats`.
pub fn solve_ridge(
    pipeline: &Pipeline,
    draft: &FeatureSpec,
    stats: &Normal,
) -> std::result::Result<solve::Solution, Unsolvable> {
    let p = draft.numeric.len();
    let ridge = Ridge {
        l2: pipeline.model.l2,
        fit_intercept: pipeline.model.fit_intercept,
        standardize: pipeline.data.standardize,
    };
    let names = |j: usize| match draft.numeric.get(j) {
        Some(f) => f.name.clone(),
        None => draft.label.clone(),
    };
    solve::solve(stats, p, ridge, &names)
}

/// Solves the model of `stats` and builds its file (`what` names the
/// data in a "no rows" error).
pub fn model_of(
    pipeline: &Pipeline,
    draft: &FeatureSpec,
    stats: &Normal,
    what: &str,
) -> Result<ModelFile> {
    let no_rows = || Error::NoRows {
        what: what.to_string(),
        purpose: "train on".into(),
    };
    let summary = |objective: Option<f64>| TrainingSummary {
        epochs: 0,
        rows: stats.rows.max(0) as u64,
        objective,
        optimizer: "exact".into(),
        l2: pipeline.model.l2,
        l1: 0.0,
        data: pipeline.data.key.as_ref().map(|key| DataStamp {
            key: key.clone(),
            rows: stats.rows.max(0) as u64,
            keys_blake3_sum: stats.keys.hex(),
        }),
    };
    if pipeline.model.kind.is_naive_bayes() {
        let (model, spec) = bayes::fit(&pipeline.model, draft, stats).map_err(|e| match e {
            Unsolvable::NoRows => no_rows(),
            Unsolvable::Range(message) => Error::Unsolvable { message },
            Unsolvable::Collinear(_) => Error::Internal("naive Bayes solves no system".into()),
        })?;
        return Ok(model.to_file(&spec, summary(None)));
    }
    let solution = solve_ridge(pipeline, draft, stats).map_err(|e| match e {
        Unsolvable::NoRows => no_rows(),
        Unsolvable::Range(message) => Error::Unsolvable { message },
        Unsolvable::Collinear(j) => Error::Unsolvable {
            message: format!(
                "feature '{}' is a linear combination of the features before it on these rows{}: drop the column{}",
                draft.numeric[j].name,
                if pipeline.model.l2 == 0.0 { " and model.l2 = 0" } else { "" },
                if pipeline.model.l2 == 0.0 { " or set model.l2 > 0" } else { " or raise model.l2" },
            ),
        },
    })?;
    let mut spec = draft.clone();
    for (j, f) in spec.numeric.iter_mut().enumerate() {
        f.center = solution.center[j];
        f.scale = solution.scale[j];
    }
    spec.classes = None;
    let model = LinearModel {
        kind: ModelKind::Linear,
        layout: Layout::new(ModelKind::Linear, &spec),
        theta: solution.theta,
    };
    Ok(model.to_file(&spec, summary(Some(solution.objective))))
}

/// `tidemill train` with `optimizer.kind = "exact"`: reads every row once
/// (each worker its units), enters keys and statistics into the
/// collections, fails on a repeated key, solves, and — with `[output]
/// state` — writes the rows by key and the first generation of the state.
/// Every process calls this; the result is complete on process 0.
pub fn train(plan: Plan, cluster: &Cluster) -> Result<Option<Fitted>> {
    let plan = Arc::new(plan);
    let state = match &plan.pipeline.output.state {
        Some(dir) => Some((StateDir::open(dir)?, ())),
        None => None,
    };
    // Process 0 holds the directory's lock from here to the commit.
    let lock = match (&state, cluster.is_leader()) {
        (Some((s, ())), true) => Some(s.lock()?),
        _ => None,
    };
    let seq = match (&state, &plan.pipeline.data.key) {
        (Some((s, ())), Some(key)) => {
            retrainable(s, &stamp(&plan.pipeline, &plan.draft, key))?;
            s.next_seq()?
        }
        _ => 0,
    };
    let p = plan.draft.numeric.len();
    if p > crate::spec::EXACT_MAX_FEATURES && plan.pipeline.model.kind == ModelKind::Linear {
        return Err(Error::PipelineValue {
            key: "data.features".into(),
            message: format!(
                "{p} numeric features; 'exact' keeps every pair's cross-product and solves a p × p system per update, which is the right tool up to {} features: use lbfgs",
                crate::spec::EXACT_MAX_FEATURES
            ),
        });
    }
    let state_dir = plan.pipeline.output.state.clone();
    let rows_total: u64 = plan.train.units().iter().map(|u| u.rows as u64).sum();
    let buckets = store::buckets_for(rows_total);
    let shared = Arc::clone(&plan);
    let guards = cluster.execute(|| crate::train::job::describe(&shared, None), {
        let plan = Arc::clone(&plan);
        move |worker| -> Result<Seen> {
            let (index, peers) = (worker.index(), worker.peers());
            let keep = state_dir.is_some();
            let read = read_units(&plan, &plan.draft, index, peers, keep);
            // This worker's run is written (and synced) before its
            // changes enter the collections: once the collections'
            // time is complete on process 0, every run the generation
            // names is whole, whichever process wrote it.
            let read = read.and_then(|r| {
                if let Some(dir) = &state_dir {
                    StateDir::open(dir)?.write_run(
                        &StateDir::run_name(seq, index),
                        r.stored,
                        buckets,
                    )?;
                }
                Ok(r.changes)
            });
            // A failed worker still runs the collections (the others
            // wait for its inputs to close) and enters its failure,
            // which every worker learns.
            let changes = read.unwrap_or_else(|e| Changes {
                failed: Some(maintain::encode_failure(&e)),
                ..Changes::default()
            });
            let seen = maintain::run(worker, vec![changes])
                .into_iter()
                .next()
                .unwrap_or_default();
            match maintain::first_failure(&seen) {
                Some(e) => Err(e),
                None => Ok(seen),
            }
        }
    })?;
    let mut first: Option<Seen> = None;
    for r in cluster.join(guards)? {
        first.get_or_insert(r?);
    }
    let seen = first.ok_or_else(|| Error::Internal("no worker reported the statistics".into()))?;
    if let Some(message) = repeated_message(&plan, &seen.repeated) {
        return Err(Error::Keys {
            path: plan.train.reference().to_path_buf(),
            message,
        });
    }
    if !cluster.is_leader() {
        return Ok(None);
    }
    let draft = &plan.draft;
    let model = model_of(&plan.pipeline, draft, &seen.stats, &plan.train.describe())?;
    let pending = match (state, &plan.pipeline.data.key, lock) {
        (Some((dir, ())), Some(key), Some(lock)) => {
            let generation = Generation {
                version: STATE_VERSION,
                job: stamp(&plan.pipeline, draft, key),
                stats: seen.stats.clone(),
                runs: (0..cluster.total_workers())
                    .map(|w| StateDir::run_name(seq, w))
                    .collect(),
                forgotten: BTreeMap::new(),
                source: None,
                extended: false,
                stream: None,
                unmatched: Default::default(),
            };
            Some(PendingState {
                dir,
                seq,
                generation,
                keep: 2,
                _lock: lock,
            })
        }
        _ => None,
    };
    Ok(Some(Fitted {
        model,
        stats: seen.stats,
        state: pending,
    }))
}

/// Fails if generation `g` of the state at `dir` is one only a stream
/// continues: that of a stream that has not ended (`stream --resume`
/// continues it; anything else would lose where it was), or a window's
/// (its rows are the window's, and a window keeps them by their times).
pub(crate) fn stream_only(dir: &Path, g: &Generation, command: &str) -> Result<()> {
    let Some(mark) = &g.stream else {
        return Ok(());
    };
    let message = if !mark.ended {
        format!(
            "the state's newest generation is a checkpoint of a stream that has not ended (at row {} of its input): finish it with `tidemill stream ... --resume` (or give up the rest of its input with `tidemill stream ... --abandon`) before `{command}`",
            mark.source_rows
        )
    } else if let Some(w) = &mark.window {
        format!(
            "the state is a windowed stream's (window {}): only a stream with that window continues it, not `{command}` (forget keys with `tidemill stream --retract`)",
            w.spec
        )
    } else {
        return Ok(());
    };
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        message,
    })
}

/// Fails unless training into the state `dir` loses nothing: its newest
/// generation (if any) must be this job's, have no forgotten keys (the
/// data may still hold them) and no rows a stream added (the data does
/// not hold them).
pub(crate) fn retrainable(dir: &StateDir, job: &JobStamp) -> Result<()> {
    let Some((_, g)) = dir.newest()? else {
        return Ok(());
    };
    stream_only(dir.dir(), &g, "train")?;
    let refuse = |message: String| {
        Err(Error::Checkpoint {
            path: dir.dir().to_path_buf(),
            message,
        })
    };
    if g.job != *job {
        return refuse(format!(
            "this state belongs to another job (statistics '{}', label '{}', key '{}'): train into a new state directory",
            g.job.statistics, g.job.label, g.job.key
        ));
    }
    if !g.forgotten.is_empty() {
        return refuse(format!(
            "this state has {} forgotten key(s); training again from data.train would bring back those still there: remove them from the data and train into a new state directory",
            g.forgotten.len()
        ));
    }
    if g.extended {
        return refuse(
            "a stream added rows to this state that data.train does not hold; training again would drop them: train into a new state directory".into(),
        );
    }
    Ok(())
}

/// The message for keys that occur more than once, naming where.
fn repeated_message(plan: &Plan, repeated: &[(u128, RowRef)]) -> Option<String> {
    if repeated.is_empty() {
        return None;
    }
    let mut by_key: BTreeMap<u128, BTreeSet<RowRef>> = BTreeMap::new();
    for (k, at) in repeated {
        by_key.entry(*k).or_default().insert(*at);
    }
    let units = plan.train.units();
    let place = |(unit, row): RowRef| {
        let file = units
            .get(unit as usize)
            .map(|u| plan.train.unit_path(u).display().to_string())
            .unwrap_or_default();
        format!("{file} row {row}")
    };
    // In data order: by each key's first occurrence.
    let mut groups: Vec<&BTreeSet<RowRef>> = by_key.values().collect();
    groups.sort();
    let shown: Vec<String> = groups
        .into_iter()
        .take(5)
        .map(|at| {
            at.iter()
                .map(|a| place(*a))
                .collect::<Vec<_>>()
                .join(" and ")
        })
        .collect();
    Some(format!(
        "{} key(s) of data.key = '{}' occur more than once (a key names one row): {}{}",
        by_key.len(),
        plan.pipeline.data.key.as_deref().unwrap_or(""),
        shown.join("; "),
        if by_key.len() > 5 { "; …" } else { "" }
    ))
}

/// Up to 10 keys, quoted and sorted, for a message ("… and N more").
pub(crate) fn list_keys(keys: &[&String]) -> String {
    let mut names: Vec<String> = keys.iter().map(|k| format!("'{k}'")).collect();
    names.sort();
    let more = names.len().saturating_sub(10);
    names.truncate(10);
    if more > 0 {
        format!("{} and {more} more", names.join(", "))
    } else {
        names.join(", ")
    }
}

/// Opens a table of keys (`-` for stdin) and picks its key column: the
/// one named like `data.key` (`key`), or the only one.
pub fn key_table(path: &str, key: &str) -> Result<(crate::io::table::TableInput, String)> {
    let input = crate::io::table::open(path, &crate::io::table::CsvColumns::Numeric(Vec::new()))?;
    let names: Vec<&str> = input
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let column = if names.contains(&key) {
        key.to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        let hint = crate::error::hint(key, &names);
        return Err(Error::Keys {
            path: PathBuf::from(path),
            message: format!(
                "no column '{key}' (data.key) among {}{hint}",
                names.join(", ")
            ),
        });
    };
    Ok((input, column))
}

/// The keys of one batch of a key table (see [`key_table`]).
pub fn table_keys(
    batch: &RecordBatch,
    origin: &crate::io::table::BatchOrigin,
    column: &str,
) -> Result<Vec<String>> {
    let o = Origin {
        file: &origin.path,
        row_group: origin.row_group,
        first_row: origin.first_row,
    };
    keys_of(batch, column, &o)
}

/// Reads every key of a key table (see [`key_table`]).
pub fn read_keys(path: &str, key: &str) -> Result<Vec<String>> {
    let (input, column) = key_table(path, key)?;
    let mut keys = Vec::new();
    for batch in input {
        let (batch, origin) = batch?;
        keys.extend(table_keys(&batch, &origin, &column)?);
    }
    Ok(keys)
}

/// A forget request, checked against the state it applies to.
struct Request {
    dir: StateDir,
    dir_path: PathBuf,
    lock: std::fs::File,
    seq: u64,
    generation: Generation,
    plan: Plan,
    key: String,
    keys: Vec<String>,
}

/// Opens the state of `pipeline` (locked) and reads the keys of
/// `keys_path`: the state must be this job's, and no key listed twice.
fn open_request(pipeline: &Pipeline, keys_path: &str) -> Result<Request> {
    let (dir_path, key) = match (&pipeline.output.state, &pipeline.data.key) {
        (Some(d), Some(k)) => (d.clone(), k.clone()),
        (None, _) => {
            return Err(Error::PipelineValue {
                key: "output.state".into(),
                message: "forget continues from a state: name its directory".into(),
            })
        }
        (_, None) => {
            return Err(Error::PipelineValue {
                key: "data.key".into(),
                message: "forget names rows by their key: name the key column".into(),
            })
        }
    };
    if !dir_path.is_dir() {
        return Err(Error::Checkpoint {
            path: dir_path.clone(),
            message: "no state here: run `tidemill train` with this pipeline first".into(),
        });
    }
    let dir = StateDir::open(&dir_path)?;
    let lock = dir.lock()?;
    let Some((seq, generation)) = dir.newest()? else {
        return Err(Error::Checkpoint {
            path: dir_path.clone(),
            message: "no state generation here: run `tidemill train` with this pipeline first"
                .into(),
        });
    };
    stream_only(&dir_path, &generation, "forget")?;
    let plan = Plan::new(pipeline.clone())?;
    let job = stamp(pipeline, &plan.draft, &key);
    if job != generation.job {
        let describe = |j: &JobStamp| {
            format!(
                "statistics '{}', label '{}', key '{}', features [{}], categorical [{}], on_missing {}",
                j.statistics,
                j.label,
                j.key,
                j.features.join(", "),
                j.categorical.join(", "),
                j.on_missing
            )
        };
        return Err(Error::Checkpoint {
            path: dir_path.clone(),
            message: format!(
                "the state belongs to another job ({}); this pipeline has {}",
                describe(&generation.job),
                describe(&job)
            ),
        });
    }
    let keys = read_keys(keys_path, &key)?;
    // A key listed twice is a mistake in the request, told apart from a
    // key forgotten by an earlier command.
    let mut seen_here = BTreeSet::new();
    if let Some(k) = keys.iter().find(|k| !seen_here.insert(k.as_str())) {
        return Err(Error::Keys {
            path: PathBuf::from(keys_path),
            message: format!("key '{k}' is listed twice"),
        });
    }
    Ok(Request {
        dir,
        dir_path,
        lock,
        seq,
        generation,
        plan,
        key,
        keys,
    })
}

/// `tidemill forget`: retracts `keys` from the state of `pipeline` and
/// returns the model of the rows that remain, with the new generation of
/// the state to commit. Nothing changes if a key is not present. With
/// `erase`, the rows of every forgotten key (these and earlier ones) are
/// also removed from the state's runs ([`StateDir::erase`]), and the
/// commit keeps no older generation that names a run holding them.
pub fn forget(pipeline: &Pipeline, keys_path: &str, erase: bool) -> Result<Fitted> {
    let source = Path::new(keys_path);
    let Request {
        dir,
        dir_path,
        lock,
        seq,
        generation,
        plan,
        keys,
        ..
    } = open_request(pipeline, keys_path)?;
    let draft = plan.draft;
    let dir_path = &dir_path;
    let requested: Vec<(u128, String)> = keys
        .iter()
        .map(|k| (KeyDigest::of(k).id(), k.clone()))
        .collect();
    let ids: Vec<u128> = requested.iter().map(|(id, _)| *id).collect();
    let rows = dir.lookup(&generation, &ids)?;
    tracing::debug!(found = rows.len(), asked = ids.len(), "looked up");
    // Time 0: the part of the collections these keys touch (their rows
    // and any earlier forgetting of them); time 1: this request.
    let before = Changes {
        keys: rows.iter().map(|r| (r.id, (0, 0))).collect(),
        inserted: Vec::new(),
        rows: rows.iter().map(|r| (r.id, r.vals())).collect(),
        forgotten: ids
            .iter()
            .filter(|id| generation.forgotten.contains_key(id))
            .copied()
            .collect(),
        ..Changes::default()
    };
    let now = Changes {
        forgotten: ids.clone(),
        ..Changes::default()
    };
    let seen = timely::execute_directly(move |worker| maintain::run(worker, vec![before, now]));
    // Two times went in, so two answers come out; anything else is a bug,
    // never "nothing changed".
    let change = seen
        .get(1)
        .cloned()
        .ok_or_else(|| Error::Internal("the collections gave no answer for the request".into()))?;
    let list = |ids: &[u128]| {
        let keys: Vec<&String> = ids
            .iter()
            .filter_map(|id| requested.iter().find(|(i, _)| i == id).map(|(_, k)| k))
            .collect();
        list_keys(&keys)
    };
    if !change.again.is_empty() {
        return Err(Error::Keys {
            path: source.to_path_buf(),
            message: format!(
                "{} key(s) were forgotten already: {} (nothing changed)",
                change.again.len(),
                list(&change.again)
            ),
        });
    }
    let unknown: Vec<u128> = change
        .unknown
        .iter()
        .filter(|(_, d)| *d > 0)
        .map(|(k, _)| *k)
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Keys {
            path: source.to_path_buf(),
            message: format!(
                "{} key(s) were never inserted into the state {}: {} (nothing changed)",
                unknown.len(),
                dir_path.display(),
                list(&unknown)
            ),
        });
    }
    let mut stats = generation.stats.clone();
    differential_dataflow::difference::Semigroup::plus_equals(&mut stats, &change.stats);
    let model = model_of(pipeline, &draft, &stats, &dir_path.display().to_string())?;
    let mut next = generation;
    next.stats = stats.clone();
    next.forgotten.extend(requested);
    // An ended stream's mark is history now: a `stream --resume` after
    // this starts its input at the beginning (stream_only refused the
    // marks that must stay).
    next.stream = None;
    let mut keep = 2;
    if erase {
        // Every forgotten key, unmatched ones too: a stream may have
        // brought a row with one since (it left at once, but a run holds
        // it). The buckets read are those the keys hash to.
        let targets: BTreeSet<u128> = next.forgotten.keys().copied().collect();
        let (runs, removed) = dir.erase(seq + 1, &next.runs, &targets)?;
        tracing::info!(rows = removed.len(), "erased from the state's runs");
        next.runs = runs;
        next.unmatched.extend(removed);
        keep = 1;
    }
    Ok(Fitted {
        model,
        stats,
        state: Some(PendingState {
            dir,
            seq: seq + 1,
            generation: next,
            keep,
            _lock: lock,
        }),
    })
}
