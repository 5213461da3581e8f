//! Policy decisions on the real hardware samples: each refusal names its rule
//! and the expected and actual values. Report fields that no sample has (a
//! debug TD) are set on the verified report, which is what the policy sees.

use serde_bytes::ByteBuf;

use cocoon_attestation::reference::ReferenceValues;
use cocoon_attestation::snp::{self, SnpTcb};
use cocoon_attestation::tdx::{self, TdxCollateral};
use cocoon_attestation::verify::policy_rules;
use cocoon_attestation::{Endorsements, HardwareReport, Policy, RuleOutcome, parse_rfc3339, verify_evidence};
use cocoon_protocol::evidence::{CLAIMS_VERSION, EVIDENCE_VERSION};
use cocoon_protocol::{Claims, EvidenceDocument, ModelClaim, Platform};

const QUOTE: &[u8] = include_bytes!("data/dcap-sample-quote.bin");
const COLLATERAL: &[u8] = include_bytes!("data/dcap-sample-collateral.json");
const SNP_REPORT: &[u8] = include_bytes!("data/milan-report.bin");
const VCEK_PEM: &[u8] = include_bytes!("data/milan-vcek.pem");

const MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const SNP_MEASUREMENT: &str =
    "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d";

fn tdx_time() -> u64 {
    parse_rfc3339("2025-06-20T00:00:00Z").unwrap()
}

fn snp_time() -> u64 {
    parse_rfc3339("2026-07-01T00:00:00Z").unwrap()
}

fn claims(platform: Platform, issued_at: u64) -> Claims {
    Claims {
        version: CLAIMS_VERSION,
        platform,
        ohttp_keys: ByteBuf::from(vec![]),
        receipt_key: ByteBuf::from(vec![2; 32]),
        model: Some(ModelClaim { id: "m".into(), digest: ByteBuf::from(vec![0xab; 32]) }),
        config_digest: ByteBuf::from(vec![0xcd; 32]),
        image_version: "t".into(),
        issued_at,
        prices: None,
        payout_address: None,
        capacity: None,
    }
}

fn tdx_report() -> HardwareReport {
    HardwareReport::Tdx(tdx::verify_quote(QUOTE, &TdxCollateral::from_json(COLLATERAL).unwrap(), tdx_time()).unwrap())
}

fn snp_report() -> HardwareReport {
    let certs = snp::certificates_from_pem_or_der(VCEK_PEM).unwrap();
    HardwareReport::SevSnp(snp::verify_report(SNP_REPORT, &certs, snp_time()).unwrap())
}

fn reference(json: String) -> ReferenceValues {
    ReferenceValues::from_json(json.as_bytes()).unwrap()
}

fn tdx_policy() -> Policy {
    Policy { reference_values: vec![reference(format!(r#"{{"tdx":{{"mrtd":"{MRTD}"}}}}"#))], ..Policy::default() }
}

fn snp_policy() -> Policy {
    Policy {
        reference_values: vec![reference(format!(r#"{{"sev_snp":{{"measurement":"{SNP_MEASUREMENT}"}}}}"#))],
        ..Policy::default()
    }
}

fn failures(rules: &[RuleOutcome]) -> Vec<(&'static str, String)> {
    rules.iter().filter(|r| !r.passed).map(|r| (r.rule, r.detail.clone())).collect()
}

fn decide(policy: &Policy, hw: &HardwareReport, platform: Platform, at: u64) -> Vec<(&'static str, String)> {
    failures(&policy_rules(policy, &claims(platform, at), hw, false, at, &[]))
}

#[test]
fn matching_reference_values_pass_on_both_platforms() {
    assert_eq!(decide(&tdx_policy(), &tdx_report(), Platform::Tdx, tdx_time()), []);
    assert_eq!(decide(&snp_policy(), &snp_report(), Platform::SevSnp, snp_time()), []);
}

#[test]
fn measurement_not_allowed() {
    let other = "00".repeat(48);
    let p = Policy {
        reference_values: vec![reference(format!(r#"{{"name":"image 0.2","tdx":{{"mrtd":"{other}"}}}}"#))],
        ..Policy::default()
    };
    let f = decide(&p, &tdx_report(), Platform::Tdx, tdx_time());
    assert_eq!(f, [("reference_values", format!("set 1 (image 0.2): tdx.mrtd: expected {other}, found {MRTD}"))]);
    let p = Policy {
        reference_values: vec![reference(format!(r#"{{"sev_snp":{{"measurement":"{other}"}}}}"#))],
        ..Policy::default()
    };
    let f = decide(&p, &snp_report(), Platform::SevSnp, snp_time());
    assert_eq!(f[0].1, format!("set 1: sev_snp.measurement: expected {other}, found {SNP_MEASUREMENT}"));
    // The config digest in the reference set must be the claims' too.
    let p = Policy {
        reference_values: vec![reference(format!(
            r#"{{"config_digest":"{}","tdx":{{"mrtd":"{MRTD}"}}}}"#,
            "11".repeat(32)
        ))],
        ..Policy::default()
    };
    let f = decide(&p, &tdx_report(), Platform::Tdx, tdx_time());
    assert!(f[0].1.contains("config_digest: expected 1111"), "{f:?}");
    // No reference values at all is a refusal unless the policy allows any measurement.
    let f = decide(&Policy::default(), &tdx_report(), Platform::Tdx, tdx_time());
    assert!(f[0].1.starts_with("the policy has no reference values for this platform"), "{f:?}");
    let any = Policy { allow_any_measurement: true, ..Policy::default() };
    assert_eq!(decide(&any, &tdx_report(), Platform::Tdx, tdx_time()), []);
}

#[test]
fn tcb_below_minimum_and_status_not_allowed() {
    let mut p = snp_policy();
    p.sev_snp.min_reported_tcb = Some(SnpTcb { bootloader: 4, tee: 0, snp: 24, microcode: 213, fmc: None });
    let f = decide(&p, &snp_report(), Platform::SevSnp, snp_time());
    assert_eq!(f, [("sev_snp.min_reported_tcb", "reported TCB below the minimum: snp 23 < 24".to_string())]);
    p.sev_snp.min_reported_tcb = Some(SnpTcb { bootloader: 4, tee: 0, snp: 23, microcode: 213, fmc: None });
    assert_eq!(decide(&p, &snp_report(), Platform::SevSnp, snp_time()), []);

    let mut p = tdx_policy();
    p.tdx.min_tee_tcb_svn = Some(vec![7, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let f = decide(&p, &tdx_report(), Platform::Tdx, tdx_time());
    assert_eq!(f, [("tdx.min_tee_tcb_svn", "component 0: 6 < 7".to_string())]);
    let mut p = tdx_policy();
    let HardwareReport::Tdx(mut r) = tdx_report() else { unreachable!() };
    r.tcb_status = "OutOfDate".into();
    let f = decide(&p, &HardwareReport::Tdx(r.clone()), Platform::Tdx, tdx_time());
    assert_eq!(f, [("tdx.allowed_tcb_statuses", "expected one of [\"UpToDate\"], found OutOfDate".to_string())]);
    p.tdx.allowed_tcb_statuses.push("OutOfDate".into());
    assert_eq!(decide(&p, &HardwareReport::Tdx(r), Platform::Tdx, tdx_time()), []);
}

#[test]
fn debug_guests_only_under_a_development_policy() {
    let HardwareReport::Tdx(mut r) = tdx_report() else { unreachable!() };
    r.td_attributes[0] |= 1;
    let hw = HardwareReport::Tdx(r);
    let f = decide(&tdx_policy(), &hw, Platform::Tdx, tdx_time());
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, "debug");
    assert!(f[0].1.starts_with("TD attributes have the DEBUG bit"), "{f:?}");
    let dev = Policy { development: true, ..tdx_policy() };
    assert_eq!(decide(&dev, &hw, Platform::Tdx, tdx_time()), []);

    let HardwareReport::SevSnp(mut r) = snp_report() else { unreachable!() };
    r.policy.debug_allowed = true;
    r.policy.migrate_ma_allowed = true;
    r.vmpl = 2;
    let f = decide(&snp_policy(), &HardwareReport::SevSnp(r), Platform::SevSnp, snp_time());
    let rules: Vec<_> = f.iter().map(|(r, _)| *r).collect();
    assert_eq!(rules, ["debug", "sev_snp.allow_migration_agent", "sev_snp.max_vmpl"]);
    assert_eq!(f[2].1, "expected VMPL at most 0, found 2");
}

#[test]
fn stale_cached_evidence_and_missing_nonce() {
    let issued = tdx_time() - 2 * 86_400;
    let f =
        failures(&policy_rules(&tdx_policy(), &claims(Platform::Tdx, issued), &tdx_report(), false, tdx_time(), &[]));
    assert_eq!(
        f,
        [("max_evidence_age_secs", "claims issued 172800 s ago, the policy allows at most 86400 s".to_string())]
    );
    let p = Policy { require_nonce: true, ..tdx_policy() };
    let f = decide(&p, &tdx_report(), Platform::Tdx, tdx_time());
    assert_eq!(f[0].0, "require_nonce");
}

#[test]
fn gpu_evidence_that_does_not_verify_is_never_trusted() {
    let gpu = cocoon_protocol::GpuEvidence {
        vendor: "nvidia".into(),
        architecture: "HOPPER".into(),
        cc_mode: "on".into(),
        driver_version: "570.00".into(),
        vbios_version: "96.00".into(),
        nonce: ByteBuf::from(vec![0; 32]),
        attestation_report: ByteBuf::from(vec![1; 16]),
        certificate_chain: vec![],
    };
    let doc = cocoon_protocol::EvidenceDocument {
        version: cocoon_protocol::evidence::EVIDENCE_VERSION,
        platform: Platform::Tdx,
        claims: ByteBuf::from(vec![]),
        nonce: None,
        quote_or_report: ByteBuf::from(vec![]),
        certificates: None,
        event_log: None,
        gpu: Some(vec![gpu]),
        nonce_proof: None,
    };
    let checks = cocoon_attestation::verify::check_gpus(&doc, tdx_time(), &Default::default());
    let c = claims(Platform::Tdx, tdx_time());
    let ok = policy_rules(&tdx_policy(), &c, &tdx_report(), false, tdx_time(), &checks);
    let g = ok.iter().find(|r| r.rule == "gpu").unwrap();
    assert!(g.passed && g.detail.contains("NOT trusted"), "{g:?}");
    let mut p = tdx_policy();
    p.gpu.required = true;
    let f = failures(&policy_rules(&p, &c, &tdx_report(), false, tdx_time(), &checks));
    assert!(f[0].1.contains("GPU 0: GPU report request code: expected 0xe0"), "{f:?}");
    let f = failures(&policy_rules(&p, &c, &tdx_report(), false, tdx_time(), &[]));
    assert!(f[0].1.contains("the worker sent none"), "{f:?}");
}

/// A genuine quote whose report data is not SHA-512 of the claims it travels with.
#[test]
fn hardware_report_that_does_not_bind_the_claims_is_refused() {
    let doc = |platform, quote: &[u8], certs| {
        EvidenceDocument {
            version: EVIDENCE_VERSION,
            platform,
            claims: ByteBuf::from(claims(platform, tdx_time()).encode()),
            nonce: None,
            quote_or_report: ByteBuf::from(quote.to_vec()),
            certificates: certs,
            event_log: None,
            gpu: None,
            nonce_proof: None,
        }
        .encode()
    };
    let endorsements =
        Endorsements { tdx_collateral: Some(TdxCollateral::from_json(COLLATERAL).unwrap()), ..Endorsements::default() };
    let e = verify_evidence(&doc(Platform::Tdx, QUOTE, None), &tdx_policy(), None, tdx_time(), &endorsements)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("report data does not bind the claims: expected "), "{e}");
    assert!(e.contains("report has 9a9d48e7f6799642"), "{e}");
    let vcek = snp::certificates_from_pem_or_der(VCEK_PEM).unwrap();
    let certs = Some(vcek.into_iter().map(ByteBuf::from).collect());
    let e = verify_evidence(
        &doc(Platform::SevSnp, SNP_REPORT, certs),
        &snp_policy(),
        None,
        snp_time(),
        &Endorsements::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("report has 6174746573742d74"), "{e}");
    // Without collateral a TDX quote cannot be judged at all.
    let e =
        verify_evidence(&doc(Platform::Tdx, QUOTE, None), &tdx_policy(), None, tdx_time(), &Endorsements::default())
            .unwrap_err()
            .to_string();
    assert_eq!(e, "tdx collateral: none given: pass a collateral file or a PCCS URL");
}
