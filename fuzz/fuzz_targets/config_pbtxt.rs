//! A `config.pbtxt` and what loading derives from it (`rtserve_fuzz_targets::config_pbtxt`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::config_pbtxt(data));
