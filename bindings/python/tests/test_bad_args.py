"""Bad arguments are refused before anything is sent (SPEC §6.31)."""

from __future__ import annotations

import ctypes

import pytest

from keepalive_agent import Agent, _native, errors


def _nothing_sent(srv) -> None:
    st = srv.stats()
    assert st["requests"] == 0 and st["accepted"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nInjected: 1"},
        [("X-Evil", "a\nb")],
        [("X-Evil", "a\x00b")],
        [("Bad Name", "v")],
        [("X-Bad\r\nName", "v")],
    ],
)
def test_header_injection_raises_value_error_and_sends_nothing(srv, headers) -> None:
    with Agent() as a:
        with pytest.raises(ValueError) as ei:
            a.get(srv.http_url, headers=headers)
        assert isinstance(ei.value, errors.InvalidArgumentError) and ei.value.code == 1
    _nothing_sent(srv)


def test_library_also_refuses_injection(srv) -> None:
    """The same check in C (bypassing the Python one) maps to ValueError with the code."""
    with Agent() as a:
        hdr = (_native.agent_header * 1)((b"X-Evil", b"a\r\nInjected: 1"))
        out = ctypes.c_void_p()
        with pytest.raises(ValueError) as ei:
            _native.lib.agent_request(a._handle, b"GET", srv.http_url.encode(), hdr, 1, None, 0, 0, ctypes.byref(out))
        assert isinstance(ei.value, errors.InvalidArgumentError)
        assert ei.value.code == 1 and ei.value.code_name == "AGENT_CODE_INVALID_ARGUMENT"
        assert out.value is None  # outputs are written only on success
        with pytest.raises(ValueError):
            _native.lib.agent_request(a._handle, b"GE T", srv.http_url.encode(), None, 0, None, 0, 0, ctypes.byref(out))
    _nothing_sent(srv)


def test_other_bad_arguments(srv) -> None:
    with Agent() as a:
        for method in ("GE T", "", "GET\r\n"):
            with pytest.raises(ValueError):
                a.request(method, srv.http_url)
        for url in (srv.http_url + " x", srv.http_url + "\x00", srv.http_url + "\r\n"):
            with pytest.raises(ValueError):
                a.get(url)
        for timeout in (-1, 0, float("nan"), float("inf"), 1e10):
            with pytest.raises(ValueError):
                a.get(srv.http_url, timeout=timeout)
        with pytest.raises(ValueError):
            a.post(srv.http_url, body=b"x", json={"a": 1})
        with pytest.raises(TypeError):
            a.get(srv.http_url, timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            a.post(srv.http_url, body=123)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            a.get(srv.http_url, headers={"X-Num": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            a.get(srv.http_url, headers="X-A: b")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            a.get(b"http://127.0.0.1/")  # type: ignore[arg-type]
    _nothing_sent(srv)
