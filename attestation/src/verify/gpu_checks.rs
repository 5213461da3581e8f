//! The GPU entries of an evidence document: each report verified against
//! the nonce this document binds, its certificates' revocation, and the
//! policy's GPU rule over what verified.

use cocoon_protocol::evidence::EvidenceDocument;

use crate::nvidia::{GpuError, VerifiedGpu, verify_gpu_report_under};
use crate::{Policy, gpu_nonce};

/// One GPU entry of an evidence document, verified (or not) against the
/// nonce derived from this document's report data.
#[derive(Debug, Clone)]
pub struct GpuCheck {
    /// The CC mode the worker declared (`on`, `off`, `devtools`).
    pub cc_mode: String,
    pub outcome: Result<VerifiedGpu, GpuError>,
    /// Each checked certificate's revocation status (empty unless the report verified).
    pub revocation: Vec<crate::revocation::CertRevocation>,
}

/// Verifies every GPU entry of `doc`. Each report must have been requested
/// with `gpu_nonce(claims, nonce, cc_mode)` of this very document and the CC
/// mode its entry states, so GPU evidence taken from another VM's (or another
/// verifier's) evidence, or an entry whose mode was edited, is refused.
pub fn check_gpus(
    doc: &EvidenceDocument,
    now: u64,
    revocation: &crate::revocation::RevocationCollateral,
) -> Vec<GpuCheck> {
    check_gpus_under(doc, now, revocation, crate::nvidia::NVIDIA_DEVICE_ROOT_CA)
}

/// [`check_gpus`] to another root (the tests' own).
pub(crate) fn check_gpus_under(
    doc: &EvidenceDocument,
    now: u64,
    revocation: &crate::revocation::RevocationCollateral,
    root: &[u8],
) -> Vec<GpuCheck> {
    let nonce = doc.nonce.as_deref().map(|n| n.as_slice());
    doc.gpu
        .iter()
        .flatten()
        .map(|g| {
            let expected = gpu_nonce(&doc.claims, nonce, &g.cc_mode);
            let chain: Vec<Vec<u8>> = g.certificate_chain.iter().map(|c| c.to_vec()).collect();
            let outcome = verify_gpu_report_under(&g.attestation_report, &chain, &expected, now, root);
            let revocation = match &outcome {
                Ok(_) => crate::nvidia::chain_revocation(&chain, revocation, now).unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            GpuCheck { cc_mode: g.cc_mode.clone(), outcome, revocation }
        })
        .collect()
}

/// Problems with a verified GPU's revocation status under `policy`, and a
/// note on what was checked.
pub(super) fn revocation_findings(
    policy: crate::revocation::RevocationPolicy,
    statuses: &[crate::revocation::CertRevocation],
) -> (Vec<String>, String) {
    use crate::revocation::{RevocationPolicy, Status};
    if policy == RevocationPolicy::Skip {
        return (Vec::new(), "revocation not checked (skip)".into());
    }
    let mut problems = Vec::new();
    let mut good = 0;
    for s in statuses {
        match &s.status {
            Status::Good(_) => good += 1,
            Status::Revoked(why) => problems.push(format!("certificate {} is revoked: {why}", s.certificate)),
            Status::Unknown(why) if policy == RevocationPolicy::Require => {
                problems.push(format!("the policy requires revocation status; {}: {why}", s.certificate))
            }
            Status::Unknown(_) => {}
        }
    }
    let note = if good == statuses.len() {
        format!("revocation checked for {good} certificates")
    } else {
        format!("revocation checked for {good} of {} certificates (NOT for the rest: no collateral)", statuses.len())
    };
    (problems, note)
}

/// Dotted version strings compared number by number (`550.90.07` < `570.124.03`).
pub(super) fn version_at_least(found: &str, min: &str) -> bool {
    let parse = |v: &str| v.split('.').map(|p| p.trim().parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    parse(found) >= parse(min)
}

pub(super) fn gpu_rule(policy: &Policy, gpus: &[GpuCheck]) -> Option<Result<String, String>> {
    let p = &policy.gpu;
    if gpus.is_empty() {
        return p
            .required
            .then(|| Err("the policy requires GPU confidential-computing evidence; the worker sent none".into()));
    }
    let (verified, problems) = gpu_findings(policy, gpus);
    match (problems.is_empty(), p.required) {
        (true, _) => Some(Ok(format!("{} GPU(s) verified: {}", verified.len(), verified.join("; ")))),
        (false, true) => Some(Err(problems.join("; "))),
        (false, false) => {
            Some(Ok(format!("not required; GPU evidence present but NOT trusted: {}", problems.join("; "))))
        }
    }
}

/// Each GPU checked against the policy: what passed, and every problem.
pub(super) fn gpu_findings(policy: &Policy, gpus: &[GpuCheck]) -> (Vec<String>, Vec<String>) {
    let p = &policy.gpu;
    let mut verified = Vec::new();
    let mut problems = Vec::new();
    for (i, g) in gpus.iter().enumerate() {
        match &g.outcome {
            Err(e) => problems.push(format!("GPU {i}: {e}")),
            Ok(v) => {
                let arch = v.architecture.to_string();
                if !p.allowed_architectures.is_empty()
                    && !p.allowed_architectures.iter().any(|a| a.eq_ignore_ascii_case(&arch))
                {
                    problems.push(format!(
                        "GPU {i}: architecture {arch}, the policy allows {}",
                        p.allowed_architectures.join(", ")
                    ));
                }
                if !p.allowed_chips.is_empty() && !p.allowed_chips.iter().any(|c| c.eq_ignore_ascii_case(&v.chip)) {
                    problems.push(format!(
                        "GPU {i}: chip {}, the policy allows {}",
                        v.chip,
                        p.allowed_chips.join(", ")
                    ));
                }
                if p.require_cc_mode && g.cc_mode != "on" {
                    problems.push(format!("GPU {i}: CC mode {:?}, the policy requires \"on\"", g.cc_mode));
                }
                let driver = v.driver_version.as_deref().unwrap_or("unknown");
                if let Some(min) = &p.min_driver_version
                    && !version_at_least(driver, min)
                {
                    problems.push(format!("GPU {i}: driver {driver}, the policy requires at least {min}"));
                }
                let vbios = v.vbios_version.as_deref().unwrap_or("unknown");
                if !p.allowed_vbios_versions.is_empty() && !p.allowed_vbios_versions.iter().any(|a| a == vbios) {
                    problems.push(format!(
                        "GPU {i}: VBIOS {vbios}, the policy allows {}",
                        p.allowed_vbios_versions.join(", ")
                    ));
                }
                let measurements = if !p.reference_values.is_empty() {
                    match crate::gpu_reference::compare(&p.reference_values, v) {
                        Ok(m) => m,
                        Err(e) => {
                            problems.push(format!("GPU {i}: {e}"));
                            String::new()
                        }
                    }
                } else if p.allow_any_measurement {
                    "measurements NOT compared (allow_any_measurement)".into()
                } else {
                    problems.push(format!(
                        "GPU {i}: the policy has no GPU reference values to compare the measurements with \
                         (add `cocoon measure-gpu` output to gpu.reference_value_files, or set gpu.allow_any_measurement)"
                    ));
                    String::new()
                };
                let (revocation_problems, revocation) = revocation_findings(p.revocation, &g.revocation);
                problems.extend(revocation_problems.into_iter().map(|r| format!("GPU {i}: {r}")));
                verified.push(format!(
                    "{} ({}), driver {driver}, VBIOS {vbios}, {measurements}, {revocation}",
                    v.architecture, v.attestation_key
                ));
            }
        }
    }
    (verified, problems)
}

#[cfg(test)]
mod tests {
    use cocoon_protocol::evidence::EVIDENCE_VERSION;
    use cocoon_protocol::{GpuEvidence, Platform};
    use serde_bytes::ByteBuf;

    use super::*;
    use crate::verify::test_gpu::{AT, chain, report, root};

    /// A document whose one GPU reported in `cc_mode`, its report requested
    /// for the nonce the producer derives.
    fn document(cc_mode: &str) -> EvidenceDocument {
        let (claims, nonce) = (b"claims".to_vec(), b"verifier nonce".to_vec());
        let gpu_nonce = gpu_nonce(&claims, Some(&nonce), cc_mode);
        EvidenceDocument {
            version: EVIDENCE_VERSION,
            platform: Platform::Simulated,
            claims: ByteBuf::from(claims),
            nonce: Some(ByteBuf::from(nonce)),
            quote_or_report: ByteBuf::new(),
            certificates: None,
            event_log: None,
            gpu: Some(vec![GpuEvidence {
                vendor: "nvidia".into(),
                architecture: "BLACKWELL".into(),
                cc_mode: cc_mode.into(),
                driver_version: "580.00".into(),
                vbios_version: "98.02.00.00.01".into(),
                nonce: ByteBuf::from(gpu_nonce.to_vec()),
                attestation_report: ByteBuf::from(report(&gpu_nonce, &[], &[])),
                certificate_chain: chain().into_iter().map(ByteBuf::from).collect(),
            }]),
            nonce_proof: None,
        }
    }

    /// The host relays the evidence: a GPU in developer-tools mode (its
    /// memory open to debuggers) must not pass for "on" by an edit of the
    /// mode the document states.
    #[test]
    fn the_cc_mode_cannot_be_edited_in_transit() {
        let collateral = crate::revocation::RevocationCollateral::default();
        let honest = document("devtools");
        let checks = check_gpus_under(&honest, AT, &collateral, &root());
        assert!(checks[0].outcome.is_ok(), "{:?}", checks[0].outcome);
        assert_eq!(checks[0].cc_mode, "devtools");
        let mut edited = honest.clone();
        edited.gpu.as_mut().unwrap()[0].cc_mode = "on".into();
        let checks = check_gpus_under(&edited, AT, &collateral, &root());
        assert!(matches!(checks[0].outcome, Err(GpuError::Nonce { .. })), "{:?}", checks[0].outcome);
    }
}
