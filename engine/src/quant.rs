//! Weights kept in their stored GGUF precision, and matrix products that
//! dequantise them on the fly.
//!
//! Decoding reads every weight once per token, so its speed is the speed at
//! which weights stream from memory: a Q4_1 weight is 0.625 bytes where the
//! widened f32 was 4. By default the activations stay f32, so a packed
//! product differs from the f32 reference only in summation order; with
//! [`PackedLinear::with_int16_activations`] (what the engine serves with) the
//! fused kernel takes the activations of Q8_0/Q4_0/Q4_1 matrices rounded to
//! 16-bit integers per block of 32 and multiplies the stored values as
//! integers, which is about twice as fast as converting each weight to f32.
//! llama.cpp rounds activations to 8 bits instead: on SmolLM2 that moved
//! logits by up to 3.2 and changed its answers; 16 bits moved them by 0.011.
//!
//! Two kernels, picked by the number of activation rows `n`:
//! - `n <= FUSED_MAX_ROWS` (decoding one to four sequences), or up to
//!   `INT16_MAX_ROWS` (eight) with 16-bit activations: each weight block is
//!   converted in registers once and multiplied with every activation row
//!   (AVX-512 for the 16-bit products, AVX2 + FMA otherwise, checked at run
//!   time; portable code where neither is there);
//! - more rows (prefill, larger batches): a tile of weight rows is dequantised
//!   into a small f32 buffer and multiplied by `gemm`, so the conversion is paid
//!   once per tile rather than once per activation row.
//!
//! Work is split over rayon's pool by tiles of output rows.

use half::f16;
use rayon::prelude::*;

use crate::LoadError;
use crate::gguf::TensorType;

/// Elements per block of the simple formats (and per sub-block of the K-quants).
pub const BLOCK: usize = 32;

/// Elements per K-quant super-block.
pub const SUPER_BLOCK: usize = 256;

/// Activation rows up to which the fused kernel is used: beyond, widening a
/// tile once for `gemm` wins (measured: 8-row products about 1.8x faster, and
/// batch-8 decoding about 1.3x, than four-row groups of the fused kernel).
const FUSED_MAX_ROWS: usize = 4;

/// Activation rows the fused kernel multiplies per weight block conversion.
const GROUP: usize = 4;

/// Activation rows up to which matrices whose every part is multiplied with
/// 16-bit activations use the fused kernel: one weight block unpacked for
/// eight rows costs less than widening it for `gemm` (a SmolLM2 batch-8 step
/// 65-70 -> 48-57 ms with the AVX-512 kernel; on AVX2, 8-row products of
/// SmolLM2's MLP shapes 0.86 ms against 1.05 ms through `gemm`). Not beyond:
/// with 128 rows (prefill) the fused kernel was slower than `gemm` (79
/// against 100 tokens/s), every weight row reading all the activations again
/// from L2.
const INT16_MAX_ROWS: usize = 8;

/// The most activation rows the fused kernels take in one product.
const FUSED_ROWS_LIMIT: usize = if FUSED_MAX_ROWS > INT16_MAX_ROWS { FUSED_MAX_ROWS } else { INT16_MAX_ROWS };

/// Output rows per parallel task.
const TILE_ROWS: usize = 32;

/// Output rows per parallel task when a tile is widened for `gemm`: larger,
/// so that each call amortises its packing of the activations.
const GEMM_TILE_ROWS: usize = 128;

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

    pub fn from_tensor_type(kind: TensorType) -> Option<Self> {
        match kind {
            TensorType::Block(q) => Some(q),
            _ => None,
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
    fn simple(self) -> bool {
        matches!(self, QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q4_1)
    }

    /// Formats with a kernel on this CPU that multiplies blocks as they are
    /// converted; the others are widened a row at a time, then multiplied.
    fn fused(self) -> bool {
        match self {
            QuantKind::Q4_K | QuantKind::Q5_K | QuantKind::Q6_K => simd(),
            other => other.simple(),
        }
    }
}

/// Whether the AVX2 kernels (AVX2, FMA and F16C) run on this CPU.
pub(crate) fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A `[rows, cols]` matrix (PyTorch layout: one output per row) in GGUF blocks.
#[derive(Clone)]
pub struct PackedMatrix {
    kind: QuantKind,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
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

    fn row_bytes(&self) -> usize {
        self.cols / self.kind.block_elements() * self.kind.block_bytes()
    }

    fn row(&self, r: usize) -> &[u8] {
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

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// A tensor's blocks widened to f32.
pub fn dequantize_bytes(kind: QuantKind, bytes: &[u8]) -> Vec<f32> {
    let blocks = bytes.len() / kind.block_bytes();
    let mut out = vec![0f32; blocks * kind.block_elements()];
    dequantize_blocks(kind, &bytes[..blocks * kind.block_bytes()], &mut out);
    out
}

fn dequantize_blocks(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    if !kind.fused() {
        dequantize_wide(kind, bytes, out);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        unsafe { avx2::dequantize(kind, bytes, out) };
        return;
    }
    dequantize_portable(kind, bytes, out);
}

fn dequantize_portable(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    if !kind.simple() {
        return dequantize_wide(kind, bytes, out);
    }
    for (block, dst) in bytes.chunks_exact(kind.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
        let d = f16_at(block, 0);
        match kind {
            QuantKind::Q8_0 => {
                for (o, &q) in dst.iter_mut().zip(&block[2..]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            // Q4_0 and Q4_1: the only other fused formats (checked on entry).
            _ => {
                let (min, quants) =
                    if kind == QuantKind::Q4_0 { (-8.0 * d, &block[2..]) } else { (f16_at(block, 2), &block[4..]) };
                for (j, &q) in quants.iter().enumerate() {
                    dst[j] = f32::from(q & 0x0f) * d + min;
                    dst[j + 16] = f32::from(q >> 4) * d + min;
                }
            }
        }
    }
}

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and minimum.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (f32::from(d), f32::from(m))
}

/// The formats without a fused kernel, as ggml's `dequantize_row_*` does them.
fn dequantize_wide(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        unsafe { avx2::dequantize_wide(kind, bytes, out) };
        return;
    }
    dequantize_wide_body(kind, bytes, out);
}

/// Written so that the compiler vectorises it: compiled once portable and
/// once with AVX2 enabled.
#[inline(always)]
fn dequantize_wide_body(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    let per = kind.block_elements();
    for (block, y) in bytes.chunks_exact(kind.block_bytes()).zip(out.chunks_exact_mut(per)) {
        match kind {
            QuantKind::Q5_0 | QuantKind::Q5_1 => {
                let d = f16_at(block, 0);
                let (min, rest) =
                    if kind == QuantKind::Q5_0 { (-16.0 * d, &block[2..]) } else { (f16_at(block, 2), &block[4..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                for (j, &q) in rest[4..].iter().enumerate() {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (u32::from(q & 0x0f) | h0) as f32 * d + min;
                    y[j + 16] = (u32::from(q >> 4) | h1) as f32 * d + min;
                }
            }
            QuantKind::Q4_K | QuantKind::Q5_K => {
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let scales = &block[4..16];
                let (qh, ql) =
                    if kind == QuantKind::Q5_K { (&block[16..48], &block[48..]) } else { (&[][..], &block[16..]) };
                for (c, chunk) in y.chunks_exact_mut(64).enumerate() {
                    let (s1, m1) = scale_min_k4(2 * c, scales);
                    let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1, d2, m2) = (d * s1, dmin * m1, d * s2, dmin * m2);
                    let q = &ql[32 * c..32 * (c + 1)];
                    for l in 0..32 {
                        let (mut lo, mut hi) = (q[l] & 0x0f, q[l] >> 4);
                        if kind == QuantKind::Q5_K {
                            lo += ((qh[l] >> (2 * c)) & 1) << 4;
                            hi += ((qh[l] >> (2 * c + 1)) & 1) << 4;
                        }
                        chunk[l] = d1 * f32::from(lo) - m1;
                        chunk[l + 32] = d2 * f32::from(hi) - m2;
                    }
                }
            }
            QuantKind::Q6_K => {
                let (ql, qh, sc) = (&block[..128], &block[128..192], &block[192..208]);
                let d = f16_at(block, 208);
                for (half, y) in y.chunks_exact_mut(128).enumerate() {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u32| f32::from(((low | (((qh[l] >> shift) & 3) << 4)) as i8) - 32);
                        let scale = |k: usize| d * f32::from(sc[is + 2 * k] as i8);
                        y[l] = scale(0) * q(ql[l] & 0x0f, 0);
                        y[l + 32] = scale(1) * q(ql[l + 32] & 0x0f, 2);
                        y[l + 64] = scale(2) * q(ql[l] >> 4, 4);
                        y[l + 96] = scale(3) * q(ql[l + 32] >> 4, 6);
                    }
                }
            }
            QuantKind::Q8_0 | QuantKind::Q4_0 | QuantKind::Q4_1 => dequantize_portable(kind, block, y),
        }
    }
}

/// `Σ w·x` over f32 rows of equal length.
pub(crate) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { avx2::dot_f32(w, x) };
    }
    let mut lanes = [0f32; 8];
    for (j, (a, b)) in w.iter().zip(x).enumerate() {
        lanes[j % 8] += a * b;
    }
    lanes.iter().sum()
}

/// Matrices stacked along the output (q|k|v, gate|up), each in its own format:
/// GGUF files often keep one of them (v, down) at higher precision.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    parts: Vec<PackedMatrix>,
    /// Where each part's rows start in the stacked output.
    starts: Vec<usize>,
    rows: usize,
    cols: usize,
    /// Whether the fused kernel multiplies Q8_0/Q4_0/Q4_1 blocks with the
    /// activations quantised to 16-bit integers (integer dot products).
    int16_activations: bool,
}

impl PackedLinear {
    pub fn new(parts: Vec<PackedMatrix>) -> Result<Self, LoadError> {
        let cols = parts.first().map(|p| p.cols).ok_or_else(|| LoadError::Format("no matrices to stack".into()))?;
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(LoadError::Format(format!("stacked matrices have {} and {cols} columns", p.cols)));
        }
        let mut starts = Vec::with_capacity(parts.len());
        let mut rows = 0;
        for p in &parts {
            starts.push(rows);
            rows += p.rows;
        }
        Ok(PackedLinear { parts, starts, rows, cols, int16_activations: false })
    }

    /// The same weights, multiplied (where the fused kernel runs and the
    /// format is Q8_0, Q4_0 or Q4_1) with activations quantised to 16-bit
    /// integers per block of 32: integer products of the stored values
    /// instead of converting every weight to f32. (llama.cpp rounds
    /// activations to 8 bits; on SmolLM2 that moved logits by up to 3.2 and
    /// changed its answers, while 16 bits round each value by at most
    /// 1/65534 of its block's largest activation; see [`INT16_TOP`].)
    pub fn with_int16_activations(mut self, on: bool) -> Self {
        self.int16_activations = on;
        self
    }

    pub fn in_features(&self) -> usize {
        self.cols
    }

    pub fn out_features(&self) -> usize {
        self.rows
    }

    /// Bytes the weights take in memory.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    fn locate(&self, row: usize) -> (&PackedMatrix, usize) {
        let i = self.starts.partition_point(|&s| s <= row) - 1;
        (&self.parts[i], row - self.starts[i])
    }

    /// The stacked matrix widened to f32, `[out_features, in_features]`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.parts.iter().flat_map(|p| p.dequantize()).collect()
    }

    /// `x · Wᵀ` for `x` of `n` rows of `in_features`: `[n, out_features]`, row-major.
    pub fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "activations of {n} rows of {} elements", self.cols);
        if n == 0 {
            return Vec::new();
        }
        // Integer products of every part: fused for as many rows as the
        // kernel's registers cover, where widening for `gemm` would cost more.
        let all_int16 = self.int16_activations && self.parts.iter().all(|p| p.kind.simple());
        if n > FUSED_MAX_ROWS && !(all_int16 && n <= INT16_MAX_ROWS) {
            return self.forward_gemm(x, n);
        }
        // Each task owns whole weight rows and writes their n results
        // straight into the [n, out] result, as `forward_gemm` does.
        let mut out = vec![0f32; n * self.rows];
        let dst = SharedOut(out.as_mut_ptr());
        let sums = block_sums(x);
        let blocks = self.cols / BLOCK;
        let int16 = self.int16_activations.then(|| Int16Rows::quantize(x));
        let group = int16_group();
        (0..self.rows.div_ceil(TILE_ROWS)).into_par_iter().for_each(|tile| {
            let tile_rows = tile * TILE_ROWS..self.rows.min((tile + 1) * TILE_ROWS);
            // Results per weight row, stored to the [n, out] result at the
            // end in runs along each activation row: one weight row's n
            // stores to n rows of the result, and the search for its part,
            // took a tenth of a batch-8 step beside the kernels.
            let mut results = [[0f32; FUSED_ROWS_LIMIT]; TILE_ROWS];
            let mut wide = Vec::new();
            for (m, &start) in self.parts.iter().zip(&self.starts) {
                let (lo, hi) = (tile_rows.start.max(start), tile_rows.end.min(start + m.rows));
                let row_bytes = m.row_bytes();
                for row in lo..hi {
                    let w = &m.data[(row - start) * row_bytes..(row - start + 1) * row_bytes];
                    let row_out = &mut results[row - tile_rows.start][..n];
                    if let Some(xq) = &int16
                        && m.kind.simple()
                    {
                        for (g, out) in row_out.chunks_mut(group).enumerate() {
                            dots_int16(m.kind, w, xq, &sums, g * group, out);
                        }
                    } else if !m.kind.fused() {
                        wide.resize(self.cols, 0f32);
                        m.dequantize_row(row - start, &mut wide);
                        for (i, o) in row_out.iter_mut().enumerate() {
                            *o = dot_f32(&wide, &x[i * self.cols..(i + 1) * self.cols]);
                        }
                    } else {
                        for (g, out) in row_out.chunks_mut(GROUP).enumerate() {
                            let first = g * GROUP;
                            let rows = out.len();
                            let xs = &x[first * self.cols..(first + rows) * self.cols];
                            dots(m.kind, w, xs, &sums[first * blocks..(first + rows) * blocks], out);
                        }
                    }
                }
            }
            for i in 0..n {
                for (k, res) in results[..tile_rows.len()].iter().enumerate() {
                    // SAFETY: element (i, tile_rows.start + k) of the
                    // n×self.rows result, within it; no other task owns
                    // these weight rows.
                    unsafe { *dst.at(i * self.rows + tile_rows.start + k) = res[i] };
                }
            }
        });
        out
    }

    /// [`PackedLinear::forward`] for many rows: tiles of weight rows widened
    /// to f32 and multiplied by `gemm`, so the conversion is paid once per
    /// tile rather than once per activation row.
    fn forward_gemm(&self, x: &[f32], n: usize) -> Vec<f32> {
        // Written in place into the [n, out] result: a transposition
        // afterwards, one scattered store per element, took a tenth of
        // a prefill.
        let mut out = vec![0f32; n * self.rows];
        let dst = SharedOut(out.as_mut_ptr());
        (0..self.rows.div_ceil(GEMM_TILE_ROWS)).into_par_iter().for_each(|tile| {
            let first = tile * GEMM_TILE_ROWS;
            let rows = GEMM_TILE_ROWS.min(self.rows - first);
            WIDE_TILE.with_borrow_mut(|wide| {
                // Every element is overwritten below: only growth zeroes.
                if wide.len() < rows * self.cols {
                    wide.resize(rows * self.cols, 0.0);
                }
                let w = &mut wide[..rows * self.cols];
                for (k, wr) in w.chunks_exact_mut(self.cols).enumerate() {
                    let (m, r) = self.locate(first + k);
                    m.dequantize_row(r, wr);
                }
                // outᵀ[first.., ..n] = w[rows, cols] · xᵀ[cols, n]
                // SAFETY: w is rows×cols row-major and x is n×cols
                // row-major read as its transpose; the destination is
                // columns first..first + rows of the n×self.rows
                // row-major `out`, which no other tile writes.
                unsafe {
                    gemm::gemm(
                        rows,
                        n,
                        self.cols,
                        dst.at(first),
                        self.rows as isize,
                        1,
                        false,
                        w.as_ptr(),
                        1,
                        self.cols as isize,
                        x.as_ptr(),
                        self.cols as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
        out
    }
}

/// The result of a product shared by the tasks that write its disjoint
/// columns.
struct SharedOut(*mut f32);

// SAFETY: the tasks holding it write disjoint elements, and the owner reads
// only after every task has finished.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method, so that closures capture the wrapper, not its raw pointer.
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

thread_local! {
    /// A worker's tile of weights widened for `gemm`, kept between products:
    /// allocated and zeroed afresh for every tile, it took an eighth of a
    /// batch-8 decoding step in `memset` alone.
    static WIDE_TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The sum of each block of 32 activations, per row: the Q4 formats' offsets
/// multiply it instead of every element.
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
}

/// The largest integer an activation is rounded to: a block's largest
/// magnitude maps to it, so rounding moves a value by at most 1/65534 of it.
pub const INT16_TOP: i16 = i16::MAX;

/// `y` rounded to the nearest integer (ties to even) for |y| < 2²²: adding
/// 1.5 · 2²³ leaves no bits below the units, so the addition itself rounds.
/// `f32::round` is a call to libm on baseline x86-64, which took as long as
/// the rest of the quantisation.
fn round_small(y: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (y + SHIFT) - SHIFT
}

/// Activation rows quantised to 16-bit integers per block of 32 (scale =
/// max |x| / 32767, values rounded to nearest): what the integer dot products
/// multiply. Quantised once per product, shared by every weight row.
pub struct Int16Rows {
    q: Vec<i16>,
    /// Per block: the scale.
    scale: Vec<f32>,
    /// Per block: Σ q, which Q4_0's implicit offset of -8 multiplies.
    qsum: Vec<i32>,
}

impl Int16Rows {
    /// `x`: rows of a whole number of blocks, one after another; the row
    /// length is inferred by the kernels from the weight row.
    pub fn quantize(x: &[f32]) -> Self {
        let n = x.len() / BLOCK;
        let mut rows = Int16Rows { q: vec![0; n * BLOCK], scale: vec![0.0; n], qsum: vec![0; n] };
        let top = f32::from(INT16_TOP);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / top;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = 0i32;
            for (q, &v) in rows.q[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xb) {
                // |v| · inv ≤ 32767 up to rounding; `as` saturates, and sends NaN to 0.
                *q = round_small(v * inv) as i16;
                qs += i32::from(*q);
            }
            rows.scale[b] = d;
            rows.qsum[b] = qs;
        }
        rows
    }

    fn block(&self, g: usize) -> &[i16] {
        &self.q[g * BLOCK..(g + 1) * BLOCK]
    }
}

/// `kernel::<N>(args)` with `N` the row count `n` (1 to 8; more is taken as
/// 8): the 16-bit kernels take their row count as a constant, so that their
/// accumulators are registers.
#[cfg(target_arch = "x86_64")]
macro_rules! with_rows {
    ($n:expr, $($kernel:ident)::+ ($($arg:expr),* $(,)?)) => {
        match $n {
            1 => $($kernel)::+::<1>($($arg),*),
            2 => $($kernel)::+::<2>($($arg),*),
            3 => $($kernel)::+::<3>($($arg),*),
            4 => $($kernel)::+::<4>($($arg),*),
            5 => $($kernel)::+::<5>($($arg),*),
            6 => $($kernel)::+::<6>($($arg),*),
            7 => $($kernel)::+::<7>($($arg),*),
            _ => $($kernel)::+::<8>($($arg),*),
        }
    };
}

/// One weight row of Q8_0, Q4_0 or Q4_1 against activation rows `first..`
/// (`out.len()` of them, at most `GROUP`) of `x`, in integer arithmetic per
/// block: `d_w · d_x · Σ q_w q_x` (+ the format's offset; Q4_1's minimum
/// multiplies the exact block sums `sums` of all rows, as in [`dots`]). The
/// block sums fit an i32: 32 · 128 · 32767 < 2³¹.
fn dots_int16(kind: QuantKind, w: &[u8], x: &Int16Rows, sums: &[f32], first: usize, out: &mut [f32]) {
    let blocks = w.len() / kind.block_bytes();
    assert!(kind.simple() && (first + out.len()) * blocks <= x.scale.len(), "quantised activations cover the rows");
    assert_eq!(sums.len(), x.scale.len(), "one exact sum per quantised block");
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F and BW, AVX2, FMA and F16C (checked
        // just above); the kernel checks the slices' lengths itself.
        unsafe { with_rows!(out.len(), avx512::dots_int16(kind, w, x, sums, first, out)) }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); the
        // kernel checks the slices' lengths itself.
        unsafe { with_rows!(out.len(), avx2::dots_int16(kind, w, x, sums, first, out)) }
        return;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_int16_portable(kind, w, x, sums, (first + i) * blocks);
    }
}

/// Activation rows [`dots_int16`] takes at once on this CPU: as many as
/// its accumulators fit in registers beside a weight block (AVX-512: two
/// per row, for even and odd blocks, 16 of its 32 registers; AVX2: one per
/// row, 8 of 16).
fn int16_group() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() || avx2::available() {
        return 8;
    }
    GROUP
}

/// [`dots_int16`] for one activation row whose first block is `g0`.
fn dot_int16_portable(kind: QuantKind, w: &[u8], x: &Int16Rows, sums: &[f32], g0: usize) -> f32 {
    let mut total = 0f32;
    for (b, block) in w.chunks_exact(kind.block_bytes()).enumerate() {
        let g = g0 + b;
        let xq = x.block(g);
        let isum: i32 = match kind {
            QuantKind::Q8_0 => block[2..].iter().zip(xq).map(|(&q, &v)| i32::from(q as i8) * i32::from(v)).sum(),
            // Q4_0 and Q4_1 (checked by the caller).
            _ => {
                let quants = if kind == QuantKind::Q4_0 { &block[2..] } else { &block[4..] };
                let s: i32 = quants
                    .iter()
                    .enumerate()
                    .map(|(j, &q)| i32::from(q & 0x0f) * i32::from(xq[j]) + i32::from(q >> 4) * i32::from(xq[j + 16]))
                    .sum();
                if kind == QuantKind::Q4_0 { s - 8 * x.qsum[g] } else { s }
            }
        };
        total += f16_at(block, 0) * x.scale[g] * isum as f32;
        if kind == QuantKind::Q4_1 {
            total += f16_at(block, 2) * sums[g];
        }
    }
    total
}

/// One weight row against `out.len()` (at most `GROUP`) activation rows,
/// stored one after another in `x`, with their block sums in `sums`.
fn dots(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); the
        // kernels check the slices' lengths themselves.
        unsafe {
            match out.len() {
                1 => avx2::dots::<1>(kind, w, x, sums, out),
                2 => avx2::dots::<2>(kind, w, x, sums, out),
                3 => avx2::dots::<3>(kind, w, x, sums, out),
                _ => avx2::dots::<4>(kind, w, x, sums, out),
            }
        }
        return;
    }
    dots_portable(kind, w, x, sums, out);
}

fn dots_portable(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
    let cols = x.len() / out.len();
    let blocks = cols / BLOCK;
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_portable(kind, w, &x[i * cols..(i + 1) * cols], &sums[i * blocks..(i + 1) * blocks]);
    }
}

fn dot_portable(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    if !kind.simple() {
        let mut wide = vec![0f32; x.len()];
        dequantize_wide(kind, w, &mut wide);
        return dot_f32(&wide, x);
    }
    let mut total = 0f32;
    for ((block, xb), &s) in w.chunks_exact(kind.block_bytes()).zip(x.chunks_exact(BLOCK)).zip(sums) {
        let d = f16_at(block, 0);
        // Eight lanes, as the SIMD kernel sums them.
        let mut lanes = [0f32; 8];
        match kind {
            QuantKind::Q8_0 => {
                for (j, (&q, &v)) in block[2..].iter().zip(xb).enumerate() {
                    lanes[j % 8] += f32::from(q as i8) * v;
                }
                total += d * lanes.iter().sum::<f32>();
            }
            // Q4_0 and Q4_1: the only other fused formats (checked on entry).
            _ => {
                let quants = if kind == QuantKind::Q4_0 { &block[2..] } else { &block[4..] };
                for (j, &q) in quants.iter().enumerate() {
                    lanes[j % 8] += f32::from(q & 0x0f) * xb[j] + f32::from(q >> 4) * xb[j + 16];
                }
                let qx: f32 = lanes.iter().sum();
                total += match kind {
                    QuantKind::Q4_0 => d * (qx - 8.0 * s),
                    _ => d * qx + f16_at(block, 2) * s,
                };
            }
        }
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{BLOCK, QuantKind};
    use crate::host_ops::avx2::{hsum, lane_sums};

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_scale(block: &[u8], i: usize) -> f32 {
        let bits = u16::from_le_bytes([block[i], block[i + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// Thirty-two unsigned byte values as four vectors of f32 times `scale`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen_u8(v: __m256i, scale: f32) -> [__m256; 4] {
        let s = _mm256_set1_ps(scale);
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let f = |b: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), s);
        [f(lo), f(_mm_srli_si128(lo, 8)), f(hi), f(_mm_srli_si128(hi, 8))]
    }

    /// Group `j` (32 consecutive weights) of a K-quant super-block, scaled, as
    /// four vectors, and the offset that multiplies the activations' group sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen_k(kind: QuantKind, block: &[u8], j: usize) -> ([__m256; 4], f32) {
        assert!(block.len() == kind.block_bytes() && j < 8);
        let nibbles = _mm256_set1_epi8(0x0f);
        let shift = |v: __m256i, n: usize| _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32));
        // SAFETY: every 32-byte load below starts at least 32 bytes before the
        // end of the block (asserted above): Q4_K reads 16 + 32c (c < 4) of 144;
        // Q5_K 16 and 48 + 32c of 176; Q6_K 64h + 32(k % 2) and 128 + 32h of 210.
        unsafe {
            let load = |at: usize| _mm256_loadu_si256(block.as_ptr().add(at) as *const __m256i);
            match kind {
                QuantKind::Q6_K => {
                    let (half, k) = (j / 4, j % 4);
                    let ql = load(64 * half + 32 * (k % 2));
                    let ql = _mm256_and_si256(shift(ql, 4 * (k / 2)), nibbles);
                    let qh = _mm256_and_si256(shift(load(128 + 32 * half), 2 * k), _mm256_set1_epi8(3));
                    let q = _mm256_sub_epi8(_mm256_or_si256(ql, _mm256_slli_epi16(qh, 4)), _mm256_set1_epi8(32));
                    let d = f16_scale(block, 208);
                    let sc = |i: usize| d * f32::from(block[192 + 8 * half + i] as i8);
                    let (s0, s1) = (_mm256_set1_ps(sc(2 * k)), _mm256_set1_ps(sc(2 * k + 1)));
                    let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                    let f = |b: __m128i, s: __m256| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), s);
                    ([f(lo, s0), f(_mm_srli_si128(lo, 8), s0), f(hi, s1), f(_mm_srli_si128(hi, 8), s1)], 0.0)
                }
                // Q4_K and Q5_K (the only other K formats).
                _ => {
                    let (d, dmin) = (f16_scale(block, 0), f16_scale(block, 2));
                    let (sc, m) = super::scale_min_k4(j, &block[4..16]);
                    let c = j / 2;
                    let base = if kind == QuantKind::Q5_K { 48 } else { 16 };
                    let mut q = _mm256_and_si256(shift(load(base + 32 * c), 4 * (j % 2)), nibbles);
                    if kind == QuantKind::Q5_K {
                        let high = _mm256_and_si256(shift(load(16), j), _mm256_set1_epi8(1));
                        q = _mm256_or_si256(q, _mm256_slli_epi16(high, 4));
                    }
                    (widen_u8(q, d * sc), -dmin * m)
                }
            }
        }
    }

    /// Group `j` (32 consecutive weights) of a block, scaled, as four
    /// vectors, and the offset that multiplies the activations' group sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen(kind: QuantKind, block: &[u8], j: usize) -> ([__m256; 4], f32) {
        if matches!(kind, QuantKind::Q4_K | QuantKind::Q5_K | QuantKind::Q6_K) {
            return widen_k(kind, block, j);
        }
        let bytes = kind.block_bytes();
        assert!(block.len() == bytes);
        let d = f16_scale(block, 0);
        let vd = _mm256_set1_ps(d);
        let p = block.as_ptr();
        // SAFETY: the loads read 8 (Q8_0) or 16 (Q4) bytes at offsets that the
        // assertion above keeps inside the block.
        unsafe {
            match kind {
                QuantKind::Q8_0 => {
                    let v = |k: usize| {
                        let q = _mm_loadl_epi64(p.add(2 + 8 * k) as *const __m128i);
                        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd)
                    };
                    ([v(0), v(1), v(2), v(3)], 0.0)
                }
                // Q4_0 and Q4_1: the only other fused formats (checked on entry).
                _ => {
                    let start = bytes - 16;
                    let q = _mm_loadu_si128(p.add(start) as *const __m128i);
                    let mask = _mm_set1_epi8(0x0f);
                    let lo = _mm_and_si128(q, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
                    let v = |b: __m128i| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), vd);
                    let offset = if kind == QuantKind::Q4_0 { -8.0 * d } else { f16_scale(block, 2) };
                    ([v(lo), v(_mm_srli_si128(lo, 8)), v(hi), v(_mm_srli_si128(hi, 8))], offset)
                }
            }
        }
    }

    /// The wide formats' dequantisation, vectorised by the compiler.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize_wide(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
        super::dequantize_wide_body(kind, bytes, out)
    }

    /// `Σ w·x` over f32 rows of equal length.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let (wc, xc) = (w.chunks_exact(32), x.chunks_exact(32));
        let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
        for (a, b) in wc.zip(xc) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 32 floats; this loads 8 from 8k.
                unsafe {
                    *acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(a.as_ptr().add(8 * k)),
                        _mm256_loadu_ps(b.as_ptr().add(8 * k)),
                        *acc,
                    );
                }
            }
        }
        hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + tail
    }

    /// Whole blocks of `kind` widened into `out` (32 floats per block).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
        if !kind.fused() {
            return super::dequantize_wide(kind, bytes, out);
        }
        let groups = kind.block_elements() / BLOCK;
        for (block, dst) in bytes.chunks_exact(kind.block_bytes()).zip(out.chunks_exact_mut(kind.block_elements())) {
            for (j, dst) in dst.chunks_exact_mut(BLOCK).enumerate().take(groups) {
                let (wv, offset) = widen(kind, block, j);
                let off = _mm256_set1_ps(offset);
                for (k, v) in wv.iter().enumerate() {
                    // SAFETY: dst holds 32 floats; this stores 8 of them from 8k.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * k), _mm256_add_ps(*v, off)) };
                }
            }
        }
    }

    /// Blocks whose scales are converted together: one f16 conversion and
    /// one multiplication by the activations' scales per eight blocks.
    pub(super) const SCALE_CHUNK: usize = 8;

    /// How far ahead of the block being multiplied its successors are fetched.
    pub(super) const PREFETCH_BYTES: usize = 512;

    /// Lanes below `len` (≤ 8) set: a mask for the masked loads below.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn first_lanes(len: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// `v[..len]` (`len` ≤ 8) in a vector, the other lanes zero. A masked
    /// load rather than a copy: a call to `memcpy` made the compiler keep
    /// every accumulator of the caller on the stack.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn lanes(v: &[f32]) -> __m256 {
        assert!(v.len() <= SCALE_CHUNK);
        // SAFETY: only the first v.len() lanes are read.
        unsafe { _mm256_maskload_ps(v.as_ptr(), first_lanes(v.len())) }
    }

    /// [`lanes`] for integers, converted to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn lanes_i32(v: &[i32]) -> __m256 {
        assert!(v.len() <= SCALE_CHUNK);
        // SAFETY: only the first v.len() lanes are read.
        _mm256_cvtepi32_ps(unsafe { _mm256_maskload_epi32(v.as_ptr(), first_lanes(v.len())) })
    }

    /// The two f16 words at the start of each of `len` (≤ 8) blocks of
    /// `bb` bytes from `w`, as f32: (the scales d, the words after them,
    /// which are Q4_1's minimums). Lanes from `len` on are zero.
    ///
    /// The words are collected with scalar shifts into four u64 and moved to
    /// vectors once: a per-block f16 conversion cost about as much as the
    /// block's integer products, a vector gather took a quarter of the
    /// kernel's time, and words stored one by one then loaded together
    /// stall store forwarding.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C (inlined into their callers, which
    /// enable them).
    #[inline(always)]
    pub(super) unsafe fn block_scales(w: &[u8], bb: usize, len: usize) -> (__m256, __m256) {
        let mut d = [0u64; 2];
        let mut m = [0u64; 2];
        for (j, block) in w[..len * bb].chunks_exact(bb).enumerate() {
            let (half, shift) = (j / 4, 16 * (j % 4));
            d[half] |= u64::from(u16::from_le_bytes([block[0], block[1]])) << shift;
            m[half] |= u64::from(u16::from_le_bytes([block[2], block[3]])) << shift;
        }
        // SAFETY: the caller has F16C.
        unsafe {
            let dv = _mm_set_epi64x(d[1] as i64, d[0] as i64);
            let mv = _mm_set_epi64x(m[1] as i64, m[0] as i64);
            (_mm256_cvtph_ps(dv), _mm256_cvtph_ps(mv))
        }
    }

    /// The 32 values of the Q8_0, Q4_0 or Q4_1 block at `p` as i16:
    /// elements 0..16 and 16..32 (Q4's stored nibbles, without their offset).
    ///
    /// # Safety
    /// `p` must point to a whole block of `kind` (`bb` bytes).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_values(kind: QuantKind, p: *const u8, bb: usize) -> (__m256i, __m256i) {
        // SAFETY: Q8_0 reads bytes 2..34 of its 34; Q4 reads its last 16
        // (the instruction only reads those 16 bytes, and needs AVX2, which
        // this function enables).
        unsafe {
            if kind == QuantKind::Q8_0 {
                (
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(2) as *const __m128i)),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(18) as *const __m128i)),
                )
            } else {
                // Byte k holds element k (low nibble) and k + 16 (high).
                // Widened straight from memory: written with intrinsics,
                // LLVM masks and shifts the bytes before widening them, five
                // vector operations a block where this takes three (the
                // kernel 3-4% faster at eight rows).
                let q: __m256i;
                std::arch::asm!(
                    "vpmovzxbw {q}, xmmword ptr [{p}]",
                    q = out(ymm_reg) q,
                    p = in(reg) p.add(bb - 16),
                    options(pure, readonly, nostack, preserves_flags),
                );
                (_mm256_and_si256(q, _mm256_set1_epi16(0x0f)), _mm256_srli_epi16(q, 4))
            }
        }
    }

    /// The weight block at `block` times the activation block at `xq` and
    /// the blocks `row_stride` values after it (the same block of the next
    /// `N - 1` rows), each scaled by `scales[i][j]` and added to `acc[i]`.
    ///
    /// # Safety
    /// `block` must point to a whole block of `kind` (`bb` bytes) and the
    /// `N` activation blocks must lie within one allocation.
    #[inline(always)]
    unsafe fn block_products<const N: usize>(
        kind: QuantKind,
        (block, bb): (*const u8, usize),
        xq: *const i16,
        row_stride: usize,
        scales: &[[f32; SCALE_CHUNK]; N],
        j: usize,
        acc: &mut [__m256; N],
    ) {
        // SAFETY: the caller guarantees the pointers; the intrinsics' CPU
        // features are enabled by the caller this is inlined into.
        unsafe {
            let (w0, w1) = block_values(kind, block, bb);
            for i in 0..N {
                let xp = xq.add(i * row_stride);
                let (x0, x1) =
                    (_mm256_loadu_si256(xp as *const __m256i), _mm256_loadu_si256(xp.add(16) as *const __m256i));
                let products = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
                let d = _mm256_broadcast_ss(&scales[i][j]);
                acc[i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(products), acc[i]);
            }
        }
    }

    /// The two f16 words at the start of each of eight whole blocks of `bb`
    /// bytes from `p`, as f32: (the scales d, the words after them). The
    /// same values as [`block_scales`] for a full chunk, from eight 32-bit
    /// loads and one pack: the scalar shifts there took a fifth of a
    /// product of SmolLM2's 576-wide rows.
    ///
    /// # Safety
    /// `p` must point to eight whole blocks of `bb` (≥ 4) bytes; the CPU
    /// must have AVX2 and F16C (inlined into callers that enable them).
    #[inline(always)]
    unsafe fn chunk_scales(p: *const u8, bb: usize) -> (__m256, __m256) {
        // SAFETY: every block holds at least four bytes; the caller has the
        // CPU features.
        unsafe {
            let word = |j: usize| std::ptr::read_unaligned(p.add(j * bb) as *const i32);
            let words = _mm256_setr_epi32(word(0), word(1), word(2), word(3), word(4), word(5), word(6), word(7));
            let d = _mm256_and_si256(words, _mm256_set1_epi32(0xffff));
            let m = _mm256_srli_epi32::<16>(words);
            // [d0..d3 m0..m3 | d4..d7 m4..m7] → [d0..d7 | m0..m7]
            let both = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(d, m));
            (_mm256_cvtph_ps(_mm256_castsi256_si128(both)), _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(both)))
        }
    }

    /// `v[g..g + len]` in a vector, the lanes from `len` on zero.
    ///
    /// # Safety
    /// `g + len` must not exceed `v.len()` (unchecked for a full chunk).
    #[inline(always)]
    unsafe fn chunk_f32(v: &[f32], g: usize, len: usize) -> __m256 {
        // SAFETY: the caller guarantees the range and the CPU features.
        unsafe { if len == SCALE_CHUNK { _mm256_loadu_ps(v.as_ptr().add(g)) } else { lanes(&v[g..g + len]) } }
    }

    /// [`chunk_f32`] for integers, converted to f32.
    ///
    /// # Safety
    /// As for [`chunk_f32`].
    #[inline(always)]
    unsafe fn chunk_i32(v: &[i32], g: usize, len: usize) -> __m256 {
        // SAFETY: the caller guarantees the range and the CPU features.
        unsafe {
            if len == SCALE_CHUNK {
                _mm256_cvtepi32_ps(_mm256_loadu_si256(v.as_ptr().add(g) as *const __m256i))
            } else {
                lanes_i32(&v[g..g + len])
            }
        }
    }

    /// [`super::dots_int16`] for `N` activation rows from row `first`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots_int16<const N: usize>(
        kind: QuantKind,
        w: &[u8],
        x: &super::Int16Rows,
        sums: &[f32],
        first: usize,
        out: &mut [f32],
    ) {
        // One copy of the kernel per format, so that its branches on the
        // format are settled at compile time.
        // SAFETY: the caller's guarantees are this function's.
        unsafe {
            match kind {
                QuantKind::Q8_0 => int16_rows::<N, Q8_0>(w, x, sums, first, out),
                QuantKind::Q4_0 => int16_rows::<N, Q4_0>(w, x, sums, first, out),
                QuantKind::Q4_1 => int16_rows::<N, Q4_1>(w, x, sums, first, out),
                _ => panic!("the 16-bit kernel takes Q8_0, Q4_0 and Q4_1 blocks, not {kind:?}"),
            }
        }
    }

    const Q8_0: u8 = 0;
    const Q4_0: u8 = 1;
    const Q4_1: u8 = 2;
    const FORMATS: [QuantKind; 3] = [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1];

    /// [`dots_int16`] for the format `FORMATS[F]`.
    ///
    /// Per chunk of eight blocks, the weight scales (f16) are gathered and
    /// converted together and multiplied by the activations' scales, and
    /// the format's offsets are added to the accumulators as vectors. The
    /// per-block loop then only unpacks, multiplies as integers and adds the
    /// scaled products, each scale broadcast from memory: converting and
    /// broadcasting one scale per block kept the shuffle port busy for
    /// about seven cycles a block.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn int16_rows<const N: usize, const F: u8>(
        w: &[u8],
        x: &super::Int16Rows,
        sums: &[f32],
        first: usize,
        out: &mut [f32],
    ) {
        // Eight rows at most: their accumulators fill half the registers, and
        // `lane_sums` reduces eight.
        const { assert!(N >= 1 && N <= SCALE_CHUNK) };
        let kind = FORMATS[usize::from(F)];
        let bb = kind.block_bytes();
        let blocks = w.len() / bb;
        assert!(out.len() == N && (first + N) * blocks <= x.scale.len());
        assert!(x.q.len() == x.scale.len() * BLOCK && sums.len() == x.scale.len() && x.qsum.len() == x.scale.len());
        // One accumulator per row, so that eight rows fit AVX2's sixteen
        // registers beside a block's weights (two accumulators per row, for
        // even and odd blocks, spilled at eight rows and made a product 25%
        // slower). One row alone then waits on its additions, but a row is
        // read from memory more slowly still: no difference measured.
        // Every row count sums in the same order, so a sequence gets the
        // same logits whatever it is batched with.
        let mut acc = [_mm256_setzero_ps(); N];
        let mut scales = [[0f32; SCALE_CHUNK]; N];
        let mut b0 = 0;
        while b0 < blocks {
            let len = (blocks - b0).min(SCALE_CHUNK);
            // The rows of a product lie one after another: fetch the blocks
            // a few chunks ahead (often the next row's). With the hardware
            // prefetcher alone the first loads of each chunk waited on
            // memory: a SmolLM2 token took 20 ms instead of 15.
            let ahead = w.as_ptr().wrapping_add(b0 * bb + PREFETCH_BYTES);
            for line in 0..(SCALE_CHUNK * bb).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
            }
            // SAFETY: the chunk's len blocks lie within w; this function
            // enables AVX2 and F16C.
            let (dw, mw) = unsafe {
                if len == SCALE_CHUNK {
                    chunk_scales(w.as_ptr().add(b0 * bb), bb)
                } else {
                    block_scales(&w[b0 * bb..], bb, len)
                }
            };
            for i in 0..N {
                let g = (first + i) * blocks + b0;
                // SAFETY: g + len ≤ (first + N) * blocks ≤ x.scale.len(),
                // the length of sums and x.qsum too (asserted above).
                unsafe {
                    let s = _mm256_mul_ps(dw, chunk_f32(&x.scale, g, len));
                    _mm256_storeu_ps(scales[i].as_mut_ptr(), s);
                    // Q4_0's stored values are offset by 8: Σ d (q - 8) x =
                    // Σ d q x - 8 Σ d x; Q4_1 adds its minimum times Σ x.
                    if F == Q4_0 {
                        let s8 = _mm256_mul_ps(s, _mm256_set1_ps(-8.0));
                        acc[i] = _mm256_fmadd_ps(s8, chunk_i32(&x.qsum, g, len), acc[i]);
                    } else if F == Q4_1 {
                        acc[i] = _mm256_fmadd_ps(mw, chunk_f32(sums, g, len), acc[i]);
                    }
                }
            }
            // SAFETY: block b0 + j (j < len) lies within w, and block g of x
            // and those of the next N - 1 rows within x.q (asserted above).
            unsafe {
                let wp = w.as_ptr().add(b0 * bb);
                let xq = x.q.as_ptr().add((first * blocks + b0) * BLOCK);
                let mut block = |j: usize| {
                    block_products::<N>(
                        kind,
                        (wp.add(j * bb), bb),
                        xq.add(j * BLOCK),
                        blocks * BLOCK,
                        &scales,
                        j,
                        &mut acc,
                    )
                };
                // A full chunk's loop has a constant count, for the compiler.
                if len == SCALE_CHUNK {
                    (0..SCALE_CHUNK).for_each(&mut block);
                } else {
                    (0..len).for_each(block);
                }
            }
            b0 += len;
        }
        // Rows from N on are zero: every row count sums in the same order, so
        // a row's result does not depend on how many rows share the call.
        let rows = std::array::from_fn(|i| if i < N { acc[i] } else { _mm256_setzero_ps() });
        let mut totals = [0f32; SCALE_CHUNK];
        // SAFETY: totals holds eight floats.
        unsafe { _mm256_storeu_ps(totals.as_mut_ptr(), lane_sums(rows)) };
        out.copy_from_slice(&totals[..N]);
    }

    /// One weight row `w` against `N` activation rows stored one after another
    /// in `x`, their block sums in `sums`; results in `out[..N]`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots<const N: usize>(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
        if !kind.fused() {
            return super::dots_portable(kind, w, x, sums, out);
        }
        let bb = kind.block_bytes();
        let per_block = kind.block_elements() / BLOCK;
        let groups = w.len() / bb * per_block;
        let cols = groups * BLOCK;
        assert!(x.len() == N * cols && sums.len() == N * groups && out.len() == N);
        // Independent accumulators hide the FMA latency: four for one row,
        // two per row when several rows already interleave.
        let lanes = if N == 1 { 4 } else { 2 };
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut offsets = [0f32; N];
        for (b, block) in w.chunks_exact(bb).enumerate() {
            for j in 0..per_block {
                let g = b * per_block + j;
                let (wv, offset) = widen(kind, block, j);
                for i in 0..N {
                    let xb = &x[i * cols + g * BLOCK..i * cols + (g + 1) * BLOCK];
                    for (k, wk) in wv.iter().enumerate() {
                        // SAFETY: xb holds 32 floats; this loads 8 of them from 8k.
                        let xv = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * k)) };
                        acc[i][k % lanes] = _mm256_fmadd_ps(*wk, xv, acc[i][k % lanes]);
                    }
                    offsets[i] += offset * sums[i * groups + g];
                }
            }
        }
        for i in 0..N {
            let a = &acc[i];
            out[i] = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))) + offsets[i];
        }
    }
}

/// The 16-bit integer kernel on AVX-512: one 512-bit register holds a whole
/// block of 32 values, so a block times an activation row is one
/// multiply-add of pairs, one conversion and one fused multiply-add, where
/// AVX2 needs two of the first and an addition; and its 32 registers hold
/// the accumulators of eight rows. The scales and offsets are handled per chunk of eight blocks
/// as in [`avx2::dots_int16`], with its helpers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::avx2::{self, PREFETCH_BYTES, SCALE_CHUNK, block_scales, lanes, lanes_i32};
    use super::{BLOCK, QuantKind};
    use crate::host_ops::avx2::hsum;

    pub fn available() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            avx2::available() && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
        })
    }

    /// The 32 values of the Q8_0, Q4_0 or Q4_1 block at `p` as i16 in one
    /// register, in element order (Q4's stored nibbles, without their offset).
    ///
    /// # Safety
    /// `p` must point to a whole block of `kind` (`bb` bytes).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn block_values(kind: QuantKind, p: *const u8, bb: usize) -> __m512i {
        // SAFETY: Q8_0 reads bytes 2..34 of its 34; Q4 reads its last 16.
        unsafe {
            if kind == QuantKind::Q8_0 {
                _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.add(2) as *const __m256i))
            } else {
                // Byte k holds element k (low nibble) and k + 16 (high): the
                // 16 bytes widened twice, the second copy shifted by 4.
                let bytes = _mm_loadu_si128(p.add(bb - 16) as *const __m128i);
                let both = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(bytes));
                let shifts = _mm512_set_epi64(HIGH, HIGH, HIGH, HIGH, 0, 0, 0, 0);
                _mm512_and_si512(_mm512_srlv_epi16(both, shifts), _mm512_set1_epi16(0x0f))
            }
        }
    }

    /// A shift of 4 in each of four 16-bit lanes.
    const HIGH: i64 = 0x0004_0004_0004_0004;

    /// The weight block `w` times the activation block at `xq` and the
    /// blocks `row_stride` values after it (the same block of the next
    /// `N - 1` rows), each scaled by `scales[i][j]` and added to `acc[i]`.
    ///
    /// # Safety
    /// The `N` activation blocks must lie within one allocation; the CPU
    /// must have AVX-512 F and BW (inlined into callers that enable them).
    #[inline(always)]
    unsafe fn block_products<const N: usize>(
        w: __m512i,
        xq: *const i16,
        row_stride: usize,
        scales: &[[f32; SCALE_CHUNK]; N],
        j: usize,
        acc: &mut [__m512; N],
    ) {
        // SAFETY: the caller guarantees the pointers and the CPU features.
        unsafe {
            for i in 0..N {
                let x = _mm512_loadu_si512(xq.add(i * row_stride) as *const __m512i);
                let products = _mm512_cvtepi32_ps(_mm512_madd_epi16(w, x));
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(scales[i][j]), products, acc[i]);
            }
        }
    }

    /// [`super::dots_int16`] for `N` activation rows from row `first`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    pub unsafe fn dots_int16<const N: usize>(
        kind: QuantKind,
        w: &[u8],
        x: &super::Int16Rows,
        sums: &[f32],
        first: usize,
        out: &mut [f32],
    ) {
        let bb = kind.block_bytes();
        let blocks = w.len() / bb;
        assert!(kind.simple() && out.len() == N && (first + N) * blocks <= x.scale.len());
        assert!(x.q.len() == x.scale.len() * BLOCK && sums.len() == x.scale.len() && x.qsum.len() == x.scale.len());
        // Two accumulators per row, for even and odd blocks: with one row a
        // block's work is shorter than the latency of its addition.
        let mut even = [_mm512_setzero_ps(); N];
        let mut odd = [_mm512_setzero_ps(); N];
        let mut offsets = [_mm256_setzero_ps(); N];
        let mut scales = [[0f32; SCALE_CHUNK]; N];
        let mut b0 = 0;
        while b0 < blocks {
            let len = (blocks - b0).min(SCALE_CHUNK);
            // As in the AVX2 kernel: the next blocks, often the next row's.
            let ahead = w.as_ptr().wrapping_add(b0 * bb + PREFETCH_BYTES);
            for line in 0..(SCALE_CHUNK * bb).div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
            }
            // SAFETY: this function enables AVX2 and F16C.
            let (dw, mw) = unsafe { block_scales(&w[b0 * bb..], bb, len) };
            for i in 0..N {
                let g = (first + i) * blocks + b0;
                let s = _mm256_mul_ps(dw, lanes(&x.scale[g..g + len]));
                // SAFETY: scales[i] holds 8 floats.
                unsafe { _mm256_storeu_ps(scales[i].as_mut_ptr(), s) };
                match kind {
                    QuantKind::Q4_0 => offsets[i] = _mm256_fmadd_ps(s, lanes_i32(&x.qsum[g..g + len]), offsets[i]),
                    QuantKind::Q4_1 => offsets[i] = _mm256_fmadd_ps(mw, lanes(&sums[g..g + len]), offsets[i]),
                    _ => {}
                }
            }
            // Block j of the chunk: its values, and the first row's activations.
            let at = |j: usize| {
                let g = first * blocks + b0 + j;
                // SAFETY: j < len, so the block lies within w, and block g of
                // x and those of the next N - 1 rows within x.q (asserted above).
                unsafe { (block_values(kind, w.as_ptr().add((b0 + j) * bb), bb), x.q.as_ptr().add(g * BLOCK)) }
            };
            let mut j = 0;
            while j + 1 < len {
                let ((w0, x0), (w1, x1)) = (at(j), at(j + 1));
                // SAFETY: as for `at`.
                unsafe {
                    block_products::<N>(w0, x0, blocks * BLOCK, &scales, j, &mut even);
                    block_products::<N>(w1, x1, blocks * BLOCK, &scales, j + 1, &mut odd);
                }
                j += 2;
            }
            if j < len {
                let (wj, xj) = at(j);
                // SAFETY: as for `at`.
                unsafe { block_products::<N>(wj, xj, blocks * BLOCK, &scales, j, &mut even) };
            }
            b0 += len;
        }
        // Q4_0's stored values are offset by 8: Σ d (q - 8) x = Σ d q x - 8 Σ d x.
        let offset_sign = if kind == QuantKind::Q4_0 { -8.0 } else { 1.0 };
        for i in 0..N {
            out[i] = _mm512_reduce_add_ps(_mm512_add_ps(even[i], odd[i])) + offset_sign * hsum(offsets[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Random blocks of `kind`: every quant bit random, the f16 scales small
    /// and finite as in real files.
    fn random_matrix(kind: QuantKind, rows: usize, cols: usize, rng: &mut StdRng) -> PackedMatrix {
        let blocks = rows * cols / kind.block_elements();
        let bb = kind.block_bytes();
        let mut data: Vec<u8> = (0..blocks * bb).map(|_| rng.random()).collect();
        let range = if kind.block_elements() == BLOCK { 0.001f32..0.05 } else { 0.0005..0.003 };
        for block in data.chunks_exact_mut(bb) {
            for &o in kind.scale_offsets() {
                block[o..o + 2].copy_from_slice(&f16::from_f32(rng.random_range(range.clone())).to_le_bytes());
            }
        }
        PackedMatrix::new(kind, rows, cols, data).unwrap()
    }

    /// The product in f64, and the sum of the products' magnitudes (what
    /// bounds f32 rounding).
    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<(f64, f64)> {
        let mut out = vec![(0f64, 0f64); n * rows];
        for i in 0..n {
            for r in 0..rows {
                let terms = (0..cols).map(|k| f64::from(w[r * cols + k]) * f64::from(x[i * cols + k]));
                out[i * rows + r] = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
            }
        }
        out
    }

    #[test]
    fn every_kernel_equals_dequantise_then_multiply() {
        let mut rng = StdRng::seed_from_u64(7);
        for kind in QuantKind::ALL {
            // Rows that do not fill the last tile, and stacked parts of mixed formats.
            let cols = 2 * kind.block_elements().max(64);
            let parts =
                vec![random_matrix(kind, 45, cols, &mut rng), random_matrix(QuantKind::Q8_0, 20, cols, &mut rng)];
            let linear = PackedLinear::new(parts).unwrap();
            let w = linear.dequantize();
            for n in [1, 2, 3, 4, 5, 8, 16, 17, 33] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let got = linear.forward(&x, n);
                let want = reference(&w, 65, cols, &x, n);
                for (g, (r, magnitude)) in got.iter().zip(&want) {
                    // f32 accumulation: a few units of 2^-24 per term at most.
                    let bound = 1e-6 * magnitude + 1e-6;
                    assert!((f64::from(*g) - r).abs() < bound, "{kind:?} n={n}: {g} vs {r}");
                }
            }
        }
    }

    /// Q8_0, Q4_0 and Q4_1 with 16-bit activations: the product of the
    /// dequantised weights with the activations as quantised (Q4_1's minimum
    /// times the exact block sum), in f64; and within the quantisation's own
    /// bound (half a step of each block's activations times Σ|w|) of the
    /// exact product.
    #[test]
    fn int16_activation_kernels_equal_their_reference_and_stay_within_half_a_step() {
        let mut rng = StdRng::seed_from_u64(13);
        // 8 blocks a row: one whole chunk of scales; 11: a whole chunk, then
        // a partial one with an odd number of blocks.
        let shapes = [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1].into_iter().flat_map(|k| [(k, 8), (k, 11)]);
        for (kind, row_blocks) in shapes {
            let (rows, cols) = (45, row_blocks * BLOCK);
            let m = random_matrix(kind, rows, cols, &mut rng);
            // Mixed with a part in a format that keeps the f32 activations
            // (a K-quant where the row holds whole super-blocks).
            let other = if cols % SUPER_BLOCK == 0 { QuantKind::Q4_K } else { QuantKind::Q5_0 };
            let k = random_matrix(other, 20, cols, &mut rng);
            let mixed = PackedLinear::new(vec![m.clone(), k.clone()]).unwrap().with_int16_activations(true);
            let alone = PackedLinear::new(vec![m.clone()]).unwrap().with_int16_activations(true);
            let w = m.dequantize();
            let blocks = cols / BLOCK;
            for n in 1..=INT16_MAX_ROWS {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let (xq, sums) = (Int16Rows::quantize(&x), block_sums(&x));
                // Beyond FUSED_MAX_ROWS a matrix with a part that keeps f32
                // activations is widened for gemm as a whole.
                let (got, other) =
                    if n <= FUSED_MAX_ROWS { (mixed.forward(&x, n), 20) } else { (alone.forward(&x, n), 0) };
                let exact = PackedLinear::new(vec![k.clone()]).unwrap().forward(&x, n);
                for i in 0..n {
                    for r in 0..rows {
                        let (mut want, mut exact_sum, mut bound) = (0f64, 0f64, 0f64);
                        for b in 0..blocks {
                            let g = i * blocks + b;
                            let min = if kind == QuantKind::Q4_1 {
                                f64::from(f16_at(&m.row(r)[b * kind.block_bytes()..], 2))
                            } else {
                                0.0
                            };
                            for j in 0..BLOCK {
                                let (wv, xv) = (f64::from(w[r * cols + b * BLOCK + j]), f64::from(x[g * BLOCK + j]));
                                let xhat = f64::from(xq.q[g * BLOCK + j]) * f64::from(xq.scale[g]);
                                want += (wv - min) * xhat + min * xv;
                                exact_sum += wv * xv;
                                bound += wv.abs() * f64::from(xq.scale[g]) / 2.0;
                            }
                        }
                        let g = f64::from(got[i * (rows + other) + r]);
                        assert!((g - want).abs() < 1e-5 * (1.0 + want.abs()), "{kind:?} n={n}: {g} vs {want}");
                        assert!((g - exact_sum).abs() <= bound * 1.001 + 1e-5, "{kind:?}: off the exact product");
                    }
                    // The K-quant part's rows: the f32 kernel, unchanged.
                    for r in 0..other {
                        assert_eq!(got[i * (rows + other) + rows + r], exact[i * 20 + r], "{kind:?} n={n}");
                    }
                }
                for r in 0..rows {
                    let alone: Vec<Vec<f32>> = (0..n)
                        .map(|i| {
                            let g = i * blocks..(i + 1) * blocks;
                            let xi = Int16Rows {
                                q: xq.q[g.start * BLOCK..g.end * BLOCK].to_vec(),
                                scale: xq.scale[g.clone()].to_vec(),
                                qsum: xq.qsum[g.clone()].to_vec(),
                            };
                            int16_simd_kernels(kind, m.row(r), &xi, &sums[g], 1)
                                .into_iter()
                                .map(|(_, o)| o[0])
                                .collect()
                        })
                        .collect();
                    for (k, (name, simd)) in int16_simd_kernels(kind, m.row(r), &xq, &sums, n).into_iter().enumerate() {
                        for (i, s) in simd.iter().enumerate() {
                            // The same summation order whatever the rows around:
                            // a sequence's logits do not depend on its batch.
                            assert_eq!(s.to_bits(), alone[i][k].to_bits(), "{kind:?} {name} n={n}: row {i} alone");
                            let portable = dot_int16_portable(kind, m.row(r), &xq, &sums, i * blocks);
                            // Summed in another order: f32 rounding of the terms' magnitudes.
                            let magnitude: f32 = (0..cols).map(|j| (w[r * cols + j] * x[i * cols + j]).abs()).sum();
                            let close = (portable - s).abs() <= 1e-6 * magnitude + 1e-6;
                            assert!(close, "{kind:?} {name} n={n}: {portable} vs {s} (terms' magnitude {magnitude})");
                        }
                    }
                }
            }
        }
    }

    /// Every SIMD 16-bit kernel this CPU runs, each over `n` activation rows
    /// in the groups it takes: (its name, its `n` results).
    fn int16_simd_kernels(
        kind: QuantKind,
        w: &[u8],
        xq: &Int16Rows,
        sums: &[f32],
        n: usize,
    ) -> Vec<(&'static str, Vec<f32>)> {
        #[allow(unused_mut)]
        let mut kernels: Vec<(&'static str, Vec<f32>)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx2::available() {
                let mut out = vec![0f32; n];
                for (g, o) in out.chunks_mut(8).enumerate() {
                    // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
                    unsafe { with_rows!(o.len(), avx2::dots_int16(kind, w, xq, sums, g * 8, o)) }
                }
                kernels.push(("avx2", out));
            }
            if avx512::available() {
                let mut out = vec![0f32; n];
                dots_int16(kind, w, xq, sums, 0, &mut out);
                kernels.push(("avx512", out));
            }
        }
        kernels
    }

    #[test]
    fn small_values_round_to_the_nearest_integer_ties_to_even() {
        let mut rng = StdRng::seed_from_u64(5);
        let ties = (-40..40).map(|k| k as f32 + 0.5);
        let edges = [0.0, -0.0, 0.49999997, -0.49999997, 32766.5, 32767.0, -32767.5, 4194303.5];
        let random = (0..10_000).map(|_| rng.random_range(-40000f32..40000.0));
        for y in ties.chain(edges).chain(random) {
            assert_eq!(round_small(y), y.round_ties_even(), "{y}");
        }
        assert!(round_small(f32::NAN).is_nan());
    }

    #[test]
    fn the_portable_and_simd_kernels_agree() {
        let mut rng = StdRng::seed_from_u64(9);
        for kind in QuantKind::ALL {
            let m = random_matrix(kind, 3, 512, &mut rng);
            let x: Vec<f32> = (0..512).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let sums = block_sums(&x);
            for r in 0..3 {
                let a = dot_portable(kind, m.row(r), &x, &sums);
                let mut b = [0f32];
                dots(kind, m.row(r), &x, &sums, &mut b);
                assert!((a - b[0]).abs() <= 1e-5 * a.abs().max(1.0), "{kind:?}: {a} vs {}", b[0]);
            }
        }
    }

    #[test]
    fn the_portable_and_simd_dequantisers_agree() {
        let mut rng = StdRng::seed_from_u64(11);
        for kind in QuantKind::ALL {
            let m = random_matrix(kind, 1, 512, &mut rng);
            let (mut a, mut b) = (vec![0f32; 512], vec![0f32; 512]);
            // The portable code (ggml's loops for the K formats), whatever the CPU.
            if kind.simple() {
                dequantize_portable(kind, m.row(0), &mut a);
            } else {
                dequantize_wide_body(kind, m.row(0), &mut a);
            }
            dequantize_blocks(kind, m.row(0), &mut b);
            for (x, y) in a.iter().zip(&b) {
                // d·q + m in either order of rounding: within an ulp or two.
                assert!((x - y).abs() <= 1e-6 * x.abs().max(1e-3), "{kind:?}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn k_quant_rows_must_hold_whole_super_blocks() {
        let bytes = QuantKind::Q4_K.block_bytes();
        assert!(PackedMatrix::new(QuantKind::Q4_K, 1, 256, vec![0; bytes]).is_ok());
        assert!(PackedMatrix::new(QuantKind::Q4_K, 2, 128, vec![0; bytes]).is_err());
        assert!(PackedMatrix::new(QuantKind::Q6_K, 1, 256, vec![0; 209]).is_err());
    }

    #[test]
    fn malformed_matrices_are_refused() {
        assert!(PackedMatrix::new(QuantKind::Q8_0, 2, 30, vec![0; 68]).is_err());
        assert!(PackedMatrix::new(QuantKind::Q8_0, 2, 32, vec![0; 67]).is_err());
        assert!(PackedMatrix::new(QuantKind::Q4_1, usize::MAX, 64, vec![]).is_err());
        assert!(PackedLinear::new(vec![]).is_err());
        let mut rng = StdRng::seed_from_u64(1);
        let mixed =
            vec![random_matrix(QuantKind::Q4_0, 1, 32, &mut rng), random_matrix(QuantKind::Q4_0, 1, 64, &mut rng)];
        assert!(PackedLinear::new(mixed).is_err());
    }
}
