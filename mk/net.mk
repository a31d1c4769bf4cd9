# Networks as users have them (issue: proxies, TLS trust): the C program tests/net/network.c
# against squid and tinyproxy (scripts/proxies.sh) in front of nginx (scripts/nginx.sh), and
# nginx's self-signed and mutual-TLS servers; plainly and under valgrind.

NET_TEST_BIN := $(BUILD)/net/network
NET_CFLAGS   := -std=c11 -O1 -g -Wall -Wextra -Wpedantic -Werror

TEST_SUITES += test-network

.PHONY: test-network net-build

net-build: $(NET_TEST_BIN)

$(NET_TEST_BIN): $(ROOT)/tests/net/network.c $(HEADER) $(SO)
	@mkdir -p $(dir $@)
	$(CC) $(NET_CFLAGS) -I$(ROOT)/include $< -L$(LIB_DIR) -lkeepalive_agent \
	  -Wl,-rpath,$(LIB_DIR) -lpthread -o $@

test-network: deps lib
	$(MAKE) net-build
	$(ROOT)/tests/net/run.sh $(NET_TEST_BIN)
