//! Tabular input and output: Parquet files, Arrow IPC files and streams,
//! and `-` for stdin / stdout (outputs are prepared by
//! [`super::atomic::OutputSet`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::writer::{FileWriter, StreamWriter};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::atomic::Output;
use super::guard;
use crate::error::{Error, Result};

/// Table formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Apache Parquet (zstd).
    Parquet,
    /// Arrow IPC file (Feather v2).
    Ipc,
    /// Arrow IPC stream.
    IpcStream,
    /// CSV with a header line (arrow-csv's defaults).
    Csv,
}

impl Format {
    /// The output format of `path` (given to `flag`) by its extension:
    /// `-` → IPC stream, `.parquet`/`.pq` → Parquet, `.arrow`/`.ipc`/
    /// `.feather` → IPC file, `.arrows` → IPC stream, `.csv` → CSV. A
    /// device or FIFO (`/dev/null`, a named pipe) without one of them
    /// gets an IPC stream, as `-` does; any other file is refused (a file
    /// named `.txt` that held Parquet would be a silent mistake).
    pub fn for_output(flag: &str, path: &str) -> Result<Format> {
        use std::os::unix::fs::FileTypeExt;
        if path == "-" {
            return Ok(Format::IpcStream);
        }
        let streamed = std::fs::metadata(path).is_ok_and(|m| {
            let t = m.file_type();
            t.is_char_device() || t.is_fifo() || t.is_socket()
        });
        let ext = Path::new(path)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("parquet" | "pq") => Ok(Format::Parquet),
            Some("arrow" | "ipc" | "feather") => Ok(Format::Ipc),
            Some("arrows") => Ok(Format::IpcStream),
            Some("csv") => Ok(Format::Csv),
            _ if streamed => Ok(Format::IpcStream),
            _ => Err(Error::Usage {
                option: flag.into(),
                message: format!(
                    "cannot tell the format of '{path}' from its extension: use .parquet, .arrow (an Arrow IPC file), .arrows (an Arrow IPC stream) or .csv{}",
                    if flag == "--output" { ", or give --format" } else { "" }
                ),
            }),
        }
    }
}

/// Where a batch came from, for error messages.
#[derive(Debug, Clone)]
pub struct BatchOrigin {
    /// File (or `-`).
    pub path: PathBuf,
    /// Row group, for Parquet.
    pub row_group: Option<usize>,
    /// Row of the batch's first row in the input.
    pub first_row: u64,
}

/// A sequence of record batches from one input.
pub struct TableInput {
    /// The schema.
    pub schema: SchemaRef,
    batches: Box<dyn Iterator<Item = Result<(RecordBatch, BatchOrigin)>>>,
}

impl Iterator for TableInput {
    type Item = Result<(RecordBatch, BatchOrigin)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.batches.next()
    }
}

fn csv_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Csv {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn ipc_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Ipc {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// How the columns of a CSV input are typed: CSV has none of its own, and
/// inferring them from the values would turn a category `01` into the
/// number 1 (a silently wrong prediction).
#[derive(Debug, Clone)]
pub enum CsvColumns {
    /// CSV is not read here, for this reason.
    Refused(&'static str),
    /// These columns are parsed as numbers (`f64`; an empty field is null);
    /// every other one is kept as the text it is.
    Numeric(Vec<String>),
    /// Training data: these columns are kept as text (the categorical and
    /// key columns the pipeline names); every
    /// other one is an integer or float column where arrow-csv infers one
    /// from all of its values, else text (`true`/`false` included), as
    /// `predict` and `eval` read them.
    Inferred(Vec<String>),
}

/// Opens an input: a Parquet file, an Arrow IPC file or stream, or CSV
/// with a header line (typed by `csv`), told apart by their first bytes (a
/// path that is none of the binary formats is CSV if it is named `.csv`),
/// or `-`: the same on stdin (an IPC stream is read as it comes; Parquet,
/// IPC files and CSV are first copied to a temporary file, whose name is
/// removed as soon as it is open).
pub fn open(path: &str, csv: &CsvColumns) -> Result<TableInput> {
    if path == "-" {
        return open_stdin(csv);
    }
    let p = PathBuf::from(path);
    let named_csv = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let file = File::open(&p).map_err(|e| Error::io(&p, e))?;
    open_file(file, &p, named_csv.then_some(csv))
}

/// True if the file at `path` begins as a Parquet file does (`PAR1`).
pub fn is_parquet(path: &Path) -> Result<bool> {
    let mut head = Vec::with_capacity(4);
    File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    Ok(kind_of(&head) == Kind::Parquet)
}

/// Like [`open`] for a file, but text is CSV whatever the file's name.
pub fn open_detected(path: &Path, csv: &CsvColumns) -> Result<TableInput> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    open_file(file, path, Some(csv))
}

/// What the first bytes of an input say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Parquet,
    IpcFile,
    IpcStream,
    Text,
    Unknown,
}

fn kind_of(head: &[u8]) -> Kind {
    if head.starts_with(b"PAR1") {
        Kind::Parquet
    } else if head.starts_with(b"ARROW1") {
        Kind::IpcFile
    } else if head.starts_with(&[0xff; 4]) {
        Kind::IpcStream
    } else if looks_like_text(head) {
        Kind::Text
    } else {
        Kind::Unknown
    }
}

/// UTF-8 without control characters but tabs and line ends (a character
/// cut off at the end of `head` allowed).
fn looks_like_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(t) => t,
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return false,
    };
    !valid.is_empty()
        && valid
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
}

/// `-`: an Arrow IPC stream read as it comes, or a Parquet file, IPC file
/// or CSV spooled to a temporary file first.
fn open_stdin(csv: &CsvColumns) -> Result<TableInput> {
    let p = PathBuf::from("-");
    let mut stdin = std::io::stdin().lock();
    let mut head = Vec::with_capacity(8);
    (&mut stdin)
        .take(8)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(&p, e))?;
    let kind = kind_of(&head);
    if let (Kind::Text, CsvColumns::Refused(why)) = (kind, csv) {
        return Err(csv_refused(&p, why));
    }
    let mut whole = io::Cursor::new(head.clone()).chain(stdin);
    if matches!(kind, Kind::Parquet | Kind::IpcFile | Kind::Text) {
        let dir = std::env::temp_dir();
        let mut spool = super::temp::TempFile::create(&dir, std::ffi::OsStr::new("stdin"))
            .map_err(|e| Error::Output {
                flag: "--input -".into(),
                path: dir.clone(),
                action: "cannot hold a copy of stdin (set TMPDIR to a writable directory)".into(),
                source: e,
            })?;
        let at = spool.path().to_path_buf();
        io::copy(&mut whole, spool.file_mut())
            .and_then(|_| spool.file_mut().flush())
            .map_err(|e| Error::io(&at, e))?;
        let file = File::open(&at).map_err(|e| Error::io(&at, e))?;
        // Open: the name goes now, so that no exit can leave the copy.
        drop(spool);
        return open_file(file, &p, (kind == Kind::Text).then_some(csv));
    }
    let reader = guard::untrusted(|| StreamReader::try_new(BufReader::new(whole), None))
        .map_err(|e| ipc_err(&p, e))?
        .map_err(|e| ipc_err(&p, e))?;
    Ok(ipc_batches(p, reader.schema(), reader))
}

fn csv_refused(name: &Path, why: &str) -> Error {
    Error::Usage {
        option: "--input".into(),
        message: format!("{} is CSV: {why}", name.display()),
    }
}

/// The open input `file`, named `name` in messages; `csv`: CSV is what it
/// is if it is none of the binary formats.
fn open_file(mut file: File, name: &Path, csv: Option<&CsvColumns>) -> Result<TableInput> {
    let p = name.to_path_buf();
    let mut head = [0u8; 8];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(&p, e))?;
    match (kind_of(&head[..n]), csv) {
        (Kind::IpcFile, _) => {
            let reader = guard::untrusted(|| FileReader::try_new(file, None))
                .map_err(|e| ipc_err(&p, e))?
                .map_err(|e| ipc_err(&p, e))?;
            let schema = reader.schema();
            Ok(ipc_batches(p, schema, reader))
        }
        (Kind::IpcStream, _) => {
            let reader = guard::untrusted(|| StreamReader::try_new(BufReader::new(file), None))
                .map_err(|e| ipc_err(&p, e))?
                .map_err(|e| ipc_err(&p, e))?;
            let schema = reader.schema();
            Ok(ipc_batches(p, schema, reader))
        }
        (Kind::Text | Kind::Unknown, Some(CsvColumns::Refused(why))) => Err(csv_refused(&p, why)),
        (Kind::Text | Kind::Unknown, Some(CsvColumns::Numeric(numeric))) => {
            csv_batches(file, name, Some(0), |f| {
                if numeric.iter().any(|n| n == f.name()) {
                    DataType::Float64
                } else {
                    DataType::Utf8
                }
            })
        }
        // Only numbers are inferred: `predict` and `eval` read a CSV's
        // non-numeric columns as text, so text they stay here too.
        (Kind::Text, Some(CsvColumns::Inferred(text))) => csv_batches(file, name, None, |f| {
            let t = f.data_type();
            if text.iter().any(|n| n == f.name()) || !(t.is_integer() || t.is_floating()) {
                DataType::Utf8
            } else {
                t.clone()
            }
        }),
        // Parquet, or not recognised: the Parquet reader explains what is
        // wrong.
        _ => parquet_batches(file, name),
    }
}

/// A CSV table with a header line (named `name` in messages), each column
/// of the type `type_of` gives it from the field arrow-csv infers from the
/// first `infer` rows (`None`: all of them; `Some(0)`: the names alone).
fn csv_batches(
    mut file: File,
    name: &Path,
    infer: Option<usize>,
    type_of: impl Fn(&Field) -> DataType,
) -> Result<TableInput> {
    let format = arrow::csv::reader::Format::default().with_header(true);
    let header = file.try_clone().map_err(|e| Error::io(name, e))?;
    let (names, _) = guard::untrusted(|| format.infer_schema(BufReader::new(header), infer))
        .map_err(|e| csv_err(name, e))?
        .map_err(|e| csv_err(name, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(name, e))?;
    let fields: Vec<Field> = names
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), type_of(f), true))
        .collect();
    let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(fields));
    let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
        .with_header(true)
        .with_batch_size(65_536)
        .build(file)
        .map_err(|e| csv_err(name, e))?;
    let mut input = ipc_batches(name.to_path_buf(), Arc::clone(&schema), reader);
    // Errors are the CSV reader's, named as such.
    let batches = std::mem::replace(&mut input.batches, Box::new(std::iter::empty()));
    input.batches = Box::new(batches.map(|b| {
        b.map_err(|e| match e {
            Error::Ipc { path, message } => Error::Csv { path, message },
            other => other,
        })
    }));
    Ok(input)
}

fn ipc_batches<I>(path: PathBuf, schema: SchemaRef, reader: I) -> TableInput
where
    I: Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> + 'static,
{
    let mut row = 0u64;
    let mut reader = reader;
    let mut failed = false;
    // Each batch is decoded under the guard; after a failure, nothing more
    // is read from the input.
    let batches = std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let next = match guard::untrusted(|| reader.next()) {
            Ok(next) => next?,
            Err(msg) => {
                failed = true;
                return Some(Err(ipc_err(&path, msg)));
            }
        };
        let item = next.map_err(|e| ipc_err(&path, e)).map(|b| {
            let origin = BatchOrigin {
                path: path.clone(),
                row_group: None,
                first_row: row,
            };
            row += b.num_rows() as u64;
            (b, origin)
        });
        failed = item.is_err();
        Some(item)
    });
    TableInput {
        schema,
        batches: Box::new(batches),
    }
}

/// The row groups of the open Parquet `file` (named `name` in messages),
/// each read through its own handle on it.
fn parquet_batches(file: File, name: &Path) -> Result<TableInput> {
    let metadata = guard::untrusted(|| {
        parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
            &file,
            parquet::arrow::arrow_reader::ArrowReaderOptions::new(),
        )
    })
    .map_err(|e| Error::parquet(name, e))?
    .map_err(|e| Error::parquet(name, e))?;
    let schema = metadata.schema().clone();
    let rows = super::footer::row_group_rows(&metadata);
    let mut first = 0u64;
    let mut plan = Vec::new();
    for (rg, r) in rows.into_iter().enumerate() {
        plan.push((rg, first));
        first += r as u64;
    }
    let path = name.to_path_buf();
    let batches = plan.into_iter().flat_map(move |(rg, first_row)| {
        let read = || -> Result<Vec<(RecordBatch, BatchOrigin)>> {
            let file = file.try_clone().map_err(|e| Error::io(&path, e))?;
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
                .with_row_groups(vec![rg])
                .with_batch_size(65_536)
                .build()
                .map_err(|e| Error::parquet(&path, format!("row group {rg}: {e}")))?;
            let mut out = Vec::new();
            let mut row = first_row;
            for b in reader {
                let b = b.map_err(|e| Error::parquet(&path, format!("row group {rg}: {e}")))?;
                let n = b.num_rows() as u64;
                out.push((
                    b,
                    BatchOrigin {
                        path: path.clone(),
                        row_group: Some(rg),
                        first_row: row,
                    },
                ));
                row += n;
            }
            Ok(out)
        };
        match guard::untrusted(read) {
            Ok(Ok(v)) => v.into_iter().map(Ok).collect::<Vec<_>>(),
            Ok(Err(e)) => vec![Err(e)],
            Err(msg) => vec![Err(Error::parquet(&path, format!("row group {rg}: {msg}")))],
        }
    });
    Ok(TableInput {
        schema,
        batches: Box::new(batches),
    })
}

enum Inner {
    Parquet(ArrowWriter<Box<dyn Write + Send>>),
    Ipc(FileWriter<Box<dyn Write + Send>>),
    Stream(StreamWriter<Box<dyn Write + Send>>),
    Csv(arrow::csv::Writer<Box<dyn Write + Send>>),
}

/// Keeps the first I/O error the sink reports, so that a full disk or a
/// closed pipe is reported as such (exit code 3, or a quiet exit for a
/// closed pipe) rather than as whatever the Parquet or IPC writer wraps it
/// in.
#[derive(Clone)]
struct Tap {
    first: Arc<Mutex<Option<io::Error>>>,
    flag: String,
    path: PathBuf,
}

impl Tap {
    fn keep<T>(&self, r: io::Result<T>) -> io::Result<T> {
        r.map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
            first.get_or_insert(e);
            copy
        })
    }

    /// The sink's own error if it had one, else `fallback`.
    fn explain(&self, fallback: Error) -> Error {
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        match first.take() {
            Some(source) => self.output_error(source),
            None => fallback,
        }
    }

    /// `source` as an error of this output.
    fn output_error(&self, source: io::Error) -> Error {
        Error::Output {
            flag: self.flag.clone(),
            path: self.path.clone(),
            action: "cannot be written".into(),
            source,
        }
    }
}

/// A sink that reports its errors to a [`Tap`].
struct Tapped {
    inner: Box<dyn Write + Send>,
    tap: Tap,
}

impl Write for Tapped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.tap.keep(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.tap.keep(r)
    }
}

/// A table being written into a prepared [`Output`]; the caller commits
/// the output set once [`TableOutput::finish`] returns.
pub struct TableOutput {
    inner: Inner,
    tap: Tap,
    /// The schema, and whether a batch was written (a CSV output without
    /// rows still gets its header line).
    schema: SchemaRef,
    wrote: bool,
}

impl TableOutput {
    /// Starts writing `schema` into `output` in `format`.
    pub fn create(output: &Output, format: Format, schema: SchemaRef) -> Result<TableOutput> {
        let tap = Tap {
            first: Arc::new(Mutex::new(None)),
            flag: output.flag().to_string(),
            path: output.path().to_path_buf(),
        };
        let sink: Box<dyn Write + Send> = Box::new(Tapped {
            inner: output.writer()?,
            tap: tap.clone(),
        });
        let p = &tap.path;
        let inner = match format {
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .build();
                ArrowWriter::try_new(sink, Arc::clone(&schema), Some(props))
                    .map(Inner::Parquet)
                    .map_err(|e| Error::parquet(p, e))
            }
            Format::Ipc => FileWriter::try_new(sink, &schema)
                .map(Inner::Ipc)
                .map_err(|e| ipc_err(p, e)),
            Format::IpcStream => StreamWriter::try_new(sink, &schema)
                .map(Inner::Stream)
                .map_err(|e| ipc_err(p, e)),
            Format::Csv => Ok(Inner::Csv(arrow::csv::Writer::new(sink))),
        }
        .map_err(|e| tap.explain(e))?;
        Ok(TableOutput {
            inner,
            tap,
            schema,
            wrote: false,
        })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.wrote = true;
        let p = &self.tap.path;
        match &mut self.inner {
            Inner::Parquet(w) => w.write(batch).map_err(|e| Error::parquet(p, e)),
            Inner::Ipc(w) => w.write(batch).map_err(|e| ipc_err(p, e)),
            Inner::Stream(w) => w.write(batch).map_err(|e| ipc_err(p, e)),
            Inner::Csv(w) => w.write(batch).map_err(|e| csv_err(p, e)),
        }
        .map_err(|e| self.tap.explain(e))
    }

    /// Pushes what was written so far on to the output (an IPC stream's
    /// reader downstream sees the batches at once); Parquet writes its row
    /// groups as they fill.
    pub fn flush(&mut self) -> Result<()> {
        let p = &self.tap.path;
        match &mut self.inner {
            Inner::Parquet(_) => Ok(()),
            Inner::Ipc(w) => w.flush().map_err(|e| ipc_err(p, e)),
            Inner::Stream(w) => w.flush().map_err(|e| ipc_err(p, e)),
            Inner::Csv(_) => Ok(()),
        }
        .map_err(|e| self.tap.explain(e))
    }

    /// Finishes the table and flushes it into the output (which the caller
    /// then commits).
    pub fn finish(mut self) -> Result<()> {
        if !self.wrote {
            if let Inner::Csv(_) = self.inner {
                let empty = RecordBatch::new_empty(Arc::clone(&self.schema));
                self.write(&empty)?;
            }
        }
        let p = &self.tap.path;
        let finished = match self.inner {
            Inner::Parquet(w) => w.into_inner().map_err(|e| Error::parquet(p, e)),
            Inner::Ipc(mut w) => w
                .finish()
                .and_then(|()| w.into_inner())
                .map_err(|e| ipc_err(p, e)),
            Inner::Stream(mut w) => w
                .finish()
                .and_then(|()| w.into_inner())
                .map_err(|e| ipc_err(p, e)),
            Inner::Csv(w) => Ok(w.into_inner()),
        };
        let mut sink = finished.map_err(|e| self.tap.explain(e))?;
        // The tap has the flush's error (it wraps the sink); the fallback
        // is the output's error all the same.
        sink.flush().map_err(|e| {
            let fallback = self
                .tap
                .output_error(io::Error::new(e.kind(), e.to_string()));
            self.tap.explain(fallback)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_told_apart_by_their_first_bytes() {
        assert_eq!(kind_of(b"PAR1\x15\x04"), Kind::Parquet);
        assert_eq!(kind_of(b"ARROW1\0\0"), Kind::IpcFile);
        // An IPC stream whose schema message is 8224 bytes long: its
        // length's bytes are printable, the marker is not text.
        assert_eq!(
            kind_of(&[0xff, 0xff, 0xff, 0xff, 0x20, 0x20, 0, 0]),
            Kind::IpcStream
        );
        assert_eq!(kind_of(b"a,b\n1,2"), Kind::Text);
        assert_eq!(kind_of("caf\u{e9},x".as_bytes()), Kind::Text);
        // A character cut off by the 8 bytes looked at is still text.
        assert_eq!(kind_of(&"abcdef\u{e9}".as_bytes()[..7]), Kind::Text);
        // A legacy IPC stream starts with a length: binary.
        assert_eq!(kind_of(&[0x10, 0x01, 0, 0, 0x0c, 0, 0, 0]), Kind::Unknown);
        assert_eq!(kind_of(b""), Kind::Unknown);
    }

    #[test]
    fn an_output_format_comes_from_the_extension_or_is_refused() {
        assert_eq!(
            Format::for_output("--output", "-").unwrap(),
            Format::IpcStream
        );
        assert_eq!(
            Format::for_output("--output", "a/P.CSV").unwrap(),
            Format::Csv
        );
        assert_eq!(
            Format::for_output("--output", "p.arrows").unwrap(),
            Format::IpcStream
        );
        assert_eq!(
            Format::for_output("--output", "p.feather").unwrap(),
            Format::Ipc
        );
        assert_eq!(
            Format::for_output("--output", "p.pq").unwrap(),
            Format::Parquet
        );
        assert_eq!(
            Format::for_output("--output", "/dev/null").unwrap(),
            Format::IpcStream
        );
        let e = Format::for_output("--predictions-out", "p.txt").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("--format"), "{e}");
    }
}
