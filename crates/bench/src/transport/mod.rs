//! How requests reach the server: HTTP (binary tensors or JSON) or gRPC (unary or streaming),
//! behind one [`Client`] for setup and one [`Lane`] per sender of load.

pub mod grpc;
pub mod http;

use bytes::Bytes;

use crate::config::{BenchConfig, Protocol};
use crate::inputs::RequestInputs;
use crate::outcome::{ErrorKind, RequestError};
use crate::target::ModelInfo;
use crate::BenchError;

/// A request encoded once, before the load starts, and sent many times.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// An HTTP infer body, with the JSON header's length when binary data follows it.
    Http { body: Bytes, header_length: Option<usize> },
    /// A gRPC ModelInferRequest (its byte fields are reference-counted: cloning is cheap).
    Grpc(grpc::proto::ModelInferRequest),
}

/// The connection to the server used for setup: metadata, encoding, opening lanes.
#[derive(Debug, Clone)]
pub enum Client {
    Http(http::HttpClient),
    Grpc(grpc::GrpcClient),
}

impl Client {
    /// Connects (gRPC) or prepares a connection pool (HTTP); fails when gRPC cannot connect.
    pub async fn connect(config: &BenchConfig) -> Result<Client, BenchError> {
        Ok(match config.protocol {
            Protocol::HttpBinary | Protocol::HttpJson => Client::Http(http::HttpClient::new(config)?),
            Protocol::GrpcUnary | Protocol::GrpcStream => {
                Client::Grpc(grpc::GrpcClient::connect(config).await?)
            }
        })
    }

    /// The model's metadata; an unreachable server or an unknown model is an error.
    pub async fn metadata(&self) -> Result<ModelInfo, BenchError> {
        match self {
            Client::Http(c) => c.metadata().await,
            Client::Grpc(c) => c.metadata().await,
        }
    }

    /// Encodes one request for this transport.
    pub fn prepare(&self, inputs: &RequestInputs) -> Result<Prepared, BenchError> {
        match self {
            Client::Http(c) => c.prepare(inputs),
            Client::Grpc(c) => c.prepare(inputs).map(Prepared::Grpc),
        }
    }

    /// A sender of load: HTTP and unary gRPC share the client's connections; streaming gRPC
    /// opens a stream of its own.
    pub async fn lane(&self, stream: bool) -> Result<Lane, BenchError> {
        Ok(match self {
            Client::Http(c) => Lane::Http(c.clone()),
            Client::Grpc(c) if stream => Lane::GrpcStream(c.open_stream().await?),
            Client::Grpc(c) => Lane::Grpc(c.clone()),
        })
    }
}

/// Sends requests for one closed-loop slot, or for a whole open loop.
#[derive(Debug)]
pub enum Lane {
    Http(http::HttpClient),
    Grpc(grpc::GrpcClient),
    GrpcStream(grpc::StreamLane),
}

impl Lane {
    /// Sends one request and waits for its complete answer. Timeouts are the caller's.
    pub async fn infer(&self, request: &Prepared) -> Result<(), RequestError> {
        match (self, request) {
            (Lane::Http(c), Prepared::Http { body, header_length }) => c.infer(body, *header_length).await,
            (Lane::Grpc(c), Prepared::Grpc(r)) => c.infer(r).await,
            (Lane::GrpcStream(s), Prepared::Grpc(r)) => s.infer(r).await,
            _ => Err(RequestError::new(ErrorKind::Transport, "request encoded for another transport")),
        }
    }
}
