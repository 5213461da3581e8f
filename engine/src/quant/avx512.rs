//! The 16-bit integer kernel on AVX-512: one 512-bit register holds a whole
//! block of 32 values, so a block times an activation row is one
//! multiply-add of pairs, one conversion and one fused multiply-add, where
//! AVX2 needs two of the first and an addition; and its 32 registers hold
//! the accumulators of eight rows. The scales and offsets are handled per chunk of eight blocks
//! as in [`avx2::dots_int16`], with its helpers.

use std::arch::x86_64::*;

use super::avx2::{PREFETCH_BYTES, SCALE_CHUNK, block_scales, lanes, lanes_i32};
use super::{BLOCK, QuantKind};
use crate::host_ops::avx2::hsum;

pub fn available() -> bool {
    crate::cpu::avx512()
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

/// [`super::int16::dots_int16`] for `N` activation rows from row `first`.
///
/// # Safety
/// The CPU must have AVX-512 F and BW, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub unsafe fn dots_int16<const N: usize>(
    kind: QuantKind,
    w: &[u8],
    x: &super::int16::Int16Rows,
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
