//! A timer precise to tens of microseconds for the scheduler's short waits.
//!
//! tokio's timer has a 1 ms resolution, so a `max_queue_delay` of 200 µs would become up to
//! 1 ms (and an SLO-driven early fire late by as much). Waits shorter than
//! [`TOKIO_TIMER_FROM`] go to one process-wide thread that sleeps on a channel with a timeout
//! (a futex wait, precise to the scheduler's tick) and completes a oneshot at the due instant;
//! longer waits use tokio's timer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Waits at least this long use tokio's timer: a millisecond of rounding is then small.
const TOKIO_TIMER_FROM: Duration = Duration::from_millis(5);

struct Wake {
    at: Instant,
    /// Orders equal instants; the heap needs a total order and senders have none.
    seq: u64,
    done: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wake {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The timer thread's inbox, started on first use; `None` if the thread could not start.
fn timer_thread() -> Option<&'static Mutex<mpsc::Sender<Wake>>> {
    static SENDER: OnceLock<Option<Mutex<mpsc::Sender<Wake>>>> = OnceLock::new();
    SENDER
        .get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<Wake>();
            let spawned = std::thread::Builder::new().name("rtserve-timer".into()).spawn(move || {
                let mut due: BinaryHeap<Reverse<Wake>> = BinaryHeap::new();
                loop {
                    let now = Instant::now();
                    while due.peek().is_some_and(|Reverse(w)| w.at <= now) {
                        if let Some(Reverse(wake)) = due.pop() {
                            // The waiter may have moved on; then nobody listens.
                            let _ = wake.done.send(());
                        }
                    }
                    let next = match due.peek() {
                        Some(Reverse(w)) => receiver.recv_timeout(w.at.saturating_duration_since(now)),
                        None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok(wake) => due.push(Reverse(wake)),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            });
            match spawned {
                Ok(_) => Some(Mutex::new(sender)),
                Err(e) => {
                    tracing::warn!("cannot start the precise timer thread, using tokio's timer: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Completes at `at` (never before it).
pub(crate) async fn sleep_until(at: Instant) {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let left = at.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return;
    }
    if left < TOKIO_TIMER_FROM {
        if let Some(thread) = timer_thread() {
            let (done, fired) = oneshot::channel();
            let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sent =
                thread.lock().map(|sender| sender.send(Wake { at, seq, done }).is_ok()).unwrap_or(false);
            if sent && fired.await.is_ok() {
                return;
            }
        }
    }
    tokio::time::sleep_until(at.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn completes_every_wait_and_never_early() {
        let start = Instant::now();
        // Short waits (the timer thread), a past instant, and a long one (tokio's timer).
        for us in [100u64, 300, 200, 0, 6_000] {
            let at = start + Duration::from_micros(us);
            sleep_until(at).await;
            assert!(Instant::now() >= at, "the {us} µs wait ended early");
        }
    }
}
