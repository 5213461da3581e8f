#!/usr/bin/env bash
# Builds the guest image into guest-image/out/, bit for bit reproducibly:
#   vmlinuz, initrd.img, cmdline, OVMF.amdsev.fd, OVMF.inteltdx.fd,
#   config.img and model.img (read-only erofs disks), SHA256SUMS.
# Inputs: the packages pinned in inputs.lock, the enclave and init built here
# with --locked and remapped paths, the static config and the model.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD
out=${OUT:-guest-image/out}
work=${WORK:-.cache/image-build}
config=${CONFIG:-guest-image/config/cocoon.toml}
model=${MODEL:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
# Fixed time for every timestamp in the image (the lock file's last change is
# not used: a fresh clone gives files the checkout time).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}
export TZ=UTC LC_ALL=C
step() { echo "== $*" >&2; }
for tool in cpio gzip mkfs.erofs dpkg-deb sha256sum; do
    command -v "$tool" >/dev/null || { echo "guest-image: $tool is missing (apt-get install cpio erofs-utils)" >&2; exit 1; }
done

step "inputs (inputs.lock)"
guest-image/fetch.sh
deb() { awk -v n="$1" '$1 == n { print $4 }' guest-image/inputs.lock | xargs basename; }
kernel_pkg=$(awk '$1 ~ /^linux-image-/ { print $1 }' guest-image/inputs.lock)

step "enclave and init (release, --locked, paths remapped)"
if [ -z "${ENCLAVE_BIN:-}" ]; then
    target_dir=${IMAGE_TARGET_DIR:-target/image}
    mkdir -p "$target_dir"
    target_dir=$(cd "$target_dir" && pwd)
    # The target directory is remapped last (rustc applies the last matching
    # prefix) so that builds in any directory give the same bytes.
    # LTO off, thin-local included: ThinLTO names promoted symbols with a
    # module hash that depends on the build directory even with remapped
    # paths (rust-lang/rust#126976), so two checkouts built different bytes.
    RUSTFLAGS="--remap-path-prefix=$root_dir=/build --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo --remap-path-prefix=$target_dir=/target" \
        CARGO_PROFILE_RELEASE_LTO=off \
        CARGO_TARGET_DIR=$target_dir \
        cargo build --release --locked -p cocoon-enclave --bin cocoon-enclave -p cocoon-guest-init --bin cocoon-init
    bin_dir=$target_dir/release
else
    bin_dir=$(dirname "$ENCLAVE_BIN")
fi

rm -rf "$work" "$out"
mkdir -p "$work/deb" "$out"
for p in "$kernel_pkg" libc6 libgcc-s1 ovmf-amdsev ovmf-inteltdx; do
    dpkg-deb -x ".cache/debs/$(deb "$p")" "$work/deb/$p"
done
kdir=$(echo "$work/deb/$kernel_pkg"/usr/lib/modules/*)

step "kernel, firmware, command line"
cp "$work/deb/$kernel_pkg"/boot/vmlinuz-* "$out/vmlinuz"
cp "$work/deb/ovmf-amdsev/usr/share/ovmf/OVMF.amdsev.fd" "$out/OVMF.amdsev.fd"
cp "$work/deb/ovmf-inteltdx/usr/share/ovmf/OVMF.inteltdx.ms.fd" "$out/OVMF.inteltdx.fd"
# The launch adds cocoon.config=sha256:<digest of the static config>.
echo "console=ttyS0 panic=-1" > "$out/cmdline"

step "initramfs: /init, the enclave, its libraries, the modules"
r=$work/root
mkdir -p "$r"/{bin,dev,proc,sys,config,model,tmp,etc,lib/modules,lib64,lib/x86_64-linux-gnu}
install -m 0755 "$bin_dir/cocoon-init" "$r/init"
install -m 0755 "$bin_dir/cocoon-enclave" "$r/bin/cocoon-enclave"
libdir=$work/deb/libc6/usr/lib/x86_64-linux-gnu
install -m 0755 "$libdir/ld-linux-x86-64.so.2" "$r/lib64/ld-linux-x86-64.so.2"
install -m 0644 "$libdir/libc.so.6" "$libdir/libm.so.6" "$r/lib/x86_64-linux-gnu/"
install -m 0644 "$work/deb/libgcc-s1/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" "$r/lib/x86_64-linux-gnu/"
# Dependency order; '?' marks drivers that load only on their own TEE.
modules="fs/configfs/configfs drivers/virt/coco/tsm ?drivers/virt/coco/tdx-guest/tdx-guest
    ?drivers/virt/coco/sev-guest/sev-guest net/vmw_vsock/vsock net/vmw_vsock/vmw_vsock_virtio_transport_common
    net/vmw_vsock/vmw_vsock_virtio_transport drivers/block/virtio_blk lib/libcrc32c fs/erofs/erofs"
: > "$r/etc/modules"
for m in $modules; do
    opt=""; case "$m" in \?*) opt="?"; m=${m#\?} ;; esac
    name=$(basename "$m").ko.xz
    install -m 0644 "$kdir/kernel/$m.ko.xz" "$r/lib/modules/$name"
    echo "$opt/lib/modules/$name" >> "$r/etc/modules"
done
find "$r" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$r" && find . -mindepth 1 | sort | cpio --quiet -o -H newc --reproducible -R 0:0) | gzip -9 -n > "$out/initrd.img"

step "read-only disks: static config and model (erofs, fixed UUIDs and times)"
erofs() { # out-file uuid source-dir
    mkfs.erofs --quiet -T "$SOURCE_DATE_EPOCH" -U "$2" --all-root "$1" "$3"
}
mkdir -p "$work/config" "$work/model"
cp "$config" "$work/config/cocoon.toml"
[ -f "$model" ] || { echo "guest-image: model $model is missing (make model)" >&2; exit 1; }
cp "$model" "$work/model/"
find "$work/config" "$work/model" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
erofs "$out/config.img" 6b0c6f6e-636f-6e66-6967-000000000001 "$work/config"
erofs "$out/model.img" 6b0c6f6e-6d6f-6465-6c00-000000000002 "$work/model"

(cd "$out" && sha256sum vmlinuz initrd.img cmdline OVMF.amdsev.fd OVMF.inteltdx.fd config.img model.img > SHA256SUMS)
step "done: $out"
cat "$out/SHA256SUMS" >&2
