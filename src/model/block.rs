//! Feature blocks for `model-parallel` training: the input dimensions (and
//! so the weights) are cut into one contiguous block per worker. A worker
//! decodes only its block's numeric columns, keeps only the hashed slots in
//! its range, and holds only its block's weights; margins are the sum of
//! every block's partial margin.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::Layout;
use crate::data::encode::{Block, FeatureSpec};
use crate::spec::OptimizerSpec;

/// The part of the parameter vector one worker owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureBlock {
    /// The full model's shape.
    pub layout: Layout,
    /// Numeric features owned (indices into the spec's numeric features).
    pub numeric: Range<usize>,
    /// Hashed slots owned (in `[0, 2^hash_bits)`).
    pub hashed: Range<usize>,
    /// True for the block that holds the intercepts (block 0).
    pub intercept: bool,
}

impl FeatureBlock {
    /// Cuts the input dimensions `[0, d)` (numeric features, then hashed
    /// slots) into `workers` contiguous, balanced blocks; block 0 also holds
    /// the intercepts.
    pub fn split(layout: Layout, workers: usize) -> Vec<FeatureBlock> {
        let w = workers.max(1);
        let (d, p) = (layout.d, layout.p);
        (0..w)
            .map(|i| {
                let (lo, hi) = (i * d / w, (i + 1) * d / w);
                FeatureBlock {
                    layout,
                    numeric: lo.min(p)..hi.min(p),
                    hashed: lo.max(p) - p..hi.max(p) - p,
                    intercept: i == 0,
                }
            })
            .collect()
    }

    /// Width of one output's row of local parameters (intercept slot, owned
    /// numeric weights, owned hashed weights).
    fn width(&self) -> usize {
        1 + self.numeric.len() + self.hashed.len()
    }

    /// Parameters this block holds (`k` outputs; the intercept slot of a
    /// block without intercepts stays 0).
    pub fn len(&self) -> usize {
        self.layout.k * self.width()
    }

    /// True if the block holds no weights.
    pub fn is_empty(&self) -> bool {
        self.numeric.is_empty() && self.hashed.is_empty() && !self.intercept
    }

    /// Index in the full parameter vector of local parameter `i`, or `None`
    /// for the unused intercept slot of blocks other than block 0.
    pub fn global(&self, i: usize) -> Option<usize> {
        let (kk, j) = (i / self.width(), i % self.width());
        let base = kk * (self.layout.d + 1);
        let p_w = self.numeric.len();
        if j == 0 {
            self.intercept.then_some(base)
        } else if j <= p_w {
            Some(base + 1 + self.numeric.start + j - 1)
        } else {
            Some(base + 1 + self.layout.p + self.hashed.start + j - 1 - p_w)
        }
    }

    /// True if the block takes lazy updates under `optimizer`: only with
    /// hashed slots (every step touches every numeric weight).
    pub fn steps_lazily(&self, optimizer: &OptimizerSpec) -> bool {
        optimizer
            .first_order()
            .is_some_and(|f| f.lazy && !self.hashed.is_empty())
    }

    /// Is local parameter `i` an intercept slot (never penalised)?
    pub fn is_intercept(&self, i: usize) -> bool {
        i.is_multiple_of(self.width())
    }

    /// The feature spec this block decodes: its own numeric columns, and the
    /// categorical columns only if it owns hashed slots.
    pub fn spec(&self, full: &FeatureSpec) -> FeatureSpec {
        FeatureSpec {
            numeric: full.numeric[self.numeric.clone()].to_vec(),
            categorical: if self.hashed.is_empty() {
                Vec::new()
            } else {
                full.categorical.clone()
            },
            ..full.clone()
        }
    }

    /// Partial margins of row `i` of `block` (decoded with [`Self::spec`])
    /// from the local parameters `theta`, into `out` (length `k`).
    #[inline]
    pub fn margins(&self, theta: &[f64], block: &Block, i: usize, out: &mut [f64]) {
        let (width, p_w) = (self.width(), self.numeric.len());
        let x = &block.dense[i * block.p..(i + 1) * block.p];
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        let s = &block.signs[i * block.c..(i + 1) * block.c];
        let Range { start, end } = self.hashed;
        for (kk, o) in out.iter_mut().enumerate() {
            let w = &theta[kk * width..(kk + 1) * width];
            let mut m = w[0];
            for (wj, &xj) in w[1..1 + p_w].iter().zip(x) {
                m += wj * xj as f64;
            }
            for (&hj, &sj) in h.iter().zip(s) {
                let hj = hj as usize;
                if (start..end).contains(&hj) {
                    m += w[1 + p_w + hj - start] * sj as f64;
                }
            }
            *o = m;
        }
    }

    /// Local parameters every row may touch: each output's intercept slot
    /// and numeric weights (hashed weights are reported per row by
    /// [`Self::add_gradient`]).
    pub fn dense_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let (width, p_w) = (self.width(), self.numeric.len());
        (0..self.layout.k).flat_map(move |kk| kk * width..kk * width + 1 + p_w)
    }

    /// Is local parameter `i` one of [`Self::dense_indices`]?
    pub fn is_dense(&self, i: usize) -> bool {
        i % self.width() <= self.numeric.len()
    }

    /// The hashed local parameters row `i` of `block` reads (for every
    /// output; with repeats when tokens collide).
    pub fn hashed_coords<'a>(
        &'a self,
        block: &'a Block,
        i: usize,
    ) -> impl Iterator<Item = usize> + 'a {
        let (width, p_w) = (self.width(), self.numeric.len());
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        let Range { start, end } = self.hashed;
        (0..self.layout.k).flat_map(move |kk| {
            h.iter()
                .map(|&hj| hj as usize)
                .filter(move |hj| (start..end).contains(hj))
                .map(move |hj| kk * width + 1 + p_w + hj - start)
        })
    }

    /// Adds row `i`'s gradient, given `∂loss/∂margin` in `dm`, to `grad`
    /// (local parameters), and pushes the hashed weights it touched onto
    /// `touched`.
    #[inline]
    pub fn add_gradient(
        &self,
        block: &Block,
        i: usize,
        dm: &[f64],
        grad: &mut [f64],
        touched: &mut Vec<usize>,
    ) {
        let (width, p_w) = (self.width(), self.numeric.len());
        let x = &block.dense[i * block.p..(i + 1) * block.p];
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        let s = &block.signs[i * block.c..(i + 1) * block.c];
        let Range { start, end } = self.hashed;
        for (kk, &g) in dm.iter().enumerate() {
            if g == 0.0 {
                continue;
            }
            let gw = &mut grad[kk * width..(kk + 1) * width];
            if self.intercept {
                gw[0] += g;
            }
            for (gj, &xj) in gw[1..1 + p_w].iter_mut().zip(x) {
                *gj += g * xj as f64;
            }
            for (&hj, &sj) in h.iter().zip(s) {
                let hj = hj as usize;
                if (start..end).contains(&hj) {
                    gw[1 + p_w + hj - start] += g * sj as f64;
                    touched.push(kk * width + 1 + p_w + hj - start);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_parameter_once() {
        for (k, d, p) in [(1, 10, 10), (3, 4 + 64, 4), (1, 1 << 12, 0), (2, 5, 2)] {
            let layout = Layout { k, d, p };
            for w in 1..6 {
                let blocks = FeatureBlock::split(layout, w);
                let mut seen = vec![0u32; layout.len()];
                for b in &blocks {
                    for i in 0..b.len() {
                        if let Some(g) = b.global(i) {
                            seen[g] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "{layout:?} on {w}: {seen:?}");
                let sizes: Vec<usize> = blocks.iter().map(|b| b.len() - k).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= k, "unbalanced {sizes:?}");
            }
        }
    }
}
