//! Tensor encoding shared by the HTTP and gRPC front ends: raw buffers (binary extension,
//! `raw_input_contents`), BYTES elements laid out as the wire crate says.

use bytes::Bytes;
use rtserve_core::wire::{join_bytes_elements, split_bytes_elements};
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
        let items =
            split_bytes_elements(raw).map_err(|e| ServerError::BadRequest(format!("input '{name}': {e}")))?;
        TensorData::Strings(items)
    } else {
        TensorData::Raw(raw)
    };
    Tensor::new(datatype, shape, data).map_err(|e| ServerError::BadRequest(format!("input '{name}': {e}")))
}

/// The raw buffer of a tensor, in the layout [`tensor_from_raw`] reads; an error only for a
/// BYTES element over 4 GiB, which the layout cannot describe.
pub fn tensor_to_raw(name: &str, tensor: &Tensor) -> Result<Bytes, ServerError> {
    match tensor.data() {
        TensorData::Raw(bytes) => Ok(bytes.clone()),
        TensorData::Strings(items) => join_bytes_elements(items.iter().map(|b| b.as_ref()))
            .map(Bytes::from)
            .map_err(|e| ServerError::Internal(format!("output '{name}': {e}"))),
    }
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
        let raw = tensor_to_raw("x", &tensor).expect("short elements");
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
