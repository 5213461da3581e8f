//! `make bench`: verifier cost per piece of hardware evidence (collateral and
//! certificates already cached, as a proxy has them), and evidence production
//! with the simulated producer.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cocoon_attestation::simulated::SimulatedProducer;
use cocoon_attestation::snp;
use cocoon_attestation::tdx::{self, TdxCollateral};
use cocoon_attestation::{EvidenceProducer, parse_rfc3339, report_data};

const QUOTE: &[u8] = include_bytes!("../tests/data/dcap-sample-quote.bin");
const COLLATERAL: &[u8] = include_bytes!("../tests/data/dcap-sample-collateral.json");
const SNP_REPORT: &[u8] = include_bytes!("../tests/data/milan-report.bin");
const VCEK: &[u8] = include_bytes!("../tests/data/milan-vcek.pem");
const ASK: &[u8] = include_bytes!("../tests/data/milan-ask.pem");
const GPU_REPORT: &str = include_str!("../tests/data/gpu/nvtrust-hopper/hopperAttestationReport.txt");
const GPU_CHAIN: &[u8] = include_bytes!("../tests/data/gpu/nvtrust-hopper/hopperCertChain.txt");

/// Mean time of one call of `f`, running it for about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < budget || n < 5 {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn row(what: &str, t: Duration) {
    println!("| {what} | {:.3} ms | {:.0} /s |", t.as_secs_f64() * 1e3, 1.0 / t.as_secs_f64());
}

fn main() {
    let budget = Duration::from_secs(2);
    let collateral = TdxCollateral::from_json(COLLATERAL).unwrap();
    let at_tdx = parse_rfc3339("2025-06-20T00:00:00Z").unwrap();
    let at_snp = parse_rfc3339("2026-07-01T00:00:00Z").unwrap();
    let mut certs = snp::certificates_from_pem_or_der(VCEK).unwrap();
    certs.extend(snp::certificates_from_pem_or_der(ASK).unwrap());

    println!("\n## Attestation (one core)\n");
    println!("| operation | time per call | calls per second |");
    println!("|---|---|---|");
    row(
        "TDX quote v4: verify (PCK chain + CRLs, QE, TCB info, signature), collateral cached",
        time_per_call(budget, || {
            black_box(tdx::verify_quote(black_box(QUOTE), &collateral, at_tdx).unwrap());
        }),
    );
    row(
        "TDX collateral: parse the cached JSON",
        time_per_call(budget, || {
            black_box(TdxCollateral::from_json(black_box(COLLATERAL)).unwrap());
        }),
    );
    row(
        "SNP report: verify (ARK → ASK → VCEK, TCB/chip match, signature), certificates cached",
        time_per_call(budget, || {
            black_box(snp::verify_report(black_box(SNP_REPORT), &certs, at_snp).unwrap());
        }),
    );
    let gpu_report = hex::decode(GPU_REPORT.trim()).unwrap();
    let gpu_chain = cocoon_attestation::nvidia::chain_from_pem(GPU_CHAIN).unwrap();
    let gpu_nonce: [u8; 32] = gpu_report[4..36].try_into().unwrap();
    row(
        "NVIDIA H100 report: verify (SPDM parse, 5-certificate chain to the pinned root, FWID, signature)",
        time_per_call(budget, || {
            black_box(
                cocoon_attestation::nvidia::verify_gpu_report(black_box(&gpu_report), &gpu_chain, &gpu_nonce, at_snp)
                    .unwrap(),
            );
        }),
    );
    // The per-request GPU comparison against reference values (no XML), and
    // the offline RIM verification `cocoon measure-gpu` does once per release.
    let gpu_2023 = hex::decode(include_str!("../tests/data/gpu/nvtrust-2023/attestationReport.txt").trim()).unwrap();
    let chain_2023 =
        cocoon_attestation::nvidia::chain_from_pem(include_bytes!("../tests/data/gpu/nvtrust-2023/gpuAkCertChain.txt"))
            .unwrap();
    let nonce_2023: [u8; 32] = gpu_2023[4..36].try_into().unwrap();
    let verified = cocoon_attestation::nvidia::verify_gpu_report(&gpu_2023, &chain_2023, &nonce_2023, at_snp).unwrap();
    let rim_at = cocoon_attestation::parse_rfc3339("2023-07-01T00:00:00Z").unwrap();
    let driver_rim: &[u8] = include_bytes!("../tests/data/gpu/rims/Driver_RIM_test_no_gpu.swidtag");
    let vbios_rim: &[u8] = include_bytes!("../tests/data/gpu/rims/1010_0200_882_96005E0001_test_no_gpu.swidtag");
    let sets: Vec<_> = [driver_rim, vbios_rim]
        .iter()
        .map(|f| cocoon_attestation::rim::verify_rim(f, rim_at).unwrap().reference_values(f, None, rim_at))
        .collect();
    row(
        "NVIDIA H100 measurements: compare with driver + VBIOS reference values (33 indices)",
        time_per_call(budget, || {
            black_box(cocoon_attestation::gpu_reference::compare(&sets, black_box(&verified)).unwrap());
        }),
    );
    row(
        "NVIDIA RIM (20 KB): verify XML signature (C14N 1.1) and 4-certificate chain, read (offline)",
        time_per_call(budget, || {
            black_box(cocoon_attestation::rim::verify_rim(black_box(driver_rim), rim_at).unwrap());
        }),
    );
    let producer = SimulatedProducer::new();
    let claims = vec![0x42u8; 400];
    row(
        "simulated evidence: produce (SHA-512 binding + Ed25519 signature)",
        time_per_call(budget, || {
            black_box(producer.produce(&report_data(black_box(&claims), Some(b"nonce"))).unwrap());
        }),
    );
}
