//! `train --max-restarts R`: the `tidemill` process becomes a supervisor.
//! It runs the same command as a child process (the same executable and
//! arguments, less the supervisor's own flags, with stdin, stdout and
//! stderr inherited) and restarts it with `--resume` after a failure a
//! rerun may get past, at most R times, waiting longer before each restart.
//!
//! | the child | the supervisor |
//! |---|---|
//! | exits 0 | exits 0 |
//! | exits 1, 3 or 7 (a bug, I/O, the cluster), or is killed by a signal it does not handle (SIGKILL, SIGSEGV, …) | restarts it, or exits with its code once the restarts are used up |
//! | exits 2, 4, 5 or 6 (usage, data, model file, diverged) | exits with its code: a rerun would fail the same way |
//! | exits 128 + N after SIGINT, SIGTERM or SIGHUP | exits with its code: the job was interrupted |
//!
//! SIGINT, SIGTERM and SIGHUP sent to the supervisor are passed on to the
//! child ([`crate::io::signals::spawn_child`]); the supervisor then waits
//! for it and exits with 128 + N, restarting nothing.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::TrainArgs;
use crate::checkpoint::store::Store;
use crate::error::{Error, Result};
use crate::io::signals;
use crate::spec::Pipeline;

/// The longest wait before a restart, and the largest `--restart-backoff`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The flags of the supervisor that its child must not get (each takes a
/// value).
const SUPERVISOR_FLAGS: [&str; 2] = ["--max-restarts", "--restart-backoff"];

/// Runs the job of `a` under supervision (`a.max_restarts` > 0); returns
/// when a child succeeds, or with an [`Error::Supervised`] carrying the
/// exit code of the last one.
pub fn run(a: &TrainArgs) -> Result<()> {
    let backoff = super::seconds("--restart-backoff", a.restart_backoff, MAX_BACKOFF)?;
    let pipeline = Pipeline::load(&a.pipeline, &a.overrides)?;
    if super::reads_stdin(&pipeline) {
        return Err(Error::Usage {
            option: "--max-restarts".into(),
            message: "data.train reads stdin ('-'), which a restarted job cannot read again: give the data as a file".into(),
        });
    }
    let Some(checkpoint) = pipeline.output.checkpoint else {
        return Err(Error::Usage {
            option: "--max-restarts".into(),
            message: "a restart continues from the job's newest checkpoint, and the pipeline takes none: set output.checkpoint = \"DIR\" in [output] (or --set output.checkpoint=\"DIR\")".into(),
        });
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("the tidemill executable", e))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let max = a.max_restarts;
    let mut restarts = 0;
    loop {
        let mut command = Command::new(&exe);
        command.args(child_args(&args, restarts > 0));
        let mut child = signals::spawn_child(&mut command).map_err(|e| Error::io(&exe, e))?;
        let pid = child.id();
        tracing::info!(pid, attempt = restarts + 1, "job started");
        let status = child.wait();
        let forwarded = signals::child_reaped();
        let ended = Ended::of(status.map_err(|e| Error::io(&exe, e))?);
        let fail = |message: String| Error::Supervised {
            message,
            code: ended.code(),
        };
        if let Some(signal) = forwarded {
            return Err(Error::Supervised {
                message: format!(
                    "interrupted by {}: passed it on to the job (pid {pid}), which {ended}; not restarted",
                    signal_name(signal)
                ),
                code: u8::try_from(128 + signal).unwrap_or(u8::MAX),
            });
        }
        match ended.retry() {
            Retry::Done => return Ok(()),
            Retry::No(why) => return Err(fail(format!("the job {ended}: {why}; not restarted"))),
            Retry::Yes if restarts == max => {
                return Err(fail(format!(
                    "restarts are exhausted ({max} of {max} used): the job {ended}"
                )))
            }
            Retry::Yes => {}
        }
        restarts += 1;
        let wait = delay(backoff, restarts);
        tracing::warn!(
            backoff_s = wait.as_secs_f64(),
            "restarting ({restarts}/{max}) after the job {ended}: resuming from {}",
            newest(&checkpoint.dir)
        );
        std::thread::sleep(wait);
    }
}

/// The arguments of a child: `args` (the supervisor's, without the program
/// name) less the supervisor's flags, and with `--resume` once if `resume`.
/// Everything after `--` is left as it is.
fn child_args(args: &[OsString], resume: bool) -> Vec<OsString> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (flags, rest) = args.split_at(end);
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut tokens = flags.iter();
    while let Some(arg) = tokens.next() {
        let text = arg.to_str().unwrap_or("");
        if SUPERVISOR_FLAGS.contains(&text) {
            tokens.next(); // its value
        } else if !SUPERVISOR_FLAGS
            .iter()
            .any(|f| text.strip_prefix(f).is_some_and(|v| v.starts_with('=')))
        {
            out.push(arg.clone());
        }
    }
    if resume && !flags.iter().any(|a| a == "--resume") {
        out.push("--resume".into());
    }
    out.extend_from_slice(rest);
    out
}

/// The wait before restart `n` (1-based): `base`, doubled for each restart
/// before it, at most [`MAX_BACKOFF`].
fn delay(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The newest checkpoint file in `dir`, or "the start" (the child's own
/// log names the one it resumes from, skipping one that is not whole).
fn newest(dir: &Path) -> String {
    let store = Store::at(dir);
    match store.list().ok().and_then(|l| l.last().copied()) {
        Some(seq) => store.path(seq).display().to_string(),
        None => "the start".into(),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal it did not handle ended it.
    Killed(i32),
}

/// Whether a child is restarted.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// It succeeded.
    Done,
    /// Yes: a rerun may get past the failure.
    Yes,
    /// No, for this reason.
    No(&'static str),
}

impl Ended {
    fn of(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Exited(code),
            (None, Some(signal)) => Ended::Killed(signal),
            // Neither: not on Unix.
            (None, None) => Ended::Exited(1),
        }
    }

    /// The exit code that reports it (128 + N for signal N).
    fn code(self) -> u8 {
        let code = match self {
            Ended::Exited(code) => code,
            Ended::Killed(signal) => 128 + signal,
        };
        u8::try_from(code).unwrap_or(1)
    }

    fn retry(self) -> Retry {
        match self {
            Ended::Exited(0) => Retry::Done,
            Ended::Exited(1 | 3 | 7) => Retry::Yes,
            Ended::Exited(2 | 4 | 5 | 6) => Retry::No("a rerun would fail the same way"),
            Ended::Exited(c) if c > 128 => Retry::No("it was interrupted"),
            Ended::Exited(_) => Retry::No("tidemill has no such exit code"),
            Ended::Killed(s) if [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(&s) => {
                Retry::No("it was interrupted")
            }
            Ended::Killed(_) => Retry::Yes,
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Exited(code) => {
                let meaning = match code {
                    0 => "success",
                    1 => "internal error",
                    2 => "usage or pipeline error",
                    3 => "I/O error",
                    4 => "bad input data",
                    5 => "bad model file",
                    6 => "training diverged",
                    7 => "cluster failure",
                    c if c > 128 => {
                        return write!(
                            f,
                            "exited with code {c} (interrupted by {})",
                            signal_name(c - 128)
                        )
                    }
                    _ => "unknown",
                };
                write!(f, "exited with code {code} ({meaning})")
            }
            Ended::Killed(signal) => write!(f, "was killed by {}", signal_name(signal)),
        }
    }
}

/// `SIGKILL`, or `signal N` for a number that names none.
fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_child_gets_no_supervisor_flags_and_resume_once() {
        let given = args(&[
            "--log",
            "info",
            "train",
            "p.toml",
            "--max-restarts",
            "3",
            "--set",
            "x=--max-restarts",
            "--restart-backoff=0.5",
            "--max-restarts=2",
            "--restart-backoff",
            "2",
        ]);
        let first = args(&[
            "--log",
            "info",
            "train",
            "p.toml",
            "--set",
            "x=--max-restarts",
        ]);
        assert_eq!(child_args(&given, false), first);
        let mut again = first.clone();
        again.push("--resume".into());
        assert_eq!(child_args(&given, true), again);
        let mut resumed = given.clone();
        resumed.push("--resume".into());
        assert_eq!(child_args(&resumed, true), again);
    }

    #[test]
    fn arguments_after_a_double_dash_stay_as_they_are() {
        let given = args(&["train", "--max-restarts", "1", "--", "--max-restarts"]);
        assert_eq!(
            child_args(&given, true),
            args(&["train", "--resume", "--", "--max-restarts"])
        );
    }

    #[test]
    fn the_backoff_doubles_up_to_a_minute() {
        let base = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=9).map(|n| delay(base, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(base, u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn what_is_restarted() {
        for code in [1, 3, 7] {
            assert_eq!(Ended::Exited(code).retry(), Retry::Yes);
        }
        for code in [2, 4, 5, 6, 130, 143] {
            assert!(matches!(Ended::Exited(code).retry(), Retry::No(_)));
        }
        assert_eq!(Ended::Exited(0).retry(), Retry::Done);
        assert_eq!(Ended::Killed(libc::SIGKILL).retry(), Retry::Yes);
        assert_eq!(Ended::Killed(libc::SIGSEGV).retry(), Retry::Yes);
        assert!(matches!(Ended::Killed(libc::SIGTERM).retry(), Retry::No(_)));
        assert_eq!(Ended::Killed(libc::SIGKILL).code(), 137);
        assert_eq!(
            Ended::Killed(libc::SIGKILL).to_string(),
            "was killed by SIGKILL"
        );
    }
}
