//! A multilayer perceptron: dense hidden layers (ReLU or tanh) under the
//! head of the linear family (linear, logistic or softmax margins and
//! losses, [`super::loss`]).
//!
//! `model.kind = "mlp"` (docs/neural.md): seeded initialisation, the
//! batched forward and backward passes, the gradient summed exactly into
//! the training loop's accumulator, and the parameters' [`Roles`]; its
//! model-file section is [`super::network_file`], its split over workers
//! by hidden units [`super::unit_split`].
//!
//! **Parameters**, one flat vector, layer by layer: the weights `W_l`
//! (`out_l × in_l`, row-major), then the biases `b_l` (`out_l`). The first
//! layer's inputs are the numeric features, then the hashed space: a row's
//! hashed slots select columns of `W_0`, each times its slot's sign, summed
//! (an embedding bag), so wide hashed data costs what its rows touch. Those
//! columns are the sparse parameters; every other one is dense, and the
//! biases are the intercepts (never penalised).
//!
//! **Arithmetic**: each pass over a batch of rows is a few matrix products
//! (ndarray, whose `matrixmultiply` kernels are pure Rust; no BLAS).
//! A row's margins are the same bits whichever rows share its batch
//! (tested), so a model scores a row alone as training did in a batch.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::{loss, Roles, Scratch};
use crate::data::encode::{Block, FeatureSpec};
use crate::exact::{self, Exact, Sums};
pub use crate::spec::Activation;
use crate::spec::{ModelKind, NetworkSpec};

/// `max(0, z)` or `tanh(z)`.
pub(super) fn apply(act: Activation, z: f64) -> f64 {
    match act {
        Activation::Relu => z.max(0.0),
        Activation::Tanh => z.tanh(),
    }
}

/// The activation's derivative at pre-activation `z`, given its value `a`.
pub(super) fn slope(act: Activation, z: f64, a: f64) -> f64 {
    match act {
        Activation::Relu => {
            if z > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Activation::Tanh => 1.0 - a * a,
    }
}

/// The starting value of the first layer's weight from hashed slot
/// `slot` into unit `unit`: uniform in `[-bound, bound)`, from SplitMix64
/// (Steele, Lea & Flood, 2014) of the seed, unit and slot, so that a
/// model file need list only the hashed columns training moved
/// (docs/model-format.md spells the function out).
pub fn hashed_init(seed: u64, unit: usize, slot: usize, bound: f64) -> f64 {
    let key = ((unit as u64) << 32) ^ slot as u64;
    let x = splitmix64(seed ^ splitmix64(key));
    let u = (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    (2.0 * u - 1.0) * bound
}

/// One SplitMix64 step: the finaliser of `x + 0x9E3779B97F4A7C15`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The widths of a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Numeric inputs.
    pub numeric: usize,
    /// Hashed slots (the size of the hashed space; 0 without categorical
    /// columns).
    pub hashed: usize,
    /// Hidden layers' widths, from the input up.
    pub hidden: Vec<usize>,
    /// Outputs (margins per row: 1, or one per class for softmax).
    pub outputs: usize,
    /// Hashed columns each row reads (the categorical columns): the
    /// first layer's fan-in counts these, not the whole hashed space.
    pub hashed_per_row: usize,
}

/// Where one layer's parameters are in the flat vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layer {
    /// Offset of `W` (`rows × cols`, row-major).
    weights: usize,
    /// Offset of `b` (`rows`).
    biases: usize,
    /// Outputs.
    rows: usize,
    /// Inputs.
    cols: usize,
}

impl Shape {
    /// The layers' places in the parameter vector.
    fn layers(&self) -> Vec<Layer> {
        let mut widths = vec![self.numeric + self.hashed];
        widths.extend(&self.hidden);
        widths.push(self.outputs);
        let mut at = 0;
        widths
            .windows(2)
            .map(|w| {
                let l = Layer {
                    weights: at,
                    biases: at + w[1] * w[0],
                    rows: w[1],
                    cols: w[0],
                };
                at = l.biases + l.rows;
                l
            })
            .collect()
    }

    /// Each layer's place in the parameters, from the input up: the
    /// offsets of its weights (`units × inputs`, row-major) and biases,
    /// its units and its inputs.
    pub fn layer_places(&self) -> Vec<(usize, usize, usize, usize)> {
        self.layers()
            .iter()
            .map(|l| (l.weights, l.biases, l.rows, l.cols))
            .collect()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.layers().last().map_or(0, |l| l.biases + l.rows)
    }

    /// True if the network has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A multilayer perceptron of a `kind` head (linear, logistic or softmax).
#[derive(Debug, Clone)]
pub struct Mlp {
    kind: ModelKind,
    shape: Shape,
    activation: Activation,
    /// The initialisation's seed (the hashed columns' starting values are
    /// a function of it, [`hashed_init`]).
    seed: u64,
    layers: Vec<Layer>,
    roles: Roles,
    theta: Vec<f64>,
}

/// One pass's pre-activations and activations per layer (`a[0]` is the
/// numeric inputs; `z[l]` feeds `a[l + 1]`; the last `z` is the margins).
struct Pass {
    a: Vec<Array2<f64>>,
    z: Vec<Array2<f64>>,
}

impl Shape {
    /// The shape of a `kind` network over these features.
    pub fn of(kind: ModelKind, network: &NetworkSpec, features: &FeatureSpec) -> Shape {
        let numeric = features.numeric.len();
        Shape {
            numeric,
            hashed: features.dim() - numeric,
            hidden: network.hidden.clone(),
            outputs: match kind {
                ModelKind::Softmax => features.classes.as_ref().map_or(2, Vec::len),
                _ => 1,
            },
            hashed_per_row: features.categorical.len(),
        }
    }
}

impl Mlp {
    /// A network with parameters `theta`; an error names what does not fit.
    pub fn new(
        kind: ModelKind,
        shape: Shape,
        activation: Activation,
        seed: u64,
        theta: Vec<f64>,
    ) -> Result<Mlp, String> {
        let heads = [ModelKind::Linear, ModelKind::Logistic, ModelKind::Softmax];
        if !heads.contains(&kind) {
            return Err(format!(
                "a network's head is linear, logistic or softmax, not {}",
                kind.name()
            ));
        }
        let outputs = if kind == ModelKind::Softmax {
            shape.outputs
        } else {
            1
        };
        if shape.outputs != outputs || outputs == 0 {
            return Err(format!(
                "a {} head has {outputs} output(s), the shape {}",
                kind.name(),
                shape.outputs
            ));
        }
        if shape.hidden.is_empty() || shape.hidden.contains(&0) {
            return Err("a network needs hidden layers, each with units".into());
        }
        if theta.len() != shape.len() {
            return Err(format!(
                "{} parameters for a network of {}",
                theta.len(),
                shape.len()
            ));
        }
        let layers = shape.layers();
        let roles = roles_of(&shape, &layers);
        Ok(Mlp {
            kind,
            layers,
            roles,
            shape,
            activation,
            seed,
            theta,
        })
    }

    /// The network a pipeline trains: `init`'s parameters, or those
    /// [`Mlp::init`] draws from the network's seed.
    pub fn build(
        kind: ModelKind,
        network: &NetworkSpec,
        features: &FeatureSpec,
        init: Option<&[f64]>,
    ) -> Result<Mlp, String> {
        let shape = Shape::of(kind, network, features);
        match init {
            Some(theta) => Mlp::new(
                kind,
                shape,
                network.activation,
                network.seed,
                theta.to_vec(),
            ),
            None => Mlp::init(kind, shape, network.activation, network.seed),
        }
    }

    /// The first layer's hashed columns start uniform in `±bound`.
    pub fn hashed_bound(&self) -> f64 {
        hashed_bound(&self.shape, self.activation)
    }

    /// A network initialised from `seed` alone (never from the worker
    /// count): see [`Shape::starts`].
    pub fn init(
        kind: ModelKind,
        shape: Shape,
        activation: Activation,
        seed: u64,
    ) -> Result<Mlp, String> {
        let layers = shape.layers();
        let theta = (0..shape.len())
            .map(|g| shape.start_in(&layers, activation, seed, g))
            .collect();
        Mlp::new(kind, shape, activation, seed, theta)
    }

    /// The widths.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The hidden layers' activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The initialisation's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Layers, the output layer included.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s place in the parameters: the offsets of its weights
    /// (`units × cols`, row-major) and biases, its units and its inputs.
    pub fn layer_offsets(&self, i: usize) -> (usize, usize, usize, usize) {
        let l = self.layers[i];
        (l.weights, l.biases, l.rows, l.cols)
    }

    /// Layer `i`'s weights and biases, its units and its inputs.
    pub fn layer(&self, i: usize) -> (&[f64], &[f64], usize, usize) {
        let l = self.layers[i];
        (
            &self.theta[l.weights..l.biases],
            &self.theta[l.biases..l.biases + l.rows],
            l.rows,
            l.cols,
        )
    }

    /// The head.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The parameters.
    pub fn params(&self) -> &[f64] {
        &self.theta
    }

    /// The parameters, to be set by the training loop.
    pub fn params_mut(&mut self) -> &mut [f64] {
        &mut self.theta
    }

    /// The roles: the biases are intercepts; the first layer's hashed
    /// columns are sparse (touched by the rows that read their slot).
    pub fn roles(&self) -> Roles {
        self.roles.clone()
    }

    fn weights(&self, l: Layer) -> ArrayView2<'_, f64> {
        // The layout is built for these sizes: the slice has them.
        ArrayView2::from_shape((l.rows, l.cols), &self.theta[l.weights..l.biases])
            .unwrap_or_else(|_| unreachable!("layer {l:?} outside the parameters"))
    }

    /// The forward pass over `rows` of `block`.
    fn forward(&self, block: &Block, rows: &[usize]) -> Pass {
        let (n, p) = (rows.len(), self.shape.numeric);
        let mut x = Array2::<f64>::zeros((n, p));
        for (r, &i) in rows.iter().enumerate() {
            for (j, v) in block.dense[i * block.p..i * block.p + p].iter().enumerate() {
                x[[r, j]] = f64::from(*v);
            }
        }
        let mut pass = Pass {
            a: vec![x],
            z: Vec::with_capacity(self.layers.len()),
        };
        for (li, &l) in self.layers.iter().enumerate() {
            let w = self.weights(l);
            let b = Array1::from(self.theta[l.biases..l.biases + l.rows].to_vec());
            let input = &pass.a[li];
            let mut z = if li == 0 {
                input.dot(&w.slice_axis(Axis(1), ndarray::Slice::from(..p)).t())
            } else {
                input.dot(&w.t())
            };
            if li == 0 && block.c > 0 {
                // The embedding bag: each slot's column, times its sign.
                for (r, &i) in rows.iter().enumerate() {
                    let slots = &block.hashed[i * block.c..(i + 1) * block.c];
                    let signs = &block.signs[i * block.c..(i + 1) * block.c];
                    for (&h, &sg) in slots.iter().zip(signs) {
                        if sg == 0.0 {
                            continue;
                        }
                        let col = w.column(p + h as usize);
                        let mut zr = z.row_mut(r);
                        zr.scaled_add(f64::from(sg), &col);
                    }
                }
            }
            z += &b;
            let last = li + 1 == self.layers.len();
            if !last {
                let act = self.activation;
                pass.a.push(z.mapv(|v| apply(act, v)));
            }
            pass.z.push(z);
        }
        pass
    }

    /// The margins of row `i` of `block` into `out` (length: outputs).
    pub fn margins(&self, block: &Block, i: usize, out: &mut [f64]) {
        let pass = self.forward(block, &[i]);
        if let Some(m) = pass.z.last() {
            for (o, v) in out.iter_mut().zip(m.row(0)) {
                *o = *v;
            }
        }
    }

    /// Calls `visit` with each sparse parameter row `i` of `block` reads
    /// (the first layer's columns of its hashed slots).
    pub fn sparse_coords(&self, block: &Block, i: usize, visit: &mut dyn FnMut(usize)) {
        let first = self.layers[0];
        for (&h, &sg) in block.hashed[i * block.c..(i + 1) * block.c]
            .iter()
            .zip(&block.signs[i * block.c..(i + 1) * block.c])
        {
            if sg == 0.0 {
                continue;
            }
            let col = self.shape.numeric + h as usize;
            for r in 0..first.rows {
                visit(first.weights + r * first.cols + col);
            }
        }
    }

    /// The loss gradient of `rows` of `block`, added to `acc` as one
    /// exactly rounded partial (as [`super::LinearModel::accumulate`]);
    /// returns the loss sum and the partial's largest magnitude. The
    /// sparse coordinates it adds to are recorded in `scratch`.
    pub fn accumulate(
        &self,
        block: &Block,
        rows: &[usize],
        scratch: &mut Scratch,
        mut acc: Sums<'_>,
    ) -> Result<(f64, exact::Bound), String> {
        let n = rows.len();
        if n == 0 {
            return Ok((0.0, exact::Bound::default()));
        }
        let pass = self.forward(block, rows);
        let k = self.shape.outputs;
        let margins = pass
            .z
            .last()
            .map_or_else(|| Array2::zeros((n, k)), Clone::clone);
        let mut dz = Array2::<f64>::zeros((n, k));
        let mut loss_sum = 0.0;
        let mut dm = vec![0.0; k];
        for (r, &i) in rows.iter().enumerate() {
            let m: Vec<f64> = margins.row(r).to_vec();
            let l = loss::loss_and_grad(self.kind, &m, block.label.at(i), &mut dm);
            loss_sum += super::weighted(block, i, l, &mut dm);
            for (j, g) in dm.iter().enumerate() {
                dz[[r, j]] = *g;
            }
        }
        let len = self.theta.len();
        if scratch.grad.len() != len {
            scratch.grad = vec![0.0; len];
        }
        let p = self.shape.numeric;
        for li in (0..self.layers.len()).rev() {
            let l = self.layers[li];
            let input = &pass.a[li];
            // dW = dZᵀ · A (the numeric columns only, for the first layer).
            let gw = dz.t().dot(input);
            for (r, row) in gw.outer_iter().enumerate() {
                let at = l.weights + r * l.cols;
                for (g, v) in scratch.grad[at..at + row.len()].iter_mut().zip(row) {
                    *g += v;
                }
            }
            for (g, v) in scratch.grad[l.biases..l.biases + l.rows]
                .iter_mut()
                .zip(dz.sum_axis(Axis(0)))
            {
                *g += v;
            }
            if li == 0 {
                if block.c > 0 {
                    for (r, &i) in rows.iter().enumerate() {
                        let slots = &block.hashed[i * block.c..(i + 1) * block.c];
                        let signs = &block.signs[i * block.c..(i + 1) * block.c];
                        for (&h, &sg) in slots.iter().zip(signs) {
                            if sg == 0.0 {
                                continue;
                            }
                            let col = p + h as usize;
                            for (o, d) in dz.row(r).iter().enumerate() {
                                let idx = l.weights + o * l.cols + col;
                                let slot = &mut scratch.grad[idx];
                                // Listed when it turns non-zero.
                                if *slot == 0.0 {
                                    scratch.touched.push(idx);
                                }
                                *slot += f64::from(sg) * d;
                            }
                        }
                    }
                }
                break;
            }
            // dA = dZ · W; dZ of the layer below = dA ⊙ act'(Z).
            let w = self.weights(l);
            let da = dz.dot(&w);
            let (z, a) = (&pass.z[li - 1], &pass.a[li]);
            let act = self.activation;
            let mut below = da;
            ndarray::Zip::from(&mut below)
                .and(z)
                .and(a)
                .for_each(|d, &zv, &av| *d *= slope(act, zv, av));
            dz = below;
        }
        // Round the partial once into the exact accumulator, then clear it.
        let overflow = |i: usize, g: f64| {
            format!(
                "the gradient of network parameter {i} summed over a unit's rows is {g:e}: not finite, or beyond the {:e} exact sums hold",
                exact::LIMIT
            )
        };
        let roles = &self.roles;
        let mut largest = exact::Bound::default();
        for &i in roles.dense_indices() {
            let g = scratch.grad[i];
            if g != 0.0 {
                let v = Exact::from_f64(g).ok_or_else(|| overflow(i, g))?;
                largest = largest.max(v.magnitude());
                acc.add(i, v);
                scratch.grad[i] = 0.0;
            }
        }
        largest = largest.max(scratch.round_touched(&mut acc, &overflow)?);
        Ok((loss_sum, largest))
    }

    /// The head's prediction of row `i` of `block` into `out` (as the
    /// linear family's); false if a margin is not finite.
    pub fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool {
        self.margins(block, i, out);
        super::predict_from_margins(self.kind, out)
    }
}

impl Shape {
    /// The starting values of parameters `globals`, each a function of the seed and
    /// `g`'s place alone (so a worker holding a slice computes its own
    /// without the rest): He normal (`σ² = 2 / fan_in`) for the hidden
    /// layers under ReLU, Glorot uniform (`±√(6 / (fan_in + fan_out))`)
    /// under tanh and for the output layer, biases zero. The first
    /// layer's fan-in counts the numeric inputs and the hashed columns a
    /// row reads, not the whole hashed space; its hashed columns start
    /// uniform with the same variance, from [`hashed_init`]. The draws
    /// are SplitMix64 hashes of the seed, the layer, the row and the
    /// column (Box–Muller for the normal).
    pub fn starts(&self, activation: Activation, seed: u64, globals: &[usize]) -> Vec<f64> {
        let layers = self.layers();
        globals
            .iter()
            .map(|&g| self.start_in(&layers, activation, seed, g))
            .collect()
    }

    /// [`Shape::starts`] of one parameter, given the layers' places.
    fn start_in(&self, layers: &[Layer], activation: Activation, seed: u64, g: usize) -> f64 {
        debug_assert!(g < self.len(), "parameter {g} of {}", self.len());
        let li = layers.partition_point(|l| l.biases + l.rows <= g);
        let Some(&l) = layers.get(li) else {
            return 0.0;
        };
        if g >= l.biases {
            return 0.0;
        }
        let (row, col) = ((g - l.weights) / l.cols, (g - l.weights) % l.cols);
        if li == 0 && col >= self.numeric {
            return hashed_init(
                seed,
                row,
                col - self.numeric,
                hashed_bound(self, activation),
            );
        }
        let fan_in = if li == 0 {
            (self.numeric + self.hashed_per_row).max(1)
        } else {
            l.cols
        } as f64;
        let key = splitmix64(splitmix64(splitmix64(li as u64 + 1) ^ row as u64) ^ col as u64);
        let unit =
            |salt: u64| (splitmix64(seed ^ key ^ salt) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let last = li + 1 == layers.len();
        if activation == Activation::Relu && !last {
            // Box–Muller on two independent uniforms, the first in (0, 1].
            let (u1, u2) = (1.0 - unit(0), unit(0x5851_F42D_4C95_7F2D));
            (2.0 / fan_in).sqrt() * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        } else {
            let b = (6.0 / (fan_in + l.rows as f64)).sqrt();
            (2.0 * unit(0) - 1.0) * b
        }
    }

    /// The bound of the first layer's hashed columns' uniform start under
    /// `activation`.
    pub fn hashed_bound(&self, activation: Activation) -> f64 {
        hashed_bound(self, activation)
    }

    /// The parameters' roles, without building the network.
    pub fn roles(&self) -> Roles {
        roles_of(self, &self.layers())
    }
}

/// The parameters' roles: biases are intercepts, the first layer's
/// hashed columns sparse.
fn roles_of(shape: &Shape, layers: &[Layer]) -> Roles {
    let first = layers[0];
    let numeric = shape.numeric;
    let is_bias = |i: usize| {
        layers
            .iter()
            .any(|l| (l.biases..l.biases + l.rows).contains(&i))
    };
    let hashed_column = |i: usize| {
        i >= first.weights && i < first.biases && (i - first.weights) % first.cols >= numeric
    };
    Roles::new(shape.len(), is_bias, |i| !hashed_column(i))
}

/// The bound of the first layer's hashed columns' uniform start: the
/// variance of the layer's dense columns (He under ReLU, Glorot under
/// tanh).
fn hashed_bound(shape: &Shape, activation: Activation) -> f64 {
    let fan_in = (shape.numeric + shape.hashed_per_row).max(1) as f64;
    let fan_out = shape.hidden.first().copied().unwrap_or(shape.outputs) as f64;
    match activation {
        // Uniform ±b has variance b²/3: He's 2 / fan_in.
        Activation::Relu => (6.0 / fan_in).sqrt(),
        Activation::Tanh => (6.0 / (fan_in + fan_out)).sqrt(),
    }
}

impl super::Model for Mlp {
    fn kind(&self) -> ModelKind {
        self.kind
    }

    fn outputs(&self) -> usize {
        self.shape.outputs
    }

    fn roles(&self) -> Roles {
        self.roles.clone()
    }

    fn params(&self) -> &[f64] {
        &self.theta
    }

    fn params_mut(&mut self) -> &mut [f64] {
        &mut self.theta
    }

    fn margins(&self, block: &Block, i: usize, out: &mut [f64]) {
        Mlp::margins(self, block, i, out);
    }

    fn sparse_coords(&self, block: &Block, i: usize, visit: &mut dyn FnMut(usize)) {
        Mlp::sparse_coords(self, block, i, visit);
    }

    fn accumulate(
        &self,
        block: &Block,
        rows: &[usize],
        scratch: &mut Scratch,
        acc: Sums<'_>,
    ) -> Result<(f64, exact::Bound), String> {
        Mlp::accumulate(self, block, rows, scratch, acc)
    }

    fn predict_row(&self, block: &Block, i: usize, out: &mut [f64]) -> bool {
        Mlp::predict_row(self, block, i, out)
    }

    fn to_file(
        &self,
        features: &FeatureSpec,
        training: super::file::TrainingSummary,
    ) -> super::file::ModelFile {
        super::file::ModelFile::of_network(self, features, training)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Six rows of 3 numeric features and 2 hashed columns over 8 slots
    /// (one token missing), with labels for `kind`.
    fn block(kind: ModelKind) -> Block {
        let rows = 6;
        let dense: Vec<f32> = (0..rows * 3)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let hashed: Vec<u32> = (0..rows * 2).map(|i| (i * 5 % 8) as u32).collect();
        let mut signs: Vec<f32> = (0..rows * 2)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        signs[7] = 0.0;
        let label = (0..rows)
            .map(|i| match kind {
                ModelKind::Logistic => (i % 2) as f64,
                ModelKind::Softmax => (i % 3) as f64,
                _ => i as f64 * 0.7 - 1.5,
            })
            .collect();
        Block {
            rows,
            p: 3,
            dense,
            raw: Vec::new(),
            c: 2,
            hashed,
            signs,
            label,
            tokens: Vec::new(),
            file_row: (0..rows as u64).collect(),
            weight: Vec::new(),
        }
    }

    fn net(kind: ModelKind, activation: Activation) -> Mlp {
        let outputs = if kind == ModelKind::Softmax { 3 } else { 1 };
        let shape = Shape {
            numeric: 3,
            hashed: 8,
            hidden: vec![5, 4],
            outputs,
            hashed_per_row: 2,
        };
        let mut m = Mlp::init(kind, shape, activation, 7).unwrap_or_else(|e| panic!("{e}"));
        // Biases and weights away from their start (and from zero).
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for v in m.params_mut() {
            *v += rng.random_range(-0.3..0.3);
        }
        m
    }

    fn loss_sum(m: &Mlp, b: &Block) -> f64 {
        let rows: Vec<usize> = (0..b.rows).collect();
        let pass = m.forward(b, &rows);
        let margins = pass.z.last().unwrap_or_else(|| unreachable!());
        let mut dm = vec![0.0; m.shape.outputs];
        rows.iter()
            .map(|&i| {
                let row: Vec<f64> = margins.row(i).to_vec();
                loss::loss_and_grad(m.kind, &row, b.label.at(i), &mut dm)
            })
            .sum()
    }

    /// Every parameter's gradient, of every layer, activation and head,
    /// against central finite differences in f64.
    #[test]
    fn gradients_match_finite_differences() {
        for kind in [ModelKind::Linear, ModelKind::Logistic, ModelKind::Softmax] {
            for activation in [Activation::Relu, Activation::Tanh] {
                let mut m = net(kind, activation);
                let b = block(kind);
                let rows: Vec<usize> = (0..b.rows).collect();
                let mut acc = vec![Exact::default(); m.params().len()];
                let mut scratch = Scratch::default();
                m.accumulate(&b, &rows, &mut scratch, (&mut acc).into())
                    .unwrap_or_else(|e| panic!("{e}"));
                let h = 1e-6;
                let mut checked = 0;
                for (i, a) in acc.iter().enumerate() {
                    let analytic = a.to_f64();
                    let v = m.params()[i];
                    m.params_mut()[i] = v + h;
                    let up = loss_sum(&m, &b);
                    m.params_mut()[i] = v - h;
                    let down = loss_sum(&m, &b);
                    m.params_mut()[i] = v;
                    let numeric = (up - down) / (2.0 * h);
                    let scale = analytic.abs().max(numeric.abs());
                    let err = (analytic - numeric).abs();
                    assert!(
                        err <= 1e-6 * scale + 1e-8,
                        "{kind:?} {activation:?} parameter {i}: analytic {analytic}, numeric {numeric}"
                    );
                    checked += usize::from(scale > 1e-6);
                }
                // The check is not vacuous: most parameters have a gradient.
                assert!(
                    checked * 2 > m.params().len(),
                    "{kind:?} {activation:?}: {checked} of {} gradients non-zero",
                    m.params().len()
                );
            }
        }
    }

    /// The sparse coordinates the backward pass adds to are those a row
    /// reads, and only those outside the dense ones.
    #[test]
    fn only_the_slots_a_row_reads_are_touched() {
        let m = net(ModelKind::Logistic, Activation::Relu);
        let b = block(ModelKind::Logistic);
        let roles = m.roles();
        let mut acc = vec![Exact::default(); m.params().len()];
        let mut scratch = Scratch::default();
        m.accumulate(&b, &[2], &mut scratch, (&mut acc).into())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut read = Vec::new();
        m.sparse_coords(&b, 2, &mut |i| read.push(i));
        read.sort_unstable();
        read.dedup();
        for (i, a) in acc.iter().enumerate() {
            if *a != Exact::default() {
                assert!(
                    roles.is_dense(i) || read.contains(&i),
                    "parameter {i} changed but row 2 does not read it"
                );
            }
        }
        assert!(read.iter().all(|&i| !roles.is_dense(i)));
        assert_eq!(read.len(), 2 * 5, "two slots, five units each");
    }

    /// A row's margins are the same bits alone and in any batch.
    #[test]
    fn a_rows_margins_do_not_depend_on_its_batch() {
        let m = net(ModelKind::Softmax, Activation::Tanh);
        let b = block(ModelKind::Softmax);
        let all: Vec<usize> = (0..b.rows).collect();
        let together = m.forward(&b, &all);
        let margins = together.z.last().unwrap_or_else(|| unreachable!());
        for i in 0..b.rows {
            let mut alone = vec![0.0; 3];
            m.margins(&b, i, &mut alone);
            let row: Vec<u64> = margins.row(i).iter().map(|v| v.to_bits()).collect();
            let alone: Vec<u64> = alone.iter().map(|v| v.to_bits()).collect();
            assert_eq!(row, alone, "row {i}");
        }
    }

    /// The initial weights depend on the seed alone, with the variance the
    /// scheme asks for in every layer: He under ReLU (hidden layers),
    /// Glorot under tanh and at the output, the hashed columns' uniform
    /// start the first layer's variance; biases zero.
    #[test]
    fn initialisation_is_seeded_and_scaled() {
        let variance = |m: &Mlp, li: usize, cols: std::ops::Range<usize>| {
            let (w, _, units, width) = m.layer_offsets(li);
            let v: Vec<f64> = (0..units)
                .flat_map(|r| cols.clone().map(move |c| w + r * width + c))
                .map(|i| m.params()[i])
                .collect();
            v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64
        };
        let shape = Shape {
            numeric: 400,
            hashed: 64,
            hidden: vec![300, 200],
            outputs: 1,
            hashed_per_row: 2,
        };
        for (activation, first, second) in [
            (Activation::Relu, 2.0 / 402.0, 2.0 / 300.0),
            (
                Activation::Tanh,
                2.0 / (402.0 + 300.0),
                2.0 / (300.0 + 200.0),
            ),
        ] {
            let a = Mlp::init(ModelKind::Logistic, shape.clone(), activation, 11)
                .unwrap_or_else(|e| panic!("{e}"));
            let again = Mlp::init(ModelKind::Logistic, shape.clone(), activation, 11)
                .unwrap_or_else(|e| panic!("{e}"));
            let other = Mlp::init(ModelKind::Logistic, shape.clone(), activation, 12)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.params(), again.params());
            assert_ne!(a.params(), other.params());
            for (what, got, want) in [
                ("layer 1, numeric", variance(&a, 0, 0..400), first),
                ("layer 1, hashed", variance(&a, 0, 400..464), first),
                ("layer 2", variance(&a, 1, 0..300), second),
                ("output", variance(&a, 2, 0..200), 2.0 / 201.0),
            ] {
                let tolerance = if what == "output" { 0.2 } else { 0.03 };
                assert!(
                    (got / want - 1.0).abs() < tolerance,
                    "{activation:?} {what}: variance {got}, want {want}"
                );
            }
            for li in 0..3 {
                let (_, b, units, _) = a.layer_offsets(li);
                assert!(a.params()[b..b + units].iter().all(|v| *v == 0.0));
            }
        }
    }

    #[test]
    fn heads_and_shapes_that_do_not_fit_are_refused() {
        let shape = Shape {
            numeric: 2,
            hashed: 0,
            hidden: vec![3],
            outputs: 1,
            hashed_per_row: 0,
        };
        let n = shape.len();
        assert!(Mlp::new(
            ModelKind::Hinge,
            shape.clone(),
            Activation::Relu,
            0,
            vec![0.0; n]
        )
        .is_err());
        assert!(Mlp::new(
            ModelKind::Logistic,
            shape.clone(),
            Activation::Relu,
            0,
            vec![0.0; n + 1]
        )
        .is_err());
        let three = Shape {
            outputs: 3,
            ..shape.clone()
        };
        assert!(Mlp::new(
            ModelKind::Logistic,
            three,
            Activation::Relu,
            0,
            vec![0.0; n]
        )
        .is_err());
        assert!(Mlp::new(ModelKind::Linear, shape, Activation::Tanh, 0, vec![0.0; n]).is_ok());
    }
}
