//! Stacked matrices multiplied by activation rows: the fused kernels for a
//! few rows, tiles widened for `gemm` for many, split over rayon's pool.

use rayon::prelude::*;

use super::dot::{dot_f32, dots};
use super::int16::{Int16Rows, dots_int16, int16_group};
use super::{BLOCK, FUSED_MAX_ROWS, FUSED_ROWS_LIMIT, GEMM_TILE_ROWS, GROUP, INT16_MAX_ROWS, PackedMatrix, TILE_ROWS};
use crate::LoadError;

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
// SAFETY: as for Send: shared, it is only written at disjoint elements.
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
pub(super) fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect()
}
