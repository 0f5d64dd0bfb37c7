//! Where a block's rows are in their source file ([`FileRows`]): what error
//! messages, the held-out split and deletes name a row by.
//!
//! Most blocks are consecutive rows of one file (nothing skipped, nothing
//! held out), so a block keeps the first row and the count. Only a block
//! whose rows are not a run of consecutive rows lists each row: a cached
//! W1 job (4M rows) then holds 0 rather than 31 MiB of row indices.

/// The file row of each of a block's rows, in order.
#[derive(Debug, Clone)]
pub enum FileRows {
    /// Rows `first`, `first + 1`, …, `first + len - 1`.
    Run {
        /// The first row.
        first: u64,
        /// How many rows.
        len: usize,
    },
    /// Each row's index, in the block's order.
    Listed(Vec<u64>),
}

impl Default for FileRows {
    fn default() -> Self {
        FileRows::Run { first: 0, len: 0 }
    }
}

impl PartialEq for FileRows {
    /// The same rows in the same order, however they are held.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl FileRows {
    /// `len` consecutive rows from `first`.
    pub fn run(first: u64, len: usize) -> FileRows {
        FileRows::Run { first, len }
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        match self {
            FileRows::Run { len, .. } => *len,
            FileRows::Listed(v) => v.len(),
        }
    }

    /// No rows?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file row of row `i`, if the block has that many rows.
    #[inline]
    pub fn get(&self, i: usize) -> Option<u64> {
        match self {
            FileRows::Run { first, len } => (i < *len).then(|| first + i as u64),
            FileRows::Listed(v) => v.get(i).copied(),
        }
    }

    /// The file row of row `i`.
    ///
    /// # Panics
    /// If `i` is not below [`FileRows::len`], as indexing a slice would.
    #[inline]
    pub fn at(&self, i: usize) -> u64 {
        match self.get(i) {
            Some(r) => r,
            None => panic!("row {i} of a block of {} rows", self.len()),
        }
    }

    /// Every row's index, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(move |i| self.at(i))
    }

    /// The rows as a vector.
    pub fn to_vec(&self) -> Vec<u64> {
        self.iter().collect()
    }

    /// The rows as a list, to add rows that do not continue the run.
    fn listed(&mut self) -> &mut Vec<u64> {
        if let FileRows::Run { .. } = self {
            *self = FileRows::Listed(self.to_vec());
        }
        match self {
            FileRows::Listed(v) => v,
            FileRows::Run { .. } => unreachable!("made a list just above"),
        }
    }

    /// Adds row `r` after the last.
    pub fn push(&mut self, r: u64) {
        match self {
            FileRows::Run { first, len } if *len == 0 => {
                *first = r;
                *len = 1;
            }
            FileRows::Run { first, len } if *first + *len as u64 == r => *len += 1,
            _ => self.listed().push(r),
        }
    }

    /// Adds every row of `other` after the last, leaving `other` empty.
    pub fn append(&mut self, other: &mut FileRows) {
        let taken = std::mem::take(other);
        match (&mut *self, &taken) {
            (FileRows::Run { len: 0, .. }, _) => *self = taken,
            (_, FileRows::Run { len: 0, .. }) => {}
            (FileRows::Run { first, len }, FileRows::Run { first: f2, len: l2 })
                if *first + *len as u64 == *f2 =>
            {
                *len += l2
            }
            (FileRows::Listed(rows), FileRows::Listed(more)) => rows.extend_from_slice(more),
            _ => {
                let rows = self.listed();
                rows.extend(taken.iter());
            }
        }
    }

    /// Removes every row, keeping a list's buffer.
    pub fn clear(&mut self) {
        match self {
            FileRows::Listed(v) => v.clear(),
            FileRows::Run { len, .. } => *len = 0,
        }
    }

    /// The rows whose flag is set, in order (one flag per row).
    pub fn pick(&self, flags: &[bool]) -> FileRows {
        debug_assert_eq!(self.len(), flags.len(), "a flag per row");
        let mut kept = FileRows::default();
        for (r, _) in self.iter().zip(flags).filter(|(_, &k)| k) {
            kept.push(r);
        }
        kept
    }

    /// The rows in `order` (indices into these rows).
    pub fn gather(&self, order: &[usize]) -> FileRows {
        let mut out = FileRows::default();
        for &i in order {
            out.push(self.at(i));
        }
        out
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            FileRows::Run { .. } => 0,
            FileRows::Listed(v) => v.len() * 8,
        }
    }
}

impl FromIterator<u64> for FileRows {
    fn from_iter<I: IntoIterator<Item = u64>>(rows: I) -> Self {
        let mut out = FileRows::default();
        for r in rows {
            out.push(r);
        }
        out
    }
}

impl Extend<u64> for FileRows {
    fn extend<I: IntoIterator<Item = u64>>(&mut self, rows: I) {
        for r in rows {
            self.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consecutive_rows_stay_a_run() {
        let rows: FileRows = (100..105).collect();
        assert!(matches!(rows, FileRows::Run { first: 100, len: 5 }));
        assert_eq!(rows.heap_bytes(), 0);
        let mut gap = rows.clone();
        gap.push(107);
        assert!(matches!(gap, FileRows::Listed(_)));
        assert_eq!(gap.to_vec(), [100, 101, 102, 103, 104, 107]);
        assert_eq!(gap.get(6), None);
        assert_eq!(rows.get(5), None);
    }

    /// A list of row indices, as a `Vec<u64>` held them before.
    fn model() -> impl Strategy<Value = Vec<u64>> {
        (
            0u64..1000,
            prop::collection::vec(prop_oneof![3 => Just(1u64), 1 => 0u64..5], 0..40),
        )
            .prop_map(|(start, steps)| {
                let mut r = start;
                steps
                    .into_iter()
                    .map(|s| {
                        r += s;
                        r
                    })
                    .collect()
            })
    }

    proptest! {
        /// Every operation gives the rows a plain vector would hold.
        #[test]
        fn behaves_as_a_vector(
            a in model(),
            b in model(),
            flags in prop::collection::vec(any::<bool>(), 40),
            seed in any::<u64>(),
        ) {
            let fa: FileRows = a.iter().copied().collect();
            let mut fb: FileRows = b.iter().copied().collect();
            prop_assert_eq!(fa.to_vec(), a.clone());
            prop_assert_eq!(fa.len(), a.len());
            for (i, &r) in a.iter().enumerate() {
                prop_assert_eq!(fa.get(i), Some(r));
            }
            prop_assert_eq!(fa.get(a.len()), None);

            let mut joined = fa.clone();
            joined.append(&mut fb);
            prop_assert!(fb.is_empty());
            let want: Vec<u64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(joined.to_vec(), want);

            let kept: Vec<u64> = a.iter().zip(&flags).filter(|(_, &k)| k).map(|(&r, _)| r).collect();
            prop_assert_eq!(fa.pick(&flags[..a.len()]).to_vec(), kept);

            let mut order: Vec<usize> = (0..a.len()).collect();
            let n = order.len();
            for i in (1..n).rev() {
                order.swap(i, (seed.wrapping_mul(i as u64 + 7) % (i as u64 + 1)) as usize);
            }
            let gathered: Vec<u64> = order.iter().map(|&i| a[i]).collect();
            prop_assert_eq!(fa.gather(&order).to_vec(), gathered);

            let listed = FileRows::Listed(a.clone());
            prop_assert_eq!(&listed, &fa);

            // Cleared and refilled (a block's buffers are reused), then
            // joined: the same rows.
            let mut reused = fa.clone();
            reused.clear();
            prop_assert!(reused.is_empty());
            reused.extend(b.iter().copied());
            let mut tail: FileRows = a.iter().copied().collect();
            reused.append(&mut tail);
            let want: Vec<u64> = b.iter().chain(&a).copied().collect();
            prop_assert_eq!(reused.to_vec(), want);
        }
    }
}
