"""`pip install ./bindings/python` in a fresh venv gives a self-contained, working package;
and the binary wheel (`pip wheel ./bindings/python`) carries a manylinux tag that auditwheel
agrees with and installs where there is no cargo and no C compiler.

Needs PyPI (for the isolated build's setuptools) and cargo; about 20 s. Skip with
KEEPALIVE_AGENT_SKIP_INSTALL_TEST=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
import keepalive_agent as k
with k.Agent() as a:
    r = a.get(sys.argv[1])
print(json.dumps({"file": k.__file__, "lib": str(k.library_path), "status": r.status,
                  "typed": __import__("os").path.isfile(__import__("os").path.join(
                      __import__("os").path.dirname(k.__file__), "py.typed"))}))
"""


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("KEEPALIVE_AGENT_SKIP_INSTALL_TEST") == "1", reason="asked to skip")
def test_pip_install_in_a_fresh_venv(tmp_path: Path, srv) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("KEEPALIVE_AGENT_LIB", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    p = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(PACKAGE_DIR)],
        env=env, capture_output=True, text=True, timeout=540,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CHECK, srv.http_url],
        env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    pkg = Path(out["file"]).parent
    assert str(pkg).startswith(str(venv))  # the installed copy, not the source tree
    assert Path(out["lib"]) == pkg / "libkeepalive_agent.so"  # its own library copy
    assert out["status"] == 200 and out["typed"]


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("KEEPALIVE_AGENT_SKIP_INSTALL_TEST") == "1", reason="asked to skip")
def test_the_wheel_is_manylinux_and_installs_without_cargo_or_a_compiler(tmp_path: Path, srv) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KEEPALIVE_AGENT_LIB", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The wheel of the library make built (no cargo run), as `pip wheel` makes it.
    wheels = tmp_path / "wheels"
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(PACKAGE_DIR)],
        env={**env, "KEEPALIVE_AGENT_SKIP_CARGO": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = wheels.glob("*.whl")
    m = re.fullmatch(r"keepalive_agent-[^-]+-py3-none-(manylinux_\d+_\d+_x86_64)\.whl", wheel.name)
    assert m, wheel.name
    # auditwheel reads the library's symbol versions and names the tag they allow.
    p = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    shown = " ".join(p.stdout.split())
    assert f'is consistent with the following platform tag: "{m.group(1)}"' in shown, p.stdout
    assert wheel.stat().st_size < 4 << 20, wheel.stat().st_size  # the stripped library

    # A fresh venv, and a PATH with neither cargo nor a C compiler on it.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("sh", "env"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    path = f"{venv / 'bin'}:{bare}"
    for tool in ("cc", "gcc", "clang", "cargo", "rustc"):
        assert shutil.which(tool, path=path) is None, tool
    env_bare = {**env, "PATH": path}
    py = str(venv / "bin" / "python")
    p = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", str(wheel)],
                       env=env_bare, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([py, "-c", CHECK, srv.http_url], env=env_bare, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    pkg = Path(out["file"]).parent
    assert str(pkg).startswith(str(venv))
    assert Path(out["lib"]) == pkg / "libkeepalive_agent.so"
    assert out["status"] == 200 and out["typed"]
    # The package's metadata declares its extras.
    p = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.metadata('keepalive_agent').get_all('Provides-Extra'))"],
                       env=env_bare, capture_output=True, text=True, timeout=60)
    assert "requests" in p.stdout and "httpx" in p.stdout, p.stdout + p.stderr
