//! Parquet footers: parsed once per file, under [`super::guard::untrusted`]
//! (a hostile footer may make the decoder panic), and the row counts they
//! declare.

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};

use crate::error::{Error, Result};

/// Opens the Parquet file at `path` and parses its footer; errors name the file.
pub fn read(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    super::guard::untrusted(|| ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()))
        .map_err(|e| Error::parquet(path, e))?
        .map_err(|e| Error::parquet(path, e))
}

/// Rows in each row group, as the footer declares them.
pub fn row_group_rows(metadata: &ArrowReaderMetadata) -> Vec<usize> {
    metadata
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows().max(0) as usize)
        .collect()
}
