//! The elementwise parts of a decoder layer on plain `f32` rows: what a
//! decoding step with packed weights runs between its matrix products, so
//! that a step is a few dozen host loops instead of some forty backend
//! operations per layer (each allocating and dispatching on its own, which
//! cost a quarter of a SmolLM2 token at batch 1).
//!
//! Each function matches the backend version in `model` (the same formula,
//! summed in the same precision); `model`'s tests compare the two paths.

/// RMSNorm of each row of `x` (rows of `weight.len()`): `x / sqrt(mean(x²) + eps) · weight`.
pub fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = vec![0f32; x.len()];
    for (row, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
    out
}

/// Rotary embedding of one head in Hugging Face's layout (the two halves
/// are the pairs) at the angles whose cosines and sines are `cos`, `sin`.
pub fn rotate_head(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (x1, x2) = head.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * cos[i] - b * sin[i];
        x2[i] = b * cos[i] + a * sin[i];
    }
}

/// `silu(gate) · up` for rows holding `[gate | up]`, each half `ff` long.
pub fn silu_mul_rows(gate_up: &[f32], ff: usize) -> Vec<f32> {
    let mut out = vec![0f32; gate_up.len() / 2];
    for (row, dst) in gate_up.chunks_exact(2 * ff).zip(out.chunks_exact_mut(ff)) {
        let (g, u) = row.split_at(ff);
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { avx2::silu_mul(g, u, dst) };
            continue;
        }
        silu_mul_portable(g, u, dst);
    }
    out
}

fn silu_mul_portable(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// `x += y`, elementwise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Vector helpers of the elementwise work, shared with the attention and
/// matrix kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// The sum of the eight lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Lane `i` holds the sum of the lanes of `v[i]`, added in the order
    /// ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)): three rounds of pairwise
    /// additions for eight vectors at once, where reducing each on its own
    /// took as long as a few of the products that filled them.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn lane_sums(v: [__m256; 8]) -> __m256 {
        let pairs = |i: usize| _mm256_hadd_ps(v[i], v[i + 1]);
        let low = _mm256_hadd_ps(pairs(0), pairs(2));
        let high = _mm256_hadd_ps(pairs(4), pairs(6));
        // low: vectors 0..4, lanes 0..4 then 4..8 of each; high: vectors 4..8.
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(low, high), _mm256_permute2f128_ps::<0x31>(low, high))
    }

    /// e^x for eight values of x: Cephes' `expf`, e^x = 2^n · e^r with
    /// n = round(x / ln 2) and |r| ≤ ln 2 / 2 from a degree-6 polynomial,
    /// within two units in the last place. x is first clamped to
    /// [-87.3, 88]: below, the result stays at about 1.2e-38 (libm's goes on
    /// to 0 through denormals), above at e^88 (libm's to infinity); softmax
    /// and silu give the same results either way.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.336_55)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // r = x - n ln 2, with ln 2 split so that n · ln2_hi is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        // 2^n from the exponent bits; n ≥ -126 after the clamp.
        let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }

    /// [`super::silu_mul_rows`] for one row: a call to libm's `expf` per
    /// element took as long as the rest of the step's elementwise work.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `u` and `out` as long as `g`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
        assert!(u.len() == g.len() && out.len() == g.len());
        let whole = g.len() / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 ≤ the length of all three (asserted above).
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr().add(c));
                // silu(g) = g / (1 + e^-g); past the clamp of `exp` the
                // result is g (g large) or a vanishing fraction of it.
                let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), gv));
                let silu = _mm256_div_ps(gv, _mm256_add_ps(one, e));
                _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr().add(c))));
            }
        }
        super::silu_mul_portable(&g[whole..], &u[whole..], &mut out[whole..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_the_formula() {
        let x = [1.0, -2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
        let w = [1.0, 2.0, 0.5, 1.0];
        let out = rms_norm_rows(&x, &w, 1e-5);
        let inv = 1.0 / ((1.0 + 4.0 + 9.0 + 16.0) / 4.0 + 1e-5f32).sqrt();
        assert_eq!(&out[..4], &[inv, -4.0 * inv, 1.5 * inv, 4.0 * inv]);
        let inv = 1.0 / (0.25 + 1e-5f32).sqrt();
        assert!((out[5] - inv).abs() < 1e-6);
    }

    #[test]
    fn rotation_by_a_quarter_turn_swaps_the_halves() {
        let mut head = [1.0, 2.0, 3.0, 4.0];
        rotate_head(&mut head, &[0.0, 1.0], &[1.0, 0.0]);
        // Pair (1, 3) turned by 90°, pair (2, 4) unchanged.
        assert_eq!(head, [-3.0, 2.0, 1.0, 4.0]);
    }

    /// The vector exponential within 2 units in the last place of f32 over
    /// [-87.3, 88], and clamped (finite, not negative) beyond.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp() {
        if !crate::cpu::avx2() {
            return;
        }
        use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
        let xs: Vec<f32> =
            (-87_300..=88_000).map(|i| i as f32 / 1000.0).chain([-87.34, -90.0, -1e30, 88.2, 1e30]).collect();
        for chunk in xs.chunks(8) {
            let mut x = [0f32; 8];
            x[..chunk.len()].copy_from_slice(chunk);
            let mut e = [0f32; 8];
            // SAFETY: the CPU has AVX2 and FMA (checked above); both arrays hold 8 floats.
            unsafe { _mm256_storeu_ps(e.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(x.as_ptr()))) };
            for (&xi, &ei) in x.iter().zip(&e) {
                let want = f64::from(xi).exp();
                if xi < -87.33 {
                    assert!((0.0..1.3e-38).contains(&ei), "e^{xi} = {ei}");
                    continue;
                }
                if xi > 88.0 {
                    assert!(ei.is_finite() && ei > 1e38, "e^{xi} = {ei}");
                    continue;
                }
                let ulp = f64::from(f32::EPSILON) * want;
                assert!((f64::from(ei) - want).abs() <= 2.0 * ulp, "e^{xi}: {ei} vs {want}");
            }
        }
    }

    /// Every element, in whole vectors and in the tail, against the formula
    /// in f64, across the range where the exponential saturates.
    #[test]
    fn silu_matches_f64_across_the_range() {
        let g: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.97).collect();
        let u: Vec<f32> = (0..203).map(|i| 1.0 + (i % 7) as f32).collect();
        let rows: Vec<f32> = g.iter().chain(&u).copied().collect();
        let out = silu_mul_rows(&rows, g.len());
        for ((&o, &g), &u) in out.iter().zip(&g).zip(&u) {
            let want = f64::from(g) / (1.0 + (-f64::from(g)).exp()) * f64::from(u);
            assert!((f64::from(o) - want).abs() <= 1e-6 * want.abs() + 1e-30, "silu({g}) · {u}: {o} vs {want}");
        }
    }

    #[test]
    fn silu_times_up() {
        let out = silu_mul_rows(&[0.0, 2.0, 3.0, 5.0], 2);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2.0f32).exp()) * 5.0).abs() < 1e-6);
    }
}
