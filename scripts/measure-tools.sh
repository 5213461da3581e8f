#!/usr/bin/env bash
# The independent references the measurement tests compare against, in a venv
# under .cache/: sev-snp-measure (SEV-SNP launch digest) and LIEF (Authenticode
# hash of the kernel, the first RTMR1 event), and lxml (libxml2's canonical
# XML, against which the RIM canonicaliser is compared), all from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/measure-venv
pins=("sev-snp-measure==0.0.13" "lief==1.0.0" "lxml==6.0.2")
installed() {
    local pin
    for pin in "${pins[@]}"; do
        grep -qx "Version: ${pin##*==}" <<<"$("$venv/bin/pip" show "${pin%%==*}" 2>/dev/null || true)" || return 1
    done
}
if [ -x "$venv/bin/python3" ] && installed; then
    exit 0
fi
echo "installing ${pins[*]} into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
