"""Build hook of the keepalive_agent package (metadata lives in pyproject.toml).

The backend is plain setuptools (``setuptools.build_meta``). One command is replaced:
``build_py`` also runs ``cargo build --release -p keepalive-agent`` at the root of the
keepalive-agent checkout this directory belongs to, and copies
``target/release/libkeepalive_agent.so`` into the package, so ``pip install
./bindings/python`` gives a self-contained install. The wheel is tagged
``py3-none-<platform>`` (pure Python code, one native library, no Python C API).

Environment:
  CARGO                        the cargo binary (default: cargo on PATH)
  KEEPALIVE_AGENT_SKIP_CARGO=1 do not run cargo; copy the library if it was built already
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
LIBRARY = "libkeepalive_agent.dylib" if sys.platform == "darwin" else "libkeepalive_agent.so"


def repo_root():
    for parent in HERE.parents:
        if (parent / "Cargo.toml").is_file() and (parent / "include" / "keepalive_agent.h").is_file():
            return parent
    return None


def native_library():
    """Builds the library with cargo (unless told not to) and returns its path, or None."""
    root = repo_root()
    if root is None:
        print(
            "keepalive_agent: not inside the keepalive-agent repository; installing without "
            "the native library (set KEEPALIVE_AGENT_LIB at run time)",
            file=sys.stderr,
        )
        return None
    if os.environ.get("KEEPALIVE_AGENT_SKIP_CARGO") != "1":
        cargo = os.environ.get("CARGO", "cargo")
        cmd = [cargo, "build", "--release", "-p", "keepalive-agent"]
        print("keepalive_agent: running " + " ".join(cmd) + " in " + str(root), file=sys.stderr)
        try:
            subprocess.run(cmd, cwd=str(root), check=True)
        except FileNotFoundError:
            raise SystemExit(
                "keepalive_agent: cargo not found (install Rust, set CARGO, or set "
                "KEEPALIVE_AGENT_SKIP_CARGO=1 to install without building)"
            )
    lib = root / "target" / "release" / LIBRARY
    if not lib.is_file():
        if os.environ.get("KEEPALIVE_AGENT_SKIP_CARGO") == "1":
            print("keepalive_agent: " + str(lib) + " not built; installing without it", file=sys.stderr)
            return None
        raise SystemExit("keepalive_agent: cargo succeeded but " + str(lib) + " is missing")
    return lib


class build_py_with_cargo(build_py):
    """build_py + the native library copied into the package."""

    def run(self):
        super().run()
        lib = native_library()
        if lib is None or getattr(self, "editable_mode", False):
            # Editable installs find the library in the repo's target/ at run time.
            return
        dest = Path(self.build_lib) / "keepalive_agent" / LIBRARY
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(lib), str(dest))
        self._native_outputs = [str(dest)]

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + getattr(self, "_native_outputs", [])


cmdclass = {"build_py": build_py_with_cargo}

try:
    from setuptools.command.bdist_wheel import bdist_wheel as _bdist_wheel
except ImportError:  # setuptools < 70.1
    try:
        from wheel.bdist_wheel import bdist_wheel as _bdist_wheel
    except ImportError:
        _bdist_wheel = None

if _bdist_wheel is not None:

    class bdist_wheel(_bdist_wheel):
        """A platform wheel (it carries a native library) usable by any Python 3."""

        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, plat = super().get_tag()
            return "py3", "none", plat

    cmdclass["bdist_wheel"] = bdist_wheel

setup(cmdclass=cmdclass)
