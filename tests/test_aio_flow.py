"""sslports.aio flow control: back-pressure both ways, reads and writes of every shape, and a
renegotiation in the middle of a stream."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import socket
import ssl
import threading
import time
import tracemalloc
from typing import Any, Callable

import pytest
from conftest import LOCAL, random_bytes, read_exactly, run_in_thread
from test_aio import LOOPS, client_context, run, server_context

import sslports
from sslports import SSLNetworkError, aio

MIB = 1 << 20


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_back_pressure_both_ways(loop_kind: str) -> None:
    """A client that stops reading: its unread plaintext stays bounded (the transport stops
    reading) and the server's drain() waits (the sender is paused), then all of it arrives."""
    total = 48 * MIB
    chunk = bytes(range(256)) * 256  # 64 KiB

    async def main() -> None:
        sent = 0

        async def flood(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            nonlocal sent
            while sent < total:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
            await writer.shutdown()
            writer.close()

        server = await aio.start_ssl_server(flood, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection("localhost", port, client_context())
            conn: Any = reader._sslports_conn
            deadline = time.monotonic() + 10
            while not conn.paused_reading:  # the client reads nothing meanwhile
                assert time.monotonic() < deadline, "the transport never stopped reading"
                await asyncio.sleep(0.01)
            while True:  # the kernel's buffers fill up, then the server's drain() waits
                stalled = sent
                await asyncio.sleep(0.2)
                if sent == stalled or time.monotonic() > deadline:
                    break
            assert sent == stalled < total, "the server's drain() did not wait"
            assert len(conn.plain) <= aio._READ_HIGH + aio._BUF
            digest = hashlib.sha1()
            got = 0
            while True:
                data = await reader.read(MIB)
                if not data:
                    break
                got += len(data)
                digest.update(data)
            assert got == total
            assert digest.digest() == hashlib.sha1(chunk * (total // len(chunk))).digest()
            writer.close()
            await writer.wait_closed()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_reads_of_every_shape_and_writes_of_every_buffer(loop_kind: str) -> None:
    """Exact-size reads return the record as it came; larger and smaller reads split and join
    it; bytearray, memoryview and empty writes work; a write after close is dropped (as
    asyncio's transports drop it), not raised."""

    async def echo(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection("localhost", port, client_context())
            writer.write(b"exact")
            assert await reader.readexactly(5) == b"exact"
            writer.write(bytearray(b"split-me"))
            assert await reader.readexactly(5) == b"split"
            assert await reader.readexactly(3) == b"-me"
            writer.write(memoryview(b"..abc..")[2:5])
            writer.write(b"")
            writer.writelines([b"d", b"e", b"f\n"])
            assert await reader.readline() == b"abcdef\n"
            assert await reader.readexactly(0) == b""
            writer.write(b"xy")
            assert await reader.read(1) == b"x"
            assert await reader.read(10) == b"y"
            await writer.shutdown()
            assert await reader.read() == b""
            assert reader.at_eof()
            writer.close()
            writer.write(b"late")
            await writer.wait_closed()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_burst_read_across_the_decrypted_pieces(loop_kind: str) -> None:
    """3 MiB written at once and read while the client sleeps, so that the transport hands it
    over in large reads (uvloop: 256 KiB), decrypted into pieces of at most 64 KiB: reads of
    every kind that start, end or look for a separator across those pieces return the stream
    as written, in order, once."""
    piece = aio._PLAIN_CHUNK
    body = bytearray(random_bytes(3 * MIB, seed=7))
    body[piece - 2 : piece + 2] = b"<||>"  # a separator across the first pieces' boundary
    body[5 * piece - 1 : 5 * piece + 1] = b"\r\n"  # a line end across a later one
    for i in range(2 * piece, 5 * piece - 1):  # and none between them
        if body[i : i + 2] == b"\r\n":
            body[i] = 0
    sent = bytes(body)

    async def burst(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        writer.write(sent)
        await writer.drain()
        await writer.shutdown()
        writer.close()

    async def main() -> None:
        server = await aio.start_ssl_server(burst, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection(
                "localhost", port, client_context(), limit=4 * piece
            )
            await asyncio.sleep(0.3)  # the transport reads (and decrypts) meanwhile
            got = [await reader.readuntil(b"<||>")]
            got.append(await reader.readexactly(piece + 3))  # past the next boundary
            got.append(await reader.readuntil(b"\r\n"))
            got.append(await reader.read(1))
            while data := await reader.read(MIB):
                got.append(data)
            assert [len(g) for g in got[:3]] == [piece + 2, piece + 3, 3 * piece - 4]
            assert b"".join(got) == sent
            writer.close()
            await writer.wait_closed()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_server_initiated_renegotiation_mid_stream(pki: Any, loop_kind: str) -> None:
    """TLS 1.2: a (blocking) sslports server asks the aio client for a certificate by
    renegotiating while the client is still sending 300 kB; the client takes part from its
    reads and writes, nothing is lost or reordered, and data flows afterwards."""
    bulk = hashlib.shake_256(b"bulk").digest(300_000)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context("tls12"))
    port = sslports.ssl_addresses(listener, True)[1]

    def serve() -> dict[str, Any]:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            result: dict[str, Any] = {"before": inp.readline()}
            sslports.ssl_try_verify(inp, True)  # the renegotiation, with the bulk in flight
            result["verified"] = sslports.ssl_peer_verified(inp)
            result["bulk_ok"] = read_exactly(inp, len(bulk)) == bulk
            result["after"] = inp.readline()
            out.write(b"answer\n")
            out.flush()
            result["tail"] = inp.readline()
            return result

    join = run_in_thread(serve)

    async def main() -> tuple[bytes, dict[str, Any]]:
        reader, writer = await aio.open_ssl_connection(
            LOCAL, port, pki.client_context("tls12"), timeout=20
        )
        writer.write(b"before\n")
        await writer.drain()
        for i in range(0, len(bulk), 10_000):
            writer.write(bulk[i : i + 10_000])
            await writer.drain()
        writer.write(b"after\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 20)
        writer.write(b"tail\n")
        await writer.drain()
        result = await asyncio.to_thread(join, 20)
        writer.close()
        await writer.wait_closed()
        return answer, result

    try:
        answer, result = run(loop_kind, main)
    finally:
        listener.close()
    assert answer == b"answer\n"
    assert result == {
        "before": b"before\n",
        "verified": False,  # no client certificate: ssl_try_verify lets it go on
        "bulk_ok": True,
        "after": b"after\n",
        "tail": b"tail\n",
    }


# -- readline()'s limit, as asyncio's ------------------------------------------------------------

LINES = b"short\n" + b"A" * 100_000 + b"\n" + b"after\n" + b"B" * 70_000  # then EOF


async def _outcomes(reader: Any) -> list[Any]:
    """readline() until EOF: each line, or the exception's type."""
    seen: list[Any] = []
    while True:
        try:
            line = await reader.readline()
        except Exception as exc:
            seen.append(type(exc))
            continue
        if not line:
            return seen
        seen.append(line)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("limit", [None, 1 << 20])
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_readline_limit_as_asyncio(loop_kind: str, limit: Any, how: str) -> None:
    """A line longer than the limit: ValueError and the line dropped (up to its end when it
    is there, else what is buffered), the next line read as usual; `limit=` raises it. The
    same outcomes as asyncio's StreamReader given the same bytes."""
    listener = sslports.ssl_listen(0, 4, True, LOCAL, server_context())
    port = sslports.ssl_addresses(listener, True)[1]

    def serve() -> None:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            out.write(LINES)

    join = run_in_thread(serve)
    extra = {} if limit is None else {"limit": limit}

    async def main() -> tuple[list[Any], list[Any]]:
        if how == "open":
            reader, writer = await aio.open_ssl_connection(
                LOCAL, port, client_context(), timeout=10, **extra
            )
        else:
            raw = await asyncio.open_connection(LOCAL, port)
            reader, writer = await aio.wrap_ssl_streams(
                *raw, context=client_context(), hostname=LOCAL, timeout=10, **extra
            )
        await asyncio.to_thread(join, 10)
        conn = reader._sslports_conn  # all of it here (and the end), as fed to asyncio's below
        while not conn.eof:
            await conn.wait_input()
        ours = await _outcomes(reader)
        writer.close()
        expected = asyncio.StreamReader(**extra)
        expected.feed_data(LINES)
        expected.feed_eof()
        return ours, await _outcomes(expected)

    try:
        ours, theirs = run(loop_kind, main)
    finally:
        listener.close()
    assert ours == theirs
    if limit is None:
        assert ours == [b"short\n", ValueError, b"after\n", ValueError]
    else:
        assert ours == [b"short\n", b"A" * 100_000 + b"\n", b"after\n", b"B" * 70_000]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_readuntil_over_the_limit_takes_nothing(loop_kind: str) -> None:
    """readuntil() raises asyncio.LimitOverrunError and leaves the bytes to read; a bad
    `limit` is refused by every entry point."""

    async def main() -> None:
        async def serve(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            writer.write(b"x" * 40 + b"|tail")
            await writer.drain()
            writer.close()

        server = await aio.start_ssl_server(serve, LOCAL, 0, server_context(), limit=16)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection(LOCAL, port, client_context(), limit=16)
            with pytest.raises(asyncio.LimitOverrunError):
                await reader.readuntil(b"|")
            assert await reader.read() == b"x" * 40 + b"|tail"
            writer.close()
            for bad, exc in ((0, ValueError), (-1, ValueError), ("16", TypeError)):
                with pytest.raises(exc):
                    await aio.open_ssl_connection(LOCAL, port, client_context(), limit=bad)
                with pytest.raises(exc):
                    await aio.start_ssl_server(serve, LOCAL, 0, server_context(), limit=bad)

    run(loop_kind, main)


def _renegotiating_server(pki: Any) -> tuple[Any, int, Callable[..., Any]]:
    """A TLS 1.2 server for one connection, in a thread: it reads a line, renegotiates
    (ssl_try_verify) and reads to EOF. Its listener (the caller closes it), its port, and the
    join giving (line, rest)."""
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context("tls12"))

    def serve() -> tuple[bytes, bytes]:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            first = inp.readline()
            sslports.ssl_try_verify(inp, True)  # the renegotiation
            return first, inp.read()

    return listener, sslports.ssl_addresses(listener, True)[1], run_in_thread(serve)


async def _delaying_proxy(target: int, delay: float) -> asyncio.Server:
    """A TCP proxy to `target` that delays what the server sends by `delay` (order kept)."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(LOCAL, target)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, lag: float) -> None:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def send() -> None:
                while True:
                    at, data = await queue.get()
                    await asyncio.sleep(max(0.0, at - loop.time()))
                    if not data:
                        w.close()
                        return
                    w.write(data)
                    await w.drain()

            sender = asyncio.create_task(send())
            while data := await r.read(65536):
                queue.put_nowait((loop.time() + lag, data))
            queue.put_nowait((loop.time() + lag, b""))
            await sender

        try:
            await asyncio.gather(
                pump(client_r, server_w, 0.0),
                pump(server_r, client_w, delay),
                return_exceptions=True,
            )
        finally:  # (also when the test's loop ends first)
            client_w.close()
            server_w.close()

    return await asyncio.start_server(handle, LOCAL, 0)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_during_renegotiation_sends_what_was_written(pki: Any, loop_kind: str) -> None:
    """TLS 1.2: writes made while a server's renegotiation holds them back, then close()
    at once (write(); close(); await wait_closed()): the bytes still reach the server, after
    the renegotiation, as a transport sends its buffer before it closes. The server's flights
    reach the client through a proxy that delays them, which keeps the renegotiation open."""
    listener, port, join = _renegotiating_server(pki)

    async def main() -> tuple[list[bytes], bool, tuple[bytes, bytes]]:
        proxy = await _delaying_proxy(port, 0.4)
        async with proxy:
            proxy_port = proxy.sockets[0].getsockname()[1]
            _reader, writer = await aio.open_ssl_connection(
                LOCAL, proxy_port, pki.client_context("tls12"), timeout=20
            )
            writer.write(b"first\n")
            await writer.drain()
            sent: list[bytes] = []
            for i in range(200):  # write until one is held back (the renegotiation is on)
                sent.append(b"line %d\n" % i)
                writer.write(sent[-1])
                if writer._sslports_conn.pending_write is not None:
                    break
                await asyncio.sleep(0.02)
            held = writer._sslports_conn.pending_write is not None
            writer.write(b"final message\n")
            sent.append(b"final message\n")
            writer.close()
            writer.write(b"too late")  # dropped (not sent after the held-back bytes)
            await asyncio.wait_for(writer.wait_closed(), 20)
            return sent, held, await asyncio.to_thread(join, 20)

    try:
        sent, held, (first, rest) = run(loop_kind, main)
    finally:
        listener.close()
    assert held  # (the test saw the case it is about)
    assert first == b"first\n"
    assert rest == b"".join(sent)


async def _stalling_proxy(target: int, armed: asyncio.Event, ended: asyncio.Event) -> Any:
    """A TCP proxy to `target` that, once `armed` is set, passes one more piece from the
    server (a renegotiation's HelloRequest), then nothing more from it; once `ended` is set
    too, it ends the client's side with a FIN, then closes both sides at the peer's end
    (from Python 3.12 the server's wait_closed() waits for its connections)."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(LOCAL, target)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, stalls: bool) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
                if stalls and armed.is_set():
                    await ended.wait()
                    w.write_eof()
                    return

        try:
            await asyncio.gather(
                pump(client_r, server_w, False),
                pump(server_r, client_w, True),
                return_exceptions=True,
            )
        finally:
            client_w.close()
            server_w.close()

    return await asyncio.start_server(handle, LOCAL, 0)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("stall", ["freeze", "eof"])
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_a_close_that_gives_up_on_held_back_bytes_says_so(
    pki: Any, how: str, stall: str, loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS 1.2: a renegotiation that never ends (its peer's flights stop coming, or its
    connection ends) holds 1 MiB of written bytes back, and close() gives up on them:
    wait_closed() raises SSLNetworkError, as for any close that gave up on bytes ("not
    delivered" after the close's bound). It returned as if all had gone. And the held bytes
    are no longer exported: the failed retry's traceback, kept with its error, held the
    buffer export of the write in its frame (a cycle through the connection), and the
    collector clearing that memoryview crashed the interpreter."""
    monkeypatch.setattr(aio, "_LINGER_SECONDS", 0.5)  # (the close's bound: 10 s)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context("tls12"))

    def serve() -> None:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            inp.readline()
            with contextlib.suppress(sslports.SSLError):  # (its client goes away)
                sslports.ssl_try_verify(inp, True)  # the renegotiation
                inp.read()

    join = run_in_thread(serve)

    async def main() -> tuple[bytearray, BaseException]:
        armed, ended = asyncio.Event(), asyncio.Event()
        proxy = await _stalling_proxy(sslports.ssl_addresses(listener, True)[1], armed, ended)
        async with proxy:
            port = proxy.sockets[0].getsockname()[1]
            if how == "open":
                reader, writer = await aio.open_ssl_connection(
                    LOCAL, port, pki.client_context("tls12"), timeout=20
                )
            else:
                reader, writer = await aio.wrap_ssl_streams(
                    *await asyncio.open_connection(LOCAL, port),
                    context=pki.client_context("tls12"),
                    hostname=LOCAL,
                    timeout=20,
                )
            reading = asyncio.create_task(reader.read(100))  # (takes the HelloRequest)
            armed.set()
            writer.write(b"first\n")
            await writer.drain()
            conn = writer._sslports_conn
            for _ in range(500):  # (until the renegotiation holds writes back)
                writer.write(b"x" * 1024)
                if conn.pending_write is not None:
                    break
                await asyncio.sleep(0.01)
            writer.write(b"y" * (1 << 20))
            held = conn.pending_write
            assert held is not None and len(held) >= 1 << 20
            writer.close()
            if stall == "eof":
                ended.set()
            with pytest.raises(SSLNetworkError) as info:
                await asyncio.wait_for(writer.wait_closed(), 20)
            reading.cancel()
            ended.set()  # (freeze: the proxy lets go)
            return held, info.value

    try:
        held, failure = run(loop_kind, main)
    finally:
        listener.close()
    with contextlib.suppress(Exception):
        join(20)
    assert str(failure).startswith("wait_closed: "), failure
    if stall == "freeze":
        assert "not delivered" in str(failure) and failure.errno == errno.ETIMEDOUT, failure
    held.extend(b"z")  # (BufferError while exported)
    gc.collect()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_many_writes_held_by_a_renegotiation_arrive_in_order_without_copies(
    pki: Any, loop_kind: str
) -> None:
    """TLS 1.2: thousands of small writes while a server's renegotiation holds writing back
    (256 KiB held already) all reach the server, in order, once it is done; and none of them
    copies what is held (each used to: quadratic in the number of writes), nor does a retry
    that the peer's flight makes while the renegotiation still holds them (each used to). A
    copy is counted with tracemalloc: allocations that peak at half of what is held or more."""
    listener, port, join = _renegotiating_server(pki)
    held_size, writes = 256 * 1024, 3000

    async def main() -> tuple[list[bytes], int, int, tuple[bytes, bytes]]:
        proxy = await _delaying_proxy(port, 0.4)
        async with proxy:
            proxy_port = proxy.sockets[0].getsockname()[1]
            _reader, writer = await aio.open_ssl_connection(
                LOCAL, proxy_port, pki.client_context("tls12"), timeout=20
            )
            conn: Any = writer._sslports_conn
            writer.write(b"first\n")
            await writer.drain()
            sent: list[bytes] = []
            for i in range(200):  # write until one is held back (the renegotiation is on)
                sent.append(b"line %d\n" % i)
                writer.write(sent[-1])
                if conn.pending_write is not None:
                    break
                await asyncio.sleep(0.02)
            assert conn.pending_write is not None  # (the case this test is about)
            copies = held_retries = 0
            tracemalloc.start()  # (before what is held grows: its block is traced)
            try:
                sent.append(random_bytes(held_size, seed=11))
                writer.write(bytearray(sent[-1]))  # (a buffer the writer must copy)
                for i in range(writes):  # (no await: every write is held back)
                    sent.append(b"%d," % i)
                    tracemalloc.reset_peak()
                    before = tracemalloc.get_traced_memory()[0]
                    writer.write(memoryview(sent[-1]) if i % 2 else sent[-1])
                    if tracemalloc.get_traced_memory()[1] - before >= held_size // 2:
                        copies += 1
                assert conn.pending_write is not None
                retry = conn.retry_write

                def counted_retry() -> None:  # (the peer's flights arrive: decrypt retries)
                    nonlocal held_retries, copies
                    tracemalloc.reset_peak()
                    before = tracemalloc.get_traced_memory()[0]
                    retry()
                    if conn.pending_write is not None:  # (nothing was sent)
                        held_retries += 1
                        if tracemalloc.get_traced_memory()[1] - before >= held_size // 2:
                            copies += 1

                conn.retry_write = counted_retry
                await writer.drain()  # (the renegotiation ends, the held bytes go)
            finally:
                tracemalloc.stop()
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 20)
            return sent, held_retries, copies, await asyncio.to_thread(join, 20)

    try:
        sent, held_retries, copies, (first, rest) = run(loop_kind, main)
    finally:
        listener.close()
    assert first == b"first\n"
    assert rest == b"".join(sent)  # every byte, in order
    assert held_retries >= 1  # (the server's first flight came while the bytes were held)
    assert copies == 0, f"{copies} of {writes} writes and {held_retries} retries copied"


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_own_close_ends_a_waiting_read_with_eof(loop_kind: str, how: str) -> None:
    """strict_eof=True: a read waiting when we close our own writer ends with b"" (our
    close is no truncation by the peer), as without strict_eof."""
    listener = sslports.ssl_listen(0, 4, True, LOCAL, server_context())
    port = sslports.ssl_addresses(listener, True)[1]

    def serve() -> bytes:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            out.write(b"hello")
            out.flush()
            return inp.read()  # until the client closes

    join = run_in_thread(serve)

    async def main() -> bytes:
        if how == "open":
            reader, writer = await aio.open_ssl_connection(
                LOCAL, port, client_context(), timeout=10, strict_eof=True
            )
        else:
            raw = await asyncio.open_connection(LOCAL, port)
            reader, writer = await aio.wrap_ssl_streams(
                *raw, context=client_context(), hostname=LOCAL, timeout=10, strict_eof=True
            )
        assert await reader.readexactly(5) == b"hello"
        waiting = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0.1)
        writer.close()
        got = await asyncio.wait_for(waiting, 10)
        await writer.wait_closed()
        await asyncio.to_thread(join, 10)
        return got

    try:
        assert run(loop_kind, main) == b""
    finally:
        listener.close()


# A client that writes, drains and closes at once (TLS 1.3): the server's session tickets,
# arriving after close() had stopped the reading, made the kernel answer with a reset, which
# dropped what it still had to deliver (the third API audit: 192 KiB of 1 MiB reached asyncio's
# TLS server; with a 1-byte write, sslports' server read a reset where the EOF belongs). The
# close now shuts our side first, reads away what arrives and closes once our bytes left.
# (Python's ssl module as the server on uvloop is not among them: uvloop's TLS server itself
# drops data that a FIN follows closely, whoever the client is.)
@pytest.mark.parametrize("size", [1, 1 << 20])
@pytest.mark.parametrize(
    ("loop_kind", "server"),
    [(kind, "sslports") for kind in LOOPS] + [("asyncio", "asyncio")],
)
def test_write_then_close_delivers_everything(loop_kind: str, server: str, size: int) -> None:

    async def main() -> tuple[str, int]:
        got: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

        async def count(reader: Any, writer: Any) -> None:
            n = 0
            try:
                while data := await reader.read(65536):
                    n += len(data)
                got.set_result(("EOF", n))
            except Exception as exc:
                got.set_result((type(exc).__name__, n))
            writer.close()

        if server == "sslports":
            srv: Any = await aio.start_ssl_server(count, LOCAL, 0, server_context("tls13"))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(sslports.TEST_PEM)
            srv = await asyncio.start_server(count, LOCAL, 0, ssl=ctx)
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            _reader, writer = await aio.open_ssl_connection(
                LOCAL, port, client_context("tls13"), timeout=20
            )
            writer.write(random_bytes(size))
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            return await asyncio.wait_for(got, 20)

    assert run(loop_kind, main) == ("EOF", size)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_gives_up_on_a_peer_that_never_reads(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lingering close waits at most _LINGER_SECONDS (here 0.3 s) for a peer that takes
    none of our bytes: a peer that never reads does not hold wait_closed() for ever; what the
    transport still buffers is given up (an abort), as asyncio's TLS transport gives up its
    shutdown, and wait_closed() says so (it returned as if all had gone)."""
    monkeypatch.setattr(aio, "_LINGER_SECONDS", 0.3)
    release = threading.Event()
    listener = socket.create_server((LOCAL, 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # (accepted ones inherit it)
    port = listener.getsockname()[1]

    def never_reads() -> None:  # a Python ssl server: the handshake, then not one read
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sslports.TEST_PEM)
        raw, _ = listener.accept()
        raw.settimeout(20)
        with ctx.wrap_socket(raw, server_side=True):
            release.wait(20)

    async def main() -> None:
        server = asyncio.ensure_future(asyncio.to_thread(never_reads))
        try:
            _reader, writer = await aio.open_ssl_connection(
                "localhost", port, client_context("tls13"), timeout=20
            )
            writer.write(random_bytes(8 << 20))  # (more than both kernels' buffers hold)
            writer.close()
            # (asyncio.TimeoutError, which fails the test, if it waits for ever)
            with pytest.raises(sslports.SSLNetworkError, match="not delivered"):
                await asyncio.wait_for(writer.wait_closed(), 10)
        finally:
            release.set()
            await server

    try:
        run(loop_kind, main)
    finally:
        listener.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_waits_on_a_peer_that_reads_slowly(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_LINGER_SECONDS (here 1 s) bounds how long the lingering close waits for a peer that
    takes nothing, not how long a peer may take to read it all: a client that reads 4 MiB at
    ~1 MB/s, in small reads ~20 ms apart, gets every byte and our EOF, and wait_closed() ends
    without error. (The close gave up 1 s after it began: an abort, the client read a short
    stream, and wait_closed() returned as if everything had gone.)"""
    monkeypatch.setattr(aio, "_LINGER_SECONDS", 1.0)
    size = 4 << 20
    data = random_bytes(size)
    outcome: list[object] = []

    async def handler(reader: Any, writer: Any) -> None:
        # (small kernel buffers: most of the 2 MiB waits in the transport, not the kernel)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        await reader.readline()
        writer.write(data)
        writer.close()
        try:
            await writer.wait_closed()
        except Exception as exc:
            outcome.append(exc)
        else:
            outcome.append("closed")

    def slow_client(port: int) -> bytes:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(20)
        sock.connect((LOCAL, port))
        inp, out = sslports.ssl_wrap_socket(
            sock, context=client_context("tls13"), hostname="localhost"
        )
        with inp, out:
            out.write(b"go\n")
            out.flush()
            got = bytearray()
            while True:
                chunk = inp.read1(16384)
                if not chunk:
                    return bytes(got)
                got += chunk
                time.sleep(0.015)

    async def main() -> bytes:
        srv = await aio.start_ssl_server(handler, LOCAL, 0, server_context("tls13"))
        async with srv:
            port = srv.sockets[0].getsockname()[1]
            got = await asyncio.to_thread(slow_client, port)
            while not outcome:
                await asyncio.sleep(0.01)
            return got

    got = run(loop_kind, main)
    assert len(got) == size and got == data
    assert outcome == ["closed"]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_handler_that_does_not_read_holds_little(loop_kind: str) -> None:
    """A client sends as fast as it can to a server whose handler never reads: the transport
    stops reading once enough plaintext waits. It stopped at 1 MiB and held ~1.2 MB of
    plaintext per such client (1.7 MB of the process, against asyncio's 0.9); now it holds at
    most a few hundred KiB (the pause at 256 KiB, plus what the last receive brought)."""
    held: list[Any] = []
    blasted = threading.Event()

    def blast(port: int) -> None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.load_verify_locations(sslports.TEST_PEM)
        with tls.wrap_socket(
            socket.create_connection((LOCAL, port)), server_hostname="localhost"
        ) as s:
            s.settimeout(1.0)
            try:
                while True:  # until the server stops reading and every buffer is full
                    s.sendall(b"z" * 65536)
            except OSError:
                pass
            blasted.set()

    async def main() -> int:
        async def keep(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            held.append(reader)
            await asyncio.sleep(60)

        server = await aio.start_ssl_server(keep, LOCAL, 0, server_context())
        port = server.sockets[0].getsockname()[1]
        thread = threading.Thread(target=blast, args=(port,), daemon=True)
        thread.start()
        await asyncio.to_thread(blasted.wait, 30)
        conn = held[0]._sslports_conn
        plain = len(conn.plain) + (len(conn.head) if conn.head is not None else 0)
        assert conn.paused_reading
        server.close()
        return plain

    assert run(loop_kind, main) <= 640 * 1024
