//! Exact, order-independent summation of `f64` partials.
//!
//! Each unit's partial sum is computed in `f64` in a fixed row order, then
//! rounded once to a fixed-point integer with [`FRAC_BITS`] fractional bits.
//! Integer addition is associative, so adding unit partials in any grouping
//! (per worker, per process, in any arrival order) gives the same bits: the
//! model is identical on 1, 2 or 4 workers and across processes.

use serde::{Deserialize, Serialize};

/// Fractional bits of the fixed-point representation (resolution ≈ 1.4e-17).
pub const FRAC_BITS: i32 = 56;
/// Largest magnitude a single partial may have (2^70 ≈ 1.2e21).
pub const LIMIT: f64 = 1.180_591_620_717_411_3e21;

/// A fixed-point sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exact(pub i128);

impl Exact {
    /// Rounds an `f64` to fixed point; `None` if it is not finite or too large.
    ///
    /// # Examples
    /// ```
    /// use tidemill::exact::Exact;
    /// let a = Exact::from_f64(0.1).unwrap() + Exact::from_f64(0.2).unwrap();
    /// let b = Exact::from_f64(0.2).unwrap() + Exact::from_f64(0.1).unwrap();
    /// assert_eq!(a, b);
    /// assert!((a.to_f64() - 0.3).abs() < 1e-15);
    /// assert!(Exact::from_f64(f64::NAN).is_none());
    /// ```
    pub fn from_f64(v: f64) -> Option<Exact> {
        if v.is_finite() && v.abs() < LIMIT {
            Some(Exact((v * (FRAC_BITS as f64).exp2()).round() as i128))
        } else {
            None
        }
    }

    /// The value as `f64` (correctly rounded).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / (FRAC_BITS as f64).exp2()
    }
}

impl std::ops::Add for Exact {
    type Output = Exact;
    fn add(self, o: Exact) -> Exact {
        Exact(self.0.wrapping_add(o.0))
    }
}

impl std::ops::AddAssign for Exact {
    fn add_assign(&mut self, o: Exact) {
        self.0 = self.0.wrapping_add(o.0);
    }
}

/// Adds `partial` (f64) into `acc` (fixed point) element-wise; returns the
/// index of the first non-finite or out-of-range value, if any.
pub fn accumulate(acc: &mut [Exact], partial: &[f64]) -> Result<(), usize> {
    for (i, (a, &p)) in acc.iter_mut().zip(partial).enumerate() {
        if p != 0.0 {
            *a += Exact::from_f64(p).ok_or(i)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sum_is_independent_of_grouping(xs in proptest::collection::vec(-1e6f64..1e6, 1..200), cut in 0usize..200) {
            let e: Vec<Exact> = xs.iter().map(|&x| Exact::from_f64(x).unwrap()).collect();
            let cut = cut.min(e.len());
            let left = e[..cut].iter().fold(Exact::default(), |a, &b| a + b);
            let right = e[cut..].iter().fold(Exact::default(), |a, &b| a + b);
            let all = e.iter().rev().fold(Exact::default(), |a, &b| a + b);
            prop_assert_eq!(left + right, all);
            let naive: f64 = xs.iter().sum();
            prop_assert!((all.to_f64() - naive).abs() <= 1e-9 * (1.0 + naive.abs()));
        }
    }
}
