"""Build hook of the keepalive_agent package (metadata lives in pyproject.toml).

The backend is plain setuptools (``setuptools.build_meta``). One command is replaced:
``build_py`` also runs ``cargo build --release -p keepalive-agent`` at the root of the
keepalive-agent checkout this directory belongs to, and copies
``target/release/libkeepalive_agent.so`` into the package (stripped, its debug info left in
``target/release/libkeepalive_agent.so.debug`` by ``scripts/split-debug.sh``), so ``pip
install ./bindings/python`` gives a self-contained install. The wheel is tagged
``py3-none-manylinux_<glibc>_<arch>`` (pure Python code, one native library, no Python C
API): the glibc version is the newest one the library's symbols ask for, which is what
auditwheel allows (``make test-python`` checks it with ``auditwheel show``).

Environment:
  CARGO                        the cargo binary (default: cargo on PATH)
  KEEPALIVE_AGENT_SKIP_CARGO=1 do not run cargo; copy the library if it was built already
  KEEPALIVE_AGENT_PLAT=<tag>   the wheel's platform tag instead of the computed manylinux one
"""

import os
import platform
import re
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
        split = root / "scripts" / "split-debug.sh"
        lib = root / "target" / "release" / LIBRARY
        if split.is_file() and lib.is_file() and shutil.which("objcopy"):
            subprocess.run(
                [str(split), str(lib), str(lib.with_suffix(".a"))], cwd=str(root), check=True
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


def manylinux(plat):
    """``manylinux_X_Y_<arch>`` for the newest glibc symbol version the library needs
    (PEP 600), or ``plat`` when that cannot be told (not Linux, no library, no objdump)."""
    root = repo_root()
    lib = root / "target" / "release" / LIBRARY if root else None
    if not plat.startswith("linux_") or lib is None or not lib.is_file() or not shutil.which("objdump"):
        return plat
    out = subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True).stdout
    versions = {tuple(int(x) for x in m) for m in re.findall(r"GLIBC_(\d+)\.(\d+)", out)}
    if not versions:
        return plat
    major, minor = max(versions)
    return "manylinux_%d_%d_%s" % (major, minor, platform.machine())


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
            return "py3", "none", os.environ.get("KEEPALIVE_AGENT_PLAT") or manylinux(plat)

    cmdclass["bdist_wheel"] = bdist_wheel

from setuptools.dist import Distribution  # noqa: E402


class BinaryDistribution(Distribution):
    """Carries a native library: installed to platlib, so the wheel is a platform wheel
    that auditwheel can check."""

    def has_ext_modules(self):
        return True


setup(cmdclass=cmdclass, distclass=BinaryDistribution)
