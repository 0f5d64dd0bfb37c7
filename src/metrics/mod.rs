//! Evaluation metrics: additive partials computed where the rows are,
//! merged exactly, finished into the numbers users read.

pub mod chart;
pub mod curves;
pub mod plot;
pub mod report;
pub mod sink;

use serde::{Deserialize, Serialize};

use crate::data::encode::{Block, Labels};
use crate::exact::Wide;
use crate::model::Model;
use crate::spec::ModelKind;

pub use crate::spec::metric::MetricKind;

impl MetricKind {
    /// Reads this metric from finished metrics.
    pub fn get(self, m: &Metrics) -> Option<f64> {
        match self {
            MetricKind::Loss => Some(m.loss),
            MetricKind::Accuracy => m.accuracy,
            MetricKind::Auc => m.auc,
            MetricKind::MacroF1 => m.macro_f1,
            MetricKind::Rmse => m.rmse,
            MetricKind::Mae => m.mae,
            MetricKind::R2 => m.r2,
        }
    }
}

/// Finished metrics over a set of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: u64,
    /// Mean loss of the model's kind (no penalty).
    pub loss: f64,
    /// Classification accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// ROC AUC (binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// Macro-averaged F1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// Root mean squared error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse: Option<f64>,
    /// Mean absolute error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
    /// R².
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r2: Option<f64>,
}

/// Additive evaluation state; merging is exact and order-independent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalPartial {
    /// Rows seen.
    pub rows: u64,
    /// Σ loss.
    pub loss: Wide,
    /// Correct classifications.
    pub correct: u64,
    /// Σ (y − ŷ)².
    pub sse: Wide,
    /// Σ |y − ŷ|.
    pub sae: Wide,
    /// The reference labels are taken relative to (regression): R² needs
    /// `Σ(y − ȳ)²`, which raw sums `Σy²`, `Σy` lose to cancellation where
    /// labels dwarf their spread. Set by [`EvalPartial::with_label_ref`]
    /// (training: the training label mean, the same on every worker) or
    /// by the first label seen (`eval`, one pass in file order).
    pub label_ref: Option<f64>,
    /// Σ (y − label_ref).
    pub sy: Wide,
    /// Σ (y − label_ref)².
    pub syy: Wide,
    /// Per class: true positives, false positives, false negatives.
    pub per_class: Vec<[u64; 3]>,
    /// (score, is positive) for AUC.
    pub scores: Vec<(f64, bool)>,
}

/// A batch's sum as an exact partial; a sum that is not finite, or too
/// large to hold, makes the partial overflowed, and [`EvalPartial::finish`]
/// then fails instead of reporting a wrong number.
fn exact(v: f64) -> Wide {
    Wide::from_f64(v).unwrap_or(Wide::OVERFLOW)
}

impl EvalPartial {
    /// An empty partial whose labels will be taken relative to `label_ref`
    /// (see [`EvalPartial::label_ref`]); `None` leaves it to the first label.
    pub fn with_label_ref(label_ref: Option<f64>) -> EvalPartial {
        EvalPartial {
            label_ref: label_ref.filter(|r| r.is_finite()),
            ..EvalPartial::default()
        }
    }

    /// The partial of rows whose margins (`k` per row, row-major) and
    /// labels are given: what the model-parallel operators, which hold
    /// every validation row's margins, evaluate.
    pub fn of_margins(
        kind: ModelKind,
        k: usize,
        margins: &[f64],
        labels: &Labels,
        label_ref: Option<f64>,
    ) -> EvalPartial {
        let mut p = EvalPartial::with_label_ref(label_ref);
        p.add_rows(
            kind,
            k,
            labels.len(),
            |i, out| out.copy_from_slice(&margins[i * k..(i + 1) * k]),
            |i| labels.at(i),
        );
        p
    }

    /// Evaluates `model` on every row of `block` and adds the results.
    pub fn add_block(&mut self, model: &dyn Model, block: &Block) {
        self.add_rows(
            model.kind(),
            model.outputs(),
            block.rows,
            |i, out| model.margins(block, i, out),
            |i| block.label.at(i),
        );
    }

    /// Adds `rows` rows of a `kind` model with `k` outputs, given each
    /// row's margins (`margins(i, out)`) and label.
    pub fn add_rows(
        &mut self,
        kind: ModelKind,
        k: usize,
        rows: usize,
        mut margins: impl FnMut(usize, &mut [f64]),
        label: impl Fn(usize) -> f64,
    ) {
        let mut out = vec![0.0; k];
        let (mut loss, mut sse, mut sae, mut sy, mut syy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        if kind.is_classifier() && self.per_class.len() < k.max(2) {
            self.per_class.resize(k.max(2), [0; 3]);
        }
        if kind == ModelKind::Linear && rows > 0 && self.label_ref.is_none() {
            self.label_ref = Some(label(0));
        }
        let reference = self.label_ref.unwrap_or(0.0);
        for i in 0..rows {
            margins(i, &mut out);
            let y = label(i);
            if kind == ModelKind::Logistic {
                // The loss and the score from one exponential.
                let (l, score) = crate::model::loss::logistic(out[0], y);
                // A NaN's sign is sigmoid's (AUC orders NaNs by it).
                let score = if score.is_nan() {
                    crate::model::loss::sigmoid(out[0])
                } else {
                    score
                };
                loss += l;
                self.count(usize::from(out[0] > 0.0), y as usize);
                self.scores.push((score, y > 0.5));
                continue;
            }
            loss += crate::model::loss::loss(kind, &out, y);
            match kind {
                ModelKind::Linear => {
                    let r = y - out[0];
                    sse += r * r;
                    sae += r.abs();
                    let d = y - reference;
                    sy += d;
                    syy += d * d;
                }
                ModelKind::Logistic | ModelKind::Hinge => {
                    self.count(usize::from(out[0] > 0.0), y as usize);
                    self.scores.push((out[0], y > 0.5));
                }
                ModelKind::Softmax | ModelKind::GaussianNb | ModelKind::MultinomialNb => {
                    let mut best = 0;
                    for (j, &m) in out.iter().enumerate() {
                        if m > out[best] {
                            best = j;
                        }
                    }
                    self.count(best, y as usize);
                }
            }
        }
        self.rows += rows as u64;
        self.loss += exact(loss);
        self.sse += exact(sse);
        self.sae += exact(sae);
        self.sy += exact(sy);
        self.syy += exact(syy);
    }

    fn count(&mut self, pred: usize, truth: usize) {
        if pred == truth {
            self.correct += 1;
            self.per_class[truth][0] += 1;
        } else {
            self.per_class[pred][1] += 1;
            self.per_class[truth][2] += 1;
        }
    }

    /// Adds another partial.
    pub fn merge(&mut self, mut o: EvalPartial) {
        match (self.label_ref, o.label_ref) {
            (None, r) if self.rows == 0 || self.sy == Wide::default() => self.label_ref = r,
            (Some(a), Some(b)) if a.to_bits() != b.to_bits() => o.rebase(a),
            _ => {}
        }
        self.rows += o.rows;
        self.loss += o.loss;
        self.correct += o.correct;
        self.sse += o.sse;
        self.sae += o.sae;
        self.sy += o.sy;
        self.syy += o.syy;
        if self.per_class.len() < o.per_class.len() {
            self.per_class.resize(o.per_class.len(), [0; 3]);
        }
        for (a, b) in self.per_class.iter_mut().zip(&o.per_class) {
            for j in 0..3 {
                a[j] += b[j];
            }
        }
        self.scores.extend(o.scores);
    }

    /// Moves the label sums to another reference. Exact merges need a
    /// common reference (training gives every worker the same one); this
    /// is the fallback for partials started apart, in `f64`.
    fn rebase(&mut self, to: f64) {
        let Some(from) = self.label_ref else { return };
        let (n, shift) = (self.rows as f64, from - to);
        let (sy, syy) = (self.sy.to_f64(), self.syy.to_f64());
        self.sy = exact(sy + n * shift);
        self.syy = exact(syy + 2.0 * shift * sy + n * shift * shift);
        self.label_ref = Some(to);
    }

    /// The finished metrics, or what overflowed: a loss or error sum that
    /// is not finite (the model's outputs overflow on some row) is an error,
    /// never a number.
    pub fn finish(mut self, kind: ModelKind) -> Result<Metrics, String> {
        let kind = kind.prediction_kind();
        let sums = [
            ("loss", self.loss),
            ("squared error", self.sse),
            ("absolute error", self.sae),
            ("label", self.sy),
            ("squared label", self.syy),
        ];
        if let Some((what, _)) = sums.iter().find(|(_, s)| s.is_overflow()) {
            return Err(format!(
                "the {what} sum over {} evaluation rows is not finite or beyond {:e}: the model's outputs overflow on these rows",
                self.rows,
                crate::exact::WIDE_LIMIT
            ));
        }
        let n = self.rows.max(1) as f64;
        let mut m = Metrics {
            rows: self.rows,
            loss: self.loss.to_f64() / n,
            ..Metrics::default()
        };
        match kind {
            ModelKind::Linear => {
                let sse = self.sse.to_f64();
                m.rmse = Some((sse / n).sqrt());
                m.mae = Some(self.sae.to_f64() / n);
                // Around the reference: no cancellation when the labels
                // dwarf their spread.
                let mean = self.sy.to_f64() / n;
                let sst = self.syy.to_f64() - n * mean * mean;
                m.r2 = (sst > 0.0).then(|| 1.0 - sse / sst);
            }
            _ => {
                m.accuracy = Some(self.correct as f64 / n);
                let f1: Vec<f64> = self
                    .per_class
                    .iter()
                    .filter(|c| c[0] + c[2] > 0)
                    .map(|&[tp, fp, fn_]| {
                        let d = 2 * tp + fp + fn_;
                        if d == 0 {
                            0.0
                        } else {
                            2.0 * tp as f64 / d as f64
                        }
                    })
                    .collect();
                if kind == ModelKind::Softmax && !f1.is_empty() {
                    m.macro_f1 = Some(f1.iter().sum::<f64>() / f1.len() as f64);
                }
                if kind != ModelKind::Softmax {
                    m.auc = auc(&mut self.scores);
                }
            }
        }
        Ok(m)
    }
}

/// ROC AUC with ties counted as one half; `None` if a class is absent.
///
/// # Examples
/// ```
/// let mut s = vec![(0.1, false), (0.4, true), (0.35, false), (0.3, true)];
/// assert_eq!(tidemill::metrics::auc(&mut s), Some(0.75));
/// ```
pub fn auc(scores: &mut [(f64, bool)]) -> Option<f64> {
    // A total order on (score, label): unstable sorting gives the one order.
    scores.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let pos = scores.iter().filter(|s| s.1).count() as f64;
    let neg = scores.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scores.len() {
        let mut j = i;
        while j < scores.len() && scores[j].0 == scores[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks are 1-based
        let positives = scores[i..j].iter().filter(|s| s.1).count() as f64;
        rank_sum += avg_rank * positives;
        i = j;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_handles_ties_and_perfect_order() {
        let mut s = vec![(0.5, true), (0.5, false)];
        assert_eq!(auc(&mut s), Some(0.5));
        let mut s = vec![(0.1, false), (0.9, true), (0.2, false)];
        assert_eq!(auc(&mut s), Some(1.0));
        let mut s = vec![(0.1, false)];
        assert_eq!(auc(&mut s), None);
    }
}
