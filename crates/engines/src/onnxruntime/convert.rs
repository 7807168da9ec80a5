//! Conversion between rtserve tensors (a type, a shape and little-endian element bytes) and
//! ONNX Runtime values.
//!
//! Going in, the fixed-size elements of a batch's requests are decoded into one typed `Vec` that
//! ONNX Runtime then uses in place (one copy, which also fixes alignment); a lone request's UINT8
//! data is lent to ONNX Runtime without any copy. Going out, the output is read in place and encoded into the bytes of the reply.

use std::fmt::Debug;
use std::marker::PhantomData;

use bytemuck::Pod;

use bytes::Bytes;
use half::f16;
use ort::session::SessionInputValue;
use ort::value::{
    DynValue, PrimitiveTensorElementType, Shape, Tensor as OrtTensor, TensorElementType, TensorRef, Utf8Data,
    ValueType,
};
use rtserve_core::wire::Element;
use rtserve_core::{BatchInput, DataType, EngineError, Tensor, TensorData};

/// The rtserve type of an ONNX Runtime element type; `None` where rtserve has no equivalent
/// (bfloat16, complex, 8-bit floats, 4-bit and 2-bit integers).
pub(crate) fn data_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// Builds the ONNX Runtime input for `input`: its parts decoded into one typed buffer that
/// ONNX Runtime then uses in place (the one copy). UINT8 data of a single request is lent to
/// ONNX Runtime without any copy.
pub(crate) fn to_input<'a>(input: &BatchInput<'a>) -> Result<SessionInputValue<'a>, EngineError> {
    let shape = input.shape().to_vec();
    let value = match input.datatype() {
        DataType::Uint8 => match input.as_single().and_then(Tensor::raw) {
            Some(bytes) => {
                return TensorRef::from_array_view((shape, bytes.as_ref()))
                    .map(SessionInputValue::from)
                    .map_err(ort_error)
            }
            None => decode_input::<u8>(shape, input)?,
        },
        DataType::Bool => decode_input::<bool>(shape, input)?,
        DataType::Uint16 => decode_input::<u16>(shape, input)?,
        DataType::Uint32 => decode_input::<u32>(shape, input)?,
        DataType::Uint64 => decode_input::<u64>(shape, input)?,
        DataType::Int8 => decode_input::<i8>(shape, input)?,
        DataType::Int16 => decode_input::<i16>(shape, input)?,
        DataType::Int32 => decode_input::<i32>(shape, input)?,
        DataType::Int64 => decode_input::<i64>(shape, input)?,
        DataType::Fp16 => decode_input::<f16>(shape, input)?,
        DataType::Fp32 => decode_input::<f32>(shape, input)?,
        DataType::Fp64 => decode_input::<f64>(shape, input)?,
        DataType::Bytes => strings_input(shape, input)?,
    };
    Ok(SessionInputValue::Owned(value))
}

/// `from_array` checks the element count against the shape.
fn decode_input<T: Element + PrimitiveTensorElementType + Debug>(
    shape: Vec<usize>,
    input: &BatchInput<'_>,
) -> Result<DynValue, EngineError> {
    OrtTensor::from_array((shape, input.decode::<T>())).map(OrtTensor::into_dyn).map_err(ort_error)
}

/// One BYTES element, handed to ONNX Runtime as a string (which must not hold a NUL byte).
#[derive(Clone)]
struct ByteString(Bytes);

impl Utf8Data for ByteString {
    fn as_utf8_bytes(&self) -> &[u8] {
        &self.0
    }
}

pub(crate) fn strings_input(shape: Vec<usize>, input: &BatchInput<'_>) -> Result<DynValue, EngineError> {
    let items: Vec<ByteString> = input.strings().cloned().map(ByteString).collect();
    OrtTensor::from_string_array((shape, &items[..]))
        .map(OrtTensor::into_dyn)
        .map_err(|e| EngineError::new(format!("onnxruntime: building a string tensor: {e}")))
}

/// Makes an ONNX Runtime output an rtserve tensor with the output's own shape. Numbers stay in
/// ONNX Runtime's buffer, which the tensor's bytes keep alive (no copy); BOOL and strings are
/// converted.
pub(crate) fn from_output(value: DynValue) -> Result<Tensor, EngineError> {
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(EngineError::new(format!(
                "the output is a {other}, not a tensor; only tensor outputs are supported"
            )))
        }
    };
    match ty {
        TensorElementType::Bool => encode_output::<bool>(&value),
        TensorElementType::Uint8 => lend_output::<u8>(value),
        TensorElementType::Uint16 => lend_output::<u16>(value),
        TensorElementType::Uint32 => lend_output::<u32>(value),
        TensorElementType::Uint64 => lend_output::<u64>(value),
        TensorElementType::Int8 => lend_output::<i8>(value),
        TensorElementType::Int16 => lend_output::<i16>(value),
        TensorElementType::Int32 => lend_output::<i32>(value),
        TensorElementType::Int64 => lend_output::<i64>(value),
        TensorElementType::Float16 => lend_output::<f16>(value),
        TensorElementType::Float32 => lend_output::<f32>(value),
        TensorElementType::Float64 => lend_output::<f64>(value),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(ort_error)?;
            let items = strings.into_iter().map(Bytes::from).collect();
            Tensor::new(DataType::Bytes, dims(shape)?, TensorData::Strings(items))
                .map_err(|e| EngineError::new(format!("onnxruntime returned a bad tensor: {e}")))
        }
        other => Err(EngineError::new(format!(
            "the output has element type {other}, which rtserve does not support"
        ))),
    }
}

/// BOOL: ONNX Runtime's `bool` is one byte, but only 0 and 1 are valid `bool`s, so it is read
/// element by element into the reply's bytes.
fn encode_output<T: Element + PrimitiveTensorElementType + Debug>(
    value: &DynValue,
) -> Result<Tensor, EngineError> {
    let (shape, values) = value.try_extract_tensor::<T>().map_err(ort_error)?;
    let bytes = T::encode(values);
    Tensor::new(T::DATATYPE, dims(shape)?, TensorData::Raw(bytes.into()))
        .map_err(|e| EngineError::new(format!("onnxruntime returned a bad tensor: {e}")))
}

/// A number output lent as it is: its elements in host order are the wire's little-endian bytes.
fn lend_output<T: Element + PrimitiveTensorElementType + Pod + Debug>(
    value: DynValue,
) -> Result<Tensor, EngineError> {
    let shape = dims(value.try_extract_tensor::<T>().map_err(ort_error)?.0)?;
    let bytes = Bytes::from_owner(Lent::<T> { value, element: PhantomData });
    Tensor::new(T::DATATYPE, shape, TensorData::Raw(bytes))
        .map_err(|e| EngineError::new(format!("onnxruntime returned a bad tensor: {e}")))
}

/// An ONNX Runtime output of `T` elements (checked by [`lend_output`]) whose bytes a `Bytes`
/// lends out while it keeps the value alive.
struct Lent<T> {
    value: DynValue,
    element: PhantomData<fn() -> T>,
}

impl<T: PrimitiveTensorElementType + Pod + Debug> AsRef<[u8]> for Lent<T> {
    fn as_ref(&self) -> &[u8] {
        // The element type was checked when the value was lent, so this extraction succeeds.
        self.value.try_extract_tensor::<T>().map_or(&[][..], |(_, data)| bytemuck::cast_slice(data))
    }
}

/// The dimensions of a concrete value (never negative; an error if they are).
fn dims(shape: &Shape) -> Result<Vec<usize>, EngineError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| EngineError::new(format!("onnxruntime returned a tensor of shape {shape}")))
}

pub(crate) fn ort_error(e: ort::Error) -> EngineError {
    EngineError::new(format!("onnxruntime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_types_map_to_data_types() {
        assert_eq!(data_type(TensorElementType::Float32), Some(DataType::Fp32));
        assert_eq!(data_type(TensorElementType::String), Some(DataType::Bytes));
        assert_eq!(data_type(TensorElementType::Float16), Some(DataType::Fp16));
        assert_eq!(data_type(TensorElementType::Bfloat16), None);
    }
}
