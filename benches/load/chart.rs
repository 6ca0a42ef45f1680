//! An SVG chart of the latency distributions: latency by percentile, both
//! axes logarithmic, one line per scenario.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::Report;

/// How far into the tail the x axis goes: 1 / (1 - 0.9999).
const TAIL: f64 = 10_000.0;

/// Distinct line colours, one per series (then reused).
const COLOURS: [RGBColor; 14] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(0, 0, 0),
    RGBColor(0, 90, 50),
    RGBColor(120, 0, 120),
    RGBColor(255, 200, 0),
];

pub fn latency_svg(report: &Report, title: &str, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let series: Vec<(&str, Vec<(f64, f64)>)> = report
        .rows
        .iter()
        .filter_map(|row| Some((row.scenario.as_str(), row.latencies.as_ref()?)))
        .chain(
            report
                .extra_series
                .iter()
                .map(|(name, h)| (name.as_str(), h)),
        )
        .map(|(name, histogram)| {
            let points = (0..=80)
                .map(|k| {
                    let x = TAIL.powf(k as f64 / 80.0);
                    let quantile = 1.0 - 1.0 / x;
                    let ms = histogram.value_at_quantile(quantile) as f64 / 1000.0;
                    (x, ms.max(0.001))
                })
                .collect();
            (name, points)
        })
        .collect();
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let low = values.clone().fold(f64::INFINITY, f64::min).max(0.001);
    let high = values.fold(0.0, f64::max).max(low * 10.0);
    let draw = |e| anyhow!("drawing the chart: {e:?}");

    let root = SVGBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1f64..TAIL).log_scale(),
            (low / 1.5..high * 1.5).log_scale(),
        )
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms")
        .x_label_formatter(&|x| format!("{}%", percentile_label(*x)))
        .y_label_formatter(&|y| ms_label(*y))
        .draw()
        .map_err(draw)?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = COLOURS[i % COLOURS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(draw)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

/// 1 → "0", 10 → "90", 100 → "99", 1000 → "99.9".
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 1.0 / x);
    let mut text = format!("{percent:.3}");
    while text.contains('.') && (text.ends_with('0') || text.ends_with('.')) {
        text.pop();
    }
    text
}

/// 250 → "250", 0.5 → "0.5", 0.05 → "0.05".
fn ms_label(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let mut text = format!("{ms:.3}");
        while text.ends_with('0') {
            text.pop();
        }
        text
    }
}
