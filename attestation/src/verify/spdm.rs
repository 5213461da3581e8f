//! NVIDIA GPU attestation reports: an SPDM 1.1 GET_MEASUREMENTS request
//! followed by the signed MEASUREMENTS response (DMTF DSP0274), with NVIDIA's
//! opaque data. A bounded parser of outside input: every length is checked
//! against what is left before it is used, and nothing panics.
//!
//! Layout (multi-byte integers little-endian):
//! - request, 37 bytes: version, code `0xE0`, param1 (bit 0: signature
//!   requested), param2 (`0xFF`: all blocks), 32-byte nonce, slot id;
//! - response: version, code `0x60`, param1, param2, block count, 3-byte
//!   record length, the measurement blocks, 32-byte responder nonce, u16
//!   opaque length, opaque data, then the signature (raw r‖s, 96 bytes for
//!   ECDSA P-384) over request ‖ response up to the signature.

use std::ops::Range;

pub const REQUEST_LEN: usize = 37;
pub const NONCE_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 96;
const GET_MEASUREMENTS: u8 = 0xE0;
const MEASUREMENTS: u8 = 0x60;
/// Largest report accepted (real ones are about 4 KiB).
pub const MAX_REPORT: usize = 64 << 10;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SpdmError {
    #[error("GPU report of {found} bytes: expected {expected}")]
    Size { expected: String, found: usize },
    #[error("GPU report {field}: expected {expected}, found {found}")]
    Field { field: &'static str, expected: String, found: String },
    #[error("GPU report ends inside {what} (needs {needed} more bytes at offset {at})")]
    Truncated { what: &'static str, at: usize, needed: usize },
    #[error(
        "GPU report has {0} bytes after its signature: NVIDIA's format ends with the signature \
         (NVIDIA's attestation SDK refuses such a report too; take the report's size from NVML)"
    )]
    Trailing(usize),
    #[error("GPU report opaque data: {0}")]
    Opaque(String),
}

/// One DMTF measurement block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// 1-based, as in the report (a RIM's `index = i` is block `i + 1`).
    pub index: u8,
    /// DMTF value type (bit 7: raw bit stream instead of a digest).
    pub value_type: u8,
    pub value: Vec<u8>,
}

/// A parsed report. `signed` is the range the signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuReport {
    pub spdm_version: u8,
    pub nonce: [u8; NONCE_LEN],
    pub responder_nonce: [u8; NONCE_LEN],
    pub blocks: Vec<MeasurementBlock>,
    pub opaque: OpaqueData,
    pub signed: Range<usize>,
    pub signature: [u8; SIGNATURE_LEN],
}

/// NVIDIA's opaque data fields that a verifier reports and checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpaqueData {
    pub driver_version: Option<String>,
    pub vbios_version: Option<String>,
    pub board_id: Option<Vec<u8>>,
    pub project: Option<String>,
    pub project_sku: Option<String>,
    pub chip_sku: Option<String>,
    /// The chip (`GB202`), on Blackwell firmware whose opaque data is version 1 or later.
    pub chip_info: Option<String>,
    pub fwid: Option<Vec<u8>>,
    /// `0xAA` enabled, `0x55` disabled.
    pub nvdec0_status: Option<u8>,
    pub opaque_data_version: Option<u16>,
    /// Every field as (type, value), in order.
    pub fields: Vec<(u16, Vec<u8>)>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SpdmError> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(SpdmError::Truncated { what, at: self.at, needed: n - left });
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, SpdmError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, SpdmError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

fn expect(field: &'static str, expected: u8, found: u8) -> Result<(), SpdmError> {
    if expected != found {
        return Err(SpdmError::Field { field, expected: format!("{expected:#04x}"), found: format!("{found:#04x}") });
    }
    Ok(())
}

impl GpuReport {
    pub fn parse(bytes: &[u8]) -> Result<Self, SpdmError> {
        if bytes.len() > MAX_REPORT {
            return Err(SpdmError::Size { expected: format!("at most {MAX_REPORT}"), found: bytes.len() });
        }
        let mut r = Reader { bytes, at: 0 };
        let version = r.u8("the request version")?;
        expect("request code", GET_MEASUREMENTS, r.u8("the request code")?)?;
        let param1 = r.u8("the request attributes")?;
        if param1 & 1 == 0 {
            return Err(SpdmError::Field {
                field: "request attributes",
                expected: "a signature requested (bit 0 set)".into(),
                found: format!("{param1:#04x}"),
            });
        }
        let _operation = r.u8("the request operation")?;
        let nonce: [u8; NONCE_LEN] = r.take(NONCE_LEN, "the request nonce")?.try_into().expect("32 bytes");
        let _slot = r.u8("the request slot")?;
        debug_assert_eq!(r.at, REQUEST_LEN);

        let response_version = r.u8("the response version")?;
        expect("response version", version, response_version)?;
        expect("response code", MEASUREMENTS, r.u8("the response code")?)?;
        let _ = r.take(2, "the response parameters")?;
        let count = r.u8("the block count")?;
        let len = r.take(3, "the record length")?;
        let record_len = usize::from(len[0]) | usize::from(len[1]) << 8 | usize::from(len[2]) << 16;
        let record = r.take(record_len, "the measurement record")?;
        let blocks = parse_blocks(record, count)?;
        let responder_nonce: [u8; NONCE_LEN] = r.take(NONCE_LEN, "the responder nonce")?.try_into().expect("32 bytes");
        let opaque_len = usize::from(r.u16("the opaque data length")?);
        let opaque = parse_opaque(r.take(opaque_len, "the opaque data")?)?;
        let signed = 0..r.at;
        let signature: [u8; SIGNATURE_LEN] = r.take(SIGNATURE_LEN, "the signature")?.try_into().expect("96 bytes");
        if r.at != bytes.len() {
            return Err(SpdmError::Trailing(bytes.len() - r.at));
        }
        Ok(GpuReport { spdm_version: version, nonce, responder_nonce, blocks, opaque, signed, signature })
    }

    /// The measurement block with this (1-based) index.
    pub fn block(&self, index: u8) -> Option<&MeasurementBlock> {
        self.blocks.iter().find(|b| b.index == index)
    }
}

fn parse_blocks(record: &[u8], count: u8) -> Result<Vec<MeasurementBlock>, SpdmError> {
    let mut r = Reader { bytes: record, at: 0 };
    let mut blocks = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let index = r.u8("a measurement block index")?;
        let spec = r.u8("a measurement specification")?;
        expect("measurement specification", 0x01, spec)?;
        let size = usize::from(r.u16("a measurement block size")?);
        let mut v = Reader { bytes: r.take(size, "a measurement block")?, at: 0 };
        let value_type = v.u8("a measurement value type")?;
        let value_len = usize::from(v.u16("a measurement value length")?);
        let value = v.take(value_len, "a measurement value")?.to_vec();
        if v.at != size {
            return Err(SpdmError::Field {
                field: "measurement block size",
                expected: format!("{} (3 + value length)", 3 + value_len),
                found: size.to_string(),
            });
        }
        if blocks.iter().any(|b: &MeasurementBlock| b.index == index) {
            return Err(SpdmError::Field {
                field: "measurement block index",
                expected: "each index once".into(),
                found: format!("{index} twice"),
            });
        }
        blocks.push(MeasurementBlock { index, value_type, value });
    }
    if r.at != record.len() {
        return Err(SpdmError::Field {
            field: "measurement record length",
            expected: format!("{} bytes for {count} blocks", r.at),
            found: record.len().to_string(),
        });
    }
    Ok(blocks)
}

/// NVIDIA opaque data field types (the ones read here).
mod field {
    pub const DRIVER_VERSION: u16 = 3;
    pub const VBIOS_VERSION: u16 = 6;
    pub const NVDEC0_STATUS: u16 = 11;
    pub const BOARD_ID: u16 = 14;
    pub const CHIP_SKU: u16 = 15;
    pub const PROJECT: u16 = 17;
    pub const PROJECT_SKU: u16 = 18;
    pub const FWID: u16 = 20;
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    pub const CHIP_INFO: u16 = 35;
    /// The fields read here: each may appear once.
    pub const READ: [u16; 10] = [
        DRIVER_VERSION,
        VBIOS_VERSION,
        NVDEC0_STATUS,
        BOARD_ID,
        CHIP_SKU,
        PROJECT,
        PROJECT_SKU,
        FWID,
        OPAQUE_DATA_VERSION,
        CHIP_INFO,
    ];
}

fn text(v: &[u8]) -> Result<String, SpdmError> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    let s = std::str::from_utf8(&v[..end]).map_err(|_| SpdmError::Opaque("a text field is not UTF-8".into()))?;
    if !s.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(SpdmError::Opaque(format!("a text field holds unprintable characters: {s:?}")));
    }
    Ok(s.to_string())
}

fn parse_opaque(bytes: &[u8]) -> Result<OpaqueData, SpdmError> {
    let mut r = Reader { bytes, at: 0 };
    let mut o = OpaqueData::default();
    while r.at < bytes.len() {
        let kind = r.u16("an opaque field type")?;
        let len = usize::from(r.u16("an opaque field length")?);
        let v = r.take(len, "an opaque field")?;
        // A report naming two drivers (or two chips) says nothing true of either.
        if field::READ.contains(&kind) && o.fields.iter().any(|(k, _)| *k == kind) {
            return Err(SpdmError::Opaque(format!("field {kind} appears twice")));
        }
        match kind {
            field::DRIVER_VERSION => o.driver_version = Some(text(v)?),
            field::VBIOS_VERSION => {
                if v.len() < 5 {
                    return Err(SpdmError::Opaque(format!("VBIOS version of {} bytes, expected 8", v.len())));
                }
                // NVIDIA prints bytes 3.2.1.0.4.
                o.vbios_version = Some(format!("{:02X}.{:02X}.{:02X}.{:02X}.{:02X}", v[3], v[2], v[1], v[0], v[4]));
            }
            field::NVDEC0_STATUS => o.nvdec0_status = v.first().copied(),
            field::BOARD_ID => o.board_id = Some(v.to_vec()),
            field::CHIP_SKU => o.chip_sku = Some(text(v)?),
            field::CHIP_INFO => o.chip_info = Some(text(v)?),
            field::PROJECT => o.project = Some(text(v)?),
            field::PROJECT_SKU => o.project_sku = Some(text(v)?),
            field::FWID => o.fwid = Some(v.to_vec()),
            field::OPAQUE_DATA_VERSION if v.len() == 2 => {
                o.opaque_data_version = Some(u16::from_le_bytes([v[0], v[1]]))
            }
            _ => {}
        }
        o.fields.push((kind, v.to_vec()));
    }
    Ok(o)
}
