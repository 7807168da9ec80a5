//! The KServe v2 gRPC front end (`inference.GRPCInferenceService`, tonic).

pub mod codec;
mod deadline;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use rtserve_core::InferRequest;
use tonic::{Request, Response, Status, Streaming};

use crate::access_log::GrpcEntry;
use crate::auth::Access;
use crate::metrics::Protocol;
use crate::model::Served;
use crate::proto;
use crate::repository::RepositoryParameter;
use crate::state::{ServerState, EXTENSIONS, SERVER_NAME, SERVER_VERSION};
use crate::triton_config::{config_proto, metadata_proto};
use crate::triton_stats::stats_proto;
use crate::ServerError;
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;

/// The gRPC service over the shared server state.
pub struct InferenceService {
    state: Arc<ServerState>,
}

/// The gRPC service as the server mounts it.
pub type Service = GrpcInferenceServiceServer<InferenceService>;

/// The tonic service, with message limits set from `--max-request-bytes`.
pub fn service(state: Arc<ServerState>) -> Service {
    let limit = state.max_request_bytes;
    GrpcInferenceServiceServer::new(InferenceService { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// How an inference request came.
enum Call {
    /// ModelInfer, with the call's deadline.
    Unary(Option<Instant>),
    /// A message of ModelStreamInfer (a stream's deadline bounds the whole stream, not each
    /// request).
    Stream,
}

impl Call {
    /// The gRPC method, for the access log.
    fn method(&self) -> &'static str {
        match self {
            Call::Unary(_) => "ModelInfer",
            Call::Stream => "ModelStreamInfer",
        }
    }
}

impl InferenceService {
    /// Checks the call's `authorization` metadata (`Bearer TOKEN`) for `need`.
    fn authorize<T>(&self, request: &Request<T>, method: &str, need: Access) -> Result<(), Status> {
        let authorization = request.metadata().get("authorization").map(|value| value.as_bytes());
        Ok(self.state.authorize(Protocol::Grpc, method, need, authorization)?)
    }

    /// One inference, from the client at `client`.
    async fn infer(
        &self,
        request: proto::ModelInferRequest,
        call: Call,
        client: Option<SocketAddr>,
    ) -> Result<proto::ModelInferResponse, ServerError> {
        let mut timer = self.state.metrics.request(Protocol::Grpc);
        let access = self.state.access_log.then(|| GrpcEntry::start(&request, call.method(), client));
        let result = async {
            let deadline = match call {
                Call::Unary(deadline) => deadline,
                Call::Stream if self.state.is_stopping() => return Err(ServerError::ShuttingDown),
                Call::Stream => None,
            };
            let model = self.state.repository.get(&request.model_name, Some(&request.model_version))?;
            timer.model(&model.config.name, model.version);
            let classification = codec::decode_classification(&request)?;
            let request = InferRequest { received: Some(timer.started()), ..codec::decode_request(request)? };
            let inferred = model.infer_with(request, deadline, &classification).await?;
            let served = inferred.served();
            let mut response = codec::encode_response(inferred.response)?;
            for (name, value) in served {
                let value = match value {
                    Served::Micros(us) => ParameterChoice::Uint64Param(us),
                    Served::Text(text) => ParameterChoice::StringParam(text.to_string()),
                };
                let parameter = proto::InferParameter { parameter_choice: Some(value) };
                response.parameters.insert(format!("rtserve_{name}"), parameter);
            }
            Ok(response)
        }
        .await;
        if let Some(access) = access {
            access.finish(&timer, &result);
        }
        timer.finish(&result);
        result
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<proto::ModelStreamInferResponse, Status>> + Send>>;

/// Concurrent requests one stream may have in flight.
const STREAM_CONCURRENCY: usize = 64;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        Ok(Response::new(proto::ServerReadyResponse { ready: self.state.is_ready() }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        self.authorize(&request, "ModelReady", Access::Inference)?;
        let r = request.into_inner();
        let ready = self.state.model_ready(&r.name, Some(&r.version))?;
        Ok(Response::new(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.authorize(&request, "ServerMetadata", Access::Inference)?;
        Ok(Response::new(proto::ServerMetadataResponse {
            name: SERVER_NAME.to_string(),
            version: SERVER_VERSION.to_string(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        self.authorize(&request, "ModelMetadata", Access::Inference)?;
        let r = request.into_inner();
        let model = self.state.repository.get(&r.name, Some(&r.version))?;
        Ok(Response::new(metadata_proto(&model, &self.state.repository.versions(&r.name))))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        self.authorize(&request, "ModelInfer", Access::Inference)?;
        let deadline = deadline::call_deadline(request.metadata(), Instant::now());
        let client = request.remote_addr();
        Ok(Response::new(self.infer(request.into_inner(), Call::Unary(deadline), client).await?))
    }

    type ModelStreamInferStream = ResponseStream;

    /// Answers each request of the stream as it completes; errors travel in `error_message`
    /// and the stream goes on.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<proto::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        self.authorize(&request, "ModelStreamInfer", Access::Inference)?;
        let state = self.state.clone();
        let client = request.remote_addr();
        let responses = request
            .into_inner()
            .map(move |message| {
                let service = InferenceService { state: state.clone() };
                async move {
                    let message = message?;
                    let id = message.id.clone();
                    Ok(match service.infer(message, Call::Stream, client).await {
                        Ok(response) => proto::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response),
                        },
                        Err(e) => proto::ModelStreamInferResponse {
                            error_message: e.client_message(),
                            infer_response: Some(proto::ModelInferResponse { id, ..Default::default() }),
                        },
                    })
                }
            })
            .buffer_unordered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        self.authorize(&request, "ModelConfig", Access::Inference)?;
        let r = request.into_inner();
        let model = self.state.repository.get(&r.name, Some(&r.version))?;
        Ok(Response::new(proto::ModelConfigResponse { config: Some(config_proto(&model.config)) }))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        self.authorize(&request, "ModelStatistics", Access::Inference)?;
        let r = request.into_inner();
        let models = self.state.repository.select(&r.name, &r.version)?;
        Ok(Response::new(stats_proto(&models)))
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        self.authorize(&request, "RepositoryIndex", Access::Admin)?;
        let models = self
            .state
            .repository
            .index(request.into_inner().ready)
            .into_iter()
            .map(|row| proto::repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.as_str().to_string(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        self.authorize(&request, "RepositoryModelLoad", Access::Admin)?;
        let request = request.into_inner();
        let parameters = repository_parameters(request.parameters);
        self.state.repository.request_load(&request.model_name, parameters).await?;
        Ok(Response::new(proto::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        self.authorize(&request, "RepositoryModelUnload", Access::Admin)?;
        let request = request.into_inner();
        let parameters = repository_parameters(request.parameters);
        self.state.repository.request_unload(&request.model_name, parameters).await?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }
}

/// A repository request's parameters; an empty one (no value set) is left out.
fn repository_parameters(
    parameters: std::collections::HashMap<String, proto::ModelRepositoryParameter>,
) -> BTreeMap<String, RepositoryParameter> {
    use proto::model_repository_parameter::ParameterChoice;
    parameters
        .into_iter()
        .filter_map(|(key, value)| {
            let parameter = match value.parameter_choice? {
                ParameterChoice::BoolParam(b) => RepositoryParameter::Bool(b),
                ParameterChoice::Int64Param(i) => RepositoryParameter::Int(i),
                ParameterChoice::StringParam(s) => RepositoryParameter::String(s),
                ParameterChoice::BytesParam(b) => RepositoryParameter::Bytes(b.to_vec()),
            };
            Some((key, parameter))
        })
        .collect()
}
