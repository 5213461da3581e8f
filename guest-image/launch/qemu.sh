#!/usr/bin/env bash
# The image without a TEE (software emulation, or KVM when /dev/kvm is usable):
# for tests and development. The enclave can only use simulated evidence here,
# so the command line says so, and no production reference value matches it.
#
#   VSOCK_SOCKET=/run/worker/vhost-vsock.sock guest-image/launch/qemu.sh
#
# VSOCK_SOCKET is the vhost-user socket of a running vhost-device-vsock
# (`vhost-device-vsock --vm guest-cid=3,socket=$VSOCK_SOCKET,uds-path=/run/worker/vsock.sock`);
# the host shim then reaches the enclave at vsock-mux:/run/worker/vsock.sock:4000.
set -euo pipefail
cd "$(dirname "$0")/../.."
EXTRA_CMDLINE="cocoon.platform=simulated cocoon.insecure_simulated=1${EXTRA_CMDLINE:+ $EXTRA_CMDLINE}"
MEM=${MEM:-2G}
VCPUS=${VCPUS:-2}
. guest-image/launch/common.sh
# Software emulation unless ACCEL=kvm (a usable /dev/kvm is not assumed: some
# nested hosts expose one that fails). Under emulation the default vCPU model:
# QEMU's TCG does not execute every instruction -cpu max advertises.
accel=(-machine q35,accel=tcg)
[ "${ACCEL:-tcg}" = kvm ] && accel=(-machine q35,accel=kvm -cpu host)
args=(qemu-system-x86_64 "${accel[@]}" -smp "$VCPUS" -m "$MEM"
    -nographic -no-reboot
    "${IMAGE_ARGS[@]}")
if [ -n "${VSOCK_SOCKET:-}" ]; then
    # vhost-user needs the guest memory shared with the device process.
    args+=(-object "memory-backend-memfd,id=mem,size=$MEM,share=on" -numa "node,memdev=mem"
        -chardev "socket,id=vsock,path=$VSOCK_SOCKET" -device "vhost-user-vsock-pci,chardev=vsock")
fi
run "${args[@]}"
