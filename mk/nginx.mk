# Interoperability against a real nginx (Debian's nginx-light, started by scripts/nginx.sh with
# the test's own config on free loopback ports). Connections are counted by nginx stub_status.

NGINX_TEST_BIN := $(BUILD)/nginx/interop
NGINX_CFLAGS   := -std=c11 -O2 -g -Wall -Wextra -Wpedantic -Werror

TEST_SUITES += test-nginx

.PHONY: test-nginx nginx-build

nginx-build: $(NGINX_TEST_BIN)

$(NGINX_TEST_BIN): $(ROOT)/tests/nginx/interop.c $(HEADER) $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(NGINX_CFLAGS) -I$(ROOT)/include $< -L$(LIB_DIR) -lkeepalive_agent \
	  -Wl,-rpath,$(LIB_DIR) -lpthread -o $@

test-nginx: deps lib
	$(MAKE) nginx-build
	$(ROOT)/tests/nginx/run.sh $(NGINX_TEST_BIN)
