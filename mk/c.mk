# mk/c.mk: C and C++ users (issues 2 and 8).
#
#   make test-c                  C tests (.so under valgrind, ASan/UBSan, static), C++ wrapper
#                                tests, header and symbol hygiene, examples, install test
#   make install PREFIX=/usr/local [DESTDIR=]   libraries, headers, pkg-config, CMake package
#   make uninstall PREFIX=...    removes exactly what install recorded in its manifest
#   make c-demo                  the C program of `make demo`
#
# Every output goes under $(BUILD)/c. Helpers: scripts/c-*.sh.

PREFIX  ?= /usr/local
DESTDIR ?=

C_BUILD    := $(BUILD)/c
C_HPP      := $(ROOT)/include/keepalive_agent.hpp
C_VERSION  := $(shell sed -n 's/^.define KEEPALIVE_AGENT_VERSION "\(.*\)"/\1/p' $(HEADER))
C_MAJOR    := $(firstword $(subst ., ,$(C_VERSION)))
# cargo writes libkeepalive_agent.so; its SONAME is libkeepalive_agent.so.$(C_MAJOR), so
# programs linked in the tree find the library through this directory of links.
C_LIBDIR   := $(C_BUILD)/lib
C_SOLINK   := $(C_LIBDIR)/libkeepalive_agent.so.$(C_MAJOR)

C_WARN     := -Wall -Wextra -Wpedantic -Werror
C_CFLAGS   := -std=c11 $(C_WARN) -g -O1 -I$(ROOT)/include -I$(ROOT)/tests/c
C_CXXFLAGS := -std=c++17 $(C_WARN) -g -O1 -I$(ROOT)/include -I$(ROOT)/tests/c
C_SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
C_LINK_SO  := -L$(C_LIBDIR) -lkeepalive_agent -Wl,-rpath,$(C_LIBDIR) -pthread
C_LINK_A   := $(STATIC_LIB) $(STATIC_LIBS)

C_TEST_SRCS := $(wildcard $(ROOT)/tests/c/*.c)
C_TEST_DEPS := $(C_TEST_SRCS) $(wildcard $(ROOT)/tests/c/*.h) $(HEADER)
C_TEST_BINS := $(C_BUILD)/c_tests $(C_BUILD)/c_tests_asan $(C_BUILD)/c_tests_static \
               $(C_BUILD)/c_tests_static_asan $(C_BUILD)/test_hpp $(C_BUILD)/test_hpp_asan \
               $(C_BUILD)/test_panic
C_EXAMPLES  := $(addprefix $(C_BUILD)/examples/,c_client c_threads c_async c_queue c_download cpp_client)
C_DEMO      := $(C_BUILD)/demo

# Run-time settings of the test binaries.
C_RUN_ENV := KEEPALIVE_TESTSERVER=$(TESTSERVER) RUST_BACKTRACE=0 \
             LSAN_OPTIONS=suppressions=$(ROOT)/tests/c/lsan.supp:print_suppressions=0 \
             UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# valgrind: time bounds x5; the fork child leaves by exec (see tests/c/test_fork.c).
# (C_TEST_LIGHT=1 shortens the heaviest loops if a slow machine needs it.)
C_VALGRIND := C_TEST_TIME_SCALE=5 C_TEST_CHILD_EXEC=1 \
              valgrind -q --suppressions=$(ROOT)/tests/c/valgrind.supp --leak-check=full --show-leak-kinds=definite \
              --errors-for-leak-kinds=definite --error-exitcode=99

TEST_SUITES   += test-c
DEMO_PROGRAMS += $(C_DEMO)
DEMO_DEPS     += c-demo

.PHONY: test-c c-tests-build c-symbols c-hygiene c-examples c-test-install c-demo \
        install uninstall

# ---------------------------------------------------------------------------------------
# Build

$(C_SOLINK): $(SO)
	@mkdir -p $(C_LIBDIR)
	ln -sfn $(SO) $@
	ln -sfn $(notdir $@) $(C_LIBDIR)/libkeepalive_agent.so

$(C_BUILD)/c_tests: $(C_TEST_DEPS) $(C_SOLINK)
	gcc $(C_CFLAGS) $(C_TEST_SRCS) $(C_LINK_SO) -o $@

$(C_BUILD)/c_tests_asan: $(C_TEST_DEPS) $(C_SOLINK)
	clang $(C_CFLAGS) $(C_SAN) $(C_TEST_SRCS) $(C_LINK_SO) -o $@

$(C_BUILD)/c_tests_static: $(C_TEST_DEPS) $(STATIC_LIB)
	gcc $(C_CFLAGS) $(C_TEST_SRCS) $(C_LINK_A) -o $@

$(C_BUILD)/c_tests_static_asan: $(C_TEST_DEPS) $(STATIC_LIB)
	clang $(C_CFLAGS) $(C_SAN) $(C_TEST_SRCS) $(C_LINK_A) -o $@

# The panic test links the test-hooks build of the library (see HOOKS_SO in the Makefile).
C_HOOKS_LIBDIR := $(C_BUILD)/hooks-lib
$(C_BUILD)/test_panic: $(ROOT)/tests/c/hooks/test_panic.c $(C_BUILD)/harness.o $(HOOKS_SO)
	@mkdir -p $(C_HOOKS_LIBDIR)
	ln -sfn $(HOOKS_SO) $(C_HOOKS_LIBDIR)/libkeepalive_agent.so.$(C_MAJOR)
	ln -sfn libkeepalive_agent.so.$(C_MAJOR) $(C_HOOKS_LIBDIR)/libkeepalive_agent.so
	gcc $(C_CFLAGS) $< $(C_BUILD)/harness.o -L$(C_HOOKS_LIBDIR) -lkeepalive_agent \
	  -Wl,-rpath,$(C_HOOKS_LIBDIR) -pthread -o $@

$(C_BUILD)/harness.o: $(ROOT)/tests/c/harness.c $(ROOT)/tests/c/harness.h $(HEADER)
	@mkdir -p $(C_BUILD)
	gcc $(C_CFLAGS) -c $< -o $@

$(C_BUILD)/harness_asan.o: $(ROOT)/tests/c/harness.c $(ROOT)/tests/c/harness.h $(HEADER)
	@mkdir -p $(C_BUILD)
	clang $(C_CFLAGS) $(C_SAN) -c $< -o $@

$(C_BUILD)/test_hpp: $(ROOT)/tests/c/test_hpp.cpp $(C_HPP) $(C_BUILD)/harness.o $(C_SOLINK)
	g++ $(C_CXXFLAGS) $< $(C_BUILD)/harness.o $(C_LINK_SO) -o $@

$(C_BUILD)/test_hpp_asan: $(ROOT)/tests/c/test_hpp.cpp $(C_HPP) $(C_BUILD)/harness_asan.o $(C_SOLINK)
	clang++ $(C_CXXFLAGS) $(C_SAN) $< $(C_BUILD)/harness_asan.o $(C_LINK_SO) -o $@

$(C_BUILD)/examples/%: $(ROOT)/examples/%.c $(HEADER) $(C_SOLINK)
	@mkdir -p $(@D)
	gcc -std=c11 $(C_WARN) -O2 -I$(ROOT)/include $< $(C_LINK_SO) -o $@

$(C_BUILD)/examples/%: $(ROOT)/examples/%.cpp $(HEADER) $(C_HPP) $(C_SOLINK)
	@mkdir -p $(@D)
	g++ -std=c++17 $(C_WARN) -O2 -I$(ROOT)/include $< $(C_LINK_SO) -o $@

$(C_DEMO): $(ROOT)/examples/demo.c $(HEADER) $(C_SOLINK)
	@mkdir -p $(@D)
	gcc -std=c11 $(C_WARN) -O2 -I$(ROOT)/include $< $(C_LINK_SO) -o $@

c-demo: $(C_DEMO)

c-tests-build: $(C_TEST_BINS) $(C_EXAMPLES) $(C_DEMO)

# ---------------------------------------------------------------------------------------
# Checks

# The header compiles as C11 and C++17 (and stricter), each header included twice.
c-hygiene: $(HEADER) $(C_HPP)
	@mkdir -p $(C_BUILD)/hygiene
	@for cc in gcc clang; do \
	  $$cc -std=c11 $(C_WARN) -I$(ROOT)/include -c $(ROOT)/tests/c/hygiene/header_twice.c \
	    -o $(C_BUILD)/hygiene/c-$$cc.o || exit 1; \
	  $$cc -std=c99 $(C_WARN) -I$(ROOT)/include -c $(ROOT)/tests/c/hygiene/header_twice.c \
	    -o $(C_BUILD)/hygiene/c99-$$cc.o || exit 1; \
	done
	@for cxx in g++ clang++; do \
	  $$cxx -std=c++17 $(C_WARN) -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast \
	    -Wzero-as-null-pointer-constant -I$(ROOT)/include \
	    -c $(ROOT)/tests/c/hygiene/header_twice.cpp -o $(C_BUILD)/hygiene/cpp-$$cxx.o || exit 1; \
	done
	@echo "  header hygiene: C11 + C99 (gcc, clang), C++17 strict (g++, clang++), twice included: ok"

# Exports: exactly the list in tests/c/exports.txt (every one documented in the header, all
# agent_*, no test hook); the test-hooks build adds agent_test_panic and nothing else;
# SONAME .so.MAJOR.
c-symbols: $(SO) $(HOOKS_SO)
	@diff $(ROOT)/tests/c/exports.txt <(nm -D --defined-only $(SO) | awk '{print $$NF}' | sort -u) \
	  || { echo "  exports (>) differ from tests/c/exports.txt (<): update the list with the header"; exit 1; }
	@diff <(grep -v '^ *\*' $(HEADER) | grep -o '\bagent_[a-z_0-9]*(' | tr -d '(' | sort -u) \
	      <(nm -D --defined-only $(SO) | awk '{print $$NF}' | sort -u) \
	  || { echo "  header declarations (<) and exports (>) differ"; exit 1; }
	@diff <(sort -u $(ROOT)/tests/c/exports.txt <(echo agent_test_panic)) \
	      <(nm -D --defined-only $(HOOKS_SO) | awk '{print $$NF}' | sort -u) \
	  || { echo "  the test-hooks library should export the list plus agent_test_panic"; exit 1; }
	@readelf -d $(SO) | grep -q 'Library soname: \[libkeepalive_agent.so.$(C_MAJOR)\]' \
	  || { echo "  SONAME is not libkeepalive_agent.so.$(C_MAJOR)"; readelf -d $(SO) | grep SONAME; exit 1; }
	@echo "  symbols: $$(nm -D --defined-only $(SO) | wc -l) exports, as listed in tests/c/exports.txt and declared in the header, no test hook; SONAME libkeepalive_agent.so.$(C_MAJOR): ok"

# The examples built in the tree, run against the test server.
c-examples: $(C_EXAMPLES) $(TESTSERVER)
	@KEEPALIVE_TESTSERVER=$(TESTSERVER) $(ROOT)/scripts/c-with-server.sh bash -c ' \
	  set -e; d=$(C_BUILD)/examples; \
	  $$d/c_client "$$KA_HTTP_URL" | grep -q "status=200 bytes=13 reused=1"; \
	  $$d/c_threads "$$KA_HTTP_URL" | grep -q "ok=100/100"; \
	  $$d/c_async "$$KA_HTTP_URL" | grep -q "ok=10/10"; \
	  $$d/c_queue "$$KA_HTTP_URL" 1000 64 | grep -q "ok=1000/1000 connections="; \
	  $$d/cpp_client "$$KA_HTTP_URL" | grep -q "connections=1 requests=2"; \
	  f=$$(mktemp); $$d/c_download "$$KA_HTTP_URL?bytes=5000000" $$f "$$KA_HTTP_URL?echo=1" 2>/dev/null \
	    | tr "\n" " " | grep -q "status=200 bytes=5000000 upload status=200 reused=1"; \
	  test $$(stat -c %s $$f) = 5000000; rm -f $$f; \
	  $$d/c_client "http://127.0.0.1:1/" 2>&1 | grep -q AGENT_CODE_CONNECT_REFUSED' \
	  && echo "  examples (c_client, c_threads, c_async, c_queue, c_download, cpp_client): ok" \
	  || { echo "  examples: FAILED"; exit 1; }

c-test-install: $(SO) $(STATIC_LIB) $(TESTSERVER)
	@KEEPALIVE_TESTSERVER=$(TESTSERVER) MAKE="$(MAKE)" ROOT=$(ROOT) \
	  C_LSAN_SUPP=$(ROOT)/tests/c/lsan.supp \
	  $(ROOT)/scripts/c-with-server.sh $(ROOT)/scripts/c-install-test.sh

test-c: lib testserver $(STATIC_LIB)
	@$(MAKE) --no-print-directory c-tests-build
	@echo "== test-c: symbols and headers"
	@$(MAKE) --no-print-directory c-symbols c-hygiene
	@echo "== test-c: C tests, shared library, under valgrind"
	@cd $(ROOT) && $(C_RUN_ENV) $(C_VALGRIND) $(C_BUILD)/c_tests
	@echo "== test-c: C tests, shared library, clang ASan + UBSan"
	@cd $(ROOT) && $(C_RUN_ENV) $(C_BUILD)/c_tests_asan
	@echo "== test-c: C tests, static library"
	@cd $(ROOT) && $(C_RUN_ENV) $(C_BUILD)/c_tests_static
	@echo "== test-c: C tests, static library, clang ASan + UBSan"
	@cd $(ROOT) && $(C_RUN_ENV) $(C_BUILD)/c_tests_static_asan
	@echo "== test-c: the panic boundary (test-hooks build of the library)"
	@cd $(ROOT) && $(C_RUN_ENV) $(C_BUILD)/test_panic
	@echo "== test-c: C++ wrapper tests (g++; clang++ ASan + UBSan)"
	@cd $(ROOT) && $(C_RUN_ENV) $(C_BUILD)/test_hpp
	@cd $(ROOT) && $(C_RUN_ENV) $(C_BUILD)/test_hpp_asan
	@echo "== test-c: examples"
	@$(MAKE) --no-print-directory c-examples
	@echo "== test-c: install, out-of-tree pkg-config and CMake builds, uninstall"
	@$(MAKE) --no-print-directory c-test-install
	@echo "test-c: all passed"

# ---------------------------------------------------------------------------------------
# Install (user-facing): make install PREFIX=/usr/local [DESTDIR=/staging]

C_INSTALL_ENV = PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" ROOT=$(ROOT) SO=$(SO) \
                STATIC_LIB=$(STATIC_LIB) HEADER=$(HEADER) HPP=$(C_HPP) VERSION=$(C_VERSION) \
                STATIC_LIBS="$(STATIC_LIBS)"

install: $(SO) $(STATIC_LIB)
	@$(C_INSTALL_ENV) $(ROOT)/scripts/c-install.sh install

uninstall:
	@$(C_INSTALL_ENV) $(ROOT)/scripts/c-install.sh uninstall
