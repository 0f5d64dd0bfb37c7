//! Naive Bayes models (`gaussian_nb`, `multinomial_nb`): fitted exactly
//! from per-class counts and moments (`crate::incremental::bayes`), never by
//! gradient steps. Their outputs are the joint log-likelihoods
//! `log P(c) + log P(x | c)` per class, so a softmax of them is the class
//! posterior: predictions, metrics and log loss read them as softmax
//! regression's margins ([`ModelKind::prediction_kind`]).
//!
//! Parameters, one block per class `c` of `w` numbers:
//! - gaussian: `[log P(c), μ_c1 … μ_cp, σ²_c1 … σ²_cp]` (variances with
//!   the smoothing added), `log P(x|c) = −½ Σ_j (ln 2πσ²_cj + (x_j−μ_cj)²/σ²_cj)`;
//! - multinomial: `[log P(c), log θ_c1 … log θ_cp, log θ_c,slot …]` (one per
//!   hashed slot, `2^hash_bits` when there are categorical columns),
//!   `log P(x|c) = Σ_j x_j log θ_cj + Σ_tokens log θ_c,slot` (a token
//!   counts once in its slot, whatever its hashing sign).

use super::{Model, Roles, Scratch};
use crate::data::encode::{Block, FeatureSpec};
use crate::exact::{self, Sums};
use crate::spec::ModelKind;

/// A fitted naive Bayes model.
#[derive(Debug, Clone)]
pub struct NaiveBayes {
    /// `GaussianNb` or `MultinomialNb`.
    pub kind: ModelKind,
    /// Classes (outputs).
    pub k: usize,
    /// Numeric features.
    pub p: usize,
    /// Hashed slots (0 without categorical columns; multinomial only).
    pub slots: usize,
    /// Parameters, `k` blocks (see the module docs).
    pub theta: Vec<f64>,
    /// Training rows of each class.
    pub class_rows: Vec<u64>,
    /// Multinomial: `log θ` of a slot no row of the class touched, per
    /// class (what every such slot holds in `theta`).
    pub unseen: Vec<f64>,
    /// Multinomial: the additive smoothing.
    pub alpha: f64,
    /// Gaussian: the variance smoothing asked for, and what it added to
    /// every variance (`var_smoothing × the largest feature variance`).
    pub var_smoothing: f64,
    /// Gaussian: see `var_smoothing`.
    pub epsilon: f64,
}

impl NaiveBayes {
    /// Numbers per class.
    pub fn width(kind: ModelKind, p: usize, slots: usize) -> usize {
        match kind {
            ModelKind::GaussianNb => 1 + 2 * p,
            _ => 1 + p + slots,
        }
    }

    /// The hashed slots of a `kind` model of these features.
    pub fn slots_of(kind: ModelKind, features: &FeatureSpec) -> usize {
        if kind == ModelKind::MultinomialNb && !features.categorical.is_empty() {
            1usize << features.hash_bits
        } else {
            0
        }
    }

    fn block(&self, c: usize) -> &[f64] {
        let w = Self::width(self.kind, self.p, self.slots);
        &self.theta[c * w..(c + 1) * w]
    }
}

impl Model for NaiveBayes {
    fn kind(&self) -> ModelKind {
        self.kind
    }

    fn outputs(&self) -> usize {
        self.k
    }

    fn roles(&self) -> Roles {
        let w = Self::width(self.kind, self.p, self.slots);
        Roles::new(self.theta.len(), |i| i % w == 0, |_| true)
    }

    fn params(&self) -> &[f64] {
        &self.theta
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.theta
    }

    fn margins(&self, block: &Block, i: usize, out: &mut [f64]) {
        let p = self.p;
        let x = &block.dense[i * block.p..(i + 1) * block.p];
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        let s = &block.signs[i * block.c..(i + 1) * block.c];
        for (c, o) in out.iter_mut().enumerate().take(self.k) {
            let b = self.block(c);
            let mut m = b[0];
            match self.kind {
                ModelKind::GaussianNb => {
                    let (mean, var) = b[1..].split_at(p);
                    let mut q = 0.0;
                    for j in 0..p {
                        let d = f64::from(x[j]) - mean[j];
                        q += (2.0 * std::f64::consts::PI * var[j]).ln() + d * d / var[j];
                    }
                    m -= 0.5 * q;
                }
                _ => {
                    for j in 0..p {
                        m += f64::from(x[j]) * b[1 + j];
                    }
                    if self.slots > 0 {
                        for (&hj, &sj) in h.iter().zip(s) {
                            if sj != 0.0 {
                                m += b[1 + p + hj as usize];
                            }
                        }
                    }
                }
            }
            *o = m;
        }
    }

    fn sparse_coords(&self, block: &Block, i: usize, visit: &mut dyn FnMut(usize)) {
        if self.slots == 0 {
            return;
        }
        let w = Self::width(self.kind, self.p, self.slots);
        for c in 0..self.k {
            for &hj in &block.hashed[i * block.c..(i + 1) * block.c] {
                visit(c * w + 1 + self.p + hj as usize);
            }
        }
    }

    fn accumulate(
        &self,
        _block: &Block,
        _rows: &[usize],
        _scratch: &mut Scratch,
        _acc: Sums<'_>,
    ) -> Result<(f64, exact::Bound), String> {
        Err(format!(
            "{} is fitted exactly from counts and moments (optimizer.kind = 'exact'), not by gradient steps",
            self.kind.name()
        ))
    }

    fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool {
        self.margins(block, i, out);
        super::predict_from_margins(self.kind, out)
    }

    fn to_file(
        &self,
        features: &FeatureSpec,
        training: super::file::TrainingSummary,
    ) -> super::file::ModelFile {
        super::file::ModelFile::of_bayes(self, features, training)
    }
}
