//! Claims and the evidence document (DESIGN.md, "Evidence").
//!
//! The claims are what the enclave asserts about itself (its OHTTP keys, its
//! receipt key, its model and config); the hardware report binds them through
//! its report data. The claims travel as the exact bytes that were hashed, so
//! a verifier hashes what it received rather than a re-encoding.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::cbor::{self, CborError};
use crate::limits;
use crate::price::Prices;

pub const EVIDENCE_VERSION: u32 = 1;
pub const CLAIMS_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Platform {
    #[serde(rename = "tdx")]
    Tdx,
    #[serde(rename = "sev-snp")]
    SevSnp,
    /// Development only: signed by a key generated in software. Proves nothing.
    #[serde(rename = "simulated")]
    Simulated,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Tdx => "tdx",
            Platform::SevSnp => "sev-snp",
            Platform::Simulated => "simulated",
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tdx" => Ok(Platform::Tdx),
            "sev-snp" | "snp" => Ok(Platform::SevSnp),
            "simulated" => Ok(Platform::Simulated),
            other => Err(format!("unknown platform {other:?}; expected tdx, sev-snp or simulated")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelClaim {
    pub id: String,
    /// SHA-256 over the model files in their defined order.
    pub digest: ByteBuf,
}

/// What the enclave asserts, encoded as deterministic CBOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub version: u32,
    pub platform: Platform,
    /// The `application/ohttp-keys` document clients seal requests to.
    pub ohttp_keys: ByteBuf,
    /// Ed25519 public key that signs usage receipts.
    pub receipt_key: ByteBuf,
    pub model: Option<ModelClaim>,
    /// SHA-256 of the static config the enclave was launched with.
    pub config_digest: ByteBuf,
    pub image_version: String,
    /// Unix time (seconds) at which these keys were generated.
    pub issued_at: u64,
    /// The worker's prices, from its static config (absent: the worker does not charge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prices: Option<Prices>,
    /// Where the worker is paid (a TON address, from its static config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_address: Option<String>,
    /// How much work the worker takes at once, from its static config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// Sequences decoded together and requests that may wait: the load a router may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub max_batch: u32,
    pub max_queue: u32,
}

impl Capacity {
    /// Requests the worker serves or queues at once.
    pub fn requests(&self) -> u32 {
        self.max_batch.saturating_add(self.max_queue).max(1)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error(transparent)]
    Cbor(#[from] CborError),
    #[error("unsupported {what} version {found}; this build understands version {expected}")]
    Version { what: &'static str, expected: u32, found: u32 },
    #[error("claims field {field}: {reason}")]
    BadClaim { field: &'static str, reason: String },
    #[error("evidence says platform {outer} but its claims say {inner}")]
    PlatformMismatch { outer: Platform, inner: Platform },
}

impl Claims {
    pub fn encode(&self) -> Vec<u8> {
        cbor::to_canonical_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let c: Claims = cbor::from_canonical_slice(bytes, limits::MAX_CLAIMS, "claims")?;
        if c.version != CLAIMS_VERSION {
            return Err(EvidenceError::Version { what: "claims", expected: CLAIMS_VERSION, found: c.version });
        }
        check_len("receipt_key", &c.receipt_key, 32)?;
        check_len("config_digest", &c.config_digest, 32)?;
        if let Some(m) = &c.model {
            check_len("model.digest", &m.digest, 32)?;
            check_text("model.id", &m.id)?;
        }
        check_text("image_version", &c.image_version)?;
        if let Some(a) = &c.payout_address {
            check_text("payout_address", a)?;
        }
        Ok(c)
    }

    pub fn receipt_key_bytes(&self) -> [u8; 32] {
        self.receipt_key.as_slice().try_into().expect("length checked at decode")
    }
}

fn check_len(field: &'static str, v: &[u8], want: usize) -> Result<(), EvidenceError> {
    if v.len() != want {
        return Err(EvidenceError::BadClaim { field, reason: format!("expected {want} bytes, found {}", v.len()) });
    }
    Ok(())
}

fn check_text(field: &'static str, v: &str) -> Result<(), EvidenceError> {
    if v.len() > limits::MAX_CLAIM_TEXT {
        return Err(EvidenceError::BadClaim {
            field,
            reason: format!("{} bytes exceeds the limit of {}", v.len(), limits::MAX_CLAIM_TEXT),
        });
    }
    Ok(())
}

/// The evidence document a verifier fetches (`GET /v1/attestation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceDocument {
    pub version: u32,
    pub platform: Platform,
    /// The exact claims bytes whose hash is in the report data.
    pub claims: ByteBuf,
    /// The verifier nonce mixed into the report data, if this evidence is fresh.
    pub nonce: Option<ByteBuf>,
    /// TDX quote, SNP report, or simulated report.
    pub quote_or_report: ByteBuf,
    /// DER certificates that the platform's verifier needs (VCEK/ASK, PCK chain...).
    pub certificates: Option<Vec<ByteBuf>>,
    pub event_log: Option<ByteBuf>,
    /// NVIDIA GPU confidential-computing evidence, one entry per GPU.
    pub gpu: Option<Vec<GpuEvidence>>,
    /// Batched fresh evidence: `nonce` is then the root of a Merkle tree over
    /// the nonces of verifiers who asked at about the same time, and this is
    /// the audit path from the verifier's own nonce to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce_proof: Option<NonceProof>,
}

/// Where a verifier's nonce sits in a batch (RFC 9162 inclusion proof, SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceProof {
    /// The leaf's position.
    pub index: u64,
    /// Leaves in the tree.
    pub size: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<ByteBuf>,
}

impl NonceProof {
    /// The root this proof leads to from `nonce`; `None` when it does not fit.
    pub fn root_for(&self, nonce: &[u8]) -> Option<crate::merkle::Hash> {
        let path: Vec<crate::merkle::Hash> =
            self.path.iter().map(|h| h.as_slice().try_into().ok()).collect::<Option<_>>()?;
        crate::merkle::root_from_inclusion(&crate::merkle::leaf_hash(nonce), self.index, self.size, &path)
    }
}

/// One GPU's confidential-computing evidence, as the NVIDIA driver gives it
/// inside the VM. The GPU's attestation report is requested with
/// `gpu_nonce(claims, nonce, cc_mode)` so that it binds the same claims as the
/// CPU report, and the CC mode stated here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuEvidence {
    /// `nvidia`.
    pub vendor: String,
    /// Architecture as the driver names it (`HOPPER`, `BLACKWELL`).
    pub architecture: String,
    /// `on`, `off` or `devtools` (CC mode with debugging tools: not confidential).
    pub cc_mode: String,
    pub driver_version: String,
    pub vbios_version: String,
    /// The 32-byte nonce the report was requested with.
    pub nonce: ByteBuf,
    /// The GPU's signed SPDM measurement report.
    pub attestation_report: ByteBuf,
    /// The GPU's device certificate chain (DER), leaf first.
    pub certificate_chain: Vec<ByteBuf>,
}

impl EvidenceDocument {
    pub fn encode(&self) -> Vec<u8> {
        cbor::to_canonical_vec(self)
    }

    /// Decodes the document and its claims; checks versions and the platform agreement.
    /// Verifying the hardware report is the attestation crate's job.
    pub fn decode(bytes: &[u8]) -> Result<(Self, Claims), EvidenceError> {
        let doc: EvidenceDocument = cbor::from_canonical_slice(bytes, limits::MAX_EVIDENCE, "evidence document")?;
        if doc.version != EVIDENCE_VERSION {
            return Err(EvidenceError::Version { what: "evidence", expected: EVIDENCE_VERSION, found: doc.version });
        }
        if let Some(n) = &doc.nonce
            && n.len() > limits::MAX_NONCE
        {
            return Err(EvidenceError::BadClaim {
                field: "nonce",
                reason: format!("{} bytes exceeds the limit of {}", n.len(), limits::MAX_NONCE),
            });
        }
        if let Some(c) = &doc.certificates
            && c.len() > limits::MAX_EVIDENCE_CERTS
        {
            return Err(EvidenceError::BadClaim {
                field: "certificates",
                reason: format!("{} entries exceeds the limit of {}", c.len(), limits::MAX_EVIDENCE_CERTS),
            });
        }
        if let Some(g) = &doc.gpu
            && g.len() > limits::MAX_GPUS
        {
            return Err(EvidenceError::BadClaim {
                field: "gpu",
                reason: format!("{} entries exceeds the limit of {}", g.len(), limits::MAX_GPUS),
            });
        }
        if let Some(p) = &doc.nonce_proof
            && (p.path.len() > crate::merkle::MAX_PATH || p.index >= p.size)
        {
            return Err(EvidenceError::BadClaim {
                field: "nonce_proof",
                reason: format!(
                    "leaf {} of {} with a path of {} hashes (at most {})",
                    p.index,
                    p.size,
                    p.path.len(),
                    crate::merkle::MAX_PATH
                ),
            });
        }
        let claims = Claims::decode(&doc.claims)?;
        if claims.platform != doc.platform {
            return Err(EvidenceError::PlatformMismatch { outer: doc.platform, inner: claims.platform });
        }
        Ok((doc, claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_claims() -> Claims {
        Claims {
            version: CLAIMS_VERSION,
            platform: Platform::Simulated,
            ohttp_keys: ByteBuf::from(vec![1, 2, 3]),
            receipt_key: ByteBuf::from(vec![7; 32]),
            model: Some(ModelClaim { id: "m".into(), digest: ByteBuf::from(vec![9; 32]) }),
            config_digest: ByteBuf::from(vec![5; 32]),
            image_version: "0.1.0".into(),
            issued_at: 1_700_000_000,
            prices: None,
            payout_address: None,
            capacity: None,
        }
    }

    #[test]
    fn claims_are_deterministic_and_round_trip() {
        let c = sample_claims();
        let a = c.encode();
        assert_eq!(a, c.clone().encode());
        assert_eq!(Claims::decode(&a).unwrap(), c);
    }

    #[test]
    fn claims_field_lengths_are_checked() {
        let mut c = sample_claims();
        c.receipt_key = ByteBuf::from(vec![1; 31]);
        let err = Claims::decode(&c.encode()).unwrap_err();
        assert_eq!(err.to_string(), "claims field receipt_key: expected 32 bytes, found 31");
    }

    #[test]
    fn evidence_platform_must_match_claims() {
        let claims = sample_claims();
        let doc = EvidenceDocument {
            version: EVIDENCE_VERSION,
            platform: Platform::Tdx,
            claims: ByteBuf::from(claims.encode()),
            nonce: None,
            quote_or_report: ByteBuf::from(vec![]),
            certificates: None,
            event_log: None,
            gpu: None,
            nonce_proof: None,
        };
        assert!(matches!(EvidenceDocument::decode(&doc.encode()), Err(EvidenceError::PlatformMismatch { .. })));
    }
}
