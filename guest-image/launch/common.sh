# Shared by the launch scripts: the image, the static config and the command line.
IMAGE=${IMAGE:-guest-image/out}
CONFIG=${CONFIG:-guest-image/config/cocoon.toml}
VCPUS=${VCPUS:-4}
MEM=${MEM:-4G}
[ -f "$IMAGE/vmlinuz" ] || { echo "no image in $IMAGE: run make image" >&2; exit 1; }
[ -f "$CONFIG" ] || { echo "no static config at $CONFIG" >&2; exit 1; }
CONFIG_DIGEST=$(sha256sum "$CONFIG" | cut -d' ' -f1)
# The measured command line: the image's, the config digest, and EXTRA_CMDLINE.
CMDLINE="$(cat "$IMAGE/cmdline") cocoon.config=sha256:$CONFIG_DIGEST${EXTRA_CMDLINE:+ $EXTRA_CMDLINE}"
# The image's kernel, initrd, measured command line and read-only disks (the
# config disk must hold the config the digest is of; the guest checks).
IMAGE_ARGS=(-kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" -append "$CMDLINE"
    -drive "file=$IMAGE/config.img,if=virtio,format=raw,readonly=on"
    -drive "file=$IMAGE/model.img,if=virtio,format=raw,readonly=on")
# An NVIDIA GPU in confidential-computing mode (set with NVIDIA's tools, bound
# to vfio-pci first), passed through with VFIO when GPU=<PCI address> is given.
GPU_ARGS=()
if [ -n "${GPU:-}" ]; then
    GPU_ARGS=(-device "pcie-root-port,id=pci.1,bus=pcie.0" -device "vfio-pci,host=$GPU,bus=pci.1"
        -fw_cfg name=opt/ovmf/X-PciMmio64Mb,string=262144)
fi
run() {
    printf '+' >&2
    printf ' %q' "$@" >&2
    printf '\n' >&2
    exec "$@"
}
