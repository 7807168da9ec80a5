//! The load generators: a closed loop (a fixed number of requests in flight) and an open loop
//! (Poisson arrivals at a fixed rate, latency counted from each request's scheduled time).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::outcome::{ErrorKind, RequestError};
use crate::schedule::PoissonSchedule;
use crate::stats::{StepStats, Timing};
use crate::transport::{Lane, Prepared};

/// The time line of a step: warm-up from `start` to `measure_from`, then the measurement
/// window up to `end`. Only requests sent (closed loop) or scheduled (open loop) inside the
/// window count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub measure_from: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Window {
        Window { start, measure_from: start + warmup, end: start + warmup + duration }
    }

    fn measures(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }
}

/// Answers and failures so far, warm-up included, for the progress bar.
#[derive(Debug, Default)]
pub struct LiveCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl LiveCounts {
    fn count(&self, outcome: &Result<(), RequestError>) {
        let counter = if outcome.is_ok() { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every request of a step shares.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub requests: Arc<[Prepared]>,
    pub window: Window,
    pub timeout: Duration,
    pub live: Arc<LiveCounts>,
}

async fn send(lane: &Lane, request: &Prepared, timeout: Duration) -> Result<(), RequestError> {
    match tokio::time::timeout(timeout, lane.infer(request)).await {
        Ok(result) => result,
        Err(_) => Err(RequestError::new(ErrorKind::Timeout, format!("no answer within {timeout:?}"))),
    }
}

/// Closed loop: each lane sends a request, waits for its answer, and sends the next, until
/// the window ends. Latency is from send to the complete answer.
pub async fn run_closed(lanes: Vec<Lane>, ctx: StepContext) -> StepStats {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let (ctx, next) = (ctx.clone(), next.clone());
            tokio::spawn(async move {
                let mut stats = StepStats::new();
                loop {
                    let sent = Instant::now();
                    if sent >= ctx.window.end {
                        break;
                    }
                    let request = &ctx.requests[next.fetch_add(1, Ordering::Relaxed) % ctx.requests.len()];
                    let outcome = send(&lane, request, ctx.timeout).await;
                    ctx.live.count(&outcome);
                    if ctx.window.measures(sent) {
                        stats.record(&outcome, Timing::sent_when_due(sent.elapsed()));
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = StepStats::new();
    for worker in workers {
        // A worker only ends by returning its stats; a panic would be a bug, not a result.
        if let Ok(stats) = worker.await {
            total.merge(&stats);
        }
    }
    total
}

/// Open loop: requests leave at the times of a seeded Poisson schedule whether or not earlier
/// ones were answered, and each one's latency runs from its *scheduled* time, so a server (or
/// client) that falls behind shows as latency instead of a silently lower rate (coordinated
/// omission). At most `max_inflight` are in flight; a request due when that many are out is
/// counted as dropped rather than delaying the schedule.
pub async fn run_open(lane: Lane, ctx: StepContext, rate: f64, seed: u64, max_inflight: usize) -> StepStats {
    let lane = Arc::new(lane);
    let stats = Arc::new(Mutex::new(StepStats::new()));
    let slots = Arc::new(Semaphore::new(max_inflight));
    let mut due_times = pace(PoissonSchedule::new(rate, seed), ctx.window);
    let mut index = 0usize;
    while let Some(due) = due_times.recv().await {
        let measured = ctx.window.measures(due);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ctx.live.failed.fetch_add(1, Ordering::Relaxed);
            if measured {
                lock(&stats).record_dropped();
            }
            continue;
        };
        let i = index % ctx.requests.len();
        index += 1;
        let (lane, ctx, stats) = (lane.clone(), ctx.clone(), stats.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = send(&lane, &ctx.requests[i], ctx.timeout).await;
            let timing = Timing { from_due: due.elapsed(), from_send: sent.elapsed() };
            ctx.live.count(&outcome);
            if measured {
                let mut stats = lock(&stats);
                stats.record_send_lag(sent.duration_since(due));
                stats.record(&outcome, timing);
            }
            drop(slot);
        });
    }
    // Every slot back means every request sent has been answered or has timed out.
    let all = u32::try_from(max_inflight).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    let stats = lock(&stats).clone();
    stats
}

/// Emits each scheduled time of the window when it comes. The pacing runs on a thread of its
/// own because tokio's timer ticks in whole milliseconds, which would add up to a millisecond
/// of client-made lateness to every request of an open loop; `thread::sleep` is accurate to
/// tens of microseconds. When the thread falls behind it emits at once, keeping the schedule.
fn pace(schedule: PoissonSchedule, window: Window) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    let start = window.start.into_std();
    let end = window.end.into_std();
    std::thread::spawn(move || {
        for offset in schedule {
            let due = start + offset;
            if due >= end {
                break;
            }
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // The receiver is gone when the step was abandoned: stop.
            if tx.send(Instant::from_std(due)).is_err() {
                break;
            }
        }
    });
    rx
}

fn lock(stats: &Mutex<StepStats>) -> std::sync::MutexGuard<'_, StepStats> {
    // Recording is a few additions; a panic in one leaves the histograms usable.
    stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::{BenchConfig, BenchOptions};
    use crate::transport::http::HttpClient;

    /// A stand-in server on 127.0.0.1:0: answers every HTTP/1.1 request with `status` after
    /// `delay`, keeping connections alive. Returns its address.
    async fn fake_server(status: u16, delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request: headers, then Content-Length bytes of body.
                        let (head_end, length) = loop {
                            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                                let length = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                break (end + 4, length);
                            }
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        while buffer.len() < head_end + length {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.drain(..head_end + length);
                        tokio::time::sleep(delay).await;
                        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}");
                        if socket.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn http_lane(url: &str) -> Lane {
        let options = BenchOptions {
            url: url.parse().expect("url"),
            model: "m".into(),
            model_version: None,
            concurrency: vec![],
            rate: vec![],
            http_json: true,
            grpc_stream: false,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            max_inflight: 1,
            batch: 1,
            shapes: vec![],
            input_data: vec![],
            distinct: 1,
            seed: 1,
            metrics_url: None,
            server_pid: None,
            progress: false,
            credentials: Default::default(),
        };
        let config = BenchConfig::new(options).expect("config");
        Lane::Http(HttpClient::new(&config).expect("client"))
    }

    fn context(warmup: Duration, duration: Duration) -> StepContext {
        StepContext {
            requests: vec![Prepared::Http { body: Bytes::from_static(b"{}"), header_length: None }].into(),
            window: Window::new(Instant::now(), warmup, duration),
            timeout: Duration::from_secs(5),
            live: Arc::new(LiveCounts::default()),
        }
    }

    #[tokio::test]
    async fn closed_loop_counts_only_requests_sent_in_the_window() {
        let url = fake_server(200, Duration::from_millis(20)).await;
        let ctx = context(Duration::from_millis(100), Duration::from_millis(300));
        let live = ctx.live.clone();
        let stats = run_closed(vec![http_lane(&url), http_lane(&url)], ctx).await;
        // Two senders, each request held 20 ms: at most 2 × (300 / 20 + 1) fit in the window.
        assert!(stats.successes() > 0 && stats.successes() <= 32, "{}", stats.successes());
        assert_eq!(stats.requests(), stats.successes());
        // The warm-up's requests were sent but not counted.
        assert!(live.ok.load(Ordering::Relaxed) > stats.successes());
        // Nothing is answered faster than the server's delay.
        assert!(stats.latency().is_some_and(|l| l.min_us >= 20_000), "{:?}", stats.latency());
    }

    #[tokio::test]
    async fn open_loop_drops_past_max_inflight_instead_of_waiting() {
        // 200 requests/s against 2 slots held 100 ms each: at most ~20/s can be sent.
        let url = fake_server(200, Duration::from_millis(100)).await;
        let ctx = context(Duration::ZERO, Duration::from_millis(500));
        let stats = run_open(http_lane(&url), ctx, 200.0, 7, 2).await;
        let errors = stats.errors();
        assert!(stats.successes() > 0, "{stats:?}");
        assert!(errors.dropped > stats.successes(), "{errors:?} vs {} successes", stats.successes());
        assert_eq!(stats.requests(), stats.successes() + errors.dropped);
        assert!(stats.send_lag().is_some());
        assert!(stats.latency().is_some_and(|l| l.min_us >= 100_000), "{:?}", stats.latency());
    }

    #[tokio::test]
    async fn open_loop_rejections_are_errors_with_their_own_latency() {
        let url = fake_server(429, Duration::from_millis(5)).await;
        let ctx = context(Duration::ZERO, Duration::from_millis(300));
        let stats = run_open(http_lane(&url), ctx, 100.0, 3, 64).await;
        assert_eq!(stats.successes(), 0);
        assert!(stats.errors().rejected_429 > 0 && stats.errors().total() == stats.errors().rejected_429);
        assert!(stats.latency().is_none());
        assert!(
            stats.rejected_latency().is_some_and(|r| r.p50_us >= 5_000),
            "{:?}",
            stats.rejected_latency()
        );
        assert!(
            stats.first_error().is_some_and(|e| e.starts_with("429: HTTP 429")),
            "{:?}",
            stats.first_error()
        );
    }
}
