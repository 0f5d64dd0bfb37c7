//! Lazy (just-in-time) updates: a step visits only the coordinates its
//! batch touched; what an untouched coordinate would have done meanwhile is
//! applied when it is next touched or read.
//!
//! A coordinate is *touched* by a step when its summed loss gradient is
//! non-zero, or when every row touches it (intercepts and numeric weights).
//! What an untouched coordinate does depends on the optimizer ([`Drift`]):
//!
//! * **SGD** with a penalty moves every step: `w ← prox(w − η_s·l2·w,
//!   η_s·l1)`. Over missed steps `t0+1 … t` that composes to
//!   `w ← sign(w)·max(0, A·|w| − B)` with `A = Π (1 − η_s·l2)` and
//!   `B = Σ_s η_s·l1·Π_{r>s} (1 − η_r·l2)` (the cumulative penalty of
//!   Tsuruoka, Tsujii & Ananiadou 2009, with the decay of Bottou's SGD). A
//!   global [`Clock`] keeps `ln A` and `B` from the start in double-double,
//!   so a catch-up is two subtractions and an `exp`, exact up to rounding for
//!   any schedule and gap. Same optimum; the bits differ at rounding level.
//! * **FTRL** with a penalty: the weight is a closed form of the state
//!   `(z, n)` and the step count `t` ([`super::ftrl_weight`]); `z` and `n` do
//!   not change without a gradient, so the weight at any step is computed
//!   from them: bit-identical to the eager loop.
//! * **Momentum, AdaGrad, Adam** (and SGD and FTRL without a penalty): the
//!   weight does not move while the coordinate is untouched. For SGD, FTRL
//!   and AdaGrad without a penalty that is what the eager loop does too
//!   (bit-identical); for momentum and Adam, whose eager weights keep moving
//!   on their moments, and for AdaGrad with a penalty, it is a different
//!   algorithm (lazy semantics): the moments decay in closed form (`μᵏ`,
//!   `β₁ᵏ`, `β₂ᵏ` for `k` missed steps) when the coordinate is next touched,
//!   and the penalties apply only in the steps that touch it.
//!
//! Coordinates touched by every step are never behind, so models without
//! hashed features train exactly as with eager updates.
//!
//! Who applies the catch-up: the owner of a coordinate ([`Lazy`]) brings it
//! up to date when a step touches it, and brings every coordinate up to date
//! at the end of each epoch (a *flush*). Readers that hold a copy of what
//! owners published ([`Reader`]) compute a weight at the step they read with
//! [`Drift::read`], a pure function of what was published and the clock, so
//! reads never depend on who reads when.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{ftrl_weight, FirstOrderState, Penalty, Rates};
use crate::spec::OptimizerSpec;

/// An unevaluated sum `hi + lo` of two `f64` (double-double), for sums
/// whose differences must stay exact to about 2⁻¹⁰⁴.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Dd {
    hi: f64,
    lo: f64,
}

/// `a + b` as a rounded sum and its exact error.
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// `a · b` as a rounded product and its exact error.
fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    (p, a.mul_add(b, -p))
}

impl Dd {
    fn new(hi: f64, lo: f64) -> Dd {
        let (hi, lo) = two_sum(hi, lo);
        Dd { hi, lo }
    }

    fn add(self, o: Dd) -> Dd {
        let (s, e) = two_sum(self.hi, o.hi);
        Dd::new(s, e + self.lo + o.lo)
    }

    fn sub(self, o: Dd) -> Dd {
        self.add(Dd {
            hi: -o.hi,
            lo: -o.lo,
        })
    }

    fn mul(self, o: Dd) -> Dd {
        let (p, e) = two_prod(self.hi, o.hi);
        Dd::new(p, e + self.hi * o.lo + self.lo * o.hi)
    }

    fn to_f64(self) -> f64 {
        self.hi + self.lo
    }
}

/// The global clock of lazy updates after some optimizer steps: the step
/// count and what SGD's penalties did to an untouched weight since the
/// start. Owners send it with every emission, so readers hold the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    /// Optimizer steps applied so far.
    pub t: u64,
    /// `ln Π_s (1 − η_s·l2)` over the steps so far.
    log_decay: Dd,
    /// `Σ_s η_s·l1·Π_{r>s} (1 − η_r·l2)`: the threshold an untouched weight
    /// has met since the start, decayed to now.
    shrink: Dd,
}

impl Stamp {
    /// The stamp after one more step with rate `eta`.
    fn next(&self, eta: f64, penalty: Penalty) -> Stamp {
        let mut s = *self;
        s.t += 1;
        if penalty.l2 > 0.0 {
            let (p, pe) = two_prod(eta, penalty.l2);
            // ln(1 − p − pe) to first order in the tiny pe.
            s.log_decay = s.log_decay.add(Dd::new((-p).ln_1p(), -pe / (1.0 - p)));
            s.shrink = s.shrink.mul(Dd::new(1.0, 0.0).sub(Dd::new(p, pe)));
        }
        if penalty.l1 > 0.0 {
            let (p, pe) = two_prod(eta, penalty.l1);
            s.shrink = s.shrink.add(Dd::new(p, pe));
        }
        s
    }
}

/// SGD's closed form: the weight `w` after the untouched steps from stamp
/// `then` to stamp `now`, `sign(w)·max(0, A·|w| − B)`.
fn decayed(w: f64, then: &Stamp, now: &Stamp) -> f64 {
    if then.t >= now.t || w == 0.0 {
        return w;
    }
    let a = now.log_decay.sub(then.log_decay).to_f64().exp();
    let b = now.shrink.sub(then.shrink.mul(Dd::new(a, 0.0))).to_f64();
    let m = a * w.abs() - b;
    if m > 0.0 {
        m.copysign(w)
    } else {
        0.0
    }
}

/// The stamps of recent steps, oldest first, one per step.
#[derive(Debug, Clone)]
pub struct Clock {
    stamps: VecDeque<Stamp>,
}

impl Default for Clock {
    fn default() -> Clock {
        Clock {
            stamps: VecDeque::from([Stamp::default()]),
        }
    }
}

impl Clock {
    /// The stamp after the latest step.
    pub fn now(&self) -> Stamp {
        self.stamps.back().copied().unwrap_or_default()
    }

    /// The stamp after step `t` (the oldest one kept if `t` is older).
    pub fn at(&self, t: u64) -> Stamp {
        let first = self.stamps.front().map_or(0, |s| s.t);
        let k = (t.max(first) - first) as usize;
        self.stamps
            .get(k)
            .or(self.stamps.back())
            .copied()
            .unwrap_or_default()
    }

    /// Counts one more step with rate `eta` and these penalties.
    pub fn tick(&mut self, eta: f64, penalty: Penalty) {
        let next = self.now().next(eta, penalty);
        self.stamps.push_back(next);
    }

    /// Takes `stamp` from an owner: a stamp already held is ignored, the
    /// next one is kept. False if `stamp` skips a step (it cannot be read).
    pub fn record(&mut self, stamp: Stamp) -> bool {
        let now = self.now().t;
        if stamp.t <= now {
            return true;
        }
        if stamp.t != now + 1 {
            return false;
        }
        self.stamps.push_back(stamp);
        true
    }

    /// Forgets the stamps before step `t`: nothing is behind `t` any more.
    pub fn forget_before(&mut self, t: u64) {
        while self.stamps.len() > 1 && self.stamps.get(1).is_some_and(|s| s.t <= t) {
            self.stamps.pop_front();
        }
    }

    /// The stamps kept, oldest first (for a checkpoint).
    pub fn stamps(&self) -> Vec<Stamp> {
        self.stamps.iter().copied().collect()
    }

    /// The clock that keeps `stamps` (oldest first, one per step), as
    /// [`Clock::stamps`] gave them; `None` if they are empty or not one
    /// step apart.
    pub fn from_stamps(stamps: Vec<Stamp>) -> Option<Clock> {
        let consecutive = stamps.windows(2).all(|w| w[1].t == w[0].t + 1);
        (!stamps.is_empty() && consecutive).then(|| Clock {
            stamps: stamps.into(),
        })
    }

    /// Stamps kept.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Never true: a clock always holds its latest stamp.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }
}

/// What an untouched coordinate's weight does under an optimizer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drift {
    /// It stays where it is.
    Frozen,
    /// SGD with a penalty: decay and soft-thresholding, in closed form.
    Decay,
    /// FTRL with a penalty: the closed form of `(z, n)` at the step count.
    Ftrl {
        /// α (the learning rate).
        alpha: f64,
        /// β.
        beta: f64,
        /// The penalties, scaled by the step count.
        penalty: Penalty,
    },
}

impl Drift {
    /// The drift of `spec` with these penalties.
    pub fn of(spec: &OptimizerSpec, penalty: Penalty) -> Drift {
        let penalised = penalty.l1 > 0.0 || penalty.l2 > 0.0;
        match *spec {
            OptimizerSpec::Sgd(_) if penalised => Drift::Decay,
            OptimizerSpec::Ftrl { base, beta } if penalised => Drift::Ftrl {
                alpha: base.learning_rate,
                beta,
                penalty,
            },
            _ => Drift::Frozen,
        }
    }

    /// True if untouched weights move, so that readers must compute them.
    pub fn moves(&self) -> bool {
        *self != Drift::Frozen
    }

    /// The weight at stamp `now` of a coordinate whose weight was `w` at
    /// stamp `then` and untouched since; `zn` is its FTRL state `(z, n)`.
    #[inline]
    pub fn read(
        &self,
        w: f64,
        then: &Stamp,
        now: &Stamp,
        zn: impl FnOnce() -> (f64, f64),
        penalised: bool,
    ) -> f64 {
        if !penalised || then.t >= now.t {
            return w;
        }
        match *self {
            Drift::Frozen => w,
            Drift::Decay => decayed(w, then, now),
            Drift::Ftrl {
                alpha,
                beta,
                penalty,
            } => {
                let (z, n) = zn();
                ftrl_weight(z, n, now.t as f64, alpha, beta, penalty, true)
            }
        }
    }
}

/// Lazy updates of one vector of coordinates that a party steps itself (a
/// shard on its owner, a `model-average` replica, a `model-parallel` block):
/// the step up to which each coordinate's weight and optimizer state are
/// current. The clock is kept by the caller (one for all its shards).
#[derive(Debug, Clone)]
pub struct Lazy {
    drift: Drift,
    /// The step each coordinate is current at, for coordinates `..len`;
    /// beyond `len` the storage is zero (allocated zeroed ahead, so that a
    /// wide hashed model's coordinates cost pages only where touched).
    last: Vec<u64>,
    len: usize,
}

impl Lazy {
    /// Lazy updates for `spec` with these penalties.
    pub fn new(spec: &OptimizerSpec, penalty: Penalty) -> Lazy {
        Lazy {
            drift: Drift::of(spec, penalty),
            last: Vec::new(),
            len: 0,
        }
    }

    /// These lazy updates with room for `n` coordinates allocated zeroed
    /// up front (no coordinate is written until touched).
    pub fn with_room(mut self, n: usize) -> Lazy {
        self.grow(n);
        self
    }

    /// Makes the storage hold at least `n` coordinates, zero beyond `len`.
    fn grow(&mut self, n: usize) {
        if self.last.len() < n {
            let mut room = vec![0; n];
            room[..self.len].copy_from_slice(&self.last[..self.len]);
            self.last = room;
        }
    }

    /// How untouched weights move.
    pub fn drift(&self) -> Drift {
        self.drift
    }

    /// The step each coordinate is current at (for a checkpoint; missing
    /// coordinates are at step 0).
    pub fn current_at(&self) -> &[u64] {
        &self.last[..self.len]
    }

    /// These lazy updates with coordinates current at `last`, as
    /// [`Lazy::current_at`] gave them.
    pub fn resumed(mut self, last: Vec<u64>) -> Lazy {
        self.len = last.len();
        self.last = last;
        self
    }

    /// Marks the coordinates `coords` current at step `t` (their weights
    /// and state were just set to their values at `t`).
    pub fn set_current(&mut self, coords: &[usize], t: u64) {
        for &i in coords {
            *self.last(i) = t;
        }
    }

    fn last(&mut self, i: usize) -> &mut u64 {
        if self.last.len() <= i {
            self.grow((i + 1).max(2 * self.last.len()));
        }
        self.len = self.len.max(i + 1);
        &mut self.last[i]
    }

    /// Brings coordinate `i` (weight and optimizer state) from the step it
    /// is current at to stamp `to`, as the untouched steps between would.
    #[allow(clippy::too_many_arguments)] // the step's vectors, the clock, the coordinate
    fn bring(
        &mut self,
        spec: &OptimizerSpec,
        params: &mut [f64],
        state: &mut FirstOrderState,
        clock: &Clock,
        i: usize,
        to: &Stamp,
        penalised: bool,
    ) {
        let last = *self.last(i);
        if last >= to.t {
            return;
        }
        if self.drift.moves() {
            let then = clock.at(last);
            params[i] =
                self.drift
                    .read(params[i], &then, to, || (state.m[i], state.v[i]), penalised);
        }
        let k = (to.t - last).min(i32::MAX as u64) as i32;
        match *spec {
            OptimizerSpec::Momentum { momentum, .. } => state.m[i] *= momentum.powi(k),
            OptimizerSpec::Adam { beta1, beta2, .. } => {
                state.m[i] *= beta1.powi(k);
                state.v[i] *= beta2.powi(k);
            }
            _ => {}
        }
        self.last[i] = to.t;
    }

    /// One lazy step over the coordinates in `touched` (each at most once):
    /// each is brought up to the previous step, then takes the eager step.
    /// `clock` must already have ticked for this step (see [`Clock::tick`]).
    #[allow(clippy::too_many_arguments)] // step_at's arguments plus the clock
    pub fn step(
        &mut self,
        spec: &OptimizerSpec,
        params: &mut [f64],
        grad: &[f64],
        state: &mut FirstOrderState,
        clock: &Clock,
        lr: f64,
        penalty: Penalty,
        penalised: impl Fn(usize) -> bool,
        touched: &[usize],
    ) {
        let before = clock.at(state.t);
        let rates = Rates::advance(spec, state, params.len(), lr, penalty);
        for &i in touched {
            self.bring(spec, params, state, clock, i, &before, penalised(i));
        }
        rates.apply(
            spec,
            params,
            grad,
            state,
            touched.iter().copied(),
            &penalised,
        );
        for &i in touched {
            self.last[i] = state.t;
        }
    }

    /// Brings coordinate `i` up to the clock's latest step before it is
    /// read, if its weight moves while untouched.
    pub fn read(
        &mut self,
        spec: &OptimizerSpec,
        params: &mut [f64],
        state: &mut FirstOrderState,
        clock: &Clock,
        i: usize,
        penalised: bool,
    ) {
        if self.drift.moves() {
            self.bring(spec, params, state, clock, i, &clock.now(), penalised);
        }
    }

    /// Brings every coordinate in `live` (those that may be behind) up to
    /// the clock's latest step.
    #[allow(clippy::too_many_arguments)] // the step's vectors, the clock, the coordinates
    pub fn flush(
        &mut self,
        spec: &OptimizerSpec,
        params: &mut [f64],
        state: &mut FirstOrderState,
        clock: &Clock,
        live: &[usize],
        penalised: impl Fn(usize) -> bool,
    ) {
        let now = clock.now();
        for &i in live {
            self.bring(spec, params, state, clock, i, &now, penalised(i));
        }
    }
}

/// A worker's copy of lazily updated shards that others own: each weight as
/// its owner last published it and the step it was published at, FTRL's
/// `(z, n)`, and the stamps in between, so that [`Reader::read`] gives the
/// weight at a later step. Only needed when weights move while untouched
/// ([`Drift::moves`]); otherwise a published weight is the weight.
#[derive(Debug, Clone)]
pub struct Reader {
    drift: Drift,
    published: Vec<f64>,
    last: Vec<u64>,
    z: Vec<f64>,
    n: Vec<f64>,
    clock: Clock,
}

impl Reader {
    /// A reader of `len` coordinates, all zero at step 0; `None` if weights
    /// under `drift` do not move while untouched.
    pub fn new(drift: Drift, len: usize) -> Option<Reader> {
        let ftrl = matches!(drift, Drift::Ftrl { .. });
        drift.moves().then(|| Reader {
            drift,
            published: vec![0.0; len],
            last: vec![0; len],
            z: if ftrl { vec![0.0; len] } else { Vec::new() },
            n: if ftrl { vec![0.0; len] } else { Vec::new() },
            clock: Clock::default(),
        })
    }

    /// Starts FTRL's copy of `(z, n)` where the owners start it (a warm
    /// start: [`FirstOrderState::starting_at`]); until a coordinate's state
    /// is published, its weight is read from this one.
    pub fn start_at(mut self, state: &FirstOrderState) -> Reader {
        if !self.z.is_empty() && state.m.len() == self.z.len() && state.v.len() == self.n.len() {
            self.z.clone_from(&state.m);
            self.n.clone_from(&state.v);
        }
        self
    }

    /// The reader of a resumed job, holding what the owners last
    /// published: each weight, the step it is current at, FTRL's `(z, n)`
    /// (empty otherwise), and the owners' clock. Vectors shorter than the
    /// reader are padded with zeros (coordinates never touched).
    pub fn resumed(
        mut self,
        published: &[f64],
        last: &[u64],
        state: (&[f64], &[f64]),
        clock: Clock,
    ) -> Reader {
        let fill = |to: &mut [f64], from: &[f64]| {
            to.iter_mut().zip(from).for_each(|(t, f)| *t = *f);
        };
        fill(&mut self.published, published);
        self.last.iter_mut().zip(last).for_each(|(t, f)| *t = *f);
        fill(&mut self.z, state.0);
        fill(&mut self.n, state.1);
        self.clock = clock;
        self
    }

    /// Takes an owner's stamp (see [`Clock::record`]).
    pub fn record(&mut self, stamp: Stamp) -> bool {
        self.clock.record(stamp)
    }

    /// Coordinate `i` was published as `w` at step `t`.
    pub fn publish(&mut self, i: usize, w: f64, t: u64) {
        self.published[i] = w;
        self.last[i] = t;
    }

    /// FTRL: coordinate `i` was published as its state `(z, n)` at step
    /// `t`; returns its weight then (what its owner computed).
    pub fn publish_state(&mut self, i: usize, z: f64, n: f64, t: u64, penalised: bool) -> f64 {
        if let Some((zi, ni)) = self.z.get_mut(i).zip(self.n.get_mut(i)) {
            (*zi, *ni) = (z, n);
        }
        let w = match self.drift {
            Drift::Ftrl {
                alpha,
                beta,
                penalty,
            } => ftrl_weight(z, n, t as f64, alpha, beta, penalty, penalised),
            _ => 0.0,
        };
        self.publish(i, w, t);
        w
    }

    /// Every coordinate in `range` is up to date as of step `t` (a flush).
    pub fn flushed(&mut self, range: std::ops::Range<usize>, t: u64) {
        self.last[range].iter_mut().for_each(|l| *l = t);
    }

    /// The weight of coordinate `i` as published.
    pub fn published(&self, i: usize) -> f64 {
        self.published[i]
    }

    /// True if coordinate `i`'s published weight is its weight at step `t`.
    #[inline]
    pub fn is_current(&self, i: usize, t: u64) -> bool {
        self.last[i] >= t
    }

    /// The weight of coordinate `i` at step `t` (no earlier than its
    /// publication; stamps up to `t` must have been recorded).
    pub fn read(&self, i: usize, t: u64, penalised: bool) -> f64 {
        let last = self.last[i];
        if last >= t {
            return self.published[i];
        }
        self.drift.read(
            self.published[i],
            &self.clock.at(last),
            &self.clock.at(t),
            || (self.z[i], self.n[i]),
            penalised,
        )
    }

    /// Forgets stamps before step `t`, once every coordinate is up to date
    /// as of `t` or later.
    pub fn forget_before(&mut self, t: u64) {
        self.clock.forget_before(t);
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::optim::step;
    use crate::spec::{FirstOrder, Schedule};

    const D: usize = 10;
    /// Coordinate 0 is an intercept (unpenalised) and 1 a numeric weight:
    /// both touched by every step. The others are hashed.
    fn penalised(i: usize) -> bool {
        i != 0
    }

    fn base(lr: f64, schedule: Schedule) -> FirstOrder {
        FirstOrder {
            learning_rate: lr,
            batch_size: 1,
            schedule,
            lazy: true,
        }
    }

    fn schedule(which: usize) -> Schedule {
        [
            Schedule::Constant,
            Schedule::InverseTime { decay: 0.01 },
            Schedule::InverseSqrt { decay: 0.05 },
            Schedule::Exponential { decay: 0.7 },
        ][which]
    }

    /// Mean gradients of `steps` steps: coordinates 0 and 1 every step,
    /// hashed coordinate `i` with probability `p[i]`, some of them tiny so
    /// that long gaps (hundreds to thousands of steps) are common.
    fn gradients(seed: u64, steps: usize) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let p: Vec<f64> = (0..D)
            .map(|i| match i {
                0 | 1 => 1.0,
                _ => [0.5, 0.05, 0.005, 0.0005][rng.random_range(0..4)],
            })
            .collect();
        (0..steps)
            .map(|_| {
                (0..D)
                    .map(|i| {
                        if rng.random_bool(p[i]) {
                            rng.random_range(-2.0..2.0)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The rate of step `s` (0-based), 100 steps per epoch.
    fn rate(spec: &OptimizerSpec, s: usize) -> f64 {
        let f = spec
            .first_order()
            .copied()
            .unwrap_or(base(0.1, Schedule::Constant));
        f.schedule.rate(f.learning_rate, s as u64, (s / 100) as u32)
    }

    /// Eager steps over every coordinate.
    /// Returns the weights and state at the end, and the weights after
    /// every step (to check what readers see).
    fn eager(
        spec: &OptimizerSpec,
        grads: &[Vec<f64>],
        penalty: Penalty,
    ) -> (Vec<f64>, FirstOrderState, Vec<Vec<f64>>) {
        let mut w = vec![0.0; D];
        let mut st = FirstOrderState::default();
        let mut history = Vec::with_capacity(grads.len());
        for (s, g) in grads.iter().enumerate() {
            step(spec, &mut w, g, &mut st, rate(spec, s), penalty, penalised);
            history.push(w.clone());
        }
        (w, st, history)
    }

    /// Lazy steps over the touched coordinates; after each step, `check`
    /// sees the weights a reader computes from what was published.
    fn lazy(
        spec: &OptimizerSpec,
        grads: &[Vec<f64>],
        penalty: Penalty,
        mut check: impl FnMut(usize, &[f64]),
    ) -> (Vec<f64>, FirstOrderState) {
        let mut w = vec![0.0; D];
        let mut st = FirstOrderState::default();
        let mut lz = Lazy::new(spec, penalty);
        let mut clock = Clock::default();
        let mut reader = Reader::new(lz.drift(), D);
        for (s, g) in grads.iter().enumerate() {
            let touched: Vec<usize> = (0..D).filter(|&i| i < 2 || g[i] != 0.0).collect();
            let lr = rate(spec, s);
            clock.tick(lr, penalty);
            lz.step(
                spec, &mut w, g, &mut st, &clock, lr, penalty, penalised, &touched,
            );
            let now = clock.now();
            let read: Vec<f64> = match reader.as_mut() {
                Some(r) => {
                    assert!(r.record(now));
                    for &i in &touched {
                        match lz.drift() {
                            Drift::Ftrl { .. } => {
                                r.publish_state(i, st.m[i], st.v[i], now.t, penalised(i));
                            }
                            _ => r.publish(i, w[i], now.t),
                        }
                    }
                    (0..D).map(|i| r.read(i, now.t, penalised(i))).collect()
                }
                None => w.clone(),
            };
            check(s, &read);
        }
        lz.flush(
            spec,
            &mut w,
            &mut st,
            &clock,
            &(0..D).collect::<Vec<_>>(),
            penalised,
        );
        (w, st)
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// |a − b| within `rel` of the largest weight seen.
    fn close(a: &[f64], b: &[f64], scale: f64, rel: f64) -> Result<(), String> {
        for i in 0..a.len() {
            if (a[i] - b[i]).abs() > rel * scale.max(1e-300) {
                return Err(format!(
                    "coordinate {i}: {} vs {} (scale {scale:e})",
                    a[i], b[i]
                ));
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]

        /// SGD: lazy steps (and readers' catch-up at every step) equal the
        /// eager loop within rounding, for L2, L1 and elastic net under
        /// every schedule, over gaps of up to thousands of steps.
        #[test]
        fn lazy_sgd_equals_eager_within_rounding(
            seed in 0u64..1_000_000,
            which in 0usize..4,
            pen in 0usize..3,
            lr in 0.05f64..0.8,
            steps in 200usize..3000,
        ) {
            let penalty = [
                Penalty { l2: 0.05, l1: 0.0 },
                Penalty { l2: 0.0, l1: 0.002 },
                Penalty { l2: 0.02, l1: 0.001 },
            ][pen];
            let spec = OptimizerSpec::Sgd(base(lr, schedule(which)));
            let grads = gradients(seed, steps);
            let (w, _, history) = eager(&spec, &grads, penalty);
            let scale = history.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()));
            let mut worst = Ok(());
            let (lw, _) = lazy(&spec, &grads, penalty, |s, read| {
                if worst.is_ok() {
                    worst = close(read, &history[s], scale, 1e-12).map_err(|e| format!("step {s}: {e}"));
                }
            });
            proptest::prop_assert!(worst.is_ok(), "{:?}", worst);
            let r = close(&lw, &w, scale, 1e-12);
            proptest::prop_assert!(r.is_ok(), "{:?}", r);
        }

        /// FTRL: the weight is a closed form of (z, n, t), which do not move
        /// without a gradient: lazy steps and reads are bit-identical.
        #[test]
        fn lazy_ftrl_is_bit_identical(
            seed in 0u64..1_000_000,
            pen in 0usize..4,
            alpha in 0.05f64..1.0,
            steps in 50usize..2000,
        ) {
            let penalty = [
                Penalty { l2: 0.0, l1: 0.0 },
                Penalty { l2: 0.01, l1: 0.0 },
                Penalty { l2: 0.0, l1: 0.003 },
                Penalty { l2: 0.01, l1: 0.003 },
            ][pen];
            let spec = OptimizerSpec::Ftrl { base: base(alpha, Schedule::Constant), beta: 1.0 };
            let grads = gradients(seed, steps);
            let (w, st, history) = eager(&spec, &grads, penalty);
            let mut mismatch = None;
            let (lw, lst) = lazy(&spec, &grads, penalty, |s, read| {
                if mismatch.is_none() && bits(read) != bits(&history[s]) {
                    mismatch = Some(s);
                }
            });
            proptest::prop_assert_eq!(mismatch, None);
            proptest::prop_assert_eq!(bits(&lw), bits(&w));
            proptest::prop_assert_eq!(bits(&lst.m), bits(&st.m));
            proptest::prop_assert_eq!(bits(&lst.v), bits(&st.v));
        }

        /// Momentum, AdaGrad, Adam: lazy steps equal their documented sparse
        /// semantics, run step by step — an untouched coordinate's weight
        /// stays put and its moments decay as with a zero gradient — within
        /// rounding (μᵏ at once against k multiplications).
        #[test]
        fn lazy_adaptive_methods_follow_their_sparse_semantics(
            seed in 0u64..1_000_000,
            which in 0usize..3,
            pen in 0usize..3,
            sched in 0usize..4,
            steps in 50usize..2000,
        ) {
            let penalty = [
                Penalty { l2: 0.0, l1: 0.0 },
                Penalty { l2: 0.01, l1: 0.0 },
                Penalty { l2: 0.01, l1: 0.001 },
            ][pen];
            let spec = [
                OptimizerSpec::Momentum { base: base(0.05, schedule(sched)), momentum: 0.9 },
                OptimizerSpec::Adagrad { base: base(0.3, schedule(sched)), epsilon: 1e-8 },
                OptimizerSpec::Adam { base: base(0.05, schedule(sched)), beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
            ][which];
            let grads = gradients(seed, steps);
            // The semantics, step by step.
            let mut w = vec![0.0; D];
            let mut st = FirstOrderState::default();
            for (s, g) in grads.iter().enumerate() {
                let rates = Rates::advance(&spec, &mut st, D, rate(&spec, s), penalty);
                for i in 0..D {
                    if i < 2 || g[i] != 0.0 {
                        rates.apply(&spec, &mut w, g, &mut st, [i], penalised);
                    } else {
                        match spec {
                            OptimizerSpec::Momentum { momentum, .. } => st.m[i] *= momentum,
                            OptimizerSpec::Adam { beta1, beta2, .. } => {
                                st.m[i] *= beta1;
                                st.v[i] *= beta2;
                            }
                            _ => {}
                        }
                    }
                }
            }
            let (lw, lst) = lazy(&spec, &grads, penalty, |_, _| {});
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let r = close(&lw, &w, scale, 1e-11);
            proptest::prop_assert!(r.is_ok(), "weights {:?}", r);
            let mscale = st.m.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let r = close(&lst.m, &st.m, mscale, 1e-11);
            proptest::prop_assert!(r.is_ok(), "moments {:?}", r);
        }

        /// Where the eager loop leaves untouched weights alone (no penalty
        /// for SGD and AdaGrad), and for coordinates every step touches,
        /// lazy steps are bit-identical to eager ones.
        #[test]
        fn lazy_is_eager_where_nothing_drifts(
            seed in 0u64..1_000_000,
            which in 0usize..5,
            steps in 10usize..500,
        ) {
            let spec = [
                OptimizerSpec::Sgd(base(0.2, Schedule::InverseSqrt { decay: 0.1 })),
                OptimizerSpec::Adagrad { base: base(0.3, Schedule::Constant), epsilon: 1e-8 },
                OptimizerSpec::Momentum { base: base(0.05, Schedule::Constant), momentum: 0.9 },
                OptimizerSpec::Adam { base: base(0.05, Schedule::Constant), beta1: 0.9, beta2: 0.999, epsilon: 1e-8 },
                OptimizerSpec::Ftrl { base: base(0.3, Schedule::Constant), beta: 1.0 },
            ][which];
            let none = Penalty { l2: 0.0, l1: 0.0 };
            let some = Penalty { l2: 0.01, l1: 0.001 };
            let grads = gradients(seed, steps);
            if which < 2 {
                let (ew, _, _) = eager(&spec, &grads, none);
                let (lw, _) = lazy(&spec, &grads, none, |_, _| {});
                proptest::prop_assert_eq!(bits(&ew), bits(&lw));
            }
            // Dense gradients: every coordinate touched by every step.
            let dense: Vec<Vec<f64>> = grads
                .iter()
                .map(|g| g.iter().map(|&x| if x == 0.0 { 0.25 } else { x }).collect())
                .collect();
            let (ew, est, _) = eager(&spec, &dense, some);
            let (lw, lst) = lazy(&spec, &dense, some, |_, _| {});
            proptest::prop_assert_eq!(bits(&ew), bits(&lw));
            proptest::prop_assert_eq!(bits(&est.m), bits(&lst.m));
        }
    }

    /// A weight decayed over a million untouched steps underflows to zero
    /// rather than to garbage, and a long pure-L1 gap thresholds exactly.
    #[test]
    fn long_gaps_stay_finite() {
        let mut clock = Clock::default();
        let penalty = Penalty { l2: 0.01, l1: 0.0 };
        for _ in 0..1_000_000 {
            clock.tick(0.1, penalty);
        }
        let w = decayed(3.0, &clock.at(0), &clock.now());
        assert_eq!(w, 0.0, "(1 − 0.001)^1e6 · 3 underflows");
        let w = decayed(3.0, &clock.at(999_000), &clock.now());
        let want = 3.0 * (1000.0 * (-0.001f64).ln_1p()).exp();
        assert!((w - want).abs() < 1e-13 * want, "{w} vs {want}");

        let mut clock = Clock::default();
        let l1 = Penalty { l2: 0.0, l1: 1e-6 };
        for _ in 0..2_000_000 {
            clock.tick(0.5, l1);
        }
        // 1000 steps of 5e-7 each after 1.999e6 others: exactly 5e-4.
        let w = decayed(1.0, &clock.at(1_999_000), &clock.now());
        assert!((w - (1.0 - 5e-4)).abs() < 1e-15, "{w}");
        assert_eq!(decayed(-0.5, &clock.at(0), &clock.now()), 0.0);
    }

    #[test]
    fn clocks_forget_and_refuse_gaps() {
        let mut owner = Clock::default();
        let p = Penalty { l2: 0.1, l1: 0.01 };
        for _ in 0..10 {
            owner.tick(0.1, p);
        }
        let mut reader = Clock::default();
        for t in 1..=10 {
            assert!(reader.record(owner.at(t)));
            assert!(reader.record(owner.at(t)), "a stamp held twice is fine");
        }
        assert_eq!(reader.now(), owner.now());
        let mut late = Clock::default();
        assert!(!late.record(owner.at(3)), "a gap cannot be read");
        reader.forget_before(7);
        assert_eq!(reader.len(), 4);
        assert_eq!(reader.at(8), owner.at(8));
        assert_eq!(
            reader.at(2),
            owner.at(7),
            "older steps read as the oldest kept"
        );
    }
}
