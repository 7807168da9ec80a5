//! Tensor conversion between rtserve (little-endian bytes) and tract.

use rtserve_core::{DataType, EngineError, Tensor, TensorData};
use tract_onnx::prelude::{f16, DatumType, Tensor as TractTensor};
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

/// Decodes little-endian elements of a fixed size into a tract tensor.
macro_rules! from_le {
    ($shape:expr, $bytes:expr, $t:ty, $n:literal) => {{
        let values: Vec<$t> = $bytes
            .chunks_exact($n)
            .map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                <$t>::from_le_bytes(a)
            })
            .collect();
        TractTensor::from_shape($shape, &values).map_err(conversion_error)
    }};
}

/// Builds a tract tensor. Booleans are normalized (any non-zero byte is true).
pub fn to_tract(tensor: &Tensor) -> Result<TractTensor, EngineError> {
    let shape = tensor.shape();
    match tensor.data() {
        TensorData::Raw(bytes) => match tensor.datatype() {
            DataType::Bool => {
                let values: Vec<bool> = bytes.iter().map(|b| *b != 0).collect();
                TractTensor::from_shape(shape, &values).map_err(conversion_error)
            }
            DataType::Uint8 => TractTensor::from_shape(shape, bytes.as_ref()).map_err(conversion_error),
            DataType::Int8 => {
                let values: Vec<i8> = bytes.iter().map(|b| *b as i8).collect();
                TractTensor::from_shape(shape, &values).map_err(conversion_error)
            }
            DataType::Uint16 => from_le!(shape, bytes, u16, 2),
            DataType::Uint32 => from_le!(shape, bytes, u32, 4),
            DataType::Uint64 => from_le!(shape, bytes, u64, 8),
            DataType::Int16 => from_le!(shape, bytes, i16, 2),
            DataType::Int32 => from_le!(shape, bytes, i32, 4),
            DataType::Int64 => from_le!(shape, bytes, i64, 8),
            DataType::Fp16 => from_le!(shape, bytes, f16, 2),
            DataType::Fp32 => from_le!(shape, bytes, f32, 4),
            DataType::Fp64 => from_le!(shape, bytes, f64, 8),
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
