# cni-rs: the two commands are `make demo` and `make test`.
# Both need root (they create network namespaces) and install what they need.

CARGO ?= cargo
PREFIX ?= /opt/cni/bin

.PHONY: all deps build lint test demo clean

all: build

deps:
	./scripts/deps.sh

build:
	$(CARGO) build --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Everything CI runs: packages, formatting, lints, unit and integration tests
# (the real binaries in throwaway network namespaces), then a check that
# nothing was left behind.
test: deps lint build
	@[ "$$(id -u)" -eq 0 ] || { echo "make test needs root: the tests create network namespaces" >&2; exit 1; }
	$(CARGO) test --workspace
	./scripts/leakcheck.sh

demo: deps build
	./scripts/demo.sh

clean:
	$(CARGO) clean
