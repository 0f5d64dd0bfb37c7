//! Where a stream's rows come from: an Arrow IPC stream on stdin, or a
//! replay of Parquet (or Arrow IPC) files in row order. A reader thread
//! fills a channel of at most [`BUFFERED`] record batches, so a producer
//! faster than training blocks on its pipe instead of filling memory; the
//! leader takes rows from the channel only when the dataflow's frontier
//! lets it (see [`super::leader`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::io::table;

/// A stream reads Parquet and Arrow IPC: CSV has no column types, and a
/// stream cannot infer them from rows that have not arrived.
const NO_CSV: table::CsvColumns = table::CsvColumns::Refused(
    "stream reads Parquet and Arrow IPC (CSV has no column types, and a stream cannot infer them from rows yet to come): convert it first, e.g. with DuckDB or pyarrow",
);

/// Record batches the reader thread may hold ahead of the leader.
pub const BUFFERED: usize = 2;

/// What `--input` names.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `-`: an Arrow IPC stream on stdin (a live source).
    Stdin,
    /// A Parquet or Arrow IPC file, or a directory of Parquet files (in
    /// name order), replayed in row order, at most `rate` rows a second.
    Replay {
        /// The file or directory.
        path: PathBuf,
        /// Rows per second at most (`--rate`); as fast as possible if none.
        rate: Option<f64>,
    },
    /// A directory watched for Parquet files renamed into it, each read
    /// once, in name order (a live source).
    Watch {
        /// The directory.
        dir: PathBuf,
        /// How often it is listed.
        every: Duration,
    },
}

impl Input {
    /// True for a source whose rows arrive as they are produced (batches
    /// may then also end by time, `stream.batch_seconds`).
    pub fn is_live(&self) -> bool {
        matches!(self, Input::Stdin | Input::Watch { .. })
    }

    /// The input as the checkpoint's identity names it.
    pub fn describe(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::Replay { path, .. } => path.display().to_string(),
            Input::Watch { dir, .. } => format!("{} (watched)", dir.display()),
        }
    }
}

/// Rows as they arrived: one record batch and where it came from.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The rows.
    pub batch: RecordBatch,
    /// The file they are in (`-` for stdin).
    pub origin: PathBuf,
    /// The row of the file (or of stdin's stream) the first one is.
    pub file_row: u64,
}

/// What the source has now.
#[derive(Debug)]
pub enum Poll {
    /// Rows.
    Rows(Arrival),
    /// Nothing yet (a live source).
    Idle,
    /// The end of the stream.
    End,
}

/// An open source: its schema and a channel the reader thread fills.
pub struct Feed {
    schema: SchemaRef,
    rx: Receiver<Result<Arrival>>,
    ended: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").field("ended", &self.ended).finish()
    }
}

impl Feed {
    /// Opens `input`; a replay is sorted by `order_by` (stable) first, which
    /// reads the whole of it. The first `skip` rows are passed over (a
    /// resumed stream: the rows its checkpoint already holds).
    ///
    /// A watched directory resumes at `at_file` instead: the file it was
    /// reading (files before it in name order are done, whether or not
    /// they are still there) and the rows of it already read.
    pub fn open(
        input: &Input,
        order_by: Option<&str>,
        skip: u64,
        at_file: Option<(String, u64)>,
    ) -> Result<Feed> {
        let (tx, rx) = sync_channel::<Result<Arrival>>(BUFFERED);
        let (schema_tx, schema_rx) = sync_channel::<Result<SchemaRef>>(1);
        let (input, order_by) = (input.clone(), order_by.map(String::from));
        // The reader opens the input itself (stdin's schema comes first):
        // nothing it holds has to cross threads.
        std::thread::Builder::new()
            .name("tidemill-stream-source".into())
            .spawn(move || {
                let (schema, rows) = match rows_of(&input, order_by.as_deref(), skip, at_file) {
                    Ok(opened) => opened,
                    Err(e) => {
                        let _ = schema_tx.send(Err(e));
                        return;
                    }
                };
                if schema_tx.send(Ok(schema)).is_err() {
                    return;
                }
                for item in rows {
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the source's reader: {e}")))?;
        let schema = schema_rx
            .recv()
            .map_err(|_| Error::Internal("the source's reader ended before the schema".into()))??;
        Ok(Feed {
            schema,
            rx,
            ended: false,
        })
    }

    /// The input's schema.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The next rows, waiting up to `wait` for them.
    pub fn poll(&mut self, wait: Duration) -> Result<Poll> {
        if self.ended {
            return Ok(Poll::End);
        }
        match self.rx.recv_timeout(wait) {
            Ok(Ok(a)) => Ok(Poll::Rows(a)),
            Ok(Err(e)) => {
                self.ended = true;
                Err(e)
            }
            Err(RecvTimeoutError::Timeout) => Ok(Poll::Idle),
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = true;
                Ok(Poll::End)
            }
        }
    }
}

type Rows = Box<dyn Iterator<Item = Result<Arrival>>>;

/// The schema and the rows of `input`, in the order they flow, the first
/// `skip` passed over (a watched directory: from `at_file`).
fn rows_of(
    input: &Input,
    order_by: Option<&str>,
    skip: u64,
    at_file: Option<(String, u64)>,
) -> Result<(SchemaRef, Rows)> {
    match input {
        Input::Stdin => {
            if order_by.is_some() {
                return Err(Error::PipelineValue {
                    key: "stream.order_by".into(),
                    message: "sorts a replay; stdin is a live source, read in the order it arrives"
                        .into(),
                });
            }
            let t = table::open("-", &NO_CSV)?;
            let schema = t.schema.clone();
            let rows = Skipped {
                inner: arrivals(t),
                left: skip,
            };
            Ok((schema, Box::new(rows)))
        }
        Input::Watch { dir, every } => {
            if order_by.is_some() {
                return Err(Error::PipelineValue {
                    key: "stream.order_by".into(),
                    message:
                        "sorts a replay; a watched directory is read file by file as files arrive"
                            .into(),
                });
            }
            if !dir.is_dir() {
                return Err(Error::Usage {
                    option: "--input".into(),
                    message: format!("--watch needs a directory; {} is not one", dir.display()),
                });
            }
            let mut watched = Watched {
                dir: dir.clone(),
                every: *every,
                last: None,
                read: Default::default(),
                current: None,
                schema: None,
            };
            // Resumed: the files before the one it was reading are done;
            // of that one (if it is still there), the rows read are.
            let mut first = None;
            if let Some((name, rows)) = at_file {
                let name = std::ffi::OsString::from(name);
                watched.read = watched
                    .listed()?
                    .into_iter()
                    .filter(|n| *n <= name)
                    .collect();
                let path = dir.join(&name);
                watched.last = Some(name);
                if path.exists() {
                    first = Some((path, rows));
                }
            }
            // The schema is the first file's: wait for one.
            let (first, rows) = match first {
                Some(f) => f,
                None => loop {
                    match watched.next_file()? {
                        Some(f) => break (f, 0),
                        None => std::thread::sleep(*every),
                    }
                },
            };
            let t = table::open(&path_text(&first)?, &NO_CSV)?;
            watched.schema = Some(t.schema.clone());
            watched.current = Some(Box::new(Skipped {
                inner: arrivals(t),
                left: rows,
            }));
            Ok((
                watched
                    .schema
                    .clone()
                    .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty())),
                Box::new(watched),
            ))
        }
        Input::Replay { path, rate } => {
            let files = replay_files(path)?;
            let first = table::open(&path_text(&files[0])?, &NO_CSV)?;
            let schema = first.schema.clone();
            let rows: Rows = Box::new(Chained {
                files: files.into_iter().skip(1).collect(),
                current: Some(Box::new(arrivals(first))),
                schema: schema.clone(),
            });
            let rows: Rows = match order_by {
                Some(column) => Box::new(sorted(rows, column)?.into_iter().map(Ok)),
                None => rows,
            };
            // Skipped before paced: a resumed replay does not wait out the
            // rows it passes over.
            let rows: Rows = Box::new(Skipped {
                inner: rows,
                left: skip,
            });
            let rows: Rows = match rate {
                Some(r) => Box::new(Paced::new(rows, *r)),
                None => rows,
            };
            Ok((schema, rows))
        }
    }
}

fn path_text(p: &Path) -> Result<String> {
    p.to_str().map(String::from).ok_or_else(|| Error::Usage {
        option: "--input".into(),
        message: format!("{} is not a UTF-8 path", p.display()),
    })
}

/// A file, or the Parquet files of a directory in name order (hidden
/// files and those that do not end in `.parquet` left out).
fn replay_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.') && n.ends_with(".parquet"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::Usage {
            option: "--input".into(),
            message: format!("{} holds no .parquet files", path.display()),
        });
    }
    Ok(files)
}

fn arrivals(t: table::TableInput) -> impl Iterator<Item = Result<Arrival>> {
    t.map(|item| {
        item.map(|(batch, origin)| Arrival {
            batch,
            origin: origin.path,
            file_row: origin.first_row,
        })
    })
}

/// Parquet files as they are renamed into a directory, in name order: a
/// file is read once it has a name ending in `.parquet` that does not
/// start with `.` (writers write elsewhere, or under a hidden name, and
/// rename). A file whose name sorts before one already read is an error:
/// the stream's order, and so a resumed stream's position, is the order of
/// the names.
struct Watched {
    dir: PathBuf,
    every: Duration,
    last: Option<std::ffi::OsString>,
    read: std::collections::HashSet<std::ffi::OsString>,
    current: Option<Rows>,
    schema: Option<SchemaRef>,
}

impl Watched {
    /// The Parquet files in the directory now, in name order.
    fn listed(&self) -> Result<Vec<std::ffi::OsString>> {
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .filter(|n| {
                n.to_str()
                    .is_some_and(|n| !n.starts_with('.') && n.ends_with(".parquet"))
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// The next file to read, if one has arrived.
    fn next_file(&mut self) -> Result<Option<PathBuf>> {
        let names = self.listed()?;
        // Files read and since removed (archived) are forgotten.
        self.read.retain(|n| names.binary_search(n).is_ok());
        let next = match &self.last {
            None => names.into_iter().next(),
            Some(last) => {
                if let Some(late) = names.iter().find(|n| *n < last && !self.read.contains(*n)) {
                    return Err(Error::Usage {
                        option: "--watch".into(),
                        message: format!(
                            "{} arrived after {}, which sorts after it: name the files so that they sort in the order they arrive (a timestamp or a counter first)",
                            self.dir.join(late).display(),
                            self.dir.join(last).display()
                        ),
                    });
                }
                names.into_iter().find(|n| n > last)
            }
        };
        Ok(next.map(|n| {
            let path = self.dir.join(&n);
            self.read.insert(n.clone());
            self.last = Some(n);
            path
        }))
    }
}

impl Iterator for Watched {
    type Item = Result<Arrival>;
    fn next(&mut self) -> Option<Result<Arrival>> {
        loop {
            if let Some(item) = self.current.as_mut().and_then(|c| c.next()) {
                return Some(item);
            }
            self.current = None;
            match self.next_file() {
                Err(e) => return Some(Err(e)),
                Ok(None) => std::thread::sleep(self.every),
                Ok(Some(path)) => {
                    let opened = path_text(&path).and_then(|p| table::open(&p, &NO_CSV));
                    match opened {
                        Err(e) => return Some(Err(e)),
                        Ok(t)
                            if self
                                .schema
                                .as_ref()
                                .is_some_and(|s| t.schema.fields() != s.fields()) =>
                        {
                            return Some(Err(Error::SchemaDrift {
                                file: path,
                                reference: self.dir.clone(),
                                difference:
                                    "its columns or their types differ from the first file's".into(),
                            }))
                        }
                        Ok(t) => self.current = Some(Box::new(arrivals(t))),
                    }
                }
            }
        }
    }
}

/// The files of a replay one after the other; each must have the first
/// one's schema.
struct Chained {
    files: std::collections::VecDeque<PathBuf>,
    current: Option<Rows>,
    schema: SchemaRef,
}

impl Iterator for Chained {
    type Item = Result<Arrival>;
    fn next(&mut self) -> Option<Result<Arrival>> {
        loop {
            if let Some(item) = self.current.as_mut()?.next() {
                return Some(item);
            }
            let next = self.files.pop_front();
            self.current = None;
            let path = next?;
            let opened = path_text(&path).and_then(|p| table::open(&p, &NO_CSV));
            match opened {
                Err(e) => return Some(Err(e)),
                Ok(t) if t.schema.fields() != self.schema.fields() => {
                    return Some(Err(Error::SchemaDrift {
                        file: path,
                        reference: PathBuf::from("the replay's first file"),
                        difference: "its columns or their types differ".into(),
                    }))
                }
                Ok(t) => self.current = Some(Box::new(arrivals(t))),
            }
        }
    }
}

/// Reads every row and sorts them by `column` (stable: ties keep their
/// order), in batches of at most 65 536 rows.
fn sorted(rows: impl Iterator<Item = Result<Arrival>>, column: &str) -> Result<Vec<Arrival>> {
    let all: Vec<Arrival> = rows.collect::<Result<_>>()?;
    let Some(first) = all.first() else {
        return Ok(Vec::new());
    };
    let schema = first.batch.schema();
    if schema.index_of(column).is_err() {
        return Err(Error::PipelineValue {
            key: "stream.order_by".into(),
            message: format!("'{column}' is not a column of {}", first.origin.display()),
        });
    }
    let batches: Vec<&RecordBatch> = all.iter().map(|a| &a.batch).collect();
    let whole = arrow::compute::concat_batches(&schema, batches).map_err(|e| {
        Error::Internal(format!(
            "cannot put the replay's rows together to sort them: {e}"
        ))
    })?;
    let key: ArrayRef = whole.column(schema.index_of(column).unwrap_or(0)).clone();
    if key.null_count() > 0 {
        return Err(Error::PipelineValue {
            key: "stream.order_by".into(),
            message: format!("column '{column}' holds nulls: the order of those rows is undefined"),
        });
    }
    // Ties keep their order: the row number is the second key.
    let position: ArrayRef =
        std::sync::Arc::new(UInt32Array::from_iter_values(0..whole.num_rows() as u32));
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: key,
                options: None,
            },
            SortColumn {
                values: position,
                options: None,
            },
        ],
        None,
    )
    .map_err(|e| Error::PipelineValue {
        key: "stream.order_by".into(),
        message: format!("cannot sort by '{column}': {e}"),
    })?;
    let whole = take_record_batch(&whole, &order)
        .map_err(|e| Error::Internal(format!("cannot reorder the replay's rows: {e}")))?;
    let origin = PathBuf::from(format!("{} (sorted by {column})", first.origin.display()));
    let mut out = Vec::new();
    let mut at = 0;
    while at < whole.num_rows() {
        let n = (whole.num_rows() - at).min(1 << 16);
        out.push(Arrival {
            batch: whole.slice(at, n),
            origin: origin.clone(),
            file_row: at as u64,
        });
        at += n;
    }
    Ok(out)
}

/// Passes over the first `left` rows.
struct Skipped<I> {
    inner: I,
    left: u64,
}

impl<I: Iterator<Item = Result<Arrival>>> Iterator for Skipped<I> {
    type Item = Result<Arrival>;
    fn next(&mut self) -> Option<Result<Arrival>> {
        loop {
            let mut a = match self.inner.next()? {
                Ok(a) => a,
                Err(e) => return Some(Err(e)),
            };
            let n = a.batch.num_rows() as u64;
            if self.left == 0 {
                return Some(Ok(a));
            }
            if n <= self.left {
                self.left -= n;
                continue;
            }
            let k = self.left as usize;
            self.left = 0;
            a.batch = a.batch.slice(k, n as usize - k);
            a.file_row += k as u64;
            return Some(Ok(a));
        }
    }
}

/// At most `rate` rows a second.
struct Paced<I> {
    inner: I,
    rate: f64,
    started: Instant,
    sent: u64,
}

impl<I> Paced<I> {
    fn new(inner: I, rate: f64) -> Paced<I> {
        Paced {
            inner,
            rate,
            started: Instant::now(),
            sent: 0,
        }
    }
}

impl<I: Iterator<Item = Result<Arrival>>> Iterator for Paced<I> {
    type Item = Result<Arrival>;
    fn next(&mut self) -> Option<Result<Arrival>> {
        let item = self.inner.next()?;
        if let Ok(a) = &item {
            let due = Duration::from_secs_f64(self.sent as f64 / self.rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
            self.sent += a.batch.num_rows() as u64;
        }
        Some(item)
    }
}
