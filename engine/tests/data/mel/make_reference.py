"""Writes the log-mel reference for engine/tests/whisper_mel.rs, computed by
an independent implementation: faster-whisper 1.2.1's FeatureExtractor
(faster_whisper/feature_extractor.py, numpy only), with its defaults (80 mel
bins, 16 kHz, n_fft 400, hop 160, 160 samples of padding).

    pip download --no-deps faster-whisper==1.2.1 && unzip faster_whisper-1.2.1-py3-none-any.whl
    python3 -m venv v && v/bin/pip install numpy==2.2.6
    v/bin/python make_reference.py <dir holding faster_whisper/> <this directory>

For each signal it writes <name>.input.f32 (the samples) and <name>.mel.f32
(80 rows of frames), little-endian f32.
"""

import importlib.util
import sys

import numpy as np

# The module alone: the package's __init__ imports PyAV and CTranslate2, which it does not need.
spec = importlib.util.spec_from_file_location("feature_extractor", f"{sys.argv[1]}/faster_whisper/feature_extractor.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
FeatureExtractor = module.FeatureExtractor

out = sys.argv[2]
sr = 16000
rng = np.random.default_rng(20261207)


def tones():
    t = np.arange(int(0.5 * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1234.5 * t)
    return x + 0.05 * rng.standard_normal(t.size)


def chirp_with_silence():
    # A rising chirp, 0.4 s of exact silence, then a loud clipped burst.
    t = np.arange(int(0.6 * sr)) / sr
    chirp = 0.8 * np.sin(2 * np.pi * (100 * t + (3900 / (2 * 0.6)) * t**2)) * np.hanning(t.size)
    burst = np.clip(3.0 * rng.standard_normal(int(0.5 * sr)), -1.0, 1.0)
    return np.concatenate([chirp, np.zeros(int(0.4 * sr)), burst])


fe = FeatureExtractor()
for name, signal in [("tones", tones()), ("chirp_silence_burst", chirp_with_silence())]:
    x = signal.astype(np.float32)
    mel = fe(x)
    assert mel.shape == (80, x.size // 160 + 1), mel.shape
    x.astype("<f4").tofile(f"{out}/{name}.input.f32")
    mel.astype("<f4").tofile(f"{out}/{name}.mel.f32")
    print(name, x.size, mel.shape, float(mel.min()), float(mel.max()))
