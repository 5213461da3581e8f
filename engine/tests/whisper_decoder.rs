//! Transcription end to end in the engine: the voice note
//! (tests/data/audio/speech.opus) decoded to 16 kHz, log-mel, Whisper
//! tiny.en's encoder and greedy decoding; the tokens must be CTranslate2
//! 4.6.0's own for the same audio (tests/data/whisper/speech.tokens.json
//! and the script that made it), and the text what was spoken.

use std::path::Path;

use cocoon_engine::CpuBackend;
use cocoon_engine::asr::audio::{AudioLimits, decode};
use cocoon_engine::asr::whisper::{TranscribeError, WhisperModel};

/// Whisper tiny.en and the voice note at 16 kHz.
fn model_and_voice_note() -> (WhisperModel<CpuBackend>, Vec<f32>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("../.cache/models/whisper-tiny-en");
    assert!(
        dir.join("model.bin").exists(),
        "{} is missing: run scripts/fetch-whisper.sh (make test does)",
        dir.display()
    );
    let model = WhisperModel::<CpuBackend>::load(&dir, &Default::default()).unwrap();
    let clip = decode(&std::fs::read(root.join("tests/data/audio/speech.opus")).unwrap(), &AudioLimits::default())
        .unwrap()
        .samples;
    (model, clip)
}

#[test]
fn a_voice_note_is_transcribed_as_ctranslate2_transcribes_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (model, clip) = model_and_voice_note();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/data/whisper/speech.tokens.json")).unwrap()).unwrap();
    assert_eq!(reference["samples"].as_u64(), Some(clip.len() as u64), "the reference's input is this audio");
    let started = std::time::Instant::now();
    let t = model.transcribe_window(&clip).unwrap();
    eprintln!("{:?} in {:?} for {:.2} s of audio", t.text, started.elapsed(), clip.len() as f64 / 16_000.0);
    let want: Vec<u32> = reference["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(t.tokens, want);
    assert_eq!(t.text, " Nobody else can read this voice note.");
    assert!(matches!(model.transcribe_window(&[]), Err(TranscribeError::Empty)));
    assert!(matches!(model.transcribe_window(&vec![0.0; 30 * 16_000 + 1]), Err(TranscribeError::TooLong { .. })));
}

/// Audio past 30 s is decoded window after window: the voice note placed
/// inside each of three windows (with silence around it) is heard in each.
#[test]
fn longer_audio_is_transcribed_window_by_window() {
    let (model, clip) = model_and_voice_note();
    let mut long = vec![0f32; 65 * 16_000];
    for at in [2, 40, 61] {
        long[at * 16_000..at * 16_000 + clip.len()].copy_from_slice(&clip);
    }
    let windows = model.transcribe(&long).unwrap();
    let texts: Vec<&str> = windows.iter().map(|w| w.text.as_str()).collect();
    assert_eq!(texts, vec![" Nobody else can read this voice note."; 3]);
}

/// With timestamps, the tokens are CTranslate2's own (the first a
/// timestamp, pairs around each segment's text), alone and for nine notes in
/// one window (tests/data/whisper/speech.timed.json and its script).
#[test]
fn timed_transcripts_follow_whispers_timestamp_rules_as_ctranslate2_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (model, clip) = model_and_voice_note();
    let mut nine = Vec::new();
    for _ in 0..9 {
        nine.extend_from_slice(&clip);
        nine.extend(std::iter::repeat_n(0.0, 8000));
    }
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/data/whisper/speech.timed.json")).unwrap()).unwrap();
    let tokens = |key: &str| -> Vec<u32> {
        reference[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let one = model.transcribe_window_timed(&clip).unwrap();
    assert_eq!(one.tokens, tokens("one"));
    let segments = model.segments(&one).unwrap();
    assert_eq!(segments.len(), 1);
    assert_eq!((segments[0].start, segments[0].end), (0.0, 2.0));
    assert_eq!(segments[0].text, " Nobody else can read this voice note.");
    let timed = model.transcribe_window_timed(&nine).unwrap();
    assert_eq!(timed.tokens, tokens("nine"));
    let segments = model.segments(&timed).unwrap();
    assert_eq!(segments.len(), 8, "the ninth note's segment is cut at the window's last timestamp: {segments:?}");
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s.text, " Nobody else can read this voice note.");
        assert!((s.start - 3.0 * i as f64).abs() < 1e-9 && (s.end - 3.0 * (i + 1) as f64).abs() < 1e-9, "{s:?}");
    }
}
