//! Reading and writing ONNX files and the tensors inside them.

use std::path::Path;

use prost::Message;

use crate::error::{OptimizeError, Result};
use crate::onnx::{tensor_proto::DataType, type_proto, ModelProto, TensorProto, TypeProto, ValueInfoProto};

/// Reads and decodes an ONNX file; checks that it has a graph.
pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes =
        std::fs::read(path).map_err(|source| OptimizeError::Read { path: path.to_path_buf(), source })?;
    from_bytes(&bytes, path)
}

/// Decodes the bytes of an ONNX file read from `path` (named in errors); checks that it has a
/// graph. What [`load`] does once the file is read (the fuzz target `onnx_model` enters here).
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes)
        .map_err(|source| OptimizeError::Decode { path: path.to_path_buf(), source })?;
    if model.graph.is_none() {
        return Err(OptimizeError::model(format!("{}: the model has no graph", path.display())));
    }
    Ok(model)
}

/// Encodes and writes an ONNX file.
pub fn save(model: &ModelProto, path: &Path) -> Result<()> {
    std::fs::write(path, model.encode_to_vec())
        .map_err(|source| OptimizeError::Write { path: path.to_path_buf(), source })
}

/// The version of the default (`ai.onnx`) operator set the model imports.
pub fn default_opset(model: &ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version)
}

/// The element count of a tensor's shape; an error on a negative or overflowing dimension.
pub fn element_count(tensor: &TensorProto) -> Result<usize> {
    tensor.dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d)).ok_or_else(|| {
            OptimizeError::model(format!("tensor '{}' has an invalid shape {:?}", tensor.name, tensor.dims))
        })
    })
}

fn check_len(tensor: &TensorProto, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(OptimizeError::model(format!(
            "tensor '{}' has {got} values but its shape {:?} holds {expected}",
            tensor.name, tensor.dims
        )));
    }
    Ok(())
}

fn check_stored_inline(tensor: &TensorProto) -> Result<()> {
    if tensor.data_location == crate::onnx::tensor_proto::DataLocation::External as i32
        || !tensor.external_data.is_empty()
    {
        return Err(OptimizeError::model(format!(
            "tensor '{}' keeps its data in an external file, which is not supported",
            tensor.name
        )));
    }
    Ok(())
}

/// The values of a FLOAT tensor (raw data or `float_data`).
pub fn float_values(tensor: &TensorProto) -> Result<Vec<f32>> {
    check_stored_inline(tensor)?;
    if tensor.data_type != DataType::Float as i32 {
        return Err(OptimizeError::model(format!(
            "tensor '{}' is {}, expected FLOAT",
            tensor.name,
            type_name(tensor.data_type)
        )));
    }
    let n = element_count(tensor)?;
    let values: Vec<f32> = if !tensor.raw_data.is_empty() || tensor.float_data.is_empty() && n == 0 {
        if !tensor.raw_data.len().is_multiple_of(4) {
            return Err(OptimizeError::model(format!(
                "tensor '{}' has {} raw bytes, not a whole number of FLOAT values",
                tensor.name,
                tensor.raw_data.len()
            )));
        }
        tensor.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    } else {
        tensor.float_data.clone()
    };
    check_len(tensor, values.len(), n)?;
    Ok(values)
}

/// The values of an INT64 tensor (raw data or `int64_data`).
pub fn int64_values(tensor: &TensorProto) -> Result<Vec<i64>> {
    check_stored_inline(tensor)?;
    if tensor.data_type != DataType::Int64 as i32 {
        return Err(OptimizeError::model(format!(
            "tensor '{}' is {}, expected INT64",
            tensor.name,
            type_name(tensor.data_type)
        )));
    }
    let n = element_count(tensor)?;
    let values: Vec<i64> = if !tensor.raw_data.is_empty() {
        if !tensor.raw_data.len().is_multiple_of(8) {
            return Err(OptimizeError::model(format!(
                "tensor '{}' has a truncated raw INT64 buffer",
                tensor.name
            )));
        }
        tensor
            .raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    } else {
        tensor.int64_data.clone()
    };
    check_len(tensor, values.len(), n)?;
    Ok(values)
}

/// A FLOAT tensor with raw little-endian data.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    raw_tensor(name, DataType::Float, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A FLOAT16 tensor with raw little-endian data.
pub fn float16_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let bytes = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    raw_tensor(name, DataType::Float16, dims, bytes)
}

/// An INT8 tensor.
pub fn int8_tensor(name: &str, dims: &[i64], values: &[i8]) -> TensorProto {
    raw_tensor(name, DataType::Int8, dims, values.iter().map(|v| v.to_le_bytes()[0]).collect())
}

/// A UINT8 tensor.
pub fn uint8_tensor(name: &str, dims: &[i64], values: &[u8]) -> TensorProto {
    raw_tensor(name, DataType::Uint8, dims, values.to_vec())
}

/// An INT32 tensor.
pub fn int32_tensor(name: &str, dims: &[i64], values: &[i32]) -> TensorProto {
    raw_tensor(name, DataType::Int32, dims, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

fn raw_tensor(name: &str, data_type: DataType, dims: &[i64], raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        data_type: data_type as i32,
        dims: dims.to_vec(),
        raw_data,
        ..TensorProto::default()
    }
}

/// The name of an ONNX element type, for messages.
pub fn type_name(data_type: i32) -> String {
    DataType::try_from(data_type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("type {data_type}"))
}

/// The element type of a tensor value, if the value info says.
pub fn elem_type(info: &ValueInfoProto) -> Option<i32> {
    match info.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t.elem_type),
        _ => None,
    }
}

/// The dimensions of a tensor value info (`None` for a symbolic or unknown one), if it has a
/// shape.
pub fn tensor_dims(info: &ValueInfoProto) -> Option<Vec<Option<usize>>> {
    let type_proto::Value::TensorType(t) = info.r#type.as_ref()?.value.as_ref()? else { return None };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(crate::onnx::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    Some(v as usize)
                }
                _ => None,
            })
            .collect(),
    )
}

/// Sets the element type of a tensor value info, keeping its shape.
pub fn set_elem_type(info: &mut ValueInfoProto, data_type: DataType) {
    if let Some(TypeProto { value: Some(type_proto::Value::TensorType(t)), .. }) = info.r#type.as_mut() {
        t.elem_type = data_type as i32;
    }
}

/// A value info for a tensor of a given element type and unknown shape.
pub fn tensor_value_info(name: &str, data_type: DataType) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type as i32,
                shape: None,
            })),
            denotation: String::new(),
        }),
        ..ValueInfoProto::default()
    }
}
