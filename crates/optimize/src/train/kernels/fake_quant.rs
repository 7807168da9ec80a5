//! Fake quantization of an activation in one pass each way: the forward pass is QuantizeLinear →
//! DequantizeLinear (round half to even, as ONNX Runtime); the backward pass is the
//! straight-through estimator — the gradient passes where the value lies inside the range, and
//! what was clipped at a bound goes to that bound (PACT).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, elements, with_elements, Real};

/// Elements per partial sum of a bound's gradient.
const ELEMENTS_PER_PARTIAL: usize = 1 << 14;

/// How an activation is quantized: `scale` and `zero_point` over the integers `qmin..=qmax`,
/// and the range `[low, high]` (already widened to hold 0) whose bounds take the gradients of
/// the clipped values.
#[derive(Debug, Clone, Copy)]
pub struct Quantizer {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
    pub low: f32,
    pub high: f32,
}

/// `x` fake-quantized by `q`; `low` and `high` are the scalar tensors the range came from (the
/// clipped values' gradients go to them: to `low` only while it is below 0 and to `high` only
/// while it is above, as widening the range to hold 0 leaves a bound at 0 otherwise).
pub fn fake_quantize(x: &Tensor, low: &Tensor, high: &Tensor, q: Quantizer) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(low, high, FakeQuantize(q))
}

struct FakeQuantize(Quantizer);

fn forward<T: Real>(q: Quantizer, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
    // In T's precision, as QuantizeLinear and DequantizeLinear compute in f32.
    let scale = T::from_f64(q.scale as f64);
    let (zp, qmin, qmax) = (q.zero_point as f64, q.qmin as f64, q.qmax as f64);
    let y: Vec<T> = elements::<T>(s, l)?
        .par_iter()
        .map(|&v| {
            // Clamped a step beyond the levels before rounding (the same result), which keeps
            // the value where `round_half_even` is exact.
            let t = (v / scale).to_f64().clamp(qmin - zp - 1.0, qmax - zp + 1.0);
            let level = (round_half_even(t) + zp).clamp(qmin, qmax);
            T::from_f64(level - zp) * scale
        })
        .collect();
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

/// `t` rounded to the nearest integer, ties to even, for |t| < 2^51: adding and subtracting
/// 1.5 · 2^52 leaves no fraction bits, and the FPU rounds the sum to nearest even. The same as
/// `f64::round_ties_even`, which becomes a call to a software `rint` on baseline x86-64 (no
/// SSE4.1), several times slower than the fake quantization around it.
fn round_half_even(t: f64) -> f64 {
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    (t + SHIFT) - SHIFT
}

/// `(dx, d_low, d_high)` for the output gradient `dy`.
fn backward<T: Real>(q: Quantizer, x: &Tensor, dy: &Tensor) -> candle_core::Result<(Tensor, f64, f64)> {
    let (low, high) = (T::from_f64(q.low as f64), T::from_f64(q.high as f64));
    let zero = T::zero();
    let (dx, (below, above)) = with_elements::<T, _>(x, |x| {
        with_elements::<T, _>(dy, |dy| {
            let dx: Vec<T> =
                x.par_iter().zip(dy).map(|(&v, &g)| if v < low || v > high { zero } else { g }).collect();
            // In fixed runs added in order: the same sum on every run.
            let partials: Vec<(f64, f64)> = x
                .par_chunks(ELEMENTS_PER_PARTIAL)
                .zip(dy.par_chunks(ELEMENTS_PER_PARTIAL))
                .map(|(x, dy)| {
                    x.iter().zip(dy).fold((0.0, 0.0), |(b, a), (&v, &g)| {
                        if v < low {
                            (b + g.to_f64(), a)
                        } else if v > high {
                            (b, a + g.to_f64())
                        } else {
                            (b, a)
                        }
                    })
                })
                .collect();
            let sums = partials.iter().fold((0.0, 0.0), |(b, a), (pb, pa)| (b + pb, a + pa));
            Ok((dx, sums))
        })
    })?;
    Ok((Tensor::from_vec(dx, x.shape(), x.device())?, below, above))
}

/// A bound's gradient: `sum` shaped like `bound`, in its dtype (0 when the bound does not act).
fn bound_gradient(sum: f64, acts: bool, bound: &Tensor) -> candle_core::Result<Tensor> {
    let value = if acts { sum } else { 0.0 };
    Tensor::new(value, bound.device())?.to_dtype(bound.dtype())?.reshape(bound.shape())
}

impl CustomOp3 for FakeQuantize {
    fn name(&self) -> &'static str {
        "fake-quantize"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), "fake quantization", |T| forward::<T>(self.0, s, l))
    }

    fn bwd(
        &self,
        x: &Tensor,
        low: &Tensor,
        high: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, below, above) = by_dtype!(x.dtype(), "fake quantization", |T| backward::<T>(self.0, x, dy))?;
        let d_low = bound_gradient(below, self.0.low < 0.0, low)?;
        let d_high = bound_gradient(above, self.0.high > 0.0, high)?;
        Ok((Some(dx), Some(d_low), Some(d_high)))
    }
}

#[cfg(test)]
mod tests {
    use super::round_half_even;

    #[test]
    fn rounding_is_round_ties_even() {
        for k in -2000..2000 {
            let half = k as f64 / 2.0;
            for t in [half, half + 1e-9, half - 1e-9, k as f64 / 7.0, half * 1e-3] {
                assert_eq!(round_half_even(t), t.round_ties_even(), "{t}");
            }
        }
    }
}
