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

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::temp;

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
            if let Some(signal) = signals.forever().next() {
                exit_on(signal);
            }
        })?;
    Ok(())
}

/// Removes the temporary files and exits; never returns.
fn exit_on(signal: i32) -> ! {
    let name = match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    };
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
