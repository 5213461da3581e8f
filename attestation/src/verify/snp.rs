//! AMD SEV-SNP attestation reports: parsed with the `sev` crate, certificate
//! chain ARK → ASK (or ASVK) → VCEK (or VLEK) checked against the pinned
//! ARKs, the VCEK's TCB and chip id matched to the report, and the report
//! signature checked over the exact bytes received.

use der::{Decode, Encode};
use p384::ecdsa::signature::Verifier;
use serde::Serialize;
use sev::certs::snp::{Certificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;
use x509_cert::der::oid::ObjectIdentifier;

use cocoon_protocol::Platform;

use crate::AttestationError;
use crate::hexfmt;
use crate::roots::AmdGeneration;

/// An SNP attestation report is exactly this long (versions 2 to 5).
pub const REPORT_LEN: usize = 1184;
/// The signature covers bytes 0..0x2A0.
const SIGNED_LEN: usize = 0x2A0;
const SIGNATURE_AT: usize = 0x2A0;
/// Largest certificate accepted.
pub const MAX_CERT: usize = 16 * 1024;
/// Most certificates looked at.
pub const MAX_CERTS: usize = 8;

const OID_BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");

/// A TCB version, component by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    /// Turin and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl From<TcbVersion> for SnpTcb {
    fn from(t: TcbVersion) -> Self {
        SnpTcb { bootloader: t.bootloader, tee: t.tee, snp: t.snp, microcode: t.microcode, fmc: t.fmc }
    }
}

impl SnpTcb {
    /// The components of `self` that are lower than `min`, as "name actual < minimum".
    pub fn shortfalls(&self, min: &SnpTcb) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, have: u8, want: u8| {
            if have < want {
                out.push(format!("{name} {have} < {want}"));
            }
        };
        check("bootloader", self.bootloader, min.bootloader);
        check("tee", self.tee, min.tee);
        check("snp", self.snp, min.snp);
        check("microcode", self.microcode, min.microcode);
        if let Some(want) = min.fmc {
            check("fmc", self.fmc.unwrap_or(0), want);
        }
        out
    }
}

impl std::fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bootloader {} tee {} snp {} microcode {}", self.bootloader, self.tee, self.snp, self.microcode)?;
        if let Some(fmc) = self.fmc {
            write!(f, " fmc {fmc}")?;
        }
        Ok(())
    }
}

/// The guest policy bits a verifier decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SnpGuestPolicy {
    pub raw: u64,
    pub debug_allowed: bool,
    pub migrate_ma_allowed: bool,
    pub smt_allowed: bool,
    pub single_socket_required: bool,
}

/// What a verified SNP report says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnpReport {
    pub version: u32,
    pub generation: AmdGeneration,
    /// `VCEK` or `VLEK`.
    pub signing_key: &'static str,
    pub guest_svn: u32,
    pub policy: SnpGuestPolicy,
    pub vmpl: u32,
    #[serde(with = "hexfmt")]
    pub measurement: [u8; 48],
    #[serde(with = "hexfmt")]
    pub host_data: [u8; 32],
    #[serde(with = "hexfmt")]
    pub report_data: [u8; 64],
    #[serde(with = "hexfmt")]
    pub family_id: [u8; 16],
    #[serde(with = "hexfmt")]
    pub image_id: [u8; 16],
    #[serde(with = "hexfmt")]
    pub id_key_digest: [u8; 48],
    #[serde(with = "hexfmt")]
    pub author_key_digest: [u8; 48],
    #[serde(with = "hexfmt")]
    pub chip_id: [u8; 64],
    /// The TCB the VCEK was derived from: the one the signature vouches for.
    pub reported_tcb: SnpTcb,
    pub current_tcb: SnpTcb,
    pub committed_tcb: SnpTcb,
    pub launch_tcb: SnpTcb,
    /// The host runs newer firmware than the TCB it reports (it has not committed it).
    pub reported_tcb_behind_current: bool,
}

impl SnpReport {
    pub fn debug(&self) -> bool {
        self.policy.debug_allowed
    }
}

fn malformed(reason: String) -> AttestationError {
    AttestationError::Malformed { platform: Platform::SevSnp, reason }
}

fn failed(reason: String) -> AttestationError {
    AttestationError::Verification { platform: Platform::SevSnp, reason }
}

/// Parses a report's fields without verifying anything.
pub fn parse_report(raw: &[u8]) -> Result<AttestationReport, AttestationError> {
    if raw.len() != REPORT_LEN {
        return Err(malformed(format!("report is {} bytes, expected {REPORT_LEN}", raw.len())));
    }
    let version = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
    if !(2..=5).contains(&version) {
        return Err(malformed(format!("report version {version}, expected 2 to 5")));
    }
    std::panic::catch_unwind(|| AttestationReport::from_bytes(raw))
        .map_err(|_| malformed("the report parser panicked".into()))?
        .map_err(|e| malformed(e.to_string()))
}

/// A DER certificate with the name that says what it is.
struct NamedCert {
    cn: String,
    x509: x509_cert::Certificate,
    sev: Certificate,
}

fn named_cert(der_bytes: &[u8]) -> Result<NamedCert, AttestationError> {
    if der_bytes.len() > MAX_CERT {
        return Err(malformed(format!("certificate is {} bytes; the limit is {MAX_CERT}", der_bytes.len())));
    }
    let x509 = x509_cert::Certificate::from_der(der_bytes).map_err(|e| malformed(format!("certificate: {e}")))?;
    let cn = crate::x509::common_name(&x509).unwrap_or_default();
    let sev = Certificate::from_der(der_bytes).map_err(|e| malformed(format!("certificate {cn:?}: {e}")))?;
    Ok(NamedCert { cn, x509, sev })
}

fn check_validity(c: &NamedCert, now: u64) -> Result<(), AttestationError> {
    crate::x509::check_validity(&c.x509, &c.cn, now).map_err(failed)
}

/// Finds the pinned ARK that signs `intermediate` (or, with none, whose
/// published ASK signs the endorsement key) and checks the whole chain.
fn chain_to_pinned_root(vek: &NamedCert, intermediate: Option<&NamedCert>) -> Result<AmdGeneration, AttestationError> {
    let mut reasons = Vec::new();
    for g in AmdGeneration::ALL {
        let ark = Certificate::from_pem(g.ark_pem()).expect("pinned ARK parses");
        let builtin_ask;
        let ask = match intermediate {
            Some(i) => &i.sev,
            None => {
                builtin_ask = Certificate::from_pem(g.ask_pem()).expect("pinned ASK parses");
                &builtin_ask
            }
        };
        if (&ark, ask).verify().is_err() {
            reasons.push(format!("ARK-{g} does not sign it"));
            continue;
        }
        return match (ask, &vek.sev).verify() {
            Ok(()) => Ok(g),
            Err(_) => Err(failed(format!(
                "the {} certificate is not signed by the {g} intermediate ({})",
                vek.cn,
                intermediate.map(|i| i.cn.as_str()).unwrap_or("AMD's published ASK")
            ))),
        };
    }
    Err(failed(match intermediate {
        Some(i) => {
            format!("intermediate certificate {:?} does not chain to a pinned AMD root: {}", i.cn, reasons.join(", "))
        }
        None => format!("the {} certificate is not signed by any pinned AMD ASK (Milan, Genoa, Turin)", vek.cn),
    }))
}

fn ext_value(cert: &x509_cert::Certificate, oid: ObjectIdentifier) -> Option<&[u8]> {
    cert.tbs_certificate().extensions()?.iter().find(|e| e.extn_id == oid).map(|e| e.extn_value.as_bytes())
}

/// The VCEK is derived for one TCB and one chip: both must be the report's.
fn check_vek_matches(vek: &NamedCert, report: &AttestationReport) -> Result<(), AttestationError> {
    let tcb = SnpTcb::from(report.reported_tcb);
    let spl = |name: &str, oid, want: Option<u8>| -> Result<(), AttestationError> {
        let Some(want) = want else { return Ok(()) };
        let Some(raw) = ext_value(&vek.x509, oid) else {
            return Err(failed(format!("{} certificate has no {name} extension", vek.cn)));
        };
        let have = u8::from_der(raw).map_err(|e| malformed(format!("{} {name} extension: {e}", vek.cn)))?;
        if have != want {
            return Err(failed(format!(
                "{} certificate is for {name} {have}, the report's reported TCB has {want}",
                vek.cn
            )));
        }
        Ok(())
    };
    spl("bootloader SPL", OID_BL_SPL, Some(tcb.bootloader))?;
    spl("TEE SPL", OID_TEE_SPL, Some(tcb.tee))?;
    spl("SNP SPL", OID_SNP_SPL, Some(tcb.snp))?;
    spl("microcode SPL", OID_UCODE_SPL, Some(tcb.microcode))?;
    spl("FMC SPL", OID_FMC_SPL, tcb.fmc)?;
    if vek.cn == "SEV-VCEK" && report.chip_id != [0; 64] {
        let Some(raw) = ext_value(&vek.x509, OID_HW_ID) else {
            return Err(failed("VCEK certificate has no hwID extension".into()));
        };
        let hw_id = if raw.len() == 64 {
            raw.to_vec()
        } else {
            der::asn1::OctetString::from_der(raw).map(|o| o.as_bytes().to_vec()).unwrap_or_default()
        };
        if hw_id != report.chip_id {
            return Err(failed(format!(
                "VCEK is for chip {}…, the report is from chip {}…",
                hex::encode(&hw_id[..hw_id.len().min(8)]),
                hex::encode(&report.chip_id[..8])
            )));
        }
    }
    Ok(())
}

/// ECDSA P-384 over the first 0x2A0 bytes as received; r and s are stored
/// little-endian in 72-byte fields whose upper 24 bytes must be zero.
fn check_signature(raw: &[u8], vek: &NamedCert) -> Result<(), AttestationError> {
    let sig = &raw[SIGNATURE_AT..SIGNATURE_AT + 144];
    let scalar = |field: &[u8]| -> Result<[u8; 48], AttestationError> {
        if field[48..].iter().any(|b| *b != 0) {
            return Err(failed("report signature component is wider than 384 bits".into()));
        }
        let mut be: [u8; 48] = field[..48].try_into().expect("48 bytes");
        be.reverse();
        Ok(be)
    };
    let mut rs = [0u8; 96];
    rs[..48].copy_from_slice(&scalar(&sig[..72])?);
    rs[48..].copy_from_slice(&scalar(&sig[72..])?);
    let signature =
        p384::ecdsa::Signature::from_slice(&rs).map_err(|e| failed(format!("report signature is invalid: {e}")))?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(vek.sev.public_key_sec1())
        .map_err(|e| malformed(format!("{} public key is not a P-384 point: {e}", vek.cn)))?;
    key.verify(&raw[..SIGNED_LEN], &signature)
        .map_err(|_| failed(format!("the report signature does not verify with the {} key", vek.cn)))
}

/// Verifies an SNP report at Unix time `now` with the certificates that came
/// with it (DER: VCEK or VLEK, and optionally its ASK/ASVK; an ARK is ignored,
/// the pinned one is used). Policy bits and TCB minimums are the policy's job.
pub fn verify_report(raw: &[u8], certificates: &[Vec<u8>], now: u64) -> Result<SnpReport, AttestationError> {
    let report = parse_report(raw)?;
    if report.sig_algo != 1 {
        return Err(malformed(format!(
            "signature algorithm {}, expected 1 (ECDSA P-384 with SHA-384)",
            report.sig_algo
        )));
    }
    let signing_key = match report.key_info.signing_key() {
        0 => "VCEK",
        1 => "VLEK",
        7 => return Err(failed("the report is not signed (signing key field says none)".into())),
        other => return Err(malformed(format!("signing key field {other}, expected 0 (VCEK) or 1 (VLEK)"))),
    };
    if certificates.len() > MAX_CERTS {
        return Err(malformed(format!("{} certificates; the limit is {MAX_CERTS}", certificates.len())));
    }
    let certs = certificates.iter().map(|c| named_cert(c)).collect::<Result<Vec<_>, _>>()?;
    let vek_cn = format!("SEV-{signing_key}");
    let vek = certs
        .iter()
        .find(|c| c.cn == vek_cn)
        .ok_or_else(|| failed(format!("no {vek_cn} certificate among the {} given", certs.len())))?;
    let intermediate = certs.iter().find(|c| c.cn != vek_cn && !c.cn.starts_with("ARK-"));
    let generation = chain_to_pinned_root(vek, intermediate)?;
    check_validity(vek, now)?;
    if let Some(i) = intermediate {
        check_validity(i, now)?;
    }
    check_vek_matches(vek, &report)?;
    check_signature(raw, vek)?;
    let reported = SnpTcb::from(report.reported_tcb);
    let current = SnpTcb::from(report.current_tcb);
    Ok(SnpReport {
        version: report.version,
        generation,
        signing_key,
        guest_svn: report.guest_svn,
        policy: SnpGuestPolicy {
            raw: report.policy.0,
            debug_allowed: report.policy.debug_allowed(),
            migrate_ma_allowed: report.policy.migrate_ma_allowed(),
            smt_allowed: report.policy.smt_allowed(),
            single_socket_required: report.policy.single_socket_required(),
        },
        vmpl: report.vmpl,
        measurement: report.measurement,
        host_data: report.host_data,
        report_data: report.report_data,
        family_id: report.family_id,
        image_id: report.image_id,
        id_key_digest: report.id_key_digest,
        author_key_digest: report.author_key_digest,
        chip_id: report.chip_id,
        reported_tcb: reported,
        current_tcb: current,
        committed_tcb: report.committed_tcb.into(),
        launch_tcb: report.launch_tcb.into(),
        reported_tcb_behind_current: !reported.shortfalls(&current).is_empty(),
    })
}

/// Reads PEM or DER certificates (a cache file, or `--snp-certs`) into DER.
pub fn certificates_from_pem_or_der(bytes: &[u8]) -> Result<Vec<Vec<u8>>, AttestationError> {
    if bytes.first() != Some(&0x30) {
        let list = x509_cert::Certificate::load_pem_chain(bytes).map_err(|e| malformed(format!("PEM: {e}")))?;
        return list.iter().map(|c| c.to_der().map_err(|e| malformed(format!("DER: {e}")))).collect();
    }
    Ok(vec![bytes.to_vec()])
}
