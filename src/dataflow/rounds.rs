//! Messages buffered by round (timely time) until the frontier says a round
//! is complete: the pattern every loop operator shares.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::AntichainRef;

/// Buffered rounds, each with the capability to answer it.
pub struct Rounds<D> {
    pending: BTreeMap<u64, (Capability<u64>, Vec<D>)>,
}

impl<D> Default for Rounds<D> {
    fn default() -> Self {
        Rounds {
            pending: BTreeMap::new(),
        }
    }
}

impl<D> Rounds<D> {
    /// Buffers `data` under its round, keeping a capability for `port`.
    pub fn add(&mut self, cap: InputCapability<u64>, data: &mut Vec<D>, port: usize) {
        if let Some(cap) = cap.retain_least(port) {
            self.pending
                .entry(*cap.time())
                .or_insert_with(|| (cap, Vec::new()))
                .1
                .append(data);
        }
    }

    /// The earliest buffered round, if the frontier has passed it.
    pub fn ready(&self, frontier: AntichainRef<'_, u64>) -> Option<(u64, &[D])> {
        let (&t, (_, msgs)) = self.pending.first_key_value()?;
        (!frontier.less_equal(&t)).then_some((t, &msgs[..]))
    }

    /// Removes and returns the earliest round if the frontier has passed it.
    pub fn pop_ready(
        &mut self,
        frontier: AntichainRef<'_, u64>,
    ) -> Option<(u64, Capability<u64>, Vec<D>)> {
        let t = self.ready(frontier)?.0;
        self.pending.remove(&t).map(|(cap, msgs)| (t, cap, msgs))
    }

    /// Messages already buffered for the rounds in `range` (complete or not).
    pub fn buffered(&self, range: RangeInclusive<u64>) -> impl Iterator<Item = &D> {
        // `BTreeMap::range` panics on a reversed range; it holds nothing.
        let valid = range.start() <= range.end();
        valid
            .then(|| self.pending.range(range))
            .into_iter()
            .flatten()
            .flat_map(|(_, (_, msgs))| msgs.iter())
    }
}
