//! The one reader of a unit: its rows decoded window by window
//! ([`WINDOW_ROWS`] at a time), each window split into training and
//! validation rows by a seeded hash of the row's file and row number
//! (independent of units and workers). The statistics scan, the cache and
//! the streams all read units through it, so they see the same rows in the
//! same windows.

use std::path::PathBuf;

use super::encode::{decode, decode_scan, Block, FeatureSpec, LabelUse, Origin};
use super::encode::{is_null_weight, WEIGHT_HINT};
use super::partition::{fold_of, is_validation, WINDOW_ROWS};
use crate::error::{Error, Location, Result};
use crate::source::unit::Unit;
use crate::source::{Batches, DataSource};
use crate::spec::OnMissing;

/// Decoded rows of a unit or of one of its windows.
#[derive(Debug, Clone, Default)]
pub struct UnitData {
    /// Rows trained on.
    pub train: Block,
    /// Rows held out (validation by fraction); empty otherwise.
    pub validation: Block,
}

/// How training and validation rows are separated inside units.
#[derive(Debug, Clone, Copy)]
pub struct Split {
    /// The rows held out, if any.
    pub fraction: Option<Holdout>,
    /// Seed of the split.
    pub seed: u64,
}

pub use crate::plan::Holdout;

/// Is row `file_row` of file `file` held out by `h`?
pub fn held(h: Holdout, seed: u64, file: usize, file_row: u64) -> bool {
    match h {
        Holdout::Fraction(f) => is_validation(seed, file, file_row, f),
        Holdout::Fold { fold, folds } => fold_of(seed, file, file_row, folds) == fold,
    }
}

/// Which rows of each window a reader keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// The rows not held out (every row without a fraction split).
    Train,
    /// Only the held-out rows.
    Validation,
    /// Both, apart.
    Both,
}

/// One decoded window of a unit.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Position of the window in its unit (0-based).
    pub index: u64,
    /// Its rows, split (the part not kept is empty).
    pub data: UnitData,
}

/// A unit being read window by window.
pub struct Windows {
    unit: Unit,
    path: PathBuf,
    batches: Batches,
    split: Split,
    rows: Rows,
    raw: bool,
    read: u64,
    index: u64,
}

impl Windows {
    /// Opens `unit` of `source`, reading the columns of `spec` (and the
    /// label unless `label` skips it). With `raw`, windows are decoded as
    /// the statistics scan needs ([`decode_scan`]): numeric values also in
    /// `f64` before centring and scaling ([`Block::raw_rows`]).
    pub fn open(
        source: &dyn DataSource,
        unit: &Unit,
        spec: &FeatureSpec,
        label: LabelUse,
        split: Split,
        rows: Rows,
        raw: bool,
    ) -> Result<Windows> {
        let mut columns = spec.feature_columns();
        if !matches!(label, LabelUse::Skip) {
            columns.push(spec.label.clone());
            columns.extend(spec.weight.iter().filter_map(|w| w.column.clone()));
        }
        Ok(Windows {
            unit: *unit,
            path: source.unit_path(unit).to_path_buf(),
            batches: source.open(unit, &columns, WINDOW_ROWS)?,
            split,
            rows,
            raw,
            read: 0,
            index: 0,
        })
    }

    /// Checks the weights of training rows: finite and ≥ 0; a null one
    /// drops its row under `skip_row` (a NaN is always an error).
    fn check_weights(&self, b: &mut Block, column: &str, policy: OnMissing) -> Result<()> {
        let bad = b.weight.iter().position(|w| !(*w >= 0.0 && w.is_finite()));
        let Some(i) = bad else { return Ok(()) };
        let w = b.weight[i];
        if is_null_weight(w) && policy == OnMissing::SkipRow {
            let keep: Vec<bool> = b.weight.iter().map(|w| !is_null_weight(*w)).collect();
            b.retain(|r| keep[r]);
            return self.check_weights(b, column, policy);
        }
        Err(Error::MissingValue {
            location: Box::new(Location {
                file: self.path.clone(),
                row_group: Some(self.unit.row_group),
                column: Some(column.to_string()),
                row: b.file_row.get(i),
            }),
            what: if is_null_weight(w) {
                "null weight".into()
            } else {
                format!("weight {w}")
            },
            hint: WEIGHT_HINT.into(),
        })
    }

    /// Decodes the next window with `spec` and `label` (those it was
    /// opened with), or `None` after the last.
    pub fn next(&mut self, spec: &FeatureSpec, label: LabelUse) -> Result<Option<Window>> {
        let Some(batch) = self.batches.next() else {
            return Ok(None);
        };
        let batch = batch?;
        let origin = Origin {
            file: &self.path,
            row_group: Some(self.unit.row_group),
            first_row: self.unit.file_row + self.read,
        };
        self.read += batch.num_rows() as u64;
        let block = if self.raw {
            decode_scan(&batch, spec, label, &origin)?
        } else {
            decode(&batch, spec, label, &origin)?
        };
        let mut data = split_rows(block, &self.unit, self.split, self.rows);
        // Training rows' weights are checked, then take their class weight
        // and the job's scale; held-out rows are not weighted.
        if let Some(column) = spec.weight.as_ref().and_then(|w| w.column.as_deref()) {
            self.check_weights(&mut data.train, column, spec.on_missing)?;
            data.validation.weight.clear();
        }
        if !self.raw {
            data.train.weigh(spec.weight.as_ref());
        }
        let window = Window {
            index: self.index,
            data,
        };
        self.index += 1;
        Ok(Some(window))
    }
}

/// Divides a window's rows by the seeded hash of their file row.
fn split_rows(mut block: Block, unit: &Unit, split: Split, rows: Rows) -> UnitData {
    let held: Vec<bool> = match split.fraction {
        Some(f) => block
            .file_row
            .iter()
            .map(|r| held(f, split.seed, unit.file, r))
            .collect(),
        None if rows == Rows::Validation => vec![false; block.rows],
        None => {
            return UnitData {
                train: block,
                validation: Block::default(),
            }
        }
    };
    match rows {
        Rows::Train => {
            block.retain(|i| !held[i]);
            UnitData {
                train: block,
                validation: Block::default(),
            }
        }
        Rows::Validation => {
            block.retain(|i| held[i]);
            UnitData {
                train: Block::default(),
                validation: block,
            }
        }
        Rows::Both => {
            let mut validation = block.clone();
            validation.retain(|i| held[i]);
            block.retain(|i| !held[i]);
            UnitData {
                train: block,
                validation,
            }
        }
    }
}

/// Reads and decodes a unit window by window, so that memory holds one
/// window; `f` sees each window's rows, split, with their numeric values
/// also in `f64` ([`Block::raw_rows`]) for the statistics scan.
pub fn for_each_window(
    source: &dyn DataSource,
    unit: &Unit,
    spec: &FeatureSpec,
    label: LabelUse,
    split: Split,
    mut f: impl FnMut(UnitData) -> Result<()>,
) -> Result<()> {
    let mut windows = Windows::open(source, unit, spec, label, split, Rows::Both, true)?;
    while let Some(w) = windows.next(spec, label)? {
        f(w.data)?;
    }
    Ok(())
}
