//! Deterministic CBOR (RFC 8949 section 4.2.1) on top of `ciborium`.
//!
//! Values are serialized through `ciborium::Value`, whose maps are then
//! sorted by the bytewise order of their encoded keys, so that the same
//! claims always produce the same bytes (and hence the same report data).

use ciborium::Value;
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CborError {
    #[error("CBOR {what} of {found} bytes exceeds the limit of {limit}")]
    TooLarge { what: &'static str, found: usize, limit: usize },
    #[error("malformed CBOR {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("CBOR {what} is not in deterministic encoding")]
    NotDeterministic { what: &'static str },
}

/// Serializes `value` in deterministic encoding.
pub fn to_canonical_vec<T: Serialize>(value: &T) -> Vec<u8> {
    let v = Value::serialized(value).expect("our types serialize to CBOR");
    let mut out = Vec::new();
    ciborium::into_writer(&canonical(v), &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes `bytes` (at most `limit` of them) as a `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize, what: &'static str) -> Result<T, CborError> {
    if bytes.len() > limit {
        return Err(CborError::TooLarge { what, found: bytes.len(), limit });
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let value: T =
        ciborium::from_reader(&mut cursor).map_err(|e| CborError::Malformed { what, reason: e.to_string() })?;
    if cursor.position() as usize != bytes.len() {
        return Err(CborError::Malformed { what, reason: "trailing bytes after the item".into() });
    }
    Ok(value)
}

/// Decodes and insists that `bytes` were in deterministic encoding.
pub fn from_canonical_slice<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    limit: usize,
    what: &'static str,
) -> Result<T, CborError> {
    let value: T = from_slice(bytes, limit, what)?;
    if to_canonical_vec(&value) != bytes {
        return Err(CborError::NotDeterministic { what });
    }
    Ok(value)
}

fn canonical(v: Value) -> Value {
    match v {
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, (Value, Value))> = entries
                .into_iter()
                .map(|(k, v)| {
                    let (k, v) = (canonical(k), canonical(v));
                    let mut enc = Vec::new();
                    ciborium::into_writer(&k, &mut enc).expect("writing to a Vec cannot fail");
                    (enc, (k, v))
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(keyed.into_iter().map(|(_, kv)| kv).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        Value::Tag(t, inner) => Value::Tag(t, Box::new(canonical(*inner))),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn map_keys_sorted_by_encoded_bytes() {
        // "b" (0x61 0x62) sorts before "aa" (0x62 0x61 0x61): shorter first.
        let mut m = BTreeMap::new();
        m.insert("aa".to_string(), 1u8);
        m.insert("b".to_string(), 2u8);
        let bytes = to_canonical_vec(&m);
        assert_eq!(bytes, [0xa2, 0x61, b'b', 0x02, 0x62, b'a', b'a', 0x01]);
        let back: BTreeMap<String, u8> = from_canonical_slice(&bytes, 100, "test").unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn rejects_non_canonical_trailing_and_oversized() {
        // same map with "aa" first
        let bytes = [0xa2, 0x62, b'a', b'a', 0x01, 0x61, b'b', 0x02];
        let r: Result<BTreeMap<String, u8>, _> = from_canonical_slice(&bytes, 100, "test");
        assert_eq!(r, Err(CborError::NotDeterministic { what: "test" }));
        let r: Result<u8, _> = from_slice(&[0x01, 0x02], 100, "test");
        assert!(matches!(r, Err(CborError::Malformed { .. })));
        let r: Result<u8, _> = from_slice(&[0x01; 200], 100, "test");
        assert!(matches!(r, Err(CborError::TooLarge { .. })));
        // a byte string claiming 2^32 bytes with none present must fail, not allocate
        let r: Result<serde_bytes::ByteBuf, _> = from_slice(&[0x5a, 0xff, 0xff, 0xff, 0xff], 100, "test");
        assert!(matches!(r, Err(CborError::Malformed { .. })));
    }
}
