//! The producer interface: what the enclave calls to turn report data into
//! hardware evidence. TDX (configfs-tsm, /dev/tdx_guest) and SEV-SNP
//! (configfs-tsm, /dev/sev-guest) producers implement it in the guest.

#[cfg(feature = "hardware")]
pub mod configfs_tsm;
#[cfg(feature = "hardware")]
pub mod detect;
#[cfg(feature = "hardware")]
#[allow(unsafe_code)] // NVML is a C library, loaded at run time
pub mod nvml;
#[cfg(feature = "hardware")]
pub mod sev_guest;
#[cfg(feature = "hardware")]
#[allow(unsafe_code)] // the TDX guest device's ioctl
pub mod tdx_guest;

use serde_bytes::ByteBuf;

use std::sync::Arc;

use cocoon_protocol::GpuEvidence;
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
    /// The VM's GPUs, whose evidence goes into every document; none by default.
    fn gpus(&self) -> Option<&dyn GpuEvidenceSource> {
        None
    }
}

/// Evidence from every GPU of the VM (NVML in the guest), each report
/// requested with `nonce_for(cc_mode)` of the CC mode the source reads.
pub trait GpuEvidenceSource: Send + Sync {
    fn gpu_evidence(&self, nonce_for: &dyn Fn(&str) -> [u8; 32]) -> Result<Vec<GpuEvidence>, AttestationError>;
}

/// A platform producer whose documents also carry the GPUs' evidence.
pub struct WithGpus {
    pub platform: Arc<dyn EvidenceProducer>,
    pub gpus: Arc<dyn GpuEvidenceSource>,
}

impl EvidenceProducer for WithGpus {
    fn platform(&self) -> Platform {
        self.platform.platform()
    }

    fn produce(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError> {
        self.platform.produce(report_data)
    }

    fn gpus(&self) -> Option<&dyn GpuEvidenceSource> {
        Some(self.gpus.as_ref())
    }
}

/// The GPUs' evidence for a document with `claims` and `nonce`: requested
/// with `gpu_nonce` of exactly that document and the CC mode it states,
/// which binds it there.
fn gpu_entries(
    producer: &dyn EvidenceProducer,
    claims: &[u8],
    nonce: Option<&[u8]>,
) -> Result<Option<Vec<GpuEvidence>>, AttestationError> {
    producer.gpus().map(|g| g.gpu_evidence(&|cc_mode| crate::gpu_nonce(claims, nonce, cc_mode))).transpose()
}

/// The evidence document for `claims` (the exact bytes whose hash the report
/// data carries), fresh for `nonce` when one is given. Slow: see `produce`.
pub fn evidence_document(
    producer: &dyn EvidenceProducer,
    claims: &[u8],
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, AttestationError> {
    let ev = producer.produce(&report_data(claims, nonce))?;
    let gpu = gpu_entries(producer, claims, nonce)?;
    Ok(document(producer.platform(), claims, nonce, &ev, gpu, None))
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
    let gpu = gpu_entries(producer, claims, Some(&root))?;
    let size = leaves.len() as u64;
    Ok(merkle::all_inclusion_proofs(&leaves)
        .into_iter()
        .enumerate()
        .map(|(i, path)| {
            let proof =
                NonceProof { index: i as u64, size, path: path.iter().map(|h| ByteBuf::from(h.to_vec())).collect() };
            document(producer.platform(), claims, Some(&root), &ev, gpu.clone(), Some(proof))
        })
        .collect())
}

fn document(
    platform: Platform,
    claims: &[u8],
    nonce: Option<&[u8]>,
    ev: &PlatformEvidence,
    gpu: Option<Vec<GpuEvidence>>,
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
        gpu,
        nonce_proof,
    }
    .encode()
}
