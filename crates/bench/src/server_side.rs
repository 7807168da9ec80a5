//! The server's side of a step: its Prometheus metrics before and after the measurement
//! window (queue and compute time, batch size) and its peak resident memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::credentials::Credentials;
use crate::outcome::error_chain;
use crate::BenchError;

/// What the server's metrics say about a step, for the model under test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Mean wait per request from arrival at the scheduler to dispatch
    /// (`rtserve_queue_duration_seconds`), µs.
    pub queue_us: Option<f64>,
    /// Mean engine time per execution, i.e. per batch (`rtserve_compute_duration_seconds`), µs.
    pub compute_us: Option<f64>,
    /// Mean rows per engine execution (`rtserve_batch_size`).
    pub batch_size: Option<f64>,
}

/// Sums and counts of the histograms that [`ServerStats`] is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub queue_sum: f64,
    pub queue_count: f64,
    pub compute_sum: f64,
    pub compute_count: f64,
    pub batch_sum: f64,
    pub batch_count: f64,
}

impl MetricsSnapshot {
    /// Means over what happened between `before` and `self`; `None` when the server recorded
    /// nothing for the model in between.
    pub fn since(&self, before: &MetricsSnapshot) -> Option<ServerStats> {
        let mean = |sum: f64, sum0: f64, count: f64, count0: f64, scale: f64| {
            let n = count - count0;
            (n > 0.0).then(|| (sum - sum0) / n * scale)
        };
        let stats = ServerStats {
            queue_us: mean(self.queue_sum, before.queue_sum, self.queue_count, before.queue_count, 1e6),
            compute_us: mean(
                self.compute_sum,
                before.compute_sum,
                self.compute_count,
                before.compute_count,
                1e6,
            ),
            batch_size: mean(self.batch_sum, before.batch_sum, self.batch_count, before.batch_count, 1.0),
        };
        (stats.queue_us.is_some() || stats.compute_us.is_some() || stats.batch_size.is_some())
            .then_some(stats)
    }
}

/// Reads the series of `model` (and `version`, when given; else all versions summed) from a
/// Prometheus text exposition.
pub fn parse_metrics(text: &str, model: &str, version: Option<&str>) -> MetricsSnapshot {
    let mut snapshot = MetricsSnapshot::default();
    for line in text.lines() {
        let Some(PromSample { name, labels, value }) = parse_sample(line) else { continue };
        let slot = match name {
            "rtserve_queue_duration_seconds_sum" => &mut snapshot.queue_sum,
            "rtserve_queue_duration_seconds_count" => &mut snapshot.queue_count,
            "rtserve_compute_duration_seconds_sum" => &mut snapshot.compute_sum,
            "rtserve_compute_duration_seconds_count" => &mut snapshot.compute_count,
            "rtserve_batch_size_sum" => &mut snapshot.batch_sum,
            "rtserve_batch_size_count" => &mut snapshot.batch_count,
            _ => continue,
        };
        let label = |key: &str| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        if label("model") == Some(model) && version.is_none_or(|v| label("version") == Some(v)) {
            *slot += value;
        }
    }
    snapshot
}

/// One sample line of the exposition format.
#[derive(Debug, PartialEq)]
struct PromSample<'a> {
    name: &'a str,
    labels: Vec<(String, String)>,
    value: f64,
}

/// One sample line: `name{k="v",...} value [timestamp]`; `None` for comments and blank lines.
fn parse_sample(line: &str) -> Option<PromSample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(PromSample { name, labels, value })
}

/// Reads `/metrics` of the server.
#[derive(Debug, Clone)]
pub struct MetricsScraper {
    client: reqwest::Client,
    pub url: String,
    model: String,
    version: Option<String>,
}

impl MetricsScraper {
    /// A scraper that presents `credentials` (the token, for `--metrics-auth`; the TLS CA).
    pub fn new(
        url: String,
        model: String,
        version: Option<String>,
        credentials: &Credentials,
    ) -> Result<Self, BenchError> {
        let client = credentials
            .http_client()?
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BenchError::Metrics { url: url.clone(), reason: error_chain(&e) })?;
        Ok(MetricsScraper { client, url, model, version })
    }

    pub async fn scrape(&self) -> Result<MetricsSnapshot, String> {
        let reply = self.client.get(&self.url).send().await.map_err(|e| error_chain(&e))?;
        if !reply.status().is_success() {
            return Err(format!("HTTP {}", reply.status()));
        }
        let text = reply.text().await.map_err(|e| error_chain(&e))?;
        if !text.contains("rtserve_") {
            return Err("no rtserve_ metrics in the answer".into());
        }
        Ok(parse_metrics(&text, &self.model, self.version.as_deref()))
    }
}

/// `VmRSS` of `/proc/PID/status`, in bytes.
pub fn read_rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse_vm_rss(&text).ok_or_else(|| format!("{path} has no VmRSS line"))
}

/// The `VmRSS:  1234 kB` line of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => value.checked_mul(1024),
        _ => None,
    }
}

/// Polls a process's resident memory every 100 ms while it runs, keeping the peak.
#[derive(Debug)]
pub struct RssMonitor {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    pid: u32,
}

impl RssMonitor {
    pub fn start(pid: u32) -> RssMonitor {
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let peak = peak.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    if let Ok(rss) = read_rss(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            }
        });
        RssMonitor { peak, task, pid }
    }

    /// Stops polling; the peak seen, `None` when the process could not be read.
    pub fn stop(self) -> Option<u64> {
        self.task.abort();
        if let Ok(rss) = read_rss(self.pid) {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        Some(self.peak.load(Ordering::Relaxed)).filter(|&p| p > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP rtserve_queue_duration_seconds Queue wait.
# TYPE rtserve_queue_duration_seconds histogram
rtserve_queue_duration_seconds_bucket{model="mlp",version="1",le="0.00001"} 3
rtserve_queue_duration_seconds_sum{model="mlp",version="1"} 0.002
rtserve_queue_duration_seconds_count{model="mlp",version="1"} 4
rtserve_queue_duration_seconds_sum{model="mlp",version="2"} 0.001
rtserve_queue_duration_seconds_count{model="mlp",version="2"} 1
rtserve_queue_duration_seconds_sum{model="cnn",version="1"} 9
rtserve_queue_duration_seconds_count{model="cnn",version="1"} 9
rtserve_compute_duration_seconds_sum{model="mlp",version="1"} 0.01
rtserve_compute_duration_seconds_count{model="mlp",version="1"} 2
rtserve_batch_size_sum{model="mlp",version="1"} 4
rtserve_batch_size_count{model="mlp",version="1"} 2
rtserve_requests_total{model="say \"hi\", {ok}",version="1",protocol="http",outcome="success"} 7 1700000000
"#;

    #[test]
    fn reads_the_models_series_and_sums_versions() {
        let all = parse_metrics(EXPOSITION, "mlp", None);
        assert_eq!((all.queue_sum, all.queue_count), (0.003, 5.0));
        let v1 = parse_metrics(EXPOSITION, "mlp", Some("1"));
        assert_eq!((v1.queue_sum, v1.queue_count), (0.002, 4.0));
        assert_eq!((v1.compute_sum, v1.compute_count, v1.batch_sum, v1.batch_count), (0.01, 2.0, 4.0, 2.0));
        assert_eq!(parse_metrics(EXPOSITION, "none", None), MetricsSnapshot::default());
    }

    #[test]
    fn label_values_may_hold_quotes_commas_and_braces() {
        let line = EXPOSITION.lines().last().expect("a line");
        let PromSample { name, labels, value } = parse_sample(line).expect("parses");
        assert_eq!(name, "rtserve_requests_total");
        assert_eq!(labels[0], ("model".to_string(), "say \"hi\", {ok}".to_string()));
        assert_eq!(labels.len(), 4);
        assert_eq!(value, 7.0);
        assert!(parse_sample("# TYPE x counter").is_none());
        assert_eq!(parse_sample("up 1").map(|s| s.value), Some(1.0));
    }

    #[test]
    fn means_over_the_window() {
        let before = parse_metrics(EXPOSITION, "mlp", Some("1"));
        let after = MetricsSnapshot {
            queue_sum: 0.004,
            queue_count: 8.0,
            compute_sum: 0.02,
            compute_count: 4.0,
            ..before
        };
        let stats = after.since(&before).expect("some");
        assert!((stats.queue_us.expect("queue") - 500.0).abs() < 1e-6);
        assert!((stats.compute_us.expect("compute") - 5000.0).abs() < 1e-6);
        assert_eq!(stats.batch_size, None);
        assert_eq!(before.since(&before), None);
    }

    #[test]
    fn resident_memory_of_a_status_file_and_of_this_process() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\nVmSwap: 0 kB\n"), Some(2048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(read_rss(std::process::id()).is_ok_and(|rss| rss > 0));
        assert!(read_rss(u32::MAX).is_err());
    }
}
