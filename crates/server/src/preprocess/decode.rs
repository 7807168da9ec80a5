//! Decoding one encoded image (JPEG, PNG, WebP) to 8-bit RGB, with the size checked against the
//! pixel limit from the header, before any pixel buffer is allocated.

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// Why an image was refused; each names the problem for the client (HTTP 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("empty data: no image")]
    Empty,
    #[error("not an image (JPEG, PNG or WebP expected)")]
    NotAnImage,
    #[error("unsupported image format {0}; rtserve decodes JPEG, PNG and WebP")]
    Unsupported(String),
    #[error("image has zero size ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error(
        "image is {width}x{height} = {pixels} pixels, more than the limit of {limit} (--max-image-pixels)"
    )]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("corrupt or truncated {format} image: {reason}")]
    Corrupt { format: &'static str, reason: String },
}

/// Decodes `data` to RGB, refusing images of more than `max_pixels` pixels from their header.
pub fn decode_rgb(data: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    if data.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = image::guess_format(data).map_err(|_| ImageError::NotAnImage)?;
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        other => return Err(ImageError::Unsupported(format!("{other:?}").to_uppercase())),
    };
    let corrupt = |e: image::ImageError| ImageError::Corrupt { format: name, reason: e.to_string() };
    if name == "JPEG" && !has_jpeg_end(data) {
        // zune-jpeg fills a cut-off scan with grey rather than failing; refuse it instead.
        return Err(ImageError::Corrupt { format: name, reason: "no end-of-image marker".into() });
    }
    if let Some((width, height)) = header_dimensions(format, data) {
        check_size(width, height, max_pixels)?;
    }
    let mut reader = ImageReader::with_format(Cursor::new(data), format);
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    let pixels = check_size(width, height, max_pixels)?;
    // Bound what the decoder may allocate too: the image at up to 16 bytes a pixel (RGBA 32F),
    // plus slack for its own buffers.
    let mut limits = Limits::default();
    limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(64 << 20));
    decoder.set_limits(limits).map_err(corrupt)?;
    let image = image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok(image.into_rgb8())
}

/// The pixel count, if the image is neither empty nor over the limit.
fn check_size(width: u32, height: u32, max_pixels: u64) -> Result<u64, ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(ImageError::TooLarge { width, height, pixels, limit: max_pixels });
    }
    Ok(pixels)
}

/// Width and height as a PNG's IHDR or a JPEG's start-of-frame segment state them, read without
/// a decoder (which refuses some sizes with a less precise message). `None`: not found.
fn header_dimensions(format: ImageFormat, data: &[u8]) -> Option<(u32, u32)> {
    let be16 = |at: usize| Some(u32::from(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?])));
    let be32 = |at: usize| Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?));
    match format {
        ImageFormat::Png if data.get(12..16) == Some(b"IHDR") => Some((be32(16)?, be32(20)?)),
        ImageFormat::Jpeg => {
            let mut at = 2;
            while at + 9 < data.len() {
                if data[at] != 0xFF {
                    return None;
                }
                let marker = data[at + 1];
                let length = be16(at + 2)? as usize;
                // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
                if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                    return Some((be16(at + 7)?, be16(at + 5)?));
                }
                at += 2 + length;
            }
            None
        }
        _ => None,
    }
}

/// Whether the JPEG ends with its end-of-image marker (`FF D9`), allowing trailing padding.
fn has_jpeg_end(data: &[u8]) -> bool {
    let tail = &data[data.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An encoded `width × height` image whose pixels follow a gradient.
    pub fn encoded(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).expect("encode");
        out.into_inner()
    }

    #[test]
    fn decodes_each_format() {
        for format in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP] {
            let image = decode_rgb(&encoded(format, 40, 30), 10_000).expect("decodes");
            assert_eq!(image.dimensions(), (40, 30), "{format:?}");
        }
    }

    #[test]
    fn refuses_bad_images_naming_the_problem() {
        let jpeg = encoded(ImageFormat::Jpeg, 64, 48);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "empty data"),
            (b"hello, this is text".to_vec(), "not an image"),
            (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), "unsupported image format GIF"),
            (jpeg[..jpeg.len() / 2].to_vec(), "corrupt or truncated JPEG"),
            (encoded(ImageFormat::Png, 200, 100), "200x100 = 20000 pixels, more than the limit of 10000"),
        ];
        for (data, expected) in cases {
            let err = decode_rgb(&data, 10_000).expect_err(expected).to_string();
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
    }

    /// A PNG whose header claims `width × height` but whose data is that of a 1×1 image.
    pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
        let mut png = encoded(ImageFormat::Png, 1, 1);
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        // The IHDR chunk's CRC covers its type and data (bytes 12..29).
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn refuses_a_huge_header_without_decoding() {
        // A decompression bomb is refused from its header, before the decoder allocates anything.
        let err = decode_rgb(&png_claiming(100_000, 100_000), 1 << 24).expect_err("too large").to_string();
        assert!(err.contains("100000x100000"), "{err}");
        let err = decode_rgb(&png_claiming(0, 10), 1 << 24).expect_err("zero").to_string();
        assert!(err.contains("zero size (0x10)"), "{err}");
    }
}
