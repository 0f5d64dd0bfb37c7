//! Metric names a pipeline may use (early stopping): parsed and checked
//! against the model kind here, computed in [`crate::metrics`].

use super::ModelKind;

/// Metrics a pipeline can name (e.g. for early stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// The model's own loss (log loss, hinge loss, ½·squared error).
    Loss,
    /// Fraction of rows classified correctly.
    Accuracy,
    /// Area under the ROC curve (binary).
    Auc,
    /// Macro-averaged F1 (classifiers).
    MacroF1,
    /// Root mean squared error (regression).
    Rmse,
    /// Mean absolute error (regression).
    Mae,
    /// Coefficient of determination (regression).
    R2,
}

impl MetricKind {
    /// Parses a metric name, checking it applies to the model kind.
    pub fn parse(name: &str, kind: ModelKind) -> Result<MetricKind, String> {
        let m = match name {
            "loss" => MetricKind::Loss,
            "accuracy" => MetricKind::Accuracy,
            "auc" => MetricKind::Auc,
            "macro_f1" => MetricKind::MacroF1,
            "rmse" => MetricKind::Rmse,
            "mae" => MetricKind::Mae,
            "r2" => MetricKind::R2,
            other => {
                return Err(format!(
                    "unknown metric '{other}'; known: loss, accuracy, auc, macro_f1, rmse, mae, r2"
                ))
            }
        };
        let ok = match m {
            MetricKind::Loss => true,
            MetricKind::Accuracy | MetricKind::MacroF1 => kind.is_classifier(),
            MetricKind::Auc => matches!(kind, ModelKind::Logistic | ModelKind::Hinge),
            MetricKind::Rmse | MetricKind::Mae | MetricKind::R2 => kind == ModelKind::Linear,
        };
        if ok {
            Ok(m)
        } else {
            Err(format!(
                "metric '{name}' does not apply to a {kind:?} model"
            ))
        }
    }

    /// True if larger values are better.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            MetricKind::Accuracy | MetricKind::Auc | MetricKind::MacroF1 | MetricKind::R2
        )
    }
}
