//! The scheduling policy of one model, from its config, and what one request asks of it
//! (`priority`, `timeout`, a caller deadline), resolved into a level and deadlines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::slo::slo_from_parameters;
use crate::{ModelConfig, Parameter, TimeoutAction};

/// The queue bound used when a config sets none (Triton's `max_queue_size: 0`).
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;

/// What the planner obeys, validated from a [`ModelConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct PlannerConfig {
    /// Batches that may run at once: one per instance.
    pub instances: usize,
    /// Whether requests share batches (`dynamic_batching` set and `max_batch_size > 0`).
    /// Without it every request runs alone, at once.
    pub batching: bool,
    /// Rows per batch at most; with batching off, the rows one request may carry (0: the model
    /// has no batch dimension).
    pub max_batch_size: usize,
    /// Row counts worth firing at once, smallest first.
    pub preferred_batch_sizes: Vec<usize>,
    /// How long the oldest request may wait for a batch to fill.
    pub max_queue_delay: Duration,
    /// Priority levels `1..=priority_levels`, 1 the highest; 0 means priorities are ignored.
    pub priority_levels: u32,
    pub default_priority_level: u32,
    pub timeout_action: TimeoutAction,
    pub default_timeout: Option<Duration>,
    pub allow_timeout_override: bool,
    /// Requests that may wait at once.
    pub max_queue_size: usize,
    /// The model's latency objective: each request is due this long after it arrives.
    pub slo: Option<Duration>,
}

impl Default for PlannerConfig {
    /// One instance, no batching, no limits but the default queue bound.
    fn default() -> Self {
        PlannerConfig {
            instances: 1,
            batching: false,
            max_batch_size: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_delay: Duration::ZERO,
            priority_levels: 0,
            default_priority_level: 0,
            timeout_action: TimeoutAction::Reject,
            default_timeout: None,
            allow_timeout_override: true,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            slo: None,
        }
    }
}

impl PlannerConfig {
    /// The policy of `config` served by `instances` instances. A queue bound of 0 (unbounded in
    /// Triton) becomes `default_max_queue_size`. The error names the field at fault.
    pub fn from_model_config(
        config: &ModelConfig,
        instances: usize,
        default_max_queue_size: usize,
    ) -> Result<Self, String> {
        let slo = slo_from_parameters(&config.parameters)?;
        let mut planner = PlannerConfig {
            instances: instances.max(1),
            max_batch_size: config.max_batch_size as usize,
            max_queue_size: default_max_queue_size.max(1),
            slo,
            ..PlannerConfig::default()
        };
        let Some(batching) = &config.dynamic_batching else {
            return Ok(planner);
        };
        planner.batching = config.max_batch_size > 0;
        planner.max_queue_delay = Duration::from_micros(batching.max_queue_delay_microseconds);
        let mut preferred: Vec<usize> = batching.preferred_batch_size.iter().map(|&s| s as usize).collect();
        preferred.sort_unstable();
        preferred.dedup();
        if let Some(&bad) = preferred.iter().find(|&&s| s == 0 || s > planner.max_batch_size) {
            return Err(format!(
                "dynamic_batching.preferred_batch_size {bad} must be between 1 and max_batch_size {}",
                config.max_batch_size
            ));
        }
        planner.preferred_batch_sizes = preferred;
        planner.priority_levels = batching.priority_levels;
        planner.default_priority_level = batching.default_priority_level;
        if batching.priority_levels > 0
            && !(1..=batching.priority_levels).contains(&batching.default_priority_level)
        {
            return Err(format!(
                "dynamic_batching.default_priority_level is {} but must be between 1 and priority_levels {}",
                batching.default_priority_level, batching.priority_levels
            ));
        }
        if let Some(queue) = &batching.default_queue_policy {
            planner.timeout_action = queue.timeout_action;
            planner.default_timeout = (queue.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(queue.default_timeout_microseconds));
            planner.allow_timeout_override = queue.allow_timeout_override;
            if queue.max_queue_size > 0 {
                planner.max_queue_size = queue.max_queue_size as usize;
            }
        }
        Ok(planner)
    }

    /// The queue level of a request: its `priority` parameter (0 or absent: the default level).
    pub fn priority_level(&self, requested: Option<u64>) -> Result<u32, String> {
        if self.priority_levels == 0 {
            return Ok(0);
        }
        match requested {
            None | Some(0) => Ok(self.default_priority_level),
            Some(p) if p <= u64::from(self.priority_levels) => Ok(p as u32),
            Some(p) => Err(format!(
                "parameter 'priority' is {p} but the model has priority levels 1 (highest) to {}",
                self.priority_levels
            )),
        }
    }

    /// The deadlines of a request arriving at `arrival` with an optional `timeout` parameter and
    /// an optional caller deadline (gRPC deadline, HTTP header).
    ///
    /// A request timeout may only shorten the default one, and only where the queue policy
    /// allows overrides (as in Triton). Without a queue policy, a request timeout applies.
    pub fn deadlines(
        &self,
        arrival: Instant,
        timeout: Option<Duration>,
        caller: Option<Instant>,
    ) -> Deadlines {
        let timeout = match (self.default_timeout, timeout.filter(|t| !t.is_zero())) {
            (default, Some(asked)) if self.allow_timeout_override => {
                Some(default.map_or(asked, |d| d.min(asked)))
            }
            (default, _) => default,
        };
        let timeout_at = timeout.map(|t| arrival + t);
        let slo_at = self.slo.map(|s| arrival + s);
        let (expire_at, demote_at) = match self.timeout_action {
            TimeoutAction::Reject => (earliest(caller, earliest(timeout_at, slo_at)), None),
            TimeoutAction::Delay => (caller, timeout_at),
        };
        Deadlines { expire_at, demote_at, due: earliest(expire_at, slo_at), slo_at }
    }
}

/// When a queued request must go, or yields its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadlines {
    /// At or after this instant the request is never dispatched: it is answered with an error.
    /// The caller's deadline, and under REJECT also the timeout and the SLO.
    pub expire_at: Option<Instant>,
    /// Under DELAY, when its timeout passes: from then on it waits behind every request of its
    /// level (and higher ones) whose timeout has not passed.
    pub demote_at: Option<Instant>,
    /// When its answer should be complete: the batcher fires early and sizes batches to meet it,
    /// and admission rejects a request predicted to miss it.
    pub due: Option<Instant>,
    /// Arrival plus the model's SLO; answers after it count as SLO misses.
    pub slo_at: Option<Instant>,
}

/// The sooner of two optional instants.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The scheduling parameters of one request (KServe v2 schedule-policy extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestOptions {
    /// `priority`: 1 is the highest level; 0 or absent means the model's default.
    pub priority: Option<u64>,
    /// `timeout` in microseconds; 0 or absent means the model's default.
    pub timeout: Option<Duration>,
}

impl RequestOptions {
    /// Reads `priority` and `timeout` from request parameters; the error names the parameter.
    pub fn from_parameters(parameters: &BTreeMap<String, Parameter>) -> Result<Self, String> {
        let priority = whole_number(parameters, "priority")?;
        let timeout = whole_number(parameters, "timeout")?.map(Duration::from_micros);
        Ok(RequestOptions { priority, timeout })
    }
}

fn whole_number(parameters: &BTreeMap<String, Parameter>, name: &str) -> Result<Option<u64>, String> {
    let Some(value) = parameters.get(name) else {
        return Ok(None);
    };
    let number = match value {
        Parameter::Int(n) => u64::try_from(*n).ok(),
        Parameter::Double(x) if x.fract() == 0.0 && *x >= 0.0 && *x < u64::MAX as f64 => Some(*x as u64),
        Parameter::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    number.map(Some).ok_or_else(|| format!("parameter '{name}' is {value:?} but must be a whole number >= 0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DynamicBatching, QueuePolicy};

    fn model(batching: Option<DynamicBatching>) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            dynamic_batching: batching,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn reads_triton_knobs() {
        let batching = DynamicBatching {
            preferred_batch_size: vec![8, 4, 4],
            max_queue_delay_microseconds: 500,
            priority_levels: 3,
            default_priority_level: 2,
            default_queue_policy: Some(QueuePolicy {
                timeout_action: TimeoutAction::Delay,
                default_timeout_microseconds: 1000,
                allow_timeout_override: true,
                max_queue_size: 0,
            }),
            ..DynamicBatching::default()
        };
        let mut config = model(Some(batching));
        config.parameters.insert("slo".into(), "voice".into());
        let planner = PlannerConfig::from_model_config(&config, 2, 64).expect("valid");
        assert!(planner.batching);
        assert_eq!(planner.instances, 2);
        assert_eq!(planner.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(planner.max_queue_delay, Duration::from_micros(500));
        assert_eq!(planner.timeout_action, TimeoutAction::Delay);
        assert_eq!(planner.default_timeout, Some(Duration::from_millis(1)));
        assert_eq!(planner.max_queue_size, 64, "0 takes the default bound");
        assert_eq!(planner.slo, Some(Duration::from_millis(100)));
        assert_eq!(planner.priority_level(None), Ok(2));
        assert_eq!(planner.priority_level(Some(0)), Ok(2));
        assert_eq!(planner.priority_level(Some(1)), Ok(1));
        assert!(planner
            .priority_level(Some(4))
            .expect_err("out of range")
            .contains("levels 1 (highest) to 3"));
    }

    #[test]
    fn no_dynamic_batching_means_one_request_at_a_time() {
        let planner = PlannerConfig::from_model_config(&model(None), 1, 16).expect("valid");
        assert!(!planner.batching);
        assert_eq!(planner.max_queue_size, 16);
        assert_eq!(planner.priority_level(Some(7)), Ok(0), "priorities ignored without levels");
    }

    #[test]
    fn rejects_inconsistent_knobs() {
        let preferred = DynamicBatching { preferred_batch_size: vec![16], ..DynamicBatching::default() };
        let err = PlannerConfig::from_model_config(&model(Some(preferred)), 1, 16).expect_err("too big");
        assert!(err.contains("preferred_batch_size 16 must be between 1 and max_batch_size 8"), "{err}");
        let levels =
            DynamicBatching { priority_levels: 2, default_priority_level: 0, ..DynamicBatching::default() };
        let err = PlannerConfig::from_model_config(&model(Some(levels)), 1, 16).expect_err("no default");
        assert!(err.contains("default_priority_level is 0"), "{err}");
    }

    #[test]
    fn resolves_deadlines() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let reject = PlannerConfig {
            default_timeout: Some(ms(10)),
            allow_timeout_override: true,
            slo: Some(ms(50)),
            ..PlannerConfig::default()
        };
        // A request timeout shortens the default but never lengthens it.
        assert_eq!(reject.deadlines(t0, Some(ms(4)), None).expire_at, Some(t0 + ms(4)));
        assert_eq!(reject.deadlines(t0, Some(ms(40)), None).expire_at, Some(t0 + ms(10)));
        let caller = reject.deadlines(t0, None, Some(t0 + ms(2)));
        assert_eq!(
            (caller.expire_at, caller.due, caller.slo_at),
            (Some(t0 + ms(2)), Some(t0 + ms(2)), Some(t0 + ms(50)))
        );
        let fixed = PlannerConfig { allow_timeout_override: false, ..reject.clone() };
        assert_eq!(fixed.deadlines(t0, Some(ms(4)), None).expire_at, Some(t0 + ms(10)));
        let delay = PlannerConfig { timeout_action: TimeoutAction::Delay, ..reject };
        let d = delay.deadlines(t0, None, None);
        assert_eq!((d.expire_at, d.demote_at, d.due), (None, Some(t0 + ms(10)), Some(t0 + ms(50))));
    }

    #[test]
    fn reads_request_parameters() {
        let params = |pairs: Vec<(&str, Parameter)>| -> BTreeMap<String, Parameter> {
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
        };
        let ok = RequestOptions::from_parameters(&params(vec![
            ("priority", Parameter::Int(2)),
            ("timeout", Parameter::String("1500".into())),
        ]));
        assert_eq!(ok, Ok(RequestOptions { priority: Some(2), timeout: Some(Duration::from_micros(1500)) }));
        assert_eq!(
            RequestOptions::from_parameters(&params(vec![("timeout", Parameter::Double(100.0))])),
            Ok(RequestOptions { priority: None, timeout: Some(Duration::from_micros(100)) })
        );
        let err = RequestOptions::from_parameters(&params(vec![("priority", Parameter::Int(-1))]))
            .expect_err("negative");
        assert!(err.contains("parameter 'priority' is Int(-1)"), "{err}");
        assert!(RequestOptions::from_parameters(&params(vec![("timeout", Parameter::Bool(true))])).is_err());
    }
}
