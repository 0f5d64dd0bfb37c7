//! The units a worker holds for the current epoch: decoded once and kept
//! (`cache = true`), or streamed window by window each epoch (`cache = false`,
//! bounded memory).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::encode::{Block, ClassMap, FeatureSpec, LabelUse};
use super::load::{load_unit, Split, UnitData};
use super::partition::{assign, chunk, row_order};
use super::stream::{Rows, StreamSpec, UnitStream};
use crate::error::Result;
use crate::spec::{ModelKind, Partition};
use crate::train::plan::Plan;

/// One cached unit with its row order for the current epoch.
#[derive(Debug)]
struct Cached {
    data: UnitData,
    order: Option<Vec<usize>>,
}

enum Held {
    Cached(Cached),
    Streamed(Box<UnitStream>),
}

/// The data one worker holds.
pub struct WorkerData {
    index: usize,
    peers: usize,
    plan: Arc<Plan>,
    stream: StreamSpec,
    train_rows: Vec<usize>,
    epoch: Option<u32>,
    owners: Vec<usize>,
    held: BTreeMap<usize, Held>,
    validation_files: Option<BTreeMap<usize, Block>>,
    /// Streams have been read since they were opened.
    streamed: bool,
}

impl WorkerData {
    /// Data of worker `index` of `peers` under the final feature spec;
    /// `train_rows` are the training rows per unit found by the scan.
    pub fn new(
        index: usize,
        peers: usize,
        plan: Arc<Plan>,
        spec: FeatureSpec,
        train_rows: Vec<usize>,
    ) -> WorkerData {
        let classes = match plan.pipeline.model.kind {
            ModelKind::Linear => None,
            _ => spec.classes.as_ref().map(|c| ClassMap::new(c)),
        };
        let d = &plan.pipeline.data;
        let stream = StreamSpec {
            spec,
            classes,
            fraction: plan.validation_fraction,
            seed: d.seed,
            partition: d.partition,
        };
        WorkerData {
            index,
            peers,
            plan,
            stream,
            train_rows,
            epoch: None,
            owners: Vec::new(),
            held: BTreeMap::new(),
            validation_files: None,
            streamed: false,
        }
    }

    fn label(&self) -> LabelUse<'_> {
        match &self.stream.classes {
            Some(c) => LabelUse::Classes(c),
            None => LabelUse::Value,
        }
    }

    /// Makes sure the worker holds exactly its units for `epoch`.
    pub fn prepare(&mut self, epoch: u32) -> Result<()> {
        if self.epoch == Some(epoch) {
            return Ok(());
        }
        let plan = Arc::clone(&self.plan);
        let d = &plan.pipeline.data;
        self.owners = assign(&self.train_rows, self.peers, d.partition, d.seed, epoch);
        let owners = &self.owners;
        let index = self.index;
        self.held
            .retain(|id, h| owners[*id] == index && matches!(h, Held::Cached(_)));
        let split = Split {
            fraction: plan.validation_fraction,
            seed: d.seed,
        };
        for unit in &plan.train.units {
            if self.owners[unit.id] != self.index {
                continue;
            }
            if !d.cache {
                let s =
                    UnitStream::open(&plan.train.source, unit, &self.stream, Rows::Train, epoch)?;
                self.held.insert(unit.id, Held::Streamed(Box::new(s)));
                continue;
            }
            if !self.held.contains_key(&unit.id) {
                let data = load_unit(
                    &plan.train.source,
                    unit,
                    &self.stream.spec,
                    self.label(),
                    split,
                )?;
                self.held
                    .insert(unit.id, Held::Cached(Cached { data, order: None }));
            }
            if let Some(Held::Cached(c)) = self.held.get_mut(&unit.id) {
                c.order = match d.partition {
                    Partition::Slice => None,
                    Partition::Shuffle => {
                        row_order(c.data.train.rows, d.partition, d.seed, epoch, unit.id)
                    }
                };
            }
        }
        self.epoch = Some(epoch);
        self.streamed = false;
        Ok(())
    }

    /// Starts the streamed units over (a new pass inside the same epoch, as
    /// every L-BFGS evaluation is).
    fn rewind(&mut self) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        let epoch = self.epoch.unwrap_or(0);
        for (&id, held) in self.held.iter_mut() {
            if let Held::Streamed(s) = held {
                **s = UnitStream::open(
                    &plan.train.source,
                    &plan.train.units[id],
                    &self.stream,
                    Rows::Train,
                    epoch,
                )?;
            }
        }
        self.streamed = false;
        Ok(())
    }

    /// Feeds this worker's rows of step `step` (of `steps`) to `f`, unit by
    /// unit in unit order, as (block, row indices) segments.
    pub fn step_rows(
        &mut self,
        step: u64,
        steps: u64,
        mut f: impl FnMut(&Block, &[usize]) -> Result<()>,
    ) -> Result<()> {
        if step == 0 && self.streamed {
            self.rewind()?;
        }
        let mut idx = Vec::new();
        for (&id, held) in self.held.iter_mut() {
            let (a, b) = chunk(self.train_rows[id], steps, step, id);
            if a == b {
                continue;
            }
            match held {
                Held::Cached(c) => {
                    idx.clear();
                    idx.extend((a..b).map(|i| c.order.as_ref().map_or(i, |o| o[i])));
                    f(&c.data.train, &idx)?;
                }
                Held::Streamed(s) => {
                    self.streamed = true;
                    s.feed(&self.stream, b - a, &mut f)?;
                }
            }
        }
        Ok(())
    }

    /// Feeds the validation rows this worker evaluates to `f`: the held-out
    /// rows of its units, or its slice of the separate validation files.
    pub fn validation(&mut self, mut f: impl FnMut(&Block)) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        let cache = plan.pipeline.data.cache;
        if let Some(v) = &plan.validation_files {
            let rows: Vec<usize> = v.units.iter().map(|u| u.rows).collect();
            let owners = assign(&rows, self.peers, Partition::Slice, 0, 0);
            let mine = v.units.iter().filter(|u| owners[u.id] == self.index);
            if !cache {
                let spec = StreamSpec {
                    fraction: None,
                    partition: Partition::Slice,
                    ..self.stream.clone()
                };
                for unit in mine {
                    UnitStream::open(&v.source, unit, &spec, Rows::All, 0)?.drain(&spec, &mut f)?;
                }
                return Ok(());
            }
            if self.validation_files.is_none() {
                let mut blocks = BTreeMap::new();
                for unit in mine {
                    let split = Split {
                        fraction: None,
                        seed: 0,
                    };
                    let data = load_unit(&v.source, unit, &self.stream.spec, self.label(), split)?;
                    blocks.insert(unit.id, data.train);
                }
                self.validation_files = Some(blocks);
            }
            self.validation_files
                .iter()
                .flat_map(|b| b.values())
                .for_each(f);
            return Ok(());
        }
        for (&id, held) in &self.held {
            match held {
                Held::Cached(c) => f(&c.data.validation),
                Held::Streamed(_) => {
                    let unit = &plan.train.units[id];
                    let epoch = self.epoch.unwrap_or(0);
                    UnitStream::open(
                        &plan.train.source,
                        unit,
                        &self.stream,
                        Rows::Validation,
                        epoch,
                    )?
                    .drain(&self.stream, &mut f)?;
                }
            }
        }
        Ok(())
    }
}
