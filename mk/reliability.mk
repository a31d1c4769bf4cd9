# mk/reliability.mk: faults, bad input, threads, soak (issue 7). Figures: RELIABILITY.md.
#
#   make test-reliability   (in make test) the fault matrix, the bad-input tests and the
#                           16-thread stress (16 x 5,000) with thread/fd counts, then every
#                           fuzz target for REL_FUZZ_SHORT seconds, then a 20,000-request C soak
#   make fuzz               every fuzz target for FUZZ_SECONDS (default 60) each
#   make soak               200,000 requests through C, Python and Node with RSS sampled
#
# Outputs (logs, the fuzzers' scratch corpora, the soak binary) go under build/reliability;
# the committed seed corpora in tests/fuzz/<target>/ are only read. A crash saves its input
# under fuzz/artifacts/<target>/ and fails the target.

REL_BUILD       := $(BUILD)/reliability
REL_SOAK_BIN    := $(REL_BUILD)/soak
REL_FUZZ_DIR    := $(ROOT)/fuzz
REL_FUZZ_CORPUS := $(REL_BUILD)/fuzz/corpus
REL_FUZZ_TARGETS := url header options ffi_request ffi_options ffi_response proxy
# Seconds per target: the short run of make test (7 targets: 56 s in all) and make fuzz.
REL_FUZZ_SHORT  ?= 8
FUZZ_SECONDS    ?= 60
# Threads and requests per thread of the blocking stress in test-reliability (cargo test's
# own run of tests/threads.rs, in test-rust, uses the defaults of 16 x 1,000).
REL_STRESS_THREADS ?= 64
REL_STRESS      ?= 5000
SOAK_REQUESTS   ?= 200000
SOAK_EVERY      ?= 10000
REL_CFLAGS      := -std=c11 -O2 -g -Wall -Wextra -Wpedantic -Werror -pthread \
                   -I$(ROOT)/include -I$(ROOT)/tests/c
REL_ENV         := KEEPALIVE_TESTSERVER=$(TESTSERVER) RUST_BACKTRACE=1

TEST_SUITES += test-reliability

.PHONY: test-reliability rel-faults rel-fuzz-short rel-soak-short fuzz fuzz-install fuzz-build \
        soak soak-c soak-python soak-node

test-reliability: lib testserver
	$(MAKE) rel-faults
	$(MAKE) rel-fuzz-short
	$(MAKE) rel-soak-short
	@echo "test-reliability: passed (logs and figures in $(REL_BUILD))"

# Debug build: shares its artifacts with test-rust's `cargo test --workspace`.
rel-faults: lib testserver
	@mkdir -p $(REL_BUILD)
	set -o pipefail; $(REL_ENV) KEEPALIVE_STRESS_REQUESTS=$(REL_STRESS) KEEPALIVE_STRESS_THREADS=$(REL_STRESS_THREADS) \
	  timeout 600 $(CARGO) test --test faults --test threads --test bad_input -- --nocapture \
	  2>&1 | tee $(REL_BUILD)/faults.log | grep -E '^(FAULT|STRESS|THREADS|LIFECYCLE) \||^test result|panicked|FAILED'

# ---------------------------------------------------------------------------------------
# Fuzzing (cargo-fuzz on stable: --sanitizer none; see RECIPE.md)

fuzz-install:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked

fuzz-build: fuzz-install
	cd $(ROOT) && timeout 900 $(CARGO) fuzz build --sanitizer none

# $(1): seconds per target, $(2): log name. libFuzzer's summary line ("Done N runs in S
# second(s)") of each target goes to $(REL_BUILD)/$(2).txt.
define rel_fuzz_run
	@mkdir -p $(REL_BUILD)
	@: > $(REL_BUILD)/$(2).txt
	@set -e; for t in $(REL_FUZZ_TARGETS); do \
	  mkdir -p $(REL_FUZZ_CORPUS)/$$t; \
	  echo "fuzz $$t: $(1) s"; \
	  if ! (cd $(ROOT) && timeout $$(( $(1) + 120 )) $(CARGO) fuzz run --sanitizer none $$t \
	        $(REL_FUZZ_CORPUS)/$$t $(ROOT)/tests/fuzz/$$t -- \
	        -max_total_time=$(1) -timeout=5 -rss_limit_mb=4096 -print_final_stats=1 \
	        > $(REL_BUILD)/$(2)-$$t.log 2>&1); then \
	    tail -40 $(REL_BUILD)/$(2)-$$t.log; echo "fuzz target $$t FAILED (log: $(REL_BUILD)/$(2)-$$t.log)"; exit 1; \
	  fi; \
	  runs=$$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs | \2 s/p' $(REL_BUILD)/$(2)-$$t.log); \
	  echo "FUZZ | $$t | $$runs | corpus $$(find $(REL_FUZZ_CORPUS)/$$t $(ROOT)/tests/fuzz/$$t -type f | wc -l) |" \
	    | tee -a $(REL_BUILD)/$(2).txt; \
	done
endef

rel-fuzz-short: fuzz-build
	$(call rel_fuzz_run,$(REL_FUZZ_SHORT),fuzz-short)

fuzz: fuzz-build
	$(call rel_fuzz_run,$(FUZZ_SECONDS),fuzz)

# ---------------------------------------------------------------------------------------
# Soak

$(REL_SOAK_BIN): $(ROOT)/tests/soak/soak.c $(ROOT)/tests/c/harness.c $(ROOT)/tests/c/harness.h $(HEADER) $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(REL_CFLAGS) $(ROOT)/tests/soak/soak.c $(ROOT)/tests/c/harness.c \
	  -L$(LIB_DIR) -lkeepalive_agent -Wl,-rpath,$(LIB_DIR) -o $@

rel-soak-short: $(REL_SOAK_BIN) testserver
	set -o pipefail; $(REL_ENV) timeout 300 $(REL_SOAK_BIN) 20000 2000 | tee $(REL_BUILD)/soak-short.log | grep '^SOAK'

soak-c: $(REL_SOAK_BIN) testserver
	set -o pipefail; $(REL_ENV) timeout 900 $(REL_SOAK_BIN) $(SOAK_REQUESTS) $(SOAK_EVERY) | tee $(REL_BUILD)/soak-c.log

SOAK_LANGS := soak-c
ifneq ($(wildcard $(ROOT)/bindings/python/pyproject.toml),)
SOAK_LANGS += soak-python
soak-python: python-install testserver
	@mkdir -p $(REL_BUILD)
	set -o pipefail; $(REL_ENV) timeout 900 $(PY) $(ROOT)/tests/soak/soak.py $(SOAK_REQUESTS) $(SOAK_EVERY) \
	  | tee $(REL_BUILD)/soak-python.log
endif
ifneq ($(wildcard $(ROOT)/bindings/node/package.json),)
SOAK_LANGS += soak-node
soak-node: node-build testserver
	@mkdir -p $(REL_BUILD)
	set -o pipefail; $(REL_ENV) KEEPALIVE_NODE_PKG=$(NODE_DIR) timeout 900 $(NODE) --expose-gc \
	  --min-semi-space-size=16 --max-semi-space-size=16 $(ROOT)/tests/soak/soak.js \
	  $(SOAK_REQUESTS) $(SOAK_EVERY) | tee $(REL_BUILD)/soak-node.log
endif

soak: lib testserver
	@mkdir -p $(REL_BUILD)
	@set -e; for t in $(SOAK_LANGS); do $(MAKE) $$t; done
	@grep -h '^SOAK' $(addprefix $(REL_BUILD)/,$(addsuffix .log,$(SOAK_LANGS)))
