#!/usr/bin/env python3
"""transformers' own bf16 and f16 runs against the f32 reference fixtures:
the yardstick for engine/tests/bf16.rs's tolerances (its table).

Not run by CI (it needs torch). With the venv of make_fixtures.py:

    /tmp/ref/bin/python scripts/reference/half_precision.py

For each model and type: the largest logit difference from the fixture at
its recorded positions, and how many of the fixture's greedy tokens the
model predicts when fed the fixture's continuation (teacher-forced), as the
Rust test measures them.
"""
import json
import os

import torch
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "engine", "tests", "data")
GGUF_DIR = os.path.join(ROOT, ".cache", "models")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(name, load, fixture):
    cases = json.load(open(os.path.join(DATA, fixture)))["cases"]
    for dtype in (torch.bfloat16, torch.float16):
        model = load(dtype).eval()
        worst, same, total = 0.0, 0, 0
        for case in cases:
            ids, greedy = case["ids"], case["greedy_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids + greedy[:-1]])).logits[0].float()
            for top in case["top_logits"]:
                for i, want in zip(top["ids"], top["logits"]):
                    worst = max(worst, abs(logits[top["position"], i].item() - want))
            for step, want in enumerate(greedy):
                total += 1
                same += int(logits[len(ids) - 1 + step].argmax().item() == want)
        print(f"{name} {dtype}: logits at most {worst:.4f} from f32; greedy {same}/{total}", flush=True)


measure("tiny Qwen3", lambda t: Qwen3ForCausalLM.from_pretrained(os.path.join(DATA, "tiny-qwen3"), dtype=t),
        "qwen3_reference.json")
measure("SmolLM2", lambda t: AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=t),
        "smollm2_reference.json")
