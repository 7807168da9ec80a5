//! Tensor conversion between rtserve (little-endian bytes) and tract.

use rtserve_core::wire::Element;
use rtserve_core::{DataType, EngineError, Tensor, TensorData};
use tract_onnx::prelude::{f16, Datum, DatumType, Tensor as TractTensor};
use tract_onnx::tract_core::ndarray::{ArrayD, IxDyn};

/// The rtserve type of a tract datum type, if rtserve carries it.
pub fn data_type(datum: DatumType) -> Option<DataType> {
    Some(match datum {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn conversion_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::new(format!("tract: tensor conversion: {e}"))
}

/// A tract tensor of the little-endian elements in `bytes`.
fn decode<T: Element + Datum>(shape: &[usize], bytes: &[u8]) -> Result<TractTensor, EngineError> {
    TractTensor::from_shape(shape, &T::decode(bytes)).map_err(conversion_error)
}

/// Builds a tract tensor. Booleans are normalized (any non-zero byte is true).
pub fn to_tract(tensor: &Tensor) -> Result<TractTensor, EngineError> {
    let shape = tensor.shape();
    match tensor.data() {
        TensorData::Raw(bytes) => match tensor.datatype() {
            DataType::Bool => decode::<bool>(shape, bytes),
            DataType::Uint8 => TractTensor::from_shape(shape, bytes.as_ref()).map_err(conversion_error),
            DataType::Int8 => decode::<i8>(shape, bytes),
            DataType::Uint16 => decode::<u16>(shape, bytes),
            DataType::Uint32 => decode::<u32>(shape, bytes),
            DataType::Uint64 => decode::<u64>(shape, bytes),
            DataType::Int16 => decode::<i16>(shape, bytes),
            DataType::Int32 => decode::<i32>(shape, bytes),
            DataType::Int64 => decode::<i64>(shape, bytes),
            DataType::Fp16 => decode::<f16>(shape, bytes),
            DataType::Fp32 => decode::<f32>(shape, bytes),
            DataType::Fp64 => decode::<f64>(shape, bytes),
            DataType::Bytes => Err(conversion_error("BYTES tensor without string data")),
        },
        TensorData::Strings(items) => {
            let strings = items
                .iter()
                .map(|b| String::from_utf8(b.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| EngineError::new("tract: BYTES elements must be UTF-8 for this engine"))?;
            let array = ArrayD::from_shape_vec(IxDyn(shape), strings).map_err(conversion_error)?;
            Ok(array.into())
        }
    }
}

/// Converts a tract output back. tract's buffer is in host order, which rtserve requires to be
/// little-endian (the wire order).
pub fn from_tract(value: &TractTensor) -> Result<Tensor, EngineError> {
    let data_type = data_type(value.datum_type()).ok_or_else(|| {
        EngineError::new(format!("tract: unsupported output type {:?}", value.datum_type()))
    })?;
    let shape = value.shape().to_vec();
    let data = if data_type == DataType::Bytes {
        let strings = value.to_plain_array_view::<String>().map_err(conversion_error)?;
        TensorData::Strings(strings.iter().map(|s| s.clone().into_bytes().into()).collect())
    } else {
        TensorData::Raw(value.as_bytes().to_vec().into())
    };
    Tensor::new(data_type, shape, data).map_err(conversion_error)
}
