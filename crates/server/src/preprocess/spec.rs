//! A model's preprocessing, as its config declares it (`[preprocess]` in config.toml,
//! `preprocess.<key>` parameters in config.pbtxt), completed from the model's input tensor and
//! validated at load time.

use std::collections::BTreeMap;

use rtserve_core::{DataType, ModelConfig, TensorSpec};

/// The prefix of the config parameters that declare preprocessing.
pub const PARAMETER_PREFIX: &str = "preprocess.";

/// The keys a `[preprocess]` table may set.
const KEYS: &[&str] = &[
    "input",
    "tensor",
    "resize_short",
    "resize",
    "filter",
    "crop",
    "color",
    "layout",
    "mean",
    "std",
    "scale",
    "offset",
    "dtype",
];

/// How the decoded image is resized before the centre crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The short side to this many pixels, the long side in proportion (rounded).
    ShortSide(u32),
    /// Exactly `width × height`.
    Exact { width: u32, height: u32 },
}

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Pillow's `BILINEAR` (a triangle filter widened when downscaling).
    Bilinear,
    /// Pixel-area averaging (a box filter), like OpenCV's `INTER_AREA`.
    Area,
}

/// The channel order written into the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// Where the channel dimension sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// A model's preprocessing, complete and valid.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessSpec {
    /// The BYTES input clients send, one encoded image per element.
    pub input: String,
    /// The model input it produces.
    pub tensor: String,
    pub resize: Resize,
    pub filter: Filter,
    /// The centre crop, `(width, height)`.
    pub crop: (u32, u32),
    pub color: ColorOrder,
    pub layout: Layout,
    /// Per channel (in tensor order): `(pixel - mean) / std`, pixels in 0..255.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// FP32, FP16 or UINT8.
    pub dtype: DataType,
    /// Whether the tensor has a batch dimension the images are stacked along (always, when the
    /// model batches; otherwise only a leading `1` of a 4-dimensional input).
    pub batched: bool,
}

impl PreprocessSpec {
    /// The tensor shape of one image, without the batch dimension.
    pub fn image_shape(&self) -> [usize; 3] {
        let (w, h) = (self.crop.0 as usize, self.crop.1 as usize);
        match self.layout {
            Layout::Nchw => [3, h, w],
            Layout::Nhwc => [h, w, 3],
        }
    }

    /// Bytes of one image's tensor.
    pub fn image_bytes(&self) -> usize {
        let elements: usize = self.image_shape().iter().product();
        elements * self.dtype.size().unwrap_or(1)
    }
}

/// The `preprocess.<key>` parameters of a config, `None` when it declares no preprocessing.
/// Then completes and validates them against the model's inputs.
pub fn preprocess_spec(config: &ModelConfig) -> Result<Option<PreprocessSpec>, String> {
    let keys: BTreeMap<&str, &str> = config
        .parameters
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(PARAMETER_PREFIX)?, v.as_str())))
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    build(config, &keys).map(Some).map_err(|e| format!("preprocess: {e}"))
}

fn build(config: &ModelConfig, keys: &BTreeMap<&str, &str>) -> Result<PreprocessSpec, String> {
    if let Some(unknown) = keys.keys().find(|k| !KEYS.contains(k) && **k != "enable") {
        return Err(format!("unknown key '{unknown}' (known: {})", KEYS.join(", ")));
    }
    let tensor = match keys.get("tensor") {
        Some(name) => {
            config.input(name).ok_or_else(|| format!("tensor '{name}' is not an input of the model"))?
        }
        None => match config.inputs.as_slice() {
            [only] => only,
            _ => return Err("the model has several inputs: set 'tensor' to the one the image fills".into()),
        },
    };
    let (batched, dims) = image_dims(config, tensor)?;
    let layout = match keys.get("layout") {
        Some(v) => parse_layout(v)?,
        None => match dims {
            [3, _, _] => Layout::Nchw,
            [_, _, 3] => Layout::Nhwc,
            _ => return Err(format!("cannot tell the layout from the shape {dims:?}: set 'layout'")),
        },
    };
    let (c, h, w) = match layout {
        Layout::Nchw => (dims[0], dims[1], dims[2]),
        Layout::Nhwc => (dims[2], dims[0], dims[1]),
    };
    if c != 3 && c != -1 {
        return Err(format!("tensor '{}' has {c} channels in {layout:?} layout, not 3", tensor.name));
    }
    let crop = match keys.get("crop") {
        Some(v) => pair(v, "crop")?,
        None if w > 0 && h > 0 => (dim(w)?, dim(h)?),
        None => return Err(format!("tensor '{}' has a dynamic height or width: set 'crop'", tensor.name)),
    };
    if (w > 0 && i64::from(crop.0) != w) || (h > 0 && i64::from(crop.1) != h) {
        return Err(format!("crop {}x{} does not fit the tensor's {w}x{h} (width x height)", crop.0, crop.1));
    }
    let resize = match (keys.get("resize_short"), keys.get("resize")) {
        (Some(_), Some(_)) => return Err("set 'resize_short' or 'resize', not both".into()),
        (Some(v), None) => Resize::ShortSide(positive(v, "resize_short")?),
        (None, Some(v)) => {
            let (width, height) = pair(v, "resize")?;
            Resize::Exact { width, height }
        }
        (None, None) => Resize::ShortSide(crop.0.max(crop.1)),
    };
    match resize {
        Resize::ShortSide(s) if s < crop.0.max(crop.1) => {
            return Err(format!("resize_short {s} is smaller than the crop {}x{}", crop.0, crop.1))
        }
        Resize::Exact { width, height } if width < crop.0 || height < crop.1 => {
            return Err(format!("resize {width}x{height} is smaller than the crop {}x{}", crop.0, crop.1))
        }
        _ => {}
    }
    let filter = match keys.get("filter").copied().unwrap_or("bilinear") {
        "bilinear" => Filter::Bilinear,
        "area" => Filter::Area,
        other => return Err(format!("filter '{other}' is not bilinear or area")),
    };
    let color = match keys.get("color").copied().unwrap_or("rgb") {
        "rgb" => ColorOrder::Rgb,
        "bgr" => ColorOrder::Bgr,
        other => return Err(format!("color '{other}' is not rgb or bgr")),
    };
    let (mean, std) = normalisation(keys)?;
    let dtype = match keys.get("dtype") {
        None => tensor.data_type,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "fp32" => DataType::Fp32,
            "fp16" => DataType::Fp16,
            "uint8" => DataType::Uint8,
            other => return Err(format!("dtype '{other}' is not fp32, fp16 or uint8")),
        },
    };
    if !matches!(dtype, DataType::Fp32 | DataType::Fp16 | DataType::Uint8) {
        return Err(format!("tensor '{}' is {dtype}; preprocessing makes FP32, FP16 or UINT8", tensor.name));
    }
    if dtype != tensor.data_type {
        return Err(format!("dtype {dtype} does not match tensor '{}' ({})", tensor.name, tensor.data_type));
    }
    let input = keys.get("input").copied().unwrap_or("image").to_string();
    if config.input(&input).is_some() {
        return Err(format!("input '{input}' is already a model input; name the image input otherwise"));
    }
    Ok(PreprocessSpec {
        input,
        tensor: tensor.name.clone(),
        resize,
        filter,
        crop,
        color,
        layout,
        mean,
        std,
        dtype,
        batched,
    })
}

/// The dims of one image (batch dimension removed) and whether there is a batch dimension.
fn image_dims<'a>(config: &ModelConfig, tensor: &'a TensorSpec) -> Result<(bool, &'a [i64]), String> {
    match (config.max_batch_size > 0, tensor.dims.as_slice()) {
        (true, dims @ [_, _, _]) => Ok((true, dims)),
        (false, [1 | -1, rest @ ..]) if rest.len() == 3 => Ok((true, rest)),
        (false, dims @ [_, _, _]) => Ok((false, dims)),
        (_, dims) => {
            Err(format!("tensor '{}' has shape {dims:?}; an image tensor has 3 dimensions", tensor.name))
        }
    }
}

fn normalisation(keys: &BTreeMap<&str, &str>) -> Result<([f32; 3], [f32; 3]), String> {
    let get = |key: &str, default: f32| -> Result<[f32; 3], String> {
        keys.get(key).map_or(Ok([default; 3]), |v| triple(v, key))
    };
    let mean_std = keys.contains_key("mean") || keys.contains_key("std");
    let scale_offset = keys.contains_key("scale") || keys.contains_key("offset");
    let (mean, std) = match (mean_std, scale_offset) {
        (true, true) => return Err("give mean/std or scale/offset, not both".into()),
        (false, true) => {
            // pixel * scale + offset == (pixel - mean) / std with std = 1/scale, mean = -offset/scale.
            let (scale, offset) = (get("scale", 1.0)?, get("offset", 0.0)?);
            if scale.contains(&0.0) {
                return Err("scale must not be 0".into());
            }
            (std::array::from_fn(|i| -offset[i] / scale[i]), scale.map(|s| 1.0 / s))
        }
        _ => (get("mean", 0.0)?, get("std", 1.0)?),
    };
    if std.iter().any(|s| *s == 0.0 || !s.is_finite()) || mean.iter().any(|m| !m.is_finite()) {
        return Err(format!("mean {mean:?} / std {std:?}: std must be finite and non-zero"));
    }
    Ok((mean, std))
}

fn parse_layout(v: &str) -> Result<Layout, String> {
    match v.to_ascii_lowercase().as_str() {
        "nchw" | "chw" => Ok(Layout::Nchw),
        "nhwc" | "hwc" => Ok(Layout::Nhwc),
        other => Err(format!("layout '{other}' is not nchw or nhwc")),
    }
}

/// Items of a list written `[a, b]`, `a,b` or `a b`.
fn items(v: &str) -> Vec<&str> {
    v.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .collect()
}

fn triple(v: &str, key: &str) -> Result<[f32; 3], String> {
    let values = items(v)
        .iter()
        .map(|s| s.parse::<f32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{key} '{v}' is not a list of numbers"))?;
    match values.as_slice() {
        [one] => Ok([*one; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(format!("{key} '{v}' needs 1 or 3 numbers")),
    }
}

fn pair(v: &str, key: &str) -> Result<(u32, u32), String> {
    let values = items(v);
    match values.as_slice() {
        [a, b] => Ok((positive(a, key)?, positive(b, key)?)),
        [a] => positive(a, key).map(|s| (s, s)),
        _ => Err(format!("{key} '{v}' needs [width, height]")),
    }
}

fn positive(v: &str, key: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(n),
        _ => Err(format!("{key} '{v}' is not a whole number of pixels between 1 and 65535")),
    }
}

fn dim(d: i64) -> Result<u32, String> {
    u32::try_from(d).map_err(|_| format!("dimension {d} is not a pixel count"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dims: Vec<i64>, params: &[(&str, &str)]) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            inputs: vec![TensorSpec { name: "input".into(), data_type: DataType::Fp32, dims }],
            parameters: params.iter().map(|(k, v)| (format!("preprocess.{k}"), v.to_string())).collect(),
            ..ModelConfig::default()
        }
    }

    #[test]
    fn no_keys_no_preprocessing() {
        assert_eq!(preprocess_spec(&model(vec![3, 224, 224], &[])), Ok(None));
    }

    #[test]
    fn infers_what_the_config_leaves_out() {
        let spec = preprocess_spec(&model(vec![3, 224, 224], &[("resize_short", "256")]))
            .expect("valid")
            .expect("declared");
        assert_eq!(spec.input, "image");
        assert_eq!(spec.tensor, "input");
        assert_eq!(spec.layout, Layout::Nchw);
        assert_eq!(spec.crop, (224, 224));
        assert_eq!(spec.resize, Resize::ShortSide(256));
        assert_eq!((spec.mean, spec.std), ([0.0; 3], [1.0; 3]));
        assert_eq!(spec.image_shape(), [3, 224, 224]);
        let nhwc = preprocess_spec(&model(vec![160, 192, 3], &[("color", "bgr")])).expect("valid");
        let nhwc = nhwc.expect("declared");
        assert_eq!((nhwc.layout, nhwc.crop, nhwc.resize), (Layout::Nhwc, (192, 160), Resize::ShortSide(192)));
    }

    #[test]
    fn reads_every_key() {
        let spec = preprocess_spec(&model(
            vec![-1, -1, 3],
            &[
                ("input", "jpeg"),
                ("resize", "[300, 200]"),
                ("filter", "area"),
                ("crop", "[256, 128]"),
                ("layout", "nhwc"),
                ("scale", "0.5"),
                ("offset", "[-1, -2, -4]"),
            ],
        ))
        .expect("valid")
        .expect("declared");
        assert_eq!(spec.input, "jpeg");
        assert_eq!(spec.resize, Resize::Exact { width: 300, height: 200 });
        assert_eq!((spec.filter, spec.crop), (Filter::Area, (256, 128)));
        assert_eq!(spec.std, [2.0; 3]);
        assert_eq!(spec.mean, [2.0, 4.0, 8.0]);
    }

    #[test]
    fn refuses_bad_keys_with_reasons() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("resize_short", "100")], "resize_short 100 is smaller than the crop 224x224"),
            (&[("crop", "[200, 200]")], "does not fit the tensor's 224x224"),
            (&[("filter", "lanczos")], "filter 'lanczos'"),
            (&[("mean", "1,2")], "needs 1 or 3 numbers"),
            (&[("std", "0")], "std must be finite and non-zero"),
            (&[("mean", "1"), ("scale", "2")], "not both"),
            (&[("dtype", "fp16")], "does not match tensor 'input'"),
            (&[("input", "input")], "already a model input"),
            (&[("colour", "rgb")], "unknown key 'colour'"),
            (&[("tensor", "x")], "tensor 'x' is not an input"),
        ];
        for (params, expected) in cases {
            let err = preprocess_spec(&model(vec![3, 224, 224], params)).expect_err(expected);
            assert!(err.contains(expected), "'{err}' should contain '{expected}'");
        }
        let err = preprocess_spec(&model(vec![3, -1, -1], &[("enable", "true")])).expect_err("dynamic");
        assert!(err.contains("set 'crop'"), "{err}");
    }
}
