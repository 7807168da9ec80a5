//! What the scheduler did, for the metrics endpoint: a snapshot of counters and gauges, and an
//! optional observer that sees every sample (for histograms).

use std::collections::BTreeMap;
use std::time::Duration;

use super::planner::RejectReason;
use super::profile::ProfilePoint;

/// A count of durations and their sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DurationTotal {
    pub count: u64,
    pub sum: Duration,
}

impl DurationTotal {
    pub fn add(&mut self, value: Duration) {
        self.count += 1;
        self.sum += value;
    }
}

/// Counters since the scheduler started, and gauges as of the snapshot.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SchedulerStats {
    /// Requests waiting (gauge).
    pub queue_depth: usize,
    /// Rows waiting (gauge).
    pub queued_rows: usize,
    /// Instances running a batch (gauge).
    pub instances_busy: usize,
    pub instances: usize,
    /// Engine executions by rows, with their time inside the engine.
    pub batches: BTreeMap<usize, DurationTotal>,
    /// Per request: arrival to dispatch.
    pub queue_wait: DurationTotal,
    /// Requests refused at admission, by [`RejectReason::label`].
    pub rejections: BTreeMap<&'static str, u64>,
    /// Requests whose deadline passed while they waited.
    pub expired: u64,
    /// Requests whose caller went away before they ran.
    pub cancelled: u64,
    /// Requests answered with outputs.
    pub completed: u64,
    /// Requests answered with an engine error.
    pub failed: u64,
    /// With an SLO: requests answered within it (goodput) ...
    pub slo_met: u64,
    /// ... and requests answered after it or expired in the queue.
    pub slo_missed: u64,
    /// The latency profile: execution time per batch size.
    pub profile: Vec<ProfilePoint>,
}

impl SchedulerStats {
    /// Engine executions and their total engine time.
    pub fn executions(&self) -> DurationTotal {
        self.batches.values().fold(DurationTotal::default(), |total, b| DurationTotal {
            count: total.count + b.count,
            sum: total.sum + b.sum,
        })
    }

    /// Rows run by the engine (inferences).
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|(&rows, b)| rows as u64 * b.count).sum()
    }

    pub(crate) fn reject(&mut self, reason: &RejectReason) {
        *self.rejections.entry(reason.label()).or_default() += 1;
    }
}

/// Sees each sample as it happens; every method defaults to doing nothing. Called from the
/// scheduler task, so implementations must be quick (an atomic histogram update).
pub trait SchedulerObserver: Send + Sync {
    /// A request waited this long between arrival and dispatch.
    fn queue_wait(&self, _wait: Duration) {}
    /// A batch of `rows` spent `exec` in the engine.
    fn batch(&self, _rows: usize, _exec: Duration) {}
    /// A request was refused at admission.
    fn rejected(&self, _reason: &RejectReason) {}
    /// A request expired in the queue.
    fn expired(&self) {}
}
