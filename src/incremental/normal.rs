//! The sufficient statistics of least squares as a differential-dataflow
//! difference type: an Abelian group, so that inserting rows and then
//! retracting them leaves exactly — bit for bit — what never inserting them
//! leaves.
//!
//! Each value of a row (its features `x` and its label `y`, together
//! `v = [x, y]`) is quantised once to a fixed-point integer
//! `q = trunc(v · 2^FRAC_BITS)` (resolution 2^-40 ≈ 9.1e-13; a function of
//! the value alone). A row contributes `1`, every `q_i` and every product
//! `q_i·q_j (i ≤ j)`, computed **exactly** in integers: the sums are the
//! exact sums of the quantised data, 256 bits wide. So
//!
//! - any order, grouping and worker count gives the same bits, and a
//!   retraction subtracts exactly what its insertion added;
//! - the centred moments the solver needs, `n·S_ij − s_i·s_j`, are computed
//!   exactly from them (no cancellation: a timestamp column's variance is
//!   as exact as a small one's, and a constant column's is exactly 0),
//!   and rounded once, to `f64`.
//!
//! Limits, checked and failing loudly: a value's magnitude below
//! [`MAX_VALUE`] (2^40 ≈ 1.1e12), so that `|q| < 2^80`, products
//! `< 2^160` and, over fewer than [`MAX_ROWS`] (2^32) rows, every sum and
//! every centred moment stays inside 256 bits; and a column must vary by
//! more than the quantisation can resolve (see [`Normal::check`]).

use std::collections::BTreeMap;

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use ethnum::I256;
use serde::{Deserialize, Serialize};

use crate::data::labels::Labels;

/// Fractional bits of the quantised values (resolution 2^-40 ≈ 9.1e-13).
pub const FRAC_BITS: i32 = 40;
const SCALE: f64 = (1u64 << FRAC_BITS) as f64;
/// The largest magnitude a value may have: 2^40 ≈ 1.1e12.
pub const MAX_VALUE: f64 = 1_099_511_627_776.0;
/// More rows than this may not be present at once (2^32).
pub const MAX_ROWS: i64 = 1 << 32;

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

    /// Adds another digest (lane by lane, wrapping).
    pub fn add(&mut self, o: &KeyDigest) {
        self.0[0] = self.0[0].wrapping_add(o.0[0]);
        self.0[1] = self.0[1].wrapping_add(o.0[1]);
    }

    /// The digest that adds to this one to give zero.
    pub fn negate(&mut self) {
        self.0[0] = self.0[0].wrapping_neg();
        self.0[1] = self.0[1].wrapping_neg();
    }

    /// Lowercase hex, 64 digits (lane 0 then lane 1, big-endian each).
    pub fn hex(&self) -> String {
        format!("{:032x}{:032x}", self.0[0], self.0[1])
    }
}

/// Sums of one or more rows' values and products (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Normal {
    /// Rows (a retraction counts −1).
    pub rows: i64,
    /// The sum of the rows' key digests.
    pub keys: KeyDigest,
    /// `[Σq_j (m), Σq_i·q_j (i ≤ j, row-major upper)]` over `m = p + 1`
    /// values per row (the features, then the label), exact; empty for the
    /// zero of any width.
    #[serde(with = "wide")]
    pub sums: Vec<I256>,
    /// Per value: how many are non-zero but below 2^-16 in magnitude
    /// (fewer than 2^24 quanta). A column that varies only among such
    /// values varies below what the quantisation resolves; see
    /// [`Normal::check`]. Empty for the zero of any width.
    pub small: Vec<i64>,
    /// Naive Bayes: the sums of each class's rows, by the class label
    /// (a class leaves when its last row does). Empty for least squares.
    pub classes: BTreeMap<String, ClassSums>,
}

/// The sums of one class's rows (naive Bayes): their number, and per
/// numeric feature `Σq_j` and `Σq_j²` (exact, as [`Normal`]'s), and per
/// hashed slot the tokens that fell in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClassSums {
    /// Rows of the class.
    pub rows: i64,
    /// `[Σq_j (p), Σq_j² (p)]`; empty for the zero.
    #[serde(with = "wide")]
    pub sums: Vec<I256>,
    /// Per feature: values non-zero but below 2^-16 (see [`Normal::small`]).
    pub small: Vec<i64>,
    /// Tokens per hashed slot (zero counts absent).
    pub slots: BTreeMap<u32, i64>,
}

impl ClassSums {
    fn is_zero(&self) -> bool {
        self.rows == 0
            && self.sums.iter().all(|s| *s == I256::ZERO)
            && self.small.iter().all(|c| *c == 0)
            && self.slots.is_empty()
    }

    /// Adds `rhs` (exactly).
    pub fn plus(&mut self, rhs: &ClassSums) {
        if self.sums.is_empty() {
            self.sums = rhs.sums.clone();
            self.small = rhs.small.clone();
        } else if !rhs.sums.is_empty() {
            debug_assert_eq!(self.sums.len(), rhs.sums.len());
            for (a, b) in self.sums.iter_mut().zip(&rhs.sums) {
                *a = a.wrapping_add(*b);
            }
            for (a, b) in self.small.iter_mut().zip(&rhs.small) {
                *a = a.wrapping_add(*b);
            }
        }
        for (s, c) in &rhs.slots {
            let e = self.slots.entry(*s).or_insert(0);
            *e = e.wrapping_add(*c);
            if *e == 0 {
                self.slots.remove(s);
            }
        }
        self.rows = self.rows.wrapping_add(rhs.rows);
        if self.sums.iter().all(|s| *s == I256::ZERO) && self.small.iter().all(|c| *c == 0) {
            self.sums.clear();
            self.small.clear();
        }
    }

    fn scale(&mut self, m: i64) {
        let w = I256::from(m);
        for s in &mut self.sums {
            *s = s.wrapping_mul(w);
        }
        for c in &mut self.small {
            *c = c.wrapping_mul(m);
        }
        for c in self.slots.values_mut() {
            *c = c.wrapping_mul(m);
        }
        self.rows = self.rows.wrapping_mul(m);
    }

    /// The exact sum of feature `j` of the class's rows (of `p`), rounded
    /// once.
    pub fn total(&self, p: usize, j: usize) -> f64 {
        match self.sums.get(j) {
            Some(s) if self.sums.len() == 2 * p => s.as_f64() / SCALE,
            _ => 0.0,
        }
    }

    /// The exact sum of every feature value and token of the class's rows,
    /// rounded once (the multinomial total count).
    pub fn grand_total(&self, p: usize) -> f64 {
        let mut t = I256::ZERO;
        if self.sums.len() == 2 * p {
            for s in &self.sums[..p] {
                t = t.wrapping_add(*s);
            }
        }
        let tokens: i64 = self.slots.values().sum();
        t = t.wrapping_add(I256::from(tokens).wrapping_mul(I256::from(1i128 << FRAC_BITS)));
        t.as_f64() / SCALE
    }

    /// The mean and population variance of feature `j` (of `p`) over the
    /// class's rows: exact (`n·Σq² − (Σq)²` in integers) until rounded
    /// once; `None` without rows.
    pub fn mean_var(&self, p: usize, j: usize) -> Option<(f64, f64)> {
        if self.rows <= 0 {
            return None;
        }
        let nf = self.rows as f64;
        if self.sums.len() != 2 * p {
            // Every value of the class is zero.
            return Some((0.0, 0.0));
        }
        let n = I256::from(self.rows);
        let (s1, s2) = (self.sums[j], self.sums[p + j]);
        let c = n.wrapping_mul(s2).wrapping_sub(s1.wrapping_mul(s1));
        Some((
            s1.as_f64() / (SCALE * nf),
            c.as_f64() / (SCALE * SCALE * nf * nf),
        ))
    }

    /// Whether feature `j` holds a value below 2^-16 (see [`Normal::check`]).
    pub fn has_small(&self, j: usize) -> bool {
        self.small.get(j).copied().unwrap_or(0) > 0
    }
}

/// Whether a value is non-zero but below 2^-16 in magnitude.
#[inline]
fn is_small(v: f64) -> bool {
    v != 0.0 && v.abs() < 1.0 / 65_536.0
}

/// The serde form of the sums: each as its two 128-bit words.
mod wide {
    use ethnum::I256;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[I256], s: S) -> Result<S::Ok, S::Error> {
        let words: Vec<(i128, i128)> = v.iter().map(|x| x.into_words()).collect();
        words.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<I256>, D::Error> {
        let words: Vec<(i128, i128)> = Vec::deserialize(d)?;
        Ok(words
            .into_iter()
            .map(|(h, l)| I256::from_words(h, l))
            .collect())
    }
}

/// Sums held for `p` features (`m = p + 1` values a row).
pub fn width(p: usize) -> usize {
    let m = p + 1;
    m + m * (m + 1) / 2
}

/// The index of `Σq_i·q_j` among `m` values (`i ≤ j` in any order).
pub fn product_index(m: usize, i: usize, j: usize) -> usize {
    let (i, j) = if i <= j { (i, j) } else { (j, i) };
    // Row i of the upper triangle starts after rows 0..i.
    m + i * m - i * i.saturating_sub(1) / 2 - i + j
}

/// A value that does not fit the fixed-point range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TooLarge {
    /// Which value: `None` for the label, else the feature index.
    pub feature: Option<usize>,
    /// The value.
    pub value: f64,
}

/// `trunc(v · 2^FRAC_BITS)`: a function of the value alone.
#[inline]
fn quantise(v: f64) -> i128 {
    let t = v * SCALE;
    if t.abs() < 9.2e18 {
        t as i64 as i128
    } else {
        t as i128
    }
}

/// Adds the exact product `a·b` (each below 2^80 in magnitude) to `acc`.
#[inline]
fn add_product(acc: &mut I256, a: i128, b: i128) {
    const FAST: i128 = 1 << 62;
    if a.abs() < FAST && b.abs() < FAST {
        // Below 2^124: exact in i128.
        *acc = acc.wrapping_add(I256::from(a * b));
    } else {
        *acc = acc.wrapping_add(I256::from(a).wrapping_mul(I256::from(b)));
    }
}

/// Centred moments of the rows present, exact until rounded to `f64` once.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// Rows.
    pub n: f64,
    /// Mean of each value (features, then the label).
    pub mean: Vec<f64>,
    /// `cov[i·m + j]`: the population covariance of values `i` and `j`.
    pub cov: Vec<f64>,
}

impl Normal {
    /// An empty sum for `p` features.
    pub fn zero_of(p: usize) -> Normal {
        Normal {
            sums: vec![I256::ZERO; width(p)],
            small: vec![0; p + 1],
            ..Normal::default()
        }
    }

    fn ensure(&mut self, p: usize) {
        if self.sums.is_empty() {
            self.sums = vec![I256::ZERO; width(p)];
            self.small = vec![0; p + 1];
        }
    }

    /// Adds one row (`key` as its digest), `x` its `p` features, `y` its
    /// label. Nothing changes on an error.
    pub fn add_row(&mut self, key: &KeyDigest, x: &[f64], y: f64) -> Result<(), TooLarge> {
        let p = x.len();
        let m = p + 1;
        let mut q = Vec::with_capacity(m);
        for (j, &v) in x.iter().chain(std::iter::once(&y)).enumerate() {
            if v.is_nan() || v.abs() >= MAX_VALUE {
                return Err(TooLarge {
                    feature: (j < p).then_some(j),
                    value: v,
                });
            }
            q.push(quantise(v));
        }
        self.ensure(p);
        for (j, &v) in x.iter().chain(std::iter::once(&y)).enumerate() {
            self.small[j] += i64::from(is_small(v));
        }
        let (single, products) = self.sums.split_at_mut(m);
        let mut k = 0;
        for i in 0..m {
            single[i] = single[i].wrapping_add(I256::from(q[i]));
            for &qj in &q[i..] {
                add_product(&mut products[k], q[i], qj);
                k += 1;
            }
        }
        self.rows += 1;
        self.keys.add(key);
        Ok(())
    }

    /// Adds one row of class `class` (naive Bayes): `x` its `p` features,
    /// `slots` the hashed slots of its tokens (with repeats). Nothing
    /// changes on an error.
    pub fn add_class_row(
        &mut self,
        key: &KeyDigest,
        x: &[f64],
        class: &str,
        slots: &[u32],
    ) -> Result<(), TooLarge> {
        let p = x.len();
        let mut q = Vec::with_capacity(p);
        for (j, &v) in x.iter().enumerate() {
            if v.is_nan() || v.abs() >= MAX_VALUE {
                return Err(TooLarge {
                    feature: Some(j),
                    value: v,
                });
            }
            q.push(quantise(v));
        }
        let sums = self.classes.entry(class.to_string()).or_default();
        if sums.sums.is_empty() {
            sums.sums = vec![I256::ZERO; 2 * p];
            sums.small = vec![0; p];
        }
        for (j, (&qj, &v)) in q.iter().zip(x).enumerate() {
            sums.sums[j] = sums.sums[j].wrapping_add(I256::from(qj));
            add_product(&mut sums.sums[p + j], qj, qj);
            sums.small[j] += i64::from(is_small(v));
        }
        for &s in slots {
            *sums.slots.entry(s).or_insert(0) += 1;
        }
        sums.rows += 1;
        self.rows += 1;
        self.keys.add(key);
        Ok(())
    }

    /// Adds the rows of a block: row `r` has key digest `keys[r]`, features
    /// `x[r·p .. (r+1)·p]` and label `y[r]`. The same sums as adding them
    /// one by one (integer sums are exact in any grouping), faster: while
    /// a block's products are small enough, they are summed in `i128`
    /// first. On an error (the row named by its index) nothing changes.
    pub fn add_rows(
        &mut self,
        keys: &[KeyDigest],
        x: &[f64],
        y: &Labels,
        p: usize,
    ) -> Result<(), (usize, TooLarge)> {
        let m = p + 1;
        let rows = y.len();
        let mut q = Vec::with_capacity(rows * m);
        let mut largest: i128 = 0;
        for r in 0..rows {
            for (j, &v) in x[r * p..(r + 1) * p]
                .iter()
                .chain(std::iter::once(&y.at(r)))
                .enumerate()
            {
                if v.is_nan() || v.abs() >= MAX_VALUE {
                    return Err((
                        r,
                        TooLarge {
                            feature: (j < p).then_some(j),
                            value: v,
                        },
                    ));
                }
                let qv = quantise(v);
                largest = largest.max(qv.abs());
                q.push(qv);
            }
        }
        self.ensure(p);
        for r in 0..rows {
            for (j, &v) in x[r * p..(r + 1) * p]
                .iter()
                .chain(std::iter::once(&y.at(r)))
                .enumerate()
            {
                self.small[j] += i64::from(is_small(v));
            }
        }
        // Σ over the block of |q_i·q_j| ≤ rows · largest²: summed in i128
        // while that stays below 2^126.
        let fits = largest < (1 << 62)
            && (largest * largest)
                .checked_mul(rows.max(1) as i128)
                .is_some_and(|b| b < (1i128 << 126));
        if fits {
            let mut single = vec![0i128; m];
            let mut products = vec![0i128; m * (m + 1) / 2];
            for row in q.chunks_exact(m) {
                let mut k = 0;
                for i in 0..m {
                    single[i] += row[i];
                    let qi = row[i];
                    for &qj in &row[i..] {
                        products[k] += qi * qj;
                        k += 1;
                    }
                }
            }
            for (s, v) in self.sums.iter_mut().zip(single.iter().chain(&products)) {
                *s = s.wrapping_add(I256::from(*v));
            }
        } else {
            let (single, products) = self.sums.split_at_mut(m);
            for row in q.chunks_exact(m) {
                let mut k = 0;
                for i in 0..m {
                    single[i] = single[i].wrapping_add(I256::from(row[i]));
                    for &qj in &row[i..] {
                        add_product(&mut products[k], row[i], qj);
                        k += 1;
                    }
                }
            }
        }
        self.rows += rows as i64;
        for k in keys {
            self.keys.add(k);
        }
        Ok(())
    }

    /// The centred moments of the rows present over `p` features, or why
    /// they cannot be had exactly: no rows, more than [`MAX_ROWS`], or a
    /// varying column whose spread is within the quantisation's reach.
    pub fn moments(&self, p: usize) -> Result<Moments, String> {
        let m = p + 1;
        if self.rows <= 0 || self.sums.len() != width(p) {
            return Err("no rows".into());
        }
        if self.rows >= MAX_ROWS {
            return Err(format!(
                "{} rows: exact sums hold at most 2^32 rows at once",
                self.rows
            ));
        }
        let n = I256::from(self.rows);
        let nf = self.rows as f64;
        let unit = SCALE * SCALE * nf * nf;
        let mean: Vec<f64> = (0..m)
            .map(|j| self.sums[j].as_f64() / (SCALE * nf))
            .collect();
        let mut cov = vec![0.0; m * m];
        for i in 0..m {
            for j in i..m {
                // n·S_ij − s_i·s_j: |S| < 2^192 and |s| < 2^112, so both
                // products and their difference stay inside 256 bits.
                let c = n
                    .wrapping_mul(self.sums[product_index(m, i, j)])
                    .wrapping_sub(self.sums[i].wrapping_mul(self.sums[j]));
                let v = c.as_f64() / unit;
                cov[i * m + j] = v;
                cov[j * m + i] = v;
            }
        }
        Ok(Moments { n: nf, mean, cov })
    }

    /// Whether the sums can be solved from: see [`Normal::moments`]; and a
    /// column that varies must vary by at least 2^24 quantisation steps
    /// (its standard deviation at least 2^-16 ≈ 1.5e-5): the quantised
    /// values then hold it to `f32` precision (the precision of every
    /// model input), otherwise they would misstate it.
    pub fn check(&self, p: usize, names: &dyn Fn(usize) -> String) -> Result<Moments, String> {
        let moments = self.moments(p)?;
        let m = p + 1;
        for j in 0..m {
            let var = moments.cov[j * m + j];
            let small = self.small.get(j).copied().unwrap_or(0) > 0;
            if (var > 0.0 || small) && var.sqrt() < 1.0 / 65_536.0 {
                return Err(format!(
                    "'{}' varies by only {:e} (standard deviation) or holds values below 2^-16 that vary below it: below what exact sums resolve (values are held to 2^-40); rescale the column",
                    names(j),
                    var.sqrt()
                ));
            }
        }
        Ok(moments)
    }
}

impl IsZero for Normal {
    fn is_zero(&self) -> bool {
        self.rows == 0
            && self.keys == KeyDigest::default()
            && self.sums.iter().all(|s| *s == I256::ZERO)
            && self.small.iter().all(|c| *c == 0)
            && self.classes.is_empty()
    }
}

impl Semigroup for Normal {
    fn plus_equals(&mut self, rhs: &Self) {
        if rhs.sums.is_empty() {
            // Zero of any width.
        } else if self.sums.is_empty() {
            self.sums = rhs.sums.clone();
            self.small = rhs.small.clone();
        } else {
            // Same width: every contributor has the job's features.
            debug_assert_eq!(self.sums.len(), rhs.sums.len());
            for (a, b) in self.sums.iter_mut().zip(&rhs.sums) {
                *a = a.wrapping_add(*b);
            }
            for (a, b) in self.small.iter_mut().zip(&rhs.small) {
                *a = a.wrapping_add(*b);
            }
        }
        for (c, sums) in &rhs.classes {
            let e = self.classes.entry(c.clone()).or_default();
            e.plus(sums);
            if e.is_zero() {
                self.classes.remove(c);
            }
        }
        self.rows = self.rows.wrapping_add(rhs.rows);
        self.keys.add(&rhs.keys);
        if self.is_zero() {
            // One representation of zero, so that consolidation drops it.
            self.sums.clear();
            self.small.clear();
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
        for c in &mut self.small {
            *c = c.wrapping_neg();
        }
        for sums in self.classes.values_mut() {
            sums.scale(-1);
        }
        self.rows = self.rows.wrapping_neg();
        self.keys.negate();
    }
}

impl Multiply<isize> for Normal {
    type Output = Normal;
    /// `m` copies of these rows (a negative `m` retracts them).
    fn multiply(mut self, m: &isize) -> Normal {
        let w = I256::from(*m as i128);
        for s in &mut self.sums {
            *s = s.wrapping_mul(w);
        }
        for c in &mut self.small {
            *c = c.wrapping_mul(*m as i64);
        }
        for sums in self.classes.values_mut() {
            sums.scale(*m as i64);
        }
        if *m == 0 {
            self.classes.clear();
        }
        self.rows = self.rows.wrapping_mul(*m as i64);
        let m = *m as i128 as u128;
        self.keys.0[0] = self.keys.0[0].wrapping_mul(m);
        self.keys.0[1] = self.keys.0[1].wrapping_mul(m);
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
            rows in prop::collection::vec((prop::collection::vec(-1e9f64..1e9, 3), -1e3f64..1e3), 1..40),
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

    proptest! {
        /// A block adds the same bits as its rows one by one.
        #[test]
        fn blocks_add_like_rows(
            rows in prop::collection::vec((prop::collection::vec(-1e9f64..1e9, 2), -1e11f64..1e11), 1..30),
        ) {
            let keys: Vec<KeyDigest> = (0..rows.len()).map(|i| KeyDigest::of(&i.to_string())).collect();
            let mut one = Normal::zero_of(2);
            for (k, (x, y)) in keys.iter().zip(&rows) {
                one.add_row(k, x, *y).unwrap();
            }
            let x: Vec<f64> = rows.iter().flat_map(|(x, _)| x.clone()).collect();
            let y: Labels = rows.iter().map(|(_, y)| *y).collect();
            let mut block = Normal::zero_of(2);
            block.add_rows(&keys, &x, &y, 2).unwrap();
            prop_assert_eq!(one, block);
        }
    }

    #[test]
    fn too_large_values_are_refused() {
        let mut n = Normal::zero_of(1);
        let e = n.add_row(&KeyDigest::of("a"), &[2e12], 0.0).unwrap_err();
        assert_eq!(e.feature, Some(0));
        assert!(n.add_row(&KeyDigest::of("a"), &[1.0], f64::NAN).is_err());
        assert_eq!(n.rows, 0);
    }

    /// Centred moments are exact where f64 sums cancel: a timestamp-like
    /// column's variance, a constant column's zero.
    #[test]
    fn centred_moments_do_not_cancel() {
        let mut n = Normal::zero_of(2);
        for i in 0..1000 {
            let t = 1.7e9 + (i % 100) as f64;
            n.add_row(&KeyDigest::of(&i.to_string()), &[t, 0.7], 0.5 * (t - 1.7e9))
                .unwrap();
        }
        let m = n.moments(2).unwrap();
        // Population variance of 0..100 repeated: (100² − 1)/12.
        assert!((m.cov[0] - 833.25).abs() < 1e-9, "{}", m.cov[0]);
        assert_eq!(m.cov[4], 0.0);
        assert!((m.cov[2] - 0.5 * 833.25).abs() < 1e-9);
        assert!(n.check(2, &|j| j.to_string()).is_ok());
    }

    #[test]
    fn variation_below_one_quantum_is_refused() {
        let mut n = Normal::zero_of(1);
        for i in 0..100 {
            n.add_row(
                &KeyDigest::of(&i.to_string()),
                &[1e-13 * (i % 5) as f64],
                i as f64,
            )
            .unwrap();
        }
        assert!(n.check(1, &|j| format!("c{j}")).is_err());
    }

    #[test]
    fn unresolvable_spread_is_refused() {
        let mut n = Normal::zero_of(1);
        for i in 0..100 {
            n.add_row(
                &KeyDigest::of(&i.to_string()),
                &[1e-7 * (i % 3) as f64],
                i as f64,
            )
            .unwrap();
        }
        let e = n.check(1, &|j| format!("c{j}")).unwrap_err();
        assert!(e.contains("'c0'"), "{e}");
    }
}
