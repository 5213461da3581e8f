//! A set of spoken clips (espeak-ng: four voices and speeds, 5 to 35 s, Ogg
//! Opus as voice notes are; tests/data/audio/clips with their texts and the
//! script that made the reference): each transcribed window by window with
//! exactly CTranslate2's tokens, so with faster-whisper's word error rate;
//! the rate against what was said is printed.

use std::path::Path;

use cocoon_engine::CpuBackend;
use cocoon_engine::asr::audio::{AudioLimits, decode};
use cocoon_engine::asr::whisper::WhisperModel;

/// Lowercase words of letters, digits and apostrophes.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Word error rate: word-level edit distance over the reference's length.
fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (r, h) = (words(reference), words(hypothesis));
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let here = (prev + usize::from(rw != hw)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = here;
        }
    }
    row[h.len()] as f64 / r.len().max(1) as f64
}

#[test]
fn every_clip_is_transcribed_with_ctranslate2s_tokens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model =
        WhisperModel::<CpuBackend>::load(&root.join("../.cache/models/whisper-tiny-en"), &Default::default()).unwrap();
    let clips = root.join("tests/data/audio/clips");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clips.join("reference.json")).unwrap()).unwrap();
    let (mut said, mut errors) = (0.0, 0.0);
    for (name, r) in reference.as_object().unwrap() {
        let audio =
            decode(&std::fs::read(clips.join(format!("{name}.opus"))).unwrap(), &AudioLimits::default()).unwrap();
        assert_eq!(r["samples"].as_u64(), Some(audio.samples.len() as u64), "{name}: the reference's input");
        let windows = model.transcribe(&audio.samples).unwrap();
        let want: Vec<Vec<u32>> = r["windows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect();
        let got: Vec<Vec<u32>> = windows.iter().map(|w| w.tokens.clone()).collect();
        assert_eq!(got, want, "{name}");
        let text: String = windows.iter().map(|w| w.text.as_str()).collect();
        let spoken = r["text"].as_str().unwrap();
        let rate = wer(spoken, &text);
        eprintln!(
            "{name} ({}, {} wpm, {:.1} s): WER {:.1}%: {text:?}",
            r["voice"],
            r["words_per_minute"],
            audio.seconds(),
            rate * 100.0
        );
        said += words(spoken).len() as f64;
        errors += rate * words(spoken).len() as f64;
    }
    eprintln!("all clips: WER {:.1}% (CTranslate2's, token for token)", errors / said * 100.0);
}

#[test]
fn word_error_rate_counts_substitutions_insertions_and_deletions() {
    assert_eq!(wer("a b c d", "a b c d"), 0.0);
    assert_eq!(wer("a b c d", "a x c d"), 0.25);
    assert_eq!(wer("a b c d", "a b c"), 0.25);
    assert_eq!(wer("a b c d", "a b c d e f"), 0.5);
    assert_eq!(wer("Hello, World!", "hello world"), 0.0);
}
