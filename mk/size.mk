# make test-size: what the shipped libraries weigh, against the goals, and that their debug
# info, kept beside them, still symbolizes.
#   - libkeepalive_agent.so (stripped by make lib; debug info in libkeepalive_agent.so.debug) <= 4 MiB
#   - a static hello-world (examples/c_client.c linked as the README's static line) <= 6 MiB
#   - gdb finds agent_new's source line through the .gnu_debuglink

SIZE_SO_MAX     := 4194304
SIZE_STATIC_MAX := 6291456
SIZE_BUILD      := $(BUILD)/size

TEST_SUITES += test-size
.PHONY: test-size

test-size: lib
	@mkdir -p $(SIZE_BUILD)
	@so=$$(stat -c %s $(SO)); \
	  echo "  libkeepalive_agent.so: $$so bytes (goal <= $(SIZE_SO_MAX))"; \
	  test $$so -le $(SIZE_SO_MAX) || { echo "test-size: the shared library is over its goal"; exit 1; }
	$(CC) -std=c11 -O2 -I$(ROOT)/include $(ROOT)/examples/c_client.c $(STATIC_LIB) -Wl,--gc-sections \
	  $(STATIC_LIBS) -o $(SIZE_BUILD)/hello_static
	@st=$$(stat -c %s $(SIZE_BUILD)/hello_static); \
	  echo "  static hello-world (c_client.c): $$st bytes (goal <= $(SIZE_STATIC_MAX))"; \
	  test $$st -le $(SIZE_STATIC_MAX) || { echo "test-size: the static program is over its goal"; exit 1; }
	@line=$$(gdb -nx -batch -ex 'info line agent_new' $(SO) 2>&1); \
	  echo "  gdb: $$line"; \
	  echo "$$line" | grep -q 'src/ffi/agent.rs' || { echo "test-size: no source line through the debug link"; exit 1; }
	@echo "test-size: passed"
