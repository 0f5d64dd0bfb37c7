//! Which worker reads which unit, and in what row order.
//!
//! * **slice**: units in data order, cut into contiguous row-balanced ranges,
//!   one per worker, the same every epoch.
//! * **shuffle**: a seeded permutation of the units per epoch, then cut the
//!   same way; rows inside each unit are permuted by `(seed, epoch, unit)`.
//!
//! Neither choice changes *what* a step computes (see [`chunk`]): a step
//! takes a fixed share of every unit, and partial sums are exact, so the
//! model is the same for any worker count.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::hashing::{mix64, uniform};
use crate::spec::Partition;

/// Owner worker of each unit, for units with the given row counts.
///
/// # Examples
/// ```
/// use tidemill::data::partition::assign;
/// use tidemill::spec::Partition;
/// let owners = assign(&[10, 10, 10, 10], 2, Partition::Slice, 0, 0);
/// assert_eq!(owners, vec![0, 0, 1, 1]);
/// ```
pub fn assign(
    rows: &[usize],
    workers: usize,
    partition: Partition,
    seed: u64,
    epoch: u32,
) -> Vec<usize> {
    let order: Vec<usize> = match partition {
        Partition::Slice => (0..rows.len()).collect(),
        Partition::Shuffle => {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(mix64(seed ^ 0x5EED_0001) ^ epoch as u64);
            order.shuffle(&mut rng);
            order
        }
    };
    let total: u128 = rows.iter().map(|&r| r as u128).sum::<u128>().max(1);
    let w = workers.max(1) as u128;
    let mut owners = vec![0; rows.len()];
    let mut before: u128 = 0;
    for &u in &order {
        // The worker whose row range holds the unit's middle row.
        let mid = before * 2 + rows[u] as u128;
        owners[u] = ((mid * w) / (total * 2)).min(w - 1) as usize;
        before += rows[u] as u128;
    }
    owners
}

/// The worker that trains replica `replica` of `replicas` (`model-average`)
/// on `workers` workers: contiguous blocks of replicas per worker, so that
/// with one replica per worker, replica `r` is worker `r`.
///
/// # Examples
/// ```
/// use tidemill::data::partition::replica_worker;
/// assert_eq!((0..4).map(|r| replica_worker(r, 4, 2)).collect::<Vec<_>>(), [0, 0, 1, 1]);
/// assert_eq!((0..4).map(|r| replica_worker(r, 4, 4)).collect::<Vec<_>>(), [0, 1, 2, 3]);
/// assert_eq!((0..4).map(|r| replica_worker(r, 4, 1)).collect::<Vec<_>>(), [0, 0, 0, 0]);
/// ```
pub fn replica_worker(replica: usize, replicas: usize, workers: usize) -> usize {
    ((replica as u128 * workers as u128) / replicas.max(1) as u128) as usize
}

/// Owner worker of each unit when `replicas` replicas train (or one per
/// worker, `None`): the units are assigned to the replicas as [`assign`]
/// assigns them to workers, and each replica's units go to the worker that
/// trains it ([`replica_worker`]). Returns (worker, replica) per unit.
pub fn assign_replicas(
    rows: &[usize],
    workers: usize,
    replicas: Option<usize>,
    partition: Partition,
    seed: u64,
    epoch: u32,
) -> Vec<(usize, usize)> {
    let r = replicas.unwrap_or(workers).max(1);
    assign(rows, r, partition, seed, epoch)
        .into_iter()
        .map(|replica| (replica_worker(replica, r, workers), replica))
        .collect()
}

/// Rows per worker under an assignment (the skew users watch).
pub fn rows_per_worker(rows: &[usize], owners: &[usize], workers: usize) -> Vec<u64> {
    let mut out = vec![0u64; workers];
    for (&r, &o) in rows.iter().zip(owners) {
        out[o] += r as u64;
    }
    out
}

/// The row order inside a unit for an epoch: identity for slice, a seeded
/// permutation for shuffle.
pub fn row_order(
    n: usize,
    partition: Partition,
    seed: u64,
    epoch: u32,
    unit: usize,
) -> Option<Vec<usize>> {
    match partition {
        Partition::Slice => None,
        Partition::Shuffle => {
            let mut order: Vec<usize> = (0..n).collect();
            let key = mix64(mix64(seed ^ 0x5EED_0002) ^ epoch as u64) ^ unit as u64;
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(key));
            Some(order)
        }
    }
}

/// The rows `[start, end)` of a unit with `n` rows that step `s` of `steps`
/// takes: every step takes its share of every unit. Boundaries are shifted
/// by a per-unit phase so that small units do not all land on the same step.
///
/// # Examples
/// ```
/// use tidemill::data::partition::chunk;
/// let mut next = 0;
/// for s in 0..3 {
///     let (a, b) = chunk(10, 3, s, 5);
///     assert_eq!(a, next);
///     next = b;
/// }
/// assert_eq!(next, 10);
/// ```
pub fn chunk(n: usize, steps: u64, s: u64, unit: usize) -> (usize, usize) {
    let n = n as u128;
    let steps = steps.max(1) as u128;
    let phase = (mix64(unit as u64 ^ 0xC4A2_0001) as u128) % steps;
    let at = |k: u128| ((k * n + phase) / steps) as usize;
    (at(s as u128), at(s as u128 + 1))
}

/// How many workers read rows in a mini-batch step when the units are
/// grouped into `waves` waves (`wave(u) = u mod waves`, as
/// [`StepPlan::new`] groups them), unit `u` has `rows[u]` training rows and
/// is held by worker `owners[u]`: the distinct holders of a wave's units
/// with rows, as (narrowest wave, widest wave). Waves without rows have no
/// steps and are left out; (0, 0) if no unit has rows. The workers a step
/// does not reach wait at its barrier.
///
/// # Examples
/// ```
/// use tidemill::data::partition::step_reach;
/// // 8 units, 2 a worker on 4 workers: 4 waves of 2 units reach 2 workers,
/// // 2 waves of 4 units reach all 4.
/// let (rows, owners) = ([10; 8], [0, 0, 1, 1, 2, 2, 3, 3]);
/// assert_eq!(step_reach(4, &rows, &owners), (2, 2));
/// assert_eq!(step_reach(2, &rows, &owners), (4, 4));
/// ```
pub fn step_reach(waves: usize, rows: &[usize], owners: &[usize]) -> (usize, usize) {
    let waves = waves.max(1);
    let mut holders: Vec<Vec<usize>> = vec![Vec::new(); waves];
    for (u, (&n, &owner)) in rows.iter().zip(owners).enumerate() {
        if n > 0 {
            holders[u % waves].push(owner);
        }
    }
    let reach: Vec<usize> = holders
        .iter_mut()
        .filter(|h| !h.is_empty())
        .map(|h| {
            h.sort_unstable();
            h.dedup();
            h.len()
        })
        .collect();
    match (reach.iter().min(), reach.iter().max()) {
        (Some(&narrowest), Some(&widest)) => (narrowest, widest),
        _ => (0, 0),
    }
}

/// The number of waves [`StepPlan::new`] makes of `units` units,
/// `units_per_step` at a time.
pub fn waves(units: usize, units_per_step: usize) -> usize {
    units.div_ceil(units_per_step.max(1)).max(1)
}

/// Which rows of which unit each step of an epoch takes.
///
/// Units are grouped into waves of at most `units_per_step` units
/// (`wave(u) = u mod waves`, fixed by the data). Wave `k` with `N_k`
/// training rows gets `⌈N_k / batch⌉` consecutive steps; each of them takes
/// its [`chunk`] of every unit of the wave. A step therefore draws a
/// stratified batch from a handful of units, and a streaming worker only
/// keeps the current wave's units open. Full-batch methods have one step
/// that takes every row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    wave_of: Vec<usize>,
    /// First step of each wave, plus the total at the end.
    first_step: Vec<u64>,
    full_batch: bool,
}

impl StepPlan {
    /// Plans an epoch over units with `train_rows` rows each; `batch` is
    /// `None` for full-batch methods.
    ///
    /// # Examples
    /// ```
    /// use tidemill::data::partition::StepPlan;
    /// let plan = StepPlan::new(&[100, 100, 100, 100], Some(50), 2);
    /// assert_eq!(plan.steps(), 8);
    /// assert_eq!(plan.rows(0, 100, 0), Some((0, 25)));
    /// assert_eq!(plan.rows(1, 100, 0), None); // unit 1 is in the second wave
    /// ```
    pub fn new(train_rows: &[usize], batch: Option<usize>, units_per_step: usize) -> StepPlan {
        let units = train_rows.len();
        let waves = waves(units, units_per_step);
        let wave_of: Vec<usize> = (0..units).map(|u| u % waves).collect();
        let mut first_step = vec![0u64];
        match batch {
            None => first_step.push(1),
            Some(b) => {
                for k in 0..waves {
                    let rows: u64 = (0..units)
                        .filter(|&u| wave_of[u] == k)
                        .map(|u| train_rows[u] as u64)
                        .sum();
                    let steps = rows.div_ceil(b.max(1) as u64);
                    first_step.push(first_step[k] + steps);
                }
                if first_step[waves] == 0 {
                    // No rows at all: one empty step keeps the loop going.
                    first_step[waves] = 1;
                }
            }
        }
        StepPlan {
            wave_of,
            first_step,
            full_batch: batch.is_none(),
        }
    }

    /// Steps per epoch.
    pub fn steps(&self) -> u64 {
        *self.first_step.last().unwrap_or(&1)
    }

    /// The wave step `step` belongs to (0 for full batch).
    pub fn wave_at(&self, step: u64) -> usize {
        if self.full_batch {
            return 0;
        }
        self.first_step
            .windows(2)
            .position(|w| step >= w[0] && step < w[1])
            .unwrap_or(0)
    }

    /// The wave of a unit.
    pub fn wave_of(&self, unit: usize) -> usize {
        self.wave_of[unit]
    }

    /// True if one step takes every row.
    pub fn is_full_batch(&self) -> bool {
        self.full_batch
    }

    /// Rows `[start, end)` of unit `unit` (with `n` training rows) that step
    /// `step` takes, or `None` if the step does not touch the unit.
    pub fn rows(&self, unit: usize, n: usize, step: u64) -> Option<(usize, usize)> {
        if self.full_batch {
            return Some((0, n));
        }
        let k = self.wave_at(step);
        if self.wave_of[unit] != k {
            return None;
        }
        let first = self.first_step[k];
        let steps = self.first_step[k + 1] - first;
        Some(chunk(n, steps, step - first, unit))
    }
}

/// Rows a unit is read and decoded in at a time: the window. Memory holds
/// one decoded window per streamed unit, and shuffled rows are permuted
/// inside their window, so cached and streamed units order rows alike.
pub const WINDOW_ROWS: usize = 8192;

/// The shuffle key of window `window` of unit `unit`.
pub fn window_key(unit: usize, window: u64) -> usize {
    ((unit as u64) << 20 ^ window) as usize
}

/// The order of the `n` rows of window `window` of unit `unit` in `epoch`:
/// `None` (file order) for slice, a seeded permutation for shuffle.
pub fn window_order(
    n: usize,
    partition: Partition,
    seed: u64,
    epoch: u32,
    unit: usize,
    window: u64,
) -> Option<Vec<usize>> {
    row_order(n, partition, seed, epoch, window_key(unit, window))
}

/// Is the row at `file_row` of file `file` a validation row?
pub fn is_validation(seed: u64, file: usize, file_row: u64, fraction: f64) -> bool {
    uniform(seed ^ 0x5EED_0003, file as u64, file_row) < fraction
}

/// The fold (of `folds`) of the row at `file_row` of file `file`: the same
/// draw as [`is_validation`]'s, cut into `folds` equal ranges in integer
/// arithmetic, so that every row is in exactly one fold.
pub fn fold_of(seed: u64, file: usize, file_row: u64, folds: u32) -> u32 {
    let bits = crate::data::hashing::uniform_bits(seed ^ 0x5EED_0003, file as u64, file_row);
    ((u128::from(bits) * u128::from(folds)) >> 53) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn slice_is_contiguous_and_balanced(rows in proptest::collection::vec(1usize..1000, 1..60), w in 1usize..9) {
            let owners = assign(&rows, w, Partition::Slice, 0, 0);
            prop_assert!(owners.windows(2).all(|p| p[0] <= p[1]));
            prop_assert!(owners.iter().all(|&o| o < w));
            let per = rows_per_worker(&rows, &owners, w);
            prop_assert_eq!(per.iter().sum::<u64>(), rows.iter().map(|&r| r as u64).sum::<u64>());
            let max_unit = *rows.iter().max().unwrap() as u64;
            let ideal = rows.iter().sum::<usize>() as u64 / w as u64;
            for &p in &per {
                prop_assert!(p <= ideal + max_unit + 1);
            }
        }

        #[test]
        fn shuffle_is_a_seeded_partition(rows in proptest::collection::vec(1usize..1000, 1..60), w in 1usize..9, seed: u64) {
            let a = assign(&rows, w, Partition::Shuffle, seed, 3);
            let b = assign(&rows, w, Partition::Shuffle, seed, 3);
            prop_assert_eq!(&a, &b);
            prop_assert!(a.iter().all(|&o| o < w));
        }

        #[test]
        fn chunks_cover_every_row_once(n in 0usize..10_000, steps in 1u64..500) {
            prop_assert_eq!(chunk(n, steps, 0, 3).0, 0);
            let mut next = 0;
            for s in 0..steps {
                let (a, b) = chunk(n, steps, s, n % 7);
                prop_assert_eq!(a, next);
                prop_assert!(b >= a);
                next = b;
            }
            prop_assert_eq!(next, n);
        }

        #[test]
        fn row_order_is_a_permutation(n in 0usize..2000, seed: u64, epoch in 0u32..5) {
            let mut o = row_order(n, Partition::Shuffle, seed, epoch, 7).unwrap();
            o.sort_unstable();
            prop_assert_eq!(o, (0..n).collect::<Vec<_>>());
        }
    }

    proptest! {
        #[test]
        fn step_plan_covers_every_row_once(rows in proptest::collection::vec(0usize..500, 1..40), batch in 1usize..300, per in 1usize..10) {
            let plan = StepPlan::new(&rows, Some(batch), per);
            let mut next = vec![0usize; rows.len()];
            for s in 0..plan.steps() {
                let mut units = 0;
                for (u, &n) in rows.iter().enumerate() {
                    if let Some((a, b)) = plan.rows(u, n, s) {
                        prop_assert_eq!(a, next[u]);
                        next[u] = b;
                        units += 1;
                    }
                }
                prop_assert!(units <= per);
            }
            prop_assert_eq!(next, rows);
        }

        /// `step_reach` counts what the plan does: the fewest and the most
        /// distinct holders of units that a step takes rows from.
        #[test]
        fn step_reach_is_what_the_plans_steps_read(rows in proptest::collection::vec(0usize..500, 1..40), batch in 1usize..300, per in 1usize..12, w in 1usize..9, seed: u64) {
            let plan = StepPlan::new(&rows, Some(batch), per);
            let owners = assign(&rows, w, Partition::Shuffle, seed, 0);
            let (mut narrowest, mut widest) = (usize::MAX, 0);
            for s in 0..plan.steps() {
                let mut holders: Vec<usize> = (0..rows.len())
                    .filter(|&u| rows[u] > 0 && plan.rows(u, rows[u], s).is_some())
                    .map(|u| owners[u])
                    .collect();
                holders.sort_unstable();
                holders.dedup();
                narrowest = narrowest.min(holders.len());
                widest = widest.max(holders.len());
            }
            prop_assert_eq!(step_reach(waves(rows.len(), per), &rows, &owners), (narrowest, widest));
        }
    }

    #[test]
    fn shuffle_changes_between_epochs() {
        let rows = vec![100; 32];
        assert_ne!(
            assign(&rows, 4, Partition::Shuffle, 1, 0),
            assign(&rows, 4, Partition::Shuffle, 1, 1)
        );
    }
}
