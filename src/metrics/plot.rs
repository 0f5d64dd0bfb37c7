//! A metric against wall time or epoch, rendered as SVG from metrics files
//! (one series per file, labelled by run), for comparing runs and
//! strategies.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

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

    fn x(&self, r: &EpochRecord) -> f64 {
        if self.by_epoch {
            f64::from(r.epoch)
        } else {
            r.elapsed_s
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

/// Draws `axes` for every series, as SVG text (`out` names the file in
/// messages).
pub fn render_svg(series: &[Series], out: &Path, title: &str, axes: &Axes) -> Result<String> {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.records
                .iter()
                .filter_map(|r| axes.y(r).map(|y| (axes.x(r), y)))
                .collect()
        })
        .collect();
    let all: Vec<&(f64, f64)> = points.iter().flatten().collect();
    if all.is_empty() {
        let names = Axes::available(series);
        let others: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != axes.metric)
            .collect();
        let hint = crate::error::nearest(&axes.metric, &others)
            .map(|n| format!("did you mean '{n}'? "))
            .unwrap_or_default();
        return Err(Error::Usage {
            option: "--metric".into(),
            message: format!(
                "no record has '{}': {hint}the files have {}",
                axes.metric,
                names.join(", ")
            ),
        });
    }
    let x_max = all.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9) * 1.05;
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((y_max - y_min) * 0.05).max(1e-9);
    // Enough decimals to tell ticks apart when losses differ in the 5th digit.
    let tick = (y_max - y_min + 2.0 * pad) / 10.0;
    let decimals = ((-tick.log10()).ceil() as i64 + 1).clamp(2, 12) as usize;
    let y_label = move |v: &f64| format!("{v:.decimals$}");
    let draw_err = |e: &dyn std::fmt::Display| Error::Io {
        path: out.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(84)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| draw_err(&e))?;
        let y_desc = if axes.metric == "loss" {
            "loss (validation if held out, else training)".to_string()
        } else {
            axes.metric.clone()
        };
        chart
            .configure_mesh()
            .x_desc(if axes.by_epoch {
                "epoch"
            } else {
                "wall time (s)"
            })
            .y_desc(y_desc)
            .y_label_formatter(&y_label)
            .draw()
            .map_err(|e| draw_err(&e))?;
        for (i, (s, pts)) in series.iter().zip(&points).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| draw_err(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(&e))?;
        root.present().map_err(|e| draw_err(&e))?;
    }
    Ok(svg)
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
    if !labels.is_empty() && labels.len() != files.len() {
        return Err(Error::Usage {
            option: "--label".into(),
            message: format!(
                "{} label(s) for {} metrics file(s): give one per file, in order",
                labels.len(),
                files.len()
            ),
        });
    }
    let inputs: Vec<(&str, &Path)> = files.iter().map(|f| ("METRICS", f.as_path())).collect();
    let mut set = OutputSet::prepare(&[Request::file("--out", out)], &inputs)?;
    let names = if labels.is_empty() {
        run_labels(files)
    } else {
        labels.to_vec()
    };
    let series = files
        .iter()
        .zip(names)
        .map(|(f, label)| read_series(f).map(|s| Series { label, ..s }))
        .collect::<Result<Vec<_>>>()?;
    let svg = render_svg(&series, out, title, axes)?;
    for o in set.outputs() {
        o.write_all(svg.as_bytes())?;
    }
    set.commit()
}
