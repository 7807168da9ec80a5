//! A TFLite file through the rewrite to ONNX (`rtserve_fuzz_targets::tflite_model`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::tflite_model(data));
