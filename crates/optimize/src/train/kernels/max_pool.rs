//! MaxPool over NCHW planes; padding never wins (as ONNX Runtime's -inf padding). The gradient
//! goes to the first maximum of each window in row-major order.

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{by_dtype, elements, with_elements, Real};

/// Max-pools NCHW `x` with `kernel`, `strides` and `pads` `[top, left, bottom, right]`.
pub fn max_pool2d(
    x: &Tensor,
    kernel: (usize, usize),
    strides: (usize, usize),
    pads: [usize; 4],
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool { kernel, strides, pads })
}

struct MaxPool {
    kernel: (usize, usize),
    strides: (usize, usize),
    pads: [usize; 4],
}

/// The sizes of one pooling: planes `N·C`, input `H×W`, and for each output row (column) the
/// input rows (columns) its windows cover, padding left out.
struct Dims {
    planes: usize,
    h: usize,
    w: usize,
    rows: Vec<Range<usize>>,
    cols: Vec<Range<usize>>,
}

/// The input cells `0..len` under the windows at `o · stride − pad`, `kernel` wide, `o < out`.
fn windows(out: usize, kernel: usize, stride: usize, pad: usize, len: usize) -> Vec<Range<usize>> {
    (0..out)
        .map(|o| {
            let start = (o * stride).saturating_sub(pad).min(len);
            let end = (o * stride + kernel).saturating_sub(pad).min(len);
            start..end.max(start)
        })
        .collect()
}

impl MaxPool {
    fn dims(&self, x: &[usize]) -> candle_core::Result<Dims> {
        let &[n, c, h, w] = x else { bail!("MaxPool needs a rank-4 input, got {x:?}") };
        let ((kh, kw), (sh, sw), p) = (self.kernel, self.strides, self.pads);
        let (ph, pw) = (h + p[0] + p[2], w + p[1] + p[3]);
        if kh == 0 || kw == 0 || sh == 0 || sw == 0 || ph < kh || pw < kw {
            bail!("MaxPool: a {kh}x{kw} kernel with strides {sh}x{sw} does not fit a {ph}x{pw} padded input");
        }
        let (oh, ow) = ((ph - kh) / sh + 1, (pw - kw) / sw + 1);
        Ok(Dims {
            planes: n * c,
            h,
            w,
            rows: windows(oh, kh, sh, p[0], h),
            cols: windows(ow, kw, sw, p[1], w),
        })
    }

    /// Each output cell's first maximum in its plane (row-major), or `None` for a window of
    /// padding only, in output order.
    fn argmaxes<'a, T: Real>(d: &'a Dims, plane: &'a [T]) -> impl Iterator<Item = Option<usize>> + 'a {
        d.rows.iter().flat_map(move |rows| {
            d.cols.iter().map(move |cols| {
                let mut best: Option<(usize, T)> = None;
                for iy in rows.clone() {
                    let line = &plane[iy * d.w..][cols.clone()];
                    for (k, &v) in line.iter().enumerate() {
                        if best.is_none_or(|(_, b)| v > b) {
                            best = Some((iy * d.w + cols.start + k, v));
                        }
                    }
                }
                best.map(|(i, _)| i)
            })
        })
    }

    fn forward<T: Real>(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l.dims())?;
        let x = elements::<T>(s, l)?;
        let out = d.rows.len() * d.cols.len();
        let mut y = vec![T::zero(); d.planes * out];
        y.par_chunks_mut(out).zip(x.par_chunks(d.h * d.w)).for_each(|(y, plane)| {
            for (out, best) in y.iter_mut().zip(Self::argmaxes(&d, plane)) {
                *out = best.map_or(T::from_f64(f64::NEG_INFINITY), |i| plane[i]);
            }
        });
        let dims = l.dims();
        Ok((T::to_cpu_storage_owned(y), Shape::from((dims[0], dims[1], d.rows.len(), d.cols.len()))))
    }

    fn backward<T: Real>(&self, x: &Tensor, dy: &Tensor) -> candle_core::Result<Tensor> {
        let d = self.dims(x.dims())?;
        let dx = with_elements::<T, _>(x, |x| {
            with_elements::<T, _>(dy, |dy| {
                let mut dx = vec![T::zero(); x.len()];
                let out = d.rows.len() * d.cols.len();
                let planes =
                    dx.par_chunks_mut(d.h * d.w).zip(x.par_chunks(d.h * d.w).zip(dy.par_chunks(out)));
                planes.for_each(|(dx, (plane, dy))| {
                    for (&g, best) in dy.iter().zip(Self::argmaxes(&d, plane)) {
                        if let Some(i) = best {
                            dx[i] += g;
                        }
                    }
                });
                Ok(dx)
            })
        })?;
        Tensor::from_vec(dx, x.shape(), x.device())
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max_pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        by_dtype!(s.dtype(), "MaxPool", |T| self.forward::<T>(s, l))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(by_dtype!(x.dtype(), "MaxPool", |T| self.backward::<T>(x, dy))?))
    }
}
