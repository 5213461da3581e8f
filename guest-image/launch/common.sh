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
# The config disk must hold the same config the digest is of; the guest checks.
run() {
    printf '+' >&2
    printf ' %q' "$@" >&2
    printf '\n' >&2
    exec "$@"
}
