//! Activations rounded to 16-bit integers per block, and the integer dot
//! products of Q8_0, Q4_0 and Q4_1 blocks with them.

use super::dequant::f16_at;
use super::{BLOCK, GROUP, QuantKind};
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};

/// magnitude maps to it, so rounding moves a value by at most 1/65534 of it.
pub const INT16_TOP: i16 = i16::MAX;

/// `y` rounded to the nearest integer (ties to even) for |y| < 2²²: adding
/// 1.5 · 2²³ leaves no bits below the units, so the addition itself rounds.
/// `f32::round` is a call to libm on baseline x86-64, which took as long as
/// the rest of the quantisation.
pub(super) fn round_small(y: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (y + SHIFT) - SHIFT
}

/// Activation rows quantised to 16-bit integers per block of 32 (scale =
/// max |x| / 32767, values rounded to nearest): what the integer dot products
/// multiply. Quantised once per product, shared by every weight row.
pub struct Int16Rows {
    pub(super) q: Vec<i16>,
    /// Per block: the scale.
    pub(super) scale: Vec<f32>,
    /// Per block: Σ q, which Q4_0's implicit offset of -8 multiplies.
    pub(super) qsum: Vec<i32>,
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

    pub(super) fn block(&self, g: usize) -> &[i16] {
        &self.q[g * BLOCK..(g + 1) * BLOCK]
    }
}

/// One weight row of Q8_0, Q4_0 or Q4_1 against activation rows `first..`
/// (`out.len()` of them, at most `GROUP`) of `x`, in integer arithmetic per
/// block: `d_w · d_x · Σ q_w q_x` (+ the format's offset; Q4_1's minimum
/// multiplies the exact block sums `sums` of all rows, as in [`dots`]). The
/// block sums fit an i32: 32 · 128 · 32767 < 2³¹.
pub(super) fn dots_int16(kind: QuantKind, w: &[u8], x: &Int16Rows, sums: &[f32], first: usize, out: &mut [f32]) {
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
pub(super) fn int16_group() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() || avx2::available() {
        return 8;
    }
    GROUP
}

/// [`dots_int16`] for one activation row whose first block is `g0`.
pub(super) fn dot_int16_portable(kind: QuantKind, w: &[u8], x: &Int16Rows, sums: &[f32], g0: usize) -> f32 {
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
