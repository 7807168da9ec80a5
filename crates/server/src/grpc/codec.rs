//! Protobuf messages to and from rtserve requests: `raw_input_contents` or typed `contents` in,
//! `raw_output_contents` out. Public for the request-path benches (`benches/request_path.rs`).

use std::collections::HashMap;

use bytes::Bytes;
use half::f16;
use rtserve_core::wire::{join_bytes_elements, Element};
use rtserve_core::{DataType, InferRequest, InferResponse, NamedTensor, Parameter};

use crate::classification::{requested, Classification};
use crate::codec::{shape_from_client, tensor_from_raw, tensor_to_raw};
use crate::proto::{self, infer_parameter::ParameterChoice, InferParameter, InferTensorContents};
use crate::ServerError;

fn bad(message: String) -> ServerError {
    ServerError::BadRequest(message)
}

/// Decodes a ModelInferRequest.
pub fn decode_request(request: proto::ModelInferRequest) -> Result<InferRequest, ServerError> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries but there are {} inputs; give raw contents for every input or none",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype: DataType =
            input.datatype.parse().map_err(|e| bad(format!("input '{}': {e}", input.name)))?;
        let shape = shape_from_client(&input.name, &input.shape)?;
        let bytes = match (raw.next(), input.contents) {
            (Some(bytes), None) => bytes,
            (None, Some(contents)) => contents_to_raw(&input.name, datatype, contents)?,
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input '{}': give contents or raw_input_contents, not both",
                    input.name
                )))
            }
            (None, None) => {
                return Err(bad(format!("input '{}': no contents and no raw_input_contents", input.name)))
            }
        };
        let tensor = tensor_from_raw(&input.name, datatype, shape, bytes)?;
        inputs.push(NamedTensor { name: input.name, tensor });
    }
    Ok(InferRequest {
        received: None,
        id: request.id,
        inputs,
        outputs: request.outputs.into_iter().map(|o| o.name).collect(),
        parameters: parameters(request.parameters),
    })
}

/// The outputs asked for with the classification extension (`classification` parameter).
pub fn decode_classification(request: &proto::ModelInferRequest) -> Result<Vec<Classification>, ServerError> {
    let mut wanted = Vec::new();
    for output in &request.outputs {
        let parameters = parameters(output.parameters.clone());
        wanted.extend(requested(&output.name, |key| parameters.get(key))?);
    }
    Ok(wanted)
}

fn parameters(map: HashMap<String, InferParameter>) -> std::collections::BTreeMap<String, Parameter> {
    map.into_iter()
        .filter_map(|(key, value)| {
            let parameter = match value.parameter_choice? {
                ParameterChoice::BoolParam(b) => Parameter::Bool(b),
                ParameterChoice::Int64Param(i) => Parameter::Int(i),
                ParameterChoice::StringParam(s) => Parameter::String(s),
                ParameterChoice::DoubleParam(d) => Parameter::Double(d),
                ParameterChoice::Uint64Param(u) => Parameter::Int(i64::try_from(u).ok()?),
            };
            Some((key, parameter))
        })
        .collect()
}

/// Packs typed contents into little-endian bytes, checking that each value fits the datatype.
fn contents_to_raw(name: &str, datatype: DataType, c: InferTensorContents) -> Result<Bytes, ServerError> {
    /// The wire bytes of `values` as `T`, each narrowed from the wider type the field holds.
    fn narrow<S: Copy + std::fmt::Display, T: Element + TryFrom<S>>(
        name: &str,
        values: &[S],
    ) -> Result<Vec<u8>, ServerError> {
        let mut bytes = Vec::with_capacity(values.len() * T::SIZE);
        for (i, &v) in values.iter().enumerate() {
            let t = T::try_from(v).map_err(|_| {
                bad(format!("input '{name}': element {i} ({v}) is out of range for its datatype"))
            })?;
            t.put(&mut bytes);
        }
        Ok(bytes)
    }
    let bytes: Vec<u8> = match datatype {
        DataType::Bool => bool::encode(&c.bool_contents),
        DataType::Uint8 => narrow::<u32, u8>(name, &c.uint_contents)?,
        DataType::Uint16 => narrow::<u32, u16>(name, &c.uint_contents)?,
        DataType::Uint32 => u32::encode(&c.uint_contents),
        DataType::Uint64 => u64::encode(&c.uint64_contents),
        DataType::Int8 => narrow::<i32, i8>(name, &c.int_contents)?,
        DataType::Int16 => narrow::<i32, i16>(name, &c.int_contents)?,
        DataType::Int32 => i32::encode(&c.int_contents),
        DataType::Int64 => i64::encode(&c.int64_contents),
        DataType::Fp16 => {
            let halves: Vec<f16> = c.fp32_contents.iter().map(|&v| f16::from_f32(v)).collect();
            f16::encode(&halves)
        }
        DataType::Fp32 => f32::encode(&c.fp32_contents),
        DataType::Fp64 => f64::encode(&c.fp64_contents),
        DataType::Bytes => join_bytes_elements(c.bytes_contents.iter().map(|b| b.as_ref()))
            .map_err(|e| bad(format!("input '{name}': {e}")))?,
    };
    Ok(bytes.into())
}

/// Encodes a response with every output in `raw_output_contents`.
pub fn encode_response(response: InferResponse) -> Result<proto::ModelInferResponse, ServerError> {
    let mut raw_output_contents = Vec::with_capacity(response.outputs.len());
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for output in &response.outputs {
        raw_output_contents.push(tensor_to_raw(&output.name, &output.tensor)?);
        outputs.push(proto::model_infer_response::InferOutputTensor {
            name: output.name.clone(),
            datatype: output.tensor.datatype().as_str().to_string(),
            shape: output.tensor.shape().iter().map(|&d| d as i64).collect(),
            parameters: HashMap::new(),
            contents: None,
        });
    }
    Ok(proto::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: HashMap::new(),
        outputs,
        raw_output_contents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> proto::model_infer_request::InferInputTensor {
        proto::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    #[test]
    fn typed_and_raw_contents_agree() {
        let typed = proto::ModelInferRequest {
            inputs: vec![input(
                "INT16",
                vec![2],
                Some(InferTensorContents { int_contents: vec![-3, 7], ..Default::default() }),
            )],
            ..Default::default()
        };
        let raw = proto::ModelInferRequest {
            inputs: vec![input("INT16", vec![2], None)],
            raw_input_contents: vec![Bytes::from_static(&[0xfd, 0xff, 7, 0])],
            ..Default::default()
        };
        let typed = decode_request(typed).expect("valid");
        let raw = decode_request(raw).expect("valid");
        assert_eq!(typed.inputs, raw.inputs);
    }

    #[test]
    fn refuses_out_of_range_and_mismatched_raw() {
        let request = proto::ModelInferRequest {
            inputs: vec![input(
                "INT8",
                vec![1],
                Some(InferTensorContents { int_contents: vec![200], ..Default::default() }),
            )],
            ..Default::default()
        };
        let err = decode_request(request).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("element 0 (200) is out of range")));
        let request = proto::ModelInferRequest {
            inputs: vec![input("FP32", vec![1], None), input("FP32", vec![1], None)],
            raw_input_contents: vec![Bytes::from_static(&[0; 4])],
            ..Default::default()
        };
        let err = decode_request(request).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("raw_input_contents has 1 entries but there are 2 inputs")));
    }
}
