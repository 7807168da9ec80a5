//! Reports: a table for people (stdout), JSON and CSV files for tools.

use std::fmt::Write as _;
use std::path::Path;

use crate::outcome::ErrorKind;
use crate::result::{BenchReport, StepResult};
use crate::BenchError;

/// `812µs`, `1.23ms`, `45.6ms`, `312ms`, `2.50s`: three significant digits.
pub fn format_us(us: f64) -> String {
    match us {
        us if us < 999.5 => format!("{us:.0}µs"),
        us if us < 9_995.0 => format!("{:.2}ms", us / 1e3),
        us if us < 99_950.0 => format!("{:.1}ms", us / 1e3),
        us if us < 999_500.0 => format!("{:.0}ms", us / 1e3),
        us => format!("{:.2}s", us / 1e6),
    }
}

/// `512KiB`, `48.2MiB`, `1.50GiB`.
pub fn format_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..=1_048_575 => format!("{:.0}KiB", b / 1024.0),
        1_048_576..=1_073_741_823 => format!("{:.1}MiB", b / 1_048_576.0),
        _ => format!("{:.2}GiB", b / 1_073_741_824.0),
    }
}

fn rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// `0`, or the total and each kind: `12 (429:10 timeout:2)`.
pub fn format_errors(step: &StepResult) -> String {
    let total = step.errors.total();
    if total == 0 {
        return "0".into();
    }
    let kinds: Vec<String> = step
        .errors
        .by_kind()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| format!("{}:{n}", kind.label()))
        .collect();
    format!("{total} ({})", kinds.join(" "))
}

const COLUMNS: [&str; 12] =
    ["step", "ok/s", "p50", "p90", "p99", "p99.9", "max", "errors", "queue", "compute", "batch", "rss"];

fn row(step: &StepResult) -> [String; 12] {
    let dash = || "-".to_string();
    let lat = |f: fn(&crate::stats::LatencySummary) -> u64| {
        step.latency_us.as_ref().map_or_else(dash, |l| format_us(f(l) as f64))
    };
    let server = step.server.as_ref();
    [
        step.label(),
        rate(step.throughput_rps),
        lat(|l| l.p50_us),
        lat(|l| l.p90_us),
        lat(|l| l.p99_us),
        lat(|l| l.p999_us),
        lat(|l| l.max_us),
        format_errors(step),
        server.and_then(|s| s.queue_us).map_or_else(dash, format_us),
        server.and_then(|s| s.compute_us).map_or_else(dash, format_us),
        server.and_then(|s| s.batch_size).map_or_else(dash, |b| format!("{b:.2}")),
        step.server_peak_rss_bytes.map_or_else(dash, format_bytes),
    ]
}

/// The human-readable report: a heading, one row per step, and notes on failures.
pub fn render_table(report: &BenchReport) -> String {
    let mut out = String::new();
    let first = report.steps.first();
    let _ = writeln!(
        out,
        "model '{}'{} at {} over {}, batch {}, {}; warm-up {}s, window {}s",
        report.model,
        report.model_version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default(),
        report.url,
        report.protocol,
        first.map_or(1, |s| s.batch),
        report.inputs,
        first.map_or(0.0, |s| s.warmup_s),
        first.map_or(0.0, |s| s.duration_s),
    );
    let rows: Vec<[String; 12]> = report.steps.iter().map(row).collect();
    let width = |i: usize| {
        rows.iter().map(|r| r[i].chars().count()).chain([COLUMNS[i].chars().count()]).max().unwrap_or(0)
    };
    let widths: Vec<usize> = (0..COLUMNS.len()).map(width).collect();
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            // The step and errors columns are text (left); the rest are numbers (right).
            if i == 0 || i == 7 {
                text.push_str(cell);
                text.push_str(&pad);
            } else {
                text.push_str(&pad);
                text.push_str(cell);
            }
            text.push_str("  ");
        }
        text.trim_end().to_string()
    };
    let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(out, "{}", line(&header));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    for step in &report.steps {
        if let Some(offered) = step.offered_rps {
            let scheduled = step.requests as f64 / step.duration_s.max(f64::MIN_POSITIVE);
            let lag = step.send_lag_us.as_ref().map_or_else(String::new, |l| {
                format!(
                    ", sent p50 {} / p99 {} after it",
                    format_us(l.p50_us as f64),
                    format_us(l.p99_us as f64)
                )
            });
            let _ = writeln!(
                out,
                "{}: offered {} req/s, {} req/s scheduled in the window; latency counts from each request's scheduled time{lag}",
                step.label(),
                rate(offered),
                rate(scheduled),
            );
        }
        if let Some(r) = &step.rejected_latency_us {
            let _ = writeln!(
                out,
                "{}: {} answered in p50 {} / p99 {}",
                step.label(),
                ErrorKind::Rejected.label(),
                format_us(r.p50_us as f64),
                format_us(r.p99_us as f64)
            );
        }
        if let Some(sample) = &step.error_sample {
            let _ = writeln!(out, "{}: first error: {sample}", step.label());
        }
    }
    out
}

/// The report as pretty-printed JSON.
pub fn to_json(report: &BenchReport) -> String {
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_string_pretty(report).unwrap_or_default()
}

/// The CSV columns, in order; `docs/bench.md` describes each.
pub const CSV_COLUMNS: [&str; 35] = [
    "model",
    "mode",
    "concurrency",
    "offered_rps",
    "protocol",
    "batch",
    "warmup_s",
    "duration_s",
    "requests",
    "successes",
    "throughput_rps",
    "inferences_per_s",
    "min_us",
    "p50_us",
    "p90_us",
    "p95_us",
    "p99_us",
    "p999_us",
    "max_us",
    "mean_us",
    "rejected_p50_us",
    "rejected_p99_us",
    "send_lag_p50_us",
    "send_lag_p99_us",
    "errors_429",
    "errors_4xx",
    "errors_5xx",
    "errors_timeout",
    "errors_transport",
    "errors_dropped",
    "server_queue_us",
    "server_compute_us",
    "server_batch_size",
    "server_peak_rss_bytes",
    "error_sample",
];

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// One header line, then one line per step; empty cells where a value does not apply.
pub fn to_csv(report: &BenchReport) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push('\n');
    let opt = |v: Option<String>| v.unwrap_or_default();
    for s in &report.steps {
        let l = s.latency_us.as_ref();
        let r = s.rejected_latency_us.as_ref();
        let server = s.server.as_ref();
        let e = &s.errors;
        let lag = s.send_lag_us.as_ref();
        let cells: [String; 35] = [
            csv_field(&report.model),
            match s.mode {
                crate::result::LoadMode::Closed => "closed".into(),
                crate::result::LoadMode::Open => "open".into(),
            },
            opt(s.concurrency.map(|c| c.to_string())),
            opt(s.offered_rps.map(|r| r.to_string())),
            s.protocol.clone(),
            s.batch.to_string(),
            s.warmup_s.to_string(),
            s.duration_s.to_string(),
            s.requests.to_string(),
            s.successes.to_string(),
            format!("{:.3}", s.throughput_rps),
            format!("{:.3}", s.inferences_per_s),
            opt(l.map(|l| l.min_us.to_string())),
            opt(l.map(|l| l.p50_us.to_string())),
            opt(l.map(|l| l.p90_us.to_string())),
            opt(l.map(|l| l.p95_us.to_string())),
            opt(l.map(|l| l.p99_us.to_string())),
            opt(l.map(|l| l.p999_us.to_string())),
            opt(l.map(|l| l.max_us.to_string())),
            opt(l.map(|l| format!("{:.1}", l.mean_us))),
            opt(r.map(|r| r.p50_us.to_string())),
            opt(r.map(|r| r.p99_us.to_string())),
            opt(lag.map(|l| l.p50_us.to_string())),
            opt(lag.map(|l| l.p99_us.to_string())),
            e.rejected_429.to_string(),
            e.client_4xx.to_string(),
            e.server_5xx.to_string(),
            e.timeout.to_string(),
            e.transport.to_string(),
            e.dropped.to_string(),
            opt(server.and_then(|s| s.queue_us).map(|v| format!("{v:.1}"))),
            opt(server.and_then(|s| s.compute_us).map(|v| format!("{v:.1}"))),
            opt(server.and_then(|s| s.batch_size).map(|v| format!("{v:.3}"))),
            opt(s.server_peak_rss_bytes.map(|v| v.to_string())),
            csv_field(s.error_sample.as_deref().unwrap_or("")),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// Writes `text` to `path`.
pub fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::ErrorCounts;
    use crate::result::{LoadMode, SCHEMA_VERSION};
    use crate::server_side::ServerStats;
    use crate::stats::{LatencySummary, TailLatency};

    fn step(mode: LoadMode) -> StepResult {
        StepResult {
            mode,
            concurrency: (mode == LoadMode::Closed).then_some(4),
            offered_rps: (mode == LoadMode::Open).then_some(500.0),
            protocol: "http".into(),
            batch: 1,
            warmup_s: 2.0,
            duration_s: 10.0,
            requests: 5000,
            successes: 4990,
            throughput_rps: 499.0,
            inferences_per_s: 499.0,
            latency_us: Some(LatencySummary {
                min_us: 300,
                p50_us: 812,
                p90_us: 1234,
                p95_us: 1500,
                p99_us: 45_600,
                p999_us: 312_000,
                max_us: 2_500_000,
                mean_us: 900.5,
            }),
            rejected_latency_us: Some(TailLatency { p50_us: 40, p99_us: 95 }),
            send_lag_us: (mode == LoadMode::Open).then_some(TailLatency { p50_us: 60, p99_us: 250 }),
            errors: ErrorCounts { rejected_429: 8, timeout: 2, ..ErrorCounts::default() },
            error_sample: Some("429: HTTP 429: model 'mlp' cannot take the request now, \"full\"".into()),
            server: Some(ServerStats { queue_us: Some(45.2), compute_us: Some(890.0), batch_size: None }),
            server_peak_rss_bytes: Some(50 << 20),
        }
    }

    fn report() -> BenchReport {
        BenchReport {
            schema: SCHEMA_VERSION,
            url: "http://127.0.0.1:8000".into(),
            model: "mlp".into(),
            model_version: None,
            protocol: "http".into(),
            inputs: "random".into(),
            distinct_requests: 1024,
            steps: vec![step(LoadMode::Closed), step(LoadMode::Open)],
        }
    }

    #[test]
    fn latencies_and_sizes_read_at_a_glance() {
        assert_eq!(format_us(812.0), "812µs");
        assert_eq!(format_us(1234.0), "1.23ms");
        assert_eq!(format_us(45_600.0), "45.6ms");
        assert_eq!(format_us(312_000.0), "312ms");
        assert_eq!(format_us(2_500_000.0), "2.50s");
        assert_eq!(format_us(999.7), "1.00ms");
        assert_eq!(format_bytes(512 << 10), "512KiB");
        assert_eq!(format_bytes(50 << 20), "50.0MiB");
        assert_eq!(format_bytes(3 << 29), "1.50GiB");
    }

    #[test]
    fn table_has_one_aligned_row_per_step_and_notes() {
        let table = render_table(&report());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("model 'mlp' at http://127.0.0.1:8000 over http, batch 1"), "{table}");
        assert!(lines[1].starts_with("step") && lines[1].ends_with("rss"), "{table}");
        assert!(lines[2].starts_with("c=4 "), "{table}");
        assert!(lines[3].starts_with("r=500/s "), "{table}");
        for cell in [
            "499",
            "812µs",
            "1.23ms",
            "45.6ms",
            "312ms",
            "2.50s",
            "10 (429:8 timeout:2)",
            "45µs",
            "890µs",
            "50.0MiB",
        ] {
            assert!(lines[2].contains(cell), "row lacks {cell}: {}", lines[2]);
        }
        // Columns line up: every row as long as the header's column positions require.
        let rss_end = lines[1].chars().count();
        assert_eq!(lines[2].chars().count(), rss_end, "{table}");
        assert!(table.contains("r=500/s: offered 500 req/s, 500 req/s scheduled in the window"), "{table}");
        assert!(table.contains("sent p50 60µs / p99 250µs after it"), "{table}");
        assert!(table.contains("c=4: 429 answered in p50 40µs / p99 95µs"), "{table}");
        assert!(table.contains("c=4: first error: 429: HTTP 429"), "{table}");
    }

    #[test]
    fn json_round_trips_with_stable_names() {
        let report = report();
        let text = to_json(&report);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["schema"], 1);
        assert_eq!(value["steps"][0]["mode"], "closed");
        assert_eq!(value["steps"][0]["latency_us"]["p999_us"], 312_000);
        assert_eq!(value["steps"][0]["errors"]["rejected_429"], 8);
        assert_eq!(value["steps"][1]["offered_rps"], 500.0);
        assert_eq!(value["steps"][0]["server"]["batch_size"], serde_json::Value::Null);
        let back: BenchReport = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, report);
    }

    #[test]
    fn csv_has_a_header_and_a_quoted_row_per_step() {
        let text = to_csv(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].split(',').count(), CSV_COLUMNS.len());
        assert!(
            lines[1].starts_with("mlp,closed,4,,http,1,2,10,5000,4990,499.000,499.000,300,812,"),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("mlp,open,,500,http,"), "{}", lines[2]);
        assert!(lines[2].contains(",40,95,60,250,8,0,0,2,0,0,"), "{}", lines[2]);
        assert!(lines[1].ends_with(",45.2,890.0,,52428800,\"429: HTTP 429: model 'mlp' cannot take the request now, \"\"full\"\"\""), "{}", lines[1]);
    }
}
