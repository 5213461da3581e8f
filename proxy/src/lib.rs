//! The proxy (`cocoon-proxy`): admits workers whose evidence passes its
//! policy, routes sealed requests among them by model, load and reputation,
//! fails over before a response starts, and meters every answer from the
//! worker's signed receipt into a SQLite ledger.
//!
//! It holds no client content (requests stay sealed end to end to the
//! worker's enclave) and links no Burn.

pub mod app;
pub mod cli;
pub mod config;
pub mod forward;
pub mod identity;
pub mod ledger;
pub mod metrics;
pub mod payments;
pub mod rate;
pub mod registry;
pub mod replay;
pub mod reputation;
pub mod reservation;
pub mod response;
pub mod server;
