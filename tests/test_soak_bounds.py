"""Long-run bounds: what a connection leaves behind once it is closed (found by soak runs of
tens of thousands of connections per transport, each with a mix of normal, resumed, failed,
aborted, reset and abandoned connections).

Each test measures by reference or object counts, with the cyclic collector off where it
matters: garbage that only the collector frees is memory a busy service holds until a
full collection.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import sslports

LOCAL = "127.0.0.1"


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _server_context() -> sslports.SSLServerContext:
    ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
    sslports.ssl_load_private_key(ctx, sslports.TEST_PEM)
    sslports.ssl_seal_context(ctx)
    return ctx


def _echo_once(sock: socket.socket, ctx: sslports.SSLServerContext) -> None:
    """Serve one wrapped connection: echo one line, then close."""
    try:
        inp, out = sslports.ssl_wrap_socket(sock, mode="accept", context=ctx, timeout=10)
    except sslports.SSLError:
        return
    try:
        out.write(inp.readline())
        out.flush()
        inp.read()  # until the client closes
    except sslports.SSLError:
        pass
    finally:
        out.close()
        inp.close()


def _wait_dead(ref: weakref.ref[Any], seconds: float = 5.0) -> bool:
    """True once `ref` is dead (threads that still hold the object get time to end)."""
    end = time.monotonic() + max(seconds, 0.0)
    while ref() is not None:
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
    return True


def test_stream_transport_with_deadline_is_freed_without_the_collector() -> None:
    """A ports_to_ssl_ports connection that read under a deadline (its `timeout`) runs its
    stream reads in a receiver thread. The transport held the receiver and the receiver held a
    bound method of the transport: a reference cycle that kept the transport, both streams and
    its 64 KiB buffer alive after close until the cyclic collector ran, for every such
    connection (~60 cyclic objects each in the soak run)."""
    ctx = _server_context()
    client_ctx = sslports.ssl_make_client_context()
    refs: list[weakref.ref[Any]] = []
    with collector_off():
        for _ in range(3):
            a, b = socket.socketpair()
            server = threading.Thread(target=_echo_once, args=(b, ctx))
            server.start()
            rf, wf = a.makefile("rb"), a.makefile("wb")
            a.close()  # (the makefile() streams keep the descriptor)
            inp, out = sslports.ports_to_ssl_ports(
                rf, wf, mode="connect", context=client_ctx, close_original=True, timeout=10
            )
            out.write(b"ping\n")
            out.flush()
            assert inp.readline() == b"ping\n"
            transport = inp._sslports_conn.transport
            assert transport.receiver is not None  # (the deadline made one)
            refs.append(weakref.ref(transport))
            out.close()
            inp.close()
            server.join(10)
            del inp, out, transport, rf, wf
        end = time.monotonic() + 5.0
        alive = [ref for ref in refs if not _wait_dead(ref, end - time.monotonic())]
    assert not alive, f"{len(alive)} of 3 closed stream transports kept alive by a cycle"


def test_aio_client_writer_dropped_without_close_closes_its_connection() -> None:
    """A client that drops its SSLStreamWriter without close() against a server that keeps
    the connection open (waiting for the next request) kept the connection for ever: the event
    loop holds the transport, so its descriptor, transport and the connection's C memory grew
    by one per such client (the soak run: +25 descriptors per 1000 connections). asyncio's own
    StreamWriter closes its transport when collected (with a ResourceWarning); so does
    SSLStreamWriter now. A server's writer stays alive while its connection is open, as
    asyncio's servers keep theirs."""
    import asyncio

    from sslports import aio

    ctx = _server_context()
    client_ctx = sslports.ssl_make_client_context()
    n = 5

    async def main() -> tuple[int, int]:
        ended = 0
        all_ended = asyncio.Event()
        server_writers: list[Any] = []

        async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            nonlocal ended
            server_writers.append(writer)
            writer.write(await reader.readline())
            await writer.drain()
            await reader.read()  # the next request, or the client's end
            ended += 1
            if ended == n:
                all_ended.set()

        server = await aio.start_ssl_server(handler, LOCAL, 0, ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(n):
                    reader, writer = await aio.open_ssl_connection(LOCAL, port, client_ctx)
                    writer.write(b"ping\n")
                    await writer.drain()
                    assert await reader.readline() == b"ping\n"
                    del reader, writer  # dropped, never closed
                    gc.collect()
            try:
                await asyncio.wait_for(all_ended.wait(), 5)
            except asyncio.TimeoutError:
                pass
            unclosed = [w for w in caught if "unclosed" in str(w.message)]
            return ended, len(unclosed)
        finally:
            for w in server_writers:
                w.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.1)

    ended, unclosed = asyncio.run(main())
    assert ended == n, f"the server saw the end of {ended} of {n} dropped client connections"
    assert unclosed == n  # (ResourceWarning: "unclosed <SSLStreamWriter ...>", as asyncio's)


def test_aio_server_connection_outlives_a_handler_that_returns() -> None:
    """The other side of the test above: a start_ssl_server handler that returns without
    closing leaves its connection open (asyncio's servers keep their writers alive): the
    collector must not close it. The client's read then waits rather than meeting EOF."""
    import asyncio

    from sslports import aio

    ctx = _server_context()
    client_ctx = sslports.ssl_make_client_context()

    async def main() -> bytes:
        async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()  # and return: nothing closes the connection

        server = await aio.start_ssl_server(handler, LOCAL, 0, ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await aio.open_ssl_connection(LOCAL, port, client_ctx)
        try:
            writer.write(b"ping\n")
            await writer.drain()
            assert await reader.readline() == b"ping\n"
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0.05)
            try:
                return await asyncio.wait_for(reader.read(1), 0.5)
            except asyncio.TimeoutError:
                return b"(still open)"
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.1)

    assert asyncio.run(main()) == b"(still open)"


class _Breakable:
    """A stream wrapper whose reads or writes fail once `broken` is set, as a stream whose
    peer reset the connection does."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = False

    def readinto(self, b: Any) -> Any:
        if self.broken:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self.stream.readinto1(b)

    def write(self, b: Any) -> Any:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return self.stream.write(b)

    def flush(self) -> None:
        if not self.broken:
            self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def _broken_stream_connection(side: str) -> weakref.ref[Any]:
    """Make a ports_to_ssl_ports connection (with a deadline, so that reads go through the
    receiver thread) over a socket pair, break its input (`side` "in") or output ("out")
    stream, meet the failure, close; a weak reference to the connection."""
    ctx = _server_context()
    a, b = socket.socketpair()
    server = threading.Thread(target=_echo_once, args=(b, ctx))
    server.start()
    rf, wf = _Breakable(a.makefile("rb")), _Breakable(a.makefile("wb"))
    a.close()
    inp, out = sslports.ports_to_ssl_ports(
        rf,
        wf,
        mode="connect",
        context=sslports.ssl_make_client_context(),
        close_original=True,
        timeout=10,
    )
    out.write(b"ping\n")
    out.flush()
    assert inp.readline() == b"ping\n"
    conn = inp._sslports_conn
    failures = 0
    if side == "in":
        rf.broken = True
        for _ in range(2):  # (the second read meets the failure kept by the receiver)
            try:
                inp.read1(10)
            except sslports.SSLError:
                failures += 1
    else:
        wf.broken = True
        # Until the sender thread's failure reaches a write: flush() only hands the records
        # to that thread (docs/guide/threading.md), which may run late on a loaded machine.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                out.write(b"x" * 100)
                out.flush()
            except sslports.SSLError:
                failures += 1
                if failures == 2:
                    break
            time.sleep(0.01)
    assert failures == 2
    with contextlib.suppress(sslports.SSLError):
        out.close()
    inp.close()
    wf.stream.close()
    rf.stream.close()
    server.join(10)
    return weakref.ref(conn)


def test_stream_read_failure_under_deadline_leaves_no_cycle() -> None:
    """The receiver thread kept the stream's failure with the traceback of its own frame (which
    names the receiver), and raised that same object to every read after, adding the reading
    frames: the connection, its C memory and its streams stayed alive after close until the
    cyclic collector ran, for every connection whose stream failed under a deadline (a client
    that resets during a server's handshake)."""
    with collector_off():
        ref = _broken_stream_connection("in")
        assert _wait_dead(ref), "the connection is kept alive by a cycle through the failure"


def test_stream_write_failure_leaves_no_cycle() -> None:
    """The same for the sender thread, whose kept write failure (a broken pipe) every later
    write raised again."""
    with collector_off():
        ref = _broken_stream_connection("out")
        assert _wait_dead(ref), "the connection is kept alive by a cycle through the failure"
