#![allow(dead_code)] // each test binary uses part of it

//! The firmware fixtures are Debian packages: unpacked with dpkg-deb (present
//! on every Debian machine; `.ci/run` makes sure).

use std::path::{Path, PathBuf};

pub const TDX_DEB: &str = "ovmf-inteltdx_2026.08+ds-2_all.deb";
pub const TDX_FW: &str = "usr/share/ovmf/OVMF.inteltdx.ms.fd";
pub const SNP_DEB: &str = "ovmf-amdsev_2026.08+ds-2_all.deb";
pub const SNP_FW: &str = "usr/share/ovmf/OVMF.amdsev.fd";

/// Unpacks `deb` from `tests/data` into `dir` and returns the path of `inner` there.
pub fn unpack(deb: &str, inner: &str, dir: &Path) -> PathBuf {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(deb);
    std::fs::create_dir_all(dir).unwrap();
    let st = std::process::Command::new("dpkg-deb").arg("-x").arg(&data).arg(dir).status().expect("dpkg-deb runs");
    assert!(st.success(), "dpkg-deb -x {}", data.display());
    dir.join(inner)
}

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cocoon-measure-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
