//! The units a worker holds for the current epoch: decoded once and kept
//! (`cache = true`), or streamed window by window (`cache = false`, one open
//! stream per unit of the current wave). Both read units with the same
//! [`Windows`] reader and feed the same rows in the same order and
//! segments, so `cache` changes memory and speed, never the model.
//!
//! A worker reads through a [`Feed`], a narrow view of the plan: its
//! sources (any [`DataSource`]), the split, the partition and the seed.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::encode::{dense_is_exact, restandardize, Block, ClassMap, FeatureSpec};
use super::partition::{assign, assign_replicas, window_order, StepPlan};
use super::stream::{StreamSpec, UnitStream};
use super::window::{Rows, Split, UnitData, Windows};
use crate::error::Result;
use crate::plan::Plan;
use crate::source::unit::Unit;
use crate::source::DataSource;
use crate::spec::{ModelKind, OnMissing, Partition};

/// What a worker reads, and how rows are split and ordered.
#[derive(Debug, Clone)]
pub struct Feed {
    /// The training units.
    pub train: Arc<dyn DataSource>,
    /// Separate validation units, if validation is by files.
    pub validation: Option<Arc<dyn DataSource>>,
    /// Fraction of training rows held out, if validation is by fraction.
    pub fraction: Option<crate::data::window::Holdout>,
    /// Seed of the split and of shuffling.
    pub seed: u64,
    /// Slice or shuffle.
    pub partition: Partition,
    /// Keep decoded units in memory (true) or stream them every epoch.
    pub cache: bool,
    /// True if labels are class names (classifiers), false for a
    /// regression value.
    pub classify: bool,
    /// Replicas that train (`model-average`'s `train.replicas`): units are
    /// assigned to replicas, replicas to workers. `None`: one per worker.
    pub replicas: Option<usize>,
}

impl Feed {
    /// The feed of a plan.
    pub fn of(plan: &Plan) -> Feed {
        let d = &plan.pipeline.data;
        Feed {
            train: Arc::clone(&plan.train) as Arc<dyn DataSource>,
            validation: plan
                .validation_files
                .as_ref()
                .map(|v| Arc::clone(v) as Arc<dyn DataSource>),
            fraction: plan.validation_fraction,
            seed: d.seed,
            partition: d.partition,
            cache: d.cache,
            classify: plan.pipeline.model.kind != ModelKind::Linear,
            replicas: plan.pipeline.train.replicas,
        }
    }

    fn split(&self) -> Split {
        Split {
            fraction: self.fraction,
            seed: self.seed,
        }
    }
}

/// One window of a cached unit: its training rows and their order.
#[derive(Debug)]
struct CachedWindow {
    /// Position of the window in its unit.
    index: u64,
    /// Training rows of the unit before this window.
    start: usize,
    train: Block,
    order: Option<Vec<usize>>,
}

/// One cached unit: its windows (segments are cut where they end) and its
/// held-out rows, as one block: metrics add a block's rows in `f64` and
/// round once, so the blocks they see are part of what they compute.
#[derive(Debug)]
struct Cached {
    windows: Vec<CachedWindow>,
    validation: Block,
}

impl Cached {
    /// Reads and decodes a unit, window by window.
    fn load(source: &dyn DataSource, unit: &Unit, s: &StreamSpec, split: Split) -> Result<Cached> {
        let mut reader = Windows::open(source, unit, &s.spec, s.label(), split, Rows::Both, false)?;
        let mut cached = Cached {
            windows: Vec::new(),
            validation: Block::default(),
        };
        let mut start = 0;
        while let Some(w) = reader.next(&s.spec, s.label())? {
            let rows = w.data.train.rows;
            cached.windows.push(CachedWindow {
                index: w.index,
                start,
                train: w.data.train,
                order: None,
            });
            cached.validation.append(w.data.validation);
            start += rows;
        }
        Ok(cached)
    }

    /// Row order for an epoch: each window permuted on its own (shuffle).
    fn reorder(&mut self, unit: usize, s: &StreamSpec, epoch: u32) {
        for w in &mut self.windows {
            w.order = window_order(w.train.rows, s.partition, s.seed, epoch, unit, w.index);
        }
    }
}

/// How the labels of a [`Scanned`] block were decoded: as values
/// (regression) or as indices of these classes.
#[derive(Debug, Clone, PartialEq)]
pub enum ScannedLabels {
    /// Regression values.
    Values,
    /// Class indices, by these names in index order.
    Classes(Vec<String>),
}

/// The units the statistics scan decoded on this worker, kept so that the
/// first cached epoch does not read and decode them again: their numeric
/// values as read (each window keeps [`Block::raw`] unless its `dense`
/// values are exact), standardised in place once the statistics are known
/// ([`restandardize`]), which gives the same bits as decoding with the
/// final spec. A unit the scan did not keep, or whose values do not
/// convert, is read again as before.
#[derive(Debug, Default)]
pub struct Scanned {
    labels: Option<ScannedLabels>,
    /// The columns the scan decoded, in its order.
    layout: Option<Layout>,
    budget: u64,
    held: u64,
    /// Set once a window did not fit in the budget: nothing more is taken.
    full: bool,
    train: BTreeMap<usize, Vec<UnitData>>,
    validation_files: BTreeMap<usize, Vec<UnitData>>,
}

/// The windows of one unit as the scan reads them, and whether they are
/// all there.
#[derive(Debug, Default)]
pub struct UnitWindows {
    windows: Vec<UnitData>,
    whole: bool,
    /// A unit of the separate validation files (kept only while the
    /// training units leave room).
    validation: bool,
}

/// Bytes a block's buffers hold.
fn block_bytes(b: &Block) -> u64 {
    let n = b.dense.capacity() * 4
        + b.raw.capacity() * 8
        + b.hashed.capacity() * 4
        + b.signs.capacity() * 4
        + b.label.capacity_bytes()
        + b.file_row.heap_bytes()
        + b.weight.capacity() * 8;
    n as u64
}

fn unit_bytes(d: &UnitData) -> u64 {
    block_bytes(&d.train) + block_bytes(&d.validation)
}

/// Drops whichever of a scanned block's two copies of its numeric values
/// [`restandardize`] does not need.
fn slim(b: &mut Block) {
    if dense_is_exact(b) {
        b.raw = Vec::new();
    } else {
        b.dense = Vec::new();
    }
    b.tokens = Vec::new();
}

impl Scanned {
    /// Keeps nothing.
    pub fn none() -> Scanned {
        Scanned::default()
    }

    /// Keeps units the scan decodes with `spec` (its columns; statistics
    /// unset) and whose labels it decodes as `labels`, holding at most
    /// `budget` bytes.
    pub fn keeping(spec: &FeatureSpec, labels: ScannedLabels, budget: u64) -> Scanned {
        Scanned {
            labels: Some(labels),
            layout: Some(Layout::of(spec)),
            budget,
            ..Scanned::default()
        }
    }

    /// An empty list for the windows of the next unit read, a unit of the
    /// separate validation files if `validation`.
    pub fn start_unit(&self, validation: bool) -> UnitWindows {
        UnitWindows {
            windows: Vec::new(),
            whole: self.labels.is_some() && !self.full,
            validation,
        }
    }

    /// Takes the next decoded window (with its `raw` values) of the unit
    /// `unit` lists, while the budget lasts; once it is spent, the unit's
    /// windows are dropped and no more are taken. Training units come
    /// first: the validation units kept (the scan reads them first) are
    /// given up for a training window that would not fit otherwise.
    pub fn take_window(&mut self, unit: &mut UnitWindows, mut data: UnitData) {
        if !unit.whole {
            return;
        }
        slim(&mut data.train);
        slim(&mut data.validation);
        let bytes = unit_bytes(&data);
        if !self.full
            && !unit.validation
            && self.held + bytes > self.budget
            && !self.validation_files.is_empty()
        {
            let freed: u64 = self
                .validation_files
                .values()
                .flatten()
                .map(unit_bytes)
                .sum();
            self.held = self.held.saturating_sub(freed);
            self.validation_files.clear();
        }
        if self.full || self.held + bytes > self.budget {
            self.full = true;
            self.forget(std::mem::take(unit));
            return;
        }
        self.held += bytes;
        unit.windows.push(data);
    }

    /// Keeps training unit `id`, read whole and without a failure.
    pub fn keep_train(&mut self, id: usize, unit: UnitWindows) {
        if unit.whole {
            self.train.insert(id, unit.windows);
        } else {
            self.forget(unit);
        }
    }

    /// Keeps unit `id` of the separate validation files, read whole and
    /// without a failure.
    pub fn keep_validation(&mut self, id: usize, unit: UnitWindows) {
        if unit.whole {
            self.validation_files.insert(id, unit.windows);
        } else {
            self.forget(unit);
        }
    }

    /// Gives up a unit's windows (it failed, or did not fit).
    pub fn forget(&mut self, unit: UnitWindows) {
        let bytes: u64 = unit.windows.iter().map(unit_bytes).sum();
        self.held = self.held.saturating_sub(bytes);
    }

    /// Training unit `id` as the cache holds it under `s`, if the scan
    /// kept it and its values convert.
    fn cached(&mut self, id: usize, s: &StreamSpec) -> Option<Cached> {
        let windows = self.train.remove(&id)?;
        if !self.decodes_as(s) {
            return None;
        }
        let mut cached = Cached {
            windows: Vec::with_capacity(windows.len()),
            validation: Block::default(),
        };
        let mut start = 0;
        for (index, mut w) in windows.into_iter().enumerate() {
            if !restandardize(&mut w.train, &s.spec) || !restandardize(&mut w.validation, &s.spec) {
                return None;
            }
            let rows = w.train.rows;
            cached.windows.push(CachedWindow {
                index: index as u64,
                start,
                train: w.train,
                order: None,
            });
            cached.validation.append(w.validation);
            start += rows;
        }
        Some(cached)
    }

    /// Unit `id` of the separate validation files as one block under `s`,
    /// if the scan kept it and its values convert.
    fn validation_block(&mut self, id: usize, s: &StreamSpec) -> Option<Block> {
        let windows = self.validation_files.remove(&id)?;
        if !self.decodes_as(s) {
            return None;
        }
        let mut block = Block::default();
        for mut w in windows {
            if !restandardize(&mut w.train, &s.spec) {
                return None;
            }
            block.append(w.train);
        }
        Some(block)
    }

    /// True if the scan decoded labels as `s` does.
    fn decodes_as(&self, s: &StreamSpec) -> bool {
        let wanted = match &s.classes {
            Some(_) => s.spec.classes.clone().map(ScannedLabels::Classes),
            None => Some(ScannedLabels::Values),
        };
        wanted.is_some()
            && self.labels == wanted
            && s.spec.weight.is_none()
            && self.layout.as_ref() == Some(&Layout::of(&s.spec))
    }
}

/// What fixes where a decoded block's values sit and how they are read:
/// everything in a feature spec but the statistics (and the weights, which
/// the scan never keeps). A worker that decodes only its block of features
/// (`model-parallel`) has another layout, and reads its units again.
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    label: String,
    numeric: Vec<String>,
    categorical: Vec<String>,
    crosses: Vec<crate::plan::features::Cross>,
    hash_bits: u32,
    /// `mean` reads as `zero` (the scan fills with NaN either way).
    on_missing: OnMissing,
}

impl Layout {
    fn of(spec: &FeatureSpec) -> Layout {
        Layout {
            label: spec.label.clone(),
            numeric: spec.numeric.iter().map(|f| f.name.clone()).collect(),
            categorical: spec.categorical.clone(),
            crosses: spec.crosses.clone(),
            hash_bits: spec.hash_bits,
            on_missing: match spec.on_missing {
                OnMissing::Mean => OnMissing::Zero,
                other => other,
            },
        }
    }
}

/// The data one worker holds.
pub struct WorkerData {
    index: usize,
    peers: usize,
    feed: Feed,
    steps: StepPlan,
    stream: StreamSpec,
    train_rows: Vec<usize>,
    epoch: Option<u32>,
    /// Units this worker holds in the current epoch.
    mine: Vec<usize>,
    /// The replica that trains each unit in the current epoch.
    replica_of: Vec<usize>,
    cached: BTreeMap<usize, Cached>,
    streams: BTreeMap<usize, UnitStream>,
    /// The wave whose units are open, per replica fed (`None`: all the
    /// worker's units).
    open_waves: BTreeMap<Option<usize>, usize>,
    validation_files: Option<Vec<Block>>,
    /// Units the statistics scan decoded, until the first epoch takes its
    /// own and the first evaluation its validation files'.
    scanned: Scanned,
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
        steps: StepPlan,
    ) -> WorkerData {
        WorkerData::with_feed(index, peers, Feed::of(&plan), spec, train_rows, steps)
    }

    /// [`WorkerData::new`] for any feed.
    pub fn with_feed(
        index: usize,
        peers: usize,
        feed: Feed,
        spec: FeatureSpec,
        train_rows: Vec<usize>,
        steps: StepPlan,
    ) -> WorkerData {
        let classes = if feed.classify {
            spec.classes.as_ref().map(|c| ClassMap::new(c))
        } else {
            None
        };
        let stream = StreamSpec {
            spec,
            classes,
            fraction: feed.fraction,
            seed: feed.seed,
            partition: feed.partition,
        };
        WorkerData {
            index,
            peers,
            feed,
            steps,
            stream,
            train_rows,
            epoch: None,
            mine: Vec::new(),
            replica_of: Vec::new(),
            cached: BTreeMap::new(),
            streams: BTreeMap::new(),
            open_waves: BTreeMap::new(),
            validation_files: None,
            scanned: Scanned::none(),
        }
    }

    /// Hands over the units the statistics scan decoded on this worker:
    /// the first cached epoch and evaluation use them instead of reading
    /// them again (without the cache they are dropped).
    pub fn with_scanned(mut self, scanned: Scanned) -> WorkerData {
        // Units this worker decodes otherwise (its own block of features,
        // other classes) are no use: dropped now, not held while it reads.
        if self.feed.cache && scanned.decodes_as(&self.stream) {
            self.scanned = scanned;
        }
        self
    }

    /// Makes sure the worker holds exactly its units for `epoch`.
    pub fn prepare(&mut self, epoch: u32) -> Result<()> {
        if self.epoch == Some(epoch) {
            return Ok(());
        }
        let feed = &self.feed;
        let owners = assign_replicas(
            &self.train_rows,
            self.peers,
            feed.replicas,
            feed.partition,
            feed.seed,
            epoch,
        );
        self.mine = (0..owners.len())
            .filter(|&u| owners[u].0 == self.index)
            .collect();
        self.replica_of = owners.iter().map(|&(_, r)| r).collect();
        self.streams.clear();
        self.open_waves.clear();
        if feed.cache {
            let mine = &self.mine;
            self.cached.retain(|id, _| mine.contains(id));
            // Scanned units another worker trains on: dropped before this
            // one reads its own.
            self.scanned.train.retain(|id, _| mine.contains(id));
            let units = feed.train.units();
            let (mut scanned, mut read) = (0, 0);
            for &id in &self.mine {
                if !self.cached.contains_key(&id) {
                    let data = match self.scanned.cached(id, &self.stream) {
                        Some(data) => {
                            scanned += 1;
                            data
                        }
                        None => {
                            read += 1;
                            Cached::load(&*feed.train, &units[id], &self.stream, feed.split())?
                        }
                    };
                    self.cached.insert(id, data);
                }
                if let Some(c) = self.cached.get_mut(&id) {
                    c.reorder(id, &self.stream, epoch);
                }
            }
            if scanned + read > 0 {
                tracing::debug!(
                    worker = self.index,
                    epoch,
                    from_scan = scanned,
                    read,
                    "units cached"
                );
            }
        }
        // Scanned units another worker trains on are not needed.
        self.scanned.train.clear();
        self.epoch = Some(epoch);
        Ok(())
    }

    fn open_train(&self, id: usize, epoch: u32) -> Result<UnitStream> {
        let train = &self.feed.train;
        UnitStream::open(
            &**train,
            &train.units()[id],
            &self.stream,
            Rows::Train,
            epoch,
        )
    }

    /// Feeds this worker's rows of step `step` to `f`, unit by unit in unit
    /// order, as (block, row indices) segments that never cross a window.
    pub fn step_rows(
        &mut self,
        step: u64,
        f: impl FnMut(&Block, &[usize]) -> Result<()>,
    ) -> Result<()> {
        self.step_rows_of(step, None, f)
    }

    /// [`Self::step_rows`] restricted to the units of one replica (all of
    /// the worker's units for `None`), after [`Self::prepare`].
    pub fn step_rows_of(
        &mut self,
        step: u64,
        replica: Option<usize>,
        mut f: impl FnMut(&Block, &[usize]) -> Result<()>,
    ) -> Result<()> {
        let epoch = self.epoch.unwrap_or(0);
        let of = |replica_of: &[usize], id: usize| {
            replica.is_none_or(|r| replica_of.get(id) == Some(&r))
        };
        if !self.feed.cache {
            if self.steps.is_full_batch() {
                // One pass over every unit, one open stream at a time.
                for &id in &self.mine {
                    if !of(&self.replica_of, id) {
                        continue;
                    }
                    let mut s = self.open_train(id, epoch)?;
                    s.feed(&self.stream, self.train_rows[id], &mut f)?;
                }
                return Ok(());
            }
            // Each replica moves through the waves on its own (a worker
            // steps its replicas one after the other through a round).
            let wave = self.steps.wave_at(step);
            if self.open_waves.get(&replica) != Some(&wave) {
                let replica_of = &self.replica_of;
                self.streams.retain(|&id, _| !of(replica_of, id));
                let wave_units: Vec<usize> = self
                    .mine
                    .iter()
                    .copied()
                    .filter(|&u| self.steps.wave_of(u) == wave && of(replica_of, u))
                    .collect();
                for id in wave_units {
                    let s = self.open_train(id, epoch)?;
                    self.streams.insert(id, s);
                }
                self.open_waves.insert(replica, wave);
            }
            for (&id, s) in self.streams.iter_mut() {
                if !of(&self.replica_of, id) {
                    continue;
                }
                if let Some((a, b)) = self.steps.rows(id, self.train_rows[id], step) {
                    s.feed(&self.stream, b - a, &mut f)?;
                }
            }
            return Ok(());
        }
        let mut idx = Vec::new();
        for (&id, c) in &self.cached {
            if !of(&self.replica_of, id) {
                continue;
            }
            let Some((a, b)) = self.steps.rows(id, self.train_rows[id], step) else {
                continue;
            };
            // Cut [a, b) where windows end, exactly as streaming does.
            for w in &c.windows {
                let (lo, hi) = (a.max(w.start), b.min(w.start + w.train.rows));
                if lo >= hi {
                    continue;
                }
                idx.clear();
                idx.extend(
                    (lo - w.start..hi - w.start).map(|i| w.order.as_ref().map_or(i, |o| o[i])),
                );
                f(&w.train, &idx)?;
            }
        }
        Ok(())
    }

    /// Feeds the validation rows this worker evaluates to `f`: the held-out
    /// rows of its units, or its slice of the separate validation files.
    pub fn validation(&mut self, mut f: impl FnMut(&Block)) -> Result<()> {
        let feed = self.feed.clone();
        if let Some(v) = &feed.validation {
            let rows: Vec<usize> = v.units().iter().map(|u| u.rows).collect();
            let owners = assign(&rows, self.peers, Partition::Slice, 0, 0);
            let mine = v.units().iter().filter(|u| owners[u.id] == self.index);
            let mut spec = StreamSpec {
                fraction: None,
                partition: Partition::Slice,
                ..self.stream.clone()
            };
            // Validation rows are not weighted: their files need no weights.
            spec.spec.weight = None;
            if !feed.cache {
                for unit in mine {
                    UnitStream::open(&**v, unit, &spec, Rows::Train, 0)?.drain(&spec, &mut f)?;
                }
                return Ok(());
            }
            if self.validation_files.is_none() {
                let mut blocks = Vec::new();
                let mut scanned = 0;
                for unit in mine {
                    if let Some(block) = self.scanned.validation_block(unit.id, &spec) {
                        blocks.push(block);
                        scanned += 1;
                        continue;
                    }
                    // One block per unit, as metrics see a cached unit.
                    let mut block = Block::default();
                    let mut reader = Windows::open(
                        &**v,
                        unit,
                        &spec.spec,
                        spec.label(),
                        spec.split(),
                        Rows::Train,
                        false,
                    )?;
                    while let Some(w) = reader.next(&spec.spec, spec.label())? {
                        block.append(w.data.train);
                    }
                    blocks.push(block);
                }
                tracing::debug!(
                    worker = self.index,
                    from_scan = scanned,
                    read = blocks.len() - scanned,
                    "validation units cached"
                );
                self.validation_files = Some(blocks);
                self.scanned.validation_files.clear();
            }
            self.validation_files.iter().flatten().for_each(f);
            return Ok(());
        }
        if feed.fraction.is_none() {
            return Ok(()); // no validation rows: nothing to read
        }
        if feed.cache {
            self.cached.values().map(|c| &c.validation).for_each(f);
            return Ok(());
        }
        let epoch = self.epoch.unwrap_or(0);
        let units = feed.train.units();
        for &id in &self.mine {
            UnitStream::open(
                &*feed.train,
                &units[id],
                &self.stream,
                Rows::Validation,
                epoch,
            )?
            .drain(&self.stream, &mut f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::partition::{is_validation, WINDOW_ROWS};
    use crate::spec::Pipeline;
    use arrow::array::{ArrayRef, Float64Array, Int64Array};
    use arrow::record_batch::RecordBatch;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// A window of `rows` rows of one feature, labels 0/1.
    fn window_of(rows: usize) -> UnitData {
        let mut train = Block {
            rows,
            p: 1,
            dense: vec![0.5; rows],
            ..Block::default()
        };
        train.label = (0..rows).map(|i| (i % 2) as f64).collect();
        UnitData {
            train,
            validation: Block::default(),
        }
    }

    #[test]
    fn training_windows_displace_kept_validation_units() {
        let spec = FeatureSpec {
            label: "y".into(),
            numeric: Vec::new(),
            categorical: Vec::new(),
            crosses: Vec::new(),
            hash_bits: 10,
            on_missing: crate::spec::OnMissing::Error,
            classes: None,
            weight: None,
        };
        let labels = ScannedLabels::Classes(vec!["0".into(), "1".into()]);
        let one = unit_bytes(&window_of(100));
        // Room for three windows: two of validation, read first, then
        // two of training.
        let mut scanned = Scanned::keeping(&spec, labels, 3 * one);
        for id in 0..2 {
            let mut unit = scanned.start_unit(true);
            scanned.take_window(&mut unit, window_of(100));
            scanned.keep_validation(id, unit);
        }
        assert_eq!(scanned.validation_files.len(), 2);
        assert_eq!(scanned.held, 2 * one);
        let mut unit = scanned.start_unit(false);
        scanned.take_window(&mut unit, window_of(100));
        scanned.take_window(&mut unit, window_of(100));
        scanned.keep_train(0, unit);
        // The second training window did not fit beside the validation
        // units: they were given up, and the training unit kept whole.
        assert!(scanned.validation_files.is_empty());
        assert_eq!(scanned.train[&0].len(), 2);
        assert_eq!(scanned.held, 2 * one);
        assert!(!scanned.full);
        // Training windows beyond the budget are still not kept.
        let mut unit = scanned.start_unit(false);
        for _ in 0..2 {
            scanned.take_window(&mut unit, window_of(100));
        }
        scanned.keep_train(1, unit);
        assert!(scanned.full && !scanned.train.contains_key(&1));
        assert_eq!(scanned.held, 2 * one);
    }

    /// Rows of the test file: `x` is the file row, `y` its parity, `z` null
    /// on every 97th row (dropped under `skip_row`).
    const ROWS: u64 = 25_000;
    /// Row groups: 20000 rows (cut into two units of 10000, each with a
    /// window boundary at 8192) and 5000.
    const GROUPS: [std::ops::Range<u64>; 2] = [0..20_000, 20_000..ROWS];
    const SEED: u64 = 9;
    const FRACTION: f64 = 0.25;

    fn write_file(path: &Path) {
        let batch = |r: std::ops::Range<u64>| {
            let cols: Vec<(&str, ArrayRef)> = vec![
                (
                    "x",
                    Arc::new(Float64Array::from_iter_values(r.clone().map(|i| i as f64))),
                ),
                (
                    "y",
                    Arc::new(Int64Array::from_iter_values(
                        r.clone().map(|i| (i % 2) as i64),
                    )),
                ),
                (
                    "z",
                    Arc::new(Float64Array::from_iter(
                        r.map(|i| (i % 97 != 0).then_some(1.0)),
                    )),
                ),
            ];
            RecordBatch::try_from_iter(cols).unwrap()
        };
        let first = batch(GROUPS[0].clone());
        let file = std::fs::File::create(path).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, first.schema(), None).unwrap();
        for g in &GROUPS {
            w.write(&batch(g.clone())).unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap();
    }

    /// Every worker's segments of every step of `epoch`: (worker, step,
    /// [(file row, x, label)]).
    type Fed = Vec<(usize, u64, Vec<(u64, f32, f64)>)>;

    struct Run {
        fed: Vec<Fed>,
        validation: Vec<(u64, f32, f64)>,
        /// Blocks the validation rows came in.
        validation_blocks: usize,
        units: Vec<Unit>,
    }

    fn run(path: &Path, cache: bool, partition: &str) -> Run {
        let toml = format!(
            "[data]\ntrain = {path:?}\nlabel = \"y\"\nvalidation = {{ fraction = {FRACTION} }}\n\
             on_missing = \"skip_row\"\npartition = \"{partition}\"\nseed = {SEED}\ncache = {cache}\n\
             max_unit_rows = 12000\nunits_per_step = 2\n\
             [model]\nkind = \"logistic\"\n[optimizer]\nkind = \"sgd\"\nbatch_size = 3000\n"
        );
        let pipeline = Pipeline::parse(&toml, Path::new("t.toml"), &[]).unwrap();
        let plan = Arc::new(Plan::new(pipeline).unwrap());
        let units = plan.train.units.clone();
        assert_eq!(
            units
                .iter()
                .map(|u| (u.file_row, u.rows))
                .collect::<Vec<_>>(),
            [(0, 10_000), (10_000, 10_000), (20_000, 5000)]
        );
        let train_rows: Vec<usize> = units
            .iter()
            .map(|u| {
                (u.file_row..u.file_row + u.rows as u64)
                    .filter(|&r| r % 97 != 0 && !is_validation(SEED, 0, r, FRACTION))
                    .count()
            })
            .collect();
        let mut spec = plan.draft.clone();
        spec.classes = Some(vec!["0".into(), "1".into()]);
        let steps = StepPlan::new(&train_rows, Some(3000), 2);
        let mut workers: Vec<WorkerData> = (0..2)
            .map(|w| {
                WorkerData::new(
                    w,
                    2,
                    Arc::clone(&plan),
                    spec.clone(),
                    train_rows.clone(),
                    steps.clone(),
                )
            })
            .collect();
        let mut fed = Vec::new();
        let mut validation = Vec::new();
        let mut validation_blocks = 0;
        for epoch in 0..2 {
            let mut this = Fed::new();
            for (w, data) in workers.iter_mut().enumerate() {
                data.prepare(epoch).unwrap();
                for step in 0..steps.steps() {
                    data.step_rows(step, |block, idx| {
                        let seg = idx
                            .iter()
                            .map(|&i| (block.file_row.at(i), block.dense[i * 2], block.label.at(i)))
                            .collect();
                        this.push((w, step, seg));
                        Ok(())
                    })
                    .unwrap();
                }
                if epoch == 0 {
                    data.validation(|block| {
                        validation_blocks += 1;
                        validation.extend((0..block.rows).map(|i| {
                            (block.file_row.at(i), block.dense[i * 2], block.label.at(i))
                        }));
                    })
                    .unwrap();
                }
            }
            fed.push(this);
        }
        Run {
            fed,
            validation,
            validation_blocks,
            units,
        }
    }

    #[test]
    fn cached_and_streamed_units_feed_the_same_rows_in_the_same_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.parquet");
        write_file(&path);
        let train: BTreeSet<u64> = (0..ROWS)
            .filter(|&r| r % 97 != 0 && !is_validation(SEED, 0, r, FRACTION))
            .collect();
        let held: BTreeSet<u64> = (0..ROWS)
            .filter(|&r| r % 97 != 0 && is_validation(SEED, 0, r, FRACTION))
            .collect();
        assert!(train.len() > 15_000 && held.len() > 4000);
        for partition in ["slice", "shuffle"] {
            let cached = run(&path, true, partition);
            let streamed = run(&path, false, partition);
            assert!(
                cached.fed == streamed.fed,
                "{partition}: cache changes what is fed"
            );
            assert_eq!(cached.validation, streamed.validation, "{partition}");
            // Metrics round once per block: a cached unit's held-out rows
            // (10,000-row units, windows of 8192) reach them as one block.
            assert_eq!(cached.validation_blocks, cached.units.len(), "{partition}");
            for (epoch, fed) in cached.fed.iter().enumerate() {
                let mut rows: Vec<u64> = Vec::new();
                for (_, _, seg) in fed {
                    assert!(!seg.is_empty());
                    for &(r, x, y) in seg {
                        // Each row decoded from its own file row.
                        assert_eq!((x, y), (r as f32, (r % 2) as f64), "row {r}");
                        rows.push(r);
                    }
                    // A segment never crosses a window of its unit.
                    let unit = cached
                        .units
                        .iter()
                        .find(|u| (u.file_row..u.file_row + u.rows as u64).contains(&seg[0].0))
                        .unwrap();
                    let window = |r: u64| (r - unit.file_row) / WINDOW_ROWS as u64;
                    assert!(
                        seg.iter().all(|&(r, _, _)| unit.file_row <= r
                            && r < unit.file_row + unit.rows as u64
                            && window(r) == window(seg[0].0)),
                        "{partition}: a segment crosses a window"
                    );
                    if partition == "slice" {
                        assert!(
                            seg.windows(2).all(|p| p[0].0 < p[1].0),
                            "slice keeps file order"
                        );
                    }
                }
                // Every training row once an epoch, no held-out or skipped row.
                rows.sort_unstable();
                assert_eq!(rows.len(), train.len(), "{partition} epoch {epoch}");
                assert!(
                    rows.iter().copied().eq(train.iter().copied()),
                    "{partition} epoch {epoch}"
                );
            }
            let mut v: Vec<u64> = cached.validation.iter().map(|t| t.0).collect();
            v.sort_unstable();
            assert!(
                v.iter().copied().eq(held.iter().copied()),
                "{partition}: validation rows"
            );
            if partition == "shuffle" {
                // Rows are permuted, and differently each epoch.
                let order = |e: usize| -> Vec<u64> {
                    cached.fed[e]
                        .iter()
                        .flat_map(|(_, _, s)| s.iter().map(|t| t.0))
                        .collect()
                };
                assert!(order(0).windows(2).any(|p| p[0] > p[1]));
                assert_ne!(order(0), order(1));
            }
        }
    }
}
