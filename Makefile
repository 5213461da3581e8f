# Confidential AI worker node: build, test, lint, benchmark, demo.
CARGO ?= cargo
SOCKET_DIR ?= $(CURDIR)/target/demo

.PHONY: all build test lint fmt fmt-check bench demo clean

all: build

build:
	$(CARGO) build --workspace --bins

# Everything offline: unit tests, RFC vectors, interop, end-to-end with real processes.
test:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Printed tables: sealing throughput next to `openssl speed`, HPKE setup,
# shim forwarding next to socat.
bench:
	@command -v openssl >/dev/null || { echo "bench needs openssl (apt-get install openssl)"; exit 1; }
	@command -v socat >/dev/null || { echo "bench needs socat (apt-get install socat)"; exit 1; }
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p cocoon-protocol --bench sealing
	$(CARGO) bench -p cocoon-tests --bench forwarding

# The main job on an embedded default: enclave (simulated evidence) + host shim
# on loopback, then a sealed chat through them.
demo:
	bash scripts/demo.sh

clean:
	$(CARGO) clean
