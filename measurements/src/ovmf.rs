//! The GUIDed structure table at the end of an OVMF image, which QEMU reads
//! to find the TDX metadata, the SEV metadata and the SEV hashes page.
//!
//! Layout (QEMU `pc_system_parse_ovmf_flash`): the table ends 32 bytes before
//! the end of the image with the footer GUID, preceded by the table's total
//! length (u16). Entries are read backwards: `data | u16 length | GUID`,
//! where length covers all three.

use crate::MeasureError;
use crate::le::u16_at;

pub const FOOTER_GUID: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";

/// A GUID string in the mixed-endian byte order firmware stores.
pub fn guid_bytes(guid: &str) -> [u8; 16] {
    let hex: String = guid.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = hex::decode(hex).expect("a GUID constant");
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&[b[3], b[2], b[1], b[0]]);
    out[4..6].copy_from_slice(&[b[5], b[4]]);
    out[6..8].copy_from_slice(&[b[7], b[6]]);
    out[8..].copy_from_slice(&b[8..]);
    out
}

fn err(s: impl Into<String>) -> MeasureError {
    MeasureError::Firmware(s.into())
}

/// One table entry: its GUID (firmware byte order) and its data.
pub type Entry<'a> = ([u8; 16], &'a [u8]);

/// The table's entries.
pub fn guided_table(fw: &[u8]) -> Result<Vec<Entry<'_>>, MeasureError> {
    let n = fw.len();
    if n < 50 {
        return Err(err(format!("{n} bytes is too small for an OVMF image")));
    }
    if fw[n - 48..n - 32] != guid_bytes(FOOTER_GUID) {
        return Err(err("no OVMF GUIDed table footer 48 bytes before the end: not an OVMF image"));
    }
    let total = u16_at(fw, n - 50) as usize;
    let len = total.checked_sub(18).ok_or_else(|| err(format!("table length {total} is below 18")))?;
    let start = (n - 50).checked_sub(len).ok_or_else(|| err("table length runs past the start of the image"))?;
    let table = &fw[start..n - 50];
    let mut out = Vec::new();
    let mut end = table.len();
    while end >= 18 {
        let guid: [u8; 16] = table[end - 16..end].try_into().expect("16 bytes");
        let l = u16_at(table, end - 18) as usize;
        if l < 18 || l > end {
            return Err(err(format!("table entry length {l} at offset {end} is out of range")));
        }
        out.push((guid, &table[end - l..end - 18]));
        end -= l;
    }
    Ok(out)
}

/// The data of the entry with `guid`.
pub fn find<'a>(fw: &'a [u8], guid: &str) -> Result<Option<&'a [u8]>, MeasureError> {
    let g = guid_bytes(guid);
    Ok(guided_table(fw)?.into_iter().find(|(id, _)| *id == g).map(|(_, d)| d))
}
