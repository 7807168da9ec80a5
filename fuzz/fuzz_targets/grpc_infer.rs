//! A ModelInferRequest from protobuf bytes to validated tensors (`rtserve_fuzz_targets::grpc_infer`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::grpc_infer(data));
