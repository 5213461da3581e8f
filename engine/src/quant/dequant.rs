//! Blocks widened to f32: ggml's `dequantize_row_*`, portable and on AVX2.

use half::f16;

use super::{BLOCK, QuantKind, avx2};

pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// A tensor's blocks widened to f32.
pub fn dequantize_bytes(kind: QuantKind, bytes: &[u8]) -> Vec<f32> {
    let blocks = bytes.len() / kind.block_bytes();
    let mut out = vec![0f32; blocks * kind.block_elements()];
    dequantize_blocks(kind, &bytes[..blocks * kind.block_bytes()], &mut out);
    out
}

pub(super) fn dequantize_blocks(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
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

pub(super) fn dequantize_portable(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
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
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (f32::from(d), f32::from(m))
}

/// The formats without a fused kernel, as ggml's `dequantize_row_*` does them.
pub(super) fn dequantize_wide(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
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
pub(super) fn dequantize_wide_body(kind: QuantKind, bytes: &[u8], out: &mut [f32]) {
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
