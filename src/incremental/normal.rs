//! The sufficient statistics of least squares as a differential-dataflow
//! difference type: an Abelian group, so that inserting rows and then
//! retracting them leaves exactly — bit for bit — what never inserting them
//! leaves.
//!
//! A row with features `x` (length `p`) and label `y` contributes
//! `1, y, y², x_j, x_j·y, x_i·x_j (i ≤ j)`. Each term is computed in `f64`
//! from the row alone and truncated to a fixed-point integer with
//! [`FRAC_BITS`] fractional bits; the sums are wrapping `i128` additions.
//! Truncation is a function of the row, so a retraction subtracts exactly
//! the integers its insertion added, and integer addition is associative:
//! any order, any grouping, any worker count gives the same bits.
//!
//! Wrapping addition is a group, but a wrapped sum is not the true sum.
//! Beside the sums, [`Normal::bound`] adds, per row, an upper bound on the
//! magnitude of its largest term in units of 2^64 — itself an integer sum,
//! so it retracts exactly too. While `bound · 2^64 < 2^127` no sum can have
//! left the `i128` range, and every sum is the exact total of its terms;
//! [`Normal::check`] fails loudly otherwise ([`MAX_TERM`] bounds one term).

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

/// Fractional bits of the fixed-point terms (resolution 2^-40 ≈ 9.1e-13).
///
/// Fewer than [`crate::exact::FRAC_BITS`]: these sums hold squares and
/// cross-products, so the integer part needs the room (terms up to 2^80).
pub const FRAC_BITS: i32 = 40;
const SCALE: f64 = (1u64 << FRAC_BITS) as f64;
/// The largest magnitude one term may have (2^80 ≈ 1.2e24): a feature or
/// label up to about 1.1e12 in magnitude.
pub const MAX_TERM: f64 = 1_208_925_819_614_629_174_706_176.0;

/// The 256-bit key digest: the sum of the BLAKE3 hashes of the keys, in
/// two wrapping 128-bit lanes. Order-independent, and a retraction
/// subtracts exactly what the insertion added.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct KeyDigest(pub [u128; 2]);

impl KeyDigest {
    /// The digest of one key.
    pub fn of(key: &str) -> KeyDigest {
        let h = blake3::hash(key.as_bytes());
        let b = h.as_bytes();
        let lane = |i: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[i * 16..(i + 1) * 16]);
            u128::from_le_bytes(a)
        };
        KeyDigest([lane(0), lane(1)])
    }

    /// The row's identity in collections (the first lane of its digest).
    pub fn id(&self) -> u128 {
        self.0[0]
    }

    fn add(&mut self, o: &KeyDigest) {
        self.0[0] = self.0[0].wrapping_add(o.0[0]);
        self.0[1] = self.0[1].wrapping_add(o.0[1]);
    }

    fn negate(&mut self) {
        self.0[0] = self.0[0].wrapping_neg();
        self.0[1] = self.0[1].wrapping_neg();
    }

    /// Lowercase hex, 64 digits (lane 0 then lane 1, big-endian each).
    pub fn hex(&self) -> String {
        format!("{:032x}{:032x}", self.0[0], self.0[1])
    }
}

/// Sums of one or more rows' least-squares terms (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Normal {
    /// Rows (a retraction counts −1).
    pub rows: i64,
    /// The sum of the rows' key digests.
    pub keys: KeyDigest,
    /// Σ over rows of ⌈largest |term| / 2^64⌉ in fixed-point units.
    pub bound: i128,
    /// `[Σy, Σy², Σx_j (p), Σx_j·y (p), Σx_i·x_j (i ≤ j, row-major upper)]`,
    /// fixed point; empty for the zero of any width.
    pub sums: Vec<i128>,
}

/// Where in [`Normal::sums`] the parts of `p` features lie.
pub fn width(p: usize) -> usize {
    2 + 2 * p + p * (p + 1) / 2
}

/// A term that does not fit the fixed-point range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TooLarge {
    /// Which term: `None` for the label (`y` or `y²`), else the feature
    /// index (its value, its product with `y` or another feature).
    pub feature: Option<usize>,
    /// The term's value.
    pub value: f64,
}

#[inline]
fn fixed(v: f64) -> i128 {
    let t = v * SCALE;
    // Truncation: a function of the row alone (see the module docs).
    if t.abs() < 9.2e18 {
        t as i64 as i128
    } else {
        t as i128
    }
}

impl Normal {
    /// An empty sum for `p` features.
    pub fn zero_of(p: usize) -> Normal {
        Normal {
            sums: vec![0; width(p)],
            ..Normal::default()
        }
    }

    /// Features these sums are of, if any row was added.
    pub fn features(&self) -> Option<usize> {
        if self.sums.is_empty() {
            return None;
        }
        // width(p) = 2 + 2p + p(p+1)/2: solve for p.
        let w = self.sums.len();
        (0..=w).find(|&p| width(p) >= w).filter(|&p| width(p) == w)
    }

    /// Adds one row (`key` as its digest), `x` its `p` features.
    pub fn add_row(&mut self, key: &KeyDigest, x: &[f64], y: f64) -> Result<(), TooLarge> {
        let p = x.len();
        if self.sums.is_empty() {
            self.sums = vec![0; width(p)];
        }
        debug_assert_eq!(self.sums.len(), width(p));
        let mut largest: f64 = 0.0;
        let mut check = |v: f64, feature: Option<usize>| -> Result<(), TooLarge> {
            let a = v.abs();
            if a.is_nan() || a >= MAX_TERM {
                return Err(TooLarge { feature, value: v });
            }
            largest = largest.max(a);
            Ok(())
        };
        check(y, None)?;
        check(y * y, None)?;
        for (j, &xj) in x.iter().enumerate() {
            check(xj, Some(j))?;
            check(xj * xj, Some(j))?;
            check(xj * y, Some(j))?;
        }
        // |x_i·x_j| ≤ max(x_i², x_j²): checked above.
        let s = &mut self.sums;
        s[0] = s[0].wrapping_add(fixed(y));
        s[1] = s[1].wrapping_add(fixed(y * y));
        let (sx, rest) = s[2..].split_at_mut(p);
        let (sxy, sxx) = rest.split_at_mut(p);
        let mut k = 0;
        for i in 0..p {
            let xi = x[i];
            sx[i] = sx[i].wrapping_add(fixed(xi));
            sxy[i] = sxy[i].wrapping_add(fixed(xi * y));
            for &xj in &x[i..] {
                sxx[k] = sxx[k].wrapping_add(fixed(xi * xj));
                k += 1;
            }
        }
        // ⌈largest · 2^FRAC_BITS / 2^64⌉ + 1 (truncation moves a term by < 1 unit).
        let units = (largest * SCALE / 18_446_744_073_709_551_616.0).ceil() as i128 + 1;
        self.bound = self.bound.wrapping_add(units);
        self.rows += 1;
        self.keys.add(key);
        Ok(())
    }

    /// Whether every sum is exact (see the module docs); `Err` says the
    /// data's magnitudes are too large for this many rows.
    pub fn check(&self) -> Result<(), String> {
        // bound · 2^64 < 2^127 ⇔ bound < 2^63.
        if self.bound >= 0 && self.bound < (1i128 << 63) {
            Ok(())
        } else {
            Err(format!(
                "the sums of squares of {} rows leave the exact fixed-point range (2^{} per sum): rescale the largest columns",
                self.rows,
                127 - FRAC_BITS
            ))
        }
    }

    /// The sum `k` as `f64`.
    pub fn value(&self, k: usize) -> f64 {
        self.sums[k] as f64 / SCALE
    }
}

impl IsZero for Normal {
    fn is_zero(&self) -> bool {
        self.rows == 0
            && self.bound == 0
            && self.keys == KeyDigest::default()
            && self.sums.iter().all(|&s| s == 0)
    }
}

impl Semigroup for Normal {
    fn plus_equals(&mut self, rhs: &Self) {
        if rhs.sums.is_empty() {
            // Zero of any width.
        } else if self.sums.is_empty() {
            self.sums = rhs.sums.clone();
        } else {
            // Same width: every contributor has the job's features. A
            // mismatch is a bug; keep the group laws on the common part.
            debug_assert_eq!(self.sums.len(), rhs.sums.len());
            for (a, b) in self.sums.iter_mut().zip(&rhs.sums) {
                *a = a.wrapping_add(*b);
            }
        }
        self.rows = self.rows.wrapping_add(rhs.rows);
        self.bound = self.bound.wrapping_add(rhs.bound);
        self.keys.add(&rhs.keys);
        if self.is_zero() {
            // One representation of zero, so that consolidation drops it.
            self.sums.clear();
        }
    }
}

impl Monoid for Normal {
    fn zero() -> Self {
        Normal::default()
    }
}

impl Abelian for Normal {
    fn negate(&mut self) {
        for s in &mut self.sums {
            *s = s.wrapping_neg();
        }
        self.rows = self.rows.wrapping_neg();
        self.bound = self.bound.wrapping_neg();
        self.keys.negate();
    }
}

impl Multiply<isize> for Normal {
    type Output = Normal;
    /// `m` copies of these rows (a negative `m` retracts them).
    fn multiply(mut self, m: &isize) -> Normal {
        let m = *m as i128;
        for s in &mut self.sums {
            *s = s.wrapping_mul(m);
        }
        self.rows = self.rows.wrapping_mul(m as i64);
        self.bound = self.bound.wrapping_mul(m);
        self.keys.0[0] = self.keys.0[0].wrapping_mul(m as u128);
        self.keys.0[1] = self.keys.0[1].wrapping_mul(m as u128);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn of(rows: &[(String, Vec<f64>, f64)]) -> Normal {
        let mut n = Normal::zero_of(rows.first().map_or(0, |r| r.1.len()));
        for (k, x, y) in rows {
            n.add_row(&KeyDigest::of(k), x, *y).unwrap();
        }
        n
    }

    proptest! {
        /// Adding rows then retracting some leaves the bits of adding only
        /// the others, in any order.
        #[test]
        fn retraction_is_exact(
            rows in prop::collection::vec((prop::collection::vec(-1e6f64..1e6, 3), -1e3f64..1e3), 1..40),
            keep in prop::collection::vec(any::<bool>(), 40),
        ) {
            let rows: Vec<(String, Vec<f64>, f64)> = rows
                .into_iter()
                .enumerate()
                .map(|(i, (x, y))| (format!("k{i}"), x, y))
                .collect();
            let mut all = of(&rows);
            let gone: Vec<_> = rows.iter().enumerate().filter(|(i, _)| !keep[*i]).map(|(_, r)| r.clone()).collect();
            let kept: Vec<_> = rows.iter().enumerate().filter(|(i, _)| keep[*i]).map(|(_, r)| r.clone()).collect();
            let mut minus = of(&gone);
            minus.negate();
            all.plus_equals(&minus);
            let mut reversed = kept.clone();
            reversed.reverse();
            let expect = of(&reversed);
            if kept.is_empty() {
                prop_assert!(all.is_zero());
            } else {
                prop_assert_eq!(all, expect);
            }
        }
    }

    #[test]
    fn width_round_trips() {
        for p in 0..50 {
            assert_eq!(Normal::zero_of(p).features(), Some(p));
        }
    }

    #[test]
    fn too_large_terms_are_refused() {
        let mut n = Normal::zero_of(1);
        let e = n.add_row(&KeyDigest::of("a"), &[2e12], 0.0).unwrap_err();
        assert_eq!(e.feature, Some(0));
        assert!(n.add_row(&KeyDigest::of("a"), &[1.0], f64::NAN).is_err());
        assert_eq!(n.rows, 0);
    }
}
