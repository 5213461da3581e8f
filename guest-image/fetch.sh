#!/usr/bin/env bash
# Downloads every package in inputs.lock into .cache/debs/ and checks it against
# the lock. A missing or changed input stops the build and says which and how
# to refresh. Files already present with the right hash are not fetched again;
# a copy of the right hash elsewhere in the repository (the firmware fixtures)
# is used when the archive no longer serves the version.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=${LOCK:-guest-image/inputs.lock}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
dest=${DEB_CACHE:-.cache/debs}
mkdir -p "$dest"

fail() {
    echo "guest-image: $*" >&2
    exit 1
}

while read -r name version sha path; do
    case "$name" in "" | \#*) continue ;; esac
    [ -n "$path" ] || fail "$lock: the line for $name needs: name version sha256 path"
    file="$dest/$(basename "$path")"
    have() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha" ]; }
    if have "$file"; then
        continue
    fi
    local_copy=$(find measurements/tests/data -name "$(basename "$path")" 2>/dev/null | head -1)
    if [ -n "$local_copy" ] && have "$local_copy"; then
        cp "$local_copy" "$file"
        continue
    fi
    echo "fetching $name $version" >&2
    tmp="$file.part"
    if ! curl -fsSL --retry 3 -o "$tmp" "$mirror/$path"; then
        rm -f "$tmp"
        fail "$name $version is not at $mirror/$path (the archive may have moved on): run guest-image/refresh-lock.sh, review the new line, and update $lock"
    fi
    got=$(sha256sum "$tmp" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
        rm -f "$tmp"
        fail "$name $version from $mirror/$path has sha256 $got but $lock pins $sha: refusing it; if Debian really rebuilt the package, run guest-image/refresh-lock.sh and review the change"
    fi
    mv "$tmp" "$file"
done < "$lock"
