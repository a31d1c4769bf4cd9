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


# ---------------------------------------------------------------------------------------
# The standard library's exception classes, raise_for_status() and ok


def test_connect_error_is_a_builtin_connection_error() -> None:
    with Agent() as a:
        try:
            a.get(f"http://127.0.0.1:{free_port()}/")
        except ConnectionError as e:  # the builtin: code written for sockets catches it
            caught: BaseException = e
        else:  # pragma: no cover
            raise AssertionError("no error")
    assert isinstance(caught, errors.ConnectError) and isinstance(caught, OSError)
    assert caught.errno is None and caught.args == (caught.message,)  # type: ignore[attr-defined]
    assert issubclass(errors.ProxyError, ConnectionError)
    assert not issubclass(errors.ProtocolError, OSError)  # a broken exchange is not a connect failure


def test_tls_error_is_an_ssl_error_and_a_connect_error(srv) -> None:
    import ssl

    assert errors.TLSError.__mro__[:6] == (
        errors.TLSError, errors.ConnectError, errors.AgentError, ConnectionError, ssl.SSLError, OSError,
    )
    with Agent() as a:
        with pytest.raises(ssl.SSLError) as ei:
            a.get(srv.https_url)  # the test CA is unknown
    e = ei.value
    assert type(e) is errors.TLSError and isinstance(e, ConnectionError)
    assert "unknown issuer" in e.message and str(e).endswith("[AGENT_CODE_TLS]")


def test_timeout_error_stays_the_builtin() -> None:
    assert issubclass(errors.TimeoutError, builtins.TimeoutError)
    assert not issubclass(errors.TimeoutError, errors.ConnectError)


def test_new_bases_pickle() -> None:
    import pickle

    for cls, code in ((errors.ConnectError, 11), (errors.ProxyError, 14), (errors.TLSError, 20)):
        e = pickle.loads(pickle.dumps(cls(code, "why")))
        assert type(e) is cls and (e.code, e.message, str(e)) == (code, "why", f"why [{e.code_name}]")


def test_messages_spell_options_as_python_keywords() -> None:
    from keepalive_agent import _native

    c_message = "the server requires a client certificate (give client_cert and client_key)"
    e = _native.error_for(_native.CODES["TLS"], c_message)
    assert type(e) is errors.TLSError
    assert e.message == (
        "the server requires a client certificate (give client_cert_file and client_key_file,"
        " or client_cert_pem and client_key_pem)"
    )
    # Names Python shares with C are left alone.
    kept = "ca_file /x: No such file or directory (os error 2)"
    assert _native.error_for(_native.CODES["INVALID_OPTION"], kept).message == kept
    with pytest.raises(errors.InvalidOptionError) as ei:
        Agent(ca_file="/nonexistent/ca.pem")
    assert ei.value.message.startswith("ca_file /nonexistent/ca.pem")


def test_raise_for_status_and_ok(srv) -> None:
    with Agent() as a:
        r = a.get(srv.http_url)
        assert r.ok and r.raise_for_status() is r
        r = a.get(srv.http_url + "?status=302")
        assert r.ok and r.raise_for_status() is r  # as requests: below 400 is ok
        r = a.get(srv.http_url + "?status=404")
        assert not r.ok
        with pytest.raises(errors.HTTPStatusError) as ei:
            r.raise_for_status()
        e = ei.value
        assert e.response is r and isinstance(e, errors.AgentError) and e.code == 0
        assert str(e) == f"404 Client Error: Not Found for url: {srv.http_url}?status=404"
        r = a.post(srv.http_url + "?status=503", body=b"x")
        with pytest.raises(keepalive_agent.HTTPStatusError, match=r"^503 Server Error: Service Unavailable for url: "):
            r.raise_for_status()

        with a.stream("GET", srv.http_url + "?status=500&bytes=10") as s:
            assert not s.ok
            with pytest.raises(errors.HTTPStatusError) as ei:
                s.raise_for_status()
            assert ei.value.response is s and s.read() == b"abcdefghij"  # the stream stays usable
        with a.stream("GET", srv.http_url) as s:
            assert s.raise_for_status() is s

    async def main() -> None:
        async with Agent() as aa:
            async with aa.stream_async("GET", srv.http_url + "?status=429") as s:
                with pytest.raises(errors.HTTPStatusError, match="^429 Client Error: Too Many Requests"):
                    s.raise_for_status()
            r = await aa.aget(srv.http_url + "?status=404")
            with pytest.raises(errors.HTTPStatusError):
                r.raise_for_status()

    import asyncio

    asyncio.run(main())


def test_http_status_error_pickles_with_its_response(srv) -> None:
    import pickle

    with Agent() as a:
        r = a.get(srv.http_url + "?status=418")
    with pytest.raises(errors.HTTPStatusError) as ei:
        r.raise_for_status()
    e = pickle.loads(pickle.dumps(ei.value))
    assert type(e) is errors.HTTPStatusError and str(e) == str(ei.value)
    assert e.response is not None and (e.response.status, e.response.body) == (418, r.body)
    assert str(errors.HTTPStatusError("601 Error: Unknown for url: x")) == "601 Error: Unknown for url: x"
