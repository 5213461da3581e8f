#!/usr/bin/env bash
# A worker on an AMD SEV-SNP host (QEMU >= 9.1 with SNP, an SNP-enabled host kernel).
#
#   VCPU_TYPE=EPYC-Genoa GPU=0000:41:00.0 guest-image/launch/snp.sh
#
# kernel-hashes=on makes the firmware (OVMF.amdsev.fd, which checks them) refuse
# a kernel, initrd or command line other than the measured ones; `make measure
# VCPUS=... VCPU_TYPE=...` gives the launch digest for the same VM shape.
# The host shim reaches the enclave at vsock:$CID:4000.
set -euo pipefail
cd "$(dirname "$0")/../.."
. guest-image/launch/common.sh
CID=${CID:-3}
VCPU_TYPE=${VCPU_TYPE:-EPYC-Milan}
args=(qemu-system-x86_64 -accel kvm -machine q35,confidential-guest-support=sev0,memory-backend=mem
    -object "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"
    -object "memory-backend-memfd,id=mem,size=$MEM,share=true"
    -cpu "$VCPU_TYPE" -smp "$VCPUS" -m "$MEM" -nographic -no-reboot
    -bios "$IMAGE/OVMF.amdsev.fd"
    "${IMAGE_ARGS[@]}"
    -device "vhost-vsock-pci,guest-cid=$CID")
args+=("${GPU_ARGS[@]}")
run "${args[@]}"
