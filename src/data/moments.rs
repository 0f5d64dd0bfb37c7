//! Mean and variance of numeric features: accurate at any magnitude, and
//! fixed by the data alone.
//!
//! Raw sums `Σx`, `Σx²` of large values lose the variance to cancellation
//! (Unix timestamps, money amounts: `E[x²] − E[x]²` of two numbers near
//! 1e18 or beyond) or overflow a fixed-point accumulator. Instead, each unit
//! keeps Welford's running mean and sum of squared deviations over its rows
//! in file order, and units are combined with Chan et al.'s pairwise update
//! **in unit order**. Both orders are fixed by the data, never by the
//! workers, so the statistics — and the model trained with them — are the
//! same bits on any number of workers and processes.

use serde::{Deserialize, Serialize};

/// Count, mean and sum of squared deviations of one feature over some rows.
///
/// Values are taken relative to a `shift` (the first value seen): the
/// difference of two nearby floats is exact, so the deviations keep every
/// bit the data has even where the values dwarf their spread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Values seen (missing values are not counted).
    pub n: u64,
    /// The first value seen; the others are taken relative to it.
    pub shift: f64,
    /// Mean of `x − shift`.
    pub mean: f64,
    /// Σ (x − mean)².
    pub m2: f64,
}

impl Moments {
    /// Adds one value (Welford's update).
    ///
    /// # Examples
    /// ```
    /// use tidemill::data::moments::Moments;
    /// let mut m = Moments::default();
    /// for x in [1.6e9 + 1.0, 1.6e9 + 2.0, 1.6e9 + 3.0] {
    ///     m.push(x);
    /// }
    /// assert_eq!(m.mean(), 1.6e9 + 2.0);
    /// assert!((m.std() - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    /// ```
    #[inline]
    pub fn push(&mut self, x: f64) {
        if self.n == 0 {
            self.shift = x;
        }
        let x = x - self.shift;
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// The moments of the rows of `self` followed by those of `other`
    /// (Chan, Golub and LeVeque's pairwise update).
    pub fn merge(self, other: Moments) -> Moments {
        if other.n == 0 {
            return self;
        }
        if self.n == 0 {
            return other;
        }
        let n = self.n + other.n;
        let (na, nb, nn) = (self.n as f64, other.n as f64, n as f64);
        // Shifts of nearby values differ exactly.
        let delta = (other.shift - self.shift) + (other.mean - self.mean);
        Moments {
            n,
            shift: self.shift,
            mean: self.mean + delta * (nb / nn),
            m2: self.m2 + other.m2 + delta * delta * (na * nb / nn),
        }
    }

    /// Mean (0 without values).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.shift + self.mean
        }
    }

    /// Population standard deviation (0 without values).
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).max(0.0).sqrt()
        }
    }

    /// True if mean and variance are finite numbers.
    pub fn is_finite(&self) -> bool {
        self.mean().is_finite() && self.m2.is_finite()
    }
}

/// The moments of the units seen so far, extended in unit order as more
/// units come: the moments of units `0..n` extended by units `n..m` are the
/// same bits as those of units `0..m` merged at once, so statistics need not
/// wait for a source to be complete.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefixMoments {
    /// Id of the next unit to merge (one past the last merged).
    next: usize,
    moments: Moments,
}

impl PrefixMoments {
    /// Merges units given as `(unit id, moments)`, in unit order whatever
    /// order they come in; their ids must follow the units merged already.
    pub fn extend(&mut self, mut units: Vec<(usize, Moments)>) {
        units.sort_by_key(|u| u.0);
        for (id, m) in units {
            debug_assert!(id >= self.next, "unit {id} merged after unit {}", self.next);
            self.moments = self.moments.merge(m);
            self.next = id + 1;
        }
    }

    /// One past the last unit merged (0 before any).
    pub fn units(&self) -> usize {
        self.next
    }

    /// The moments of every unit merged so far.
    pub fn moments(&self) -> Moments {
        self.moments
    }
}

/// Total weight, weighted mean and weighted sum of squared deviations of
/// one feature over some weighted rows (`data.weight`): the moments of the
/// rows repeated as many times as their (integer) weights say.
///
/// The same scheme as [`Moments`] (West's weighted form of Welford's
/// update, units combined pairwise in unit order), with the weight total
/// in place of the count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WeightedMoments {
    /// Σ w of the values seen (missing values are not counted).
    pub w: f64,
    /// The first value seen with a weight; the others are taken relative
    /// to it.
    pub shift: f64,
    /// Weighted mean of `x − shift`.
    pub mean: f64,
    /// Σ w·(x − mean)².
    pub m2: f64,
}

impl WeightedMoments {
    /// Adds value `x` of weight `wt` ≥ 0.
    ///
    /// # Examples
    /// ```
    /// use tidemill::data::moments::WeightedMoments;
    /// let mut m = WeightedMoments::default();
    /// m.push(1.0, 3.0); // 1, 1, 1
    /// m.push(5.0, 1.0); // 5
    /// assert_eq!(m.mean(), 2.0);
    /// assert_eq!(m.std(), 3.0f64.sqrt());
    /// ```
    #[inline]
    pub fn push(&mut self, x: f64, wt: f64) {
        if wt == 0.0 {
            return;
        }
        if self.w == 0.0 {
            self.shift = x;
        }
        let x = x - self.shift;
        self.w += wt;
        let d = x - self.mean;
        // (d·wt)/w: with weights of 1, the bits of Moments::push.
        self.mean += d * wt / self.w;
        self.m2 += wt * d * (x - self.mean);
    }

    /// The moments of the rows of `self` followed by those of `other`.
    pub fn merge(self, other: WeightedMoments) -> WeightedMoments {
        if other.w == 0.0 {
            return self;
        }
        if self.w == 0.0 {
            return other;
        }
        let w = self.w + other.w;
        let delta = (other.shift - self.shift) + (other.mean - self.mean);
        WeightedMoments {
            w,
            shift: self.shift,
            mean: self.mean + delta * (other.w / w),
            m2: self.m2 + other.m2 + delta * delta * (self.w * other.w / w),
        }
    }

    /// Weighted mean (0 without weight).
    pub fn mean(&self) -> f64 {
        if self.w == 0.0 {
            0.0
        } else {
            self.shift + self.mean
        }
    }

    /// Weighted population standard deviation (0 without weight).
    pub fn std(&self) -> f64 {
        if self.w == 0.0 {
            0.0
        } else {
            (self.m2 / self.w).max(0.0).sqrt()
        }
    }

    /// True if mean and variance are finite numbers.
    pub fn is_finite(&self) -> bool {
        self.mean().is_finite() && self.m2.is_finite()
    }
}

/// Weighted moments of units given as `(unit id, moments)`, combined in
/// unit order whatever order they come in.
pub fn merge_weighted_in_unit_order(mut units: Vec<(usize, WeightedMoments)>) -> WeightedMoments {
    units.sort_by_key(|u| u.0);
    units
        .into_iter()
        .fold(WeightedMoments::default(), |a, (_, m)| a.merge(m))
}

/// The moments of units given as `(unit id, moments)`, combined in unit
/// order whatever order they come in.
pub fn merge_in_unit_order(units: Vec<(usize, Moments)>) -> Moments {
    let mut merged = PrefixMoments::default();
    merged.extend(units);
    merged.moments()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two-pass moments in f64 around the first value (differences of
    /// nearby floats are exact), the reference.
    fn two_pass(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let d: Vec<f64> = xs.iter().map(|x| x - xs[0]).collect();
        let mean = d.iter().sum::<f64>() / n;
        let var = d.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        (xs[0] + mean, var.sqrt())
    }

    proptest! {
        /// Any cut into units, merged in unit order, matches two passes —
        /// at the scale of timestamps, of money amounts, and mixed.
        #[test]
        fn unit_moments_match_two_passes(
            center in prop_oneof![Just(0.0), Just(1.6e9), Just(1e12), Just(-3e15)],
            spread in prop_oneof![Just(1e-3), Just(1.0), Just(8.7e6)],
            noise in proptest::collection::vec(-1.0f64..1.0, 2..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let xs: Vec<f64> = noise.iter().map(|z| center + spread * z).collect();
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % xs.len()).collect();
            bounds.push(0);
            bounds.push(xs.len());
            bounds.sort_unstable();
            bounds.dedup();
            let mut units = Vec::new();
            for (id, w) in bounds.windows(2).enumerate() {
                let mut m = Moments::default();
                xs[w[0]..w[1]].iter().for_each(|&x| m.push(x));
                units.push((id, m));
            }
            units.reverse(); // arrival order does not matter
            let m = merge_in_unit_order(units);
            let (mean, std) = two_pass(&xs);
            prop_assert_eq!(m.n, xs.len() as u64);
            prop_assert!((m.mean() - mean).abs() <= 1e-15 * mean.abs() + 1e-12 * spread);
            prop_assert!((m.std() - std).abs() <= 1e-6 * std + 1e-9 * spread, "{} vs {}", m.std(), std);
        }
    }

    proptest! {
        /// Integer weights give the moments of the rows repeated, in any
        /// cut into units.
        #[test]
        fn integer_weights_are_repeated_rows(
            center in prop_oneof![Just(0.0), Just(1.6e9)],
            rows in proptest::collection::vec((-1.0f64..1.0, 0u32..4), 2..200),
            cut in 0usize..200,
        ) {
            let cut = cut % rows.len();
            let mut units = Vec::new();
            for (id, part) in [&rows[..cut], &rows[cut..]].into_iter().enumerate() {
                let mut m = WeightedMoments::default();
                part.iter().for_each(|&(z, w)| m.push(center + z, f64::from(w)));
                units.push((id, m));
            }
            let m = merge_weighted_in_unit_order(units);
            let repeated: Vec<f64> = rows
                .iter()
                .flat_map(|&(z, w)| std::iter::repeat_n(center + z, w as usize))
                .collect();
            prop_assume!(repeated.len() >= 2);
            let (mean, std) = two_pass(&repeated);
            prop_assert_eq!(m.w, repeated.len() as f64);
            prop_assert!((m.mean() - mean).abs() <= 1e-15 * mean.abs() + 1e-12);
            prop_assert!((m.std() - std).abs() <= 1e-9 * std + 1e-12, "{} vs {}", m.std(), std);
        }
    }

    #[test]
    fn empty_units_change_nothing() {
        let mut a = Moments::default();
        a.push(3.0);
        a.push(5.0);
        assert_eq!(a.merge(Moments::default()), a);
        assert_eq!(Moments::default().merge(a), a);
        assert_eq!(Moments::default().std(), 0.0);
    }
}

#[cfg(test)]
mod prefix_tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, Int64Array};
    use arrow::record_batch::RecordBatch;

    use super::*;
    use crate::data::encode::{FeatureSpec, LabelUse, NumericFeature};
    use crate::data::window::{for_each_window, Split};
    use crate::source::files::Source;
    use crate::source::parquet::ParquetSource;
    use crate::source::DataSource;
    use crate::spec::OnMissing;

    /// Statistics of units 0..n extended by units n..m are the bits of
    /// units 0..m merged at once, on moments read from a Parquet file the
    /// way the scan reads them.
    #[test]
    fn extending_a_prefix_gives_the_same_bits_as_merging_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.parquet");
        let x = |i: u64| 1.6e9 + ((i * 7919) % 1013) as f64 * 0.37;
        let file = std::fs::File::create(&path).unwrap();
        let mut writer = None;
        for g in 0..5u64 {
            let r = g * 900..(g + 1) * 900;
            let cols: Vec<(&str, ArrayRef)> = vec![
                (
                    "x",
                    Arc::new(Float64Array::from_iter_values(r.clone().map(x))),
                ),
                (
                    "y",
                    Arc::new(Int64Array::from_iter_values(r.map(|i| (i % 2) as i64))),
                ),
            ];
            let batch = RecordBatch::try_from_iter(cols).unwrap();
            let w = writer.get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    file.try_clone().unwrap(),
                    batch.schema(),
                    None,
                )
                .unwrap()
            });
            w.write(&batch).unwrap();
            w.flush().unwrap();
        }
        writer.unwrap().close().unwrap();

        let columns = ["x".to_string(), "y".to_string()];
        let files = Source::open(std::slice::from_ref(&path), &columns).unwrap();
        let source = ParquetSource::new(files, 400);
        let spec = FeatureSpec {
            label: "y".into(),
            numeric: vec![NumericFeature {
                name: "x".into(),
                fill: f64::NAN,
                center: 0.0,
                scale: 1.0,
            }],
            categorical: Vec::new(),
            crosses: Vec::new(),
            hash_bits: 4,
            on_missing: OnMissing::Error,
            classes: None,
            weight: None,
        };
        let split = Split {
            fraction: Some(crate::data::window::Holdout::Fraction(0.2)),
            seed: 3,
        };
        let units: Vec<(usize, Moments)> = source
            .units()
            .iter()
            .map(|unit| {
                let mut m = Moments::default();
                for_each_window(&source, unit, &spec, LabelUse::Value, split, |data| {
                    data.train
                        .raw_rows(|_, row| row.iter().for_each(|&v| m.push(v)));
                    Ok(())
                })
                .unwrap();
                (unit.id, m)
            })
            .collect();
        assert_eq!(units.len(), 15);
        let bits = |m: Moments| (m.n, m.shift.to_bits(), m.mean.to_bits(), m.m2.to_bits());
        let at_once = merge_in_unit_order(units.clone());
        assert!(at_once.n > 3000 && at_once.std() > 1.0);
        for n in 0..=units.len() {
            let mut prefix = PrefixMoments::default();
            prefix.extend(units[..n].to_vec());
            assert_eq!(prefix.units(), n);
            let mut later = units[n..].to_vec();
            later.reverse(); // arrival order does not matter
            prefix.extend(later);
            assert_eq!(bits(prefix.moments()), bits(at_once), "prefix of {n} units");
        }
    }
}
