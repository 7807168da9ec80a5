//! rtserve server: KServe v2 over HTTP (axum) and gRPC (tonic) on a Triton-style model
//! repository. Engines are reached only through `rtserve_core::Engine`.

pub mod auth;
mod classification;
mod codec;
mod engines;
mod error;
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
mod triton_config;
mod triton_stats;

pub use auth::{AuthConfig, TokenFileError};
pub use engines::EngineChoice;
pub use error::ServerError;
pub use rtserve_core::{CacheOptions, RedisOptions};
pub use serve::{serve, ServerConfig, StartError};
pub use state::ServerState;
