//! The scheduler of one model version: a handle, and a thin task that feeds events and `now`
//! to the [`BatchPlanner`] and carries out its decisions.
//!
//! Callers enqueue through a bounded channel and await a oneshot. The task admits or refuses at
//! once, drops requests whose caller went away, answers expired ones, and hands each batch to
//! the first free instance thread, which assembles it, runs it and answers every caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::batch::{batch_group, batch_rows};
use super::planner::{Batch, BatchPlanner, Decision, Entry, EntryId, RejectReason};
use super::policy::{PlannerConfig, RequestOptions, DEFAULT_MAX_QUEUE_SIZE};
use super::profile::{LatencyProfile, DEFAULT_PROFILE_WINDOW};
use super::stats::{SchedulerObserver, SchedulerStats};
use super::warm_up::warm_up;
use super::worker::{run_batch, BatchJob, Completion, JobPart, Reply, Scheduled};
use crate::pool::spawn_instance_threads;
use crate::{InferError, InferRequest, ModelConfig, ModelInstance, NamedTensor};

/// The retry hint when the scheduler's inbox itself is full.
const INBOX_FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Events the task handles before planning again, so a burst is planned once.
const EVENTS_PER_PLAN: usize = 256;

/// How a scheduler starts.
#[derive(Clone)]
pub struct SchedulerOptions {
    /// The queue bound when the config sets none (Triton's `max_queue_size: 0` is unbounded;
    /// rtserve always bounds its queues).
    pub default_max_queue_size: usize,
    /// Timed warm-up runs per batch size before serving; 0 skips the warm-up. Only a policy
    /// that plans with the latency profile (dynamic batching or an SLO) warms up.
    pub warm_up_rounds: usize,
    /// Recent samples kept per batch size in the latency profile.
    pub profile_window: usize,
    /// Sees every queue wait, batch and rejection (for histograms); optional.
    pub observer: Option<Arc<dyn SchedulerObserver>>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            default_max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            warm_up_rounds: 2,
            profile_window: DEFAULT_PROFILE_WINDOW,
            observer: None,
        }
    }
}

/// Why a scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("model '{model}': {message}")]
    Config { model: String, message: String },
    #[error("model '{0}': no instance thread could start")]
    NoInstances(String),
    #[error("the scheduler must start inside a tokio runtime (spawn_blocking is fine)")]
    NoRuntime,
}

/// A request on its way into the queue.
struct Pending {
    entry: Entry,
    inputs: Vec<NamedTensor>,
    outputs: Vec<String>,
    reply: Reply,
}

/// The scheduler of one model version. Dropping it stops the task; batches already running
/// finish and answer, queued requests are answered with [`InferError::Unavailable`].
pub struct Scheduler {
    model: String,
    policy: PlannerConfig,
    inbox: mpsc::Sender<Pending>,
    cancels: mpsc::UnboundedSender<EntryId>,
    next_id: AtomicU64,
    stats: Arc<Mutex<SchedulerStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the instance threads and the scheduling task for `config`. With
    /// `warm_up_rounds > 0` it first runs a warm-up on one instance to seed the latency
    /// profile, which blocks: call it where model loading runs (`spawn_blocking`). Must be
    /// called inside a tokio runtime.
    pub fn start(
        config: &ModelConfig,
        mut instances: Vec<Box<dyn ModelInstance>>,
        options: &SchedulerOptions,
    ) -> Result<Scheduler, SchedulerError> {
        let model = config.name.clone();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SchedulerError::NoRuntime)?;
        let mut policy =
            PlannerConfig::from_model_config(config, instances.len(), options.default_max_queue_size)
                .map_err(|message| SchedulerError::Config { model: model.clone(), message })?;
        let mut profile = LatencyProfile::new(options.profile_window);
        let plans_with_profile = policy.batching || policy.slo.is_some();
        if let (Some(first), true) = (instances.first_mut(), options.warm_up_rounds > 0 && plans_with_profile)
        {
            match warm_up(first.as_mut(), config, options.warm_up_rounds) {
                Ok(samples) => samples.into_iter().for_each(|(rows, exec)| profile.record(rows, exec)),
                Err(e) => {
                    tracing::warn!(model = %model, "warm-up failed, the latency profile starts empty: {e}")
                }
            }
        }
        let (jobs, job_queue) = flume::bounded::<BatchJob>(instances.len().max(1));
        let threads = spawn_instance_threads(&model, instances, &job_queue, run_batch);
        if threads.is_empty() {
            return Err(SchedulerError::NoInstances(model));
        }
        policy.instances = threads.len();
        let stats = Arc::new(Mutex::new(SchedulerStats {
            instances: threads.len(),
            profile: profile.points(),
            ..SchedulerStats::default()
        }));
        let (inbox, inbox_rx) = mpsc::channel(policy.max_queue_size);
        let (cancels, cancels_rx) = mpsc::unbounded_channel();
        let (done, done_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            model: model.clone(),
            planner: BatchPlanner::new(policy.clone(), profile),
            pending: HashMap::new(),
            inbox: inbox_rx,
            cancels: cancels_rx,
            done,
            done_rx,
            jobs,
            stats: stats.clone(),
            observer: options.observer.clone(),
        };
        runtime.spawn(driver.run());
        Ok(Scheduler { model, policy, inbox, cancels, next_id: AtomicU64::new(0), stats, threads })
    }

    /// Runs one validated request, batched with others as the policy allows. `outputs` names
    /// the outputs to return, in order (already resolved: never empty for "all"). `deadline`
    /// is the caller's own (gRPC deadline, HTTP header): the request never runs after it.
    /// The `priority` and `timeout` request parameters are honoured.
    pub async fn infer(
        &self,
        request: InferRequest,
        outputs: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Scheduled, InferError> {
        let arrival = request.received.unwrap_or_else(Instant::now);
        let options =
            RequestOptions::from_parameters(&request.parameters).map_err(InferError::InvalidInput)?;
        let priority = self.policy.priority_level(options.priority).map_err(InferError::InvalidInput)?;
        let rows = if self.policy.max_batch_size > 0 { batch_rows(&request.inputs) } else { 1 };
        let group = if self.policy.batching { batch_group(&request.inputs) } else { 0 };
        let deadlines = self.policy.deadlines(arrival, options.timeout, deadline);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry { id, rows, group, priority, arrival, deadlines };
        let (reply, answer) = oneshot::channel();
        let pending = Pending { entry, inputs: request.inputs, outputs, reply };
        if let Err(e) = self.inbox.try_send(pending) {
            return Err(match e {
                mpsc::error::TrySendError::Full(_) => {
                    let reason = RejectReason::QueueFull { capacity: self.policy.max_queue_size };
                    lock(&self.stats).reject(&reason);
                    InferError::Rejected {
                        model: self.model.clone(),
                        reason,
                        retry_after: INBOX_FULL_RETRY_AFTER,
                    }
                }
                mpsc::error::TrySendError::Closed(_) => InferError::Unavailable(self.model.clone()),
            });
        }
        let mut guard = CancelOnDrop { id, cancels: &self.cancels, armed: true };
        let result = answer.await;
        guard.armed = false;
        result.unwrap_or_else(|_| Err(InferError::Unavailable(self.model.clone())))
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> SchedulerStats {
        lock(&self.stats).clone()
    }

    /// Instance threads running.
    pub fn instances(&self) -> usize {
        self.threads.len()
    }

    /// The policy in force, as read from the config.
    pub fn policy(&self) -> &PlannerConfig {
        &self.policy
    }
}

/// Tells the task when a caller stops waiting (its future dropped: HTTP client gone, gRPC
/// call cancelled), so the request leaves the queue.
struct CancelOnDrop<'a> {
    id: EntryId,
    cancels: &'a mpsc::UnboundedSender<EntryId>,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cancels.send(self.id);
        }
    }
}

fn lock(stats: &Mutex<SchedulerStats>) -> MutexGuard<'_, SchedulerStats> {
    // Stats stay usable even if a holder panicked: they are counters.
    stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The task's state: the planner plus what the planner does not hold (tensors, replies).
struct Driver {
    model: String,
    planner: BatchPlanner,
    pending: HashMap<EntryId, Pending>,
    inbox: mpsc::Receiver<Pending>,
    cancels: mpsc::UnboundedReceiver<EntryId>,
    done: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    jobs: flume::Sender<BatchJob>,
    stats: Arc<Mutex<SchedulerStats>>,
    observer: Option<Arc<dyn SchedulerObserver>>,
}

enum Event {
    Arrived(Pending),
    Cancelled(EntryId),
    Done(Completion),
}

impl Driver {
    async fn run(mut self) {
        loop {
            let wake = self.plan(Instant::now());
            let timer = async {
                match wake {
                    Some(at) => super::timer::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                biased;
                Some(done) = self.done_rx.recv() => Event::Done(done),
                Some(id) = self.cancels.recv() => Event::Cancelled(id),
                arrived = self.inbox.recv() => match arrived {
                    Some(pending) => Event::Arrived(pending),
                    None => break,
                },
                () = timer => continue,
            };
            self.handle(event);
            for _ in 1..EVENTS_PER_PLAN {
                let Some(event) = self.ready_event() else { break };
                self.handle(event);
            }
        }
        tracing::debug!(model = %self.model, "scheduler stopped");
    }

    fn ready_event(&mut self) -> Option<Event> {
        if let Ok(done) = self.done_rx.try_recv() {
            return Some(Event::Done(done));
        }
        if let Ok(id) = self.cancels.try_recv() {
            return Some(Event::Cancelled(id));
        }
        self.inbox.try_recv().ok().map(Event::Arrived)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Arrived(pending) => self.admit(pending, Instant::now()),
            Event::Cancelled(id) => {
                if self.planner.cancel(id) {
                    self.pending.remove(&id);
                    lock(&self.stats).cancelled += 1;
                }
            }
            Event::Done(done) => self.complete(done),
        }
    }

    fn admit(&mut self, pending: Pending, now: Instant) {
        if pending.reply.is_closed() {
            lock(&self.stats).cancelled += 1;
            return;
        }
        match self.planner.admit(pending.entry.clone(), now) {
            Ok(()) => {
                self.pending.insert(pending.entry.id, pending);
            }
            Err(rejection) => {
                lock(&self.stats).reject(&rejection.reason);
                if let Some(observer) = &self.observer {
                    observer.rejected(&rejection.reason);
                }
                let error = match rejection.reason {
                    RejectReason::TooManyRows { .. } => {
                        InferError::InvalidInput(format!("model '{}': {}", self.model, rejection.reason))
                    }
                    reason => InferError::Rejected {
                        model: self.model.clone(),
                        reason,
                        retry_after: rejection.retry_after,
                    },
                };
                let _ = pending.reply.send(Err(error));
            }
        }
    }

    /// Carries out decisions until the planner waits; returns when to plan again.
    fn plan(&mut self, now: Instant) -> Option<Instant> {
        let wake = loop {
            let decision = self.planner.next_batch(now);
            self.answer_expired(now);
            match decision {
                Decision::Dispatch(batch) => self.dispatch(batch, now),
                Decision::WaitUntil(at) => break Some(at),
                Decision::Idle => break None,
            }
        };
        let mut stats = lock(&self.stats);
        stats.queue_depth = self.planner.queue_len();
        stats.queued_rows = self.planner.queued_rows();
        stats.instances_busy = self.planner.in_flight();
        wake
    }

    fn answer_expired(&mut self, now: Instant) {
        for id in self.planner.take_expired() {
            let Some(pending) = self.pending.remove(&id) else { continue };
            {
                let mut stats = lock(&self.stats);
                stats.expired += 1;
                if pending.entry.deadlines.slo_at.is_some() {
                    stats.slo_missed += 1;
                }
            }
            if let Some(observer) = &self.observer {
                observer.expired();
            }
            let waited = now.saturating_duration_since(pending.entry.arrival);
            let _ =
                pending.reply.send(Err(InferError::DeadlineExceeded { model: self.model.clone(), waited }));
        }
    }

    fn dispatch(&mut self, batch: Batch, now: Instant) {
        let mut parts = Vec::with_capacity(batch.entries.len());
        let mut cancelled = 0;
        for id in &batch.entries {
            let Some(pending) = self.pending.remove(id) else { continue };
            if pending.reply.is_closed() {
                cancelled += 1;
                continue;
            }
            let wait = now.saturating_duration_since(pending.entry.arrival);
            lock(&self.stats).queue_wait.add(wait);
            if let Some(observer) = &self.observer {
                observer.queue_wait(wait);
            }
            parts.push(JobPart {
                rows: pending.entry.rows,
                slo_at: pending.entry.deadlines.slo_at,
                queued: wait,
                inputs: pending.inputs,
                outputs: pending.outputs,
                reply: pending.reply,
            });
        }
        lock(&self.stats).cancelled += cancelled;
        if parts.is_empty() {
            self.planner.complete(batch.id, None);
            return;
        }
        let job = BatchJob { batch: batch.id, parts, done: self.done.clone() };
        // The planner keeps at most one batch per instance in flight, so the channel (one slot
        // per instance) is never full; it fails only when every instance thread is gone.
        if let Err(e) = self.jobs.try_send(job) {
            tracing::error!(model = %self.model, "no instance thread takes batches");
            for part in e.into_inner().parts {
                let _ = part.reply.send(Err(InferError::Unavailable(self.model.clone())));
            }
            self.planner.complete(batch.id, None);
        }
    }

    fn complete(&mut self, done: Completion) {
        self.planner.complete(done.batch, done.measured);
        let mut stats = lock(&self.stats);
        if let Some((rows, exec)) = done.measured {
            stats.batches.entry(rows).or_default().add(exec);
            stats.profile = self.planner.profile().points();
            if let Some(observer) = &self.observer {
                observer.batch(rows, exec);
            }
        }
        stats.completed += done.completed;
        stats.failed += done.failed;
        stats.cancelled += done.cancelled;
        stats.slo_met += done.slo_met;
        stats.slo_missed += done.slo_missed;
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
