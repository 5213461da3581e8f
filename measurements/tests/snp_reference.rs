//! The SEV-SNP launch digest against `sev-snp-measure` (PyPI; `.ci/run`
//! installs it into `.cache/measure-venv`) for several kernels, initrds,
//! command lines and vCPU counts, and the fixture firmware's known seed.

mod common;

use std::path::PathBuf;

use cocoon_measurements::snp::{self, SnpLaunch};

fn reference_tool() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/measure-venv/bin/sev-snp-measure");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("sev-snp-measure")
}

fn reference(args: &[&str]) -> String {
    let tool = reference_tool();
    let out = std::process::Command::new(&tool).args(args).output().unwrap_or_else(|e| {
        panic!("{}: {e}; run `make measure-tools` (or .ci/run) to install sev-snp-measure", tool.display())
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn launch_digest_matches_sev_snp_measure() {
    let dir = common::temp_dir("snp");
    let ovmf = common::unpack(common::SNP_DEB, common::SNP_FW, &dir);
    assert_eq!(
        hex::encode(snp::ovmf_hash(&ovmf).unwrap()),
        "9d0dd8be18c86e3fe3bf0038ed75ebf5340bee69fd2632c8ff9409964575960ae1f7e84be387d2e3467bc3508d1e4806"
    );
    // (seed, kernel bytes, initrd bytes, command line, vCPUs, vCPU type)
    type Case = (u64, usize, Option<usize>, &'static str, u32, &'static str);
    let cases: [Case; 5] = [
        (1, 9 << 20, Some(30 << 20), "console=ttyS0 cocoon.config=sha256:00", 1, "EPYC-Milan"),
        (2, 12 << 20, Some(5 << 20), "", 4, "EPYC-Milan"),
        (3, 7 << 20, None, "quiet panic=-1 cocoon.config=sha256:ab", 8, "EPYC-Genoa"),
        (4, 1 << 20, Some(1), "x", 2, "EPYC-Turin"),
        (5, 10 << 20, Some(64 << 20), "console=ttyS0 ro", 64, "EPYC-Genoa"),
    ];
    for (seed, klen, ilen, cmdline, vcpus, cpu) in cases {
        let kernel = dir.join(format!("vmlinuz-{seed}"));
        std::fs::write(&kernel, common::bytes(seed, klen)).unwrap();
        let initrd = ilen.map(|l| {
            let p = dir.join(format!("initrd-{seed}"));
            std::fs::write(&p, common::bytes(seed + 100, l)).unwrap();
            p
        });
        let ours = snp::launch_digest(&SnpLaunch {
            ovmf: &ovmf,
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline,
            vcpus,
            vcpu_type: cpu,
        })
        .unwrap();
        let vcpus_s = vcpus.to_string();
        let mut args = vec![
            "--mode",
            "snp",
            "--vcpus",
            &vcpus_s,
            "--vcpu-type",
            cpu,
            "--ovmf",
            ovmf.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--append",
            cmdline,
        ];
        let initrd_s = initrd.as_ref().map(|p| p.to_str().unwrap().to_string());
        if let Some(i) = &initrd_s {
            args.extend(["--initrd", i]);
        }
        assert_eq!(hex::encode(ours), reference(&args), "case {seed}: {vcpus} x {cpu}, {cmdline:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
