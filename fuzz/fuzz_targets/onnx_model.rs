//! An ONNX file through `optimize`'s loader and graph rewrites (`rtserve_fuzz_targets::onnx_model`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::onnx_model(data));
