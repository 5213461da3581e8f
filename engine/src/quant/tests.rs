use half::f16;

use super::dequant::{dequantize_blocks, dequantize_portable, dequantize_wide_body, f16_at};
use super::dot::{dot_portable, dots};
use super::int16::{dot_int16_portable, dots_int16, round_small};
use super::linear::block_sums;
use super::*;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
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
        let parts = vec![random_matrix(kind, 45, cols, &mut rng), random_matrix(QuantKind::Q8_0, 20, cols, &mut rng)];
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
            let (got, other) = if n <= FUSED_MAX_ROWS { (mixed.forward(&x, n), 20) } else { (alone.forward(&x, n), 0) };
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
                        int16_simd_kernels(kind, m.row(r), &xi, &sums[g], 1).into_iter().map(|(_, o)| o[0]).collect()
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
    let mixed = vec![random_matrix(QuantKind::Q4_0, 1, 32, &mut rng), random_matrix(QuantKind::Q4_0, 1, 64, &mut rng)];
    assert!(PackedLinear::new(mixed).is_err());
}
