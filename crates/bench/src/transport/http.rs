//! KServe v2 over HTTP with reqwest: metadata, and infer calls with JSON tensors or the binary
//! tensor data extension (a JSON header, then raw little-endian tensor bytes).

use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use serde_json::{json, Value};

use super::Prepared;
use crate::config::{BenchConfig, Protocol};
use crate::inputs::RequestInputs;
use crate::outcome::{classify_http_status, error_chain, from_reqwest, RequestError};
use crate::target::ModelInfo;
use crate::BenchError;

const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// An HTTP client for one model. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    base: String,
    model: String,
    model_path: String,
    json: bool,
}

impl HttpClient {
    pub fn new(config: &BenchConfig) -> Result<HttpClient, BenchError> {
        let base = config.endpoint.http_base();
        let client = config
            .credentials
            .http_client()?
            .tcp_nodelay(true)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(usize::MAX)
            .build()
            .map_err(|e| BenchError::Unreachable { url: base.clone(), reason: error_chain(&e) })?;
        let mut model_path = format!("{base}/v2/models/{}", config.model);
        if let Some(version) = &config.model_version {
            model_path.push_str(&format!("/versions/{version}"));
        }
        Ok(HttpClient {
            client,
            base,
            model: config.model.clone(),
            model_path,
            json: config.protocol == Protocol::HttpJson,
        })
    }

    pub async fn metadata(&self) -> Result<ModelInfo, BenchError> {
        let reply = self
            .client
            .get(&self.model_path)
            .send()
            .await
            .map_err(|e| BenchError::Unreachable { url: self.base.clone(), reason: error_chain(&e) })?;
        let status = reply.status();
        let text = reply
            .text()
            .await
            .map_err(|e| BenchError::Unreachable { url: self.base.clone(), reason: error_chain(&e) })?;
        let server_says = || {
            serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect())
        };
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(BenchError::UnknownModel {
                url: self.base.clone(),
                model: self.model.clone(),
                reason: format!("HTTP 404: {}", server_says()),
            });
        }
        if !status.is_success() {
            return Err(BenchError::Metadata {
                model: self.model.clone(),
                reason: format!("GET {} answered {status}: {}", self.model_path, server_says()),
            });
        }
        let metadata: Value = serde_json::from_str(&text).map_err(|e| BenchError::Metadata {
            model: self.model.clone(),
            reason: format!("GET {} did not answer JSON: {e}", self.model_path),
        })?;
        ModelInfo::from_json(&self.model, &metadata)
    }

    pub fn prepare(&self, inputs: &RequestInputs) -> Result<Prepared, BenchError> {
        if self.json {
            Ok(Prepared::Http { body: encode_json(inputs)?, header_length: None })
        } else {
            let (body, header_length) = encode_binary(inputs)?;
            Ok(Prepared::Http { body, header_length: Some(header_length) })
        }
    }

    pub async fn infer(&self, body: &Bytes, header_length: Option<usize>) -> Result<(), RequestError> {
        let mut request = self.client.post(format!("{}/infer", self.model_path)).body(body.clone());
        request = match header_length {
            Some(length) => {
                request.header(HEADER_LENGTH, length).header(CONTENT_TYPE, "application/octet-stream")
            }
            None => request.header(CONTENT_TYPE, "application/json"),
        };
        let reply = request.send().await.map_err(|e| from_reqwest(&e))?;
        let status = reply.status();
        // The whole answer is part of the latency.
        let body = reply.bytes().await.map_err(|e| from_reqwest(&e))?;
        match classify_http_status(status.as_u16()) {
            None => Ok(()),
            Some(kind) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                Err(RequestError::new(kind, format!("HTTP {}: {}", status.as_u16(), text.trim())))
            }
        }
    }
}

fn inputs_error(e: String) -> BenchError {
    BenchError::Inputs(e)
}

/// A KServe v2 JSON body: `{"inputs": [{"name", "shape", "datatype", "data"}]}`.
pub fn encode_json(inputs: &RequestInputs) -> Result<Bytes, BenchError> {
    let tensors: Vec<Value> = inputs
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "shape": t.shape, "datatype": t.datatype.as_str(), "data": t.values.to_json()}))
        .collect();
    let body = serde_json::to_vec(&json!({ "inputs": tensors })).map_err(|e| inputs_error(e.to_string()))?;
    Ok(Bytes::from(body))
}

/// A binary-data body: the JSON header (each input with `binary_data_size`, every output asked
/// for as binary), then the inputs' raw bytes in order. Returns the body and the header's length.
pub fn encode_binary(inputs: &RequestInputs) -> Result<(Bytes, usize), BenchError> {
    let mut raw = Vec::with_capacity(inputs.tensors.len());
    let mut tensors = Vec::with_capacity(inputs.tensors.len());
    for t in &inputs.tensors {
        let bytes =
            t.values.to_raw(t.datatype).map_err(|e| inputs_error(format!("input '{}': {e}", t.name)))?;
        tensors.push(json!({
            "name": t.name,
            "shape": t.shape,
            "datatype": t.datatype.as_str(),
            "parameters": {"binary_data_size": bytes.len()},
        }));
        raw.push(bytes);
    }
    let header = json!({"inputs": tensors, "parameters": {"binary_data_output": true}});
    let mut body = serde_json::to_vec(&header).map_err(|e| inputs_error(e.to_string()))?;
    let header_length = body.len();
    for bytes in raw {
        body.extend_from_slice(&bytes);
    }
    Ok((Bytes::from(body), header_length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::InputTensor;
    use crate::values::{DataType, Values};

    fn inputs() -> RequestInputs {
        RequestInputs {
            tensors: vec![
                InputTensor {
                    name: "a".into(),
                    datatype: DataType::Fp32,
                    shape: vec![1, 2],
                    values: Values::Float(vec![1.0, 2.0]),
                },
                InputTensor {
                    name: "m".into(),
                    datatype: DataType::Bool,
                    shape: vec![1],
                    values: Values::Bool(vec![true]),
                },
            ],
        }
    }

    #[test]
    fn binary_body_is_header_then_raw_tensors() {
        let (body, header_length) = encode_binary(&inputs()).expect("ok");
        let header: Value = serde_json::from_slice(&body[..header_length]).expect("json header");
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], json!(8));
        assert_eq!(header["inputs"][1]["parameters"]["binary_data_size"], json!(1));
        assert_eq!(header["parameters"]["binary_data_output"], json!(true));
        assert_eq!(header["inputs"][0]["shape"], json!([1, 2]));
        let raw = &body[header_length..];
        assert_eq!(raw, [1.0f32.to_le_bytes().as_slice(), &2.0f32.to_le_bytes(), &[1]].concat());
    }

    #[test]
    fn json_body_carries_data() {
        let body = encode_json(&inputs()).expect("ok");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            v["inputs"][0],
            json!({"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]})
        );
        assert_eq!(v["inputs"][1]["data"], json!([true]));
    }
}
