# make bench: keepalive-agent against wrk, h2load (HTTP/2, Debian nghttp2-client), libcurl,
# urllib3, requests, httpx, pycurl, http.Agent, undici and node:http2 on a real nginx
# (scripts/nginx.sh), about 10 minutes.
# Writes bench/RESULTS.md, bench/ratios.svg and bench/out/results.json (see bench/run.py).
#   make bench BENCH_ARGS="--pin"                      nginx on CPU 0, the clients on CPU 1
#   make bench BENCH_ARGS="--seconds 0.3 --reps 1 --report /tmp/R.md --chart /tmp/r.svg"
#                                                       a quick look that leaves the committed
#                                                       RESULTS.md and ratios.svg alone
#   make bench BENCH_ARGS="--workloads W9 --reps 3 --seconds 1 --report /tmp/w9.md --chart /tmp/w9.svg"
#                                                       HTTP/2 only (W9), in seconds: no memory
#                                                       test, no instruction counts

BENCH_BUILD     := $(BUILD)/bench
BENCH_C         := $(BENCH_BUILD)/bench
BENCH_VENV      := $(BUILD)/bench-venv
BENCH_PY        := $(BENCH_VENV)/bin/python
BENCH_REQS      := $(ROOT)/bench/python/requirements.txt
BENCH_VENV_STAMP := $(BENCH_VENV)/.installed.stamp
BENCH_NODE_DIR  := $(ROOT)/bench/node
BENCH_NPM_STAMP := $(BENCH_BUILD)/npm-ci.stamp
BENCH_CFLAGS    := -std=c11 -O2 -g -Wall -Wextra -Wpedantic -Werror
BENCH_ARGS      ?=

.PHONY: bench bench-build bench-c bench-venv bench-node-deps bench-bindings

bench-c: $(BENCH_C)
bench-venv: $(BENCH_VENV_STAMP)
bench-node-deps: $(BENCH_NPM_STAMP)
bench-build: bench-c bench-venv bench-node-deps bench-bindings

$(BENCH_C): $(ROOT)/bench/c/bench.c $(HEADER) $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -I$(ROOT)/include $< -L$(LIB_DIR) -lkeepalive_agent \
	  -Wl,-rpath,$(LIB_DIR) -lcurl -lpthread -o $@

$(BENCH_VENV_STAMP): $(BENCH_REQS)
	@test -x $(BENCH_PY) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --disable-pip-version-check -q --prefer-binary -r $(BENCH_REQS)
	@touch $@

$(BENCH_NPM_STAMP): $(BENCH_NODE_DIR)/package.json $(BENCH_NODE_DIR)/package-lock.json
	@mkdir -p $(dir $@)
	cd $(BENCH_NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The bindings' own build rules (mk/python.mk, mk/node.mk); a binding that cannot be built is
# left out of the run, and the report says so.
bench-bindings:
	@$(if $(NODE_ADDON),$(MAKE) node-build || echo "bench: the Node binding did not build; running without it",echo "bench: no Node binding rules (mk/node.mk)")

bench: deps lib
	$(MAKE) bench-build
	ulimit -n $$(ulimit -Hn) 2>/dev/null; $(BENCH_PY) $(ROOT)/bench/run.py $(BENCH_ARGS) \
	  --command "make bench$(if $(BENCH_ARGS), BENCH_ARGS=\"$(BENCH_ARGS)\")"

# make bench-events: what events cost at c=1 (off, on, masked out), in alternating rounds.
BENCH_EVENTS := $(BENCH_BUILD)/events-cost
.PHONY: bench-events
$(BENCH_EVENTS): $(ROOT)/bench/events/cost.c $(HEADER) $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(BENCH_CFLAGS) -I$(ROOT)/include $< -L$(LIB_DIR) -lkeepalive_agent \
	  -Wl,-rpath,$(LIB_DIR) -o $@

bench-events: $(BENCH_EVENTS) $(TESTSERVER)
	$(ROOT)/bench/events/run.sh $(BENCH_EVENTS) $(TESTSERVER) 1 5
