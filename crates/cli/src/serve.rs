//! `rtserve serve`: flags → [`ServerConfig`] → the server, until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rtserve_engines::EngineChoice;
use rtserve_server::preprocess::DEFAULT_MAX_IMAGE_PIXELS;
use rtserve_server::{
    AuthConfig, CacheOptions, ConnectionLimits, GpuDefaults, ModelControl, ModelControlMode, RedisOptions,
    RedisTls, ServerConfig, TlsConfig,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::SignalStream;
use tokio_stream::{Stream, StreamExt};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model repository folder (<repo>/<model>/<version>/model.onnx). Repeat for several.
    #[arg(
        long = "model-repository",
        env = "RTSERVE_MODEL_REPOSITORY",
        required = true,
        value_delimiter = ','
    )]
    model_repositories: Vec<PathBuf>,

    /// Address to listen on.
    #[arg(long, env = "RTSERVE_HOST", default_value = "0.0.0.0")]
    host: String,

    /// HTTP port (KServe v2 REST). 0 picks a free port; the log says which.
    #[arg(long, env = "RTSERVE_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,

    /// gRPC port (inference.GRPCInferenceService). 0 picks a free port; the log says which.
    #[arg(long, env = "RTSERVE_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,

    /// Also serve `GET /metrics` (Prometheus) and the health probes (`/v2/health/live`,
    /// `/v2/health/ready`) on this port of its own, always in plaintext: with --tls-cert (and
    /// --tls-client-ca) it is where Prometheus and kubelet probes go. /metrics is always on the
    /// HTTP port too.
    #[arg(long, env = "RTSERVE_METRICS_PORT")]
    metrics_port: Option<u16>,

    /// Open the HTTP and gRPC ports only once start-up loading is done (they are reserved at
    /// once, so a port in use still fails at start; connections are refused until then), as
    /// Triton does. For balancers without active health checks (nginx), which would otherwise
    /// send requests to a restarted replica that is still loading. Default: open at once, with
    /// readiness 503 until loaded (Kubernetes probes).
    #[arg(long, env = "RTSERVE_LISTEN_WHEN_READY")]
    listen_when_ready: bool,

    /// Engine: auto (ONNX Runtime when its library is found, else tract), onnxruntime or tract.
    /// An explicit engine applies to every model; auto honours each model's `backend`. A TFLite
    /// model that does not convert to ONNX (an operator the rewrite lacks) runs on tract.
    #[arg(long, env = "RTSERVE_ENGINE", default_value = "auto")]
    engine: EngineChoice,

    /// Path to libonnxruntime.so (or its folder). Default: ORT_DYLIB_PATH, then the
    /// `onnxruntime` Python package, then the system library path.
    #[arg(long, env = "RTSERVE_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,

    /// The GPUs (CUDA indices, comma-separated) that a model's `instance_group { kind: KIND_GPU }`
    /// without `gpus: [...]` places its instances on. Default: every GPU found.
    #[arg(long, env = "RTSERVE_GPUS", value_delimiter = ',')]
    gpus: Option<Vec<u32>>,

    /// Folder where TensorRT keeps the engines it builds for models with a `tensorrt`
    /// gpu_execution_accelerator, so that a restart does not build them again (a model's own
    /// `trt_engine_cache_path` wins). Default: no cache.
    #[arg(long, env = "RTSERVE_TENSORRT_CACHE")]
    tensorrt_cache: Option<PathBuf>,

    /// Largest request body (HTTP) or message (gRPC) accepted, in bytes.
    #[arg(long, env = "RTSERVE_MAX_REQUEST_BYTES", default_value_t = 64 * 1024 * 1024)]
    max_request_bytes: usize,

    /// Seconds to keep serving after SIGTERM/SIGINT with readiness withdrawn (`/v2/health/ready`
    /// 503, gRPC ServerReady and ModelReady false), so that load balancers and Kubernetes take
    /// this server out before it stops accepting. A second signal cuts the drain short.
    #[arg(long, env = "RTSERVE_DRAIN_SECONDS", default_value_t = 5.0)]
    drain_seconds: f64,

    /// Seconds to let requests in flight finish once the drain is over and the listeners are
    /// closed; what is still running then is dropped. At least --drain-seconds.
    #[arg(long, env = "RTSERVE_SHUTDOWN_TIMEOUT", default_value_t = 30.0)]
    shutdown_timeout: f64,

    /// Requests that may wait per model version when its config sets no
    /// `dynamic_batching.default_queue_policy.max_queue_size`; more get 429.
    #[arg(long, env = "RTSERVE_QUEUE_CAPACITY", default_value_t = 1024)]
    queue_capacity: usize,

    /// Timed warm-up runs per batch size at load, seeding the latency profile of models with
    /// dynamic batching or an SLO. 0 skips the warm-up (the profile then learns online).
    #[arg(long, env = "RTSERVE_WARM_UP_ROUNDS", default_value_t = 2)]
    warm_up_rounds: usize,

    /// Size limit of the local prediction cache, in bytes of cached outputs. The cache serves
    /// models whose config has `response_cache { enable: true }`.
    #[arg(long, env = "RTSERVE_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    cache_bytes: u64,

    /// Seconds a cached reply lives, in the local tier and in Redis.
    #[arg(long, env = "RTSERVE_CACHE_TTL", default_value_t = 600.0)]
    cache_ttl: f64,

    /// Shared cache tier behind the local one: redis://HOST:PORT[/DB], or rediss:// for TLS
    /// (see --cache-redis-ca). When Redis is slow or down, requests are computed as if it were
    /// absent, and it is reconnected by itself.
    #[arg(long, env = "RTSERVE_CACHE_REDIS")]
    cache_redis: Option<String>,

    /// Limit on each Redis call, in milliseconds; a slower call counts as a miss.
    #[arg(long, env = "RTSERVE_CACHE_REDIS_TIMEOUT_MS", default_value_t = 50)]
    cache_redis_timeout_ms: u64,

    /// CA certificates (PEM) that a rediss:// --cache-redis server's certificate must chain to,
    /// for a private CA; default: the system's trusted roots.
    #[arg(long, env = "RTSERVE_CACHE_REDIS_CA")]
    cache_redis_ca: Option<PathBuf>,

    /// A client certificate (PEM) that rtserve presents to a rediss:// --cache-redis server
    /// that asks for one (Redis `tls-auth-clients`); needs --cache-redis-key.
    #[arg(long, env = "RTSERVE_CACHE_REDIS_CERT", requires = "cache_redis_key")]
    cache_redis_cert: Option<PathBuf>,

    /// The private key of --cache-redis-cert (PEM).
    #[arg(long, env = "RTSERVE_CACHE_REDIS_KEY", requires = "cache_redis_cert")]
    cache_redis_key: Option<PathBuf>,

    /// Largest image (width x height, in pixels) that models with preprocessing accept; a
    /// larger one gets 400, refused from its header before it is decoded.
    #[arg(long, env = "RTSERVE_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    max_image_pixels: u64,

    /// Bearer tokens for inference, metadata, statistics and the status feed: one a line,
    /// `TOKEN [NAME]` (the name is for the logs; `#` comments). Reread on SIGHUP. Health
    /// probes and the static pages stay open. See docs/security.md.
    #[arg(long, env = "RTSERVE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,

    /// Bearer tokens for the model repository API (index, load, unload), same format; they
    /// also grant everything --auth-token-file does. Without it, and with --auth-token-file,
    /// the repository API is refused (403).
    #[arg(long, env = "RTSERVE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,

    /// `/metrics` (on the HTTP port and --metrics-port) needs a token too. Default: open, for
    /// Prometheus.
    #[arg(long, env = "RTSERVE_METRICS_AUTH")]
    metrics_auth: bool,

    /// Serve HTTPS and gRPC over TLS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Reread on SIGHUP, so a rotated certificate needs no restart (a bad new file
    /// keeps the old one, and the log says why). The --metrics-port stays plaintext (metrics and
    /// probes only). See docs/security.md.
    #[arg(long, env = "RTSERVE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Reread on SIGHUP.
    #[arg(long, env = "RTSERVE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Mutual TLS: every client must present a certificate that chains to a CA in this file
    /// (PEM); others are refused during the handshake. Needs --tls-cert. Reread on SIGHUP.
    #[arg(long, env = "RTSERVE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,

    /// How the served models change, as Triton's flag: `none` loads every model at start and
    /// refuses the load/unload API (503); `explicit` loads only the --load-model models at
    /// start and lets the load/unload API change what is served; `poll` loads every model and
    /// follows the repository every --repository-poll-seconds (new, changed and removed models
    /// and versions; a change is loaded once it looks the same on two polls in a row), and
    /// refuses the API. Without this flag: every model loads at start AND load/unload work
    /// (what rtserve always did; Triton's default is `none`). See docs/reliability.md.
    #[arg(long, env = "RTSERVE_MODEL_CONTROL_MODE")]
    model_control_mode: Option<ModelControlMode>,

    /// With --model-control-mode explicit: a model to load at start. Repeat for several; `*`
    /// loads every model. A name with no folder in the repository stops the start.
    #[arg(long = "load-model", env = "RTSERVE_LOAD_MODEL", value_delimiter = ',')]
    load_models: Vec<String>,

    /// With --model-control-mode poll: seconds between two reads of the repository (default
    /// 15, as Triton's; fractions allowed). A change is loaded after two to three periods.
    #[arg(long, env = "RTSERVE_REPOSITORY_POLL_SECONDS")]
    repository_poll_seconds: Option<f64>,

    /// Client connections each listener (HTTP, gRPC, --metrics-port) holds open at once. Past
    /// it the listener stops accepting until one closes: new clients wait in the kernel's
    /// accept queue, they are not refused (rtserve_connection_limit_waits_total counts the
    /// waits). Keep it under the open-file limit (`ulimit -n`).
    #[arg(long, env = "RTSERVE_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    max_connections: usize,

    /// Milliseconds an HTTP/1 client may take to send a request's line and headers; a slower
    /// one (slowloris) is disconnected. The wait for the next request on an idle kept-alive
    /// connection counts too, so keep it above a balancer's upstream keep-alive timeout
    /// (deploy/nginx: 60 s).
    #[arg(long, env = "RTSERVE_HEADER_READ_TIMEOUT_MS",
        default_value_t = ConnectionLimits::default().header_read_timeout.as_millis() as u64)]
    header_read_timeout_ms: u64,

    /// Concurrent streams (gRPC calls) one HTTP/2 connection may have open; a client opening
    /// more waits for one to end (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "RTSERVE_GRPC_MAX_CONCURRENT_STREAMS",
        default_value_t = ConnectionLimits::default().max_concurrent_streams)]
    grpc_max_concurrent_streams: u32,

    /// Log one line per request (target rtserve::access): request id, protocol, method, model,
    /// version, status, latency, cache outcome, client address, bytes in and out. HTTP: every
    /// request; gRPC: each inference (and each stream message). JSON under --log-format json.
    /// Never tokens or tensor data. See docs/reliability.md for its cost.
    #[arg(long, env = "RTSERVE_ACCESS_LOG")]
    pub access_log: bool,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let drain = Duration::try_from_secs_f64(self.drain_seconds)
            .context("--drain-seconds must be a non-negative number of seconds")?;
        let shutdown_timeout = Duration::try_from_secs_f64(self.shutdown_timeout)
            .context("--shutdown-timeout must be a non-negative number of seconds")?;
        anyhow::ensure!(
            drain <= shutdown_timeout,
            "--drain-seconds ({}) is longer than --shutdown-timeout ({}): requests that arrive late in \
             the drain could not finish; raise the timeout or shorten the drain (and keep a \
             Kubernetes terminationGracePeriodSeconds above their sum)",
            self.drain_seconds,
            self.shutdown_timeout
        );
        anyhow::ensure!(
            !self.metrics_auth || self.auth_token_file.is_some() || self.admin_token_file.is_some(),
            "--metrics-auth needs --auth-token-file or --admin-token-file"
        );
        anyhow::ensure!(
            !(self.metrics_auth && self.metrics_port.is_some() && self.tls_cert.is_some()),
            "--metrics-port is plaintext even with --tls-cert: with --metrics-auth its tokens would \
             cross the network in clear; scrape /metrics over the HTTPS port instead"
        );
        anyhow::ensure!(
            self.cache_redis.as_deref().is_some_and(|url| url.starts_with("rediss://"))
                || (self.cache_redis_ca.is_none() && self.cache_redis_cert.is_none()),
            "--cache-redis-ca and --cache-redis-cert need a --cache-redis URL that starts with rediss://"
        );
        anyhow::ensure!(self.max_request_bytes > 0, "--max-request-bytes must be positive");
        anyhow::ensure!(self.max_connections > 0, "--max-connections must be positive");
        anyhow::ensure!(self.header_read_timeout_ms > 0, "--header-read-timeout-ms must be positive");
        anyhow::ensure!(
            self.grpc_max_concurrent_streams > 0,
            "--grpc-max-concurrent-streams must be positive"
        );
        anyhow::ensure!(self.queue_capacity > 0, "--queue-capacity must be positive");
        anyhow::ensure!(self.max_image_pixels > 0, "--max-image-pixels must be positive");
        let ttl = Duration::try_from_secs_f64(self.cache_ttl)
            .ok()
            .filter(|ttl| !ttl.is_zero())
            .context("--cache-ttl must be a positive number of seconds")?;
        anyhow::ensure!(self.cache_redis_timeout_ms > 0, "--cache-redis-timeout-ms must be positive");
        let model_control = ModelControl::from_flags(
            self.model_control_mode,
            &self.load_models,
            self.repository_poll_seconds,
        )
        .map_err(anyhow::Error::msg)?;
        let redis = self.cache_redis.map(|url| RedisOptions {
            timeout: Duration::from_millis(self.cache_redis_timeout_ms),
            tls: RedisTls {
                ca: self.cache_redis_ca,
                client_cert: self.cache_redis_cert.zip(self.cache_redis_key),
            },
            ..RedisOptions::new(url)
        });
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig { cert, key, client_ca: self.tls_client_ca }),
            _ => None,
        };
        Ok(ServerConfig {
            model_repositories: self.model_repositories,
            host: self.host,
            http_port: self.http_port,
            grpc_port: self.grpc_port,
            metrics_port: self.metrics_port,
            listen_when_ready: self.listen_when_ready,
            engine: self.engine,
            ort_library: self.ort_library,
            gpus: GpuDefaults { ids: self.gpus, tensorrt_cache: self.tensorrt_cache },
            max_request_bytes: self.max_request_bytes,
            drain,
            shutdown_timeout,
            queue_capacity: self.queue_capacity,
            warm_up_rounds: self.warm_up_rounds,
            cache: CacheOptions { max_bytes: self.cache_bytes, ttl, redis },
            max_image_pixels: self.max_image_pixels,
            auth: AuthConfig {
                token_file: self.auth_token_file,
                admin_token_file: self.admin_token_file,
                metrics_auth: self.metrics_auth,
            },
            tls,
            model_control,
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
                max_concurrent_streams: self.grpc_max_concurrent_streams,
            },
            access_log: self.access_log,
        })
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let signals = {
        let _in_runtime = runtime.enter();
        shutdown_signals()?
    };
    runtime.block_on(rtserve_server::serve(config, signals))?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), each time one arrives: the first starts the drain, the next
/// ends it.
fn shutdown_signals() -> anyhow::Result<impl Stream<Item = ()>> {
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map(SignalStream::new).with_context(|| format!("cannot listen for {name}"))
    };
    let terminate = listen(SignalKind::terminate(), "SIGTERM")?;
    let interrupt = listen(SignalKind::interrupt(), "SIGINT")?;
    Ok(terminate.merge(interrupt))
}
