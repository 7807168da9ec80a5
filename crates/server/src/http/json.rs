//! The KServe v2 HTTP body: JSON tensors and the binary tensor data extension
//! (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`, `binary_data_output`).
//! Public for the request-path benches (`benches/request_path.rs`).

use std::collections::BTreeMap;

use bytes::Bytes;
use half::f16;
use rtserve_core::wire::Element;
use rtserve_core::{DataType, InferRequest, InferResponse, NamedTensor, Parameter, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::api::{elements_schema, input_data_schema};
use crate::classification::{requested, Classification};
use crate::codec::{shape_from_client, tensor_from_raw, tensor_to_raw};
use crate::ServerError;

/// An inference request (the JSON body, or the JSON header of a binary-extension body).
#[derive(Deserialize, ToSchema)]
#[schema(as = InferRequest)]
pub struct JsonRequest {
    /// Echoed in the reply.
    #[serde(default)]
    id: Option<String>,
    /// `binary_data_output` (true: every output as binary data), `priority`, `timeout` (µs).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    /// The outputs wanted (all when absent), each with its encoding.
    #[serde(default)]
    outputs: Vec<JsonRequestedOutput>,
}

/// One input tensor: its data inline (`data`) or in the binary part (`binary_data_size`).
#[derive(Deserialize, ToSchema)]
#[schema(as = InferInput)]
pub struct JsonInput {
    name: String,
    /// With the batch dimension when the model batches.
    shape: Vec<i64>,
    /// `BOOL`, `UINT8`..`UINT64`, `INT8`..`INT64`, `FP16`, `FP32`, `FP64`, `BYTES`.
    datatype: String,
    /// `binary_data_size`: the bytes of this input in the binary part.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    #[serde(default)]
    #[schema(schema_with = input_data_schema)]
    data: Option<Value>,
}

/// An output the client asks for.
#[derive(Deserialize, ToSchema)]
#[schema(as = InferRequestedOutput)]
pub struct JsonRequestedOutput {
    name: String,
    /// `binary_data` (true: this output as binary data), `classification` (top-k labels).
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
}

/// An inference reply (the JSON body, or the JSON header of a binary-extension body).
#[derive(Serialize, ToSchema)]
#[schema(as = InferResponse)]
pub struct JsonResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    /// The request's id, when it had one.
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    outputs: Vec<JsonOutput<'a>>,
}

/// One output tensor: its data inline, or its size in the binary part.
#[derive(Serialize, ToSchema)]
#[schema(as = InferOutput)]
pub struct JsonOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryDataSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = elements_schema)]
    data: Option<Value>,
}

/// Where a binary output's data is: this many bytes of the binary part, in output order.
#[derive(Serialize, ToSchema)]
pub struct BinaryDataSize {
    binary_data_size: usize,
}

/// How the client wants each output: which ones as binary, which ones classified.
#[derive(Debug, Default)]
pub struct OutputEncoding {
    binary_default: bool,
    binary: Vec<(String, bool)>,
    /// Outputs asked for with the classification extension.
    pub classification: Vec<Classification>,
}

impl OutputEncoding {
    fn is_binary(&self, name: &str) -> bool {
        self.binary.iter().find(|(n, _)| n == name).map_or(self.binary_default, |(_, b)| *b)
    }
}

fn bad(message: String) -> ServerError {
    ServerError::BadRequest(message)
}

/// Decodes an infer body. `header_length` is the `Inference-Header-Content-Length` value: the
/// JSON header is that many bytes, binary tensor data follows.
pub fn decode_request(
    body: Bytes,
    header_length: Option<usize>,
) -> Result<(InferRequest, OutputEncoding), ServerError> {
    let (header, mut binary) = match header_length {
        Some(length) if length > body.len() => {
            return Err(bad(format!(
                "Inference-Header-Content-Length is {length} but the body has only {} bytes",
                body.len()
            )))
        }
        Some(length) => {
            let mut header = body;
            let binary = header.split_off(length);
            (header, binary)
        }
        None => (body, Bytes::new()),
    };
    let request: JsonRequest =
        serde_json::from_slice(&header).map_err(|e| bad(format!("invalid inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype: DataType =
            input.datatype.parse().map_err(|e| bad(format!("input '{}': {e}", input.name)))?;
        let shape = shape_from_client(&input.name, &input.shape)?;
        let tensor = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(size), None) => {
                let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                    bad(format!("input '{}': binary_data_size must be a non-negative integer", input.name))
                })?;
                if size > binary.len() {
                    return Err(bad(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                tensor_from_raw(&input.name, datatype, shape, binary.split_to(size))?
            }
            (None, Some(data)) => tensor_from_json(&input.name, datatype, shape, &data)?,
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input '{}': give either data or binary_data_size, not both",
                    input.name
                )))
            }
            (None, None) => {
                return Err(bad(format!("input '{}': no data and no binary_data_size", input.name)))
            }
        };
        inputs.push(NamedTensor { name: input.name, tensor });
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "the body has {} bytes of binary data beyond what the inputs' binary_data_size declare",
            binary.len()
        )));
    }
    let mut classification = Vec::new();
    for output in &request.outputs {
        let parameters: BTreeMap<&str, Parameter> =
            output.parameters.iter().filter_map(|(k, v)| Some((k.as_str(), parameter(v.clone())?))).collect();
        classification.extend(requested(&output.name, |key| parameters.get(key))?);
    }
    let encoding = OutputEncoding {
        classification,
        binary_default: flag(&request.parameters, "binary_data_output")?,
        binary: request
            .outputs
            .iter()
            .map(|o| Ok((o.name.clone(), flag(&o.parameters, "binary_data")?)))
            .collect::<Result<_, ServerError>>()?,
    };
    let request = InferRequest {
        received: None,
        id: request.id.unwrap_or_default(),
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        parameters: request
            .parameters
            .into_iter()
            .filter_map(|(k, v)| parameter(v).map(|p| (k, p)))
            .collect(),
    };
    Ok((request, encoding))
}

fn flag(parameters: &Map<String, Value>, key: &str) -> Result<bool, ServerError> {
    match parameters.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!("parameter '{key}' must be true or false, not {other}"))),
    }
}

fn parameter(value: Value) -> Option<Parameter> {
    match value {
        Value::Bool(b) => Some(Parameter::Bool(b)),
        Value::String(s) => Some(Parameter::String(s)),
        Value::Number(n) => n.as_i64().map(Parameter::Int).or_else(|| n.as_f64().map(Parameter::Double)),
        _ => None,
    }
}

/// Flattens nested JSON arrays in row-major order.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        scalar => out.push(scalar),
    }
}

/// The wire bytes of JSON integers as `T`, each checked to fit.
fn integers<T: Element + TryFrom<i128>>(name: &str, values: &[&Value]) -> Result<Vec<u8>, ServerError> {
    let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
    for (i, v) in values.iter().enumerate() {
        let n = v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from));
        let n = n.and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
            bad(format!(
                "input '{name}': element {i} ({v}) is not an integer in the range of {}",
                T::DATATYPE
            ))
        })?;
        n.put(&mut bytes);
    }
    Ok(bytes)
}

/// The wire bytes of JSON numbers as `T`, converted from `f64` by `convert`.
fn floats<T: Element>(
    name: &str,
    values: &[&Value],
    convert: impl Fn(f64) -> T,
) -> Result<Vec<u8>, ServerError> {
    let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
    for (i, v) in values.iter().enumerate() {
        let n =
            v.as_f64().ok_or_else(|| bad(format!("input '{name}': element {i} ({v}) is not a number")))?;
        convert(n).put(&mut bytes);
    }
    Ok(bytes)
}

fn tensor_from_json(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    data: &Value,
) -> Result<Tensor, ServerError> {
    let mut values = Vec::new();
    flatten(data, &mut values);
    let raw: Vec<u8> = match datatype {
        DataType::Bool => values
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Bool(b) => Ok(u8::from(*b)),
                other => Err(bad(format!("input '{name}': element {i} ({other}) is not true or false"))),
            })
            .collect::<Result<_, _>>()?,
        DataType::Uint8 => integers::<u8>(name, &values)?,
        DataType::Uint16 => integers::<u16>(name, &values)?,
        DataType::Uint32 => integers::<u32>(name, &values)?,
        DataType::Uint64 => integers::<u64>(name, &values)?,
        DataType::Int8 => integers::<i8>(name, &values)?,
        DataType::Int16 => integers::<i16>(name, &values)?,
        DataType::Int32 => integers::<i32>(name, &values)?,
        DataType::Int64 => integers::<i64>(name, &values)?,
        DataType::Fp16 => floats(name, &values, f16::from_f64)?,
        DataType::Fp32 => floats(name, &values, |n| n as f32)?,
        DataType::Fp64 => floats(name, &values, |n| n)?,
        DataType::Bytes => {
            let items = values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(Bytes::from(s.clone())),
                    other => Err(bad(format!("input '{name}': element {i} ({other}) is not a string"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Tensor::new(datatype, shape, TensorData::Strings(items))
                .map_err(|e| bad(format!("input '{name}': {e}")));
        }
    };
    Tensor::new(datatype, shape, TensorData::Raw(raw.into())).map_err(|e| bad(format!("input '{name}': {e}")))
}

/// The elements of `raw` as `T`, each made a JSON value by `map`.
fn json_values<T: Element>(raw: &[u8], map: impl Fn(T) -> Value) -> Vec<Value> {
    T::decode_iter(raw).map(map).collect()
}

/// A tensor's elements as a flat JSON array (strings for BYTES), as replies carry them.
pub fn tensor_to_json(tensor: &Tensor) -> Value {
    let raw = match tensor.data() {
        TensorData::Strings(items) => {
            return Value::Array(
                items.iter().map(|b| Value::String(String::from_utf8_lossy(b).into_owned())).collect(),
            )
        }
        TensorData::Raw(raw) => raw,
    };
    let values = match tensor.datatype() {
        DataType::Bool => json_values(raw, Value::Bool),
        DataType::Uint8 => json_values(raw, |v: u8| json!(v)),
        DataType::Int8 => json_values(raw, |v: i8| json!(v)),
        DataType::Uint16 => json_values(raw, |v: u16| json!(v)),
        DataType::Uint32 => json_values(raw, |v: u32| json!(v)),
        DataType::Uint64 => json_values(raw, |v: u64| json!(v)),
        DataType::Int16 => json_values(raw, |v: i16| json!(v)),
        DataType::Int32 => json_values(raw, |v: i32| json!(v)),
        DataType::Int64 => json_values(raw, |v: i64| json!(v)),
        DataType::Fp16 => json_values(raw, |v: f16| json!(v.to_f32())),
        DataType::Fp32 => json_values(raw, |v: f32| json!(v)),
        DataType::Fp64 => json_values(raw, |v: f64| json!(v)),
        DataType::Bytes => Vec::new(),
    };
    Value::Array(values)
}

/// Encodes a response. Returns the body as chunks (the JSON header, then the raw data of each
/// binary output, shared with the tensor rather than copied) and, when outputs are binary, the
/// JSON header length.
pub fn encode_response(
    response: &InferResponse,
    encoding: &OutputEncoding,
) -> Result<(Vec<Bytes>, Option<usize>), ServerError> {
    let mut chunks = vec![Bytes::new()];
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for output in &response.outputs {
        let (parameters, data) = if encoding.is_binary(&output.name) {
            let raw = tensor_to_raw(&output.name, &output.tensor)?;
            let size = raw.len();
            chunks.push(raw);
            (Some(BinaryDataSize { binary_data_size: size }), None)
        } else {
            (None, Some(tensor_to_json(&output.tensor)))
        };
        outputs.push(JsonOutput {
            name: &output.name,
            datatype: output.tensor.datatype().as_str(),
            shape: output.tensor.shape(),
            parameters,
            data,
        });
    }
    let header = JsonResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: &response.id,
        outputs,
    };
    let header = Bytes::from(
        serde_json::to_vec(&header).map_err(|e| ServerError::Internal(format!("encoding the reply: {e}")))?,
    );
    let length = (chunks.len() > 1).then_some(header.len());
    chunks[0] = header;
    Ok((chunks, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<InferRequest, String> {
        decode_request(Bytes::from(body.to_string()), None).map(|(r, _)| r).map_err(|e| e.to_string())
    }

    #[test]
    fn decodes_nested_json_data() {
        let request =
            decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#)
                .expect("valid");
        assert_eq!(request.inputs[0].tensor.to_f32(), Some(vec![1.0, 2.0, 3.5, 4.0]));
    }

    #[test]
    fn binary_and_json_decode_alike() {
        let values = [1.5f32, -2.0];
        let header =
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        let (binary, _) = decode_request(body.into(), Some(header.len())).expect("valid");
        let json = decode(r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1.5,-2.0]}]}"#)
            .expect("valid");
        assert_eq!(binary.inputs, json.inputs);
    }

    #[test]
    fn refuses_bad_bodies_with_the_field_named() {
        let cases = [
            (
                r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}]}"#,
                "input 'x': element 1 (\"a\") is not a number",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
                "input 'x': shape [3] holds 3 elements",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
                "input 'x': unknown datatype 'FLOAT'",
            ),
            (r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, "negative dimension"),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#,
                "element 0 (300) is not an integer in the range of INT8",
            ),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, "no data and no binary_data_size"),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                "binary_data_size is 4 but only 0 bytes",
            ),
            (r#"{"inputs": ["#, "invalid inference request JSON"),
        ];
        for (body, expected) in cases {
            let err = decode(body).expect_err(body);
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
    }

    #[test]
    fn refuses_header_length_past_body_and_trailing_bytes() {
        let err = decode_request(Bytes::from_static(b"{}"), Some(10)).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("Inference-Header-Content-Length is 10")));
        let header =
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = header.as_bytes().to_vec();
        body.extend([0u8; 6]);
        let err = decode_request(body.into(), Some(header.len())).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("2 bytes of binary data beyond")));
    }

    #[test]
    fn encodes_json_without_parameters_and_binary_with_size() {
        let tensor = Tensor::from_f32(vec![2], &[1.0, 2.0]).expect("valid");
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: String::new(),
            outputs: vec![NamedTensor { name: "y".into(), tensor }],
        };
        let (chunks, length) = encode_response(&response, &OutputEncoding::default()).expect("encodes");
        assert_eq!((chunks.len(), length), (1, None));
        let body = chunks.concat();
        let value: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["outputs"][0]["data"], json!([1.0, 2.0]));
        assert!(value["outputs"][0].get("parameters").is_none());
        let encoding = OutputEncoding { binary_default: true, ..OutputEncoding::default() };
        let (chunks, length) = encode_response(&response, &encoding).expect("encodes");
        let length = length.expect("binary");
        assert_eq!(chunks.len(), 2, "the header, then the output's data as it is");
        let body = chunks.concat();
        let header: Value = serde_json::from_slice(&body[..length]).expect("json");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], json!(8));
        assert_eq!(&body[length..], &[0, 0, 128, 63, 0, 0, 0, 64]);
    }
}
