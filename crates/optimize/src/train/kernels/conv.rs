//! Conv (any groups, strides, dilations, asymmetric padding) as im2col + one matrix product per
//! item and group. The gradients are matrix products too: the weight's sums `dY · colsᵀ` over the
//! batch, the input's scatters `Wᵀ · dY` back through the windows (col2im).

use std::ops::Range;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use super::{by_dtype, channel_sums, elements, shape_error, with_elements, Real};

/// Batch items per partial weight gradient (fixed, so that the sum's order is).
const ITEMS_PER_PARTIAL: usize = 4;

/// A convolution's attributes, padding resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvGeometry {
    /// `(rows, columns)`.
    pub strides: (usize, usize),
    pub dilation: usize,
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    pub group: usize,
}

/// Convolves NCHW `x` with `w` `[M, C/group, kH, kW]` and adds `bias` `[M]`.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: &Tensor, geometry: ConvGeometry) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(&w.contiguous()?, &bias.contiguous()?, Conv { geometry })
}

/// The sizes of one convolution.
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    /// Input and output channels per group.
    cg: usize,
    mg: usize,
    /// Where each row of a group's im2col matrix reads (the same for every item and group).
    taps: Vec<Tap>,
}

impl Dims {
    fn new(g: &ConvGeometry, x: &[usize], w: &[usize]) -> candle_core::Result<Dims> {
        let (&[n, c, h, wd], &[m, cg, kh, kw]) = (x, w) else {
            bail!("Conv needs a rank-4 input and weight, got {x:?} and {w:?}");
        };
        if g.group == 0
            || g.strides.0 == 0
            || g.strides.1 == 0
            || g.dilation == 0
            || c != cg * g.group
            || m % g.group != 0
        {
            bail!("Conv: input {x:?}, weight {w:?} and {} groups do not agree", g.group);
        }
        let span = |k: usize| g.dilation * (k.max(1) - 1) + 1;
        let (ph, pw) = (h + g.pads[0] + g.pads[2], wd + g.pads[1] + g.pads[3]);
        if ph < span(kh) || pw < span(kw) {
            bail!("Conv: a {kh}x{kw} kernel does not fit a {ph}x{pw} padded input");
        }
        let (oh, ow) = ((ph - span(kh)) / g.strides.0 + 1, (pw - span(kw)) / g.strides.1 + 1);
        let mut d = Dims { n, c, h, w: wd, m, kh, kw, oh, ow, cg, mg: m / g.group, taps: Vec::new() };
        d.taps = (0..d.k()).map(|r| tap(g, &d, r)).collect();
        Ok(d)
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.oh * self.ow
    }

    /// Rows of one group's im2col matrix: `C/group · kH · kW`.
    fn k(&self) -> usize {
        self.cg * self.kh * self.kw
    }

    /// Item `n`'s input channels of group `grp`.
    fn input_range(&self, n: usize, grp: usize) -> Range<usize> {
        let start = (n * self.c + grp * self.cg) * self.plane();
        start..start + self.cg * self.plane()
    }
}

/// The gradients of the input, the weight and the bias.
type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

struct Conv {
    geometry: ConvGeometry,
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d"
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
        let d = Dims::new(&self.geometry, l1.dims(), l2.dims())?;
        if l3.shape().elem_count() != d.m {
            bail!("Conv: bias of {} values for {} output channels", l3.shape().elem_count(), d.m);
        }
        let g = &self.geometry;
        by_dtype!(s1.dtype(), "Conv", |T| forward_storage::<T>(g, &d, (s1, l1), (s2, l2), (s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<Grads> {
        let d = Dims::new(&self.geometry, x.dims(), w.dims())?;
        by_dtype!(x.dtype(), "Conv", |T| backward::<T>(&self.geometry, &d, (x, w, bias), dy))
    }
}

fn forward_storage<T: Real>(
    g: &ConvGeometry,
    d: &Dims,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> candle_core::Result<(CpuStorage, Shape)> {
    let y = forward::<T>(g, d, elements(s1, l1)?, elements(s2, l2)?, elements(s3, l3)?)?;
    Ok((T::to_cpu_storage_owned(y), Shape::from((d.n, d.m, d.oh, d.ow))))
}

fn forward<T: Real>(g: &ConvGeometry, d: &Dims, x: &[T], w: &[T], bias: &[T]) -> candle_core::Result<Vec<T>> {
    let (k, ohw) = (d.k(), d.out_plane());
    let mut y = vec![T::zero(); d.n * d.m * ohw];
    y.par_chunks_mut(d.m * ohw).enumerate().try_for_each_init(
        || vec![T::zero(); k * ohw],
        |cols, (n, y_n)| {
            for (row, &b) in y_n.chunks_exact_mut(ohw).zip(bias) {
                row.fill(b);
            }
            for grp in 0..g.group {
                im2col(g, d, &x[d.input_range(n, grp)], cols);
                let wg = ArrayView2::from_shape((d.mg, k), &w[grp * d.mg * k..][..d.mg * k])
                    .map_err(shape_error)?;
                let cols = ArrayView2::from_shape((k, ohw), &cols[..]).map_err(shape_error)?;
                let y_g = &mut y_n[grp * d.mg * ohw..][..d.mg * ohw];
                let mut y_g = ArrayViewMut2::from_shape((d.mg, ohw), y_g).map_err(shape_error)?;
                general_mat_mul(T::one(), &wg, &cols, T::one(), &mut y_g);
            }
            Ok::<(), candle_core::Error>(())
        },
    )?;
    Ok(y)
}

/// The gradients of the inputs that need one (the data fed to the first layer does not).
fn backward<T: Real>(
    g: &ConvGeometry,
    d: &Dims,
    (x, w, bias): (&Tensor, &Tensor, &Tensor),
    dy: &Tensor,
) -> candle_core::Result<Grads> {
    let device = x.device();
    with_elements::<T, _>(dy, |dy| {
        let dx = match x.track_op() {
            true => {
                Some(Tensor::from_vec(with_elements(w, |w| grad_input(g, d, w, dy))?, x.shape(), device)?)
            }
            false => None,
        };
        let dw = match w.track_op() {
            true => {
                Some(Tensor::from_vec(with_elements(x, |x| grad_weight(g, d, x, dy))?, w.shape(), device)?)
            }
            false => None,
        };
        let db = match bias.track_op() {
            true => {
                let sums =
                    channel_sums(dy, d.m, d.out_plane()).into_iter().map(T::from_f64).collect::<Vec<T>>();
                Some(Tensor::from_vec(sums, d.m, device)?)
            }
            false => None,
        };
        Ok((dx, dw, db))
    })
}

/// `dX`: per item and group `Wᵀ · dY`, scattered back through the windows.
fn grad_input<T: Real>(g: &ConvGeometry, d: &Dims, w: &[T], dy: &[T]) -> candle_core::Result<Vec<T>> {
    let (k, ohw) = (d.k(), d.out_plane());
    let mut dx = vec![T::zero(); d.n * d.c * d.plane()];
    dx.par_chunks_mut(d.c * d.plane()).enumerate().try_for_each_init(
        || vec![T::zero(); k * ohw],
        |dcols, (n, dx_n)| {
            for grp in 0..g.group {
                let wg = ArrayView2::from_shape((d.mg, k), &w[grp * d.mg * k..][..d.mg * k])
                    .map_err(shape_error)?;
                let dy_g = &dy[(n * d.m + grp * d.mg) * ohw..][..d.mg * ohw];
                let dy_g = ArrayView2::from_shape((d.mg, ohw), dy_g).map_err(shape_error)?;
                let mut dc = ArrayViewMut2::from_shape((k, ohw), &mut dcols[..]).map_err(shape_error)?;
                general_mat_mul(T::one(), &wg.t(), &dy_g, T::zero(), &mut dc);
                col2im(g, d, dcols, &mut dx_n[grp * d.cg * d.plane()..][..d.cg * d.plane()]);
            }
            Ok::<(), candle_core::Error>(())
        },
    )?;
    Ok(dx)
}

/// `dW`: per group the sum over the batch of `dY · colsᵀ`. The items are summed in fixed runs of
/// [`ITEMS_PER_PARTIAL`], in parallel, and the runs' sums added in order: the same floating-point
/// sum on every run, however rayon schedules the work (same seed, same weights).
fn grad_weight<T: Real>(g: &ConvGeometry, d: &Dims, x: &[T], dy: &[T]) -> candle_core::Result<Vec<T>> {
    let (k, ohw, len) = (d.k(), d.out_plane(), d.m * d.k());
    let runs: Vec<Range<usize>> =
        (0..d.n).step_by(ITEMS_PER_PARTIAL).map(|s| s..(s + ITEMS_PER_PARTIAL).min(d.n)).collect();
    let partials = runs
        .into_par_iter()
        .map(|items| {
            let (mut dw, mut cols) = (vec![T::zero(); len], vec![T::zero(); k * ohw]);
            for n in items {
                for grp in 0..g.group {
                    im2col(g, d, &x[d.input_range(n, grp)], &mut cols);
                    let dy_g = &dy[(n * d.m + grp * d.mg) * ohw..][..d.mg * ohw];
                    let dy_g = ArrayView2::from_shape((d.mg, ohw), dy_g).map_err(shape_error)?;
                    let c = ArrayView2::from_shape((k, ohw), &cols[..]).map_err(shape_error)?;
                    let dw_g = &mut dw[grp * d.mg * k..][..d.mg * k];
                    let mut dw_g = ArrayViewMut2::from_shape((d.mg, k), dw_g).map_err(shape_error)?;
                    general_mat_mul(T::one(), &dy_g, &c.t(), T::one(), &mut dw_g);
                }
            }
            Ok::<_, candle_core::Error>(dw)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![T::zero(); len]);
    for partial in partials {
        dw.iter_mut().zip(partial).for_each(|(a, b)| *a += b);
    }
    Ok(dw)
}

/// The output positions `o < out` whose input position `o · stride + offset` lies in `0..len`.
fn inside(out: usize, stride: usize, offset: isize, len: usize) -> Range<usize> {
    let s = stride as isize;
    let first = if offset >= 0 { 0 } else { (-offset + s - 1) / s };
    let end = (len as isize - offset + s - 1).div_euclid(s).clamp(0, out as isize);
    first.min(end) as usize..end as usize
}

/// Where row `r` of the im2col matrix (`(c · kH + i) · kW + j`) reads its input: the channel,
/// the rows and columns of the output that fall inside the input, and the input offsets.
struct Tap {
    channel: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    dy: isize,
    dx: isize,
}

fn tap(g: &ConvGeometry, d: &Dims, r: usize) -> Tap {
    let (i, j) = (r / d.kw % d.kh, r % d.kw);
    let dy = (i * g.dilation) as isize - g.pads[0] as isize;
    let dx = (j * g.dilation) as isize - g.pads[1] as isize;
    Tap {
        channel: r / (d.kh * d.kw),
        rows: inside(d.oh, g.strides.0, dy, d.h),
        cols: inside(d.ow, g.strides.1, dx, d.w),
        dy,
        dx,
    }
}

impl Tap {
    /// The input index of output cell `(oy, ox)` (inside the input).
    fn at(&self, g: &ConvGeometry, d: &Dims, oy: usize, ox: usize) -> usize {
        let iy = (oy * g.strides.0) as isize + self.dy;
        let ix = (ox * g.strides.1) as isize + self.dx;
        self.channel * d.plane() + iy as usize * d.w + ix as usize
    }
}

/// One group's input `[C/group, H, W]` as columns `[C/group · kH · kW, OH · OW]`, zeros where a
/// window reaches into the padding.
fn im2col<T: Real>(g: &ConvGeometry, d: &Dims, x: &[T], cols: &mut [T]) {
    for (row, t) in cols.chunks_exact_mut(d.out_plane()).zip(&d.taps) {
        for (oy, out) in row.chunks_exact_mut(d.ow).enumerate() {
            if !t.rows.contains(&oy) || t.cols.is_empty() {
                out.fill(T::zero());
                continue;
            }
            out[..t.cols.start].fill(T::zero());
            out[t.cols.end..].fill(T::zero());
            let start = t.at(g, d, oy, t.cols.start);
            if g.strides.1 == 1 {
                out[t.cols.clone()].copy_from_slice(&x[start..start + t.cols.len()]);
            } else {
                for (k, o) in out[t.cols.clone()].iter_mut().enumerate() {
                    *o = x[start + k * g.strides.1];
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column cell back to the input cell it was read from.
fn col2im<T: Real>(g: &ConvGeometry, d: &Dims, cols: &[T], x: &mut [T]) {
    for (row, t) in cols.chunks_exact(d.out_plane()).zip(&d.taps) {
        for oy in t.rows.clone() {
            if t.cols.is_empty() {
                break;
            }
            let start = t.at(g, d, oy, t.cols.start);
            let src = &row[oy * d.ow..][t.cols.clone()];
            if g.strides.1 == 1 {
                // Contiguous: one bounds check for the run, and the adds vectorize.
                x[start..start + src.len()].iter_mut().zip(src).for_each(|(a, &v)| *a += v);
            } else {
                for (k, &v) in src.iter().enumerate() {
                    x[start + k * g.strides.1] += v;
                }
            }
        }
    }
}
