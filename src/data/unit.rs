//! Units: fixed slices of rows defined by the data (row groups, cut into
//! parts of at most `max_unit_rows`), never by the worker count.

use std::fs::File;

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

use super::source::{ParquetFile, Source};
use crate::error::{Error, Result};
use crate::io::guard;

/// A fixed slice of rows of one row group of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    /// Position in the plan (0-based, dense).
    pub id: usize,
    /// Index of the file in the source.
    pub file: usize,
    /// Row group inside the file.
    pub row_group: usize,
    /// First row of the unit inside its row group.
    pub offset: usize,
    /// Rows in the unit.
    pub rows: usize,
    /// First row of the unit inside its file.
    pub file_row: u64,
}

/// Cuts a source into units, in file / row-group order.
pub fn plan(source: &Source, max_unit_rows: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (fi, file) in source.files.iter().enumerate() {
        let mut file_row = 0u64;
        for (rg, rows) in file.row_group_rows().into_iter().enumerate() {
            let parts = rows.div_ceil(max_unit_rows.max(1)).max(1);
            for p in 0..parts {
                // Balanced parts: sizes differ by at most one row.
                let start = p * rows / parts;
                let end = (p + 1) * rows / parts;
                if end > start {
                    units.push(Unit {
                        id: units.len(),
                        file: fi,
                        row_group: rg,
                        offset: start,
                        rows: end - start,
                        file_row: file_row + start as u64,
                    });
                }
            }
            file_row += rows as u64;
        }
    }
    units
}

/// A unit's batches, each decoded under [`guard::untrusted`]: a decoder
/// panic on malformed pages becomes an error, and ends the reader.
pub struct UnitReader {
    inner: ParquetRecordBatchReader,
    failed: bool,
}

impl Iterator for UnitReader {
    type Item = std::result::Result<RecordBatch, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match guard::untrusted(|| self.inner.next()) {
            Ok(next) => next?.map_err(|e| e.to_string()),
            Err(msg) => Err(msg),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

/// A reader over the rows of one unit, decoding only `columns`, in batches
/// of at most `batch_rows` rows.
pub fn reader(
    source: &Source,
    unit: &Unit,
    columns: &[String],
    batch_rows: usize,
) -> Result<UnitReader> {
    file_reader(&source.files[unit.file], unit, columns, batch_rows)
}

/// [`reader`] on the unit's file.
fn file_reader(
    pf: &ParquetFile,
    unit: &Unit,
    columns: &[String],
    batch_rows: usize,
) -> Result<UnitReader> {
    let file = File::open(&pf.path).map_err(|e| Error::io(&pf.path, e))?;
    let schema = pf.schema();
    let mut indices = Vec::with_capacity(columns.len());
    for c in columns {
        pf.column_type(c)?;
        indices.push(
            schema
                .index_of(c)
                .map_err(|e| Error::parquet(&pf.path, e))?,
        );
    }
    let mask = ProjectionMask::roots(pf.metadata.parquet_schema(), indices);
    let rg_rows = pf.row_group_rows()[unit.row_group];
    let mut selectors = Vec::new();
    if unit.offset > 0 {
        selectors.push(RowSelector::skip(unit.offset));
    }
    selectors.push(RowSelector::select(unit.rows));
    let rest = rg_rows - unit.offset - unit.rows;
    if rest > 0 {
        selectors.push(RowSelector::skip(rest));
    }
    let bad = |e: &dyn std::fmt::Display| {
        Error::parquet(&pf.path, format!("row group {}: {e}", unit.row_group))
    };
    let inner = guard::untrusted(|| {
        ParquetRecordBatchReaderBuilder::new_with_metadata(file, pf.metadata.clone())
            .with_row_groups(vec![unit.row_group])
            .with_projection(mask)
            .with_row_selection(RowSelection::from(selectors))
            .with_batch_size(batch_rows.max(1))
            .build()
    })
    .map_err(|e| bad(&e))?
    .map_err(|e| bad(&e))?;
    Ok(UnitReader {
        inner,
        failed: false,
    })
}

/// The error for a unit whose columns failed to decode with `e`, naming
/// the column where it can: each column is read again on its own, and the
/// first that fails is the one with the corrupt page (a checksum mismatch,
/// a bad compressed block, a truncated chunk).
pub fn read_error(
    pf: &ParquetFile,
    unit: &Unit,
    columns: &[String],
    e: impl std::fmt::Display,
) -> Error {
    let fails_alone = |c: &String| match file_reader(pf, unit, std::slice::from_ref(c), 8192) {
        Ok(mut r) => r.any(|b| b.is_err()),
        Err(_) => true,
    };
    match columns.iter().find(|c| fails_alone(c)) {
        Some(c) => Error::parquet(
            &pf.path,
            format!("row group {}, column '{c}': {e}", unit.row_group),
        ),
        None => Error::parquet(&pf.path, format!("row group {}: {e}", unit.row_group)),
    }
}

/// Reads the rows of one unit, decoding only `columns`, as a single batch.
pub fn read(source: &Source, unit: &Unit, columns: &[String]) -> Result<RecordBatch> {
    let pf = &source.files[unit.file];
    let reader = reader(source, unit, columns, unit.rows)?;
    let mut batches = Vec::new();
    for b in reader {
        batches.push(b.map_err(|e| read_error(pf, unit, columns, e))?);
    }
    let projected = match batches.first() {
        Some(b) => b.schema(),
        None => {
            return Err(Error::parquet(
                &pf.path,
                format!("row group {}: no rows decoded", unit.row_group),
            ))
        }
    };
    let batch = arrow::compute::concat_batches(&projected, &batches)
        .map_err(|e| Error::parquet(&pf.path, e))?;
    if batch.num_rows() != unit.rows {
        return Err(Error::parquet(
            &pf.path,
            format!(
                "row group {}: expected {} rows, decoded {} (truncated file?)",
                unit.row_group,
                unit.rows,
                batch.num_rows()
            ),
        ));
    }
    Ok(batch)
}
