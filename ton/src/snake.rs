//! Byte strings in "snake" cells: 127 bytes in a cell, the rest in its first reference.

use tonlib_core::cell::{Cell, CellBuilder};

use crate::TonError;

const PER_CELL: usize = 127;

pub fn encode(bytes: &[u8]) -> Result<Cell, TonError> {
    let mut chunks: Vec<&[u8]> = bytes.chunks(PER_CELL).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let mut tail: Option<Cell> = None;
    for chunk in chunks.into_iter().rev() {
        let mut b = CellBuilder::new();
        b.store_slice(chunk)?;
        if let Some(t) = tail.take() {
            b.store_child(t)?;
        }
        tail = Some(b.build()?);
    }
    Ok(tail.expect("at least one chunk"))
}

/// Reads a snake string of at most `max_len` bytes.
pub fn decode(cell: &Cell, max_len: usize) -> Result<Vec<u8>, TonError> {
    let mut out = Vec::new();
    let mut current = cell;
    loop {
        if !current.bit_len().is_multiple_of(8) {
            return Err(TonError::Unexpected {
                what: "snake string cell",
                expected: "whole bytes".into(),
                found: format!("{} bits", current.bit_len()),
            });
        }
        let data = &current.data()[..current.bit_len() / 8];
        if out.len() + data.len() > max_len {
            return Err(TonError::Unexpected {
                what: "snake string",
                expected: format!("at most {max_len} bytes"),
                found: "more".into(),
            });
        }
        out.extend_from_slice(data);
        match current.references() {
            [] => return Ok(out),
            [next] => current = next,
            refs => {
                return Err(TonError::Unexpected {
                    what: "snake string cell",
                    expected: "at most one reference".into(),
                    found: format!("{}", refs.len()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_around_the_cell_boundary() {
        for len in [0, 1, 126, 127, 128, 254, 255, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let cell = encode(&bytes).unwrap();
            assert_eq!(decode(&cell, 1000).unwrap(), bytes, "length {len}");
        }
    }

    #[test]
    fn refuses_a_string_over_the_limit() {
        let cell = encode(&[7u8; 300]).unwrap();
        assert!(decode(&cell, 299).is_err());
    }
}
