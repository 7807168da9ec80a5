//! The HTTP infer body, JSON and binary extension (`rtserve_fuzz_targets::http_infer`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::http_infer(data));
