//! Reading and decoding one unit, split into training and validation rows.

use super::encode::{decode, decode_raw, Block, FeatureSpec, LabelUse, Origin};
use super::partition::is_validation;
use super::source::Source;
use super::stream::WINDOW_ROWS;
use super::unit::{self, Unit};
use crate::error::{Error, Result};

/// The decoded rows of a unit.
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
    /// Fraction held out, if any.
    pub fraction: Option<f64>,
    /// Seed of the split.
    pub seed: u64,
}

fn split_block(block: super::encode::Block, unit: &Unit, split: Split) -> UnitData {
    match split.fraction {
        None => UnitData {
            train: block,
            validation: Block::default(),
        },
        Some(fraction) => {
            let held: Vec<bool> = block
                .file_row
                .iter()
                .map(|&r| is_validation(split.seed, unit.file, r, fraction))
                .collect();
            let mut train = block.clone();
            train.retain(|i| !held[i]);
            let mut validation = block;
            validation.retain(|i| held[i]);
            UnitData { train, validation }
        }
    }
}

/// Reads and decodes a unit window by window (8192 rows at a time), so that
/// memory holds one window; `f` sees each window's rows, split, with their
/// numeric values also in `f64` ([`Block::raw`]) for the statistics scan.
pub fn for_each_window(
    source: &Source,
    unit: &Unit,
    spec: &FeatureSpec,
    label: LabelUse,
    split: Split,
    mut f: impl FnMut(UnitData) -> Result<()>,
) -> Result<()> {
    let mut columns = spec.feature_columns();
    if !matches!(label, LabelUse::Skip) {
        columns.push(spec.label.clone());
    }
    let file = &source.files[unit.file];
    let reader = unit::reader(source, unit, &columns, WINDOW_ROWS)?;
    let mut read = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| unit::read_error(file, unit, &columns, e))?;
        let origin = Origin {
            file: &file.path,
            row_group: Some(unit.row_group),
            first_row: unit.file_row + read,
        };
        read += batch.num_rows() as u64;
        f(split_block(
            decode_raw(&batch, spec, label, &origin)?,
            unit,
            split,
        ))?;
    }
    if read != unit.rows as u64 {
        return Err(Error::parquet(
            &file.path,
            format!(
                "row group {}: expected {} rows, decoded {read} (truncated file?)",
                unit.row_group, unit.rows
            ),
        ));
    }
    Ok(())
}

/// Reads and decodes a unit; with a split, rows are divided by a seeded
/// hash of their file and row number (independent of units and workers).
pub fn load_unit(
    source: &Source,
    unit: &Unit,
    spec: &FeatureSpec,
    label: LabelUse,
    split: Split,
) -> Result<UnitData> {
    let mut columns = spec.feature_columns();
    if !matches!(label, LabelUse::Skip) {
        columns.push(spec.label.clone());
    }
    let batch = unit::read(source, unit, &columns)?;
    let file = &source.files[unit.file];
    let origin = Origin {
        file: &file.path,
        row_group: Some(unit.row_group),
        first_row: unit.file_row,
    };
    let block = decode(&batch, spec, label, &origin)?;
    Ok(split_block(block, unit, split))
}
