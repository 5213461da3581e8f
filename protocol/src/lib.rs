//! Wire formats shared by the enclave, the host shim, clients and proxies.
//!
//! Nothing here performs I/O: every type is a value or a sans-I/O state
//! machine, so that each party drives it from its own transport.

pub mod authorization;
pub mod bhttp_msg;
pub mod cbor;
pub mod evidence;
pub mod limits;
pub mod media;
pub mod merkle;
pub mod ohttp;
pub mod price;
pub mod proxy_api;
pub mod receipt;

pub use evidence::{Capacity, Claims, EvidenceDocument, GpuEvidence, ModelClaim, NonceProof, Platform};
pub use price::{Commission, NanoTon, Prices};
pub use receipt::{Receipt, ReceiptSigner, VerifiedReceipt};
