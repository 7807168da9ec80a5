//! CPU kernels for the operators that dominate a CNN's training step — Conv, BatchNormalization,
//! MaxPool, Relu and quantization-aware training's fake quantization — each a candle custom operator with its forward pass and its gradients written
//! out, so a step reads and writes each activation a few times instead of once per elementary
//! candle operation (and its backward). Items of a batch (or channel planes) run in parallel on
//! rayon's pool; matrix products go through ndarray (matrixmultiply).
//!
//! - `conv`: Conv as im2col + one matrix product per item and group, padding read in place.
//! - `batch_norm`: BatchNormalization with batch or running statistics, gradients in closed form.
//! - `max_pool`: MaxPool; the gradient goes to the first maximum of each window, as in PyTorch.
//! - `relu`: Relu, its gradient read from the output.
//! - `fake_quant`: an activation through QuantizeLinear → DequantizeLinear, straight-through
//!   gradients.

mod batch_norm;
mod conv;
mod fake_quant;
mod max_pool;
mod relu;

pub use batch_norm::{batch_norm, channel_moments};
pub use conv::{conv2d, ConvGeometry};
pub use fake_quant::{fake_quantize, Quantizer};
pub use max_pool::max_pool2d;
pub use relu::relu;

use candle_core::{bail, CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use rayon::prelude::*;

/// The float types the kernels run in: f32 for training, f64 for gradient checks.
pub trait Real: WithDType + ndarray::LinalgScalar {}
impl Real for f32 {}
impl Real for f64 {}

/// The elements of a contiguous storage seen through `layout`.
fn elements<'a, T: Real>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => bail!("a fused kernel got a non-contiguous input"),
    }
}

/// Runs `f` on the elements of `t` (made contiguous first) on the CPU.
fn with_elements<T: Real, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(elements(cpu, layout)?),
        _ => bail!("the fused kernels run on the CPU only"),
    }
}

/// The values of a small tensor (per-channel parameters) as f64.
pub(super) fn to_f64s(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// Runs `$body` with the type alias `$t` set to f32 or f64 after `$dtype`, or fails naming the
/// operator.
macro_rules! by_dtype {
    ($dtype:expr, $name:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            other => candle_core::bail!("{} runs on f32 and f64, not {other:?}", $name),
        }
    };
}
use by_dtype;

fn shape_error(e: ndarray::ShapeError) -> candle_core::Error {
    candle_core::Error::Msg(format!("fused kernel: {e}"))
}

/// Per-channel sums over the items and the plane of a contiguous `[N, C, plane]` tensor, in f64.
fn channel_sums<T: Real>(t: &[T], channels: usize, plane: usize) -> Vec<f64> {
    per_channel_sums(t, channels, plane, |_, p| p.iter().map(|v| v.to_f64()).sum())
}

/// For each channel of a contiguous `[N, C, plane]` tensor, the sum over the items of
/// `f(channel, that item's plane)`: channels in parallel, each summed item by item in order (the
/// same sum on every run).
fn per_channel_sums<T: Real>(
    t: &[T],
    channels: usize,
    plane: usize,
    f: impl Fn(usize, &[T]) -> f64 + Sync,
) -> Vec<f64> {
    if plane == 0 {
        return vec![0.0; channels];
    }
    (0..channels)
        .into_par_iter()
        .map(|ch| t.chunks_exact(channels * plane).map(|item| f(ch, &item[ch * plane..][..plane])).sum())
        .collect()
}

/// `(N, C, plane)` of an `[N, C, ...]` tensor: items, channels and the cells per channel.
fn channel_dims(dims: &[usize], what: &str) -> candle_core::Result<(usize, usize, usize)> {
    match dims {
        [n, c, rest @ ..] => Ok((*n, *c, rest.iter().product())),
        _ => bail!("{what} needs an input of rank 2 or more, got {dims:?}"),
    }
}
