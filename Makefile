# cni-rs: the two commands are `make demo` and `make test`.
# Both need root (they create network namespaces) and install what they need.
# `make install`, `make install-tools` and `make dist` build in release mode
# and ship what was built (README.md, "Install").

CARGO ?= cargo
PREFIX ?= /opt/cni/bin
BINDIR ?= /usr/local/bin
DESTDIR ?=
PLUGINS := bridge host-local loopback portmap ptp
# Release binaries are static: the target triple and flags come from
# scripts/static-target.sh, read when a recipe runs (after `deps` added musl).
STATIC = $(shell ./scripts/static-target.sh)
TARGET = $(word 1,$(STATIC))
RELEASE_DIR = $(or $(CARGO_TARGET_DIR),target)/$(TARGET)/release
# dist/cni-rs-linux-<arch>-v<version>.tgz, absolute (scripts/dist.sh names it)
DIST_TARBALL = $(shell ./scripts/dist.sh --path)

.PHONY: all deps build release lint test demo install install-tools dist clean print-release-dir bench

all: build

deps:
	./scripts/deps.sh

build:
	$(CARGO) build --workspace --bins

release:
	RUSTFLAGS="$(wordlist 2,9,$(STATIC))" $(CARGO) build --release --locked --target $(TARGET) --workspace --bins
	./scripts/stamp.sh $(RELEASE_DIR) cni-floor

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Everything CI runs: packages, formatting, lints, the release tarball (its
# binaries checked to be static), unit and integration tests
# (the real binaries in throwaway network namespaces; tests/tests/dist.rs
# unpacks the tarball and runs what is in it), then a check that nothing was
# left behind.
test: deps lint build dist
	@[ "$$(id -u)" -eq 0 ] || { echo "make test needs root: the tests create network namespaces" >&2; exit 1; }
	CNI_RS_DIST=$(abspath $(DIST_TARBALL)) CNI_RS_RELEASE_DIR=$(abspath $(RELEASE_DIR)) $(CARGO) test --workspace
	./scripts/leakcheck.sh

# The benchmark report (bench/README.md): the chains at 0, 100, 500 and
# 1,000 existing containers against the reference and the floor, parallel
# churn, host-local at 0 and 5,000 reservations; bench/results/<date>.md
# with the raw CSVs and the plots. Needs root; takes about 15 minutes.
BENCH_ROUNDS ?= 20
BENCH_SIZES ?= 0,100,500,1000
# Debian's Python, where python3-matplotlib goes.
PYTHON ?= /usr/bin/python3
bench: deps release
	@[ "$$(id -u)" -eq 0 ] || { echo "make bench needs root: it creates network namespaces" >&2; exit 1; }
	./scripts/deps.sh --bench
	cd bench && $(PYTHON) chain_bench.py $(BENCH_ROUNDS) $(BENCH_SIZES)
	cd bench && $(PYTHON) host_local_bench.py 100 0 5000
	cd bench && $(PYTHON) report.py

# Where `make release` puts the static binaries (deploy/kubernetes/build-image.sh).
print-release-dir:
	@echo $(abspath $(RELEASE_DIR))

demo: deps build
	./scripts/demo.sh

# Each binary is written beside its final name, then renamed over it: a
# runtime running a plugin meanwhile never executes a half-written file.
install: release
	install -d -m 0755 $(DESTDIR)$(PREFIX)
	for p in $(PLUGINS); do \
	  install -m 0755 $(RELEASE_DIR)/$$p $(DESTDIR)$(PREFIX)/.$$p.new && \
	  mv -f $(DESTDIR)$(PREFIX)/.$$p.new $(DESTDIR)$(PREFIX)/$$p || exit 1; \
	done

install-tools: release
	install -d -m 0755 $(DESTDIR)$(BINDIR)
	install -m 0755 $(RELEASE_DIR)/cni-run $(DESTDIR)$(BINDIR)/.cni-run.new
	mv -f $(DESTDIR)$(BINDIR)/.cni-run.new $(DESTDIR)$(BINDIR)/cni-run

dist:
	CARGO=$(CARGO) ./scripts/dist.sh

clean:
	$(CARGO) clean
	rm -rf dist
