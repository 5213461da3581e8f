//! The AVX2 + FMA + F16C kernels: widening, the fused f32 products and the
//! 16-bit integer products.

use std::arch::x86_64::*;

use super::{BLOCK, QuantKind};
use crate::host_ops::avx2::{hsum, lane_sums};

pub fn available() -> bool {
    crate::cpu::avx2()
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
                let (sc, m) = super::dequant::scale_min_k4(j, &block[4..16]);
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
    super::dequant::dequantize_wide_body(kind, bytes, out)
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
        return super::dequant::dequantize_wide(kind, bytes, out);
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
            let (x0, x1) = (_mm256_loadu_si256(xp as *const __m256i), _mm256_loadu_si256(xp.add(16) as *const __m256i));
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

/// [`super::int16::dots_int16`] for `N` activation rows from row `first`.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dots_int16<const N: usize>(
    kind: QuantKind,
    w: &[u8],
    x: &super::int16::Int16Rows,
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
    x: &super::int16::Int16Rows,
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
                block_products::<N>(kind, (wp.add(j * bb), bb), xq.add(j * BLOCK), blocks * BLOCK, &scales, j, &mut acc)
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
        return super::dot::dots_portable(kind, w, x, sums, out);
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
