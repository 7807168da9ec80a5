//! KServe v2 over gRPC with tonic: metadata, unary ModelInfer, and ModelStreamInfer with
//! replies matched to requests by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::BenchConfig;
use crate::credentials::BearerToken;
use crate::inputs::RequestInputs;
use crate::outcome::{classify_stream_message, error_chain, from_status, ErrorKind, RequestError};
use crate::target::ModelInfo;
use crate::BenchError;

/// Types generated from `proto/inference.proto` (client side only).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_client::GrpcInferenceServiceClient;

/// Requests a stream may hold before `send` waits (the server answers 64 at a time).
const STREAM_BUFFER: usize = 1024;

/// A gRPC client for one model over one HTTP/2 connection. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    client: GrpcInferenceServiceClient<InterceptedService<Channel, BearerToken>>,
    url: String,
    model: String,
    version: String,
}

impl GrpcClient {
    pub async fn connect(config: &BenchConfig) -> Result<GrpcClient, BenchError> {
        let url = config.endpoint.to_string();
        let unreachable = |reason: String| BenchError::Unreachable { url: url.clone(), reason };
        let mut endpoint = Endpoint::from_shared(config.endpoint.http_base())
            .map_err(|e| unreachable(error_chain(&e)))?
            .connect_timeout(config.timeout)
            .tcp_nodelay(true);
        if config.endpoint.tls {
            endpoint = endpoint
                .tls_config(config.credentials.grpc_tls())
                .map_err(|e| unreachable(error_chain(&e)))?;
        }
        let channel = endpoint.connect().await.map_err(|e| unreachable(error_chain(&e)))?;
        let client =
            GrpcInferenceServiceClient::with_interceptor(channel, config.credentials.grpc_interceptor()?)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
        Ok(GrpcClient {
            client,
            url,
            model: config.model.clone(),
            version: config.model_version.clone().unwrap_or_default(),
        })
    }

    pub async fn metadata(&self) -> Result<ModelInfo, BenchError> {
        let request = proto::ModelMetadataRequest { name: self.model.clone(), version: self.version.clone() };
        let reply = match self.client.clone().model_metadata(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                let error = from_status(&status);
                return Err(match (status.code(), error.kind) {
                    (_, ErrorKind::Transport) => {
                        BenchError::Unreachable { url: self.url.clone(), reason: error.message }
                    }
                    (tonic::Code::NotFound, _) => BenchError::UnknownModel {
                        url: self.url.clone(),
                        model: self.model.clone(),
                        reason: error.message,
                    },
                    _ => BenchError::Metadata { model: self.model.clone(), reason: error.message },
                });
            }
        };
        let tensors = |list: Vec<proto::model_metadata_response::TensorMetadata>| {
            list.into_iter().map(|t| (t.name, t.datatype, t.shape)).collect()
        };
        let name = if reply.name.is_empty() { self.model.clone() } else { reply.name };
        ModelInfo::new(name, tensors(reply.inputs), tensors(reply.outputs))
    }

    /// A ModelInferRequest with the inputs in `raw_input_contents`, every output asked for.
    pub fn prepare(&self, inputs: &RequestInputs) -> Result<proto::ModelInferRequest, BenchError> {
        let mut tensors = Vec::with_capacity(inputs.tensors.len());
        let mut raw = Vec::with_capacity(inputs.tensors.len());
        for t in &inputs.tensors {
            let bytes = t
                .values
                .to_raw(t.datatype)
                .map_err(|e| BenchError::Inputs(format!("input '{}': {e}", t.name)))?;
            tensors.push(proto::model_infer_request::InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.as_str().to_string(),
                shape: t.shape.clone(),
                ..Default::default()
            });
            raw.push(bytes.into());
        }
        Ok(proto::ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            inputs: tensors,
            raw_input_contents: raw,
            ..Default::default()
        })
    }

    pub async fn infer(&self, request: &proto::ModelInferRequest) -> Result<(), RequestError> {
        self.client.clone().model_infer(request.clone()).await.map(|_| ()).map_err(|s| from_status(&s))
    }

    /// Opens one ModelStreamInfer stream and the task that hands its replies out.
    pub async fn open_stream(&self) -> Result<StreamLane, BenchError> {
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let replies = self
            .client
            .clone()
            .model_stream_infer(ReceiverStream::new(receiver))
            .await
            .map_err(|s| BenchError::Unreachable {
                url: self.url.clone(),
                reason: format!("cannot open ModelStreamInfer: {}", from_status(&s).message),
            })?
            .into_inner();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let reader = tokio::spawn(read_replies(replies, pending.clone()));
        Ok(StreamLane { sender, pending, next_id: AtomicU64::new(0), reader })
    }
}

/// Requests of a stream waiting for their reply, by id; once the stream ends, why.
#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<String, oneshot::Sender<Result<(), RequestError>>>,
    closed: Option<RequestError>,
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding the lock leaves the map consistent (single inserts and removes).
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands each reply to the request with its id; when the stream ends, fails the rest.
async fn read_replies(
    mut replies: tonic::Streaming<proto::ModelStreamInferResponse>,
    pending: Arc<Mutex<Pending>>,
) {
    let ended = loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let id = reply.infer_response.map(|r| r.id).unwrap_or_default();
                let result = if reply.error_message.is_empty() {
                    Ok(())
                } else {
                    Err(RequestError::new(classify_stream_message(&reply.error_message), reply.error_message))
                };
                if let Some(waiter) = lock(&pending).waiting.remove(&id) {
                    // The request may have timed out and gone: nobody to tell.
                    let _ = waiter.send(result);
                }
            }
            Ok(None) => break RequestError::new(ErrorKind::Transport, "the server closed the stream"),
            Err(status) => {
                let mut error = from_status(&status);
                error.kind = ErrorKind::Transport;
                error.message = format!("the stream failed: {}", error.message);
                break error;
            }
        }
    };
    let mut pending = lock(&pending);
    for (_, waiter) in pending.waiting.drain() {
        let _ = waiter.send(Err(ended.clone()));
    }
    pending.closed = Some(ended);
}

/// One ModelStreamInfer stream; requests carry ids `0, 1, ...` and their replies are matched
/// to them, so any number may be in flight on it.
#[derive(Debug)]
pub struct StreamLane {
    sender: mpsc::Sender<proto::ModelInferRequest>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

/// Forgets a request's reply slot when its future ends, answered or not (a timeout drops it).
struct Forget<'a> {
    pending: &'a Mutex<Pending>,
    id: String,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiting.remove(&self.id);
    }
}

impl StreamLane {
    pub async fn infer(&self, request: &proto::ModelInferRequest) -> Result<(), RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if let Some(closed) = &pending.closed {
                return Err(closed.clone());
            }
            pending.waiting.insert(id.clone(), tx);
        }
        let _forget = Forget { pending: &self.pending, id: id.clone() };
        let mut message = request.clone();
        message.id = id;
        if self.sender.send(message).await.is_err() {
            return Err(RequestError::new(ErrorKind::Transport, "the stream is closed"));
        }
        rx.await.unwrap_or_else(|_| Err(RequestError::new(ErrorKind::Transport, "the stream ended")))
    }
}

impl Drop for StreamLane {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
