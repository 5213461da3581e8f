//! Verifying an NVIDIA GPU's confidential-computing attestation report:
//! the SPDM measurements (see `spdm`) signed by the GPU's attestation key,
//! whose certificate chain must end at the pinned NVIDIA Device Identity CA.
//!
//! Checked, in order: the report parses; its request nonce is the one the
//! verifier expects (derived from the CPU evidence, see `binding::gpu_nonce`);
//! the chain (leaf first) has 2 to 8 certificates, each signed with
//! ECDSA P-384/SHA-384 by the next, each valid at the verification time, the
//! last one byte-identical to the pinned root; the report's signature
//! verifies under the leaf's key; the report's FWID appears in the leaf's
//! DICE TcbInfo extension (the firmware the key was issued to).

use der::Encode;
use p384::ecdsa::signature::Verifier;
use sha2::{Digest, Sha256};
use x509_cert::der::oid::ObjectIdentifier;

pub use crate::gpu_cert::GpuError;
use crate::gpu_cert::{Cert, check_signed_by, parse_cert, public_key};
use crate::spdm::GpuReport;

/// NVIDIA Device Identity CA (DER), the root of every GPU attestation key chain.
pub const NVIDIA_DEVICE_ROOT_CA: &[u8] = include_bytes!("../../roots/nvidia-device-identity-ca.der");
/// SHA-256 of [`NVIDIA_DEVICE_ROOT_CA`], recorded separately so a changed file is caught.
pub const NVIDIA_DEVICE_ROOT_CA_SHA256: &str = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";

/// TCG DICE TcbInfo (Hopper), and the form the Blackwell leaf uses.
const TCB_INFO: [ObjectIdentifier; 2] =
    [ObjectIdentifier::new_unwrap("2.23.133.5.4.1"), ObjectIdentifier::new_unwrap("2.23.133.5.4.1.1")];
const MAX_CHAIN: usize = 8;

/// The GPU generation, from the attestation key's certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum GpuArchitecture {
    Hopper,
    Blackwell,
    Other(String),
}

impl std::fmt::Display for GpuArchitecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuArchitecture::Hopper => f.write_str("HOPPER"),
            GpuArchitecture::Blackwell => f.write_str("BLACKWELL"),
            GpuArchitecture::Other(s) => write!(f, "unknown ({s})"),
        }
    }
}

/// What a verified report establishes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifiedGpu {
    pub architecture: GpuArchitecture,
    /// Common name of the attestation key's certificate (`GH100 A01 GSP FMC LF`).
    pub attestation_key: String,
    /// Serial number of that certificate, hex.
    pub leaf_serial: String,
    pub driver_version: Option<String>,
    pub vbios_version: Option<String>,
    pub board_id: Option<String>,
    pub project: Option<String>,
    pub project_sku: Option<String>,
    pub chip_sku: Option<String>,
    pub fwid: Option<String>,
    /// The chip class: the report's CHIP_INFO (`GB202`) where it has one,
    /// checked against the attestation key's family (`GB20X`); else that
    /// family (`GH100`, `GB100`).
    pub chip: String,
    /// NVDEC0 status byte (`0xAA` enabled, `0x55` disabled); NVIDIA's RIMs
    /// measure NVDEC0 (index 35) only when it is enabled.
    pub nvdec0_status: Option<u8>,
    /// (1-based block index, value) for every measurement block.
    pub measurements: Vec<(u8, String)>,
}

/// Verifies one GPU's report and certificate chain (DER, leaf first) for
/// `expected_nonce` at `now` (Unix seconds).
pub fn verify_gpu_report(
    report: &[u8],
    chain: &[Vec<u8>],
    expected_nonce: &[u8; 32],
    now: u64,
) -> Result<VerifiedGpu, GpuError> {
    verify_gpu_report_under(report, chain, expected_nonce, now, NVIDIA_DEVICE_ROOT_CA)
}

/// [`verify_gpu_report`] to another root: the tests' own chain, whose
/// reports they sign themselves.
pub(crate) fn verify_gpu_report_under(
    report: &[u8],
    chain: &[Vec<u8>],
    expected_nonce: &[u8; 32],
    now: u64,
    root: &[u8],
) -> Result<VerifiedGpu, GpuError> {
    let parsed = GpuReport::parse(report)?;
    if &parsed.nonce != expected_nonce {
        return Err(GpuError::Nonce { expected: hex::encode(expected_nonce), found: hex::encode(parsed.nonce) });
    }
    if !(2..=MAX_CHAIN).contains(&chain.len()) {
        return Err(GpuError::Chain(format!("expected 2 to {MAX_CHAIN} certificates, found {}", chain.len())));
    }
    let root_name = if root == NVIDIA_DEVICE_ROOT_CA { "NVIDIA Device Identity CA" } else { "test root" };
    verify_chain(chain, root, root_name, now)?;
    let leaf = &parse_cert(&chain[0], 0)?;
    let signature =
        p384::ecdsa::Signature::from_slice(&parsed.signature).map_err(|_| GpuError::Signature(leaf.cn.clone()))?;
    public_key(leaf)?
        .verify(&report[parsed.signed.clone()], &signature)
        .map_err(|_| GpuError::Signature(leaf.cn.clone()))?;
    if let Some(fwid) = &parsed.opaque.fwid {
        check_fwid(leaf, fwid)?;
    }
    let family = leaf.cn.split_whitespace().next().unwrap_or("");
    let chip = chip_class(family, parsed.opaque.chip_info.as_deref())?;
    Ok(facts(&parsed, leaf, chip))
}

/// The chip: the report's CHIP_INFO when it has one (Blackwell firmware with
/// opaque data version 1 and later: `GB202`), which must be of the family the
/// attestation key's certificate names, where each `X` stands for one
/// character (`GB20X` covers `GB202` and `GB203`, `GB100` only itself);
/// without it, the certificate's family (`GH100`, which NVIDIA's verifier
/// also assumes for Hopper).
fn chip_class(family: &str, chip_info: Option<&str>) -> Result<String, GpuError> {
    let Some(chip) = chip_info else { return Ok(family.to_string()) };
    let fits = chip.len() == family.len()
        && chip.bytes().zip(family.bytes()).all(|(c, f)| f == b'X' || c.eq_ignore_ascii_case(&f));
    if !fits {
        return Err(GpuError::Chip(format!(
            "the report's CHIP_INFO {chip:?} is not of the family {family:?} its attestation key was issued to"
        )));
    }
    Ok(chip.to_string())
}

/// The revocation status of a GPU's chain from cached collateral: every
/// certificate but the root, and but the leaf, which the GPU's firmware
/// makes for itself at boot (NVIDIA revokes devices by their BROM certificate).
pub fn chain_revocation(
    chain: &[Vec<u8>],
    collateral: &crate::revocation::RevocationCollateral,
    now: u64,
) -> Result<Vec<crate::revocation::CertRevocation>, GpuError> {
    let certs: Vec<Cert> = chain.iter().enumerate().map(|(i, c)| parse_cert(c, i)).collect::<Result<_, _>>()?;
    Ok(crate::revocation::check_chain(&certs, 1, collateral, now))
}

/// What a verified chain tells about its leaf.
pub(crate) struct VerifiedChain {
    /// The leaf's common name.
    pub leaf: String,
    /// The leaf's validity window (Unix seconds).
    pub leaf_valid: (u64, u64),
}

/// Checks a chain (DER, leaf first): each certificate signed with ECDSA
/// P-384/SHA-384 by the next, each valid at `now`, the last byte-identical
/// to the pinned `root` and self-signed.
pub(crate) fn verify_chain(
    chain: &[Vec<u8>],
    root: &[u8],
    root_name: &str,
    now: u64,
) -> Result<VerifiedChain, GpuError> {
    let last = chain.last().ok_or_else(|| GpuError::Chain("no certificate".into()))?;
    if last.as_slice() != root {
        return Err(GpuError::Chain(format!(
            "the last certificate (SHA-256 {}) is not the pinned {root_name} ({})",
            hex::encode(Sha256::digest(last)),
            hex::encode(Sha256::digest(root))
        )));
    }
    let certs: Vec<Cert> = chain.iter().enumerate().map(|(i, c)| parse_cert(c, i)).collect::<Result<_, _>>()?;
    for pair in certs.windows(2) {
        check_signed_by(&pair[0], &pair[1])?;
    }
    check_signed_by(&certs[certs.len() - 1], &certs[certs.len() - 1])?;
    for c in &certs {
        crate::x509::check_validity(&c.x509, &c.cn, now).map_err(GpuError::Chain)?;
    }
    let v = certs[0].x509.tbs_certificate().validity();
    Ok(VerifiedChain {
        leaf: certs[0].cn.clone(),
        leaf_valid: (v.not_before.to_unix_duration().as_secs(), v.not_after.to_unix_duration().as_secs()),
    })
}

/// The report's FWID must be one of the leaf's DICE TcbInfo FWIDs.
fn check_fwid(leaf: &Cert, fwid: &[u8]) -> Result<(), GpuError> {
    let ext = leaf
        .x509
        .tbs_certificate()
        .extensions()
        .and_then(|exts| exts.iter().find(|e| TCB_INFO.contains(&e.extn_id)))
        .ok_or_else(|| {
            GpuError::Fwid(format!("the report has a FWID but {} has no DICE TcbInfo extension", leaf.cn))
        })?;
    let value = ext.extn_value.as_bytes();
    // The FWID digest is an OCTET STRING of its length inside the extension.
    let mut needle = vec![0x04, fwid.len() as u8];
    needle.extend_from_slice(fwid);
    if fwid.len() >= 0x80 || !value.windows(needle.len()).any(|w| w == needle.as_slice()) {
        return Err(GpuError::Fwid(format!(
            "the report's FWID {} is not among the FWIDs {} was issued to",
            hex::encode(fwid),
            leaf.cn
        )));
    }
    Ok(())
}

fn facts(r: &GpuReport, leaf: &Cert, chip: String) -> VerifiedGpu {
    let architecture = match leaf.cn.split_whitespace().next().unwrap_or("") {
        s if s.starts_with("GH1") => GpuArchitecture::Hopper,
        s if s.starts_with("GB1") || s.starts_with("GB2") => GpuArchitecture::Blackwell,
        s => GpuArchitecture::Other(s.to_string()),
    };
    let o = &r.opaque;
    VerifiedGpu {
        architecture,
        attestation_key: leaf.cn.clone(),
        leaf_serial: hex::encode(leaf.x509.tbs_certificate().serial_number().as_bytes()),
        driver_version: o.driver_version.clone(),
        vbios_version: o.vbios_version.clone(),
        board_id: o.board_id.as_ref().map(hex::encode),
        project: o.project.clone(),
        project_sku: o.project_sku.clone(),
        chip_sku: o.chip_sku.clone(),
        fwid: o.fwid.as_ref().map(hex::encode),
        chip,
        nvdec0_status: o.nvdec0_status,
        measurements: r.blocks.iter().map(|b| (b.index, hex::encode(&b.value))).collect(),
    }
}

/// Certificates from concatenated PEM text (NVIDIA's chain files), leaf first.
pub fn chain_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, GpuError> {
    let certs = x509_cert::Certificate::load_pem_chain(pem).map_err(|e| GpuError::Chain(format!("PEM: {e}")))?;
    certs.iter().map(|c| c.to_der().map_err(|e| GpuError::Chain(e.to_string()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(chain_file: &str) -> Cert {
        let pem = std::fs::read(format!("{}/tests/data/gpu/{chain_file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        parse_cert(&chain_from_pem(&pem).unwrap()[0], 0).unwrap()
    }

    #[test]
    fn the_fwid_must_be_one_the_leaf_was_issued_to() {
        let hopper = leaf("nvtrust-hopper/hopperCertChain.txt");
        let report = std::fs::read_to_string(format!(
            "{}/tests/data/gpu/nvtrust-hopper/hopperAttestationReport.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let fwid = GpuReport::parse(&hex::decode(report.trim()).unwrap()).unwrap().opaque.fwid.unwrap();
        assert_eq!(check_fwid(&hopper, &fwid), Ok(()));
        let mut other = fwid.clone();
        other[0] ^= 1;
        let e = check_fwid(&hopper, &other).unwrap_err();
        assert!(e.to_string().contains("is not among the FWIDs GH100 A01 GSP FMC LF was issued to"), "{e}");
        // Another Hopper's leaf carries its own FWID, not this one.
        let e = check_fwid(&leaf("sdk-hopper-expired/hopperCertChainExpired.txt"), &fwid).unwrap_err();
        assert!(matches!(e, GpuError::Fwid(_)), "{e}");
    }

    /// Blackwell workstation cards name their family in the certificate
    /// (`GB20X A01 GSP FMC LF`) and their chip in the report's CHIP_INFO
    /// (`GB202`): the chip class is the report's, checked against the family.
    #[test]
    fn the_chip_comes_from_chip_info_checked_against_the_certificate() {
        use crate::verify::test_gpu::{AT, chain, report, root};
        let nonce = [7u8; 32];
        let verify = |opaque: &[(u16, &[u8])]| {
            verify_gpu_report_under(&report(&nonce, opaque, &[]), &chain(), &nonce, AT, &root())
        };
        let gpu = verify(&[(35, b"GB202\0\0\0")]).unwrap();
        assert_eq!((gpu.chip.as_str(), &gpu.architecture), ("GB202", &GpuArchitecture::Blackwell));
        // Without CHIP_INFO (Hopper, early Blackwell firmware), the certificate's family.
        assert_eq!(verify(&[]).unwrap().chip, "GB20X");
        // A chip outside the certificate's family, or two chips, is refused.
        for bad in
            [&[(35u16, &b"GH100"[..])][..], &[(35, b"GB102")], &[(35, b"GB2020")], &[(35, b"GB202"), (35, b"GB203")]]
        {
            let e = verify(bad).unwrap_err();
            assert!(matches!(e, GpuError::Chip(_) | GpuError::Report(_)), "{bad:?}: {e}");
        }
    }

    /// NVIDIA's format ends with the signature, and NVIDIA's own verifier
    /// refuses bytes after it: so does this one, zero padding included.
    #[test]
    fn bytes_after_the_signature_are_refused_even_zeros() {
        use crate::verify::test_gpu::{AT, chain, report, root};
        let nonce = [7u8; 32];
        assert!(verify_gpu_report_under(&report(&nonce, &[], &[]), &chain(), &nonce, AT, &root()).is_ok());
        for padding in [&[0u8][..], &[0, 0, 0, 0], &[0xff]] {
            let e = verify_gpu_report_under(&report(&nonce, &[], padding), &chain(), &nonce, AT, &root()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&format!("{} bytes after its signature", padding.len())), "{text}");
            assert!(text.contains("NVIDIA's format ends with the signature"), "{text}");
        }
    }

    #[test]
    fn pinned_root_has_the_recorded_fingerprint() {
        assert_eq!(hex::encode(Sha256::digest(NVIDIA_DEVICE_ROOT_CA)), NVIDIA_DEVICE_ROOT_CA_SHA256);
    }
}
