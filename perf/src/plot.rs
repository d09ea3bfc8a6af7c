//! PNG plots of a [`Report`] (plotters, bitmap backend): latency by percentile per target and
//! operation, and every [`Series`](crate::report::Series) (RSS against agents, agents back
//! over time). Text needs a TrueType font: the first of `KUBEHUB_PERF_FONT` and the usual
//! DejaVu / Liberation paths that exists.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::report::Report;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers a font with plotters once; the error says which paths were tried.
fn font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut paths: Vec<PathBuf> = Vec::new();
        if let Ok(p) = std::env::var("KUBEHUB_PERF_FONT") {
            paths.push(p.into());
        }
        paths.extend(FONTS.iter().map(PathBuf::from));
        for p in &paths {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{} is not a usable TrueType font", p.display()));
            }
        }
        Err(format!(
            "no TrueType font found (tried {}; set KUBEHUB_PERF_FONT)",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
    .clone()
}

const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

type Line = (String, Vec<(f64, f64)>);

fn draw(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    nines: bool,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let pts = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in pts {
        let x = if nines { to_nines(x) } else { x };
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(format!("{}: nothing to plot", path.display()));
    }
    if (x1 - x0).abs() < f64::EPSILON {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.08 };
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0f64..y1)
        .map_err(|e| err(&e))?;
    let fmt_x = |x: &f64| {
        if nines {
            let p = 100.0 * (1.0 - 10f64.powf(-*x));
            format!("{}", (p * 1000.0).round() / 1000.0)
        } else {
            format!("{}", (*x * 100.0).round() / 100.0)
        }
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&fmt_x)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let data: Vec<(f64, f64)> = points
            .iter()
            .map(|&(x, y)| (if nines { to_nines(x) } else { x }, y))
            .collect();
        chart
            .draw_series(LineSeries::new(data, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Percentile (0–100) to "nines" (90 → 1, 99 → 2, 99.9 → 3), the x axis latency plots use.
fn to_nines(p: f64) -> f64 {
    let rest = (100.0 - p).max(1e-6) / 100.0;
    -rest.log10()
}

/// Draws every plot of `r` into `dir`; returns the files written.
pub fn draw_all(r: &Report, dir: &Path) -> Result<Vec<PathBuf>, String> {
    font()?;
    let mut out = Vec::new();
    // Latency by percentile: one plot per operation, a line per target and round.
    let mut ops: Vec<String> = Vec::new();
    for run in &r.runs {
        for op in &run.ops {
            if !ops.contains(&op.name) {
                ops.push(op.name.clone());
            }
        }
    }
    for op in ops {
        let lines: Vec<Line> = r
            .runs
            .iter()
            .filter_map(|run| {
                let o = run.ops.iter().find(|o| o.name == op)?;
                (!o.curve.is_empty()).then(|| {
                    (
                        format!("{} (round {})", run.target, run.round),
                        o.curve.iter().map(|&(p, us)| (p, us / 1000.0)).collect(),
                    )
                })
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        let path = dir.join(format!("latency-{}.png", op.replace(['/', ' '], "-")));
        draw(
            &path,
            &format!("{}: {op} latency by percentile", r.scenario),
            "percentile",
            "ms",
            &lines,
            true,
        )?;
        out.push(path);
    }
    for s in &r.series {
        if s.lines.iter().all(|(_, p)| p.is_empty()) {
            continue;
        }
        let path = dir.join(format!("{}.png", s.name));
        draw(&path, &s.title, &s.x_label, &s.y_label, &s.lines, false)?;
        out.push(path);
    }
    Ok(out)
}
