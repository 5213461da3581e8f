//! Evidence verification: hardware signature, claims binding, policy, in
//! that order; the keys inside the claims are handed out only after all three.

pub mod gpu_cert;
mod gpu_checks;
pub mod gpu_reference;
pub mod nvidia;
pub mod policy;
pub mod reference;
pub mod revocation;
pub mod rim;
pub mod roots;
mod rules;
pub mod snp;
pub mod spdm;
pub mod tdx;
#[cfg(test)]
pub(crate) mod test_gpu;
pub(crate) mod x509;
pub mod xml;

use serde::Serialize;

use cocoon_protocol::evidence::EvidenceDocument;
use cocoon_protocol::ohttp::KeyConfig;
use cocoon_protocol::{Claims, Platform};

pub use gpu_checks::{GpuCheck, check_gpus};
pub use rules::policy_rules;

use crate::nvidia::VerifiedGpu;
use crate::snp::SnpReport;
use crate::tdx::{TdxCollateral, TdxReport};
use crate::{AttestationError, Policy, report_data, simulated};
use gpu_checks::gpu_findings;

/// One policy rule and how the evidence fared.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    pub rule: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// What the hardware said, once its signature verified.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HardwareReport {
    Tdx(TdxReport),
    SevSnp(SnpReport),
    Simulated,
}

/// What the verifier needs besides the evidence: TDX collateral (from a file, a
/// PCCS or the cache) and SNP certificates the evidence may lack (a cache file).
#[derive(Debug, Clone, Default)]
pub struct Endorsements {
    pub tdx_collateral: Option<TdxCollateral>,
    pub snp_certificates: Vec<Vec<u8>>,
    /// CRLs and OCSP responses for GPU attestation chains.
    pub gpu_revocation: crate::revocation::RevocationCollateral,
}

/// Evidence that passed: only now may its keys be used.
///
/// A proof: its fields are private and only [`Assessment::into_result`]
/// (so [`verify_evidence`] and [`assess`]) builds one, so holding a
/// `VerifiedWorker` means the evidence passed a policy. Cloning one copies a
/// genuine proof; nothing outside this module can make one up.
#[derive(Debug, Clone)]
pub struct VerifiedWorker {
    platform: Platform,
    claims: Claims,
    hardware: HardwareReport,
    /// At least one: checked where the proof is built.
    key_configs: Vec<KeyConfig>,
    receipt_key: [u8; 32],
    nonce: Option<Vec<u8>>,
    rules: Vec<RuleOutcome>,
    gpus: Vec<VerifiedGpu>,
}

impl VerifiedWorker {
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The claims the hardware evidence binds.
    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    pub fn hardware(&self) -> &HardwareReport {
        &self.hardware
    }

    /// The key configuration to seal requests to (the first the claims list).
    pub fn key_config(&self) -> &KeyConfig {
        &self.key_configs[0]
    }

    pub fn key_configs(&self) -> &[KeyConfig] {
        &self.key_configs
    }

    /// The Ed25519 key the worker's receipts are signed with.
    pub fn receipt_key(&self) -> &[u8; 32] {
        &self.receipt_key
    }

    /// The verifier's nonce the evidence was made for, when it was fresh.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    /// Every rule of the policy and how the evidence fared.
    pub fn rules(&self) -> &[RuleOutcome] {
        &self.rules
    }

    /// GPUs whose reports verified, are bound to this evidence and pass every
    /// GPU check of the policy (none when any GPU fails one); the proxy
    /// routes on their chips.
    pub fn gpus(&self) -> &[VerifiedGpu] {
        &self.gpus
    }
}

/// Everything learnt about a piece of evidence, whether or not it passed.
#[derive(Debug)]
pub struct Assessment {
    pub platform: Option<Platform>,
    pub claims: Option<Claims>,
    pub hardware: Option<HardwareReport>,
    pub rules: Vec<RuleOutcome>,
    pub nonce: Option<Vec<u8>>,
    pub gpus: Vec<VerifiedGpu>,
    outcome: Result<(Vec<KeyConfig>, [u8; 32]), AttestationError>,
}

fn claims_json(c: &Claims) -> serde_json::Value {
    serde_json::json!({
        "image_version": c.image_version,
        "model": c.model.as_ref().map(|m| serde_json::json!({"id": m.id, "digest": hex::encode(&m.digest)})),
        "config_digest": hex::encode(&c.config_digest),
        "issued_at": c.issued_at,
        "receipt_key": hex::encode(&c.receipt_key),
    })
}

impl Assessment {
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }

    pub fn error(&self) -> Option<&AttestationError> {
        self.outcome.as_ref().err()
    }

    /// The JSON summary `cocoon attest --json` and `cocoon verify-evidence --json` print.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "accepted": self.passed(),
            "error": self.error().map(|e| e.to_string()),
            "platform": self.platform,
            "claims": self.claims.as_ref().map(claims_json),
            "hardware": self.hardware,
            "ohttp_key_ids": self.outcome.as_ref().ok().map(|(k, _)| k.iter().map(|k| k.key_id).collect::<Vec<_>>()),
            "nonce": self.nonce.as_ref().map(hex::encode),
            "gpus": self.gpus,
            "rules": self.rules,
        })
    }

    pub fn into_result(self) -> Result<VerifiedWorker, AttestationError> {
        let (key_configs, receipt_key) = self.outcome?;
        let platform = self.platform.expect("set when verification passed");
        if key_configs.is_empty() {
            return Err(AttestationError::Malformed {
                platform,
                reason: "the claims list no OHTTP key configuration".into(),
            });
        }
        Ok(VerifiedWorker {
            platform,
            claims: self.claims.expect("set when verification passed"),
            hardware: self.hardware.expect("set when verification passed"),
            key_configs,
            receipt_key,
            nonce: self.nonce,
            rules: self.rules,
            gpus: self.gpus,
        })
    }
}

/// Verifies an evidence document under `policy`.
///
/// `nonce` is the verifier's own nonce when it asked for fresh evidence;
/// `now` is Unix time in seconds (explicit so that tests and audits can fix it).
pub fn verify_evidence(
    bytes: &[u8],
    policy: &Policy,
    nonce: Option<&[u8]>,
    now: u64,
    endorsements: &Endorsements,
) -> Result<VerifiedWorker, AttestationError> {
    assess(bytes, policy, nonce, now, endorsements).into_result()
}

/// Like [`verify_evidence`], but keeps every rule's outcome for display.
pub fn assess(
    bytes: &[u8],
    policy: &Policy,
    nonce: Option<&[u8]>,
    now: u64,
    endorsements: &Endorsements,
) -> Assessment {
    let mut found = Findings::default();
    let outcome = run(&mut found, bytes, policy, nonce, now, endorsements);
    Assessment {
        platform: found.platform,
        claims: found.claims,
        hardware: found.hardware,
        rules: found.rules,
        nonce: nonce.map(<[u8]>::to_vec),
        gpus: found.gpus,
        outcome,
    }
}

/// What verification learnt before it stopped, for [`Assessment`].
#[derive(Default)]
struct Findings {
    platform: Option<Platform>,
    claims: Option<Claims>,
    hardware: Option<HardwareReport>,
    rules: Vec<RuleOutcome>,
    gpus: Vec<VerifiedGpu>,
}

fn run(
    a: &mut Findings,
    bytes: &[u8],
    policy: &Policy,
    nonce: Option<&[u8]>,
    now: u64,
    endorsements: &Endorsements,
) -> Result<(Vec<KeyConfig>, [u8; 32]), AttestationError> {
    let (doc, claims) = EvidenceDocument::decode(bytes)?;
    a.platform = Some(doc.platform);
    a.claims = Some(claims.clone());
    // 1. The platform must be one the policy accepts at all.
    platform_rule(&mut a.rules, doc.platform, policy)?;
    // 2. The platform's signature over its report, to the pinned vendor root.
    let (reported, hardware) = verify_signature(&mut a.rules, &doc, endorsements, now)?;
    a.hardware = Some(hardware.clone());
    // 3. The report data binds exactly these claims (and the nonce).
    check_binding(&mut a.rules, &doc, reported, nonce)?;
    // 4. Policy: every rule is evaluated so that a refusal lists all it broke.
    let gpu_checks = check_gpus(&doc, now, &endorsements.gpu_revocation);
    // Only GPUs that pass every GPU check of the policy become verified facts.
    if gpu_findings(policy, &gpu_checks).1.is_empty() {
        a.gpus = gpu_checks.iter().filter_map(|c| c.outcome.clone().ok()).collect();
    }
    a.rules.extend(policy_rules(policy, &claims, &hardware, nonce.is_some(), now, &gpu_checks));
    first_refusal(&a.rules)?;
    // 5. Only now are the keys inside the claims trusted.
    let key_configs = KeyConfig::decode_list(&claims.ohttp_keys).map_err(|e| AttestationError::Malformed {
        platform: doc.platform,
        reason: format!("claims ohttp_keys: {e}"),
    })?;
    Ok((key_configs, claims.receipt_key_bytes()))
}

fn pass(rules: &mut Vec<RuleOutcome>, rule: &'static str, detail: String) {
    rules.push(RuleOutcome { rule, passed: true, detail })
}

/// Simulated evidence only under a development policy; hardware only on the
/// policy's platforms.
fn platform_rule(rules: &mut Vec<RuleOutcome>, platform: Platform, policy: &Policy) -> Result<(), AttestationError> {
    let refusal = match platform {
        Platform::Simulated if !policy.allow_simulated => Some((
            "allow_simulated",
            "the evidence is simulated (signed in software, proves nothing about the machine); \
             accepting it needs the explicit development option --insecure-simulated"
                .to_string(),
        )),
        Platform::Simulated => {
            pass(rules, "allow_simulated", "simulated evidence accepted by a development policy".into());
            None
        }
        p if !policy.allowed_platforms.contains(&p) => {
            Some(("allowed_platforms", format!("platform {p} is not in {:?}", policy.allowed_platforms)))
        }
        p => {
            pass(rules, "allowed_platforms", format!("{p} is allowed"));
            None
        }
    };
    match refusal {
        Some((rule, detail)) => {
            rules.push(RuleOutcome { rule, passed: false, detail: detail.clone() });
            Err(AttestationError::Policy { rule, detail })
        }
        None => Ok(()),
    }
}

/// The report's signature to its vendor's pinned root: its report data and
/// the verified hardware fields.
fn verify_signature(
    rules: &mut Vec<RuleOutcome>,
    doc: &EvidenceDocument,
    endorsements: &Endorsements,
    now: u64,
) -> Result<([u8; 64], HardwareReport), AttestationError> {
    let (reported, hardware, detail) = match doc.platform {
        Platform::Simulated => (
            simulated::verify(&doc.quote_or_report)?,
            HardwareReport::Simulated,
            "simulated report self-signature verified".to_string(),
        ),
        Platform::Tdx => {
            let collateral = endorsements.tdx_collateral.as_ref().ok_or_else(|| AttestationError::Collateral {
                platform: Platform::Tdx,
                reason: "none given: pass a collateral file or a PCCS URL".into(),
            })?;
            let r = tdx::verify_quote(&doc.quote_or_report, collateral, now)?;
            let detail = format!(
                "TDX quote v{} verified to the Intel SGX Root CA; TCB status {}{}",
                r.quote_version,
                r.tcb_status,
                if r.advisory_ids.is_empty() { String::new() } else { format!(" ({})", r.advisory_ids.join(", ")) }
            );
            (r.report_data, HardwareReport::Tdx(r), detail)
        }
        Platform::SevSnp => {
            let mut certs: Vec<Vec<u8>> = doc.certificates.iter().flatten().map(|c| c.to_vec()).collect();
            certs.extend(endorsements.snp_certificates.iter().cloned());
            let r = snp::verify_report(&doc.quote_or_report, &certs, now)?;
            let detail = format!(
                "SNP report v{} signed by the {} ← ASK ← ARK-{}; reported TCB {}{}",
                r.version,
                r.signing_key,
                r.generation,
                r.reported_tcb,
                if r.reported_tcb_behind_current {
                    format!(" is behind the platform's current TCB {}", r.current_tcb)
                } else {
                    String::new()
                }
            );
            (r.report_data, HardwareReport::SevSnp(r), detail)
        }
    };
    pass(rules, "signature", detail);
    Ok((reported, hardware))
}

/// The signed report data is SHA-512 of exactly these claims (and nonce),
/// and the nonce, when the verifier gave one, is its own (or in a batch
/// whose root is bound).
fn check_binding(
    rules: &mut Vec<RuleOutcome>,
    doc: &EvidenceDocument,
    reported: [u8; 64],
    nonce: Option<&[u8]>,
) -> Result<(), AttestationError> {
    let expected = report_data(&doc.claims, doc.nonce.as_deref().map(|n| n.as_slice()));
    if reported != expected {
        return Err(AttestationError::ReportDataMismatch {
            expected: hex::encode(expected),
            found: hex::encode(reported),
        });
    }
    pass(rules, "report_data", "SHA-512(claims [|| nonce]) matches the report".into());
    let Some(want) = nonce else { return Ok(()) };
    let got = doc.nonce.as_deref().map(|n| n.as_slice());
    match &doc.nonce_proof {
        // Batched: our nonce must lead, by its audit path, to the root the report binds.
        Some(proof) => {
            let root = proof.root_for(want);
            if root.is_none() || root.as_ref().map(|r| r.as_slice()) != got {
                return Err(AttestationError::NonceMismatch {
                    expected: format!("a batch containing {}", hex::encode(want)),
                    found: format!(
                        "an audit path (leaf {} of {}) that does not lead from it to the signed root {}",
                        proof.index,
                        proof.size,
                        got.map(hex::encode).unwrap_or_else(|| "(none)".into())
                    ),
                });
            }
            pass(
                rules,
                "nonce",
                format!("evidence is fresh for our nonce (leaf {} of a batch of {})", proof.index, proof.size),
            );
        }
        None => {
            if got != Some(want) {
                return Err(AttestationError::NonceMismatch {
                    expected: hex::encode(want),
                    found: got.map(hex::encode).unwrap_or_else(|| "no nonce".into()),
                });
            }
            pass(rules, "nonce", "evidence is fresh for our nonce".into());
        }
    }
    Ok(())
}

/// The first failed rule as the error, naming the others it broke.
fn first_refusal(rules: &[RuleOutcome]) -> Result<(), AttestationError> {
    let failed: Vec<&RuleOutcome> = rules.iter().filter(|r| !r.passed).collect();
    let Some(first) = failed.first() else { return Ok(()) };
    let mut detail = first.detail.clone();
    if failed.len() > 1 {
        let others: Vec<&str> = failed[1..].iter().map(|r| r.rule).collect();
        detail.push_str(&format!(" (also refused: {})", others.join(", ")));
    }
    Err(AttestationError::Policy { rule: first.rule, detail })
}

#[cfg(test)]
mod tests {
    use serde_bytes::ByteBuf;

    use cocoon_protocol::evidence::{CLAIMS_VERSION, EVIDENCE_VERSION};
    use cocoon_protocol::ohttp::GatewayKey;
    use cocoon_protocol::{ModelClaim, Platform};

    use super::gpu_checks::{gpu_rule, revocation_findings};
    use super::*;
    use crate::EvidenceProducer;
    use crate::nvidia::verify_gpu_report;
    use crate::simulated::SimulatedProducer;

    const ISSUED: u64 = 1_800_000_000;

    fn evidence(nonce: Option<&[u8]>) -> Vec<u8> {
        let claims = Claims {
            version: CLAIMS_VERSION,
            platform: Platform::Simulated,
            ohttp_keys: ByteBuf::from(KeyConfig::encode_list(&[GatewayKey::generate(1).config().clone()])),
            receipt_key: ByteBuf::from(vec![2; 32]),
            model: Some(ModelClaim { id: "m".into(), digest: ByteBuf::from(vec![0xab; 32]) }),
            config_digest: ByteBuf::from(vec![0xcd; 32]),
            image_version: "t".into(),
            issued_at: ISSUED,
            prices: None,
            payout_address: None,
            capacity: None,
        }
        .encode();
        let ev = SimulatedProducer::new().produce(&report_data(&claims, nonce)).unwrap();
        EvidenceDocument {
            version: EVIDENCE_VERSION,
            platform: Platform::Simulated,
            claims: ByteBuf::from(claims),
            nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
            quote_or_report: ByteBuf::from(ev.quote_or_report),
            certificates: None,
            event_log: None,
            gpu: None,
            nonce_proof: None,
        }
        .encode()
    }

    fn none() -> Endorsements {
        Endorsements::default()
    }

    fn refusal(r: Result<VerifiedWorker, AttestationError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn accepts_under_a_development_policy_and_reports_each_rule() {
        let v =
            verify_evidence(&evidence(Some(b"n1")), &Policy::insecure_simulated(), Some(b"n1"), ISSUED + 5, &none())
                .unwrap();
        let rules: Vec<_> = v.rules.iter().map(|r| r.rule).collect();
        assert_eq!(rules, ["allow_simulated", "signature", "report_data", "nonce", "max_evidence_age_secs"]);
        assert_eq!(v.receipt_key, [2; 32]);
    }

    #[test]
    fn refusals_name_the_rule_and_the_values() {
        let dev = Policy::insecure_simulated();
        let e = refusal(verify_evidence(&evidence(Some(b"n1")), &dev, Some(b"n2"), ISSUED, &none()));
        assert_eq!(e, "nonce: expected 6e32, evidence has 6e31");
        let e = refusal(verify_evidence(&evidence(None), &dev, Some(b"n2"), ISSUED, &none()));
        assert_eq!(e, "nonce: expected 6e32, evidence has no nonce");
        let e = refusal(verify_evidence(&evidence(None), &dev, None, ISSUED + 90_000, &none()));
        assert!(
            e.contains("max_evidence_age_secs: claims issued 90000 s ago, the policy allows at most 86400 s"),
            "{e}"
        );
        let p = Policy { required_model_digest: Some("00".repeat(32)), ..dev.clone() };
        let e = refusal(verify_evidence(&evidence(None), &p, None, ISSUED, &none()));
        assert!(e.contains("required_model_digest: expected 0000") && e.contains(&"ab".repeat(32)), "{e}");
        let p = Policy { allowed_config_digests: vec!["11".repeat(32)], ..dev.clone() };
        assert!(
            refusal(verify_evidence(&evidence(None), &p, None, ISSUED, &none())).contains("allowed_config_digests")
        );
        let e = refusal(verify_evidence(&evidence(None), &Policy::default(), None, ISSUED, &none()));
        assert!(e.contains("allow_simulated"), "{e}");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let good = evidence(Some(b"n"));
        let dev = Policy::insecure_simulated();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(verify_evidence(&bad, &dev, Some(b"n"), ISSUED, &none()).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn batched_evidence_verifies_for_each_own_nonce_only() {
        let claims = Claims::decode(&EvidenceDocument::decode(&evidence(None)).unwrap().0.claims).unwrap().encode();
        let nonces: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; 32]).collect();
        let docs = crate::batched_evidence_documents(&SimulatedProducer::new(), &claims, &nonces).unwrap();
        let dev = Policy::insecure_simulated();
        for (i, doc) in docs.iter().enumerate() {
            let v = verify_evidence(doc, &dev, Some(&nonces[i]), ISSUED, &none()).unwrap();
            let rule = v.rules.iter().find(|r| r.rule == "nonce").unwrap();
            assert!(rule.detail.contains(&format!("leaf {i} of a batch of 7")), "{}", rule.detail);
            // The proof moved to another verifier's nonce is refused.
            let other = &nonces[(i + 1) % nonces.len()];
            let e = refusal(verify_evidence(doc, &dev, Some(other), ISSUED, &none()));
            assert!(e.contains("does not lead from it to the signed root"), "{e}");
        }
        // A proof moved into another document of the same batch fails too.
        let (mut moved, _) = EvidenceDocument::decode(&docs[0]).unwrap();
        moved.nonce_proof = EvidenceDocument::decode(&docs[1]).unwrap().0.nonce_proof;
        assert!(verify_evidence(&moved.encode(), &dev, Some(&nonces[0]), ISSUED, &none()).is_err());
        // One nonce makes ordinary single-nonce evidence.
        let single = crate::batched_evidence_documents(&SimulatedProducer::new(), &claims, &nonces[..1]).unwrap();
        assert!(EvidenceDocument::decode(&single[0]).unwrap().0.nonce_proof.is_none());
        verify_evidence(&single[0], &dev, Some(&nonces[0]), ISSUED, &none()).unwrap();
    }

    #[test]
    fn gpu_evidence_from_another_document_is_refused() {
        // A genuine H100 report and chain, requested for another VM's nonce.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/nvtrust-hopper");
        let report =
            hex::decode(std::fs::read_to_string(format!("{dir}/hopperAttestationReport.txt")).unwrap().trim()).unwrap();
        let chain =
            crate::nvidia::chain_from_pem(&std::fs::read(format!("{dir}/hopperCertChain.txt")).unwrap()).unwrap();
        let (mut doc, _) = EvidenceDocument::decode(&evidence(Some(b"n1"))).unwrap();
        doc.gpu = Some(vec![cocoon_protocol::GpuEvidence {
            vendor: "nvidia".into(),
            architecture: "HOPPER".into(),
            cc_mode: "on".into(),
            driver_version: "550.90.07".into(),
            vbios_version: "96.00.9F.00.01".into(),
            nonce: ByteBuf::from(report[4..36].to_vec()),
            attestation_report: ByteBuf::from(report),
            certificate_chain: chain.into_iter().map(ByteBuf::from).collect(),
        }]);
        let moved = doc.encode();
        let mut required = Policy::insecure_simulated();
        required.gpu.required = true;
        let e = refusal(verify_evidence(&moved, &required, Some(b"n1"), ISSUED, &none()));
        assert!(e.contains("gpu: GPU 0: GPU report nonce: expected"), "{e}");
        // Not required: the CPU evidence passes, the GPU is reported as not trusted and not listed.
        let a = assess(&moved, &Policy::insecure_simulated(), Some(b"n1"), ISSUED, &none());
        let rule = a.rules.iter().find(|r| r.rule == "gpu").unwrap();
        assert!(rule.passed && rule.detail.contains("NOT trusted"), "{rule:?}");
        assert!(a.gpus.is_empty());
    }

    #[test]
    fn the_gpu_rule_compares_measurements_with_the_policys_reference_values() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu");
        let report =
            hex::decode(std::fs::read_to_string(format!("{dir}/nvtrust-2023/attestationReport.txt")).unwrap()).unwrap();
        let chain =
            crate::nvidia::chain_from_pem(&std::fs::read(format!("{dir}/nvtrust-2023/gpuAkCertChain.txt")).unwrap())
                .unwrap();
        let nonce: [u8; 32] = report[4..36].try_into().unwrap();
        let check = || GpuCheck {
            cc_mode: "on".into(),
            outcome: verify_gpu_report(&report, &chain, &nonce, ISSUED),
            revocation: Vec::new(),
        };
        let set = |file: &str, at: &str| {
            let bytes = std::fs::read(format!("{dir}/rims/{file}")).unwrap();
            let at = crate::parse_rfc3339(at).unwrap();
            crate::rim::verify_rim(&bytes, at).unwrap().reference_values(&bytes, None, at)
        };
        let driver = set("Driver_RIM_test_no_gpu.swidtag", "2023-07-01T00:00:00Z");
        let vbios_test = set("1010_0200_882_96005E0001_test_no_gpu.swidtag", "2023-07-01T00:00:00Z");
        let vbios_prod = set("1010_0200_882_96005E0001_PROD.swidtag", "2023-07-01T00:00:00Z");
        let mut p = Policy::default();
        p.gpu.required = true;
        // No reference values: refused unless the policy says any measurement will do.
        let e = gpu_rule(&p, &[check()]).unwrap().unwrap_err();
        assert!(e.contains("no GPU reference values"), "{e}");
        p.gpu.allow_any_measurement = true;
        let ok = gpu_rule(&p, &[check()]).unwrap().unwrap();
        assert!(ok.contains("measurements NOT compared"), "{ok}");
        p.gpu.reference_values = vec![driver.clone(), vbios_test];
        let ok = gpu_rule(&p, &[check()]).unwrap().unwrap();
        assert!(ok.contains("1 GPU(s) verified") && ok.contains("measurements match driver 545.00"), "{ok}");
        // allow_any_measurement does not excuse a mismatch once there are reference values.
        p.gpu.reference_values = vec![driver, vbios_prod];
        let e = gpu_rule(&p, &[check()]).unwrap().unwrap_err();
        assert!(e.starts_with("GPU 0: VBIOS 96.00.5E.00.01: index 1 (block 2): expected"), "{e}");
        // The chip is the GPU class: another one is refused.
        p.gpu.allowed_chips = vec!["GB100".into()];
        let e = gpu_rule(&p, &[check()]).unwrap().unwrap_err();
        assert!(e.contains("GPU 0: chip GH100, the policy allows GB100"), "{e}");
        p.gpu.allowed_chips = vec!["gh100".into()];
        // Not required: reported, not trusted.
        p.gpu.required = false;
        let ok = gpu_rule(&p, &[check()]).unwrap().unwrap();
        assert!(ok.contains("NOT trusted") && ok.contains("index 9 (block 10)"), "{ok}");
    }

    #[test]
    fn revocation_findings_follow_the_policy() {
        use crate::revocation::{CertRevocation, RevocationPolicy, Status};
        let cert = |status| CertRevocation { certificate: "BROM".into(), status };
        let good = [cert(Status::Good("CRL".into())), cert(Status::Good("OCSP".into()))];
        let partial = [cert(Status::Good("CRL".into())), cert(Status::Unknown("no CRL".into()))];
        let revoked = [cert(Status::Revoked("CRL of ICA".into())), cert(Status::Good("OCSP".into()))];
        for policy in [RevocationPolicy::Require, RevocationPolicy::IfPresent] {
            let (problems, note) = revocation_findings(policy, &good);
            assert!(problems.is_empty() && note == "revocation checked for 2 certificates", "{note}");
            let (problems, _) = revocation_findings(policy, &revoked);
            assert_eq!(problems, ["certificate BROM is revoked: CRL of ICA"]);
        }
        let (problems, note) = revocation_findings(RevocationPolicy::IfPresent, &partial);
        assert!(problems.is_empty() && note.contains("1 of 2 certificates (NOT for the rest"), "{note}");
        let (problems, _) = revocation_findings(RevocationPolicy::Require, &partial);
        assert_eq!(problems, ["the policy requires revocation status; BROM: no CRL"]);
        let (problems, note) = revocation_findings(RevocationPolicy::Skip, &revoked);
        assert!(problems.is_empty() && note.contains("skip"));
    }
}
