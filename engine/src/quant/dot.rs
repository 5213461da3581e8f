//! Products with f32 activations: the fused kernel's dispatch, and the
//! portable code it falls back to (and is tested against).

use super::dequant::{dequantize_wide, f16_at};
use super::{BLOCK, QuantKind, avx2};

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

/// stored one after another in `x`, with their block sums in `sums`.
pub(super) fn dots(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
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

pub(super) fn dots_portable(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32], out: &mut [f32]) {
    let cols = x.len() / out.len();
    let blocks = cols / BLOCK;
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot_portable(kind, w, &x[i * cols..(i + 1) * cols], &sums[i * blocks..(i + 1) * blocks]);
    }
}

pub(super) fn dot_portable(kind: QuantKind, w: &[u8], x: &[f32], sums: &[f32]) -> f32 {
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
