//! See `cocoon_fuzz::ct2`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cocoon_fuzz::ct2(data));
