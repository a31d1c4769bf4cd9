#!/usr/bin/env bash
# c-install-test.sh: `make install` into a temporary prefix, then build the C and C++ examples
# OUT OF TREE (copied to a temp dir) against that prefix, once with pkg-config and once with
# CMake (find_package + imported targets), shared and static; run them against the test
# server; the C++ example also under ASan/UBSan; then `make uninstall` must leave no file.
# A DESTDIR (staged) install/uninstall is checked too.
#
# Run by `make test-c` through scripts/c-with-server.sh (KA_HTTP_URL, KA_HTTPS_URL, ...).
# Environment: MAKE, ROOT, C_LSAN_SUPP (LeakSanitizer suppressions file).
set -euo pipefail

: "${KA_HTTP_URL:?run me through scripts/c-with-server.sh}"
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
MAKE=${MAKE:-make}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/keepalive-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
mkdir -p "$prefix"
t0=$(date +%s.%N)

fail() { echo "install test FAILED: $*" >&2; exit 1; }
step() { printf '  %s ... ' "$1"; }
ok() { echo "ok${1:+ ($1)}"; }

# ---------------------------------------------------------------------------------------
step "make install PREFIX=$prefix"
$MAKE --no-print-directory -C "$ROOT" install PREFIX="$prefix" > "$tmp/install.log" 2>&1 \
  || { cat "$tmp/install.log"; fail "make install"; }
ok
lib="$prefix/lib"
ver=$(sed -n 's/^#define KEEPALIVE_AGENT_VERSION "\(.*\)"/\1/p' "$prefix/include/keepalive_agent.h")
major=${ver%%.*}
step "layout (version $ver)"
[ -f "$lib/libkeepalive_agent.so.$ver" ] && [ ! -L "$lib/libkeepalive_agent.so.$ver" ] \
  || fail "no regular file libkeepalive_agent.so.$ver"
[ "$(readlink "$lib/libkeepalive_agent.so.$major")" = "libkeepalive_agent.so.$ver" ] \
  || fail "libkeepalive_agent.so.$major does not point to libkeepalive_agent.so.$ver"
[ "$(readlink "$lib/libkeepalive_agent.so")" = "libkeepalive_agent.so.$major" ] \
  || fail "libkeepalive_agent.so does not point to libkeepalive_agent.so.$major"
readelf -d "$lib/libkeepalive_agent.so.$ver" | grep -q "Library soname: \[libkeepalive_agent.so.$major\]" \
  || fail "SONAME is not libkeepalive_agent.so.$major"
for f in lib/libkeepalive_agent.a include/keepalive_agent.h include/keepalive_agent.hpp \
         lib/pkgconfig/keepalive-agent.pc lib/pkgconfig/keepalive-agent-static.pc \
         lib/.debug/libkeepalive_agent.so.debug lib/cmake/keepalive_agent/keepalive_agentConfig.cmake \
         lib/cmake/keepalive_agent/keepalive_agentConfigVersion.cmake; do
  [ -f "$prefix/$f" ] || fail "missing $f"
done
ok

# ---------------------------------------------------------------------------------------
# Out of tree: the examples and their CMakeLists.txt, copied away from the repository.
src="$tmp/src"
mkdir -p "$src"
cp "$ROOT"/examples/{c_client.c,c_threads.c,c_async.c,cpp_client.cpp,CMakeLists.txt} "$src/"
export PKG_CONFIG_PATH="$lib/pkgconfig"
pc() { pkg-config "$@" keepalive-agent; }
CW=(-Wall -Wextra -Wpedantic -Werror)
step "pkg-config --modversion"
[ "$(pc --modversion)" = "$ver" ] || fail "pkg-config version $(pc --modversion) != $ver"
pc --static --libs | grep -q -- '-lpthread' || fail "no system libraries in Libs.private"
pc --libs | grep -q -- '-lpthread' && fail "system libraries in Libs (they belong in Libs.private)"
ok "$ver; --static adds $(pc --static --libs | sed 's/.*-lkeepalive_agent //')"

out="$tmp/pc"
mkdir -p "$out"
libdir=$(pc --variable=libdir)
# The README's lines, word for word (shared: with the rpath; static: keepalive-agent-static).
step "pkg-config: build shared and static (C, C++), as the README writes it"
for ex in c_client c_threads c_async; do
  # shellcheck disable=SC2046
  cc -std=c11 "${CW[@]}" "$src/$ex.c" $(pkg-config --cflags --libs keepalive-agent) \
    -Wl,-rpath,$(pkg-config --variable=libdir keepalive-agent) -pthread \
    -o "$out/$ex-shared" || fail "pkg-config shared build of $ex"
  # shellcheck disable=SC2046
  cc -std=c11 "${CW[@]}" "$src/$ex.c" $(pkg-config --cflags --libs keepalive-agent-static) -pthread \
    -o "$out/$ex-static" || fail "pkg-config static build of $ex"
done
# shellcheck disable=SC2046
c++ -std=c++17 "${CW[@]}" "$src/cpp_client.cpp" $(pkg-config --cflags --libs keepalive-agent) \
  -Wl,-rpath,$(pkg-config --variable=libdir keepalive-agent) \
  -o "$out/cpp_client-shared" || fail "pkg-config shared build of cpp_client"
# shellcheck disable=SC2046
c++ -std=c++17 "${CW[@]}" "$src/cpp_client.cpp" $(pkg-config --cflags --libs --static keepalive-agent-static) \
  -o "$out/cpp_client-static" || fail "pkg-config static build of cpp_client"
# Why the README asks for the rpath: without it (and without ldconfig) the loader does not
# look in the prefix.
# shellcheck disable=SC2046
cc -std=c11 "${CW[@]}" "$src/c_client.c" $(pkg-config --cflags --libs keepalive-agent) \
  -o "$out/c_client-no-rpath" || fail "pkg-config shared build without rpath"
if "$out/c_client-no-rpath" "$KA_HTTP_URL" > "$tmp/norpath.log" 2>&1; then
  fail "a program linked without the rpath found the library anyway"
fi
grep -q 'error while loading shared libraries: libkeepalive_agent.so' "$tmp/norpath.log" \
  || { cat "$tmp/norpath.log"; fail "not the loader's error without the rpath"; }
LD_LIBRARY_PATH="$libdir" "$out/c_client-no-rpath" "$KA_HTTP_URL" > /dev/null \
  || fail "the no-rpath build with LD_LIBRARY_PATH"
# shellcheck disable=SC2046
clang++ -std=c++17 "${CW[@]}" -g -fsanitize=address,undefined -fno-omit-frame-pointer \
  "$src/cpp_client.cpp" $(pc --cflags --libs) -Wl,-rpath,"$libdir" \
  -o "$out/cpp_client-asan" || fail "pkg-config ASan build of cpp_client"
ok
step "symbolized: gdb finds agent_new's line through lib/.debug"
gline=$(gdb -nx -batch -ex 'info line agent_new' "$lib/libkeepalive_agent.so.$ver" 2>&1)
grep -q 'src/ffi/agent.rs' <<< "$gline" || { echo "$gline"; fail "no source line for agent_new"; }
[ "$(stat -c %s "$lib/libkeepalive_agent.so.$ver")" -le 4194304 ] || fail "the installed library is over 4 MiB"
ok "$(sed 's/ starts at.*//' <<< "$gline")"

# ---------------------------------------------------------------------------------------
step "cmake: configure + build shared (find_package)"

cmake -S "$src" -B "$tmp/cmake-shared" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  > "$tmp/cmake-shared.log" 2>&1 && cmake --build "$tmp/cmake-shared" -j2 >> "$tmp/cmake-shared.log" 2>&1 \
  || { cat "$tmp/cmake-shared.log"; fail "cmake shared build"; }
ok
step "cmake: configure + build static (keepalive_agent_static)"
cmake -S "$src" -B "$tmp/cmake-static" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release \
  -DKEEPALIVE_STATIC=ON > "$tmp/cmake-static.log" 2>&1 \
  && cmake --build "$tmp/cmake-static" -j2 >> "$tmp/cmake-static.log" 2>&1 \
  || { cat "$tmp/cmake-static.log"; fail "cmake static build"; }
ok
step "cmake: find_package(keepalive_agent 9.0) is refused"
mkdir -p "$tmp/vsrc"
printf 'cmake_minimum_required(VERSION 3.16)\nproject(v C)\nfind_package(keepalive_agent 9.0 REQUIRED)\n' \
  > "$tmp/vsrc/CMakeLists.txt"
if cmake -S "$tmp/vsrc" -B "$tmp/vbuild" -DCMAKE_PREFIX_PATH="$prefix" > "$tmp/v.log" 2>&1; then
  fail "an incompatible version request was accepted"
fi
ok

# ---------------------------------------------------------------------------------------
needed() { readelf -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }
step "linkage: shared binaries need .so.$major, static ones do not"
for b in "$out"/*-shared "$tmp"/cmake-shared/{c_client,c_threads,c_async,cpp_client}; do
  needed "$b" | grep -qx "libkeepalive_agent.so.$major" || fail "$b does not need libkeepalive_agent.so.$major"
done
for b in "$out"/*-static "$tmp"/cmake-static/{c_client,c_threads,c_async,cpp_client}; do
  if needed "$b" | grep -q keepalive; then fail "$b needs the shared library"; fi
done
ok

# Run everything against the test server (http; the C++ client also over https would need the
# CA, which the examples do not take: http is the point here).
run() { # binary expected-output-regex
  local o
  o=$("$1" "$KA_HTTP_URL" 2>&1) || { echo "$o" >&2; fail "$1 exited with an error"; }
  grep -Eq "$2" <<< "$o" || { echo "$o" >&2; fail "$1: output does not match /$2/"; }
}
step "run: pkg-config builds (shared, static)"
for kind in shared static; do
  run "$out/c_client-$kind" 'status=200 bytes=13 reused=1'
  run "$out/c_threads-$kind" 'ok=100/100'
  run "$out/c_async-$kind" 'ok=10/10'
  run "$out/cpp_client-$kind" 'status=200 bytes=13 reused=1'
done
ok
step "run: cmake builds (shared, static)"
for kind in shared static; do
  run "$tmp/cmake-$kind/c_client" 'status=200 bytes=13 reused=1'
  run "$tmp/cmake-$kind/c_threads" 'ok=100/100'
  run "$tmp/cmake-$kind/c_async" 'ok=10/10'
  run "$tmp/cmake-$kind/cpp_client" 'connections=1 requests=2'
done
ok
step "run: C++ wrapper example under ASan/UBSan"
LSAN_OPTIONS="suppressions=${C_LSAN_SUPP:-$ROOT/tests/c/lsan.supp}:print_suppressions=0" \
UBSAN_OPTIONS=halt_on_error=1 \
  run "$out/cpp_client-asan" 'connections=1 requests=2'
ok

# ---------------------------------------------------------------------------------------
step "make uninstall PREFIX=$prefix"
$MAKE --no-print-directory -C "$ROOT" uninstall PREFIX="$prefix" > "$tmp/uninstall.log" 2>&1 \
  || { cat "$tmp/uninstall.log"; fail "make uninstall"; }
left=$(find "$prefix" -mindepth 1 \( -type f -o -type l \))
[ -z "$left" ] || fail "files left after uninstall: $left"
left=$(find "$prefix" -mindepth 1)
[ -z "$left" ] || fail "directories left after uninstall: $left"
ok
step "run: static builds with the library uninstalled"
run "$out/c_client-static" 'status=200 bytes=13 reused=1'
run "$tmp/cmake-static/cpp_client" 'connections=1 requests=2'
if "$out/c_client-shared" "$KA_HTTP_URL" > /dev/null 2>&1; then fail "a shared build ran without the library"; fi
ok

step "DESTDIR=$tmp/stage PREFIX=/opt/keepalive-agent install + uninstall"
mkdir -p "$tmp/stage/opt/keepalive-agent/lib" # an existing directory: must survive uninstall
$MAKE --no-print-directory -C "$ROOT" install DESTDIR="$tmp/stage" PREFIX=/opt/keepalive-agent \
  > "$tmp/dinstall.log" 2>&1 || { cat "$tmp/dinstall.log"; fail "make install DESTDIR"; }
[ -f "$tmp/stage/opt/keepalive-agent/lib/libkeepalive_agent.so.$ver" ] || fail "DESTDIR layout"
grep -qx 'prefix=/opt/keepalive-agent' "$tmp/stage/opt/keepalive-agent/lib/pkgconfig/keepalive-agent.pc" \
  || fail "the .pc file does not name the final prefix"
$MAKE --no-print-directory -C "$ROOT" uninstall DESTDIR="$tmp/stage" PREFIX=/opt/keepalive-agent \
  > "$tmp/duninstall.log" 2>&1 || { cat "$tmp/duninstall.log"; fail "make uninstall DESTDIR"; }
[ -z "$(find "$tmp/stage" \( -type f -o -type l \))" ] || fail "DESTDIR files left after uninstall"
[ -d "$tmp/stage/opt/keepalive-agent/lib" ] || fail "uninstall removed a directory it did not create"
[ -z "$(find "$tmp/stage/opt/keepalive-agent" -mindepth 2)" ] || fail "created directories left"
ok

awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "  install test passed in %.1f s\n", b - a }'
