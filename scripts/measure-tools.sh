#!/usr/bin/env bash
# The independent SEV-SNP reference (`sev-snp-measure`, PyPI) that the
# measurement tests compare against, in a venv under .cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/measure-venv
version=0.0.13
if [ -x "$venv/bin/sev-snp-measure" ] && "$venv/bin/pip" show sev-snp-measure 2>/dev/null | grep -q "^Version: $version$"; then
    exit 0
fi
echo "installing sev-snp-measure $version into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "sev-snp-measure==$version"
