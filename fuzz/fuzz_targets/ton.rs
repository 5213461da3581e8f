//! See `cocoon_fuzz::ton`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cocoon_fuzz::ton(data));
