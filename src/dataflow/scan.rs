//! The statistics scan: one pass over every unit before training, run as
//! its own small dataflow. It counts rows, finds label classes, computes
//! feature means and variances (exactly), and surfaces the first bad input.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline as Local};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::ToStream;
use timely::worker::Worker;

use super::liveness::{self, Heartbeat};
use super::Failure;
use crate::data::cache::{Scanned, ScannedLabels};
use crate::data::encode::{Block, ClassMap, LabelUse, MAX_CLASSES};
use crate::data::moments::{merge_weighted_in_unit_order, Moments, PrefixMoments, WeightedMoments};
use crate::data::partition::{assign, assign_replicas};
use crate::data::window::{for_each_window, Split};
use crate::error::{Error, Location};
use crate::plan::Plan;
use crate::source::unit::Unit;
use crate::source::DataSource;
use crate::spec::{ModelKind, Partition};

/// What one worker learned from its units.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScanPartial {
    /// (unit id, training rows, validation rows) of training units.
    pub train_units: Vec<(usize, u64, u64)>,
    /// (unit id, rows) of units of separate validation files.
    pub validation_units: Vec<(usize, u64)>,
    /// Distinct label tokens (classifiers).
    pub labels: BTreeSet<String>,
    /// The first failure, keyed by (source, unit) so all workers pick the same one.
    pub failure: Option<((u8, usize), Failure)>,
    /// Memory available on this worker's machine, where known.
    pub memory: Option<u64>,
    /// Weighted jobs, per training unit: its rows and their weight total
    /// (summed in row order), by class token (`""` for a regression).
    pub weights: Vec<(usize, WeightTotals)>,
}

/// The merged scan.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ScanResult {
    /// Training rows per training unit.
    pub train_rows: Vec<u64>,
    /// Validation rows per training unit (fraction split).
    pub split_rows: Vec<u64>,
    /// Rows per unit of separate validation files.
    pub validation_rows: Vec<u64>,
    /// Moments per numeric feature.
    pub moments: Vec<Moments>,
    /// Moments of a regression label over the training rows (empty for
    /// classifiers): its mean is the reference validation metrics shift
    /// labels by, so that R² keeps its precision when labels dwarf their
    /// spread.
    pub label: Moments,
    /// Distinct label tokens.
    pub labels: BTreeSet<String>,
    /// The least memory available on any worker's machine, where known:
    /// every worker sees the same figure, so all decide alike whether the
    /// model fits.
    pub memory: Option<u64>,
    /// Weighted jobs (`data.weight`): the weighted moments per numeric
    /// feature, which standardisation then uses (empty otherwise).
    pub weighted: Vec<WeightedMoments>,
    /// Weighted jobs (`data.weight`, `model.class_weight`): training rows
    /// and the total of their weights, by class token (`""` for a
    /// regression), summed unit by unit in unit order (the same bits on any
    /// worker count); `None` otherwise.
    pub weights: Option<WeightTotals>,
}

/// Rows and their weight total, by class token.
pub type WeightTotals = BTreeMap<String, (u64, f64)>;

/// [`ScanResult`] as checkpoint versions 2 and 3 hold it (no weights).
#[derive(Debug, Clone, Deserialize)]
pub struct ScanV3 {
    train_rows: Vec<u64>,
    split_rows: Vec<u64>,
    validation_rows: Vec<u64>,
    moments: Vec<Moments>,
    label: Moments,
    labels: BTreeSet<String>,
    memory: Option<u64>,
}

impl From<ScanV3> for ScanResult {
    fn from(v: ScanV3) -> ScanResult {
        ScanResult {
            train_rows: v.train_rows,
            split_rows: v.split_rows,
            validation_rows: v.validation_rows,
            moments: v.moments,
            label: v.label,
            labels: v.labels,
            memory: v.memory,
            weighted: Vec::new(),
            weights: None,
        }
    }
}

/// One unit's moments of one numeric feature: (feature, unit id, moments,
/// weighted moments — default unless the job is weighted).
type UnitMoments = (u32, usize, Moments, WeightedMoments);

/// This worker's units read and summed; `pulse` is called before each
/// window (the heartbeat keeps going through a long read).
fn scan_local(
    plan: &Plan,
    index: usize,
    peers: usize,
    pulse: &mut dyn FnMut(),
) -> (ScanPartial, Vec<UnitMoments>, Scanned) {
    let spec = plan.scan_spec();
    let kind = plan.pipeline.model.kind;
    let declared = plan.pipeline.data.classes.clone().or_else(|| {
        (matches!(kind, ModelKind::Logistic | ModelKind::Hinge) && !plan.string_label)
            .then(|| vec!["0".to_string(), "1".to_string()])
    });
    let check = declared.as_ref().map(|c| ClassMap::new(c));
    // Known classes are checked by the decoder itself (by value for numeric
    // labels); only class discovery needs the label of every row as text.
    let label = match (&check, kind) {
        (_, ModelKind::Linear) => LabelUse::Value,
        (Some(map), _) => LabelUse::Classes(map),
        (None, _) => LabelUse::Tokens,
    };
    let split = Split {
        fraction: plan.validation_fraction,
        seed: plan.pipeline.data.seed,
    };
    let mut out = ScanPartial {
        memory: crate::memory::available(),
        ..ScanPartial::default()
    };
    let mut unit_moments = Vec::new();
    let mut scanned = match kept_labels(plan, &spec, declared.as_deref()) {
        // Half of this worker's share of the memory available: the cache
        // holds as much once training starts.
        Some(labels) => {
            let budget = out.memory.unwrap_or(0) / (2 * peers.max(1) as u64);
            Scanned::keeping(&spec, labels, budget)
        }
        None => Scanned::none(),
    };
    let weighted = spec.weight.is_some();
    // Separate validation files are read without weights (validation rows
    // are not weighted).
    let mut unweighted = spec.clone();
    unweighted.weight = None;
    // Separate validation files first: while they are read, the cache
    // holds little. A validation file is often one large row group, cut
    // into several units that each decode its whole dictionaries; read
    // last, those transient buffers sat on top of the whole cached
    // training set and set the job's peak memory.
    let mut sets: Vec<(u8, &dyn DataSource, Split)> = Vec::with_capacity(2);
    if let Some(v) = &plan.validation_files {
        sets.push((
            1,
            &**v,
            Split {
                fraction: None,
                seed: 0,
            },
        ));
    }
    sets.push((0, &*plan.train, split));
    for (which, source, split) in sets {
        let rows: Vec<usize> = source.units().iter().map(|u| u.rows).collect();
        // Any owners give the same statistics (they are merged in unit
        // order). Training units go where the first epoch will most likely
        // want them, so that the units kept for the cache stay put: the
        // first epoch's assignment, on the rows before the split.
        let owners: Vec<usize> = if which == 0 {
            let d = &plan.pipeline.data;
            let replicas = plan.pipeline.train.replicas;
            assign_replicas(&rows, peers, replicas, d.partition, d.seed, 0)
                .into_iter()
                .map(|(worker, _)| worker)
                .collect()
        } else {
            assign(&rows, peers, Partition::Slice, 0, 0)
        };
        for unit in source.units().iter().filter(|u| owners[u.id] == index) {
            let (mut train_rows, mut held_rows) = (0u64, 0u64);
            // One per numeric feature, then the label's (regression).
            let mut moments = vec![Moments::default(); spec.numeric.len() + 1];
            let mut wmoments = vec![WeightedMoments::default(); spec.numeric.len() + 1];
            let mut weights = WeightTotals::new();
            let mut labels = std::mem::take(&mut out.labels);
            let spec_of = if which == 0 { &spec } else { &unweighted };
            let mut kept = scanned.start_unit(which == 1);
            let checked = for_each_window(source, unit, spec_of, label, split, |data| {
                pulse();
                let blocks = [&data.train, &data.validation];
                label_tokens_check(
                    &blocks,
                    check.as_ref(),
                    source.unit_path(unit),
                    unit,
                    &spec.label,
                    &mut labels,
                )?;
                train_rows += data.train.rows as u64;
                held_rows += data.validation.rows as u64;
                // Missing values are NaN here (the scan's fill): not counted.
                let b = &data.train;
                b.raw_rows(|_, row| {
                    for (m, &x) in moments.iter_mut().zip(row) {
                        if !x.is_nan() {
                            m.push(x);
                        }
                    }
                });
                if kind == ModelKind::Linear {
                    let m = &mut moments[spec.numeric.len()];
                    b.label.iter().for_each(|y| m.push(y));
                }
                if weighted && which == 0 {
                    b.raw_rows(|i, row| {
                        let wt = b.weight_of(i);
                        for (m, &x) in wmoments.iter_mut().zip(row) {
                            if !x.is_nan() {
                                m.push(x, wt);
                            }
                        }
                    });
                    for i in 0..b.rows {
                        let class = match (&check, b.tokens.get(i)) {
                            (_, Some(t)) => t.clone(),
                            (Some(map), None) => map.name(b.label.at(i) as usize),
                            (None, None) => String::new(),
                        };
                        let entry = weights.entry(class).or_default();
                        entry.0 += 1;
                        entry.1 += b.weight_of(i);
                    }
                }
                scanned.take_window(&mut kept, data);
                Ok(())
            });
            out.labels = labels;
            if let Err(e) = checked {
                scanned.forget(kept);
                // Units are visited in order within a source: the first
                // failure of a source is its lowest. Training's come first.
                if out
                    .failure
                    .as_ref()
                    .is_none_or(|(at, _)| (which, unit.id) < *at)
                {
                    out.failure = Some(((which, unit.id), Failure::from(&e)));
                }
                continue;
            }
            if which == 0 {
                scanned.keep_train(unit.id, kept);
                if weighted {
                    out.weights.push((unit.id, weights));
                }
                out.train_units.push((unit.id, train_rows, held_rows));
                unit_moments.extend(
                    moments
                        .into_iter()
                        .zip(wmoments)
                        .enumerate()
                        .map(|(j, (m, w))| (j as u32, unit.id, m, w)),
                );
            } else {
                scanned.keep_validation(unit.id, kept);
                out.validation_units.push((unit.id, train_rows));
            }
        }
    }
    (out, unit_moments, scanned)
}

/// How training will decode the labels of the units the scan reads, when
/// the scan may keep them for the cache's first epoch (`None`: it keeps
/// nothing). It may when the cache is on, rows are not weighted, no cross
/// takes a numeric feature's value (its hashed value would change with
/// standardisation), and labels are decoded as training decodes them:
/// values, or classes known before the scan. Training checks the classes
/// against its own before it takes a unit.
fn kept_labels(
    plan: &Plan,
    spec: &crate::data::encode::FeatureSpec,
    declared: Option<&[String]>,
) -> Option<ScannedLabels> {
    let scaled_cross = spec
        .crosses
        .iter()
        .any(|c| c.of.iter().any(|m| spec.is_numeric(m)));
    if !plan.pipeline.data.cache || spec.weight.is_some() || scaled_cross {
        return None;
    }
    match (plan.pipeline.model.kind, declared) {
        (ModelKind::Linear, _) => Some(ScannedLabels::Values),
        (_, Some(classes)) => Some(ScannedLabels::Classes(classes.to_vec())),
        (_, None) => None,
    }
}

fn label_tokens_check(
    blocks: &[&Block],
    declared: Option<&ClassMap>,
    path: &std::path::Path,
    unit: &Unit,
    label: &str,
    seen: &mut BTreeSet<String>,
) -> Result<(), Error> {
    for b in blocks {
        for (i, tok) in b.tokens.iter().enumerate() {
            if let Some(map) = declared {
                if !map.contains(tok) {
                    return Err(Error::UnknownLabel {
                        location: Box::new(Location {
                            file: path.to_path_buf(),
                            row_group: Some(unit.row_group),
                            column: Some(label.to_string()),
                            row: Some(b.file_row.at(i)),
                        }),
                        value: tok.clone(),
                        classes: map.describe(),
                    });
                }
            } else if !seen.contains(tok) {
                seen.insert(tok.clone());
                if seen.len() > MAX_CLASSES {
                    return Err(Error::BadLabel {
                        location: Box::new(Location {
                            file: path.to_path_buf(),
                            row_group: Some(unit.row_group),
                            column: Some(label.to_string()),
                            row: Some(b.file_row.at(i)),
                        }),
                        message: format!("more than {MAX_CLASSES} distinct label values: is this a regression target?"),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Runs the scan as a dataflow on this worker; every worker returns the
/// same merged result (or the same first failure).
///
/// Row counts and labels are broadcast. Each feature's per-unit moments go
/// to one worker (feature `j` to worker `j mod peers`), which combines them
/// in unit order and broadcasts the result: the statistics depend on the
/// units alone, and no worker holds every unit's moments of every feature.
///
/// With a heartbeat (several processes), it beats while this worker reads
/// and while the dataflow runs.
///
/// With the cache on, it also returns the units this worker decoded
/// ([`Scanned`]), for the first epoch to use instead of reading them again.
pub fn run(
    worker: &mut Worker,
    plan: &Plan,
    mut heartbeat: Option<&mut Heartbeat>,
) -> Result<(ScanResult, Scanned), Failure> {
    let (index, peers) = (worker.index(), worker.peers());
    let (partial, unit_moments, scanned) = match heartbeat.as_deref_mut() {
        Some(h) => scan_local(plan, index, peers, &mut || h.keep_alive(worker)),
        None => scan_local(plan, index, peers, &mut || {}),
    };
    let received = Rc::new(RefCell::new(Vec::<ScanPartial>::new()));
    let sink = Rc::clone(&received);
    let merged = Rc::new(RefCell::new(Vec::<(u32, Moments, WeightedMoments)>::new()));
    let merged_sink = Rc::clone(&merged);
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(move |scope| {
        vec![partial].to_stream(scope).broadcast().sink(
            Local,
            "CollectScan",
            move |(input, _frontier)| {
                input.for_each(|_cap, data| sink.borrow_mut().append(data));
            },
        );
        unit_moments
            .to_stream(scope)
            .unary_frontier(
                Exchange::new(|m: &UnitMoments| u64::from(m.0)),
                "MergeMoments",
                |cap, _info| {
                    let mut cap = Some(cap);
                    let mut parts: BTreeMap<u32, Vec<(usize, Moments, WeightedMoments)>> =
                        BTreeMap::new();
                    // Each feature's statistics: its units' moments, merged
                    // in unit order once every unit has arrived.
                    move |(input, frontier), output| {
                        input.for_each(|_time, data| {
                            for (j, unit, m, w) in data.drain(..) {
                                parts.entry(j).or_default().push((unit, m, w));
                            }
                        });
                        if frontier.is_empty() {
                            if let Some(cap) = cap.take() {
                                let mut session = output.session(&cap);
                                for (j, units) in std::mem::take(&mut parts) {
                                    let (plain, weighted): (Vec<_>, Vec<_>) =
                                        units.into_iter().map(|(u, m, w)| ((u, m), (u, w))).unzip();
                                    let mut merged = PrefixMoments::default();
                                    merged.extend(plain);
                                    let w = merge_weighted_in_unit_order(weighted);
                                    session.give((j, merged.moments(), w));
                                }
                            }
                        }
                    }
                },
            )
            .broadcast()
            .sink(Local, "CollectMoments", move |(input, _frontier)| {
                input.for_each(|_cap, data| merged_sink.borrow_mut().append(data));
            });
    });
    liveness::run(worker, dataflow, heartbeat);
    let parts = std::mem::take(&mut *received.borrow_mut());
    let moments = std::mem::take(&mut *merged.borrow_mut());
    Ok((merge(plan, parts, moments)?, scanned))
}

fn merge(
    plan: &Plan,
    parts: Vec<ScanPartial>,
    moments: Vec<(u32, Moments, WeightedMoments)>,
) -> Result<ScanResult, Failure> {
    if let Some((_, f)) = parts
        .iter()
        .filter_map(|p| p.failure.clone())
        .min_by(|a, b| a.0.cmp(&b.0))
    {
        return Err(f);
    }
    let n_units = plan.train.units().len();
    let mut result = ScanResult {
        train_rows: vec![0; n_units],
        split_rows: vec![0; n_units],
        validation_rows: vec![
            0;
            plan.validation_files
                .as_ref()
                .map_or(0, |v| v.units().len())
        ],
        moments: vec![Moments::default(); plan.draft.numeric.len()],
        labels: BTreeSet::new(),
        label: Moments::default(),
        memory: parts.iter().filter_map(|p| p.memory).min(),
        weighted: Vec::new(),
        weights: None,
    };
    let weighted = plan.draft.weight.is_some();
    if weighted {
        result.weighted = vec![WeightedMoments::default(); plan.draft.numeric.len()];
        result.weights = Some(WeightTotals::new());
    }
    let mut unit_weights: Vec<(usize, WeightTotals)> = Vec::new();
    for p in parts {
        for (id, t, v) in p.train_units {
            result.train_rows[id] = t;
            result.split_rows[id] = v;
        }
        for (id, r) in p.validation_units {
            result.validation_rows[id] = r;
        }
        result.labels.extend(p.labels);
        unit_weights.extend(p.weights);
    }
    if let Some(totals) = result.weights.as_mut() {
        // In unit order: the same sums whichever worker read which unit.
        unit_weights.sort_by_key(|u| u.0);
        for (_, unit) in unit_weights {
            for (class, (rows, sum)) in unit {
                let entry = totals.entry(class).or_default();
                entry.0 += rows;
                entry.1 += sum;
            }
        }
    }
    for (j, m, w) in moments {
        match result.moments.get_mut(j as usize) {
            Some(slot) => *slot = m,
            None => result.label = m,
        }
        if let Some(slot) = result.weighted.get_mut(j as usize) {
            *slot = w;
        }
    }
    Ok(result)
}
