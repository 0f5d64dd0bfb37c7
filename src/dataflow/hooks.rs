//! Test hooks, read once from the environment: slow one worker down, and
//! trace when every worker computes each training step. Both exist so tests
//! can watch bounded staleness from the outside; neither is needed to train.
//!
//! * `TIDEMILL_SLOW_WORKER=INDEX:MILLIS` — worker `INDEX` starts each
//!   training round `MILLIS` milliseconds after its parameters (under
//!   `model-parallel`: the round's margins) are ready. The wait does not
//!   block the worker's thread (it is a timely timed activation), so the
//!   worker keeps folding its own shards meanwhile: it models a worker whose
//!   compute is slow, not one whose shard service is.
//! * `TIDEMILL_TRACE_STEPS=PATH` — every worker appends one line per training
//!   step to `PATH`: `worker global_step start_ns end_ns` (Unix time).
//! * `TIDEMILL_INJECT_PANIC=worker` — worker 0 panics as training starts, so
//!   that a test can check what a bug looks like from outside (exit code 1,
//!   a message asking for a report, no output written).
//! * `TIDEMILL_INJECT_SILENCE=INDEX:ROUNDS` — worker `INDEX` stops after
//!   `ROUNDS` training rounds without sending its part or its failure: a
//!   bug, which the other workers must not train past.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The hooks that apply to one worker.
#[derive(Debug, Default)]
pub struct Hooks {
    index: usize,
    slow: Option<Duration>,
    trace: Option<PathBuf>,
    /// The round being held back and when it may start.
    held: Option<(u64, Instant)>,
    /// Training rounds before this worker falls silent.
    silent_after: Option<u64>,
    /// Training rounds so far.
    trained: u64,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Panics if `TIDEMILL_INJECT_PANIC` names `place` (see the module docs).
pub fn inject_panic(place: &str) {
    if std::env::var("TIDEMILL_INJECT_PANIC").is_ok_and(|v| v == place) {
        panic!("injected by TIDEMILL_INJECT_PANIC={place}");
    }
}

impl Hooks {
    /// Reads the hooks for worker `index`.
    pub fn from_env(index: usize) -> Hooks {
        let slow = std::env::var("TIDEMILL_SLOW_WORKER").ok().and_then(|v| {
            let (w, ms) = v.split_once(':')?;
            (w.trim().parse::<usize>().ok()? == index)
                .then(|| Duration::from_millis(ms.trim().parse().unwrap_or(0)))
        });
        let trace = std::env::var_os("TIDEMILL_TRACE_STEPS").map(PathBuf::from);
        let silent_after = std::env::var("TIDEMILL_INJECT_SILENCE").ok().and_then(|v| {
            let (w, rounds) = v.split_once(':')?;
            (w.trim().parse::<usize>().ok()? == index)
                .then(|| rounds.trim().parse().ok())
                .flatten()
        });
        Hooks {
            index,
            slow,
            trace,
            held: None,
            silent_after,
            trained: 0,
        }
    }

    /// Counts a training round; true once this worker is to fall silent.
    pub fn silenced(&mut self) -> bool {
        let Some(after) = self.silent_after else {
            return false;
        };
        self.trained += 1;
        self.trained > after
    }

    /// For a slowed worker: how much longer round `t` must wait (`None`
    /// once it may start).
    pub fn hold(&mut self, t: u64) -> Option<Duration> {
        let slow = self.slow?;
        let now = Instant::now();
        let until = match self.held {
            Some((held, until)) if held == t => until,
            _ => {
                let until = now + slow;
                self.held = Some((t, until));
                until
            }
        };
        (now < until).then(|| until - now)
    }

    /// Runs training step `global_step` (counted over all epochs) through the hooks.
    pub fn step<T>(&self, global_step: u64, f: impl FnOnce() -> T) -> T {
        let start = now_ns();
        let out = f();
        if let Some(path) = &self.trace {
            let line = format!("{} {} {} {}\n", self.index, global_step, start, now_ns());
            // One short O_APPEND write per line keeps lines whole across threads.
            if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
                let _ = file.write_all(line.as_bytes());
            }
        }
        out
    }
}
