//! The NVML producer against a C stand-in for NVIDIA's library
//! (`tests/nvml_mock.c`, built here with the system's C compiler) that
//! returns a real H100 report and chain: the structures cross the FFI
//! boundary intact, the GPUs are verified before they are declared ready,
//! and a machine without the library or not in CC mode is told apart.

#![allow(unsafe_code)] // setting the environment the producer reads

use std::path::{Path, PathBuf};
use std::process::Command;

use cocoon_attestation::nvidia::{GpuArchitecture, verify_gpu_report};
use cocoon_attestation::nvml::{Nvml, attest_locally};
use cocoon_attestation::{EvidenceProducer, WithGpus, evidence_document};

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const AT: u64 = 1_800_000_000;

fn mock_library(dir: &Path) -> PathBuf {
    let out = dir.join("libnvidia-ml-mock.so");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nvml_mock.c");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(source)
        .status()
        .expect("a C compiler (cc) builds the NVML stand-in");
    assert!(status.success());
    out
}

fn set(var: &str, value: impl AsRef<std::ffi::OsStr>) {
    // SAFETY: this test binary has one test; nothing else reads the environment meanwhile.
    unsafe { std::env::set_var(var, value) };
}

#[test]
fn the_nvml_producer_returns_every_gpus_evidence_and_verifies_it_before_declaring_them_ready() {
    let dir = std::env::temp_dir().join(format!("cocoon-nvml-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gpu/nvtrust-hopper");
    let report =
        hex::decode(std::fs::read_to_string(format!("{data}/hopperAttestationReport.txt")).unwrap().trim()).unwrap();
    std::fs::write(dir.join("report.bin"), &report).unwrap();
    set("NVML_MOCK_REPORT", dir.join("report.bin"));
    set("NVML_MOCK_CHAIN", format!("{data}/hopperCertChain.txt"));
    set("NVML_MOCK_GPUS", "2");
    set("NVML_MOCK_READY", dir.join("ready"));
    set("NVML_MOCK_NONCE", dir.join("nonce"));
    let library = mock_library(&dir);

    // No library: no NVIDIA driver, not an error.
    assert!(Nvml::open(Some(&dir.join("absent.so"))).unwrap().is_none());

    let nvml = Nvml::open(Some(&library)).unwrap().expect("the stand-in loads");
    assert_eq!(nvml.gpu_count().unwrap(), 2);
    assert_eq!(nvml.cc_mode().unwrap(), "on");
    let nonce: [u8; 32] = hex::decode(NONCE).unwrap().try_into().unwrap();
    // The nonce is asked for after the CC mode is read, for that mode.
    let asked = std::cell::RefCell::new(Vec::new());
    let evidence = nvml
        .evidence(&|mode| {
            asked.borrow_mut().push(mode.to_string());
            nonce
        })
        .unwrap();
    assert_eq!(*asked.borrow(), ["on"]);
    assert_eq!(evidence.len(), 2);
    assert_eq!(std::fs::read(dir.join("nonce")).unwrap(), nonce, "the nonce reached the library");
    for e in &evidence {
        assert_eq!(e.attestation_report.as_slice(), report.as_slice());
        assert_eq!(e.certificate_chain.len(), 5);
        assert_eq!((e.architecture.as_str(), e.cc_mode.as_str()), ("HOPPER", "on"));
        assert_eq!((e.driver_version.as_str(), e.vbios_version.as_str()), ("550.90.07", "96.00.9F.00.01"));
        let chain: Vec<Vec<u8>> = e.certificate_chain.iter().map(|c| c.to_vec()).collect();
        let v = verify_gpu_report(&e.attestation_report, &chain, &nonce, AT).unwrap();
        assert_eq!(v.architecture, GpuArchitecture::Hopper);
    }
    let verified = attest_locally(&nvml, &nonce, AT).unwrap();
    assert_eq!(verified.len(), 2);
    nvml.set_ready().unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("ready")).unwrap(), "1");

    // A report for another nonce (what a replayed report would be) does not attest.
    let e = attest_locally(&nvml, &[7; 32], AT).unwrap_err().to_string();
    assert!(e.contains("GPU 0 does not attest") && e.contains("nonce"), "{e}");
    // CC off or with developer tools: a clear refusal.
    for (mode, why) in [("off", "CC mode is \"off\""), ("devtools", "CC mode is \"devtools\"")] {
        set("NVML_MOCK_CC", mode);
        let e = attest_locally(&nvml, &nonce, AT).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    set("NVML_MOCK_CC", "on");
    // No GPU, and a GPU that cannot report.
    set("NVML_MOCK_GPUS", "0");
    assert!(attest_locally(&nvml, &nonce, AT).unwrap_err().to_string().contains("NVML sees no GPU"));
    set("NVML_MOCK_GPUS", "1");
    set("NVML_MOCK_REPORT", dir.join("missing.bin"));
    let e = attest_locally(&nvml, &nonce, AT).unwrap_err().to_string();
    assert!(e.contains("GPU 0 attestation report: Not Supported"), "{e}");
    set("NVML_MOCK_REPORT", dir.join("report.bin"));

    // In a document, the GPUs are asked with the nonce derived from that very
    // document's report data, so the binding check finds exactly this nonce.
    let producer = WithGpus {
        platform: std::sync::Arc::new(cocoon_attestation::simulated::SimulatedProducer::new()),
        gpus: std::sync::Arc::new(nvml),
    };
    assert!(producer.gpus().is_some());
    let doc = evidence_document(&producer, b"claims", Some(b"verifier nonce")).unwrap();
    // (Decoded as plain CBOR: these claims are not a worker's, which `decode` would refuse.)
    let doc: cocoon_protocol::evidence::EvidenceDocument = ciborium::from_reader(doc.as_slice()).unwrap();
    assert_eq!(doc.gpu.as_ref().unwrap().len(), 1);
    let expected = cocoon_attestation::gpu_nonce(b"claims", Some(b"verifier nonce"), "on");
    assert_eq!(std::fs::read(dir.join("nonce")).unwrap(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}
