//! The dense layout with bf16 as the float type: what `CudaBackend` runs on a
//! GPU, run on the CPU backend (which computes bf16 tensors too), so that the
//! bf16 path is tested on every machine and not only where a GPU is; with
//! `--features cuda` the same tests run on the GPU
//! (`cargo test --release -p cocoon-engine --features cuda --test bf16`).
//! A test binary of its own: the float type is the device's default, set once
//! per process before any tensor exists.
//!
//! Against transformers' f32 reference (`tests/data/*.json`): bf16 keeps 8
//! significant bits and f16 11, so every product, residual sum and cached key
//! is rounded far beyond the f32 summation order that `reference.rs` bounds at
//! 1e-3. Measured here (largest logit difference at the recorded positions;
//! greedy tokens equal to the reference's, teacher-forced, of 96), next to
//! transformers 5.25 (torch 2.15) itself in the same type on the same files
//! (`scripts/reference/half_precision.py`):
//!
//! | model, type        | ours           | transformers   |
//! |--------------------|----------------|----------------|
//! | tiny Qwen3, bf16   | 0.188, 95/96   | 0.186, 93/96   |
//! | tiny Qwen3, f16    | 0.033, 96/96   | 0.036, 96/96   |
//! | SmolLM2 Q4_1, bf16 | 1.12, 93/96    | 0.67, 93/96    |
//! | SmolLM2 Q4_1, f16  | 0.072, 94/96   | 0.047, 96/96   |
//!
//! (transformers keeps a GGUF file's weights quantised and multiplies in f32,
//! rounding only activations; here the dequantised weights are rounded to the
//! type too, which bf16's 8 bits feel on SmolLM2.) The tolerances are about
//! twice ours. Where the model's top two logits are further apart than twice
//! the tolerance, its greedy token must be the reference's; at least 90% of
//! all must be.

mod common;

use std::sync::Once;

use burn::tensor::{DType, FloatDType, IntDType, set_default_dtypes};
use cocoon_engine::loader::LoadedModel;
use cocoon_engine::model::logits_rows;
use cocoon_engine::sampling::argmax;
use cocoon_engine::{WeightLayout, load_with, load_with_dtype};
use common::{data, prompt_ids, smollm2_path, top_logits_difference, top_two_gap};

/// The backend under test: the CPU's, or with the `cuda` feature a GPU's.
#[cfg(not(feature = "cuda"))]
type Under = cocoon_engine::CpuBackend;
#[cfg(feature = "cuda")]
type Under = cocoon_engine::CudaBackend;

const QWEN_BF16_TOLERANCE: f32 = 0.4;
const SMOLLM2_BF16_TOLERANCE: f32 = 2.5;
const QWEN_F16_TOLERANCE: f32 = 0.08;
const SMOLLM2_F16_TOLERANCE: f32 = 0.15;

/// The model in the dense layout on the device, whose float type is set to
/// bf16, its float tensors of type `dtype`.
fn load(path: &std::path::Path, dtype: FloatDType) -> LoadedModel<Under> {
    static SET: Once = Once::new();
    let device = Default::default();
    SET.call_once(|| {
        // Reading the settings would fix them: the backend's own integer type.
        set_default_dtypes::<Under>(&device, FloatDType::BF16, IntDType::I32).expect("bf16 as the device's float type");
    });
    let loaded = if dtype == FloatDType::BF16 {
        load_with::<Under>(path, None, 256, &device, WeightLayout::Dense)
    } else {
        load_with_dtype::<Under>(path, None, 256, &device, WeightLayout::Dense, dtype)
    };
    let loaded = loaded.unwrap();
    assert_eq!(loaded.model.float_dtypes(), [DType::from(dtype)], "every weight tensor in {dtype:?}");
    loaded
}

/// Logits at the recorded prompt positions within `tolerance`, and greedy
/// tokens, teacher-forced along the reference's continuation, equal where
/// the margin allows and nine times in ten.
fn check(path: &std::path::Path, dtype: FloatDType, reference: &str, tolerance: f32) {
    let loaded = load(path, dtype);
    let model = &loaded.model;
    let (mut worst, mut compared, mut close, mut same) = (0f32, 0, 0, 0);
    for case in &common::reference(reference).cases {
        let ids = prompt_ids(&loaded, case);
        assert_eq!(ids, case.ids);
        let mut cache = model.new_cache();
        let logits = logits_rows(model.prefill(&ids, &mut cache, true)).unwrap();
        worst = worst.max(top_logits_difference(&logits, case));
        let mut row = logits.last().unwrap().clone();
        for (step, &want) in case.greedy_ids.iter().enumerate() {
            let ours = argmax(&row);
            same += usize::from(ours == want);
            if top_two_gap(&row) > 2.0 * tolerance {
                assert_eq!(ours, want, "step {step}: greedy token in {dtype:?}");
                compared += 1;
            } else {
                close += 1;
            }
            row = logits_rows(model.decode(&[want], &mut [&mut cache])).unwrap().pop().unwrap();
        }
    }
    eprintln!(
        "{reference} in {dtype:?}: logits at most {worst:.4} from f32; {compared} greedy tokens equal, {close} too close; {same} of all equal"
    );
    assert!(worst <= tolerance, "{dtype:?} logits {worst} from the reference");
    let total = compared + close;
    assert!(10 * same >= 9 * total, "{dtype:?}: {same} of {total} greedy tokens equal");
}

#[test]
fn tiny_qwen3_in_bf16_stays_within_tolerance_of_transformers() {
    check(&data("tiny-qwen3.bf16.gguf"), FloatDType::BF16, "qwen3_reference.json", QWEN_BF16_TOLERANCE);
}

#[test]
fn tiny_qwen3_in_f16_stays_within_tolerance_of_transformers() {
    check(&data("tiny-qwen3.bf16.gguf"), FloatDType::F16, "qwen3_reference.json", QWEN_F16_TOLERANCE);
}

#[test]
fn smollm2_in_bf16_stays_within_tolerance_of_transformers() {
    check(&smollm2_path(), FloatDType::BF16, "smollm2_reference.json", SMOLLM2_BF16_TOLERANCE);
}

#[test]
fn smollm2_in_f16_stays_within_tolerance_of_transformers() {
    check(&smollm2_path(), FloatDType::F16, "smollm2_reference.json", SMOLLM2_F16_TOLERANCE);
}
