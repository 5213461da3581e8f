//! `measure` over an image directory gives reference values the verifier's
//! policy loads, with the fixture firmware's known MRTDs.

mod common;

use cocoon_measurements::reference::{Image, VmShape, cmdline, measure};

#[test]
fn reference_values_load_into_the_attestation_policy() {
    let dir = common::temp_dir("reference");
    let fw = dir.join("fw");
    let image = dir.join("out");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::copy(common::unpack(common::TDX_DEB, common::TDX_FW, &fw), image.join("OVMF.inteltdx.fd")).unwrap();
    std::fs::copy(common::unpack(common::SNP_DEB, common::SNP_FW, &fw), image.join("OVMF.amdsev.fd")).unwrap();
    let kernel =
        common::SyntheticKernel { seed: 1, text_len: 3 << 20, trailing: 0, cert: 1472, rva_count: 6, protocol: 0x20f };
    std::fs::write(image.join("vmlinuz"), common::synthetic_kernel(&kernel)).unwrap();
    std::fs::write(image.join("initrd.img"), vec![0x22; 2 << 20]).unwrap();
    std::fs::write(image.join("cmdline"), "console=ttyS0 panic=-1\n").unwrap();
    let config = dir.join("cocoon.toml");
    std::fs::write(&config, "[model]\nid = \"m\"\n").unwrap();

    let r = measure(
        &Image { dir: image },
        &config,
        &VmShape { vcpus: 2, vcpu_type: "EPYC-Milan".into(), memory_bytes: 4 << 30, tdx_rtmr0: vec![] },
    )
    .unwrap();
    let json = serde_json::to_vec(&r).unwrap();
    let loaded = cocoon_attestation::ReferenceValues::from_json(&json).unwrap();
    let tdx = loaded.tdx.unwrap();
    let mrtd = tdx.mrtd.unwrap();
    let expected = r.tdx.as_ref().unwrap();
    assert_eq!(tdx.rtmr1.unwrap().0, vec![expected.rtmr1.clone()]);
    assert_eq!(tdx.rtmr2.unwrap().0, vec![expected.rtmr2.clone()]);
    assert!(tdx.rtmr0.is_none(), "RTMR0 depends on the host's ACPI tables; it is not pinned");
    assert!(expected.events.cfv.starts_with("327d4a91229b3993"));
    assert!(mrtd.0[0].starts_with("a7a1f751abc454f9"));
    assert!(mrtd.0[1].starts_with("b90b236113eb4c0d"));
    assert!(loaded.sev_snp.unwrap().measurement.is_some());
    assert_eq!(loaded.config_digest.unwrap().0, vec![r.config_digest.clone()]);
    assert!(r.cmdline.starts_with("console=ttyS0 panic=-1 cocoon.config=sha256:"));
    assert_eq!(cmdline("", &[0; 32]), format!("cocoon.config=sha256:{}", "00".repeat(32)));
    assert_eq!(r.artifacts.len(), 6);

    // RTMR0 from reference boots, when given, constrains the evidence too.
    let shape =
        VmShape { vcpus: 2, vcpu_type: "EPYC-Milan".into(), memory_bytes: 4 << 30, tdx_rtmr0: vec![[0xab; 48]] };
    let pinned = measure(&Image { dir: dir.join("out") }, &config, &shape).unwrap();
    let loaded = cocoon_attestation::ReferenceValues::from_json(&serde_json::to_vec(&pinned).unwrap()).unwrap();
    assert!(loaded.tdx.unwrap().rtmr0.unwrap().allows(&[0xab; 48]));
    assert_eq!(cocoon_measurements::reference::parse_register(&"cd".repeat(48)), Ok([0xcd; 48]));
    assert!(cocoon_measurements::reference::parse_register("abcd").unwrap_err().contains("found 2"));

    // A missing input names the file that could not be read.
    std::fs::remove_file(dir.join("out/initrd.img")).unwrap();
    let err = measure(&Image { dir: dir.join("out") }, &config, &shape).unwrap_err().to_string();
    assert!(err.starts_with("reading ") && err.contains("initrd.img"), "{err}");
    let err = measure(&Image { dir: dir.join("out") }, &dir.join("absent.toml"), &shape).unwrap_err().to_string();
    assert!(err.starts_with("reading ") && err.contains("absent.toml"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
