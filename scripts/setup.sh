#!/usr/bin/env bash
# Installs what `make test`, `make lint` and `make demo` need and this machine
# lacks: Debian packages (when run as root; otherwise prints the one command to
# run), rustfmt and clippy, and vhost-device-vsock from crates.io. Quiet and
# quick when everything is there already.
#   scripts/setup.sh          everything `make test` needs
#   scripts/setup.sh demo     only what `make demo` needs
set -euo pipefail
what=${1:-test}

need_apt=()
command -v make >/dev/null || need_apt+=(make)
command -v cc >/dev/null || need_apt+=(gcc)
# The default model and the OpenAI SDK come from PyPI into venvs.
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
python3 -c "import ensurepip" >/dev/null 2>&1 || need_apt+=(python3-venv)
# The TON contracts, their tests and the local chain run on Node (contracts/).
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ "$what" = test ]; then
    # The firmware fixtures are .deb files.
    command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
    # The guest image: pinned packages fetched with curl, an initramfs (cpio),
    # read-only erofs disks, booted in QEMU.
    command -v curl >/dev/null || need_apt+=(curl ca-certificates)
    command -v cpio >/dev/null || need_apt+=(cpio)
    command -v mkfs.erofs >/dev/null || need_apt+=(erofs-utils)
    command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
    # The reference decoders the audio tests compare with (engine/tests/whisper_audio.rs).
    command -v opusdec >/dev/null || need_apt+=(opus-tools)
    command -v lame >/dev/null || need_apt+=(lame)
    command -v flac >/dev/null || need_apt+=(flac)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing Debian packages: ${need_apt[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "missing tools; run: sudo apt-get install -y ${need_apt[*]}" >&2
        exit 1
    fi
fi
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
if [ "$what" = test ]; then
    # The boot test's virtio-vsock device backend (crates.io).
    command -v vhost-device-vsock >/dev/null || cargo install --locked --quiet vhost-device-vsock --version 0.3.0
fi
