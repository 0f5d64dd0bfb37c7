//! The one error type of tidemill.
//!
//! Every variant carries enough context (file, row group, column, row, key,
//! worker) for a user to find and fix the problem without a debugger.

use std::path::PathBuf;

/// Where in the input data a problem was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    /// The Parquet (or IPC) file.
    #[serde(with = "wire::path")]
    pub file: PathBuf,
    /// Row group inside the file, when known.
    pub row_group: Option<usize>,
    /// Column name, when the problem is in one column.
    pub column: Option<String>,
    /// Row number inside the file (0-based), when known.
    pub row: Option<u64>,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(rg) = self.row_group {
            write!(f, ", row group {rg}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ", column '{c}'")?;
        }
        if let Some(r) = self.row {
            write!(f, ", row {r}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in tidemill.
///
/// Errors cross workers and processes whole (serde, with paths as raw bytes
/// and I/O errors as their kind and message), so an error found by any
/// worker reaches the user as the same variant, location included.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// The underlying error.
        #[source]
        #[serde(with = "wire::io")]
        source: std::io::Error,
    },
    /// A Parquet file is corrupt, truncated or unreadable.
    #[error("{path}: not a readable Parquet file: {message}")]
    Parquet {
        /// The file.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// What the Parquet reader said.
        message: String,
    },
    /// An Arrow IPC stream or file is unreadable.
    #[error("{path}: not a readable Arrow IPC stream: {message}")]
    Ipc {
        /// The file, or `-` for stdin.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// What the IPC reader said.
        message: String,
    },
    /// A CSV input is unreadable (or a CSV output could not be encoded).
    #[error("{path}: not readable as CSV: {message}")]
    Csv {
        /// The file, or `-` for stdin.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// What the CSV reader or writer said.
        message: String,
    },
    /// The pipeline file is not valid TOML or has an unknown / mistyped key.
    #[error("{path}: {message}")]
    PipelineSyntax {
        /// The pipeline file.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A pipeline key has a value that is well-typed but not allowed.
    #[error("pipeline key '{key}': {message}")]
    PipelineValue {
        /// Dotted key path, e.g. `optimizer.learning_rate`.
        key: String,
        /// Why the value is rejected.
        message: String,
    },
    /// A `--set key=value` override cannot be applied.
    #[error("--set {assignment}: {message}")]
    Override {
        /// The assignment as written.
        assignment: String,
        /// Why it cannot be applied.
        message: String,
    },
    /// Two outputs of a command, or an output and an input, name the same
    /// file (after following links): writing one would destroy the other.
    #[error(
        "{first} and {second} both name {path}: give each output a file of its own, apart from the inputs"
    )]
    SamePath {
        /// The flag (or pipeline key) named first.
        first: String,
        /// The other flag (or key).
        second: String,
        /// The path, as the second one gave it.
        #[serde(with = "wire::path")]
        path: PathBuf,
    },
    /// An output cannot be prepared, written or put in place.
    #[error("{flag} {path}: {action}")]
    Output {
        /// The flag or pipeline key that named the output.
        flag: String,
        /// The output's path, as given.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// What could not be done, e.g. `cannot be written`.
        action: String,
        /// The underlying error.
        #[source]
        #[serde(with = "wire::io")]
        source: std::io::Error,
    },
    /// The data source names no files.
    #[error("{path}: no Parquet files found")]
    NoFiles {
        /// The path that was searched.
        #[serde(with = "wire::path")]
        path: PathBuf,
    },
    /// A column the pipeline needs is absent.
    #[error("{file}: column '{column}' not found{}; columns are: {available}", did_you_mean(suggestion.as_deref()))]
    MissingColumn {
        /// The file.
        #[serde(with = "wire::path")]
        file: PathBuf,
        /// The column asked for.
        column: String,
        /// The nearest column name, if one is close.
        suggestion: Option<String>,
        /// The columns the file does have, comma separated.
        available: String,
    },
    /// A column has a type tidemill cannot use the way the pipeline asks.
    #[error("{file}: column '{column}' has type {found}; {expected}")]
    ColumnType {
        /// The file.
        #[serde(with = "wire::path")]
        file: PathBuf,
        /// The column.
        column: String,
        /// The Arrow type found.
        found: String,
        /// What would have worked.
        expected: String,
    },
    /// Files of one data source disagree on a column's type or presence.
    #[error("schema drift: {file} differs from {reference}: {difference}")]
    SchemaDrift {
        /// The file that differs.
        #[serde(with = "wire::path")]
        file: PathBuf,
        /// The first file, whose schema is the reference.
        #[serde(with = "wire::path")]
        reference: PathBuf,
        /// What differs.
        difference: String,
    },
    /// A value is null, NaN, infinite or out of range where the pipeline
    /// does not allow it.
    #[error("{location}: {what} ({hint})")]
    MissingValue {
        /// Where.
        location: Box<Location>,
        /// `null value`, `NaN`, `infinite value`, an out-of-range value.
        what: String,
        /// What the user can do about it.
        hint: String,
    },
    /// A label value is not one of the declared or known classes.
    #[error("{location}: label value '{value}' is not one of the classes [{classes}]")]
    UnknownLabel {
        /// Where.
        location: Box<Location>,
        /// The value found.
        value: String,
        /// The classes allowed, comma separated.
        classes: String,
    },
    /// A label value cannot be used by the model (e.g. non-integer class).
    #[error("{location}: {message}")]
    BadLabel {
        /// Where.
        location: Box<Location>,
        /// What is wrong.
        message: String,
    },
    /// The data has no usable rows.
    #[error("{what}: no rows to {purpose}")]
    NoRows {
        /// The data source.
        what: String,
        /// What the rows were needed for: `train on`, `evaluate`.
        purpose: std::borrow::Cow<'static, str>,
    },
    /// Row keys that cannot be used: repeated in the data, or asked to be
    /// forgotten but not present (never inserted, or forgotten already).
    #[error("{}: {message}", path.display())]
    Keys {
        /// The data or key file.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// Which keys and why.
        message: String,
    },
    /// The exact solution does not exist for these rows (a singular system
    /// without an L2 penalty, or sums that leave the exact range).
    #[error("no exact solution: {message}")]
    Unsolvable {
        /// Why, and what to change.
        message: String,
    },
    /// Training diverged: a gradient or parameter became non-finite or too large.
    #[error("training diverged at epoch {epoch}, step {step}: {message}")]
    Diverged {
        /// Epoch (0-based).
        epoch: u32,
        /// Step inside the epoch.
        step: u64,
        /// What overflowed.
        message: String,
    },
    /// A model file cannot be read or does not fit the input.
    #[error("{path}: {message}")]
    Model {
        /// The model file.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A command-line option (or the pipeline key it stands for) has a
    /// value that cannot be used (e.g. `--workers 0`, `--process` out of
    /// range, an empty cluster key, `-` where stdout is taken).
    #[error("{option}: {message}")]
    Usage {
        /// The option(s) or key(s), e.g. `--workers`.
        option: String,
        /// Why its value cannot be used.
        message: String,
    },
    /// The hostfile is malformed: an entry that is not `host:port`, a port
    /// out of range, a host that does not resolve, a repeated address, too
    /// few entries.
    #[error("hostfile {}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Hostfile {
        /// The hostfile.
        #[serde(with = "wire::path")]
        path: std::path::PathBuf,
        /// The line (1-based), when one line is at fault.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// Another process of the cluster runs a different job: another
    /// pipeline, other data, another tidemill version, build or layout.
    #[error("process {process} at {address} runs a different job: {differences}")]
    JobMismatch {
        /// The other process's index.
        process: usize,
        /// Its address.
        address: String,
        /// The differing keys with both values, `key = there there, here here`.
        differences: String,
    },
    /// A checkpoint cannot resume this job: it was written by another job
    /// (other data, features, model or optimizer: the message names what
    /// differs), another strategy layout, or another tidemill version.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        #[serde(with = "wire::path")]
        path: PathBuf,
        /// Why it cannot be used.
        message: String,
    },
    /// The cluster failed: a peer could not be reached in time, refused
    /// this process, or was lost.
    #[error("cluster: {0}")]
    Cluster(String),
    /// An invariant of tidemill's own did not hold: a bug, to be reported.
    #[error("internal error, please report it: {0}")]
    Internal(String),
    /// An error that kept only its message and exit code: what a clone of an
    /// error falls back to should its wire form ever fail (it does not for
    /// any error tidemill makes).
    #[error("{message}")]
    Relayed {
        /// The original message.
        message: String,
        /// The original exit code.
        code: u8,
    },
    /// A worker failed; the message says which and why.
    #[error("worker {worker}: {message}")]
    Worker {
        /// Global worker index.
        worker: usize,
        /// What it reported.
        message: String,
    },
    /// A job run under `train --max-restarts` ended in a failure that was
    /// not restarted: one a rerun would repeat, an interruption, or one
    /// after the last restart. Its exit code is the job's.
    #[error("{message}")]
    Supervised {
        /// What happened, and why it was not restarted.
        message: String,
        /// The job's exit code (128 + N for a job killed by signal N).
        code: u8,
    },
    /// Training stopped at a checkpoint because a process of the job was
    /// asked to stop (SIGINT or SIGTERM): `--resume` continues it. Exit
    /// code 128 + the signal, as for a process the signal ended.
    #[error("stopped by {} (it reached worker {worker}'s process); the job was checkpointed where it stopped and no other output was written", signal_name(*signal))]
    Stopped {
        /// The signal.
        signal: i32,
        /// A worker of the process it reached.
        worker: usize,
    },
}

/// The name of a signal tidemill handles.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        1 => "SIGHUP",
        _ => "a signal",
    }
}

/// `" (did you mean 'x'?)"`, or nothing.
fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

/// `" (did you mean 'x'?)"` with the name in `names` nearest to `wanted`
/// ([`nearest`]), or nothing.
pub fn hint(wanted: &str, names: &[&str]) -> String {
    did_you_mean(nearest(wanted, names))
}

/// The name in `names` nearest to `wanted`, if it is close enough to be a
/// likely misspelling (Jaro–Winkler similarity above 0.8, or the same name
/// in another case).
pub fn nearest<'a>(wanted: &str, names: &[&'a str]) -> Option<&'a str> {
    names
        .iter()
        .map(|n| {
            // Short names are one edit apart more often than they are
            // Jaro-Winkler close (`l3` and `l2`).
            let score = if n.eq_ignore_ascii_case(wanted) {
                1.0
            } else if wanted.len() > 1 && strsim::levenshtein(wanted, n) == 1 {
                0.95_f64.max(strsim::jaro_winkler(wanted, n))
            } else {
                strsim::jaro_winkler(wanted, n)
            };
            (score, *n)
        })
        .filter(|(score, _)| *score > 0.8)
        // The first of equally near names (the order they are listed in).
        .reduce(|best, next| if next.0 > best.0 { next } else { best })
        .map(|(_, n)| n)
}

/// Shorthand for results in tidemill.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`Error::MissingColumn`] listing the columns `schema` does have.
    pub fn missing_column(
        file: impl Into<PathBuf>,
        column: &str,
        schema: &arrow::datatypes::Schema,
    ) -> Self {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Error::MissingColumn {
            file: file.into(),
            column: column.to_string(),
            suggestion: nearest(column, &names).map(String::from),
            available: schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Wraps a Parquet reader error with the file it concerns.
    pub fn parquet(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Error::Parquet {
            path: path.into(),
            message: err.to_string(),
        }
    }

    /// True if this is an output whose reader went away (`EPIPE` while
    /// writing to standard output, a pipe or a FIFO): not a failure of
    /// tidemill's, so `main` exits quietly with code 0. Decided by the
    /// error's kind, never by its text, and never for errors on inputs or
    /// the network.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, Error::Output { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// The process exit code for this error (see `docs/cli.md`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::PipelineSyntax { .. }
            | Error::PipelineValue { .. }
            | Error::Override { .. }
            | Error::Usage { .. }
            | Error::Hostfile { .. }
            | Error::JobMismatch { .. }
            | Error::Checkpoint { .. }
            | Error::SamePath { .. } => 2,
            Error::Io { .. } | Error::Output { .. } | Error::NoFiles { .. } => 3,
            Error::Parquet { .. }
            | Error::Ipc { .. }
            | Error::Csv { .. }
            | Error::MissingColumn { .. }
            | Error::ColumnType { .. }
            | Error::SchemaDrift { .. }
            | Error::MissingValue { .. }
            | Error::UnknownLabel { .. }
            | Error::BadLabel { .. }
            | Error::NoRows { .. }
            | Error::Keys { .. } => 4,
            Error::Model { .. } => 5,
            Error::Diverged { .. } | Error::Unsolvable { .. } => 6,
            Error::Cluster(_) | Error::Worker { .. } => 7,
            Error::Internal(_) => 1,
            Error::Relayed { code, .. } | Error::Supervised { code, .. } => *code,
            Error::Stopped { signal, .. } => u8::try_from(128 + signal).unwrap_or(1),
        }
    }
}

impl Clone for Error {
    /// Errors hold `io::Error`s, which are not `Clone`: a clone is made
    /// through the wire form that carries errors between processes, so it
    /// is exactly what another process would receive.
    fn clone(&self) -> Self {
        bincode::serialize(self)
            .ok()
            .and_then(|bytes| bincode::deserialize(&bytes).ok())
            .unwrap_or_else(|| Error::Relayed {
                message: self.to_string(),
                code: self.exit_code(),
            })
    }
}

/// Serde forms for the parts of an [`Error`] that have none of their own.
mod wire {
    /// Paths as their raw bytes: any path survives, UTF-8 or not.
    pub mod path {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};
        use std::ffi::OsString;
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        use std::path::{Path, PathBuf};

        pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
            p.as_os_str().as_bytes().serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
            Ok(PathBuf::from(OsString::from_vec(Vec::<u8>::deserialize(
                d,
            )?)))
        }
    }

    /// I/O errors as `(kind, OS error number, message)`: the kinds tidemill
    /// tells apart survive (a closed pipe stays a closed pipe), and an OS
    /// error is rebuilt from its number.
    pub mod io {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};
        use std::io::{Error, ErrorKind};

        const KINDS: [ErrorKind; 20] = [
            ErrorKind::Other,
            ErrorKind::NotFound,
            ErrorKind::PermissionDenied,
            ErrorKind::BrokenPipe,
            ErrorKind::AlreadyExists,
            ErrorKind::InvalidInput,
            ErrorKind::InvalidData,
            ErrorKind::UnexpectedEof,
            ErrorKind::WriteZero,
            ErrorKind::Interrupted,
            ErrorKind::TimedOut,
            ErrorKind::WouldBlock,
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::AddrInUse,
            ErrorKind::OutOfMemory,
            ErrorKind::Unsupported,
            ErrorKind::StorageFull,
            ErrorKind::IsADirectory,
        ];

        pub fn serialize<S: Serializer>(e: &Error, s: S) -> Result<S::Ok, S::Error> {
            let kind = KINDS.iter().position(|k| *k == e.kind()).unwrap_or(0) as u8;
            (kind, e.raw_os_error(), e.to_string()).serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Error, D::Error> {
            let (kind, os, message) = <(u8, Option<i32>, String)>::deserialize(d)?;
            Ok(match os {
                Some(code) => Error::from_raw_os_error(code),
                None => Error::new(
                    KINDS
                        .get(usize::from(kind))
                        .copied()
                        .unwrap_or(ErrorKind::Other),
                    message,
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    /// Regression: `main` exited 0 for any error whose message contained
    /// "Broken pipe" (a cluster error quoting an I/O error, a column named
    /// so), or for an input's `EPIPE`.
    #[test]
    fn only_an_outputs_broken_pipe_is_a_closed_pipe() {
        let output = |kind| Error::Output {
            flag: "--output".into(),
            path: "-".into(),
            action: "cannot be written".into(),
            source: std::io::Error::new(kind, "Broken pipe (os error 32)"),
        };
        assert!(output(ErrorKind::BrokenPipe).is_closed_pipe());
        assert!(!output(ErrorKind::Other).is_closed_pipe());
        let input = Error::io("-", std::io::Error::from(ErrorKind::BrokenPipe));
        assert!(!input.is_closed_pipe());
        let cluster = Error::Cluster("process 1: Broken pipe (os error 32)".into());
        assert!(!cluster.is_closed_pipe());
    }

    /// Errors cross processes whole: variant, non-UTF-8 paths, I/O error
    /// kinds and OS error numbers survive the wire form.
    #[test]
    fn errors_survive_their_wire_form() {
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/caf\xe9.parquet"));
        let missing = Error::MissingValue {
            location: Box::new(Location {
                file: odd.clone(),
                row_group: Some(3),
                column: Some("x".into()),
                row: Some(170),
            }),
            what: "NaN".into(),
            hint: "h".into(),
        };
        let back: Error = bincode::deserialize(&bincode::serialize(&missing).unwrap()).unwrap();
        let Error::MissingValue { location, .. } = &back else {
            panic!("{back:?}");
        };
        assert_eq!(location.file, odd);
        assert_eq!(back.to_string(), missing.to_string());

        let pipe = Error::Output {
            flag: "-o".into(),
            path: "-".into(),
            action: "cannot be written".into(),
            source: std::io::Error::new(ErrorKind::BrokenPipe, "reader gone"),
        };
        assert!(pipe.clone().is_closed_pipe());
        assert_eq!(pipe.clone().to_string(), pipe.to_string());

        let full = Error::io("/dev/full", std::io::Error::from_raw_os_error(28));
        let copy = full.clone();
        assert_eq!(copy.to_string(), full.to_string());
        let Error::Io { source, .. } = &copy else {
            panic!("{copy:?}");
        };
        assert_eq!(source.raw_os_error(), Some(28));
        assert_eq!(source.kind(), ErrorKind::StorageFull);

        let no_rows = Error::NoRows {
            what: "eval".into(),
            purpose: "evaluate".into(),
        };
        assert_eq!(no_rows.clone().to_string(), "eval: no rows to evaluate");
        assert_eq!(Error::Internal("x".into()).clone().exit_code(), 1);
    }
}
