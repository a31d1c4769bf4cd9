# keepalive-agent: two commands do everything on a fresh machine.
#   make demo   builds, starts local servers, shows keep-alive on vs off from C, Python, Node
#   make test   every check in every language (installs what it needs, idempotently)
# Language-specific rules live in mk/*.mk and are included below.

SHELL := /bin/bash
.DEFAULT_GOAL := all

ROOT        := $(abspath .)
CARGO       ?= cargo
LIB_DIR     := $(ROOT)/target/release
SO          := $(LIB_DIR)/libkeepalive_agent.so
STATIC_LIB  := $(LIB_DIR)/libkeepalive_agent.a
TESTSERVER  := $(LIB_DIR)/keepalive-testserver
HEADER      := $(ROOT)/include/keepalive_agent.h
BUILD       := $(ROOT)/build
# System libraries the static library needs (cargo rustc --print native-static-libs).
STATIC_LIBS := -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

# Debian packages the tests, demo and benchmarks use. Installed only when missing.
APT_PACKAGES := nginx-light valgrind clang libclang-rt-14-dev cmake pkg-config wrk curl \
                libcurl4-openssl-dev openssl iproute2 python3-venv tinyproxy squid \
                nghttp2-client gdb

.PHONY: all lib testserver test-hooks-lib deps deps-apt test test-rust fmt-check clippy header-check \
        cargo-test demo bench clean

all: lib

# ---------------------------------------------------------------------------------------
# Build

lib: $(SO)
	@# Also after a cargo build outside make (it links target/release's copy again).
	@$(ROOT)/scripts/split-debug.sh $(SO) $(STATIC_LIB)
testserver: $(TESTSERVER)

RUST_SOURCES := $(shell find src -name '*.rs') build.rs cbindgen.toml Cargo.toml Cargo.lock
SONAME      := libkeepalive_agent.so.$(shell sed -n 's/^version = "\([0-9]*\)\..*/\1/p' Cargo.toml | head -1)

$(SO) $(STATIC_LIB): $(RUST_SOURCES)
	$(CARGO) build --release -p keepalive-agent
	@# Debug info leaves the shipped libraries: the shared one keeps a link to
	@# libkeepalive_agent.so.debug beside it (gdb, valgrind and addr2line find it there, and
	@# make install puts it in lib/.debug/), so crash reports still symbolize.
	$(ROOT)/scripts/split-debug.sh $(SO) $(STATIC_LIB)
	@# Programs linked with -lkeepalive_agent record the SONAME; make it resolvable in place.
	ln -sf libkeepalive_agent.so $(LIB_DIR)/$(SONAME)
	@touch $(SO) $(STATIC_LIB)

# The library with the `test-hooks` feature (agent_test_panic), for the suites that check
# how a panic is reported. It has a target directory of its own, so that the release
# library never carries the hook (c-symbols checks that).
HOOKS_DIR := $(ROOT)/target/test-hooks
HOOKS_SO  := $(HOOKS_DIR)/release/libkeepalive_agent.so

test-hooks-lib: $(HOOKS_SO)

$(HOOKS_SO): $(RUST_SOURCES)
	CARGO_TARGET_DIR=$(HOOKS_DIR) $(CARGO) build --release -p keepalive-agent --lib --features test-hooks
	ln -sf libkeepalive_agent.so $(HOOKS_DIR)/release/$(SONAME)
	@touch $@

$(TESTSERVER): $(shell find tests/server/src -name '*.rs') tests/server/Cargo.toml
	$(CARGO) build --release -p keepalive-testserver
	@touch $@

# ---------------------------------------------------------------------------------------
# Dependencies (idempotent: nothing is installed twice)

deps: deps-apt

deps-apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# ---------------------------------------------------------------------------------------
# Tests

# Each mk/*.mk adds its suite's target to TEST_SUITES.
TEST_SUITES :=

test: deps
	$(MAKE) test-rust
	@for t in $(TEST_SUITES); do $(MAKE) $$t || exit 1; done
	@echo "make test: all suites passed"

test-rust: fmt-check clippy header-check cargo-test

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The committed header must be what build.rs generates from the sources.
header-check: lib
	@if ! git diff --quiet -- include/keepalive_agent.h; then \
	  git --no-pager diff --stat -- include/keepalive_agent.h; \
	  echo "include/keepalive_agent.h is out of date: commit the regenerated header"; exit 1; \
	fi
	@echo "header matches the sources"

cargo-test:
	$(CARGO) test --workspace --features keepalive-agent/test-hooks

# ---------------------------------------------------------------------------------------
# Demo and benchmarks (rows are added by each language's mk file)

# Each mk/*.mk adds a program to DEMO_PROGRAMS (and its build to DEMO_DEPS).
DEMO_PROGRAMS :=
DEMO_DEPS :=

demo: deps lib testserver
	$(MAKE) $(DEMO_DEPS)
	scripts/demo.sh $(DEMO_PROGRAMS)

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

-include mk/*.mk
