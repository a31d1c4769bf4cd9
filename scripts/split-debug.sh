#!/usr/bin/env bash
# split-debug.sh SO STATIC_LIB: moves the debug info of a freshly built shared library into
# SO.debug (linked from SO by .gnu_debuglink, found there by gdb, valgrind and addr2line), and
# strips the symbol table and debug info that a program does not need from both libraries.
# The debug file's sections are zlib-compressed (gdb, addr2line and valgrind read them).
# Idempotent: a library without debug info (already split) is left alone, so an up-to-date
# build never overwrites SO.debug with an empty one. `make lib` runs it every time, because
# any `cargo build --release` links the unstripped library into target/release again.
set -euo pipefail
so=$1 static=$2
# (grep reads all of readelf's output: with pipefail, grep -q stopping early would fail the
# pipe through readelf's SIGPIPE.)
has_debug() { readelf -S "$1" 2>/dev/null | grep -c '\.debug_line' > /dev/null; }
if has_debug "$so"; then
  dir=$(dirname "$so") base=$(basename "$so")
  # objcopy writes new files (cargo hard-links its outputs; those are left as they are).
  objcopy --only-keep-debug --compress-debug-sections=zlib "$so" "$so.debug.tmp"
  mv -f "$so.debug.tmp" "$so.debug"
  (cd "$dir" && objcopy --strip-unneeded --add-gnu-debuglink="$base.debug" "$base" "$base.tmp" \
     && mv -f "$base.tmp" "$base")
fi
if [ -f "$static" ] && has_debug "$static"; then
  objcopy --strip-debug "$static" "$static.tmp"
  mv -f "$static.tmp" "$static"
fi
