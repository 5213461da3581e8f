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
    std::fs::write(image.join("vmlinuz"), vec![0x11; 3 << 20]).unwrap();
    std::fs::write(image.join("initrd.img"), vec![0x22; 2 << 20]).unwrap();
    std::fs::write(image.join("cmdline"), "console=ttyS0 panic=-1\n").unwrap();
    let config = dir.join("cocoon.toml");
    std::fs::write(&config, "[model]\nid = \"m\"\n").unwrap();

    let r = measure(&Image { dir: image }, &config, &VmShape { vcpus: 2, vcpu_type: "EPYC-Milan".into() }).unwrap();
    let json = serde_json::to_vec(&r).unwrap();
    let loaded = cocoon_attestation::ReferenceValues::from_json(&json).unwrap();
    let mrtd = loaded.tdx.unwrap().mrtd.unwrap();
    assert!(mrtd.0[0].starts_with("a7a1f751abc454f9"));
    assert!(mrtd.0[1].starts_with("b90b236113eb4c0d"));
    assert!(loaded.sev_snp.unwrap().measurement.is_some());
    assert_eq!(loaded.config_digest.unwrap().0, vec![r.config_digest.clone()]);
    assert!(r.cmdline.starts_with("console=ttyS0 panic=-1 cocoon.config=sha256:"));
    assert_eq!(cmdline("", &[0; 32]), format!("cocoon.config=sha256:{}", "00".repeat(32)));
    assert_eq!(r.artifacts.len(), 6);
    let _ = std::fs::remove_dir_all(&dir);
}
