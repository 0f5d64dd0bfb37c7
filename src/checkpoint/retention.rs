//! Which checkpoints to keep: the newest `keep`, and never fewer than one.
//! A pure policy over sequence numbers, apart from the files.

/// The sequence numbers to delete from `present` so that the newest `keep`
/// (at least 1) remain, oldest first.
pub fn expired(present: &[u64], keep: usize) -> Vec<u64> {
    let mut seqs = present.to_vec();
    seqs.sort_unstable();
    seqs.dedup();
    let drop = seqs.len().saturating_sub(keep.max(1));
    seqs.truncate(drop);
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_are_kept() {
        assert_eq!(expired(&[5, 1, 3, 2, 4], 2), [1, 2, 3]);
        assert_eq!(expired(&[1, 2], 5), Vec::<u64>::new());
        assert_eq!(expired(&[9, 7], 0), [7], "at least one is kept");
        assert_eq!(expired(&[], 3), Vec::<u64>::new());
    }
}
