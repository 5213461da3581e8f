"""Writes the transcription reference for engine/tests/whisper_decoder.rs:
the tokens CTranslate2 4.6.0 generates greedily (beam 1, its default
suppression of blanks and of the config's suppress_ids, no timestamps) for
tests/data/audio/speech.opus, decoded to 16 kHz by this engine (the samples
passed in), its log-mel computed by faster-whisper 1.2.1's FeatureExtractor
and padded to 3,000 frames.

    v/bin/python make_decoder_reference.py <faster_whisper dir> <whisper-tiny-en dir> <speech.16k.f32> <out.json>
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

samples = np.fromfile(samples_path, dtype="<f4")
mel = module.FeatureExtractor()(samples)
mel = np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1])))
model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
features = ctranslate2.StorageView.from_array(mel[None].astype(np.float32))
prompt = [50257, 50362]  # <|startoftranscript|> <|notimestamps|> (an English-only model)
result = model.generate(features, [prompt], beam_size=1, max_length=448, return_scores=True)[0]
tokens = result.sequences_ids[0]
with open(f"{model_dir}/tokenizer.json") as f:
    pass
json.dump({"prompt": prompt, "tokens": tokens, "score": result.scores[0], "samples": int(samples.size)}, open(out, "w"), indent=1)
print(tokens, result.scores[0])
