#!/usr/bin/env bash
# A worker on an Intel TDX host (QEMU >= 9 with TDX, a TDX-enabled host kernel,
# and the Quote Generation Service listening on vsock port 4050).
#
#   GPU=0000:17:00.0 guest-image/launch/tdx.sh
#
# The firmware is the image's OVMF.inteltdx.fd; the kernel, initrd and command
# line are measured into RTMR1 and RTMR2 by the firmware, and `make measure
# MEMORY=$MEM` gives the values a verifier expects (MRTD for both QEMU page
# orders; RTMR1 depends on MEM through the initrd's address). EXTRA_CMDLINE
# changes RTMR2 and is not part of those values.
# The host shim reaches the enclave at vsock:$CID:4000.
set -euo pipefail
cd "$(dirname "$0")/../.."
. guest-image/launch/common.sh
CID=${CID:-3}
args=(qemu-system-x86_64 -accel kvm -machine q35,kernel-irqchip=split,confidential-guest-support=tdx,memory-backend=mem
    -object "{\"qom-type\":\"tdx-guest\",\"id\":\"tdx\",\"quote-generation-socket\":{\"type\":\"vsock\",\"cid\":\"2\",\"port\":\"4050\"}}"
    -object "memory-backend-ram,id=mem,size=$MEM"
    -cpu host -smp "$VCPUS" -m "$MEM" -nographic -no-reboot
    -bios "$IMAGE/OVMF.inteltdx.fd"
    "${IMAGE_ARGS[@]}"
    -device "vhost-vsock-pci,guest-cid=$CID")
args+=("${GPU_ARGS[@]}")
run "${args[@]}"
