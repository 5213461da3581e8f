//! The producer interface: what the enclave calls to turn report data into
//! hardware evidence. TDX (configfs-tsm, /dev/tdx_guest) and SEV-SNP
//! (configfs-tsm, /dev/sev-guest) producers implement it in the guest.

use cocoon_protocol::Platform;

use crate::AttestationError;

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
