//! Liveness: with several processes, every worker sends a heartbeat to
//! every other worker on timely's own channels, and a worker that hears
//! nothing from another for longer than `--peer-timeout` ends its process
//! as for a lost peer (exit code 7, nothing written).
//!
//! A peer process that dies closes its connections, and timely reports
//! that (the panic hook of `main.rs`). One that stops answering without
//! closing them (SIGSTOP, a network partition) would leave the others
//! waiting for ever; the heartbeat catches it.
//!
//! The heartbeat is a dataflow of its own, built first on every worker
//! ([`Heartbeat::start`]): an input into which the worker sends a beat to
//! every other worker each interval (a quarter of the timeout, at most a
//! second), and a sink that notes when each was last heard from. The loops
//! step their dataflows through [`run`], which parks at most until the next
//! beat is due, then checks the others and sends it. The statistics scan,
//! which reads its units before its dataflow runs, keeps the beat going
//! between windows ([`Heartbeat::keep_alive`]). A worker that is done says
//! goodbye (a last beat), so that its silence is not taken for a failure,
//! closes its input, and waits for the others' goodbyes, still watching
//! them ([`Heartbeat::finish`]).
//!
//! A worker beats only between operator invocations: one busy for longer
//! than the timeout inside a single invocation looks silent. Hence the
//! generous default (60 s). A single process needs none of this and builds
//! nothing ([`Watch::of`] is `None`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Input;
use timely::dataflow::InputHandleVec;
use timely::worker::Worker;

use crate::cluster::Cluster;
use crate::error::Error;

/// The shortest interval between beats, whatever the timeout.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest interval between beats.
const MAX_INTERVAL: Duration = Duration::from_secs(1);

/// What the heartbeat needs to know of the job.
#[derive(Debug, Clone)]
pub struct Watch {
    /// How long another worker may be silent.
    pub timeout: Duration,
    /// Worker threads per process: a worker's process is its index divided
    /// by this.
    pub workers: usize,
    /// The processes' addresses in process order (empty if unknown).
    pub addresses: Vec<String>,
}

impl Watch {
    /// The watch for a job on `cluster`; `None` for a single process.
    pub fn of(cluster: &Cluster) -> Option<Watch> {
        (cluster.processes > 1).then(|| Watch {
            timeout: cluster.peer_timeout,
            workers: cluster.workers,
            // Only to name a silent process: starting the job reports a
            // hostfile that cannot be read.
            addresses: cluster
                .addresses()
                .map(|a| a.into_iter().map(|a| a.text).collect())
                .unwrap_or_default(),
        })
    }

    /// Time between beats: a quarter of the timeout, within 10 ms and 1 s.
    fn interval(&self) -> Duration {
        (self.timeout / 4).clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// The error for worker `worker`, silent for `silent`.
    fn silent(&self, worker: usize, silent: Duration) -> Error {
        let process = worker / self.workers.max(1);
        let at = self
            .addresses
            .get(process)
            .map(|a| format!(" at {a}"))
            .unwrap_or_default();
        Error::Cluster(format!(
            "process {process}{at} stopped answering: nothing heard from it for {:.1} s (--peer-timeout {} s); the job was stopped and no output was written",
            silent.as_secs_f64(),
            self.timeout.as_secs_f64()
        ))
    }
}

/// A beat from worker `from` to worker `to`; the last one says goodbye.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Beat {
    to: u32,
    from: u32,
    goodbye: bool,
}

/// When this worker last heard from each of the others.
#[derive(Debug)]
struct Peers {
    /// Per worker, when it was last heard from; `None` for this worker and
    /// for workers that said goodbye.
    last: Vec<Option<Instant>>,
}

impl Peers {
    /// `peers` workers, this one `me`, all heard from at `now`.
    fn new(peers: usize, me: usize, now: Instant) -> Peers {
        Peers {
            last: (0..peers).map(|w| (w != me).then_some(now)).collect(),
        }
    }

    /// Worker `from` was heard from at `at`; a goodbye takes it off the watch.
    fn heard(&mut self, from: usize, at: Instant, goodbye: bool) {
        if let Some(slot) = self.last.get_mut(from) {
            match slot {
                _ if goodbye => *slot = None,
                Some(last) => *last = (*last).max(at),
                None => {}
            }
        }
    }

    /// The worker silent longest at `now`, and for how long, if that is
    /// more than `timeout`.
    fn silent(&self, now: Instant, timeout: Duration) -> Option<(usize, Duration)> {
        self.last
            .iter()
            .enumerate()
            .filter_map(|(w, last)| Some((w, now.saturating_duration_since((*last)?))))
            .filter(|&(_, silent)| silent > timeout)
            .max_by_key(|&(_, silent)| silent)
    }
}

/// One worker's heartbeat: its input into the heartbeat dataflow and what
/// it heard from the others. Dropped without [`Heartbeat::finish`] (a
/// worker returning an error), it still says goodbye.
pub struct Heartbeat {
    watch: Watch,
    index: usize,
    peers: usize,
    /// The heartbeat dataflow's number.
    dataflow: usize,
    /// `None` once closed.
    input: Option<InputHandleVec<u64, Beat>>,
    heard: Rc<RefCell<Peers>>,
    interval: Duration,
    /// When the next beat and check are due.
    due: Instant,
}

impl Heartbeat {
    /// Builds the heartbeat dataflow on `worker`. Every worker must call
    /// this at the same point among the dataflows it builds (first).
    pub fn start(worker: &mut Worker, watch: &Watch) -> Heartbeat {
        let index = worker.index();
        let peers = worker.peers();
        let now = Instant::now();
        let heard = Rc::new(RefCell::new(Peers::new(peers, index, now)));
        let sink = Rc::clone(&heard);
        let dataflow = worker.next_dataflow_index();
        let input = worker.dataflow::<u64, _, _>(move |scope| {
            let (input, beats) = scope.new_input::<Beat>();
            // The sink reads the channel itself: what arrived while this
            // worker was busy is taken in at its next step.
            beats.sink(
                Exchange::new(|b: &Beat| u64::from(b.to)),
                "Heartbeat",
                move |(input, _frontier)| {
                    let now = Instant::now();
                    let mut heard = sink.borrow_mut();
                    input.for_each(|_time, data| {
                        for b in data.drain(..) {
                            heard.heard(b.from as usize, now, b.goodbye);
                        }
                    });
                },
            );
            input
        });
        Heartbeat {
            interval: watch.interval(),
            watch: watch.clone(),
            index,
            peers,
            dataflow,
            input: Some(input),
            heard,
            due: now,
        }
    }

    /// Steps `worker` until its dataflow number `dataflow` has ended,
    /// beating and watching the others.
    fn run(&mut self, worker: &mut Worker, dataflow: usize) {
        while worker.installed_dataflows().contains(&dataflow) {
            worker.step_or_park(Some(self.due.saturating_duration_since(Instant::now())));
            self.pulse(worker);
        }
    }

    /// For a long stretch outside the loops (the scan's reads): when a beat
    /// is due, takes in the others', checks them and sends it. Cheap when
    /// none is due.
    pub fn keep_alive(&mut self, worker: &mut Worker) {
        if Instant::now() >= self.due {
            worker.step_or_park(Some(Duration::ZERO));
            self.pulse(worker);
        }
    }

    /// Says goodbye, closes this worker's input and waits for every other
    /// worker's goodbye (the heartbeat dataflow then ends), still watching
    /// those that have not said it.
    pub fn finish(mut self, worker: &mut Worker) {
        self.goodbye();
        let dataflow = self.dataflow;
        self.run(worker, dataflow);
    }

    /// When due: ends the process if another worker has been silent too
    /// long, else sends a beat and passes it on at once (a step).
    fn pulse(&mut self, worker: &mut Worker) {
        let now = Instant::now();
        if now < self.due {
            return;
        }
        self.due = now + self.interval;
        let silent = self.heard.borrow().silent(now, self.watch.timeout);
        if let Some((w, silent)) = silent {
            self.fail(w, silent);
        }
        if self.beat(false) {
            worker.step_or_park(Some(Duration::ZERO));
        }
    }

    /// Sends a beat to every other worker, unless the input is closed;
    /// true if it was sent.
    fn beat(&mut self, goodbye: bool) -> bool {
        let Some(input) = self.input.as_mut() else {
            return false;
        };
        let from = self.index as u32;
        for to in (0..self.peers as u32).filter(|&to| to != from) {
            input.send(Beat { to, from, goodbye });
        }
        // A new time flushes the beats to their channels.
        let next = input.time() + 1;
        input.advance_to(next);
        true
    }

    /// Sends the last beat and closes the input.
    fn goodbye(&mut self) {
        self.beat(true);
        self.input = None;
    }

    /// Ends the process as for a lost peer: worker `worker` has been silent
    /// for `silent`. Timely's orderly shutdown would wait for it for ever.
    fn fail(&self, worker: usize, silent: Duration) -> ! {
        let error = self.watch.silent(worker, silent);
        let hint = crate::checkpoint::hint::resume_hint();
        crate::io::signals::exit_now(i32::from(error.exit_code()), |_| format!("{error}{hint}"))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.goodbye();
    }
}

/// Steps `worker` until its dataflow number `dataflow` has ended. Without
/// a heartbeat (a single process, where that dataflow is the only one) the
/// worker parks until there is work, as timely's own loop does; with one
/// it parks at most until the next beat is due, and ends the process if
/// another worker has been silent longer than the timeout.
pub fn run(worker: &mut Worker, dataflow: usize, heartbeat: Option<&mut Heartbeat>) {
    match heartbeat {
        None => while worker.step_or_park(None) {},
        Some(heartbeat) => heartbeat.run(worker, dataflow),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_worker_silent_past_the_timeout_is_named() {
        let t0 = Instant::now();
        let mut peers = Peers::new(3, 0, t0);
        assert_eq!(peers.silent(t0 + 3 * SECOND, 3 * SECOND), None);
        peers.heard(2, t0 + 2 * SECOND, false);
        // Worker 1 is silent for 4 s, worker 2 for 2 s; worker 0 is this one.
        assert_eq!(
            peers.silent(t0 + 4 * SECOND, 3 * SECOND),
            Some((1, 4 * SECOND))
        );
        peers.heard(1, t0 + 4 * SECOND, false);
        assert_eq!(peers.silent(t0 + 4 * SECOND, 3 * SECOND), None);
        assert_eq!(
            peers.silent(t0 + 6 * SECOND, 3 * SECOND),
            Some((2, 4 * SECOND))
        );
    }

    #[test]
    fn a_goodbye_ends_the_watch_and_late_beats_do_not_rewind() {
        let t0 = Instant::now();
        let mut peers = Peers::new(2, 1, t0);
        peers.heard(0, t0 + 5 * SECOND, false);
        peers.heard(0, t0 + 2 * SECOND, false);
        assert_eq!(peers.silent(t0 + 7 * SECOND, SECOND), Some((0, 2 * SECOND)));
        peers.heard(0, t0 + 7 * SECOND, true);
        peers.heard(0, t0 + 8 * SECOND, false);
        assert_eq!(peers.silent(t0 + 100 * SECOND, SECOND), None);
        // Out of range (not a worker): ignored.
        peers.heard(7, t0, false);
    }

    #[test]
    fn names_the_process_and_its_address() {
        let watch = Watch {
            timeout: 3 * SECOND,
            workers: 2,
            addresses: vec!["127.0.0.1:2101".into(), "127.0.0.1:2102".into()],
        };
        let e = watch.silent(3, Duration::from_millis(3300)).to_string();
        assert_eq!(
            e,
            "cluster: process 1 at 127.0.0.1:2102 stopped answering: nothing heard from it for 3.3 s (--peer-timeout 3 s); the job was stopped and no output was written"
        );
        assert_eq!(watch.silent(3, SECOND).exit_code(), 7);
        assert_eq!(watch.interval(), Duration::from_millis(750));
        let long = Watch {
            timeout: 600 * SECOND,
            ..watch.clone()
        };
        assert_eq!(long.interval(), SECOND);
        let unknown = Watch {
            addresses: Vec::new(),
            ..watch
        };
        assert!(unknown
            .silent(2, 4 * SECOND)
            .to_string()
            .starts_with("cluster: process 1 stopped answering"));
    }
}
