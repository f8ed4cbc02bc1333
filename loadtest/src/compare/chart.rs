//! The latency chart: one panel per scenario, one percentile curve per server (all rounds
//! merged), x in "nines" (0%, 90%, 99%, 99.9%, ...), y in milliseconds on a log scale. SVG,
//! text drawn as SVG text (no font files needed).

use std::path::Path;

use plotters::prelude::*;

use super::{CompareError, Outcome, SCENARIOS, ServerKind};

fn color(k: ServerKind) -> RGBColor {
    match k {
        ServerKind::Edge => RGBColor(214, 39, 40),
        ServerKind::Nginx => RGBColor(44, 160, 44),
        ServerKind::Varnish => RGBColor(31, 119, 180),
    }
}

/// `-log10(1 - p/100)`: 90% -> 1, 99% -> 2, ...
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

fn label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let s = format!("{p:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

pub fn draw(path: &Path, outcome: &Outcome, open_rate: f64) -> Result<(), CompareError> {
    draw_inner(path, outcome, open_rate).map_err(CompareError::Chart)
}

fn draw_inner(
    path: &Path,
    outcome: &Outcome,
    open_rate: f64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let root = SVGBackend::new(path, (1400, 1900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "latency percentiles, {} rounds x {:.0} s per server and scenario",
            outcome.rounds, outcome.duration_s
        ),
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((SCENARIOS.len().div_ceil(2), 2));
    for (area, s) in panels.iter().zip(SCENARIOS.iter()) {
        let Some(by) = outcome.cells.get(s.name) else {
            continue;
        };
        let series: Vec<(ServerKind, Vec<(f64, f64)>)> = by
            .iter()
            .map(|(k, c)| {
                let pts = c
                    .curve
                    .iter()
                    .filter(|p| p.percentile < 100.0)
                    .map(|p| (nines(p.percentile), p.ms.max(0.001)))
                    .collect();
                (*k, pts)
            })
            .collect();
        let (lo, hi) = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
            .fold((f64::INFINITY, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        if !lo.is_finite() {
            continue;
        }
        let caption = if s.open {
            format!("{} ({open_rate:.0} req/s)", s.title)
        } else {
            s.title.to_string()
        };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..5.05f64, (lo * 0.8..hi * 1.25).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(6)
            .x_label_formatter(&|x| label(*x))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .x_desc("percentile")
            .y_desc("latency (ms, log)")
            .draw()?;
        for (k, pts) in series {
            let c = color(k);
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(k.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels() {
        assert_eq!(label(0.0), "0%");
        assert_eq!(label(1.0), "90%");
        assert_eq!(label(2.0), "99%");
        assert_eq!(label(3.0), "99.9%");
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
    }
}
