//! The scheduler of one model version: the [`BatchPlanner`] behind a mutex, fed with events and
//! `now` by whoever has one, and a timer task for the planner's waits.
//!
//! No task sits between a request and an instance. The caller admits its own request (or is
//! refused at once), plans, and hands any batch that is ready to the first free instance
//! thread, then awaits a oneshot; that thread assembles the batch, runs it, records the
//! completion and plans again (a batch that formed while it ran goes out from there), then
//! answers every caller. A lone request on an idle instance therefore costs two thread
//! hand-offs (caller → instance → caller). Only a decision to wait (`max_queue_delay`, a
//! deadline) involves the timer task, which plans again at that instant. A caller that goes
//! away takes its request out of the queue as its future is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{oneshot, Notify};

use super::batch::{batch_group, batch_rows};
use super::planner::{Batch, BatchPlanner, Decision, Entry, EntryId, RejectReason};
use super::policy::{PlannerConfig, RequestOptions, DEFAULT_MAX_QUEUE_SIZE};
use super::profile::{LatencyProfile, DEFAULT_PROFILE_WINDOW};
use super::stats::{SchedulerObserver, SchedulerStats};
use super::warm_up::{prime, warm_up};
use super::worker::{run_batch, BatchJob, Completion, JobPart, Reply, Scheduled};

use crate::pool::spawn_instance_threads;
use crate::{InferError, InferRequest, ModelConfig, ModelInstance, NamedTensor};

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

/// A request in the queue: what the planner does not hold.
struct Pending {
    entry: Entry,
    inputs: Vec<NamedTensor>,
    outputs: Vec<String>,
    reply: Reply,
}

/// The scheduler of one model version. Dropping it stops the timer task and answers queued
/// requests with [`InferError::Unavailable`]; batches already running finish and answer.
pub struct Scheduler {
    model: String,
    policy: PlannerConfig,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    threads: Vec<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the instance threads and the timer task for `config`. With
    /// `warm_up_rounds > 0` it first runs a warm-up on one instance to seed the latency
    /// profile (when batching or an SLO needs one) and one untimed run on every other instance,
    /// which blocks: call it where model loading runs (`spawn_blocking`). Must be called inside
    /// a tokio runtime.
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
        if options.warm_up_rounds > 0 {
            let (first, others) =
                instances.split_first_mut().ok_or_else(|| SchedulerError::NoInstances(model.clone()))?;
            if plans_with_profile {
                match warm_up(first.as_mut(), config, options.warm_up_rounds) {
                    Ok(samples) => samples.into_iter().for_each(|(rows, exec)| profile.record(rows, exec)),
                    Err(e) => {
                        tracing::warn!(model = %model, "warm-up failed, the latency profile starts empty: {e}")
                    }
                }
            }
            // Every instance has run once before its first request.
            let unprimed = if plans_with_profile { others } else { &mut instances[..] };
            for instance in unprimed {
                if let Err(e) = prime(instance.as_mut(), config) {
                    tracing::warn!(model = %model, "warm-up run failed: {e}");
                }
            }
        }
        let (jobs, job_queue) = flume::bounded::<BatchJob>(instances.len().max(1));
        let threads = spawn_instance_threads(&model, instances, &job_queue, run_batch);
        if threads.is_empty() {
            return Err(SchedulerError::NoInstances(model));
        }
        policy.instances = threads.len();
        let stats = SchedulerStats {
            instances: threads.len(),
            profile: profile.points(),
            ..SchedulerStats::default()
        };
        let shared = Arc::new(Shared {
            model: model.clone(),
            state: Mutex::new(State {
                planner: BatchPlanner::new(policy.clone(), profile),
                pending: HashMap::new(),
                jobs: Some(jobs),
                wake_at: None,
                stats,
            }),
            rewake: Notify::new(),
            observer: options.observer.clone(),
        });
        runtime.spawn(timer(shared.clone()));
        Ok(Scheduler { model, policy, shared, next_id: AtomicU64::new(0), threads })
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
        self.shared.admit(Pending { entry, inputs: request.inputs, outputs, reply })?;
        let mut guard = CancelOnDrop { id, shared: &self.shared, armed: true };
        let result = answer.await;
        guard.armed = false;
        result.unwrap_or_else(|_| Err(InferError::Unavailable(self.model.clone())))
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> SchedulerStats {
        self.shared.lock().stats.clone()
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

impl Drop for Scheduler {
    fn drop(&mut self) {
        let pending = {
            let mut state = self.shared.lock();
            // Without a sender the instance threads end once the batches queued for them ran.
            state.jobs = None;
            std::mem::take(&mut state.pending)
        };
        // Their callers see the reply channel close: Unavailable.
        drop(pending);
        self.shared.rewake.notify_one();
    }
}

/// Takes a request out of the queue when its caller stops waiting (its future dropped: HTTP
/// client gone, gRPC call cancelled).
struct CancelOnDrop<'a> {
    id: EntryId,
    shared: &'a Arc<Shared>,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancel(self.id);
        }
    }
}

/// What the callers, the instance threads and the timer task share.
struct Shared {
    model: String,
    state: Mutex<State>,
    /// Tells the timer task that the planner wants to be woken earlier than it was.
    rewake: Notify,
    observer: Option<Arc<dyn SchedulerObserver>>,
}

/// The planner and what it does not hold (tensors, replies), under one lock.
struct State {
    planner: BatchPlanner,
    pending: HashMap<EntryId, Pending>,
    /// Where batches go; `None` once the scheduler is dropped.
    jobs: Option<flume::Sender<BatchJob>>,
    /// When the planner wants to plan again, if it waits.
    wake_at: Option<Instant>,
    stats: SchedulerStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays usable even if a holder panicked (engines never run under this lock;
        // a panic here would be a bug of the planner's, not a client's).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a request and dispatches what is ready, or refuses the request at once.
    fn admit(self: &Arc<Self>, pending: Pending) -> Result<(), InferError> {
        let now = Instant::now();
        let mut state = self.lock();
        if let Err(rejection) = state.planner.admit(pending.entry.clone(), now) {
            state.stats.reject(&rejection.reason);
            drop(state);
            if let Some(observer) = &self.observer {
                observer.rejected(&rejection.reason);
            }
            return Err(match rejection.reason {
                RejectReason::TooManyRows { .. } => {
                    InferError::InvalidInput(format!("model '{}': {}", self.model, rejection.reason))
                }
                reason => InferError::Rejected {
                    model: self.model.clone(),
                    reason,
                    retry_after: rejection.retry_after,
                },
            });
        }
        state.pending.insert(pending.entry.id, pending);
        self.plan(&mut state, now);
        Ok(())
    }

    /// Takes a request out of the queue (one that already left it is in a batch: nothing to
    /// do), and plans: the queue it leaves may be all that is outstanding now.
    fn cancel(self: &Arc<Self>, id: EntryId) {
        let mut state = self.lock();
        if state.planner.cancel(id) {
            state.pending.remove(&id);
            state.stats.cancelled += 1;
            self.plan(&mut state, Instant::now());
        }
    }

    /// Records a batch an instance finished, and dispatches what that made ready.
    fn complete(self: &Arc<Self>, done: Completion) {
        let mut state = self.lock();
        state.planner.complete(done.batch, done.measured);
        if let Some((rows, exec)) = done.measured {
            state.stats.batches.entry(rows).or_default().add(exec);
            state.stats.profile = state.planner.profile().points();
            if let Some(observer) = &self.observer {
                observer.batch(rows, exec);
            }
        }
        let stats = &mut state.stats;
        stats.completed += done.completed;
        stats.failed += done.failed;
        stats.cancelled += done.cancelled;
        stats.slo_met += done.slo_met;
        stats.slo_missed += done.slo_missed;
        self.plan(&mut state, Instant::now());
    }

    /// Carries out the planner's decisions until it waits or idles; wakes the timer task when
    /// the planner now wants to plan earlier than before.
    fn plan(self: &Arc<Self>, state: &mut State, now: Instant) {
        let wake = loop {
            let decision = state.planner.next_batch(now);
            self.answer_expired(state, now);
            match decision {
                Decision::Dispatch(batch) => self.dispatch(state, batch, now),
                Decision::WaitUntil(at) => break Some(at),
                Decision::Idle => break None,
            }
        };
        state.stats.queue_depth = state.planner.queue_len();
        state.stats.queued_rows = state.planner.queued_rows();
        state.stats.instances_busy = state.planner.in_flight();
        let earlier = wake.is_some_and(|at| state.wake_at.is_none_or(|before| at < before));
        state.wake_at = wake;
        if earlier {
            self.rewake.notify_one();
        }
    }

    fn answer_expired(&self, state: &mut State, now: Instant) {
        for id in state.planner.take_expired() {
            let Some(pending) = state.pending.remove(&id) else { continue };
            state.stats.expired += 1;
            if pending.entry.deadlines.slo_at.is_some() {
                state.stats.slo_missed += 1;
            }
            if let Some(observer) = &self.observer {
                observer.expired();
            }
            let waited = now.saturating_duration_since(pending.entry.arrival);
            let _ =
                pending.reply.send(Err(InferError::DeadlineExceeded { model: self.model.clone(), waited }));
        }
    }

    fn dispatch(self: &Arc<Self>, state: &mut State, batch: Batch, now: Instant) {
        let mut parts = Vec::with_capacity(batch.entries.len());
        for id in &batch.entries {
            let Some(pending) = state.pending.remove(id) else { continue };
            if pending.reply.is_closed() {
                state.stats.cancelled += 1;
                continue;
            }
            let wait = now.saturating_duration_since(pending.entry.arrival);
            state.stats.queue_wait.add(wait);
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
        if parts.is_empty() {
            state.planner.complete(batch.id, None);
            return;
        }
        let shared = self.clone();
        let done = Box::new(move |completion| shared.complete(completion));
        let job = BatchJob { batch: batch.id, parts, done };
        // The planner keeps at most one batch per instance in flight, so the channel (one slot
        // per instance) is never full; it fails only when every instance thread is gone.
        let sent = match &state.jobs {
            Some(jobs) => jobs.try_send(job).map_err(|e| e.into_inner()),
            None => Err(job),
        };
        if let Err(job) = sent {
            tracing::error!(model = %self.model, "no instance thread takes batches");
            for part in job.parts {
                let _ = part.reply.send(Err(InferError::Unavailable(self.model.clone())));
            }
            state.planner.complete(batch.id, None);
        }
    }
}

/// Plans again at the instant the planner asked for (a `max_queue_delay` that ran out, a
/// deadline), and waits for the next such instant; ends when the scheduler is dropped.
async fn timer(shared: Arc<Shared>) {
    loop {
        let wake_at = {
            let state = shared.lock();
            if state.jobs.is_none() {
                break;
            }
            state.wake_at
        };
        // A notification sent since the lock was released is kept as a permit: never lost.
        let rewake = shared.rewake.notified();
        match wake_at {
            Some(at) => {
                tokio::select! {
                    () = super::timer::sleep_until(at) => {
                        let mut state = shared.lock();
                        if state.wake_at.is_some_and(|at| at <= Instant::now()) {
                            shared.plan(&mut state, Instant::now());
                        }
                    }
                    () = rewake => {}
                }
            }
            None => rewake.await,
        }
    }
    tracing::debug!(model = %shared.model, "scheduler stopped");
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
