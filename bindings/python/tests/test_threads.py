"""One agent shared by many threads; the GIL is released during requests."""

from __future__ import annotations

import threading

from keepalive_agent import Agent


def test_8_threads_x_500_requests_share_one_agent(srv) -> None:
    n_threads, per_thread = 8, 500
    failures: list = []
    with Agent() as a:

        def worker() -> None:
            try:
                for _ in range(per_thread):
                    r = a.get(srv.http_url)
                    if r.status != 200 or r.body != b"hello, world\n":
                        failures.append(r)
            except BaseException as e:  # pragma: no cover - reported below
                failures.append(e)

        threads = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert failures == []
        st = srv.stats()
        assert st["requests"] == n_threads * per_thread
        assert 1 <= st["accepted"] <= n_threads  # bounded by the threads: connections are reused
        s = a.stats()
        assert s.requests == n_threads * per_thread
        assert s.reused_requests >= n_threads * per_thread - n_threads


def test_gil_is_released_during_a_request(srv) -> None:
    """Two threads each send a 1 s request: both are in flight at the server at once, which
    only happens if the first thread released the GIL inside the native call."""
    with Agent() as a:
        barrier = threading.Barrier(2)
        statuses = []

        def worker() -> None:
            barrier.wait()
            statuses.append(a.get(srv.http_url + "?delay_ms=1000").status)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert statuses == [200, 200]
        # Serialized, the second request would have reused the first one's connection.
        assert srv.stats()["accepted"] == 2


def test_close_waits_for_running_requests(srv) -> None:
    a = Agent()
    result = []
    started = threading.Event()

    def worker() -> None:
        started.set()
        result.append(a.get(srv.http_url + "?delay_ms=500").status)

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    import time

    time.sleep(0.1)
    a.close()  # must not free the agent under the running request
    t.join(timeout=30)
    assert result == [200]
