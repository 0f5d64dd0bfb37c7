//! Today's data source: Parquet files, every unit known from the footers
//! before training starts.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::files::Source;
use super::unit::{self, Unit, UnitBatches};
use super::{Batches, DataSource, Extent};
use crate::error::{Error, Result};

/// Parquet files cut into units of at most `max_unit_rows` rows.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    /// The files, in order.
    pub files: Source,
    /// Their units, in file / row-group order.
    pub units: Vec<Unit>,
    /// Rows left out of every batch, by their key (forgotten rows).
    pub drop: Option<RowFilter>,
}

/// Rows a source leaves out: those whose `column` value (as text) `drop`
/// says so of.
#[derive(Clone)]
pub struct RowFilter {
    /// The key column.
    pub column: String,
    /// True for a key whose row is left out.
    pub drop: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl std::fmt::Debug for RowFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RowFilter({})", self.column)
    }
}

impl RowFilter {
    /// The rows of `batch` whose key is kept (the key column read as
    /// text; a null key is kept, for the decoder to report).
    fn apply(&self, batch: RecordBatch) -> std::result::Result<RecordBatch, String> {
        let column = batch
            .column_by_name(&self.column)
            .ok_or_else(|| format!("the key column '{}' was not read", self.column))?;
        let text = arrow::compute::cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        let text = text.as_string::<i32>();
        let keep: BooleanArray = (0..text.len())
            .map(|i| Some(text.is_null(i) || !(self.drop)(text.value(i))))
            .collect();
        if keep.true_count() == batch.num_rows() {
            return Ok(batch);
        }
        arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| e.to_string())
    }
}

impl ParquetSource {
    /// Cuts `files` into units of at most `max_unit_rows` rows.
    pub fn new(files: Source, max_unit_rows: usize) -> ParquetSource {
        let units = unit::cut(&files, max_unit_rows);
        ParquetSource {
            files,
            units,
            drop: None,
        }
    }
}

impl DataSource for ParquetSource {
    fn describe(&self) -> String {
        self.files.describe()
    }

    fn reference(&self) -> &Path {
        &self.files.reference().path
    }

    fn schema(&self) -> &SchemaRef {
        self.files.reference().schema()
    }

    fn column_type(&self, column: &str) -> Result<&DataType> {
        self.files.reference().column_type(column)
    }

    fn units(&self) -> &[Unit] {
        &self.units
    }

    fn unit_path(&self, unit: &Unit) -> &Path {
        &self.files.files[unit.file].path
    }

    fn open(&self, unit: &Unit, columns: &[String], batch_rows: usize) -> Result<Batches> {
        let file = &self.files.files[unit.file];
        let Some(filter) = self.drop.clone() else {
            return Ok(Box::new(UnitBatches::open(
                file, unit, columns, batch_rows,
            )?));
        };
        // The key column is read too, to leave rows out by it. (Row
        // numbers in messages then count the rows kept.)
        let mut columns = columns.to_vec();
        if !columns.contains(&filter.column) {
            columns.push(filter.column.clone());
        }
        let path = file.path.clone();
        let batches = UnitBatches::open(file, unit, &columns, batch_rows)?;
        Ok(Box::new(batches.map(move |b| {
            b.and_then(|b| {
                filter.apply(b).map_err(|message| {
                    Error::Internal(format!(
                        "{}: leaving forgotten rows out: {message}",
                        path.display()
                    ))
                })
            })
        })))
    }

    fn extent(&self) -> Extent {
        Extent::Finite
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Float64Type};
    use arrow::record_batch::RecordBatch;

    use super::*;

    /// A file whose column `x` holds the file row, in row groups of
    /// `groups` rows.
    fn write(path: &Path, groups: &[u64]) {
        let batch = |r: std::ops::Range<u64>| {
            let cols: Vec<(&str, ArrayRef)> = vec![
                (
                    "x",
                    Arc::new(Float64Array::from_iter_values(r.clone().map(|i| i as f64))),
                ),
                (
                    "y",
                    Arc::new(Int64Array::from_iter_values(r.map(|i| (i % 2) as i64))),
                ),
            ];
            RecordBatch::try_from_iter(cols).unwrap()
        };
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch(0..1).schema(), None).unwrap();
        let mut first = 0;
        for &g in groups {
            w.write(&batch(first..first + g)).unwrap();
            w.flush().unwrap();
            first += g;
        }
        w.close().unwrap();
    }

    #[test]
    fn parquet_files_keep_the_data_source_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.parquet");
        write(&path, &[300, 150]);
        let columns = ["x".to_string(), "y".to_string()];
        let files = Source::open(std::slice::from_ref(&path), &columns).unwrap();
        let parquet = ParquetSource::new(files, 200);
        let source: &dyn DataSource = &parquet;

        assert_eq!(source.extent(), Extent::Finite);
        assert!(source.describe().contains("rows.parquet"));
        assert_eq!(source.reference(), path);
        assert_eq!(source.schema().fields().len(), 2);
        assert_eq!(source.column_type("x").unwrap(), &DataType::Float64);
        assert!(source
            .column_type("z")
            .unwrap_err()
            .to_string()
            .contains("'z'"));

        // Units: dense ids, in row order, covering every row once; a row
        // group of 300 rows is cut into two balanced units of 150.
        let units = source.units();
        let cut: Vec<(u64, usize)> = units.iter().map(|u| (u.file_row, u.rows)).collect();
        assert_eq!(cut, [(0, 150), (150, 150), (300, 150)]);
        assert!(units.iter().enumerate().all(|(i, u)| u.id == i));

        // Reading: only the columns asked for, in batches of at most the
        // size asked for, every row of the unit in order.
        for unit in units {
            assert_eq!(source.unit_path(unit), path);
            let mut rows = Vec::new();
            for batch in source.open(unit, &columns[..1], 64).unwrap() {
                let batch = batch.unwrap();
                assert_eq!(batch.num_columns(), 1);
                assert!(batch.num_rows() <= 64);
                let x = batch.column(0).as_primitive::<Float64Type>();
                rows.extend(x.values().iter().map(|&v| v as u64));
            }
            let want: Vec<u64> = (unit.file_row..unit.file_row + unit.rows as u64).collect();
            assert_eq!(rows, want);
        }
        assert!(source.open(&units[0], &["z".to_string()], 64).is_err());
    }
}
