//! Where rows come from: a data source described by its schema and cut into
//! units, each read in bounded batches.
//!
//! [`DataSource`] is what the layers above read through (the statistics
//! scan, the workers' caches and streams): the units known so far, a reader
//! over a unit's columns, and whether more units may come. Today's one
//! implementation is [`parquet::ParquetSource`], a finite list of Parquet
//! files whose units are all known up front; a source that grows answers
//! [`Extent::Growing`] and lists more units as they arrive.
//!
//! * [`files`] resolves files and directories, parses footers and checks
//!   that files agree on the columns a pipeline uses;
//! * [`unit`](mod@unit) cuts row groups into units (the grain of
//!   partitioning and of reproducible summation) and reads one unit with
//!   column projection;
//! * [`parquet`] is the files with their units, as a [`DataSource`];
//! * [`staged`] copies inputs that are not Parquet files (`-`, Arrow IPC,
//!   CSV) into Parquet files held for the job.

pub mod files;
pub mod parquet;
pub mod staged;
pub mod unit;

use std::path::Path;

use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use unit::Unit;

/// Whether a source's units are all known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// Every unit is known: [`DataSource::units`] will not change.
    Finite,
    /// More units may come: [`DataSource::units`] lists those known so far,
    /// and a later call may list more (never fewer, never changed).
    Growing,
}

/// The batches of one unit, in row order, with errors that name the file,
/// row group and (where known) column; a unit that ends short of its rows
/// ends with an error.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch>>>;

/// A source of training or validation rows, cut into units.
pub trait DataSource: std::fmt::Debug + Send + Sync {
    /// A short description for messages (e.g. the first file and how many more).
    fn describe(&self) -> String;

    /// Where the reference schema comes from, named by schema errors.
    fn reference(&self) -> &Path;

    /// The reference schema: every unit agrees with it on the columns in use.
    fn schema(&self) -> &SchemaRef;

    /// The type of `column` in the reference schema, or an error naming
    /// the columns there are.
    fn column_type(&self, column: &str) -> Result<&DataType>;

    /// The units known so far, in order; unit `i` has id `i`.
    fn units(&self) -> &[Unit];

    /// The file the rows of `unit` come from (for error locations).
    fn unit_path(&self, unit: &Unit) -> &Path;

    /// A reader over `columns` of `unit`, in batches of at most
    /// `batch_rows` rows.
    fn open(&self, unit: &Unit, columns: &[String], batch_rows: usize) -> Result<Batches>;

    /// Whether [`DataSource::units`] is complete.
    fn extent(&self) -> Extent;
}
