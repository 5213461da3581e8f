//! A bounded reader of TVM dictionaries (`Hashmap n X`, as `map<K, V>` in Tolk
//! stores them) with 256-bit keys.
//!
//! tonlib-core's dictionary parser panics on some malformed input (a label
//! of length 0 read as an integer underflows; the fuzz smoke test found it),
//! so dictionaries that come from outside go through this one: every label
//! length is checked against the bits left, the depth is bounded by the key
//! length, and the number of entries by the caller.
//!
//! ```text
//! hm_edge#_ label:(HmLabel ~l n) {n = (~m) + l} node:(HashmapNode m X) = Hashmap n X;
//! hmn_leaf#_ value:X = HashmapNode 0 X;
//! hmn_fork#_ left:^(Hashmap n X) right:^(Hashmap n X) = HashmapNode (n + 1) X;
//! hml_short$0 len:(Unary ~n) {n <= m} s:(n * Bit) = HmLabel ~n m;
//! hml_long$10 n:(#<= m) s:(n * Bit) = HmLabel ~n m;
//! hml_same$11 v:Bit n:(#<= m) = HmLabel ~n m;
//! ```

use tonlib_core::cell::{Cell, CellParser, TonCellError};

use crate::TonError;

const KEY_BITS: usize = 256;

fn malformed(found: String) -> TonError {
    TonError::Unexpected { what: "dictionary", expected: "a well-formed Hashmap 256".into(), found }
}

/// Reads `n` bits as an integer (`n` ≤ 16, as label lengths are).
fn read_small(p: &mut CellParser, n: usize) -> Result<usize, TonError> {
    let mut v = 0usize;
    for _ in 0..n {
        v = (v << 1) | usize::from(p.load_bit()?);
    }
    Ok(v)
}

/// Bits of `#<= m`: enough for any number up to `m`.
fn len_bits(m: usize) -> usize {
    (usize::BITS - m.leading_zeros()) as usize
}

/// Appends the label's bits to `key`; returns how many.
fn read_label(p: &mut CellParser, m: usize, key: &mut Vec<bool>) -> Result<usize, TonError> {
    let n = if !p.load_bit()? {
        // hml_short: unary length, then the bits.
        let mut n = 0;
        while p.load_bit()? {
            n += 1;
            if n > m {
                return Err(malformed(format!("a short label longer than the {m} bits left")));
            }
        }
        for _ in 0..n {
            key.push(p.load_bit()?);
        }
        n
    } else if !p.load_bit()? {
        // hml_long
        let n = read_small(p, len_bits(m))?;
        if n > m {
            return Err(malformed(format!("a long label of {n} bits with {m} left")));
        }
        for _ in 0..n {
            key.push(p.load_bit()?);
        }
        n
    } else {
        // hml_same
        let v = p.load_bit()?;
        let n = read_small(p, len_bits(m))?;
        if n > m {
            return Err(malformed(format!("a repeated label of {n} bits with {m} left")));
        }
        key.extend(std::iter::repeat_n(v, n));
        n
    };
    Ok(n)
}

fn key_bytes(bits: &[bool]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

fn walk<V>(
    cell: &Cell,
    m: usize,
    key: &mut Vec<bool>,
    out: &mut Vec<([u8; 32], V)>,
    max_entries: usize,
    value: &dyn Fn(&mut CellParser) -> Result<V, TonCellError>,
) -> Result<(), TonError> {
    let mut p = cell.parser();
    let l = read_label(&mut p, m, key)?;
    let rest = m - l;
    if rest == 0 {
        if out.len() == max_entries {
            return Err(malformed(format!("more than {max_entries} entries")));
        }
        out.push((key_bytes(key), value(&mut p)?));
    } else {
        let (left, right) = (p.next_reference()?, p.next_reference()?);
        for (bit, child) in [(false, left), (true, right)] {
            key.push(bit);
            walk(&child, rest - 1, key, out, max_entries, value)?;
            key.pop();
        }
    }
    key.truncate(key.len() - l);
    Ok(())
}

/// The entries of a dictionary with 256-bit keys rooted at `root`, in key order.
pub fn read_256<V>(
    root: &Cell,
    max_entries: usize,
    value: &dyn Fn(&mut CellParser) -> Result<V, TonCellError>,
) -> Result<Vec<([u8; 32], V)>, TonError> {
    let mut out = Vec::new();
    walk(root, KEY_BITS, &mut Vec::with_capacity(KEY_BITS), &mut out, max_entries, value)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use num_bigint::BigUint;
    use tonlib_core::cell::CellBuilder;
    use tonlib_core::cell::dict::predefined_writers::val_writer_unsigned_min_size;

    use super::*;

    #[test]
    fn reads_what_tonlib_builds_for_every_size() {
        for n in [1usize, 2, 3, 7, 64] {
            let entries: HashMap<BigUint, u64> =
                (0..n).map(|i| (BigUint::from_bytes_be(&[(i * 37 % 256) as u8; 32]), i as u64 + 1)).collect();
            let mut b = CellBuilder::new();
            b.store_dict_data(256, val_writer_unsigned_min_size, entries.clone()).unwrap();
            let cell = b.build().unwrap();
            let read = read_256(&cell, 1000, &|p| {
                let bits = p.remaining_bits();
                p.load_uint(bits)
            })
            .unwrap();
            assert_eq!(read.len(), entries.len());
            for (k, v) in read {
                assert_eq!(entries[&BigUint::from_bytes_be(&k)], u64::try_from(&v).unwrap());
            }
        }
    }

    #[test]
    fn malformed_dictionaries_are_errors_not_panics() {
        // A long label with a zero length read: what made tonlib-core's parser underflow.
        let cells: Vec<Cell> = (0u8..=255)
            .flat_map(|first| {
                (0u8..4).map(move |second| {
                    let mut b = CellBuilder::new();
                    b.store_u8(8, first).unwrap().store_u8(8, second).unwrap();
                    b.build().unwrap()
                })
            })
            .collect();
        for c in &cells {
            let _ = read_256(c, 10, &|p| p.load_bit());
        }
        // Too many entries.
        let entries: HashMap<BigUint, u64> = (1..=5u8).map(|i| (BigUint::from(i), 1)).collect();
        let mut b = CellBuilder::new();
        b.store_dict_data(256, val_writer_unsigned_min_size, entries).unwrap();
        let cell = Arc::new(b.build().unwrap());
        assert!(read_256(&cell, 4, &|p| p.load_bit()).unwrap_err().to_string().contains("more than 4 entries"));
    }
}
