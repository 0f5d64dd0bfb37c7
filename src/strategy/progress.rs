//! Progress lines inside an epoch: every few seconds, worker 0's owner
//! logs where training is (epoch, step), how fast it goes (rows/s), the
//! running training loss of the epoch and the time left, so that a long
//! epoch is never silent. The epoch's own line comes from the collector.
//!
//! The interval is 10 s, or `TIDEMILL_PROGRESS_EVERY` seconds (0: every
//! round). Progress is read from a clock and only logged: it never changes
//! what is trained.
//!
//! On a terminal (the binary says so with [`allow_bar`]: stderr is one,
//! logs are text, and info lines are on) the lines give way to a bar
//! (indicatif) with the same figures, redrawn at most a few times a
//! second; log lines are written above it ([`StderrAboveBar`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress may be drawn as a bar ([`allow_bar`]).
static BAR_ALLOWED: AtomicBool = AtomicBool::new(false);

/// The bar on screen, if any: log lines are written above it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Lets progress be drawn as a bar on stderr instead of lines: for a
/// terminal with text logs at level info.
pub fn allow_bar(allowed: bool) {
    BAR_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// Calls `f` with the bar on screen hidden, if there is one.
fn above_bar<R>(f: impl FnOnce() -> R) -> R {
    let bar = BAR.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Standard error for log lines: each one written above the progress bar
/// (which is hidden, the line written, and the bar drawn again).
#[derive(Debug, Clone, Copy, Default)]
pub struct StderrAboveBar;

impl Write for StderrAboveBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        above_bar(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrAboveBar {
    type Writer = StderrAboveBar;

    fn make_writer(&'a self) -> StderrAboveBar {
        StderrAboveBar
    }
}

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
    /// The bar, once a round has drawn it.
    bar: Option<ProgressBar>,
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
            bar: None,
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
        let total = u64::from(at.epochs) * at.steps_per_epoch;
        if BAR_ALLOWED.load(Ordering::Relaxed) {
            let bar = self.bar.get_or_insert_with(|| new_bar(total));
            let epoch_s = now.duration_since(self.epoch_started).as_secs_f64();
            bar.set_position(done);
            bar.set_message(format!(
                "epoch {}/{} step {}/{} · loss {:.4} · {:.0} rows/s",
                at.epoch,
                at.epochs,
                at.step,
                at.steps_per_epoch,
                at.loss / at.rows.max(1) as f64,
                at.rows as f64 / epoch_s.max(1e-9)
            ));
            return;
        }
        if now.duration_since(self.last) < self.every {
            return;
        }
        self.last = now;
        let epoch_s = now.duration_since(self.epoch_started).as_secs_f64();
        let run_s = now.duration_since(self.started).as_secs_f64();
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

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut shown) = BAR.lock() {
                *shown = None;
            }
        }
    }
}

/// A bar of `total` steps on stderr, registered so that log lines go
/// above it.
fn new_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) =
        ProgressStyle::with_template("{bar:24.cyan/blue} {percent:>3}% {msg} · ETA {eta}")
    {
        bar.set_style(style.progress_chars("█▉░"));
    }
    if let Ok(mut shown) = BAR.lock() {
        *shown = Some(bar.clone());
    }
    bar
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
