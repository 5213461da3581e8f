//! A bounded reader for GGUF files (llama.cpp's model format, versions 2 and 3)
//! and the dequantisation of the tensor types the engine accepts.
//!
//! Written here rather than taken from a crate: the GGUF readers on crates.io are
//! small single-maintainer projects that trust the lengths in the file; a model
//! file is outside input, so every count and length here is checked against the
//! file size and a limit before anything is allocated.

use std::collections::BTreeMap;

use half::f16;

use crate::LoadError;
use crate::quant::QuantKind;

const MAGIC: &[u8; 4] = b"GGUF";
/// More metadata entries or tensors than any real model has.
const MAX_ENTRIES: u64 = 1 << 20;
/// Longest string (chat templates are the long ones).
const MAX_STRING: u64 = 1 << 24;
/// Largest metadata array (token lists: 256k vocabularies exist).
const MAX_ARRAY: u64 = 1 << 22;
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this engine can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    /// One of the block formats `quant` reads.
    Block(QuantKind),
}

impl TensorType {
    /// The block format, for the types `quant` multiplies without widening.
    pub fn block_format(self) -> Option<QuantKind> {
        match self {
            TensorType::Block(q) => Some(q),
            _ => None,
        }
    }

    fn from_id(id: u32) -> Result<Self, LoadError> {
        Ok(match id {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Block(QuantKind::Q4_0),
            3 => TensorType::Block(QuantKind::Q4_1),
            6 => TensorType::Block(QuantKind::Q5_0),
            7 => TensorType::Block(QuantKind::Q5_1),
            8 => TensorType::Block(QuantKind::Q8_0),
            12 => TensorType::Block(QuantKind::Q4_K),
            13 => TensorType::Block(QuantKind::Q5_K),
            14 => TensorType::Block(QuantKind::Q6_K),
            30 => TensorType::BF16,
            other => {
                return Err(LoadError::Format(format!(
                    "ggml tensor type {other} is not supported; expected F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, \
                     Q8_0, Q4_K, Q5_K or Q6_K"
                )));
            }
        })
    }

    /// (elements per block, bytes per block)
    fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::BF16 => (1, 2),
            TensorType::Block(q) => (q.block_elements() as u64, q.block_bytes() as u64),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// ggml order: the first dimension varies fastest.
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Absolute offset of the data in the file.
    pub offset: usize,
    pub len: usize,
}

impl TensorInfo {
    /// Dimensions in PyTorch order (slowest first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The parsed header of a GGUF file: metadata and where each tensor's bytes are.
#[derive(Debug)]
pub struct Gguf {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], LoadError> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(LoadError::Format(format!(
                "GGUF {what} at offset {} needs {n} bytes; the file has {} left",
                self.pos,
                self.buf.len() - self.pos
            )));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LoadError> {
        Ok(self.take(N as u64, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn count(&mut self, what: &str, limit: u64) -> Result<u64, LoadError> {
        let n = self.u64(what)?;
        if n > limit {
            return Err(LoadError::Format(format!("GGUF {what} is {n}; the limit is {limit}")));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let n = self.count(what, MAX_STRING)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| LoadError::Format(format!("GGUF {what} is not UTF-8")))
    }

    fn value(&mut self, kind: u32, depth: u8) -> Result<Value, LoadError> {
        Ok(match kind {
            0 => Value::U64(self.array::<1>("u8")?[0].into()),
            1 => Value::I64((self.array::<1>("i8")?[0] as i8).into()),
            2 => Value::U64(u16::from_le_bytes(self.array("u16")?).into()),
            3 => Value::I64(i16::from_le_bytes(self.array("i16")?).into()),
            4 => Value::U64(self.u32("u32")?.into()),
            5 => Value::I64(i32::from_le_bytes(self.array("i32")?).into()),
            6 => Value::F64(f32::from_le_bytes(self.array("f32")?).into()),
            7 => match self.array::<1>("bool")?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(LoadError::Format(format!("GGUF bool is {b}; expected 0 or 1"))),
            },
            8 => Value::String(self.string("string")?),
            9 if depth == 0 => {
                let inner = self.u32("array type")?;
                let n = self.count("array length", MAX_ARRAY)?;
                // Each element takes at least one byte: a length beyond the file is refused before allocating.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(LoadError::Format(format!("GGUF array of {n} elements is longer than the file")));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            9 => return Err(LoadError::Format("GGUF nested arrays are not supported".into())),
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            other => return Err(LoadError::Format(format!("GGUF metadata type {other} is unknown"))),
        })
    }
}

impl Gguf {
    /// Parses the header of `file` (the whole file, usually memory-mapped) and
    /// checks that every tensor lies inside it.
    pub fn parse(file: &[u8]) -> Result<Self, LoadError> {
        let mut c = Cursor { buf: file, pos: 0 };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(LoadError::Format(format!("not a GGUF file: magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(LoadError::Format(format!("GGUF version {version}; expected 2 or 3")));
        }
        let n_tensors = c.count("tensor count", MAX_ENTRIES)?;
        let n_kv = c.count("metadata count", MAX_ENTRIES)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let kind = c.u32("metadata type")?;
            let value = c.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor rank")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(LoadError::Format(format!("tensor {name} has rank {n_dims}; expected 1 to {MAX_DIMS}")));
            }
            let dims = (0..n_dims).map(|_| c.u64("tensor dimension")).collect::<Result<Vec<_>, _>>()?;
            let kind = TensorType::from_id(c.u32("tensor type")?)
                .map_err(|e| LoadError::Format(format!("tensor {name}: {e}")))?;
            let rel = c.u64("tensor offset")?;
            infos.push((name, dims, kind, rel));
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(LoadError::Format(format!("GGUF alignment {alignment} is not a power of two")));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, kind, rel) in infos {
            let elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let (per_block, block_bytes) = kind.block();
            // ggml blocks never straddle rows.
            let rows_fit = dims.first().is_none_or(|d| d.is_multiple_of(per_block));
            let len = elements
                .filter(|e| rows_fit && e.is_multiple_of(per_block))
                .and_then(|e| (e / per_block).checked_mul(block_bytes))
                .ok_or_else(|| {
                    LoadError::Format(format!("tensor {name}: dimensions {dims:?} do not fit {kind:?} blocks"))
                })?;
            let offset = data_start.checked_add(rel);
            let in_file = offset.and_then(|o| o.checked_add(len)).is_some_and(|end| end <= file.len() as u64);
            if !in_file {
                return Err(LoadError::Format(format!(
                    "tensor {name}: {len} bytes at data offset {rel} run past the end of the file ({} bytes)",
                    file.len()
                )));
            }
            let info = TensorInfo { dims, kind, offset: offset.unwrap_or(0) as usize, len: len as usize };
            if tensors.insert(name.clone(), info).is_some() {
                return Err(LoadError::Format(format!("tensor {name} appears twice")));
            }
        }
        Ok(Gguf { version, metadata, tensors })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Result<&str, LoadError> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| missing(key, "string"))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, LoadError> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| missing(key, "integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, LoadError> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| missing(key, "number"))
    }

    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>, LoadError> {
        let arr = self.get(key).and_then(Value::as_array).ok_or_else(|| missing(key, "array of strings"))?;
        arr.iter().map(|v| v.as_str().ok_or_else(|| missing(key, "array of strings"))).collect()
    }
}

fn missing(key: &str, kind: &str) -> LoadError {
    LoadError::Format(format!("GGUF metadata {key} is missing or is not a {kind}"))
}

/// Dequantises one tensor's bytes to f32, in ggml element order.
pub fn dequantize(kind: TensorType, bytes: &[u8]) -> Vec<f32> {
    match kind {
        TensorType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        TensorType::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        TensorType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        TensorType::Block(q) => crate::quant::dequantize_bytes(q, bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(n_tensors: u64, kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for (k, t, v) in kvs {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(t.to_le_bytes());
            b.extend(v);
        }
        b
    }

    fn tensor(b: &mut Vec<u8>, name: &str, dims: &[u64], kind: u32, offset: u64) {
        b.extend((name.len() as u64).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(kind.to_le_bytes());
        b.extend(offset.to_le_bytes());
    }

    #[test]
    fn parses_metadata_and_tensor_placement() {
        let mut s = 5u64.to_le_bytes().to_vec();
        s.extend(b"llama");
        let mut b = header(1, &[("general.architecture", 8, s), ("x.count", 4, 7u32.to_le_bytes().to_vec())]);
        tensor(&mut b, "w", &[2, 3], 0, 0);
        let start = b.len().div_ceil(32) * 32;
        b.resize(start, 0);
        for i in 0..6 {
            b.extend((i as f32).to_le_bytes());
        }
        let g = Gguf::parse(&b).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("x.count").unwrap(), 7);
        let w = &g.tensors["w"];
        assert_eq!(w.shape(), vec![3, 2]);
        assert_eq!(dequantize(w.kind, &b[w.offset..w.offset + w.len]), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn refuses_lengths_beyond_the_file() {
        let mut b = header(0, &[]);
        b[16..24].copy_from_slice(&1u64.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        assert!(matches!(Gguf::parse(&b), Err(LoadError::Format(m)) if m.contains("limit")));
        let mut b = header(1, &[]);
        tensor(&mut b, "w", &[1 << 40, 1 << 30], 0, 0);
        assert!(matches!(Gguf::parse(&b), Err(LoadError::Format(m)) if m.contains("fit") || m.contains("past")));
        let mut b = header(1, &[]);
        tensor(&mut b, "w", &[64], 0, 0);
        assert!(matches!(Gguf::parse(&b), Err(LoadError::Format(m)) if m.contains("past the end")));
        assert!(Gguf::parse(b"GGML").is_err());
        // Every prefix of a valid file is refused with an error, never a panic.
        let mut ok = header(1, &[("a", 4, 1u32.to_le_bytes().to_vec())]);
        tensor(&mut ok, "w", &[32], 8, 0);
        for n in 0..ok.len() {
            assert!(Gguf::parse(&ok[..n]).is_err());
        }
    }

    #[test]
    fn dequantizes_q4_and_q8_blocks() {
        let d = f16::from_f32(0.5).to_le_bytes();
        let m = f16::from_f32(-1.0).to_le_bytes();
        let mut q4_1 = [d, m].concat();
        q4_1.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(TensorType::Block(QuantKind::Q4_1), &q4_1);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 15.0 * 0.5 - 1.0);
        assert_eq!(x[16], 15.0 * 0.5 - 1.0);
        assert_eq!(x[31], -1.0);
        let mut q4_0 = d.to_vec();
        q4_0.extend((0..16u8).map(|j| j | (j << 4)));
        let x = dequantize(TensorType::Block(QuantKind::Q4_0), &q4_0);
        assert_eq!((x[0], x[8], x[24]), (-4.0, 0.0, 0.0));
        let mut q8 = d.to_vec();
        q8.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let x = dequantize(TensorType::Block(QuantKind::Q8_0), &q8);
        assert_eq!((x[0], x[16], x[31]), (-8.0, 0.0, 7.5));
    }
}
