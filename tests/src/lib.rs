//! Test support: the deterministic test engine (built only into the
//! `cocoon-test-enclave` binary, never into the shipped enclave).

pub mod echo_engine;
