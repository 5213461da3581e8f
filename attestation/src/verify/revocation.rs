//! Revocation of the certificates in a GPU's attestation chain, decided from
//! collateral the verifier has cached (as TDX collateral is): CRLs and OCSP
//! responses, DER or PEM. Nothing is fetched here. NVIDIA publishes CRLs for
//! its intermediate CAs (each certificate names its CRL) and answers OCSP
//! for every certificate of a device's chain.
//!
//! Collateral counts only once it verifies: a CRL must be signed by the
//! certificate's issuer, an OCSP response by the issuer or by a responder
//! the issuer certified for OCSP signing; both must be current at the
//! verification time. A revoked answer from any of them refuses the chain,
//! whatever the policy; the policy decides what an unanswered certificate
//! means (`RevocationPolicy`).

use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::gpu_cert::{Cert, check_signed_by, parse_cert, signed_part, verify_signed_by};
use crate::hexfmt::rfc3339;

/// Largest CRL or OCSP response accepted.
pub const MAX_COLLATERAL_ITEM: usize = 256 << 10;
/// How long an OCSP answer without a next-update time counts.
const OCSP_MAX_AGE_SECS: u64 = 7 * 24 * 3600;
const OCSP_BASIC: &str = "1.3.6.1.5.5.7.48.1.1";
const EXTENDED_KEY_USAGE: &str = "2.5.29.37";
const KP_OCSP_SIGNING: &str = "1.3.6.1.5.5.7.3.9";
const SHA1: &str = "1.3.14.3.2.26";
const SHA256: &str = "2.16.840.1.101.3.4.2.1";
const SHA384: &str = "2.16.840.1.101.3.4.2.2";

/// What a verifier does about certificates no collateral answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationPolicy {
    /// Every certificate must be shown unrevoked by current collateral.
    Require,
    /// Check what collateral there is; unanswered certificates pass, and the
    /// `gpu` rule says they were not checked.
    #[default]
    IfPresent,
    /// Do not look at revocation at all.
    Skip,
}

/// Cached CRLs and OCSP responses (DER).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationCollateral {
    pub crls: Vec<Vec<u8>>,
    pub ocsp_responses: Vec<Vec<u8>>,
}

impl RevocationCollateral {
    /// Adds the CRLs and OCSP responses in a file: PEM (`X509 CRL`, `OCSP
    /// RESPONSE`) or one DER item, told apart by parsing.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > 16 * MAX_COLLATERAL_ITEM {
            return Err(format!("{} bytes; the limit is {}", bytes.len(), 16 * MAX_COLLATERAL_ITEM));
        }
        if bytes.starts_with(b"-----BEGIN") {
            let text = std::str::from_utf8(bytes).map_err(|_| "PEM that is not text".to_string())?;
            let mut found = 0;
            for block in text.split("-----BEGIN ").skip(1) {
                let (label, rest) = block.split_once("-----").ok_or("a PEM header without its end")?;
                let body = rest.split("-----END").next().unwrap_or("");
                let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                use base64::Engine;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("PEM {label}: not base64: {e}"))?;
                match label {
                    "X509 CRL" => self.add_der(der, Some(Kind::Crl))?,
                    "OCSP RESPONSE" => self.add_der(der, Some(Kind::Ocsp))?,
                    other => return Err(format!("PEM {other}: expected X509 CRL or OCSP RESPONSE")),
                }
                found += 1;
            }
            if found == 0 {
                return Err("no PEM block".into());
            }
            return Ok(());
        }
        self.add_der(bytes.to_vec(), None)
    }

    fn add_der(&mut self, der: Vec<u8>, kind: Option<Kind>) -> Result<(), String> {
        if der.len() > MAX_COLLATERAL_ITEM {
            return Err(format!("an item of {} bytes; the limit is {MAX_COLLATERAL_ITEM}", der.len()));
        }
        let crl = <x509_cert::crl::CertificateList>::from_der(&der);
        let ocsp = <x509_ocsp::OcspResponse as der07::Decode>::from_der(&der);
        match (kind, crl, ocsp) {
            (Some(Kind::Crl) | None, Ok(_), _) => self.crls.push(der),
            (Some(Kind::Ocsp) | None, _, Ok(_)) => self.ocsp_responses.push(der),
            (Some(Kind::Crl), Err(e), _) => return Err(format!("not a DER CRL: {e}")),
            (Some(Kind::Ocsp), _, Err(e)) => return Err(format!("not a DER OCSP response: {e}")),
            (None, Err(_), Err(_)) => return Err("neither a DER CRL nor a DER OCSP response".into()),
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.crls.is_empty() && self.ocsp_responses.is_empty()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Crl,
    Ocsp,
}

/// The answer for one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum Status {
    /// Shown unrevoked; by what.
    Good(String),
    /// Revoked; by whom and since when.
    Revoked(String),
    /// No current, verifying collateral answers for it; why each item did not count.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertRevocation {
    /// The certificate's common name.
    pub certificate: String,
    pub status: Status,
}

/// Checks `certs[first..n-1]` (leaf first; each issued by the next; the
/// root is trusted by pinning and has no issuer to revoke it).
pub(crate) fn check_chain(
    certs: &[Cert],
    first: usize,
    collateral: &RevocationCollateral,
    now: u64,
) -> Vec<CertRevocation> {
    (first..certs.len().saturating_sub(1))
        .map(|i| CertRevocation {
            certificate: certs[i].cn.clone(),
            status: check_one(&certs[i], &certs[i + 1], collateral, now),
        })
        .collect()
}

fn check_one(cert: &Cert, issuer: &Cert, collateral: &RevocationCollateral, now: u64) -> Status {
    let mut good = None;
    let mut notes = Vec::new();
    for crl in &collateral.crls {
        match crl_answer(crl, cert, issuer, now) {
            Ok(None) => {}
            Ok(Some(Status::Revoked(r))) => return Status::Revoked(r),
            Ok(Some(s)) => good = good.or(Some(s)),
            Err(e) => notes.push(e),
        }
    }
    for response in &collateral.ocsp_responses {
        match ocsp_answer(response, cert, issuer, now) {
            Ok(None) => {}
            Ok(Some(Status::Revoked(r))) => return Status::Revoked(r),
            Ok(Some(s)) => good = good.or(Some(s)),
            Err(e) => notes.push(e),
        }
    }
    good.unwrap_or_else(|| {
        Status::Unknown(if notes.is_empty() { "no CRL or OCSP response for it".into() } else { notes.join("; ") })
    })
}

/// `Ok(None)` when the CRL is not `issuer`'s; an error when it is but does
/// not count (bad signature, not current).
fn crl_answer(der_bytes: &[u8], cert: &Cert, issuer: &Cert, now: u64) -> Result<Option<Status>, String> {
    let crl = <x509_cert::crl::CertificateList>::from_der(der_bytes).map_err(|e| format!("CRL: {e}"))?;
    let tbs = &crl.tbs_cert_list;
    if tbs.issuer != *issuer.x509.tbs_certificate().subject() {
        return Ok(None);
    }
    let what = format!("the CRL of {}", issuer.cn);
    let signed = signed_part(der_bytes).ok_or_else(|| format!("{what}: no to-be-signed part"))?;
    let signature = crl.signature.as_bytes().ok_or_else(|| format!("{what}: signature is not whole bytes"))?;
    verify_signed_by(issuer, &crl.signature_algorithm.oid.to_string(), signed, signature, &what)?;
    let this_update = tbs.this_update.to_unix_duration().as_secs();
    let next_update = tbs.next_update.map(|t| t.to_unix_duration().as_secs());
    if now < this_update || next_update.is_some_and(|n| now > n) {
        return Err(format!(
            "{what} is current from {} to {}; verification time {} is outside it",
            rfc3339(this_update),
            next_update.map(rfc3339).unwrap_or_else(|| "(no next update)".into()),
            rfc3339(now)
        ));
    }
    let serial = cert.x509.tbs_certificate().serial_number();
    if let Some(entry) = tbs.revoked_certificates.iter().flatten().find(|r| &r.serial_number == serial) {
        return Ok(Some(Status::Revoked(format!(
            "{what} lists it as revoked since {}",
            rfc3339(entry.revocation_date.to_unix_duration().as_secs())
        ))));
    }
    Ok(Some(Status::Good(format!("{what}, current to {}", next_update.map(rfc3339).unwrap_or_default()))))
}

fn hash(algorithm: &str, data: &[u8]) -> Option<Vec<u8>> {
    match algorithm {
        SHA1 => Some(<sha1::Sha1 as sha1::Digest>::digest(data).to_vec()),
        SHA256 => Some(sha2::Sha256::digest(data).to_vec()),
        SHA384 => Some(sha2::Sha384::digest(data).to_vec()),
        _ => None,
    }
}

fn generalized(t: &x509_ocsp::OcspGeneralizedTime) -> u64 {
    t.0.to_unix_duration().as_secs()
}

/// `Ok(None)` when the response is not about `cert`.
fn ocsp_answer(der_bytes: &[u8], cert: &Cert, issuer: &Cert, now: u64) -> Result<Option<Status>, String> {
    use der07::{Decode as _, Encode as _};
    let response = x509_ocsp::OcspResponse::from_der(der_bytes).map_err(|e| format!("OCSP response: {e}"))?;
    if response.response_status != x509_ocsp::OcspResponseStatus::Successful {
        return Err(format!("an OCSP response with status {:?}", response.response_status));
    }
    let bytes = response.response_bytes.ok_or("an OCSP response without a body")?;
    if bytes.response_type.to_string() != OCSP_BASIC {
        return Err(format!("an OCSP response of type {}, expected basic", bytes.response_type));
    }
    let basic_der = bytes.response.as_bytes();
    let basic = x509_ocsp::BasicOcspResponse::from_der(basic_der).map_err(|e| format!("OCSP basic response: {e}"))?;
    let issuer_name = issuer.x509.tbs_certificate().subject().to_der().map_err(|e| e.to_string())?;
    let issuer_key = issuer.x509.tbs_certificate().subject_public_key_info().subject_public_key.raw_bytes();
    let serial = cert.x509.tbs_certificate().serial_number().as_bytes();
    let Some(single) = basic.tbs_response_data.responses.iter().find(|r| {
        let alg = r.cert_id.hash_algorithm.oid.to_string();
        r.cert_id.serial_number.as_bytes() == serial
            && hash(&alg, &issuer_name).is_some_and(|h| h == r.cert_id.issuer_name_hash.as_bytes())
            && hash(&alg, issuer_key).is_some_and(|h| h == r.cert_id.issuer_key_hash.as_bytes())
    }) else {
        return Ok(None);
    };
    // Signed by the issuer itself, or by a responder the issuer certified for OCSP signing.
    let signed = signed_part(basic_der).ok_or("an OCSP response without a to-be-signed part")?;
    let signature = basic.signature.as_bytes().ok_or("an OCSP signature that is not whole bytes")?;
    let algorithm = basic.signature_algorithm.oid.to_string();
    let what = format!("the OCSP response for {}", cert.cn);
    if verify_signed_by(issuer, &algorithm, signed, signature, &what).is_err() {
        let mut delegated = Err(format!("{what} is signed neither by {} nor by a responder it certified", issuer.cn));
        for (i, c) in basic.certs.iter().flatten().enumerate() {
            let der = c.to_der().map_err(|e| e.to_string())?;
            let Ok(responder) = parse_cert(&der, i) else { continue };
            if check_signed_by(&responder, issuer).is_err() || !ocsp_signer(&responder) {
                continue;
            }
            crate::x509::check_validity(&responder.x509, &responder.cn, now)?;
            if verify_signed_by(&responder, &algorithm, signed, signature, &what).is_ok() {
                delegated = Ok(());
                break;
            }
        }
        delegated?;
    }
    let this_update = generalized(&single.this_update);
    let until = single.next_update.as_ref().map(generalized).unwrap_or(this_update + OCSP_MAX_AGE_SECS);
    if now < this_update || now > until {
        return Err(format!(
            "{what} is current from {} to {}; verification time {} is outside it",
            rfc3339(this_update),
            rfc3339(until),
            rfc3339(now)
        ));
    }
    let by = format!("OCSP ({})", responder_name(&basic.tbs_response_data.responder_id));
    Ok(Some(match &single.cert_status {
        x509_ocsp::CertStatus::Good(_) => Status::Good(format!("{by}, current to {}", rfc3339(until))),
        x509_ocsp::CertStatus::Revoked(info) => {
            Status::Revoked(format!("{by}: revoked since {}", rfc3339(generalized(&info.revocation_time))))
        }
        x509_ocsp::CertStatus::Unknown(_) => return Err(format!("{by} does not know {}", cert.cn)),
    }))
}

fn responder_name(id: &x509_ocsp::ResponderId) -> String {
    match id {
        x509_ocsp::ResponderId::ByName(name) => name.to_string(),
        x509_ocsp::ResponderId::ByKey(key) => format!("key {}", hex::encode(key.as_bytes())),
    }
}

/// Whether the certificate's extended key usage includes OCSP signing.
fn ocsp_signer(cert: &Cert) -> bool {
    cert.x509
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .filter(|e| e.extn_id.to_string() == EXTENDED_KEY_USAGE)
        .any(|e| {
            x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes())
                .is_ok_and(|eku| eku.0.iter().any(|oid| oid.to_string() == KP_OCSP_SIGNING))
        })
}
