//! Relu in one pass each way: the gradient is read from the output (`dx = dy` where `y > 0`).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, elements, with_elements, Real};

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

struct Relu;

fn forward<T: Real>(s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    let zero = T::zero();
    let y: Vec<T> = elements::<T>(s, l)?.par_iter().map(|&v| if v > zero { v } else { zero }).collect();
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

fn backward<T: Real>(y: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
    let zero = T::zero();
    let dx: Vec<T> = with_elements::<T, _>(y, |y| {
        with_elements::<T, _>(dy, |dy| {
            Ok(y.par_iter().zip(dy).map(|(&y, &g)| if y > zero { g } else { zero }).collect())
        })
    })?;
    Tensor::from_vec(dx, y.shape(), y.device())
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), "Relu", |T| forward::<T>(s, l))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(by_dtype!(y.dtype(), "Relu", |T| backward::<T>(y, dy))?))
    }
}
