#!/usr/bin/env bash
# c-install.sh install|uninstall: `make install` / `make uninstall` for C and C++ users.
#
# Layout under $DESTDIR$PREFIX (PREFIX absolute; DESTDIR optional, for staging/packaging):
#   lib/libkeepalive_agent.so.X.Y.Z, .so.X -> .so.X.Y.Z, .so -> .so.X     (SONAME .so.X)
#   lib/.debug/libkeepalive_agent.so.debug   debug info of the shared library (its .gnu_debuglink)
#   lib/libkeepalive_agent.a
#   include/keepalive_agent.h, include/keepalive_agent.hpp
#   lib/pkgconfig/keepalive-agent.pc, keepalive-agent-static.pc
#   lib/cmake/keepalive_agent/keepalive_agentConfig.cmake (+ ConfigVersion.cmake)
#   share/keepalive-agent/install-manifest.txt   every file, link and directory created
# `uninstall` removes exactly what the manifest lists (directories only when empty).
#
# Environment (set by mk/c.mk): PREFIX DESTDIR ROOT SO STATIC_LIB HEADER HPP VERSION STATIC_LIBS
set -euo pipefail

mode=${1:-}
: "${PREFIX:?PREFIX is required}"
case "$PREFIX" in
  /*) ;;
  *) echo "c-install: PREFIX must be an absolute path (got '$PREFIX')" >&2; exit 2 ;;
esac
PREFIX=${PREFIX%/}
dest="${DESTDIR:-}${PREFIX}"
manifest_rel=share/keepalive-agent/install-manifest.txt
manifest="$dest/$manifest_rel"

install_all() {
  : "${SO:?}" "${STATIC_LIB:?}" "${HEADER:?}" "${HPP:?}" "${VERSION:?}" "${ROOT:?}"
  local major=${VERSION%%.*} rest=${VERSION#*.}
  local minor=${rest%%.*}
  local soname="libkeepalive_agent.so.$major"
  local lines=()

  # The library must carry the SONAME the links below promise.
  if ! readelf -d "$SO" | grep -q "Library soname: \[$soname\]"; then
    echo "c-install: $SO does not have SONAME $soname" >&2
    exit 1
  fi

  mkdir -p "$dest"
  # Keep what an earlier install recorded (so its directories are still removed later).
  if [ -f "$manifest" ]; then
    mapfile -t lines < "$manifest"
  fi

  mkdirs() { # relative directory: create and record each missing component
    local path="" part
    local IFS=/
    for part in $1; do
      path=${path:+$path/}$part
      if [ ! -d "$dest/$path" ]; then
        mkdir "$dest/$path"
        lines+=("d $path")
      fi
    done
  }
  put() { # src rel mode
    mkdirs "$(dirname "$2")"
    install -m "$3" "$1" "$dest/$2"
    lines+=("f $2")
  }
  link() { # target rel
    mkdirs "$(dirname "$2")"
    ln -sfn "$1" "$dest/$2"
    lines+=("l $2")
  }
  gen() { # template rel
    local cmake_libs
    cmake_libs=$(printf '%s\n' $STATIC_LIBS | sed -n 's/^-l//p' | paste -sd';' -)
    mkdirs "$(dirname "$2")"
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@VERSION@|$VERSION|g" -e "s|@MAJOR@|$major|g" \
        -e "s|@MINOR@|$minor|g" -e "s|@STATIC_LIBS@|$STATIC_LIBS|g" \
        -e "s|@CMAKE_STATIC_LIBS@|$cmake_libs|g" -e "s|@SIZEOF_VOID_P@|$(getconf LONG_BIT | awk '{print $1/8}')|g" \
        "$1" > "$dest/$2"
    chmod 644 "$dest/$2"
    lines+=("f $2")
  }

  put "$SO" "lib/libkeepalive_agent.so.$VERSION" 755
  link "libkeepalive_agent.so.$VERSION" "lib/$soname"
  link "$soname" "lib/libkeepalive_agent.so"
  # gdb, valgrind and addr2line look for the debug link's name in lib/.debug/.
  if [ -f "$SO.debug" ]; then
    put "$SO.debug" "lib/.debug/libkeepalive_agent.so.debug" 644
  fi
  put "$STATIC_LIB" "lib/libkeepalive_agent.a" 644
  put "$HEADER" "include/keepalive_agent.h" 644
  put "$HPP" "include/keepalive_agent.hpp" 644
  gen "$ROOT/cmake/keepalive-agent.pc.in" "lib/pkgconfig/keepalive-agent.pc"
  gen "$ROOT/cmake/keepalive-agent-static.pc.in" "lib/pkgconfig/keepalive-agent-static.pc"
  gen "$ROOT/cmake/keepalive_agentConfig.cmake.in" "lib/cmake/keepalive_agent/keepalive_agentConfig.cmake"
  gen "$ROOT/cmake/keepalive_agentConfigVersion.cmake.in" \
      "lib/cmake/keepalive_agent/keepalive_agentConfigVersion.cmake"
  mkdirs "$(dirname "$manifest_rel")"
  lines+=("f $manifest_rel")

  printf '%s\n' "${lines[@]}" | awk '!seen[$0]++' > "$manifest"
  echo "installed keepalive-agent $VERSION into $dest:"
  grep -v '^d ' "$manifest" | sed 's/^[fl] /  /'
}

uninstall_all() {
  if [ ! -f "$manifest" ]; then
    echo "c-install: nothing to uninstall in $dest (no $manifest_rel)"
    return 0
  fi
  local kind rel
  # Files and links first, the manifest last; then recorded directories, deepest first.
  while read -r kind rel; do
    case "$kind" in
      f|l) [ "$rel" = "$manifest_rel" ] || rm -f "$dest/$rel" ;;
    esac
  done < "$manifest"
  local dirs
  dirs=$(sed -n 's/^d //p' "$manifest" | awk '{print gsub("/", "/"), $0}' | sort -rn | cut -d' ' -f2-)
  rm -f "$manifest"
  for rel in $dirs; do
    rmdir "$dest/$rel" 2>/dev/null || true # only when empty: never another package's files
  done
  echo "uninstalled keepalive-agent from $dest"
}

case "$mode" in
  install) install_all ;;
  uninstall) uninstall_all ;;
  *) echo "usage: $0 install|uninstall (with PREFIX=..., optional DESTDIR=...)" >&2; exit 2 ;;
esac
