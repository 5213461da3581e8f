//! The real hardware samples in `tests/data` (see PROVENANCE.md): verification,
//! known values, and a tamper matrix over every signed region.

use cocoon_attestation::parse_rfc3339;
use cocoon_attestation::roots::AmdGeneration;
use cocoon_attestation::snp;
use cocoon_attestation::tdx::{self, TdxCollateral};

const QUOTE: &[u8] = include_bytes!("data/dcap-sample-quote.bin");
const COLLATERAL: &[u8] = include_bytes!("data/dcap-sample-collateral.json");
const SNP_REPORT: &[u8] = include_bytes!("data/milan-report.bin");
const ASK_PEM: &[u8] = include_bytes!("data/milan-ask.pem");
const VCEK_PEM: &[u8] = include_bytes!("data/milan-vcek.pem");

fn tdx_time() -> u64 {
    parse_rfc3339("2025-06-20T00:00:00Z").unwrap()
}

fn snp_time() -> u64 {
    parse_rfc3339("2026-07-01T00:00:00Z").unwrap()
}

fn collateral() -> TdxCollateral {
    TdxCollateral::from_json(COLLATERAL).unwrap()
}

fn snp_certs() -> Vec<Vec<u8>> {
    let mut c = snp::certificates_from_pem_or_der(VCEK_PEM).unwrap();
    c.extend(snp::certificates_from_pem_or_der(ASK_PEM).unwrap());
    c
}

fn tdx_err(quote: &[u8], c: &TdxCollateral, at: u64) -> String {
    tdx::verify_quote(quote, c, at).expect_err("must be rejected").to_string()
}

fn snp_err(report: &[u8], certs: &[Vec<u8>], at: u64) -> String {
    snp::verify_report(report, certs, at).expect_err("must be rejected").to_string()
}

#[test]
fn tdx_fixture_verifies_with_its_known_values() {
    let r = tdx::verify_quote(QUOTE, &collateral(), tdx_time()).unwrap();
    assert_eq!(r.quote_version, 4);
    assert_eq!(hex::encode(r.td_attributes), "0000001000000000");
    assert!(!r.debug());
    assert!(hex::encode(r.mrtd).starts_with("91eb2b44d141d4ec"));
    assert!(hex::encode(r.rtmr0).starts_with("44c0197b39157fdd"));
    assert_eq!(r.rtmr3, [0; 48]);
    assert!(hex::encode(r.report_data).starts_with("9a9d48e7f6799642"));
    assert_eq!(r.tcb_status, "UpToDate");
    assert_eq!(tdx::collateral_key(QUOTE).unwrap(), ("B0C06F000000".to_string(), "platform"));
}

#[test]
fn snp_fixture_verifies_through_the_pinned_milan_ark() {
    let r = snp::verify_report(SNP_REPORT, &snp_certs(), snp_time()).unwrap();
    let mut want_data = b"attest-test-fixture-2026".to_vec();
    want_data.resize(64, 0);
    assert_eq!(r.report_data.to_vec(), want_data);
    assert_eq!(
        hex::encode(r.measurement),
        "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d"
    );
    assert_eq!(hex::encode(r.host_data), "783f0057820acb99249af56cc3b07b4e8d80f65183167cba9cf437bb680f742f");
    assert_eq!(r.signing_key, "VCEK");
    assert_eq!(r.generation.name(), "Milan");
    assert!(r.reported_tcb_behind_current, "the fixture's reported TCB is out of date");
    assert!(!r.policy.debug_allowed);
    // Without the ASK, AMD's published Milan ASK (pinned with the ARK) completes the chain.
    let vcek_only = snp::certificates_from_pem_or_der(VCEK_PEM).unwrap();
    assert_eq!(snp::verify_report(SNP_REPORT, &vcek_only, snp_time()).unwrap(), r);
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}

fn pem_offset(quote: &[u8]) -> usize {
    quote.windows(27).position(|w| w == b"-----BEGIN CERTIFICATE-----").unwrap()
}

#[test]
fn tdx_tamper_matrix() {
    let c = collateral();
    let t = tdx_time();
    let pem = pem_offset(QUOTE);
    const QUOTE_SIG: &str = "tdx evidence did not verify: ISV enclave report signature is invalid";
    const QE_SIG: &str = "tdx evidence did not verify: Signature is invalid for qe_report in quote";
    // One flipped bit in each signed region of the quote, and the error it must give.
    let cases = [
        ("header user data", 30, QUOTE_SIG),
        ("body MRTD", 48 + 136, QUOTE_SIG),
        ("body report data", 48 + 520, QUOTE_SIG),
        ("quote signature", 640, QUOTE_SIG),
        ("attestation key", 720, "tdx evidence did not verify: QE report hash mismatch"),
        ("QE report", 800, QE_SIG),
        ("QE report signature", 1160, QE_SIG),
        ("PCK leaf certificate", pem + 400, "Failed to verify certificate chain: InvalidSignatureForPublicKey"),
    ];
    for (what, at, want) in cases {
        let e = tdx_err(&flipped(QUOTE, at), &c, t);
        assert!(e.contains(want), "{what}: {e}");
    }
    let mut sgx = QUOTE.to_vec();
    sgx[0] = 3;
    assert!(tdx_err(&sgx, &c, t).starts_with("tdx report malformed"));
    assert_eq!(tdx_err(&QUOTE[..1000], &c, t), "tdx report malformed: Not enough data to fill buffer");
    assert!(tdx_err(&vec![0; tdx::MAX_QUOTE + 1], &c, t).contains("the limit is 65536"));

    // Collateral: changed TCB info, QE identity and CRL, a swapped signing chain.
    let mut tcb = c.clone();
    tcb.tcb_info = tcb.tcb_info.replacen("\"tcbType\":0", "\"tcbType\":1", 1);
    assert_ne!(tcb.tcb_info, c.tcb_info);
    assert!(tdx_err(QUOTE, &tcb, t).contains("Signature is invalid for tcb_info"));
    let mut qe = c.clone();
    qe.qe_identity_signature[5] ^= 1;
    assert!(tdx_err(QUOTE, &qe, t).contains("Signature is invalid for qe_identity"));
    let mut crl = c.clone();
    let n = crl.pck_crl.len() / 2;
    crl.pck_crl[n] ^= 1;
    assert!(tdx_err(QUOTE, &crl, t).contains("InvalidCrlSignatureForPublicKey"));
    let mut swapped = c.clone();
    swapped.tcb_info_issuer_chain = c.pck_crl_issuer_chain.clone();
    assert!(tdx_err(QUOTE, &swapped, t).contains("Failed to verify certificate chain: CaUsedAsEndEntity"));

    // Collateral used outside its validity.
    for at in ["2025-07-20T00:00:00Z", "2025-06-18T00:00:00Z"] {
        let e = tdx_err(QUOTE, &c, parse_rfc3339(at).unwrap());
        assert_eq!(
            e,
            format!(
                "tdx collateral: collateral is valid from 2025-06-19T10:32:27Z to 2025-07-19T10:16:03Z; \
                 verification time {at} is outside it"
            )
        );
    }
}

#[test]
fn snp_tamper_matrix() {
    let certs = snp_certs();
    let t = snp_time();
    const SIG: &str = "sev-snp evidence did not verify: the report signature does not verify with the SEV-VCEK key";
    let cases = [
        ("header policy", 0x08, SIG),
        ("body report data", 0x50, SIG),
        ("body measurement", 0x90, SIG),
        ("body host data", 0xC0, SIG),
        ("reserved bytes", 0x1F9, "sev-snp report malformed: Skipped bytes were expected to be zeroed."),
        ("reported TCB", 0x186, "SEV-VCEK certificate is for SNP SPL 23, the report's reported TCB has 22"),
        ("chip id", 0x1A0, "VCEK is for chip 38d174589d2dff97…, the report is from chip 39d174589d2dff97…"),
        ("signature r", 0x2A0 + 3, SIG),
        ("signature padding", 0x2A0 + 60, "report signature component is wider than 384 bits"),
        ("signature s", 0x2E8 + 3, SIG),
    ];
    for (what, at, want) in cases {
        let e = snp_err(&flipped(SNP_REPORT, at), &certs, t);
        assert!(e.contains(want), "{what}: {e}");
    }
    let (vcek, ask) = (certs[0].clone(), certs[1].clone());
    let e = snp_err(SNP_REPORT, &[flipped(&vcek, vcek.len() / 2), ask.clone()], t);
    assert!(e.contains("the SEV-VCEK certificate is not signed by the Milan intermediate (SEV-Milan)"), "{e}");
    let e = snp_err(SNP_REPORT, &[vcek.clone(), flipped(&ask, ask.len() / 2)], t);
    assert!(e.contains("intermediate certificate \"SEV-Milan\" does not chain to a pinned AMD root"), "{e}");
    // Swapped certificates: the ASK in the VCEK's place, and another generation's ASK.
    let e = snp_err(SNP_REPORT, std::slice::from_ref(&ask), t);
    assert!(e.contains("no SEV-VCEK certificate among the 1 given"), "{e}");
    let genoa = snp::certificates_from_pem_or_der(AmdGeneration::Genoa.ask_pem()).unwrap();
    let e = snp_err(SNP_REPORT, &[vcek.clone(), genoa[0].clone()], t);
    assert!(e.contains("not signed by the Genoa intermediate (SEV-Genoa)"), "{e}");
    // Outside the VCEK's validity, short input, no certificates.
    let e = snp_err(SNP_REPORT, &certs, parse_rfc3339("2026-01-01T00:00:00Z").unwrap());
    assert!(e.contains("certificate SEV-VCEK is valid from 2026-06-17T01:05:04Z to 2033-06-17T01:05:04Z"), "{e}");
    assert_eq!(
        snp_err(&SNP_REPORT[..1000], &certs, t),
        "sev-snp report malformed: report is 1000 bytes, expected 1184"
    );
    assert!(snp_err(SNP_REPORT, &[], t).contains("no SEV-VCEK certificate among the 0 given"));
}
