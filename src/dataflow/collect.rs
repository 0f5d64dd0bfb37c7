//! The metrics collector (worker 0): merges evaluation partials, writes the
//! epoch record, decides early stopping, and tells every shard owner.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Stream, StreamVec};

use super::rounds::Rounds;
use super::snapshot::{Cadence, CollectorState, CollectorStates};
use super::{Control, EvalMsg, Failure, Phase};
use crate::data::encode::Labels;
use crate::error::Error;
use crate::exact::Wide;
use crate::metrics::sink::EpochRecord;
use crate::metrics::{EvalPartial, MetricKind, Metrics};
use crate::spec::{EarlyStopping, ModelKind};

/// What the collector needs to know.
pub struct CollectContext {
    /// Model family (decides which metrics apply).
    pub kind: ModelKind,
    /// True if there are validation rows.
    pub has_validation: bool,
    /// Early stopping rule, if any.
    pub early_stopping: Option<EarlyStopping>,
    /// Where the records go (read by the caller on worker 0).
    pub records: Rc<RefCell<Vec<EpochRecord>>>,
    /// Checkpoints: when they fall, and where the collector leaves its
    /// state at each checkpointed boundary.
    pub checkpoints: Option<(Cadence, CollectorStates)>,
    /// A resumed job: the collector's state at the boundary it resumes
    /// from (the records in `records` already).
    pub resumed: Option<CollectorState>,
}

/// Extension trait: collect evaluation partials into metric records.
pub trait CollectMetrics<'scope> {
    /// Sends every [`EvalMsg`] to worker 0, finishes the metrics of each
    /// evaluation round and emits one [`Control`] per round.
    fn collect_metrics(self, ctx: CollectContext) -> StreamVec<'scope, u64, Control>;
}

/// The early-stopping rule: tracks the best value of the watched metric.
#[derive(Debug, Clone)]
pub struct EarlyStop {
    rule: Option<(MetricKind, EarlyStopping)>,
    best: Option<f64>,
    since: u32,
}

impl EarlyStop {
    /// The rule of a pipeline (`None`: never stop early).
    pub fn new(rule: Option<&EarlyStopping>, kind: ModelKind) -> EarlyStop {
        let rule = rule.and_then(|es| {
            MetricKind::parse(&es.metric, kind)
                .ok()
                .map(|m| (m, es.clone()))
        });
        EarlyStop {
            rule,
            best: None,
            since: 0,
        }
    }

    /// Observes an epoch's validation metrics: (stop now, these are the best so far).
    pub fn observe(&mut self, metrics: Option<&Metrics>) -> (bool, bool) {
        let (Some((metric, es)), Some(m)) = (&self.rule, metrics) else {
            return (false, false);
        };
        let Some(v) = metric.get(m) else {
            return (false, false);
        };
        let improved = match self.best {
            None => true,
            Some(b) if metric.higher_is_better() => v > b + es.min_delta,
            Some(b) => v < b - es.min_delta,
        };
        if improved {
            self.best = Some(v);
            self.since = 0;
            (false, true)
        } else {
            self.since += 1;
            (self.since >= es.patience, false)
        }
    }
}

/// Logs a finished epoch (once per job: by the worker that keeps the records).
pub fn log_epoch(record: &EpochRecord) {
    tracing::info!(
        epoch = record.epoch,
        train_loss = record.train_loss,
        objective = record.objective,
        validation_loss = record.validation.as_ref().map(|m| m.loss),
        "epoch done"
    );
}

/// An epoch's totals, summed over the workers' partials.
#[derive(Debug, Default)]
pub struct EpochTotals {
    /// Epochs (or L-BFGS iterations) completed.
    pub epoch: u32,
    /// Optimizer steps so far.
    pub steps: u64,
    /// The objective, when the optimizer knows it (L-BFGS).
    pub objective: Option<f64>,
    /// Validation partial (finished only if the job has validation rows).
    pub validation: EvalPartial,
    /// Exact sum of training batch losses over the epoch.
    pub train_loss: Wide,
    /// Training rows behind `train_loss`.
    pub train_rows: u64,
    /// Payload bytes exchanged between workers over the epoch.
    pub bytes: u64,
    /// Shard reads by staleness (`param-server`; empty otherwise).
    pub staleness: Vec<u64>,
}

/// What closing an epoch decides.
#[derive(Debug)]
pub struct EpochEnd {
    /// The epoch's record.
    pub record: EpochRecord,
    /// Stop training (early stopping).
    pub stop: bool,
    /// The parameters are the best so far.
    pub best: bool,
}

/// An evaluation that every worker of a model-parallel job finishes alike,
/// from the validation rows' margins they all hold.
pub struct MarginEpoch<'a> {
    /// Epochs completed.
    pub epoch: u32,
    /// Optimizer steps so far.
    pub steps: u64,
    /// Model family.
    pub kind: ModelKind,
    /// The validation rows' margins, `k` per row (row-major).
    pub margins: &'a [f64],
    /// Outputs per row.
    pub k: usize,
    /// The validation rows' labels (none without validation rows).
    pub labels: &'a Labels,
    /// The reference the labels are taken relative to.
    pub label_ref: Option<f64>,
    /// Exact sum of the epoch's training losses.
    pub train_loss: Wide,
    /// Training rows behind it.
    pub train_rows: u64,
    /// Payload bytes exchanged since the last evaluation.
    pub bytes: u64,
}

/// Turns epoch totals into epoch records and early-stopping decisions:
/// the one place where an [`EpochRecord`] is built.
#[derive(Debug)]
pub struct Epochs {
    kind: ModelKind,
    has_validation: bool,
    early: EarlyStop,
    keeps_best: bool,
    started: Instant,
    /// Seconds of training before `started` (a resumed job).
    elapsed_before: f64,
    last_steps: u64,
}

impl Epochs {
    /// Closes a model-parallel epoch from its margins; `keeper` (worker
    /// 0's records) gets the record, logged. Returns whether to stop
    /// (early stopping) and whether the parameters are the best so far.
    pub fn close_margins(
        &mut self,
        e: MarginEpoch<'_>,
        keeper: Option<&RefCell<Vec<EpochRecord>>>,
    ) -> Result<(bool, bool), Error> {
        let validation = EvalPartial::of_margins(e.kind, e.k, e.margins, e.labels, e.label_ref);
        let end = self.close(EpochTotals {
            epoch: e.epoch,
            steps: e.steps,
            objective: None,
            validation,
            train_loss: e.train_loss,
            train_rows: e.train_rows,
            bytes: e.bytes,
            staleness: Vec::new(),
        })?;
        if let Some(records) = keeper {
            log_epoch(&end.record);
            records.borrow_mut().push(end.record);
        }
        Ok((end.stop, end.best))
    }

    /// The state to save at a boundary, with the records so far.
    pub fn state(&self, records: &[EpochRecord]) -> Result<CollectorState, Error> {
        let mut lines = String::new();
        for r in records {
            let line = serde_json::to_string(r)
                .map_err(|e| Error::Internal(format!("cannot save an epoch record: {e}")))?;
            lines.push_str(&line);
            lines.push('\n');
        }
        let records = lines;
        Ok(CollectorState {
            records,
            early_best: self.early.best,
            early_since: self.early.since,
            last_steps: self.last_steps,
            elapsed_s: self.elapsed_before + self.started.elapsed().as_secs_f64(),
        })
    }

    /// Continues from a saved state (a resumed job).
    pub fn resume(&mut self, state: &CollectorState) {
        self.early.best = state.early_best;
        self.early.since = state.early_since;
        self.last_steps = state.last_steps;
        self.elapsed_before = state.elapsed_s;
    }

    /// The records of a run of a `kind` model, with or without validation
    /// rows, under an early-stopping rule; the clock starts now.
    pub fn new(kind: ModelKind, has_validation: bool, rule: Option<&EarlyStopping>) -> Epochs {
        Epochs {
            kind,
            has_validation,
            early: EarlyStop::new(rule, kind),
            keeps_best: rule.is_some(),
            started: Instant::now(),
            elapsed_before: 0.0,
            last_steps: 0,
        }
    }

    /// Finishes the validation metrics, decides early stopping and builds
    /// the record. Fails if the metrics cannot be finished (non-finite).
    pub fn close(&mut self, t: EpochTotals) -> Result<EpochEnd, Error> {
        let metrics = self
            .has_validation
            .then(|| t.validation.finish(self.kind))
            .transpose()
            .map_err(|message| Error::Diverged {
                epoch: t.epoch.saturating_sub(1),
                step: 0,
                message,
            })?;
        let (stop, best) = self.early.observe(metrics.as_ref());
        let record = EpochRecord {
            epoch: t.epoch,
            steps: t.steps,
            elapsed_s: self.elapsed_before + self.started.elapsed().as_secs_f64(),
            train_loss: (t.train_rows > 0 && t.objective.is_none())
                .then(|| t.train_loss.to_f64() / t.train_rows as f64),
            objective: t.objective,
            bytes_exchanged: t.bytes,
            bytes_per_step: t.bytes as f64 / t.steps.saturating_sub(self.last_steps).max(1) as f64,
            staleness: (!t.staleness.is_empty()).then_some(t.staleness),
            validation: metrics,
            best: self.keeps_best.then_some(best),
        };
        self.last_steps = t.steps;
        Ok(EpochEnd { record, stop, best })
    }
}

impl<'scope> CollectMetrics<'scope> for Stream<'scope, u64, Vec<EvalMsg>> {
    fn collect_metrics(self, ctx: CollectContext) -> StreamVec<'scope, u64, Control> {
        let mut epochs = Epochs::new(ctx.kind, ctx.has_validation, ctx.early_stopping.as_ref());
        if let Some(state) = &ctx.resumed {
            epochs.resume(state);
        }
        if let Some((_, states)) = &ctx.checkpoints {
            // The state a checkpoint before the first close carries.
            let first = ctx.resumed.clone().unwrap_or_default();
            let epoch = ctx.records.borrow().last().map_or(0, |r| r.epoch);
            states.borrow_mut().insert(epoch, first);
        }
        self.unary_frontier(
            Exchange::new(|_m: &EvalMsg| 0u64),
            "CollectMetrics",
            move |_cap, _info| {
                let mut rounds = Rounds::default();
                move |(input, frontier), output| {
                    input.for_each(|cap, data| rounds.add(cap, data, output.output_index()));
                    while let Some((_, cap, msgs)) = rounds.pop_ready(frontier.frontier()) {
                        if let Some(f) = msgs.iter().find_map(|m| m.failure.clone()) {
                            output.session(&cap).give(Control {
                                stop: true,
                                best: false,
                                failure: Some(f),
                            });
                            continue;
                        }
                        let Some(Phase::Eval {
                            epoch,
                            steps,
                            objective,
                        }) = msgs.first().map(|m| m.phase)
                        else {
                            continue;
                        };
                        let mut totals = EpochTotals {
                            epoch,
                            steps,
                            objective,
                            ..EpochTotals::default()
                        };
                        for m in msgs {
                            totals.bytes += m.bytes;
                            let staleness = &mut totals.staleness;
                            if staleness.len() < m.staleness.len() {
                                staleness.resize(m.staleness.len(), 0);
                            }
                            staleness
                                .iter_mut()
                                .zip(&m.staleness)
                                .for_each(|(a, b)| *a += b);
                            totals.validation.merge(m.validation);
                            totals.train_loss += m.train_loss;
                            totals.train_rows += m.train_rows;
                        }
                        let stop_on = |e: &Error| Control {
                            stop: true,
                            best: false,
                            failure: Some(Failure::from(e)),
                        };
                        let EpochEnd { record, stop, best } = match epochs.close(totals) {
                            Ok(end) => end,
                            Err(e) => {
                                output.session(&cap).give(stop_on(&e));
                                continue;
                            }
                        };
                        log_epoch(&record);
                        ctx.records.borrow_mut().push(record);
                        if let Some((_, states)) = &ctx.checkpoints {
                            // Every close: a checkpoint inside the next
                            // epoch carries this state too.
                            match epochs.state(&ctx.records.borrow()) {
                                Ok(state) => {
                                    states.borrow_mut().insert(epoch, state);
                                }
                                Err(e) => {
                                    output.session(&cap).give(stop_on(&e));
                                    continue;
                                }
                            }
                        }
                        output.session(&cap).give(Control {
                            stop,
                            best,
                            failure: None,
                        });
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: &str, patience: u32, min_delta: f64, kind: ModelKind) -> EarlyStop {
        let es = EarlyStopping {
            metric: metric.into(),
            patience,
            min_delta,
        };
        EarlyStop::new(Some(&es), kind)
    }

    fn loss(v: f64) -> Metrics {
        Metrics {
            rows: 10,
            loss: v,
            ..Metrics::default()
        }
    }

    fn accuracy(v: f64) -> Metrics {
        Metrics {
            accuracy: Some(v),
            ..loss(1.0)
        }
    }

    /// Feeds `values` and returns the (stop, best) decisions.
    fn run(es: &mut EarlyStop, values: &[Metrics]) -> Vec<(bool, bool)> {
        values.iter().map(|m| es.observe(Some(m))).collect()
    }

    #[test]
    fn loss_must_drop_by_more_than_min_delta_below_the_best() {
        let mut es = rule("loss", 2, 0.1, ModelKind::Logistic);
        // Best 1.0; 0.95 is within 0.1 of it (a miss); 0.89 is 0.11 below
        // it and counts; 0.8 and 0.795 are within 0.1 of 0.89: two misses stop.
        let got = run(&mut es, &[1.0, 0.95, 0.89, 0.8, 0.795].map(loss));
        assert_eq!(
            got,
            [
                (false, true),
                (false, false),
                (false, true),
                (false, false),
                (true, false)
            ]
        );
        let mut es = rule("loss", 3, 0.1, ModelKind::Logistic);
        let got = run(&mut es, &[1.0, 0.95, 0.91, 0.89].map(loss));
        assert_eq!(
            got,
            [(false, true), (false, false), (false, false), (false, true)],
            "0.89 is measured against the best (1.0), not the last value"
        );
    }

    #[test]
    fn a_miss_count_restarts_after_an_improvement() {
        let mut es = rule("loss", 2, 0.0, ModelKind::Linear);
        let got = run(&mut es, &[5.0, 6.0, 4.0, 4.0, 3.0, 3.5, 3.0].map(loss));
        // An equal value is no improvement when min_delta is 0.
        assert_eq!(
            got,
            [
                (false, true),
                (false, false),
                (false, true),
                (false, false),
                (false, true),
                (false, false),
                (true, false)
            ]
        );
    }

    #[test]
    fn higher_is_better_metrics_must_rise() {
        let mut es = rule("accuracy", 1, 0.01, ModelKind::Softmax);
        let got = run(&mut es, &[0.5, 0.52, 0.525, 0.9].map(accuracy));
        assert_eq!(
            got,
            [(false, true), (false, true), (true, false), (false, true)]
        );
        // patience 0: the first miss stops.
        let mut es = rule("accuracy", 0, 0.0, ModelKind::Softmax);
        assert_eq!(
            run(&mut es, &[0.5, 0.4].map(accuracy)),
            [(false, true), (true, false)]
        );
    }

    #[test]
    fn no_rule_or_no_value_never_stops_or_counts() {
        let mut none = EarlyStop::new(None, ModelKind::Logistic);
        assert_eq!(
            run(&mut none, &[1.0, 2.0, 3.0, 4.0].map(loss)),
            [(false, false); 4]
        );
        // No validation metrics: nothing observed, nothing counted.
        let mut es = rule("loss", 1, 0.0, ModelKind::Logistic);
        assert_eq!(es.observe(None), (false, false));
        // A metric the records lack (accuracy on a record without it)
        // neither improves nor counts against patience.
        let mut es = rule("accuracy", 1, 0.0, ModelKind::Logistic);
        assert_eq!(es.observe(Some(&accuracy(0.5))), (false, true));
        assert_eq!(es.observe(Some(&loss(0.1))), (false, false));
        assert_eq!(es.observe(Some(&accuracy(0.6))), (false, true));
        assert_eq!(es.observe(Some(&accuracy(0.6))), (true, false));
    }
}
