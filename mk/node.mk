# Node binding (bindings/node): N-API addon in C, its tests and its demo.
#   make node-build   npm ci (once per package-lock.json) + compile the addon when its inputs change
#   make test-node    node --test --expose-gc bindings/node/test/ (test server, moto for the AWS SDK test)
#   make node-moto    python venv with moto + waitress (a local DynamoDB and S3), installed once

NODE            ?= node
NPM             ?= npm
NODE_DIR        := $(ROOT)/bindings/node
# Inside node_modules, so that deleting node_modules also forgets the install.
NODE_NPM_STAMP  := $(NODE_DIR)/node_modules/.keepalive-npm-ci.stamp
NODE_ADDON      := $(NODE_DIR)/build/Release/keepalive_agent.node
NODE_MOTO_VENV  := $(BUILD)/venv-moto
NODE_MOTO_STAMP := $(NODE_MOTO_VENV)/.installed-moto-s3-dynamodb-5.2.5
NODE_MOTO_PKGS  := "moto[s3,dynamodb]==5.2.5" "flask==3.1.3" "flask-cors==6.0.5" "waitress==3.0.2"
NODE_DEMO       := $(BUILD)/demo-node.sh

.PHONY: node-build node-moto test-node node-demo

node-build: $(NODE_ADDON)

# Dependencies exactly as locked (the package itself has no install script: the addon is
# built below, against the library make just built; dependencies' scripts are skipped).
$(NODE_NPM_STAMP): $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	cd $(NODE_DIR) && $(NPM) ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

$(NODE_ADDON): $(NODE_NPM_STAMP) $(SO) $(HEADER) $(NODE_DIR)/src/addon.c $(NODE_DIR)/scripts/build.js
	cd $(NODE_DIR) && KEEPALIVE_AGENT_ROOT=$(ROOT) $(NODE) scripts/build.js --force
	@touch $@

node-moto: $(NODE_MOTO_STAMP)

$(NODE_MOTO_STAMP):
	@mkdir -p $(BUILD)
	test -x $(NODE_MOTO_VENV)/bin/pip || python3 -m venv $(NODE_MOTO_VENV)
	$(NODE_MOTO_VENV)/bin/pip install --quiet --disable-pip-version-check $(NODE_MOTO_PKGS)
	@touch $@

test-node: node-build $(TESTSERVER) $(HOOKS_SO) node-moto
	cd $(NODE_DIR) && KEEPALIVE_AGENT_TEST_HOOKS_LIB=$(HOOKS_SO) KEEPALIVE_NODE_MOTO_PYTHON=$(NODE_MOTO_VENV)/bin/python \
	  KEEPALIVE_NODE_REQUIRE_MOTO=1 KEEPALIVE_TESTSERVER=$(TESTSERVER) \
	  $(NODE) --test --expose-gc test/*.test.js
	@# The npm tarball installs and runs with no compiler and no install script.
	KEEPALIVE_TESTSERVER=$(TESTSERVER) ROOT=$(ROOT) NODE=$(NODE) NPM=$(NPM) \
	  $(ROOT)/scripts/c-with-server.sh $(ROOT)/scripts/node-pack-test.sh

TEST_SUITES += test-node

# make demo runs $(NODE_DEMO) with DEMO_* in the environment.
node-demo: $(NODE_DEMO)

$(NODE_DEMO): $(NODE_ADDON) $(NODE_DIR)/examples/demo.js
	@mkdir -p $(BUILD)
	@printf '#!/usr/bin/env bash\nexec %s %s "$$@"\n' '$(NODE)' '$(NODE_DIR)/examples/demo.js' > $@
	@chmod +x $@

DEMO_PROGRAMS += $(NODE_DEMO)
DEMO_DEPS += node-demo
