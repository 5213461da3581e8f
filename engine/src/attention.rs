//! The steps of attention over cached rows, with SIMD where the CPU has it:
//! query · key for eight positions at once, the softmax of the scores, and
//! the weighted sum of value rows.
//!
//! Each result depends only on its own inputs, summed in a fixed order, so
//! a query gets the same bits whichever heads, rows or sequences share its
//! task.

/// Key rows [`scores`] takes at once.
pub const POSITIONS: usize = 8;

/// `out[p] = q · keys[p]` for eight key rows as long as `q`.
///
/// One dot product per call, each reduced on its own, took a third of a
/// batch-8 SmolLM2 decoding step at a few hundred positions; eight at once
/// share the loads of `q` and one horizontal reduction.
pub fn scores(q: &[f32], keys: &[&[f32]; POSITIONS], out: &mut [f32; POSITIONS]) {
    assert!(keys.iter().all(|k| k.len() == q.len()), "key rows of {} values", q.len());
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the lengths are asserted.
        return unsafe { avx2::scores(q, keys, out) };
    }
    scores_portable(q, keys, out);
}

fn scores_portable(q: &[f32], keys: &[&[f32]; POSITIONS], out: &mut [f32; POSITIONS]) {
    for (o, k) in out.iter_mut().zip(keys) {
        *o = q.iter().zip(*k).map(|(a, b)| a * b).sum();
    }
}

/// `out[d] = Σ_t weights[t] · rows[t][d]`, over t in order.
pub fn weighted_sum(weights: &[f32], rows: &[&[f32]], out: &mut [f32]) {
    assert_eq!(weights.len(), rows.len(), "one weight per row");
    assert!(rows.iter().all(|r| r.len() == out.len()), "rows of {} values", out.len());
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above); the lengths are asserted.
        return unsafe { avx2::weighted_sum(weights, rows, out) };
    }
    weighted_sum_portable(weights, rows, out);
}

fn weighted_sum_portable(weights: &[f32], rows: &[&[f32]], out: &mut [f32]) {
    out.fill(0.0);
    for (&w, row) in weights.iter().zip(rows) {
        for (o, v) in out.iter_mut().zip(*row) {
            *o += w * v;
        }
    }
}

/// The scores `s` replaced by softmax(s): exp(s - max s) / Σ exp(s - max s).
///
/// A call to libm's `expf` per score took a sixth of attention at batch 8;
/// the vector kernel computes eight exponentials at once, within two units
/// in the last place of f32.
pub fn softmax(s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { avx2::softmax(s) };
    }
    softmax_portable(s);
}

fn softmax_portable(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for p in s.iter_mut() {
        *p = (*p - max).exp();
        sum += *p;
    }
    for p in s.iter_mut() {
        *p /= sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::POSITIONS;
    use crate::host_ops;

    /// [`super::scores`].
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; every key row must be as long as `q`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(q: &[f32], keys: &[&[f32]; POSITIONS], out: &mut [f32; POSITIONS]) {
        let whole = q.len() / 8 * 8;
        let mut acc = [_mm256_setzero_ps(); POSITIONS];
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 ≤ q.len() = every key row's length.
            unsafe {
                let qv = _mm256_loadu_ps(q.as_ptr().add(c));
                for (a, k) in acc.iter_mut().zip(keys) {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(c)), *a);
                }
            }
        }
        // Lane p of the result: the sum of acc[p]'s lanes.
        // SAFETY: out holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), host_ops::avx2::lane_sums(acc)) };
        for (o, k) in out.iter_mut().zip(keys) {
            *o += q[whole..].iter().zip(&k[whole..]).map(|(a, b)| a * b).sum::<f32>();
        }
    }

    /// [`super::weighted_sum`]: 64 output values at a time kept in
    /// registers while the rows stream past.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `weights` and `rows` must be as long
    /// as each other, and every row as long as `out`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(weights: &[f32], rows: &[&[f32]], out: &mut [f32]) {
        const WIDE: usize = 64;
        let mut d0 = 0;
        while d0 + 8 <= out.len() {
            let lanes = ((out.len() - d0) / 8).min(WIDE / 8);
            let mut acc = [_mm256_setzero_ps(); WIDE / 8];
            for (&w, row) in weights.iter().zip(rows) {
                let wv = _mm256_set1_ps(w);
                for (l, a) in acc.iter_mut().enumerate().take(lanes) {
                    // SAFETY: d0 + 8 · lanes ≤ out.len() = the row's length.
                    *a = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(row.as_ptr().add(d0 + 8 * l)) }, *a);
                }
            }
            for (l, a) in acc.iter().enumerate().take(lanes) {
                // SAFETY: as above, for out.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(d0 + 8 * l), *a) };
            }
            d0 += 8 * lanes;
        }
        for (d, o) in out.iter_mut().enumerate().skip(d0) {
            *o = weights.iter().zip(rows).fold(0.0, |s, (&w, row)| w.mul_add(row[d], s));
        }
    }

    /// [`super::softmax`].
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(s: &mut [f32]) {
        let whole = s.len() / 8 * 8;
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 ≤ s.len().
            max = _mm256_max_ps(max, unsafe { _mm256_loadu_ps(s.as_ptr().add(c)) });
        }
        let mut lanes = [0f32; 8];
        // SAFETY: lanes holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max) };
        let max = s[whole..].iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
        let top = _mm256_set1_ps(max);
        let mut sum = _mm256_setzero_ps();
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 ≤ s.len().
            unsafe {
                let e = host_ops::avx2::exp(_mm256_sub_ps(_mm256_loadu_ps(s.as_ptr().add(c)), top));
                _mm256_storeu_ps(s.as_mut_ptr().add(c), e);
                sum = _mm256_add_ps(sum, e);
            }
        }
        let mut total = host_ops::avx2::hsum(sum);
        if whole < s.len() {
            // The last scores padded with the maximum, whose lanes are dropped.
            let mut tail = [max; 8];
            tail[..s.len() - whole].copy_from_slice(&s[whole..]);
            // SAFETY: tail holds 8 floats.
            unsafe {
                _mm256_storeu_ps(
                    tail.as_mut_ptr(),
                    host_ops::avx2::exp(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), top)),
                )
            };
            for (p, &e) in s[whole..].iter_mut().zip(&tail) {
                *p = e;
                total += e;
            }
        }
        let inv = _mm256_set1_ps(1.0 / total);
        for c in (0..whole).step_by(8) {
            // SAFETY: c + 8 ≤ s.len().
            unsafe { _mm256_storeu_ps(s.as_mut_ptr().add(c), _mm256_mul_ps(_mm256_loadu_ps(s.as_ptr().add(c)), inv)) };
        }
        for p in &mut s[whole..] {
            *p /= total;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    type Scores = fn(&[f32], &[&[f32]; POSITIONS], &mut [f32; POSITIONS]);
    type WeightedSum = fn(&[f32], &[&[f32]], &mut [f32]);

    /// Lengths with and without a remainder past whole vectors, against
    /// sums in f64: the kernels this CPU runs and the portable ones.
    #[test]
    fn scores_and_weighted_sums_match_f64() {
        check(scores, weighted_sum);
        check(scores_portable, weighted_sum_portable);
    }

    fn check(scores: Scores, weighted_sum: WeightedSum) {
        let mut rng = StdRng::seed_from_u64(3);
        for hd in [4, 8, 13, 64, 72, 128, 200] {
            let q = random(&mut rng, hd);
            let rows: Vec<Vec<f32>> = (0..37).map(|_| random(&mut rng, hd)).collect();
            let keys: [&[f32]; POSITIONS] = std::array::from_fn(|p| rows[p * 3].as_slice());
            let mut got = [0f32; POSITIONS];
            scores(&q, &keys, &mut got);
            for (p, k) in keys.iter().enumerate() {
                let want: f64 = q.iter().zip(*k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                assert!((f64::from(got[p]) - want).abs() < 1e-4, "hd {hd}, key {p}: {} vs {want}", got[p]);
            }
            let weights = random(&mut rng, rows.len());
            let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            let mut out = vec![f32::NAN; hd];
            weighted_sum(&weights, &refs, &mut out);
            for (d, o) in out.iter().enumerate() {
                let want: f64 = weights.iter().zip(&rows).map(|(w, r)| f64::from(*w) * f64::from(r[d])).sum();
                assert!((f64::from(*o) - want).abs() < 1e-4, "hd {hd}, value {d}: {o} vs {want}");
            }
        }
    }

    /// Lengths with and without a remainder past whole vectors, scores far
    /// apart and close together, against softmax computed in f64; rows sum
    /// to one.
    #[test]
    fn softmax_matches_f64() {
        let mut rng = StdRng::seed_from_u64(5);
        for (len, spread) in [(1, 1.0), (7, 3.0), (8, 30.0), (13, 100.0), (64, 10.0), (203, 200.0)] {
            let s: Vec<f32> = (0..len).map(|_| rng.random_range(-spread..spread)).collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, |m, v| m.max(f64::from(v)));
            let total: f64 = s.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            for f in [softmax as fn(&mut [f32]), softmax_portable] {
                let mut got = s.clone();
                f(&mut got);
                for (g, &v) in got.iter().zip(&s) {
                    let x = f64::from(v) - max;
                    let want = x.exp() / total;
                    // x itself is rounded to f32 first: e^x moves by up to
                    // half an ulp of x, relatively.
                    let tolerance = want * (1e-6 + x.abs() * f64::from(f32::EPSILON) / 2.0) + 1e-37;
                    assert!((f64::from(*g) - want).abs() <= tolerance, "len {len}: {g} vs {want}");
                }
                let sum: f32 = got.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "len {len}: sums to {sum}");
            }
        }
    }

    #[test]
    fn no_rows_sum_to_zero() {
        let mut out = vec![f32::NAN; 16];
        weighted_sum(&[], &[], &mut out);
        assert_eq!(out, vec![0.0; 16]);
    }
}
