//! Messages buffered by round (timely time) until the round is complete:
//! the pattern every loop operator shares. A round is complete when the
//! frontier has passed it or, where the operator knows how many messages a
//! round brings, as soon as they are all there (no wait for the other
//! workers' progress messages, a second trip over the network).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::AntichainRef;

/// Buffered rounds, each with the capability to answer it.
pub struct Rounds<D> {
    pending: BTreeMap<u64, (Capability<u64>, Vec<D>)>,
    /// The latest round popped: a message for it or an earlier one is late.
    popped: Option<u64>,
    /// The round of the first message that came late.
    late: Option<u64>,
}

impl<D> Default for Rounds<D> {
    fn default() -> Self {
        Rounds {
            pending: BTreeMap::new(),
            popped: None,
            late: None,
        }
    }
}

impl<D> Rounds<D> {
    /// Buffers `data` under its round, keeping a capability for `port`.
    ///
    /// A message for a round already popped is late: the round was taken
    /// as complete without it. It is kept out and noted ([`Rounds::late`]).
    pub fn add(&mut self, cap: InputCapability<u64>, data: &mut Vec<D>, port: usize) {
        if let Some(&t) = cap
            .least()
            .filter(|&&t| self.popped.is_some_and(|p| t <= p))
        {
            self.late.get_or_insert(t);
            data.clear();
            return;
        }
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

    /// The earliest buffered round, if the frontier has passed it or
    /// `complete` finds every message of the round there.
    pub fn ready_by(
        &self,
        frontier: AntichainRef<'_, u64>,
        complete: impl Fn(&[D]) -> bool,
    ) -> Option<(u64, &[D])> {
        let (&t, (_, msgs)) = self.pending.first_key_value()?;
        (!frontier.less_equal(&t) || complete(msgs)).then_some((t, &msgs[..]))
    }

    /// Removes and returns the earliest round if the frontier has passed it.
    pub fn pop_ready(
        &mut self,
        frontier: AntichainRef<'_, u64>,
    ) -> Option<(u64, Capability<u64>, Vec<D>)> {
        self.pop_ready_by(frontier, |_| false)
    }

    /// Removes and returns the earliest round if the frontier has passed it
    /// or `complete` finds every message of the round there.
    pub fn pop_ready_by(
        &mut self,
        frontier: AntichainRef<'_, u64>,
        complete: impl Fn(&[D]) -> bool,
    ) -> Option<(u64, Capability<u64>, Vec<D>)> {
        let t = self.ready_by(frontier, complete)?.0;
        self.popped = Some(self.popped.map_or(t, |p| p.max(t)));
        self.pending.remove(&t).map(|(cap, msgs)| (t, cap, msgs))
    }

    /// The round of the first message that came after its round was taken
    /// as complete: the count behind `complete` was wrong (a bug).
    pub fn late(&self) -> Option<u64> {
        self.late
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
