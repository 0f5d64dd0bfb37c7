//! A binary classifier's ROC curve and calibration table, as `eval
//! --curves` writes them and `report --curves` draws them.
//!
//! The ROC curve has a point at every distinct score, as
//! scikit-learn's `roc_curve(..., drop_intermediate=False)`; the
//! calibration table has ten uniform bins, as its
//! `calibration_curve(..., n_bins=10, strategy="uniform")`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What the scores of a curves file are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// The probability of the positive class (logistic).
    Probability,
    /// The signed distance from the separating hyperplane (hinge): it
    /// ranks rows, but is no probability, so it has no calibration.
    DecisionValue,
}

/// The ROC curve: false and true positive rates as the threshold falls
/// through every distinct score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roc {
    /// False positive rate at each threshold, from 0 to 1.
    pub fpr: Vec<f64>,
    /// True positive rate at each threshold, from 0 to 1.
    pub tpr: Vec<f64>,
    /// Rows scoring at least this are called positive; falling. The
    /// first is `null`: above every score (scikit-learn's `inf`).
    pub thresholds: Vec<Option<f64>>,
}

impl Roc {
    /// The curve of `scores` (score, is positive); `None` unless both
    /// classes are present.
    ///
    /// # Examples
    /// ```
    /// use tidemill::metrics::curves::Roc;
    /// let roc = Roc::of(&[(0.1, false), (0.4, true), (0.35, false), (0.8, true)]).unwrap();
    /// assert_eq!(roc.fpr, [0.0, 0.0, 0.0, 0.5, 1.0]);
    /// assert_eq!(roc.tpr, [0.0, 0.5, 1.0, 1.0, 1.0]);
    /// assert_eq!(roc.thresholds[1], Some(0.8));
    /// assert_eq!(roc.area(), 1.0);
    /// ```
    pub fn of(scores: &[(f64, bool)]) -> Option<Roc> {
        let mut sorted = scores.to_vec();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let pos = sorted.iter().filter(|s| s.1).count();
        let neg = sorted.len() - pos;
        if pos == 0 || neg == 0 {
            return None;
        }
        let mut roc = Roc {
            fpr: vec![0.0],
            tpr: vec![0.0],
            thresholds: vec![None],
        };
        let (mut tp, mut fp) = (0usize, 0usize);
        for (i, &(score, positive)) in sorted.iter().enumerate() {
            if positive {
                tp += 1;
            } else {
                fp += 1;
            }
            // The last row of a run of equal scores closes a point.
            if sorted.get(i + 1).is_none_or(|next| next.0 != score) {
                roc.fpr.push(fp as f64 / neg as f64);
                roc.tpr.push(tp as f64 / pos as f64);
                roc.thresholds.push(Some(score));
            }
        }
        Some(roc)
    }

    /// The area under the curve by the trapezoid rule: the ROC AUC with
    /// ties counted as one half, as [`super::auc`] computes it.
    pub fn area(&self) -> f64 {
        self.fpr
            .windows(2)
            .zip(self.tpr.windows(2))
            .map(|(x, y)| (x[1] - x[0]) * (y[1] + y[0]) / 2.0)
            .sum()
    }
}

/// The calibration table: per non-empty bin of predicted probability,
/// the mean prediction and the fraction of rows that are positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Number of bins: `[0, 0.1], (0.1, 0.2], ..., (0.9, 1]` for 10.
    pub bins: usize,
    /// Which bin each entry is (0-based); empty bins are left out.
    pub bin: Vec<usize>,
    /// Mean predicted probability of the bin's rows.
    pub prob_pred: Vec<f64>,
    /// Fraction of the bin's rows that are positive.
    pub prob_true: Vec<f64>,
    /// Rows in the bin.
    pub count: Vec<u64>,
}

impl Calibration {
    /// The table of `scores` (probability, is positive) in `bins` uniform
    /// bins; the bin edges are `i / bins` as numpy's `linspace` computes
    /// them, a probability on an edge belongs to the bin below it, and
    /// the sums run in the order of `scores` (as scikit-learn's do).
    ///
    /// # Examples
    /// ```
    /// use tidemill::metrics::curves::Calibration;
    /// let c = Calibration::of(&[(0.05, false), (0.15, true), (0.1, false), (0.95, true)], 10);
    /// assert_eq!(c.bin, [0, 1, 9]);
    /// assert_eq!(c.count, [2, 1, 1]);
    /// assert_eq!(c.prob_true, [0.0, 1.0, 1.0]);
    /// ```
    pub fn of(scores: &[(f64, bool)], bins: usize) -> Calibration {
        let bins = bins.max(1);
        let step = 1.0 / bins as f64;
        let edges: Vec<f64> = (1..bins).map(|i| i as f64 * step).collect();
        let mut sum = vec![0.0; bins];
        let mut positives = vec![0u64; bins];
        let mut count = vec![0u64; bins];
        for &(p, positive) in scores {
            let b = edges.partition_point(|&e| e < p);
            sum[b] += p;
            positives[b] += u64::from(positive);
            count[b] += 1;
        }
        let mut c = Calibration {
            bins,
            bin: Vec::new(),
            prob_pred: Vec::new(),
            prob_true: Vec::new(),
            count: Vec::new(),
        };
        for b in (0..bins).filter(|&b| count[b] > 0) {
            c.bin.push(b);
            c.prob_pred.push(sum[b] / count[b] as f64);
            c.prob_true.push(positives[b] as f64 / count[b] as f64);
            c.count.push(count[b]);
        }
        c
    }
}

/// What `eval --curves` writes: a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Curves {
    /// The model file evaluated.
    pub model: String,
    /// The table it was evaluated on.
    pub input: String,
    /// The model's kind (`logistic`, `hinge`).
    pub kind: String,
    /// What the scores are.
    pub score: ScoreKind,
    /// The class counted as positive: the model's second class.
    pub positive_class: String,
    /// Rows evaluated.
    pub rows: u64,
    /// Positive rows.
    pub positives: u64,
    /// Negative rows.
    pub negatives: u64,
    /// Area under the ROC curve (trapezoid rule; equal to `eval`'s
    /// `auc` up to rounding).
    pub auc: f64,
    /// The ROC curve.
    pub roc: Roc,
    /// Ten-bin calibration table; `null` for decision values.
    pub calibration: Option<Calibration>,
}

/// Bins of the calibration table `eval --curves` writes.
pub const CALIBRATION_BINS: usize = 10;

impl Curves {
    /// Reads a curves file; one that is not a curves object is a usage
    /// error naming it.
    pub fn read(path: &Path) -> Result<Curves> {
        let bytes = crate::io::bounded::read(path, crate::io::bounded::MAX_METRICS_BYTES)
            .map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Usage {
            option: path.display().to_string(),
            message: format!("not a tidemill curves file (from `eval --curves`): {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_ties_make_one_point_and_the_area_is_the_rank_auc() {
        let scores = vec![
            (0.5, true),
            (0.5, false),
            (0.2, false),
            (0.9, true),
            (0.2, true),
            (0.1, false),
        ];
        let roc = Roc::of(&scores).unwrap();
        assert_eq!(
            roc.thresholds,
            [None, Some(0.9), Some(0.5), Some(0.2), Some(0.1)]
        );
        assert_eq!(roc.tpr, [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
        assert_eq!(roc.fpr, [0.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]);
        let rank = super::super::auc(&mut scores.clone()).unwrap();
        assert!(
            (roc.area() - rank).abs() < 1e-15,
            "{} vs {rank}",
            roc.area()
        );
        assert!(Roc::of(&[(0.3, true), (0.4, true)]).is_none());
    }

    #[test]
    fn calibration_edges_belong_to_the_bin_below() {
        // 0.1 is bin 0's upper edge; 0.3 is above the edge 3 * 0.1 =
        // 0.30000000000000004, so it is in bin 2 with 0.25.
        let c = Calibration::of(
            &[
                (0.1, true),
                (0.0, false),
                (0.3, true),
                (0.25, false),
                (1.0, true),
            ],
            10,
        );
        assert_eq!(c.bin, [0, 2, 9]);
        assert_eq!(c.count, [2, 2, 1]);
        assert_eq!(c.prob_true, [0.5, 0.5, 1.0]);
        for (got, want) in c.prob_pred.iter().zip([0.05, 0.275, 1.0]) {
            assert!((got - want).abs() < 1e-15, "{:?}", c.prob_pred);
        }
    }
}
