//! RTMR1 and RTMR2 of a TD that TDVF boots with QEMU's direct kernel boot
//! (`-kernel -initrd -append`), the way the launch scripts start a worker.
//!
//! Each RTMR starts at zero and every measured event extends it:
//! `RTMR = SHA-384(RTMR || SHA-384(event data))`. TDVF maps TPM PCRs onto
//! RTMRs (PCR 1,7 → RTMR0; PCR 2–6 → RTMR1; PCR 8–15 → RTMR2), so:
//!
//! - RTMR1 (PCR 4 and 5): the kernel's Authenticode SHA-384, measured when
//!   OVMF loads it (`EV_EFI_BOOT_SERVICES_APPLICATION`); at ReadyToBoot the
//!   action "Calling EFI Application from Boot Option" and a separator; at
//!   ExitBootServices the actions "Exit Boot Services Invocation" and "Exit
//!   Boot Services Returned with Success". This is the sequence real TDX
//!   event logs of edk2 TDVF with direct boot show.
//! - RTMR2 (PCR 9): the Linux EFI stub measures the load options OVMF gives
//!   it (the command line plus ` initrd=initrd`, UTF-16LE with its NUL), then
//!   the initrd ("Linux initrd" tagged event).
//!
//! The kernel bytes OVMF measures are not the file's: QEMU patches the Linux
//! setup header before handing the kernel over fw_cfg (hw/i386/x86-common.c,
//! `x86_load_linux`), and only skips that for SEV guests. The patch depends on
//! the initrd size and the guest's memory below 4 GiB, which is why the VM's
//! memory size is an input.

use sha2::{Digest, Sha384};

use crate::MeasureError;
use crate::le::{put_u16, put_u32, u16_at, u32_at};

pub type Digest48 = [u8; 48];

/// QEMU's `acpi_data_size` for current pc/q35 machine types: memory kept at
/// the top of low RAM for ACPI tables, below which the initrd is placed.
pub const QEMU_ACPI_DATA_SIZE: u64 = 0x28000;
/// Largest kernel image measured (a bzImage is ~10–20 MiB).
pub const MAX_KERNEL: usize = 256 << 20;

const SEPARATOR: [u8; 4] = [0; 4];
const CALLING_EFI_APPLICATION: &[u8] = b"Calling EFI Application from Boot Option";
const EXIT_BOOT_SERVICES_INVOCATION: &[u8] = b"Exit Boot Services Invocation";
const EXIT_BOOT_SERVICES_SUCCEEDED: &[u8] = b"Exit Boot Services Returned with Success";
/// What OVMF appends to the load options when an initrd was given.
const INITRD_LOAD_OPTION: &str = " initrd=initrd";

fn err(s: impl Into<String>) -> MeasureError {
    MeasureError::Kernel(s.into())
}

pub fn sha384(data: &[u8]) -> Digest48 {
    Sha384::digest(data).into()
}

/// The register value after extending each event digest in order from zero.
pub fn replay(events: &[Digest48]) -> Digest48 {
    events.iter().fold([0u8; 48], |mr, event| {
        let mut h = Sha384::new();
        h.update(mr);
        h.update(event);
        h.finalize().into()
    })
}

/// The event digests of one boot, each checkable against an event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvents {
    /// Authenticode SHA-384 of the kernel after QEMU's setup-header patch.
    pub kernel_authenticode: Digest48,
    /// SHA-384 of the EFI load options (UTF-16LE command line).
    pub cmdline: Digest48,
    pub initrd: Digest48,
}

impl BootEvents {
    pub fn measure(kernel: &[u8], initrd: &[u8], cmdline: &str, memory_bytes: u64) -> Result<Self, MeasureError> {
        let patched = qemu_patched_kernel(kernel, initrd.len() as u64, memory_bytes)?;
        Ok(BootEvents {
            kernel_authenticode: authenticode_sha384(&patched)?,
            cmdline: sha384(&load_options(cmdline, !initrd.is_empty())),
            initrd: sha384(initrd),
        })
    }

    pub fn rtmr1_log(&self) -> [Digest48; 5] {
        [
            self.kernel_authenticode,
            sha384(CALLING_EFI_APPLICATION),
            sha384(&SEPARATOR),
            sha384(EXIT_BOOT_SERVICES_INVOCATION),
            sha384(EXIT_BOOT_SERVICES_SUCCEEDED),
        ]
    }

    pub fn rtmr2_log(&self) -> [Digest48; 2] {
        [self.cmdline, self.initrd]
    }

    pub fn rtmr1(&self) -> Digest48 {
        replay(&self.rtmr1_log())
    }

    pub fn rtmr2(&self) -> Digest48 {
        replay(&self.rtmr2_log())
    }
}

/// The EFI load options OVMF builds from QEMU's command line: UTF-16LE, with
/// ` initrd=initrd` when there is an initrd, and the terminating NUL.
pub fn load_options(cmdline: &str, has_initrd: bool) -> Vec<u8> {
    let text = if has_initrd { format!("{cmdline}{INITRD_LOAD_OPTION}") } else { cmdline.to_string() };
    text.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// Guest RAM below 4 GiB on QEMU's q35 machine: all of it up to 2.75 GiB,
/// otherwise 2 GiB (the rest is mapped above 4 GiB).
pub fn q35_below_4g(memory_bytes: u64) -> u64 {
    let lowmem = if memory_bytes >= 0xb000_0000 { 0x8000_0000 } else { 0xb000_0000 };
    memory_bytes.min(lowmem)
}

/// The kernel as QEMU hands it to the firmware of a non-SEV guest: the Linux
/// boot protocol fields QEMU writes into the setup header (type_of_loader,
/// CAN_USE_HEAP and heap_end_ptr, cmd_line_ptr, ramdisk_image/size).
pub fn qemu_patched_kernel(kernel: &[u8], initrd_len: u64, memory_bytes: u64) -> Result<Vec<u8>, MeasureError> {
    if kernel.len() > MAX_KERNEL {
        return Err(err(format!("kernel is {} bytes, more than the {MAX_KERNEL} accepted", kernel.len())));
    }
    if kernel.len() < 0x1000 || &kernel[0x202..0x206] != b"HdrS" {
        return Err(err("not a Linux bzImage: no \"HdrS\" setup header at 0x202"));
    }
    let mut k = kernel.to_vec();
    let protocol = u16_at(&k, 0x206);
    if protocol < 0x202 {
        return Err(err(format!(
            "Linux boot protocol {}.{:02}: the measured path needs 2.02 or later",
            protocol >> 8,
            protocol & 0xff
        )));
    }
    // Without LOADED_HIGH (an old zImage) QEMU's addresses depend on the
    // command line's length; every bzImage sets it.
    if k[0x211] & 0x01 == 0 {
        return Err(err("the kernel is not LOADED_HIGH (a zImage): only bzImage kernels are measured"));
    }
    let (real_addr, cmdline_addr): (u32, u32) = (0x1_0000, 0x2_0000);
    k[0x210] = 0xb0; // type_of_loader: QEMU
    k[0x211] |= 0x80; // CAN_USE_HEAP
    put_u16(&mut k, 0x224, (cmdline_addr - real_addr - 0x200) as u16); // heap_end_ptr
    put_u32(&mut k, 0x228, cmdline_addr);
    if initrd_len > 0 {
        let xloadflags = u16_at(&k, 0x236);
        let mut initrd_max: u64 = if protocol >= 0x20c && xloadflags & 0x40 != 0 {
            u64::from(u32::MAX) // XLF_CAN_BE_LOADED_ABOVE_4G: QEMU only limits it to 32 bits
        } else if protocol >= 0x203 {
            u64::from(u32_at(&k, 0x22c))
        } else {
            0x37ff_ffff
        };
        let low = q35_below_4g(memory_bytes)
            .checked_sub(QEMU_ACPI_DATA_SIZE)
            .ok_or_else(|| err(format!("{memory_bytes} bytes of guest memory cannot hold the ACPI tables")))?;
        if initrd_max >= low {
            initrd_max = low - 1;
        }
        if initrd_len >= initrd_max {
            return Err(err(format!("initrd of {initrd_len} bytes does not fit below {initrd_max:#x}")));
        }
        let initrd_addr = (initrd_max - initrd_len) & !0xfff;
        put_u32(&mut k, 0x218, initrd_addr as u32);
        put_u32(&mut k, 0x21c, initrd_len as u32);
    }
    Ok(k)
}

/// Authenticode SHA-384 of a PE/COFF image as edk2 computes it when it
/// measures an image (PE/COFF specification, "Calculating the PE Image
/// Hash"): headers without the checksum and the certificate directory entry,
/// the sections in file order, then any data after them except the
/// certificate table.
pub fn authenticode_sha384(image: &[u8]) -> Result<Digest48, MeasureError> {
    const SECURITY_DIRECTORY: usize = 4;
    let need = |end: usize, what: &str| {
        if end > image.len() {
            Err(err(format!("PE image ends at {} bytes, inside its {what}", image.len())))
        } else {
            Ok(())
        }
    };
    need(0x40, "DOS header")?;
    if &image[..2] != b"MZ" {
        return Err(err("not a PE image: no MZ signature"));
    }
    let pe = u32_at(image, 0x3c) as usize;
    need(pe.saturating_add(24), "PE header")?;
    if &image[pe..pe + 4] != b"PE\0\0" {
        return Err(err(format!("not a PE image: no PE signature at {pe:#x}")));
    }
    let sections = u16_at(image, pe + 6) as usize;
    let optional_size = u16_at(image, pe + 20) as usize;
    let opt = pe + 24;
    need(opt + 2, "optional header")?;
    let (rva_count_at, directories_at) = match u16_at(image, opt) {
        0x10b => (opt + 92, opt + 96),
        0x20b => (opt + 108, opt + 112),
        magic => return Err(err(format!("unknown optional header magic {magic:#x}"))),
    };
    need(rva_count_at + 4, "optional header")?;
    let checksum = opt + 64;
    let headers_size = u32_at(image, opt + 60) as usize;
    need(headers_size, "headers (SizeOfHeaders)")?;
    let rva_count = u32_at(image, rva_count_at) as usize;
    let section_table = opt + optional_size;
    need(section_table.saturating_add(sections.saturating_mul(40)), "section table")?;
    if checksum + 4 > headers_size {
        return Err(err("SizeOfHeaders ends before the optional header's checksum"));
    }

    let mut h = Sha384::new();
    h.update(&image[..checksum]);
    let cert_size = if rva_count > SECURITY_DIRECTORY {
        let entry = directories_at + SECURITY_DIRECTORY * 8;
        if entry + 8 > headers_size {
            return Err(err("the certificate directory entry lies outside SizeOfHeaders"));
        }
        h.update(&image[checksum + 4..entry]);
        h.update(&image[entry + 8..headers_size]);
        u32_at(image, entry + 4) as usize
    } else {
        h.update(&image[checksum + 4..headers_size]);
        0
    };

    let mut raw: Vec<(usize, usize)> = (0..sections)
        .map(|i| {
            let s = section_table + 40 * i;
            (u32_at(image, s + 20) as usize, u32_at(image, s + 16) as usize)
        })
        .filter(|&(_, size)| size > 0)
        .collect();
    raw.sort_by_key(|&(offset, _)| offset);
    let mut hashed = headers_size;
    for (offset, size) in raw {
        let end = offset.checked_add(size).filter(|&e| e <= image.len()).ok_or_else(|| {
            err(format!("a section's raw data ({offset:#x} + {size:#x}) runs past the image's {} bytes", image.len()))
        })?;
        h.update(&image[offset..end]);
        hashed += size;
    }
    if image.len() > hashed {
        let trailing_end = image
            .len()
            .checked_sub(cert_size)
            .filter(|&e| e >= hashed)
            .ok_or_else(|| err("the certificate table is larger than the data after the sections"))?;
        h.update(&image[hashed..trailing_end]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_options_are_utf16_with_initrd_and_nul() {
        assert_eq!(load_options("a", false), vec![b'a', 0, 0, 0]);
        let with = load_options("a", true);
        assert_eq!(with.len(), 2 * ("a initrd=initrd".len() + 1));
        assert_eq!(&with[..4], &[b'a', 0, b' ', 0]);
    }

    #[test]
    fn replay_of_nothing_is_zero_and_order_matters() {
        assert_eq!(replay(&[]), [0; 48]);
        let (a, b) = (sha384(b"a"), sha384(b"b"));
        assert_ne!(replay(&[a, b]), replay(&[b, a]));
    }

    #[test]
    fn below_4g_follows_q35_split() {
        assert_eq!(q35_below_4g(2 << 30), 2 << 30);
        assert_eq!(q35_below_4g(0xafff_f000), 0xafff_f000);
        assert_eq!(q35_below_4g(0xb000_0000), 0x8000_0000);
        assert_eq!(q35_below_4g(64 << 30), 0x8000_0000);
    }

    #[test]
    fn truncated_or_foreign_images_are_refused_not_panics() {
        for bad in [&b""[..], b"MZ", &[0u8; 0x2000]] {
            assert!(authenticode_sha384(bad).is_err());
            assert!(qemu_patched_kernel(bad, 1, 1 << 30).is_err());
        }
        let mut pe = vec![0u8; 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0xfff0u32.to_le_bytes());
        let e = authenticode_sha384(&pe).unwrap_err().to_string();
        assert!(e.contains("inside its PE header"), "{e}");
    }
}
