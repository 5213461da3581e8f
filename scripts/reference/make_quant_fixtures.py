#!/usr/bin/env python3
"""Reference dequantisations for the engine's GGUF block formats, from gguf-py
(the ggml project's own Python reader): an implementation independent of ours.

Not run by CI. Run once after adding a format:

    python3 -m venv /tmp/gg && /tmp/gg/bin/pip install gguf==0.19.0 numpy
    /tmp/gg/bin/python scripts/reference/make_quant_fixtures.py

Writes engine/tests/data/quant_reference.json: for each format, two blocks of
random bytes (the f16 scales set to small finite values, as real files have)
and the floats gguf-py dequantises them to.
"""
import json
import os

import numpy as np
from gguf.quants import GGML_QUANT_SIZES, GGMLQuantizationType as T, dequantize

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "engine", "tests", "data", "quant_reference.json")

# Byte offsets of each format's f16 scales within a block.
SCALES = {
    T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

rng = np.random.default_rng(20261202)
cases = []
for kind, offsets in SCALES.items():
    elements, size = GGML_QUANT_SIZES[kind]
    blocks = rng.integers(0, 256, size=(2, size), dtype=np.uint8)
    for b in blocks:
        for o in offsets:
            scale = np.float16(rng.uniform(-0.05, 0.05))
            b[o:o + 2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    values = dequantize(blocks.reshape(-1), kind).reshape(-1).astype(np.float32)
    assert values.size == 2 * elements and np.all(np.isfinite(values))
    cases.append({"kind": kind.name, "bytes": blocks.tobytes().hex(), "values": [float(v) for v in values]})

with open(OUT, "w") as f:
    json.dump({"generator": "gguf-py 0.19.0 gguf.quants.dequantize", "cases": cases}, f, indent=0)
    f.write("\n")
print(f"wrote {OUT}: {len(cases)} formats")
