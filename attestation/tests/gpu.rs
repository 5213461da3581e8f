//! NVIDIA GPU attestation reports: the real samples in `tests/data/gpu`
//! (see its PROVENANCE.md) verified, and refused once altered.

use base64::Engine as _;
use cocoon_attestation::nvidia::{GpuArchitecture, GpuError, chain_from_pem, verify_gpu_report};
use cocoon_attestation::spdm::{GpuReport, SpdmError};

/// 2027-01-15: every device certificate in the samples is valid then (they run to 9999).
const AT: u64 = 1_800_000_000;
const SHARED_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn data(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/gpu/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

struct Sample {
    name: &'static str,
    report: Vec<u8>,
    chain: Vec<Vec<u8>>,
    nonce: [u8; 32],
}

fn hex_file(path: &str) -> Vec<u8> {
    hex::decode(String::from_utf8(data(path)).unwrap().trim()).unwrap()
}

fn nonce(h: &str) -> [u8; 32] {
    hex::decode(h).unwrap().try_into().unwrap()
}

fn samples() -> Vec<Sample> {
    let file = |name, report: &str, chain: &str, n: &str| Sample {
        name,
        report: hex_file(report),
        chain: chain_from_pem(&data(chain)).unwrap(),
        nonce: nonce(n),
    };
    let json: serde_json::Value = serde_json::from_slice(&data("sdk-evidence/hopper_evidence.json")).unwrap();
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
    vec![
        file(
            "nvtrust-hopper",
            "nvtrust-hopper/hopperAttestationReport.txt",
            "nvtrust-hopper/hopperCertChain.txt",
            SHARED_NONCE,
        ),
        file(
            "nvtrust-2023",
            "nvtrust-2023/attestationReport.txt",
            "nvtrust-2023/gpuAkCertChain.txt",
            "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e",
        ),
        file(
            "sdk-blackwell",
            "sdk-blackwell/blackwellAttestationReport.txt",
            "sdk-blackwell/blackwellCertChain.txt",
            SHARED_NONCE,
        ),
        file(
            "sdk-hopper-expired",
            "sdk-hopper-expired/hopperAttestationReportExpired.txt",
            "sdk-hopper-expired/hopperCertChainExpired.txt",
            SHARED_NONCE,
        ),
        Sample {
            name: "sdk-evidence",
            report: b64(&json[0]["evidence"]),
            chain: chain_from_pem(&b64(&json[0]["certificate"])).unwrap(),
            nonce: nonce(json[0]["nonce"].as_str().unwrap()),
        },
    ]
}

#[test]
fn every_sample_verifies_with_its_known_facts() {
    // name, raw bytes, architecture, driver, VBIOS, board id, leaf serial, has FWID
    let facts = [
        (
            "nvtrust-hopper",
            4117,
            GpuArchitecture::Hopper,
            "550.90.07",
            "96.00.9F.00.01",
            "b1030000",
            "53c22ba15e5d68088282da074ed9fb37aa585771",
            true,
        ),
        (
            "nvtrust-2023",
            4049,
            GpuArchitecture::Hopper,
            "545.00",
            "96.00.5E.00.01",
            "b1030000",
            "50948c723fc935c7bd14b7c22833dfbe1dfd1145",
            false,
        ),
        (
            "sdk-blackwell",
            4121,
            GpuArchitecture::Blackwell,
            "575.32",
            "97.00.88.00.0F",
            "6f060000",
            "530d7c3cbc31b7645ccfc78b123963978e709059",
            true,
        ),
        (
            "sdk-hopper-expired",
            4118,
            GpuArchitecture::Hopper,
            "570.124.03",
            "96.00.5E.00.04",
            "a1040000",
            "59dd857ac4d71cb0b64e3d3bd133756f97e394dd",
            true,
        ),
        (
            "sdk-evidence",
            4274,
            GpuArchitecture::Hopper,
            "590.12",
            "96.00.A5.00.01",
            "37040000",
            "72ca27239f0e96f6535f73af84eb1542471a17b2",
            true,
        ),
    ];
    for (s, f) in samples().iter().zip(facts) {
        assert_eq!(s.name, f.0);
        assert_eq!(s.report.len(), f.1, "{}", s.name);
        let v = verify_gpu_report(&s.report, &s.chain, &s.nonce, AT).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        assert_eq!(v.architecture, f.2, "{}", s.name);
        assert_eq!(v.driver_version.as_deref(), Some(f.3), "{}", s.name);
        assert_eq!(v.vbios_version.as_deref(), Some(f.4), "{}", s.name);
        assert_eq!(v.board_id.as_deref(), Some(f.5), "{}", s.name);
        assert_eq!(v.leaf_serial, f.6, "{}", s.name);
        assert_eq!(v.fwid.is_some(), f.7, "{}", s.name);
        assert_eq!(v.measurements.len(), 64, "{}", s.name);
        assert!(v.measurements.iter().all(|(_, m)| m.len() == 96), "{}: 48-byte SHA-384 digests", s.name);
        let r = GpuReport::parse(&s.report).unwrap();
        assert_eq!(r.opaque.nvdec0_status, Some(0x55), "{}", s.name);
        assert_eq!(r.spdm_version, 0x11);
    }
    let hopper = &samples()[0];
    let r = GpuReport::parse(&hopper.report).unwrap();
    assert_eq!(
        (r.opaque.project.as_deref(), r.opaque.project_sku.as_deref(), r.opaque.chip_sku.as_deref()),
        (Some("1010"), Some("0200"), Some("882"))
    );
}

fn sample(name: &str) -> Sample {
    samples().into_iter().find(|s| s.name == name).unwrap()
}

#[test]
fn a_report_for_another_nonce_is_refused() {
    let s = sample("nvtrust-hopper");
    let e = verify_gpu_report(&s.report, &s.chain, &[0; 32], AT).unwrap_err();
    assert!(matches!(e, GpuError::Nonce { .. }), "{e}");
    // The nonce bytes themselves altered: the request no longer matches what was signed.
    let mut bad = s.report.clone();
    bad[4] ^= 1;
    let mut n = s.nonce;
    n[0] ^= 1;
    assert!(matches!(verify_gpu_report(&bad, &s.chain, &n, AT), Err(GpuError::Signature(_))));
}

#[test]
fn a_flipped_byte_in_measurements_opaque_data_or_signature_is_refused() {
    let s = sample("nvtrust-hopper");
    let parsed = GpuReport::parse(&s.report).unwrap();
    let first_digest = 37 + 8 + 7;
    let last_opaque = parsed.signed.end - 1;
    let in_signature = s.report.len() - 10;
    for (what, at) in [("measurement", first_digest), ("opaque data", last_opaque), ("signature", in_signature)] {
        let mut bad = s.report.clone();
        bad[at] ^= 0x01;
        let e = verify_gpu_report(&bad, &s.chain, &s.nonce, AT).unwrap_err();
        assert!(matches!(e, GpuError::Signature(_)), "{what}: {e}");
    }
}

#[test]
fn every_altered_certificate_and_chain_shape_is_refused() {
    let s = sample("sdk-blackwell");
    for i in 0..s.chain.len() {
        let mut chain = s.chain.clone();
        let mid = chain[i].len() / 2;
        chain[i][mid] ^= 0x01;
        let e = verify_gpu_report(&s.report, &chain, &s.nonce, AT).unwrap_err();
        assert!(matches!(e, GpuError::Chain(_) | GpuError::Signature(_) | GpuError::Fwid(_)), "certificate {i}: {e}");
    }
    let mut reordered = s.chain.clone();
    reordered.swap(0, 1);
    let e = verify_gpu_report(&s.report, &reordered, &s.nonce, AT).unwrap_err();
    assert!(e.to_string().contains("is not signed by"), "{e}");

    let mut swapped = s.chain.clone();
    *swapped.last_mut().unwrap() = chain_from_pem(&data("roots/verifier_RIM_root.pem")).unwrap().remove(0);
    let e = verify_gpu_report(&s.report, &swapped, &s.nonce, AT).unwrap_err();
    assert!(e.to_string().contains("is not the pinned NVIDIA Device Identity CA"), "{e}");

    let e = verify_gpu_report(&s.report, &s.chain[..1], &s.nonce, AT).unwrap_err();
    assert!(e.to_string().contains("expected 2 to 8 certificates, found 1"), "{e}");
    let long: Vec<Vec<u8>> = std::iter::repeat_n(s.chain[0].clone(), 8).chain([s.chain[4].clone()]).collect();
    let e = verify_gpu_report(&s.report, &long, &s.nonce, AT).unwrap_err();
    assert!(e.to_string().contains("found 9"), "{e}");
    // Leaf and root without the intermediates: the root did not sign the leaf.
    let short = vec![s.chain[0].clone(), s.chain[4].clone()];
    let e = verify_gpu_report(&s.report, &short, &s.nonce, AT).unwrap_err();
    assert!(e.to_string().contains("is not signed by NVIDIA Device Identity CA"), "{e}");
    // Before the Blackwell chain was issued.
    let e = verify_gpu_report(&s.report, &s.chain, &s.nonce, 1_600_000_000).unwrap_err();
    assert!(e.to_string().contains("is valid from 2023-06-20"), "{e}");
}

#[test]
fn truncations_and_trailing_bytes_are_refused_without_panics() {
    for s in samples() {
        for cut in 0..s.report.len() {
            let e = GpuReport::parse(&s.report[..cut]).unwrap_err();
            assert!(
                matches!(e, SpdmError::Truncated { .. } | SpdmError::Field { .. } | SpdmError::Opaque(_)),
                "{} at {cut}: {e}",
                s.name
            );
        }
        let mut long = s.report.clone();
        long.push(0);
        assert_eq!(GpuReport::parse(&long).unwrap_err(), SpdmError::Trailing(1), "{}", s.name);
    }
}
