//! Tensor encoding shared by the HTTP and gRPC front ends: raw buffers (binary extension,
//! `raw_input_contents`) and the length-prefixed layout of BYTES elements.

use bytes::{Buf, Bytes};
use rtserve_core::{DataType, Tensor, TensorData};

use crate::ServerError;

/// Checks a client's shape: no negative dimensions.
pub fn shape_from_client(name: &str, shape: &[i64]) -> Result<Vec<usize>, ServerError> {
    shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>().map_err(|_| {
        ServerError::BadRequest(format!("input '{name}': shape {shape:?} has a negative dimension"))
    })
}

/// Builds a tensor from a raw buffer: packed little-endian elements, or for BYTES a sequence of
/// 4-byte little-endian lengths each followed by that many bytes.
pub fn tensor_from_raw(
    name: &str,
    datatype: DataType,
    shape: Vec<usize>,
    raw: Bytes,
) -> Result<Tensor, ServerError> {
    let data = if datatype == DataType::Bytes {
        TensorData::Strings(split_bytes_elements(name, raw)?)
    } else {
        TensorData::Raw(raw)
    };
    Tensor::new(datatype, shape, data).map_err(|e| ServerError::BadRequest(format!("input '{name}': {e}")))
}

fn split_bytes_elements(name: &str, mut raw: Bytes) -> Result<Vec<Bytes>, ServerError> {
    let mut items = Vec::new();
    while raw.has_remaining() {
        if raw.remaining() < 4 {
            return Err(ServerError::BadRequest(format!(
                "input '{name}': BYTES element {} is truncated: {} bytes left, a 4-byte length was expected",
                items.len(),
                raw.remaining()
            )));
        }
        let length = raw.get_u32_le() as usize;
        if length > raw.remaining() {
            return Err(ServerError::BadRequest(format!(
                "input '{name}': BYTES element {} declares {length} bytes but only {} remain",
                items.len(),
                raw.remaining()
            )));
        }
        items.push(raw.split_to(length));
    }
    Ok(items)
}

/// The raw buffer of a tensor, in the layout [`tensor_from_raw`] reads.
pub fn tensor_to_raw(tensor: &Tensor) -> Bytes {
    match tensor.data() {
        TensorData::Raw(bytes) => bytes.clone(),
        TensorData::Strings(items) => join_bytes_elements(items.iter().map(|b| b.as_ref())).into(),
    }
}

/// Lays out BYTES elements as [`tensor_from_raw`] reads them: each a 4-byte little-endian length
/// followed by its bytes.
pub fn join_bytes_elements<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip() {
        let tensor = Tensor::new(
            DataType::Bytes,
            vec![2],
            TensorData::Strings(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"")]),
        )
        .expect("valid");
        let raw = tensor_to_raw(&tensor);
        assert_eq!(raw.as_ref(), b"\x02\0\0\0ab\0\0\0\0");
        let back = tensor_from_raw("x", DataType::Bytes, vec![2], raw).expect("decodes");
        assert_eq!(back, tensor);
    }

    #[test]
    fn truncated_bytes_elements_are_refused() {
        let err = tensor_from_raw("x", DataType::Bytes, vec![1], Bytes::from_static(b"\x05\0\0\0ab"));
        assert!(err.is_err_and(|e| e.to_string().contains("declares 5 bytes but only 2 remain")));
        let err = tensor_from_raw("x", DataType::Bytes, vec![1], Bytes::from_static(b"\x05\0"));
        assert!(err.is_err_and(|e| e.to_string().contains("truncated")));
    }

    #[test]
    fn wrong_size_is_refused() {
        let err = tensor_from_raw("x", DataType::Fp32, vec![2], Bytes::from_static(&[0; 7]));
        assert!(
            err.is_err_and(|e| e.to_string().starts_with("input 'x': shape [2] holds 2 elements of FP32"))
        );
    }
}
