//! Vector-free, sharded L-BFGS / OWL-QN (`optimizer.sharded = true`), after
//! Chen, Wang & Zhou, "Large-scale L-BFGS using MapReduce" (NIPS 2014).
//!
//! [`super::lbfgs`] keeps every vector on one owner and runs the two-loop
//! recursion over whole vectors: its serial work grows with the model and
//! not with the workers. Here each shard owner keeps only its shards'
//! pieces of the iterate, the gradient, the search direction and the
//! curvature pairs. The recursion runs on the dot products between those
//! vectors (at most `2m + 1` of them: the pairs' `s` and `y`, and the
//! gradient), which the owners sum over the shards in one scalar round per
//! iteration; the direction is then a combination of the vectors, which
//! each owner forms over its own pieces.
//!
//! The line search needs sums too (the penalty at the trial point, the
//! directional derivative): they ride on the trial point's parameter
//! messages and come back with the gradients, at no extra round.
//!
//! Every owner runs the same scalar progression from the same totals, so
//! owners agree without talking. A shard's partial sums are taken in a
//! fixed order inside the shard and summed over shards in shard order, so
//! the iterates are the same bits on any worker count (for a given
//! `train.shards`). They are not the bits of [`super::lbfgs`], whose dot
//! products run over whole vectors in one order: the two reach the same
//! optimum, to the stopping rule's tolerance.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::lbfgs::{
    orthant, project_to_orthant, pseudo_component, AcceptedStep, Convergence, Verdict, C1,
    MAX_BACKTRACKS,
};
use super::Penalty;

/// Scalars an owner sends with each of its shards, and their totals over
/// every shard (sums added in shard order; maxima).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scalars {
    /// Summed over shards.
    pub sums: Vec<f64>,
    /// Largest over shards.
    pub maxes: Vec<f64>,
}

impl Scalars {
    /// True when there is nothing to reduce.
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty() && self.maxes.is_empty()
    }

    /// Folds the next shard's partials into a running total (the first
    /// into an empty one). The owners send partials of one layout; see
    /// [`Scalars::same_layout`].
    pub fn add(&mut self, next: &Scalars) {
        if self.sums.len() < next.sums.len() {
            self.sums.resize(next.sums.len(), 0.0);
        }
        self.sums
            .iter_mut()
            .zip(&next.sums)
            .for_each(|(a, b)| *a += b);
        if self.maxes.len() < next.maxes.len() {
            self.maxes.resize(next.maxes.len(), f64::NEG_INFINITY);
        }
        self.maxes
            .iter_mut()
            .zip(&next.maxes)
            .for_each(|(a, b)| *a = a.max(*b));
    }

    /// True if `other` holds as many sums and maxima: partials of one
    /// round must, or their total mixes unrelated sums.
    pub fn same_layout(&self, other: &Scalars) -> bool {
        self.sums.len() == other.sums.len() && self.maxes.len() == other.maxes.len()
    }

    /// Serialized payload bytes (bincode layout: two length-prefixed
    /// vectors of `f64`).
    pub fn bytes(&self) -> u64 {
        16 + 8 * (self.sums.len() + self.maxes.len()) as u64
    }
}

/// A vector of the recursion's basis: a curvature pair's step `s` or
/// gradient change `y` (by the pair's number), or the current
/// (pseudo-)gradient `P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Vid {
    S(u64),
    Y(u64),
    P,
}

/// A dot product's key, its two vectors in order.
fn key(a: Vid, b: Vid) -> (Vid, Vid) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// `Σ aᵢbᵢ` in eight interleaved lanes (independent chains, so the adds
/// overlap), combined pairwise, then the tail in order: a fixed order for
/// a given length.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut l = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            l[k] += x[k] * y[k];
        }
    }
    let mut total = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    for (x, y) in ra.iter().zip(rb) {
        total += x * y;
    }
    total
}

/// The length of the shortest vector of `pairs` (0 for none): the
/// products [`dots`] takes.
fn shortest(pairs: &[(&[f64], &[f64])]) -> usize {
    pairs
        .iter()
        .map(|(a, b)| a.len().min(b.len()))
        .min()
        .unwrap_or(0)
}

/// Elements per block of [`dots`] and [`combine`]: a block of every
/// vector of the basis stays in cache while it is used.
const BLOCK: usize = 8192;

/// The dot products of `pairs` (vectors of one length): per block of
/// [`BLOCK`] elements, each pair's [`dot`], added to its total in block
/// order. One pass over the vectors for all the products, in a fixed order
/// for a given length.
fn dots(pairs: &[(&[f64], &[f64])]) -> Vec<f64> {
    let mut totals = vec![0.0; pairs.len()];
    let n = shortest(pairs);
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        for (t, (a, b)) in totals.iter_mut().zip(pairs) {
            *t += dot(&a[start..end], &b[start..end]);
        }
        start = end;
    }
    totals
}

/// `Σ cₗ·vₗ` over `terms` (vectors of length `n`), block by block, each
/// element summed in term order.
fn combine(terms: &[(f64, &[f64])], n: usize) -> Vec<f64> {
    let mut q = vec![0.0; n];
    let mut start = 0;
    while start < n {
        let end = (start + BLOCK).min(n);
        let block = &mut q[start..end];
        // Four terms a pass (each element still summed in term order).
        let mut fours = terms.chunks_exact(4);
        for t in &mut fours {
            let (v0, v1, v2, v3) = (
                &t[0].1[start..end],
                &t[1].1[start..end],
                &t[2].1[start..end],
                &t[3].1[start..end],
            );
            for (i, qi) in block.iter_mut().enumerate() {
                *qi = (((*qi + t[0].0 * v0[i]) + t[1].0 * v1[i]) + t[2].0 * v2[i]) + t[3].0 * v3[i];
            }
        }
        for &(c, v) in fours.remainder() {
            block
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(qi, vi)| *qi += c * vi);
        }
        start = end;
    }
    q
}

/// The coordinates of a piece where one of its vectors may be non-zero,
/// increasing. Everywhere else the iterate starts at +0 and the loss
/// gradient is +0, so every vector the recursion forms from them is an
/// exact zero there: +0, but for the direction (−0, or +0 where OWL-QN
/// masks it). A hashed model's gradient touches few of its slots (2,421 of
/// 2^18 on the wide benchmark), and the dot products and the direction
/// are computed over these coordinates alone, to the same bits: an exact
/// zero added to a sum leaves it as it is (a sum that starts at +0 is
/// never −0).
#[derive(Debug, Clone, Default)]
struct Support {
    idx: Vec<usize>,
    member: Vec<bool>,
}

impl Support {
    /// The support of vectors of length `len` that are zero outside the
    /// non-zero coordinates of `vectors`.
    fn of(len: usize, vectors: &[&[f64]]) -> Support {
        let mut s = Support {
            idx: Vec::new(),
            member: vec![false; len],
        };
        vectors.iter().for_each(|v| s.grow(v));
        s
    }

    /// Adds the coordinates where `v` is not +0 (−0 and NaN included).
    fn grow(&mut self, v: &[f64]) {
        self.grow_where(v, |x| x.to_bits() != 0);
    }

    /// Adds the coordinates where `keep` holds of `v`'s value.
    fn grow_where(&mut self, v: &[f64], keep: impl Fn(f64) -> bool) {
        if self.member.len() < v.len() {
            self.member.resize(v.len(), false);
        }
        let before = self.idx.len();
        for (i, &x) in v.iter().enumerate() {
            if keep(x) && !self.member[i] {
                self.member[i] = true;
                self.idx.push(i);
            }
        }
        if self.idx.len() > before {
            self.idx.sort_unstable();
        }
    }

    /// The coordinates below `n`, when few enough of them that skipping
    /// the rest pays (the result is the same either way).
    fn sparse(&self, n: usize) -> Option<&[usize]> {
        let idx = &self.idx[..self.idx.partition_point(|&i| i < n)];
        (idx.len().saturating_mul(SPARSE_FRACTION) <= n).then_some(idx)
    }
}

/// Spare vectors of a piece's length that are +0 outside its support (a
/// dropped curvature pair's), for the next vectors the piece forms: those
/// need writing on the support alone. Not kept by a checkpoint or a clone.
#[derive(Debug, Default)]
struct Pool(Vec<Vec<f64>>);

impl Clone for Pool {
    fn clone(&self) -> Pool {
        Pool::default()
    }
}

impl Pool {
    /// At most this many spares are kept.
    const KEEP: usize = 4;

    /// Keeps `v` if there is room.
    fn give(&mut self, v: Vec<f64>) {
        if self.0.len() < Self::KEEP {
            self.0.push(v);
        }
    }

    /// A vector of length `n`, +0 outside the support (stale values on it).
    fn take(&mut self, n: usize) -> Vec<f64> {
        self.0.retain(|v| v.len() == n);
        self.0.pop().unwrap_or_else(|| vec![0.0; n])
    }
}

/// [`Support::sparse`] pays when at most one coordinate in this many is
/// in the support.
const SPARSE_FRACTION: usize = 4;

/// [`dots`] when the vectors are zero outside `support` (increasing): the
/// same products in the same lanes and order, so the same bits, over the
/// support alone.
fn dots_on(pairs: &[(&[f64], &[f64])], support: &[usize]) -> Vec<f64> {
    let mut totals = vec![0.0; pairs.len()];
    let n = shortest(pairs);
    let mut rest = &support[..support.partition_point(|&i| i < n)];
    let (mut lanes, mut block_totals) = (Vec::new(), Vec::new());
    while let Some(&first) = rest.first() {
        // The block `dots` takes `first` in, and where its lanes end (the
        // tail after them is added in order, as `dot` adds it).
        let start = first / BLOCK * BLOCK;
        let end = (start + BLOCK).min(n);
        let lanes_end = start + (end - start) / 8 * 8;
        let (block, after) = rest.split_at(rest.partition_point(|&i| i < end));
        let (laned, tail) = block.split_at(block.partition_point(|&i| i < lanes_end));
        // Coordinate by coordinate, every pair (each vector's line is
        // read once); each pair's lanes still take their products in
        // coordinate order.
        lanes.clear();
        lanes.resize(pairs.len(), [0.0f64; 8]);
        for &i in laned {
            for (l, (a, b)) in lanes.iter_mut().zip(pairs) {
                l[i % 8] += a[i] * b[i];
            }
        }
        block_totals.clear();
        block_totals.extend(
            lanes
                .iter()
                .map(|l| ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))),
        );
        for &i in tail {
            for (t, (a, b)) in block_totals.iter_mut().zip(pairs) {
                *t += a[i] * b[i];
            }
        }
        for (t, b) in totals.iter_mut().zip(&block_totals) {
            *t += b;
        }
        rest = after;
    }
    totals
}

/// [`combine`] when the terms are zero outside `support` (increasing): each
/// element of the support summed as `combine` sums it, the others +0 as
/// `combine` leaves them.
fn combine_on(terms: &[(f64, &[f64])], n: usize, support: &[usize]) -> Vec<f64> {
    let mut q = vec![0.0; n];
    for &i in &support[..support.partition_point(|&i| i < n)] {
        q[i] = combine_at(terms, i);
    }
    q
}

/// Element `i` of [`combine`], summed as `combine` sums it.
fn combine_at(terms: &[(f64, &[f64])], i: usize) -> f64 {
    let mut qi = 0.0;
    let mut fours = terms.chunks_exact(4);
    for t in &mut fours {
        qi = (((qi + t[0].0 * t[0].1[i]) + t[1].0 * t[1].1[i]) + t[2].0 * t[2].1[i])
            + t[3].0 * t[3].1[i];
    }
    for &(c, v) in fours.remainder() {
        qi += c * v[i];
    }
    qi
}

/// What the owners wait for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
enum Wait {
    /// The loss and gradient at the trial point, with its scalars.
    #[default]
    Trial,
    /// The dot products `keys` at a new iterate, whose objective is the
    /// first of `accepted` (the second: the previous iterate's); `None` at
    /// the starting point.
    Gram {
        keys: Vec<(Vid, Vid)>,
        accepted: Option<(f64, f64)>,
    },
}

/// The state every owner holds alike (opaque: a checkpoint keeps it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Common {
    memory: usize,
    tolerance: f64,
    gradient_tolerance: Option<f64>,
    penalty: Penalty,
    /// Objective at the iterate.
    f: f64,
    alpha: f64,
    backtracks: u32,
    started: bool,
    iterations: u32,
    /// The search direction is steepest descent.
    steepest: bool,
    /// A steepest-descent step cut to length 1 (see [`super::lbfgs`]).
    unit_step: bool,
    /// The direction came from curvature pairs: the trial's round checks
    /// that it descends.
    checking: bool,
    converged_by: Option<Convergence>,
    /// Curvature pairs (number, 1 / sᵀy), oldest first.
    pairs: VecDeque<(u64, f64)>,
    /// The next pair's number.
    next_pair: u64,
    /// Dot products between the basis vectors.
    gram: BTreeMap<(Vid, Vid), f64>,
    wait: Wait,
}

/// One shard's pieces of the vectors (opaque: a checkpoint keeps it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Piece {
    /// False for intercepts (not penalised).
    penalised: Vec<bool>,
    x: Vec<f64>,
    /// Smooth gradient (loss and L2) at `x`.
    g: Vec<f64>,
    /// (Pseudo-)gradient at `x`.
    pg: Vec<f64>,
    dir: Vec<f64>,
    trial: Vec<f64>,
    /// Curvature pairs (s, y), aligned with [`Common::pairs`].
    pairs: VecDeque<(Vec<f64>, Vec<f64>)>,
    /// The accepted step's pair, until the owners decide to keep it.
    fresh: Option<(Vec<f64>, Vec<f64>)>,
    /// Where the vectors may be non-zero; `None`: anywhere (a checkpoint
    /// does not keep it, [`ShardedLbfgs::restore`] finds it again).
    #[serde(skip)]
    support: Option<Support>,
    /// Spare vectors, with a support only.
    #[serde(skip)]
    pool: Pool,
    /// `dir` came from [`ShardedLbfgs::propose`] (not steepest descent):
    /// its values off the support are those `propose` gives them.
    #[serde(skip)]
    dir_proposed: bool,
}

impl Piece {
    fn vector(&self, v: Vid, common: &Common) -> &[f64] {
        let pair = |n: u64| {
            if let Some(fresh) = self.fresh.as_ref().filter(|_| n == common.next_pair) {
                return Some(fresh);
            }
            let k = common.pairs.iter().position(|&(m, _)| m == n)?;
            self.pairs.get(k)
        };
        match v {
            Vid::P => &self.pg,
            Vid::S(n) => pair(n).map_or(&[][..], |p| &p.0),
            Vid::Y(n) => pair(n).map_or(&[][..], |p| &p.1),
        }
    }

    /// The coordinates below `n` outside of which every vector is zero,
    /// when the sparse kernels pay.
    fn sparse(&self, n: usize) -> Option<&[usize]> {
        self.support.as_ref().and_then(|s| s.sparse(n))
    }

    /// The support of every vector the piece holds.
    fn find_support(&self) -> Support {
        let mut vectors: Vec<&[f64]> = vec![&self.x, &self.g, &self.pg, &self.trial];
        for (s, y) in self.pairs.iter().chain(&self.fresh) {
            vectors.push(s);
            vectors.push(y);
        }
        let mut support = Support::of(self.x.len(), &vectors);
        // The direction is −0 off the support (+0 where masked): its
        // zeros of either sign are off it. The next `propose` writes it
        // whole (`dir_proposed` is false after a restore).
        support.grow_where(&self.dir, |d| d != 0.0 || d.is_nan());
        support
    }

    /// The dot products of `pairs` of this piece's vectors.
    fn dots(&self, pairs: &[(&[f64], &[f64])]) -> Vec<f64> {
        match self.sparse(self.x.len()) {
            Some(support) => dots_on(pairs, support),
            None => dots(pairs),
        }
    }

    /// The largest `|pg|`.
    fn pg_max(&self) -> f64 {
        let max = |m: f64, v: &f64| m.max(v.abs());
        match self.sparse(self.pg.len()) {
            Some(support) => support.iter().map(|&i| &self.pg[i]).fold(0.0, max),
            None => self.pg.iter().fold(0.0, max),
        }
    }

    fn smooth_grad(&self, at: &[f64], loss_grad: &[f64], l2: f64) -> Vec<f64> {
        loss_grad
            .iter()
            .zip(at)
            .zip(&self.penalised)
            .map(|((&g, &w), &p)| if p { g + l2 * w } else { g })
            .collect()
    }

    fn pseudo_grad(&self, l1: f64) -> Vec<f64> {
        self.g
            .iter()
            .zip(&self.x)
            .zip(&self.penalised)
            .map(|((&gi, &xi), &p)| pseudo_component(gi, xi, l1, p))
            .collect()
    }

    /// Accepts the trial point, at which the loss gradient is `grad`:
    /// keeps the step and the gradient change as the fresh pair and moves
    /// the iterate, its gradient and pseudo-gradient there.
    fn accept(&mut self, grad: &[f64], l2: f64, l1: f64) {
        let n = self.x.len();
        let support = self.support.take();
        let fits = [self.g.len(), self.pg.len(), self.trial.len(), grad.len()] == [n; 4];
        match support.as_ref().and_then(|s| s.sparse(n)).filter(|_| fits) {
            Some(idx) => {
                // The buffers are +0 off the support, as the dense
                // formulas below would leave them.
                let mut gx = self.pool.take(n);
                for &i in idx {
                    let (g, w) = (grad[i], self.trial[i]);
                    gx[i] = if self.penalised[i] { g + l2 * w } else { g };
                }
                let mut s = std::mem::take(&mut self.x);
                for &i in idx {
                    s[i] = self.trial[i] - s[i];
                }
                let mut y = std::mem::take(&mut self.g);
                for &i in idx {
                    y[i] = gx[i] - y[i];
                }
                self.x = std::mem::take(&mut self.trial);
                self.g = gx;
                for &i in idx {
                    self.pg[i] = pseudo_component(self.g[i], self.x[i], l1, self.penalised[i]);
                }
                self.fresh = Some((s, y));
            }
            None => {
                let gx = self.smooth_grad(&self.trial, grad, l2);
                let s: Vec<f64> = self.trial.iter().zip(&self.x).map(|(t, x)| t - x).collect();
                let y: Vec<f64> = gx.iter().zip(&self.g).map(|(a, b)| a - b).collect();
                self.fresh = Some((s, y));
                self.x = std::mem::take(&mut self.trial);
                self.g = gx;
                self.pg = self.pseudo_grad(l1);
            }
        }
        self.support = support;
    }

    /// Drops a curvature pair, keeping its vectors as spares.
    fn drop_pair(&mut self, (s, y): (Vec<f64>, Vec<f64>)) {
        self.pool.give(s);
        self.pool.give(y);
    }

    /// `x + α·dir`, projected on the orthant of `x` (OWL-QN).
    fn set_trial(&mut self, alpha: f64, l1: f64) {
        let n = self.x.len();
        let support = self.support.take();
        let fits = [self.dir.len(), self.pg.len()] == [n; 2];
        if let Some(idx) = support.as_ref().and_then(|s| s.sparse(n)).filter(|_| fits) {
            // +0 off the support, as `x + α·dir` and the projection leave it.
            let mut t = match std::mem::take(&mut self.trial) {
                t if t.len() == n => t,
                _ => self.pool.take(n),
            };
            for &i in idx {
                t[i] = self.x[i] + alpha * self.dir[i];
            }
            if l1 > 0.0 {
                for &i in idx {
                    if self.penalised[i] && t[i] * orthant(self.x[i], self.pg[i]) <= 0.0 {
                        t[i] = 0.0;
                    }
                }
            }
            self.trial = t;
            self.support = support;
            return;
        }
        self.support = support;
        self.trial = self
            .x
            .iter()
            .zip(&self.dir)
            .map(|(x, d)| x + alpha * d)
            .collect();
        if l1 > 0.0 {
            project_to_orthant(&mut self.trial, &self.x, &self.pg, &self.penalised);
        }
    }

    /// The trial round's partials: the penalty at the trial point, the
    /// directional derivative `pgᵀ(trial − x)` and `dirᵀpg`, in one pass.
    fn trial_partials(&self, penalty: Penalty) -> Scalars {
        let (mut r, mut decrease, mut dg) = (0.0, 0.0, 0.0);
        let known = self.pg.len() == self.x.len();
        let mut add = |i: usize| {
            let t = self.trial[i];
            if self.penalised[i] {
                r += 0.5 * penalty.l2 * t * t + penalty.l1 * t.abs();
            }
            if known {
                decrease += self.pg[i] * (t - self.x[i]);
                if let Some(d) = self.dir.get(i) {
                    dg += d * self.pg[i];
                }
            }
        };
        // Each sum in coordinate order; the coordinates skipped add zeros.
        match self.sparse(self.trial.len()) {
            Some(support) => support.iter().for_each(|&i| add(i)),
            None => (0..self.trial.len()).for_each(add),
        }
        Scalars {
            sums: vec![r, decrease, dg],
            maxes: Vec::new(),
        }
    }
}

/// What the owners do next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Request {
    /// Evaluate the loss and gradient at the trial point
    /// ([`ShardedLbfgs::trial`]), with [`ShardedLbfgs::partials`].
    Evaluate,
    /// Sum [`ShardedLbfgs::partials`] over the shards; nothing to evaluate.
    Reduce,
    /// A new iterate was accepted ([`ShardedLbfgs::iterate`]); call
    /// [`ShardedLbfgs::propose`] to continue, or stop.
    Accepted {
        /// Objective (with penalties) at the new iterate.
        objective: f64,
        /// True if the convergence test passed.
        converged: bool,
    },
    /// The line search found no decrease: the iterate is final.
    Stalled,
}

/// Vector-free L-BFGS over the shards one owner holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardedLbfgs {
    common: Common,
    pieces: Vec<Piece>,
    /// Per piece, the scalars to send with it in the next round.
    outgoing: Vec<Scalars>,
}

impl ShardedLbfgs {
    /// Starts at `pieces`: per owned shard, its starting values and which
    /// of its coordinates are penalised (false for intercepts).
    pub fn new(
        pieces: Vec<(Vec<f64>, Vec<bool>)>,
        memory: usize,
        tolerance: f64,
        gradient_tolerance: Option<f64>,
        penalty: Penalty,
    ) -> ShardedLbfgs {
        let pieces: Vec<Piece> = pieces
            .into_iter()
            .map(|(x0, penalised)| Piece {
                penalised,
                support: Some(Support::of(x0.len(), &[&x0])),
                pool: Pool::default(),
                dir_proposed: false,
                trial: x0.clone(),
                x: x0,
                g: Vec::new(),
                pg: Vec::new(),
                dir: Vec::new(),
                pairs: VecDeque::new(),
                fresh: None,
            })
            .collect();
        let outgoing = pieces.iter().map(|p| p.trial_partials(penalty)).collect();
        ShardedLbfgs {
            common: Common {
                memory,
                tolerance,
                gradient_tolerance,
                penalty,
                f: f64::INFINITY,
                alpha: 1.0,
                backtracks: 0,
                started: false,
                iterations: 0,
                steepest: true,
                unit_step: false,
                checking: false,
                converged_by: None,
                pairs: VecDeque::new(),
                next_pair: 0,
                gram: BTreeMap::new(),
                wait: Wait::Trial,
            },
            pieces,
            outgoing,
        }
    }

    /// The state to checkpoint at an accepted iterate: the common part and
    /// each owned piece (in the order given to [`ShardedLbfgs::new`]).
    pub fn save(&self) -> (Common, Vec<Piece>) {
        (self.common.clone(), self.pieces.clone())
    }

    /// The optimizer [`ShardedLbfgs::save`] kept, with `pieces` the owned
    /// shards' (in this owner's order), ready to [`ShardedLbfgs::propose`]
    /// from its iterate. `None` if the pieces do not fit the common state
    /// (another history, or a search in flight).
    pub fn restore(common: Common, pieces: Vec<Piece>) -> Option<ShardedLbfgs> {
        let fits = matches!(common.wait, Wait::Trial)
            && pieces.iter().all(|p| {
                p.pairs.len() == common.pairs.len()
                    && p.fresh.is_none()
                    && [&p.g, &p.pg].iter().all(|v| v.len() == p.x.len())
                    && p.penalised.len() == p.x.len()
            });
        if !fits {
            return None;
        }
        let mut pieces = pieces;
        for p in &mut pieces {
            p.support = Some(p.find_support());
        }
        let outgoing = vec![Scalars::default(); pieces.len()];
        Some(ShardedLbfgs {
            common,
            pieces,
            outgoing,
        })
    }

    /// Length of piece `k` (0 if there is none).
    pub fn piece_len(piece: &Piece) -> usize {
        piece.x.len()
    }

    /// Piece `k`'s point to evaluate (the starting point, first).
    pub fn trial(&self, k: usize) -> &[f64] {
        self.pieces.get(k).map_or(&[], |p| &p.trial)
    }

    /// Piece `k` of the current (last accepted) iterate.
    pub fn iterate(&self, k: usize) -> &[f64] {
        self.pieces.get(k).map_or(&[], |p| &p.x)
    }

    /// The scalars to send with piece `k` in the round just requested.
    pub fn partials(&self, k: usize) -> Scalars {
        self.outgoing.get(k).cloned().unwrap_or_default()
    }

    /// Accepted iterations so far.
    pub fn iterations(&self) -> u32 {
        self.common.iterations
    }

    /// Objective at the current iterate.
    pub fn objective_value(&self) -> f64 {
        self.common.f
    }

    /// Why the run converged, when the last accepted iterate (or a
    /// stalled line search) ended it.
    pub fn converged_by(&self) -> Option<Convergence> {
        self.common.converged_by
    }

    /// Feeds the mean loss and, per piece, the mean loss gradient at the
    /// trial point, with the totals of the trial's scalars. An error: what
    /// came is not what the owners asked for (a bug, never a data error).
    pub fn on_trial(
        &mut self,
        loss: f64,
        grads: &[Vec<f64>],
        total: &Scalars,
    ) -> Result<Request, String> {
        if !matches!(self.common.wait, Wait::Trial) {
            return Err("a trial's totals came while the owners waited for dot products".into());
        }
        if total.sums.len() != 3 || !total.maxes.is_empty() {
            return Err(format!(
                "a trial's totals hold {} sums and {} maxima, not 3 and 0",
                total.sums.len(),
                total.maxes.len()
            ));
        }
        let fits = grads.len() == self.pieces.len()
            && grads
                .iter()
                .zip(&self.pieces)
                .all(|(g, p)| g.len() == p.x.len());
        if !fits {
            return Err("the gradients do not fit the owned shards".into());
        }
        for (p, grad) in self.pieces.iter_mut().zip(grads) {
            if let Some(support) = p.support.as_mut() {
                support.grow(grad);
            }
        }
        let (r, decrease, dg) = (total.sums[0], total.sums[1], total.sums[2]);
        let fx = loss + r;
        let c = &mut self.common;
        let l2 = c.penalty.l2;
        if !c.started {
            c.started = true;
            c.f = fx;
            for (p, grad) in self.pieces.iter_mut().zip(grads) {
                p.g = p.smooth_grad(&p.trial, grad, l2);
                p.pg = p.pseudo_grad(c.penalty.l1);
            }
            return Ok(self.gram_round(None));
        }
        if c.checking && dg >= 0.0 {
            // Not a descent direction: forget the curvature pairs and
            // search along steepest descent (this evaluation is unused).
            c.checking = false;
            self.clear_history();
            self.pieces.iter_mut().for_each(|p| {
                p.dir = p.pg.iter().map(|v| -v).collect();
                p.dir_proposed = false;
            });
            return Ok(self.begin_search());
        }
        c.checking = false;
        if fx.is_finite() && fx <= c.f + C1 * decrease {
            let old = c.f;
            for (p, grad) in self.pieces.iter_mut().zip(grads) {
                p.accept(grad, l2, c.penalty.l1);
            }
            Ok(self.gram_round(Some((fx, old))))
        } else {
            c.backtracks += 1;
            if c.backtracks > MAX_BACKTRACKS {
                c.converged_by = Some(Convergence::NoDecrease);
                return Ok(Request::Stalled);
            }
            c.alpha *= 0.5;
            Ok(self.set_trials())
        }
    }

    /// Asks for the dot products a new iterate needs (and, after an
    /// accepted step, the largest gradient component).
    fn gram_round(&mut self, accepted: Option<(f64, f64)>) -> Request {
        let c = &self.common;
        let mut keys = Vec::new();
        // The recursion reads sᵢ·yⱼ only for i ≤ j (an older step with a
        // newer gradient change), yᵢ·yⱼ and every vector with P.
        if accepted.is_some() {
            let t = c.next_pair;
            for &(j, _) in &c.pairs {
                keys.push(key(Vid::Y(t), Vid::S(j)));
                keys.push(key(Vid::Y(t), Vid::Y(j)));
            }
            keys.push(key(Vid::S(t), Vid::Y(t)));
            keys.push(key(Vid::Y(t), Vid::Y(t)));
            keys.push(key(Vid::P, Vid::S(t)));
            keys.push(key(Vid::P, Vid::Y(t)));
        }
        for &(j, _) in &c.pairs {
            keys.push(key(Vid::P, Vid::S(j)));
            keys.push(key(Vid::P, Vid::Y(j)));
        }
        keys.push(key(Vid::P, Vid::P));
        self.outgoing = self
            .pieces
            .iter()
            .map(|p| Scalars {
                sums: p.dots(
                    &keys
                        .iter()
                        .map(|&(a, b)| (p.vector(a, c), p.vector(b, c)))
                        .collect::<Vec<_>>(),
                ),
                maxes: vec![p.pg_max()],
            })
            .collect();
        self.common.wait = Wait::Gram { keys, accepted };
        Request::Reduce
    }

    /// Feeds the totals of the dot products [`Request::Reduce`] asked for.
    /// An error: what came is not what the owners asked for (a bug).
    pub fn on_gram(&mut self, total: &Scalars) -> Result<Request, String> {
        let Wait::Gram { keys, accepted } = std::mem::take(&mut self.common.wait) else {
            return Err("dot products came while the owners waited for a trial".into());
        };
        if total.sums.len() != keys.len() || total.maxes.len() != 1 {
            return Err(format!(
                "the dot products' totals hold {} sums and {} maxima, not {} and 1",
                total.sums.len(),
                total.maxes.len(),
                keys.len()
            ));
        }
        let c = &mut self.common;
        let values: BTreeMap<(Vid, Vid), f64> = keys
            .iter()
            .copied()
            .zip(total.sums.iter().copied())
            .collect();
        let Some((fx, old)) = accepted else {
            c.gram = values;
            return Ok(self.propose());
        };
        let t = c.next_pair;
        c.next_pair += 1;
        let get = |k: (Vid, Vid)| values.get(&k).copied().unwrap_or(f64::NAN);
        let sy = get(key(Vid::S(t), Vid::Y(t)));
        let yy = get(key(Vid::Y(t), Vid::Y(t)));
        let keep = sy > 1e-12 * yy.max(f64::MIN_POSITIVE);
        if keep && c.pairs.len() == c.memory {
            c.pairs.pop_front();
            self.pieces.iter_mut().for_each(|p| {
                if let Some(pair) = p.pairs.pop_front() {
                    p.drop_pair(pair);
                }
            });
        }
        for p in &mut self.pieces {
            match (keep, p.fresh.take()) {
                (true, Some(pair)) => p.pairs.push_back(pair),
                (false, Some(pair)) => p.drop_pair(pair),
                (_, None) => {}
            }
        }
        if keep {
            c.pairs.push_back((t, 1.0 / sy));
        }
        c.gram.extend(values);
        let pairs = &c.pairs;
        let alive = |v: Vid| match v {
            Vid::P => true,
            Vid::S(n) | Vid::Y(n) => pairs.iter().any(|&(m, _)| m == n),
        };
        c.gram.retain(|&(a, b), _| alive(a) && alive(b));
        c.f = fx;
        c.iterations += 1;
        let step = AcceptedStep {
            old,
            new: fx,
            pg_max: total.maxes[0],
            unit_step: c.unit_step,
            steepest: c.steepest,
        };
        let by = match step.verdict(c.tolerance, c.gradient_tolerance) {
            Verdict::Converged(by) => Some(by),
            Verdict::ForgetPairs => {
                self.clear_history();
                None
            }
            Verdict::Continue => None,
        };
        self.common.converged_by = by;
        Ok(Request::Accepted {
            objective: fx,
            converged: by.is_some(),
        })
    }

    fn clear_history(&mut self) {
        self.common.pairs.clear();
        self.common
            .gram
            .retain(|&(a, b), _| a == Vid::P && b == Vid::P);
        for p in &mut self.pieces {
            while let Some(pair) = p.pairs.pop_front() {
                p.drop_pair(pair);
            }
        }
    }

    /// Computes a search direction from the current iterate and sets the
    /// first trial point along it ([`Request::Evaluate`]).
    pub fn propose(&mut self) -> Request {
        let c = &self.common;
        let h = c.pairs.len();
        let b = |u: Vid, v: Vid| c.gram.get(&key(u, v)).copied().unwrap_or(f64::NAN);
        let id = |l: usize| match l {
            l if l < h => Vid::S(c.pairs[l].0),
            l if l < 2 * h => Vid::Y(c.pairs[l - h].0),
            _ => Vid::P,
        };
        // The two-loop recursion on the coefficients δ of q = Σ δₗ·bₗ.
        let mut delta = vec![0.0; 2 * h + 1];
        delta[2 * h] = 1.0;
        let qdot = |delta: &[f64], v: Vid| {
            delta
                .iter()
                .enumerate()
                .filter(|(_, d)| **d != 0.0)
                .fold(0.0, |acc, (l, d)| acc + d * b(id(l), v))
        };
        let mut alphas = vec![0.0; h];
        for j in (0..h).rev() {
            let a = c.pairs[j].1 * qdot(&delta, id(j));
            alphas[j] = a;
            delta[h + j] -= a;
        }
        if h > 0 {
            let gamma = b(id(h - 1), id(2 * h - 1)) / b(id(2 * h - 1), id(2 * h - 1));
            delta.iter_mut().for_each(|d| *d *= gamma);
        }
        for j in 0..h {
            let beta = c.pairs[j].1 * qdot(&delta, id(h + j));
            delta[j] += alphas[j] - beta;
        }
        let l1 = c.penalty.l1;
        let common = &self.common;
        for p in &mut self.pieces {
            // dir = −(δ_P·pg + Σ δₗ·bₗ), masked to pg's orthant (OWL-QN).
            let last = std::mem::take(&mut p.dir);
            let mut terms = vec![(delta[2 * h], &p.pg[..])];
            for (l, &d) in delta.iter().enumerate().take(2 * h) {
                terms.push((d, p.vector(id(l), common)));
            }
            let n = p.pg.len();
            let masked = |q: f64, g: f64, pen: bool| {
                if l1 > 0.0 && pen && q * g >= 0.0 {
                    0.0
                } else {
                    q
                }
            };
            let reuse = p.dir_proposed && last.len() == n;
            // A coefficient of ±inf or NaN times an exact zero is NaN,
            // not zero: then the dense formula, everywhere.
            let finite = terms.iter().all(|(c, _)| c.is_finite());
            let dir = match p.sparse(n).filter(|_| finite) {
                // The last proposed direction holds off the support what
                // this one would: −0, or +0 where masked.
                Some(support) if reuse => {
                    let mut q = last;
                    for &i in support {
                        q[i] = masked(-combine_at(&terms, i), p.pg[i], p.penalised[i]);
                    }
                    q
                }
                sparse => {
                    let mut q = match sparse {
                        Some(support) => combine_on(&terms, n, support),
                        None => combine(&terms, n),
                    };
                    for ((qi, &g), &pen) in q.iter_mut().zip(&p.pg).zip(&p.penalised) {
                        *qi = masked(-*qi, g, pen);
                    }
                    q
                }
            };
            p.dir = dir;
            p.dir_proposed = true;
        }
        self.common.checking = h > 0;
        self.begin_search()
    }

    /// Starts the line search along the pieces' direction.
    fn begin_search(&mut self) -> Request {
        let c = &mut self.common;
        c.steepest = c.pairs.is_empty();
        c.alpha = if c.steepest {
            let pp = c.gram.get(&(Vid::P, Vid::P)).copied().unwrap_or(f64::NAN);
            1.0 / pp.sqrt().max(1e-300)
        } else {
            1.0
        };
        c.unit_step = c.alpha < 1.0;
        c.alpha = c.alpha.min(1.0);
        c.backtracks = 0;
        c.wait = Wait::Trial;
        self.set_trials()
    }

    /// Sets the pieces' trial points at the step length `alpha` and the
    /// scalars to send with them.
    fn set_trials(&mut self) -> Request {
        let (alpha, penalty) = (self.common.alpha, self.common.penalty);
        for p in &mut self.pieces {
            p.set_trial(alpha, penalty.l1);
        }
        self.outgoing = self
            .pieces
            .iter()
            .map(|p| p.trial_partials(penalty))
            .collect();
        Request::Evaluate
    }
}

#[cfg(test)]
mod tests {
    use super::super::lbfgs::{drive, Lbfgs};
    use super::*;

    /// Xorshift64 from `state` (not 0): each call, the next state.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Mean logistic loss (+ no penalty: the optimizer adds it) and its
    /// gradient at `w` on a fixed synthetic problem; the last coordinate
    /// is the intercept.
    struct Problem {
        x: Vec<Vec<f64>>,
        y: Vec<f64>,
    }

    impl Problem {
        fn new(rows: usize, dims: usize) -> Problem {
            let mut bits = xorshift(0x2545_f491_4f6c_dd1d_u64);
            let mut next = move || (bits() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let truth: Vec<f64> = (0..dims).map(|_| 4.0 * next()).collect();
            let mut x = Vec::new();
            let mut y = Vec::new();
            for _ in 0..rows {
                let mut r: Vec<f64> = (0..dims).map(|_| next()).collect();
                r.push(1.0);
                let m: f64 = r.iter().zip(&truth).map(|(a, b)| a * b).sum();
                y.push(if next() + 0.5 < 1.0 / (1.0 + (-m).exp()) {
                    1.0
                } else {
                    0.0
                });
                x.push(r);
            }
            Problem { x, y }
        }

        fn eval(&self, w: &[f64]) -> (f64, Vec<f64>) {
            let n = self.y.len() as f64;
            let mut loss = 0.0;
            let mut g = vec![0.0; w.len()];
            for (r, &y) in self.x.iter().zip(&self.y) {
                let m: f64 = r.iter().zip(w).map(|(a, b)| a * b).sum();
                let p = 1.0 / (1.0 + (-m).exp());
                loss += (1.0 + m.exp()).ln() - y * m;
                r.iter().zip(&mut g).for_each(|(a, gi)| *gi += (p - y) * a);
            }
            (loss / n, g.into_iter().map(|v| v / n).collect())
        }
    }

    /// Owners, each with its pieces (`layout[o]`: the shard ids it owns)
    /// of `ranges`, driven to the end as the dataflow drives them: the
    /// partials are summed in shard order. Returns the iterate and the
    /// iterations.
    fn run_sharded(
        problem: &Problem,
        ranges: &[std::ops::Range<usize>],
        layout: &[Vec<usize>],
        penalty: Penalty,
    ) -> (Vec<f64>, u32, Option<Convergence>) {
        let n = ranges.last().map_or(0, |r| r.end);
        let penalised = |i: usize| i + 1 != n;
        let mut owners: Vec<ShardedLbfgs> = layout
            .iter()
            .map(|ids| {
                let pieces = ids
                    .iter()
                    .map(|&k| {
                        let r = ranges[k].clone();
                        (vec![0.0; r.len()], r.map(penalised).collect())
                    })
                    .collect();
                ShardedLbfgs::new(pieces, 5, 1e-12, Some(1e-10), penalty)
            })
            .collect();
        let total = |owners: &[ShardedLbfgs]| {
            let mut by_shard: Vec<(usize, Scalars)> = Vec::new();
            for (o, ids) in owners.iter().zip(layout) {
                for (k, &id) in ids.iter().enumerate() {
                    by_shard.push((id, o.partials(k)));
                }
            }
            by_shard.sort_by_key(|e| e.0);
            let mut t = Scalars::default();
            by_shard.iter().for_each(|(_, s)| t.add(s));
            t
        };
        let assemble = |owners: &[ShardedLbfgs], get: &dyn Fn(&ShardedLbfgs, usize) -> Vec<f64>| {
            let mut w = vec![0.0; n];
            for (o, ids) in owners.iter().zip(layout) {
                for (k, &id) in ids.iter().enumerate() {
                    w[ranges[id].clone()].copy_from_slice(&get(o, k));
                }
            }
            w
        };
        let mut request = Request::Evaluate;
        for _ in 0..2000 {
            let t = total(&owners);
            let next: Vec<Request> = match request {
                Request::Evaluate => {
                    let w = assemble(&owners, &|o, k| o.trial(k).to_vec());
                    let (loss, g) = problem.eval(&w);
                    owners
                        .iter_mut()
                        .zip(layout)
                        .map(|(o, ids)| {
                            let grads: Vec<Vec<f64>> = ids
                                .iter()
                                .map(|&id| g[ranges[id].clone()].to_vec())
                                .collect();
                            o.on_trial(loss, &grads, &t).unwrap()
                        })
                        .collect()
                }
                Request::Reduce => owners.iter_mut().map(|o| o.on_gram(&t).unwrap()).collect(),
                Request::Accepted {
                    converged: false, ..
                } => owners.iter_mut().map(ShardedLbfgs::propose).collect(),
                Request::Accepted { .. } | Request::Stalled => break,
            };
            assert!(next.iter().all(|r| *r == next[0]), "owners disagree");
            request = next[0];
        }
        let w = assemble(&owners, &|o, k| o.iterate(k).to_vec());
        (w, owners[0].iterations(), owners[0].converged_by())
    }

    fn run_whole(problem: &Problem, n: usize, penalty: Penalty) -> Vec<f64> {
        let penalised = (0..n).map(|i| i + 1 != n).collect();
        let mut opt = Lbfgs::new(vec![0.0; n], 5, 1e-12, penalty, penalised)
            .with_gradient_tolerance(Some(1e-10));
        drive(&mut opt, 2000, |w| problem.eval(w))
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn reaches_the_whole_vector_optimum_and_the_same_bits_on_any_owners() {
        let problem = Problem::new(400, 23);
        let n = 24;
        for penalty in [
            Penalty { l2: 1e-2, l1: 0.0 },
            Penalty { l2: 1e-3, l1: 2e-2 },
        ] {
            let whole = run_whole(&problem, n, penalty);
            let ranges: Vec<_> = (0..5).map(|k| k * n / 5..(k + 1) * n / 5).collect();
            let one = run_sharded(&problem, &ranges, &[vec![0, 1, 2, 3, 4]], penalty);
            let two = run_sharded(&problem, &ranges, &[vec![0, 2, 4], vec![1, 3]], penalty);
            let five = run_sharded(
                &problem,
                &ranges,
                &[vec![0], vec![1], vec![2], vec![3], vec![4]],
                penalty,
            );
            assert_eq!(bits(&one.0), bits(&two.0), "{penalty:?}");
            assert_eq!(bits(&one.0), bits(&five.0), "{penalty:?}");
            assert_eq!(one.1, five.1);
            assert!(one.2.is_some(), "{penalty:?}: did not converge");
            for (a, b) in one.0.iter().zip(&whole) {
                assert!((a - b).abs() < 1e-7, "{penalty:?}: {a} vs {b}");
            }
            if penalty.l1 > 0.0 {
                let zeros = |w: &[f64]| w.iter().filter(|v| **v == 0.0).count();
                assert_eq!(zeros(&one.0), zeros(&whole), "{penalty:?}");
                assert!(zeros(&whole) > 0, "l1 should zero some weights");
            }
        }
    }

    /// Totals that do not fit what the owners asked for are an error, not
    /// a NaN that a line search would stall on (and exit 0).
    #[test]
    fn totals_that_do_not_fit_are_refused() {
        let penalty = Penalty { l2: 0.1, l1: 0.0 };
        let mut opt = ShardedLbfgs::new(vec![(vec![0.0; 4], vec![true; 4])], 3, 0.0, None, penalty);
        let grad = vec![vec![1.0, -1.0, 0.5, 0.0]];
        let short = Scalars {
            sums: vec![0.0, 0.0],
            maxes: Vec::new(),
        };
        assert!(opt.on_trial(0.7, &grad, &short).is_err());
        assert!(opt.on_trial(0.7, &[vec![1.0]], &opt.partials(0)).is_err());
        assert!(
            opt.on_gram(&opt.partials(0)).is_err(),
            "no dot products were asked for"
        );
        let trial = opt.partials(0);
        assert_eq!(opt.on_trial(0.7, &grad, &trial), Ok(Request::Reduce));
        assert!(
            opt.on_trial(0.7, &grad, &trial).is_err(),
            "dot products are awaited"
        );
        let mut gram = opt.partials(0);
        gram.sums.pop();
        assert!(opt.on_gram(&gram).is_err());
    }

    #[test]
    fn blocked_products_are_the_products() {
        let n = 3 * BLOCK + 7;
        let a: Vec<f64> = (0..n).map(|i| (i % 13) as f64 - 6.0).collect();
        let b: Vec<f64> = (0..n).map(|i| (i % 5) as f64 * 0.25).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let got = dots(&[(&a, &b), (&b, &b)]);
        assert_eq!(got[0], want, "small integers and quarters sum exactly");
        let terms = [(2.0, &a[..]), (-1.0, &b), (0.5, &a), (3.0, &b), (-0.25, &a)];
        let q = combine(&terms, n);
        for i in 0..n {
            let want = terms.iter().fold(0.0, |q, (c, v)| q + c * v[i]);
            assert_eq!(q[i].to_bits(), want.to_bits());
        }
    }

    /// Vectors of length `n` that are +0 outside `support` and hold
    /// values of mixed sign and magnitude (and a −0) on it.
    fn on_support(n: usize, support: &[usize], seed: u64, count: usize) -> Vec<Vec<f64>> {
        let mut next = xorshift(seed | 1);
        (0..count)
            .map(|_| {
                let mut v = vec![0.0; n];
                for &i in support {
                    let r = next();
                    v[i] = match r % 7 {
                        0 => -0.0,
                        1 => 1e-300 * (r >> 11) as f64,
                        _ => ((r >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1e3,
                    };
                }
                v
            })
            .collect()
    }

    /// The sparse kernels give the dense kernels' bits, whatever the
    /// support: a block's lanes, the tail of the last block, blocks with
    /// no coordinate in the support, vectors shorter than others.
    #[test]
    fn sparse_products_and_combinations_are_the_dense_bits() {
        let n = 2 * BLOCK + 13;
        let supports: Vec<Vec<usize>> = vec![
            vec![],
            vec![0],
            vec![n - 1],
            vec![
                3,
                8,
                9,
                BLOCK - 1,
                BLOCK,
                2 * BLOCK + 7,
                2 * BLOCK + 8,
                n - 1,
            ],
            (0..n).step_by(97).collect(),
            (BLOCK..2 * BLOCK).step_by(5).collect(),
        ];
        for (k, support) in supports.iter().enumerate() {
            let v = on_support(n, support, 77 + k as u64, 6);
            let pairs: Vec<(&[f64], &[f64])> = vec![(&v[0], &v[1]), (&v[2], &v[2]), (&v[3], &v[4])];
            assert_eq!(
                bits(&dots_on(&pairs, support)),
                bits(&dots(&pairs)),
                "support {k}"
            );
            // Products end at the shortest vector: a tail of 2 (n − 3), of
            // none (n − 5), inside the lanes of a block (n − 9).
            for cut in [3, 5, 9] {
                let short: Vec<(&[f64], &[f64])> = vec![(&v[5], &v[0][..n - cut]), (&v[1], &v[1])];
                assert_eq!(
                    bits(&dots_on(&short, support)),
                    bits(&dots(&short)),
                    "support {k}, cut {cut}"
                );
            }
            let terms: Vec<(f64, &[f64])> = v
                .iter()
                .enumerate()
                .map(|(j, v)| (j as f64 * 0.75 - 2.0, &v[..]))
                .collect();
            for count in [1, 4, 5, 6] {
                assert_eq!(
                    bits(&combine_on(&terms[..count], n, support)),
                    bits(&combine(&terms[..count], n)),
                    "support {k}, {count} terms"
                );
            }
        }
    }

    /// A problem whose rows touch `active` of `dims` features (the others
    /// are zero in every row): a hashed model's shape.
    fn sparse_problem(rows: usize, dims: usize, active: &[usize]) -> Problem {
        let mut p = Problem::new(rows, dims);
        for r in &mut p.x {
            for (j, v) in r.iter_mut().enumerate().take(dims) {
                if !active.contains(&j) {
                    *v = 0.0;
                }
            }
        }
        p
    }

    /// Every vector of every owner, as a checkpoint keeps it (−0 and +0
    /// told apart).
    fn state(owners: &[ShardedLbfgs]) -> Vec<u8> {
        bincode::serialize(&owners.iter().map(ShardedLbfgs::save).collect::<Vec<_>>())
            .expect("the state serializes")
    }

    /// Owners run through the sparse kernels hold, after every round,
    /// every vector to the bit as owners that run the dense ones: the
    /// support changes how much is computed, never what.
    #[test]
    fn the_sparse_path_keeps_every_vector_to_the_bit() {
        let dims = 200;
        let active = [3, 17, 18, 64, 150, 151, 199];
        let problem = sparse_problem(300, dims, &active);
        let n = dims + 1;
        let ranges = [0..90, 90..n];
        let penalised = |i: usize| i + 1 != n;
        for (penalty, warm) in [
            (Penalty { l2: 1e-2, l1: 0.0 }, false),
            (Penalty { l2: 1e-3, l1: 2e-3 }, false),
            (Penalty { l2: 1e-3, l1: 1e-3 }, true),
        ] {
            let start = |i: usize| match (warm, i) {
                (true, 40) => 0.5,
                (true, 41) => -0.0,
                (true, 18) => -0.25,
                _ => 0.0,
            };
            let make = || -> Vec<ShardedLbfgs> {
                ranges
                    .iter()
                    .map(|r| {
                        let piece = (
                            r.clone().map(start).collect(),
                            r.clone().map(penalised).collect(),
                        );
                        ShardedLbfgs::new(vec![piece], 3, 1e-12, Some(1e-10), penalty)
                    })
                    .collect()
            };
            let mut sparse = make();
            let mut dense = make();
            for o in &mut dense {
                o.pieces.iter_mut().for_each(|p| p.support = None);
            }
            let mut request = Request::Evaluate;
            let mut rounds = 0;
            let mut took_sparse = false;
            while rounds < 400 {
                rounds += 1;
                let t: Scalars = {
                    let mut t = Scalars::default();
                    sparse.iter().for_each(|o| t.add(&o.partials(0)));
                    t
                };
                let w: Vec<f64> = sparse.iter().flat_map(|o| o.trial(0).to_vec()).collect();
                took_sparse |= sparse
                    .iter()
                    .all(|o| o.pieces[0].sparse(o.pieces[0].x.len()).is_some());
                let step = |owners: &mut Vec<ShardedLbfgs>| -> Vec<Request> {
                    match request {
                        Request::Evaluate => {
                            let (loss, g) = problem.eval(&w);
                            owners
                                .iter_mut()
                                .zip(&ranges)
                                .map(|(o, r)| {
                                    o.on_trial(loss, &[g[r.clone()].to_vec()], &t).unwrap()
                                })
                                .collect()
                        }
                        Request::Reduce => {
                            owners.iter_mut().map(|o| o.on_gram(&t).unwrap()).collect()
                        }
                        Request::Accepted { .. } => {
                            owners.iter_mut().map(ShardedLbfgs::propose).collect()
                        }
                        Request::Stalled => Vec::new(),
                    }
                };
                if matches!(
                    request,
                    Request::Stalled
                        | Request::Accepted {
                            converged: true,
                            ..
                        }
                ) {
                    break;
                }
                if matches!(request, Request::Accepted { .. }) && sparse[0].iterations() == 4 {
                    // A checkpoint and a resume at this iterate: the
                    // support is found again, sparse, and the bits go on.
                    sparse = sparse
                        .iter()
                        .map(|o| {
                            let (common, pieces) = o.save();
                            ShardedLbfgs::restore(common, pieces).expect("a saved iterate restores")
                        })
                        .collect();
                    let sparse_again = sparse
                        .iter()
                        .all(|o| o.pieces[0].sparse(o.pieces[0].x.len()).is_some());
                    assert!(
                        sparse_again,
                        "{penalty:?}: the restored support is not sparse"
                    );
                }
                let a = step(&mut sparse);
                let b = step(&mut dense);
                assert_eq!(a, b, "{penalty:?}: round {rounds}");
                assert_eq!(state(&sparse), state(&dense), "{penalty:?}: round {rounds}");
                request = a[0];
            }
            assert!(took_sparse, "{penalty:?}: the sparse kernels never ran");
            assert!(
                sparse[0].iterations() > 5,
                "{penalty:?}: {} iterations are too few to tell",
                sparse[0].iterations()
            );
            assert!(
                sparse[0].converged_by().is_some(),
                "{penalty:?}: did not converge in {rounds} rounds"
            );
        }
    }

    #[test]
    fn the_lane_dot_is_the_dot_product() {
        let a: Vec<f64> = (0..11).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..11).map(|i| 2.0 - i as f64).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), want);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn scalars_sum_and_take_maxima() {
        let mut t = Scalars::default();
        t.add(&Scalars {
            sums: vec![1.0, 2.0],
            maxes: vec![3.0],
        });
        t.add(&Scalars {
            sums: vec![0.5, -2.0],
            maxes: vec![1.0],
        });
        assert_eq!(t.sums, vec![1.5, 0.0]);
        assert_eq!(t.maxes, vec![3.0]);
    }
}
