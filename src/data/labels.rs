//! A block's labels ([`Labels`]): one byte a row while every label is a
//! small whole number (a class index, a 0/1 target), eight otherwise.
//!
//! A classifier's labels are class indices, which `f64` held in eight
//! bytes each: 31 MiB of a cached W1 job's 4M rows. Those are now one byte
//! each, and read back as the same `f64`s bit for bit; a label that is not
//! a whole number in `0..=255` (a regression target, `-0.0`, `NaN`) turns
//! the block's labels into `f64`s, so every value is kept exactly.

/// The label of each of a block's rows, in order.
#[derive(Debug, Clone)]
pub enum Labels {
    /// Every label a whole number in `0..=255`, one byte each.
    Small(Vec<u8>),
    /// Labels as they are.
    Wide(Vec<f64>),
}

impl Default for Labels {
    fn default() -> Self {
        Labels::Small(Vec::new())
    }
}

impl PartialEq for Labels {
    /// The same labels (bit for bit) in the same order, however they are
    /// held.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

/// `y` as one byte, if the byte reads back as exactly `y`.
#[inline]
fn small(y: f64) -> Option<u8> {
    let b = y as u8;
    (f64::from(b).to_bits() == y.to_bits()).then_some(b)
}

impl Labels {
    /// How many labels.
    pub fn len(&self) -> usize {
        match self {
            Labels::Small(v) => v.len(),
            Labels::Wide(v) => v.len(),
        }
    }

    /// No labels?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The label of row `i`, if the block has that many labels.
    #[inline]
    pub fn get(&self, i: usize) -> Option<f64> {
        match self {
            Labels::Small(v) => v.get(i).map(|&b| f64::from(b)),
            Labels::Wide(v) => v.get(i).copied(),
        }
    }

    /// The label of row `i`.
    ///
    /// # Panics
    /// If `i` is not below [`Labels::len`], as indexing a slice would.
    #[inline]
    pub fn at(&self, i: usize) -> f64 {
        match self {
            Labels::Small(v) => f64::from(v[i]),
            Labels::Wide(v) => v[i],
        }
    }

    /// Every label, in order.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        (0..self.len()).map(move |i| self.at(i))
    }

    /// The labels as a vector.
    pub fn to_vec(&self) -> Vec<f64> {
        match self {
            Labels::Small(v) => v.iter().map(|&b| f64::from(b)).collect(),
            Labels::Wide(v) => v.clone(),
        }
    }

    /// The labels as `f64`s, to add one that is not small.
    fn wide(&mut self) -> &mut Vec<f64> {
        if let Labels::Small(_) = self {
            *self = Labels::Wide(self.to_vec());
        }
        match self {
            Labels::Wide(v) => v,
            Labels::Small(_) => unreachable!("widened just above"),
        }
    }

    /// Adds label `y` after the last.
    #[inline]
    pub fn push(&mut self, y: f64) {
        match (&mut *self, small(y)) {
            (Labels::Small(v), Some(b)) => v.push(b),
            (Labels::Wide(v), _) => v.push(y),
            (Labels::Small(_), None) => self.wide().push(y),
        }
    }

    /// Reserves room for `n` more labels.
    pub fn reserve(&mut self, n: usize) {
        match self {
            Labels::Small(v) => v.reserve(n),
            Labels::Wide(v) => v.reserve(n),
        }
    }

    /// Adds every label of `other` after the last, leaving `other` empty.
    pub fn append(&mut self, other: &mut Labels) {
        let taken = std::mem::take(other);
        match (&mut *self, taken) {
            (Labels::Small(a), Labels::Small(mut b)) => a.append(&mut b),
            (Labels::Wide(a), Labels::Wide(mut b)) => a.append(&mut b),
            (Labels::Wide(a), Labels::Small(b)) => a.extend(b.iter().map(|&y| f64::from(y))),
            (Labels::Small(a), Labels::Wide(b)) if a.is_empty() => *self = Labels::Wide(b),
            (Labels::Small(_), Labels::Wide(b)) => self.wide().extend_from_slice(&b),
        }
    }

    /// Removes every label, keeping the buffer.
    pub fn clear(&mut self) {
        match self {
            Labels::Small(v) => v.clear(),
            Labels::Wide(v) => v.clear(),
        }
    }

    /// The labels whose flag is set, in order (one flag per row).
    pub fn pick(&self, flags: &[bool]) -> Labels {
        assert_eq!(self.len(), flags.len(), "a flag per row");
        fn keep<T: Copy>(v: &[T], flags: &[bool]) -> Vec<T> {
            v.iter()
                .zip(flags)
                .filter(|(_, &k)| k)
                .map(|(&y, _)| y)
                .collect()
        }
        match self {
            Labels::Small(v) => Labels::Small(keep(v, flags)),
            Labels::Wide(v) => Labels::Wide(keep(v, flags)),
        }
    }

    /// The labels in `order` (indices into these labels).
    pub fn gather(&self, order: &[usize]) -> Labels {
        match self {
            Labels::Small(v) => Labels::Small(order.iter().map(|&i| v[i]).collect()),
            Labels::Wide(v) => Labels::Wide(order.iter().map(|&i| v[i]).collect()),
        }
    }

    /// Bytes held by the labels.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Labels::Small(v) => v.len(),
            Labels::Wide(v) => v.len() * 8,
        }
    }

    /// Bytes the labels' buffer holds, used or not.
    pub fn capacity_bytes(&self) -> usize {
        match self {
            Labels::Small(v) => v.capacity(),
            Labels::Wide(v) => v.capacity() * 8,
        }
    }
}

impl FromIterator<f64> for Labels {
    fn from_iter<I: IntoIterator<Item = f64>>(labels: I) -> Self {
        let mut out = Labels::default();
        out.extend(labels);
        out
    }
}

impl Extend<f64> for Labels {
    fn extend<I: IntoIterator<Item = f64>>(&mut self, labels: I) {
        let labels = labels.into_iter();
        self.reserve(labels.size_hint().0);
        for y in labels {
            self.push(y);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn class_indices_take_a_byte_and_anything_else_widens() {
        let classes: Labels = [0.0, 1.0, 255.0, 1.0].into_iter().collect();
        assert!(matches!(classes, Labels::Small(_)));
        assert_eq!(classes.heap_bytes(), 4);
        for (y, widens) in [
            (256.0, true),
            (0.5, true),
            (-1.0, true),
            (-0.0, true),
            (f64::NAN, true),
            (f64::INFINITY, true),
            (7.0, false),
        ] {
            let mut l = classes.clone();
            l.push(y);
            assert_eq!(matches!(l, Labels::Wide(_)), widens, "{y}");
            assert_eq!(l.at(4).to_bits(), y.to_bits(), "{y}");
            assert_eq!(l.to_vec()[..4], [0.0, 1.0, 255.0, 1.0]);
        }
    }

    /// Labels as a `Vec<f64>` held them before: mostly small whole
    /// numbers, some values that are not.
    fn model() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(
            prop_oneof![
                6 => (0u8..=255).prop_map(f64::from),
                1 => any::<f64>(),
                1 => Just(-0.0),
                1 => Just(f64::NAN),
            ],
            0..40,
        )
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|y| y.to_bits()).collect()
    }

    proptest! {
        /// Every operation gives the labels (bit for bit) a plain vector
        /// would hold.
        #[test]
        fn behaves_as_a_vector(
            (a, order) in model().prop_flat_map(|a| {
                let rows: Vec<usize> = (0..a.len()).collect();
                (Just(a), Just(rows).prop_shuffle())
            }),
            b in model(),
            flags in prop::collection::vec(any::<bool>(), 40),
        ) {
            let la: Labels = a.iter().copied().collect();
            let mut lb: Labels = b.iter().copied().collect();
            prop_assert_eq!(bits(&la.to_vec()), bits(&a));
            prop_assert_eq!(la.len(), a.len());
            for (i, &y) in a.iter().enumerate() {
                prop_assert_eq!(la.get(i).map(f64::to_bits), Some(y.to_bits()));
                prop_assert_eq!(la.at(i).to_bits(), y.to_bits());
            }
            prop_assert_eq!(la.get(a.len()), None);
            prop_assert_eq!(
                matches!(la, Labels::Small(_)),
                a.iter().all(|&y| small(y).is_some())
            );

            let mut joined = la.clone();
            joined.append(&mut lb);
            prop_assert!(lb.is_empty());
            let want: Vec<f64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(bits(&joined.to_vec()), bits(&want));

            let kept: Vec<f64> = a.iter().zip(&flags).filter(|(_, &k)| k).map(|(&y, _)| y).collect();
            prop_assert_eq!(bits(&la.pick(&flags[..a.len()]).to_vec()), bits(&kept));

            let gathered: Vec<f64> = order.iter().map(|&i| a[i]).collect();
            prop_assert_eq!(bits(&la.gather(&order).to_vec()), bits(&gathered));

            prop_assert_eq!(&Labels::Wide(a.clone()), &la);

            // Cleared and refilled (a block's buffers are reused), then
            // joined: the same labels.
            let mut reused = la.clone();
            reused.clear();
            prop_assert!(reused.is_empty());
            reused.extend(b.iter().copied());
            let mut tail: Labels = a.iter().copied().collect();
            reused.append(&mut tail);
            let want: Vec<f64> = b.iter().chain(&a).copied().collect();
            prop_assert_eq!(bits(&reused.to_vec()), bits(&want));
        }
    }
}
