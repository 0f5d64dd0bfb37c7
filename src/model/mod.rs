//! Models: the [`Model`] interface the operators, strategies, metrics,
//! prediction and the model file work through, the parameter [`Roles`]
//! the optimizer needs, and its one implementation today, the linear
//! family ([`LinearModel`]: linear, logistic, hinge, softmax).
//!
//! A linear model's parameters are one flat vector: for each output `k`
//! (one for linear, logistic and hinge, one per class for softmax) an
//! intercept followed by one weight per input dimension (numeric features,
//! then the hashed space).
//!
//! A multilayer perceptron ([`mlp::Mlp`], `model.kind = "mlp"`) is
//! another: its forward pass in `margins`, its backward pass in
//! `accumulate`, its [`Roles`], its model-file section, and its case in
//! [`build`]; the data-parallel strategies train it unchanged.
//! `model-parallel` splits the linear family's features into blocks
//! ([`block`]) and a network's hidden units into slices ([`unit_split`]),
//! each with its own operator.

pub mod bayes;
pub mod block;
pub mod file;
pub mod loss;
pub mod mlp;
pub mod network_file;
pub mod unit_split;
pub mod weights;

use serde::{Deserialize, Serialize};

use crate::data::encode::{Block, FeatureSpec};
use crate::exact::{self, Exact, Sums};
use crate::spec::{ModelKind, ModelSpec};

/// What the training loop, metrics, prediction and the model file need of
/// a model. Methods work on whole rows or blocks, so that the dynamic
/// dispatch costs nothing next to the arithmetic.
pub trait Model: std::fmt::Debug + Send {
    /// The family (which loss, which predictions).
    fn kind(&self) -> ModelKind;

    /// Outputs (margins) per row.
    fn outputs(&self) -> usize;

    /// The roles of the parameters: which are intercepts (never
    /// penalised), which every step touches.
    fn roles(&self) -> Roles;

    /// The parameter vector.
    fn params(&self) -> &[f64];

    /// The parameter vector, to be set by the training loop.
    fn params_mut(&mut self) -> &mut [f64];

    /// The forward pass: the margins of row `i` of `block` into `out`
    /// (length [`Model::outputs`]).
    fn margins(&self, block: &Block, i: usize, out: &mut [f64]);

    /// Calls `visit` with each parameter row `i` of `block` reads besides
    /// the [`Roles::dense_indices`] (with repeats).
    fn sparse_coords(&self, block: &Block, i: usize, visit: &mut dyn FnMut(usize));

    /// The loss gradient of `rows` of `block` (in that order), added to
    /// `acc` as one exactly rounded partial; returns the loss sum and the
    /// partial's largest magnitude (its contribution to the sums'
    /// [`exact::Bound`]). Coordinates outside the dense ones that it adds
    /// to are recorded in `scratch` ([`Scratch::drain_touched`]).
    fn accumulate(
        &self,
        block: &Block,
        rows: &[usize],
        scratch: &mut Scratch,
        acc: Sums<'_>,
    ) -> Result<(f64, exact::Bound), String>;

    /// The prediction of row `i` of `block` into `out` (length
    /// [`Model::outputs`]); false if a margin is not finite.
    fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool;

    /// The model-file section of the trained model.
    fn to_file(&self, features: &FeatureSpec, training: file::TrainingSummary) -> file::ModelFile;
}

/// [`build`] starting from `theta`, which a linear model takes over
/// rather than copies (a wide hashed model's vector is mostly pages never
/// touched; a copy would write them all).
pub fn build_owned(
    spec: &ModelSpec,
    features: &FeatureSpec,
    theta: Vec<f64>,
) -> Result<Box<dyn Model>, String> {
    if spec.network.is_some() {
        return build(spec, features, Some(&theta));
    }
    let layout = Layout::new(spec.kind, features);
    if theta.len() != layout.len() {
        return Err(format!(
            "{} parameters for a {} model of {}",
            theta.len(),
            spec.kind.name(),
            layout.len()
        ));
    }
    Ok(Box::new(LinearModel {
        kind: spec.kind,
        layout,
        theta,
    }))
}

/// The model a pipeline trains, for a feature spec, starting from `init`
/// (zero for a linear model, the seeded initialisation for a network, if
/// `None`). An error says why `init` does not fit the model.
pub fn build(
    spec: &ModelSpec,
    features: &FeatureSpec,
    init: Option<&[f64]>,
) -> Result<Box<dyn Model>, String> {
    if let Some(network) = &spec.network {
        return Ok(Box::new(mlp::Mlp::build(
            spec.kind, network, features, init,
        )?));
    }
    let theta = init.map_or_else(
        || vec![0.0; Layout::new(spec.kind, features).len()],
        <[f64]>::to_vec,
    );
    build_owned(spec, features, theta)
}

/// Parameters of a model of these features (what [`build`] makes).
pub fn param_count(spec: &ModelSpec, features: &FeatureSpec) -> usize {
    match &spec.network {
        Some(network) => mlp::Shape::of(spec.kind, network, features).len(),
        None => Layout::new(spec.kind, features).len(),
    }
}

/// The roles of the parameters of a model of these features, without
/// building it.
pub fn roles(spec: &ModelSpec, features: &FeatureSpec) -> Roles {
    match &spec.network {
        Some(network) => mlp::Shape::of(spec.kind, network, features).roles(),
        None => Layout::new(spec.kind, features).roles(),
    }
}

/// A set of parameter indices, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mask(Vec<u64>);

impl Mask {
    fn new(len: usize, set: impl Fn(usize) -> bool) -> Mask {
        let mut words = vec![0u64; len.div_ceil(64)];
        for i in (0..len).filter(|&i| set(i)) {
            words[i / 64] |= 1 << (i % 64);
        }
        Mask(words)
    }

    #[inline]
    fn has(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }
}

/// The roles of a model's parameters, as the optimizer and the shard
/// owners see them: intercepts are never penalised; dense parameters are
/// touched by every step (the others only by the rows that read them,
/// which lazy updates and sparse messages exploit).
///
/// The linear family answers by arithmetic on its [`Layout`] (no memory
/// per parameter); any other model gives its roles as per-parameter masks
/// ([`Roles::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    len: usize,
    dense_list: Vec<usize>,
    kind: RoleKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleKind {
    Linear(Layout),
    Masks { intercept: Mask, dense: Mask },
}

impl Roles {
    /// Roles of `len` parameters, given as predicates (kept as bit masks).
    pub fn new(
        len: usize,
        intercept: impl Fn(usize) -> bool,
        dense: impl Fn(usize) -> bool,
    ) -> Roles {
        Roles {
            len,
            dense_list: (0..len).filter(|&i| dense(i)).collect(),
            kind: RoleKind::Masks {
                intercept: Mask::new(len, intercept),
                dense: Mask::new(len, dense),
            },
        }
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Is parameter `i` an intercept (never penalised)?
    #[inline]
    pub fn is_intercept(&self, i: usize) -> bool {
        match &self.kind {
            RoleKind::Linear(l) => i < self.len && l.is_intercept(i),
            RoleKind::Masks { intercept, .. } => intercept.has(i),
        }
    }

    /// Does every step touch parameter `i`?
    #[inline]
    pub fn is_dense(&self, i: usize) -> bool {
        match &self.kind {
            RoleKind::Linear(l) => i < self.len && l.is_dense(i),
            RoleKind::Masks { dense, .. } => dense.has(i),
        }
    }

    /// The parameters every step touches, increasing.
    pub fn dense_indices(&self) -> &[usize] {
        &self.dense_list
    }

    /// True if some parameters are touched only by the rows that read them.
    pub fn has_sparse(&self) -> bool {
        self.dense_list.len() < self.len
    }
}

/// Shape of a linear model's parameter vector.
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

    /// The roles of the parameters.
    pub fn roles(&self) -> Roles {
        Roles {
            len: self.len(),
            dense_list: self.dense_indices().collect(),
            kind: RoleKind::Linear(*self),
        }
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

/// Rows whose margins [`LinearModel::accumulate`] computes together
/// (single-output models).
const ROWS_TOGETHER: usize = 4;

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

    /// Rounds the partial's sparse coordinates (`touched`) into `acc`,
    /// clears them, and records them as touched in the accumulator;
    /// returns the largest magnitude added. `overflow` words the error of
    /// a value the exact sums cannot hold.
    fn round_touched(
        &mut self,
        acc: &mut Sums<'_>,
        overflow: &dyn Fn(usize, f64) -> String,
    ) -> Result<exact::Bound, String> {
        let mut largest = exact::Bound::default();
        let touched = std::mem::take(&mut self.touched);
        for (n, &idx) in touched.iter().enumerate() {
            let g = self.grad[idx];
            if g != 0.0 {
                let Some(v) = Exact::from_f64(g) else {
                    // Leave the scratch clear: a slot is listed only when
                    // it turns non-zero.
                    touched[n..].iter().for_each(|&i| self.grad[i] = 0.0);
                    return Err(overflow(idx, g));
                };
                largest = largest.max(v.magnitude());
                acc.add(idx, v);
                self.grad[idx] = 0.0;
                self.acc_touched.push(idx);
            }
        }
        // Keep the list's allocation for the next partial.
        self.touched = touched;
        self.touched.clear();
        Ok(largest)
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

    /// The margins of rows `rows` of `block` for a single-output model
    /// (`k = 1`): each row's sum taken in [`LinearModel::margins`]'s order,
    /// so to its bits, the rows' sums interleaved. One row's sum is a chain
    /// of dependent additions; the CPU overlaps the independent chains.
    #[inline]
    fn margins_together(
        &self,
        block: &Block,
        rows: [usize; ROWS_TOGETHER],
    ) -> [f64; ROWS_TOGETHER] {
        let p = self.layout.p;
        let (bp, bc) = (block.p, block.c);
        let w = &self.theta[1..1 + p];
        let slots = &self.theta[1 + p..];
        let mut m = [self.theta[0]; ROWS_TOGETHER];
        let [r0, r1, r2, r3] = rows;
        let x = |i: usize| &block.dense[i * bp..(i + 1) * bp];
        let xs = x(r0).iter().zip(x(r1)).zip(x(r2)).zip(x(r3));
        for (&wj, (((&a, &b), &c), &d)) in w.iter().zip(xs) {
            m[0] += wj * a as f64;
            m[1] += wj * b as f64;
            m[2] += wj * c as f64;
            m[3] += wj * d as f64;
        }
        let h = |i: usize| &block.hashed[i * bc..(i + 1) * bc];
        let s = |i: usize| &block.signs[i * bc..(i + 1) * bc];
        let hs = h(r0).iter().zip(h(r1)).zip(h(r2)).zip(h(r3));
        let ss = s(r0).iter().zip(s(r1)).zip(s(r2)).zip(s(r3));
        for ((((&h0, &h1), &h2), &h3), (((&s0, &s1), &s2), &s3)) in hs.zip(ss) {
            m[0] += slots[h0 as usize] * s0 as f64;
            m[1] += slots[h1 as usize] * s1 as f64;
            m[2] += slots[h2 as usize] * s2 as f64;
            m[3] += slots[h3 as usize] * s3 as f64;
        }
        m
    }

    /// Row `i`'s loss from its margins (in `scratch.margins`), its
    /// gradient added to `scratch`'s partial; returns the weighted loss.
    #[inline]
    fn add_row(&self, block: &Block, i: usize, scratch: &mut Scratch) -> f64 {
        let Layout { k, d, p } = self.layout;
        let Scratch {
            grad,
            touched,
            margins,
            dm,
            ..
        } = scratch;
        let y = block.label.at(i);
        let l = loss::loss_and_grad(self.kind, margins, y, dm);
        let l = weighted(block, i, l, dm);
        let x = &block.dense[i * block.p..(i + 1) * block.p];
        let h = &block.hashed[i * block.c..(i + 1) * block.c];
        let s = &block.signs[i * block.c..(i + 1) * block.c];
        for (kk, &g) in dm.iter().enumerate().take(k) {
            if g == 0.0 {
                continue;
            }
            let base = kk * (d + 1);
            grad[base] += g;
            for (gj, &xj) in grad[base + 1..base + 1 + p].iter_mut().zip(x) {
                *gj += g * xj as f64;
            }
            let slots = &mut grad[base + 1 + p..];
            for (&hj, &sj) in h.iter().zip(s) {
                let slot = &mut slots[hj as usize];
                // Listed when it turns non-zero: every coordinate
                // non-zero at the end is listed, with few repeats.
                if *slot == 0.0 {
                    touched.push(base + 1 + p + hj as usize);
                }
                *slot += g * sj as f64;
            }
        }
        l
    }

    /// [`LinearModel::accumulate`]'s loop for a single-output model: the
    /// margins of [`ROWS_TOGETHER`] rows at a time (their sums overlap),
    /// then each row's loss and gradient in row order. Returns the loss
    /// sum.
    fn add_rows(
        &self,
        block: &Block,
        mut rows: impl Iterator<Item = usize>,
        scratch: &mut Scratch,
    ) -> f64 {
        let mut loss_sum = 0.0;
        loop {
            let mut group = [0usize; ROWS_TOGETHER];
            let mut got = 0;
            for (slot, i) in group.iter_mut().zip(&mut rows) {
                *slot = i;
                got += 1;
            }
            if got < ROWS_TOGETHER {
                for &i in &group[..got] {
                    self.margins(block, i, &mut scratch.margins);
                    loss_sum += self.add_row(block, i, scratch);
                }
                return loss_sum;
            }
            let margins = self.margins_together(block, group);
            for (&i, &m) in group.iter().zip(&margins) {
                scratch.margins[0] = m;
                loss_sum += self.add_row(block, i, scratch);
            }
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
        mut acc: Sums<'_>,
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
        if k == 1 {
            loss_sum = self.add_rows(block, rows, scratch);
        } else {
            for i in rows {
                self.margins(block, i, &mut scratch.margins);
                loss_sum += self.add_row(block, i, scratch);
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
            let l = acc
                .add_partial(range.start, &scratch.grad[range.clone()])
                .map_err(|i| overflow(base + i, scratch.grad[base + i]))?;
            largest = largest.max(l);
            scratch.grad[range].iter_mut().for_each(|g| *g = 0.0);
        }
        if hashed {
            largest = largest.max(scratch.round_touched(&mut acc, &overflow)?);
        }
        Ok((loss_sum, largest))
    }

    /// Predicted value (linear), positive-class probability (logistic),
    /// decision value (hinge) or class probabilities (softmax) of one row.
    /// Returns false if a margin is not finite (the weights overflow on
    /// this row), in which case `out` means nothing.
    pub fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool {
        self.margins(block, i, out);
        predict_from_margins(self.kind, out)
    }
}

/// Row `i`'s loss `l` and margin gradient `dm` times the row's weight
/// (`data.weight`, `model.class_weight`); returns the weighted loss. A row
/// of weight 1 is left as it is.
#[inline]
pub fn weighted(block: &Block, i: usize, l: f64, dm: &mut [f64]) -> f64 {
    let w = block.weight_of(i);
    if w == 1.0 {
        return l;
    }
    dm.iter_mut().for_each(|g| *g *= w);
    l * w
}

/// Turns a row's margins in `out` into a `kind` model's prediction (see
/// [`LinearModel::predict_row`]), in place; false if a margin is not
/// finite, in which case `out` means nothing.
pub fn predict_from_margins(kind: ModelKind, out: &mut [f64]) -> bool {
    if !out.iter().all(|m| m.is_finite()) {
        return false;
    }
    match kind {
        ModelKind::Linear | ModelKind::Hinge => {}
        ModelKind::Logistic => out[0] = loss::sigmoid(out[0]),
        ModelKind::Softmax | ModelKind::GaussianNb | ModelKind::MultinomialNb => {
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

impl Model for LinearModel {
    fn kind(&self) -> ModelKind {
        self.kind
    }

    fn outputs(&self) -> usize {
        self.layout.k
    }

    fn roles(&self) -> Roles {
        self.layout.roles()
    }

    fn params(&self) -> &[f64] {
        &self.theta
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.theta
    }

    fn margins(&self, block: &Block, i: usize, out: &mut [f64]) {
        LinearModel::margins(self, block, i, out);
    }

    fn sparse_coords(&self, block: &Block, i: usize, visit: &mut dyn FnMut(usize)) {
        self.layout.hashed_coords(block, i).for_each(visit);
    }

    fn accumulate(
        &self,
        block: &Block,
        rows: &[usize],
        scratch: &mut Scratch,
        acc: Sums<'_>,
    ) -> Result<(f64, exact::Bound), String> {
        LinearModel::accumulate(self, block, rows.iter().copied(), scratch, acc)
    }

    fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool {
        LinearModel::predict_row(self, block, i, out)
    }

    fn to_file(&self, features: &FeatureSpec, training: file::TrainingSummary) -> file::ModelFile {
        file::ModelFile::new(self, features, training)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_answer_as_the_linear_layout_does_by_arithmetic_or_masks() {
        for layout in [
            Layout { k: 1, d: 5, p: 5 },
            Layout { k: 1, d: 9, p: 2 },
            Layout { k: 3, d: 70, p: 4 },
            Layout { k: 2, d: 64, p: 0 },
        ] {
            let roles = layout.roles();
            assert_eq!(roles.len(), layout.len());
            for i in 0..layout.len() {
                assert_eq!(
                    roles.is_intercept(i),
                    layout.is_intercept(i),
                    "{layout:?} {i}"
                );
                assert_eq!(roles.is_dense(i), layout.is_dense(i), "{layout:?} {i}");
            }
            assert!(!roles.is_intercept(layout.len()) && !roles.is_dense(layout.len() + 64));
            let dense: Vec<usize> = layout.dense_indices().collect();
            assert_eq!(roles.dense_indices(), &dense[..]);
            assert_eq!(roles.has_sparse(), layout.has_hashed());
        }
    }

    use proptest::prelude::*;

    /// A logistic model over `p` numeric features and 16 hashed slots,
    /// and a block of `rows` rows of `c` hashed columns, from `values`
    /// (cycled): values of either sign, zeros and −0 among them.
    fn model_and_block(p: usize, c: usize, rows: usize, values: &[f64]) -> (LinearModel, Block) {
        let layout = Layout { k: 1, d: p + 16, p };
        let at = |i: usize| values[i % values.len()];
        let model = LinearModel {
            kind: ModelKind::Logistic,
            layout,
            theta: (0..layout.len()).map(|i| at(i * 7 + 1)).collect(),
        };
        let block = Block {
            rows,
            p,
            dense: (0..rows * p).map(|i| at(i * 3) as f32).collect(),
            c,
            hashed: (0..rows * c)
                .map(|i| (at(i * 5).to_bits() % 16) as u32)
                .collect(),
            signs: (0..rows * c)
                .map(|i| {
                    if i % 4 == 0 {
                        1.0
                    } else {
                        at(i * 11 + 2) as f32
                    }
                })
                .collect(),
            label: (0..rows).map(|i| (at(i) > 0.0) as u8 as f64).collect(),
            ..Block::default()
        };
        (model, block)
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1.0),
            -4.0f64..4.0,
            (-1e6f64..1e6).prop_map(|v| v * 1e-9),
        ]
    }

    proptest! {
        /// Rows summed together are summed each as alone: the same bits.
        #[test]
        fn margins_together_are_each_rows_margins(
            p in 0usize..5,
            c in 0usize..6,
            values in prop::collection::vec(value(), 1..40),
            rows in prop::array::uniform4(0usize..9),
        ) {
            let (model, block) = model_and_block(p, c, 9, &values);
            let together = model.margins_together(&block, rows);
            for (&i, m) in rows.iter().zip(together) {
                let mut alone = [0.0];
                model.margins(&block, i, &mut alone);
                prop_assert_eq!(m.to_bits(), alone[0].to_bits(), "row {}", i);
            }
        }

        /// The single-output loop (rows four at a time, then the rest)
        /// leaves the partial, its list of touched slots and the loss as
        /// row after row does, in any row order.
        #[test]
        fn rows_four_at_a_time_are_rows_one_at_a_time(
            p in 0usize..4,
            c in 0usize..5,
            values in prop::collection::vec(value(), 1..40),
            order in prop::collection::vec(0usize..11, 0..23),
        ) {
            let (model, block) = model_and_block(p, c, 11, &values);
            let fresh = || Scratch {
                grad: vec![0.0; model.layout.len()],
                margins: vec![0.0],
                dm: vec![0.0],
                ..Scratch::default()
            };
            let mut together = fresh();
            let loss = model.add_rows(&block, order.iter().copied(), &mut together);
            let mut alone = fresh();
            let mut want = 0.0;
            for &i in &order {
                model.margins(&block, i, &mut alone.margins);
                want += model.add_row(&block, i, &mut alone);
            }
            prop_assert_eq!(loss.to_bits(), want.to_bits());
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&together.grad), bits(&alone.grad));
            prop_assert_eq!(&together.touched, &alone.touched);
        }
    }
}
