//! The statistics scan: one pass over every unit before training, run as
//! its own small dataflow. It counts rows, finds label classes, computes
//! feature means and variances (exactly), and surfaces the first bad input.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline as Local;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::ToStream;
use timely::worker::Worker;

use super::Failure;
use crate::data::encode::{ClassMap, LabelUse};
use crate::data::load::{for_each_window, Split};
use crate::data::partition::assign;
use crate::error::{Error, Location};
use crate::exact::Exact;
use crate::spec::{ModelKind, Partition};
use crate::train::plan::Plan;

/// Running moments of one numeric feature over training rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    /// Non-missing values.
    pub n: u64,
    /// Σ x.
    pub sum: Exact,
    /// Σ x².
    pub sumsq: Exact,
}

impl Moments {
    /// Mean (0 without values).
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum.to_f64() / self.n as f64
        }
    }
    /// Population standard deviation.
    pub fn std(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let m = self.mean();
        (self.sumsq.to_f64() / self.n as f64 - m * m)
            .max(0.0)
            .sqrt()
    }
}

/// What one worker learned from its units.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScanPartial {
    /// (unit id, training rows, validation rows) of training units.
    pub train_units: Vec<(usize, u64, u64)>,
    /// (unit id, rows) of units of separate validation files.
    pub validation_units: Vec<(usize, u64)>,
    /// Moments per numeric feature (training rows only).
    pub moments: Vec<Moments>,
    /// Distinct label tokens (classifiers).
    pub labels: BTreeSet<String>,
    /// The first failure, keyed by (source, unit) so all workers pick the same one.
    pub failure: Option<((u8, usize), Failure)>,
}

/// The merged scan.
#[derive(Debug, Clone, Default)]
pub struct ScanResult {
    /// Training rows per training unit.
    pub train_rows: Vec<u64>,
    /// Validation rows per training unit (fraction split).
    pub split_rows: Vec<u64>,
    /// Rows per unit of separate validation files.
    pub validation_rows: Vec<u64>,
    /// Moments per numeric feature.
    pub moments: Vec<Moments>,
    /// Distinct label tokens.
    pub labels: BTreeSet<String>,
}

const MAX_CLASSES: usize = 10_000;

fn scan_local(plan: &Plan, index: usize, peers: usize) -> ScanPartial {
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
        moments: vec![Moments::default(); spec.numeric.len()],
        ..ScanPartial::default()
    };
    let mut sets = vec![(0u8, &plan.train, split)];
    if let Some(v) = &plan.validation_files {
        sets.push((
            1,
            v,
            Split {
                fraction: None,
                seed: 0,
            },
        ));
    }
    for (which, units, split) in sets {
        let rows: Vec<usize> = units.units.iter().map(|u| u.rows).collect();
        let owners = assign(&rows, peers, Partition::Slice, 0, 0);
        for unit in units.units.iter().filter(|u| owners[u.id] == index) {
            let (mut train_rows, mut held_rows) = (0u64, 0u64);
            let mut moments = vec![Moments::default(); spec.numeric.len()];
            let mut labels = std::mem::take(&mut out.labels);
            let checked = for_each_window(&units.source, unit, &spec, label, split, |data| {
                let blocks = [&data.train, &data.validation];
                label_tokens_check(
                    &blocks,
                    check.as_ref(),
                    &units.source,
                    unit,
                    &spec.label,
                    &mut labels,
                )?;
                train_rows += data.train.rows as u64;
                held_rows += data.validation.rows as u64;
                let b = &data.train;
                for (j, m) in moments.iter_mut().enumerate() {
                    let (mut s, mut ss, mut n) = (0.0f64, 0.0f64, 0u64);
                    for i in 0..b.rows {
                        let x = b.dense[i * b.p + j] as f64;
                        if !x.is_nan() {
                            s += x;
                            ss += x * x;
                            n += 1;
                        }
                    }
                    m.n += n;
                    m.sum += Exact::from_f64(s).unwrap_or_default();
                    m.sumsq += Exact::from_f64(ss).unwrap_or_default();
                }
                Ok(())
            });
            out.labels = labels;
            if let Err(e) = checked {
                // Units are visited in order: the first failure is the lowest.
                if out.failure.is_none() {
                    out.failure = Some(((which, unit.id), Failure::from(&e)));
                }
                continue;
            }
            if which == 0 {
                out.train_units.push((unit.id, train_rows, held_rows));
                for (m, o) in out.moments.iter_mut().zip(moments) {
                    m.n += o.n;
                    m.sum += o.sum;
                    m.sumsq += o.sumsq;
                }
            } else {
                out.validation_units.push((unit.id, train_rows));
            }
        }
    }
    out
}

fn label_tokens_check(
    blocks: &[&crate::data::encode::Block],
    declared: Option<&ClassMap>,
    source: &crate::data::source::Source,
    unit: &crate::data::unit::Unit,
    label: &str,
    seen: &mut BTreeSet<String>,
) -> Result<(), Error> {
    for b in blocks {
        for (i, tok) in b.tokens.iter().enumerate() {
            if let Some(map) = declared {
                if !map.contains(tok) {
                    return Err(Error::UnknownLabel {
                        location: Box::new(Location {
                            file: source.files[unit.file].path.clone(),
                            row_group: Some(unit.row_group),
                            column: Some(label.to_string()),
                            row: Some(b.file_row[i]),
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
                            file: source.files[unit.file].path.clone(),
                            row_group: Some(unit.row_group),
                            column: Some(label.to_string()),
                            row: Some(b.file_row[i]),
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
pub fn run(worker: &mut Worker, plan: &Plan) -> Result<ScanResult, Failure> {
    let partial = scan_local(plan, worker.index(), worker.peers());
    let received = Rc::new(RefCell::new(Vec::<ScanPartial>::new()));
    let sink = Rc::clone(&received);
    worker.dataflow::<u64, _, _>(move |scope| {
        vec![partial].to_stream(scope).broadcast().sink(
            Local,
            "CollectScan",
            move |(input, _frontier)| {
                input.for_each(|_cap, data| sink.borrow_mut().append(data));
            },
        );
    });
    while worker.step_or_park(None) {}
    let parts = std::mem::take(&mut *received.borrow_mut());
    merge(plan, parts)
}

fn merge(plan: &Plan, parts: Vec<ScanPartial>) -> Result<ScanResult, Failure> {
    if let Some((_, f)) = parts
        .iter()
        .filter_map(|p| p.failure.clone())
        .min_by(|a, b| a.0.cmp(&b.0))
    {
        return Err(f);
    }
    let n_units = plan.train.units.len();
    let mut result = ScanResult {
        train_rows: vec![0; n_units],
        split_rows: vec![0; n_units],
        validation_rows: vec![0; plan.validation_files.as_ref().map_or(0, |v| v.units.len())],
        moments: vec![Moments::default(); plan.draft.numeric.len()],
        labels: BTreeSet::new(),
    };
    for p in parts {
        for (id, t, v) in p.train_units {
            result.train_rows[id] = t;
            result.split_rows[id] = v;
        }
        for (id, r) in p.validation_units {
            result.validation_rows[id] = r;
        }
        for (m, o) in result.moments.iter_mut().zip(p.moments) {
            m.n += o.n;
            m.sum += o.sum;
            m.sumsq += o.sumsq;
        }
        result.labels.extend(p.labels);
    }
    Ok(result)
}
