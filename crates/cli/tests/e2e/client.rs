//! Request helpers for both protocols: building KServe v2 requests from [`Tensor`]s and reading
//! the answers back.

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::StatusCode;
use rtserve_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use rtserve_server::proto::model_infer_request::InferInputTensor;
use rtserve_server::proto::{ModelInferRequest, ModelInferResponse};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::server::Server;
use crate::tensors::Tensor;

/// The binary tensor data extension's header.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub type GrpcClient = GrpcInferenceServiceClient<Channel>;

/// A gRPC client connected to `server`.
pub async fn grpc(server: &Server) -> GrpcClient {
    GrpcInferenceServiceClient::connect(server.grpc_endpoint()).await.expect("gRPC connect")
}

/// `/v2/models/{model}/infer`.
pub fn infer_path(model: &str) -> String {
    format!("/v2/models/{model}/infer")
}

/// A JSON infer body: every input with `data`.
pub fn json_body(inputs: &[Tensor]) -> Value {
    json!({ "inputs": inputs.iter().map(Tensor::to_json).collect::<Vec<_>>() })
}

/// A binary-extension infer body: the JSON header (inputs with `binary_data_size`, plus
/// `extra` merged into the top level) followed by the raw inputs. Returns the body and the
/// header length.
pub fn binary_body(inputs: &[Tensor], extra: Value) -> (Vec<u8>, usize) {
    let tensors: Vec<Value> = inputs
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "parameters": { "binary_data_size": t.to_raw().len() },
            })
        })
        .collect();
    let mut header = json!({ "inputs": tensors });
    if let Value::Object(extra) = extra {
        header.as_object_mut().expect("object").extend(extra);
    }
    let mut body = serde_json::to_vec(&header).expect("serializable");
    let length = body.len();
    for tensor in inputs {
        body.extend(tensor.to_raw());
    }
    (body, length)
}

/// An HTTP answer: status, headers and body.
pub struct HttpReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    /// The body as JSON; panics with the body's text when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an error answer: `status`, and a JSON `{"error": "..."}` body that mentions each
    /// of `mentions`. Returns the message.
    pub fn assert_error(&self, status: u16, mentions: &[&str]) -> String {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status.as_u16(), status, "status; body: {text}");
        let message = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" string in the body: {text}"))
            .to_string();
        for mention in mentions {
            assert!(message.contains(mention), "error '{message}' should mention {mention}");
        }
        message
    }

    /// The outputs of a 200 infer answer, JSON or binary.
    pub fn outputs(&self) -> Vec<Tensor> {
        assert_eq!(self.status, StatusCode::OK, "infer failed: {}", String::from_utf8_lossy(&self.body));
        let header_length = self.headers.get(HEADER_LENGTH).map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .expect("numeric Inference-Header-Content-Length")
        });
        let (header, mut binary) = match header_length {
            Some(length) => {
                assert_eq!(self.content_type(), "application/octet-stream", "binary answer content type");
                (&self.body[..length], &self.body[length..])
            }
            None => {
                assert_eq!(self.content_type(), "application/json", "JSON answer content type");
                (&self.body[..], &[][..])
            }
        };
        let header: Value = serde_json::from_slice(header).expect("JSON header");
        let outputs = header["outputs"].as_array().expect("outputs array");
        let tensors = outputs
            .iter()
            .map(|output| match output.get("parameters") {
                None => Tensor::from_json(output),
                Some(parameters) => {
                    let size = parameters["binary_data_size"].as_u64().expect("binary_data_size") as usize;
                    assert!(size <= binary.len(), "binary_data_size {size} past the body's end");
                    let (raw, rest) = binary.split_at(size);
                    binary = rest;
                    let shape: Vec<i64> = serde_json::from_value(output["shape"].clone()).expect("shape");
                    Tensor::from_raw(
                        output["name"].as_str().expect("name"),
                        output["datatype"].as_str().expect("datatype"),
                        shape,
                        raw,
                    )
                }
            })
            .collect();
        assert!(binary.is_empty(), "{} bytes of binary data that no output claims", binary.len());
        tensors
    }

    fn content_type(&self) -> &str {
        self.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

/// Sends a request and collects the whole answer.
pub async fn send(request: reqwest::RequestBuilder) -> HttpReply {
    let response = request.send().await.expect("HTTP request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("HTTP body");
    HttpReply { status, headers, body }
}

/// GET `path`.
pub async fn get(http: &reqwest::Client, server: &Server, path: &str) -> HttpReply {
    send(http.get(server.url(path))).await
}

/// POST a JSON body to `path`.
pub async fn post_json(http: &reqwest::Client, server: &Server, path: &str, body: &Value) -> HttpReply {
    send(http.post(server.url(path)).json(body)).await
}

/// POST a binary-extension body to `path`.
pub async fn post_binary(
    http: &reqwest::Client,
    server: &Server,
    path: &str,
    body: Vec<u8>,
    header: usize,
) -> HttpReply {
    let request = http
        .post(server.url(path))
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(HEADER_LENGTH, header)
        .body(body);
    send(request).await
}

/// Infers over HTTP with JSON tensors both ways.
pub async fn http_infer_json(
    http: &reqwest::Client,
    server: &Server,
    model: &str,
    inputs: &[Tensor],
) -> Vec<Tensor> {
    post_json(http, server, &infer_path(model), &json_body(inputs)).await.outputs()
}

/// Infers over HTTP with binary tensors both ways (`binary_data_output`).
pub async fn http_infer_binary(
    http: &reqwest::Client,
    server: &Server,
    model: &str,
    inputs: &[Tensor],
) -> Vec<Tensor> {
    let (body, header) = binary_body(inputs, json!({ "parameters": { "binary_data_output": true } }));
    let reply = post_binary(http, server, &infer_path(model), body, header).await;
    assert!(reply.headers.contains_key(HEADER_LENGTH), "binary_data_output answered without binary data");
    reply.outputs()
}

/// How a gRPC request carries its inputs.
#[derive(Debug, Clone, Copy)]
pub enum Contents {
    /// `raw_input_contents`.
    Raw,
    /// Typed `contents` in each input.
    Typed,
}

/// A ModelInferRequest for `model` (latest version) with `inputs`.
pub fn grpc_request(model: &str, inputs: &[Tensor], contents: Contents) -> ModelInferRequest {
    let tensors = inputs
        .iter()
        .map(|t| InferInputTensor {
            name: t.name.clone(),
            datatype: t.datatype.clone(),
            shape: t.shape.clone(),
            parameters: Default::default(),
            contents: matches!(contents, Contents::Typed).then(|| t.to_contents()),
        })
        .collect();
    let raw = match contents {
        Contents::Raw => inputs.iter().map(|t| Bytes::from(t.to_raw())).collect(),
        Contents::Typed => Vec::new(),
    };
    ModelInferRequest {
        model_name: model.to_string(),
        inputs: tensors,
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// The outputs of a ModelInferResponse, read from `raw_output_contents`.
pub fn grpc_outputs(response: &ModelInferResponse) -> Vec<Tensor> {
    assert_eq!(
        response.raw_output_contents.len(),
        response.outputs.len(),
        "raw_output_contents should hold one entry per output"
    );
    response
        .outputs
        .iter()
        .zip(&response.raw_output_contents)
        .map(|(output, raw)| Tensor::from_raw(&output.name, &output.datatype, output.shape.clone(), raw))
        .collect()
}

/// Infers over gRPC and returns the outputs.
pub async fn grpc_infer(
    grpc: &mut GrpcClient,
    model: &str,
    inputs: &[Tensor],
    contents: Contents,
) -> Vec<Tensor> {
    let response = grpc.model_infer(grpc_request(model, inputs, contents)).await.expect("gRPC ModelInfer");
    grpc_outputs(response.get_ref())
}

/// Asserts that a gRPC call failed with `code` and a message that mentions each of `mentions`.
pub fn assert_grpc_error<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    mentions: &[&str],
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "gRPC code; message: {}", status.message());
    for mention in mentions {
        assert!(
            status.message().contains(mention),
            "gRPC error '{}' should mention {mention}",
            status.message()
        );
    }
}

/// The Triton statistics of the (only loaded version of) `model`.
pub async fn model_stats(http: &reqwest::Client, server: &Server, model: &str) -> Value {
    let reply = get(http, server, &format!("/v2/models/{model}/stats")).await;
    assert_eq!(reply.status, 200, "stats: {}", String::from_utf8_lossy(&reply.body));
    reply.json()["model_stats"][0].clone()
}

/// The statistics of `model` once `ready` holds for them (the scheduler counts a batch just
/// after answering its callers, so counters may trail the replies a moment); panics after 5 s.
pub async fn model_stats_when(
    http: &reqwest::Client,
    server: &Server,
    model: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stats = model_stats(http, server, model).await;
        if ready(&stats) {
            return stats;
        }
        assert!(std::time::Instant::now() < deadline, "statistics of {model} never matched: {stats}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The value of the sample `name{labels}` in a Prometheus text scrape; labels are matched as
/// `key="value"` pairs, in any order.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let all_match = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && all_match).then(|| value.parse().ok()).flatten()
    })
}
