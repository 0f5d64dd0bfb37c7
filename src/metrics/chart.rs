//! Charts as data: panels of labelled lines, laid out in a grid and drawn
//! as SVG or PNG. `plot` draws one panel, `report` several; both go
//! through [`render`].
//!
//! PNG text is drawn with the DejaVu Sans bundled in the binary
//! (`assets/fonts`), so a machine without fonts draws the same image.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};

/// DejaVu Sans (licence: `assets/fonts/LICENSE`), registered as
/// `sans-serif` before anything is drawn: plotters' text layout, SVG's
/// included, measures with it.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family every chart's text is set in.
const FAMILY: &str = "sans-serif";

/// An image format a chart is written in, told by the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// Scalable vector graphics (text as text).
    Svg,
    /// A PNG bitmap (RGB, 8 bits per channel).
    Png,
}

impl ImageFormat {
    /// The format `path`'s extension names (`.svg` or `.png`, any case);
    /// anything else is a usage error of `flag`, before any work.
    pub fn for_output(flag: &str, path: &Path) -> Result<ImageFormat> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("svg") => Ok(ImageFormat::Svg),
            Some("png") => Ok(ImageFormat::Png),
            other => Err(Error::Usage {
                option: flag.into(),
                message: format!(
                    "{}: {}; the extension says the format: .svg or .png",
                    path.display(),
                    match other {
                        Some(e) => format!("unknown image extension '.{e}'"),
                        None => "no extension".into(),
                    }
                ),
            }),
        }
    }
}

/// How a line is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ink {
    /// The `i`-th run's colour (the same in every panel).
    Run(usize),
    /// Grey: a reference such as the diagonal of a ROC plot.
    Reference,
}

impl Ink {
    fn color(self) -> RGBAColor {
        match self {
            Ink::Run(i) => Palette99::pick(i).to_rgba(),
            Ink::Reference => RGBColor(140, 140, 140).to_rgba(),
        }
    }
}

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend entry (`None`: not in the legend).
    pub label: Option<String>,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub ink: Ink,
    /// Dashed instead of solid.
    pub dashed: bool,
    /// A dot at every point.
    pub markers: bool,
}

impl Line {
    /// A solid line in the `i`-th run's colour.
    pub fn run(i: usize, label: impl Into<String>, points: Vec<(f64, f64)>) -> Line {
        Line {
            label: Some(label.into()),
            points,
            ink: Ink::Run(i),
            dashed: false,
            markers: false,
        }
    }

    /// The grey dashed diagonal from (0, 0) to (1, 1).
    pub fn diagonal(label: &str) -> Line {
        Line {
            label: Some(label.into()),
            points: vec![(0.0, 0.0), (1.0, 1.0)],
            ink: Ink::Reference,
            dashed: true,
            markers: false,
        }
    }
}

/// Where a panel's legend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    /// Top right (falling curves: losses).
    UpperRight,
    /// Bottom right (rising curves: AUC, ROC).
    LowerRight,
}

/// One chart: lines on a pair of axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Caption above the chart.
    pub title: String,
    /// X axis description.
    pub x_desc: String,
    /// Y axis description.
    pub y_desc: String,
    /// X range.
    pub x: Range<f64>,
    /// Y range.
    pub y: Range<f64>,
    /// Decimals of the y tick labels.
    pub y_decimals: usize,
    /// The lines, drawn in order.
    pub lines: Vec<Line>,
    /// Legend position.
    pub legend: Corner,
}

impl Panel {
    /// A panel whose ranges fit its lines: x from 0 (epochs, seconds) to
    /// a little past the largest, y padded by 5% either side, with enough
    /// decimals to tell ticks apart where values differ in the 5th digit.
    /// `None` if no line has a point.
    pub fn fitted(
        title: String,
        x_desc: &str,
        y_desc: &str,
        mut lines: Vec<Line>,
    ) -> Option<Panel> {
        // Points beyond ±1e300 (or not finite) cannot be given a range
        // around them: they are left out, and said so.
        let drawable = |p: &(f64, f64)| p.0.abs() <= 1e300 && p.1.abs() <= 1e300;
        let mut dropped = 0;
        for l in &mut lines {
            let before = l.points.len();
            l.points.retain(drawable);
            dropped += before - l.points.len();
        }
        if dropped > 0 {
            tracing::warn!(panel = %title, points = dropped, "points beyond ±1e300 (or not finite) are not drawn");
        }
        let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.points.clone()).collect();
        if all.is_empty() {
            return None;
        }
        let x_max = all.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9) * 1.05;
        let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let y_max = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let pad = ((y_max - y_min) * 0.05).max(1e-9);
        let tick = (y_max - y_min + 2.0 * pad) / 10.0;
        let y_decimals = ((-tick.log10()).ceil() as i64 + 1).clamp(2, 12) as usize;
        Some(Panel {
            title,
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            x: 0.0..x_max,
            y: (y_min - pad)..(y_max + pad),
            y_decimals,
            lines,
            legend: Corner::UpperRight,
        })
    }

    /// The x range cut to the lines' points, padded by 5% either side
    /// (wall time: the seconds before the first epoch are not drawn).
    pub fn x_from_first_point(mut self) -> Panel {
        let xs = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if lo <= hi {
            let pad = ((hi - lo) * 0.05).max(1e-9);
            self.x = (lo - pad).max(0.0)..(hi + pad);
        }
        self
    }

    /// A panel on the unit square (ROC, calibration).
    pub fn unit(title: &str, x_desc: &str, y_desc: &str, lines: Vec<Line>) -> Panel {
        Panel {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            x: 0.0..1.0,
            y: 0.0..1.0,
            y_decimals: 1,
            lines,
            legend: Corner::LowerRight,
        }
    }
}

/// Panels in a grid, filled row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Title above the grid (`None`: none; a single panel has its own).
    pub title: Option<String>,
    /// Panels per row.
    pub columns: usize,
    /// Size of one cell, in pixels.
    pub cell: (u32, u32),
    /// The panels.
    pub panels: Vec<Panel>,
}

impl Figure {
    fn size(&self) -> (u32, u32) {
        let columns = self.columns.max(1);
        let rows = self.panels.len().div_ceil(columns).max(1);
        let title = if self.title.is_some() { 50 } else { 0 };
        (
            self.cell.0 * columns as u32,
            self.cell.1 * rows as u32 + title,
        )
    }
}

/// Registers the bundled font (once per process).
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Internal(
            "the bundled font (DejaVu Sans) cannot be read".into(),
        ))
    }
}

/// Draws `figure` in `format`, as the bytes of the file (`out` names it
/// in messages).
pub fn render(figure: &Figure, format: ImageFormat, out: &Path) -> Result<Vec<u8>> {
    register_font()?;
    let fail = |e: &dyn std::fmt::Display| Error::Io {
        path: out.to_path_buf(),
        source: std::io::Error::other(format!("cannot draw the chart: {e}")),
    };
    let (w, h) = figure.size();
    match format {
        ImageFormat::Svg => {
            let mut svg = String::new();
            draw(
                &SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area(),
                figure,
            )
            .map_err(|e| fail(&e))?;
            Ok(svg.into_bytes())
        }
        ImageFormat::Png => {
            let mut pixels = vec![0u8; w as usize * h as usize * 3];
            {
                let backend = BitMapBackend::<plotters::backend::RGBPixel>::with_buffer_and_format(
                    &mut pixels,
                    (w, h),
                )
                .map_err(|e| fail(&e))?;
                draw(&backend.into_drawing_area(), figure).map_err(|e| fail(&e))?;
            }
            encode_png(&pixels, (w, h)).map_err(|e| fail(&e))
        }
    }
}

/// RGB pixels as a PNG file.
fn encode_png(
    pixels: &[u8],
    (w, h): (u32, u32),
) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(bytes)
}

/// Draws the figure on `root`; errors as text.
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
) -> std::result::Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| text(&e))?;
    let body = match &figure.title {
        Some(t) => root.titled(t, (FAMILY, 26)).map_err(|e| text(&e))?,
        None => root.clone(),
    };
    let columns = figure.columns.max(1);
    let rows = figure.panels.len().div_ceil(columns).max(1);
    for (panel, area) in figure.panels.iter().zip(body.split_evenly((rows, columns))) {
        draw_panel(&area, panel).map_err(|e| text(&e))?;
    }
    root.present().map_err(|e| text(&e))
}

/// Draws one panel on `area`.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(84)
        .build_cartesian_2d(panel.x.clone(), panel.y.clone())?;
    let decimals = panel.y_decimals;
    let y_label = move |v: &f64| format!("{v:.decimals$}");
    chart
        .configure_mesh()
        .x_desc(panel.x_desc.as_str())
        .y_desc(panel.y_desc.as_str())
        .y_label_formatter(&y_label)
        .draw()?;
    for line in &panel.lines {
        let color = line.ink.color();
        let style = color.stroke_width(2);
        let drawn = if line.dashed {
            chart.draw_series(DashedLineSeries::new(
                line.points.iter().copied(),
                8,
                5,
                style,
            ))?
        } else {
            chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?
        };
        if let Some(label) = &line.label {
            let dashed = line.dashed;
            drawn.label(label.as_str()).legend(move |(x, y)| {
                let end = if dashed { x + 8 } else { x + 18 };
                PathElement::new(vec![(x, y), (end, y)], color.stroke_width(2))
            });
        }
        if line.markers {
            chart.draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )?;
        }
    }
    if panel.lines.iter().any(|l| l.label.is_some()) {
        chart
            .configure_series_labels()
            .position(match panel.legend {
                Corner::UpperRight => SeriesLabelPosition::UpperRight,
                Corner::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()?;
    }
    Ok(())
}
