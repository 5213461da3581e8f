//! Attestation: evidence producers (inside the confidential VM), verifiers
//! (in clients and proxies) and the policy that decides what is acceptable.
//!
//! The hardware report data binds the enclave's claims:
//! `report_data = SHA-512(claims [|| nonce])`. A verifier checks the
//! platform's signature first, then that binding, then the policy, and only
//! then hands out the keys inside the claims.

pub mod binding;
pub mod policy;
pub mod producer;
pub mod simulated;
pub mod verify;

pub use binding::report_data;
pub use policy::Policy;
pub use producer::{EvidenceProducer, PlatformEvidence};
pub use verify::{RuleOutcome, VerifiedWorker, verify_evidence};

use cocoon_protocol::Platform;

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("evidence document: {0}")]
    Document(#[from] cocoon_protocol::evidence::EvidenceError),
    #[error("{platform} report signature: {reason}")]
    Signature { platform: Platform, reason: String },
    #[error("{platform} report malformed: {reason}")]
    Malformed { platform: Platform, reason: String },
    #[error("report data does not bind the claims: expected {expected}, report has {found}")]
    ReportDataMismatch { expected: String, found: String },
    #[error("nonce: expected {expected}, evidence has {found}")]
    NonceMismatch { expected: String, found: String },
    #[error("policy refused the evidence: {rule}: {detail}")]
    Policy { rule: &'static str, detail: String },
    #[error("{platform} evidence cannot be verified by this build: {reason}")]
    Unsupported { platform: Platform, reason: String },
    #[error("evidence producer failed: {0}")]
    Producer(String),
    #[error("policy file {path}: {reason}")]
    PolicyFile { path: String, reason: String },
}
