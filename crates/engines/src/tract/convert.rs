//! Tensor conversion between rtserve (little-endian bytes) and tract.

use std::sync::Arc;

use bytes::Bytes;
use rtserve_core::wire::Element;
use rtserve_core::{BatchInput, DataType, EngineError, Tensor, TensorData};
use tract_onnx::prelude::{f16, Datum, DatumType, Tensor as TractTensor};
use tract_onnx::tract_core::ndarray::{ArrayD, IxDyn};

/// The rtserve type of a tract datum type, if rtserve carries it. A quantized type (a TFLite
/// INT8 tensor) travels as its integers, its zero point and scale being the model's business.
pub fn data_type(datum: DatumType) -> Option<DataType> {
    Some(match datum.unquantized() {
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

/// A tract tensor of `input`'s elements, decoded from its requests' bytes straight into tract's
/// own (aligned) buffer: one copy. `datum` is `T`'s type, or a quantized type over it.
fn decode<T: Element + Datum>(input: &BatchInput<'_>, datum: DatumType) -> Result<TractTensor, EngineError> {
    let mut tensor = TractTensor::zero_dt(datum, input.shape()).map_err(conversion_error)?;
    {
        let mut plain = tensor.try_as_plain_ram_mut().map_err(conversion_error)?;
        let mut slots = plain.as_slice_mut::<T>().map_err(conversion_error)?.iter_mut();
        for raw in input.raw_parts() {
            // The part's values lead the zip: it stops at their end without taking a slot.
            for (value, slot) in T::decode_iter(raw).zip(slots.by_ref()) {
                *slot = value;
            }
        }
    }
    Ok(tensor)
}

/// Builds a tract tensor of the model's input type `datum` (whose rtserve type is `input`'s,
/// checked by the caller). Booleans are normalized (any non-zero byte is true).
pub fn to_tract(input: &BatchInput<'_>, datum: DatumType) -> Result<TractTensor, EngineError> {
    match input.datatype() {
        DataType::Bool => decode::<bool>(input, datum),
        DataType::Uint8 => decode::<u8>(input, datum),
        DataType::Int8 => decode::<i8>(input, datum),
        DataType::Uint16 => decode::<u16>(input, datum),
        DataType::Uint32 => decode::<u32>(input, datum),
        DataType::Uint64 => decode::<u64>(input, datum),
        DataType::Int16 => decode::<i16>(input, datum),
        DataType::Int32 => decode::<i32>(input, datum),
        DataType::Int64 => decode::<i64>(input, datum),
        DataType::Fp16 => decode::<f16>(input, datum),
        DataType::Fp32 => decode::<f32>(input, datum),
        DataType::Fp64 => decode::<f64>(input, datum),
        DataType::Bytes => {
            let strings = input
                .strings()
                .map(|b| String::from_utf8(b.to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| EngineError::new("tract: BYTES elements must be UTF-8 for this engine"))?;
            let array = ArrayD::from_shape_vec(IxDyn(input.shape()), strings).map_err(conversion_error)?;
            Ok(array.into())
        }
    }
}

/// Converts a tract output back. Fixed-size elements stay in tract's buffer, which the returned
/// tensor shares (no copy); tract's buffer is in host order, which rtserve requires to be
/// little-endian (the wire order).
pub fn from_tract(value: Arc<TractTensor>) -> Result<Tensor, EngineError> {
    let data_type = data_type(value.datum_type()).ok_or_else(|| {
        EngineError::new(format!("tract: unsupported output type {:?}", value.datum_type()))
    })?;
    let shape = value.shape().to_vec();
    let data = if data_type == DataType::Bytes {
        let strings = value.to_plain_array_view::<String>().map_err(conversion_error)?;
        TensorData::Strings(strings.iter().map(|s| s.clone().into_bytes().into()).collect())
    } else {
        TensorData::Raw(Bytes::from_owner(TractBytes(value)))
    };
    Tensor::new(data_type, shape, data).map_err(conversion_error)
}

/// A tract output whose element bytes a `Bytes` lends out while it keeps the tensor alive.
struct TractBytes(Arc<TractTensor>);

impl AsRef<[u8]> for TractBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}
