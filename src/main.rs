//! The `tidemill` binary: parse, run, exit with a documented code.

use std::process::ExitCode;

use clap::Parser;
use tidemill::cli::{self, Cli};

/// mimalloc rather than glibc's malloc: glibc raises its mmap threshold to
/// the size of the largest freed block, so the multi-megabyte buffers of
/// Arrow record batches then come from the heap and a long stream's peak RSS
/// grew with its length (docs/streaming.md, "Backpressure and memory").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long (ms) mimalloc keeps memory freed to its arena before it gives
/// it back to the system: `MIMALLOC_PURGE_DELAY`, unless it is set already.
///
/// mimalloc 3's default is 1000 ms. Decoding Parquet frees a few hundred
/// kilobytes a column a row group (pages, dictionaries); within a second,
/// while a job reads its rows, that freed memory was still held, and it
/// was most of the gap between a cached W1 job's heap and its peak RSS.
/// At 300 ms that job's peak RSS is ~30 MiB lower in the same time; 100 ms
/// saved as much there but made W1 streamed 8% slower (it purged what the
/// next row groups would have reused), and at 400 ms the saving came and
/// went with the timing of the run (docs/benchmarks.md, "Labels in a
/// byte, validation first, and a shorter purge delay"). mimalloc reads
/// its options from the environment when the process loads, and this
/// crate calls no `unsafe` function (as `mi_option_set` is), so the
/// binary sets the variable and executes itself again (`/proc/self/exe`,
/// the same arguments and process id).
const PURGE_DELAY_MS: &str = "300";

/// Re-executes this process with [`PURGE_DELAY_MS`] in its environment
/// (the same image, arguments and process id; the process keeps its name),
/// unless `MIMALLOC_PURGE_DELAY` is set (by the user, or by the first
/// execution), `LD_PRELOAD` is (a tool such as valgrind, which would not
/// follow the new image), or the running image is not the program
/// `argv[0]` names (started through the dynamic loader, under another
/// name, or a binary deleted since). Returns only when it does not: with
/// the reason if an attempt failed, to log once logging is set up.
#[cfg(target_os = "linux")]
fn set_allocator_options() -> Option<String> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
        || std::env::var_os("LD_PRELOAD").is_some()
    {
        return None;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next()?;
    let exe = std::env::current_exe().ok()?;
    if std::path::Path::new(&arg0).file_name() != exe.file_name() {
        return None;
    }
    let e = std::process::Command::new(&exe)
        .arg0(&arg0)
        .args(args)
        .env("MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS)
        .exec();
    Some(format!(
        "could not execute {} again with MIMALLOC_PURGE_DELAY={PURGE_DELAY_MS} ({e}); mimalloc keeps its default",
        exe.display()
    ))
}

#[cfg(not(target_os = "linux"))]
fn set_allocator_options() -> Option<String> {
    None
}

fn main() -> ExitCode {
    let not_reexecuted = set_allocator_options();
    let cli = Cli::parse();
    let level = match cli.log.trim() {
        _ if cli.quiet => "warn",
        "" => "info",
        l => l,
    };
    // A bare word must be a level: `--log verbose` would otherwise be a
    // filter for a target named "verbose", and log nothing else.
    let bare = !level.contains(['=', ',', ':']);
    let known = ["off", "error", "warn", "info", "debug", "trace"]
        .iter()
        .any(|l| l.eq_ignore_ascii_case(level));
    let parsed = if bare && !known {
        Err("an unknown level".to_string())
    } else {
        tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())
    };
    let filter = match parsed {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "error: --log (or TIDEMILL_LOG) {level}: not a log level or filter ({e}); use error, warn, info, debug or trace, or a filter such as tidemill=debug"
            );
            return ExitCode::from(2);
        }
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(tidemill::strategy::progress::StderrAboveBar)
        .with_target(false);
    match cli.log_format {
        cli::LogFormat::Json => logs.json().flatten_event(true).init(),
        cli::LogFormat::Text => logs.with_ansi(terminal).compact().init(),
    }
    // On a terminal, progress inside epochs is a bar rather than lines.
    tidemill::strategy::progress::allow_bar(
        terminal
            && cli.log_format == cli::LogFormat::Text
            && tracing::enabled!(tracing::Level::INFO),
    );
    if let Some(why) = not_reexecuted {
        tracing::debug!("{why}");
    }
    // Checked before any command opens a file or connects to a process.
    if let Err(e) = tidemill::cluster::idle_spin_from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(e.exit_code());
    }
    std::panic::set_hook(Box::new(panic_hook));
    if let Err(e) = tidemill::io::signals::install() {
        tracing::warn!(error = %e, "no signal handler: temporary files are left to the next run's sweep");
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.is_closed_pipe() {
                // The reader downstream went away: not our failure.
                return ExitCode::SUCCESS;
            }
            let message = e.to_string();
            eprintln!("error: {message}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                // A cause the message already spells out is not repeated.
                let cause = s.to_string();
                if !message.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
                source = s.source();
            }
            let hint = tidemill::checkpoint::hint::resume_hint();
            if !hint.is_empty() && matches!(e.exit_code(), 1 | 3 | 7 | 129..) {
                // A failure a rerun may get past: say where it resumes.
                eprintln!("note: {}", hint.trim_start_matches("; "));
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Turns a lost peer process into a clear message and exit code 7 (timely
/// reports it as a panic of its network threads); anything else is a bug:
/// a message asking for a report and exit code 1 (never Rust's 101, and
/// never a hang of the other threads).
fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
    if tidemill::io::guard::in_untrusted() {
        // A third-party decoder failed on malformed input: the guard
        // around it turns this into an error naming the input.
        return;
    }
    let msg = tidemill::io::guard::panic_message(info.payload());
    if msg.contains("timely communication error") || msg.contains("MergeQueue poisoned") {
        // Exiting skips destructors: remove the temporary files here.
        let _ = tidemill::io::temp::discard_live();
        let peer = std::thread::current()
            .name()
            .and_then(tidemill::cluster::peer_of_thread)
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        eprintln!(
            "error: cluster: lost the connection to a peer process{peer} ({msg}); no output was written{}",
            tidemill::checkpoint::hint::resume_hint()
        );
        std::process::exit(7);
    }
    let _ = tidemill::io::temp::discard_live();
    eprintln!("error: internal error, please report it: {info}");
    std::process::exit(1);
}
