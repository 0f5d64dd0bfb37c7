//! A network split by hidden units over workers (`model-parallel` for
//! `model.kind = "mlp"`, docs/neural.md).
//!
//! Worker `w` of `W` owns the contiguous range `R_l(w)` of each hidden
//! layer `l`'s units, whole blocks of [`UNIT_BLOCK`] (balanced to within
//! one block; with fewer blocks than workers some hold none), and with it:
//!
//! - the first layer's rows of those units (`W_1[R_1(w), :]`, numeric and
//!   hashed columns) and their biases: it computes `a_1[R_1(w)]` from the
//!   row alone;
//! - for every later layer `l + 1` (the output layer last), the columns of
//!   its weights that read those units (`W_{l+1}[:, R_l(w)]`): it computes
//!   a *partial* of the next pre-activation, `W_{l+1}[:, R_l(w)] ·
//!   a_l[R_l(w)]` (worker 0 adds the bias `b_{l+1}`).
//!
//! Every parameter has one owner. The partials are summed exactly: the
//! products `w·a` of each block of [`UNIT_BLOCK`] units are summed in
//! `f64`, in unit order, rounded once to the fixed point of
//! [`crate::exact`], and the integers added, so the sum is the same bits
//! whichever worker held which blocks, and the model is the same on 1, 2
//! or 4 workers. The
//! backward pass needs, below each layer above the first, the whole
//! `∂loss/∂z` of that layer: the workers exchange their slices of it.
//!
//! The arithmetic is one matrix product per block of units (ndarray's
//! kernels): a block has the same shape whichever worker holds it, so a
//! unit's numbers never depend on how many workers there are.

use std::ops::Range;

use ndarray::{Array2, ArrayView2, Axis, Slice as Slice1};

use super::mlp::{apply, slope, Activation, Shape};
use crate::data::encode::Block;
use crate::exact::Exact;

/// The largest block sum of products a partial may hold: 2^12 of them
/// (the widest layer's blocks) and a bias then stay below the fixed
/// point's sum limit.
pub const MAX_TERM: f64 = 1e15;

/// One worker's part of a network.
#[derive(Debug, Clone)]
pub struct NetworkSlice {
    shape: Shape,
    activation: Activation,
    index: usize,
    /// Per hidden layer, this worker's units.
    units: Vec<Range<usize>>,
    /// Per weight layer (hidden layers, then the output layer): where its
    /// piece starts in the local parameters.
    pieces: Vec<Piece>,
    len: usize,
}

/// A weight layer's piece held by this worker, in the local parameters:
/// `rows × cols` weights (row-major), then the biases if held.
#[derive(Debug, Clone, Copy)]
struct Piece {
    at: usize,
    rows: usize,
    cols: usize,
    /// Offset of the biases (`rows` of them), if this worker holds them.
    biases: Option<usize>,
}

/// Units are split over the workers in blocks of this many (the last
/// block of a layer may be shorter): a block's products are summed in
/// `f64`, in unit order, and rounded to the fixed point once, so the
/// sums do not depend on which worker holds which block.
pub const UNIT_BLOCK: usize = 16;

/// The units of a layer of `units` that worker `w` of `peers` owns: a
/// balanced range of whole [`UNIT_BLOCK`]s (empty when there are fewer
/// blocks than workers).
pub fn unit_range(units: usize, w: usize, peers: usize) -> Range<usize> {
    let blocks = units.div_ceil(UNIT_BLOCK);
    let (from, to) = (w * blocks / peers, (w + 1) * blocks / peers);
    (from * UNIT_BLOCK).min(units)..(to * UNIT_BLOCK).min(units)
}

/// The blocks of a worker's `units` (local indices; the worker's first
/// unit starts a block).
fn blocks(units: usize) -> impl Iterator<Item = Range<usize>> {
    (0..units)
        .step_by(UNIT_BLOCK)
        .map(move |b| b..(b + UNIT_BLOCK).min(units))
}

/// The first `numeric` columns of `rows`' numeric values, as `f64`.
fn numeric_inputs(rows: &Block, numeric: usize) -> Array2<f64> {
    let mut x = Array2::<f64>::zeros((rows.rows, numeric));
    for r in 0..rows.rows {
        for (j, v) in rows.dense[r * rows.p..r * rows.p + numeric]
            .iter()
            .enumerate()
        {
            x[[r, j]] = f64::from(*v);
        }
    }
    x
}

/// `data` as a `rows × cols` matrix (row-major).
fn view(data: &[f64], rows: usize, cols: usize) -> ArrayView2<'_, f64> {
    // Every caller passes a buffer of exactly rows × cols.
    ArrayView2::from_shape((rows, cols), data)
        .unwrap_or_else(|_| unreachable!("{} values for {rows} × {cols}", data.len()))
}

/// A hidden layer's pre-activations and activations for this worker's
/// units, row-major `rows × units`.
#[derive(Debug, Clone, Default)]
pub struct Slice {
    /// Rows.
    pub rows: usize,
    /// Pre-activations.
    pub z: Vec<f64>,
    /// Activations.
    pub a: Vec<f64>,
}

impl NetworkSlice {
    /// Worker `index` of `peers`'s part of a network of `shape`.
    pub fn new(shape: Shape, activation: Activation, index: usize, peers: usize) -> NetworkSlice {
        let units: Vec<Range<usize>> = shape
            .hidden
            .iter()
            .map(|&h| unit_range(h, index, peers))
            .collect();
        let inputs = shape.numeric + shape.hashed;
        let mut pieces = Vec::new();
        let mut at = 0;
        // The first layer: this worker's rows, all columns, their biases.
        let r1 = units[0].len();
        pieces.push(Piece {
            at,
            rows: r1,
            cols: inputs,
            biases: Some(at + r1 * inputs),
        });
        at += r1 * inputs + r1;
        // Later layers: the columns reading this worker's units of the
        // layer below; the biases on worker 0.
        for (l, below) in units.iter().enumerate() {
            let rows = shape.hidden.get(l + 1).copied().unwrap_or(shape.outputs);
            let cols = below.len();
            let biases = (index == 0).then_some(at + rows * cols);
            pieces.push(Piece {
                at,
                rows,
                cols,
                biases,
            });
            at += rows * cols + if index == 0 { rows } else { 0 };
        }
        NetworkSlice {
            shape,
            activation,
            index,
            units,
            pieces,
            len: at,
        }
    }

    /// Parameters this worker holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the worker holds no parameters (a worker other than 0 with
    /// no block of any layer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hidden layers.
    pub fn depth(&self) -> usize {
        self.shape.hidden.len()
    }

    /// This worker's units of hidden layer `l` (0-based).
    pub fn units(&self, l: usize) -> Range<usize> {
        self.units[l].clone()
    }

    /// Units of hidden layer `l` (0-based).
    pub fn hidden_width(&self, l: usize) -> usize {
        self.shape.hidden[l]
    }

    /// Width of weight layer `l + 1`'s output (hidden layer `l + 1`, or
    /// the outputs after the last).
    pub fn width_above(&self, l: usize) -> usize {
        self.shape
            .hidden
            .get(l + 1)
            .copied()
            .unwrap_or(self.shape.outputs)
    }

    /// The global coordinate (in [`super::mlp::Mlp`]'s parameter vector)
    /// of local parameter `i`, for every `i`, in order.
    pub fn globals(&self) -> Vec<usize> {
        let layers = self.shape.layer_places();
        let mut out = vec![0; self.len];
        for (li, p) in self.pieces.iter().enumerate() {
            let l = layers[li];
            let l = (l.0, l.1, l.3);
            for r in 0..p.rows {
                for c in 0..p.cols {
                    let (row, col) = if li == 0 {
                        (self.units[0].start + r, c)
                    } else {
                        (r, self.units[li - 1].start + c)
                    };
                    out[p.at + r * p.cols + c] = l.0 + row * l.2 + col;
                }
                if let Some(b) = p.biases {
                    let row = if li == 0 { self.units[0].start + r } else { r };
                    out[b + r] = l.1 + row;
                }
            }
        }
        out
    }

    /// Is local parameter `i` a bias (an intercept: never penalised)?
    pub fn is_bias(&self, i: usize) -> bool {
        self.pieces
            .iter()
            .any(|p| p.biases.is_some_and(|b| (b..b + p.rows).contains(&i)))
    }

    /// The first hidden layer's slice: `z = W_1[R_1] · x + b_1[R_1]` with
    /// the hashed slots' columns, then the activation. The numeric part is
    /// one matrix product per block of units.
    pub fn first(&self, theta: &[f64], rows: &Block) -> Slice {
        let p0 = self.pieces[0];
        let units = p0.rows;
        let numeric = self.shape.numeric;
        let n = rows.rows;
        let x = numeric_inputs(rows, numeric);
        let w = view(&theta[p0.at..p0.at + units * p0.cols], units, p0.cols);
        let mut z = vec![0.0; n * units];
        for b in blocks(units) {
            let wb = w
                .slice_axis(Axis(0), Slice1::from(b.clone()))
                .slice_axis(Axis(1), Slice1::from(..numeric))
                .to_owned();
            let zb = x.dot(&wb.t());
            for r in 0..n {
                for (j, v) in zb.row(r).iter().enumerate() {
                    z[r * units + b.start + j] = *v;
                }
            }
        }
        for r in 0..n {
            let slots = &rows.hashed[r * rows.c..(r + 1) * rows.c];
            let signs = &rows.signs[r * rows.c..(r + 1) * rows.c];
            for u in 0..units {
                let row = &theta[p0.at + u * p0.cols..p0.at + (u + 1) * p0.cols];
                let mut s = z[r * units + u];
                for (&h, &sg) in slots.iter().zip(signs) {
                    if sg != 0.0 {
                        s += f64::from(sg) * row[numeric + h as usize];
                    }
                }
                if let Some(bias) = p0.biases {
                    s += theta[bias + u];
                }
                z[r * units + u] = s;
            }
        }
        let act = self.activation;
        let a = z.iter().map(|&v| apply(act, v)).collect();
        Slice { rows: n, z, a }
    }

    /// This worker's exact partial of weight layer `l + 1`'s
    /// pre-activations (the margins after the last hidden layer) from its
    /// slice of hidden layer `l`: row-major `rows × width_above(l)`, with
    /// the bias on worker 0. Each block of units is one matrix product
    /// whose entries are rounded to the fixed point once. An error names a
    /// block sum beyond [`MAX_TERM`].
    pub fn partial(&self, theta: &[f64], l: usize, below: &Slice) -> Result<Vec<Exact>, String> {
        let p = self.pieces[l + 1];
        let (width, cols, rows) = (p.rows, p.cols, below.rows);
        let exact = |v: f64| -> Result<Exact, String> {
            if v.abs() <= MAX_TERM {
                Exact::from_f64(v).ok_or_else(|| format!("a sum of layer {} is {v}", l + 2))
            } else {
                Err(format!(
                    "a sum of products of layer {} is {v:e}, beyond ±{MAX_TERM:e}",
                    l + 2
                ))
            }
        };
        let mut out = vec![Exact::default(); rows * width];
        if let Some(b) = p.biases {
            let biases = theta[b..b + width]
                .iter()
                .map(|&v| exact(v))
                .collect::<Result<Vec<Exact>, String>>()?;
            for r in 0..rows {
                out[r * width..(r + 1) * width].copy_from_slice(&biases);
            }
        }
        if cols == 0 {
            return Ok(out);
        }
        let a = view(&below.a, rows, cols);
        let w = view(&theta[p.at..p.at + width * cols], width, cols);
        // This worker's units start on a block boundary: its blocks are
        // the layer's, whatever the worker count.
        for b in blocks(cols) {
            let ab = a.slice_axis(Axis(1), Slice1::from(b.clone()));
            let wb = w.slice_axis(Axis(1), Slice1::from(b));
            let sums = ab.dot(&wb.t());
            for (o, v) in out.iter_mut().zip(sums.iter()) {
                *o += exact(*v)?;
            }
        }
        Ok(out)
    }

    /// Hidden layer `l`'s slice from its whole pre-activations (`rows ×
    /// hidden[l]`, summed over the workers).
    pub fn activate(&self, l: usize, whole: &[f64]) -> Slice {
        let width = self.shape.hidden[l];
        let range = self.units[l].clone();
        let rows = whole.len().checked_div(width).unwrap_or(0);
        let mut z = Vec::with_capacity(rows * range.len());
        for r in 0..rows {
            z.extend_from_slice(&whole[r * width + range.start..r * width + range.end]);
        }
        let act = self.activation;
        let a = z.iter().map(|&v| apply(act, v)).collect();
        Slice { rows, z, a }
    }

    /// One layer of the backward pass: from the whole `∂loss/∂z` of weight
    /// layer `l + 1` (`rows × width_above(l)`) and this worker's slice of
    /// hidden layer `l`, adds the gradient of this worker's piece of layer
    /// `l + 1` to `grad`, and returns this worker's slice of hidden layer
    /// `l`'s `∂loss/∂z` (`rows × units`). Two matrix products per block.
    pub fn backward(
        &self,
        theta: &[f64],
        l: usize,
        dz_above: &[f64],
        below: &Slice,
        grad: &mut [f64],
    ) -> Vec<f64> {
        let p = self.pieces[l + 1];
        let (width, cols, rows) = (p.rows, p.cols, below.rows);
        if let Some(b) = p.biases {
            for r in 0..rows {
                for k in 0..width {
                    grad[b + k] += dz_above[r * width + k];
                }
            }
        }
        let mut dz = vec![0.0; rows * cols];
        if cols == 0 {
            return dz;
        }
        let d = view(dz_above, rows, width);
        let a = view(&below.a, rows, cols);
        let w = view(&theta[p.at..p.at + width * cols], width, cols);
        let act = self.activation;
        for b in blocks(cols) {
            let ab = a.slice_axis(Axis(1), Slice1::from(b.clone()));
            let wb = w.slice_axis(Axis(1), Slice1::from(b.clone()));
            // ∂W = ∂Zᵀ · A, summed over the rows.
            let gw = d.t().dot(&ab);
            for k in 0..width {
                for (j, v) in gw.row(k).iter().enumerate() {
                    grad[p.at + k * cols + b.start + j] += v;
                }
            }
            // ∂A = ∂Z · W, then through the activation.
            let da = d.dot(&wb);
            for r in 0..rows {
                for (j, v) in da.row(r).iter().enumerate() {
                    let i = r * cols + b.start + j;
                    dz[i] = v * slope(act, below.z[i], below.a[i]);
                }
            }
        }
        dz
    }

    /// The first layer's gradient from this worker's slice of its
    /// `∂loss/∂z`, added to `grad`.
    pub fn backward_first(&self, rows: &Block, dz: &[f64], grad: &mut [f64]) {
        let p0 = self.pieces[0];
        let units = p0.rows;
        let numeric = self.shape.numeric;
        let n = rows.rows;
        let x = numeric_inputs(rows, numeric);
        let d = view(dz, n, units);
        for b in blocks(units) {
            let db = d.slice_axis(Axis(1), Slice1::from(b.clone()));
            let gw = db.t().dot(&x);
            for (j, row) in gw.outer_iter().enumerate() {
                let at = p0.at + (b.start + j) * p0.cols;
                for (g, v) in grad[at..at + numeric].iter_mut().zip(row) {
                    *g += v;
                }
            }
        }
        for r in 0..n {
            let slots = &rows.hashed[r * rows.c..(r + 1) * rows.c];
            let signs = &rows.signs[r * rows.c..(r + 1) * rows.c];
            for u in 0..units {
                let dv = dz[r * units + u];
                let at = p0.at + u * p0.cols;
                for (&h, &sg) in slots.iter().zip(signs) {
                    if sg != 0.0 {
                        grad[at + numeric + h as usize] += f64::from(sg) * dv;
                    }
                }
                if let Some(b) = p0.biases {
                    grad[b + u] += dv;
                }
            }
        }
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::Exact;
    use crate::model::mlp::Mlp;
    use crate::model::Scratch;
    use crate::spec::ModelKind;

    fn rows() -> Block {
        let n = 5;
        Block {
            rows: n,
            p: 3,
            dense: (0..n * 3)
                .map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0)
                .collect(),
            raw: Vec::new(),
            c: 1,
            hashed: (0..n).map(|i| (i * 3 % 4) as u32).collect(),
            signs: (0..n)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
            label: (0..n).map(|i| (i % 3) as f64).collect(),
            tokens: Vec::new(),
            file_row: (0..n as u64).collect(),
            weight: Vec::new(),
        }
    }

    /// The margins and the gradient of the whole network, put together
    /// from its slices on 1, 2, 3 and 4 workers: the same bits on every
    /// count, and the whole network's (to rounding).
    #[test]
    fn slices_make_the_whole_network_on_any_worker_count() {
        let shape = Shape {
            numeric: 3,
            hashed: 4,
            hidden: vec![37, 20],
            outputs: 3,
            hashed_per_row: 1,
        };
        let net = Mlp::init(ModelKind::Softmax, shape.clone(), Activation::Tanh, 9)
            .unwrap_or_else(|e| panic!("{e}"));
        let theta = net.params().to_vec();
        let b = rows();
        let mut runs: Vec<(Vec<u64>, Vec<u64>)> = Vec::new();
        for peers in [1, 2, 3, 4] {
            let slices: Vec<NetworkSlice> = (0..peers)
                .map(|w| NetworkSlice::new(shape.clone(), Activation::Tanh, w, peers))
                .collect();
            let locals: Vec<Vec<f64>> = slices
                .iter()
                .map(|s| s.globals().iter().map(|&g| theta[g]).collect())
                .collect();
            // Every parameter has one owner.
            let mut owned: Vec<usize> = slices.iter().flat_map(|s| s.globals()).collect();
            owned.sort_unstable();
            assert_eq!(
                owned,
                (0..theta.len()).collect::<Vec<_>>(),
                "{peers} workers"
            );
            // Forward, layer by layer, partials summed exactly.
            let mut acts: Vec<Vec<Slice>> = vec![slices
                .iter()
                .zip(&locals)
                .map(|(s, t)| s.first(t, &b))
                .collect()];
            let mut whole = Vec::new();
            for l in 0..2 {
                let sums = slices
                    .iter()
                    .zip(&locals)
                    .map(|(s, t)| s.partial(t, l, &acts[l][s.index()]))
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap_or_else(|e| panic!("{e}"));
                whole = (0..sums[0].len())
                    .map(|i| sums.iter().fold(Exact::default(), |a, s| a + s[i]).to_f64())
                    .collect();
                if l == 0 {
                    acts.push(slices.iter().map(|s| s.activate(1, &whole)).collect());
                }
            }
            let margins = whole;
            // Backward.
            let mut grads: Vec<Vec<f64>> = slices.iter().map(|s| vec![0.0; s.len()]).collect();
            let mut dm = vec![0.0; 3];
            let mut dz_out = Vec::new();
            for r in 0..b.rows {
                crate::model::loss::loss_and_grad(
                    ModelKind::Softmax,
                    &margins[r * 3..(r + 1) * 3],
                    b.label.at(r),
                    &mut dm,
                );
                dz_out.extend_from_slice(&dm);
            }
            let dz2: Vec<Vec<f64>> = slices
                .iter()
                .zip(&locals)
                .zip(grads.iter_mut())
                .map(|((s, t), g)| s.backward(t, 1, &dz_out, &acts[1][s.index()], g))
                .collect();
            // Gather: the whole ∂z of layer 2, in unit order.
            let mut dz2_whole = vec![0.0; b.rows * 20];
            for (s, d) in slices.iter().zip(&dz2) {
                let u = s.units(1);
                for r in 0..b.rows {
                    for (i, c) in u.clone().enumerate() {
                        dz2_whole[r * 20 + c] = d[r * u.len() + i];
                    }
                }
            }
            for ((s, t), g) in slices.iter().zip(&locals).zip(grads.iter_mut()) {
                let dz1 = s.backward(t, 0, &dz2_whole, &acts[0][s.index()], g);
                s.backward_first(&b, &dz1, g);
            }
            let mut grad = vec![0.0; theta.len()];
            for (s, g) in slices.iter().zip(&grads) {
                for (i, &gi) in s.globals().iter().enumerate() {
                    grad[gi] = g[i];
                }
            }
            runs.push((
                margins.iter().map(|v| v.to_bits()).collect(),
                grad.iter().map(|v| v.to_bits()).collect(),
            ));
            // Against the whole network's forward and backward.
            let mut want = vec![0.0; 3];
            for r in 0..b.rows {
                net.margins(&b, r, &mut want);
                for k in 0..3 {
                    assert!((want[k] - margins[r * 3 + k]).abs() < 1e-12);
                }
            }
            let mut acc = vec![Exact::default(); theta.len()];
            let all: Vec<usize> = (0..b.rows).collect();
            net.accumulate(&b, &all, &mut Scratch::default(), (&mut acc).into())
                .unwrap_or_else(|e| panic!("{e}"));
            for (i, a) in acc.iter().enumerate() {
                assert!(
                    (a.to_f64() - grad[i]).abs() < 1e-12,
                    "{peers} workers, parameter {i}: {} vs {}",
                    a.to_f64(),
                    grad[i]
                );
            }
        }
        assert!(
            runs.windows(2).all(|w| w[0] == w[1]),
            "worker counts differ"
        );
    }
}
