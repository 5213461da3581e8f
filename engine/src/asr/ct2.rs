//! A bounded reader for CTranslate2's `model.bin` (binary versions 4 to 6),
//! the format of faster-whisper's Whisper models.
//!
//! The layout, little-endian: `u32` binary version; the spec's name and `u32`
//! revision; `u32` variable count, each variable a name, `u8` rank, `u32` per
//! dimension, `u8` type id and `u32` byte count followed by its bytes; then
//! `u32` alias count, each an alias and the variable it names. Strings are a
//! `u16` length and that many bytes, the last a NUL. No crate reads it; as
//! with the GGUF reader, every count and length is checked against the bytes
//! left and a limit before anything is allocated, each variable's byte count
//! must be its shape times its type's width, and nothing may follow the last
//! alias.

use std::collections::BTreeMap;
use std::ops::Range;

use half::f16;

use crate::LoadError;

/// Binary versions read (CTranslate2 4.x writes 6; versions 4 and 5 carry the same fields).
const VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;
/// More variables or aliases than any model has (Whisper large has about 1,300).
const MAX_VARIABLES: u32 = 1 << 16;
const MAX_RANK: u8 = 8;
/// Longest variable or spec name.
const MAX_NAME: u16 = 1024;

/// A variable's element type, by CTranslate2's type id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl DType {
    fn from_id(id: u8) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            _ => return None,
        })
    }

    pub fn width(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }
}

/// One variable: its shape, type and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub shape: Vec<usize>,
    pub dtype: DType,
    bytes: Range<usize>,
}

/// A parsed `model.bin`, holding the file's bytes.
pub struct Ct2Model {
    pub binary_version: u32,
    /// The model specification, e.g. `WhisperSpec`.
    pub spec: String,
    pub spec_revision: u32,
    variables: BTreeMap<String, Variable>,
    /// Alias -> the variable it names.
    aliases: BTreeMap<String, String>,
    data: Vec<u8>,
}

impl Ct2Model {
    /// Parses `data`, the whole `model.bin`.
    pub fn parse(data: Vec<u8>) -> Result<Ct2Model, LoadError> {
        let mut r = Reader { data: &data, at: 0 };
        let binary_version = r.u32("the binary version")?;
        if !VERSIONS.contains(&binary_version) {
            return Err(bad(format!(
                "binary version {binary_version}; this reader takes versions {} to {}",
                VERSIONS.start(),
                VERSIONS.end()
            )));
        }
        let spec = r.string("the spec name")?;
        let spec_revision = r.u32("the spec revision")?;
        let count = r.count("variables")?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string("a variable name")?;
            let rank = r.u8("a rank")?;
            if rank > MAX_RANK {
                return Err(bad(format!("variable {name}: rank {rank}; at most {MAX_RANK}")));
            }
            let mut shape = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                shape.push(r.u32("a dimension")? as usize);
            }
            let id = r.u8("a type id")?;
            let dtype = DType::from_id(id).ok_or_else(|| bad(format!("variable {name}: unknown type id {id}")))?;
            let size = r.u32("a byte count")? as usize;
            let expected = shape
                .iter()
                .try_fold(dtype.width(), |n, &d| n.checked_mul(d))
                .ok_or_else(|| bad(format!("variable {name}: shape {shape:?} overflows")))?;
            if size != expected {
                return Err(bad(format!(
                    "variable {name}: {size} bytes, but shape {shape:?} of {dtype:?} takes {expected}"
                )));
            }
            let bytes = r.take(size, "variable data")?;
            if variables.insert(name.clone(), Variable { shape, dtype, bytes }).is_some() {
                return Err(bad(format!("variable {name} appears twice")));
            }
        }
        let count = r.count("aliases")?;
        let mut aliases = BTreeMap::new();
        for _ in 0..count {
            let alias = r.string("an alias")?;
            let target = r.string("an alias target")?;
            if !variables.contains_key(&target) {
                return Err(bad(format!("alias {alias} names {target}, which is not a variable")));
            }
            if variables.contains_key(&alias) || aliases.insert(alias.clone(), target).is_some() {
                return Err(bad(format!("alias {alias} is defined twice")));
            }
        }
        if r.at != data.len() {
            return Err(bad(format!("{} bytes follow the last alias", data.len() - r.at)));
        }
        Ok(Ct2Model { binary_version, spec, spec_revision, variables, aliases, data })
    }

    /// Variable names (aliases not included).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.variables.keys().map(String::as_str)
    }

    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// A variable by its name or an alias.
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.variables.get(name)
    }

    /// A variable's raw bytes.
    pub fn bytes(&self, v: &Variable) -> &[u8] {
        &self.data[v.bytes.clone()]
    }

    /// A float variable's values widened to f32, with its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), LoadError> {
        let v = self.variable(name).ok_or_else(|| bad(format!("no variable {name}")))?;
        let b = self.bytes(v);
        let values = match v.dtype {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(bad(format!("variable {name} is {other:?}, not a float"))),
        };
        Ok((v.shape.clone(), values))
    }

    /// A scalar integer variable (flags and small settings).
    pub fn scalar_int(&self, name: &str) -> Option<i64> {
        let v = self.variable(name)?;
        if !v.shape.is_empty() {
            return None;
        }
        let b = self.bytes(v);
        Some(match v.dtype {
            DType::I8 => i8::from_le_bytes([b[0]]) as i64,
            DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => return None,
        })
    }
}

fn bad(msg: String) -> LoadError {
    LoadError::Format(format!("CTranslate2 model.bin: {msg}"))
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<Range<usize>, LoadError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            bad(format!(
                "{what}: {n} bytes at offset {}, past the end of the file ({} bytes)",
                self.at,
                self.data.len()
            ))
        })?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn u8(&mut self, what: &str) -> Result<u8, LoadError> {
        let r = self.take(1, what)?;
        Ok(self.data[r.start])
    }

    fn u16(&mut self, what: &str) -> Result<u16, LoadError> {
        let r = self.take(2, what)?;
        Ok(u16::from_le_bytes([self.data[r.start], self.data[r.start + 1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        let r = self.take(4, what)?;
        let b = &self.data[r];
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count, at most [`MAX_VARIABLES`].
    fn count(&mut self, what: &str) -> Result<u32, LoadError> {
        let n = self.u32(what)?;
        if n > MAX_VARIABLES {
            return Err(bad(format!("{n} {what}; at most {MAX_VARIABLES}")));
        }
        Ok(n)
    }

    /// A `u16`-length string whose last byte is its NUL terminator.
    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let n = self.u16(what)?;
        if n == 0 || n > MAX_NAME {
            return Err(bad(format!("{what}: length {n}; expected 1 to {MAX_NAME} bytes with the final NUL")));
        }
        let r = self.take(n as usize, what)?;
        let bytes = &self.data[r];
        let (text, nul) = bytes.split_at(bytes.len() - 1);
        if nul != [0] || text.contains(&0) {
            return Err(bad(format!("{what}: expected one NUL, at its end")));
        }
        String::from_utf8(text.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer for the format, to build files the tests break.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn string(&mut self, s: &str) -> &mut Self {
            self.0.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn variable(&mut self, name: &str, shape: &[u32], id: u8, data: &[u8]) -> &mut Self {
            self.string(name);
            self.0.push(shape.len() as u8);
            for d in shape {
                self.u32(*d);
            }
            self.0.push(id);
            self.u32(data.len() as u32);
            self.0.extend_from_slice(data);
            self
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(6).string("WhisperSpec").u32(3).u32(3);
        let halves: Vec<u8> =
            [1.5f32, -2.0, 0.25, 8.0, 0.0, -0.5].iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        w.variable("decoder/embeddings/weight", &[3, 2], 4, &halves);
        w.variable("encoder/conv1/bias", &[2], 0, &[0, 0, 128, 63, 0, 0, 0, 64]);
        w.variable("decoder/scale_embeddings", &[], 1, &[1]);
        w.u32(1).string("decoder/projection/weight").string("decoder/embeddings/weight");
        w.0
    }

    #[test]
    fn reads_variables_types_and_aliases() {
        let m = Ct2Model::parse(sample()).unwrap();
        assert_eq!((m.binary_version, m.spec.as_str(), m.spec_revision), (6, "WhisperSpec", 3));
        assert_eq!(m.names().count(), 3);
        let (shape, values) = m.f32("decoder/projection/weight").unwrap();
        assert_eq!((shape, values), (vec![3, 2], vec![1.5, -2.0, 0.25, 8.0, 0.0, -0.5]), "through the alias");
        assert_eq!(m.f32("encoder/conv1/bias").unwrap().1, vec![1.0, 2.0]);
        assert_eq!(m.scalar_int("decoder/scale_embeddings"), Some(1));
        assert!(m.f32("decoder/scale_embeddings").is_err(), "an int8 flag is not a float");
        assert!(m.variable("nothing").is_none());
    }

    #[test]
    fn every_truncation_and_every_trailing_byte_is_refused_without_a_panic() {
        let whole = sample();
        for end in 0..whole.len() {
            assert!(Ct2Model::parse(whole[..end].to_vec()).is_err(), "truncated at {end}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        assert!(Ct2Model::parse(longer).is_err());
        // Every single byte changed: parsed or refused, never a panic or a huge allocation.
        for i in 0..whole.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = whole.clone();
                b[i] ^= flip;
                let _ = Ct2Model::parse(b);
            }
        }
    }

    #[test]
    fn lies_about_sizes_types_and_names_are_refused() {
        let refused = |b: Vec<u8>, why: &str| {
            let e = Ct2Model::parse(b).err().expect("refused").to_string();
            assert!(e.contains(why), "{e}");
        };
        let head = |w: &mut Writer| {
            w.u32(6).string("S").u32(1);
        };
        let mut w = Writer::default();
        w.u32(7).string("S").u32(1).u32(0).u32(0);
        refused(w.0, "binary version 7");
        let mut w = Writer::default();
        head(&mut w);
        w.u32(u32::MAX);
        refused(w.0, "at most");
        let mut w = Writer::default();
        head(&mut w);
        w.u32(1).variable("v", &[4], 0, &[0; 8]).u32(0);
        refused(w.0, "takes 16");
        let mut w = Writer::default();
        head(&mut w);
        w.u32(1).variable("v", &[u32::MAX, u32::MAX, u32::MAX], 0, &[]).u32(0);
        refused(w.0, "overflows");
        let mut w = Writer::default();
        head(&mut w);
        w.u32(1).variable("v", &[1], 9, &[0]).u32(0);
        refused(w.0, "unknown type id 9");
        let mut w = Writer::default();
        head(&mut w);
        w.u32(2).variable("v", &[1], 1, &[0]).variable("v", &[1], 1, &[0]).u32(0);
        refused(w.0, "appears twice");
        let mut w = Writer::default();
        head(&mut w);
        w.u32(1).variable("v", &[1], 1, &[0]).u32(1).string("a").string("missing");
        refused(w.0, "not a variable");
        let mut w = Writer::default();
        w.u32(6);
        w.0.extend_from_slice(&3u16.to_le_bytes());
        w.0.extend_from_slice(b"a\0b");
        refused(w.0, "one NUL");
        let mut w = Writer::default();
        w.u32(6);
        w.0.extend_from_slice(&(MAX_NAME + 1).to_le_bytes());
        refused(w.0, "expected 1 to");
    }
}
