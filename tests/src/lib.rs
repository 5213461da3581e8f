//! Test support: the deterministic test engine (built only into the
//! `cocoon-test-enclave` binary, never into the shipped enclave), and helpers
//! for starting processes.

pub mod echo_engine;
pub mod procs;
pub mod wait;
