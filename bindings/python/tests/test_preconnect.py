"""Agent.preconnect: connections opened in the background before the first request."""

from __future__ import annotations

import threading

import pytest

from keepalive_agent import Agent, errors

from conftest import wait_until


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_preconnect_then_requests_open_none(srv, scheme: str) -> None:
    url = srv.http_url if scheme == "http" else srv.https_url
    with Agent(ca_file=srv.ca_file) as a:
        a.preconnect(url, 4)  # returns at once; the connections open in the background
        wait_until(lambda: a.stats().idle == 4, timeout=10, what="4 idle preconnected connections")
        st = srv.stats()
        assert (st["accepted"], st["requests"]) == (4, 0)
        assert a.stats().connections_opened == 4

        # Four requests at once find them warm: the server accepts no other connection.
        barrier = threading.Barrier(4)
        results = []

        def one() -> None:
            barrier.wait()
            results.append(a.get(url))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 4 and all(r.status == 200 and r.reused for r in results)
        st = srv.stats()
        assert (st["accepted"], st["requests"]) == (4, 4)

        # Already there: asking again opens nothing.
        a.preconnect(url, 4)
        a.preconnect(url, 0)
        assert srv.stats()["accepted"] == 4


def test_preconnect_does_nothing_with_keep_alive_off(srv) -> None:
    with Agent(keep_alive=False) as a:
        a.preconnect(srv.http_url, 3)
        assert a.get(srv.http_url).status == 200
        assert srv.stats()["accepted"] == 1
        assert a.stats().connections_opened == 1


def test_preconnect_bad_arguments() -> None:
    with Agent() as a:
        with pytest.raises(errors.InvalidURLError):
            a.preconnect("nope://x", 1)
        with pytest.raises(TypeError):
            a.preconnect("http://127.0.0.1:1/", "2")
        with pytest.raises(errors.InvalidArgumentError):
            a.preconnect("http://127.0.0.1:1/", -1)
    with pytest.raises(errors.CancelledError):
        a.preconnect("http://127.0.0.1:1/", 1)
