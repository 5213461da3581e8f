//! RTMR1/RTMR2 inputs: the Authenticode hash against LIEF (PyPI, installed by
//! `make measure-tools`) on synthetic and real kernels, QEMU's setup-header
//! patch field by field (hw/i386 `x86_load_linux`), and the event replay.

mod common;

use std::path::{Path, PathBuf};

use cocoon_measurements::tdx_boot::{self, BootEvents, QEMU_ACPI_DATA_SIZE};
use common::{SyntheticKernel, synthetic_kernel};

fn lief_authentihash(path: &Path) -> String {
    let python = common::venv_tool("python3");
    let script = "import lief, sys\n\
                  b = lief.PE.parse(sys.argv[1])\n\
                  print(b.authentihash(lief.PE.ALGORITHMS.SHA_384).hex())";
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}; run `make measure-tools` to install LIEF", python.display()));
    assert!(out.status.success(), "LIEF: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn kernel(seed: u64, text_len: usize, trailing: usize, cert: usize, rva_count: u32) -> Vec<u8> {
    synthetic_kernel(&SyntheticKernel { seed, text_len, trailing, cert, rva_count, protocol: 0x20f })
}

#[test]
fn authenticode_matches_lief() {
    let dir = common::temp_dir("authenticode");
    let cases = [
        ("unsigned", kernel(1, 0x8000, 0, 0, 6)),
        ("signed like Debian's", kernel(2, 0x20000, 0, 1472, 6)),
        ("trailing data and a signature", kernel(3, 0x4000, 0x333, 0x508, 16)),
        ("five data directories, unsigned, trailing data", kernel(4, 0x4000, 0x100, 0, 5)),
    ];
    for (name, image) in cases {
        let path = dir.join("vmlinuz");
        std::fs::write(&path, &image).unwrap();
        let ours = hex::encode(tdx_boot::authenticode_sha384(&image).unwrap());
        assert_eq!(ours, lief_authentihash(&path), "{name}");
        // The QEMU-patched kernel is what TDVF hashes; its header bytes are hashed too.
        let patched = tdx_boot::qemu_patched_kernel(&image, 5 << 20, 4 << 30).unwrap();
        std::fs::write(&path, &patched).unwrap();
        let ours_patched = hex::encode(tdx_boot::authenticode_sha384(&patched).unwrap());
        assert_eq!(ours_patched, lief_authentihash(&path), "{name}, patched");
        assert_ne!(ours, ours_patched, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The image's kernel (built by `make image`; `make test` builds it first and
/// sets COCOON_IMAGE_DIR so that its absence fails rather than skips).
#[test]
fn authenticode_of_the_image_kernel_matches_lief() {
    let required = std::env::var_os("COCOON_IMAGE_DIR");
    let dir = required
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-image/out"));
    let path = dir.join("vmlinuz");
    if !path.exists() {
        assert!(required.is_none(), "{} is missing (make image)", path.display());
        eprintln!("skipped: {} not built (make image)", path.display());
        return;
    }
    let image = std::fs::read(&path).unwrap();
    assert_eq!(hex::encode(tdx_boot::authenticode_sha384(&image).unwrap()), lief_authentihash(&path));
    let tmp = common::temp_dir("image-kernel").join("vmlinuz");
    let bytes = tdx_boot::qemu_patched_kernel(&image, 30 << 20, 16 << 30).unwrap();
    std::fs::write(&tmp, &bytes).unwrap();
    assert_eq!(hex::encode(tdx_boot::authenticode_sha384(&bytes).unwrap()), lief_authentihash(&tmp));
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn setup_header_is_patched_like_qemu() {
    let image = kernel(5, 0x4000, 0, 0x200, 6);
    let initrd_len: u64 = 5 << 20;
    // (guest RAM, RAM below 4 GiB on q35)
    for (ram, below) in [(2u64 << 30, 2u64 << 30), (0xa000_0000, 0xa000_0000), (4 << 30, 2 << 30), (64 << 30, 2 << 30)]
    {
        let k = tdx_boot::qemu_patched_kernel(&image, initrd_len, ram).unwrap();
        assert_eq!(k[0x210], 0xb0, "type_of_loader");
        assert_eq!(k[0x211], 0x81, "loadflags: LOADED_HIGH | CAN_USE_HEAP");
        assert_eq!(u16::from_le_bytes([k[0x224], k[0x225]]), 0xfe00, "heap_end_ptr");
        assert_eq!(le32(&k, 0x228), 0x2_0000, "cmd_line_ptr");
        let initrd_max = below - QEMU_ACPI_DATA_SIZE - 1;
        assert_eq!(u64::from(le32(&k, 0x218)), (initrd_max - initrd_len) & !0xfff, "ramdisk_image at {ram:#x}");
        assert_eq!(u64::from(le32(&k, 0x21c)), initrd_len, "ramdisk_size");
        let changed: Vec<usize> = (0..k.len()).filter(|&i| k[i] != image[i]).collect();
        assert!(changed.iter().all(|&i| (0x210..0x22c).contains(&i)), "only header fields change: {changed:x?}");
    }
    // Older boot protocol: QEMU honours initrd_addr_max.
    let old = synthetic_kernel(&SyntheticKernel {
        seed: 6,
        text_len: 0x4000,
        trailing: 0,
        cert: 0,
        rva_count: 6,
        protocol: 0x20b,
    });
    let k = tdx_boot::qemu_patched_kernel(&old, 1 << 20, 4 << 30).unwrap();
    assert_eq!(
        u64::from(le32(&k, 0x218)),
        (0x7fff_ffffu64.min((2 << 30) - QEMU_ACPI_DATA_SIZE - 1) - (1 << 20)) & !0xfff
    );
    // Without an initrd the ramdisk fields stay as they were.
    let k = tdx_boot::qemu_patched_kernel(&image, 0, 4 << 30).unwrap();
    assert_eq!(le32(&k, 0x218), 0);
    let e = tdx_boot::qemu_patched_kernel(&image, 3 << 30, 4 << 30).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn rtmrs_replay_the_boot_events() {
    let image = kernel(7, 0x4000, 0, 0x100, 6);
    let initrd = common::bytes(8, 4096);
    let ev = BootEvents::measure(&image, &initrd, "console=ttyS0", 4 << 30).unwrap();
    // The TPM separator (four zero bytes) and the action strings have fixed digests.
    let log = ev.rtmr1_log();
    assert_eq!(
        hex::encode(log[2]),
        "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0"
    );
    assert_eq!(
        log[0],
        tdx_boot::authenticode_sha384(&tdx_boot::qemu_patched_kernel(&image, 4096, 4 << 30).unwrap()).unwrap()
    );
    let mut mr = [0u8; 48];
    for e in log {
        use sha2::Digest;
        mr = sha2::Sha384::new().chain_update(mr).chain_update(e).finalize().into();
    }
    assert_eq!(ev.rtmr1(), mr);
    let utf16: Vec<u8> = "console=ttyS0 initrd=initrd\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert_eq!(ev.cmdline, tdx_boot::sha384(&utf16));
    assert_eq!(ev.rtmr2(), tdx_boot::replay(&[tdx_boot::sha384(&utf16), tdx_boot::sha384(&initrd)]));
    // Each input moves the registers it is measured into, and only those.
    let other_cmdline = BootEvents::measure(&image, &initrd, "console=ttyS1", 4 << 30).unwrap();
    assert_eq!(other_cmdline.rtmr1(), ev.rtmr1());
    assert_ne!(other_cmdline.rtmr2(), ev.rtmr2());
    let other_initrd = BootEvents::measure(&image, &common::bytes(9, 8192), "console=ttyS0", 4 << 30).unwrap();
    assert_ne!(other_initrd.rtmr1(), ev.rtmr1(), "the initrd size is in the patched header");
    let small_vm = BootEvents::measure(&image, &initrd, "console=ttyS0", 0xa000_0000).unwrap();
    assert_ne!(small_vm.rtmr1(), ev.rtmr1(), "RAM below 4 GiB places the initrd");
    assert_eq!(BootEvents::measure(&image, &initrd, "console=ttyS0", 64 << 30).unwrap(), ev);
}
