//! The producer interface: what the enclave calls to turn report data into
//! hardware evidence. TDX (configfs-tsm, /dev/tdx_guest) and SEV-SNP
//! (configfs-tsm, /dev/sev-guest) producers implement it in the guest.

use serde_bytes::ByteBuf;

use cocoon_protocol::Platform;
use cocoon_protocol::evidence::{EVIDENCE_VERSION, EvidenceDocument};

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
    Ok(EvidenceDocument {
        version: EVIDENCE_VERSION,
        platform: producer.platform(),
        claims: ByteBuf::from(claims.to_vec()),
        nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
        quote_or_report: ByteBuf::from(ev.quote_or_report),
        certificates: ev.certificates.map(|c| c.into_iter().map(ByteBuf::from).collect()),
        event_log: ev.event_log.map(ByteBuf::from),
        gpu: None,
    }
    .encode())
}
