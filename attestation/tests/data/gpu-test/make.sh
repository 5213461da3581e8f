#!/usr/bin/env bash
# Generates a test GPU attestation chain shaped like NVIDIA's Blackwell
# workstation chains (root -> "GB20X A01 GSP BROM" -> "GB20X A01 GSP FMC LF")
# and keeps the leaf's private key, so that the unit tests of
# `attestation::nvidia` can sign reports of their own (CHIP_INFO, padding,
# the CC-mode binding) that no real GPU sample has. The keys are test keys:
# the verifier pins NVIDIA's root, never this one. Committed; rerun only to
# change it.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf work && mkdir work
ec() { openssl ecparam -name secp384r1 -genkey -noout -out "work/$1.key"; }
ec root
openssl req -x509 -new -key work/root.key -sha384 -days 36500 -subj "/CN=Test Device Identity CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out root.pem
sign() { # name subject issuer ca?
    ec "$1"
    openssl req -new -key "work/$1.key" -subj "/CN=$2" -out "work/$1.csr"
    printf 'basicConstraints = critical, CA:%s\n' "$4" > work/ext.cnf
    openssl x509 -req -in "work/$1.csr" -CA "$3.pem" -CAkey "work/$3.key" -sha384 -days 36500 \
        -set_serial "0x$(openssl rand -hex 12)" -extfile work/ext.cnf -out "$1.pem" 2>/dev/null
}
sign brom "GB20X A01 GSP BROM" root TRUE
sign leaf "GB20X A01 GSP FMC LF" brom FALSE
cat leaf.pem brom.pem root.pem > chain.pem
# The leaf's private scalar, 48 bytes of hex.
openssl ec -in work/leaf.key -noout -text 2>/dev/null | sed -n '/priv:/,/pub:/p' | grep -v 'priv:\|pub:' \
    | tr -d ' :\n' | tail -c 96 > leaf.key.hex
rm -rf work
