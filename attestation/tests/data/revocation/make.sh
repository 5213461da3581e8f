#!/usr/bin/env bash
# Generates the revocation test data (attestation/tests/revocation.rs): a
# P-384 chain shaped like NVIDIA's GPU chains (root -> identity CA ->
# provisioner ICA -> device -> leaf made by the device), CRLs, and OCSP
# responses, with openssl. The keys are test keys and sign nothing else.
# The data is committed; rerun only to change it (the tests read the times
# from generated-at).
set -euo pipefail
cd "$(dirname "$0")"
rm -rf work && mkdir work
date -u +%s > generated-at
ec() { openssl ecparam -name secp384r1 -genkey -noout -out "work/$1.key"; }
cat > work/ext.cnf <<'CNF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[responder]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, OCSPSigning
[leaf]
basicConstraints = critical, CA:FALSE
CNF
ec root
openssl req -x509 -new -key work/root.key -sha384 -days 36500 -subj "/CN=Test Device Identity CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out root.pem
sign() { # name subject issuer extension-section
    ec "$1"
    openssl req -new -key "work/$1.key" -subj "/CN=$2" -out "work/$1.csr"
    openssl x509 -req -in "work/$1.csr" -CA "$3.pem" -CAkey "work/$3.key" -sha384 -days 36500 \
        -set_serial "0x$(openssl rand -hex 12)" -extfile work/ext.cnf -extensions "$4" -out "$1.pem" 2>/dev/null
}
sign identity "Test GH100 Identity" root ca
sign ica "Test GH100 Provisioner ICA 1" identity ca
sign device "Test GH100 A01 GSP BROM" ica ca
sign revoked-device "Test GH100 A01 GSP BROM (revoked)" ica ca
sign leaf "Test GH100 A01 GSP FMC LF" device leaf
sign responder "Test OCSP responder for ICA 1" ica responder
cat leaf.pem device.pem ica.pem identity.pem root.pem > chain.pem
cat leaf.pem revoked-device.pem ica.pem identity.pem root.pem > revoked-chain.pem

# CRLs, from `openssl ca` with a minimal database per issuer.
crl() { # issuer days [cert-to-revoke]
    local d="work/ca-$1"
    mkdir -p "$d"
    [ -f "$d/index.txt" ] || { : > "$d/index.txt"; echo 01 > "$d/crlnumber"; }
    cat > "$d/ca.cnf" <<CNF
[ca]
default_ca = this
[this]
database = $d/index.txt
crlnumber = $d/crlnumber
default_md = sha384
CNF
    if [ -n "${3:-}" ]; then
        openssl ca -config "$d/ca.cnf" -keyfile "work/$1.key" -cert "$1.pem" -revoke "$3.pem" -crl_reason keyCompromise 2>/dev/null
    fi
    openssl ca -config "$d/ca.cnf" -keyfile "work/$1.key" -cert "$1.pem" -gencrl -crldays "$2" -out "work/$1.crl.pem" 2>/dev/null
    openssl crl -in "work/$1.crl.pem" -outform DER -out "crl-$1${4:-}.der"
}
crl root 3650
crl identity 3650
crl ica 3650 revoked-device
crl ica 1 "" -expiring

# OCSP responses from the ICA (signing itself) and from a delegated responder;
# the ICA's database has the device as valid and the other one as revoked.
openssl ca -config work/ca-ica/ca.cnf -keyfile work/ica.key -cert ica.pem -valid device.pem 2>/dev/null
ocsp() { # cert signer signer-key out days
    openssl ocsp -issuer ica.pem -cert "$1.pem" -no_nonce -reqout "work/$1.req" 2>/dev/null
    openssl ocsp -index work/ca-ica/index.txt -rsigner "$2.pem" -rkey "work/$2.key" -CA ica.pem \
        -reqin "work/$1.req" -respout "$4" -ndays "$5" -rmd sha384 2>/dev/null
}
ocsp device ica ica ocsp-device-good.der 3650
ocsp revoked-device ica ica ocsp-device-revoked.der 3650
ocsp device responder responder ocsp-device-delegated.der 3650
ocsp device ica ica ocsp-device-expiring.der 1
rm -rf work
