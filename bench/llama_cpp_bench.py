#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python's bindings) on the bench's GGUF file and prompt.

`engine-bench` runs this script and prints its rows next to the Burn engine's:
the same prompt ids (argv), the same number of threads, greedy decoding.

Each batch size gets a fresh context with one sequence per row of the batch:
prefill is every sequence's whole prompt in one `llama_decode` (logits of
the last positions only), decode is one token per sequence per step, both
timed up to reading the logits. Output: one JSON object on stdout.

argv: model path, threads, decode steps, batch sizes (comma-separated),
prompt ids, France question ids, 1 or 0 for llama.cpp's extra buffer
types (the AMX/AVX repacked weight layouts; on by default in llama.cpp), and
the decode rounds: decode runs that many rounds of the steps one after
another and reports the fastest (on a shared machine a round can lose a
third of its time to other tenants).
"""

import ctypes
import json
import sys
import time

import numpy as np
import llama_cpp as L


def status_bytes(field):
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    path, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batches = [int(b) for b in sys.argv[4].split(",")]
    ids = [int(t) for t in sys.argv[5].split(",")]
    france = [int(t) for t in sys.argv[6].split(",")]
    extra_bufts = sys.argv[7] == "1"
    rounds = int(sys.argv[8])

    L.llama_backend_init()
    before = status_bytes("VmRSS")
    mparams = L.llama_model_default_params()
    mparams.use_extra_bufts = extra_bufts
    model = L.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {path}")
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)

    def context(n_seq, n_ctx):
        p = L.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = max(512, n_ctx)
        p.n_ubatch = 512
        p.n_seq_max = n_seq
        p.n_threads = threads
        p.n_threads_batch = threads
        ctx = L.llama_init_from_model(model, p)
        if not ctx:
            raise SystemExit("llama.cpp could not create a context")
        return ctx

    def decode(ctx, batch, rows):
        """rows: (token, pos, seq, wants_logits); returns argmax for the rows that want logits."""
        batch.n_tokens = len(rows)
        for i, (tok, pos, seq, out) in enumerate(rows):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 1 if out else 0
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
        picks = []
        for i, (_, _, _, out) in enumerate(rows):
            if out:
                logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                picks.append(int(np.argmax(logits)))
        return picks

    # The France answer, to show both runtimes run the same model.
    ctx = context(1, 256)
    batch = L.llama_batch_init(256, 0, 1)
    n = len(france)
    tok = decode(ctx, batch, [(t, p, 0, p == n - 1) for p, t in enumerate(france)])[0]
    answer = []
    eos = L.llama_vocab_eos(vocab)
    while tok != eos and len(answer) < 16:
        answer.append(tok)
        tok = decode(ctx, batch, [(tok, n + len(answer) - 1, 0, True)])[0]
    L.llama_batch_free(batch)
    L.llama_free(ctx)

    rows = []
    prompt = len(ids)
    for b in batches:
        # Each sequence gets room for its prompt and steps (the cache is split per sequence).
        per_seq = ((prompt + rounds * steps + 1 + 255) // 256) * 256
        ctx = context(b, b * per_seq)
        batch = L.llama_batch_init(b * prompt, 0, b)
        # Warm-up (thread pool, buffers, a few steps), then a clean cache.
        warm = decode(ctx, batch, [(t, p, s, p == 15) for s in range(b) for p, t in enumerate(ids[:16])])
        for step in range(4):
            warm = decode(ctx, batch, [(warm[s], 16 + step, s, True) for s in range(b)])
        L.llama_memory_clear(L.llama_get_memory(ctx), True)
        t0 = time.perf_counter()
        nxt = decode(ctx, batch, [(t, p, s, p == prompt - 1) for s in range(b) for p, t in enumerate(ids)])
        prefill = b * prompt / (time.perf_counter() - t0)
        dec = 0.0
        for r in range(rounds):
            t0 = time.perf_counter()
            for step in range(steps):
                pos = prompt + r * steps + step
                nxt = decode(ctx, batch, [(nxt[s], pos, s, True) for s in range(b)])
            dec = max(dec, b * steps / (time.perf_counter() - t0))
        rows.append({"batch": b, "prefill": prefill, "decode": dec})
        L.llama_batch_free(batch)
        L.llama_free(ctx)
    json.dump({"answer": answer, "rows": rows, "peak_bytes": max(0, status_bytes("VmHWM") - before)}, sys.stdout)


if __name__ == "__main__":
    main()
