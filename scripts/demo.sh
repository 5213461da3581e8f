#!/usr/bin/env bash
# `make demo`: start an enclave (simulated evidence) and the host shim on
# loopback, verify the worker and send it a sealed, streamed chat request.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --workspace --bins
bin=target/debug
dir=target/demo
mkdir -p "$dir"
sock="$dir/enclave.sock"
port=${COCOON_DEMO_PORT:-18080}

cleanup() { kill "${enclave_pid:-}" "${host_pid:-}" 2>/dev/null || true; }
trap cleanup EXIT

echo "== starting the enclave (SIMULATED evidence: there is no TEE here) =="
# Until the Burn engine lands, the demo serves the deterministic test engine,
# which answers with the prompt's words reversed.
COCOON_TEST_TOKEN_DELAY_MS=80 "$bin/cocoon-test-enclave" --listen "unix:$sock" \
    --platform simulated --insecure-simulated &
enclave_pid=$!
"$bin/cocoon-host" --listen "127.0.0.1:$port" --enclave "unix:$sock" &
host_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

echo
echo "== cocoon chat (verifies evidence, seals, streams, checks the receipt) =="
"$bin/cocoon" chat "http://127.0.0.1:$port" --model cocoon-test-echo --insecure-simulated \
    "what is the capital of France"
