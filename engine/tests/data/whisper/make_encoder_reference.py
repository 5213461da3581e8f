"""Writes the encoder reference for engine/tests/whisper_encoder.rs: Whisper
tiny.en's audio encoder as CTranslate2 4.6.0 runs it (CPU, float32), on the
log-mel spectrogram of tests/data/mel/chirp_silence_burst.input.f32 (16 kHz
samples) computed by faster-whisper 1.2.1's FeatureExtractor, padded with
zeros to 3,000 frames (30 s) as faster-whisper does.

    v/bin/pip install numpy==2.2.6 ctranslate2==4.6.0
    v/bin/python make_encoder_reference.py <faster_whisper dir> <whisper-tiny-en dir> <engine/tests/data>

Writes whisper/chirp.encoder.f32: positions 0-7, 100-107 and 1492-1499 of
the [1500, 384] output (little-endian f32, position-major), 24 x 384 values.
"""

import importlib.util
import sys

import ctranslate2
import numpy as np

fw, model_dir, data = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("feature_extractor", f"{fw}/faster_whisper/feature_extractor.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

samples = np.fromfile(f"{data}/mel/chirp_silence_burst.input.f32", dtype="<f4")
mel = module.FeatureExtractor()(samples)
mel = np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1])))
model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
out = np.array(model.encode(ctranslate2.StorageView.from_array(mel[None].astype(np.float32)), to_cpu=True))[0]
assert out.shape == (1500, 384), out.shape
rows = np.concatenate([out[0:8], out[100:108], out[1492:1500]])
rows.astype("<f4").tofile(f"{data}/whisper/chirp.encoder.f32")
print(out.shape, float(np.abs(out).max()), rows.shape)
