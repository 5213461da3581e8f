#!/usr/bin/env bash
# Prints lock lines for the archive's current versions of the locked packages
# (trixie for the kernel and libraries, sid for the confidential-VM firmware).
# Review the output, then replace inputs.lock with it.
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
index() { curl -fsSL "$mirror/dists/$1/main/binary-$2/Packages.xz" | xz -dc; }
lookup() {
    awk -v p="$1" 'BEGIN { RS = ""; FS = "\n" }
        { name = ""; for (i = 1; i <= NF; i++) {
              if ($i ~ /^Package: /) name = substr($i, 10)
              if ($i ~ /^Version: /) v = substr($i, 10)
              if ($i ~ /^SHA256: /) s = substr($i, 9)
              if ($i ~ /^Filename: /) f = substr($i, 11) }
          if (name == p) line = p " " v " " s " " f }
        END { if (line == "") exit 1; print line }'
}
trixie=$(index trixie amd64)
sid_all=$(index sid all)
kernel=$(echo "$trixie" | sed -n 's/^Package: \(linux-image-6\.[0-9.]*+deb13-cloud-amd64\)$/\1/p' | sort -V | tail -1)
grep '^#' guest-image/inputs.lock
for p in "$kernel" libc6 libgcc-s1; do echo "$trixie" | lookup "$p"; done
for p in ovmf-amdsev ovmf-inteltdx; do echo "$sid_all" | lookup "$p"; done
