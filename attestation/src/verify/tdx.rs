//! Intel TDX DCAP quotes (v4 and v5): verified with `dcap-qvl` against the
//! pinned Intel SGX root, with collateral (PCK CRL, root CA CRL, TCB info, QE
//! identity) that the caller supplies from a file, a PCCS or a cache.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Quote;
use dcap_qvl::verify::QuoteVerifier;
use serde::{Deserialize, Serialize};

use cocoon_protocol::Platform;

use crate::hexfmt::{self, rfc3339};
use crate::{AttestationError, roots};

/// Largest quote accepted (a v4 quote with its PCK chain is about 5 KB).
pub const MAX_QUOTE: usize = 64 * 1024;
/// Largest collateral document accepted.
pub const MAX_COLLATERAL: usize = 1 << 20;

/// TD attribute bit 0: the TD runs in debug mode (the host can read its memory).
const TD_ATTR_DEBUG: u8 = 0x01;

/// What a verified TDX quote says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdxReport {
    pub quote_version: u16,
    /// Intel's verdict on the platform's TCB under the collateral (`UpToDate`, `OutOfDate`...).
    pub tcb_status: String,
    pub advisory_ids: Vec<String>,
    #[serde(with = "hexfmt")]
    pub tee_tcb_svn: [u8; 16],
    #[serde(with = "hexfmt")]
    pub mr_seam: [u8; 48],
    #[serde(with = "hexfmt")]
    pub td_attributes: [u8; 8],
    #[serde(with = "hexfmt")]
    pub xfam: [u8; 8],
    #[serde(with = "hexfmt")]
    pub mrtd: [u8; 48],
    #[serde(with = "hexfmt")]
    pub mr_config_id: [u8; 48],
    #[serde(with = "hexfmt")]
    pub mr_owner: [u8; 48],
    #[serde(with = "hexfmt")]
    pub mr_owner_config: [u8; 48],
    #[serde(with = "hexfmt")]
    pub rtmr0: [u8; 48],
    #[serde(with = "hexfmt")]
    pub rtmr1: [u8; 48],
    #[serde(with = "hexfmt")]
    pub rtmr2: [u8; 48],
    #[serde(with = "hexfmt")]
    pub rtmr3: [u8; 48],
    #[serde(with = "hexfmt")]
    pub report_data: [u8; 64],
}

impl TdxReport {
    pub fn debug(&self) -> bool {
        self.td_attributes[0] & TD_ATTR_DEBUG != 0
    }
}

/// The collateral for one quote, in the JSON layout of `dcap-qvl`'s samples
/// (binary fields as hex). PCCS answers are converted to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxCollateral {
    pub pck_crl_issuer_chain: String,
    #[serde(with = "hex::serde")]
    pub root_ca_crl: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub pck_crl: Vec<u8>,
    pub tcb_info_issuer_chain: String,
    pub tcb_info: String,
    #[serde(with = "hex::serde")]
    pub tcb_info_signature: Vec<u8>,
    pub qe_identity_issuer_chain: String,
    pub qe_identity: String,
    #[serde(with = "hex::serde")]
    pub qe_identity_signature: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pck_certificate_chain: Option<String>,
}

/// When a piece of collateral was issued and when its issuer promises the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub issued: u64,
    pub next_update: u64,
}

fn collateral_err(reason: String) -> AttestationError {
    AttestationError::Collateral { platform: Platform::Tdx, reason }
}

impl TdxCollateral {
    pub fn from_json(bytes: &[u8]) -> Result<Self, AttestationError> {
        if bytes.len() > MAX_COLLATERAL {
            return Err(collateral_err(format!("{} bytes exceeds the limit of {MAX_COLLATERAL}", bytes.len())));
        }
        let c: TdxCollateral = serde_json::from_slice(bytes).map_err(|e| collateral_err(e.to_string()))?;
        c.validity()?;
        Ok(c)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("collateral serialises")
    }

    /// The window in which every signed document (TCB info, QE identity) is current:
    /// the latest issue date to the earliest next update.
    pub fn validity(&self) -> Result<Validity, AttestationError> {
        let doc = |name: &str, text: &str| -> Result<Validity, AttestationError> {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| collateral_err(format!("{name} is not JSON: {e}")))?;
            let date = |field: &str| {
                v.get(field)
                    .and_then(|d| d.as_str())
                    .and_then(hexfmt::parse_rfc3339)
                    .ok_or_else(|| collateral_err(format!("{name} has no RFC 3339 {field}")))
            };
            Ok(Validity { issued: date("issueDate")?, next_update: date("nextUpdate")? })
        };
        let t = doc("tcb_info", &self.tcb_info)?;
        let q = doc("qe_identity", &self.qe_identity)?;
        Ok(Validity { issued: t.issued.max(q.issued), next_update: t.next_update.min(q.next_update) })
    }

    fn to_dcap(&self) -> QuoteCollateralV3 {
        QuoteCollateralV3 {
            pck_crl_issuer_chain: self.pck_crl_issuer_chain.clone(),
            root_ca_crl: self.root_ca_crl.clone(),
            pck_crl: self.pck_crl.clone(),
            tcb_info_issuer_chain: self.tcb_info_issuer_chain.clone(),
            tcb_info: self.tcb_info.clone(),
            tcb_info_signature: self.tcb_info_signature.clone(),
            qe_identity_issuer_chain: self.qe_identity_issuer_chain.clone(),
            qe_identity: self.qe_identity.clone(),
            qe_identity_signature: self.qe_identity_signature.clone(),
            pck_certificate_chain: self.pck_certificate_chain.clone(),
        }
    }
}

fn malformed(reason: String) -> AttestationError {
    AttestationError::Malformed { platform: Platform::Tdx, reason }
}

/// Parses a quote's framing without verifying it.
pub fn parse_quote(quote: &[u8]) -> Result<Quote, AttestationError> {
    if quote.len() > MAX_QUOTE {
        return Err(malformed(format!("quote is {} bytes; the limit is {MAX_QUOTE}", quote.len())));
    }
    let q = Quote::parse(quote).map_err(|e| malformed(format!("{e:#}")))?;
    if q.header.tee_type != 0x81 {
        return Err(malformed(format!("TEE type {:#x}, expected 0x81 (TDX)", q.header.tee_type)));
    }
    if !matches!(q.header.version, 4 | 5) {
        return Err(malformed(format!("quote version {}, expected 4 or 5", q.header.version)));
    }
    Ok(q)
}

/// What a PCCS needs to serve a quote's collateral: the platform's FMSPC
/// (hex) and the PCK CA (`processor` or `platform`), from the quote's PCK certificate.
pub fn collateral_key(quote: &[u8]) -> Result<(String, &'static str), AttestationError> {
    let q = parse_quote(quote)?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&q).map_err(|e| malformed(format!("PCK certificate: {e:#}")))?;
    let ca = dcap_qvl::intel::quote_ca(&q).map_err(|e| malformed(format!("PCK certificate: {e:#}")))?;
    Ok((hex::encode_upper(fmspc), ca.as_id_str()))
}

/// Verifies `quote` with `collateral` at Unix time `now`: the PCK chain and CRLs to
/// the pinned Intel root, the QE report and identity, the quote signature, and
/// Intel's TCB verdict. Debug TDs pass here; the policy decides about them.
pub fn verify_quote(quote: &[u8], collateral: &TdxCollateral, now: u64) -> Result<TdxReport, AttestationError> {
    let parsed = parse_quote(quote)?;
    let window = collateral.validity()?;
    if now < window.issued || now >= window.next_update {
        return Err(collateral_err(format!(
            "collateral is valid from {} to {}; verification time {} is outside it",
            rfc3339(window.issued),
            rfc3339(window.next_update),
            rfc3339(now)
        )));
    }
    let verified = QuoteVerifier::new(roots::INTEL_SGX_ROOT_CA.to_vec())
        .allow_debug(true)
        .verify(quote, &collateral.to_dcap(), now)
        .map_err(|e| AttestationError::Verification { platform: Platform::Tdx, reason: format!("{e:#}") })?;
    let td = verified.report.as_td10().ok_or_else(|| malformed("quote body is not a TD report".into()))?;
    Ok(TdxReport {
        quote_version: parsed.header.version,
        tcb_status: verified.status,
        advisory_ids: verified.advisory_ids,
        tee_tcb_svn: td.tee_tcb_svn,
        mr_seam: td.mr_seam,
        td_attributes: td.td_attributes,
        xfam: td.xfam,
        mrtd: td.mr_td,
        mr_config_id: td.mr_config_id,
        mr_owner: td.mr_owner,
        mr_owner_config: td.mr_owner_config,
        rtmr0: td.rt_mr0,
        rtmr1: td.rt_mr1,
        rtmr2: td.rt_mr2,
        rtmr3: td.rt_mr3,
        report_data: td.report_data,
    })
}
