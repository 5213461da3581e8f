//! The GGUF block formats, and a matrix kept in one of them.

use super::dequant::dequantize_blocks;
use super::{BLOCK, SUPER_BLOCK, simd};
use crate::LoadError;

/// A GGUF block format this module multiplies without widening (ggml's
/// `block_*` layouts, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum QuantKind {
    /// f16 scale, 32 signed bytes.
    Q8_0,
    /// f16 scale, 32 nibbles with an implicit -8 offset.
    Q4_0,
    /// f16 scale and minimum, 32 nibbles.
    Q4_1,
    /// f16 scale, 32 high bits, 32 nibbles; an implicit -16 offset.
    Q5_0,
    /// f16 scale and minimum, 32 high bits, 32 nibbles.
    Q5_1,
    /// 256 elements: f16 scale and minimum, eight 6-bit sub-block scales and
    /// minimums, 256 nibbles.
    Q4_K,
    /// As Q4_K with a fifth bit per element.
    Q5_K,
    /// 256 elements: 6-bit values (nibbles plus two high bits), sixteen i8
    /// sub-block scales, f16 scale last.
    Q6_K,
}

impl QuantKind {
    pub const ALL: [QuantKind; 8] = [
        QuantKind::Q8_0,
        QuantKind::Q4_0,
        QuantKind::Q4_1,
        QuantKind::Q5_0,
        QuantKind::Q5_1,
        QuantKind::Q4_K,
        QuantKind::Q5_K,
        QuantKind::Q6_K,
    ];

    /// Byte offsets of the f16 scales (scale, then minimum where there is
    /// one) within a block.
    pub fn scale_offsets(self) -> &'static [usize] {
        match self {
            QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q5_0 => &[0],
            QuantKind::Q4_1 | QuantKind::Q5_1 | QuantKind::Q4_K | QuantKind::Q5_K => &[0, 2],
            QuantKind::Q6_K => &[208],
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q8_0 => 34,
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
            QuantKind::Q5_0 => 22,
            QuantKind::Q5_1 => 24,
            QuantKind::Q4_K => 144,
            QuantKind::Q5_K => 176,
            QuantKind::Q6_K => 210,
        }
    }

    pub fn block_elements(self) -> usize {
        match self {
            QuantKind::Q4_K | QuantKind::Q5_K | QuantKind::Q6_K => SUPER_BLOCK,
            _ => BLOCK,
        }
    }

    /// The formats the portable kernels multiply as they convert them.
    pub(super) fn simple(self) -> bool {
        matches!(self, QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q4_1)
    }

    /// Formats with a kernel on this CPU that multiplies blocks as they are
    /// converted; the others are widened a row at a time, then multiplied.
    pub(super) fn fused(self) -> bool {
        match self {
            QuantKind::Q4_K | QuantKind::Q5_K | QuantKind::Q6_K => simd(),
            other => other.simple(),
        }
    }
}

/// A `[rows, cols]` matrix (PyTorch layout: one output per row) in GGUF blocks.
#[derive(Clone)]
pub struct PackedMatrix {
    pub(super) kind: QuantKind,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) data: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedMatrix({:?}, {}x{})", self.kind, self.rows, self.cols)
    }
}

impl PackedMatrix {
    pub fn new(kind: QuantKind, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, LoadError> {
        let per_block = kind.block_elements();
        if cols == 0 || !cols.is_multiple_of(per_block) {
            return Err(LoadError::Format(format!(
                "{kind:?} rows of {cols} elements; expected a multiple of {per_block}"
            )));
        }
        let expected = rows.checked_mul(cols / per_block * kind.block_bytes());
        if expected != Some(data.len()) {
            return Err(LoadError::Format(format!(
                "{kind:?} matrix {rows}x{cols} has {} bytes; expected {expected:?}",
                data.len()
            )));
        }
        Ok(PackedMatrix { kind, rows, cols, data })
    }

    pub fn kind(&self) -> QuantKind {
        self.kind
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    pub(super) fn row_bytes(&self) -> usize {
        self.cols / self.kind.block_elements() * self.kind.block_bytes()
    }

    pub(super) fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Rows reordered: row `i` of the result is row `order[i]` of `self`.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        let n = self.row_bytes();
        let mut data = Vec::with_capacity(self.data.len());
        for &r in order {
            data.extend_from_slice(&self.data[r * n..(r + 1) * n]);
        }
        PackedMatrix { data, ..*self }
    }

    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_blocks(self.kind, self.row(r), out);
    }

    /// The whole matrix widened to f32 (the reference the kernels are tested against).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, dst) in out.chunks_exact_mut(self.cols).enumerate() {
            self.dequantize_row(r, dst);
        }
        out
    }
}
