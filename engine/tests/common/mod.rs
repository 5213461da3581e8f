//! What the reference tests share: transformers' outputs recorded by
//! `scripts/reference/make_fixtures.py` in `tests/data/*.json`, and the files.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use cocoon_engine::loader::LoadedModel;
use cocoon_engine::sampling::argmax;
use cocoon_engine::{ChatMessage, default_model_path};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Reference {
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub chat: Option<Vec<ChatMessage>>,
    pub rendered: Option<String>,
    pub text: Option<String>,
    pub ids: Vec<u32>,
    pub top_logits: Vec<Top>,
    pub greedy_ids: Vec<u32>,
}

/// The largest logits at a prompt position, and their token ids.
#[derive(Deserialize)]
pub struct Top {
    pub position: usize,
    pub ids: Vec<u32>,
    pub logits: Vec<f32>,
}

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

pub fn reference(name: &str) -> Reference {
    serde_json::from_slice(&std::fs::read(data(name)).unwrap()).unwrap()
}

pub fn smollm2_path() -> PathBuf {
    let path = default_model_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    assert!(path.exists(), "{} is missing: run scripts/fetch-model.sh (make test does)", path.display());
    path
}

/// The case's prompt through the model's tokenizer (and chat template).
pub fn prompt_ids<B: Backend>(loaded: &LoadedModel<B>, case: &Case) -> Vec<u32> {
    if let Some(chat) = &case.chat {
        let rendered = loaded.codec.render_chat(chat).unwrap();
        assert_eq!(&rendered, case.rendered.as_ref().unwrap(), "chat template rendering");
        loaded.codec.encode_chat(&rendered).unwrap()
    } else {
        loaded.codec.encode_text(case.text.as_ref().unwrap()).unwrap()
    }
}

/// The largest difference between `logits` ([position][vocab]) and the
/// case's recorded top logits.
pub fn top_logits_difference(logits: &[Vec<f32>], case: &Case) -> f32 {
    let mut worst = 0f32;
    for top in &case.top_logits {
        for (id, want) in top.ids.iter().zip(&top.logits) {
            worst = worst.max((logits[top.position][*id as usize] - want).abs());
        }
    }
    worst
}

/// How far the largest logit of `row` stands above the next largest: a
/// greedy choice that errors below half of it cannot change.
pub fn top_two_gap(row: &[f32]) -> f32 {
    let top = argmax(row) as usize;
    let second = row.iter().enumerate().filter(|&(i, _)| i != top).fold(f32::MIN, |m, (_, &v)| m.max(v));
    row[top] - second
}
