//! Certificates from outside: a GHCB certificate table (auxblob / extended
//! report), PEM or DER certificate files, and the chain they must form for the
//! real Milan report.
#![no_main]

use cocoon_attestation::{sev_guest, snp};
use libfuzzer_sys::fuzz_target;

const REPORT: &[u8] = include_bytes!("../../attestation/tests/data/milan-report.bin");

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = sev_guest::parse_cert_table(data) {
        let _ = snp::verify_report(REPORT, &certs, 1_782_864_000);
    }
    if let Ok(certs) = snp::certificates_from_pem_or_der(data) {
        let _ = snp::verify_report(REPORT, &certs, 1_782_864_000);
    }
});
