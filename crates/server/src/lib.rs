//! rtserve server: KServe v2 over HTTP (axum) and gRPC (tonic) on a Triton-style model
//! repository. Engines are reached only through `rtserve_core::Engine`.

mod access_log;
pub mod auth;
pub mod classification;
mod codec;
mod connection;
mod error;
mod gpu_metrics;
pub mod grpc;
pub mod http;
mod listeners;
mod metrics;
mod model;
pub mod preprocess;
pub mod proto;
pub mod repository;
mod scrape;
mod serve;
mod state;
mod tls;
mod triton_config;
mod triton_stats;

pub use auth::{AuthConfig, TokenFileError};
pub use connection::ConnectionLimits;
pub use error::ServerError;
pub use repository::{GpuDefaults, ModelControl, ModelControlMode};
pub use rtserve_core::{CacheOptions, RedisOptions, RedisTls};
pub use serve::{serve, ServerConfig, StartError};
pub use state::ServerState;
pub use tls::{TlsConfig, TlsError};
