//! The shared tier: Redis behind the local tier, so that replicas share replies.
//!
//! Every key has a TTL (`SET .. PX`), every call a short timeout, and no failure reaches the
//! request: a failed or slow call counts as an error, logs a warning at most every
//! [`WARN_INTERVAL`], and marks the tier down for [`RedisOptions::down_for`] so that requests do not
//! each pay the timeout while Redis is away. Connections come from a small pool of
//! [`ConnectionManager`]s (each one multiplexed), which reconnect by themselves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::codec::{decode_tensors, encode_tensors};
use super::key::CacheKey;
use super::local::CachedOutputs;
use super::stats::Counters;
use super::CacheError;

/// At most one warning about Redis failures per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(5);

/// How to reach the shared tier.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://HOST:PORT[/DB]` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Limit on each call (GET or SET); past it the call counts as failed.
    pub timeout: Duration,
    /// Prefix of every key, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// Connections in the pool (each one multiplexed).
    pub pool_size: usize,
    /// After a failure, calls are skipped for this long.
    pub down_for: Duration,
    /// Certificates for a `rediss://` URL.
    pub tls: RedisTls,
}

/// Certificates for `rediss://` (TLS through rustls), read from PEM files when the tier is set
/// up.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// CA certificates the server's certificate must chain to (`--cache-redis-ca`); `None`: the
    /// system's trusted roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (`--cache-redis-cert`, `--cache-redis-key`), for a
    /// Redis that asks for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl RedisTls {
    fn is_default(&self) -> bool {
        self.ca.is_none() && self.client_cert.is_none()
    }

    /// The files' contents, as the redis crate takes them; a file that cannot be read or holds
    /// no PEM certificate (or key) is an error naming it.
    fn certificates(&self) -> Result<redis::TlsCertificates, CacheError> {
        let root_cert = self
            .ca
            .as_deref()
            .map(|path| read_pem(path, "--cache-redis-ca", Pem::Certificate))
            .transpose()?;
        let client_tls = match &self.client_cert {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, "--cache-redis-cert", Pem::Certificate)?,
                client_key: read_pem(key, "--cache-redis-key", Pem::PrivateKey)?,
            }),
            None => None,
        };
        Ok(redis::TlsCertificates { client_tls, root_cert })
    }
}

/// Reads a PEM file that must hold a `what` (a certificate or a private key).
fn read_pem(path: &Path, flag: &'static str, what: Pem) -> Result<Vec<u8>, CacheError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let problem = |problem: String| CacheError::RedisTlsFile { path: path.to_owned(), flag, problem };
    let pem = std::fs::read(path).map_err(|e| problem(format!("cannot read it: {e}")))?;
    let holds = match what {
        Pem::Certificate => matches!(CertificateDer::pem_slice_iter(&pem).next(), Some(Ok(_))),
        Pem::PrivateKey => PrivateKeyDer::from_pem_slice(&pem).is_ok(),
    };
    if !holds {
        return Err(problem(format!("it holds no PEM {}", what.name())));
    }
    Ok(pem)
}

#[derive(Debug, Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

impl Pem {
    fn name(self) -> &'static str {
        match self {
            Pem::Certificate => "certificate",
            Pem::PrivateKey => "private key",
        }
    }
}

impl RedisOptions {
    /// Defaults for everything but the URL: 50 ms timeout, prefix `rtserve:`, 4 connections,
    /// 1 s down time after a failure.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            timeout: Duration::from_millis(50),
            key_prefix: "rtserve:".to_string(),
            pool_size: 4,
            down_for: Duration::from_secs(1),
            tls: RedisTls::default(),
        }
    }
}

pub(crate) struct RedisTier {
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    options: RedisOptions,
    ttl_ms: u64,
    counters: Arc<Counters>,
    epoch: Instant,
    /// Milliseconds since `epoch` until which calls are skipped.
    down_until_ms: AtomicU64,
    /// Milliseconds since `epoch` before which no warning is logged.
    next_warning_ms: AtomicU64,
    /// Failures since the last warning.
    unreported: AtomicU64,
}

impl RedisTier {
    /// Sets up the pool without connecting: a Redis that is down at startup is no error, it is
    /// reached once it comes up. Needs a tokio runtime.
    pub(crate) fn new(
        options: RedisOptions,
        ttl: Duration,
        counters: Arc<Counters>,
    ) -> Result<Self, CacheError> {
        let url_error = |reason: String| CacheError::RedisUrl { url: options.url.clone(), reason };
        let client = if options.tls.is_default() {
            redis::Client::open(options.url.as_str())
        } else {
            redis::Client::build_with_tls(options.url.as_str(), options.tls.certificates()?)
        }
        .map_err(|e| url_error(e.to_string()))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CacheError::NoRuntime);
        }
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(Duration::from_secs(1).max(options.timeout)));
        let pool = (0..options.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| url_error(e.to_string()))?;
        Ok(RedisTier {
            pool,
            next: AtomicUsize::new(0),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            options,
            counters,
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            next_warning_ms: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        })
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}:{:032x}", self.options.key_prefix, key.model(), key.digest())
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        self.pool[i].clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether calls are being skipped; counts the skip.
    fn skip(&self) -> bool {
        if self.now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            Counters::add(&self.counters.redis_skipped);
            return true;
        }
        false
    }

    /// Records a failure: counts it, marks the tier down when Redis itself failed, and logs at most
    /// one warning per [`WARN_INTERVAL`].
    fn failed(&self, what: &str, error: &dyn std::fmt::Display, mark_down: bool) {
        Counters::add(&self.counters.redis_errors);
        let now = self.now_ms();
        if mark_down {
            let down_for = u64::try_from(self.options.down_for.as_millis()).unwrap_or(u64::MAX);
            self.down_until_ms.store(now.saturating_add(down_for), Ordering::Relaxed);
        }
        let suppressed = self.unreported.fetch_add(1, Ordering::Relaxed);
        let due = self.next_warning_ms.load(Ordering::Relaxed);
        let next = now.saturating_add(u64::try_from(WARN_INTERVAL.as_millis()).unwrap_or(u64::MAX));
        if now >= due
            && self.next_warning_ms.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.unreported.store(0, Ordering::Relaxed);
            tracing::warn!(
                %error,
                suppressed,
                "shared cache (Redis) {what} failed; serving without it"
            );
        }
    }

    /// Looks a key up. `None` on a miss and on any failure.
    pub(crate) async fn get(&self, key: &CacheKey) -> Option<CachedOutputs> {
        if self.skip() {
            return None;
        }
        let start = Instant::now();
        let mut connection = self.connection();
        let command = redis::cmd("GET").arg(self.redis_key(key)).clone();
        let reply = tokio::time::timeout(
            self.options.timeout,
            command.query_async::<Option<Vec<u8>>>(&mut connection),
        )
        .await;
        self.counters.redis_lookup.observe(start.elapsed());
        match reply {
            Ok(Ok(Some(value))) => match decode_tensors(Bytes::from(value)) {
                Ok(tensors) => {
                    Counters::add(&self.counters.redis_hits);
                    Some(Arc::new(tensors))
                }
                Err(error) => {
                    self.failed("read", &error, false);
                    None
                }
            },
            Ok(Ok(None)) => {
                Counters::add(&self.counters.redis_misses);
                None
            }
            Ok(Err(error)) => {
                self.failed("GET", &error, true);
                None
            }
            Err(_) => {
                self.failed("GET", &"timed out", true);
                None
            }
        }
    }

    /// Stores a value with the cache's TTL. Failures are counted and logged, never returned.
    pub(crate) async fn set(&self, key: &CacheKey, value: &CachedOutputs) {
        if self.skip() {
            return;
        }
        let mut connection = self.connection();
        let command = redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(encode_tensors(value))
            .arg("PX")
            .arg(self.ttl_ms)
            .clone();
        let reply =
            tokio::time::timeout(self.options.timeout, command.query_async::<()>(&mut connection)).await;
        match reply {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.failed("SET", &error, true),
            Err(_) => self.failed("SET", &"timed out", true),
        }
    }
}
