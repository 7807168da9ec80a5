//! Tensors as the wire carries them: a type, a shape and little-endian element bytes.

use bytes::Bytes;

use rtserve_wire::Element;

use crate::DataType;

/// The elements of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, packed little-endian, row-major.
    Raw(Bytes),
    /// BYTES elements, one buffer each, row-major.
    Strings(Vec<Bytes>),
}

/// A dense tensor. Invariant (kept by [`Tensor::new`]): the data holds exactly
/// `shape.iter().product()` elements of `datatype`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    datatype: DataType,
    shape: Vec<usize>,
    data: TensorData,
}

/// Why a tensor could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements of {datatype} ({expected_bytes} bytes) but the data has {actual_bytes} bytes")]
    ByteCount {
        datatype: DataType,
        shape: Vec<usize>,
        expected: usize,
        expected_bytes: usize,
        actual_bytes: usize,
    },
    #[error("shape {shape:?} holds {expected} elements but the data has {actual}")]
    ElementCount { shape: Vec<usize>, expected: usize, actual: usize },
    #[error("BYTES data given for a {0} tensor, or fixed-size data for a BYTES tensor")]
    Kind(DataType),
    #[error("shape {0:?} is too large")]
    Overflow(Vec<usize>),
}

impl Tensor {
    /// Builds a tensor, checking that the data matches the type and shape.
    pub fn new(datatype: DataType, shape: Vec<usize>, data: TensorData) -> Result<Self, TensorError> {
        let expected = element_count(&shape).ok_or_else(|| TensorError::Overflow(shape.clone()))?;
        match (&data, datatype.size()) {
            (TensorData::Raw(bytes), Some(size)) => {
                let expected_bytes =
                    expected.checked_mul(size).ok_or_else(|| TensorError::Overflow(shape.clone()))?;
                if bytes.len() != expected_bytes {
                    return Err(TensorError::ByteCount {
                        datatype,
                        shape,
                        expected,
                        expected_bytes,
                        actual_bytes: bytes.len(),
                    });
                }
            }
            (TensorData::Strings(items), None) => {
                if items.len() != expected {
                    return Err(TensorError::ElementCount { shape, expected, actual: items.len() });
                }
            }
            _ => return Err(TensorError::Kind(datatype)),
        }
        Ok(Tensor { datatype, shape, data })
    }

    /// Builds an FP32 tensor from values.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self, TensorError> {
        Tensor::new(DataType::Fp32, shape, TensorData::Raw(f32::encode(values).into()))
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian bytes; `None` for BYTES tensors.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Raw(b) => Some(b),
            TensorData::Strings(_) => None,
        }
    }

    /// The values of an FP32 tensor; `None` for other types.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match (self.datatype, &self.data) {
            (DataType::Fp32, TensorData::Raw(b)) => Some(f32::decode(b)),
            _ => None,
        }
    }
}

/// The product of the dimensions, `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A tensor with the name of the model input or output it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_byte_count() {
        let err = Tensor::new(DataType::Fp32, vec![2, 2], TensorData::Raw(vec![0u8; 15].into()));
        assert!(matches!(err, Err(TensorError::ByteCount { expected_bytes: 16, actual_bytes: 15, .. })));
        assert!(Tensor::new(DataType::Fp32, vec![2, 2], TensorData::Raw(vec![0u8; 16].into())).is_ok());
    }

    #[test]
    fn checks_kind_and_overflow() {
        let err = Tensor::new(DataType::Bytes, vec![1], TensorData::Raw(vec![0u8].into()));
        assert!(matches!(err, Err(TensorError::Kind(DataType::Bytes))));
        let err = Tensor::new(DataType::Fp64, vec![usize::MAX, 2], TensorData::Raw(Bytes::new()));
        assert!(matches!(err, Err(TensorError::Overflow(_))));
    }

    #[test]
    fn f32_round_trip() {
        let t = Tensor::from_f32(vec![3], &[1.0, -2.5, 3.25]).expect("valid");
        assert_eq!(t.to_f32(), Some(vec![1.0, -2.5, 3.25]));
    }
}
