"""The reference side of `engine-bench --asr`: CTranslate2 (faster-whisper's
runtime) transcribing the same 16 kHz samples greedily, window by window, on
the same number of threads, with faster-whisper's feature extractor.

    python whisper_ct2_bench.py <faster_whisper dir> <model dir> <samples.f32> <threads> <rounds>

Prints JSON: the fastest round's seconds, the tokens per window, the peak RSS.
"""

import importlib.util
import json
import resource
import sys
import time

import ctranslate2
import numpy as np

fw, model_dir, samples_path, threads, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
spec = importlib.util.spec_from_file_location("feature_extractor", f"{fw}/faster_whisper/feature_extractor.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
extractor = module.FeatureExtractor()
model = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32", intra_threads=threads)
samples = np.fromfile(samples_path, dtype="<f4")


def transcribe():
    mel = extractor(samples)
    content = mel.shape[1] - 1
    windows = []
    seek = 0
    while seek < max(content, 1):
        window = mel[:, seek : seek + 3000]
        window = np.pad(window, ((0, 0), (0, 3000 - window.shape[1])))
        features = ctranslate2.StorageView.from_array(window[None].astype(np.float32))
        result = model.generate(features, [[50257, 50362]], beam_size=1, max_length=448)[0]
        windows.append(result.sequences_ids[0])
        seek += 3000
    return windows


transcribe()  # warm-up
best = None
for _ in range(rounds):
    t = time.perf_counter()
    windows = transcribe()
    elapsed = time.perf_counter() - t
    best = elapsed if best is None else min(best, elapsed)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": best, "windows": windows, "peak_bytes": peak}))
