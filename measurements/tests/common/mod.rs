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

/// Deterministic pseudo-random bytes (the tools hash files; they need not boot).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A tool from the measurement venv (`make measure-tools`), else from PATH.
pub fn venv_tool(name: &str) -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/measure-venv/bin").join(name);
    if venv.exists() { venv } else { PathBuf::from(name) }
}

/// Shape of a synthetic bzImage: a Linux setup header inside a PE32+ image,
/// laid out like the kernel's own (setup, text, data sections).
pub struct SyntheticKernel {
    pub seed: u64,
    pub text_len: usize,
    /// Bytes after the last section that are not the certificate table.
    pub trailing: usize,
    /// Length of an appended certificate table (0: unsigned).
    pub cert: usize,
    /// NumberOfRvaAndSizes (the kernel uses 6; 4 or less has no certificate entry).
    pub rva_count: u32,
    pub protocol: u16,
}

pub fn synthetic_kernel(k: &SyntheticKernel) -> Vec<u8> {
    let put16 = |b: &mut Vec<u8>, at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let headers = 0x1000usize;
    let sections = [(*b".setup\0\0", 0x1000usize), (*b".text\0\0\0", k.text_len), (*b".data\0\0\0", 0x200)];
    let body: usize = sections.iter().map(|s| s.1).sum();
    let mut b = bytes(k.seed, headers + body + k.trailing + k.cert);
    b[..0x40].fill(0);
    b[..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, 0x40);
    let pe = 0x40;
    b[pe..pe + 24].fill(0);
    b[pe..pe + 4].copy_from_slice(b"PE\0\0");
    put16(&mut b, pe + 4, 0x8664);
    put16(&mut b, pe + 6, sections.len() as u16);
    let opt_size = 112 + 8 * k.rva_count as usize;
    put16(&mut b, pe + 20, opt_size as u16);
    let opt = pe + 24;
    put16(&mut b, opt, 0x20b);
    put32(&mut b, opt + 60, headers as u32);
    put32(&mut b, opt + 108, k.rva_count);
    let table = opt + opt_size;
    let mut offset = headers;
    for (i, (name, len)) in sections.iter().enumerate() {
        let s = table + 40 * i;
        b[s..s + 40].fill(0);
        b[s..s + 8].copy_from_slice(name);
        put32(&mut b, s + 8, *len as u32);
        put32(&mut b, s + 12, offset as u32);
        put32(&mut b, s + 16, *len as u32);
        put32(&mut b, s + 20, offset as u32);
        offset += len;
    }
    if k.rva_count > 4 {
        let entry = opt + 112 + 4 * 8;
        let at = if k.cert > 0 { (b.len() - k.cert) as u32 } else { 0 };
        put32(&mut b, entry, at);
        put32(&mut b, entry + 4, k.cert as u32);
    }
    // The Linux boot protocol header (Documentation/arch/x86/boot.rst).
    b[0x1f1] = 7; // setup_sects
    b[0x202..0x206].copy_from_slice(b"HdrS");
    put16(&mut b, 0x206, k.protocol);
    b[0x210] = 0;
    b[0x211] = 0x01; // LOADED_HIGH
    b[0x218..0x228].fill(0);
    put32(&mut b, 0x228, 0);
    put32(&mut b, 0x22c, 0x7fff_ffff);
    put16(&mut b, 0x236, 0x7f);
    b
}
