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

fn main() -> ExitCode {
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
