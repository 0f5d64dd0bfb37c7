//! SIGINT, SIGTERM and SIGHUP: remove this process's temporary files, say
//! so in one line on stderr, and exit with 128 + the signal number (130,
//! 143, 129), as a shell reports a process killed by that signal.
//!
//! The handler waits for a commit in progress (see [`super::atomic`]), so a
//! signal never leaves a set of outputs half renamed. SIGKILL cannot be
//! caught: its temporary files are swept by the next run in the same
//! directory ([`super::sweep`]). A SIGHUP that was ignored when the process
//! started (`nohup`) stays ignored. [`exit_now`] ends the process the same
//! way for other causes.
//!
//! A supervisor (`train --max-restarts`) starts its child process through
//! [`spawn_child`]: a signal is then passed on to the child first, and the
//! supervisor, once it has reaped the child ([`child_reaped`] says which
//! signal was passed on), exits with 128 + that signal without restarting
//! it. Should the child not end within [`CHILD_GRACE`], the handler kills
//! it with SIGKILL and exits as above.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::temp;

/// How long a signal passed on to a supervised child waits for it to end
/// before the child is killed with SIGKILL.
/// Long enough for a job that stops at its next epoch boundary.
pub const CHILD_GRACE: Duration = Duration::from_secs(120);

/// A repeat of the signal that asked a job to stop, within this long of
/// it, is the same request arriving twice (a service manager signals every
/// process of a group, and a supervisor passes it on too), not a second one.
const REPEAT: Duration = Duration::from_secs(2);

/// A supervisor's running child and the signal passed on to it.
struct Supervised {
    /// The child's process id, while it runs.
    pid: Option<i32>,
    /// The signal passed on to it.
    forwarded: Option<i32>,
}

static SUPERVISED: Mutex<Supervised> = Mutex::new(Supervised {
    pid: None,
    forwarded: None,
});

fn supervised() -> MutexGuard<'static, Supervised> {
    SUPERVISED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `command` as the child a signal is passed on to. Starting and
/// registering it are one step for the handler: a signal that arrives
/// meanwhile reaches the child, never leaving it running on its own.
pub fn spawn_child(command: &mut Command) -> std::io::Result<Child> {
    let mut s = supervised();
    // Its own process group: a terminal's Ctrl-C reaches the supervisor
    // alone, which passes it on once (twice would stop the child at once
    // instead of at a checkpoint).
    command.process_group(0);
    let child = command.spawn()?;
    s.pid = i32::try_from(child.id()).ok();
    Ok(child)
}

/// Says that the child started by [`spawn_child`] has been reaped, and
/// returns the signal passed on to it, if one was: the supervisor then
/// exits with 128 + that signal and restarts nothing.
pub fn child_reaped() -> Option<i32> {
    let mut s = supervised();
    s.pid = None;
    s.forwarded
}

/// A job that can stop at a checkpoint is running (see [`stop_at_checkpoint`]).
static GRACEFUL: AtomicBool = AtomicBool::new(false);
/// The signal that asked it to stop (0: none).
static STOP: AtomicI32 = AtomicI32::new(0);

/// Says that this process runs a job that, on a first SIGINT or SIGTERM,
/// stops at its next step with a checkpoint ([`stop_requested`]) instead
/// of ending at once; a second signal still ends it at once.
pub fn stop_at_checkpoint() {
    GRACEFUL.store(true, Ordering::SeqCst);
}

/// The signal that asked the job to stop at a checkpoint, if one did.
pub fn stop_requested() -> Option<i32> {
    let s = STOP.load(Ordering::SeqCst);
    (s != 0).then_some(s)
}

/// Starts the thread that handles SIGINT, SIGTERM and SIGHUP. Call it once,
/// early in `main`.
pub fn install() -> std::io::Result<()> {
    let mut wanted = vec![SIGINT, SIGTERM];
    if !ignored_at_start(SIGHUP) {
        wanted.push(SIGHUP);
    }
    let mut signals = Signals::new(&wanted)?;
    std::thread::Builder::new()
        .name("tidemill-signals".into())
        .spawn(move || {
            let mut asked: Option<(i32, std::time::Instant)> = None;
            for signal in signals.forever() {
                if asked.is_some_and(|(s, at)| s == signal && at.elapsed() < REPEAT) {
                    continue;
                }
                let graceful = GRACEFUL.load(Ordering::SeqCst)
                    && signal != SIGHUP
                    && supervised().pid.is_none()
                    && STOP
                        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                if graceful {
                    asked = Some((signal, std::time::Instant::now()));
                    eprintln!(
                        "warning: {}: stopping at the next step with a checkpoint; send it again to stop at once",
                        crate::error::signal_name(signal)
                    );
                    continue;
                }
                exit_on(signal);
            }
        })?;
    Ok(())
}

/// Removes the temporary files and exits; never returns. With a
/// supervised child, passes the signal on to it first and leaves the exit
/// to the supervisor, unless the child outlives [`CHILD_GRACE`].
fn exit_on(signal: i32) -> ! {
    let name = match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    };
    // Signalled while registered (under the lock): not reaped yet, so the
    // pid is still the child's.
    let child = {
        let mut s = supervised();
        if let Some(pid) = s.pid {
            s.forwarded = Some(signal);
            let _ = kill(Pid::from_raw(pid), Signal::try_from(signal).ok());
        }
        s.pid
    };
    if let Some(pid) = child {
        std::thread::sleep(CHILD_GRACE);
        if let Some(pid) = supervised().pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        exit_now(128 + signal, |_| {
            format!(
                "interrupted by {name}: the supervised job (pid {pid}) did not end within {} s of it and was killed with SIGKILL",
                CHILD_GRACE.as_secs()
            )
        })
    }
    exit_now(128 + signal, |removed| {
        format!(
            "interrupted by {name}; removed {removed} temporary file(s){}",
            crate::checkpoint::hint::resume_hint()
        )
    })
}

/// Ends the process at once with exit code `code`, as a signal does:
/// waits for a commit in progress, removes this process's temporary files,
/// writes `error: ` and `message(files removed)` as one line on stderr, and
/// exits without running destructors or waiting for other threads. For a
/// failure that an orderly shutdown would wait on forever (a peer process
/// that stopped answering). Must not be called while this thread holds
/// the list of temporary files or the commit window.
pub fn exit_now(code: i32, message: impl FnOnce(usize) -> String) -> ! {
    // Held until the process is gone: no commit starts after this.
    let _window = temp::commit_window();
    let removed = temp::live().discard_all();
    eprintln!("error: {}", message(removed));
    std::process::exit(code);
}

/// Whether `signal` was set to be ignored when the process started, read
/// from `/proc/self/status` (Linux; elsewhere: false).
fn ignored_at_start(signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| signal >= 1 && mask & (1u64 << (signal - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ignored_mask() {
        // Rust's runtime ignores SIGPIPE (13) in every test binary.
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(ignored_at_start(signal_hook::consts::signal::SIGPIPE));
        }
    }
}
