"""Every error class from a real failure against the test server."""

from __future__ import annotations

import builtins

import pytest

import keepalive_agent
from keepalive_agent import Agent, errors

from conftest import free_port


def test_refused_port_is_connect_error() -> None:
    with Agent() as a:
        with pytest.raises(errors.ConnectError) as ei:
            a.get(f"http://127.0.0.1:{free_port()}/")
    e = ei.value
    assert isinstance(e, errors.AgentError)
    assert e.code == 11 and e.code_name == "AGENT_CODE_CONNECT_REFUSED"
    assert "refused" in e.message.lower() and "AGENT_CODE_CONNECT_REFUSED" in str(e)


def test_unknown_ca_is_tls_error(srv) -> None:
    with Agent() as a:  # system roots only: the test CA is unknown
        with pytest.raises(errors.TLSError) as ei:
            a.get(srv.https_url)
    assert ei.value.code == 20 and ei.value.code_name == "AGENT_CODE_TLS"
    with Agent(ca_file=srv.ca_file) as a:  # a self-signed certificate stays untrusted
        with pytest.raises(errors.TLSError):
            a.get(srv.https_self_signed_url)
        assert a.get(srv.https_url).status == 200


def test_deadline_is_timeout_error(srv) -> None:
    with Agent() as a:
        with pytest.raises(errors.TimeoutError) as ei:
            a.get(srv.http_url + "?delay_ms=3000", timeout=0.2)
        e = ei.value
        assert isinstance(e, builtins.TimeoutError) and isinstance(e, errors.AgentError)
        assert e.code == 32 and e.code_name == "AGENT_CODE_TIMEOUT"
        assert a.stats().timeouts == 1
        assert a.get(srv.http_url).status == 200  # the agent is fine afterwards


def test_headers_and_body_timeouts(srv) -> None:
    with Agent(headers_timeout_msecs=200) as a:
        with pytest.raises(keepalive_agent.TimeoutError) as ei:
            a.get(srv.http_url + "?delay_ms=3000")
        assert ei.value.code_name == "AGENT_CODE_HEADERS_TIMEOUT"
    with Agent(body_timeout_msecs=200) as a:
        with pytest.raises(builtins.TimeoutError) as ei2:
            a.get(srv.http_url + "?chunked=1&chunks=3&chunk_delay_ms=2000")
        assert ei2.value.code_name == "AGENT_CODE_BODY_TIMEOUT"  # type: ignore[attr-defined]


def test_reset_mid_body_is_protocol_error(srv) -> None:
    with Agent() as a:
        with pytest.raises(errors.ProtocolError) as ei:
            a.get(srv.http_url + "?rst_mid=1&bytes=1000000")
        assert ei.value.code == 40 and ei.value.code_name == "AGENT_CODE_CONNECTION_RESET"
        assert a.stats().idle == 0  # that connection is gone from the pool


def test_response_too_large(srv) -> None:
    with Agent(max_response_bytes=100) as a:
        with pytest.raises(errors.ResponseTooLargeError) as ei:
            a.get(srv.http_url + "?bytes=1000")
        assert isinstance(ei.value, errors.ProtocolError) and ei.value.code == 45


def test_stale_post_fails_and_stale_get_is_retried(srv) -> None:
    with Agent() as a:
        a.get(srv.http_url)  # one pooled connection
        with pytest.raises(errors.StaleConnectionError) as ei:
            a.post(srv.http_url + "?rst_if_reused=1", body=b"payload")
        assert ei.value.code == 43 and ei.value.code_name == "AGENT_CODE_STALE_CONNECTION"
        assert a.stats().retries == 0

        a.get(srv.http_url)  # pool a connection again
        srv.reset()
        r = a.get(srv.http_url + "?rst_if_reused=1")  # RST on reuse, retried on a new one
        assert r.status == 200 and not r.reused
        assert a.stats().retries == 1
        assert srv.stats()["accepted"] == 1


def test_invalid_url_from_the_library_is_value_error() -> None:
    with Agent() as a:
        for url in ("ftp://127.0.0.1/", "/relative", "http://user:pw@127.0.0.1/"):
            with pytest.raises(ValueError) as ei:
                a.get(url)
            assert isinstance(ei.value, errors.InvalidURLError)
            assert ei.value.code == 2 and ei.value.code_name == "AGENT_CODE_INVALID_URL"


def test_errors_pickle() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(errors.TimeoutError(32, "late")))
    assert type(e) is errors.TimeoutError and e.code == 32 and e.message == "late"
