//! The differential dataflow that maintains an exact model's collections.
//!
//! Four input collections, each changing at the times of the outer
//! timestamp (`u64`):
//!
//! - `keys`: `(key id, where the row came from)`, one per inserted row;
//! - `inserted`: the statistics of inserted rows as [`Normal`] differences
//!   on the one record `()`. The statistics are a linear image of the rows
//!   (each row's terms, summed), so a worker adds its rows' terms up before
//!   entering them — the difference differential would accumulate for them
//!   record by record, with one update per batch of rows instead of one per
//!   row;
//! - `rows`: rows with their values, where a retraction may need them;
//! - `forgotten`: the keys asked to be forgotten.
//!
//! and four derived ones, read back per time:
//!
//! - `stats = inserted − Σ terms(rows ⋉ distinct(forgotten))`, consolidated:
//!   the statistics of the rows present;
//! - `repeated`: keys that occur more than once (`count > 1`), with where;
//! - `unknown = forgotten ▷ keys`: keys to forget that were never inserted;
//! - `again`: keys forgotten more than once (`count > 1`).
//!
//! Differences are exact integers ([`Normal`] is an Abelian group of
//! wrapping sums), so inserting and then retracting a row leaves the bits
//! of never inserting it, on any number of workers and processes.

use std::cell::RefCell;
use std::rc::Rc;

use differential_dataflow::difference::{Abelian, IsZero, Semigroup};
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::ProbeHandle;

use super::normal::{KeyDigest, Normal};

/// Where an inserted row came from: `(unit, row of its file)`.
pub type RowRef = (u32, u64);

/// A row's values as the collections hold them (`f64` bits: records must
/// be `Ord`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RowVals {
    /// The key's digest.
    pub digest: KeyDigest,
    /// Feature bits.
    pub x: Vec<u64>,
    /// Label bits (least squares).
    pub y: u64,
    /// The class (naive Bayes): `Some` makes the row's statistics per
    /// class ([`Normal::add_class_row`]).
    pub class: Option<String>,
    /// Hashed slots of its tokens (naive Bayes).
    pub slots: Vec<u32>,
}

impl RowVals {
    /// From values (least squares).
    pub fn new(digest: KeyDigest, x: &[f64], y: f64) -> RowVals {
        RowVals {
            digest,
            x: x.iter().map(|v| v.to_bits()).collect(),
            y: y.to_bits(),
            class: None,
            slots: Vec::new(),
        }
    }

    /// From values (naive Bayes).
    pub fn of_class(digest: KeyDigest, x: &[f64], class: String, slots: Vec<u32>) -> RowVals {
        RowVals {
            digest,
            x: x.iter().map(|v| v.to_bits()).collect(),
            y: 0,
            class: Some(class),
            slots,
        }
    }

    /// The row's statistics. Its values were accepted when it was
    /// inserted, so they fit; a row that does not yields no terms and the
    /// bound check of the sums catches it.
    pub fn normal(&self) -> Normal {
        let x: Vec<f64> = self.x.iter().map(|&b| f64::from_bits(b)).collect();
        match &self.class {
            Some(class) => {
                let mut n = Normal::default();
                let _ = n.add_class_row(&self.digest, &x, class, &self.slots);
                n
            }
            None => {
                let mut n = Normal::zero_of(x.len());
                let _ = n.add_row(&self.digest, &x, f64::from_bits(self.y));
                n
            }
        }
    }
}

/// What one worker enters at one time.
#[derive(Debug, Default)]
pub struct Changes {
    /// Inserted rows' keys.
    pub keys: Vec<(u128, RowRef)>,
    /// Inserted rows' statistics (any grouping of the rows).
    pub inserted: Vec<Normal>,
    /// Rows (with values) that may be retracted.
    pub rows: Vec<(u128, RowVals)>,
    /// Keys forgotten.
    pub forgotten: Vec<u128>,
    /// This worker failed (an error in its wire form, JSON): every worker
    /// learns it, so that no process finishes with a model that lacks a
    /// failed worker's rows.
    pub failed: Option<String>,
    /// Rows leaving directly (a window): retracted from `keys` and
    /// `inserted`, and from `rows` too if `expire_rows` (where they were
    /// entered there).
    pub expired: Vec<(u128, RowRef, RowVals)>,
    /// Whether the expired rows were entered in `rows`.
    pub expire_rows: bool,
    /// Whether the expired rows' keys were entered in `keys`.
    pub expire_keys: bool,
    /// This is the last time (a stream's leader says so, and the other
    /// workers, which enter nothing, learn it).
    pub end: bool,
    /// A signal asked this worker's process to stop (a stream stops at
    /// its next batch end; every worker learns it).
    pub stop: bool,
}

/// A worker's error in the form the `failed` collection carries it.
pub fn encode_failure(e: &crate::error::Error) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| e.to_string())
}

/// The error of the first failed worker in `seen`, if any.
pub fn first_failure(seen: &Seen) -> Option<crate::error::Error> {
    seen.failed.first().map(|(w, e)| {
        serde_json::from_str(e).unwrap_or_else(|_| crate::error::Error::Worker {
            worker: *w,
            message: e.clone(),
        })
    })
}

/// What one worker saw come out at one time.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The change of the statistics of the rows present.
    pub stats: Normal,
    /// Keys occurring more than once, with where (all their occurrences
    /// that this worker holds).
    pub repeated: Vec<(u128, RowRef)>,
    /// Keys to forget that are not present: `+1` when one is asked for
    /// (or its row leaves while the request stands), `−1` when its row
    /// arrives after all.
    pub unknown: Vec<(u128, isize)>,
    /// Keys forgotten more than once.
    pub again: Vec<u128>,
    /// Failures of any worker: `(worker, error as JSON)`.
    pub failed: Vec<(usize, String)>,
    /// Some worker said this is the last time.
    pub end: bool,
    /// Some worker's process was asked to stop.
    pub stop: bool,
    /// Every input of every worker is closed (a worker is gone): nothing
    /// more will come.
    pub closed: bool,
}

type Sink<T> = Rc<RefCell<Vec<(u64, T)>>>;

/// The input sessions of the collections, and what has come out of them.
pub struct Collections {
    keys_in: InputSession<u64, (u128, RowRef), isize>,
    inserted_in: InputSession<u64, (), Normal>,
    rows_in: InputSession<u64, (u128, RowVals), isize>,
    forgotten_in: InputSession<u64, u128, isize>,
    failed_in: InputSession<u64, (usize, String), isize>,
    failed: Sink<(usize, String)>,
    /// `true`: the end; `false`: a stop request.
    end_in: InputSession<u64, bool, isize>,
    ended: Sink<bool>,
    index: usize,
    probe: ProbeHandle<u64>,
    stats: Sink<Normal>,
    repeated: Sink<(u128, RowRef)>,
    unknown: Sink<(u128, isize)>,
    again: Sink<u128>,
    time: u64,
}

impl Collections {
    /// Builds the dataflow on `worker` (every worker builds it).
    pub fn new(worker: &mut timely::worker::Worker) -> Collections {
        let stats: Sink<Normal> = Rc::default();
        let repeated: Sink<(u128, RowRef)> = Rc::default();
        let unknown: Sink<(u128, isize)> = Rc::default();
        let again: Sink<u128> = Rc::default();
        let failed: Sink<(usize, String)> = Rc::default();
        let f = Rc::clone(&failed);
        let ended: Sink<bool> = Rc::default();
        let e = Rc::clone(&ended);
        let probe = ProbeHandle::new();
        let (s, r, u, a) = (
            Rc::clone(&stats),
            Rc::clone(&repeated),
            Rc::clone(&unknown),
            Rc::clone(&again),
        );
        let index = worker.index();
        let (keys_in, inserted_in, rows_in, forgotten_in, failed_in, end_in) = worker
            .dataflow::<u64, _, _>(|scope| {
                let (keys_in, keys) = scope.new_collection::<(u128, RowRef), isize>();
                let (inserted_in, inserted) = scope.new_collection::<(), Normal>();
                let (rows_in, rows) = scope.new_collection::<(u128, RowVals), isize>();
                let (forgotten_in, forgotten) = scope.new_collection::<u128, isize>();
                let (failed_in, failures) = scope.new_collection::<(usize, String), isize>();
                let (end_in, end) = scope.new_collection::<bool, isize>();
                end.inner
                    .broadcast()
                    .inspect(move |(v, t, d): &(bool, u64, isize)| {
                        if *d > 0 {
                            e.borrow_mut().push((*t, *v));
                        }
                    })
                    .probe_with(&probe);
                failures
                    .inner
                    .broadcast()
                    .inspect(move |(w, t, d): &((usize, String), u64, isize)| {
                        if *d > 0 {
                            f.borrow_mut().push((*t, w.clone()));
                        }
                    })
                    .probe_with(&probe);

                // The keys are arranged once; the repeated-key check and
                // the membership of forgotten keys both read that one
                // arrangement (the largest: one record per row present).
                let keys = keys.arrange_by_key();
                let repeated = keys
                    .clone()
                    .reduce_abelian::<_, ValBuilder<u128, RowRef, u64, isize>, ValSpine<u128, RowRef, u64, isize>, _, _>(
                        "Repeated",
                        |_k, input, output| {
                            let n: isize = input.iter().map(|(_, d)| *d).sum();
                            if n > 1 {
                                output.extend(input.iter().map(|(at, d)| (**at, *d)));
                            }
                        },
                        |vec, key, upds| {
                            vec.clear();
                            vec.extend(upds.drain(..).map(|(v, t, r)| ((*key, v), t, r)));
                        },
                    )
                    .as_collection(|k, v| (*k, *v));
                // Every output is broadcast: every worker (and so every
                // process) learns the same answers and fails or commits alike.
                // Consolidated before being read: a difference of two
                // streams' updates cancels only there.
                repeated
                    .consolidate()
                    .inner
                    .broadcast()
                    .inspect(move |((k, at), t, d): &((u128, RowRef), u64, isize)| {
                        if *d > 0 {
                            r.borrow_mut().push((*t, (*k, *at)));
                        }
                    })
                    .probe_with(&probe);

                let asked = forgotten.clone().distinct();
                let present = asked
                    .clone()
                    .map(|k| (k, ()))
                    .arrange_by_key()
                    .join_core(keys, |k, _, _| Some(*k))
                    .distinct();
                asked
                    .clone()
                    .concat(present.negate())
                    .consolidate()
                    .inner
                    .broadcast()
                    .inspect(move |(k, t, d): &(u128, u64, isize)| {
                        u.borrow_mut().push((*t, (*k, *d)));
                    })
                    .probe_with(&probe);

                forgotten
                    .count()
                    .filter(|(_, c)| *c > 1)
                    .consolidate()
                    .inner
                    .broadcast()
                    .inspect(move |((k, _), t, d): &((u128, isize), u64, isize)| {
                        if *d > 0 {
                            a.borrow_mut().push((*t, *k));
                        }
                    })
                    .probe_with(&probe);

                let retracted = rows
                    .semijoin(asked)
                    .explode(|(_, vals)| Some(((), vals.normal())))
                    .negate();
                inserted
                    .concat(retracted)
                    .consolidate()
                    .inner
                    .broadcast()
                    .inspect(move |((), t, d): &((), u64, Normal)| {
                        s.borrow_mut().push((*t, d.clone()))
                    })
                    .probe_with(&probe);

                (
                    keys_in,
                    inserted_in,
                    rows_in,
                    forgotten_in,
                    failed_in,
                    end_in,
                )
            });
        Collections {
            keys_in,
            inserted_in,
            rows_in,
            forgotten_in,
            failed_in,
            failed,
            end_in,
            ended,
            index,
            probe,
            stats,
            repeated,
            unknown,
            again,
            time: 0,
        }
    }

    /// The time the next [`Collections::step`] enters its changes at.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Enters this worker's `changes` at the current time, closes it on
    /// every input, runs the dataflow until every worker's outputs for it
    /// are complete, and returns them.
    pub fn step(&mut self, worker: &mut timely::worker::Worker, changes: Changes) -> Seen {
        let t = self.time;
        for k in changes.keys {
            self.keys_in.update(k, 1);
        }
        for n in changes.inserted {
            self.inserted_in.update((), n);
        }
        for row in changes.rows {
            self.rows_in.update(row, 1);
        }
        for k in changes.forgotten {
            self.forgotten_in.update(k, 1);
        }
        if let Some(e) = changes.failed {
            self.failed_in.update((self.index, e), 1);
        }
        // The rows leaving enter as one difference of their statistics.
        let mut leaving = Normal::default();
        for (k, at, vals) in changes.expired {
            if changes.expire_keys {
                self.keys_in.update((k, at), -1);
            }
            leaving.plus_equals(&vals.normal());
            if changes.expire_rows {
                self.rows_in.update((k, vals), -1);
            }
        }
        if !leaving.is_zero() {
            leaving.negate();
            self.inserted_in.update((), leaving);
        }
        if changes.end {
            self.end_in.update(true, 1);
        }
        if changes.stop {
            self.end_in.update(false, 1);
        }
        self.time = t + 1;
        self.keys_in.advance_to(t + 1);
        self.inserted_in.advance_to(t + 1);
        self.rows_in.advance_to(t + 1);
        self.forgotten_in.advance_to(t + 1);
        self.failed_in.advance_to(t + 1);
        self.end_in.advance_to(t + 1);
        self.keys_in.flush();
        self.inserted_in.flush();
        self.rows_in.flush();
        self.forgotten_in.flush();
        self.failed_in.flush();
        self.end_in.flush();
        // Parks between events: a worker waiting on a live source's
        // leader does not spin.
        while self.probe.less_than(&(t + 1)) {
            worker.step_or_park(Some(std::time::Duration::from_millis(50)));
        }
        let mut seen = Seen {
            closed: self.probe.done(),
            ..Seen::default()
        };
        for (_, n) in self.stats.borrow_mut().drain(..) {
            // One consolidated update per time; added in case of parts.
            seen.stats.plus_equals(&n);
        }
        seen.repeated = self
            .repeated
            .borrow_mut()
            .drain(..)
            .map(|(_, k)| k)
            .collect();
        seen.unknown = self
            .unknown
            .borrow_mut()
            .drain(..)
            .map(|(_, k)| k)
            .collect();
        seen.again = self.again.borrow_mut().drain(..).map(|(_, k)| k).collect();
        seen.failed = self.failed.borrow_mut().drain(..).map(|(_, k)| k).collect();
        seen.failed.sort();
        for (_, end) in self.ended.borrow_mut().drain(..) {
            if end {
                seen.end = true;
            } else {
                seen.stop = true;
            }
        }
        seen
    }
}

/// Runs the collections over `times` (one [`Changes`] per time, this
/// worker's share) and returns, per time, what came out on this worker.
pub fn run(worker: &mut timely::worker::Worker, times: Vec<Changes>) -> Vec<Seen> {
    let mut c = Collections::new(worker);
    times.into_iter().map(|ch| c.step(worker, ch)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::difference::IsZero;
    use proptest::prelude::*;

    #[test]
    fn forgetting_present_and_absent_keys() {
        let seen = timely::execute_directly(|worker| {
            let row = RowVals::new(KeyDigest::of("a"), &[1.0], 2.0);
            let before = Changes {
                keys: vec![(1, (0, 0))],
                rows: vec![(1, row)],
                ..Changes::default()
            };
            let now = Changes {
                forgotten: vec![1, 2],
                ..Changes::default()
            };
            run(worker, vec![before, now])
        });
        assert_eq!(seen[1].unknown, vec![(2, 1)]);
        assert!(seen[1].again.is_empty());
        assert_eq!(seen[1].stats.rows, -1);
    }

    /// One step of a random history: rows to insert (`(key, x, y)`), and
    /// which of the rows present before it to forget.
    type Step = (Vec<(Vec<f64>, f64)>, Vec<prop::sample::Index>);
    /// A keyed row of the oracle.
    type Row = (String, Vec<f64>, f64);

    /// Replays `history` on `workers` workers (worker `w` enters the rows
    /// and requests whose position is `w` modulo the workers) and checks,
    /// after every time, the maintained statistics against the statistics
    /// of the rows present computed from scratch — bit for bit.
    fn replay(history: Vec<Step>, workers: usize, bayes: bool) -> Result<(), TestCaseError> {
        // The oracle: the rows present after each time, from scratch.
        let mut present: Vec<(String, Vec<f64>, f64)> = Vec::new();
        let mut next_key = 0;
        let mut plan: Vec<(Vec<Row>, Vec<String>)> = Vec::new();
        let mut expect = Vec::new();
        for (inserts, forgets) in history {
            let mut gone = Vec::new();
            for ix in forgets {
                if present.is_empty() {
                    break;
                }
                let i = ix.index(present.len());
                gone.push(present.remove(i).0);
            }
            let new: Vec<(String, Vec<f64>, f64)> = inserts
                .into_iter()
                .map(|(x, y)| {
                    next_key += 1;
                    (format!("key-{next_key}"), x, y)
                })
                .collect();
            present.extend(new.iter().cloned());
            let mut scratch = Normal::default();
            // A different order than the stream's: the sums may not care.
            for (k, x, y) in present.iter().rev() {
                scratch.plus_equals(&row_vals(bayes, KeyDigest::of(k), x, *y).normal());
            }
            expect.push(scratch);
            plan.push((new, gone));
        }
        let plan = std::sync::Arc::new(plan);
        let config = timely::Config::process(workers);
        let guards = timely::execute(config, move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let mut c = Collections::new(worker);
            let mut totals = Vec::new();
            let mut total = Normal::default();
            for (new, gone) in plan.iter() {
                let mut changes = Changes::default();
                for (i, (k, x, y)) in new.iter().enumerate().filter(|(i, _)| i % peers == index) {
                    let d = KeyDigest::of(k);
                    let vals = row_vals(bayes, d, x, *y);
                    let mut n = Normal::default();
                    match &vals.class {
                        Some(c) => n.add_class_row(&d, x, c, &vals.slots),
                        None => n.add_row(&d, x, *y),
                    }
                    .expect("fits");
                    changes.inserted.push(n);
                    changes.keys.push((d.id(), (0, i as u64)));
                    changes.rows.push((d.id(), vals));
                }
                for (i, k) in gone.iter().enumerate() {
                    if i % peers == index {
                        changes.forgotten.push(KeyDigest::of(k).id());
                    }
                }
                let seen = c.step(worker, changes);
                assert!(
                    seen.unknown.is_empty() && seen.again.is_empty() && seen.repeated.is_empty()
                );
                total.plus_equals(&seen.stats);
                totals.push(total.clone());
            }
            totals
        })
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for totals in guards.join() {
            let totals = totals.map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (t, (got, want)) in totals.iter().zip(&expect).enumerate() {
                if want.rows == 0 {
                    prop_assert!(got.is_zero(), "time {t}: {got:?}");
                } else {
                    prop_assert_eq!(got, want, "time {}", t);
                }
            }
        }
        Ok(())
    }

    /// A row of the history: least squares, or (naive Bayes) of one of
    /// three classes with a token slot drawn from its values.
    fn row_vals(bayes: bool, d: KeyDigest, x: &[f64], y: f64) -> RowVals {
        if bayes {
            let class = format!("c{}", (y.abs() as i64) % 3);
            let slots = vec![(x[0].abs() as u32) % 5, (x[1].abs() as u32) % 3];
            RowVals::of_class(d, x, class, slots)
        } else {
            RowVals::new(d, x, y)
        }
    }

    fn history() -> impl Strategy<Value = Vec<Step>> {
        let row = (prop::collection::vec(-1e4f64..1e4, 3), -1e3f64..1e3);
        prop::collection::vec(
            (
                prop::collection::vec(row, 0..12),
                prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ),
            1..8,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The maintained statistics equal those of the rows present,
        /// computed from scratch, after every time of a random history of
        /// insertions and retractions, on 1 and 3 workers.
        #[test]
        fn maintained_equals_from_scratch(h in history()) {
            replay(h.clone(), 1, false)?;
            replay(h, 3, false)?;
        }

        /// The same for the per-class sums of naive Bayes (classes that
        /// come and go, token counts).
        #[test]
        fn maintained_class_sums_equal_from_scratch(h in history()) {
            replay(h.clone(), 1, true)?;
            replay(h, 3, true)?;
        }
    }
}
