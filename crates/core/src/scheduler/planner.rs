//! The batch planner: the scheduling policy as a pure state struct.
//!
//! Queue state, the latency profile and `now` go in; decisions come out. The planner never
//! reads a clock and never touches tensors, so tests drive it with a fake clock.
//!
//! - Order: by priority level (1 first), then, under DELAY, requests whose timeout has not
//!   passed before those whose timeout has, then arrival (FIFO).
//! - A batch starts with the head of the queue and takes the following requests that can share
//!   its batch (same [`Entry::group`]) in queue order, while their rows fit `max_batch_size`.
//! - It fires when it is full, when it reaches a preferred size, when its oldest request has
//!   waited `max_queue_delay`, earlier when waiting longer would make a request in it miss its
//!   due time, and at once when no more requests are expected before then ([`Arrivals`]: the
//!   queue holds all that is outstanding, or the measured gap between arrivals is too long).
//!   Among the prefixes of the batch whose predicted completion meets every due time in them,
//!   it sends the one with the highest predicted throughput.
//! - Requests that can no longer finish before their expiry (the typical run time of their own
//!   rows from now) are never dispatched; they are handed back through
//!   [`BatchPlanner::take_expired`] to be answered with an error, early rather than late.
//! - Admission refuses a request when the queue is full, when it has more rows than a batch
//!   holds, or when its predicted completion is past its due time: the queue ahead of it packed
//!   into batches as the dispatcher packs them (a batch also ends where a due time in it would
//!   be missed), then its own batch, on the instances as they come free, every run (those in
//!   flight included) timed with the profile's upper, 90th-percentile curve.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use super::arrivals::Arrivals;
use super::policy::{earliest, Deadlines, PlannerConfig};
use super::profile::LatencyProfile;

/// Identifies a queued request; chosen by the caller, unique while the request is queued.
pub type EntryId = u64;

/// Identifies a dispatched batch, chosen by the planner.
pub type BatchId = u64;

/// Which execution time a prediction assumes.
#[derive(Debug, Clone, Copy)]
enum Estimate {
    /// The typical (median) one: for retry hints.
    Typical,
    /// One most runs stay within (90th percentile): for admission, which must not admit what
    /// is only on time when every run ahead of it is typical.
    Upper,
}

/// The retry hint when nothing better can be predicted.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the planner knows of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    /// Rows it carries along the batch dimension (1 for a model without one).
    pub rows: usize,
    /// Requests share a batch only with the same group: equal input names, datatypes and
    /// shapes apart from the batch dimension.
    pub group: u64,
    /// Its priority level (see [`PlannerConfig::priority_level`]).
    pub priority: u32,
    pub arrival: Instant,
    pub deadlines: Deadlines,
}

/// Why a request was refused at admission.
#[derive(Debug, Clone, PartialEq)]
pub enum RejectReason {
    /// The queue holds `capacity` requests already.
    QueueFull { capacity: usize },
    /// The request carries more rows than a batch holds: a client error.
    TooManyRows { rows: usize, max: usize },
    /// Its predicted completion is past its due time.
    PredictedMiss { predicted: Duration, allowed: Duration },
    /// Its due time had passed on arrival.
    DeadlinePassed,
}

impl RejectReason {
    /// A short stable name, for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::QueueFull { .. } => "queue_full",
            RejectReason::TooManyRows { .. } => "too_many_rows",
            RejectReason::PredictedMiss { .. } => "predicted_deadline_miss",
            RejectReason::DeadlinePassed => "deadline_passed",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::QueueFull { capacity } => write!(f, "its queue is full ({capacity} requests)"),
            RejectReason::TooManyRows { rows, max } => {
                write!(f, "the request has batch size {rows} but the model accepts 1 to {max}")
            }
            RejectReason::PredictedMiss { predicted, allowed } => write!(
                f,
                "it would answer in about {:.1} ms but the deadline allows {:.1} ms",
                predicted.as_secs_f64() * 1e3,
                allowed.as_secs_f64() * 1e3
            ),
            RejectReason::DeadlinePassed => write!(f, "the request's deadline had already passed"),
        }
    }
}

/// A refused request: why, and when trying again has a chance.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub retry_after: Duration,
}

/// Requests to run together on one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub id: BatchId,
    /// In queue order.
    pub entries: Vec<EntryId>,
    pub rows: usize,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run this batch on a free instance now.
    Dispatch(Batch),
    /// Nothing to run yet; ask again at this instant, or sooner when something happens
    /// (an arrival, a completion, a cancellation).
    WaitUntil(Instant),
    /// Nothing to do until something happens.
    Idle,
}

/// Queue order: level, then late (DELAY timeouts passed) after punctual, then arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct QueueKey {
    level: u32,
    late: bool,
    seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    rows: usize,
    requests: usize,
    /// When it was dispatched; its end is predicted from the profile as it is when asked, with
    /// the curve the prediction needs.
    started: Instant,
}

/// The queue and the scheduling state of one model version.
#[derive(Debug)]
pub struct BatchPlanner {
    config: PlannerConfig,
    profile: LatencyProfile,
    queue: BTreeMap<QueueKey, Entry>,
    keys: HashMap<EntryId, QueueKey>,
    /// Requests and rows queued per `(level, late)`, for admission estimates.
    counts: BTreeMap<(u32, bool), (usize, usize)>,
    in_flight: HashMap<BatchId, InFlight>,
    expired: Vec<EntryId>,
    arrivals: Arrivals,
    next_seq: u64,
    next_batch_id: BatchId,
}

impl BatchPlanner {
    pub fn new(config: PlannerConfig, profile: LatencyProfile) -> Self {
        let arrivals = Arrivals::new(config.max_batch_size.max(1));
        BatchPlanner {
            config,
            profile,
            queue: BTreeMap::new(),
            keys: HashMap::new(),
            counts: BTreeMap::new(),
            in_flight: HashMap::new(),
            expired: Vec::new(),
            arrivals,
            next_seq: 0,
            next_batch_id: 0,
        }
    }

    pub fn config(&self) -> &PlannerConfig {
        &self.config
    }

    pub fn profile(&self) -> &LatencyProfile {
        &self.profile
    }

    /// Requests waiting.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Rows waiting.
    pub fn queued_rows(&self) -> usize {
        self.counts.values().map(|&(_, rows)| rows).sum()
    }

    /// Batches dispatched and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests queued or running.
    pub fn outstanding(&self) -> usize {
        self.queue.len() + self.in_flight.values().map(|f| f.requests).sum::<usize>()
    }

    /// The traffic measured so far.
    #[cfg(test)]
    pub(crate) fn arrivals(&self) -> &Arrivals {
        &self.arrivals
    }

    /// Instances without a batch.
    pub fn free_instances(&self) -> usize {
        self.config.instances.saturating_sub(self.in_flight.len())
    }

    /// The largest batch in rows: `max_batch_size`, or one request when batching is off.
    fn batch_capacity(&self) -> usize {
        self.config.max_batch_size.max(1)
    }

    /// Queues a request, or refuses it at once.
    pub fn admit(&mut self, entry: Entry, now: Instant) -> Result<(), Rejection> {
        let max = self.config.max_batch_size;
        if max > 0 && entry.rows > max {
            let reason = RejectReason::TooManyRows { rows: entry.rows, max };
            return Err(Rejection { reason, retry_after: Duration::ZERO });
        }
        if self.queue.len() >= self.config.max_queue_size {
            let reason = RejectReason::QueueFull { capacity: self.config.max_queue_size };
            return Err(Rejection { reason, retry_after: self.drain_time(now) });
        }
        if entry.deadlines.expire_at.is_some_and(|t| t <= now)
            || entry.deadlines.due.is_some_and(|t| t <= now)
        {
            return Err(Rejection { reason: RejectReason::DeadlinePassed, retry_after: Duration::ZERO });
        }
        if let Some(due) = entry.deadlines.due {
            let last_ahead = QueueKey { level: entry.priority, late: false, seq: u64::MAX };
            let ahead = self.queue.range(..=last_ahead).map(|(_, e)| e);
            let own = (entry.rows, Some(due));
            if let Some((start, end)) = self.predict(now, ahead, own, Estimate::Upper) {
                if end > due {
                    let reason = RejectReason::PredictedMiss { predicted: end - now, allowed: due - now };
                    let retry_after = start.saturating_duration_since(now).max(Duration::from_millis(1));
                    return Err(Rejection { reason, retry_after });
                }
            }
        }
        let key = QueueKey { level: entry.priority, late: false, seq: self.next_seq };
        self.next_seq += 1;
        let previous = self.keys.insert(entry.id, key);
        debug_assert!(previous.is_none(), "entry ids are unique while queued");
        self.count(key, entry.rows, true);
        self.queue.insert(key, entry);
        self.arrivals.record(now, self.outstanding(), self.config.max_queue_delay);
        Ok(())
    }

    /// Removes a queued request whose caller went away; false if it is not queued.
    pub fn cancel(&mut self, id: EntryId) -> bool {
        self.remove(id).is_some()
    }

    /// Requests that expired while queued, since the last call: answer them with an error.
    pub fn take_expired(&mut self) -> Vec<EntryId> {
        std::mem::take(&mut self.expired)
    }

    /// Records that a dispatched batch finished; `measured` is the rows it ran and how long
    /// the engine took, when it ran at all.
    pub fn complete(&mut self, batch: BatchId, measured: Option<(usize, Duration)>) {
        self.in_flight.remove(&batch);
        if let Some((rows, exec)) = measured {
            self.profile.record(rows, exec);
        }
    }

    /// Seeds or updates the latency profile outside of a batch (warm-up).
    pub fn record_sample(&mut self, rows: usize, exec: Duration) {
        self.profile.record(rows, exec);
    }

    /// The next thing to do. Call it again after every `Dispatch`, after every event, and at
    /// the instant of a `WaitUntil`.
    pub fn next_batch(&mut self, now: Instant) -> Decision {
        self.expire_and_demote(now);
        let Some((_, head)) = self.queue.first_key_value() else {
            return Decision::Idle;
        };
        let wake = self.next_deadline_event();
        if self.free_instances() == 0 {
            return wake.map_or(Decision::Idle, Decision::WaitUntil);
        }
        let capacity = self.batch_capacity();
        let group = head.group;
        let mut candidates: Vec<&Entry> = Vec::new();
        let mut rows = 0;
        let mut full = !self.config.batching;
        for entry in self.queue.values().filter(|e| e.group == group) {
            if !self.config.batching && !candidates.is_empty() {
                break;
            }
            if self.config.batching && rows + entry.rows > capacity {
                full = true;
                break;
            }
            rows += entry.rows;
            candidates.push(entry);
        }
        full |= rows >= capacity;
        let oldest = candidates.iter().map(|e| e.arrival).min().unwrap_or(now);
        let prefix_rows: Vec<usize> = candidates
            .iter()
            .scan(0, |sum, e| {
                *sum += e.rows;
                Some(*sum)
            })
            .collect();
        let preferred =
            prefix_rows.iter().rposition(|r| self.config.preferred_batch_sizes.binary_search(r).is_ok());
        let delay_end = oldest + self.config.max_queue_delay;
        let delay_over = now >= delay_end;
        let latest_start = self.latest_safe_start(&candidates, rows);
        let urgent = latest_start.is_some_and(|t| now >= t);

        let mut must_go = full || delay_over || urgent;
        if !(must_go || preferred.is_some()) {
            let fire_by = latest_start.map_or(delay_end, |t| t.min(delay_end));
            match self.arrivals.wait_for_company(self.outstanding(), fire_by) {
                Some(until) if until > now => {
                    return earliest(Some(until), wake).map_or(Decision::Idle, Decision::WaitUntil)
                }
                _ => must_go = true,
            }
        }
        let take = self.choose_prefix(now, &candidates, &prefix_rows, preferred, must_go);
        let entries: Vec<EntryId> = candidates[..take].iter().map(|e| e.id).collect();
        let rows = prefix_rows[take - 1];
        let requests = entries.len();
        for id in &entries {
            self.remove(*id);
        }
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.in_flight.insert(id, InFlight { rows, requests, started: now });
        Decision::Dispatch(Batch { id, entries, rows })
    }

    /// How many of the candidates to send. With a preferred size formed (and no other reason
    /// to fire) the largest one that meets its deadlines; otherwise the prefix with the best
    /// predicted throughput among those that meet their deadlines; without deadlines or a
    /// profile, all of them. The head always goes.
    fn choose_prefix(
        &self,
        now: Instant,
        candidates: &[&Entry],
        prefix_rows: &[usize],
        preferred: Option<usize>,
        other_reason: bool,
    ) -> usize {
        let mut due: Option<Instant> = None;
        let meets: Vec<bool> = candidates
            .iter()
            .zip(prefix_rows)
            .map(|(entry, &rows)| {
                due = earliest(due, entry.deadlines.due);
                match (due, self.profile.predict(rows)) {
                    (Some(due), Some(exec)) => now + exec <= due,
                    _ => true,
                }
            })
            .collect();
        if !other_reason {
            let best_preferred = (0..=preferred.unwrap_or(0)).rev().find(|&i| {
                meets[i] && self.config.preferred_batch_sizes.binary_search(&prefix_rows[i]).is_ok()
            });
            if let Some(i) = best_preferred {
                return i + 1;
            }
        }
        let any_due = candidates.iter().any(|e| e.deadlines.due.is_some());
        if !any_due || self.profile.is_empty() {
            return candidates.len();
        }
        let throughput = |i: usize| {
            let exec = self.profile.predict(prefix_rows[i]).unwrap_or_default().as_secs_f64();
            prefix_rows[i] as f64 / exec.max(1e-9)
        };
        (0..candidates.len())
            .filter(|&i| meets[i])
            .max_by(|&a, &b| throughput(a).total_cmp(&throughput(b)).then(a.cmp(&b)))
            .map_or(1, |i| i + 1)
    }

    /// The last instant at which the candidates, sent together, still meet every due time.
    fn latest_safe_start(&self, candidates: &[&Entry], rows: usize) -> Option<Instant> {
        let due = candidates.iter().filter_map(|e| e.deadlines.due).min()?;
        let exec = self.profile.predict(rows)?;
        Some(due.checked_sub(exec).unwrap_or(due))
    }

    /// The soonest expiry or demotion among queued requests.
    fn next_deadline_event(&self) -> Option<Instant> {
        self.queue
            .iter()
            .flat_map(|(key, e)| [self.last_start(e), e.deadlines.demote_at.filter(|_| !key.late)])
            .flatten()
            .min()
    }

    /// From this instant `entry`, run alone, would typically finish at or after its expiry; it
    /// expires then. Without a profile it is the expiry itself.
    fn last_start(&self, entry: &Entry) -> Option<Instant> {
        let expire = entry.deadlines.expire_at?;
        let exec = self.profile.predict(entry.rows).unwrap_or_default();
        Some(expire.checked_sub(exec).unwrap_or(expire))
    }

    fn expire_and_demote(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut demoted = Vec::new();
        for (key, entry) in &self.queue {
            if self.last_start(entry).is_some_and(|t| t <= now) {
                expired.push(entry.id);
            } else if !key.late && entry.deadlines.demote_at.is_some_and(|t| t <= now) {
                demoted.push(entry.id);
            }
        }
        for id in expired {
            self.remove(id);
            self.expired.push(id);
        }
        for id in demoted {
            if let Some(entry) = self.remove(id) {
                let key = QueueKey { level: entry.priority, late: true, seq: self.next_seq };
                self.next_seq += 1;
                self.keys.insert(id, key);
                self.count(key, entry.rows, true);
                self.queue.insert(key, entry);
            }
        }
    }

    fn remove(&mut self, id: EntryId) -> Option<Entry> {
        let key = self.keys.remove(&id)?;
        let entry = self.queue.remove(&key)?;
        self.count(key, entry.rows, false);
        Some(entry)
    }

    fn count(&mut self, key: QueueKey, rows: usize, add: bool) {
        let slot = self.counts.entry((key.level, key.late)).or_default();
        if add {
            slot.0 += 1;
            slot.1 += rows;
        } else {
            slot.0 -= 1;
            slot.1 -= rows;
        }
    }

    /// How long until the whole queue has run, as far as the profile can tell.
    fn drain_time(&self, now: Instant) -> Duration {
        match self.predict(now, self.queue.values(), (0, None), Estimate::Typical) {
            Some((start, _)) => start.saturating_duration_since(now).max(Duration::from_millis(1)),
            None => DEFAULT_RETRY_AFTER,
        }
    }

    /// When a request of `own` rows and due time would start and complete behind the `ahead`
    /// entries (in queue order), with the instances busy as they are. The entries ahead are
    /// packed as the dispatcher packs them: in order, into one batch while its rows fit and its
    /// predicted end meets the earliest due time in it (one request per batch without
    /// batching); each batch starts when an instance comes free. Groups are ignored. `None`
    /// without a profile.
    fn predict<'a>(
        &self,
        now: Instant,
        ahead: impl Iterator<Item = &'a Entry>,
        own: (usize, Option<Instant>),
        estimate: Estimate,
    ) -> Option<(Instant, Instant)> {
        let exec = |rows: usize| match estimate {
            Estimate::Typical => self.profile.predict(rows.max(1)),
            Estimate::Upper => self.profile.predict_upper(rows.max(1)),
        };
        let mut free = BinaryHeap::with_capacity(self.config.instances.max(1));
        for flight in self.in_flight.values() {
            free.push(Reverse((flight.started + exec(flight.rows)?).max(now)));
        }
        free.extend(std::iter::repeat_n(Reverse(now), self.free_instances()));
        let capacity = self.batch_capacity();
        let (mut rows, mut due): (usize, Option<Instant>) = (0, None);
        for (next_rows, next_due) in ahead.map(|e| (e.rows, e.deadlines.due)).chain(std::iter::once(own)) {
            let Reverse(start) = *free.peek()?;
            let joins = self.config.batching
                && rows + next_rows <= capacity
                && earliest(due, next_due)
                    .is_none_or(|d| exec(rows + next_rows).is_some_and(|t| start + t <= d));
            if rows > 0 && !joins {
                let Reverse(start) = free.pop()?;
                free.push(Reverse(start + exec(rows)?));
                (rows, due) = (0, None);
            }
            rows += next_rows;
            due = earliest(due, next_due);
        }
        let Reverse(start) = free.pop()?;
        Some((start, start + exec(rows)?))
    }

    /// The rows of each batch in flight, for observability.
    pub fn in_flight_rows(&self) -> usize {
        self.in_flight.values().map(|f| f.rows).sum()
    }
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
