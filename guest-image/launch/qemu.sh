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
# nested hosts expose one that fails). Under emulation, QEMU 7.2's TCG (Debian
# bookworm) crashes this kernel now and then when the host is busy, in two ways
# seen here (about one boot in five with both host cores loaded):
# - CMPXCHG16B (SLUB's per-CPU fast path) sometimes leaves RFLAGS holding a
#   register's value, so the guest double-faults or takes stray debug traps.
#   Without cx16 the kernel uses its own interrupts-off fallback instead.
# - With one host thread per vCPU, a vCPU can run code that another has just
#   live-patched (int3 from text_poke), an Oops. One thread for all vCPUs keeps
#   code changes in order, and was no slower here (2 vCPUs on a 2-core host).
# With both: no crash in 25 boots with both host cores loaded.
# The qemu64 model also stays within what TCG executes (-cpu max does not).
accel=(-machine q35 -accel tcg,thread=single -cpu qemu64,-cx16)
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
