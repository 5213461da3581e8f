//! Revocation of GPU chain certificates from cached CRLs and OCSP responses,
//! on a test chain shaped like NVIDIA's with collateral made by openssl
//! (`tests/data/revocation/make.sh`), and on a real H100 chain.

use cocoon_attestation::nvidia::{chain_from_pem, chain_revocation};
use cocoon_attestation::revocation::{CertRevocation, RevocationCollateral, Status};

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// An hour after the data was made: every item is current then.
fn soon() -> u64 {
    String::from_utf8(data("revocation/generated-at")).unwrap().trim().parse::<u64>().unwrap() + 3600
}

fn collateral(files: &[&str]) -> RevocationCollateral {
    let mut c = RevocationCollateral::default();
    for f in files {
        c.add(&data(&format!("revocation/{f}"))).unwrap();
    }
    c
}

fn statuses(chain: &str, files: &[&str], at: u64) -> Vec<CertRevocation> {
    chain_revocation(&chain_from_pem(&data(&format!("revocation/{chain}"))).unwrap(), &collateral(files), at).unwrap()
}

fn names(s: &[CertRevocation]) -> Vec<&str> {
    s.iter().map(|c| c.certificate.as_str()).collect()
}

fn good(s: &CertRevocation, by: &str) -> bool {
    matches!(&s.status, Status::Good(d) if d.contains(by))
}

fn unknown(s: &CertRevocation, why: &str) -> bool {
    matches!(&s.status, Status::Unknown(d) if d.contains(why))
}

#[test]
fn crls_of_each_issuer_cover_the_chain_but_its_root_and_device_made_leaf() {
    let s = statuses("chain.pem", &["crl-root.der", "crl-identity.der", "crl-ica.der"], soon());
    assert_eq!(names(&s), ["Test GH100 A01 GSP BROM", "Test GH100 Provisioner ICA 1", "Test GH100 Identity"]);
    assert!(good(&s[0], "the CRL of Test GH100 Provisioner ICA 1, current to"), "{s:?}");
    assert!(good(&s[1], "the CRL of Test GH100 Identity"), "{s:?}");
    assert!(good(&s[2], "the CRL of Test Device Identity CA"), "{s:?}");
    // The device listed in its issuer's CRL is revoked.
    let s = statuses("revoked-chain.pem", &["crl-ica.der"], soon());
    assert!(matches!(&s[0].status, Status::Revoked(d) if d.contains("lists it as revoked since")), "{s:?}");
    // Without collateral nothing is known.
    let s = statuses("chain.pem", &[], soon());
    assert!(s.iter().all(|c| unknown(c, "no CRL or OCSP response for it")), "{s:?}");
}

#[test]
fn ocsp_answers_from_the_issuer_or_its_delegated_responder() {
    let s = statuses("chain.pem", &["ocsp-device-good.der"], soon());
    assert!(good(&s[0], "OCSP (CN=Test GH100 Provisioner ICA 1), current to"), "{s:?}");
    assert!(unknown(&s[1], "no CRL or OCSP response"), "{s:?}");
    let s = statuses("chain.pem", &["ocsp-device-delegated.der"], soon());
    assert!(good(&s[0], "OCSP (CN=Test OCSP responder for ICA 1)"), "{s:?}");
    let s = statuses("revoked-chain.pem", &["ocsp-device-revoked.der"], soon());
    assert!(matches!(&s[0].status, Status::Revoked(d) if d.contains("revoked since")), "{s:?}");
    // A good answer for one device says nothing about another.
    let s = statuses("revoked-chain.pem", &["ocsp-device-good.der"], soon());
    assert!(unknown(&s[0], "no CRL or OCSP response"), "{s:?}");
    // A revoked answer wins over a good one.
    let s = statuses("revoked-chain.pem", &["ocsp-device-revoked.der", "crl-ica-expiring.der"], soon());
    assert!(matches!(s[0].status, Status::Revoked(_)), "{s:?}");
}

#[test]
fn collateral_counts_only_while_current_and_only_when_its_signature_verifies() {
    let later = soon() + 2 * 24 * 3600;
    let s = statuses("chain.pem", &["ocsp-device-expiring.der", "crl-ica-expiring.der"], later);
    assert!(unknown(&s[0], "verification time"), "{s:?}");
    assert!(unknown(&s[0], "outside it"), "{s:?}");
    let s = statuses("chain.pem", &["crl-ica.der"], soon() - 2 * 3600);
    assert!(unknown(&s[0], "is current from"), "{s:?}");
    // A CRL or OCSP response with a time changed by a second no longer verifies.
    for file in ["crl-ica.der", "ocsp-device-good.der"] {
        let mut bytes = data(&format!("revocation/{file}"));
        let z = bytes.iter().position(|b| *b == b'Z').unwrap();
        bytes[z - 1] ^= 1;
        let mut c = RevocationCollateral::default();
        c.add(&bytes).unwrap();
        let chain = chain_from_pem(&data("revocation/chain.pem")).unwrap();
        let s = chain_revocation(&chain, &c, soon()).unwrap();
        assert!(unknown(&s[0], "not signed by") || unknown(&s[0], "signed neither"), "{file}: {s:?}");
    }
    // A CRL that is not its issuer's does not answer for it.
    let s = statuses("chain.pem", &["crl-root.der"], soon());
    assert!(unknown(&s[0], "no CRL or OCSP response"), "{s:?}");
}

#[test]
fn collateral_files_are_pem_or_der_crls_and_ocsp_responses() {
    let mut c = RevocationCollateral::default();
    let pem = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64_lines(&data("revocation/crl-ica.der"))
    );
    c.add(pem.as_bytes()).unwrap();
    c.add(&data("revocation/ocsp-device-good.der")).unwrap();
    assert_eq!((c.crls.len(), c.ocsp_responses.len()), (1, 1));
    assert!(c.add(b"garbage").unwrap_err().contains("neither a DER CRL nor a DER OCSP response"));
    assert!(
        c.add(b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
            .unwrap_err()
            .contains("expected X509 CRL")
    );
    assert!(c.add(&data("revocation/root.pem")).is_err());
}

fn base64_lines(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn a_real_h100_chain_lists_the_certificates_nvidia_can_revoke() {
    let chain = chain_from_pem(&data("gpu/nvtrust-hopper/hopperCertChain.txt")).unwrap();
    let s = chain_revocation(&chain, &RevocationCollateral::default(), 1_800_000_000).unwrap();
    assert_eq!(names(&s), ["GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity"]);
    // The test CRLs are not NVIDIA's.
    let s = chain_revocation(&chain, &collateral(&["crl-root.der", "crl-ica.der"]), soon()).unwrap();
    assert!(s.iter().all(|c| matches!(c.status, Status::Unknown(_))), "{s:?}");
}
