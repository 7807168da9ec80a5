//! Property tests of the batch planner: random configs, profiles and arrival sequences on a
//! fake clock, checked against the invariants of the policy after every step.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::planner::{BatchPlanner, Decision, Entry, EntryId, RejectReason};
use super::policy::{Deadlines, PlannerConfig};
use super::profile::LatencyProfile;
use crate::TimeoutAction;

#[derive(Debug, Clone)]
enum Op {
    Arrive { rows: usize, group: u64, level: u64, timeout_us: Option<u64> },
    Advance { us: u64 },
    Complete,
    Cancel(prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1..=4usize, 0..2u64, 0..=3u64, proptest::option::of(0..20_000u64))
            .prop_map(|(rows, group, level, timeout_us)| Op::Arrive { rows, group, level, timeout_us }),
        3 => (0..4_000u64).prop_map(|us| Op::Advance { us }),
        2 => Just(Op::Complete),
        1 => any::<prop::sample::Index>().prop_map(Op::Cancel),
    ]
}

fn config() -> impl Strategy<Value = PlannerConfig> {
    (
        (1..=8usize, any::<bool>(), proptest::collection::vec(1..=8usize, 0..3), 0..3_000u64),
        (1..=3usize, 0..=3u32, any::<bool>(), proptest::option::of(1..10_000u64)),
        (4..=24usize, proptest::option::of(2..30u64), any::<bool>()),
    )
        .prop_map(|(batch, queue, limits)| {
            let (max_batch_size, batching, preferred, delay_us) = batch;
            let (instances, levels, delay_action, default_timeout_us) = queue;
            let (max_queue_size, slo_ms, allow_timeout_override) = limits;
            let mut preferred: Vec<usize> = preferred.into_iter().filter(|&p| p <= max_batch_size).collect();
            preferred.sort_unstable();
            preferred.dedup();
            PlannerConfig {
                instances,
                batching,
                max_batch_size,
                preferred_batch_sizes: preferred,
                max_queue_delay: Duration::from_micros(delay_us),
                priority_levels: levels,
                default_priority_level: levels.div_ceil(2),
                timeout_action: if delay_action { TimeoutAction::Delay } else { TimeoutAction::Reject },
                default_timeout: default_timeout_us.map(Duration::from_micros),
                allow_timeout_override,
                max_queue_size,
                slo: slo_ms.map(Duration::from_millis),
            }
        })
}

/// A fixed plus per-row cost, or no profile at all.
fn profile() -> impl Strategy<Value = LatencyProfile> {
    proptest::option::of((0..2_000u64, 0..1_000u64)).prop_map(|costs| {
        let mut profile = LatencyProfile::default();
        if let Some((fixed, per_row)) = costs {
            for rows in [1, 2, 4, 8] {
                profile.record(rows, Duration::from_micros(fixed + per_row * rows as u64));
            }
        }
        profile
    })
}

/// The test's own record of a queued request.
#[derive(Debug, Clone)]
struct Queued {
    entry: Entry,
    seq: u64,
}

impl Queued {
    /// Priority class at `now`: level, then punctual before late (DELAY timeout passed).
    fn class(&self, now: Instant) -> (u32, bool) {
        (self.entry.priority, self.entry.deadlines.demote_at.is_some_and(|t| t <= now))
    }
}

struct Run {
    config: PlannerConfig,
    planner: BatchPlanner,
    now: Instant,
    queued: BTreeMap<EntryId, Queued>,
    in_flight: VecDeque<u64>,
    next_id: EntryId,
    finished: BTreeMap<EntryId, &'static str>,
}

impl Run {
    fn capacity(&self) -> usize {
        self.config.max_batch_size.max(1)
    }

    fn finish(&mut self, id: EntryId, how: &'static str) -> Result<Queued, TestCaseError> {
        prop_assert!(self.finished.insert(id, how).is_none(), "entry {id} finished twice");
        self.queued.remove(&id).ok_or_else(|| TestCaseError::fail(format!("entry {id} was not queued")))
    }

    /// Calls the planner until it waits, checking every decision; returns when to call again.
    fn pump(&mut self) -> Result<Option<Instant>, TestCaseError> {
        loop {
            let decision = self.planner.next_batch(self.now);
            for id in self.planner.take_expired() {
                let queued = self.finish(id, "expired")?;
                // Expired once it could no longer finish in time: its typical run from now ends
                // at or after its expiry.
                let expiry = queued.entry.deadlines.expire_at;
                let exec = self.planner.profile().predict(queued.entry.rows).unwrap_or_default();
                prop_assert!(expiry.is_some_and(|t| t <= self.now + exec), "{id} expired early");
            }
            match decision {
                Decision::Dispatch(batch) => {
                    prop_assert!(
                        self.planner.in_flight() <= self.config.instances,
                        "more batches than instances"
                    );
                    self.check_batch(&batch.entries, batch.rows)?;
                    self.in_flight.push_back(batch.id);
                    prop_assert_eq!(self.planner.queue_len(), self.queued.len());
                }
                Decision::WaitUntil(at) => {
                    prop_assert_eq!(self.planner.queue_len(), self.queued.len());
                    prop_assert!(at > self.now, "asked to wait for the past");
                    self.check_wait(Some(at))?;
                    return Ok(Some(at));
                }
                Decision::Idle => {
                    prop_assert_eq!(self.planner.queue_len(), self.queued.len());
                    self.check_wait(None)?;
                    return Ok(None);
                }
            }
        }
    }

    fn check_batch(&mut self, ids: &[EntryId], rows: usize) -> Result<(), TestCaseError> {
        let now = self.now;
        prop_assert!(!ids.is_empty());
        let head = self.queued.values().map(|q| q.class(now)).min().expect("queue not empty");
        let first = self.queued.get(&ids[0]).cloned().expect("dispatched entries are queued");
        prop_assert_eq!(first.class(now), head, "the batch starts with the highest priority");
        if !head.1 {
            let oldest = self.queued.values().filter(|q| q.class(now) == head).map(|q| q.seq).min();
            prop_assert_eq!(Some(first.seq), oldest, "FIFO within a priority level");
        }
        let batch: Vec<Queued> =
            ids.iter().map(|id| self.finish(*id, "dispatched")).collect::<Result<_, _>>()?;
        let total: usize = batch.iter().map(|q| q.entry.rows).sum();
        prop_assert_eq!(total, rows);
        if self.config.batching {
            prop_assert!(rows <= self.capacity(), "batch of {} rows over max {}", rows, self.capacity());
        } else {
            prop_assert_eq!(batch.len(), 1, "without batching a request runs alone");
        }
        for q in &batch {
            prop_assert_eq!(q.entry.group, first.entry.group, "one shape per batch");
            prop_assert!(
                q.entry.deadlines.expire_at.is_none_or(|t| now < t),
                "entry {} dispatched at or after its deadline",
                q.entry.id
            );
            // Nothing of the same group that should have gone before it is left behind.
            for left in self.queued.values().filter(|r| r.entry.group == q.entry.group) {
                let (lc, qc) = (left.class(now), q.class(now));
                prop_assert!(
                    lc > qc || (lc == qc && (lc.1 || left.seq > q.seq)),
                    "{} skipped",
                    left.entry.id
                );
            }
        }
        let oldest = batch.iter().map(|q| q.entry.arrival).min().expect("not empty");
        let early = now < oldest + self.config.max_queue_delay;
        if early && self.config.batching {
            let blocked = self
                .queued
                .values()
                .any(|r| r.entry.group == first.entry.group && rows + r.entry.rows > self.capacity());
            // A due time in the batch, or behind it in the same group (FIFO: an urgent request
            // can only go once those ahead of it have), may fire the batch early.
            let urgent = batch
                .iter()
                .chain(self.queued.values())
                .any(|q| q.entry.group == first.entry.group && q.entry.deadlines.due.is_some());
            // No more requests expected before the batch must go (judged as the planner does,
            // from the oldest request of the group, which can only bring that instant sooner).
            let group_oldest = batch
                .iter()
                .chain(self.queued.values().filter(|q| q.entry.group == first.entry.group))
                .map(|q| q.entry.arrival)
                .min()
                .expect("not empty");
            let alone = self
                .planner
                .arrivals()
                .wait_for_company(self.planner.outstanding(), group_oldest + self.config.max_queue_delay)
                .is_none_or(|until| until <= now);
            let reason = rows == self.capacity()
                || self.config.preferred_batch_sizes.contains(&rows)
                || urgent
                || blocked
                || alone;
            prop_assert!(reason, "batch of {} rows sent before max_queue_delay for no reason", rows);
        }
        Ok(())
    }

    /// A free instance never leaves the head waiting past `max_queue_delay`.
    fn check_wait(&self, at: Option<Instant>) -> Result<(), TestCaseError> {
        if self.planner.free_instances() == 0 || self.queued.is_empty() {
            return Ok(());
        }
        let head = self.queued.values().map(|q| q.class(self.now)).min().expect("not empty");
        let latest = self
            .queued
            .values()
            .filter(|q| q.class(self.now) == head)
            .map(|q| q.entry.arrival)
            .max()
            .expect("not empty");
        prop_assert!(
            at.is_some_and(|t| t <= latest + self.config.max_queue_delay),
            "the head waits too long"
        );
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Arrive { rows, group, level, timeout_us } => {
                let priority =
                    self.config.priority_level(Some(level.min(u64::from(self.config.priority_levels))));
                let priority = priority.map_err(TestCaseError::fail)?;
                let deadlines: Deadlines =
                    self.config.deadlines(self.now, timeout_us.map(Duration::from_micros), None);
                let entry = Entry { id: self.next_id, rows, group, priority, arrival: self.now, deadlines };
                self.next_id += 1;
                match self.planner.admit(entry.clone(), self.now) {
                    Ok(()) => {
                        prop_assert!(self.queued.len() < self.config.max_queue_size);
                        let seq = entry.id;
                        self.queued.insert(entry.id, Queued { entry, seq });
                    }
                    Err(rejection) => match rejection.reason {
                        RejectReason::QueueFull { .. } => {
                            prop_assert!(self.queued.len() >= self.config.max_queue_size)
                        }
                        RejectReason::TooManyRows { .. } => prop_assert!(rows > self.config.max_batch_size),
                        RejectReason::PredictedMiss { .. } | RejectReason::DeadlinePassed => {
                            prop_assert!(entry.deadlines.due.is_some())
                        }
                    },
                }
            }
            Op::Advance { us } => {
                let target = self.now + Duration::from_micros(us);
                while let Some(at) = self.pump()? {
                    if at > target {
                        break;
                    }
                    self.now = at;
                }
                self.now = target;
            }
            Op::Complete => {
                if let Some(batch) = self.in_flight.pop_front() {
                    self.planner.complete(batch, None);
                }
            }
            Op::Cancel(index) => {
                if !self.queued.is_empty() {
                    let id = *self.queued.keys().nth(index.index(self.queued.len())).expect("in range");
                    prop_assert!(self.planner.cancel(id));
                    self.finish(id, "cancelled")?;
                }
            }
        }
        self.pump()?;
        prop_assert!(self.planner.queue_len() <= self.config.max_queue_size);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn planner_keeps_its_invariants(
        config in config(),
        profile in profile(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let t0 = Instant::now();
        let mut run = Run {
            planner: BatchPlanner::new(config.clone(), profile),
            config,
            now: t0,
            queued: BTreeMap::new(),
            in_flight: VecDeque::new(),
            next_id: 0,
            finished: BTreeMap::new(),
        };
        for op in ops {
            run.step(op)?;
        }
        // Drain: complete everything and let time pass until the queue is empty.
        for _ in 0..10_000 {
            if run.queued.is_empty() && run.in_flight.is_empty() {
                break;
            }
            run.step(Op::Complete)?;
            run.step(Op::Advance { us: 1_000 })?;
        }
        prop_assert!(run.queued.is_empty(), "requests left behind: {:?}", run.queued.keys().collect::<Vec<_>>());
        if run.config.timeout_action == TimeoutAction::Delay {
            prop_assert!(!run.finished.values().any(|&how| how == "expired"), "DELAY without caller deadlines never expires");
        }
    }
}
