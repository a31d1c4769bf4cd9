# Python binding (bindings/python): a venv under build/, the package installed into it with
# `pip install` (its build hook runs cargo and copies the .so into the package), the pytest
# suite, and the demo wrapper. Everything is idempotent through stamp files.

PY_DIR           := $(ROOT)/bindings/python
PY_VENV          := $(BUILD)/venv
PY               := $(PY_VENV)/bin/python
PY_VENV_STAMP    := $(PY_VENV)/.requirements-dev.stamp
PY_INSTALL_STAMP := $(BUILD)/python-install.stamp
PY_SOURCES       := $(shell find $(PY_DIR)/src \( -name '*.py' -o -name py.typed \) 2>/dev/null) \
                    $(PY_DIR)/pyproject.toml $(PY_DIR)/setup.py $(PY_DIR)/README.md
PY_DEMO          := $(BUILD)/demo-python.sh
# Upper bound for the whole pytest run (seconds); each test also has its own (pyproject.toml).
PY_TEST_TIMEOUT  ?= 600
PY_PIP           := $(PY) -m pip --disable-pip-version-check

TEST_SUITES   += test-python
DEMO_PROGRAMS += $(PY_DEMO)
DEMO_DEPS     += python-demo

.PHONY: test-python python-venv python-install python-demo

python-venv: $(PY_VENV_STAMP)

$(PY_VENV_STAMP): $(PY_DIR)/requirements-dev.txt
	@mkdir -p $(BUILD)
	@test -x $(PY) || python3 -m venv $(PY_VENV)
	$(PY_PIP) install -q -r $<
	@touch $@

python-install: $(PY_INSTALL_STAMP)

# Non-editable, like a user's install; --no-build-isolation uses the venv's pinned setuptools.
# $(SO) is built by make already, so the package's build hook only copies it (the hook's
# cargo run is exercised by tests/test_install.py in a fresh venv).
$(PY_INSTALL_STAMP): $(PY_VENV_STAMP) $(PY_SOURCES) $(SO)
	cd $(PY_DIR) && KEEPALIVE_AGENT_SKIP_CARGO=1 $(PY_PIP) install -q --no-build-isolation --no-deps --force-reinstall .
	@touch $@

test-python: lib testserver test-hooks-lib python-install
	cd $(PY_DIR) && KEEPALIVE_TESTSERVER=$(TESTSERVER) KEEPALIVE_AGENT_TEST_HOOKS_LIB=$(HOOKS_SO) timeout $(PY_TEST_TIMEOUT) \
	  $(PY) -m pytest -q --durations=8 tests

python-demo: $(PY_DEMO)

# scripts/demo.sh runs this wrapper: the venv's python on examples/demo.py.
$(PY_DEMO): $(PY_INSTALL_STAMP) $(PY_DIR)/examples/demo.py
	@mkdir -p $(dir $@)
	printf '#!/bin/sh\nexec "%s" "%s" "$$@"\n' "$(PY)" "$(PY_DIR)/examples/demo.py" > $@
	chmod +x $@
