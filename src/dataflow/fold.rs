//! The fold operator: shard owners sum gradient partials exactly, apply the
//! optimizer step and emit the next round's parameters into the feedback.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::channels::pact::{Exchange, Pipeline as Local};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Stream, StreamVec};

use serde::{Deserialize, Serialize};

use super::snapshot::Part;
use super::{owner, Control, Failure, GradMsg, ParamMsg, Partial, Scalars};
use crate::error::Error;
use crate::exact::{Bound, Exact, Wide};

/// A shard's summed gradient: every coordinate, or only the coordinates
/// some worker touched, as (offset, sum) with offsets increasing.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardGrad {
    /// Every coordinate.
    Dense(Vec<f64>),
    /// The touched coordinates; all others are zero.
    Sparse(Vec<(u32, f64)>),
}

impl ShardGrad {
    /// Every coordinate of a shard of `len` coordinates.
    pub fn to_dense(&self, len: usize) -> Vec<f64> {
        match self {
            ShardGrad::Dense(v) => v.clone(),
            ShardGrad::Sparse(e) => {
                let mut v = vec![0.0; len];
                for &(i, g) in e {
                    if let Some(x) = v.get_mut(i as usize) {
                        *x = g;
                    }
                }
                v
            }
        }
    }
}

/// A round's totals over every worker: the exact loss sum, the rows and
/// the [`Bound`] of the gradient partials.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundTotals {
    /// Exact sum of the rows' losses.
    pub loss: Wide,
    /// Rows behind the sums.
    pub rows: u64,
    /// Bound on the partials summed.
    pub bound: Bound,
}

/// Parameters to send, each `delay` rounds after the round being folded.
pub type Emission = Vec<(u64, ParamMsg)>;

/// What the shard owners do with a complete round: the strategy's side of
/// the fold. Every owner must make the same deterministic progression, so
/// that owners agree without talking.
pub trait Owner: 'static {
    /// The parameters of the first rounds.
    fn start(&mut self) -> Emission;

    /// Applies a training round's summed gradient (per owned shard, with
    /// the exact loss sum, the rows and the [`Bound`] of the partials), or
    /// a [`super::Phase::Reduce`] round's; `reduced`: the total over the
    /// shards of the scalars the owners sent for the round.
    fn on_gradients(
        &mut self,
        sums: &BTreeMap<u32, ShardGrad>,
        round: RoundTotals,
        reduced: &Scalars,
    ) -> Result<Emission, Failure>;

    /// Applies the collector's decision after an evaluation round.
    fn on_control(&mut self, control: &Control) -> Emission;

    /// The owned shards' state at the point the last call just passed (a
    /// step or an epoch boundary), if a checkpoint falls there.
    fn take_snapshot(&mut self) -> Option<Part> {
        None
    }

    /// A worker asked the job to stop (`why`, a signal): the owner stops at
    /// the next point where it can take a checkpoint, emitting nothing
    /// more. An owner that cannot leaves it to the caller, which stops at
    /// once (no checkpoint).
    fn stop(&mut self, why: Failure) -> Option<Failure> {
        Some(why)
    }

    /// The stop request, once the owner has stopped (its checkpoint taken).
    fn take_stopped(&mut self) -> Option<Failure> {
        None
    }
}

/// What the fold emits: the next rounds' parameters into the feedback, and
/// the owners' checkpoint parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FoldOut {
    /// Parameters for a later round.
    Params(ParamMsg),
    /// An owner's state where a checkpoint falls.
    Saved(Part),
}

/// The exact sum of one shard's partials: sparse if every partial is.
fn sum_partials(parts: Vec<Partial>) -> ShardGrad {
    let len = parts.first().map_or(0, Partial::len);
    if parts.iter().all(|p| matches!(p, Partial::Sparse { .. })) {
        let mut entries: Vec<(u32, Exact)> = parts
            .into_iter()
            .flat_map(|p| match p {
                Partial::Sparse { entries, .. } => entries,
                Partial::Dense(_) => Vec::new(),
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        let mut summed: Vec<(u32, f64)> = Vec::with_capacity(entries.len());
        let mut i = 0;
        while i < entries.len() {
            let (k, mut total) = entries[i];
            i += 1;
            while i < entries.len() && entries[i].0 == k {
                total += entries[i].1;
                i += 1;
            }
            summed.push((k, total.to_f64()));
        }
        return ShardGrad::Sparse(summed);
    }
    let mut acc = vec![Exact::default(); len];
    for p in parts {
        p.add_into(&mut acc);
    }
    ShardGrad::Dense(acc.into_iter().map(Exact::to_f64).collect())
}

/// Whether `grads` hold exactly `peers` messages for each shard in `owned`
/// and none for any other: one from every worker, as each sends one per
/// shard in a training round.
fn every_worker_once(grads: &[GradMsg], owned: &[u32], peers: usize) -> bool {
    !owned.is_empty()
        && grads.len() == owned.len() * peers
        && owned
            .iter()
            .all(|&k| grads.iter().filter(|g| g.shard == k).count() == peers)
}

/// Extension trait: fold gradients into sharded parameters.
pub trait FoldShards<'scope> {
    /// Routes each [`GradMsg`] to its shard's owner, waits until a round is
    /// complete (the frontier has passed it, on gradients and control), then
    /// lets the [`Owner`] step and emits the [`ParamMsg`]s it releases, each
    /// at the delay it asks for, and the owner's checkpoint parts.
    ///
    /// `sync`: the shards this worker owns, when every round of gradients
    /// brings one message per owned shard from every worker (a synchronous
    /// loop); such a round is folded as soon as they are all there.
    /// `every_worker`: the gradients are already on every worker (this one
    /// owns every shard) and stay here.
    fn fold_shards(
        self,
        control: StreamVec<'scope, u64, Control>,
        owner: impl Owner,
        failure: Rc<RefCell<Option<Failure>>>,
        sync: Option<Vec<u32>>,
        every_worker: bool,
    ) -> StreamVec<'scope, u64, FoldOut>;
}

#[derive(Default)]
struct Round {
    cap: Option<Capability<u64>>,
    grads: Vec<GradMsg>,
    control: Vec<Control>,
}

impl<'scope> FoldShards<'scope> for Stream<'scope, u64, Vec<GradMsg>> {
    fn fold_shards(
        self,
        control: StreamVec<'scope, u64, Control>,
        mut driver: impl Owner,
        failure: Rc<RefCell<Option<Failure>>>,
        sync: Option<Vec<u32>>,
        every_worker: bool,
    ) -> StreamVec<'scope, u64, FoldOut> {
        let peers = self.scope().peers();
        let here = self.scope().index();
        // A synchronous round's gradients: whole, or (`Some(false)`) some
        // missing or doubled; `None` where the count is not known.
        let whole = move |grads: &[GradMsg]| {
            sync.as_ref()
                .map(|owned| every_worker_once(grads, owned, peers))
        };
        let route = Exchange::new(move |m: &GradMsg| match every_worker {
            true => here as u64,
            false => owner(m.shard, peers) as u64,
        });
        self.binary_frontier(control, route, Local, "FoldShards", move |cap0, _info| {
            let mut start = Some(cap0);
            let mut rounds: BTreeMap<u64, Round> = BTreeMap::new();
            let mut stopped = false;
            // The latest round folded: a message for it or an earlier one
            // is late (the round was taken as complete without it).
            let mut folded: Option<u64> = None;
            move |(grads, f1), (controls, f2), output| {
                if let Some(cap) = start.take() {
                    for (delay, msg) in driver.start() {
                        output
                            .session(&cap.delayed(&(*cap.time() + delay)))
                            .give(FoldOut::Params(msg));
                    }
                }
                let mut late = None;
                grads.for_each(|cap, data| {
                    if let Some(&t) = cap.least().filter(|&&t| folded.is_some_and(|f| t <= f)) {
                        late.get_or_insert(t);
                    } else if let Some(cap) = cap.retain_least(output.output_index()) {
                        let r = rounds.entry(*cap.time()).or_default();
                        r.grads.append(data);
                        r.cap.get_or_insert(cap);
                    }
                });
                controls.for_each(|cap, data| {
                    if let Some(&t) = cap.least().filter(|&&t| folded.is_some_and(|f| t <= f)) {
                        late.get_or_insert(t);
                    } else if let Some(cap) = cap.retain_least(output.output_index()) {
                        let r = rounds.entry(*cap.time()).or_default();
                        r.control.append(data);
                        r.cap.get_or_insert(cap);
                    }
                });
                if let Some(t) = late.filter(|_| !stopped) {
                    failure.borrow_mut().get_or_insert_with(|| {
                        Failure::from(&Error::Internal(format!(
                            "a message for round {t} came after the round was folded"
                        )))
                    });
                    stopped = true;
                }
                while let Some((&t, round)) = rounds.first_key_value() {
                    let passed = !f1.frontier().less_equal(&t) && !f2.frontier().less_equal(&t);
                    let complete = round.control.is_empty() && whole(&round.grads) == Some(true);
                    if !passed && !complete {
                        break;
                    }
                    let Some((_, round)) = rounds.pop_first() else {
                        break;
                    };
                    folded = Some(t);
                    let Some(cap) = round.cap else { continue };
                    if stopped {
                        continue;
                    }
                    let failed = round
                        .grads
                        .iter()
                        .find_map(|g| g.failure.clone().filter(|f| !f.is_stop()))
                        .or_else(|| round.control.iter().find_map(|c| c.failure.clone()));
                    if let Some(f) = failed {
                        failure.borrow_mut().get_or_insert(f);
                        stopped = true;
                        continue;
                    }
                    let asked = round
                        .grads
                        .iter()
                        .find_map(|g| g.failure.clone().filter(Failure::is_stop));
                    if let Some(f) = asked.and_then(|f| driver.stop(f)) {
                        failure.borrow_mut().get_or_insert(f);
                        stopped = true;
                        continue;
                    }
                    // A worker that stopped without saying why (or a
                    // message that came after its round on another worker,
                    // which stopped there): never a sum without its part.
                    if !round.grads.is_empty() && whole(&round.grads) == Some(false) {
                        failure.borrow_mut().get_or_insert_with(|| {
                            Failure::from(&Error::Internal(format!(
                                "round {t} has {} gradient messages where each of {peers} workers sends one per owned shard: a worker's part is missing or came twice",
                                round.grads.len()
                            )))
                        });
                        stopped = true;
                        continue;
                    }
                    let next = if !round.grads.is_empty() {
                        let mut parts: BTreeMap<u32, Vec<Partial>> = BTreeMap::new();
                        let mut loss: BTreeMap<u32, Wide> = BTreeMap::new();
                        let mut rows: BTreeMap<u32, u64> = BTreeMap::new();
                        let mut bound: BTreeMap<u32, Bound> = BTreeMap::new();
                        // Every worker totalled the same scalars.
                        let reduced = round
                            .grads
                            .first()
                            .map(|g| g.reduced.clone())
                            .unwrap_or_default();
                        for g in round.grads {
                            *loss.entry(g.shard).or_default() += g.loss;
                            *bound.entry(g.shard).or_default() += g.bound;
                            *rows.entry(g.shard).or_default() += g.rows;
                            parts.entry(g.shard).or_default().push(g.values);
                        }
                        let total_loss = loss.values().next().copied().unwrap_or_default();
                        let total_rows = rows.values().next().copied().unwrap_or(0);
                        let total_bound = bound.values().next().copied().unwrap_or_default();
                        let sums: BTreeMap<u32, ShardGrad> = parts
                            .into_iter()
                            .map(|(k, p)| (k, sum_partials(p)))
                            .collect();
                        let totals = RoundTotals {
                            loss: total_loss,
                            rows: total_rows,
                            bound: total_bound,
                        };
                        match driver.on_gradients(&sums, totals, &reduced) {
                            Ok(next) => next,
                            Err(f) => {
                                failure.borrow_mut().get_or_insert(f);
                                stopped = true;
                                continue;
                            }
                        }
                    } else if let Some(c) = round.control.first() {
                        driver.on_control(c)
                    } else {
                        Vec::new()
                    };
                    // Where every worker owns every shard, worker 0's
                    // state is the one saved.
                    let saves = !every_worker || here == 0;
                    if let Some(part) = driver.take_snapshot().filter(|_| saves) {
                        output.session(&cap).give(FoldOut::Saved(part));
                    }
                    if let Some(f) = driver.take_stopped() {
                        failure.borrow_mut().get_or_insert(f);
                        stopped = true;
                    }
                    for (delay, msg) in next {
                        output
                            .session(&cap.delayed(&(t + delay)))
                            .give(FoldOut::Params(msg));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(shards: &[u32]) -> Vec<GradMsg> {
        shards
            .iter()
            .map(|&shard| GradMsg {
                shard,
                values: Partial::Dense(Vec::new()),
                loss: Wide::default(),
                bound: Bound::default(),
                rows: 0,
                reduced: Scalars::default(),
                failure: None,
            })
            .collect()
    }

    /// A round is taken as complete before the frontier only with exactly
    /// one message per owned shard from every worker.
    #[test]
    fn a_round_is_complete_with_each_workers_message_for_each_owned_shard() {
        let owned = [1, 3];
        assert!(every_worker_once(&of(&[3, 1, 1, 3]), &owned, 2));
        assert!(every_worker_once(&of(&[1, 3]), &owned, 1));
        for shards in [
            &[1, 3, 1][..],
            &[1, 1, 1, 3],
            &[1, 3, 3, 5],
            &[1, 3, 1, 3, 1],
        ] {
            assert!(!every_worker_once(&of(shards), &owned, 2), "{shards:?}");
        }
        assert!(!every_worker_once(&of(&[]), &[], 2));
    }
}
