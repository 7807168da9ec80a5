//! Tests of the cache façade: hits, bypass, single-flight, failures, invalidation, and the shared
//! tier against a real `redis-server`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::{NamedTensor, Tensor};
use rtserve_testkit::redis::{self as test_server, RedisServer};

fn key_for(model: &str, x: f32) -> CacheKey {
    let input = NamedTensor { name: "x".into(), tensor: Tensor::from_f32(vec![1], &[x]).expect("valid") };
    cache_key(model, "1", &[input], &["y".to_string()], &[])
}

fn outputs(x: f32) -> Vec<NamedTensor> {
    vec![NamedTensor { name: "y".into(), tensor: Tensor::from_f32(vec![2], &[x, 2.0 * x]).expect("valid") }]
}

fn local_cache() -> PredictionCache {
    PredictionCache::new(CacheOptions::default()).expect("cache")
}

/// A computation that counts its runs and returns `outputs(x)`.
fn counted(
    calls: &Arc<AtomicUsize>,
    x: f32,
) -> impl Future<Output = Result<Vec<NamedTensor>, InferError>> + Send + 'static {
    let calls = calls.clone();
    async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(outputs(x))
    }
}

fn failing(
    calls: &Arc<AtomicUsize>,
) -> impl Future<Output = Result<Vec<NamedTensor>, InferError>> + Send + 'static {
    let calls = calls.clone();
    async move {
        calls.fetch_add(1, Ordering::SeqCst);
        Err(InferError::Engine(EngineError::new("boom")))
    }
}

/// Polls until `done` holds; fails after 20 s. Waits for an event, asserts nothing about time.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn repeated_request_is_a_hit_with_the_same_tensors() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (first, outcome) = cache.get_or_compute(key_for("m", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    let (second, outcome) = cache.get_or_compute(key_for("m", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Hit);
    let (first, second) = (first.expect("ok"), second.expect("ok"));
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(*second, outputs(1.0));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 1, 1));
    assert!(stats.bytes > 0);
    assert_eq!(stats.lookup.count, 2);
}

#[tokio::test]
async fn bypass_never_hits_and_never_stores() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let (reply, outcome) = cache.get_or_compute(key_for("m", 1.0), false, counted(&calls, 1.0)).await;
        assert_eq!(outcome, CacheOutcome::Bypass);
        assert_eq!(*reply.expect("ok"), outputs(1.0));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let (_, outcome) = cache.get_or_compute(key_for("m", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(cache.stats().bypassed, 3);
}

#[tokio::test]
async fn errors_are_not_cached() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (reply, _) = cache.get_or_compute(key_for("m", 1.0), true, failing(&calls)).await;
    assert!(matches!(reply, Err(InferError::Engine(_))));
    let (reply, outcome) = cache.get_or_compute(key_for("m", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    assert!(reply.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().entries, 1);
}

/// What `get_or_compute` returns.
type Reply = (Result<CachedOutputs, InferError>, CacheOutcome);

/// Spawns a request whose computation waits for the returned sender before answering.
fn held_leader(
    cache: &PredictionCache,
    calls: &Arc<AtomicUsize>,
    answer: Result<f32, &'static str>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Reply>) {
    let (release, released) = oneshot::channel::<()>();
    let calls = calls.clone();
    let compute = async move {
        calls.fetch_add(1, Ordering::SeqCst);
        let _ = released.await;
        match answer {
            Ok(x) => Ok(outputs(x)),
            Err(message) => Err(InferError::Engine(EngineError::new(message))),
        }
    };
    let cache = cache.clone();
    let handle = tokio::spawn(async move { cache.get_or_compute(key_for("m", 1.0), true, compute).await });
    (release, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_run_the_model_once() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, leader) = held_leader(&cache, &calls, Ok(1.0));
    wait_until("the leader's computation", || calls.load(Ordering::SeqCst) == 1).await;
    let waiters: Vec<_> = (0..31)
        .map(|_| {
            let (cache, compute) = (cache.clone(), counted(&calls, 1.0));
            tokio::spawn(async move { cache.get_or_compute(key_for("m", 1.0), true, compute).await })
        })
        .collect();
    wait_until("31 coalesced requests", || cache.stats().coalesced == 31).await;
    release.send(()).expect("leader waits");

    let (leader_reply, outcome) = leader.await.expect("joins");
    assert_eq!(outcome, CacheOutcome::Miss);
    let leader_reply = leader_reply.expect("ok");
    for waiter in waiters {
        let (reply, outcome) = waiter.await.expect("joins");
        assert_eq!(outcome, CacheOutcome::Coalesced);
        assert!(Arc::ptr_eq(&reply.expect("ok"), &leader_reply));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.coalesced, stats.hits), (1, 31, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_retry_once_with_their_own_computation_when_the_leader_fails() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, leader) = held_leader(&cache, &calls, Err("leader's deadline passed"));
    wait_until("the leader's computation", || calls.load(Ordering::SeqCst) == 1).await;
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let (cache, compute) = (cache.clone(), counted(&calls, 1.0));
            tokio::spawn(async move {
                // Let the retries race: each either computes or finds another's result.
                tokio::time::sleep(Duration::from_millis(i)).await;
                cache.get_or_compute(key_for("m", 1.0), true, compute).await
            })
        })
        .collect();
    wait_until("4 coalesced requests", || cache.stats().coalesced == 4).await;
    release.send(()).expect("leader waits");

    let (reply, _) = leader.await.expect("joins");
    assert!(matches!(reply, Err(InferError::Engine(e)) if e.0 == "leader's deadline passed"));
    for waiter in waiters {
        let (reply, outcome) = waiter.await.expect("joins");
        assert_eq!(*reply.expect("the waiter's own computation succeeds"), outputs(1.0));
        assert!(matches!(outcome, CacheOutcome::Miss | CacheOutcome::Hit), "{outcome:?}");
    }
    let runs = calls.load(Ordering::SeqCst);
    assert!((2..=5).contains(&runs), "{runs} runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_client_went_away_still_answers_its_waiters() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, leader) = held_leader(&cache, &calls, Ok(3.0));
    wait_until("the leader's computation", || calls.load(Ordering::SeqCst) == 1).await;
    let waiter = {
        let (cache, compute) = (cache.clone(), counted(&calls, 3.0));
        tokio::spawn(async move { cache.get_or_compute(key_for("m", 1.0), true, compute).await })
    };
    wait_until("the waiter", || cache.stats().coalesced == 1).await;
    // The leader's client hangs up: its request future is dropped.
    leader.abort();
    assert!(leader.await.is_err_and(|e| e.is_cancelled()));
    release.send(()).expect("the computation still runs");

    let (reply, outcome) = waiter.await.expect("joins");
    assert_eq!(outcome, CacheOutcome::Coalesced);
    assert_eq!(*reply.expect("ok"), outputs(3.0));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let (_, outcome) = cache.get_or_compute(key_for("m", 1.0), true, counted(&calls, 3.0)).await;
    assert_eq!(outcome, CacheOutcome::Hit);
}

#[tokio::test]
async fn a_panicking_computation_fails_the_leader_without_caching() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let panicking = async { panic!("engine bug") };
    let (reply, _) = cache.get_or_compute(key_for("m", 1.0), true, panicking).await;
    assert!(matches!(reply, Err(InferError::Engine(_))));
    let (reply, outcome) = cache.get_or_compute(key_for("m", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    assert!(reply.is_ok());
}

#[tokio::test]
async fn invalidating_a_model_forces_recompute_for_it_only() {
    let cache = local_cache();
    let calls = Arc::new(AtomicUsize::new(0));
    cache.get_or_compute(key_for("a", 1.0), true, counted(&calls, 1.0)).await.0.expect("ok");
    cache.get_or_compute(key_for("b", 1.0), true, counted(&calls, 1.0)).await.0.expect("ok");
    cache.invalidate_model("a");
    let (_, outcome) = cache.get_or_compute(key_for("a", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    let (_, outcome) = cache.get_or_compute(key_for("b", 1.0), true, counted(&calls, 1.0)).await;
    assert_eq!(outcome, CacheOutcome::Hit);
}

#[test]
fn per_request_bypass_parameter_and_model_switch() {
    let mut request = InferRequest::default();
    assert!(cache_enabled(true, &request));
    assert!(!cache_enabled(false, &request));
    request.parameters.insert(CACHE_PARAMETER.into(), Parameter::Bool(false));
    assert!(!cache_enabled(true, &request));
    request.parameters.insert(CACHE_PARAMETER.into(), Parameter::String("Bypass".into()));
    assert!(!cache_enabled(true, &request));
    request.parameters.insert(CACHE_PARAMETER.into(), Parameter::Bool(true));
    assert!(cache_enabled(true, &request));
    assert!(!cache_enabled(false, &request));
}

#[test]
fn rejects_a_zero_ttl_and_a_bad_redis_url() {
    let options = CacheOptions { ttl: Duration::ZERO, ..CacheOptions::default() };
    assert!(matches!(PredictionCache::new(options), Err(CacheError::ZeroTtl)));
    let options =
        CacheOptions { redis: Some(RedisOptions::new("http://not-redis")), ..CacheOptions::default() };
    assert!(matches!(PredictionCache::new(options), Err(CacheError::RedisUrl { .. })));
}

// ---- shared tier ----

fn redis_cache(url: &str, prefix: &str) -> PredictionCache {
    let mut redis = RedisOptions::new(url);
    redis.key_prefix = prefix.to_string();
    redis.down_for = Duration::from_millis(100);
    // Generous for a loaded test machine; the default is 50 ms.
    redis.timeout = Duration::from_millis(500);
    PredictionCache::new(CacheOptions { redis: Some(redis), ..CacheOptions::default() }).expect("cache")
}

/// Whether the shared tier holds `key` (written after the reply, so tests wait for it).
async fn redis_has(url: &str, prefix: &str, key: &CacheKey) -> bool {
    let Ok(client) = ::redis::Client::open(url) else { return false };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let name = format!("{prefix}{}:{:032x}", key.model(), key.digest());
    ::redis::cmd("EXISTS").arg(name).query_async::<bool>(&mut connection).await.unwrap_or(false)
}

async fn wait_for_redis(url: &str, prefix: &str, key: &CacheKey) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis_has(url, prefix, key).await {
        assert!(Instant::now() < deadline, "the shared tier never got {key}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn redis_down_at_startup_serves_from_compute_and_counts_errors() {
    // Nothing listens on this port.
    let url = format!("redis://127.0.0.1:{}/", test_server::free_port());
    let cache = redis_cache(&url, "down:");
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..3 {
        let (reply, outcome) = cache.get_or_compute(key_for("m", i as f32), true, counted(&calls, 1.0)).await;
        assert_eq!(outcome, CacheOutcome::Miss);
        assert!(reply.is_ok());
    }
    let stats = cache.stats();
    assert!(stats.redis_errors >= 1, "{stats:?}");
    assert_eq!(stats.redis_hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_replica_is_a_hit_on_another() {
    if !test_server::available() {
        return;
    }
    let server = RedisServer::start(test_server::free_port());
    let (a, b) = (redis_cache(&server.url(), "share:"), redis_cache(&server.url(), "share:"));
    let calls = Arc::new(AtomicUsize::new(0));
    let key = key_for("m", 5.0);
    let (first, outcome) = a.get_or_compute(key.clone(), true, counted(&calls, 5.0)).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    wait_for_redis(&server.url(), "share:", &key).await;

    let (second, outcome) = b.get_or_compute(key.clone(), true, counted(&calls, 5.0)).await;
    assert_eq!(outcome, CacheOutcome::RedisHit);
    assert_eq!(*second.expect("ok"), *first.expect("ok"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The shared hit filled b's local tier.
    let (_, outcome) = b.get_or_compute(key, true, counted(&calls, 5.0)).await;
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(b.stats().redis_hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_fails_no_request_and_restarting_it_restores_sharing() {
    if !test_server::available() {
        return;
    }
    let port = test_server::free_port();
    let server = RedisServer::start(port);
    let url = server.url();
    let (a, b) = (redis_cache(&url, "restart:"), redis_cache(&url, "restart:"));
    let calls = Arc::new(AtomicUsize::new(0));
    let key = key_for("m", 1.0);
    a.get_or_compute(key.clone(), true, counted(&calls, 1.0)).await.0.expect("ok");
    wait_for_redis(&url, "restart:", &key).await;
    assert_eq!(b.get_or_compute(key, true, counted(&calls, 1.0)).await.1, CacheOutcome::RedisHit);

    server.stop();
    for i in 0..20 {
        let (reply, outcome) =
            b.get_or_compute(key_for("m", 100.0 + i as f32), true, counted(&calls, 1.0)).await;
        assert!(reply.is_ok(), "request {i} failed while Redis was down");
        assert_eq!(outcome, CacheOutcome::Miss);
    }
    assert!(b.stats().redis_errors >= 1, "{:?}", b.stats());

    let server = RedisServer::start(port);
    // Sharing resumes once the pools reconnect: keep writing new keys through a until one lands,
    // then b must hit it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        assert!(Instant::now() < deadline, "sharing did not resume after Redis restarted");
        i += 1;
        let key = key_for("m", 1000.0 + i as f32);
        let (reply, _) = a.get_or_compute(key.clone(), true, counted(&calls, 1.0)).await;
        assert!(reply.is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
        if redis_has(&server.url(), "restart:", &key).await {
            let (reply, outcome) = b.get_or_compute(key, true, counted(&calls, 1.0)).await;
            assert!(reply.is_ok());
            if outcome == CacheOutcome::RedisHit {
                break;
            }
        }
    }
}
