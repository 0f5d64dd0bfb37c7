//! A metric against wall time or epoch, rendered as SVG from metrics files
//! (one series per file, labelled by run), for comparing runs and
//! strategies; the runs, labels and axes `report` draws too.

use std::path::{Path, PathBuf};

use super::chart::{self, Figure, ImageFormat, Line, Panel};
use super::sink::EpochRecord;
use crate::error::{Error, Result};
use crate::io::atomic::{OutputSet, Request};

/// One run to draw: a label and its epoch records.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label (the file stem).
    pub label: String,
    /// Records in epoch order.
    pub records: Vec<EpochRecord>,
}

/// Reads a metrics JSON-lines file.
pub fn read_series(path: &Path) -> Result<Series> {
    let bytes = crate::io::bounded::read(path, crate::io::bounded::MAX_METRICS_BYTES)
        .map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })?;
    let mut records = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let r: EpochRecord = serde_json::from_str(line).map_err(|e| Error::PipelineValue {
            key: format!("{}:{}", path.display(), i + 1),
            message: format!("not a tidemill metrics record: {e}"),
        })?;
        records.push(r);
    }
    let label = path
        .file_stem()
        .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
    Ok(Series { label, records })
}

/// The loss a record reports: validation loss if there is one, else the
/// training loss, else the objective.
pub fn loss_of(r: &EpochRecord) -> Option<f64> {
    r.validation
        .as_ref()
        .map(|m| m.loss)
        .or(r.train_loss)
        .or(r.objective)
}

/// What to draw: the y values (`metric`) against `x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axes {
    /// `loss` (validation if held out, else training, else the
    /// objective), or a record field by name: `train_loss`, `objective`,
    /// `bytes_per_step`, a validation metric (`auc`, `accuracy`, `rmse`,
    /// ... or `validation.auc`).
    pub metric: String,
    /// Epochs on the x axis instead of wall time.
    pub by_epoch: bool,
}

impl Default for Axes {
    fn default() -> Axes {
        Axes {
            metric: "loss".into(),
            by_epoch: false,
        }
    }
}

impl Axes {
    /// The metric's value in a record, if it has one.
    pub fn y(&self, r: &EpochRecord) -> Option<f64> {
        if self.metric == "loss" {
            return loss_of(r);
        }
        let v = serde_json::to_value(r).ok()?;
        let in_validation = |name: &str| v.get("validation").and_then(|m| m.get(name));
        match self.metric.strip_prefix("validation.") {
            Some(name) => in_validation(name),
            None => v.get(&self.metric).or_else(|| in_validation(&self.metric)),
        }
        .and_then(serde_json::Value::as_f64)
    }

    /// The record's x: its epoch, or its seconds since training started.
    pub fn x(&self, r: &EpochRecord) -> f64 {
        if self.by_epoch {
            f64::from(r.epoch)
        } else {
            r.elapsed_s
        }
    }

    /// The error for a metric no record of `series` has (given by
    /// `option`), with the nearest name there is and the others.
    pub fn missing(&self, option: &str, series: &[Series]) -> Error {
        let names = Axes::available(series);
        let others: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != self.metric)
            .collect();
        let hint = crate::error::nearest(&self.metric, &others)
            .map(|n| format!("did you mean '{n}'? "))
            .unwrap_or_default();
        Error::Usage {
            option: option.into(),
            message: format!(
                "no record has '{}': {hint}the files have {}",
                self.metric,
                names.join(", ")
            ),
        }
    }

    /// Every metric name some record of `series` has, for messages.
    fn available(series: &[Series]) -> Vec<String> {
        let mut names = std::collections::BTreeSet::from(["loss".to_string()]);
        for r in series.iter().flat_map(|s| &s.records) {
            if let Ok(serde_json::Value::Object(o)) = serde_json::to_value(r) {
                for (k, v) in &o {
                    match v {
                        serde_json::Value::Number(_) if k != "epoch" && k != "steps" => {
                            names.insert(k.clone());
                        }
                        serde_json::Value::Object(m) if k == "validation" => {
                            names.extend(
                                m.iter()
                                    .filter(|(_, v)| v.is_number())
                                    .map(|(k, _)| k.clone()),
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
        names.into_iter().collect()
    }
}

/// Legend labels for runs read from `files`: the file names, or, where
/// they repeat (every run's `metrics.jsonl`), as many trailing path
/// components as it takes to tell them apart.
pub fn run_labels(files: &[PathBuf]) -> Vec<String> {
    let parts: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let mut c: Vec<String> = f
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if let Some(last) = c.last_mut() {
                if let Some(stem) = Path::new(last.as_str()).file_stem() {
                    *last = stem.to_string_lossy().into_owned();
                }
            }
            c
        })
        .collect();
    let longest = parts.iter().map(Vec::len).max().unwrap_or(1);
    for n in 1..=longest {
        let labels: Vec<String> = parts
            .iter()
            .map(|p| p[p.len().saturating_sub(n)..].join("/"))
            .collect();
        let unique: std::collections::BTreeSet<&String> = labels.iter().collect();
        if unique.len() == labels.len() {
            return labels;
        }
    }
    files.iter().map(|f| f.display().to_string()).collect()
}

/// Draws loss against elapsed seconds for every series into an SVG file.
pub fn render(series: &[Series], out: &Path, title: &str) -> Result<()> {
    let svg = render_svg(series, out, title, &Axes::default())?;
    crate::io::atomic::write("--out", out, svg.as_bytes())
}

/// The chart of `axes` for every series: one panel, one line per series.
pub fn figure(series: &[Series], title: &str, axes: &Axes) -> Result<Figure> {
    let lines = series
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let points = s
                .records
                .iter()
                .filter_map(|r| axes.y(r).map(|y| (axes.x(r), y)))
                .collect();
            Line::run(i, s.label.clone(), points)
        })
        .collect();
    let y_desc = if axes.metric == "loss" {
        "loss (validation if held out, else training)"
    } else {
        axes.metric.as_str()
    };
    let x_desc = if axes.by_epoch {
        "epoch"
    } else {
        "wall time (s)"
    };
    let panel = Panel::fitted(title.into(), x_desc, y_desc, lines)
        .ok_or_else(|| axes.missing("--metric", series))?;
    Ok(Figure {
        title: None,
        columns: 1,
        cell: (900, 560),
        panels: vec![panel],
    })
}

/// Draws `axes` for every series, as SVG text (`out` names the file in
/// messages).
pub fn render_svg(series: &[Series], out: &Path, title: &str, axes: &Axes) -> Result<String> {
    let bytes = chart::render(&figure(series, title, axes)?, ImageFormat::Svg, out)?;
    String::from_utf8(bytes).map_err(|e| Error::Internal(format!("SVG not UTF-8: {e}")))
}

/// `--label`s for `files` metrics files: none, or one per file.
pub fn check_labels(labels: &[String], files: usize) -> Result<()> {
    if labels.is_empty() || labels.len() == files {
        return Ok(());
    }
    Err(Error::Usage {
        option: "--label".into(),
        message: format!(
            "{} label(s) for {files} metrics file(s): give one per file, in order",
            labels.len()
        ),
    })
}

/// Reads metrics `files`, labelled by `labels` (one per file, in order)
/// or, if there are none, by [`run_labels`].
pub fn read_runs(files: &[PathBuf], labels: &[String]) -> Result<Vec<Series>> {
    check_labels(labels, files.len())?;
    let names = if labels.is_empty() {
        run_labels(files)
    } else {
        labels.to_vec()
    };
    files
        .iter()
        .zip(names)
        .map(|(f, label)| read_series(f).map(|s| Series { label, ..s }))
        .collect()
}

/// Reads every file and renders them into `out` (prepared first, and never
/// one of the metrics files), labelled by `labels` (one per file) or by
/// [`run_labels`].
pub fn plot_files(
    files: &[PathBuf],
    labels: &[String],
    out: &Path,
    title: &str,
    axes: &Axes,
) -> Result<()> {
    check_labels(labels, files.len())?;
    let inputs: Vec<(&str, &Path)> = files.iter().map(|f| ("METRICS", f.as_path())).collect();
    let mut set = OutputSet::prepare(&[Request::file("--out", out)], &inputs)?;
    let series = read_runs(files, labels)?;
    let svg = render_svg(&series, out, title, axes)?;
    for o in set.outputs() {
        o.write_all(svg.as_bytes())?;
    }
    set.commit()
}
