//! rtserve's fuzz targets, one function per decoder of untrusted bytes ([`TARGETS`]), and the
//! fixtures they validate against.
//!
//! The same functions run in two places: `fuzz/` wraps each in libFuzzer's `fuzz_target!`
//! (cargo-fuzz, nightly: `scripts/fuzz.sh`), and this crate's `tests/replay.rs` runs every seed
//! and every past crash through them in `cargo test` on stable, so a regression fails CI without
//! the fuzzing build. A target returns normally on any input the code refuses; a panic (or, under
//! libFuzzer, a sanitizer report, a timeout or an allocation over the limit) is a crash.

mod fixtures;
mod targets;

pub use fixtures::{
    derive_from_config, split_http_input, IMAGE_SPECS, MAX_IMAGE_PIXELS, MODELS, NO_HEADER_LENGTH,
};
pub use targets::{
    config_pbtxt, config_toml, grpc_infer, http_infer, image_preprocess, onnx_model, tflite_model, TARGETS,
};
