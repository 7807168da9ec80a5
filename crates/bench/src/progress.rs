//! A progress bar per step on stderr: time through warm-up and window, answers so far.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::load::{LiveCounts, Window};

/// The bar of one step; hidden when disabled or when stderr is not a terminal.
#[derive(Debug)]
pub struct StepProgress {
    bar: ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
    live: Arc<LiveCounts>,
}

impl StepProgress {
    pub fn start(enabled: bool, label: String, window: Window, live: Arc<LiveCounts>) -> StepProgress {
        if !enabled || !std::io::stderr().is_terminal() {
            return StepProgress { bar: ProgressBar::hidden(), task: None, live };
        }
        let total = window.end.duration_since(window.start);
        let bar = ProgressBar::new(millis(total));
        let seconds = |ms: u64, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}s", ms as f64 / 1000.0);
        };
        let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {at:>6} / {total} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("at", move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                seconds(state.pos(), w)
            })
            .with_key("total", move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                seconds(state.len().unwrap_or(0), w)
            })
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label);
        let task = tokio::spawn({
            let bar = bar.clone();
            let live = live.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let phase = if now < window.measure_from {
                        "warm-up"
                    } else if now < window.end {
                        "measuring"
                    } else {
                        "finishing"
                    };
                    bar.set_position(millis(now.duration_since(window.start)).min(millis(total)));
                    bar.set_message(message(phase, &live));
                }
            }
        });
        StepProgress { bar, task: Some(task), live }
    }

    /// Stops updating and leaves the finished bar in place.
    pub fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        self.bar.set_position(self.bar.length().unwrap_or(0));
        self.bar.finish_with_message(message("done", &self.live));
    }
}

fn message(phase: &str, live: &LiveCounts) -> String {
    format!("{phase}  {} ok  {} failed", live.ok.load(Ordering::Relaxed), live.failed.load(Ordering::Relaxed))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
