//! SEV-SNP reports through `/dev/sev-guest` (the `sev` crate's extended
//! report, which returns the host-provided VCEK/VLEK chain when there is one),
//! and the bounded parser of the GHCB certificate table that both this device
//! and configfs-tsm's `auxblob` return.

use std::sync::Mutex;

use uuid::Uuid;

use cocoon_protocol::Platform;

use crate::{AttestationError, EvidenceProducer, PlatformEvidence, snp};

/// The device the `sev` crate opens (its path is fixed there).
pub const DEVICE: &str = "/dev/sev-guest";

const VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
const VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
const ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
const ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
const ENTRY: usize = 24;
/// Most entries read from a table.
const MAX_ENTRIES: usize = 16;

/// The certificates of a GHCB certificate table (16-byte GUID, u32 offset,
/// u32 length per entry, ended by an all-zero entry; offsets from the table
/// start), as DER, endorsement key first. Unknown GUIDs and the ARK are
/// skipped: the verifier uses its pinned ARK.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut found: Vec<(u8, Vec<u8>)> = Vec::new();
    for i in 0..=MAX_ENTRIES {
        let at = i * ENTRY;
        let Some(e) = table.get(at..at + ENTRY) else {
            return Err(format!("certificate table ends inside entry {i} (no terminating entry)"));
        };
        let guid = Uuid::from_slice(&e[..16]).expect("16 bytes");
        if guid.is_nil() {
            return Ok({
                found.sort_by_key(|(rank, _)| *rank);
                found.into_iter().map(|(_, der)| der).collect()
            });
        }
        if i == MAX_ENTRIES {
            break;
        }
        let offset = u32::from_le_bytes(e[16..20].try_into().expect("4 bytes")) as usize;
        let len = u32::from_le_bytes(e[20..24].try_into().expect("4 bytes")) as usize;
        let data = offset.checked_add(len).and_then(|end| table.get(offset..end)).ok_or_else(|| {
            format!("entry {guid} points at {offset}+{len}, beyond the table's {} bytes", table.len())
        })?;
        if len > snp::MAX_CERT {
            return Err(format!("entry {guid} is {len} bytes; the limit is {}", snp::MAX_CERT));
        }
        let rank = match guid.to_string().as_str() {
            VCEK | VLEK => 0,
            ASK => 1,
            ARK => continue,
            _ => continue,
        };
        let der = snp::certificates_from_pem_or_der(data).map_err(|e| format!("entry {guid}: {e}"))?;
        found.extend(der.into_iter().map(|d| (rank, d)));
    }
    Err(format!("certificate table has more than {MAX_ENTRIES} entries"))
}

/// Builds a table (for tests and fake devices).
pub fn build_cert_table(vek: &[u8], ask: &[u8]) -> Vec<u8> {
    let header = 3 * ENTRY;
    let mut t = Vec::new();
    for (guid, off, len) in [(VCEK, header, vek.len()), (ASK, header + vek.len(), ask.len())] {
        t.extend_from_slice(Uuid::parse_str(guid).expect("constant GUID").as_bytes());
        t.extend_from_slice(&(off as u32).to_le_bytes());
        t.extend_from_slice(&(len as u32).to_le_bytes());
    }
    t.extend_from_slice(&[0; ENTRY]);
    t.extend_from_slice(vek);
    t.extend_from_slice(ask);
    t
}

/// Reports through `/dev/sev-guest`.
pub struct SevGuestProducer {
    vmpl: u32,
    lock: Mutex<()>,
}

impl SevGuestProducer {
    pub fn open(device: &std::path::Path, vmpl: u32) -> Result<Self, AttestationError> {
        if device != std::path::Path::new(DEVICE) {
            return Err(AttestationError::Producer(format!(
                "the sev crate opens {DEVICE} only; {} cannot be used (use configfs-tsm for a different root)",
                device.display()
            )));
        }
        if !device.exists() {
            return Err(AttestationError::Producer(format!("{DEVICE} does not exist: not an SEV-SNP guest")));
        }
        Ok(SevGuestProducer { vmpl, lock: Mutex::new(()) })
    }
}

impl EvidenceProducer for SevGuestProducer {
    fn platform(&self) -> Platform {
        Platform::SevSnp
    }

    #[cfg(target_os = "linux")]
    fn produce(&self, report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let fail = |what: &str, e: &dyn std::fmt::Display| AttestationError::Producer(format!("{DEVICE}: {what}: {e}"));
        let mut fw = sev::firmware::guest::Firmware::open().map_err(|e| fail("open", &e))?;
        let (report, certs) =
            fw.get_ext_report(None, Some(*report_data), Some(self.vmpl)).map_err(|e| fail("extended report", &e))?;
        let certificates = certs
            .map(|entries| {
                let mut ders = Vec::new();
                for e in entries.iter().filter(|e| e.cert_type != sev::firmware::host::CertType::ARK) {
                    ders.extend(snp::certificates_from_pem_or_der(e.data()).map_err(|err| fail("certificate", &err))?);
                }
                Ok::<_, AttestationError>(ders)
            })
            .transpose()?
            .filter(|c| !c.is_empty());
        Ok(PlatformEvidence { quote_or_report: report, certificates, event_log: None })
    }

    #[cfg(not(target_os = "linux"))]
    fn produce(&self, _report_data: &[u8; 64]) -> Result<PlatformEvidence, AttestationError> {
        Err(AttestationError::Producer(format!("{DEVICE} exists only on Linux")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_table_round_trip_and_bounds() {
        let vek = include_bytes!("../../tests/data/milan-vcek.pem");
        let ask = include_bytes!("../../tests/data/milan-ask.pem");
        let vek_der = snp::certificates_from_pem_or_der(vek).unwrap().remove(0);
        let ask_der = snp::certificates_from_pem_or_der(ask).unwrap().remove(0);
        let t = build_cert_table(&vek_der, &ask_der);
        assert_eq!(parse_cert_table(&t).unwrap(), vec![vek_der.clone(), ask_der.clone()]);
        for cut in [0, 10, 30, 71] {
            assert!(parse_cert_table(&t[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = t.clone();
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_cert_table(&bad).unwrap_err().contains("beyond the table"));
        assert_eq!(parse_cert_table(&[0; 24]).unwrap(), Vec::<Vec<u8>>::new());
    }
}
