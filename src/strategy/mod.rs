//! Distribution strategies: one module per strategy, each owning its
//! policy, behind the [`Strategy`] trait.
//!
//! * [`allreduce`] — synchronous: every step sums all workers' gradients,
//!   folded by shard owners, parameters broadcast back.
//! * [`param_server`] — bounded staleness: workers run up to `staleness`
//!   steps ahead of the slowest, reading the freshest shards that arrived.
//! * [`model_average`] — workers step local replicas for `sync_every`
//!   steps; owners average them.
//! * [`model_parallel`] — features and weights split into one block per
//!   worker; partial margins are exchanged instead of parameters.
//!
//! The first three share the sharded-parameter loop of [`sharded`] (with
//! the owners' round state machine in [`driver`]) and differ only in the
//! policy they give it. Adding a strategy means a variant of
//! [`crate::spec::Strategy`], a module implementing [`Strategy`], and its
//! line in [`of`].

pub mod allreduce;
pub mod blocks;
pub mod driver;
pub mod model_average;
pub mod model_parallel;
pub mod network_parallel;
pub mod param_server;
pub mod progress;
pub mod sharded;
pub mod snapshot;

use std::sync::Arc;

use timely::worker::Worker;

use crate::checkpoint::store::Store;
use crate::data::cache::Scanned;
use crate::data::encode::FeatureSpec;
use crate::data::partition::StepPlan;
use crate::dataflow::gradient::FinalParams;
use crate::dataflow::liveness::Heartbeat;
use crate::dataflow::scan::ScanResult;
use crate::dataflow::snapshot::Cadence;
use crate::dataflow::Failure;
use crate::error::Error;
use crate::metrics::sink::EpochRecord;
use crate::model::{self, Model};
use crate::plan::Plan;
use crate::spec::{self, ModelSpec, TrainSpec};
use snapshot::Saved;

/// What every strategy trains from, the same on every worker.
pub struct LoopInput<'a> {
    /// The job.
    pub plan: Arc<Plan>,
    /// The final feature spec (statistics applied).
    pub spec: FeatureSpec,
    /// The statistics scan.
    pub scan: &'a ScanResult,
    /// The units the scan decoded on this worker, for the first cached
    /// epoch (`crate::data::cache::WorkerData::with_scanned`).
    pub scanned: Scanned,
    /// Starting parameters (warm start), the whole vector; zero if `None`.
    pub init: Option<&'a [f64]>,
    /// Training rows per unit.
    pub rows: Vec<usize>,
    /// The epoch's steps ([`step_plan`]).
    pub steps: StepPlan,
    /// This worker's heartbeat (several processes): the loop steps its
    /// dataflow through [`crate::dataflow::liveness::run`] with it.
    pub heartbeat: Option<&'a mut Heartbeat>,
    /// Checkpoints, if the job takes them.
    pub checkpoints: Option<Checkpointing>,
    /// A resumed job: the checkpoint it continues from.
    pub resume: Option<Arc<Saved>>,
}

/// A job's checkpoints, as a strategy's loop needs them.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// When they fall.
    pub cadence: Cadence,
    /// How many to keep.
    pub keep: usize,
    /// Where they go: on worker 0 only (the one that writes them).
    pub store: Option<Store>,
    /// The job description they carry (canonical JSON).
    pub identity: Arc<String>,
}

impl LoopInput<'_> {
    /// The model at the starting parameters ([`model::build`]): the
    /// checkpoint's when resuming, else `init`; a strategy that holds the
    /// whole model builds it, one that splits it does not.
    pub fn model(&self) -> Result<Box<dyn Model>, Failure> {
        let spec = &self.plan.pipeline.model;
        match &self.resume {
            Some(saved) => model::build(spec, &self.spec, Some(&saved.params())),
            None => model::build(spec, &self.spec, self.init),
        }
        .map_err(|e| Failure::from(&Error::Internal(e)))
    }

    /// The roles of the model's parameters, without building it.
    pub fn roles(&self) -> model::Roles {
        model::roles(&self.plan.pipeline.model, &self.spec)
    }

    /// True if validation rows exist.
    pub fn has_validation(&self) -> bool {
        self.plan.validation_fraction.is_some() || self.plan.validation_files.is_some()
    }

    /// The reference validation labels are taken relative to (regression:
    /// the training label mean).
    pub fn label_ref(&self) -> Option<f64> {
        (self.scan.label.n > 0).then(|| self.scan.label.mean())
    }
}

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

/// A way of distributing training over the workers.
pub trait Strategy: Sync {
    /// The name in pipeline files.
    fn name(&self) -> &'static str;

    /// Builds and runs the training dataflow on this worker.
    fn train(&self, worker: &mut Worker, input: LoopInput<'_>) -> Result<LoopOutcome, Failure>;

    /// True if the strategy takes checkpoints (`[output] checkpoint`).
    fn checkpoints(&self) -> bool {
        true
    }

    /// True if a checkpoint of a job with these `[train]` settings resumes
    /// on another worker count with the model an uninterrupted run on the
    /// writing count makes.
    fn resumes_on_any_worker_count(&self, _train: &TrainSpec) -> bool {
        true
    }

    /// Why a checkpoint resumes only on the worker count that wrote it
    /// (where [`Self::resumes_on_any_worker_count`] is false), for the
    /// message that refuses another count.
    fn one_worker_count_reason(&self) -> &'static str {
        "its workers keep state of their own"
    }

    /// Parameters one worker holds on `workers` workers, for a `kind`
    /// model of these features: the whole vector unless the strategy
    /// splits the model.
    fn params_per_worker(&self, model: &ModelSpec, features: &FeatureSpec, _workers: usize) -> u64 {
        model::param_count(model, features) as u64
    }

    /// What to do when each worker would hold more than `budget` parameters.
    fn over_budget_hint(
        &self,
        _model: &ModelSpec,
        _features: &FeatureSpec,
        _budget: u64,
    ) -> String {
        "set train.strategy = \"model-parallel\": each worker then holds one block of the weights"
            .into()
    }

    /// What to do when the workers of a process would not fit in memory.
    fn out_of_memory_hint(&self) -> &'static str {
        "set train.strategy = \"model-parallel\" (each worker then holds one block), or lower data.hash_bits"
    }

    /// True if every worker reads every row (its own columns of it), false
    /// if each reads its partition of the rows.
    fn reads_every_row(&self) -> bool {
        false
    }
}

/// The implementation of a pipeline's strategy.
pub fn of(strategy: spec::Strategy) -> &'static dyn Strategy {
    match strategy {
        spec::Strategy::Allreduce => &allreduce::Allreduce,
        spec::Strategy::ParamServer => &param_server::ParamServer,
        spec::Strategy::ModelAverage => &model_average::ModelAverage,
        spec::Strategy::ModelParallel => &model_parallel::ModelParallel,
    }
}

/// The epoch's steps: waves of `units_per_step` units, `⌈rows / batch_size⌉`
/// steps per wave for mini-batch methods, one full-batch step for L-BFGS.
pub fn step_plan(pipeline: &spec::Pipeline, train_rows: &[usize]) -> StepPlan {
    let batch = pipeline.optimizer.first_order().map(|f| f.batch_size);
    StepPlan::new(train_rows, batch, pipeline.data.units_per_step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_of_the_pipeline_has_its_module() {
        for s in [
            spec::Strategy::Allreduce,
            spec::Strategy::ParamServer,
            spec::Strategy::ModelAverage,
            spec::Strategy::ModelParallel,
        ] {
            assert_eq!(of(s).name(), s.name());
        }
        // 3 classes, 2 numeric features and 2^4 hashed slots: 3 × (1 + 18).
        let features = FeatureSpec {
            label: "y".into(),
            numeric: ["a", "b"]
                .map(|n| crate::data::encode::NumericFeature {
                    name: n.into(),
                    fill: 0.0,
                    center: 0.0,
                    scale: 1.0,
                })
                .to_vec(),
            categorical: vec!["c".into()],
            crosses: Vec::new(),
            hash_bits: 4,
            on_missing: spec::OnMissing::Zero,
            classes: Some(vec!["x".into(), "y".into(), "z".into()]),
            weight: None,
        };
        let kind = ModelSpec {
            kind: spec::ModelKind::Softmax,
            l2: 0.0,
            l1: 0.0,
            fit_intercept: true,
            alpha: 0.0,
            var_smoothing: 0.0,
            network: None,
            class_weight: None,
        };
        assert_eq!(
            of(spec::Strategy::Allreduce).params_per_worker(&kind, &features, 4),
            57
        );
        // The largest of 4 blocks: 3 × (1 + ⌈18 / 4⌉).
        assert_eq!(
            of(spec::Strategy::ModelParallel).params_per_worker(&kind, &features, 4),
            18
        );
        assert!(of(spec::Strategy::ModelParallel).reads_every_row());
        assert!(!of(spec::Strategy::ParamServer).reads_every_row());
    }
}
