//! Streaming a unit in bounded windows (`cache = false`): memory holds one
//! decoded window per unit, never the whole partition.
//!
//! Under `shuffle`, rows are permuted inside each window by
//! `(seed, epoch, unit, window)`, as cached units are.

use std::path::PathBuf;
use std::sync::Arc;

use super::cache::window_key;
use super::encode::{decode, Block, ClassMap, FeatureSpec, LabelUse, Origin};
use super::partition::{is_validation, row_order};
use super::source::{ParquetFile, Source};
use super::unit::{self, Unit};
use crate::error::Result;
use crate::spec::Partition;

/// Rows decoded at a time per streamed unit.
pub const WINDOW_ROWS: usize = 8192;

/// Which rows of a unit a stream yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Training rows (validation rows of a fraction split are dropped).
    Train,
    /// Only the held-out validation rows.
    Validation,
    /// Every row.
    All,
}

/// How a stream decodes and orders its rows.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Feature spec.
    pub spec: FeatureSpec,
    /// Class map (classifiers), or `None` for a regression label.
    pub classes: Option<ClassMap>,
    /// Fraction held out and its seed.
    pub fraction: Option<f64>,
    /// Split seed.
    pub seed: u64,
    /// Slice (file order) or shuffle (permuted windows).
    pub partition: Partition,
}

/// A unit being read window by window.
pub struct UnitStream {
    unit: Unit,
    path: PathBuf,
    file: Arc<ParquetFile>,
    columns: Vec<String>,
    reader: unit::UnitReader,
    rows: Rows,
    epoch: u32,
    window: Block,
    order: Option<Vec<usize>>,
    pos: usize,
    read: u64,
    windows: u64,
}

impl UnitStream {
    /// Opens a unit for streaming in `epoch`.
    pub fn open(
        source: &Source,
        unit: &Unit,
        s: &StreamSpec,
        rows: Rows,
        epoch: u32,
    ) -> Result<UnitStream> {
        let mut columns = s.spec.feature_columns();
        columns.push(s.spec.label.clone());
        let reader = unit::reader(source, unit, &columns, WINDOW_ROWS)?;
        Ok(UnitStream {
            unit: *unit,
            path: source.files[unit.file].path.clone(),
            file: Arc::clone(&source.files[unit.file]),
            columns,
            reader,
            rows,
            epoch,
            window: Block::default(),
            order: None,
            pos: 0,
            read: 0,
            windows: 0,
        })
    }

    fn refill(&mut self, s: &StreamSpec) -> Result<bool> {
        let Some(batch) = self.reader.next() else {
            return Ok(false);
        };
        let batch =
            batch.map_err(|e| unit::read_error(&self.file, &self.unit, &self.columns, e))?;
        let origin = Origin {
            file: &self.path,
            row_group: Some(self.unit.row_group),
            first_row: self.unit.file_row + self.read,
        };
        self.read += batch.num_rows() as u64;
        let label = match &s.classes {
            Some(c) => LabelUse::Classes(c),
            None => LabelUse::Value,
        };
        let mut block = decode(&batch, &s.spec, label, &origin)?;
        if let Some(f) = s.fraction {
            let keep = |r: u64| match self.rows {
                Rows::Train => !is_validation(s.seed, self.unit.file, r, f),
                Rows::Validation => is_validation(s.seed, self.unit.file, r, f),
                Rows::All => true,
            };
            let flags: Vec<bool> = block.file_row.iter().map(|&r| keep(r)).collect();
            block.retain(|i| flags[i]);
        } else if self.rows == Rows::Validation {
            block.retain(|_| false);
        }
        self.order = match s.partition {
            Partition::Slice => None,
            Partition::Shuffle => row_order(
                block.rows,
                s.partition,
                s.seed,
                self.epoch,
                window_key(self.unit.id, self.windows),
            ),
        };
        self.windows += 1;
        self.window = block;
        self.pos = 0;
        Ok(true)
    }

    /// Feeds the next `count` rows to `f`, window segment by window segment.
    /// Returns the rows actually fed (fewer only at the end of the unit).
    pub fn feed(
        &mut self,
        s: &StreamSpec,
        count: usize,
        mut f: impl FnMut(&Block, &[usize]) -> Result<()>,
    ) -> Result<usize> {
        let mut left = count;
        let mut idx = Vec::new();
        while left > 0 {
            if self.pos >= self.window.rows && !self.refill(s)? {
                break;
            }
            if self.window.rows == 0 {
                continue;
            }
            let k = left.min(self.window.rows - self.pos);
            idx.clear();
            idx.extend((self.pos..self.pos + k).map(|i| self.order.as_ref().map_or(i, |o| o[i])));
            f(&self.window, &idx)?;
            self.pos += k;
            left -= k;
        }
        Ok(count - left)
    }

    /// Feeds every remaining window to `f`.
    pub fn drain(&mut self, s: &StreamSpec, mut f: impl FnMut(&Block)) -> Result<()> {
        while self.refill(s)? {
            f(&self.window);
        }
        Ok(())
    }
}
