#!/usr/bin/env bash
# `make demo`: fetch the embedded default model (once), start the enclave
# (simulated evidence, CPU backend, SmolLM2-135M-Instruct) and the host shim on
# loopback, then verify the worker and send it a sealed, streamed chat request.
set -euo pipefail
cd "$(dirname "$0")/.."

model="$(scripts/fetch-model.sh)"
digest="sha256:$(sha256sum "$model" | cut -d' ' -f1)"
echo "== building (the first build compiles Burn: several minutes) =="
cargo build --quiet -p cocoon-enclave -p cocoon-host -p cocoon-client --bins
bin=target/debug
dir=target/demo
mkdir -p "$dir"
sock="$dir/enclave.sock"
port=${COCOON_DEMO_PORT:-18080}
question=${COCOON_DEMO_QUESTION:-"What is the capital of France?"}

# The static config whose SHA-256 the enclave puts in its claims.
cat > "$dir/worker.toml" <<TOML
[model]
id = "smollm2-135m-instruct"
path = "$model"
digest = "$digest"
context_length = 2048
TOML

cleanup() { kill "${enclave_pid:-}" "${host_pid:-}" 2>/dev/null || true; }
trap cleanup EXIT

echo
echo "== starting the enclave: SIMULATED evidence (there is no TEE here; it proves nothing) =="
rm -f "$sock"
COCOON_LOG=${COCOON_LOG:-warn,cocoon_enclave=info} "$bin/cocoon-enclave" --listen "unix:$sock" \
    --platform simulated --insecure-simulated --config "$dir/worker.toml" &
enclave_pid=$!
for _ in $(seq 600); do
    [ -S "$sock" ] && break
    kill -0 "$enclave_pid" 2>/dev/null || { echo "the enclave exited" >&2; exit 1; }
    sleep 0.1
done
"$bin/cocoon-host" --listen "127.0.0.1:$port" --enclave "unix:$sock" &
host_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done

echo
echo "== cocoon chat (verifies the evidence, seals, streams, checks the receipt) =="
echo "question: $question"
"$bin/cocoon" chat "http://127.0.0.1:$port" --model smollm2-135m-instruct --insecure-simulated \
    --max-tokens 64 --temperature 0 "$question"
