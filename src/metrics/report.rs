//! `tidemill report`: one figure of a set of runs — loss and the main
//! validation metric against epoch and wall time, and, from `eval
//! --curves` files, ROC curves and calibration — as SVG or PNG.

use std::path::{Path, PathBuf};

use super::chart::{self, Corner, Figure, ImageFormat, Line, Panel};
use super::curves::Curves;
use super::plot::{self, Axes, Series};
use super::sink::EpochRecord;
use crate::error::{Error, Result};
use crate::io::atomic::{OutputSet, Request};

/// The validation metrics a report draws when none is named, in order of
/// preference: the first one the runs hold.
pub const MAIN_METRICS: [&str; 3] = ["auc", "accuracy", "rmse"];

/// What to draw, and where.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// Metrics files, one per run.
    pub metrics: &'a [PathBuf],
    /// One label per metrics file, or none (labelled by
    /// [`plot::run_labels`]).
    pub labels: &'a [String],
    /// Curves files from `eval --curves`.
    pub curves: &'a [PathBuf],
    /// The validation metric (default: the first of [`MAIN_METRICS`]
    /// the runs hold).
    pub metric: Option<&'a str>,
    /// Figure title.
    pub title: Option<&'a str>,
    /// The output: `.svg` or `.png`.
    pub out: &'a Path,
}

/// Draws the report of `r` into `r.out`: the format and the output are
/// checked and prepared before any file is read.
pub fn report(r: &Report<'_>) -> Result<()> {
    let format = ImageFormat::for_output("--out", r.out)?;
    plot::check_labels(r.labels, r.metrics.len())?;
    let inputs: Vec<(&str, &Path)> = r
        .metrics
        .iter()
        .map(|f| ("METRICS", f.as_path()))
        .chain(r.curves.iter().map(|f| ("--curves", f.as_path())))
        .collect();
    let mut set = OutputSet::prepare(&[Request::file("--out", r.out)], &inputs)?;
    let runs = plot::read_runs(r.metrics, r.labels)?;
    let curves = r
        .curves
        .iter()
        .map(|f| Curves::read(f))
        .collect::<Result<Vec<_>>>()?;
    let figure = figure(&runs, r.metrics, &curves, r.curves, r.metric, r.title)?;
    let bytes = chart::render(&figure, format, r.out)?;
    for o in set.outputs() {
        o.write_all(&bytes)?;
    }
    set.commit()
}

/// A record's training loss: the mean batch loss, or (L-BFGS) the
/// objective.
fn train_loss(r: &EpochRecord) -> Option<f64> {
    r.train_loss.or(r.objective)
}

/// The report's figure. `files` are the runs' metrics files and
/// `curve_files` the curves' (for labels and messages).
pub fn figure(
    runs: &[Series],
    files: &[PathBuf],
    curves: &[Curves],
    curve_files: &[PathBuf],
    metric: Option<&str>,
    title: Option<&str>,
) -> Result<Figure> {
    for (run, file) in runs.iter().zip(files) {
        let has_loss = run
            .records
            .iter()
            .any(|r| train_loss(r).is_some() || r.validation.is_some());
        if !has_loss {
            return Err(Error::Usage {
                option: file.display().to_string(),
                message: "no record has a loss (train_loss, objective or validation.loss): not the metrics of a training run".into(),
            });
        }
    }
    let mut panels = Vec::new();
    for by_epoch in [true, false] {
        let axes = Axes {
            metric: "loss".into(),
            by_epoch,
        };
        let mut lines = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let train = points(run, &axes, train_loss);
            let validation = points(run, &axes, |r| r.validation.as_ref().map(|m| m.loss));
            if !train.is_empty() {
                lines.push(Line::run(i, format!("{} training", run.label), train));
            }
            if !validation.is_empty() {
                lines.push(Line {
                    dashed: true,
                    ..Line::run(i, format!("{} validation", run.label), validation)
                });
            }
        }
        panels.extend(
            Panel::fitted(
                format!("loss against {}", x_name(by_epoch)),
                x_desc(by_epoch),
                "loss (solid: training, dashed: validation)",
                lines,
            )
            .map(|p| wall_time_from_first_point(p, by_epoch)),
        );
    }
    if let Some(metric) = main_metric(runs, files, metric)? {
        for by_epoch in [true, false] {
            let axes = Axes {
                metric: metric.clone(),
                by_epoch,
            };
            let lines = runs
                .iter()
                .enumerate()
                .map(|(i, run)| Line::run(i, run.label.clone(), points(run, &axes, |r| axes.y(r))))
                .collect();
            let name = metric.strip_prefix("validation.").unwrap_or(&metric);
            if let Some(mut panel) = Panel::fitted(
                format!("validation {name} against {}", x_name(by_epoch)),
                x_desc(by_epoch),
                name,
                lines,
            ) {
                if !matches!(name, "loss" | "rmse" | "mae") {
                    panel.legend = Corner::LowerRight;
                }
                panels.push(wall_time_from_first_point(panel, by_epoch));
            }
        }
    }
    if !curves.is_empty() {
        panels.extend(curve_panels(runs, curves, curve_files));
    }
    Ok(Figure {
        title: Some(title.unwrap_or("training report").to_string()),
        columns: 2,
        cell: (640, 430),
        panels,
    })
}

/// `run`'s points of `y` against `axes`' x.
fn points(run: &Series, axes: &Axes, y: impl Fn(&EpochRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    run.records
        .iter()
        .filter_map(|r| y(r).map(|v| (axes.x(r), v)))
        .collect()
}

/// A wall-time panel starts at its first point (a run's start-up, the
/// seconds before its first epoch, would squeeze the epochs); an epoch
/// panel starts at 0.
fn wall_time_from_first_point(panel: Panel, by_epoch: bool) -> Panel {
    if by_epoch {
        panel
    } else {
        panel.x_from_first_point()
    }
}

fn x_name(by_epoch: bool) -> &'static str {
    if by_epoch {
        "epoch"
    } else {
        "wall time"
    }
}

fn x_desc(by_epoch: bool) -> &'static str {
    if by_epoch {
        "epoch"
    } else {
        "wall time (s)"
    }
}

/// The validation metric to draw: `named`, which every run must hold,
/// or the first of [`MAIN_METRICS`] some run holds, which then every run
/// must hold too; `None` if no run holds validation metrics (no rows
/// held out).
fn main_metric(runs: &[Series], files: &[PathBuf], named: Option<&str>) -> Result<Option<String>> {
    let has = |run: &Series, axes: &Axes| run.records.iter().any(|r| axes.y(r).is_some());
    let axes = match named {
        Some(m) => Axes {
            metric: m.into(),
            by_epoch: false,
        },
        None => {
            let found = MAIN_METRICS.into_iter().find(|m| {
                let axes = Axes {
                    metric: (*m).into(),
                    by_epoch: false,
                };
                runs.iter().any(|run| has(run, &axes))
            });
            match found {
                Some(m) => Axes {
                    metric: m.into(),
                    by_epoch: false,
                },
                None => {
                    tracing::warn!(
                        "no run has validation {} (no rows held out): the report shows the loss only",
                        MAIN_METRICS.join(", ")
                    );
                    return Ok(None);
                }
            }
        }
    };
    for (run, file) in runs.iter().zip(files) {
        if !has(run, &axes) {
            let mut e = axes.missing(&file.display().to_string(), std::slice::from_ref(run));
            if let (None, Error::Usage { message, .. }) = (named, &mut e) {
                message.push_str(
                    "; the other runs have it: report runs of one kind of model, each with validation rows, or choose --metric",
                );
            }
            return Err(e);
        }
    }
    Ok(Some(axes.metric))
}

/// The ROC and calibration panels. Curves given one per run are that
/// run's (its label and colour); otherwise they are labelled by their
/// files.
fn curve_panels(runs: &[Series], curves: &[Curves], files: &[PathBuf]) -> [Panel; 2] {
    let paired = curves.len() == runs.len();
    let labels = if paired {
        runs.iter().map(|r| r.label.clone()).collect()
    } else {
        plot::run_labels(files)
    };
    let ink = |j: usize| if paired { j } else { runs.len() + j };
    let mut roc = vec![Line::diagonal("chance")];
    let mut calibration = vec![Line::diagonal("perfectly calibrated")];
    for (j, (c, label)) in curves.iter().zip(&labels).enumerate() {
        let points = c
            .roc
            .fpr
            .iter()
            .copied()
            .zip(c.roc.tpr.iter().copied())
            .collect();
        roc.push(Line::run(
            ink(j),
            format!("{label} (AUC {:.3})", c.auc),
            points,
        ));
        if let Some(cal) = &c.calibration {
            let points = cal
                .prob_pred
                .iter()
                .copied()
                .zip(cal.prob_true.iter().copied())
                .collect();
            calibration.push(Line {
                markers: true,
                ..Line::run(ink(j), label.clone(), points)
            });
        }
    }
    let calibration_title = if calibration.len() > 1 {
        format!("calibration ({} bins)", super::curves::CALIBRATION_BINS)
    } else {
        "calibration: no probabilities (hinge)".into()
    };
    [
        Panel::unit(
            "ROC curve",
            "false positive rate",
            "true positive rate",
            roc,
        ),
        Panel::unit(
            &calibration_title,
            "mean predicted probability",
            "fraction positive",
            calibration,
        ),
    ]
}
