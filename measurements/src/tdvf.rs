//! TDX firmware (TDVF) metadata and the MRTD it produces.
//!
//! The metadata (TDVF Design Guide, section 11) lists the firmware's memory
//! sections; QEMU adds each to the TD with `TDH.MEM.PAGE.ADD` and, for
//! sections marked MR_EXTEND, measures their bytes with `TDH.MR.EXTEND`.
//! The TDX module accumulates MRTD as one SHA-384 over 128-byte blocks
//! (TDX Module ABI spec, TDH.MEM.PAGE.ADD / TDH.MR.EXTEND):
//! - page add: `"MEM.PAGE.ADD"` padded to 16 bytes, the GPA (u64 LE), zeros to 128;
//! - extend of 256 bytes: `"MR.EXTEND"` padded to 16, the GPA, zeros to 128,
//!   then the 256 bytes.
//!
//! The order of those operations depends on the VMM: QEMU 9 and later (with
//! upstream KVM) add and measure page by page; QEMU 8.x builds with the TDX
//! patches added a whole section's pages, then measured that section.

use sha2::{Digest, Sha384};

use crate::MeasureError;
use crate::le::{u32_at, u64_at};
use crate::ovmf;

pub const METADATA_OFFSET_GUID: &str = "e47a6535-984a-4798-865e-4685a7bf8ec2";
const SIGNATURE: &[u8; 4] = b"TDVF";
const PAGE: u64 = 4096;
const CHUNK: u64 = 256;
/// Sections in real firmware: a handful. More is a corrupt table.
const MAX_SECTIONS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionType {
    Bfv,
    Cfv,
    TdHob,
    TempMem,
    PermMem,
    Payload,
    PayloadParam,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub data_offset: u32,
    pub raw_data_size: u32,
    pub memory_address: u64,
    pub memory_size: u64,
    pub kind: SectionType,
    pub mr_extend: bool,
    /// Accepted by the guest later (TDH.MEM.PAGE.AUG): not part of MRTD.
    pub page_aug: bool,
}

/// Page order of the VMM that builds the TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    /// Each page added, then its chunks extended (QEMU >= 9).
    OnePass,
    /// A section's pages all added, then the section extended (QEMU 8.x TDX builds).
    TwoPass,
}

fn err(s: impl Into<String>) -> MeasureError {
    MeasureError::Firmware(s.into())
}

/// The TDVF sections of a TDX firmware image.
pub fn sections(fw: &[u8]) -> Result<Vec<Section>, MeasureError> {
    let data = ovmf::find(fw, METADATA_OFFSET_GUID)?
        .ok_or_else(|| err("no TDX metadata entry in the OVMF table: not a TDX firmware (use OVMF.inteltdx.fd)"))?;
    if data.len() < 4 {
        return Err(err("TDX metadata offset entry is shorter than 4 bytes"));
    }
    let back = u32_at(data, 0) as usize;
    let at = fw.len().checked_sub(back).ok_or_else(|| err(format!("metadata offset {back} is beyond the image")))?;
    let header = fw.get(at..at + 16).ok_or_else(|| err("metadata header runs past the image"))?;
    if &header[..4] != SIGNATURE {
        return Err(err(format!("metadata signature {:?}, expected \"TDVF\"", String::from_utf8_lossy(&header[..4]))));
    }
    let version = u32_at(header, 8);
    if version != 1 {
        return Err(err(format!("TDVF metadata version {version}, expected 1")));
    }
    let count = u32_at(header, 12);
    if count > MAX_SECTIONS {
        return Err(err(format!("{count} sections exceeds the limit of {MAX_SECTIONS}")));
    }
    let mut out = Vec::new();
    for i in 0..count as usize {
        let e = fw
            .get(at + 16 + 32 * i..at + 48 + 32 * i)
            .ok_or_else(|| err(format!("section {i} runs past the image")))?;
        let kind = match u32_at(e, 24) {
            0 => SectionType::Bfv,
            1 => SectionType::Cfv,
            2 => SectionType::TdHob,
            3 => SectionType::TempMem,
            4 => SectionType::PermMem,
            5 => SectionType::Payload,
            6 => SectionType::PayloadParam,
            t => return Err(err(format!("section {i} has unknown type {t}"))),
        };
        let attributes = u32_at(e, 28);
        let s = Section {
            data_offset: u32_at(e, 0),
            raw_data_size: u32_at(e, 4),
            memory_address: u64_at(e, 8),
            memory_size: u64_at(e, 16),
            kind,
            mr_extend: attributes & 1 != 0,
            page_aug: attributes & 2 != 0,
        };
        if !s.memory_address.is_multiple_of(PAGE) || !s.memory_size.is_multiple_of(PAGE) {
            return Err(err(format!("section {i} is not page aligned ({:#x}+{:#x})", s.memory_address, s.memory_size)));
        }
        if u64::from(s.raw_data_size) > s.memory_size
            || (s.data_offset as usize).checked_add(s.raw_data_size as usize).is_none_or(|end| end > fw.len())
        {
            return Err(err(format!("section {i} data does not fit the image or its memory")));
        }
        out.push(s);
    }
    Ok(out)
}

/// The bytes a section holds in guest memory: its data from the image, zero-padded.
fn contents(fw: &[u8], s: &Section) -> Vec<u8> {
    let mut m = vec![0u8; s.memory_size as usize];
    let data = &fw[s.data_offset as usize..s.data_offset as usize + s.raw_data_size as usize];
    if matches!(s.kind, SectionType::Bfv | SectionType::Cfv) {
        m[..data.len()].copy_from_slice(data);
    }
    m
}

fn block(op: &[u8], gpa: u64) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..op.len()].copy_from_slice(op);
    b[16..24].copy_from_slice(&gpa.to_le_bytes());
    b
}

fn page_add(h: &mut Sha384, gpa: u64) {
    h.update(block(b"MEM.PAGE.ADD", gpa));
}

fn extend(h: &mut Sha384, gpa: u64, chunk: &[u8]) {
    h.update(block(b"MR.EXTEND", gpa));
    h.update(chunk);
}

/// MRTD for a firmware image under a VMM's page order.
pub fn mrtd(fw: &[u8], order: PageOrder) -> Result<[u8; 48], MeasureError> {
    let mut h = Sha384::new();
    for s in sections(fw)?.iter().filter(|s| !s.page_aug) {
        let mem = contents(fw, s);
        let pages = (0..s.memory_size).step_by(PAGE as usize);
        match order {
            PageOrder::OnePass => {
                for p in pages {
                    page_add(&mut h, s.memory_address + p);
                    if s.mr_extend {
                        for c in (p..p + PAGE).step_by(CHUNK as usize) {
                            extend(&mut h, s.memory_address + c, &mem[c as usize..(c + CHUNK) as usize]);
                        }
                    }
                }
            }
            PageOrder::TwoPass => {
                for p in pages {
                    page_add(&mut h, s.memory_address + p);
                }
                if s.mr_extend {
                    for c in (0..s.memory_size).step_by(CHUNK as usize) {
                        extend(&mut h, s.memory_address + c, &mem[c as usize..(c + CHUNK) as usize]);
                    }
                }
            }
        }
    }
    Ok(h.finalize().into())
}

/// SHA-384 of the configuration firmware volume (Secure Boot variables): the
/// first event TDVF measures into RTMR0.
pub fn cfv_digest(fw: &[u8]) -> Result<[u8; 48], MeasureError> {
    let cfv = sections(fw)?
        .into_iter()
        .find(|s| s.kind == SectionType::Cfv)
        .ok_or_else(|| err("the firmware has no CFV section"))?;
    Ok(Sha384::digest(&fw[cfv.data_offset as usize..(cfv.data_offset + cfv.raw_data_size) as usize]).into())
}
