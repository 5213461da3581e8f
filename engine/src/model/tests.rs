use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::host::attend_paged;
use super::*;
use crate::kv_pool::BLOCK_TOKENS;

/// Three query heads per key/value head over a cache spanning several
/// blocks, in layer 1 of 2: grouped, each head gives the very bits it
/// gives alone, and both agree with softmax(q·Kᵀ/√d)·V computed directly.
#[test]
fn grouped_heads_attend_as_each_head_alone() {
    let (layers, kv, per_kv, hd, len) = (2, 2, 3, 16, 2 * BLOCK_TOKENS + 5);
    let at = BlockLayout { row: kv * hd };
    let pool = KvPool::new(blocks_for(len), at.floats(layers));
    let mut table = pool.reserve(blocks_for(len)).expect("the pool holds the sequence");
    assert!(table.cover(len));
    let mut rng = StdRng::seed_from_u64(7);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let (keys, values) = (random(len * kv * hd), random(len * kv * hd));
    for layer in 0..layers {
        at.write(&mut table, layer, false, 0, &keys);
        at.write(&mut table, layer, true, 0, &values);
    }
    let q = random(per_kv * hd);
    for head in 0..kv {
        let mut grouped = vec![0f32; per_kv * hd];
        attend_paged(&q, per_kv, (&table, len), at, 1, head, &mut grouped);
        for j in 0..per_kv {
            let qj = &q[j * hd..(j + 1) * hd];
            let mut alone = vec![0f32; hd];
            attend_paged(qj, 1, (&table, len), at, 1, head, &mut alone);
            assert_eq!(alone, grouped[j * hd..(j + 1) * hd], "head {j} of group {head}");
            let at_pos = |m: &[f32], t: usize| m[(t * kv + head) * hd..(t * kv + head + 1) * hd].to_vec();
            let scores: Vec<f64> = (0..len)
                .map(|t| {
                    let k = at_pos(&keys, t);
                    qj.iter().zip(&k).map(|(a, b)| f64::from(a * b)).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (d, &got) in alone.iter().enumerate() {
                let expected: f64 = (0..len).map(|t| weights[t] / total * f64::from(at_pos(&values, t)[d])).sum();
                assert!((f64::from(got) - expected).abs() < 1e-5, "dim {d}: {got} vs {expected}");
            }
        }
    }
}
