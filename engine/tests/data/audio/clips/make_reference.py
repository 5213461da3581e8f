"""Writes the transcription reference for the clip set (engine/tests/whisper_clips.rs):
for each clip, its spoken text and the tokens CTranslate2 4.6.0 generates
greedily without timestamps (beam 1) for each 30 s window of the whole
clip's log-mel (faster-whisper 1.2.1's FeatureExtractor, windows padded
with zeros), from the clip decoded to 16 kHz by this engine (<dir>/<name>.16k.f32).

    v/bin/python make_reference.py <faster_whisper dir> <whisper-tiny-en dir> <dir with .16k.f32 files> <out.json>

The clips were made with espeak-ng and opusenc (24 kb/s), e.g.
    espeak-ng -v en-us -s 150 -w late.wav "<text>" && opusenc --quiet --bitrate 24 late.wav late.opus
"""

import importlib.util
import json
import sys

import ctranslate2
import numpy as np

CLIPS = {
    "late": ("en-us", 150, "Hi, it's me. I'm running a little late, so please start the meeting without me and I'll join in ten minutes."),
    "weather": ("en", 130, "The weather in London was cold and grey this morning, but the afternoon turned bright and warm."),
    "shopping": ("en-us+f3", 185, "Remember to buy milk, bread, eggs and two kilograms of apples on your way home tonight."),
    "long": (
        "en-us+m3",
        160,
        "Thank you for calling back so quickly. I wanted to go over the plan for next week before everyone leaves. "
        "On Monday we move the servers to the new building, which should take most of the morning. On Tuesday the "
        "network team checks every connection and writes down anything that does not work. On Wednesday we test the "
        "backups and restore one of them from start to finish, just to be sure. Thursday is for fixing whatever we "
        "found, and on Friday we meet at noon to decide whether we are ready. If anything changes, send me a message "
        "and I will update the calendar for the whole team.",
    ),
}

fw, model_dir, samples_dir, out = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("feature_extractor", f"{fw}/faster_whisper/feature_extractor.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
result = {}
for name, (voice, speed, text) in CLIPS.items():
    samples = np.fromfile(f"{samples_dir}/{name}.16k.f32", dtype="<f4")
    mel = module.FeatureExtractor()(samples)
    windows, seek = [], 0
    while seek < max(mel.shape[1] - 1, 1):
        w = mel[:, seek : seek + 3000]
        w = np.pad(w, ((0, 0), (0, 3000 - w.shape[1])))
        r = model.generate(ctranslate2.StorageView.from_array(w[None].astype(np.float32)), [[50257, 50362]], beam_size=1)
        windows.append(r[0].sequences_ids[0])
        seek += 3000
    result[name] = {"voice": voice, "words_per_minute": speed, "text": text, "samples": int(samples.size), "windows": windows}
json.dump(result, open(out, "w"), indent=1)
