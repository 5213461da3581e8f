//! The structure of a bag of cells, checked before tonlib-core parses it.
//!
//! tonlib-core's BOC parser trusts the header: a cell count it allocates for
//! before reading, reference and root indexes it uses unchecked. Hostile input
//! made it panic within a few hundred mutations of a valid BOC (an index past
//! the last cell), and a header claiming 2^32 cells would make it allocate
//! for them. So every BOC from outside is walked here first: counts bounded
//! by the input's length, every index in range and pointing forward, no
//! exotic cells (nothing COCOON reads contains one), no trailing bytes, and
//! the CRC32C when the BOC declares one.
//!
//! ```text
//! serialized_boc#b5ee9c72 has_idx:(## 1) has_crc32c:(## 1) has_cache_bits:(## 1) flags:(## 2) { flags = 0 }
//!   size:(## 3) { size <= 4 } off_bytes:(## 8) { off_bytes <= 8 }
//!   cells:(##(size * 8)) roots:(##(size * 8)) { roots >= 1 } absent:(##(size * 8)) { roots + absent <= cells }
//!   tot_cells_size:(##(off_bytes * 8)) root_list:(roots * ##(size * 8))
//!   index:has_idx?(cells * ##(off_bytes * 8)) cell_data:(tot_cells_size * [ uint8 ]) crc32c:has_crc32c?uint32
//! ```

use crate::TonError;

const MAGIC: [u8; 4] = [0xb5, 0xee, 0x9c, 0x72];

fn bad(why: impl Into<String>) -> TonError {
    TonError::Boc(why.into())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], TonError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| bad(format!("ends inside {what} (at byte {})", self.pos)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize, what: &str) -> Result<usize, TonError> {
        let v = self.take(n, what)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        usize::try_from(v).map_err(|_| bad(format!("{what} {v} is too large")))
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }
}

pub fn check(bytes: &[u8]) -> Result<(), TonError> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4, "the magic")? != MAGIC {
        return Err(bad("expected the generic BOC magic b5ee9c72"));
    }
    let flags = r.take(1, "the flags")?[0];
    let (has_idx, has_crc) = (flags & 0x80 != 0, flags & 0x40 != 0);
    if flags & 0x18 != 0 {
        return Err(bad(format!("reserved flags set ({flags:#04x})")));
    }
    let size = usize::from(flags & 0x07);
    if !(1..=4).contains(&size) {
        return Err(bad(format!("reference size {size}, expected 1 to 4 bytes")));
    }
    let off_bytes = usize::from(r.take(1, "the offset size")?[0]);
    if !(1..=8).contains(&off_bytes) {
        return Err(bad(format!("offset size {off_bytes}, expected 1 to 8 bytes")));
    }
    let cells = r.uint(size, "the cell count")?;
    let roots = r.uint(size, "the root count")?;
    let absent = r.uint(size, "the absent count")?;
    let _total = r.uint(off_bytes, "the data size")?;
    // Every cell takes at least its two descriptor bytes.
    if cells == 0 || cells > r.left() / 2 {
        return Err(bad(format!("{cells} cells cannot fit in {} bytes", bytes.len())));
    }
    if roots == 0 || absent != 0 || roots > cells {
        return Err(bad(format!("{roots} roots and {absent} absent cells of {cells}")));
    }
    for _ in 0..roots {
        let root = r.uint(size, "the root list")?;
        if root >= cells {
            return Err(bad(format!("root {root} of {cells} cells")));
        }
    }
    if has_idx {
        r.take(cells.checked_mul(off_bytes).ok_or_else(|| bad("index too large"))?, "the index")?;
    }
    for i in 0..cells {
        let d = r.take(2, "a cell descriptor")?;
        let (d1, d2) = (d[0], d[1]);
        let refs = usize::from(d1 & 0x07);
        if refs > 4 {
            return Err(bad(format!("cell {i} has {refs} references (at most 4)")));
        }
        if d1 & 0x08 != 0 || d1 >> 5 != 0 {
            return Err(bad(format!("cell {i} is exotic or has a level; none is expected here")));
        }
        if d1 & 0x10 != 0 {
            // Stored hash and depth of a level-0 cell.
            r.take(34, "a cell's stored hash")?;
        }
        let len = usize::from(d2 >> 1) + usize::from(d2 & 1);
        let data = r.take(len, "a cell's data")?;
        if d2 & 1 == 1 && data.last().is_none_or(|&b| b == 0) {
            return Err(bad(format!("cell {i}'s last byte has no completion tag")));
        }
        for _ in 0..refs {
            let to = r.uint(size, "a reference")?;
            if to <= i || to >= cells {
                return Err(bad(format!("cell {i} refers to cell {to} (of {cells}); references point forward")));
            }
        }
    }
    if has_crc {
        r.take(4, "the CRC32C")?;
    }
    if r.left() != 0 {
        return Err(bad(format!("{} bytes after the last cell", r.left())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn what_made_tonlib_panic_or_allocate_is_refused() {
        // Found by the fuzz smoke test: a reference past the last cell (tonlib-core indexed with it).
        let crash =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/ton/regression_ref_past_last_cell.boc"))
                .unwrap();
        assert!(check(&crash).is_err());
        assert!(crate::parse_boc(&crash, 4096).is_err());
        // A header claiming 2^32 - 1 cells in a dozen bytes.
        let huge = [0xb5, 0xee, 0x9c, 0x72, 0x04, 0x01, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0];
        assert!(check(&huge).unwrap_err().to_string().contains("cannot fit"));
        // A valid BOC passes; one byte more or less does not.
        let cell = crate::Voucher {
            channel: tonlib_core::TonAddress::NULL,
            binding: crate::channel::ChannelBinding { global_id: -239, instance: 1 },
            total: 1,
        }
        .to_cell()
        .unwrap();
        let boc = crate::to_boc(&cell).unwrap();
        check(&boc).unwrap();
        assert!(check(&[boc.as_slice(), &[0]].concat()).unwrap_err().to_string().contains("after the last cell"));
        assert!(check(&boc[..boc.len() - 1]).is_err());
    }
}
