//! Running a training job: plan on the calling thread, then one timely
//! computation per process (statistics scan, then the training loop), and
//! the results of worker 0 turned into a model file and metric records.
//! With several processes, each first checks that the others run the same
//! job ([`job::describe`], compared in the cluster handshake), and every
//! worker keeps a heartbeat going through the job
//! ([`crate::dataflow::liveness`]).

pub mod job;
pub mod resume;
pub mod warm;

use std::sync::Arc;

use crate::checkpoint::store::Store;
use crate::cluster::{Cluster, JobDescription};
use crate::data::cache::Scanned;
use crate::data::encode::{number_token, FeatureSpec};
use crate::data::partition::{assign, assign_replicas, rows_per_worker, step_reach, waves};
use crate::dataflow::liveness::{Heartbeat, Watch};
use crate::dataflow::scan::{self, ScanResult};
use crate::dataflow::snapshot::Cadence;
use crate::dataflow::{Failure, Phase};
use crate::error::{Error, Location, Result};
use crate::metrics::sink::EpochRecord;
use crate::model::file::{ModelFile, TrainingSummary};
use crate::model::{self, Model};
use crate::optim::lbfgs::Convergence;
use crate::plan::Plan;
use crate::source::DataSource;
use crate::spec::{ModelKind, OnMissing, Partition, Pipeline};
use crate::strategy::snapshot::Saved;
use crate::strategy::{self, step_plan, Checkpointing, LoopInput};

/// What a training job produced (complete on process 0 only).
#[derive(Debug)]
pub struct TrainReport {
    /// The model file content (process 0).
    pub model: Option<ModelFile>,
    /// The trained model as it was in memory (process 0).
    pub fitted: Option<Box<dyn Model>>,
    /// Per-epoch records (process 0).
    pub records: Vec<EpochRecord>,
    /// Training rows.
    pub train_rows: u64,
    /// Validation rows.
    pub validation_rows: u64,
    /// Training rows per worker in epoch 0 (the skew users watch).
    pub rows_per_worker: Vec<u64>,
    /// Parameters each worker held during training (process 0): the full
    /// vector for the data-parallel strategies, one block for `model-parallel`.
    pub params_per_worker: Vec<u64>,
    /// Units in the training data.
    pub units: usize,
    /// L-BFGS: why it ended before its iteration limit, if it did (process 0).
    pub converged_by: Option<Convergence>,
}

/// Builds the final feature spec from the scan.
pub fn finalize(plan: &Plan, scan: &ScanResult) -> Result<FeatureSpec, Failure> {
    let d = &plan.pipeline.data;
    let rows: u64 = scan.train_rows.iter().sum();
    if rows == 0 {
        return Err(Failure::from(&Error::NoRows {
            what: plan.train.describe(),
            purpose: "train on".into(),
        }));
    }
    let mut spec = plan.draft.clone();
    for (j, (f, m)) in spec.numeric.iter_mut().zip(&scan.moments).enumerate() {
        // A feature whose statistics are not finite, named.
        let not_finite = |what: &str, mean: f64, m2: f64| {
            Failure::from(&Error::BadLabel {
                location: Box::new(Location {
                    file: plan.train.reference().to_path_buf(),
                    row_group: None,
                    column: Some(f.name.clone()),
                    row: None,
                }),
                message: format!(
                    "the {what} of the feature is not finite (mean {mean}, Σ squared deviations {m2})"
                ),
            })
        };
        if !m.is_finite() {
            return Err(not_finite("mean or variance", m.mean(), m.m2));
        }
        // A weighted job's rows count as their weights say.
        let (mean, sd) = match scan.weighted.get(j) {
            Some(w) if !w.is_finite() => {
                return Err(not_finite("weighted mean or variance", w.mean(), w.m2))
            }
            Some(w) => (w.mean(), w.std()),
            None => (m.mean(), m.std()),
        };
        f.fill = if d.on_missing == OnMissing::Mean {
            mean
        } else {
            0.0
        };
        if d.standardize {
            f.center = mean;
            f.scale = if sd > 0.0 { sd } else { 1.0 };
        }
    }
    let kind = plan.pipeline.model.kind;
    spec.classes = match kind {
        ModelKind::Linear => None,
        _ => match &d.classes {
            Some(c) => Some(c.clone()),
            None if kind != ModelKind::Softmax => Some(vec!["0".into(), "1".into()]),
            None => {
                let mut labels: Vec<String> = scan.labels.iter().cloned().collect();
                let numeric: Option<Vec<f64>> =
                    labels.iter().map(|l| l.parse::<f64>().ok()).collect();
                if let Some(mut v) = numeric {
                    v.sort_by(f64::total_cmp);
                    labels = v.into_iter().map(number_token).collect();
                }
                if labels.len() < 2 {
                    return Err(Failure::from(&Error::BadLabel {
                        location: Box::new(Location {
                            file: plan.train.reference().to_path_buf(),
                            row_group: None,
                            column: Some(d.label.clone()),
                            row: None,
                        }),
                        message: format!(
                            "softmax needs at least 2 label classes; the training rows of {} have {} ([{}])",
                            plan.train.describe(),
                            labels.len(),
                            labels.join(", ")
                        ),
                    }));
                }
                Some(labels)
            }
        },
    };
    if let Some(w) = spec.weight.as_mut() {
        *w = weighting(plan, scan, spec.classes.as_deref(), w.column.clone())
            .map_err(|e| Failure::from(&e))?;
    }
    Ok(spec)
}

/// The class weights and scale of a weighted job (`data.weight`,
/// `model.class_weight`), from the scan's totals.
fn weighting(
    plan: &Plan,
    scan: &ScanResult,
    classes: Option<&[String]>,
    column: Option<String>,
) -> Result<crate::data::encode::Weighting> {
    use crate::spec::ClassWeight;
    let totals = scan.weights.clone().unwrap_or_default();
    // A numeric label's classes are numbers (`1` is `1.0`); a string
    // label's are its strings (`01` is not `1`).
    let numeric = !plan.string_label;
    let same = |a: &str, b: &str| {
        a == b
            || (numeric && matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if x == y))
    };
    // Rows and weight total of each class, in class order (one bucket for
    // a regression).
    let per_class: Vec<(u64, f64)> = match classes {
        Some(names) => names
            .iter()
            .map(|c| {
                totals
                    .iter()
                    .filter(|(k, _)| same(k, c))
                    .fold((0, 0.0), |(r, w), (_, (rows, sum))| (r + rows, w + sum))
            })
            .collect(),
        None => vec![totals
            .values()
            .fold((0, 0.0), |(r, w), (rows, sum)| (r + rows, w + sum))],
    };
    let rows: u64 = per_class.iter().map(|c| c.0).sum();
    let key = "model.class_weight";
    let class: Vec<f64> = match (&plan.pipeline.model.class_weight, classes) {
        (None, _) | (_, None) => Vec::new(),
        (Some(ClassWeight::Balanced), Some(_)) => {
            // scikit-learn: n / (k · n_c), k the classes with rows.
            let present = per_class.iter().filter(|c| c.0 > 0).count() as f64;
            per_class
                .iter()
                .map(|&(n_c, _)| {
                    if n_c == 0 {
                        1.0
                    } else {
                        rows as f64 / (present * n_c as f64)
                    }
                })
                .collect()
        }
        (Some(ClassWeight::Given(table)), Some(names)) => {
            if let Some(c) = table.keys().find(|c| !names.iter().any(|n| same(n, c))) {
                let listed: Vec<&str> = names.iter().map(String::as_str).collect();
                let hint = crate::error::hint(c, &listed);
                return Err(Error::PipelineValue {
                    key: key.into(),
                    message: format!(
                        "'{c}' is not a class of the training rows ({}){hint}",
                        names.join(", ")
                    ),
                });
            }
            let mut weights = Vec::with_capacity(names.len());
            for n in names {
                let named: Vec<(&String, &f64)> =
                    table.iter().filter(|(c, _)| same(n, c)).collect();
                if let [(a, _), (b, _), ..] = named.as_slice() {
                    return Err(Error::PipelineValue {
                        key: key.into(),
                        message: format!("'{a}' and '{b}' both name class '{n}'"),
                    });
                }
                weights.push(named.first().map_or(1.0, |(_, w)| **w));
            }
            weights
        }
    };
    let total: f64 = per_class
        .iter()
        .enumerate()
        .map(|(k, &(_, w))| w * class.get(k).copied().unwrap_or(1.0))
        .sum();
    if !(total.is_finite() && total > 0.0 && (rows as f64 / total).is_finite()) {
        return Err(Error::PipelineValue {
            key: if column.is_some() { "data.weight" } else { key }.into(),
            message: format!(
                "the training rows' weights sum to {total}: at least one row must weigh more than 0, and the sum must be finite"
            ),
        });
    }
    Ok(crate::data::encode::Weighting {
        column,
        class,
        scale: rows as f64 / total,
    })
}

struct WorkerResult {
    model: Option<(ModelFile, Box<dyn Model>)>,
    records: Vec<EpochRecord>,
    held: Vec<u64>,
    rows: (u64, u64),
    unit_rows: Vec<usize>,
    converged_by: Option<Convergence>,
}

/// A job's checkpoints and the one it resumes from, as every worker sees
/// them.
#[derive(Debug, Default)]
struct Recovery {
    /// Checkpoints, if the job takes them (the store on process 0 only).
    checkpoints: Option<Checkpointing>,
    /// The checkpoint the job resumes from.
    resume: Option<Arc<Saved>>,
}

fn worker_main(
    worker: &mut timely::worker::Worker,
    plan: &Arc<Plan>,
    init: Option<&warm::InitModel>,
    local_workers: usize,
    watch: Option<&Watch>,
    recovery: &Recovery,
) -> Result<WorkerResult, Failure> {
    // First, so that every worker builds its dataflows in the same order.
    let mut heartbeat = watch.map(|w| Heartbeat::start(worker, w));
    if worker.index() == 0 {
        crate::dataflow::hooks::inject_panic("worker");
    }
    // A resumed job has its statistics from the checkpoint.
    let (scan, scanned) = match &recovery.resume {
        Some(saved) => (saved.scan.clone(), Scanned::none()),
        None => scan::run(worker, plan, heartbeat.as_mut())?,
    };
    let spec = finalize(plan, &scan)?;
    if worker.index() == 0 && !plan.pipeline.data.standardize {
        warn_coarse_features(&spec, &scan);
    }
    if worker.index() == 0 {
        hint_lazy_updates(&plan.pipeline, &spec);
    }
    check_budget(&plan.pipeline, &spec, worker.peers())?;
    check_memory(
        &plan.pipeline,
        &spec,
        worker.peers(),
        local_workers,
        scan.memory,
    )?;
    let init = match init {
        Some(m) => Some(
            m.theta(&plan.pipeline.model, &spec)
                .map_err(|e| Failure::from(&e))?,
        ),
        // A network starts from its seeded weights, the same on every
        // worker (a linear model from zero); split by units, each worker
        // draws its own slice's.
        None if plan.pipeline.model.network.is_some()
            && plan.pipeline.train.strategy != crate::spec::Strategy::ModelParallel =>
        {
            Some(
                model::build(&plan.pipeline.model, &spec, None)
                    .map_err(|e| Failure::from(&Error::Internal(e)))?
                    .params()
                    .to_vec(),
            )
        }
        None => None,
    };
    let init = init.as_deref();
    let rows: Vec<usize> = scan.train_rows.iter().map(|&r| r as usize).collect();
    if worker.index() == 0 {
        warn_narrow_steps(&plan.pipeline, &rows, worker.peers());
    }
    let input = LoopInput {
        plan: Arc::clone(plan),
        spec: spec.clone(),
        scan: &scan,
        scanned,
        init,
        steps: step_plan(&plan.pipeline, &rows),
        rows,
        checkpoints: recovery.checkpoints.clone().map(|mut c| {
            if worker.index() != 0 {
                c.store = None;
            }
            c
        }),
        resume: recovery.resume.clone(),
        heartbeat: heartbeat.as_mut(),
    };
    let outcome = strategy::of(plan.pipeline.train.strategy).train(worker, input);
    // The last dataflow has ended: say goodbye before the model is built.
    if let Some(h) = heartbeat {
        h.finish(worker);
    }
    let outcome = outcome?;
    let train_rows: u64 = scan.train_rows.iter().sum();
    let val_rows: u64 =
        scan.split_rows.iter().sum::<u64>() + scan.validation_rows.iter().sum::<u64>();
    let mut converged_by = None;
    let model = outcome.result.map(|fp| -> Result<_, Failure> {
        let model = model::build(&plan.pipeline.model, &spec, Some(&fp.theta))
            .map_err(|e| Failure::from(&Error::Internal(e)))?;
        let (epochs, objective) = match fp.phase {
            Phase::Final {
                epochs, objective, ..
            } => (epochs, objective),
            _ => (0, None),
        };
        converged_by = match fp.phase {
            Phase::Final { converged_by, .. } => converged_by,
            _ => None,
        };
        let summary = TrainingSummary {
            epochs,
            rows: train_rows,
            objective,
            optimizer: optimizer_name(&plan.pipeline),
            l2: plan.pipeline.model.l2,
            l1: plan.pipeline.model.l1,
            data: None,
        };
        Ok((model.to_file(&spec, summary), model))
    });
    let model = model.transpose()?;
    Ok(WorkerResult {
        model,
        records: outcome.records,
        held: outcome.held,
        rows: (train_rows, val_rows),
        unit_rows: scan.train_rows.iter().map(|&r| r as usize).collect(),
        converged_by,
    })
}

/// The job's checkpoints and the checkpoint it resumes from, and (when
/// computed for them) the job description the processes compare, which
/// then names the checkpoint resumed from: all processes must resume from
/// the same one.
fn recovery(
    plan: &Plan,
    init: Option<&warm::InitModel>,
    resume: bool,
    cluster: &Cluster,
) -> Result<(Recovery, Option<JobDescription>)> {
    let p = &plan.pipeline;
    let strategy = strategy::of(p.train.strategy);
    let Some(spec) = &p.output.checkpoint else {
        if resume {
            return Err(Error::Usage {
                option: "--resume".into(),
                message: "the pipeline takes no checkpoints: set output.checkpoint = \"DIR\" (or --set output.checkpoint=DIR)".into(),
            });
        }
        return Ok((Recovery::default(), None));
    };
    if !strategy.checkpoints() {
        return Err(Error::PipelineValue {
            key: "output.checkpoint".into(),
            message: format!(
                "train.strategy = \"{}\" does not take checkpoints yet; use \"allreduce\", \"param-server\" or \"model-average\" for a job that must survive failures",
                strategy.name()
            ),
        });
    }
    crate::checkpoint::hint::register(spec.dir.clone());
    // A first SIGINT or SIGTERM stops the job at a checkpoint (its workers
    // agree on the point from a round's messages).
    crate::io::signals::stop_at_checkpoint();
    let mut description = job::describe(plan, init)?;
    let identity = resume::canonical(&description.identity)?;
    if !resume {
        // A fresh job beside another run's checkpoints would have its own
        // pruned away as older, or resume into theirs later.
        let store = crate::checkpoint::store::Store::at(&spec.dir);
        if let Some(seq) = store.list().ok().and_then(|l| l.last().copied()) {
            return Err(Error::Usage {
                option: "output.checkpoint".into(),
                message: format!(
                    "{} already holds checkpoints (the newest is {}): pass --resume to continue from them, or remove them or choose another directory",
                    spec.dir.display(),
                    store.path(seq).display()
                ),
            });
        }
    }
    let resumed = if resume {
        let found = resume::load(
            &spec.dir,
            &identity,
            &description.labels,
            strategy,
            &plan.pipeline.train,
            cluster.total_workers(),
        )?;
        match &found {
            Some(r) => tracing::info!(
                checkpoint = %r.path.display(),
                epoch = r.saved.epoch(),
                written_by_workers = r.saved.workers,
                "resuming"
            ),
            None => tracing::info!(
                dir = %spec.dir.display(),
                "no checkpoint to resume from: training from the start"
            ),
        }
        found
    } else {
        None
    };
    if let serde_json::Value::Object(job) = &mut description.identity {
        let from = resumed.as_ref().map(|r| r.digest.clone());
        job.insert("resume_from".into(), serde_json::json!(from));
    }
    let store = match cluster.is_leader() {
        true => Some(Store::open(&spec.dir)?),
        false => None,
    };
    let recovery = Recovery {
        checkpoints: Some(Checkpointing {
            cadence: Cadence {
                every: spec.every,
                epochs: p.train.epochs,
            },
            keep: spec.keep,
            store,
            identity: Arc::new(identity),
        }),
        resume: resumed.map(|r| r.saved),
    };
    Ok((recovery, Some(description)))
}

/// Says, once, that eager steps of a wide hashed model will cost what the
/// live weights cost, where `optimizer.lazy = true` would make them cost
/// what the batch touches (momentum, Adam and AdaGrad with a penalty are
/// eager by default: lazy updates change those algorithms).
fn hint_lazy_updates(p: &Pipeline, spec: &FeatureSpec) {
    let Some(first) = p.optimizer.first_order() else {
        return;
    };
    if !first.lazy && spec.hashed_dim() >= 1 << 16 {
        tracing::info!(
            hashed_slots = spec.hashed_dim(),
            "every step visits every weight a row has touched so far; optimizer.lazy = true makes a step cost what its batch touches (for this optimizer a variant with lazy semantics: see docs/optimizers.md#lazy-updates)"
        );
    }
}

/// Warns about numeric features whose values, held as `f32` model inputs
/// without standardisation, keep little of their spread: Unix timestamps
/// around 1.6e9 land on steps of 128 s. (With `standardize`, centring
/// happens in `f64` first and nothing is lost.)
fn warn_coarse_features(spec: &FeatureSpec, scan: &ScanResult) {
    for (f, m) in spec.numeric.iter().zip(&scan.moments) {
        let (mean, std) = (m.mean(), m.std());
        if m.n == 0 || std <= 0.0 {
            continue;
        }
        // The spacing of f32 values near the largest typical magnitude.
        let step = (mean.abs() + 3.0 * std) * f64::from(f32::EPSILON);
        if step > 1e-3 * std {
            tracing::warn!(
                feature = %f.name,
                mean,
                std,
                f32_step = step,
                "values are held as f32 in steps of {step:.3e}, {:.2}% of their standard deviation: set data.standardize = true to keep their precision",
                100.0 * step / std
            );
        }
    }
}

/// Parameters one worker holds under the pipeline's strategy on `workers`
/// workers: the whole vector for the data-parallel strategies, the largest
/// block for `model-parallel`.
pub fn params_per_worker(p: &Pipeline, spec: &FeatureSpec, workers: usize) -> u64 {
    strategy::of(p.train.strategy).params_per_worker(&p.model, spec, workers)
}

/// Fails if a worker would hold more than `train.max_worker_params`.
fn check_budget(p: &Pipeline, spec: &FeatureSpec, workers: usize) -> Result<(), Failure> {
    let Some(budget) = p.train.max_worker_params else {
        return Ok(());
    };
    let held = params_per_worker(p, spec, workers);
    if held <= budget {
        return Ok(());
    }
    let total = model::param_count(&p.model, spec) as u64;
    let hint = strategy::of(p.train.strategy).over_budget_hint(&p.model, spec, budget);
    Err(Failure::from(&Error::PipelineValue {
        key: "train.max_worker_params".into(),
        message: format!(
            "the model has {total} parameters and each of the {workers} workers would hold {held} under {}, over the budget of {budget}; {hint}",
            p.train.strategy.name()
        ),
    }))
}

/// Bytes a worker holds per parameter at the least: the parameter itself
/// (`f64`) and its exact gradient accumulator (`i128`).
const BYTES_PER_PARAM: u64 = 8 + 16;

/// Fails, before anything of the model's size is allocated, if the workers
/// of one process would need more memory than the least any machine of the
/// job has available (`memory`, the same on every worker); an allocation of
/// that size would otherwise end in an out-of-memory abort.
fn check_memory(
    p: &Pipeline,
    spec: &FeatureSpec,
    workers: usize,
    local_workers: usize,
    memory: Option<u64>,
) -> Result<(), Failure> {
    let Some(available) = memory else {
        return Ok(());
    };
    let held = params_per_worker(p, spec, workers);
    // A worker training several model-average replicas holds an optimizer
    // state (at most two values per weight) for each, and their sum.
    let replicas_here = p
        .train
        .replicas
        .map_or(1, |r| r.div_ceil(workers.max(1)) as u64);
    let per_param = if replicas_here > 1 {
        BYTES_PER_PARAM + replicas_here * 16
    } else {
        BYTES_PER_PARAM
    };
    // Where every worker folds (the spec allows it only where it applies),
    // each also holds the whole optimizer state (at most two values per
    // weight).
    let per_param = per_param
        + if p.train.fold.every_worker(held as usize, workers) {
            16
        } else {
            0
        };
    let needed = held
        .saturating_mul(per_param)
        .saturating_mul(local_workers as u64);
    if needed <= available {
        return Ok(());
    }
    let hint = strategy::of(p.train.strategy).out_of_memory_hint();
    Err(Failure::from(&Error::Usage {
        option: "model size".into(),
        message: format!(
            "{local_workers} worker(s) holding {held} parameters each need at least {}, more than the {} of memory available; {hint}",
            crate::memory::human(needed),
            crate::memory::human(available)
        ),
    }))
}

/// The optimizer's name, as the model file gives it.
pub fn optimizer_name(p: &Pipeline) -> String {
    match p.optimizer {
        crate::spec::OptimizerSpec::Sgd(_) => "sgd",
        crate::spec::OptimizerSpec::Momentum { .. } => "momentum",
        crate::spec::OptimizerSpec::Adagrad { .. } => "adagrad",
        crate::spec::OptimizerSpec::Adam { .. } => "adam",
        crate::spec::OptimizerSpec::Ftrl { .. } => "ftrl",
        crate::spec::OptimizerSpec::Lbfgs { .. } => "lbfgs",
        crate::spec::OptimizerSpec::Exact => "exact",
    }
    .to_string()
}

/// Trains a pipeline on the given cluster. Every process calls this; the
/// report is complete on process 0.
pub fn run(pipeline: Pipeline, cluster: &Cluster) -> Result<TrainReport> {
    run_plan(Plan::new(pipeline)?, None, cluster)
}

/// [`run`] for a plan made already, starting from the saved model `init`
/// (a warm start) if there is one.
pub fn run_plan(
    plan: Plan,
    init: Option<warm::InitModel>,
    cluster: &Cluster,
) -> Result<TrainReport> {
    run_job(plan, init, false, cluster)
}

/// Warns when the data has fewer units than the workers (or replicas) it
/// is split over: some would train on no rows. Units are cut from row
/// groups (a small table often has one), and `data.max_unit_rows` cuts
/// them finer as a property of the data, so the model stays the same on
/// any worker count.
fn warn_idle_workers(plan: &Plan, workers: usize) {
    let p = &plan.pipeline;
    if strategy::of(p.train.strategy).reads_every_row() {
        return;
    }
    let units = plan.train.units.len();
    let (slots, what) = match p.train.replicas {
        Some(r) => (r, "replicas"),
        None => (workers, "workers"),
    };
    if units == 0 || units >= slots {
        return;
    }
    let rows: usize = plan.train.units.iter().map(|u| u.rows).sum();
    let finer = (rows / slots).max(1);
    tracing::warn!(
        units,
        rows,
        "the training data has {units} unit(s) for {slots} {what}: {} of them will train on no rows; cut units finer with --set data.max_unit_rows={finer} (a property of the data: the model stays the same on any worker count)",
        slots - units
    );
}

/// Warns when no mini-batch step reaches every worker: a step draws its
/// rows from the units of one wave (`data.units_per_step` of them), so only
/// the workers holding those units read rows in it and the others wait at
/// its barrier. On W1 (64 units) with the default of 4, 8 and 16 workers
/// trained no faster than 4 (docs/benchmarks.md#scaling-from-1-to-16-workers).
/// Names the smallest `units_per_step` whose every step reaches every
/// worker, if one is found. `rows` are the units' training rows (the
/// scan's), as the step plan and the workers' units use them.
///
/// `allreduce` and `param-server` only: `model-average` replicas meet once
/// every `sync_every` steps, not at every step, and `model-parallel` reads
/// every row on every worker. Fewer units than workers is
/// [`warn_idle_workers`]'s.
fn warn_narrow_steps(p: &Pipeline, rows: &[usize], workers: usize) {
    use crate::spec::Strategy;
    if !matches!(
        p.train.strategy,
        Strategy::Allreduce | Strategy::ParamServer
    ) || p.optimizer.first_order().is_none()
        || workers < 2
        || rows.len() < workers
    {
        return;
    }
    let owners = assign(rows, workers, p.data.partition, p.data.seed, 0);
    let per_step = p.data.units_per_step;
    let now = waves(rows.len(), per_step);
    let (_, widest) = step_reach(now, rows, &owners);
    if widest >= workers {
        return;
    }
    // Fewer waves, each of more units; the smallest units_per_step giving
    // each wave count (at most 256 tried, then one wave of every unit).
    let units = rows.len();
    let mut tried = 0;
    let wider = (1..now)
        .rev()
        .map(|k| units.div_ceil(k))
        .filter(|&u| {
            tried += 1;
            tried <= 256 || u == units
        })
        .find(|&u| step_reach(waves(units, u), rows, &owners).0 >= workers);
    let advice = match wider {
        Some(u) => format!(
            "--set data.units_per_step={u} reaches all of them in every step (it changes which rows form each batch, so the model's bits, not its optimum)"
        ),
        None => "no data.units_per_step reaches all of them with these units: cut them finer with data.max_unit_rows".into(),
    };
    // Under shuffle the units move between workers every epoch: this is the first's.
    let when = match p.data.partition {
        Partition::Shuffle => " in the first epoch",
        Partition::Slice => "",
    };
    tracing::warn!(
        units,
        units_per_step = per_step,
        "each step{when} reads rows on at most {widest} of {workers} workers (a step draws from {per_step} of the {units} units; the others wait at its barrier): {advice}"
    );
}

/// [`run_plan`], resuming from the newest checkpoint of the job if
/// `resume` and there is one (see [`resume::load`]).
pub fn run_job(
    plan: Plan,
    init: Option<warm::InitModel>,
    resume: bool,
    cluster: &Cluster,
) -> Result<TrainReport> {
    let plan = Arc::new(plan);
    let init = init.map(Arc::new);
    let (recovery, description) = recovery(&plan, init.as_deref(), resume, cluster)?;
    let recovery = Arc::new(recovery);
    let units = plan.train.units.len();
    warn_idle_workers(&plan, cluster.total_workers());
    let shared = Arc::clone(&plan);
    let start = init.clone();
    let local_workers = cluster.workers;
    let watch = Watch::of(cluster);
    let guards = cluster.execute(
        || match description {
            Some(d) => Ok(d),
            None => job::describe(&plan, init.as_deref()),
        },
        move |worker| {
            worker_main(
                worker,
                &shared,
                start.as_deref(),
                local_workers,
                watch.as_ref(),
                &recovery,
            )
        },
    )?;
    let mut report = TrainReport {
        model: None,
        fitted: None,
        records: Vec::new(),
        train_rows: 0,
        validation_rows: 0,
        rows_per_worker: Vec::new(),
        params_per_worker: Vec::new(),
        units,
        converged_by: None,
    };
    let mut first_failure: Option<Failure> = None;
    let mut unit_rows = Vec::new();
    for r in cluster.join(guards)? {
        match r {
            Err(f) => {
                first_failure.get_or_insert(f);
            }
            Ok(w) => {
                report.train_rows = w.rows.0;
                report.validation_rows = w.rows.1;
                unit_rows = w.unit_rows;
                if let Some((file, fitted)) = w.model {
                    report.model = Some(file);
                    report.fitted = Some(fitted);
                    report.records = w.records;
                    report.params_per_worker = w.held;
                    report.converged_by = w.converged_by;
                }
            }
        }
    }
    if let Some(f) = first_failure {
        return Err(f.into_error());
    }
    let d = &plan.pipeline.data;
    let workers = cluster.total_workers();
    report.rows_per_worker = if strategy::of(plan.pipeline.train.strategy).reads_every_row() {
        // Every worker reads every row (its own columns of it).
        vec![unit_rows.iter().sum::<usize>() as u64; workers]
    } else {
        let owners: Vec<usize> = assign_replicas(
            &unit_rows,
            workers,
            plan.pipeline.train.replicas,
            d.partition,
            d.seed,
            0,
        )
        .into_iter()
        .map(|(w, _)| w)
        .collect();
        rows_per_worker(&unit_rows, &owners, workers)
    };
    Ok(report)
}
