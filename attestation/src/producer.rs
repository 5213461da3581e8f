//! The producer interface: what the enclave calls to turn report data into
//! hardware evidence. TDX (configfs-tsm, /dev/tdx_guest) and SEV-SNP
//! (configfs-tsm, /dev/sev-guest) producers implement it in the guest.

use serde_bytes::ByteBuf;

use cocoon_protocol::evidence::{EVIDENCE_VERSION, EvidenceDocument, NonceProof};
use cocoon_protocol::{Platform, merkle};

use crate::{AttestationError, report_data};

/// Hardware evidence for one report data value.
#[derive(Debug, Clone, Default)]
pub struct PlatformEvidence {
    pub quote_or_report: Vec<u8>,
    pub certificates: Option<Vec<Vec<u8>>>,
    pub event_log: Option<Vec<u8>>,
}

pub trait EvidenceProducer: Send + Sync {
    fn platform(&self) -> Platform;
    /// Slow (tens of milliseconds on hardware, serialised host-wide): never
    /// call it on the request path.
    fn produce(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError>;
}

/// The evidence document for `claims` (the exact bytes whose hash the report
/// data carries), fresh for `nonce` when one is given. Slow: see `produce`.
pub fn evidence_document(
    producer: &dyn EvidenceProducer,
    claims: &[u8],
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, AttestationError> {
    let ev = producer.produce(&report_data(claims, nonce))?;
    Ok(document(producer.platform(), claims, nonce, &ev, None))
}

/// Fresh evidence for many verifiers from one hardware report: the report
/// binds the root of a Merkle tree over their nonces, and each verifier's
/// document carries the audit path of its own nonce. Returns one document
/// per nonce, in order. Slow: see `produce`.
pub fn batched_evidence_documents(
    producer: &dyn EvidenceProducer,
    claims: &[u8],
    nonces: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, AttestationError> {
    if let [one] = nonces {
        return Ok(vec![evidence_document(producer, claims, Some(one))?]);
    }
    let leaves: Vec<merkle::Hash> = nonces.iter().map(|n| merkle::leaf_hash(n)).collect();
    let root = merkle::root(&leaves);
    let ev = producer.produce(&report_data(claims, Some(&root)))?;
    let size = leaves.len() as u64;
    Ok(merkle::all_inclusion_proofs(&leaves)
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            let proof =
                NonceProof { index: i as u64, size, path: path.iter().map(|h| ByteBuf::from(h.to_vec())).collect() };
            document(producer.platform(), claims, Some(&root), &ev, Some(proof))
        })
        .collect())
}

fn document(
    platform: Platform,
    claims: &[u8],
    nonce: Option<&[u8]>,
    ev: &PlatformEvidence,
    nonce_proof: Option<NonceProof>,
) -> Vec<u8> {
    EvidenceDocument {
        version: EVIDENCE_VERSION,
        platform,
        claims: ByteBuf::from(claims.to_vec()),
        nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
        quote_or_report: ByteBuf::from(ev.quote_or_report.clone()),
        certificates: ev.certificates.as_ref().map(|c| c.iter().cloned().map(ByteBuf::from).collect()),
        event_log: ev.event_log.clone().map(ByteBuf::from),
        gpu: None,
        nonce_proof,
    }
    .encode()
}
