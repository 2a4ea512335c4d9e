//! SVG figures of benchmark results (plotters, SVG backend only: no font
//! files needed, text is left to the viewer), and the markdown report
//! that shows them beside the tables of the same run. Both are written
//! under `docs/benchmarks/`, which `docs/benchmarks.md` links.
#![allow(dead_code)]

use std::path::PathBuf;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Where figures and reports go: `docs/benchmarks/` of the repository.
pub fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks")
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn bounds(series: &[Series]) -> (f64, f64, f64) {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x0 = xs.clone().fold(f64::INFINITY, f64::min);
    let x1 = xs.fold(f64::NEG_INFINITY, f64::max);
    let y1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    (x0, x1, y1)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The plotting frame every figure shares: title, margins, axes.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> anyhow::Result<Chart<'a, 'b>> {
    Ok(ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?)
}

/// Draws the legend (upper left) and writes the file.
fn finish<'a, 'b: 'a>(mut chart: Chart<'a, 'b>) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK.mix(0.3))
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    chart.plotting_area().present()?;
    Ok(())
}

/// A line chart, one line with points per series; `file` under
/// [`out_dir`].
pub fn lines(file: &str, title: &str, x: &str, y: &str, series: &[Series]) -> anyhow::Result<()> {
    let path = out_dir().join(file);
    std::fs::create_dir_all(out_dir())?;
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1, y1) = bounds(series);
    let pad = ((x1 - x0) * 0.04).max(0.5);
    let mut chart = frame(
        &root,
        title,
        (x0 - pad)..(x1 + pad),
        0.0..(y1 * 1.1).max(1e-9),
    )?;
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2)))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    finish(chart)
}

/// Grouped bars: for each category (x), one bar per group.
pub fn bars(
    file: &str,
    title: &str,
    y: &str,
    categories: &[&str],
    groups: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let path = out_dir().join(file);
    std::fs::create_dir_all(out_dir())?;
    let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .fold(0.0, f64::max)
        * 1.15;
    let n = categories.len() as f64;
    let mut chart = frame(&root, title, 0.0..n, 0.0..top.max(1e-9))?;
    let names: Vec<String> = categories.iter().map(|c| c.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(categories.len() * 2 + 1)
        .x_label_formatter(&|v| {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y)
        .draw()?;
    let width = 0.8 / groups.len().max(1) as f64;
    for (g, (name, values)) in groups.iter().enumerate() {
        let color = COLORS[g % COLORS.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(c, v)| {
                let x = c as f64 + 0.1 + g as f64 * width;
                Rectangle::new([(x, 0.0), (x + width * 0.9, *v)], color.filled())
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    finish(chart)
}

/// A markdown report written as the benchmark runs: its tables and the
/// figures drawn from the same numbers.
#[derive(Default)]
pub struct Report {
    text: String,
}

impl Report {
    pub fn line(&mut self, s: impl AsRef<str>) {
        self.text.push_str(s.as_ref());
        self.text.push('\n');
    }

    pub fn figure(&mut self, file: &str, alt: &str) {
        self.line(format!("\n![{alt}]({file})\n"));
    }

    /// Writes the report as `file` under [`out_dir`].
    pub fn write(&self, file: &str) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(out_dir())?;
        let path = out_dir().join(file);
        std::fs::write(&path, &self.text)?;
        Ok(path)
    }
}
