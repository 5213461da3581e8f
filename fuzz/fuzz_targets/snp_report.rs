//! An SEV-SNP report from outside, verified with the real Milan certificates.
#![no_main]

use std::sync::OnceLock;

use cocoon_attestation::snp;
use libfuzzer_sys::fuzz_target;

fn certs() -> &'static Vec<Vec<u8>> {
    static C: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    C.get_or_init(|| {
        let mut c = snp::certificates_from_pem_or_der(include_bytes!("../../attestation/tests/data/milan-vcek.pem")).unwrap();
        c.extend(snp::certificates_from_pem_or_der(include_bytes!("../../attestation/tests/data/milan-ask.pem")).unwrap());
        c
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = snp::verify_report(data, certs(), 1_782_864_000);
});
