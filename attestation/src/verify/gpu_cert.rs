//! The certificates of NVIDIA's GPU attestation chains, RIM signers and
//! revocation responders: parsing (bounded), the signed part as received,
//! and ECDSA P-384/SHA-384 signatures. Shared by the report verifier
//! (`nvidia`), the RIM verifier (`rim`) and revocation (`revocation`).

use der::Decode;
use p384::ecdsa::signature::Verifier;

use crate::spdm::SpdmError;

const ECDSA_WITH_SHA384: &str = "1.2.840.10045.4.3.3";
/// Largest certificate accepted.
const MAX_CERT: usize = 8 << 10;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GpuError {
    #[error(transparent)]
    Report(#[from] SpdmError),
    #[error("GPU report nonce: expected {expected}, found {found}")]
    Nonce { expected: String, found: String },
    #[error("GPU certificate chain: {0}")]
    Chain(String),
    #[error("GPU report signature does not verify under the attestation key of {0}")]
    Signature(String),
    #[error("GPU firmware: {0}")]
    Fwid(String),
    #[error("GPU chip: {0}")]
    Chip(String),
}

pub(crate) struct Cert {
    pub(crate) cn: String,
    /// The signed part as it was received: re-encoding it would not do, as
    /// some of NVIDIA's RIM-signing certificates are not in canonical DER.
    pub(crate) tbs: Vec<u8>,
    pub(crate) x509: x509_cert::Certificate,
}

pub(crate) fn parse_cert(der_bytes: &[u8], position: usize) -> Result<Cert, GpuError> {
    if der_bytes.len() > MAX_CERT {
        return Err(GpuError::Chain(format!(
            "certificate {position} is {} bytes; the limit is {MAX_CERT}",
            der_bytes.len()
        )));
    }
    let x509 = x509_cert::Certificate::from_der(der_bytes)
        .map_err(|e| GpuError::Chain(format!("certificate {position} is not DER X.509: {e}")))?;
    let cn = crate::x509::common_name(&x509).unwrap_or_else(|| format!("#{position}"));
    let tbs = signed_part(der_bytes)
        .ok_or_else(|| GpuError::Chain(format!("{cn}: no to-be-signed part in the certificate")))?
        .to_vec();
    Ok(Cert { cn, tbs, x509 })
}

pub(crate) fn public_key(c: &Cert) -> Result<p384::ecdsa::VerifyingKey, GpuError> {
    let spki = c.x509.tbs_certificate().subject_public_key_info();
    p384::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
        .map_err(|e| GpuError::Chain(format!("{}: the public key is not a P-384 point: {e}", c.cn)))
}

/// Checks that `issuer` signed `subject`.
pub(crate) fn check_signed_by(subject: &Cert, issuer: &Cert) -> Result<(), GpuError> {
    let signature = subject.x509.signature().as_bytes().unwrap_or_default();
    let algorithm = subject.x509.signature_algorithm().oid.to_string();
    verify_signed_by(issuer, &algorithm, &subject.tbs, signature, &subject.cn).map_err(GpuError::Chain)
}

/// Checks that `issuer` made `signature` (DER ECDSA, algorithm OID
/// `algorithm`, which must be ecdsa-with-SHA384) over `signed`; `what`
/// names the signed object in the messages. Certificates, CRLs and OCSP
/// responses all go through here.
pub(crate) fn verify_signed_by(
    issuer: &Cert,
    algorithm: &str,
    signed: &[u8],
    signature: &[u8],
    what: &str,
) -> Result<(), String> {
    if algorithm != ECDSA_WITH_SHA384 {
        return Err(format!("{what}: signature algorithm {algorithm}, expected ecdsa-with-SHA384"));
    }
    let sig = p384::ecdsa::Signature::from_der(signature)
        .map_err(|_| format!("{what}: the signature is not a DER ECDSA signature"))?;
    let key = public_key(issuer).map_err(|e| match e {
        GpuError::Chain(m) => m,
        other => other.to_string(),
    })?;
    key.verify(signed, &sig).map_err(|_| format!("{what} is not signed by {}", issuer.cn))
}

/// The first element of a certificate's outer SEQUENCE (its TBSCertificate),
/// byte for byte.
pub(crate) fn signed_part(cert: &[u8]) -> Option<&[u8]> {
    // (header length, content length) of the DER element at the start of `b`.
    fn element(b: &[u8]) -> Option<(usize, usize)> {
        if *b.first()? != 0x30 {
            return None;
        }
        let first = *b.get(1)?;
        if first < 0x80 {
            return Some((2, first as usize));
        }
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 3 {
            return None;
        }
        let len = b.get(2..2 + n)?.iter().fold(0usize, |l, &x| (l << 8) | x as usize);
        Some((2 + n, len))
    }
    let (outer_header, outer_len) = element(cert)?;
    let inner = cert.get(outer_header..outer_header + outer_len)?;
    let (header, len) = element(inner)?;
    inner.get(..header + len)
}
