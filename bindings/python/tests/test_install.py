"""`pip install ./bindings/python` in a fresh venv gives a self-contained, working package.

Needs PyPI (for the isolated build's setuptools) and cargo; about 15 s. Skip with
KEEPALIVE_AGENT_SKIP_INSTALL_TEST=1.
"""

from __future__ import annotations

import json
import os
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
