//! Reloads under load lose nothing: 16 clients (8 over HTTP, 8 over gRPC) send requests for
//! 30 s while the model file is replaced in place and reloaded 20 times, with the prediction
//! cache on and a real Redis tier behind it. Every request must succeed; every reply must be
//! computed wholly by one file (`y = x + stamp`, the same stamp in every element); and a
//! request sent after a reload has taken effect, and answered before the next file is written,
//! must get the new file's stamp, never a cached reply of the old file (the cache key holds the
//! file's content digest, locally and in Redis: the version number stays 1 throughout). A
//! request answered after the next file was written may rightly get either file's stamp: the
//! server picks the version when it reads the request, and a loaded machine can hold a request
//! that long.
//!
//! Explicit mode replaces the file atomically (rename) and loads it with POST load (HTTP and
//! gRPC in turn); poll mode rewrites the file in place and waits for the poll to pick it up.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtserve_server::proto::RepositoryModelLoadRequest;
use rtserve_testkit::redis::{self, RedisServer};
use serde_json::json;

use crate::client::{grpc, grpc_outputs, grpc_request, infer_path, json_body, post_json, Contents};
use crate::server::{Engine, Server};
use crate::stamp_model::{self, input, stamp_of};
use crate::start_server;
use crate::tensors::Tensor;

const MODEL: &str = "stamp";
const CLIENTS_PER_PROTOCOL: usize = 8;
const RELOADS: usize = 20;
const RUN: Duration = Duration::from_secs(30);
/// Distinct inputs, so that most requests are cache hits.
const INPUTS: usize = 8;
/// The two files' stamps.
const STAMPS: [f32; 2] = [1000.0, 2000.0];
/// The longest a reload may take to be seen (a poll mode change needs two to three polls).
const SWAP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Mode {
    Explicit,
    Poll,
}

mod explicit {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tract() {
        super::reloads_lose_nothing(super::Mode::Explicit, crate::server::Engine::Tract).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn onnxruntime() {
        super::reloads_lose_nothing(super::Mode::Explicit, crate::server::Engine::OnnxRuntime).await
    }
}

mod poll {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tract() {
        super::reloads_lose_nothing(super::Mode::Poll, crate::server::Engine::Tract).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn onnxruntime() {
        super::reloads_lose_nothing(super::Mode::Poll, crate::server::Engine::OnnxRuntime).await
    }
}

/// One request as a client saw it.
struct Outcome {
    sent: Instant,
    answered: Instant,
    /// The stamp of the reply, or why there is none.
    stamp: Result<f32, String>,
    /// The cache outcome HTTP reports in `x-rtserve-cache` (`None` over gRPC).
    cache: Option<String>,
    protocol: &'static str,
}

impl Outcome {
    fn redis_hit(&self) -> bool {
        self.cache.as_deref() == Some("redis_hit")
    }
}

/// The file in force from `swapped` (the reload was seen) until `replaced` (the next file was
/// written).
struct Phase {
    stamp: f32,
    swapped: Instant,
    replaced: Instant,
}

async fn reloads_lose_nothing(mode: Mode, engine: Engine) {
    if !redis::available() {
        return;
    }
    let redis_server = RedisServer::start(redis::free_port());
    let url = redis_server.url();
    let repository = tempfile::tempdir().expect("temporary folder");
    stamp_model::add(repository.path(), MODEL, STAMPS[0]);
    let mut flags = vec!["--cache-redis", url.as_str(), "--cache-redis-timeout-ms", "500"];
    match mode {
        Mode::Explicit => flags.extend(["--model-control-mode", "explicit", "--load-model", MODEL]),
        Mode::Poll => flags.extend(["--model-control-mode", "poll", "--repository-poll-seconds", "0.2"]),
    }
    let Some(server) = start_server(repository.path(), engine, &flags) else { return };
    let server = Arc::new(server);
    let file = repository.path().join(MODEL).join("1/model.onnx");

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..CLIENTS_PER_PROTOCOL {
        clients.push(tokio::spawn(http_client(server.clone(), stop.clone(), client)));
        clients.push(tokio::spawn(grpc_client(server.clone(), stop.clone(), client)));
    }

    let start = Instant::now();
    let mut phases = Vec::new();
    let mut swapped = start;
    let mut stamp = STAMPS[0];
    let period = RUN / (RELOADS as u32 + 1);
    for reload in 1..=RELOADS {
        tokio::time::sleep_until((start + period * reload as u32).into()).await;
        let next = STAMPS[reload % 2];
        let replaced = Instant::now();
        phases.push(Phase { stamp, swapped, replaced });
        match mode {
            Mode::Explicit => {
                replace_atomically(&file, next);
                load(&server, reload).await;
            }
            Mode::Poll => stamp_model::write(&file, next),
        }
        swapped = wait_for_stamp(&server, next).await;
        stamp = next;
    }
    tokio::time::sleep_until((start + RUN).into()).await;
    phases.push(Phase { stamp, swapped, replaced: Instant::now() });
    stop.store(true, Ordering::Relaxed);

    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.extend(client.await.expect("client task"));
    }
    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.stamp.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failures.len(),
        outcomes.len(),
        failures.first()
    );
    let mut checked = 0;
    let mut phases_checked = 0;
    for (index, phase) in phases.iter().enumerate() {
        let inside: Vec<&Outcome> =
            outcomes.iter().filter(|o| o.sent >= phase.swapped && o.answered < phase.replaced).collect();
        for outcome in &inside {
            let got = outcome.stamp.as_ref().ok().copied();
            assert_eq!(
                got,
                Some(phase.stamp),
                "a request sent {:?} after reload {index} was seen, and answered before the next file was \
                 written, got another file's reply ({}, cache {:?}); log:\n{}",
                outcome.sent - phase.swapped,
                outcome.protocol,
                outcome.cache,
                server.log()
            );
        }
        checked += inside.len();
        phases_checked += usize::from(!inside.is_empty());
    }
    assert!(
        outcomes.iter().all(|o| o.stamp.as_ref().is_ok_and(|s| STAMPS.contains(s))),
        "a reply with a stamp of no file"
    );
    assert!(
        phases_checked > phases.len() / 2,
        "only {phases_checked} of {} files had requests sent while they were in force",
        phases.len()
    );
    // After each reload the local tier starts empty, and Redis still holds the replies of the
    // file before last (the same bytes): those are the hits that must be the right file's.
    let redis_hits = outcomes.iter().filter(|o| o.redis_hit()).count();
    assert!(redis_hits > 0, "no reply came from Redis: the test would not see a stale shared tier");
    eprintln!(
        "{mode:?} {engine:?}: {} requests in {:.1?} across {RELOADS} reloads, 0 failed, {checked} \
         checked against the file in force, {redis_hits} HTTP Redis hits",
        outcomes.len(),
        start.elapsed()
    );
    match Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => panic!("a client still holds the server"),
    }
    drop(redis_server);
}

/// Writes the model with `stamp` beside `file` and renames it over it.
fn replace_atomically(file: &Path, stamp: f32) {
    let staging = file.with_extension("onnx.partial");
    stamp_model::write(&staging, stamp);
    std::fs::rename(&staging, file).expect("rename over the model file");
}

/// POST load, over HTTP on odd reloads and gRPC on even ones.
async fn load(server: &Server, reload: usize) {
    if reload % 2 == 1 {
        let reply = post_json(
            &reqwest::Client::new(),
            server,
            &format!("/v2/repository/models/{MODEL}/load"),
            &json!({}),
        )
        .await;
        assert_eq!(reply.status, 200, "load: {}", String::from_utf8_lossy(&reply.body));
    } else {
        let request = RepositoryModelLoadRequest { model_name: MODEL.into(), ..Default::default() };
        grpc(server).await.repository_model_load(request).await.expect("gRPC load");
    }
}

/// Asks, past the cache, until the model answers with `stamp`; returns when it did.
async fn wait_for_stamp(server: &Server, stamp: f32) -> Instant {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + SWAP_TIMEOUT;
    let probe = input(0);
    let mut body = json_body(std::slice::from_ref(&probe));
    body["parameters"] = json!({ "cache": false });
    loop {
        let reply = post_json(&http, server, &infer_path(MODEL), &body).await;
        assert_eq!(reply.status, 200, "probe: {}", String::from_utf8_lossy(&reply.body));
        if stamp_of(&probe, &reply.outputs()[0]) == Ok(stamp) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the file stamped {stamp} was not served in {SWAP_TIMEOUT:?}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_client(server: Arc<Server>, stop: Arc<AtomicBool>, client: usize) -> Vec<Outcome> {
    let http = reqwest::Client::new();
    let mut outcomes = Vec::new();
    let mut i = client;
    while !stop.load(Ordering::Relaxed) {
        let x = input(i % INPUTS);
        let sent = Instant::now();
        let reply = post_json(&http, &server, &infer_path(MODEL), &json_body(std::slice::from_ref(&x))).await;
        let stamp = if reply.status == 200 {
            stamp_of(&x, &reply.outputs()[0])
        } else {
            Err(format!("HTTP {}: {}", reply.status, String::from_utf8_lossy(&reply.body)))
        };
        let cache = reply.headers.get("x-rtserve-cache").and_then(|v| v.to_str().ok()).map(str::to_string);
        outcomes.push(Outcome { sent, answered: Instant::now(), stamp, cache, protocol: "HTTP" });
        i += 1;
    }
    outcomes
}

async fn grpc_client(server: Arc<Server>, stop: Arc<AtomicBool>, client: usize) -> Vec<Outcome> {
    let mut grpc = grpc(&server).await;
    let mut outcomes = Vec::new();
    let mut i = client + 3;
    while !stop.load(Ordering::Relaxed) {
        let x: Tensor = input(i % INPUTS);
        let sent = Instant::now();
        let stamp = match grpc.model_infer(grpc_request(MODEL, std::slice::from_ref(&x), Contents::Raw)).await
        {
            Ok(response) => stamp_of(&x, &grpc_outputs(response.get_ref())[0]),
            Err(status) => Err(format!("gRPC {:?}: {}", status.code(), status.message())),
        };
        outcomes.push(Outcome { sent, answered: Instant::now(), stamp, cache: None, protocol: "gRPC" });
        i += 1;
    }
    outcomes
}
