//! What the fuzz targets share: the model configurations that decoded requests are validated
//! against, the layout of the inputs that carry more than one value, and what loading derives
//! from a config. Nothing here copies the server's logic; it only calls it.

use std::sync::LazyLock;

use rtserve_core::scheduler::{warm_up_sizes, PlannerConfig, DEFAULT_MAX_QUEUE_SIZE};
use rtserve_core::ModelConfig;
use rtserve_server::preprocess::{preprocess_spec, Normaliser, PreprocessSpec};
use rtserve_server::repository::{parse_pbtxt, parse_toml};

/// The example repository's models (`examples/model_repository`), as the server reads their
/// config files: FP32 inputs with and without a dynamic dimension, two inputs and two outputs.
pub static MODELS: LazyLock<Vec<ModelConfig>> = LazyLock::new(|| {
    let configs = [
        parse_pbtxt(include_str!("../../../examples/model_repository/mlp/config.pbtxt"), "mlp"),
        parse_pbtxt(include_str!("../../../examples/model_repository/cnn/config.pbtxt"), "cnn"),
        parse_pbtxt(
            include_str!("../../../examples/model_repository/dynamic_seq/config.pbtxt"),
            "dynamic_seq",
        ),
        parse_toml(include_str!("../../../examples/model_repository/two_io/config.toml"), "two_io"),
        parse_toml(include_str!("../configs/int_bool.toml"), "int_bool"),
        parse_toml(include_str!("../configs/strings.toml"), "strings"),
    ];
    configs
        .into_iter()
        .map(|c| c.unwrap_or_else(|e| panic!("a fuzz fixture config is invalid: {e}")))
        .collect()
});

/// The `Inference-Header-Content-Length` value that stands for "no such header" in an
/// `http_infer` input.
pub const NO_HEADER_LENGTH: u32 = u32::MAX;

/// Splits an `http_infer` input: a 4-byte little-endian `Inference-Header-Content-Length`
/// ([`NO_HEADER_LENGTH`]: a plain JSON body), then the request body. `None`: too short.
pub fn split_http_input(data: &[u8]) -> Option<(Option<usize>, &[u8])> {
    let (length, body) = data.split_first_chunk::<4>()?;
    let length = u32::from_le_bytes(*length);
    let header_length = (length != NO_HEADER_LENGTH).then_some(length as usize);
    Some((header_length, body))
}

/// What the repository derives from a model's config at load time before it asks an engine
/// anything: the versions it selects, its instances, its batching and SLO policy, its warm-up
/// batch sizes and its image preprocessing.
pub fn derive_from_config(config: &ModelConfig) {
    let _ = config.version_policy.select(&[1, 2, 3, u64::MAX]);
    let instances = config.instance_count();
    let _ = PlannerConfig::from_model_config(config, instances, DEFAULT_MAX_QUEUE_SIZE);
    let _ = warm_up_sizes(config);
    let _ = preprocess_spec(config);
}

/// The pixel limit of the `image_preprocess` target (`--max-image-pixels`): 4 megapixels, so
/// that one input stays within libFuzzer's memory limits (the server's default is 64).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 22;

/// Image preprocessing as four models declare it (`configs/image_*`): NCHW FP32 with an area
/// filter, BGR with scale and offset, NHWC UINT8 resized to an exact size, FP16 bilinear. Each
/// with the normalisation table the server builds for it.
pub static IMAGE_SPECS: LazyLock<Vec<(PreprocessSpec, Normaliser)>> = LazyLock::new(|| {
    let configs = [
        parse_toml(include_str!("../configs/image_area.toml"), "image_area"),
        parse_pbtxt(include_str!("../configs/image_bgr.pbtxt"), "image_bgr"),
        parse_toml(include_str!("../configs/image_nhwc.toml"), "image_nhwc"),
        parse_toml(include_str!("../configs/image_fp16.toml"), "image_fp16"),
    ];
    configs
        .into_iter()
        .map(|config| {
            let spec =
                config.and_then(|c| preprocess_spec(&c)).and_then(|s| s.ok_or("no preprocessing".into()));
            let spec = spec.unwrap_or_else(|e| panic!("a fuzz fixture image config is invalid: {e}"));
            let normaliser = Normaliser::new(&spec);
            (spec, normaliser)
        })
        .collect()
});
