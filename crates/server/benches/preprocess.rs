//! Guards against a regression in image preprocessing, the per-request work in front of the
//! scheduler for models with `[preprocess]`: a 640x480 JPEG decoded, resized (short side 256,
//! bilinear), centre-cropped to 224x224 and normalised to FP32 NCHW, on the calling thread
//! (one core), with each stage also timed alone.
//!
//! ```sh
//! python3 scripts/bench_preprocess.py image target/bench/photo_640x480.jpg   # the photo
//! RTSERVE_BENCH_IMAGE=target/bench/photo_640x480.jpg taskset -c 0 \
//!     cargo bench -p rtserve-server --no-default-features --bench preprocess
//! ```
//!
//! Without `RTSERVE_BENCH_IMAGE` the JPEG is a synthetic 640x480 picture (smooth gradients and
//! texture, quality 90). Figures and the Python pipelines they are compared with:
//! `docs/preprocessing.md`.

use std::hint::black_box;
use std::io::Cursor;

use criterion::{criterion_group, criterion_main, Criterion};
use image::{ImageFormat, Rgb, RgbImage};
use rtserve_core::DataType;
use rtserve_server::preprocess::{
    decode_rgb, write_tensor, ColorOrder, Filter, Layout, Normaliser, PreprocessSpec, Resize,
};

fn photo() -> Vec<u8> {
    if let Some(path) = std::env::var_os("RTSERVE_BENCH_IMAGE") {
        return std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.to_string_lossy()));
    }
    let image = RgbImage::from_fn(640, 480, |x, y| {
        let texture = ((x * 7919 + y * 104_729) % 23) as u8;
        Rgb([(x / 3) as u8 ^ texture, (y / 2) as u8, ((x + y) / 5) as u8 + texture])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Jpeg).expect("encode");
    out.into_inner()
}

fn effnet_spec() -> PreprocessSpec {
    PreprocessSpec {
        input: "image".into(),
        tensor: "input".into(),
        resize: Resize::ShortSide(256),
        filter: Filter::Bilinear,
        crop: (224, 224),
        color: ColorOrder::Rgb,
        layout: Layout::Nchw,
        mean: [127.0; 3],
        std: [128.0; 3],
        dtype: DataType::Fp32,
        batched: true,
    }
}

fn preprocess(c: &mut Criterion) {
    let jpeg = photo();
    let spec = effnet_spec();
    let normaliser = Normaliser::new(&spec);
    let mut out = vec![0u8; spec.image_bytes()];
    let decoded = decode_rgb(&jpeg, u64::MAX).expect("decodes");
    assert_eq!(decoded.dimensions(), (640, 480), "the benchmark photo must be 640x480");
    let mut group = c.benchmark_group("preprocess");
    group.bench_function("jpeg_640x480_to_fp32_224/total", |b| {
        b.iter(|| {
            let image = decode_rgb(black_box(&jpeg), u64::MAX).expect("decodes");
            write_tensor(&spec, &normaliser, &image, &mut out).expect("writes");
            black_box(&out);
        })
    });
    group.bench_function("jpeg_640x480_to_fp32_224/decode", |b| {
        b.iter(|| black_box(decode_rgb(black_box(&jpeg), u64::MAX).expect("decodes")))
    });
    group.bench_function("jpeg_640x480_to_fp32_224/resize_crop_normalise", |b| {
        b.iter(|| {
            write_tensor(&spec, &normaliser, black_box(&decoded), &mut out).expect("writes");
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
