//! The host shim: untrusted, holds no keys. It moves sealed bytes between
//! HTTP clients and the enclave, and answers questions about the enclave
//! (evidence, reference measurements, health) without being able to forge them.

pub mod admission;
pub mod cli;
pub mod metrics;
pub mod proxy;
pub mod upload;
pub mod upstream;
