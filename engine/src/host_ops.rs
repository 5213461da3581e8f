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
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * ff) {
        let (g, u) = row.split_at(ff);
        out.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u));
    }
    out
}

/// `x += y`, elementwise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
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

    #[test]
    fn silu_times_up() {
        let out = silu_mul_rows(&[0.0, 2.0, 3.0, 5.0], 2);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2.0f32).exp()) * 5.0).abs() < 1e-6);
    }
}
