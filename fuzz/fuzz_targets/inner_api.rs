//! The enclave's OpenAI-compatible API parsing outside input (after the seal
//! is opened): every request `cocoon_fuzz::inner_requests` builds is handed
//! to the API with no model loaded, which parses and validates it in full.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for req in cocoon_fuzz::inner_requests(data) {
        let reply = futures::executor::block_on(cocoon_enclave::api::handle(None, Some(cocoon_fuzz::PRICES), req, None));
        assert!((400..600).contains(&reply.status), "no model is loaded, yet the API answered {}", reply.status);
    }
});
