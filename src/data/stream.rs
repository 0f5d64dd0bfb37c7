//! Streaming a unit in bounded windows (`cache = false`): memory holds one
//! decoded window per unit, never the whole partition.
//!
//! Under `shuffle`, rows are permuted inside each window by
//! `(seed, epoch, unit, window)`, as cached units are.

use super::encode::{Block, ClassMap, FeatureSpec, LabelUse};
use super::partition::window_order;
use super::window::{Rows, Split, Windows};
use crate::error::Result;
use crate::source::unit::Unit;
use crate::source::DataSource;
use crate::spec::Partition;

/// How a stream decodes and orders its rows.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Feature spec.
    pub spec: FeatureSpec,
    /// Class map (classifiers), or `None` for a regression label.
    pub classes: Option<ClassMap>,
    /// Fraction held out and its seed.
    pub fraction: Option<crate::data::window::Holdout>,
    /// Split seed.
    pub seed: u64,
    /// Slice (file order) or shuffle (permuted windows).
    pub partition: Partition,
}

impl StreamSpec {
    /// How labels are decoded: as classes, or as values.
    pub fn label(&self) -> LabelUse<'_> {
        match &self.classes {
            Some(c) => LabelUse::Classes(c),
            None => LabelUse::Value,
        }
    }

    /// The training / validation split.
    pub fn split(&self) -> Split {
        Split {
            fraction: self.fraction,
            seed: self.seed,
        }
    }
}

/// A unit being read window by window.
pub struct UnitStream {
    unit: usize,
    windows: Windows,
    rows: Rows,
    epoch: u32,
    window: Block,
    order: Option<Vec<usize>>,
    pos: usize,
}

impl UnitStream {
    /// Opens a unit for streaming `rows` (training or validation rows) in `epoch`.
    pub fn open(
        source: &dyn DataSource,
        unit: &Unit,
        s: &StreamSpec,
        rows: Rows,
        epoch: u32,
    ) -> Result<UnitStream> {
        Ok(UnitStream {
            unit: unit.id,
            windows: Windows::open(source, unit, &s.spec, s.label(), s.split(), rows, false)?,
            rows,
            epoch,
            window: Block::default(),
            order: None,
            pos: 0,
        })
    }

    fn refill(&mut self, s: &StreamSpec) -> Result<bool> {
        let Some(w) = self.windows.next(&s.spec, s.label())? else {
            return Ok(false);
        };
        let block = match self.rows {
            Rows::Validation => w.data.validation,
            Rows::Train | Rows::Both => w.data.train,
        };
        self.order = window_order(
            block.rows,
            s.partition,
            s.seed,
            self.epoch,
            self.unit,
            w.index,
        );
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
