#!/usr/bin/env bash
# Rebuilds the image from clean state (the enclave and init compiled in a new,
# empty target directory at another path, the image assembled from scratch in
# another output directory) and compares every output byte for byte with
# guest-image/out, building that first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
reference=${OUT:-guest-image/out}
if [ ! -f "$reference/SHA256SUMS" ]; then
    OUT=$reference guest-image/build.sh >&2
fi
scratch=$(mktemp -d "${TMPDIR:-/tmp}/cocoon-repro.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
started=$(date +%s)
IMAGE_TARGET_DIR=$scratch/target OUT=$scratch/out WORK=$scratch/work guest-image/build.sh >&2
echo "clean rebuild took $(( $(date +%s) - started )) s" >&2
if diff -r "$reference" "$scratch/out" >&2; then
    echo "reproducible: a clean rebuild is identical to $reference" >&2
    cat "$reference/SHA256SUMS"
else
    echo "NOT reproducible: the files above differ between $reference and a clean rebuild" >&2
    (cd "$scratch/out" && sha256sum -c "$OLDPWD/$reference/SHA256SUMS" || true) >&2
    exit 1
fi
