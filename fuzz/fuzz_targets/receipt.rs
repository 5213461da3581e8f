//! See `cocoon_fuzz::receipt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cocoon_fuzz::receipt(data));
