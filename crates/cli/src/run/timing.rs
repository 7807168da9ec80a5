//! `--repeat`: engine time percentiles and the process's peak resident memory.

use std::time::Duration;

/// Engine time of every run.
#[derive(Default)]
pub struct Timings {
    runs: Vec<Duration>,
}

impl Timings {
    pub fn record(&mut self, time: Duration) {
        self.runs.push(time);
    }

    /// Prints p50 and p99 of the engine time, the runs per second of engine time (one after
    /// another, on one instance) and the peak RSS to stderr.
    pub fn report(&self, engine: &str) {
        let mut sorted = self.runs.clone();
        sorted.sort_unstable();
        let ms = |p: f64| percentile(&sorted, p).as_secs_f64() * 1e3;
        let total = sorted.iter().sum::<Duration>().as_secs_f64();
        let per_second = if total > 0.0 { sorted.len() as f64 / total } else { 0.0 };
        eprintln!(
            "engine time ({engine}, {} runs): p50 {:.3} ms, p99 {:.3} ms, {per_second:.1} runs/s",
            sorted.len(),
            ms(0.50),
            ms(0.99)
        );
        match peak_rss_kib() {
            Some(kib) => eprintln!("peak RSS (VmHWM): {:.1} MiB", kib as f64 / 1024.0),
            None => eprintln!("peak RSS (VmHWM): unknown (no /proc/self/status)"),
        }
    }
}

/// The nearest-rank percentile of sorted times (`p` in 0..=1); zero when there are none.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `VmHWM` of /proc/self/status, in KiB (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&ms[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\trtserve\nVmPeak:\t  300 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(51234));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }
}
