//! `tidemill cv`: k-fold cross-validation of a pipeline.
//!
//! Each row's fold is drawn from `(data.seed, file, row)` — the draw
//! `data.validation = { fraction }` uses, cut into `K` equal ranges — so
//! the folds do not depend on units or workers, and every row is in
//! exactly one. Fold `i`'s job is the pipeline with `data.validation = {
//! fold = i, folds = K }`: trained on the other folds, scored on fold `i`,
//! the same job `tidemill train` runs with that setting. Nothing is written
//! but the summary on stdout.

use serde_json::{json, Map, Value};

use super::{emit, to_json, ClusterArgs, CvArgs, StopLimits};
use crate::error::{Error, Result};
use crate::spec::{OptimizerSpec, Pipeline, ValidationSpec, MAX_FOLDS};

/// Runs `cv`.
pub fn run(a: CvArgs) -> Result<()> {
    if !(2..=MAX_FOLDS).contains(&a.folds) {
        return Err(Error::Usage {
            option: "--folds".into(),
            message: format!("must be in 2..={MAX_FOLDS}, got {}", a.folds),
        });
    }
    let base = Pipeline::load(&a.pipeline, &a.overrides)?;
    refuse(&base)?;
    if base.data.validation.is_some() {
        tracing::info!("cv holds out its folds in place of data.validation");
    }
    if let Some(e) = &base.train.early_stopping {
        tracing::warn!(
            metric = %e.metric,
            "early stopping picks each fold's epoch by the fold it scores: the estimate is optimistic (leave train.early_stopping out for an unbiased one)"
        );
    }
    let cluster = ClusterArgs::local(a.workers).cluster()?;
    let started = std::time::Instant::now();
    let mut folds = Vec::new();
    for fold in 0..a.folds {
        let mut p = base.clone();
        p.data.validation = Some(ValidationSpec::Fold {
            fold,
            folds: a.folds,
        });
        p.output.model = None;
        p.output.metrics = None;
        p.output.checkpoint = None;
        tracing::info!(fold, folds = a.folds, "cross-validation fold");
        let limits = StopLimits::of(&p);
        let plan = crate::plan::Plan::new(p)?;
        let report = crate::train::run_job(plan, None, false, &cluster)?;
        let epochs = report.model.as_ref().map_or(0, |m| m.training.epochs);
        let kept = report
            .records
            .iter()
            .rev()
            .find(|r| r.best == Some(true))
            .or(report.records.last());
        let validation = kept.and_then(|r| r.validation.clone()).ok_or_else(|| {
            Error::Internal(format!("fold {fold} finished without validation metrics"))
        })?;
        if validation.rows == 0 {
            return Err(Error::NoRows {
                what: format!("fold {fold} of {}", a.folds),
                purpose: "score (too few rows for this many folds)".into(),
            });
        }
        let (stopped_by, _) = limits.stopped_by(epochs, kept.map(|r| r.epoch), report.converged_by);
        folds.push(json!({
            "fold": fold,
            "train_rows": report.train_rows,
            "validation_rows": report.validation_rows,
            "epochs": epochs,
            "stopped_by": stopped_by,
            "validation": validation,
        }));
    }
    let (mean, std) = summary(&folds);
    let out = json!({
        "folds": a.folds,
        "mean": mean,
        "std": std,
        "per_fold": folds,
        "seconds": started.elapsed().as_secs_f64(),
    });
    emit(&(to_json(&out) + "\n"))
}

/// What cross-validation cannot run.
fn refuse(p: &Pipeline) -> Result<()> {
    let why = if p.optimizer == OptimizerSpec::Exact {
        Some(("optimizer.kind", "cv runs iterative optimizers; an exact model is scored with `tidemill eval` on held-out rows"))
    } else if p.output.state.is_some() {
        Some((
            "output.state",
            "cv trains models to score them, not to keep: leave [output] state out",
        ))
    } else if p.data.train.iter().any(|t| t.as_os_str() == "-") {
        Some((
            "data.train",
            "cv reads the training data once per fold: give a file, not '-'",
        ))
    } else {
        None
    };
    match why {
        Some((key, message)) => Err(Error::PipelineValue {
            key: key.into(),
            message: message.into(),
        }),
        None => Ok(()),
    }
}

/// The mean and (population) standard deviation over the folds of each
/// validation metric every fold has.
fn summary(folds: &[Value]) -> (Map<String, Value>, Map<String, Value>) {
    let (mut mean, mut std) = (Map::new(), Map::new());
    let Some(first) = folds.first().and_then(|f| f["validation"].as_object()) else {
        return (mean, std);
    };
    for key in first.keys().filter(|k| *k != "rows") {
        let values: Option<Vec<f64>> = folds
            .iter()
            .map(|f| f["validation"][key].as_f64())
            .collect();
        let Some(values) = values else {
            // A fold without it (an AUC of one class): no mean, said so.
            tracing::warn!(metric = %key, "not every fold has this metric: no mean or std for it");
            mean.insert(key.clone(), Value::Null);
            std.insert(key.clone(), Value::Null);
            continue;
        };
        let n = values.len() as f64;
        let m = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
        mean.insert(key.clone(), json!(m));
        std.insert(key.clone(), json!(var.sqrt()));
    }
    (mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_mean_and_spread_of_every_fold_metric() {
        let folds = vec![
            json!({"validation": {"rows": 10, "loss": 1.0, "auc": 0.5}}),
            json!({"validation": {"rows": 12, "loss": 3.0, "auc": 0.7}}),
        ];
        let (mean, std) = summary(&folds);
        assert_eq!(mean["loss"], json!(2.0));
        assert_eq!(std["loss"], json!(1.0));
        assert!((mean["auc"].as_f64().unwrap_or(0.0) - 0.6).abs() < 1e-15);
        assert!(!mean.contains_key("rows"));
    }
}
