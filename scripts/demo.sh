#!/usr/bin/env bash
# `make demo`: the whole system on one machine, on the embedded default model
# (SmolLM2-135M-Instruct, CPU, simulated evidence: there is no TEE here).
#   two workers (enclave + host shim each) -> cocoon-proxy (SQLite ledger)
#   -> cocoon serve (local OpenAI API) <- the official openai Python SDK
# paid on a local emulated TON chain (@ton/sandbox behind the toncenter API):
# the client pays through a payment channel, the proxy settles on chain and
# pays the worker, which claims. The network's registry on that chain lists
# the model and the proxy: the proxy admits only listed models, the client
# uses only a listed proxy. Then the ledger and the chain.
# COCOON_DEMO_QUESTION changes the question.
set -euo pipefail
cd "$(dirname "$0")/.."

model="$(scripts/fetch-model.sh)"
digest="sha256:$(sha256sum "$model" | cut -d' ' -f1)"
python="$(scripts/openai-sdk.sh)"
echo "== building (the first build compiles Burn: several minutes) =="
cargo build --quiet -p cocoon-enclave -p cocoon-host -p cocoon-cli -p cocoon-proxy --bins
bin=target/debug
dir=target/demo
rm -rf "$dir"
mkdir -p "$dir"
base=${COCOON_DEMO_PORT:-18080}
question=${COCOON_DEMO_QUESTION:-"What is the capital of France?"}
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

ton() { python3 -c "import sys; n=int(sys.argv[1]); print(f'{n//10**9}.{n%10**9:09d}')" "$1"; }
wallet() { "$bin/cocoon" wallet address --offline --key "$1" | sed -n 's/^raw: //p'; }

echo
echo "== a local TON chain (the TVM emulator behind the toncenter v2 API) =="
node contracts/chain/server.js --port $((base + 30)) > "$dir/chain.json" &
pids+=($!)
wait_port $((base + 30))
export COCOON_TON_API="http://127.0.0.1:$((base + 30))/api/v2"
for k in client proxy worker1 worker2 operator; do "$bin/cocoon" key --key "$dir/$k.key" > /dev/null; done
airdrop() { curl -s -X POST "http://127.0.0.1:$((base + 30))/local/airdrop" -d "{\"address\":\"$1\",\"amount\":\"$2\"}" > /dev/null; }
airdrop "$(wallet "$dir/client.key")" 20000000000
airdrop "$(wallet "$dir/proxy.key")" 20000000000
for w in 1 2; do airdrop "$(wallet "$dir/worker$w.key")" 1000000000; done
airdrop "$(wallet "$dir/operator.key")" 1000000000
echo "chain: $COCOON_TON_API; wallets funded: client 20 TON, proxy 20 TON, each worker 1 TON, the registry's owner 1 TON"

echo
echo "== the network's registry: the model and the proxy it allows =="
"$bin/cocoon" registry add-model "$digest" --key "$dir/operator.key" > /dev/null
"$bin/cocoon" registry add-proxy --account "$("$bin/cocoon" key --key "$dir/proxy.key")" --commission-ppm 100000 \
    --endpoint "http://127.0.0.1:$((base + 10))" --key "$dir/operator.key" > /dev/null
registry="$("$bin/cocoon" registry show --owner "$(wallet "$dir/operator.key")" --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["registry"])')"
echo "registry $registry: model $digest, proxy http://127.0.0.1:$((base + 10)) at 10 %"

echo
echo "== two workers: SIMULATED evidence (no TEE here; it proves nothing) =="
for w in 1 2; do
    # The static config: what the worker serves and what it charges, attested in its claims.
    cat > "$dir/worker$w.toml" <<TOML
[model]
id = "smollm2-135m-instruct"
path = "$model"
digest = "$digest"
context_length = 2048
max_batch = 4

[pricing]
prompt_per_1k = 20000
completion_per_1k = 60000
payout_address = "$(wallet "$dir/worker$w.key")"
TOML
    sock="$dir/enclave$w.sock"
    COCOON_LOG=${COCOON_LOG:-warn} "$bin/cocoon-enclave" --listen "unix:$sock" \
        --platform simulated --insecure-simulated --config "$dir/worker$w.toml" &
    pids+=($!)
    for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.1; done
    COCOON_LOG=warn "$bin/cocoon-host" --listen "127.0.0.1:$((base + w))" --enclave "unix:$sock" &
    pids+=($!)
    wait_port $((base + w))
    echo "worker $w: http://127.0.0.1:$((base + w)) (prompt 20000, completion 60000 nanoTON per 1k tokens)"
done

echo
echo "== cocoon-proxy: admits the workers by attestation and the registry, 10 % commission, paid on TON =="
cat > "$dir/proxy.toml" <<TOML
listen = "127.0.0.1:$((base + 10))"
ledger = "$dir/ledger.sqlite"
account_key = "$dir/proxy.key"
commission_ppm = 100000
credit_limit = 100000000
workers = ["http://127.0.0.1:$((base + 1))", "http://127.0.0.1:$((base + 2))"]
insecure_simulated = true
platform = "simulated"

[ton]
api = "$COCOON_TON_API"
worker_deposit = 1000000000
registry = "$registry"
TOML
COCOON_LOG=warn "$bin/cocoon-proxy" serve --config "$dir/proxy.toml" &
pids+=($!)
wait_port $((base + 10))
for _ in $(seq 100); do
    [ "$(curl -s "http://127.0.0.1:$((base + 10))/v1/workers" | grep -o '"state":"up"' | wc -l)" -ge 2 ] && break
    sleep 0.2
done
curl -s "http://127.0.0.1:$((base + 10))/v1/workers" | python3 -c '
import json, sys
for w in json.load(sys.stdin)["data"]:
    print("admitted", w["id"], w["url"], "model", w["model"], "capacity", w["capacity"], "platform", w["platform"])'

echo
echo "== the client: a payment channel to the proxy's wallet, cocoon serve paying through it =="
"$bin/cocoon" channel open --key "$dir/client.key" --payee "$(wallet "$dir/proxy.key")" --amount 5 \
    --out "$dir/channel.json" > /dev/null
echo "channel $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' "$dir/channel.json"): 5 TON deposited"
"$bin/cocoon" serve --proxy "http://127.0.0.1:$((base + 10))" --listen "127.0.0.1:$((base + 20))" \
    --key "$dir/client.key" --channel "$dir/channel.json" --registry "$registry" --insecure-simulated 2>/dev/null &
pids+=($!)
wait_port $((base + 20))

echo
echo "== the official openai Python SDK, pointed at cocoon serve =="
echo "question: $question"
"$python" - "http://127.0.0.1:$((base + 20))/v1" "$question" <<'PY'
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed")
stream = client.chat.completions.create(
    model="smollm2-135m-instruct", messages=[{"role": "user", "content": sys.argv[2]}],
    max_tokens=64, temperature=0, stream=True, stream_options={"include_usage": True})
print("answer:   ", end="", flush=True)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        c = chunk.model_extra["cocoon"]
        print(f"\nusage:    {chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens")
        print(f"cost:     {c['cost_nanoton']} nanoTON = worker {c['worker_cost_nanoton']} + commission "
              f"{c['commission_nanoton']} (receipt verified; worker {c['worker']})")
PY

echo
echo "== settlement on chain =="
sleep 1
COCOON_LOG=warn "$bin/cocoon-proxy" settle --config "$dir/proxy.toml" --all | sed 's/^/proxy claims: /'
"$bin/cocoon" channel status "$dir/channel.json" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("client channel: deposited {}, claimed by the proxy {} nanoTON".format(s["deposited"], s["claimed"]))'
for w in 1 2; do
    echo "worker $w: cocoon payouts --claim (a claim costs about 0.006 TON, far more than this demo earned)"
    "$bin/cocoon" payouts --proxy "http://127.0.0.1:$((base + 10))" --key "$dir/worker$w.key" \
        --dir "$dir/payouts$w" --claim --min-claim 0 2>&1 | sed 's/^/  /'
done

echo
echo "== the proxy's ledger =="
"$bin/cocoon-proxy" ledger --db "$dir/ledger.sqlite"
