//! The units a worker holds for the current epoch: decoded once and kept
//! (`cache = true`), or streamed window by window (`cache = false`, one open
//! stream per unit of the current wave). Both modes feed the same rows in
//! the same order and segments, so `cache` changes memory and speed, never
//! the model.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::encode::{Block, ClassMap, FeatureSpec, LabelUse};
use super::load::{load_unit, Split, UnitData};
use super::partition::{assign, row_order, StepPlan};
use super::stream::{Rows, StreamSpec, UnitStream, WINDOW_ROWS};
use super::unit::Unit;
use crate::error::Result;
use crate::spec::{ModelKind, Partition};
use crate::train::plan::Plan;

/// The shuffle key of window `window` of unit `unit` (shared with streams).
pub fn window_key(unit: usize, window: u64) -> usize {
    ((unit as u64) << 20 ^ window) as usize
}

/// One cached unit: its rows, their order for the epoch, and the
/// boundaries of its stream windows (segments are cut there).
#[derive(Debug)]
struct Cached {
    data: UnitData,
    order: Option<Vec<usize>>,
    windows: Vec<usize>,
}

impl Cached {
    fn new(data: UnitData, unit: &Unit) -> Cached {
        let rows = &data.train.file_row;
        let mut windows = vec![0];
        for i in 1..rows.len() {
            if (rows[i] - unit.file_row) / WINDOW_ROWS as u64
                != (rows[i - 1] - unit.file_row) / WINDOW_ROWS as u64
            {
                windows.push(i);
            }
        }
        windows.push(rows.len());
        Cached {
            data,
            order: None,
            windows,
        }
    }

    /// Row order for an epoch: each window permuted on its own (shuffle).
    fn reorder(&mut self, unit: &Unit, s: &StreamSpec, epoch: u32) {
        if s.partition == Partition::Slice {
            self.order = None;
            return;
        }
        let mut order = Vec::with_capacity(self.data.train.rows);
        for w in self.windows.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a == b {
                continue;
            }
            let window = (self.data.train.file_row[a] - unit.file_row) / WINDOW_ROWS as u64;
            let perm = row_order(
                b - a,
                s.partition,
                s.seed,
                epoch,
                window_key(unit.id, window),
            )
            .unwrap_or_else(|| (0..b - a).collect());
            order.extend(perm.into_iter().map(|i| a + i));
        }
        self.order = Some(order);
    }
}

/// The data one worker holds.
pub struct WorkerData {
    index: usize,
    peers: usize,
    plan: Arc<Plan>,
    steps: StepPlan,
    stream: StreamSpec,
    train_rows: Vec<usize>,
    epoch: Option<u32>,
    /// Units this worker holds in the current epoch.
    mine: Vec<usize>,
    cached: BTreeMap<usize, Cached>,
    streams: BTreeMap<usize, UnitStream>,
    open_wave: Option<usize>,
    validation_files: Option<BTreeMap<usize, Block>>,
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
            steps,
            stream,
            train_rows,
            epoch: None,
            mine: Vec::new(),
            cached: BTreeMap::new(),
            streams: BTreeMap::new(),
            open_wave: None,
            validation_files: None,
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
        let owners = assign(&self.train_rows, self.peers, d.partition, d.seed, epoch);
        self.mine = (0..owners.len())
            .filter(|&u| owners[u] == self.index)
            .collect();
        self.streams.clear();
        self.open_wave = None;
        if d.cache {
            let mine = &self.mine;
            self.cached.retain(|id, _| mine.contains(id));
            let split = Split {
                fraction: plan.validation_fraction,
                seed: d.seed,
            };
            for &id in &self.mine {
                let unit = &plan.train.units[id];
                if !self.cached.contains_key(&id) {
                    let data = load_unit(
                        &plan.train.source,
                        unit,
                        &self.stream.spec,
                        self.label(),
                        split,
                    )?;
                    self.cached.insert(id, Cached::new(data, unit));
                }
                if let Some(c) = self.cached.get_mut(&id) {
                    c.reorder(unit, &self.stream, epoch);
                }
            }
        }
        self.epoch = Some(epoch);
        Ok(())
    }

    fn open_train(&self, id: usize, epoch: u32) -> Result<UnitStream> {
        let plan = &self.plan;
        UnitStream::open(
            &plan.train.source,
            &plan.train.units[id],
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
        mut f: impl FnMut(&Block, &[usize]) -> Result<()>,
    ) -> Result<()> {
        let plan = Arc::clone(&self.plan);
        let epoch = self.epoch.unwrap_or(0);
        if !plan.pipeline.data.cache {
            if self.steps.is_full_batch() {
                // One pass over every unit, one open stream at a time.
                for &id in &self.mine {
                    let mut s = self.open_train(id, epoch)?;
                    s.feed(&self.stream, self.train_rows[id], &mut f)?;
                }
                return Ok(());
            }
            let wave = self.steps.wave_at(step);
            if self.open_wave != Some(wave) {
                self.streams.clear();
                let wave_units: Vec<usize> = self
                    .mine
                    .iter()
                    .copied()
                    .filter(|&u| self.steps.wave_of(u) == wave)
                    .collect();
                for id in wave_units {
                    let s = self.open_train(id, epoch)?;
                    self.streams.insert(id, s);
                }
                self.open_wave = Some(wave);
            }
            for (&id, s) in self.streams.iter_mut() {
                if let Some((a, b)) = self.steps.rows(id, self.train_rows[id], step) {
                    s.feed(&self.stream, b - a, &mut f)?;
                }
            }
            return Ok(());
        }
        let mut idx = Vec::new();
        for (&id, c) in &self.cached {
            let Some((a, b)) = self.steps.rows(id, self.train_rows[id], step) else {
                continue;
            };
            // Cut [a, b) where stream windows end, exactly as streaming does.
            let mut start = a;
            while start < b {
                let end = c
                    .windows
                    .iter()
                    .copied()
                    .find(|&w| w > start)
                    .unwrap_or(b)
                    .min(b);
                idx.clear();
                idx.extend((start..end).map(|i| c.order.as_ref().map_or(i, |o| o[i])));
                f(&c.data.train, &idx)?;
                start = end;
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
        if plan.validation_fraction.is_none() {
            return Ok(()); // no validation rows: nothing to read
        }
        if cache {
            self.cached.values().for_each(|c| f(&c.data.validation));
            return Ok(());
        }
        let epoch = self.epoch.unwrap_or(0);
        for &id in &self.mine {
            let unit = &plan.train.units[id];
            UnitStream::open(
                &plan.train.source,
                unit,
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
    use crate::data::partition::is_validation;
    use crate::spec::Pipeline;
    use arrow::array::{ArrayRef, Float64Array, Int64Array};
    use arrow::record_batch::RecordBatch;
    use std::collections::BTreeSet;
    use std::path::Path;

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
        for epoch in 0..2 {
            let mut this = Fed::new();
            for (w, data) in workers.iter_mut().enumerate() {
                data.prepare(epoch).unwrap();
                for step in 0..steps.steps() {
                    data.step_rows(step, |block, idx| {
                        let seg = idx
                            .iter()
                            .map(|&i| (block.file_row[i], block.dense[i * 2], block.label[i]))
                            .collect();
                        this.push((w, step, seg));
                        Ok(())
                    })
                    .unwrap();
                }
                if epoch == 0 {
                    data.validation(|block| {
                        validation.extend(
                            (0..block.rows)
                                .map(|i| (block.file_row[i], block.dense[i * 2], block.label[i])),
                        );
                    })
                    .unwrap();
                }
            }
            fed.push(this);
        }
        Run {
            fed,
            validation,
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
