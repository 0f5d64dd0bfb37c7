//! The linear model family: layout of the parameter vector, margins,
//! per-row gradients and predictions.
//!
//! Parameters are one flat vector: for each output `k` (one for linear,
//! logistic and hinge, one per class for softmax) an intercept followed by
//! one weight per input dimension (numeric features, then the hashed space).

pub mod block;
pub mod file;
pub mod loss;
pub mod weights;

use serde::{Deserialize, Serialize};

use crate::data::encode::{Block, FeatureSpec};
use crate::exact::{self, Exact};
use crate::spec::ModelKind;

/// Shape of the parameter vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Outputs (margins per row).
    pub k: usize,
    /// Input dimensions.
    pub d: usize,
    /// Numeric (dense) dimensions; the rest are hashed.
    pub p: usize,
}

impl Layout {
    /// The layout for a model kind and feature spec.
    pub fn new(kind: ModelKind, spec: &FeatureSpec) -> Layout {
        let k = match kind {
            ModelKind::Softmax => spec.classes.as_ref().map_or(2, Vec::len),
            _ => 1,
        };
        Layout {
            k,
            d: spec.dim(),
            p: spec.numeric.len(),
        }
    }

    /// Length of the parameter vector.
    pub fn len(&self) -> usize {
        self.k * (self.d + 1)
    }

    /// True if there are no parameters (never for a valid model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Is parameter `i` an intercept (never penalised)?
    pub fn is_intercept(&self, i: usize) -> bool {
        i.is_multiple_of(self.d + 1)
    }

    /// Parameters every row touches: each output's intercept and numeric
    /// weights (the hashed ones depend on the row's tokens).
    pub fn dense_indices(&self) -> impl Iterator<Item = usize> {
        let (d, p) = (self.d, self.p);
        (0..self.k).flat_map(move |kk| kk * (d + 1)..kk * (d + 1) + 1 + p)
    }

    /// True if the model has hashed (categorical) weights.
    pub fn has_hashed(&self) -> bool {
        self.d > self.p
    }

    /// Is parameter `i` one of [`Layout::dense_indices`]?
    pub fn is_dense(&self, i: usize) -> bool {
        i % (self.d + 1) <= self.p
    }

    /// The hashed parameters row `i` of `block` reads (for every output;
    /// with repeats when tokens collide).
    pub fn hashed_coords<'a>(
        &self,
        block: &'a Block,
        i: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        let (d, p) = (self.d, self.p);
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        (0..self.k).flat_map(move |kk| h.iter().map(move |&hj| kk * (d + 1) + 1 + p + hj as usize))
    }
}

/// A linear model: kind, layout and parameters.
#[derive(Debug, Clone)]
pub struct LinearModel {
    /// Family.
    pub kind: ModelKind,
    /// Shape.
    pub layout: Layout,
    /// Parameters, see [`Layout`].
    pub theta: Vec<f64>,
}

/// Reusable buffers for gradient accumulation over one unit's rows.
#[derive(Debug, Default)]
pub struct Scratch {
    grad: Vec<f64>,
    touched: Vec<usize>,
    /// Hashed coordinates of `acc` that [`LinearModel::accumulate`] added
    /// to since the last [`Scratch::drain_touched`] (with repeats).
    acc_touched: Vec<usize>,
    margins: Vec<f64>,
    dm: Vec<f64>,
}

impl Scratch {
    /// The hashed coordinates of the accumulator touched since the last call.
    pub fn drain_touched(&mut self) -> std::vec::Drain<'_, usize> {
        self.acc_touched.drain(..)
    }
}

impl LinearModel {
    /// Margins of row `i` of `block` into `out` (length `k`).
    #[inline]
    pub fn margins(&self, block: &Block, i: usize, out: &mut [f64]) {
        let Layout { k, d, p } = self.layout;
        let x = &block.dense[i * block.p..(i + 1) * block.p];
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        let s = &block.signs[i * block.c..(i + 1) * block.c];
        for (kk, o) in out.iter_mut().enumerate().take(k) {
            let base = kk * (d + 1);
            let w = &self.theta[base + 1..base + 1 + p];
            let mut m = self.theta[base];
            for (wj, &xj) in w.iter().zip(x) {
                m += wj * xj as f64;
            }
            for (&hj, &sj) in h.iter().zip(s) {
                m += self.theta[base + 1 + p + hj as usize] * sj as f64;
            }
            *o = m;
        }
    }

    /// Adds the loss gradient of `rows` of `block` (in the given order) to
    /// `acc` as one exactly-rounded partial, and returns the loss sum and
    /// the partial's largest magnitude (its contribution to the sums'
    /// [`exact::Bound`]).
    ///
    /// The partial is summed in `f64` in row order, then rounded once: the
    /// result depends only on the rows, never on the worker computing it.
    pub fn accumulate(
        &self,
        block: &Block,
        rows: impl Iterator<Item = usize>,
        scratch: &mut Scratch,
        acc: &mut [Exact],
    ) -> Result<(f64, exact::Bound), String> {
        let Layout { k, d, p } = self.layout;
        let n = self.layout.len();
        if scratch.grad.len() != n {
            scratch.grad = vec![0.0; n];
        }
        scratch.margins.resize(k, 0.0);
        scratch.dm.resize(k, 0.0);
        let mut loss_sum = 0.0;
        let hashed = block.c > 0;
        for i in rows {
            self.margins(block, i, &mut scratch.margins);
            let y = block.label[i];
            loss_sum += loss::loss_and_grad(self.kind, &scratch.margins, y, &mut scratch.dm);
            let x = &block.dense[i * block.p..(i + 1) * block.p];
            let h = &block.hashed[i * block.c..(i + 1) * block.c];
            let s = &block.signs[i * block.c..(i + 1) * block.c];
            for kk in 0..k {
                let g = scratch.dm[kk];
                if g == 0.0 {
                    continue;
                }
                let base = kk * (d + 1);
                scratch.grad[base] += g;
                for (gj, &xj) in scratch.grad[base + 1..base + 1 + p].iter_mut().zip(x) {
                    *gj += g * xj as f64;
                }
                for (&hj, &sj) in h.iter().zip(s) {
                    let idx = base + 1 + p + hj as usize;
                    scratch.grad[idx] += g * sj as f64;
                    scratch.touched.push(idx);
                }
            }
        }
        // Round the partial once into the exact accumulator, then clear it.
        let overflow = |i: usize, g: f64| {
            format!(
                "the gradient of component {i} summed over a unit's rows is {g:e}: not finite, or beyond the {:e} exact sums hold (rescale the feature or label, or set data.standardize = true)",
                exact::LIMIT
            )
        };
        let mut largest = exact::Bound::default();
        for kk in 0..k {
            let base = kk * (d + 1);
            let range = base..base + 1 + p;
            let l = exact::accumulate(&mut acc[range.clone()], &scratch.grad[range.clone()])
                .map_err(|i| overflow(base + i, scratch.grad[base + i]))?;
            largest = largest.max(l);
            scratch.grad[range].iter_mut().for_each(|g| *g = 0.0);
        }
        if hashed {
            for &idx in &scratch.touched {
                let g = scratch.grad[idx];
                if g != 0.0 {
                    let v = Exact::from_f64(g).ok_or_else(|| overflow(idx, g))?;
                    largest = largest.max(v.magnitude());
                    acc[idx] += v;
                    scratch.grad[idx] = 0.0;
                    scratch.acc_touched.push(idx);
                }
            }
            scratch.touched.clear();
        }
        Ok((loss_sum, largest))
    }

    /// Predicted value (linear), positive-class probability (logistic),
    /// decision value (hinge) or class probabilities (softmax) of one row.
    /// Returns false if a margin is not finite (the weights overflow on
    /// this row), in which case `out` means nothing.
    pub fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool {
        self.margins(block, i, out);
        if !out.iter().all(|m| m.is_finite()) {
            return false;
        }
        match self.kind {
            ModelKind::Linear | ModelKind::Hinge => {}
            ModelKind::Logistic => out[0] = loss::sigmoid(out[0]),
            ModelKind::Softmax => {
                let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut z = 0.0;
                for o in out.iter_mut() {
                    *o = (*o - max).exp();
                    z += *o;
                }
                out.iter_mut().for_each(|o| *o /= z);
            }
        }
        true
    }
}
