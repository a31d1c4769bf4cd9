"""1 GiB down and up through streams with flat RSS, checked end to end (the download
against the server's pattern, the upload against the server's FNV-1a of what it got).

The upload body is generated, never held: blocks of BLOCK bytes, each an 8-byte
big-endian block index followed by zeros. Its FNV-1a can be computed without walking
every byte (a zero byte only multiplies the hash by the prime), so the check costs
nothing next to the transfer; :func:`test_marked_body_hash_matches_the_byte_by_byte_one`
checks that shortcut against the plain definition.
"""

from __future__ import annotations

import gc
import io
import os
import time
from typing import Any, Dict, Iterator

import pytest

from keepalive_agent import Agent

from conftest import FNV_OFFSET, FNV_PRIME, echo_framing, fnv1a64, pattern, rss

GIB = 1 << 30
RSS_LIMIT = 32 << 20
BLOCK = 100_000  # not a multiple of the library's 64 KiB pieces, on purpose
_ZEROS = bytes(BLOCK)


def _marker(i: int) -> bytes:
    return i.to_bytes(8, "big")


def marked_fnv(total: int, block: int = BLOCK) -> int:
    """FNV-1a 64 of the marked body of ``total`` bytes."""
    mod = 1 << 64
    h = FNV_OFFSET
    full_tail = pow(FNV_PRIME, block - 8, mod)
    for i in range(-(-total // block)):
        size = min(block, total - i * block)
        marker = _marker(i)[:size]
        h = fnv1a64(marker, h)
        tail = size - len(marker)
        h = h * (full_tail if tail == block - 8 else pow(FNV_PRIME, tail, mod)) % mod
    return h


def marked_blocks(total: int) -> Iterator[bytes]:
    """The marked body as a generator of blocks."""
    for i in range(-(-total // BLOCK)):
        size = min(BLOCK, total - i * BLOCK)
        yield (_marker(i) + _ZEROS[: BLOCK - 8])[:size]


class MarkedFile(io.RawIOBase):
    """The marked body as a seekable binary file, made up as it is read."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.total}[whence]
        self.pos = base + pos
        return self.pos

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self.total - self.pos))
        start = self.pos
        done = 0
        while done < n:  # zeros, then the markers that fall in [start, start + n)
            k = min(n - done, len(_ZEROS))
            view[done : done + k] = _ZEROS[:k]
            done += k
        first = start // BLOCK
        for i in range(first, (start + n - 1) // BLOCK + 1 if n else first):
            m0 = i * BLOCK
            lo, hi = max(m0, start), min(m0 + 8, start + n, self.total)
            if lo < hi:
                view[lo - start : hi - start] = _marker(i)[lo - m0 : hi - m0]
        self.pos += n
        return n


def test_marked_body_hash_matches_the_byte_by_byte_one() -> None:
    for total in (0, 5, BLOCK, 3 * BLOCK + 17, 250_007):
        data = b"".join(marked_blocks(total))
        assert len(data) == total
        assert marked_fnv(total) == fnv1a64(data)
        f = MarkedFile(total)
        got = bytearray()
        buf = bytearray(65_537)
        while True:
            k = f.readinto(buf)
            if not k:
                break
            got += buf[:k]
        assert got == data


def _report(name: str, info: Dict[str, Any]) -> None:
    print(f"\n{name}: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def test_1gib_download_with_flat_rss(srv) -> None:
    buf = bytearray(26 * 40330)  # a multiple of the pattern's period: every full read starts at 'a'
    expected = pattern(0, len(buf))
    with Agent() as a:
        # Warm up: the same path, so that allocator arenas and buffers exist before measuring.
        with a.stream("GET", srv.http_url + f"?bytes={32 << 20}") as r:
            while r.readinto(buf):
                pass
        gc.collect()
        base = peak = rss()
        got = 0
        reads = 0
        t0 = time.monotonic()
        with a.stream("GET", srv.http_url + f"?bytes={GIB}") as r:
            while True:
                k = r.readinto(buf)  # straight into our buffer
                if not k:
                    break
                if k == len(buf):
                    assert buf == expected, f"pattern mismatch in [{got}, {got + k})"
                else:
                    assert buf[:k] == pattern(got, k), f"pattern mismatch in [{got}, {got + k})"
                got += k
                reads += 1
                if reads % 8 == 0:
                    peak = max(peak, rss())
        elapsed = time.monotonic() - t0
        end = rss()
        assert got == GIB
        assert a.stats().idle == 1  # read to the end: the connection is back in the pool
    _report("1 GiB download", {
        "MB/s": round(GIB / elapsed / 1e6), "s": round(elapsed, 2), "rss_base_MiB": base >> 20,
        "peak_growth_KiB": (peak - base) >> 10, "end_growth_KiB": (end - base) >> 10,
    })
    assert peak - base < RSS_LIMIT, f"RSS grew by {(peak - base) >> 20} MiB during a 1 GiB download"
    assert end - base < RSS_LIMIT


@pytest.mark.parametrize("kind", ["file", "generator"])
def test_1gib_upload_with_flat_rss(srv, kind: str) -> None:
    total = GIB
    samples = []  # RSS, sampled while the library reads the body (on this thread)

    def sampled_blocks(n: int) -> Iterator[bytes]:
        for i, block in enumerate(marked_blocks(n)):
            if i % 64 == 0:
                samples.append(rss())
            yield block

    class SampledFile(MarkedFile):
        calls = 0

        def readinto(self, b: Any) -> int:  # type: ignore[override]
            self.calls += 1
            if self.calls % 64 == 0:
                samples.append(rss())
            return super().readinto(b)

    def body(n: int) -> Any:
        return SampledFile(n) if kind == "file" else sampled_blocks(n)

    with Agent() as a:
        assert a.post(srv.http_url + "?echo=1", body=body(16 << 20)).json()["body_len"] == 16 << 20  # warm-up
        gc.collect()
        samples.clear()
        base = rss()
        t0 = time.monotonic()
        r = a.post(srv.http_url + "?echo=1", body=body(total))
        elapsed = time.monotonic() - t0
        end = rss()
        e = r.json()
        assert e["body_len"] == total
        assert e["body_fnv"] == f"{marked_fnv(total):016x}"
        framing = {"content-length": str(total)} if kind == "file" else {"transfer-encoding": "chunked"}
        assert echo_framing(e) == framing
        assert len(samples) > 100
    peak = max(samples + [end])
    _report(f"1 GiB upload from a {kind}", {
        "MB/s": round(total / elapsed / 1e6), "s": round(elapsed, 2), "rss_base_MiB": base >> 20,
        "peak_growth_KiB": (peak - base) >> 10, "end_growth_KiB": (end - base) >> 10,
    })
    assert peak - base < RSS_LIMIT, f"RSS grew by {(peak - base) >> 20} MiB during the upload"
    assert end - base < RSS_LIMIT
