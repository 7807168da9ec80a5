//! A `config.toml` and what loading derives from it (`rtserve_fuzz_targets::config_toml`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::config_toml(data));
