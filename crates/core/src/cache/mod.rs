//! The prediction cache: a key over everything that decides a reply, a local byte-bounded tier,
//! single-flight for identical in-flight misses, and an optional shared Redis tier.
//!
//! The server calls [`PredictionCache::get_or_compute`] with the request's [`cache_key`], whether
//! the cache applies ([`cache_enabled`]), and the computation (the scheduler submission) as a
//! future. Reads go local → Redis → compute; a computed reply is written to both tiers. Errors are
//! never cached.
//!
//! **Single-flight.** While a miss for a key is computed, later requests for the same key wait for
//! it ([`CacheOutcome::Coalesced`]). The computation runs on its own task, so it finishes (and the
//! waiters get the reply) even when the request that started it goes away. If it fails, the
//! leader gets the error, and **each waiter retries once with its own computation**, uncoalesced:
//! the failure may belong to the leader alone (its deadline or priority decided a rejection), so a
//! waiter's own request decides its fate. A retried waiter counts as coalesced and as a miss.

mod codec;
mod key;
mod local;
mod redis;
mod single_flight;
mod stats;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

pub use self::key::{cache_key, CacheKey};
pub use self::local::CachedOutputs;
pub use self::redis::{RedisOptions, RedisTls};
pub use self::stats::{CacheStats, LatencySnapshot, LOOKUP_BUCKETS};

use self::local::LocalTier;
use self::redis::RedisTier;
use self::single_flight::{FlightResult, Flights, Role};
use self::stats::Counters;
use crate::{EngineError, InferError, InferRequest, Parameter};

/// The request parameter that switches the cache off for one request: `"cache": false`, or the
/// string `"off"`, `"false"` or `"bypass"`.
pub const CACHE_PARAMETER: &str = "cache";

/// Whether a request uses the cache: the model has it on (`response_cache`) and the request does
/// not bypass it through [`CACHE_PARAMETER`].
pub fn cache_enabled(model_response_cache: bool, request: &InferRequest) -> bool {
    if !model_response_cache {
        return false;
    }
    match request.parameters.get(CACHE_PARAMETER) {
        Some(Parameter::Bool(on)) => *on,
        Some(Parameter::String(s)) => !matches!(s.to_ascii_lowercase().as_str(), "off" | "false" | "bypass"),
        _ => true,
    }
}

/// How the cache is set up (`--cache-bytes`, `--cache-ttl`, `--cache-redis`).
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Limit of the local tier, in approximate bytes of cached outputs.
    pub max_bytes: u64,
    /// Lifetime of an entry in both tiers.
    pub ttl: Duration,
    /// The shared tier, if any.
    pub redis: Option<RedisOptions>,
}

impl Default for CacheOptions {
    /// 256 MiB, 10 minutes, no Redis.
    fn default() -> Self {
        CacheOptions { max_bytes: 256 << 20, ttl: Duration::from_secs(600), redis: None }
    }
}

/// Why the cache could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("--cache-ttl must be more than zero")]
    ZeroTtl,
    #[error("--cache-redis '{url}' is not a usable Redis URL: {reason}")]
    RedisUrl { url: String, reason: String },
    #[error("{path} ({flag}): {problem}")]
    RedisTlsFile { path: std::path::PathBuf, flag: &'static str, problem: String },
    #[error("the Redis cache tier must be created inside a tokio runtime")]
    NoRuntime,
}

/// Where a reply came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    /// The local tier had it.
    Hit,
    /// The shared tier had it.
    RedisHit,
    /// It was computed.
    Miss,
    /// An identical request in flight computed it.
    Coalesced,
    /// The cache was off for this request.
    Bypass,
}

impl CacheOutcome {
    /// A metric label: `hit`, `redis_hit`, `miss`, `coalesced`, `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::RedisHit => "redis_hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Bypass => "bypass",
        }
    }
}

/// The prediction cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct PredictionCache {
    inner: Arc<Inner>,
}

struct Inner {
    local: LocalTier,
    flights: Arc<Flights>,
    redis: Option<RedisTier>,
    counters: Arc<Counters>,
}

impl PredictionCache {
    /// Builds the cache. With a Redis tier it must be called inside a tokio runtime; it does not
    /// connect yet, so a Redis that is down at startup is no error.
    pub fn new(options: CacheOptions) -> Result<Self, CacheError> {
        if options.ttl.is_zero() {
            return Err(CacheError::ZeroTtl);
        }
        let counters = Arc::new(Counters::default());
        let redis =
            options.redis.map(|redis| RedisTier::new(redis, options.ttl, counters.clone())).transpose()?;
        Ok(PredictionCache {
            inner: Arc::new(Inner {
                local: LocalTier::new(options.max_bytes, options.ttl, counters.clone()),
                flights: Arc::new(Flights::default()),
                redis,
                counters,
            }),
        })
    }

    /// Returns the cached reply for `key`, or runs `compute` and caches its result.
    ///
    /// With `enabled` false the cache is bypassed: `compute` runs, nothing is read or stored.
    /// Otherwise `compute` runs only on a miss in both tiers with no identical request in flight,
    /// on its own task (hence `Send + 'static`), and a waiter's `compute` runs only if the leader
    /// fails (see the module docs). The reply shares the cached tensors; its outputs are in the
    /// order of the request that computed it.
    pub async fn get_or_compute<F>(
        &self,
        key: CacheKey,
        enabled: bool,
        compute: F,
    ) -> (Result<CachedOutputs, InferError>, CacheOutcome)
    where
        F: Future<Output = Result<Vec<crate::NamedTensor>, InferError>> + Send + 'static,
    {
        let inner = &self.inner;
        if !enabled {
            Counters::add(&inner.counters.bypassed);
            return (compute.await.map(Arc::new), CacheOutcome::Bypass);
        }

        let start = Instant::now();
        if let Some(hit) = inner.local.get(&key) {
            inner.counters.lookup.observe(start.elapsed());
            Counters::add(&inner.counters.hits);
            return (Ok(hit), CacheOutcome::Hit);
        }
        let role = inner.flights.join(&key, || inner.local.get(&key));
        inner.counters.lookup.observe(start.elapsed());

        match role {
            Role::Hit(hit) => {
                Counters::add(&inner.counters.hits);
                (Ok(hit), CacheOutcome::Hit)
            }
            Role::Waiter(waiter) => {
                Counters::add(&inner.counters.coalesced);
                match waiter.wait().await {
                    FlightResult::Done(value) => (Ok(value), CacheOutcome::Coalesced),
                    FlightResult::Failed => self.compute_alone(key, compute).await,
                }
            }
            Role::Leader(leader) => {
                let generation = inner.local.generation(key.model());
                let (reply_tx, reply_rx) = oneshot::channel();
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    if let Some(redis) = &inner.redis {
                        if let Some(value) = redis.get(&key).await {
                            inner.local.insert_if_current(key, value.clone(), generation);
                            leader.finish(FlightResult::Done(value.clone()));
                            let _ = reply_tx.send((Ok(value), CacheOutcome::RedisHit));
                            return;
                        }
                    }
                    Counters::add(&inner.counters.misses);
                    match compute.await {
                        Ok(outputs) => {
                            let value = Arc::new(outputs);
                            let current =
                                inner.local.insert_if_current(key.clone(), value.clone(), generation);
                            leader.finish(FlightResult::Done(value.clone()));
                            let _ = reply_tx.send((Ok(value.clone()), CacheOutcome::Miss));
                            if let (true, Some(redis)) = (current, &inner.redis) {
                                redis.set(&key, &value).await;
                            }
                        }
                        Err(error) => {
                            leader.finish(FlightResult::Failed);
                            let _ = reply_tx.send((Err(error), CacheOutcome::Miss));
                        }
                    }
                });
                match reply_rx.await {
                    Ok(reply) => reply,
                    // The task panicked; its flight ended as failed when the leader dropped.
                    Err(_) => (
                        Err(InferError::Engine(EngineError::new("the computation panicked"))),
                        CacheOutcome::Miss,
                    ),
                }
            }
        }
    }

    /// A waiter's retry after its leader failed: its own computation, not coalesced.
    async fn compute_alone<F>(
        &self,
        key: CacheKey,
        compute: F,
    ) -> (Result<CachedOutputs, InferError>, CacheOutcome)
    where
        F: Future<Output = Result<Vec<crate::NamedTensor>, InferError>> + Send + 'static,
    {
        let inner = &self.inner;
        if let Some(hit) = inner.local.get(&key) {
            Counters::add(&inner.counters.hits);
            return (Ok(hit), CacheOutcome::Hit);
        }
        let generation = inner.local.generation(key.model());
        Counters::add(&inner.counters.misses);
        let value = match compute.await {
            Ok(outputs) => Arc::new(outputs),
            Err(error) => return (Err(error), CacheOutcome::Miss),
        };
        let current = inner.local.insert_if_current(key.clone(), value.clone(), generation);
        if current && inner.redis.is_some() {
            let (inner, value) = (self.inner.clone(), value.clone());
            tokio::spawn(async move {
                if let Some(redis) = &inner.redis {
                    redis.set(&key, &value).await;
                }
            });
        }
        (Ok(value), CacheOutcome::Miss)
    }

    /// Drops every local entry of `model` (all versions) and forgets its in-flight computations;
    /// call it when a version is unloaded or replaced. Computations already running do not insert
    /// their results. Shared-tier entries are keyed by version and age out by TTL.
    pub fn invalidate_model(&self, model: &str) {
        self.inner.flights.forget_model(model);
        self.inner.local.invalidate_model(model);
    }

    /// Drops every local entry.
    pub fn invalidate_all(&self) {
        self.inner.local.invalidate_all();
    }

    /// A snapshot of the counters, with entry and byte counts brought up to date.
    pub fn stats(&self) -> CacheStats {
        let local = &self.inner.local;
        local.run_pending_tasks();
        self.inner.counters.snapshot(local.entry_count(), local.weighted_size())
    }
}

#[cfg(test)]
mod tests;
