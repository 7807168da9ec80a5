//! TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`) with certificates made at run time:
//! HTTPS and gRPC over TLS answer as in plaintext, plaintext and untrusting clients are refused,
//! refused handshakes are counted, mutual TLS refuses clients without a certificate from its CA, SIGHUP serves a rotated
//! certificate (and keeps the old one when the new files are bad), bad TLS files are start-up
//! errors, and a rediss:// cache tier with a private CA and a client certificate is shared by two
//! replicas.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rtserve_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use rtserve_server::proto::ServerLiveRequest;
use rtserve_testkit::redis::{self, RedisServer, RedisTls};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::cache::{shares, CACHED};
use crate::client::{grpc_infer, http_infer_json, metric_value, Contents, GrpcClient};
use crate::server::{Engine, Server};
use crate::tensors::{all_cases, assert_matches_reference, mlp_rows};
use crate::{add_model, mlp_config, start_error, start_server, temp_repository};

/// A certificate authority that signs certificates for this test.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("self-signed CA").pem();
        Authority { params, key, pem }
    }

    /// A certificate for localhost and 127.0.0.1 and its key, both PEM.
    fn issue(&self) -> (String, String) {
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("leaf parameters");
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let certificate = params.signed_by(&key, &issuer).expect("signed leaf");
        (certificate.pem(), key.serialize_pem())
    }
}

/// The PEM files of one test: a server certificate and key, and the CA that signed it.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: tempfile::tempdir().expect("temporary folder") }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write PEM file");
        path
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().expect("UTF-8 path").to_string()
    }
}

/// `--tls-cert` and `--tls-key` for the certificate written to `files` as server.pem/server.key.
fn server_flags(files: &Files) -> Vec<String> {
    vec!["--tls-cert".into(), files.path("server.pem"), "--tls-key".into(), files.path("server.key")]
}

fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// An HTTPS client that trusts only `ca` and presents `identity` (certificate and key PEM) when
/// given one.
fn https_client(ca: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA PEM"));
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity PEM"));
    }
    builder.build().expect("HTTPS client")
}

/// A gRPC client over TLS that trusts only `ca`, presenting `identity` when given one.
async fn grpc_tls(
    server: &Server,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<GrpcClient, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel =
        Channel::from_shared(server.grpc_endpoint()).expect("endpoint").tls_config(tls)?.connect().await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

/// Whether a gRPC client trusting `ca` (with `identity`) gets an answer to ServerLive.
async fn grpc_answers(server: &Server, ca: &str, identity: Option<&(String, String)>) -> bool {
    match grpc_tls(server, ca, identity).await {
        Ok(mut client) => client.server_live(ServerLiveRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

/// Whether an HTTPS client trusting `ca` (with `identity`) gets a 200 from the live probe.
async fn https_answers(server: &Server, ca: &str, identity: Option<&(String, String)>) -> bool {
    let client = https_client(ca, identity);
    match client.get(server.url("/v2/health/live")).send().await {
        Ok(reply) => reply.status() == 200,
        Err(_) => false,
    }
}

#[tokio::test]
async fn https_and_grpc_over_tls_answer_and_plaintext_is_refused() {
    let files = Files::new();
    let ca = Authority::new("rtserve test CA");
    let (cert, key) = ca.issue();
    files.write("server.pem", &cert);
    files.write("server.key", &key);
    let mut flags = server_flags(&files);
    flags.extend(["--metrics-port".to_string(), "0".to_string()]);
    let repository = crate::server::example_repository();
    let Some(server) = start_server(&repository, Engine::Tract, &as_strs(&flags)) else { return };

    // Every model answers over HTTPS (HTTP/1.1, and HTTP/2 chosen by ALPN) and gRPC over TLS as
    // the reference.
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("CA PEM"))
        .http1_only()
        .build()
        .expect("HTTP/1.1 client");
    let http2 = https_client(&ca.pem, None);
    for (client, version) in [(&http, reqwest::Version::HTTP_11), (&http2, reqwest::Version::HTTP_2)] {
        let reply = client.get(server.url("/v2/health/live")).send().await.expect("HTTPS probe");
        assert_eq!((reply.status().as_u16(), reply.version()), (200, version));
    }
    let mut grpc = grpc_tls(&server, &ca.pem, None).await.expect("gRPC over TLS connects");
    for case in all_cases() {
        let got = http_infer_json(&http, &server, &case.model, &case.inputs).await;
        assert_matches_reference(&case, &got, "HTTPS JSON");
        let got = http_infer_json(&http2, &server, &case.model, &case.inputs).await;
        assert_matches_reference(&case, &got, "HTTPS JSON over HTTP/2");
        let got = grpc_infer(&mut grpc, &case.model, &case.inputs, Contents::Raw).await;
        assert_matches_reference(&case, &got, "gRPC over TLS");
    }

    // Plaintext on the TLS ports gets no answer: no silent fallback.
    let plain = reqwest::Client::new();
    let reply = plain.get(format!("http://{}/v2/health/live", server.http_addr())).send().await;
    assert!(reply.is_err(), "plaintext HTTP was answered on the TLS port: {reply:?}");
    let plain_grpc = match GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc_addr())).await
    {
        Ok(mut client) => client.server_live(ServerLiveRequest {}).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain_grpc, "plaintext gRPC was answered on the TLS port");
    // A client that does not trust the certificate's CA is refused by its own check.
    let other = Authority::new("another CA");
    assert!(!https_answers(&server, &other.pem, None).await);
    assert!(!grpc_answers(&server, &other.pem, None).await);

    // The metrics port stays plaintext, with the health probes (docs/security.md).
    let log = server.log();
    let metrics = log
        .lines()
        .find_map(|line| line.split_once("metrics listening on ").map(|(_, rest)| rest.trim().to_string()))
        .unwrap_or_else(|| panic!("no metrics port in the log:\n{log}"));
    for path in ["/metrics", "/v2/health/live", "/v2/health/ready"] {
        let reply = plain.get(format!("http://{metrics}{path}")).send().await.expect("plaintext GET");
        assert_eq!(reply.status(), 200, "{path} on the metrics port");
    }
    let reply = plain.get(format!("http://{metrics}/v2/models/mlp")).send().await.expect("plaintext GET");
    assert_eq!(reply.status(), 404, "only metrics and probes on the metrics port");

    // The refused connections above (plaintext, untrusting) are counted, per port.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = plain.get(format!("http://{metrics}/metrics")).send().await.expect("scrape");
        let text = text.text().await.expect("metrics text");
        let failures = |protocol: &str| {
            metric_value(&text, "rtserve_tls_handshake_failures_total", &[("protocol", protocol)])
                .unwrap_or(0.0)
        };
        if failures("http") >= 2.0 && failures("grpc") >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "handshake failures not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let files = Files::new();
    let server_ca = Authority::new("server CA");
    let client_ca = Authority::new("client CA");
    let (cert, key) = server_ca.issue();
    files.write("server.pem", &cert);
    files.write("server.key", &key);
    files.write("clients.pem", &client_ca.pem);
    let mut flags = server_flags(&files);
    flags.extend(["--tls-client-ca".to_string(), files.path("clients.pem")]);
    let repository = temp_repository(&["two_io"]);
    let Some(server) = start_server(repository.path(), Engine::Tract, &as_strs(&flags)) else { return };

    let good = client_ca.issue();
    let stranger = Authority::new("stranger CA").issue();
    assert!(!https_answers(&server, &server_ca.pem, None).await, "HTTPS without a client certificate");
    assert!(!https_answers(&server, &server_ca.pem, Some(&stranger)).await, "HTTPS, unknown client CA");
    assert!(https_answers(&server, &server_ca.pem, Some(&good)).await, "HTTPS with a good certificate");
    assert!(!grpc_answers(&server, &server_ca.pem, None).await, "gRPC without a client certificate");
    assert!(!grpc_answers(&server, &server_ca.pem, Some(&stranger)).await, "gRPC, unknown client CA");

    let mut grpc = grpc_tls(&server, &server_ca.pem, Some(&good)).await.expect("mTLS gRPC connects");
    let case = crate::tensors::case("two_io");
    let got = grpc_infer(&mut grpc, "two_io", &case.inputs, Contents::Raw).await;
    assert_matches_reference(&case, &got, "gRPC over mutual TLS");
    let got =
        http_infer_json(&https_client(&server_ca.pem, Some(&good)), &server, "two_io", &case.inputs).await;
    assert_matches_reference(&case, &got, "HTTPS over mutual TLS");
    server.stop().await;
}

/// Waits until the server's log holds `text`.
async fn wait_for_log(server: &Server, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains(text) {
        assert!(Instant::now() < deadline, "the log never said '{text}':\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_serves_a_rotated_certificate_and_a_bad_one_keeps_the_old() {
    let files = Files::new();
    let old_ca = Authority::new("old CA");
    let (cert, key) = old_ca.issue();
    files.write("server.pem", &cert);
    files.write("server.key", &key);
    let repository = temp_repository(&["two_io"]);
    let Some(server) = start_server(repository.path(), Engine::Tract, &as_strs(&server_flags(&files))) else {
        return;
    };
    assert!(https_answers(&server, &old_ca.pem, None).await);

    let new_ca = Authority::new("new CA");
    let (cert, key) = new_ca.issue();
    files.write("server.pem", &cert);
    files.write("server.key", &key);
    server.signal(Signal::SIGHUP);
    wait_for_log(&server, "TLS certificate and key reread").await;
    assert!(https_answers(&server, &new_ca.pem, None).await, "HTTPS serves the new certificate");
    assert!(grpc_answers(&server, &new_ca.pem, None).await, "gRPC serves the new certificate");
    assert!(!https_answers(&server, &old_ca.pem, None).await, "the old certificate is gone");

    // A key that does not match: logged, and the certificate in force stays.
    files.write("server.key", &new_ca.issue().1);
    server.signal(Signal::SIGHUP);
    wait_for_log(&server, "the TLS certificate in force is kept").await;
    assert!(server.log().contains("does not match the certificate"), "{}", server.log());
    assert!(https_answers(&server, &new_ca.pem, None).await, "the certificate in force still serves");
    assert!(grpc_answers(&server, &new_ca.pem, None).await);
    server.stop().await;
}

/// Asserts that `log` mentions each of `mentions`.
fn assert_mentions(log: &str, mentions: &[&str]) {
    for mention in mentions {
        assert!(log.contains(mention), "the error should mention '{mention}':\n{log}");
    }
}

#[test]
fn bad_tls_configuration_is_a_start_up_error() {
    let repository = temp_repository(&["two_io"]);
    let files = Files::new();
    let ca = Authority::new("CA");
    let (cert, key) = ca.issue();
    let cert_path = files.write("server.pem", &cert);
    let key_path = files.write("server.key", &key);
    let other_key = files.write("other.key", &ca.issue().1);
    let empty = files.write("empty.pem", "# nothing here\n");
    let missing = files.dir.path().join("missing.pem");
    let s = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    let (cert, key, other_key, empty, missing) =
        (s(&cert_path), s(&key_path), s(&other_key), s(&empty), s(&missing));

    let log = start_error(repository.path(), &["--tls-cert", &missing, "--tls-key", &key]);
    assert_mentions(&log, &["cannot read", &missing, "--tls-cert"]);
    let log = start_error(repository.path(), &["--tls-cert", &cert, "--tls-key", &missing]);
    assert_mentions(&log, &["cannot read", &missing, "--tls-key"]);
    let log = start_error(repository.path(), &["--tls-cert", &key, "--tls-key", &key]);
    assert_mentions(&log, &[&key, "--tls-cert", "no PEM certificate"]);
    let log = start_error(repository.path(), &["--tls-cert", &cert, "--tls-key", &empty]);
    assert_mentions(&log, &[&empty, "--tls-key", "no PEM private key"]);
    let log = start_error(repository.path(), &["--tls-cert", &cert, "--tls-key", &other_key]);
    assert_mentions(&log, &["does not match", &other_key, &cert]);
    let log =
        start_error(repository.path(), &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &empty]);
    assert_mentions(&log, &[&empty, "--tls-client-ca", "no PEM CA certificate"]);

    // Half a configuration.
    let log = start_error(repository.path(), &["--tls-cert", &cert]);
    assert_mentions(&log, &["--tls-key"]);
    let log = start_error(repository.path(), &["--tls-key", &key]);
    assert_mentions(&log, &["--tls-cert"]);
    let log = start_error(repository.path(), &["--tls-client-ca", &cert]);
    assert_mentions(&log, &["--tls-cert"]);
    let tokens = s(&files.write("tokens", "metrics-token-0123\n"));
    let log = start_error(
        repository.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--metrics-port",
            "0",
            "--metrics-auth",
            "--auth-token-file",
            &tokens,
        ],
    );
    assert_mentions(&log, &["--metrics-port is plaintext"]);

    // The Redis TLS files.
    let log =
        start_error(repository.path(), &["--cache-redis", "redis://127.0.0.1:1/", "--cache-redis-ca", &cert]);
    assert_mentions(&log, &["rediss://"]);
    let log = start_error(
        repository.path(),
        &["--cache-redis", "rediss://127.0.0.1:1/", "--cache-redis-ca", &empty],
    );
    assert_mentions(&log, &[&empty, "--cache-redis-ca", "no PEM certificate"]);
    let log = start_error(
        repository.path(),
        &["--cache-redis", "rediss://127.0.0.1:1/", "--cache-redis-cert", &cert],
    );
    assert_mentions(&log, &["--cache-redis-key"]);
}

/// Two replicas share a Redis that speaks only TLS and asks for client certificates: a miss on
/// one is a hit on the other, so the entry went through rediss:// both ways.
#[tokio::test]
async fn replicas_share_a_tls_redis_with_a_private_ca_and_client_certificates() {
    if !redis::available() {
        return;
    }
    let files = Files::new();
    let ca = Authority::new("redis CA");
    let (cert, key) = ca.issue();
    let (redis_cert, redis_key, ca_pem) =
        (files.write("redis.pem", &cert), files.write("redis.key", &key), files.write("ca.pem", &ca.pem));
    let (client_cert, client_key) = ca.issue();
    files.write("client.pem", &client_cert);
    files.write("client.key", &client_key);
    let tls = RedisTls { cert: &redis_cert, key: &redis_key, ca: &ca_pem, require_client_cert: true };
    let redis_server = RedisServer::start_tls(redis::free_port(), &tls);

    let repository = tempfile::tempdir().expect("temporary folder");
    add_model(repository.path(), "mlp", "cached", &mlp_config("cached", CACHED));
    let url = redis_server.tls_url();
    let flags = [
        "--cache-redis",
        url.as_str(),
        "--cache-redis-timeout-ms",
        "500",
        "--cache-redis-ca",
        &files.path("ca.pem"),
        "--cache-redis-cert",
        &files.path("client.pem"),
        "--cache-redis-key",
        &files.path("client.key"),
    ]
    .map(str::to_string);
    let Some(a) = start_server(repository.path(), Engine::Tract, &as_strs(&flags)) else { return };
    let Some(b) = start_server(repository.path(), Engine::Tract, &as_strs(&flags)) else { return };
    let http = reqwest::Client::new();
    assert!(
        shares(&http, &a, &b, &mlp_rows(8)).await,
        "a miss on replica A should become a Redis hit on replica B through rediss://\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    a.stop().await;
    b.stop().await;
}

/// Runs `rtserve bench ARGS --quiet` and returns its output.
fn bench(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rtserve"))
        .arg("bench")
        .args(args)
        .arg("--quiet")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run rtserve bench")
}

/// `rtserve bench` loads a server with TLS and tokens over https:// and grpcs:// with
/// --tls-ca and --token-file (its /metrics, behind --metrics-auth, too); without either it
/// fails at once and says why.
#[tokio::test]
async fn bench_loads_a_tls_server_with_a_token_over_https_and_grpcs() {
    let files = Files::new();
    let ca = Authority::new("bench CA");
    let (cert, key) = ca.issue();
    files.write("server.pem", &cert);
    files.write("server.key", &key);
    files.write("ca.pem", &ca.pem);
    files.write("tokens", "bench-token-42 bench\n");
    let mut flags = server_flags(&files);
    flags.extend(["--auth-token-file".to_string(), files.path("tokens"), "--metrics-auth".to_string()]);
    let repository = temp_repository(&["mlp"]);
    let Some(server) = start_server(repository.path(), Engine::Tract, &as_strs(&flags)) else { return };
    let https = format!("https://{}", server.http_addr());
    let grpcs = format!("grpcs://{}", server.grpc_addr());
    let (ca_file, tokens) = (files.path("ca.pem"), files.path("tokens"));

    for url in [&https, &grpcs] {
        let json = files.path("report.json");
        let output = bench(&[
            "--url",
            url,
            "--model",
            "mlp",
            "--concurrency",
            "2",
            "--warmup",
            "200ms",
            "--duration",
            "1s",
            "--tls-ca",
            &ca_file,
            "--token-file",
            &tokens,
            "--json",
            &json,
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{url}: {stderr}\nserver log:\n{}", server.log());
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("--json written")).expect("JSON");
        let step = &report["steps"][0];
        let successes = step["successes"].as_f64().expect("successes");
        assert!(successes > 0.0 && step["requests"].as_f64() == Some(successes), "{url}: {step:#}");
        if url == &https {
            // The server-side figures come from /metrics over HTTPS with the token.
            assert!(step["server"]["compute_us"].as_f64().is_some_and(|us| us > 0.0), "{step:#}");
        }
    }

    for url in [&https, &grpcs] {
        let no_token = bench(&["--url", url, "--model", "mlp", "--duration", "1s", "--tls-ca", &ca_file]);
        let stderr = String::from_utf8_lossy(&no_token.stderr);
        assert!(!no_token.status.success() && stderr.contains("Bearer"), "{url} without a token: {stderr}");
        let untrusted = bench(&["--url", url, "--model", "mlp", "--duration", "1s", "--token-file", &tokens]);
        let stderr = String::from_utf8_lossy(&untrusted.stderr);
        assert!(!untrusted.status.success() && stderr.contains("cannot reach"), "{url} untrusted: {stderr}");
    }
    let plain_ca = bench(&["--url", "http://127.0.0.1:1", "--model", "mlp", "--tls-ca", &ca_file]);
    let stderr = String::from_utf8_lossy(&plain_ca.stderr);
    assert!(stderr.contains("--tls-ca needs an https://"), "{stderr}");
    server.stop().await;
}
