//! Training inputs that are not Parquet files on disk — `-` (stdin), Arrow
//! IPC files and streams, and CSV — each copied once into a Parquet file
//! that lives as long as the job, so that everything above reads Parquet.
//!
//! A copy is a listed temporary file ([`crate::io::temp`]) in the system's
//! temporary directory (`TMPDIR`): dropping the [`Staged`] set removes it,
//! and so does an interrupting signal. Its rows are the input's, in order,
//! in row groups of [`ROW_GROUP_ROWS`]; a CSV input's columns are typed as
//! [`CsvColumns::Inferred`] says.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::io::table::{self, CsvColumns};
use crate::io::temp::TempFile;

/// Rows per row group of a copy (the default `data.max_unit_rows`, so a
/// copy is cut into the units a Parquet file of such row groups would be).
pub const ROW_GROUP_ROWS: usize = 65_536;

/// The Parquet copies made for a job; dropping it removes them.
#[derive(Debug, Default)]
pub struct Staged {
    copies: Vec<TempFile>,
    stdin: bool,
}

impl Staged {
    /// `paths` (the list of pipeline key `key`) with every entry that is
    /// `-` or a file that is not Parquet replaced by a Parquet copy of it;
    /// directories and Parquet files stay as they are. A CSV input keeps the
    /// columns `text` as text and infers the others' types.
    pub fn stage(&mut self, paths: &[PathBuf], key: &str, text: &[String]) -> Result<Vec<PathBuf>> {
        let csv = CsvColumns::Inferred(text.to_vec());
        let stdin = paths.iter().filter(|p| p.as_os_str() == "-").count();
        if stdin + usize::from(self.stdin) > 1 {
            return Err(Error::PipelineValue {
                key: key.into(),
                message: "'-' (stdin) is named twice: stdin can be read once".into(),
            });
        }
        self.stdin |= stdin > 0;
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let input = if path.as_os_str() == "-" {
                table::open("-", &csv)?
            } else if path.is_dir() || table::is_parquet(path)? {
                out.push(path.clone());
                continue;
            } else {
                table::open_detected(path, &csv)?
            };
            let copy = copy(input, path, key)?;
            tracing::info!(
                input = %path.display(),
                copy = %copy.path().display(),
                "{key}: not a Parquet file, read through a Parquet copy"
            );
            out.push(copy.path().to_path_buf());
            self.copies.push(copy);
        }
        Ok(out)
    }

    /// True if nothing was copied.
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

/// Writes `input` (read from `path`, an entry of `key`) to a new Parquet
/// file in the temporary directory.
fn copy(input: table::TableInput, path: &Path, key: &str) -> Result<TempFile> {
    let dir = std::env::temp_dir();
    let name = match path.file_name() {
        Some(n) if path.as_os_str() != "-" => n.to_os_string(),
        _ => OsStr::new("stdin").to_os_string(),
    };
    let cannot = |e: std::io::Error| Error::Output {
        flag: key.into(),
        path: dir.clone(),
        action: format!(
            "cannot hold a Parquet copy of {} (set TMPDIR to a writable directory with room)",
            path.display()
        ),
        source: e,
    };
    // Copies a killed run left behind (their lock is gone) go first.
    crate::io::sweep::stale_temps(&dir);
    let copy = TempFile::create(&dir, &name).map_err(cannot)?;
    let at = copy.path().to_path_buf();
    let file = copy.file().try_clone().map_err(|e| Error::io(&at, e))?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let write = |e: parquet::errors::ParquetError| match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<std::io::Error>() {
                Ok(io) => cannot(*io),
                Err(other) => Error::parquet(&at, other),
            }
        }
        other => Error::parquet(&at, other),
    };
    let schema = input.schema.clone();
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(write)?;
    for batch in input {
        let (batch, _) = batch?;
        writer.write(&batch).map_err(write)?;
    }
    writer.close().map_err(write)?;
    Ok(copy)
}
