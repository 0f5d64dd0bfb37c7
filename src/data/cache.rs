//! The units a worker holds: decoded once per assignment and kept while
//! the assignment lasts (`cache = true`), or decoded again each epoch.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::encode::{Block, ClassMap, FeatureSpec, LabelUse};
use super::load::{load_unit, Split, UnitData};
use super::partition::{assign, row_order};
use crate::error::Result;
use crate::spec::{ModelKind, Partition};
use crate::train::plan::Plan;

/// One held unit with its row order for the current epoch.
#[derive(Debug)]
pub struct Held {
    /// Decoded rows.
    pub data: UnitData,
    /// Row order (shuffle), or `None` for file order.
    pub order: Option<Vec<usize>>,
}

/// The data one worker holds.
#[derive(Debug)]
pub struct WorkerData {
    index: usize,
    peers: usize,
    plan: Arc<Plan>,
    spec: FeatureSpec,
    classes: Option<ClassMap>,
    train_rows: Vec<usize>,
    epoch: Option<u32>,
    held: BTreeMap<usize, Held>,
    validation_files: Option<BTreeMap<usize, Block>>,
}

impl WorkerData {
    /// Data of worker `index` of `peers` under the final feature spec.
    pub fn new(
        index: usize,
        peers: usize,
        plan: Arc<Plan>,
        spec: FeatureSpec,
        train_rows: Vec<usize>,
    ) -> WorkerData {
        let classes = spec.classes.as_ref().map(|c| ClassMap::new(c));
        WorkerData {
            index,
            peers,
            plan,
            spec,
            classes,
            train_rows,
            epoch: None,
            held: BTreeMap::new(),
            validation_files: None,
        }
    }

    fn label(&self) -> LabelUse<'_> {
        match (&self.classes, self.plan.pipeline.model.kind) {
            (_, ModelKind::Linear) | (None, _) => LabelUse::Value,
            (Some(c), _) => LabelUse::Classes(c),
        }
    }

    /// Makes sure the worker holds exactly its units for `epoch`.
    pub fn prepare(&mut self, epoch: u32) -> Result<()> {
        if self.epoch == Some(epoch) {
            return Ok(());
        }
        let plan = Arc::clone(&self.plan);
        let d = &plan.pipeline.data;
        let owners = assign(&self.train_rows, self.peers, d.partition, d.seed, epoch);
        if !d.cache {
            self.held.clear();
        }
        self.held.retain(|id, _| owners[*id] == self.index);
        let split = Split {
            fraction: plan.validation_fraction,
            seed: d.seed,
        };
        for unit in &plan.train.units {
            if owners[unit.id] != self.index {
                continue;
            }
            if !self.held.contains_key(&unit.id) {
                let data = load_unit(&plan.train.source, unit, &self.spec, self.label(), split)?;
                self.held.insert(unit.id, Held { data, order: None });
            }
            if let Some(h) = self.held.get_mut(&unit.id) {
                h.order = match d.partition {
                    Partition::Slice => None,
                    Partition::Shuffle => {
                        row_order(h.data.train.rows, d.partition, d.seed, epoch, unit.id)
                    }
                };
            }
        }
        self.epoch = Some(epoch);
        Ok(())
    }

    /// The units held now, in unit order.
    pub fn held(&self) -> impl Iterator<Item = (usize, &Held)> {
        self.held.iter().map(|(id, h)| (*id, h))
    }

    /// Validation blocks this worker evaluates: the held-out rows of its
    /// units, or its slice of the separate validation files.
    pub fn validation(&mut self) -> Result<Vec<&Block>> {
        let plan = Arc::clone(&self.plan);
        if let Some(v) = &plan.validation_files {
            if self.validation_files.is_none() {
                let rows: Vec<usize> = v.units.iter().map(|u| u.rows).collect();
                let owners = assign(&rows, self.peers, Partition::Slice, 0, 0);
                let mut blocks = BTreeMap::new();
                for unit in v.units.iter().filter(|u| owners[u.id] == self.index) {
                    let data = load_unit(
                        &v.source,
                        unit,
                        &self.spec,
                        self.label(),
                        Split {
                            fraction: None,
                            seed: 0,
                        },
                    )?;
                    blocks.insert(unit.id, data.train);
                }
                self.validation_files = Some(blocks);
            }
            Ok(self
                .validation_files
                .iter()
                .flat_map(|b| b.values())
                .collect())
        } else {
            Ok(self.held.values().map(|h| &h.data.validation).collect())
        }
    }
}
