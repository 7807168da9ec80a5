//! An encoded image decoded and preprocessed into a tensor slot (`rtserve_fuzz_targets::image_preprocess`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rtserve_fuzz_targets::image_preprocess(data));
