//! `--plot FILE.svg`: a latency percentile spectrum (HdrHistogram style: x is the percentile
//! on a log scale of 1/(1-p)), a ramp's offered rate vs p99, or throughput over time.

use std::path::Path;

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::report::{IntervalRow, RampStep};

const SIZE: (u32, u32) = (900, 540);
const COLORS: [RGBColor; 4] = [RED, BLUE, GREEN, MAGENTA];

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e:?}", path.display())
}

/// Percentile spectrum of each named histogram (values in ns, drawn in ms).
pub fn spectrum(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let points = h
                .iter_quantiles(5)
                .map(|v| {
                    let q = v.quantile_iterated_to().min(0.999_999);
                    (1.0 / (1.0 - q), v.value_iterated_to() as f64 / 1e6)
                })
                .collect();
            (*name, points)
        })
        .collect();
    let max_x = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(10.0f64, f64::max)
        .min(1e6);
    let max_y = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.001f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d((1f64..max_x).log_scale(), 0f64..max_y)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(err(path))?;
    for (i, (name, points)) in curves.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err(path))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend_and_save(&mut chart, &root, path)
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    if p < 99.0 {
        format!("{p:.0}%")
    } else {
        // 99%, 99.9%, 99.99%: as many decimals as nines.
        let decimals = ((1.0 / (1.0 - p / 100.0)).log10().round() as usize).saturating_sub(2);
        format!("{p:.decimals$}%")
    }
}

/// Offered rate vs p99 for each ramp step, with the SLO as a line.
pub fn ramp(path: &Path, unit: &str, steps: &[RampStep], slo_ms: f64) -> anyhow::Result<()> {
    let max_x = steps.iter().map(|s| s.offered).fold(1.0f64, f64::max) * 1.05;
    let max_y = steps.iter().map(|s| s.p99_ms).fold(slo_ms, f64::max) * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("ramp: p99 vs offered {unit}/s"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc(format!("offered {unit}/s"))
        .y_desc("p99 latency (ms)")
        .draw()
        .map_err(err(path))?;
    let points: Vec<(f64, f64)> = steps.iter().map(|s| (s.offered, s.p99_ms)).collect();
    chart
        .draw_series(LineSeries::new(points.clone(), RED.stroke_width(2)))
        .map_err(err(path))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .draw_series(points.into_iter().map(|p| Circle::new(p, 4, RED.filled())))
        .map_err(err(path))?;
    chart
        .draw_series(LineSeries::new(vec![(0.0, slo_ms), (max_x, slo_ms)], BLUE))
        .map_err(err(path))?
        .label("SLO")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    legend_and_save(&mut chart, &root, path)
}

/// Throughput per interval, each direction.
pub fn timeline(path: &Path, title: &str, rows: &[IntervalRow]) -> anyhow::Result<()> {
    let mut t0 = 0.0;
    let mut sent = Vec::new();
    let mut recv = Vec::new();
    for r in rows {
        let secs = (r.t_s - t0).max(1e-9);
        sent.push((r.t_s, r.sent as f64 / secs / 1e6));
        recv.push((r.t_s, r.received as f64 / secs / 1e6));
        t0 = r.t_s;
    }
    let max_x = rows.last().map_or(1.0, |r| r.t_s).max(1e-3);
    let max_y = sent.iter().chain(&recv).map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(err(path))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("MB/s")
        .draw()
        .map_err(err(path))?;
    for (i, (name, points)) in [("sent", sent), ("received", recv)].into_iter().enumerate() {
        let color = COLORS[i];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err(path))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend_and_save(&mut chart, &root, path)
}

fn legend_and_save<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    path: &Path,
) -> anyhow::Result<()>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err(path))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::percentile_label;

    #[test]
    fn percentile_labels_show_the_nines() {
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
    }
}
