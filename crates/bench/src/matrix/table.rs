//! A matrix as a Markdown table (one line per row and load step) and as a chart (p99 against
//! throughput, one line per row).

use std::fmt::Write as _;

use super::{MatrixReport, RowOutcome};
use crate::plot::{point, Chart, Series};
use crate::report::{format_bytes, format_errors, format_us};

const HEADER: &str = "| configuration | load | p50 | p99 | throughput (inferences/s) | server batch | memory (peak RSS) | model file | errors |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";

/// The table, in the rows' order.
pub fn render_markdown(report: &MatrixReport) -> String {
    let mut out = String::from(HEADER);
    for row in &report.rows {
        let size = row.model_bytes.map_or_else(|| "-".to_string(), format_bytes);
        match &row.outcome {
            RowOutcome::Ran { report: run } => {
                for step in &run.steps {
                    let lat = |f: fn(&crate::stats::LatencySummary) -> u64| {
                        step.latency_us.as_ref().map_or_else(|| "-".to_string(), |l| format_us(f(l) as f64))
                    };
                    let batch = step
                        .server
                        .as_ref()
                        .and_then(|s| s.batch_size)
                        .map_or_else(|| "-".to_string(), |b| format!("{b:.1}"));
                    let rss = step.server_peak_rss_bytes.map_or_else(|| "-".to_string(), format_bytes);
                    let _ = writeln!(
                        out,
                        "| {} | {} {} | {} | {} | {:.1} | {batch} | {rss} | {size} | {} |",
                        cell(&row.name),
                        run.protocol,
                        step.label(),
                        lat(|l| l.p50_us),
                        lat(|l| l.p99_us),
                        step.inferences_per_s,
                        format_errors(step),
                    );
                }
            }
            RowOutcome::Skipped { reason } | RowOutcome::Failed { reason } => {
                let why = match &row.outcome {
                    RowOutcome::Failed { .. } => format!("failed: {}", first_line(reason)),
                    _ => reason.clone(),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | - | - | - | - | - | {size} | - |",
                    cell(&row.name),
                    cell(&why)
                );
            }
        }
    }
    out
}

/// Each row that ran as a line of its p99 against throughput over its load steps.
pub fn chart(report: &MatrixReport) -> Chart {
    let series = report
        .rows
        .iter()
        .filter_map(|row| match &row.outcome {
            RowOutcome::Ran { report } => Some(Series {
                name: row.name.clone(),
                points: report.steps.iter().filter_map(|s| point(s, |l| l.p99_us)).collect(),
            }),
            _ => None,
        })
        .collect();
    Chart { title: format!("{}: p99 latency against throughput", report.title), series }
}

/// Text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::RowResult;

    #[test]
    fn skipped_and_failed_rows_keep_their_line() {
        let report = MatrixReport {
            title: "t".into(),
            rows: vec![
                RowResult {
                    name: "FP16 | GPU".into(),
                    model_bytes: None,
                    outcome: RowOutcome::Skipped { reason: "needs GPU".into() },
                },
                RowResult {
                    name: "INT8".into(),
                    model_bytes: Some(25 * 1024 * 1024),
                    outcome: RowOutcome::Failed { reason: "the server exited\nlog...".into() },
                },
            ],
        };
        let table = render_markdown(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[2].starts_with("| FP16 \\| GPU | needs GPU |"), "{table}");
        assert!(lines[3].contains("failed: the server exited |") && lines[3].contains("25.0MiB"), "{table}");
        assert!(chart(&report).series.is_empty());
    }
}
