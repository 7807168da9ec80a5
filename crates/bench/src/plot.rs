//! Latency against throughput as a chart (plotters): one line per series, a point per step.
//! `.svg` or `.png`, by the file's extension. Text uses DejaVu Sans, compiled in, so a chart
//! renders the same on a machine without fonts.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::result::{BenchReport, StepResult};
use crate::stats::LatencySummary;
use crate::BenchError;

/// One line of the chart: (throughput in requests/s, latency in ms) per step, in step order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// What the chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub series: Vec<Series>,
}

/// Picks one latency out of a step's summary.
pub type Pick = fn(&LatencySummary) -> u64;

/// The percentiles drawn for a single run.
const PERCENTILES: [(&str, Pick); 3] = [("p50", |l| l.p50_us), ("p90", |l| l.p90_us), ("p99", |l| l.p99_us)];

/// A run's chart: p50, p90 and p99 against throughput across its steps (steps without a
/// successful request are left out).
pub fn run_chart(report: &BenchReport) -> Chart {
    let series = PERCENTILES
        .iter()
        .map(|(name, pick)| Series {
            name: name.to_string(),
            points: report.steps.iter().filter_map(|s| point(s, *pick)).collect(),
        })
        .collect();
    Chart { title: format!("{} over {}", report.model, report.protocol), series }
}

/// (throughput, the picked latency in ms) of one step, when it has latencies.
pub fn point(step: &StepResult, pick: Pick) -> Option<(f64, f64)> {
    step.latency_us.as_ref().map(|l| (step.throughput_rps, pick(l) as f64 / 1e3))
}

/// The chart formats, by file extension.
enum Format {
    Svg,
    Png,
}

fn format(path: &Path) -> Result<Format, BenchError> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => Err(BenchError::Plot {
            path: path.to_path_buf(),
            reason: "the file name must end in .svg or .png".into(),
        }),
    }
}

/// Checks a chart's file name before a run, so a typo does not cost the whole run.
pub fn check_chart_path(path: &Path) -> Result<(), BenchError> {
    format(path).map(|_| ())
}

/// Writes the chart to `path`: SVG for `.svg`, PNG for `.png`.
pub fn write_chart(path: &Path, chart: &Chart) -> Result<(), BenchError> {
    let fail = |reason: String| BenchError::Plot { path: path.to_path_buf(), reason };
    let format = format(path)?;
    if chart.series.iter().all(|s| s.points.is_empty()) {
        return Err(fail("no step has a successful request to plot".into()));
    }
    register_font();
    let size = (1000, 600);
    match format {
        Format::Svg => draw(SVGBackend::new(path, size).into_drawing_area(), chart).map_err(fail),
        Format::Png => {
            let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
            draw(BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area(), chart).map_err(fail)?;
            let image = image::RgbImage::from_raw(size.0, size.1, pixels)
                .ok_or_else(|| fail("the bitmap does not match its size".into()))?;
            image.save_with_format(path, image::ImageFormat::Png).map_err(|e| fail(e.to_string()))
        }
    }
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // The compiled-in font is a valid TrueType file; a failure would leave text undrawn
        // and show up as a drawing error below.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Axis ranges: throughput from 0, latency on a log scale with room above and below.
fn bounds(chart: &Chart) -> ((f64, f64), (f64, f64)) {
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (0.0f64, f64::INFINITY, 0.0f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let y_min = (y_min / 1.5).max(1e-3);
    let y_max = (y_max * 1.5).max(y_min * 10.0);
    ((0.0, (x_max * 1.1).max(1.0)), (y_min, y_max))
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String> {
    let text = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(text)?;
    let ((x0, x1), (y0, y1)) = bounds(chart);
    let mut plot = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
        .map_err(text)?;
    plot.configure_mesh()
        .x_desc("throughput (requests/s)")
        .y_desc("latency (ms)")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(text)?;
    for (i, series) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        plot.draw_series(LineSeries::new(series.points.iter().copied(), color.stroke_width(2)))
            .map_err(text)?
            .label(series.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        plot.draw_series(series.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(text)?;
    }
    plot.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(text)?;
    root.present().map_err(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<(f64, f64)>) -> Chart {
        Chart { title: "t".into(), series: vec![Series { name: "p99".into(), points }] }
    }

    #[test]
    fn bounds_cover_every_point_with_margin() {
        let ((x0, x1), (y0, y1)) = bounds(&chart(vec![(100.0, 2.0), (400.0, 8.0)]));
        assert_eq!(x0, 0.0);
        assert!(x1 > 400.0);
        assert!(y0 < 2.0 && y0 > 0.0);
        assert!(y1 > 8.0);
    }

    #[test]
    fn svg_has_a_line_per_series_and_the_axis_titles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.svg");
        let mut c = chart(vec![(100.0, 2.0), (400.0, 8.0)]);
        c.series.push(Series { name: "p50".into(), points: vec![(100.0, 1.0), (400.0, 3.0)] });
        write_chart(&path, &c).expect("write");
        let svg = std::fs::read_to_string(&path).expect("read");
        assert!(svg.contains("throughput (requests/s)"), "{svg}");
        assert!(svg.contains("\np99\n</text>") && svg.contains("\np50\n</text>"), "{svg}");
        let lines = svg.lines().filter(|l| l.starts_with("<polyline") && l.contains("stroke-width=\"2\""));
        assert_eq!(lines.count(), 2 + 2, "two series and their two legend lines");
    }

    #[test]
    fn png_is_a_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.png");
        write_chart(&path, &chart(vec![(10.0, 1.0)])).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn other_extensions_and_empty_charts_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_chart(&dir.path().join("c.jpg"), &chart(vec![(1.0, 1.0)])).expect_err("jpg");
        assert!(err.to_string().contains(".svg or .png"), "{err}");
        assert!(check_chart_path(&dir.path().join("c")).is_err());
        assert!(check_chart_path(&dir.path().join("c.PNG")).is_ok());
        let err = write_chart(&dir.path().join("c.svg"), &chart(vec![])).expect_err("empty");
        assert!(err.to_string().contains("no step"), "{err}");
    }
}
