//! Calibration and evaluation data: `.npy`/`.npz` arrays, or a folder of images with
//! preprocessing. Every source becomes a list of samples, each one batch-1 tensor per model input.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rtserve_core::{NamedTensor, Tensor};

use crate::error::{OptimizeError, Result};

/// One batch-1 input set.
pub type Sample = Vec<NamedTensor>;

/// An n-dimensional array read from a `.npy` file, as FP32.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// How images are turned into input tensors.
#[derive(Debug, Clone)]
pub struct ImagePreprocess {
    /// Resize so the short side has this many pixels (bilinear); 0 keeps the size.
    pub resize: u32,
    /// Centre-crop a square of this side; 0 keeps the whole image.
    pub crop: u32,
    /// Per-channel (R, G, B) mean subtracted from pixel values in 0..=255.
    pub mean: [f32; 3],
    /// Per-channel divisor applied after the mean.
    pub std: [f32; 3],
    /// `true`: NCHW (`[1,3,H,W]`); `false`: NHWC.
    pub channels_first: bool,
}

impl Default for ImagePreprocess {
    fn default() -> Self {
        ImagePreprocess { resize: 256, crop: 224, mean: [127.0; 3], std: [128.0; 3], channels_first: true }
    }
}

/// Loads samples from `path`: a `.npy` file (first axis = samples, for the model's only input),
/// a `.npz` file (one array per input, named after it), or a folder of `.png`/`.jpg` images.
/// `limit` keeps the first samples only.
pub fn load_samples(
    path: &Path,
    input_names: &[String],
    images: &ImagePreprocess,
    limit: Option<usize>,
) -> Result<Vec<Sample>> {
    let samples = if path.is_dir() {
        let name = single_input(input_names, path)?;
        image_files(path)?
            .iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|file| Ok(vec![NamedTensor { name: name.clone(), tensor: load_image(file, images)? }]))
            .collect::<Result<Vec<_>>>()?
    } else {
        let arrays = load_arrays(path)?;
        bind_arrays(arrays, input_names, path)?
    };
    if samples.is_empty() {
        return Err(OptimizeError::data(format!("{}: no samples", path.display())));
    }
    Ok(samples.into_iter().take(limit.unwrap_or(usize::MAX)).collect())
}

fn single_input(input_names: &[String], path: &Path) -> Result<String> {
    match input_names {
        [one] => Ok(one.clone()),
        _ => Err(OptimizeError::data(format!(
            "{}: images feed a model with one input; this one has {} ({:?}): use a .npz file",
            path.display(),
            input_names.len(),
            input_names
        ))),
    }
}

/// The arrays of a `.npy` (one, named after the file stem) or `.npz` file.
pub fn load_arrays(path: &Path) -> Result<Vec<(String, Array)>> {
    let read_err = |source| OptimizeError::Read { path: path.to_path_buf(), source };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "npy" => {
            let bytes = std::fs::read(path).map_err(read_err)?;
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("array").to_string();
            Ok(vec![(
                name,
                parse_npy(&bytes).map_err(|e| OptimizeError::data(format!("{}: {e}", path.display())))?,
            )])
        }
        "npz" => {
            let file = std::fs::File::open(path).map_err(read_err)?;
            let mut archive = zip::ZipArchive::new(file).map_err(|e| {
                OptimizeError::data(format!("{}: not a .npz (zip) file: {e}", path.display()))
            })?;
            let mut arrays = Vec::new();
            for i in 0..archive.len() {
                let mut member = archive
                    .by_index(i)
                    .map_err(|e| OptimizeError::data(format!("{}: member {i}: {e}", path.display())))?;
                let name = member.name().trim_end_matches(".npy").to_string();
                let mut bytes = Vec::new();
                member.read_to_end(&mut bytes).map_err(read_err)?;
                let array = parse_npy(&bytes)
                    .map_err(|e| OptimizeError::data(format!("{}: array '{name}': {e}", path.display())))?;
                arrays.push((name, array));
            }
            Ok(arrays)
        }
        _ => Err(OptimizeError::data(format!(
            "{}: expected a .npy or .npz file or a folder of images",
            path.display()
        ))),
    }
}

/// Splits arrays along their first axis into samples, matching arrays to inputs by name (a single
/// array feeds a single input whatever its name).
fn bind_arrays(arrays: Vec<(String, Array)>, input_names: &[String], path: &Path) -> Result<Vec<Sample>> {
    let mut by_input: Vec<(String, Array)> = Vec::new();
    if arrays.len() == 1 && input_names.len() == 1 {
        let (_, array) = arrays.into_iter().next().ok_or_else(|| OptimizeError::data("no arrays"))?;
        by_input.push((input_names[0].clone(), array));
    } else {
        let mut named: HashMap<String, Array> = arrays.into_iter().collect();
        for input in input_names {
            let array = named.remove(input).ok_or_else(|| {
                OptimizeError::data(format!(
                    "{}: no array named '{input}' for model input '{input}'",
                    path.display()
                ))
            })?;
            by_input.push((input.clone(), array));
        }
    }
    let count = by_input.first().map(|(_, a)| a.shape.first().copied().unwrap_or(0)).unwrap_or(0);
    let mut samples: Vec<Sample> = (0..count).map(|_| Vec::new()).collect();
    for (name, array) in by_input {
        let Some((&n, rest)) = array.shape.split_first() else {
            return Err(OptimizeError::data(format!("{}: array for '{name}' is a scalar", path.display())));
        };
        if n != count {
            return Err(OptimizeError::data(format!(
                "{}: array for '{name}' has {n} samples, others have {count}",
                path.display()
            )));
        }
        let per: usize = rest.iter().product();
        let mut shape = vec![1];
        shape.extend_from_slice(rest);
        for (i, sample) in samples.iter_mut().enumerate() {
            let tensor = Tensor::from_f32(shape.clone(), &array.values[i * per..(i + 1) * per])
                .map_err(|e| OptimizeError::data(format!("'{name}': {e}")))?;
            sample.push(NamedTensor { name: name.clone(), tensor });
        }
    }
    Ok(samples)
}

/// Parses a `.npy` buffer (format 1.0–3.0, little-endian f4/f8/u1/i1/i4/i8, C order) as FP32.
pub fn parse_npy(bytes: &[u8]) -> std::result::Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or(format!("no '{key}' in the .npy header"))?;
        let rest = header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start();
        Ok(rest)
    };
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'').split('\'').next().unwrap_or("");
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text.trim_start_matches('(').split(')').next().unwrap_or("");
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape dimension '{s}'")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let data = &bytes[start + header_len..];
    let (size, convert): (usize, fn(&[u8]) -> f32) = match descr {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        "<f8" => (8, |c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
        "|u1" => (1, |c| c[0] as f32),
        "|i1" => (1, |c| c[0] as i8 as f32),
        "<i4" => (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        "<i8" => (8, |c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
        other => {
            return Err(format!(
                "unsupported dtype '{other}' (use float32, float64, uint8, int8, int32 or int64)"
            ))
        }
    };
    let needed = count.checked_mul(size).ok_or("shape overflows")?;
    if data.len() < needed {
        return Err(format!("shape {shape:?} needs {needed} bytes of data, the file has {}", data.len()));
    }
    let values = data[..needed].chunks_exact(size).map(convert).collect();
    Ok(Array { shape, values })
}

/// Labels for accuracy: a `.npy` integer array, or a text file with one integer per line.
pub fn load_labels(path: &Path) -> Result<Vec<usize>> {
    let values: Vec<f32> = if path.extension().is_some_and(|e| e == "npy") {
        let bytes =
            std::fs::read(path).map_err(|source| OptimizeError::Read { path: path.to_path_buf(), source })?;
        parse_npy(&bytes).map_err(|e| OptimizeError::data(format!("{}: {e}", path.display())))?.values
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|source| OptimizeError::Read { path: path.to_path_buf(), source })?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                l.trim().parse::<f32>().map_err(|_| {
                    OptimizeError::data(format!("{}: line {}: '{l}' is not a label", path.display(), i + 1))
                })
            })
            .collect::<Result<_>>()?
    };
    values
        .into_iter()
        .map(|v| {
            if v >= 0.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(OptimizeError::data(format!("{}: label {v} is not a class index", path.display())))
            }
        })
        .collect()
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| OptimizeError::Read { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Decodes and preprocesses one image into a `[1,3,H,W]` (or `[1,H,W,3]`) FP32 tensor.
pub fn load_image(path: &Path, p: &ImagePreprocess) -> Result<Tensor> {
    let img = image::open(path).map_err(|e| OptimizeError::data(format!("{}: {e}", path.display())))?;
    let mut rgb = img.to_rgb8();
    if p.resize > 0 {
        let (w, h) = rgb.dimensions();
        let short = w.min(h).max(1) as f64;
        let scale = p.resize as f64 / short;
        let (nw, nh) = ((w as f64 * scale).round() as u32, (h as f64 * scale).round() as u32);
        rgb = image::imageops::resize(&rgb, nw.max(1), nh.max(1), image::imageops::FilterType::Triangle);
    }
    if p.crop > 0 {
        let (w, h) = rgb.dimensions();
        if w < p.crop || h < p.crop {
            return Err(OptimizeError::data(format!(
                "{}: image is {w}x{h} after resizing, smaller than the {} crop",
                path.display(),
                p.crop
            )));
        }
        rgb = image::imageops::crop_imm(&rgb, (w - p.crop) / 2, (h - p.crop) / 2, p.crop, p.crop).to_image();
    }
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut values = vec![0f32; 3 * w * h];
    for (x, y, px) in rgb.enumerate_pixels() {
        for c in 0..3 {
            let v = (px[c] as f32 - p.mean[c]) / p.std[c];
            let i = if p.channels_first {
                c * w * h + y as usize * w + x as usize
            } else {
                (y as usize * w + x as usize) * 3 + c
            };
            values[i] = v;
        }
    }
    let shape = if p.channels_first { vec![1, 3, h, w] } else { vec![1, h, w, 3] };
    Tensor::from_f32(shape, &values).map_err(|e| OptimizeError::data(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_float_and_integer_npy() {
        let data: Vec<u8> = [1.5f32, -2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let a = parse_npy(&npy("<f4", "(2, 2)", &data)).expect("f4");
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.values, vec![1.5, -2.0, 3.0, 4.0]);
        let b = parse_npy(&npy("|u1", "(3,)", &[0, 7, 255])).expect("u1");
        assert_eq!(b.values, vec![0.0, 7.0, 255.0]);
    }

    #[test]
    fn rejects_truncated_and_unknown_npy() {
        assert!(parse_npy(&npy("<f4", "(2, 2)", &[0; 8])).expect_err("short").contains("needs 16 bytes"));
        assert!(parse_npy(&npy("<c8", "(1,)", &[0; 8])).expect_err("complex").contains("unsupported dtype"));
        assert!(parse_npy(b"garbage!!!!").is_err());
    }

    #[test]
    fn splits_arrays_into_samples() {
        let arrays =
            vec![("x".to_string(), Array { shape: vec![2, 3], values: vec![1., 2., 3., 4., 5., 6.] })];
        let samples = bind_arrays(arrays, &["input".to_string()], Path::new("x.npy")).expect("bind");
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[1][0].name, "input");
        assert_eq!(samples[1][0].tensor.shape(), &[1, 3]);
        assert_eq!(samples[1][0].tensor.to_f32(), Some(vec![4., 5., 6.]));
    }
}
