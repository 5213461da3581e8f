//! See `cocoon_fuzz::spdm`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cocoon_fuzz::spdm(data));
