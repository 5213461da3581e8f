"""Writes the timed transcription reference for engine/tests/whisper_decoder.rs:
the tokens CTranslate2 4.6.0 generates greedily with timestamps (prompt
<|startoftranscript|> alone, beam 1) for tests/data/audio/speech.opus decoded
to 16 kHz by this engine, alone and as nine copies with half a second of
silence after each (one 30 s window), log-mel by faster-whisper 1.2.1.

    v/bin/python make_timestamps_reference.py <faster_whisper dir> <whisper-tiny-en dir> <speech.16k.f32> <out.json>
"""

import importlib.util
import json
import sys

import ctranslate2
import numpy as np

fw, model_dir, samples_path, out = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("feature_extractor", f"{fw}/faster_whisper/feature_extractor.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
clip = np.fromfile(samples_path, dtype="<f4")
nine = np.concatenate([np.concatenate([clip, np.zeros(8000, dtype=np.float32)]) for _ in range(9)])


def timed(samples):
    mel = module.FeatureExtractor()(samples)
    mel = np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1])))
    features = ctranslate2.StorageView.from_array(mel[None].astype(np.float32))
    return model.generate(features, [[50257]], beam_size=1, max_length=448)[0].sequences_ids[0]


json.dump({"one": timed(clip), "nine": timed(nine)}, open(out, "w"))
