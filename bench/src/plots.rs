//! SVG plots of a run: packet rate per contender against rule count, and the kernel program's
//! cost per packet against rule count.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::{contenders::Contender, cost::Cost, pps::Pps};

const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(120, 120, 120),
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(0, 158, 115),
];

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    if lo > hi {
        (0.001, 1.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

/// Mpps (log) against rules (log), one line per contender.
pub fn pps(p: &Pps, path: &Path) -> anyhow::Result<PathBuf> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (ylo, yhi) = log_range(
        p.rows
            .iter()
            .filter(|r| r.error.is_none())
            .map(|r| r.mpps.median),
    );
    let xmax = p.rows.iter().map(|r| r.rules).max().unwrap_or(10) as f64 * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Packet rate through the device under test ({}-byte frames)",
                p.frame_bytes
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((5f64..xmax).log_scale(), (ylo..yhi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("rules")
        .y_desc("Mpps (median, at the sink)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()?;
    for (i, c) in Contender::ALL.iter().enumerate() {
        let points: Vec<(f64, f64)> = p
            .rows
            .iter()
            .filter(|r| r.contender == *c && r.error.is_none())
            .map(|r| (r.rules as f64, r.mpps.median))
            .collect();
        if points.is_empty() {
            continue;
        }
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(c.label())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|pt| Circle::new(pt, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(path.to_path_buf())
}

/// ns per packet against rules (log), one line per measured path.
pub fn cost(c: &Cost, path: &Path) -> anyhow::Result<PathBuf> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = c
        .rows
        .iter()
        .map(|r| r.ns_per_packet.max)
        .fold(0.0, f64::max)
        * 1.2;
    let xmax = c.rows.iter().map(|r| r.rules).max().unwrap_or(10) as f64 * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cost per packet of the LAN XDP program (BPF_PROG_TEST_RUN)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((5f64..xmax).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("rules")
        .y_desc("ns per packet (median)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut paths: Vec<&str> = c.rows.iter().map(|r| r.path.as_str()).collect();
    paths.dedup();
    paths.sort_unstable();
    paths.dedup();
    for (i, name) in paths.iter().enumerate() {
        let points: Vec<(f64, f64)> = c
            .rows
            .iter()
            .filter(|r| r.path == *name)
            .map(|r| (r.rules as f64, r.ns_per_packet.median))
            .collect();
        let color = PALETTE[(i + 2) % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|pt| Circle::new(pt, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(path.to_path_buf())
}

/// One bar (median) with a min–max whisker.
pub struct Bar {
    pub label: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Horizontal bars, one per contender: a scenario's single figure of merit side by side.
pub fn bars(title: &str, unit: &str, bars: &[Bar], path: &Path) -> anyhow::Result<PathBuf> {
    let root = SVGBackend::new(path, (900, 120 + 60 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = bars.iter().map(|b| b.max).fold(0.0, f64::max).max(1e-9) * 1.1;
    let n = bars.len() as f64;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..xmax, -0.5f64..n - 0.5)?;
    chart
        .configure_mesh()
        .x_desc(unit)
        .y_labels(bars.len())
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()?;
    for (i, b) in bars.iter().enumerate() {
        let y = i as f64;
        let color = PALETTE[(i + 2) % PALETTE.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, y - 0.3), (b.median, y + 0.3)],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(b.min, y), (b.max, y)],
            BLACK.stroke_width(2),
        )))?;
    }
    root.present()?;
    Ok(path.to_path_buf())
}
