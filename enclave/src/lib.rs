//! The enclave: the program inside the confidential VM.
//!
//! At start it generates its OHTTP key pair and receipt key, builds its
//! claims, asks the hardware (or, in development, the simulated producer) for
//! evidence binding them, and serves over vsock (or a Unix socket in
//! development): key configuration, evidence, and the sealed
//! OpenAI-compatible API.

pub mod api;
pub mod cancelled;
pub mod cli;
pub mod fresh_evidence;
pub mod model_config;
pub mod replay;
pub mod server;
pub mod state;
pub mod transport;

pub use cli::run;
