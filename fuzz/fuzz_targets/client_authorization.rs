//! The proxy's parse of a client's charge authorisation (three headers from
//! outside) and its signature check. The input is split at NUL bytes into the
//! key, maximum-cost and signature header values.
#![no_main]

use cocoon_protocol::authorization::{CLIENT_KEY_HEADER, ClientAuthorization, MAX_COST_HEADER, SIGNATURE_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0).map(|p| std::str::from_utf8(p).ok());
    let (key, cost, sig) = (parts.next().flatten(), parts.next().flatten(), parts.next().flatten());
    let parsed = ClientAuthorization::from_headers(|name| match name {
        CLIENT_KEY_HEADER => key,
        MAX_COST_HEADER => cost,
        SIGNATURE_HEADER => sig,
        _ => None,
    });
    if let Ok(auth) = parsed {
        let _ = auth.verify(&[7; 32]);
    }
});
