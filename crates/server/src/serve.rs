//! Start-up, the two listeners, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use futures::{Stream, StreamExt};
use rtserve_core::{CacheOptions, PredictionCache, SchedulerOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::engines::{EngineChoice, Engines};
use crate::metrics::Metrics;
use crate::preprocess::ImagePool;
use crate::repository::{ModelRepository, Serving};
use crate::scrape::ScrapeCollector;
use crate::state::ServerState;

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub model_repositories: Vec<PathBuf>,
    pub host: String,
    /// 0 picks a free port.
    pub http_port: u16,
    pub grpc_port: u16,
    /// A port of its own for `GET /metrics` (it is on the HTTP port as well).
    pub metrics_port: Option<u16>,
    pub engine: EngineChoice,
    pub ort_library: Option<PathBuf>,
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
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("model repository {0} is not a directory")]
    Repository(PathBuf),
    #[error("{0}")]
    Engine(String),
    #[error(transparent)]
    Cache(#[from] rtserve_core::CacheError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr} ({flag}): {source}")]
    Bind { addr: String, flag: &'static str, source: std::io::Error },
    #[error("server failed: {0}")]
    Serve(String),
}

/// Small replies must not wait for the peer's delayed ACK (Nagle's algorithm adds up to 40 ms).
fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

/// Binds `host:port`; `flag` names the option that chose the port, for the error.
async fn bind(host: &str, port: u16, flag: &'static str) -> Result<(TcpListener, SocketAddr), StartError> {
    let addr = format!("{host}:{port}");
    let listener = TcpListener::bind(&addr).await.map_err(|source| StartError::Bind {
        addr: addr.clone(),
        flag,
        source,
    })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind { addr, flag, source })?;
    Ok((listener, local))
}

/// Runs the server until the first of `signals`, then drains: readiness is withdrawn at once
/// and requests are still served for `config.drain` (or until the next signal), so that
/// balancers stop sending. Then it stops accepting, lets requests in flight finish (bounded by
/// `shutdown_timeout`) and returns.
pub async fn serve(config: ServerConfig, signals: impl Stream<Item = ()>) -> Result<(), StartError> {
    if let Some(missing) = config.model_repositories.iter().find(|p| !p.is_dir()) {
        return Err(StartError::Repository(missing.clone()));
    }
    let engines = Engines::new(config.engine, config.ort_library.clone()).map_err(StartError::Engine)?;
    let scheduling = SchedulerOptions {
        default_max_queue_size: config.queue_capacity,
        warm_up_rounds: config.warm_up_rounds,
        ..SchedulerOptions::default()
    };
    let cache = PredictionCache::new(config.cache.clone())?;
    let metrics = Arc::new(Metrics::new()?);
    let images = Arc::new(ImagePool::new(0, config.max_image_pixels).map_err(StartError::Engine)?);
    let repository = Arc::new(ModelRepository::new(
        config.model_repositories.clone(),
        engines,
        Serving { scheduling, stages: metrics.stages(), cache: cache.clone(), images },
    ));
    metrics.register(Box::new(ScrapeCollector::new(repository.clone(), cache)))?;
    let state = Arc::new(ServerState::new(repository.clone(), config.max_request_bytes, metrics));

    let (http_listener, http_addr) = bind(&config.host, config.http_port, "--http-port").await?;
    let (grpc_listener, grpc_addr) = bind(&config.host, config.grpc_port, "--grpc-port").await?;
    tracing::info!("HTTP listening on {http_addr}");
    tracing::info!("gRPC listening on {grpc_addr}");
    let metrics_listener = match config.metrics_port {
        Some(port) => {
            let (listener, addr) = bind(&config.host, port, "--metrics-port").await?;
            tracing::info!("metrics listening on {addr}");
            Some(listener)
        }
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http = axum::serve(http_listener.tap_io(|stream| no_delay(stream)), crate::http::app(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc = tonic::transport::Server::builder()
        .add_service(crate::grpc::service(state.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc_listener)
                .map(|accepted| accepted.inspect(no_delay)),
            stopped(stop_rx.clone()),
        );
    if let Some(listener) = metrics_listener {
        let metrics =
            axum::serve(listener.tap_io(|stream| no_delay(stream)), crate::http::metrics_app(state.clone()))
                .with_graceful_shutdown(stopped(stop_rx.clone()));
        tokio::spawn(async move {
            if let Err(e) = metrics.await {
                tracing::error!("metrics listener failed: {e}");
            }
        });
    }
    let http = tokio::spawn(async move { http.await.map_err(|e| e.to_string()) });
    let grpc = tokio::spawn(async move { grpc.await.map_err(|e| e.to_string()) });

    repository.load_all().await;
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
    let _ = stop_tx.send(true);
    let finished = async {
        let (http, grpc) = tokio::join!(http, grpc);
        for result in [http, grpc] {
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StartError::Serve(e)),
                Err(e) => return Err(StartError::Serve(e.to_string())),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(config.shutdown_timeout, finished).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("shutdown timeout reached; dropping requests still in flight");
            Ok(())
        }
    }
}
