//! Where a verifier gets what the evidence does not carry: TDX collateral
//! (a file, a cache directory, a PCCS) and SEV-SNP certificates (a file).
//!
//! Collateral is public and signed by Intel, so where it comes from does not
//! matter to trust; the cache only saves round trips. A cached entry is used
//! while the verification time is inside its validity window.

use std::path::{Path, PathBuf};

use http::Uri;
use serde::Deserialize;
use serde_json::value::RawValue;

use cocoon_attestation::snp;
use cocoon_attestation::tdx::{self, TdxCollateral};
use cocoon_attestation::{Endorsements, read_limited, rfc3339};
use cocoon_protocol::{EvidenceDocument, Platform};

use crate::http::HttpClient;

/// Largest single PCCS answer accepted.
const MAX_PCCS_BODY: usize = 512 << 10;
/// Largest certificate file accepted.
const MAX_CERT_FILE: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum EndorsementError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Missing(String),
    #[error("PCCS {url}: {reason}")]
    Pccs { url: String, reason: String },
    #[error(transparent)]
    Attestation(#[from] cocoon_attestation::AttestationError),
}

/// The verifier's sources, from its command line or config.
#[derive(Debug, Clone, Default)]
pub struct EndorsementSources {
    /// TDX collateral JSON (the layout `tdx::TdxCollateral` reads).
    pub collateral_file: Option<PathBuf>,
    /// A PCCS (or Intel's PCS), e.g. `http://pccs.local:8081`; `/sgx|tdx/certification/v4/…` is appended.
    pub pccs_url: Option<String>,
    /// Directory where fetched collateral is kept until its next update.
    pub cache_dir: Option<PathBuf>,
    /// SEV-SNP certificates (PEM or DER: VCEK/VLEK and ASK/ASVK) for reports that come without them.
    pub snp_certs: Option<PathBuf>,
    /// CRLs and OCSP responses (DER or PEM) for GPU attestation chains, as
    /// fetched and refreshed by the operator (NVIDIA's CRL and OCSP services).
    pub gpu_revocation: Vec<PathBuf>,
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, EndorsementError> {
    read_limited(path, limit).map_err(|reason| EndorsementError::File { path: path.display().to_string(), reason })
}

impl EndorsementSources {
    /// Everything needed to verify `evidence` at Unix time `now`.
    pub async fn endorsements(
        &self,
        http: &HttpClient,
        evidence: &[u8],
        now: u64,
    ) -> Result<Endorsements, EndorsementError> {
        let mut out = Endorsements::default();
        if let Some(path) = &self.snp_certs {
            out.snp_certificates = snp::certificates_from_pem_or_der(&read_bounded(path, MAX_CERT_FILE)?)?;
        }
        for path in &self.gpu_revocation {
            let bytes = read_bounded(path, 16 * cocoon_attestation::revocation::MAX_COLLATERAL_ITEM as u64)?;
            out.gpu_revocation
                .add(&bytes)
                .map_err(|reason| EndorsementError::File { path: path.display().to_string(), reason })?;
        }
        // Decoding errors are the verifier's to report; here they only mean "no TDX quote".
        let Ok((doc, _)) = EvidenceDocument::decode(evidence) else { return Ok(out) };
        if doc.platform == Platform::Tdx {
            out.tdx_collateral = Some(self.tdx_collateral(http, &doc.quote_or_report, now).await?);
        }
        Ok(out)
    }

    async fn tdx_collateral(
        &self,
        http: &HttpClient,
        quote: &[u8],
        now: u64,
    ) -> Result<TdxCollateral, EndorsementError> {
        if let Some(path) = &self.collateral_file {
            return Ok(TdxCollateral::from_json(&read_bounded(path, tdx::MAX_COLLATERAL as u64)?)?);
        }
        let (fmspc, ca) = tdx::collateral_key(quote)?;
        let cached = self.cache_dir.as_ref().map(|d| d.join(format!("tdx-{fmspc}-{ca}.json")));
        if let Some(path) = &cached
            && let Ok(bytes) = read_bounded(path, tdx::MAX_COLLATERAL as u64)
            && let Ok(c) = TdxCollateral::from_json(&bytes)
            && c.validity().is_ok_and(|v| v.issued <= now && now < v.next_update)
        {
            return Ok(c);
        }
        let Some(pccs) = &self.pccs_url else {
            return Err(EndorsementError::Missing(format!(
                "no TDX collateral for FMSPC {fmspc} valid at {}: give --collateral FILE or --pccs URL",
                rfc3339(now)
            )));
        };
        eprintln!("fetching TDX collateral for FMSPC {fmspc} ({ca} CA) from {pccs}");
        let c = fetch_tdx_collateral(http, pccs, &fmspc, ca).await?;
        if let Some(path) = &cached {
            store(path, &c.to_json())
                .map_err(|reason| EndorsementError::File { path: path.display().to_string(), reason })?;
        }
        Ok(c)
    }
}

/// Writes through a temporary file so a reader never sees half an entry.
fn store(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(borrow, rename = "tcbInfo")]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(borrow, rename = "enclaveIdentity")]
    identity: &'a RawValue,
    signature: String,
}

/// Fetches the collateral of the PCCS/PCS API v4 for one FMSPC. The signed
/// JSON objects are kept as the exact bytes served, since the signatures cover them.
pub async fn fetch_tdx_collateral(
    http: &HttpClient,
    base: &str,
    fmspc: &str,
    ca: &str,
) -> Result<TdxCollateral, EndorsementError> {
    let base = base.trim_end_matches('/');
    let get = |path: String| async move {
        let url = format!("{base}/{path}");
        let err = |reason: String| EndorsementError::Pccs { url: url.clone(), reason };
        let uri: Uri = url.parse().map_err(|e| err(format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(err("only http:// PCCS URLs are supported; put a PCCS (or a caching proxy) on the local network, or pass --collateral".into()));
        }
        let req = http::Request::get(uri).body(http_body_util::Full::default()).map_err(|e| err(e.to_string()))?;
        let resp = http.send(req).await.map_err(|e| err(e.to_string()))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(resp.into_body(), MAX_PCCS_BODY))
            .await
            .map_err(|e| err(format!("reading the body: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(err(format!("HTTP {status}")));
        }
        Ok::<_, EndorsementError>((url, headers, body))
    };
    let chain = |url: &str, headers: &http::HeaderMap, names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.get(*n))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| urlencoding::decode(v).ok())
            .map(|v| v.into_owned())
            .ok_or_else(|| EndorsementError::Pccs { url: url.to_string(), reason: format!("no {} header", names[0]) })
    };
    let bad = |url: &str, reason: String| EndorsementError::Pccs { url: url.to_string(), reason };

    let (url, h, pck_crl) = get(format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der")).await?;
    let pck_crl_issuer_chain = chain(&url, &h, &["SGX-PCK-CRL-Issuer-Chain"])?;
    let (url, h, tcb) = get(format!("tdx/certification/v4/tcb?fmspc={fmspc}")).await?;
    let tcb_info_issuer_chain = chain(&url, &h, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
    let tcb: TcbInfoResponse = serde_json::from_slice(&tcb).map_err(|e| bad(&url, format!("TCB info: {e}")))?;
    let (url2, h, qe) = get("tdx/certification/v4/qe/identity".into()).await?;
    let qe_identity_issuer_chain = chain(&url2, &h, &["SGX-Enclave-Identity-Issuer-Chain"])?;
    let qe: QeIdentityResponse = serde_json::from_slice(&qe).map_err(|e| bad(&url2, format!("QE identity: {e}")))?;
    // A PCCS serves the root CA CRL hex-encoded.
    let (url3, _, root) = get("sgx/certification/v4/rootcacrl".into()).await?;
    let root_ca_crl = match std::str::from_utf8(&root).ok().and_then(|t| hex::decode(t.trim()).ok()) {
        Some(der) => der,
        None => root.to_vec(),
    };
    let c = TdxCollateral {
        pck_crl_issuer_chain,
        root_ca_crl,
        pck_crl: pck_crl.to_vec(),
        tcb_info_issuer_chain,
        tcb_info: tcb.tcb_info.get().to_string(),
        tcb_info_signature: hex::decode(&tcb.signature).map_err(|e| bad(&url, format!("TCB info signature: {e}")))?,
        qe_identity_issuer_chain,
        qe_identity: qe.identity.get().to_string(),
        qe_identity_signature: hex::decode(&qe.signature)
            .map_err(|e| bad(&url2, format!("QE identity signature: {e}")))?,
        pck_certificate_chain: None,
    };
    c.validity().map_err(|e| bad(&url3, e.to_string()))?;
    Ok(c)
}
