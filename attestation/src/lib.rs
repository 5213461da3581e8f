//! Attestation: evidence producers (inside the confidential VM), verifiers
//! (in clients and proxies) and the policy that decides what is acceptable.
//!
//! - `produce`: the evidence document and the producer interface; with the
//!   `hardware` feature (the enclave's, and the proxy's own evidence), the
//!   TDX, SEV-SNP and NVIDIA producers, which link libc, vsock and
//!   libloading. Clients and verifiers build without it.
//! - `verify`: TDX quotes, SEV-SNP reports, NVIDIA GPU reports and RIMs,
//!   revocation, reference values and the policy.
//! - `simulated`: the development producer and its verification.
//!
//! The hardware report data binds the enclave's claims:
//! `report_data = SHA-512(claims [|| nonce])`. A verifier checks the
//! platform's signature first, then that binding, then the policy, and only
//! then hands out the keys inside the claims.

pub mod binding;
pub mod files;
mod hexfmt;
pub mod produce;
pub mod simulated;
pub mod verify;

#[cfg(feature = "hardware")]
pub use produce::{configfs_tsm, detect, nvml, sev_guest, tdx_guest};
pub(crate) use verify::{gpu_cert, x509};
pub use verify::{gpu_reference, nvidia, policy, reference, revocation, rim, roots, snp, spdm, tdx, xml};

pub use binding::{gpu_nonce, parse_nonce_query, report_data};
pub use files::read_limited;
pub use hexfmt::{parse_rfc3339, rfc3339};
pub use policy::Policy;
pub use produce::{
    EvidenceProducer, GpuEvidenceSource, PlatformEvidence, WithGpus, batched_evidence_documents, evidence_document,
};
pub use reference::ReferenceValues;
pub use verify::{Assessment, Endorsements, HardwareReport, RuleOutcome, VerifiedWorker, assess, verify_evidence};

use cocoon_protocol::Platform;

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("evidence document: {0}")]
    Document(#[from] cocoon_protocol::evidence::EvidenceError),
    #[error("{platform} report signature: {reason}")]
    Signature { platform: Platform, reason: String },
    #[error("{platform} evidence did not verify: {reason}")]
    Verification { platform: Platform, reason: String },
    #[error("{platform} collateral: {reason}")]
    Collateral { platform: Platform, reason: String },
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
