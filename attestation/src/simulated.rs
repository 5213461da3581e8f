//! Simulated evidence for development: a report signed by an Ed25519 key the
//! enclave generated in software. It proves nothing about the machine, and
//! every default policy refuses it.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use cocoon_protocol::{Platform, cbor};

use crate::{AttestationError, EvidenceProducer, PlatformEvidence};

const DOMAIN: &[u8] = b"cocoon simulated report v1";
const MAX_REPORT: usize = 512;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulatedReport {
    report_data: ByteBuf,
    public_key: ByteBuf,
    signature: ByteBuf,
}

pub struct SimulatedProducer {
    key: SigningKey,
    /// Stands in for a real quote's latency (benchmarks of evidence batching).
    delay: std::time::Duration,
}

impl Default for SimulatedProducer {
    fn default() -> Self {
        Self::new()
    }
}

impl SimulatedProducer {
    pub fn new() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        SimulatedProducer { key: SigningKey::from_bytes(&seed), delay: std::time::Duration::ZERO }
    }

    /// A producer that takes `delay` per report, as hardware does (tens of ms for a TDX quote).
    pub fn with_delay(delay: std::time::Duration) -> Self {
        SimulatedProducer { delay, ..Self::new() }
    }
}

fn signed_message(report_data: &[u8]) -> Vec<u8> {
    [DOMAIN, report_data].concat()
}

impl EvidenceProducer for SimulatedProducer {
    fn platform(&self) -> Platform {
        Platform::Simulated
    }

    fn produce(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let signature = self.key.sign(&signed_message(report_data));
        let report = SimulatedReport {
            report_data: ByteBuf::from(report_data.to_vec()),
            public_key: ByteBuf::from(self.key.verifying_key().to_bytes().to_vec()),
            signature: ByteBuf::from(signature.to_bytes().to_vec()),
        };
        Ok(PlatformEvidence { quote_or_report: cbor::to_canonical_vec(&report), ..Default::default() })
    }
}

/// Checks the simulated report's self-signature and returns its report data.
/// A valid signature only shows the report was not altered in transit.
pub fn verify(report: &[u8]) -> Result<[u8; 64], AttestationError> {
    let malformed = |reason: String| AttestationError::Malformed { platform: Platform::Simulated, reason };
    let r: SimulatedReport =
        cbor::from_slice(report, MAX_REPORT, "simulated report").map_err(|e| malformed(e.to_string()))?;
    let report_data: [u8; 64] = r
        .report_data
        .as_slice()
        .try_into()
        .map_err(|_| malformed(format!("report data is {} bytes, expected 64", r.report_data.len())))?;
    let key: [u8; 32] = r
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| malformed(format!("public key is {} bytes, expected 32", r.public_key.len())))?;
    let sig_err = |reason: &str| AttestationError::Signature { platform: Platform::Simulated, reason: reason.into() };
    let key = VerifyingKey::from_bytes(&key).map_err(|_| sig_err("invalid public key"))?;
    let sig = Signature::from_slice(&r.signature).map_err(|_| sig_err("signature is not 64 bytes"))?;
    key.verify(&signed_message(&report_data), &sig).map_err(|_| sig_err("signature does not verify"))?;
    Ok(report_data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_verify_and_tamper() {
        let p = SimulatedProducer::new();
        let ev = p.produce(&[7; 64]).unwrap();
        assert_eq!(verify(&ev.quote_or_report).unwrap(), [7; 64]);
        let mut bad = ev.quote_or_report.clone();
        let i = bad.len() / 3; // inside report data
        bad[i] ^= 1;
        assert!(verify(&bad).is_err());
        assert!(verify(&[0xff; 3]).is_err());
    }
}
