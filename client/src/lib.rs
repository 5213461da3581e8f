//! The client library (the `cocoon` CLI is the `cocoon-cli` crate; the proxy
//! links this too): fetch and verify a worker's evidence, then seal requests
//! to the key its evidence vouches for, stream the answers back, and verify
//! the usage receipts; the client runner (`serve`), the proxies it uses
//! (`proxies`) and its payments through channels (`pay`), a worker's payouts
//! (`payouts`), the network's registry applied (`allowlist`); an app's
//! sponsor, which pays for its Telegram users' sealed requests without seeing
//! them (`sponsor`, `telegram`).
//!
//! Nothing is sent to a worker before its evidence passed the policy: the
//! only way to get a [`Worker`] is [`Worker::attest`].

pub mod allowlist;
pub mod channel_file;
pub mod chat;
pub mod durable;
pub mod endorsements;
pub mod http;
pub mod keyfile;
pub mod pay;
pub mod payouts;
pub mod proxies;
pub mod serve;
pub mod sponsor;
pub mod telegram;
pub mod worker;

pub use chat::{ChatOptions, ChatOutcome, Usage};
pub use endorsements::{EndorsementError, EndorsementSources};
pub use worker::{ClientError, ResponseStream, Route, Worker};
