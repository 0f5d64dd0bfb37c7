//! Progress lines inside an epoch: every few seconds, worker 0's owner
//! logs where training is (epoch, step), how fast it goes (rows/s), the
//! running training loss of the epoch and the time left, so that a long
//! epoch is never silent. The epoch's own line comes from the collector.
//!
//! The interval is 10 s, or `TIDEMILL_PROGRESS_EVERY` seconds (0: every
//! round). Progress is read from a clock and only logged: it never changes
//! what is trained.

use std::time::{Duration, Instant};

/// Seconds between progress lines unless `TIDEMILL_PROGRESS_EVERY` says.
const DEFAULT_EVERY: f64 = 10.0;

/// Where a run is, for one progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// The epoch under way (1-based) and the run's epochs.
    pub epoch: u32,
    /// Of `epochs`.
    pub epochs: u32,
    /// Steps done in this epoch, of `steps_per_epoch`.
    pub step: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Rows trained in this epoch so far.
    pub rows: u64,
    /// Their summed loss.
    pub loss: f64,
}

/// The clock of a run's progress lines.
#[derive(Debug, Clone)]
pub struct Progress {
    every: Duration,
    started: Instant,
    epoch_started: Instant,
    last: Instant,
    /// Steps taken since this process started counting (a resumed run
    /// starts inside the run).
    timed: u64,
}

impl Default for Progress {
    fn default() -> Progress {
        let every = std::env::var("TIDEMILL_PROGRESS_EVERY")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(DEFAULT_EVERY);
        let now = Instant::now();
        Progress {
            every: Duration::from_secs_f64(every.min(1e6)),
            started: now,
            epoch_started: now,
            last: now,
            timed: 0,
        }
    }
}

impl Progress {
    /// A new epoch starts now.
    pub fn epoch_started(&mut self) {
        self.epoch_started = Instant::now();
    }

    /// After a round of `k` steps that ended at `at`: logs a line if the
    /// interval has passed.
    pub fn round(&mut self, at: Position, k: u64) {
        let now = Instant::now();
        self.timed += k;
        let done = u64::from(at.epoch.saturating_sub(1)) * at.steps_per_epoch + at.step;
        if now.duration_since(self.last) < self.every {
            return;
        }
        self.last = now;
        let epoch_s = now.duration_since(self.epoch_started).as_secs_f64();
        let run_s = now.duration_since(self.started).as_secs_f64();
        let total = u64::from(at.epochs) * at.steps_per_epoch;
        let eta = eta_seconds(self.timed, run_s, total.saturating_sub(done));
        tracing::info!(
            epoch = at.epoch,
            epochs = at.epochs,
            step = at.step,
            steps = at.steps_per_epoch,
            rows_per_s = (at.rows as f64 / epoch_s.max(1e-9)).round(),
            train_loss = at.loss / at.rows.max(1) as f64,
            eta_s = eta.map(f64::round),
            "progress"
        );
    }
}

/// Seconds left for `left` steps at the pace of `done` steps in
/// `seconds`; `None` before any step is timed. An upper bound where early
/// stopping or convergence ends the run sooner.
pub fn eta_seconds(done: u64, seconds: f64, left: u64) -> Option<f64> {
    (done > 0 && seconds > 0.0).then(|| seconds / done as f64 * left as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_the_pace_so_far_times_the_steps_left() {
        assert_eq!(eta_seconds(10, 5.0, 30), Some(15.0));
        assert_eq!(eta_seconds(0, 5.0, 30), None);
        assert_eq!(eta_seconds(10, 5.0, 0), Some(0.0));
    }
}
