//! The fold operator: shard owners sum gradient partials exactly, apply the
//! optimizer step and emit the next round's parameters into the feedback.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::channels::pact::{Exchange, Pipeline as Local};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Stream, StreamVec};

use super::{owner, Control, Failure, GradMsg, ParamMsg};
use crate::exact::Exact;
use crate::strategy::driver::Driver;

/// Extension trait: fold gradients into sharded parameters.
pub trait FoldShards<'scope> {
    /// Routes each [`GradMsg`] to its shard's owner, waits until a round is
    /// complete (the frontier has passed it, on gradients and control), then
    /// lets the [`Driver`] step and emits the [`ParamMsg`]s it releases, each
    /// at the delay the driver asks for.
    fn fold_shards(
        self,
        control: StreamVec<'scope, u64, Control>,
        driver: Driver,
        failure: Rc<RefCell<Option<Failure>>>,
    ) -> StreamVec<'scope, u64, ParamMsg>;
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
        mut driver: Driver,
        failure: Rc<RefCell<Option<Failure>>>,
    ) -> StreamVec<'scope, u64, ParamMsg> {
        let peers = self.scope().peers();
        let route = Exchange::new(move |m: &GradMsg| owner(m.shard, peers) as u64);
        self.binary_frontier(control, route, Local, "FoldShards", move |cap0, _info| {
            let mut start = Some(cap0);
            let mut rounds: BTreeMap<u64, Round> = BTreeMap::new();
            let mut stopped = false;
            move |(grads, f1), (controls, f2), output| {
                if let Some(cap) = start.take() {
                    for (delay, msg) in driver.start() {
                        output
                            .session(&cap.delayed(&(*cap.time() + delay)))
                            .give(msg);
                    }
                }
                grads.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(output.output_index()) {
                        let r = rounds.entry(*cap.time()).or_default();
                        r.grads.append(data);
                        r.cap.get_or_insert(cap);
                    }
                });
                controls.for_each(|cap, data| {
                    if let Some(cap) = cap.retain_least(output.output_index()) {
                        let r = rounds.entry(*cap.time()).or_default();
                        r.control.append(data);
                        r.cap.get_or_insert(cap);
                    }
                });
                while let Some((&t, _)) = rounds.first_key_value() {
                    if f1.frontier().less_equal(&t) || f2.frontier().less_equal(&t) {
                        break;
                    }
                    let Some((_, round)) = rounds.pop_first() else {
                        break;
                    };
                    let Some(cap) = round.cap else { continue };
                    if stopped {
                        continue;
                    }
                    let failed = round
                        .grads
                        .iter()
                        .find_map(|g| g.failure.clone())
                        .or_else(|| round.control.iter().find_map(|c| c.failure.clone()));
                    if let Some(f) = failed {
                        failure.borrow_mut().get_or_insert(f);
                        stopped = true;
                        continue;
                    }
                    let next = if !round.grads.is_empty() {
                        let mut sums: BTreeMap<u32, Vec<Exact>> = BTreeMap::new();
                        let mut loss: BTreeMap<u32, Exact> = BTreeMap::new();
                        let mut rows: BTreeMap<u32, u64> = BTreeMap::new();
                        for g in round.grads {
                            *loss.entry(g.shard).or_default() += g.loss;
                            *rows.entry(g.shard).or_default() += g.rows;
                            let acc = sums
                                .entry(g.shard)
                                .or_insert_with(|| vec![Exact::default(); g.values.len()]);
                            g.values.add_into(acc);
                        }
                        let total_loss = loss.values().next().copied().unwrap_or_default().to_f64();
                        let total_rows = rows.values().next().copied().unwrap_or(0);
                        let sums: BTreeMap<u32, Vec<f64>> = sums
                            .into_iter()
                            .map(|(k, v)| (k, v.into_iter().map(Exact::to_f64).collect()))
                            .collect();
                        match driver.on_gradients(&sums, total_loss, total_rows) {
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
                    for (delay, msg) in next {
                        output.session(&cap.delayed(&(t + delay))).give(msg);
                    }
                }
            }
        })
    }
}
