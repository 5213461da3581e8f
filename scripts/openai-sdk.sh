#!/usr/bin/env bash
# The official OpenAI Python SDK (PyPI, pinned) in a venv under .cache/: the
# client the tests and `make demo` point at `cocoon serve`. Prints the venv's
# python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/openai-venv
pin="openai==3.57.0"
installed="$("$venv/bin/pip" show openai 2>/dev/null || true)"
if ! [ -x "$venv/bin/python3" ] || ! grep -qx "Version: ${pin##*==}" <<<"$installed"; then
    echo "installing $pin into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" >&2
fi
echo "$PWD/$venv/bin/python3"
