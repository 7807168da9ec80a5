//! The scheduler: admission control, a bounded priority queue and an SLO-aware dynamic batcher
//! between the front ends and a model's instances (one scheduler per model version).
//!
//! - [`BatchPlanner`] (`planner`): the policy as a pure state struct, driven with `now`.
//! - `arrivals`: the measured traffic that tells the planner whether company is coming.
//! - [`PlannerConfig`] (`policy`): Triton's `dynamic_batching` knobs, the SLO, and a
//!   request's `priority` / `timeout` resolved into a level and [`Deadlines`].
//! - [`LatencyProfile`] (`profile`): execution time per batch size, robust and online.
//! - `slo`: `slo_ms` / `slo` presets from the model's parameters.
//! - `batch`: concatenating requests along dim 0 and splitting outputs back.
//! - [`Scheduler`] (`task`): the handle, the planner under a lock and the timer task; `worker`: the
//!   instance-thread side.
//! - [`SchedulerStats`] (`stats`): what the metrics endpoint exports.
//! - `timer`: sub-millisecond waits (tokio's timer ticks in milliseconds).

mod arrivals;
mod batch;
mod planner;
mod policy;
mod profile;
mod slo;
mod stats;
mod task;
mod timer;
mod warm_up;
mod worker;

#[cfg(test)]
mod planner_props;
#[cfg(test)]
mod slo_props;

pub use batch::{batch_group, batch_rows, split_rows};
pub use planner::{Batch, BatchId, BatchPlanner, Decision, Entry, EntryId, RejectReason, Rejection};
pub use policy::{earliest, Deadlines, PlannerConfig, RequestOptions, DEFAULT_MAX_QUEUE_SIZE};
pub use profile::{LatencyProfile, ProfilePoint, DEFAULT_PROFILE_WINDOW};
pub use slo::{slo_from_parameters, slo_preset, SLO_MS_PARAMETER, SLO_PARAMETER, SLO_PRESETS};
pub use stats::{DurationTotal, SchedulerObserver, SchedulerStats};
pub use task::{Scheduler, SchedulerError, SchedulerOptions};
pub use warm_up::{one_row_time, warm_up, warm_up_sizes, zero_inputs};
pub use worker::Scheduled;
