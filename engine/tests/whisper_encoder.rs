//! Whisper tiny.en's audio encoder on Burn against CTranslate2 4.6.0's own
//! (CPU, float32), on 1.5 s of a chirp, silence and a burst padded to 30 s
//! (tests/data/whisper: the reference rows and the script that made them).

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use cocoon_engine::CpuBackend;
use cocoon_engine::asr::ct2::Ct2Model;
use cocoon_engine::asr::encoder::{FRAMES, WhisperEncoder};
use cocoon_engine::asr::mel::{FrontEnd, N_MELS};

fn f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn the_encoder_equals_ctranslate2s() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("../.cache/models/whisper-tiny-en/model.bin");
    assert!(path.exists(), "{} is missing: run scripts/fetch-whisper.sh (make test does)", path.display());
    let model = Ct2Model::parse(std::fs::read(&path).unwrap()).unwrap();
    let device = Default::default();
    let encoder = WhisperEncoder::<CpuBackend>::load(&model, &device).unwrap();

    let samples = f32s(&root.join("tests/data/mel/chirp_silence_burst.input.f32"));
    let mel = FrontEnd::new().log_mel(&samples);
    // Zeros after the audio, up to 30 s, as faster-whisper pads.
    let mut window = vec![0f32; N_MELS * FRAMES];
    for m in 0..N_MELS {
        window[m * FRAMES..m * FRAMES + mel.frames].copy_from_slice(&mel.values[m * mel.frames..(m + 1) * mel.frames]);
    }
    let input = Tensor::<CpuBackend, 3>::from_data(TensorData::new(window, [1, N_MELS, FRAMES]), &device);
    let out = encoder.forward(input);
    assert_eq!(out.dims(), [1, FRAMES / 2, 384]);
    let out: Vec<f32> = out.into_data().to_vec().unwrap();
    let reference = f32s(&root.join("tests/data/whisper/chirp.encoder.f32"));
    let mut worst = 0f32;
    for (i, pos) in (0..8).chain(100..108).chain(1492..1500).enumerate() {
        for c in 0..384 {
            let (a, b) = (out[pos * 384 + c], reference[i * 384 + c]);
            worst = worst.max((a - b).abs() / (1.0 + b.abs()));
        }
    }
    eprintln!("largest difference from CTranslate2 (relative to 1 + |value|): {worst:e}");
    assert!(worst < 1e-3, "{worst}");
}
