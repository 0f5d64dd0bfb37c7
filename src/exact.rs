//! Exact, order-independent summation of `f64` partials.
//!
//! Each unit's partial sum is computed in `f64` in a fixed row order, then
//! rounded once to a fixed-point integer with [`FRAC_BITS`] fractional bits.
//! Integer addition is associative, so adding unit partials in any grouping
//! (per worker, per process, in any arrival order) gives the same bits: the
//! model is identical on 1, 2 or 4 workers and across processes.
//!
//! Two widths:
//!
//! - [`Exact`] (128 bits) for gradient vectors, where memory and traffic
//!   count: partials up to [`LIMIT`] (2^70 ≈ 1.2e21), sums up to 2^71;
//! - [`Wide`] (256 bits) for scalar sums — losses and evaluation metrics —
//!   whose terms grow with the square of the label: partials up to
//!   [`WIDE_LIMIT`] (2^190 ≈ 1.6e57).
//!
//! How each one stays exact:
//!
//! - [`Exact`] adds *wrap* (two's complement modulo 2^128), so that any
//!   grouping gives the same bits even where an intermediate sum would
//!   leave the range. Alongside, every sum carries a [`Bound`]: the total of
//!   its partials' magnitudes, itself an order-independent (saturating) sum.
//!   While the bound stays below 2^127 no grouping of the partials can have
//!   wrapped, so the sum is exact; once it does not, the code that reads the
//!   sum fails loudly — and, the bound being a property of the partials
//!   alone, it fails on 1, 2 or 16 workers alike ([`Bound::holds`]).
//! - [`Wide`] adds are checked: a sum that leaves its range becomes
//!   *overflowed* ([`Wide::is_overflow`]), absorbs everything added to it and
//!   reads back as NaN. That is order-independent because of what `Wide`
//!   sums: either non-negative terms (losses, squared errors), where every
//!   partial sum is at most the total, or signed terms bounded by the data
//!   range (labels within ±f32::MAX < 2^128, so |y − ref| < 2^129), whose
//!   sums could reach 2^199 only over more than 2^70 rows.

use serde::{Deserialize, Serialize};

/// Fractional bits of the fixed-point representation (resolution ≈ 1.4e-17).
pub const FRAC_BITS: i32 = 56;
/// Largest magnitude a single [`Exact`] partial may have (2^70 ≈ 1.2e21).
pub const LIMIT: f64 = 1.180_591_620_717_411_3e21;
/// Largest magnitude a single [`Wide`] partial may have (2^190 ≈ 1.6e57).
pub const WIDE_LIMIT: f64 = 1.569_275_433_846_670_2e57;

/// The magnitude an [`Exact`] sum cannot reach: 2^(127 − FRAC_BITS) = 2^71.
pub const SUM_LIMIT: f64 = 2_361_183_241_434_822_606_848.0;
/// The magnitude a [`Wide`] sum cannot reach: 2^(255 − FRAC_BITS) = 2^199.
pub const WIDE_SUM_LIMIT: f64 = 8.034_690_221_294_951e59;

/// 2^FRAC_BITS as `f64`.
const SCALE: f64 = 72_057_594_037_927_936.0;

/// A fixed-point sum of 128 bits. Addition wraps; see [`Bound`] for when
/// the sum is exact.
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
            Some(Exact((v * SCALE).round() as i128))
        } else {
            None
        }
    }

    /// The value as `f64` (correctly rounded). Meaningful only where the
    /// sum's [`Bound`] holds.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE
    }

    /// This value's contribution to a [`Bound`].
    pub fn magnitude(self) -> Bound {
        Bound(self.0.unsigned_abs())
    }
}

impl std::ops::Add for Exact {
    type Output = Exact;
    /// Wrapping: associative and commutative in every case.
    fn add(self, o: Exact) -> Exact {
        Exact(self.0.wrapping_add(o.0))
    }
}

impl std::ops::AddAssign for Exact {
    fn add_assign(&mut self, o: Exact) {
        *self = *self + o;
    }
}

/// An upper bound on the magnitude of every partial sum of a set of
/// [`Exact`] values: the sum of their magnitudes, in fixed-point units,
/// saturating at `u128::MAX`. Saturating addition of non-negative numbers
/// is `min(total, MAX)`, so a bound, like the sum it guards, is the same
/// in any grouping.
///
/// # Examples
/// ```
/// use tidemill::exact::{Bound, Exact};
/// let big = Exact::from_f64(1e21).unwrap();
/// let (mut sum, mut bound) = (Exact::default(), Bound::default());
/// for v in [big, big, Exact::from_f64(-1e21).unwrap()] {
///     sum += v;
///     bound += v.magnitude();
/// }
/// // 1e21 + 1e21 − 1e21 may have wrapped on the way: the bound says so,
/// // in whatever order the three were added.
/// assert!(!bound.holds());
/// let small = Exact::from_f64(3.0).unwrap();
/// assert!((small.magnitude() + small.magnitude()).holds());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bound(pub u128);

impl Bound {
    /// True if no grouping of the values behind this bound can have left
    /// the range of [`Exact`] (magnitude below 2^127), so every sum of them
    /// is exact.
    pub fn holds(self) -> bool {
        self.0 < 1u128 << 127
    }

    /// The bound as `f64`, in value units (for messages).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE
    }
}

impl std::ops::Add for Bound {
    type Output = Bound;
    fn add(self, o: Bound) -> Bound {
        Bound(self.0.saturating_add(o.0))
    }
}

impl std::ops::AddAssign for Bound {
    fn add_assign(&mut self, o: Bound) {
        *self = *self + o;
    }
}

/// Adds `partial` (f64) into `acc` (fixed point) element-wise, and returns
/// the largest magnitude among the rounded values (the [`Bound`] that one
/// unit's partial adds to every coordinate's sum); `Err` gives the index
/// of the first non-finite or out-of-range value.
pub fn accumulate(acc: &mut [Exact], partial: &[f64]) -> Result<Bound, usize> {
    let mut largest = Bound::default();
    for (i, (a, &p)) in acc.iter_mut().zip(partial).enumerate() {
        if p != 0.0 {
            let v = Exact::from_f64(p).ok_or(i)?;
            largest = largest.max(v.magnitude());
            *a += v;
        }
    }
    Ok(largest)
}

/// Coordinates a page of [`PagedSums`] holds.
const PAGE: usize = 64;

/// Exact sums over a long vector of which few coordinates are ever added
/// to (a wide hashed model's steps): pages of 64 coordinates are
/// allocated as they are first added to, so memory and page faults follow
/// the coordinates touched, not the vector's length. A vector of zero
/// [`Exact`]s is written in full when it is made (`Exact` is not a
/// primitive that the allocator may hand over pre-zeroed).
#[derive(Debug, Clone, Default)]
pub struct PagedSums {
    len: usize,
    pages: Vec<Option<Box<[Exact; PAGE]>>>,
}

impl PagedSums {
    /// `len` zero sums, holding no page yet.
    pub fn new(len: usize) -> PagedSums {
        PagedSums {
            len,
            pages: (0..len.div_ceil(PAGE)).map(|_| None).collect(),
        }
    }

    /// Coordinates.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if it has no coordinate.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `v` to coordinate `i` (`i < len`).
    #[inline]
    pub fn add(&mut self, i: usize, v: Exact) {
        let page = self.pages[i / PAGE].get_or_insert_with(|| Box::new([Exact::default(); PAGE]));
        page[i % PAGE] += v;
    }

    /// Coordinate `i`'s sum, leaving zero there.
    #[inline]
    pub fn take(&mut self, i: usize) -> Exact {
        match self.pages.get_mut(i / PAGE) {
            Some(Some(page)) => std::mem::take(&mut page[i % PAGE]),
            _ => Exact::default(),
        }
    }

    /// Coordinate `i`'s sum.
    #[inline]
    pub fn get(&self, i: usize) -> Exact {
        match self.pages.get(i / PAGE) {
            Some(Some(page)) => page[i % PAGE],
            _ => Exact::default(),
        }
    }
}

/// Where a model adds its gradient's exact sums
/// (`crate::model::Model::accumulate`): a whole vector, or [`PagedSums`].
/// Both hold the same sums, so the choice changes memory, never bits.
#[derive(Debug)]
pub enum Sums<'a> {
    /// One sum per coordinate.
    Whole(&'a mut [Exact]),
    /// Sums of the coordinates added to.
    Paged(&'a mut PagedSums),
}

impl Sums<'_> {
    /// Adds `v` to coordinate `i`.
    #[inline]
    pub fn add(&mut self, i: usize, v: Exact) {
        match self {
            Sums::Whole(s) => s[i] += v,
            Sums::Paged(p) => p.add(i, v),
        }
    }

    /// [`accumulate`] of `partial` into coordinates `start..start + partial.len()`.
    pub fn add_partial(&mut self, start: usize, partial: &[f64]) -> Result<Bound, usize> {
        match self {
            Sums::Whole(s) => accumulate(&mut s[start..start + partial.len()], partial),
            Sums::Paged(p) => {
                let mut largest = Bound::default();
                for (i, &g) in partial.iter().enumerate() {
                    if g != 0.0 {
                        let v = Exact::from_f64(g).ok_or(i)?;
                        largest = largest.max(v.magnitude());
                        p.add(start + i, v);
                    }
                }
                Ok(largest)
            }
        }
    }
}

impl<'a> From<&'a mut [Exact]> for Sums<'a> {
    fn from(s: &'a mut [Exact]) -> Sums<'a> {
        Sums::Whole(s)
    }
}

impl<'a> From<&'a mut Vec<Exact>> for Sums<'a> {
    fn from(s: &'a mut Vec<Exact>) -> Sums<'a> {
        Sums::Whole(s)
    }
}

impl<'a> From<&'a mut PagedSums> for Sums<'a> {
    fn from(p: &'a mut PagedSums) -> Sums<'a> {
        Sums::Paged(p)
    }
}

/// A fixed-point sum of 256 bits (two's complement `hi · 2^128 + lo`), with
/// the same [`FRAC_BITS`] as [`Exact`]: where a value fits in 128 bits,
/// both give the same bits and the same `f64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wide {
    hi: i128,
    lo: u128,
}

impl Wide {
    /// The overflowed value: it absorbs every addition and reads as NaN.
    pub const OVERFLOW: Wide = Wide {
        hi: i128::MIN,
        lo: 0,
    };

    fn from_i128(v: i128) -> Wide {
        Wide {
            hi: if v < 0 { -1 } else { 0 },
            lo: v as u128,
        }
    }

    fn negate(self) -> Wide {
        let (lo, carry) = (!self.lo).overflowing_add(1);
        Wide {
            hi: (!self.hi).wrapping_add(i128::from(carry)),
            lo,
        }
    }

    /// Rounds an `f64` to fixed point; `None` if it is not finite or its
    /// magnitude is [`WIDE_LIMIT`] or more.
    ///
    /// # Examples
    /// ```
    /// use tidemill::exact::Wide;
    /// // Squared errors of labels in the billions still sum exactly.
    /// let a = Wide::from_f64(5e23).unwrap() + Wide::from_f64(0.25).unwrap();
    /// let b = Wide::from_f64(0.25).unwrap() + Wide::from_f64(5e23).unwrap();
    /// assert_eq!(a, b);
    /// assert_eq!((a + Wide::from_f64(-5e23).unwrap()).to_f64(), 0.25);
    /// assert!(Wide::from_f64(f64::INFINITY).is_none());
    /// ```
    pub fn from_f64(v: f64) -> Option<Wide> {
        if !v.is_finite() || v.abs() >= WIDE_LIMIT {
            return None;
        }
        let s = v * SCALE;
        if s.abs() < 8.507_059_173_023_462e37 {
            // Below 2^126: exactly what `Exact` does.
            return Some(Wide::from_i128(s.round() as i128));
        }
        // At 2^126 and above `s` is an integer: mantissa · 2^shift, shift > 0.
        let bits = s.abs().to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i32 - 1075;
        let mantissa = u128::from((bits & ((1u64 << 52) - 1)) | (1u64 << 52));
        let shift = exponent as u32; // ≥ 74 here, < 256 by WIDE_LIMIT
        let magnitude = if shift >= 128 {
            Wide {
                hi: (mantissa << (shift - 128)) as i128,
                lo: 0,
            }
        } else {
            Wide {
                hi: (mantissa >> (128 - shift)) as i128,
                lo: mantissa << shift,
            }
        };
        Some(if v < 0.0 {
            magnitude.negate()
        } else {
            magnitude
        })
    }

    /// True if a sum that produced this value left the representable range.
    pub fn is_overflow(self) -> bool {
        self == Wide::OVERFLOW
    }

    /// The value as `f64`; NaN if the sum overflowed.
    pub fn to_f64(self) -> f64 {
        if self.is_overflow() {
            return f64::NAN;
        }
        let sign_of_lo = if (self.lo as i128) < 0 { -1 } else { 0 };
        if self.hi == sign_of_lo {
            // Fits in 128 bits: the same rounding as `Exact`.
            return (self.lo as i128) as f64 / SCALE;
        }
        (self.hi as f64 * 2f64.powi(128) + self.lo as f64) / SCALE
    }
}

impl std::ops::Add for Wide {
    type Output = Wide;
    fn add(self, o: Wide) -> Wide {
        if self.is_overflow() || o.is_overflow() {
            return Wide::OVERFLOW;
        }
        let (lo, carry) = self.lo.overflowing_add(o.lo);
        match self
            .hi
            .checked_add(o.hi)
            .and_then(|h| h.checked_add(i128::from(carry)))
        {
            Some(hi) if (Wide { hi, lo }) != Wide::OVERFLOW => Wide { hi, lo },
            _ => Wide::OVERFLOW,
        }
    }
}

impl std::ops::AddAssign for Wide {
    fn add_assign(&mut self, o: Wide) {
        *self = *self + o;
    }
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

        /// Where a value fits in 128 bits, `Wide` is `Exact` bit for bit.
        #[test]
        fn wide_agrees_with_exact_in_range(xs in proptest::collection::vec(-1e20f64..1e20, 1..50)) {
            let (mut e, mut w) = (Exact::default(), Wide::default());
            for &x in &xs {
                e += Exact::from_f64(x).unwrap();
                w += Wide::from_f64(x).unwrap();
            }
            prop_assert_eq!(e.to_f64().to_bits(), w.to_f64().to_bits());
        }

        /// Large terms that cancel leave the small ones exactly.
        #[test]
        fn wide_sums_large_terms_exactly(
            big in proptest::collection::vec(1e20f64..1e50, 1..20),
            small in proptest::collection::vec(-1e3f64..1e3, 1..20),
        ) {
            let mut sum = Wide::default();
            for &b in &big {
                sum += Wide::from_f64(b).unwrap();
            }
            for &s in &small {
                sum += Wide::from_f64(s).unwrap();
            }
            for &b in big.iter().rev() {
                sum += Wide::from_f64(-b).unwrap();
            }
            let mut want = Exact::default();
            for &s in &small {
                want += Exact::from_f64(s).unwrap();
            }
            prop_assert_eq!(sum.to_f64().to_bits(), want.to_f64().to_bits());
        }

        /// A single large value reads back as itself.
        #[test]
        fn wide_round_trips_large_values(x in -1e56f64..1e56) {
            let w = Wide::from_f64(x).unwrap();
            let back = w.to_f64();
            prop_assert!((back - x).abs() <= 1e-15 * x.abs() + 1e-16, "{} vs {}", back, x);
        }
    }

    proptest! {
        /// Wrapping sums are the same in any grouping, and where the bound
        /// holds they equal the sum computed in 256 bits.
        #[test]
        fn wrapping_sums_are_exact_where_the_bound_holds(
            xs in proptest::collection::vec(-1.1e21f64..1.1e21, 1..8),
            cut in 0usize..8,
        ) {
            let e: Vec<Exact> = xs.iter().map(|&x| Exact::from_f64(x).unwrap()).collect();
            let cut = cut.min(e.len());
            let fold = |s: &[Exact]| s.iter().fold((Exact::default(), Bound::default()), |(a, b), &v| (a + v, b + v.magnitude()));
            let (l, lb) = fold(&e[..cut]);
            let (r, rb) = fold(&e[cut..]);
            let (all, bound) = fold(&e.iter().rev().copied().collect::<Vec<_>>());
            prop_assert_eq!(l + r, all);
            prop_assert_eq!(lb + rb, bound);
            if bound.holds() {
                let wide = xs.iter().fold(Wide::default(), |w, &x| w + Wide::from_f64(x).unwrap());
                prop_assert_eq!(all.to_f64().to_bits(), wide.to_f64().to_bits());
            }
        }
    }

    #[test]
    fn a_bound_beyond_the_range_is_loud_in_every_order() {
        let big = Exact::from_f64(1.1e21).unwrap();
        let neg = Exact::from_f64(-1.1e21).unwrap();
        for order in [[big, big, neg], [big, neg, big], [neg, big, big]] {
            let bound = order
                .iter()
                .fold(Bound::default(), |b, v| b + v.magnitude());
            assert!(!bound.holds(), "2^71 may be passed on the way in {order:?}");
        }
        assert!((big.magnitude() + neg.magnitude()).holds());
        assert_eq!(Bound(u128::MAX) + Bound(1), Bound(u128::MAX));
        let mut w = Wide::default();
        let huge = Wide::from_f64(1.5e57).unwrap();
        for _ in 0..1000 {
            w += huge;
        }
        assert!(w.is_overflow());
        assert!((w + Wide::from_f64(-1.5e57).unwrap()).to_f64().is_nan());
        assert!(Wide::from_f64(2e57).is_none());
    }

    proptest! {
        /// Paged sums hold what a whole vector holds, after any adds and
        /// partials, and `take` leaves zero; a non-finite partial value is
        /// refused at the same index either way.
        #[test]
        fn paged_sums_are_the_whole_vectors_sums(
            len in 1usize..700,
            adds in proptest::collection::vec((0usize..700, -1e9f64..1e9), 0..300),
            partial in proptest::collection::vec(prop_oneof![4 => -1e3f64..1e3, 1 => Just(0.0)], 0..100),
            start in 0usize..700,
            bad in proptest::option::of(0usize..100),
        ) {
            let mut whole = vec![Exact::default(); len];
            let mut paged = PagedSums::new(len);
            for &(i, x) in &adds {
                let v = Exact::from_f64(x).unwrap();
                Sums::from(&mut whole).add(i % len, v);
                Sums::from(&mut paged).add(i % len, v);
            }
            let start = start % len;
            let mut partial = partial;
            partial.truncate(len - start);
            if let Some(b) = bad.filter(|&b| b < partial.len()) {
                partial[b] = f64::INFINITY;
            }
            let a = Sums::from(&mut whole).add_partial(start, &partial);
            let b = Sums::from(&mut paged).add_partial(start, &partial);
            prop_assert_eq!(a, b);
            for (i, w) in whole.iter().enumerate() {
                prop_assert_eq!(paged.get(i), *w);
                prop_assert_eq!(paged.take(i), *w);
                prop_assert_eq!(paged.get(i), Exact::default());
            }
        }
    }
}
