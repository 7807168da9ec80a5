//! What the conversion reads of a TFLite tensor: its shape, element type, quantization and,
//! for a constant, its data.

use half::f16;
use tract_onnx::pb::tensor_proto::DataType;
use tract_tflite::tflite::{Model, SubGraph, Tensor, TensorType};

/// An int8/uint8/int32 tensor's quantization: `real = scale · (q − zero_point)`, per tensor
/// (one scale) or per slice along `axis` of the TFLite shape.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Quant {
    pub scales: Vec<f32>,
    pub zero_points: Vec<i64>,
    pub axis: usize,
}

/// One tensor of the subgraph.
pub(super) struct Facts<'a> {
    pub tensor: Tensor<'a>,
    /// The TFLite (NHWC) shape; -1 where `shape_signature` says the size comes at run time.
    pub shape: Vec<i64>,
    pub quant: Option<Quant>,
    /// The constant data (little-endian, as stored), for a tensor with a buffer.
    pub data: Option<&'a [u8]>,
}

impl<'a> Facts<'a> {
    pub fn read(model: &Model<'a>, graph: &SubGraph<'a>, index: i32) -> Result<Facts<'a>, String> {
        let tensors = graph.tensors().ok_or("the subgraph has no tensors")?;
        let tensor = usize::try_from(index)
            .ok()
            .filter(|&i| i < tensors.len())
            .map(|i| tensors.get(i))
            .ok_or_else(|| format!("tensor {index} does not exist"))?;
        let shape: Vec<i64> = tensor.shape().map(|s| s.iter().map(i64::from).collect()).unwrap_or_default();
        let signature: Option<Vec<i64>> = tensor.shape_signature().map(|s| s.iter().map(i64::from).collect());
        let shape = match signature {
            Some(signature) if signature.len() == shape.len() => {
                shape.iter().zip(&signature).map(|(&d, &s)| if s < 0 { -1 } else { d }).collect()
            }
            _ => shape,
        };
        let quant = tensor.quantization().and_then(|q| {
            let scales: Vec<f32> = q.scale()?.iter().collect();
            let zero_points: Vec<i64> = q.zero_point().map(|z| z.iter().collect()).unwrap_or_default();
            if scales.is_empty() {
                return None;
            }
            // One zero point per scale (none given: all 0; one for several scales: shared).
            let zero_points = match zero_points.len() {
                0 => vec![0; scales.len()],
                1 => vec![zero_points[0]; scales.len()],
                _ => zero_points,
            };
            Some(Quant { scales, zero_points, axis: usize::try_from(q.quantized_dimension()).unwrap_or(0) })
        });
        if let Some(q) = quant.as_ref().filter(|q| q.zero_points.len() != q.scales.len()) {
            let name = tensor.name().unwrap_or("");
            return Err(format!(
                "tensor '{name}' has {} scales and {} zero points",
                q.scales.len(),
                q.zero_points.len()
            ));
        }
        let data = match tensor.buffer() {
            0 => None,
            buffer => model
                .buffers()
                .and_then(|buffers| ((buffer as usize) < buffers.len()).then(|| buffers.get(buffer as usize)))
                .and_then(|buffer| buffer.data())
                .map(|data| data.bytes())
                .filter(|bytes| !bytes.is_empty()),
        };
        Ok(Facts { tensor, shape, quant, data })
    }

    pub fn name(&self) -> &'a str {
        self.tensor.name().unwrap_or("")
    }

    pub fn element_type(&self) -> TensorType {
        self.tensor.type_()
    }

    /// Whether this tensor holds quantized integers (int8/uint8 with a scale).
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some() && matches!(self.element_type(), TensorType::INT8 | TensorType::UINT8)
    }

    /// The number of elements the static shape holds.
    pub fn len(&self) -> Result<usize, String> {
        self.shape.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| n.checked_mul(d))
                .ok_or_else(|| format!("tensor '{}' has no static shape ({:?})", self.name(), self.shape))
        })
    }

    /// The constant's values as f32: float32 and float16 as they are; int8/uint8/int32 with a
    /// quantization dequantized.
    pub fn floats(&self) -> Result<Vec<f32>, String> {
        let data = self.constant_bytes()?;
        let values: Vec<f32> = match self.element_type() {
            TensorType::FLOAT32 => {
                data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            TensorType::FLOAT16 => {
                data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            _ => {
                let quant = self.quant.as_ref().ok_or_else(|| {
                    format!("constant '{}' is {:?} without a quantization", self.name(), self.element_type())
                })?;
                let integers = self.integers()?;
                let per_slice = self.slice_len(quant)?;
                integers
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| {
                        let channel =
                            if quant.scales.len() == 1 { 0 } else { (i / per_slice) % quant.scales.len() };
                        quant.scales[channel] * (q - quant.zero_points[channel]) as f32
                    })
                    .collect()
            }
        };
        self.whole(values)
    }

    /// The constant's integer values (int8, uint8, int32, int64).
    pub fn integers(&self) -> Result<Vec<i64>, String> {
        let data = self.constant_bytes()?;
        let values: Vec<i64> = match self.element_type() {
            TensorType::INT8 => data.iter().map(|&b| i64::from(b as i8)).collect(),
            TensorType::UINT8 => data.iter().map(|&b| i64::from(b)).collect(),
            TensorType::INT32 => data
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            TensorType::INT64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            other => return Err(format!("constant '{}' is {other:?}, not integers", self.name())),
        };
        self.whole(values)
    }

    /// `values` when they fill the tensor's shape.
    fn whole<T>(&self, values: Vec<T>) -> Result<Vec<T>, String> {
        if values.len() != self.len()? {
            return Err(format!(
                "constant '{}' holds {} values for shape {:?}",
                self.name(),
                values.len(),
                self.shape
            ));
        }
        Ok(values)
    }

    fn constant_bytes(&self) -> Result<&'a [u8], String> {
        self.data.ok_or_else(|| format!("tensor '{}' is not a constant", self.name()))
    }

    /// How many consecutive elements share one scale of a per-axis quantization.
    fn slice_len(&self, quant: &Quant) -> Result<usize, String> {
        let inner = self.shape.get(quant.axis + 1..).unwrap_or_default();
        inner.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d)
                .ok()
                .map(|d| n * d)
                .ok_or_else(|| format!("tensor '{}' has no static shape", self.name()))
        })
    }
}

/// The ONNX element type of a TFLite tensor type the conversion passes through.
pub(super) fn onnx_type(element: TensorType) -> Option<DataType> {
    match element {
        TensorType::FLOAT32 => Some(DataType::Float),
        TensorType::INT8 => Some(DataType::Int8),
        TensorType::UINT8 => Some(DataType::Uint8),
        TensorType::INT32 => Some(DataType::Int32),
        TensorType::INT64 => Some(DataType::Int64),
        _ => None,
    }
}
