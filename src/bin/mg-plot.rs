//! Draws the load benchmark's report (`scripts/loadtest --report`) as PNG plots, so a tuning
//! change can be judged by looking: delivered packets/s, p99 latency and relay CPU per packet,
//! each against the load the generator actually offered, one line per data plane (rtpengine and
//! the no-relay baseline included when the run had them).
//!
//!   mg-plot REPORT.json OUT_DIR [FONT.ttf]
//!
//! Writes OUT_DIR/throughput.png, latency-p99.png and relay-cpu.png (a plot only when some step
//! has its figure) and prints the Markdown that embeds them, for the report to append.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use serde_json::Value;

/// DejaVu Sans from Debian's `fonts-dejavu-core`, which `scripts/install-deps` installs.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (960, 600);

/// One plotted figure of the report's steps.
struct Figure {
    file: &'static str,
    title: &'static str,
    y_label: &'static str,
    /// Whether the y axis is logarithmic (latencies span microseconds to seconds).
    log_y: bool,
    /// Reads the figure's value from a step, when the step has it.
    value: fn(&Value) -> Option<f64>,
}

const FIGURES: [Figure; 3] = [
    Figure {
        file: "throughput.png",
        title: "Delivered packets/s against offered load",
        y_label: "delivered packets/s",
        log_y: false,
        value: |s| s["delivered_pps"].as_f64(),
    },
    Figure {
        file: "latency-p99.png",
        title: "p99 one-way latency against offered load",
        y_label: "p99 latency (µs, log scale)",
        log_y: true,
        value: |s| s["latency_us"]["p99"].as_f64().filter(|v| *v > 0.0),
    },
    Figure {
        file: "relay-cpu.png",
        title: "Relay-attributable CPU per packet against offered load",
        y_label: "relay CPU per packet (µs)",
        log_y: false,
        value: |s| s["relay_cpu_us_per_pkt"].as_f64(),
    },
];

/// Points per plane, in the order of the report's steps.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

fn series(steps: &[Value], value: fn(&Value) -> Option<f64>) -> Series {
    let mut out = Series::new();
    for step in steps {
        let (Some(plane), Some(offered)) = (step["plane"].as_str(), step["sent_pps"].as_f64())
        else {
            continue;
        };
        if let Some(y) = value(step) {
            out.entry(plane.to_string()).or_default().push((offered, y));
        }
    }
    for points in out.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// Axis labels without a spurious ".0" on large values, with two decimals on small ones.
fn tick(v: &f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn draw(path: &Path, figure: &Figure, data: &Series) -> Result<()> {
    let points = data.values().flatten();
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points.clone().map(|p| p.1).fold(1e-9, f64::max) * 1.1;
    let y_min = points.map(|p| p.1).fold(f64::MAX, f64::min);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root);
    chart
        .caption(figure.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80);
    macro_rules! plot {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("offered packets/s")
                .y_desc(figure.y_label)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .draw()?;
            for (i, (plane, points)) in data.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))?
                    .label(plane.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if figure.log_y {
        let low = (y_min * 0.8).max(0.1);
        plot!(chart.build_cartesian_2d(0f64..x_max, (low..y_max.max(low * 10.0)).log_scale())?);
    } else {
        plot!(chart.build_cartesian_2d(0f64..x_max, 0f64..y_max)?);
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [report, out, rest @ ..] = args.as_slice() else {
        bail!("usage: mg-plot REPORT.json OUT_DIR [FONT.ttf]");
    };
    let font_path = rest.first().map_or(DEFAULT_FONT, String::as_str);
    let font = std::fs::read(font_path)
        .with_context(|| format!("{font_path}: a TrueType font is needed for the labels"))?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{font_path}: not a usable TrueType font"))?;
    let text = std::fs::read_to_string(report).with_context(|| report.clone())?;
    let report: Value = serde_json::from_str(&text).with_context(|| report.clone())?;
    let Some(steps) = report["steps"].as_array() else {
        bail!("the report has no `steps` array");
    };
    std::fs::create_dir_all(out).with_context(|| out.clone())?;
    println!("\n## Plots\n");
    for figure in &FIGURES {
        let data = series(steps, figure.value);
        if data.is_empty() {
            continue;
        }
        let path = PathBuf::from(out).join(figure.file);
        draw(&path, figure, &data).with_context(|| path.display().to_string())?;
        println!("![{}]({})\n", figure.title, figure.file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_group_by_plane_sorted_by_offered_load_and_skip_missing_figures() {
        let steps: Vec<Value> = serde_json::from_str(
            r#"[{"plane":"kernel","sent_pps":2000,"delivered_pps":1999,"latency_us":{"p99":80}},
                {"plane":"kernel","sent_pps":1000,"delivered_pps":1000,"latency_us":{"p99":0}},
                {"plane":"socket","sent_pps":1000,"delivered_pps":900}]"#,
        )
        .unwrap();
        let throughput = series(&steps, FIGURES[0].value);
        assert_eq!(
            throughput["kernel"],
            vec![(1000.0, 1000.0), (2000.0, 1999.0)]
        );
        assert_eq!(throughput["socket"], vec![(1000.0, 900.0)]);
        let latency = series(&steps, FIGURES[1].value);
        assert_eq!(
            latency.len(),
            1,
            "p99 0 (no sample) and absent are not plotted"
        );
        assert_eq!(latency["kernel"], vec![(2000.0, 80.0)]);
    }

    #[test]
    fn draws_every_figure_as_a_png_of_the_chosen_size() {
        let font = std::fs::read(DEFAULT_FONT).expect("scripts/install-deps installs the font");
        register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(font.into_boxed_slice()),
        )
        .map_err(|_| "font")
        .unwrap();
        let steps: Vec<Value> = serde_json::from_str(
            r#"[{"plane":"baseline","sent_pps":1000,"delivered_pps":1000,"latency_us":{"p99":20}},
                {"plane":"kernel","sent_pps":1000,"delivered_pps":1000,"latency_us":{"p99":80},
                 "relay_cpu_us_per_pkt":2.4},
                {"plane":"kernel","sent_pps":9000,"delivered_pps":8990,"latency_us":{"p99":300},
                 "relay_cpu_us_per_pkt":2.3}]"#,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("mg-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for figure in &FIGURES {
            let path = dir.join(figure.file);
            draw(&path, figure, &series(&steps, figure.value)).unwrap();
            let png = std::fs::read(&path).unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{}", figure.file);
            let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
            let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
            assert_eq!((width, height), SIZE);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
