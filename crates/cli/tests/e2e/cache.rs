//! The prediction cache through the real server: repeats are hits with the same bytes whatever
//! the encoding, identical concurrent requests run the model once, bypass and models without the
//! cache never hit, reloading drops a model's entries, and a shared Redis tier serves a second
//! replica and survives Redis going away.

use std::time::Duration;

use futures::future::join_all;
use rtserve_testkit::redis::{self, RedisServer};
use serde_json::{json, Value};

use crate::client::{
    binary_body, grpc, grpc_outputs, grpc_request, infer_path, json_body, model_stats_when, post_binary,
    post_json, Contents, HttpReply,
};
use crate::server::{Engine, Server};
use crate::tensors::{assert_bitwise_equal, assert_matches_reference, case, mlp_rows, Tensor};
use crate::{add_model, mlp_config, start_server};

crate::engine_tests!(repeats_hit_and_identical_requests_run_once);

pub const CACHED: &str = "response_cache { enable: true }";

/// A binary-tensor request to `model`; `parameters` go in the top-level `parameters`.
async fn binary(
    http: &reqwest::Client,
    server: &Server,
    model: &str,
    inputs: &[Tensor],
    parameters: Value,
) -> HttpReply {
    let (body, header) = binary_body(
        inputs,
        json!({ "parameters": parameters, "outputs": [{ "name": "output", "parameters": { "binary_data": true } }] }),
    );
    post_binary(http, server, &infer_path(model), body, header).await
}

/// Where the reply came from, by the `x-rtserve-cache` header; `None` without one.
fn cache_header(reply: &HttpReply) -> Option<String> {
    assert_eq!(reply.status, 200, "infer failed: {}", String::from_utf8_lossy(&reply.body));
    reply.headers.get("x-rtserve-cache").map(|v| v.to_str().expect("ascii").to_string())
}

/// Asserts that `model` has had `executions` engine calls and `hits` cache hits (waiting for
/// counters that trail the replies).
async fn assert_counts(http: &reqwest::Client, server: &Server, model: &str, executions: u64, hits: u64) {
    model_stats_when(http, server, model, |stats| {
        let hit_count = stats["inference_stats"]["cache_hit"]["count"].as_u64();
        (stats["execution_count"].as_u64(), hit_count) == (Some(executions), Some(hits))
    })
    .await;
}

async fn repeats_hit_and_identical_requests_run_once(engine: Engine) {
    let repository = tempfile::tempdir().expect("temporary folder");
    add_model(repository.path(), "mlp", "cached", &mlp_config("cached", CACHED));
    add_model(repository.path(), "mlp", "uncached", &mlp_config("uncached", ""));
    let Some(server) = start_server(repository.path(), engine, &[]) else { return };
    let http = reqwest::Client::new();
    let reference = case("mlp");
    let none = json!({});

    // A repeat is a hit with the same bytes; the answer is the model's (NumPy reference).
    let first = binary(&http, &server, "cached", &reference.inputs, none.clone()).await;
    assert_eq!(cache_header(&first).as_deref(), Some("miss"));
    let again = binary(&http, &server, "cached", &reference.inputs, none.clone()).await;
    assert_eq!(cache_header(&again).as_deref(), Some("hit"));
    assert_eq!(first.body, again.body, "a hit returns the same bytes");
    assert!(first.headers.contains_key("x-rtserve-compute-us"), "a miss ran the model");
    assert!(!again.headers.contains_key("x-rtserve-compute-us"), "a hit did not");
    let mut named = reference.clone();
    named.model = "cached".into();
    assert_matches_reference(&named, &again.outputs(), "a cache hit");

    // The same tensors as JSON, and over gRPC, have the same key.
    let as_json = post_json(&http, &server, &infer_path("cached"), &json_body(&reference.inputs)).await;
    assert_eq!(cache_header(&as_json).as_deref(), Some("hit"));
    assert_bitwise_equal(&as_json.outputs(), &again.outputs(), "JSON hit against binary hit");
    let mut grpc = grpc(&server).await;
    let reply =
        grpc.model_infer(grpc_request("cached", &reference.inputs, Contents::Typed)).await.expect("gRPC");
    assert_bitwise_equal(&grpc_outputs(reply.get_ref()), &again.outputs(), "gRPC hit against HTTP hit");
    assert_counts(&http, &server, "cached", 1, 3).await;

    // 32 identical requests at once: one runs the model, the others wait for it.
    let inputs = mlp_rows(3).remove(2);
    let replies = join_all((0..32).map(|_| binary(&http, &server, "cached", &inputs, none.clone()))).await;
    let sources: Vec<String> = replies.iter().map(|r| cache_header(r).expect("a cache header")).collect();
    assert_eq!(sources.iter().filter(|s| *s == "miss").count(), 1, "{sources:?}");
    assert!(sources.iter().all(|s| ["miss", "coalesced", "hit"].contains(&s.as_str())), "{sources:?}");
    assert!(replies.iter().all(|r| r.body == replies[0].body), "every caller gets the same reply");
    assert_counts(&http, &server, "cached", 2, 34).await;

    // The bypass parameter runs the model and never hits.
    for _ in 0..2 {
        let bypass = binary(&http, &server, "cached", &inputs, json!({ "cache": false })).await;
        assert_eq!(cache_header(&bypass).as_deref(), Some("bypass"));
    }
    assert_counts(&http, &server, "cached", 4, 34).await;

    // A model without the cache runs every request.
    for _ in 0..3 {
        let reply = binary(&http, &server, "uncached", &reference.inputs, none.clone()).await;
        assert_eq!(cache_header(&reply), None);
    }
    assert_counts(&http, &server, "uncached", 3, 0).await;

    // Reloading a model drops its entries.
    let load = post_json(&http, &server, "/v2/repository/models/cached/load", &json!({})).await;
    assert_eq!(load.status, 200);
    let after = binary(&http, &server, "cached", &reference.inputs, none).await;
    assert_eq!(cache_header(&after).as_deref(), Some("miss"));
    server.stop().await;
}

/// Two replicas sharing one Redis: a miss on one is a hit on the other. Killing Redis during a
/// run of requests fails none of them; once it is back, sharing resumes.
#[tokio::test]
async fn replicas_share_redis_and_survive_it_going_away() {
    if !redis::available() {
        return;
    }
    let port = redis::free_port();
    let redis_server = RedisServer::start(port);
    let repository = tempfile::tempdir().expect("temporary folder");
    add_model(repository.path(), "mlp", "cached", &mlp_config("cached", CACHED));
    let url = redis_server.url();
    let flags = ["--cache-redis", url.as_str(), "--cache-redis-timeout-ms", "100"];
    let Some(a) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let Some(b) = start_server(repository.path(), Engine::Tract, &flags) else { return };
    let http = reqwest::Client::new();
    let rows = mlp_rows(64);

    assert!(
        shares(&http, &a, &b, &rows[..8]).await,
        "a miss on replica A should become a Redis hit on replica B"
    );

    redis_server.stop();
    for (i, inputs) in rows[8..40].iter().enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        let reply = binary(&http, server, "cached", inputs, json!({})).await;
        assert!(cache_header(&reply).is_some(), "served while Redis is down");
    }

    let redis_server = RedisServer::start(port);
    assert!(shares(&http, &a, &b, &rows[40..]).await, "sharing did not resume after Redis came back");
    drop(redis_server);
    a.stop().await;
    b.stop().await;
}

/// Whether, for one of `tries` (fresh inputs each), a request computed on A is then answered
/// by B from Redis. A writes Redis just after answering, so B asks a moment later; an input that
/// B computed itself is spent, and the next one is tried.
pub async fn shares(http: &reqwest::Client, a: &Server, b: &Server, tries: &[Vec<Tensor>]) -> bool {
    for inputs in tries {
        let on_a = binary(http, a, "cached", inputs, json!({})).await;
        assert_eq!(cache_header(&on_a).as_deref(), Some("miss"), "a fresh input is a miss on A");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let on_b = binary(http, b, "cached", inputs, json!({})).await;
        if cache_header(&on_b).as_deref() == Some("redis_hit") {
            assert_eq!(on_a.body, on_b.body, "B's Redis hit holds A's reply");
            return true;
        }
    }
    false
}
