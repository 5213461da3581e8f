//! Weights kept in their stored GGUF precision, and matrix products that
//! dequantise them on the fly.
//!
//! Decoding reads every weight once per token, so its speed is the speed at
//! which weights stream from memory: a Q4_1 weight is 0.625 bytes where the
//! widened f32 was 4. Activations stay f32 (llama.cpp quantises them to 8 bits
//! too; keeping them exact means a packed product differs from the f32
//! reference only in summation order).
//!
//! Two kernels, picked by the number of activation rows `n`:
//! - `n <= FUSED_MAX_ROWS` (decoding): each weight block is converted in
//!   registers once and multiplied with up to four activation rows at a time
//!   (AVX2 + FMA when the CPU has them, checked at run time; portable code
//!   otherwise);
//! - more rows (prefill, large batches): a tile of weight rows is dequantised
//!   into a small f32 buffer and multiplied by `gemm`, so the conversion is paid
//!   once per tile rather than once per activation row.
//!
//! Work is split over rayon's pool by tiles of output rows.

use half::f16;
use rayon::prelude::*;

use crate::LoadError;
use crate::gguf::TensorType;

/// Elements per quantisation block in every format here.
pub const BLOCK: usize = 32;

/// Activation rows up to which the fused kernel is used.
const FUSED_MAX_ROWS: usize = 16;

/// Activation rows the fused kernel multiplies per weight block conversion.
const GROUP: usize = 4;

/// Output rows per parallel task.
const TILE_ROWS: usize = 32;

/// Output rows per parallel task when a tile is widened for `gemm`: larger,
/// so that each call amortises its packing of the activations.
const GEMM_TILE_ROWS: usize = 128;

/// A GGUF block format this module multiplies without widening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// f16 scale, 32 signed bytes.
    Q8_0,
    /// f16 scale, 32 nibbles with an implicit -8 offset.
    Q4_0,
    /// f16 scale and minimum, 32 nibbles.
    Q4_1,
}

impl QuantKind {
    pub fn from_tensor_type(kind: TensorType) -> Option<Self> {
        match kind {
            TensorType::Q8_0 => Some(QuantKind::Q8_0),
            TensorType::Q4_0 => Some(QuantKind::Q4_0),
            TensorType::Q4_1 => Some(QuantKind::Q4_1),
            _ => None,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q8_0 => 34,
            QuantKind::Q4_0 => 18,
            QuantKind::Q4_1 => 20,
        }
    }
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
        if cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(LoadError::Format(format!("{kind:?} rows of {cols} elements; expected a multiple of {BLOCK}")));
        }
        let expected = rows.checked_mul(cols / BLOCK * kind.block_bytes());
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
        self.cols / BLOCK * self.kind.block_bytes()
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

fn dequantize_blocks(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        unsafe { avx2::dequantize(kind, bytes, out) };
        return;
    }
    dequantize_portable(kind, bytes, out);
}

fn dequantize_portable(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
    for (block, dst) in bytes.chunks_exact(kind.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
        let d = f16_at(block, 0);
        match kind {
            QuantKind::Q8_0 => {
                for (o, &q) in dst.iter_mut().zip(&block[2..]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            QuantKind::Q4_0 | QuantKind::Q4_1 => {
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

/// Matrices stacked along the output (q|k|v, gate|up), each in its own format:
/// GGUF files often keep one of them (v, down) at higher precision.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    parts: Vec<PackedMatrix>,
    /// Where each part's rows start in the stacked output.
    starts: Vec<usize>,
    rows: usize,
    cols: usize,
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
        Ok(PackedLinear { parts, starts, rows, cols })
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
        // Computed transposed ([out, n]) so that each task owns whole rows.
        let mut out_t = vec![0f32; self.rows * n];
        if n == 0 {
            return out_t;
        }
        if n <= FUSED_MAX_ROWS {
            let sums = block_sums(x);
            let blocks = self.cols / BLOCK;
            out_t.par_chunks_mut(TILE_ROWS * n).enumerate().for_each(|(tile, dst)| {
                for (k, row_out) in dst.chunks_exact_mut(n).enumerate() {
                    let (m, r) = self.locate(tile * TILE_ROWS + k);
                    let w = m.row(r);
                    for (g, out) in row_out.chunks_mut(GROUP).enumerate() {
                        let first = g * GROUP;
                        let rows = out.len();
                        let xs = &x[first * self.cols..(first + rows) * self.cols];
                        dots(m.kind, w, xs, &sums[first * blocks..(first + rows) * blocks], out);
                    }
                }
            });
        } else {
            out_t.par_chunks_mut(GEMM_TILE_ROWS * n).enumerate().for_each(|(tile, dst)| {
                let rows = dst.len() / n;
                let mut w = vec![0f32; rows * self.cols];
                for (k, wr) in w.chunks_exact_mut(self.cols).enumerate() {
                    let (m, r) = self.locate(tile * GEMM_TILE_ROWS + k);
                    m.dequantize_row(r, wr);
                }
                // dst[rows, n] = w[rows, cols] · xᵀ[cols, n]
                // SAFETY: every pointer covers the extent its dimensions and
                // strides describe: w is rows×cols row-major, x is n×cols
                // row-major read as its transpose, dst is rows×n row-major.
                unsafe {
                    gemm::gemm(
                        rows,
                        n,
                        self.cols,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
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
        }
        if n == 1 {
            return out_t;
        }
        let mut out = vec![0f32; n * self.rows];
        for (r, col) in out_t.chunks_exact(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * self.rows + r] = v;
            }
        }
        out
    }
}

/// The sum of each block of 32 activations, per row: the Q4 formats' offsets
/// multiply it instead of every element.
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
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
    let cols = x.len() / out.len();
    let blocks = cols / BLOCK;
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_portable(kind, w, &x[i * cols..(i + 1) * cols], &sums[i * blocks..(i + 1) * blocks]);
    }
}

fn dot_portable(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32]) -> f32 {
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
            QuantKind::Q4_0 | QuantKind::Q4_1 => {
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

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// One block's 32 weights, scaled, as four vectors, and the offset that
    /// multiplies the activations' block sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn widen(kind: QuantKind, block: &[u8]) -> ([__m256; 4], f32) {
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
                QuantKind::Q4_0 | QuantKind::Q4_1 => {
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

    /// Whole blocks of `kind` widened into `out` (32 floats per block).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dequantize(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
        for (block, dst) in bytes.chunks_exact(kind.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
            let (wv, offset) = widen(kind, block);
            let off = _mm256_set1_ps(offset);
            for (k, v) in wv.iter().enumerate() {
                // SAFETY: dst holds 32 floats; this stores 8 of them from 8k.
                unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * k), _mm256_add_ps(*v, off)) };
            }
        }
    }

    /// One weight row `w` against `N` activation rows stored one after another
    /// in `x`, their block sums in `sums`; results in `out[..N]`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots<const N: usize>(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
        let bb = kind.block_bytes();
        let blocks = w.len() / bb;
        let cols = blocks * BLOCK;
        assert!(x.len() == N * cols && sums.len() == N * blocks && out.len() == N);
        // Independent accumulators hide the FMA latency: four for one row,
        // two per row when several rows already interleave.
        let lanes = if N == 1 { 4 } else { 2 };
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut offsets = [0f32; N];
        for (b, block) in w.chunks_exact(bb).enumerate() {
            let (wv, offset) = widen(kind, block);
            for i in 0..N {
                let xb = &x[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
                for (k, wk) in wv.iter().enumerate() {
                    // SAFETY: xb holds 32 floats; this loads 8 of them from 8k.
                    let xv = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * k)) };
                    acc[i][k % lanes] = _mm256_fmadd_ps(*wk, xv, acc[i][k % lanes]);
                }
                offsets[i] += offset * sums[i * blocks + b];
            }
        }
        for i in 0..N {
            let a = &acc[i];
            out[i] = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))) + offsets[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Random blocks of `kind` with realistic scales (f16, small) and every quant value.
    fn random_matrix(kind: QuantKind, rows: usize, cols: usize, rng: &mut StdRng) -> PackedMatrix {
        let blocks = rows * cols / BLOCK;
        let mut data = Vec::with_capacity(blocks * kind.block_bytes());
        for _ in 0..blocks {
            data.extend(f16::from_f32(rng.random_range(0.001f32..0.05)).to_le_bytes());
            if kind == QuantKind::Q4_1 {
                data.extend(f16::from_f32(rng.random_range(-0.4f32..0.0)).to_le_bytes());
            }
            let quants = if kind == QuantKind::Q8_0 { 32 } else { 16 };
            data.extend((0..quants).map(|_| rng.random::<u8>()));
        }
        PackedMatrix::new(kind, rows, cols, data).unwrap()
    }

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f64> {
        let mut out = vec![0f64; n * rows];
        for i in 0..n {
            for r in 0..rows {
                out[i * rows + r] =
                    (0..cols).map(|k| f64::from(w[r * cols + k]) * f64::from(x[i * cols + k])).sum::<f64>();
            }
        }
        out
    }

    #[test]
    fn every_kernel_equals_dequantise_then_multiply() {
        let mut rng = StdRng::seed_from_u64(7);
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1] {
            // Rows that do not fill the last tile, and stacked parts of mixed formats.
            let parts = vec![random_matrix(kind, 45, 96, &mut rng), random_matrix(QuantKind::Q8_0, 20, 96, &mut rng)];
            let linear = PackedLinear::new(parts).unwrap();
            let w = linear.dequantize();
            for n in [1, 2, 3, 4, 5, 8, 16, 17, 33] {
                let x: Vec<f32> = (0..n * 96).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let got = linear.forward(&x, n);
                let want = reference(&w, 65, 96, &x, n);
                for (g, r) in got.iter().zip(&want) {
                    // f32 sums of 96 products of magnitude ~0.5: rounding well under 1e-4.
                    assert!((f64::from(*g) - r).abs() < 1e-4, "{kind:?} n={n}: {g} vs {r}");
                }
            }
        }
    }

    #[test]
    fn the_portable_and_simd_kernels_agree() {
        let mut rng = StdRng::seed_from_u64(9);
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1] {
            let m = random_matrix(kind, 3, 256, &mut rng);
            let x: Vec<f32> = (0..256).map(|_| rng.random_range(-1.0f32..1.0)).collect();
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
        for kind in [QuantKind::Q8_0, QuantKind::Q4_0, QuantKind::Q4_1] {
            let m = random_matrix(kind, 1, 128, &mut rng);
            let (mut a, mut b) = (vec![0f32; 128], vec![0f32; 128]);
            dequantize_portable(kind, m.row(0), &mut a);
            dequantize_blocks(kind, m.row(0), &mut b);
            for (x, y) in a.iter().zip(&b) {
                // d·q + m in either order of rounding: within an ulp or two.
                assert!((x - y).abs() <= 1e-6 * x.abs().max(1e-3), "{kind:?}: {x} vs {y}");
            }
        }
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
