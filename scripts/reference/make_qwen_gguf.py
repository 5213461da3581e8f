#!/usr/bin/env python3
"""GGUF copies of the tiny Qwen3 test model (engine/tests/data/tiny-qwen3/), written
with gguf-py (the ggml project's own writer) the way llama.cpp's
convert_hf_to_gguf.py writes Qwen3: llama.cpp tensor names, no rotary
permutation (that is Llama-only), 1-D norms in F32, the byte-level BPE
tokenizer as tokens, types and merges.

Not run by CI. Run once after changing the tiny model:

    python3 -m venv /tmp/gg && /tmp/gg/bin/pip install gguf==0.19.0 numpy
    /tmp/gg/bin/python scripts/reference/make_qwen_gguf.py

Writes engine/tests/data/tiny-qwen3.bf16.gguf (the bf16 weights unchanged, so
the transformers reference applies as it is) and tiny-qwen3.q8_0.gguf (every
matrix in Q8_0, as Qwen's own Q8_0 releases are).
"""
import json
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter
from gguf.quants import quantize

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SRC = os.path.join(ROOT, "engine", "tests", "data", "tiny-qwen3")
OUT = os.path.join(ROOT, "engine", "tests", "data")


def safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = np.frombuffer(data[start:end], dtype=np.uint16)
        assert info["dtype"] == "BF16", info["dtype"]
        out[name] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
    return out


NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    if hf in NAMES:
        return NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{LAYER[rest]}"


def write(kind, suffix):
    config = json.load(open(os.path.join(SRC, "config.json")))
    tok = json.load(open(os.path.join(SRC, "tokenizer.json")))
    tok_config = json.load(open(os.path.join(SRC, "tokenizer_config.json")))
    path = os.path.join(OUT, f"tiny-qwen3.{suffix}.gguf")
    w = GGUFWriter(path, "qwen3")
    w.add_name("tiny-qwen3")
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_file_type({T.BF16: 32, T.Q8_0: 7}[kind])

    vocab = tok["model"]["vocab"]
    size = 1 + max(list(vocab.values()) + [a["id"] for a in tok["added_tokens"]])
    tokens = [None] * size
    types = [1] * len(tokens)
    for t, i in vocab.items():
        tokens[i] = t
    for added in tok["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = 3 if added["special"] else 4
    assert all(t is not None for t in tokens)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokens.index(tok_config["eos_token"]))
    w.add_pad_token_id(tokens.index(tok_config["pad_token"]))
    w.add_add_bos_token(False)
    w.add_chat_template(tok_config["chat_template"])

    for name, t in sorted(safetensors(os.path.join(SRC, "model.safetensors")).items()):
        if t.ndim == 1:
            w.add_tensor(gguf_name(name), t.astype(np.float32))
        else:
            q = quantize(t.astype(np.float32), kind)
            w.add_tensor(gguf_name(name), q, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path}: {os.path.getsize(path)} bytes")


write(T.BF16, "bf16")
write(T.Q8_0, "q8_0")
