//! Reading and decoding one unit, split into training and validation rows.

use super::encode::{decode, Block, FeatureSpec, LabelUse, Origin};
use super::partition::is_validation;
use super::source::Source;
use super::unit::{self, Unit};
use crate::error::Result;

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
    Ok(match split.fraction {
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
    })
}
