//! Today's data source: Parquet files, every unit known from the footers
//! before training starts.

use std::path::Path;

use arrow::datatypes::{DataType, SchemaRef};

use super::files::Source;
use super::unit::{self, Unit, UnitBatches};
use super::{Batches, DataSource, Extent};
use crate::error::Result;

/// Parquet files cut into units of at most `max_unit_rows` rows.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    /// The files, in order.
    pub files: Source,
    /// Their units, in file / row-group order.
    pub units: Vec<Unit>,
}

impl ParquetSource {
    /// Cuts `files` into units of at most `max_unit_rows` rows.
    pub fn new(files: Source, max_unit_rows: usize) -> ParquetSource {
        let units = unit::cut(&files, max_unit_rows);
        ParquetSource { files, units }
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
        Ok(Box::new(UnitBatches::open(file, unit, columns, batch_rows)?))
    }

    fn extent(&self) -> Extent {
        Extent::Finite
    }
}
