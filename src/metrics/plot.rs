//! Loss against wall time, rendered as SVG from metrics files (one series
//! per file), for comparing runs and strategies.

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

/// Draws loss against elapsed seconds for every series into an SVG file.
pub fn render(series: &[Series], out: &Path, title: &str) -> Result<()> {
    crate::io::atomic::write("--out", out, render_svg(series, out, title)?.as_bytes())
}

/// Draws loss against elapsed seconds for every series, as SVG text
/// (`out` names the file in messages).
pub fn render_svg(series: &[Series], out: &Path, title: &str) -> Result<String> {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.records
                .iter()
                .filter_map(|r| loss_of(r).map(|l| (r.elapsed_s, l)))
                .collect()
        })
        .collect();
    let all: Vec<&(f64, f64)> = points.iter().flatten().collect();
    if all.is_empty() {
        return Err(Error::NoRows {
            what: "metrics files: no loss values".into(),
            purpose: "plot".into(),
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
        chart
            .configure_mesh()
            .x_desc("wall time (s)")
            .y_desc("loss (validation if held out, else training)")
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
/// one of the metrics files).
pub fn plot_files(files: &[PathBuf], out: &Path, title: &str) -> Result<()> {
    let inputs: Vec<(&str, &Path)> = files.iter().map(|f| ("METRICS", f.as_path())).collect();
    let mut set = OutputSet::prepare(&[Request::file("--out", out)], &inputs)?;
    let series = files
        .iter()
        .map(|f| read_series(f))
        .collect::<Result<Vec<_>>>()?;
    let svg = render_svg(&series, out, title)?;
    for o in set.outputs() {
        o.write_all(svg.as_bytes())?;
    }
    set.commit()
}
