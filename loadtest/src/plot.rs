//! `--plot FILE.svg`: a latency percentile spectrum (HdrHistogram style: x is the percentile
//! on a log scale of 1/(1-p)), a ramp's offered rate vs p99, or throughput over time.

use std::path::Path;

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};

use crate::report::{IntervalRow, RampStep};

const SIZE: (u32, u32) = (900, 540);
const COLORS: [RGBColor; 4] = [RED, BLUE, GREEN, MAGENTA];

fn err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e:?}", path.display())
}

/// One named series.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    /// Also mark each point.
    dots: bool,
}

/// Percentile spectrum of each named histogram (values in ns, drawn in ms).
pub fn spectrum(
    path: &Path,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let lines: Vec<Line> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .zip(COLORS.iter().cycle())
        .map(|((name, h), color)| Line {
            name: name.to_string(),
            points: h
                .iter_quantiles(5)
                .map(|v| {
                    let q = v.quantile_iterated_to().min(0.999_999);
                    (1.0 / (1.0 - q), v.value_iterated_to() as f64 / 1e6)
                })
                .collect(),
            color: *color,
            dots: false,
        })
        .collect();
    let max_x = max_of(&lines, |p| p.0, 10.0).min(1e6);
    let max_y = max_of(&lines, |p| p.1, 0.001) * 1.1;
    let axes = Axes {
        x_desc: "percentile",
        y_desc: "latency (ms)",
        x_label: Some(&|x: &f64| percentile_label(*x)),
    };
    draw(path, title, (1f64..max_x).log_scale(), max_y, &axes, lines)
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
    let lines = vec![
        Line {
            name: "p99".into(),
            points: steps.iter().map(|s| (s.offered, s.p99_ms)).collect(),
            color: RED,
            dots: true,
        },
        Line {
            name: "SLO".into(),
            points: vec![(0.0, slo_ms), (max_x, slo_ms)],
            color: BLUE,
            dots: false,
        },
    ];
    let x_desc = format!("offered {unit}/s");
    let axes = Axes {
        x_desc: &x_desc,
        y_desc: "p99 latency (ms)",
        x_label: None,
    };
    let title = format!("ramp: p99 vs offered {unit}/s");
    draw(path, &title, 0f64..max_x, max_y, &axes, lines)
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
    let lines: Vec<Line> = [("sent", sent), ("received", recv)]
        .into_iter()
        .zip(COLORS)
        .map(|((name, points), color)| Line {
            name: name.into(),
            points,
            color,
            dots: false,
        })
        .collect();
    let max_y = max_of(&lines, |p| p.1, 1.0) * 1.15;
    let axes = Axes {
        x_desc: "time (s)",
        y_desc: "MB/s",
        x_label: None,
    };
    draw(path, title, 0f64..max_x, max_y, &axes, lines)
}

fn max_of(lines: &[Line], coord: impl Fn(&(f64, f64)) -> f64, floor: f64) -> f64 {
    lines
        .iter()
        .flat_map(|l| l.points.iter().map(&coord))
        .fold(floor, f64::max)
}

struct Axes<'a> {
    x_desc: &'a str,
    y_desc: &'a str,
    x_label: Option<&'a dyn Fn(&f64) -> String>,
}

/// The one drawing path: frame, mesh, the lines with a legend, written as SVG.
fn draw<X>(
    path: &Path,
    title: &str,
    x: X,
    max_y: f64,
    axes: &Axes<'_>,
    lines: Vec<Line>,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x, 0f64..max_y)
        .map_err(err(path))?;
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(axes.x_desc).y_desc(axes.y_desc);
    if let Some(f) = axes.x_label {
        mesh.x_label_formatter(f);
    }
    mesh.draw().map_err(err(path))?;
    for line in lines {
        let color = line.color;
        if line.dots {
            chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|p| Circle::new(*p, 4, color.filled())),
                )
                .map_err(err(path))?;
        }
        chart
            .draw_series(LineSeries::new(line.points, color.stroke_width(2)))
            .map_err(err(path))?
            .label(line.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
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
    use super::*;

    /// Each kind of plot writes an SVG naming its series in the legend, one polyline each.
    #[test]
    fn every_plot_names_its_series() {
        let dir = std::env::temp_dir().join(format!("tlsfront-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = crate::stats::histogram();
        for v in 1..1000u64 {
            h.record(v * 1_000).unwrap();
        }
        let rows: Vec<IntervalRow> = (1..=3)
            .map(|i| IntervalRow {
                t_s: i as f64,
                sent: 1_000_000 * i,
                received: 500_000,
                ..Default::default()
            })
            .collect();
        let steps = [RampStep {
            offered: 100.0,
            achieved: 100.0,
            p99_ms: 3.0,
            error_share: 0.0,
            ok: true,
        }];
        let cases: [(&str, &[&str]); 3] = [
            ("spectrum.svg", &["only"]),
            ("timeline.svg", &["sent", "received"]),
            ("ramp.svg", &["p99", "SLO"]),
        ];
        spectrum(&dir.join(cases[0].0), "t", &[("only", &h)]).unwrap();
        timeline(&dir.join(cases[1].0), "t", &rows).unwrap();
        ramp(&dir.join(cases[2].0), "requests", &steps, 5.0).unwrap();
        for (file, names) in cases {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{file}"
            );
            for name in names {
                assert!(
                    svg.contains(&format!("\n{name}\n</text>")),
                    "{file}: {name}"
                );
            }
            assert!(svg.matches("<polyline").count() >= names.len(), "{file}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn percentile_labels_show_the_nines() {
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
    }
}
