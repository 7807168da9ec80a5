//! Start-up, readiness, the drain and graceful shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rtserve_core::{CacheOptions, PredictionCache, SchedulerOptions};

use crate::auth::{Auth, AuthConfig, TokenFileError};
use crate::connection::{ConnectionLimits, ConnectionMetrics};
use crate::gpu_metrics::GpuCollector;
use crate::listeners::{Listeners, Port};
use crate::metrics::Metrics;
use crate::preprocess::ImagePool;
use crate::repository::{GpuDefaults, ModelControl, ModelRepository, Serving};
use crate::scrape::ScrapeCollector;
use crate::state::ServerState;
use crate::tls::{Tls, TlsConfig, TlsError};
use rtserve_engines::{EngineChoice, Engines};

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub model_repositories: Vec<PathBuf>,
    pub host: String,
    /// 0 picks a free port.
    pub http_port: u16,
    pub grpc_port: u16,
    /// A port of its own for `GET /metrics` and the health probes, plaintext even with TLS
    /// (`/metrics` is on the HTTP port as well).
    pub metrics_port: Option<u16>,
    /// Open the HTTP and gRPC ports only once start-up loading is done (they are reserved at
    /// once, and refuse connections until then); otherwise they open at once and readiness
    /// says when the models are loaded.
    pub listen_when_ready: bool,
    pub engine: EngineChoice,
    pub ort_library: Option<PathBuf>,
    /// `--gpus` and `--tensorrt-cache`.
    pub gpus: GpuDefaults,
    pub max_request_bytes: usize,
    /// How long the server stays up, not ready but serving, after a shutdown signal, so that
    /// balancers see it go and send no more.
    pub drain: Duration,
    /// How long in-flight requests may take to finish once the listeners close.
    pub shutdown_timeout: Duration,
    /// The queue bound of a model version whose config sets no `max_queue_size`.
    pub queue_capacity: usize,
    /// Timed warm-up runs per batch size at load (models with dynamic batching or an SLO).
    pub warm_up_rounds: usize,
    /// The prediction cache (used by models with `response_cache` on).
    pub cache: CacheOptions,
    /// Images with more pixels than this are refused from their header (models with
    /// preprocessing).
    pub max_image_pixels: u64,
    /// Bearer tokens (none: every endpoint is open).
    pub auth: AuthConfig,
    /// TLS on the HTTP and gRPC ports (none: plaintext). The metrics port stays plaintext.
    pub tls: Option<TlsConfig>,
    /// Which models load at start, whether the repository API may change them, and polling.
    pub model_control: ModelControl,
    /// Connection limits: `--max-connections`, the header read timeout, gRPC streams.
    pub connections: ConnectionLimits,
    /// One log line per request (`--access-log`, `crate::access_log`).
    pub access_log: bool,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model repository {0} is not a directory")]
    Repository(PathBuf),
    #[error("model repository {path} (--model-repository) cannot be read: {error}")]
    UnreadableRepository { path: PathBuf, error: std::io::Error },
    #[error("model control: {0}")]
    ModelControl(String),
    #[error("{0}")]
    Engine(String),
    #[error(transparent)]
    Auth(#[from] TokenFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Cache(#[from] rtserve_core::CacheError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind { addr: String, flag: &'static str, source: std::io::Error },
    #[error("server failed: {0}")]
    Serve(String),
}

/// Runs the server until the first of `signals`, then drains: readiness is withdrawn at once
/// and requests are still served for `config.drain` (or until the next signal), so that
/// balancers stop sending. Then it stops accepting, lets requests in flight finish (bounded by
/// `shutdown_timeout`) and returns.
pub async fn serve(config: ServerConfig, signals: impl Stream<Item = ()>) -> Result<(), StartError> {
    for root in &config.model_repositories {
        check_repository(root)?;
    }
    let auth = Arc::new(Auth::load(config.auth.clone())?);
    let engines = Engines::new(config.engine, config.ort_library.clone())
        .map_err(|e| StartError::Engine(e.to_string()))?;
    engines.log_gpus();
    let scheduling = SchedulerOptions {
        default_max_queue_size: config.queue_capacity,
        warm_up_rounds: config.warm_up_rounds,
        ..SchedulerOptions::default()
    };
    let cache = PredictionCache::new(config.cache.clone())?;
    let metrics = Arc::new(Metrics::new()?);
    let tls = config.tls.clone().map(|tls| Tls::load(tls, metrics.clone())).transpose()?.map(Arc::new);
    if auth.enabled() || tls.is_some() {
        reload_on_hangup(auth.clone(), tls.clone())?;
    }
    let images = Arc::new(ImagePool::new(0, config.max_image_pixels).map_err(StartError::Engine)?);
    let repository = Arc::new(ModelRepository::new(
        config.model_repositories.clone(),
        engines,
        Serving {
            scheduling,
            stages: metrics.stages(),
            cache: cache.clone(),
            images,
            loads: metrics.model_loads(),
            gpus: config.gpus.clone(),
        },
        config.model_control.clone(),
    ));
    metrics.register(Box::new(ScrapeCollector::new(repository.clone(), cache)))?;
    if let Some(gpus) = GpuCollector::from_nvml() {
        metrics.register(Box::new(gpus))?;
    }
    let connections = ConnectionMetrics::register(&metrics)?;
    let state = Arc::new(
        ServerState::new(repository.clone(), config.max_request_bytes, metrics)
            .with_auth(auth)
            .with_access_log(config.access_log),
    );

    let http = Port::reserve(&config.host, config.http_port, "--http-port").await?;
    let grpc = Port::reserve(&config.host, config.grpc_port, "--grpc-port").await?;
    let mut listeners = Listeners::new(config.connections.clone(), connections);
    if let Some(port) = config.metrics_port {
        let port = Port::reserve(&config.host, port, "--metrics-port").await?;
        listeners.open_http(port, "metrics", crate::http::metrics_app(state.clone()), None)?;
    }
    let open = |listeners: &mut Listeners, http, grpc| {
        listeners.open_http(http, "HTTP", crate::http::app(state.clone()), tls.clone())?;
        listeners.open_grpc(grpc, crate::grpc::service(state.clone()), tls.clone())
    };
    if config.listen_when_ready {
        repository.start().await.map_err(StartError::ModelControl)?;
        open(&mut listeners, http, grpc)?;
    } else {
        open(&mut listeners, http, grpc)?;
        repository.start().await.map_err(StartError::ModelControl)?;
    }
    state.set_ready();
    tracing::info!("ready");

    let mut signals = std::pin::pin!(signals);
    signals.next().await;
    state.begin_drain();
    if !config.drain.is_zero() {
        tracing::info!(
            "draining: not ready, still serving for {:?} so that balancers take this server out \
             (signal again to stop now)",
            config.drain
        );
        tokio::select! {
            () = tokio::time::sleep(config.drain) => {}
            _ = signals.next() => tracing::info!("second signal: drain cut short"),
        }
    }
    tracing::info!(
        "shutting down: no new connections; finishing requests in flight (at most {:?})",
        config.shutdown_timeout
    );
    state.begin_stop();
    listeners.close(config.shutdown_timeout).await
}

/// A repository folder must exist and be listable (in every model control mode; poll mode
/// lists it again and again).
fn check_repository(root: &std::path::Path) -> Result<(), StartError> {
    let unreadable = |error| StartError::UnreadableRepository { path: root.to_path_buf(), error };
    match std::fs::metadata(root) {
        Ok(metadata) if metadata.is_dir() => std::fs::read_dir(root).map(drop).map_err(unreadable),
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(unreadable(error)),
        _ => Err(StartError::Repository(root.to_path_buf())),
    }
}

/// Rereads the token files and the TLS files on each SIGHUP; a file that fails then is logged
/// and what is in force stays. Only when authentication or TLS is on (SIGHUP otherwise keeps its
/// default: exit).
fn reload_on_hangup(auth: Arc<Auth>, tls: Option<Arc<Tls>>) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).map_err(|e| {
        StartError::Serve(format!("cannot listen for SIGHUP (token and certificate reload): {e}"))
    })?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if auth.enabled() {
                match auth.reload() {
                    Ok((inference, admin)) => {
                        tracing::info!(
                            "SIGHUP: token files reread ({inference} inference, {admin} admin tokens)"
                        )
                    }
                    Err(e) => tracing::error!("SIGHUP: {e}; the tokens in force are kept"),
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!("SIGHUP: TLS certificate and key reread; new connections use them")
                    }
                    Err(e) => tracing::error!("SIGHUP: {e}; the TLS certificate in force is kept"),
                }
            }
        }
    });
    Ok(())
}
