//! BatchNormalization over `[N, C, ...]` in one pass forward and two backward. With the batch's
//! statistics the input gradient is the closed form
//! `dx = γ·σ⁻¹·(dy − mean(dy) − x̂·mean(dy·x̂))`; with running statistics it is `γ·σ⁻¹·dy`.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, channel_dims, channel_sums, elements, per_channel_sums, to_f64s, with_elements, Real};

/// Per-channel mean and biased variance of `[N, C, ...]` `x`, in f64.
pub fn channel_moments(x: &Tensor) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
    let (_, c, plane) = channel_dims(x.dims(), "BatchNormalization")?;
    by_dtype!(x.dtype(), "BatchNormalization", |T| moments::<T>(x, c, plane))
}

fn moments<T: Real>(x: &Tensor, c: usize, plane: usize) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
    with_elements::<T, _>(x, |x| {
        let count = (x.len() / c.max(1)).max(1) as f64;
        let mean: Vec<f64> = channel_sums(x, c, plane).into_iter().map(|s| s / count).collect();
        let squares = |ch: usize, p: &[T]| p.iter().map(|v| (v.to_f64() - mean[ch]).powi(2)).sum();
        let var = per_channel_sums(x, c, plane, squares).into_iter().map(|s| s / count).collect();
        Ok((mean, var))
    })
}

/// Normalizes `x` with per-channel `mean` and `var`, then scales and shifts. `batch` says the
/// statistics are `x`'s own (training), so the gradient flows through them too.
pub fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    (mean, var): (Vec<f64>, &[f64]),
    eps: f64,
    batch: bool,
) -> candle_core::Result<Tensor> {
    let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    x.contiguous()?.apply_op3(&scale.contiguous()?, &bias.contiguous()?, BatchNorm { mean, inv_std, batch })
}

struct BatchNorm {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    batch: bool,
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, _) = channel_dims(l1.dims(), "BatchNormalization")?;
        if [l2.shape().elem_count(), l3.shape().elem_count(), self.mean.len()] != [c; 3] {
            bail!("BatchNormalization: scale, bias and statistics need {c} values each");
        }
        by_dtype!(s1.dtype(), "BatchNormalization", |T| self.forward::<T>((s1, l1), (s2, l2), (s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dscale, dbias) =
            by_dtype!(x.dtype(), "BatchNormalization", |T| self.backward::<T>(x, scale, dy))?;
        Ok((Some(dx), Some(dscale), Some(dbias)))
    }
}

impl BatchNorm {
    fn forward<T: Real>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, scale, bias) = (elements::<T>(s1, l1)?, elements::<T>(s2, l2)?, elements::<T>(s3, l3)?);
        let (_, c, plane) = channel_dims(l1.dims(), "BatchNormalization")?;
        // y = a·x + b per channel.
        let a: Vec<T> = (0..c).map(|ch| T::from_f64(self.inv_std[ch] * scale[ch].to_f64())).collect();
        let b: Vec<T> =
            (0..c).map(|ch| T::from_f64(bias[ch].to_f64() - self.mean[ch] * a[ch].to_f64())).collect();
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(plane.max(1)).zip(x.par_chunks(plane.max(1))).enumerate().for_each(|(p, (y, x))| {
            let (a, b) = (a[p % c], b[p % c]);
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = a * x + b);
        });
        Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
    }

    fn backward<T: Real>(
        &self,
        x: &Tensor,
        scale: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (_, c, plane) = channel_dims(x.dims(), "BatchNormalization")?;
        let scale = to_f64s(scale)?;
        let (dx, sum_dy, sum_dy_xhat) = with_elements::<T, _>(x, |x| {
            with_elements::<T, _>(dy, |dy| {
                let count = (x.len() / c.max(1)).max(1) as f64;
                // Per channel: Σ dy and Σ dy·x̂.
                let (sum_dy, sum_dy_xhat): (Vec<f64>, Vec<f64>) = (0..c)
                    .into_par_iter()
                    .map(|ch| {
                        let (mut s, mut sx) = (0.0, 0.0);
                        for (xi, di) in x.chunks_exact(c * plane).zip(dy.chunks_exact(c * plane)) {
                            for (&xv, &dv) in xi[ch * plane..][..plane].iter().zip(&di[ch * plane..][..plane])
                            {
                                s += dv.to_f64();
                                sx += dv.to_f64() * (xv.to_f64() - self.mean[ch]);
                            }
                        }
                        (s, sx * self.inv_std[ch])
                    })
                    .unzip();
                let mut dx = vec![T::zero(); x.len()];
                let planes = dx
                    .par_chunks_mut(plane.max(1))
                    .zip(x.par_chunks(plane.max(1)).zip(dy.par_chunks(plane.max(1))));
                planes.enumerate().for_each(|(p, (dx, (x, dy)))| {
                    let ch = p % c;
                    let k = scale[ch] * self.inv_std[ch];
                    if self.batch {
                        // dx = k·(dy − Σdy/n − x̂·Σ(dy·x̂)/n), x̂ = (x − μ)·σ⁻¹, as a·dy + b·x + e.
                        let (mean_dy, mean_dy_xhat) = (sum_dy[ch] / count, sum_dy_xhat[ch] / count);
                        let slope = self.inv_std[ch] * mean_dy_xhat;
                        let a = T::from_f64(k);
                        let b = T::from_f64(-k * slope);
                        let e = T::from_f64(-k * (mean_dy - slope * self.mean[ch]));
                        dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &g))| *d = a * g + b * x + e);
                    } else {
                        let a = T::from_f64(k);
                        dx.iter_mut().zip(dy).for_each(|(d, &g)| *d = a * g);
                    }
                });
                Ok((dx, sum_dy, sum_dy_xhat))
            })
        })?;
        let device = x.device();
        let per_channel =
            |v: Vec<f64>| Tensor::from_vec(v.into_iter().map(T::from_f64).collect::<Vec<T>>(), c, device);
        Ok((Tensor::from_vec(dx, x.shape(), device)?, per_channel(sum_dy_xhat)?, per_channel(sum_dy)?))
    }
}
