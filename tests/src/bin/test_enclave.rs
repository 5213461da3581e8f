//! The enclave program with the deterministic test engine, for end-to-end tests.

use std::sync::Arc;
use std::time::Duration;

use cocoon_tests::echo_engine::EchoEngine;

fn main() -> anyhow::Result<()> {
    let delay_ms = std::env::var("COCOON_TEST_TOKEN_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    // Another model (and so another digest) when a test needs two.
    let model = std::env::var("COCOON_TEST_MODEL").unwrap_or_else(|_| cocoon_tests::echo_engine::MODEL_ID.into());
    let prefill_ms = std::env::var("COCOON_TEST_PREFILL_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let engine = EchoEngine::serving(&model, Duration::from_millis(delay_ms))
        .with_prefill_delay(Duration::from_millis(prefill_ms));
    cocoon_enclave::run(Some(Arc::new(engine)))
}
