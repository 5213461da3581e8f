//! Client and proxy library: fetch and verify a worker's evidence, then
//! seal requests to the key its evidence vouches for, stream the answers
//! back, and verify the usage receipts.
//!
//! Nothing is sent to a worker before its evidence passed the policy: the
//! only way to get a [`Worker`] is [`Worker::attest`].

pub mod allowlist;
pub mod channel_cli;
pub mod chat;
pub mod durable;
pub mod endorsements;
pub mod http;
pub mod keyfile;
pub mod pay;
pub mod payouts;
pub mod registry_cli;
pub mod serve;
pub mod worker;

pub use chat::{ChatOptions, ChatOutcome, Usage};
pub use endorsements::{EndorsementError, EndorsementSources};
pub use worker::{ClientError, ResponseStream, Route, Worker};

/// The client's key file: `key` when given, else `~/.config/cocoon/client.key`.
pub fn cli_key_path(key: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    if let Some(k) = key {
        return Ok(k);
    }
    let home = std::env::var_os("HOME").ok_or_else(|| anyhow::anyhow!("HOME is not set: give --key"))?;
    Ok(std::path::PathBuf::from(home).join(".config/cocoon/client.key"))
}
