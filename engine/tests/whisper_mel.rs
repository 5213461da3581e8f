//! The log-mel front end against faster-whisper 1.2.1's FeatureExtractor
//! (numpy), on two signals: tones with noise, and a chirp, exact silence and
//! a clipped burst (tests/data/mel: the samples, the reference and the
//! script that computed it).

use std::path::Path;

use cocoon_engine::asr::mel::{FrontEnd, HOP, N_MELS};

fn f32s(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mel").join(name)).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn log_mel_equals_faster_whispers_within_1e_4() {
    let fe = FrontEnd::new();
    for name in ["tones", "chirp_silence_burst"] {
        let samples = f32s(&format!("{name}.input.f32"));
        let reference = f32s(&format!("{name}.mel.f32"));
        let mel = fe.log_mel(&samples);
        assert_eq!(mel.frames, samples.len() / HOP + 1, "{name}");
        assert_eq!(mel.values.len(), reference.len(), "{name}: {N_MELS} x {} values", mel.frames);
        let worst = mel.values.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: {} frames, largest difference {worst:e}", mel.frames);
        assert!(worst <= 1e-4, "{name}: largest difference {worst}");
    }
}
