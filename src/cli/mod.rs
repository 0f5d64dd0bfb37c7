//! Command-line interface: parse, run, map errors to exit codes.
//!
//! The pipeline file says *what* to train; flags say *where and how*.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cluster::key::KEY_ENV;
use crate::cluster::{Cluster, ClusterKey, MAX_CONNECT_TIMEOUT, MAX_PEER_TIMEOUT};
use crate::error::{Error, Result};
use crate::io::atomic::OutputSet;
use crate::io::table::Format;
use crate::optim::lbfgs::Convergence;
use crate::spec::Pipeline;
use outputs::{PipelineInputs, PipelineOutputs};

mod cv;
mod init;
mod outputs;
mod supervise;

/// tidemill: distributed training of linear models on Parquet data, as a
/// timely dataflow.
#[derive(Debug, Parser)]
#[command(name = "tidemill", version = VERSION, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log level for stderr: error, warn, info, debug, trace (or a
    /// tracing filter such as `tidemill=debug`).
    #[arg(long, global = true, default_value = "info", env = "TIDEMILL_LOG")]
    pub log: String,
    /// Only warnings and errors on stderr (as `--log warn`); results still
    /// go to stdout.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// How log lines are written on stderr: `text`, or `json` (one object
    /// per line, for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "TIDEMILL_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Compact human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The version and build fingerprint, shown by `--version`: processes of
/// a cluster must show the same.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (build ",
    env!("TIDEMILL_BUILD"),
    ")"
);

/// Exit codes, shown in `--help`.
pub const EXIT_CODES: &str =
    "Exit codes: 0 ok, 1 internal error, 2 bad pipeline or usage, 3 I/O error, \
4 bad input data, 5 bad model file, 6 training diverged, 7 cluster failure, \
128+N interrupted by signal N (130 SIGINT, 143 SIGTERM).";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a pipeline and write the model and metrics.
    Train(TrainArgs),
    /// Train incrementally on a stream of rows, scoring each before it is
    /// trained on, publishing model snapshots as it goes.
    Stream(StreamArgs),
    /// Score a table with a saved model.
    Predict(PredictArgs),
    /// Print JSON metrics of a saved model on a labelled table.
    Eval(EvalArgs),
    /// k-fold cross-validation: train the pipeline once per fold, score
    /// each fold, print every fold's metrics and their mean and spread.
    Cv(CvArgs),
    /// Forget rows of an exact model: retract their keys from its saved
    /// state (`[output] state`) and rewrite the model of the rows that
    /// remain.
    Forget(ForgetArgs),
    /// Check a pipeline (keys, values, files, columns, types) without training.
    Validate(ValidateArgs),
    /// Describe Parquet data: schema, row groups, rows, null counts.
    Inspect(InspectArgs),
    /// Write a commented starter pipeline for a table (to stdout, or
    /// `--out`), which `validate` accepts as written.
    Init(InitArgs),
    /// Plot loss against wall time from metrics files (SVG).
    Plot(PlotArgs),
    /// Draw a report of training runs (SVG or PNG): loss and the main
    /// validation metric against epoch and wall time, and ROC and
    /// calibration curves from `eval --curves`.
    Report(ReportArgs),
}

/// `cv`.
#[derive(Debug, Args)]
pub struct CvArgs {
    /// The pipeline file (its `data.validation` and outputs are not used).
    pub pipeline: PathBuf,
    /// Folds (2 to 100).
    #[arg(long, short = 'k', default_value_t = 5)]
    pub folds: u32,
    /// Worker threads.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Override a pipeline value, e.g. `--set model.l2=0.1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Metrics files (JSON lines), one per run, labelled by run: the file
    /// name, or the directories above it where names repeat.
    #[arg(required = true)]
    pub metrics: Vec<PathBuf>,
    /// Output file: `.svg` or `.png`.
    #[arg(long, short)]
    pub out: PathBuf,
    /// A curves file from `eval --curves` (repeat the flag): ROC and
    /// calibration panels. Given once per metrics file, in order, each is
    /// that run's.
    #[arg(long, value_name = "CURVES.json")]
    pub curves: Vec<PathBuf>,
    /// A label per metrics file, in order (repeat the flag).
    #[arg(long)]
    pub label: Vec<String>,
    /// The validation metric to draw (default: the first of auc,
    /// accuracy, rmse the runs have).
    #[arg(long)]
    pub metric: Option<String>,
    /// Figure title.
    #[arg(long)]
    pub title: Option<String>,
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The data: a Parquet, Arrow IPC or CSV file, a directory of Parquet
    /// files, or `-` (stdin).
    pub data: String,
    /// The label column (default: a column named like a label, else the
    /// last one).
    #[arg(long)]
    pub label: Option<String>,
    /// Write the pipeline here instead of stdout (never over a file that
    /// exists).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// `plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Metrics files (JSON lines), one series each, labelled by run: the
    /// file name, or the directories above it where names repeat.
    #[arg(required = true)]
    pub metrics: Vec<PathBuf>,
    /// Output SVG file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Chart title (default: the metric and the x axis).
    #[arg(long)]
    pub title: Option<String>,
    /// A label per metrics file, in order (repeat the flag).
    #[arg(long)]
    pub label: Vec<String>,
    /// What to draw: `loss` (validation if held out, else training), or a
    /// record's field: `train_loss`, `objective`, `auc`, `accuracy`,
    /// `rmse`, `bytes_per_step`, ...
    #[arg(long, default_value = "loss")]
    pub metric: String,
    /// Epochs on the x axis instead of wall time.
    #[arg(long)]
    pub by_epoch: bool,
}

/// Where and how to run.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Number of processes (timely cluster mode over TCP).
    #[arg(short = 'n', long, default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0-based.
    #[arg(short = 'p', long, default_value_t = 0)]
    pub process: usize,
    /// One host:port per line, in process order (default 127.0.0.1:2101+i).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Seconds start-up waits for the other processes before it fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Seconds a peer process may stay silent during the job (stopped, cut
    /// off by the network) before the others stop with exit code 7. A
    /// worker busy inside one step longer than this looks silent too.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub peer_timeout: f64,
    /// File holding the cluster key every process must share (else the
    /// TIDEMILL_CLUSTER_KEY environment variable, else a public default).
    #[arg(long, value_name = "PATH")]
    pub cluster_key_file: Option<PathBuf>,
    /// Run without a cluster key (on the public default key) even when a
    /// hostfile address is not loopback: anyone who can reach the ports
    /// could then take a missing process's place or stop the job.
    #[arg(long)]
    pub allow_public_key: bool,
}

impl ClusterArgs {
    /// One process of `workers` threads, with the default timeouts.
    pub fn local(workers: usize) -> ClusterArgs {
        ClusterArgs {
            workers,
            processes: 1,
            process: 0,
            hostfile: None,
            connect_timeout: 60.0,
            peer_timeout: 60.0,
            cluster_key_file: None,
            allow_public_key: false,
        }
    }

    /// As a checked [`Cluster`]; the key comes from `--cluster-key-file`,
    /// else from the [`KEY_ENV`] environment variable, else the public
    /// default.
    pub fn cluster(&self) -> Result<Cluster> {
        let connect_timeout = seconds(
            "--connect-timeout",
            self.connect_timeout,
            MAX_CONNECT_TIMEOUT,
        )?;
        let peer_timeout = seconds("--peer-timeout", self.peer_timeout, MAX_PEER_TIMEOUT)?;
        let key = ClusterKey::resolve(self.cluster_key_file.as_deref(), std::env::var_os(KEY_ENV))?;
        let cluster = Cluster {
            workers: self.workers,
            processes: self.processes,
            process: self.process,
            hostfile: self.hostfile.clone(),
            connect_timeout,
            peer_timeout,
            key,
            allow_public_key: self.allow_public_key,
        };
        cluster.validate()?;
        Ok(cluster)
    }
}

/// `value` seconds of `option` as a duration in (0, `max`]; anything else
/// is a usage error.
fn seconds(option: &str, value: f64, max: Duration) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero() && *d <= max)
        .ok_or_else(|| Error::Usage {
            option: option.into(),
            message: format!(
                "{value} is not a number of seconds in (0, {}]",
                max.as_secs()
            ),
        })
}

/// `train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Pipeline file (TOML).
    pub pipeline: PathBuf,
    #[command(flatten)]
    /// Cluster layout.
    pub cluster: ClusterArgs,
    /// Override a pipeline key, e.g. `--set optimizer.learning_rate=0.05`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Model file (overrides output.model).
    #[arg(long)]
    pub model_out: Option<PathBuf>,
    /// Metrics JSONL (overrides output.metrics).
    #[arg(long)]
    pub metrics_out: Option<PathBuf>,
    /// Start from this model's parameters (warm start) instead of zero. It
    /// must be for the same kind, label, classes and features; its weights
    /// are carried to this data's standardisation. It may also be the
    /// model output (it is read before training).
    #[arg(long, value_name = "MODEL")]
    pub init_model: Option<PathBuf>,
    /// Continue from the newest whole checkpoint in `output.checkpoint`
    /// (train from the start if there is none). The checkpoint must come
    /// from the same pipeline and data; see docs/fault-tolerance.md.
    #[arg(long)]
    pub resume: bool,
    /// Run the job as a child process and restart it from its newest
    /// checkpoint (adding --resume) up to this many times after a failure a
    /// rerun may get past: exit code 1, 3 or 7, or killed by a signal such
    /// as SIGKILL. Needs output.checkpoint; 0 runs the job in this process.
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub max_restarts: u32,
    /// Seconds before the first restart; each further one waits twice as
    /// long as the one before, at most 60.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub restart_backoff: f64,
}

/// `forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Pipeline file (TOML) of the exact model (`optimizer.kind = "exact"`,
    /// `data.key`, `[output] state`).
    pub pipeline: PathBuf,
    /// The keys to forget: a Parquet, Arrow IPC or CSV table (`-` for
    /// stdin) with a column named like `data.key`, or a single column.
    #[arg(long, value_name = "PATH")]
    pub keys: String,
    /// Override a pipeline key, e.g. `--set output.state='"state/"'`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Model file (overrides output.model).
    #[arg(long)]
    pub model_out: Option<PathBuf>,
    /// Also remove the rows of every forgotten key (these and earlier ones)
    /// from the state on disk: the row runs that hold them are rewritten
    /// without them (their other buckets copied as they are) and no older
    /// generation is kept. Slower than a plain forget, which only marks
    /// the keys forgotten. Exact models only.
    #[arg(long)]
    pub erase: bool,
    /// Worker threads for re-optimising a model without sufficient
    /// statistics (`optimizer.kind = "lbfgs"`); an exact model's update
    /// needs none.
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
}

/// `stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// Pipeline file (TOML); `[stream]` says how batches are cut.
    pub pipeline: PathBuf,
    /// The source: `-` for an Arrow IPC stream on stdin, or a Parquet or
    /// Arrow IPC file or a directory of Parquet files to replay in row order.
    #[arg(long, short)]
    pub input: String,
    /// A replay's pace in rows per second (default: as fast as possible).
    #[arg(long, value_name = "ROWS_PER_SECOND")]
    pub rate: Option<f64>,
    /// `--input DIR` is watched: each Parquet file renamed into it is read
    /// once, in name order, until the stream is stopped (SIGINT, SIGTERM).
    #[arg(long)]
    pub watch: bool,
    /// How often a watched directory is listed, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.2)]
    pub watch_every: f64,
    /// Serve Prometheus metrics (rows/s, batches, lag, progressive loss,
    /// snapshots) at HOST:PORT, `/metrics`.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    /// Cluster layout.
    pub cluster: ClusterArgs,
    /// Override a pipeline key, e.g. `--set stream.batch_rows=10000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Model snapshots (overrides output.model).
    #[arg(long)]
    pub model_out: Option<PathBuf>,
    /// Progressive metrics, a JSON line per batch (overrides output.metrics).
    #[arg(long)]
    pub metrics_out: Option<PathBuf>,
    /// Start from this model's weights, with its feature statistics frozen.
    #[arg(long, value_name = "MODEL")]
    pub init_model: Option<PathBuf>,
    /// Continue from the newest checkpoint in `output.checkpoint` (an
    /// exact stream: the newest generation of its `[output] state`).
    #[arg(long)]
    pub resume: bool,
    /// With `--resume` on stdin: the row of the stream the producer's first
    /// row is (default 0: it sends the stream again from its start, and the
    /// rows the checkpoint holds are skipped).
    #[arg(long, value_name = "ROW", default_value_t = 0)]
    pub input_offset: u64,
    /// An exact stream whose `[output] state` is a checkpoint of a stream
    /// that has not ended: continue that state as a new stream, giving up
    /// the rest of the old one's input (its forget requests still stand).
    #[arg(long, conflicts_with = "resume")]
    pub abandon: bool,
    /// Every row's progressive prediction (scored before it was trained
    /// on), in input order: a path (`.parquet`, `.arrow`), or `-` for an
    /// Arrow IPC stream on stdout (the summary then goes to stderr).
    #[arg(long, value_name = "PATH")]
    pub predictions_out: Option<String>,
    /// Input columns to copy beside the predictions, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// Keys to retract while the stream runs (exact models): a Parquet,
    /// Arrow IPC or CSV table (`-` for stdin) with a column named like
    /// `data.key`, read as it arrives; see docs/incremental.md.
    #[arg(long, value_name = "PATH")]
    pub retract: Option<String>,
}

/// `predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Model file.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Input: Parquet, Arrow IPC file or stream, or CSV (named `.csv`; told
    /// apart by their first bytes), or `-`: any of them on stdin.
    #[arg(long, short)]
    pub input: String,
    /// Output: a path, or `-` for stdout.
    #[arg(long, short)]
    pub output: String,
    /// Output format (default: from the extension; `-` is an IPC stream).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Input columns to copy to the output, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub keep: Vec<String>,
    /// Binary classifiers: predict the second class where its probability
    /// is above this (default 0.5); the probability column is unchanged.
    #[arg(long)]
    pub threshold: Option<f64>,
}

/// `eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model file.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Labelled input: Parquet, Arrow IPC file or stream, CSV (named `.csv`),
    /// or `-`: any of them on stdin.
    #[arg(long, short)]
    pub input: String,
    /// Binary classifiers: also write the ROC curve (a point at every
    /// distinct score) and a 10-bin calibration table to this JSON file,
    /// for `report --curves`.
    #[arg(long, value_name = "FILE.json")]
    pub curves: Option<PathBuf>,
}

/// `validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline file.
    pub pipeline: PathBuf,
    /// Overrides, as for `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Parquet files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Writes a command's result to stdout; a reader that went away is an
/// [`Error::Output`] of kind `BrokenPipe` (a quiet exit), never a panic as
/// `println!` would make it.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|source| Error::Output {
            flag: "stdout".into(),
            path: "-".into(),
            action: "cannot be written".into(),
            source,
        })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Runs a parsed command; what it prints for the user goes to stdout,
/// logs go to stderr.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train(a),
        Command::Cv(a) => cv::run(a),
        Command::Init(a) => {
            let text = init::starter(&a.data, a.label.as_deref())?;
            match &a.out {
                None => emit(&text),
                Some(path) if path.exists() => Err(Error::Usage {
                    option: "--out".into(),
                    message: format!(
                        "{} exists: choose another path, or remove it first",
                        path.display()
                    ),
                }),
                Some(path) => {
                    crate::io::atomic::write("--out", path, text.as_bytes())?;
                    tracing::info!(path = %path.display(), "starter pipeline written; check it with `tidemill validate`");
                    Ok(())
                }
            }
        }
        Command::Stream(a) => stream(a),
        Command::Predict(a) => {
            let rows = crate::predict::predict(
                &a.model,
                &a.input,
                &a.output,
                a.format,
                &a.keep,
                a.threshold,
            )?;
            tracing::info!(rows, output = %a.output, "predictions written");
            Ok(())
        }
        Command::Eval(a) => {
            let m = match &a.curves {
                Some(curves) => crate::predict::evaluate_with_curves(&a.model, &a.input, curves)?,
                None => crate::predict::evaluate(&a.model, &a.input)?,
            };
            emit(&(to_json(&m) + "\n"))?;
            Ok(())
        }
        Command::Forget(a) => forget(a),
        Command::Validate(a) => validate(a),
        Command::Plot(a) => {
            let axes = crate::metrics::plot::Axes {
                metric: a.metric.clone(),
                by_epoch: a.by_epoch,
            };
            let title = a.title.clone().unwrap_or_else(|| {
                format!(
                    "{} against {}",
                    a.metric,
                    if a.by_epoch { "epoch" } else { "wall time" }
                )
            });
            crate::metrics::plot::plot_files(&a.metrics, &a.label, &a.out, &title, &axes)
        }
        Command::Report(a) => crate::metrics::report::report(&crate::metrics::report::Report {
            metrics: &a.metrics,
            labels: &a.label,
            curves: &a.curves,
            metric: a.metric.as_deref(),
            title: a.title.as_deref(),
            out: &a.out,
        }),
        Command::Inspect(a) => {
            let info = crate::inspect::inspect(&a.paths)?;
            if a.json {
                emit(&(to_json(&info) + "\n"))?;
            } else {
                emit(&crate::inspect::render(&info))?;
            }
            Ok(())
        }
    }
}

fn validate(a: ValidateArgs) -> Result<()> {
    let p = Pipeline::load(&a.pipeline, &a.overrides)?;
    let outputs = PipelineOutputs::new(&p, false, false);
    let requests = outputs.requests();
    let inputs = PipelineInputs::new(&a.pipeline, &p)?;
    crate::io::atomic::check_writable(&requests, &inputs.list())?;
    let plan = crate::plan::Plan::new(p)?;
    emit(&format!(
        "ok: {} file(s), {} rows, {} units; {} numeric and {} categorical feature(s); label '{}'; {}\n",
        plan.train.files.files.len(),
        plan.train.files.rows(),
        plan.train.units.len(),
        plan.draft.numeric.len(),
        plan.draft.categorical.len(),
        plan.draft.label,
        outputs.describe()
    ))
}

/// Turns transparent huge pages off for a `stream` process of one worker
/// thread: a wide hashed model's state is written at scattered slots, and
/// the first write to a huge page zeroes all 2 MiB of it (after another
/// memory-hungry process, the kernel may first have to assemble one). With
/// 4 KiB pages its memory follows the slots it touches. With several
/// worker threads they are kept: the threads' many small page faults then
/// cost more than the zeroing (docs/streaming.md, "Measured"). Where the
/// kernel refuses, the stream runs as it is.
fn no_huge_pages(worker_threads: usize) {
    if worker_threads != 1 {
        return;
    }
    set_huge_pages(false, "a stream on one worker thread");
}

/// From this many parameters (before classes) a `train` process keeps
/// transparent huge pages: a hashed model of 2^20 slots or more, whose
/// state its workers write at scattered slots.
const HUGE_PAGES_FROM_PARAMS: usize = 1 << 20;

/// A `train` process runs without transparent huge pages unless its model
/// is large: it turns them off first (what it stages and reads before the
/// plan is known is read in order too), and back on here for a model of
/// [`HUGE_PAGES_FROM_PARAMS`] or more, as a stream on several threads
/// keeps them. A small model's large memory is the rows it caches and the
/// batches it decodes, read and written in order: huge pages there cost
/// memory (the allocator's partly used 2 MiB pages; W1 on 2 workers peaked
/// ~55 MB higher) and time (first touches zero 2 MiB at once; W1 and the
/// wide L-BFGS table ran 2–4% faster without them; docs/benchmarks.md,
/// "Transparent huge pages").
/// A process that started with them off (its parent's choice, inherited)
/// is left so.
fn fit_pages_to_model(plan: &crate::plan::Plan, turned_off: bool) {
    let params = crate::model::param_count(&plan.pipeline.model, &plan.draft);
    if turned_off && params >= HUGE_PAGES_FROM_PARAMS {
        set_huge_pages(true, "a model of 2^20 parameters or more");
    }
}

/// Turns transparent huge pages off for a `train` process until its
/// model is known ([`fit_pages_to_model`]); true if this turned them off
/// (false where they already were, or the kernel refused).
fn huge_pages_off_until_the_model_is_known() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let already = nix::sys::prctl::get_thp_disable().unwrap_or(true);
        !already && set_huge_pages(false, "a train process, until its model is known")
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    false
}

/// Turns transparent huge pages on or off for this process (`why` is
/// logged). Where the kernel refuses, the job runs as it is.
/// True if the kernel took it.
fn set_huge_pages(on: bool, why: &str) -> bool {
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (on, why);
        false
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    match nix::sys::prctl::set_thp_disable(!on) {
        Ok(()) => {
            tracing::debug!(on, reason = why, "transparent huge pages");
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "transparent huge pages left as they are");
            false
        }
    }
}

fn stream(a: StreamArgs) -> Result<()> {
    no_huge_pages(a.cluster.workers);
    let cluster = a.cluster.cluster()?;
    let mut pipeline = Pipeline::load(&a.pipeline, &a.overrides)?;
    if let Some(m) = a.model_out.clone() {
        pipeline.output.model = Some(m);
    }
    if let Some(m) = a.metrics_out.clone() {
        pipeline.output.metrics = Some(m);
    }
    let input = match a.input.as_str() {
        "-" => {
            if a.watch {
                return Err(Error::Usage {
                    option: "--watch".into(),
                    message: "watches a directory; stdin is read as it arrives".into(),
                });
            }
            if a.rate.is_some() {
                return Err(Error::Usage {
                    option: "--rate".into(),
                    message: "paces a replay; stdin arrives at its producer's pace".into(),
                });
            }
            crate::stream::source::Input::Stdin
        }
        dir if a.watch => {
            if a.rate.is_some() {
                return Err(Error::Usage {
                    option: "--rate".into(),
                    message:
                        "paces a replay; a watched directory's files arrive at their writers' pace"
                            .into(),
                });
            }
            if !(a.watch_every.is_finite() && a.watch_every > 0.0) {
                return Err(Error::Usage {
                    option: "--watch-every".into(),
                    message: format!("must be a number of seconds > 0, got {}", a.watch_every),
                });
            }
            crate::stream::source::Input::Watch {
                dir: PathBuf::from(dir),
                every: Duration::from_secs_f64(a.watch_every.min(3600.0)),
            }
        }
        path => {
            if let Some(r) = a.rate.filter(|r| !(r.is_finite() && *r > 0.0)) {
                return Err(Error::Usage {
                    option: "--rate".into(),
                    message: format!("must be a number of rows per second > 0, got {r}"),
                });
            }
            crate::stream::source::Input::Replay {
                path: PathBuf::from(path),
                rate: a.rate,
            }
        }
    };
    if pipeline.optimizer == crate::spec::OptimizerSpec::Exact {
        return stream_exact(a, pipeline, input, &cluster);
    }
    if a.abandon {
        return Err(Error::Usage {
            option: "--abandon".into(),
            message: "gives up an exact stream's unfinished checkpoint in its [output] state (optimizer.kind = 'exact')".into(),
        });
    }
    if a.retract.is_some() {
        return Err(Error::Usage {
            option: "--retract".into(),
            message: "retracts rows from an exact model (optimizer.kind = 'exact'); an iterative model cannot forget a row".into(),
        });
    }
    let init = match &a.init_model {
        Some(path) => Some(crate::train::warm::InitModel::load(path)?),
        None => None,
    };
    let job = crate::stream::StreamJob {
        pipeline,
        input,
        init,
        resume: a.resume,
        input_offset: a.input_offset,
        predictions: a.predictions_out.clone(),
        keep: a.keep,
        metrics_addr: a.metrics_addr,
    };
    let Some(summary) = crate::stream::run(job, &cluster)? else {
        return Ok(());
    };
    tracing::info!(
        rows = summary.rows,
        batches = summary.batches,
        rows_per_second = summary.rows_per_second,
        "stream done"
    );
    if a.predictions_out.as_deref() == Some("-") {
        // Stdout carries the predictions.
        eprintln!("{}", to_json(&summary));
        return Ok(());
    }
    emit(&(to_json(&summary) + "\n"))
}

/// `stream` with `optimizer.kind = "exact"` (src/stream/exact.rs).
fn stream_exact(
    a: StreamArgs,
    pipeline: Pipeline,
    input: crate::stream::source::Input,
    cluster: &crate::cluster::Cluster,
) -> Result<()> {
    for (flag, given) in [
        ("--init-model", a.init_model.is_some()),
        ("--predictions-out", a.predictions_out.is_some()),
        ("--metrics-addr", a.metrics_addr.is_some()),
    ] {
        if given {
            return Err(Error::Usage {
                option: flag.into(),
                message: "not available with an exact model yet (docs/incremental.md)".into(),
            });
        }
    }
    if a.retract.as_deref() == Some("-") && a.input == "-" {
        return Err(Error::Usage {
            option: "--retract".into(),
            message: "stdin is the input already: give the retractions another path (a FIFO works)"
                .into(),
        });
    }
    let job = crate::stream::exact::ExactJob {
        pipeline,
        input,
        retract: a.retract,
        resume: a.resume,
        input_offset: a.input_offset,
        abandon: a.abandon,
    };
    let Some(summary) = crate::stream::exact::run(job, cluster)? else {
        return Ok(());
    };
    emit(&(to_json(&summary) + "\n"))
}

/// `train` with `optimizer.kind = "exact"` (src/incremental).
fn train_exact(
    plan: crate::plan::Plan,
    a: &TrainArgs,
    cluster: &crate::cluster::Cluster,
    outputs: Option<OutputSet>,
    paths: &PipelineOutputs,
    started: std::time::Instant,
) -> Result<()> {
    for (flag, given) in [
        ("--init-model", a.init_model.is_some()),
        ("--resume", a.resume),
    ] {
        if given {
            return Err(Error::Usage {
                option: flag.into(),
                message: "an exact model is solved from its statistics: it has no starting point (continue from its state with `tidemill forget`)".into(),
            });
        }
    }
    let fitted = crate::incremental::train(plan, cluster)?;
    let (Some(outputs), Some(fitted)) = (outputs, fitted) else {
        return Ok(());
    };
    let mut contents = Vec::new();
    if paths.model.is_some() {
        contents.push(fitted.model.to_json()?);
    }
    if paths.metrics.is_some() {
        // One record: the exact objective of the solution.
        let record = serde_json::json!({
            "epoch": 0,
            "train_loss": fitted.model.training.objective,
            "train_rows": fitted.model.training.rows,
        });
        contents.push(to_json(&record) + "\n");
    }
    finish_exact(outputs, &contents, fitted, started)
}

/// Writes and commits the outputs of an exact `train` or `forget`, then
/// commits the state (the model first: see `incremental::PendingState`),
/// then prints the summary.
fn finish_exact(
    mut outputs: OutputSet,
    contents: &[String],
    mut fitted: crate::incremental::Fitted,
    started: std::time::Instant,
) -> Result<()> {
    for (output, text) in outputs.outputs().iter_mut().zip(contents) {
        output.write_all(text.as_bytes())?;
    }
    outputs.commit()?;
    let state = match fitted.state.take() {
        Some(pending) => Some(pending.commit()?),
        None => None,
    };
    emit(&(to_json(&exact_summary(&fitted, state.as_deref(), started)) + "\n"))
}

/// The JSON line an exact `train` or `forget` prints.
fn exact_summary(
    fitted: &crate::incremental::Fitted,
    state: Option<&std::path::Path>,
    started: std::time::Instant,
) -> serde_json::Value {
    let t = &fitted.model.training;
    serde_json::json!({
        "train_rows": t.rows,
        "objective": t.objective,
        "keys_blake3_sum": t.data.as_ref().map(|d| d.keys_blake3_sum.clone()),
        "state": state.map(|p| p.display().to_string()),
        "seconds": started.elapsed().as_secs_f64(),
    })
}

fn forget(a: ForgetArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let mut pipeline = Pipeline::load(&a.pipeline, &a.overrides)?;
    let model_flag = a.model_out.is_some();
    if let Some(m) = a.model_out {
        pipeline.output.model = Some(m);
    }
    let paths = PipelineOutputs::new(&pipeline, model_flag, false);
    let inputs = PipelineInputs::new(&a.pipeline, &pipeline)?;
    let outputs = OutputSet::prepare(&paths.requests(), &inputs.list())?;
    let fitted = if matches!(pipeline.optimizer, crate::spec::OptimizerSpec::Lbfgs { .. }) {
        let cluster = crate::cluster::Cluster {
            workers: a.workers,
            ..crate::cluster::Cluster::default()
        };
        cluster.validate()?;
        if a.erase {
            return Err(Error::Usage {
                option: "--erase".into(),
                message: "a re-optimised model's state holds no rows (they are data.train's): erase them there".into(),
            });
        }
        crate::incremental::refit::forget(&pipeline, &a.keys, &cluster)?
    } else {
        crate::incremental::forget(&pipeline, &a.keys, a.erase)?
    };
    let contents = match paths.model {
        Some(_) => vec![fitted.model.to_json()?],
        None => Vec::new(),
    };
    finish_exact(outputs, &contents, fitted, started)
}

/// True if the pipeline's data (training or validation files) names `-`.
fn reads_stdin(p: &Pipeline) -> bool {
    let validation = match &p.data.validation {
        Some(crate::spec::ValidationSpec::Files(f)) => f.as_slice(),
        _ => &[],
    };
    p.data
        .train
        .iter()
        .chain(validation)
        .any(|f| f.as_os_str() == "-")
}

/// What can end a training run, for the summary's `stopped_by`.
struct StopLimits {
    /// `train.epochs` (L-BFGS: its iteration limit).
    epochs: u32,
    /// L-BFGS's `tolerance` and `gradient_tolerance`: it ends early when
    /// it converges.
    lbfgs: Option<(f64, Option<f64>)>,
    /// Early stopping's metric and patience.
    early: Option<(String, u32)>,
}

impl StopLimits {
    fn of(p: &Pipeline) -> StopLimits {
        StopLimits {
            epochs: p.train.epochs,
            lbfgs: match p.optimizer {
                crate::spec::OptimizerSpec::Lbfgs {
                    tolerance,
                    gradient_tolerance,
                    ..
                } => Some((tolerance, gradient_tolerance)),
                _ => None,
            },
            early: p
                .train
                .early_stopping
                .as_ref()
                .map(|e| (e.metric.clone(), e.patience)),
        }
    }

    /// Why a run of `ran` epochs (iterations) stopped, reporting the
    /// model of epoch `kept`: `epochs`, `early_stopping`, `converged` or
    /// `iteration_limit`, and a sentence saying so. `by` is L-BFGS's
    /// reason to stop, when it converged.
    fn stopped_by(
        &self,
        ran: u32,
        kept: Option<u32>,
        by: Option<Convergence>,
    ) -> (&'static str, String) {
        let best = kept.filter(|&k| k < ran && self.early.is_some());
        let kept_note = best.map_or(String::new(), |k| {
            format!("; the model is epoch {k}'s, the best")
        });
        match (&self.early, self.lbfgs) {
            (_, Some((tolerance, gradient))) if by.is_some() => (
                "converged",
                format!(
                    "L-BFGS converged after {ran} iteration(s): {}{kept_note}",
                    by.map_or(String::new(), |b| b.describe(tolerance, gradient))
                ),
            ),
            (Some((metric, patience)), _) if ran < self.epochs && best.is_some() => (
                "early_stopping",
                format!(
                    "early stopping after epoch {ran}: {metric} did not improve for {patience} epoch(s); the model is epoch {}'s",
                    kept.unwrap_or(ran)
                ),
            ),
            // Resumed from the checkpoint of its converged iterate.
            (_, Some(_)) if ran < self.epochs => (
                "converged",
                format!("L-BFGS converged after {ran} iteration(s){kept_note}"),
            ),
            (_, Some(_)) => (
                "iteration_limit",
                format!(
                    "L-BFGS used all {} iterations without meeting its tolerances (raise train.epochs, or loosen optimizer.tolerance or optimizer.gradient_tolerance)",
                    self.epochs
                ),
            ),
            _ => match best {
                Some(k) => (
                    "epochs",
                    format!("trained all {ran} epoch(s); the model is epoch {k}'s, the best"),
                ),
                None => ("epochs", format!("trained all {ran} epoch(s)")),
            },
        }
    }
}

fn train(a: TrainArgs) -> Result<()> {
    if a.max_restarts > 0 {
        return supervise::run(&a);
    }
    let pages_off = huge_pages_off_until_the_model_is_known();
    let cluster = a.cluster.cluster()?;
    let mut pipeline = Pipeline::load(&a.pipeline, &a.overrides)?;
    if cluster.processes > 1 && reads_stdin(&pipeline) {
        return Err(Error::Usage {
            option: "data.train".into(),
            message: format!(
                "'-' (stdin) reaches one process, and all {} read the training data: give it as a file every process can read",
                cluster.processes
            ),
        });
    }
    let (model_flag, metrics_flag) = (a.model_out.is_some(), a.metrics_out.is_some());
    if let Some(m) = &a.model_out {
        pipeline.output.model = Some(m.clone());
    }
    if let Some(m) = &a.metrics_out {
        pipeline.output.metrics = Some(m.clone());
    }
    let paths = PipelineOutputs::new(&pipeline, model_flag, metrics_flag);
    // Process 0 writes the outputs. They are prepared before training, so
    // that an unwritable path fails now rather than after the work; the
    // other processes create nothing.
    let outputs = if cluster.is_leader() {
        let inputs = PipelineInputs::new(&a.pipeline, &pipeline)?;
        Some(OutputSet::prepare(&paths.requests(), &inputs.list())?)
    } else {
        None
    };
    let started = std::time::Instant::now();
    tracing::info!(
        pipeline = %a.pipeline.display(),
        workers = cluster.total_workers(),
        processes = cluster.processes,
        "training"
    );
    let plan = crate::plan::Plan::new(pipeline)?;
    fit_pages_to_model(&plan, pages_off);
    if plan.pipeline.optimizer == crate::spec::OptimizerSpec::Exact {
        return train_exact(plan, &a, &cluster, outputs, &paths, started);
    }
    let init = match &a.init_model {
        Some(path) => Some(crate::train::warm::InitModel::load(path)?),
        None => None,
    };
    // A state to forget rows from later: every key read (repeats refused)
    // and the directory locked before training.
    let begun = match (&plan.pipeline.output.state, cluster.is_leader()) {
        (Some(_), true) => Some(crate::incremental::refit::begin(&plan)?),
        _ => None,
    };
    let limits = StopLimits::of(&plan.pipeline);
    let mut report = crate::train::run_job(plan, init, a.resume, &cluster)?;
    let Some(mut outputs) = outputs else {
        return Ok(());
    };
    let pending = match (begun, report.model.as_mut()) {
        (Some(b), Some(m)) => Some(b.finish(m)?),
        _ => None,
    };
    let model = report.model.as_ref().ok_or_else(|| Error::Worker {
        worker: 0,
        message: "finished without a model".into(),
    })?;
    // The outputs were requested model first, then metrics.
    let mut contents = Vec::new();
    if paths.model.is_some() {
        contents.push(model.to_json()?);
    }
    if paths.metrics.is_some() {
        contents.push(crate::metrics::sink::to_jsonl(&report.records));
    }
    for (output, text) in outputs.outputs().iter_mut().zip(&contents) {
        output.write_all(text.as_bytes())?;
    }
    outputs.commit()?;
    for (flag, path) in [&paths.model, &paths.metrics].into_iter().flatten() {
        tracing::info!(path = %path.display(), flag, "written");
    }
    let state = match pending {
        Some(p) => Some(p.commit()?),
        None => None,
    };
    // With early stopping the model is the best epoch's: report that one.
    let last = report
        .records
        .iter()
        .rev()
        .find(|r| r.best == Some(true))
        .or(report.records.last());
    let (stopped_by, why) = limits.stopped_by(
        model.training.epochs,
        last.map(|r| r.epoch),
        report.converged_by,
    );
    if stopped_by == "iteration_limit" {
        tracing::warn!("{why}");
    } else {
        tracing::info!("{why}");
    }
    tracing::info!(
        train_rows = report.train_rows,
        validation_rows = report.validation_rows,
        units = report.units,
        rows_per_worker = ?report.rows_per_worker,
        epochs = model.training.epochs,
        stopped_by,
        seconds = started.elapsed().as_secs_f64(),
        "done"
    );
    let summary = serde_json::json!({
        "epochs": model.training.epochs,
        "stopped_by": stopped_by,
        "converged_by": report
            .converged_by
            .filter(|_| stopped_by == "converged")
            .map(Convergence::name),
        "train_rows": report.train_rows,
        "validation_rows": report.validation_rows,
        "rows_per_worker": report.rows_per_worker,
        "params_per_worker": report.params_per_worker,
        "objective": model.training.objective,
        "epoch_reported": last.map(|r| r.epoch),
        "train_loss": last.and_then(|r| r.train_loss),
        "validation": last.and_then(|r| r.validation.clone()),
        "keys_blake3_sum": model.training.data.as_ref().map(|d| d.keys_blake3_sum.clone()),
        "state": state.map(|p| p.display().to_string()),
        "seconds": started.elapsed().as_secs_f64(),
    });
    emit(&(to_json(&summary) + "\n"))?;
    Ok(())
}
