#!/usr/bin/env bash
# Rebuilds the image from clean state and compares every output byte for byte
# with guest-image/out, building that first if it is missing. The rebuild is
# as a verifier's would be: from a copy of the sources at another path (of
# another length: a path baked into the enclave showed up once only as
# shifted offsets in an unwind table), in a new, empty target directory, the
# image assembled from scratch in another output directory.
set -euo pipefail
cd "$(dirname "$0")/.."
reference=${OUT:-guest-image/out}
if [ ! -f "$reference/SHA256SUMS" ]; then
    OUT=$reference guest-image/build.sh >&2
fi
reference=$(cd "$reference" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/cocoon-repro.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
src=$scratch/source-at-another-path
mkdir -p "$src"
if command -v git >/dev/null && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and new files as they are in the working tree, as the reference
    # build saw them; ignored ones (build outputs, caches) left out.
    git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -C "$src" -xf -
else
    tar --exclude=./target --exclude=./.cache --exclude=./guest-image/out --exclude=./.git \
        --exclude=./fuzz/target --exclude=./fuzz/corpus --exclude=./fuzz/artifacts -cf - . | tar -C "$src" -xf -
fi
# The pinned packages and the model are inputs checked against their digests,
# not sources: shared rather than fetched again.
mkdir -p .cache
ln -s "$PWD/.cache" "$src/.cache"
started=$(date +%s)
(cd "$src" && IMAGE_TARGET_DIR=$scratch/target OUT=$scratch/out WORK=$scratch/work guest-image/build.sh) >&2
echo "clean rebuild from $src took $(( $(date +%s) - started )) s" >&2
if diff -r "$reference" "$scratch/out" >&2; then
    echo "reproducible: a clean rebuild is identical to $reference" >&2
    cat "$reference/SHA256SUMS"
else
    echo "NOT reproducible: the files above differ between $reference and a clean rebuild" >&2
    (cd "$scratch/out" && sha256sum -c "$reference/SHA256SUMS" || true) >&2
    exit 1
fi
