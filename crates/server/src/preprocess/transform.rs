//! Resize, centre-crop and normalise one decoded RGB image into its slot of the input tensor.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use half::f16;
use image::RgbImage;
use rtserve_core::DataType;

use super::spec::{ColorOrder, Filter, Layout, PreprocessSpec, Resize};

thread_local! {
    /// A resizer per worker thread: it keeps its scratch buffers between images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// The size the image is resized to before cropping: the short side to `S` (the long side
/// rounded to nearest, as `round(long * S / short)`), or exactly `W × H`.
pub fn resized_size(resize: Resize, width: u32, height: u32) -> (u32, u32) {
    match resize {
        Resize::Exact { width, height } => (width, height),
        Resize::ShortSide(s) => {
            let scaled = |long: u32, short: u32| {
                let value = (f64::from(long) * f64::from(s) / f64::from(short)).round();
                (value as u32).max(s)
            };
            if width <= height {
                (s, scaled(height, width))
            } else {
                (scaled(width, height), s)
            }
        }
    }
}

/// Per tensor channel and pixel value, the normalised value: `(pixel - mean) / std` in f32.
/// A table keeps the per-pixel work to one load, and gives the same f32 rounding as NumPy's
/// `(x - mean) / std`.
pub struct Normaliser {
    table: [[f32; 256]; 3],
}

impl Normaliser {
    pub fn new(spec: &PreprocessSpec) -> Self {
        let table = std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 - spec.mean[c]) / spec.std[c]));
        Normaliser { table }
    }
}

/// Writes `image`, resized, cropped and normalised, into `out` (one image's bytes:
/// `spec.image_bytes()`).
pub fn write_tensor(
    spec: &PreprocessSpec,
    normaliser: &Normaliser,
    image: &RgbImage,
    out: &mut [u8],
) -> Result<(), String> {
    let (width, height) = image.dimensions();
    let (rw, rh) = resized_size(spec.resize, width, height);
    let (cw, ch) = spec.crop;
    if rw < cw || rh < ch {
        return Err(format!("resized image {rw}x{rh} is smaller than the crop {cw}x{ch}"));
    }
    let src = ImageRef::new(width, height, image.as_raw(), PixelType::U8x3).map_err(|e| e.to_string())?;
    let filter = match spec.filter {
        Filter::Bilinear => FilterType::Bilinear,
        Filter::Area => FilterType::Box,
    };
    // Resize only the part of the image that the centre crop keeps: the crop box mapped back to
    // source coordinates. The filter still reads source pixels outside the box (it is clipped
    // at the image's edges only), so this equals resizing the whole image, then cropping.
    let (left, top) = ((rw - cw) / 2, (rh - ch) / 2);
    let (sx, sy) = (f64::from(width) / f64::from(rw), f64::from(height) / f64::from(rh));
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)).crop(
        f64::from(left) * sx,
        f64::from(top) * sy,
        f64::from(cw) * sx,
        f64::from(ch) * sy,
    );
    let mut cropped = Image::new(cw, ch, PixelType::U8x3);
    RESIZER
        .with_borrow_mut(|resizer| resizer.resize(&src, &mut cropped, &options))
        .map_err(|e| format!("resize: {e}"))?;
    // Tensor channel c reads pixel channel source[c].
    let source = match spec.color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    let pixels = cropped.buffer();
    let table = &normaliser.table;
    match spec.dtype {
        DataType::Fp16 => store(spec.layout, pixels, table, source, out, |v| f16::from_f32(v).to_le_bytes()),
        DataType::Uint8 => {
            store(spec.layout, pixels, table, source, out, |v| [v.round().clamp(0.0, 255.0) as u8])
        }
        _ => store(spec.layout, pixels, table, source, out, f32::to_le_bytes),
    }
}

/// Writes the normalised `pixels` (RGB, row-major) into `out` in `layout`, each value encoded by
/// `encode` into `N` bytes. Generic over the encoding so that the loop compiles to straight code.
fn store<const N: usize>(
    layout: Layout,
    pixels: &[u8],
    table: &[[f32; 256]; 3],
    source: [usize; 3],
    out: &mut [u8],
    encode: impl Fn(f32) -> [u8; N],
) -> Result<(), String> {
    let count = pixels.len() / 3;
    if out.len() != pixels.len() * N {
        return Err(format!("tensor slot of {} bytes for {count} pixels of {N} bytes", out.len()));
    }
    match layout {
        Layout::Nchw => {
            let (r, rest) = out.split_at_mut(count * N);
            let (g, b) = rest.split_at_mut(count * N);
            for (c, plane) in [r, g, b].into_iter().enumerate() {
                let (table, channel) = (&table[c], source[c]);
                for (value, pixel) in plane.chunks_exact_mut(N).zip(pixels.chunks_exact(3)) {
                    value.copy_from_slice(&encode(table[usize::from(pixel[channel])]));
                }
            }
        }
        Layout::Nhwc => {
            for (values, pixel) in out.chunks_exact_mut(3 * N).zip(pixels.chunks_exact(3)) {
                for c in 0..3 {
                    let value = encode(table[c][usize::from(pixel[source[c]])]);
                    values[c * N..][..N].copy_from_slice(&value);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resize: Resize, crop: (u32, u32), layout: Layout, color: ColorOrder) -> PreprocessSpec {
        PreprocessSpec {
            input: "image".into(),
            tensor: "input".into(),
            resize,
            filter: Filter::Bilinear,
            crop,
            color,
            layout,
            mean: [127.0; 3],
            std: [128.0; 3],
            dtype: DataType::Fp32,
            batched: true,
        }
    }

    #[test]
    fn short_side_resize_rounds_the_long_side() {
        assert_eq!(resized_size(Resize::ShortSide(256), 640, 480), (341, 256));
        assert_eq!(resized_size(Resize::ShortSide(256), 451, 300), (385, 256));
        assert_eq!(resized_size(Resize::ShortSide(256), 300, 451), (256, 385));
        assert_eq!(resized_size(Resize::Exact { width: 10, height: 20 }, 640, 480), (10, 20));
    }

    #[test]
    fn writes_layouts_and_channel_orders() {
        // A 2x2 image, no resize, each pixel distinct.
        let image = RgbImage::from_fn(2, 2, |x, y| image::Rgb([(10 * x + y) as u8, 100, 200]));
        let read = |spec: &PreprocessSpec| {
            let mut out = vec![0u8; spec.image_bytes()];
            write_tensor(spec, &Normaliser::new(spec), &image, &mut out).expect("writes");
            out.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 128.0 + 127.0)
                .collect()
        };
        let exact = Resize::Exact { width: 2, height: 2 };
        let nchw: Vec<f32> = read(&spec(exact, (2, 2), Layout::Nchw, ColorOrder::Rgb));
        assert_eq!(nchw, [0., 10., 1., 11., 100., 100., 100., 100., 200., 200., 200., 200.]);
        let nhwc: Vec<f32> = read(&spec(exact, (2, 2), Layout::Nhwc, ColorOrder::Bgr));
        assert_eq!(&nhwc[..6], &[200., 100., 0., 200., 100., 10.]);
    }

    #[test]
    fn crops_the_centre() {
        let image = RgbImage::from_fn(5, 3, |x, _| image::Rgb([x as u8, 0, 0]));
        let spec = spec(Resize::Exact { width: 5, height: 3 }, (3, 1), Layout::Nhwc, ColorOrder::Rgb);
        let mut out = vec![0u8; spec.image_bytes()];
        write_tensor(&spec, &Normaliser::new(&spec), &image, &mut out).expect("writes");
        let red: Vec<f32> = out
            .chunks_exact(12)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 128.0 + 127.0)
            .collect();
        assert_eq!(red, [1.0, 2.0, 3.0]);
    }
}
