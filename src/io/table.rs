//! Tabular input and output: Parquet files, Arrow IPC files and streams,
//! and `-` for stdin / stdout (outputs are prepared by
//! [`super::atomic::OutputSet`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arrow::datatypes::SchemaRef;
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
                    "cannot tell the format of '{path}' from its extension: use .parquet, .arrow (an Arrow IPC file), .arrows (an Arrow IPC stream) or .csv, or give --format"
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

/// Opens an input: a Parquet file, an Arrow IPC file or stream, told apart
/// by their first bytes, or `-`: the same on stdin (an IPC stream is read
/// as it comes; Parquet and IPC files, which are read from their end, are
/// first copied to a temporary file, removed when the input is dropped).
pub fn open(path: &str) -> Result<TableInput> {
    if path == "-" {
        return open_stdin();
    }
    let p = PathBuf::from(path);
    let csv = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    open_file(&p, &p, None).or_else(|e| match csv {
        // Not Parquet nor Arrow IPC, and named .csv: read as CSV.
        true => csv_batches(&p, &p, None),
        false => Err(e),
    })
}

/// `-`: an Arrow IPC stream read as it comes, or a Parquet or IPC file
/// spooled to a temporary file first.
fn open_stdin() -> Result<TableInput> {
    let p = PathBuf::from("-");
    let mut stdin = std::io::stdin().lock();
    let mut head = Vec::with_capacity(6);
    (&mut stdin)
        .take(6)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(&p, e))?;
    let mut whole = io::Cursor::new(head.clone()).chain(stdin);
    let file = head.starts_with(b"PAR1") || head.starts_with(b"ARROW1");
    // Neither a file nor an IPC stream (binary from its first byte): CSV.
    let text = !file
        && !head.is_empty()
        && head
            .iter()
            .all(|&b| b == b'\t' || b == b'\n' || b == b'\r' || b >= 0x20);
    if file || text {
        let dir = std::env::temp_dir();
        let mut spool = super::temp::TempFile::create(&dir, std::ffi::OsStr::new("stdin"))
            .map_err(|e| Error::io(&dir, e))?;
        let at = spool.path().to_path_buf();
        io::copy(&mut whole, spool.file_mut())
            .and_then(|_| spool.file_mut().flush())
            .map_err(|e| Error::io(&at, e))?;
        return open_file(&at, &p, Some((spool, text)));
    }
    let reader = guard::untrusted(|| StreamReader::try_new(BufReader::new(whole), None))
        .map_err(|e| ipc_err(&p, e))?
        .map_err(|e| ipc_err(&p, e))?;
    Ok(ipc_batches(p, reader.schema(), reader))
}

/// A file input at `at`, named `name` in messages; `spool` (a temporary
/// copy of stdin, and whether it is text) lives as long as its batches.
fn open_file(
    at: &Path,
    name: &Path,
    spool: Option<(super::temp::TempFile, bool)>,
) -> Result<TableInput> {
    let spool = match spool {
        Some((spool, true)) => return csv_batches(at, name, Some(spool)),
        Some((spool, false)) => Some(spool),
        None => None,
    };
    let p = name.to_path_buf();
    let mut file = File::open(at).map_err(|e| Error::io(&p, e))?;
    let mut magic = [0u8; 6];
    let n = file.read(&mut magic).map_err(|e| Error::io(&p, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(&p, e))?;
    if n == 6 && &magic == b"ARROW1" {
        // The reader holds the file open: a spooled copy may go now.
        drop(spool);
        let reader = guard::untrusted(|| FileReader::try_new(file, None))
            .map_err(|e| ipc_err(&p, e))?
            .map_err(|e| ipc_err(&p, e))?;
        let schema = reader.schema();
        return Ok(ipc_batches(p, schema, reader));
    }
    if n >= 4 && magic[..4] == [0xff, 0xff, 0xff, 0xff] {
        let reader = guard::untrusted(|| StreamReader::try_new(BufReader::new(file), None))
            .map_err(|e| ipc_err(&p, e))?
            .map_err(|e| ipc_err(&p, e))?;
        let schema = reader.schema();
        return Ok(ipc_batches(p, schema, reader));
    }
    // Parquet, or not recognised by its first bytes: the Parquet reader
    // explains what is wrong.
    parquet_batches(at, name, spool)
}

/// A CSV table with a header line at `at` (named `name` in messages), its
/// column types inferred from every row (arrow-csv: integers, floats,
/// booleans, dates, else strings); `spool` lives as long as the batches.
fn csv_batches(at: &Path, name: &Path, spool: Option<super::temp::TempFile>) -> Result<TableInput> {
    let open = || File::open(at).map_err(|e| Error::io(name, e));
    let format = arrow::csv::reader::Format::default().with_header(true);
    let (schema, _) = guard::untrusted(|| {
        format
            .infer_schema(open()?, None)
            .map_err(|e| csv_err(name, e))
    })
    .map_err(|e| csv_err(name, e))??;
    let schema: SchemaRef = Arc::new(schema);
    let reader = arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
        .with_header(true)
        .with_batch_size(65_536)
        .build(open()?)
        .map_err(|e| csv_err(name, e))?;
    let mut input = ipc_batches(name.to_path_buf(), Arc::clone(&schema), reader);
    // The rows are counted after the header line; errors are the CSV
    // reader's, named as such.
    let batches = std::mem::replace(&mut input.batches, Box::new(std::iter::empty()));
    input.batches = Box::new(batches.map(move |b| {
        let _spool = &spool;
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

/// The row groups of the Parquet file at `at` (named `name` in messages);
/// `spool`, a temporary copy of stdin, lives as long as the batches.
fn parquet_batches(
    at: &Path,
    name: &Path,
    spool: Option<super::temp::TempFile>,
) -> Result<TableInput> {
    let metadata = match spool {
        None => super::footer::read(at)?,
        Some(_) => {
            let file = File::open(at).map_err(|e| Error::io(name, e))?;
            guard::untrusted(|| {
                parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
                    &file,
                    parquet::arrow::arrow_reader::ArrowReaderOptions::new(),
                )
            })
            .map_err(|e| Error::parquet(name, e))?
            .map_err(|e| Error::parquet(name, e))?
        }
    };
    let schema = metadata.schema().clone();
    let rows = super::footer::row_group_rows(&metadata);
    let mut first = 0u64;
    let mut plan = Vec::new();
    for (rg, r) in rows.into_iter().enumerate() {
        plan.push((rg, first));
        first += r as u64;
    }
    let (at, path) = (at.to_path_buf(), name.to_path_buf());
    let batches = plan.into_iter().flat_map(move |(rg, first_row)| {
        let _spool = &spool;
        let read = || -> Result<Vec<(RecordBatch, BatchOrigin)>> {
            let file = File::open(&at).map_err(|e| Error::io(&path, e))?;
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
                ArrowWriter::try_new(sink, schema, Some(props))
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
        Ok(TableOutput { inner, tap })
    }

    /// Appends a batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
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
    pub fn finish(self) -> Result<()> {
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
