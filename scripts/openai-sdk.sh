#!/usr/bin/env bash
# The official OpenAI Python SDK (PyPI, pinned) in a venv under .cache/: the
# client the tests and `make demo` point at `cocoon serve`; with it
# python-telegram-bot, for the bot example (examples/telegram-bot). Prints the
# venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/openai-venv
pins=("openai==3.57.0" "python-telegram-bot==22.8")
current=true
for pin in "${pins[@]}"; do
    installed="$("$venv/bin/pip" show "${pin%%==*}" 2>/dev/null || true)"
    grep -qx "Version: ${pin##*==}" <<<"$installed" || current=false
done
if ! [ -x "$venv/bin/python3" ] || ! $current; then
    echo "installing ${pins[*]} into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2
fi
echo "$PWD/$venv/bin/python3"
