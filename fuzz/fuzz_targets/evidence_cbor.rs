//! An evidence document (CBOR) from outside, through the whole verifier under a
//! development policy (so simulated evidence gets past the platform rule).
#![no_main]

use cocoon_attestation::{Endorsements, Policy, assess};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let policy = Policy::insecure_simulated();
    let a = assess(data, &policy, Some(b"nonce"), 1_800_000_000, &Endorsements::default());
    let _ = a.summary();
});
