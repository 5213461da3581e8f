#!/usr/bin/env bash
# Builds the image twice from clean state (the enclave and init rebuilt in an
# emptied target directory at the same path, the image assembled from scratch)
# and compares every output byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${IMAGE_TARGET_DIR:-target/image}
first=$(mktemp -d)
rm -rf "$target"
guest-image/build.sh >&2
cp -a guest-image/out/. "$first/"
rm -rf "$target"
guest-image/build.sh >&2
if diff -r "$first" guest-image/out >&2; then
    echo "reproducible: two clean builds are identical" >&2
    cat guest-image/out/SHA256SUMS
else
    echo "NOT reproducible: the outputs above differ between two clean builds" >&2
    exit 1
fi
