"""sslports.aio servers: answering a client that half-closed after its close_notify, and a
server-name callback whose exception reaches the loop's exception handler."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
import time
from typing import Any

import pytest
from test_aio import LOOPS, client_context, run, server_context

import sslports as S
from sslports import aio


def _half_closing_client(port: int, close_notify: bool) -> bytes:
    """Send a request, close the output port (with close_notify if `close_notify`), half-close
    TCP, and read the answer until the server's end."""
    # The makefile() streams are the caller's (close_original=False): closed before the
    # socket, or its fd stays open until the collector finds them.
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        raw_in = stack.enter_context(sock.makefile("rb"))
        raw_out = stack.enter_context(sock.makefile("wb"))
        inp, out = S.ports_to_ssl_ports(
            raw_in,
            raw_out,
            mode="connect",
            context=client_context(),
            hostname="localhost",
            shutdown_on_close=close_notify,
        )
        with inp, out:
            out.write(b"hello\n")
            out.close()  # (close_notify if asked)
            sock.shutdown(socket.SHUT_WR)  # and the TCP half-close
            return inp.read()


async def _connect(port: int) -> tuple[aio.SSLStreamReader, aio.SSLStreamWriter]:
    """A client connection to the server on 127.0.0.1:port."""
    return await aio.open_ssl_connection("127.0.0.1", port, client_context(), timeout=10)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_server_answers_a_client_that_half_closed(loop_kind: str) -> None:
    """A client sends its request, then close_notify and a TCP half-close (what
    ``python -m sslports connect`` does at EOF on stdin), and waits for the answer. TLS lets
    the server still write (RFC 8446 6.1) and ssl_accept's ports do; the aio server lost its
    answer whenever the handler awaited anything before writing (the transport closed itself
    on the TCP EOF)."""

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        data = await reader.read()  # until the client is done
        await asyncio.sleep(0.2)  # e.g. a database lookup
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            return await asyncio.wait_for(asyncio.to_thread(_half_closing_client, port, True), 10)

    assert run(loop_kind, main) == b"HELLO\n"


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_bare_fin_ends_an_aio_connection(loop_kind: str) -> None:
    """A client's TCP EOF without close_notify ends the server's connection, as on asyncio's
    TLS transport (docs/guide/asyncio.md): the reader gets b"", and what the handler writes
    after it fails at drain() with SSLNetworkError rather than vanishing."""
    seen: list[object] = []

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        seen.append(await reader.read())
        await asyncio.sleep(0.2)
        writer.write(b"late answer")
        try:
            await writer.drain()
            seen.append("drained")
        except S.SSLNetworkError as exc:
            seen.append(type(exc))
        writer.close()

    async def main() -> bytes:
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            got = await asyncio.wait_for(asyncio.to_thread(_half_closing_client, port, False), 10)
            for _ in range(100):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.02)
            return got  # type: ignore[no-any-return]

    assert run(loop_kind, main) == b""  # (the server's EOF, no answer)
    assert seen == [b"hello\n", S.SSLNetworkError]


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize(
    "error",
    [
        S.SSLError("ssl_make_server_context: load failed (no such file)"),
        FileNotFoundError(2, "No such file or directory", "b.example.pem"),
    ],
    ids=["SSLError", "FileNotFoundError"],
)
def test_sni_callback_oserror_goes_to_the_exception_handler(
    loop_kind: str, error: BaseException
) -> None:
    """A server-name callback that fails with an OSError or SSLError (typically: loading the
    certificate of the name it was asked for) is a server bug, as any other exception it
    raises: it must reach the loop's exception handler (aio's docstring), not only a debug
    log line as a client's failed handshake does."""
    seen: list[dict[str, Any]] = []

    def choose(name: str) -> Any:
        raise error

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        ctx = server_context()
        S.ssl_set_server_name_identification_callback(ctx, choose)

        async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            writer.close()

        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, ctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(S.SSLNetworkError):
                await aio.open_ssl_connection("localhost", port, client_context(), timeout=10)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)

    run(loop_kind, main)
    assert [ctx.get("exception") for ctx in seen] == [error]
    assert "server-name callback" in seen[0]["message"]


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("fills_at_once", [True, False])
def test_receive_buffer_shared_only_where_the_loop_fills_it_at_once(
    loop_kind: str, fills_at_once: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Selector loops and uvloop fill a protocol's receive buffer and report it in one step, so
    a thread's connections share one buffer. A proactor loop (Windows' default) keeps the
    buffer through an overlapped receive while other connections receive: a shared buffer
    there would mix two connections' ciphertext, so each connection gets its own. Both ways,
    two connections that talk at once each get their own bytes back."""
    loop = asyncio.new_event_loop()
    try:
        assert aio._fills_at_once(loop)  # (this platform's default loop: a selector loop)
    finally:
        loop.close()
    monkeypatch.setattr(aio, "_fills_at_once", lambda loop: fills_at_once)
    buffers: list[Any] = []

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        buffers.append(writer._sslports_conn.recv_buf)
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    async def talk(port: int, tag: bytes) -> bytes:
        reader, writer = await aio.open_ssl_connection(
            "localhost", port, client_context(), timeout=10
        )
        got = b""
        for i in range(50):
            writer.write(tag * 1000 + b"%d\n" % i)
            got += await reader.readline()
        writer.close()
        return got

    async def main() -> list[bytes]:
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            return list(await asyncio.gather(talk(port, b"a"), talk(port, b"b")))

    a, b = run(loop_kind, main)
    assert a == b"".join(b"a" * 1000 + b"%d\n" % i for i in range(50))
    assert b == b"".join(b"b" * 1000 + b"%d\n" % i for i in range(50))
    assert len(buffers) == 2 and (buffers[0] is buffers[1]) is fills_at_once


@pytest.mark.skipif(sys.version_info < (3, 13), reason="asyncio.Server's close_clients is 3.13's")
@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_clients_ends_every_connection(loop_kind: str, how: str) -> None:
    """Python 3.13's Server.close_clients() / abort_clients() on an SSLServer end the
    connections, as asyncio's (they raised AbstractServer's NotImplementedError); a loop whose
    servers lack them (uvloop) raises NotImplementedError."""

    async def main() -> None:
        done = asyncio.Event()

        async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            try:
                await reader.read()  # until the server ends the connection
            except (OSError, S.SSLError):
                pass
            finally:
                done.set()

        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            w.write(b"hello")
            await w.drain()
            await asyncio.sleep(0.1)  # the handler is reading
            if not hasattr(server._server, how):  # uvloop's servers lack both
                with pytest.raises(NotImplementedError):
                    getattr(server, how)()
                w.close()
            else:
                getattr(server, how)()
                try:
                    assert await asyncio.wait_for(r.read(), 10) == b""
                except (OSError, S.SSLError):
                    pass  # abort_clients: a reset
                w.close()
            await asyncio.wait_for(done.wait(), 10)
            server.close()
            await asyncio.wait_for(server.wait_closed(), 10)

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("kind", ["function", "coroutine"])
def test_a_raising_client_connected_cb_goes_to_the_exception_handler(
    loop_kind: str, kind: str
) -> None:
    """A handler that raises (a plain function, or a coroutine that raises once awaited) is
    a server bug: the exception reaches the loop's exception handler, that client's
    connection is closed (it reads EOF, not a hang), and the server serves the next client."""
    seen: list[dict[str, Any]] = []
    calls: list[int] = []

    def plain(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("handler bug")
        writer.write(b"second\n")
        writer.close()

    async def coro(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        calls.append(1)
        await asyncio.sleep(0)
        if len(calls) == 1:
            raise KeyError("handler bug")
        writer.write(b"second\n")
        await writer.drain()
        writer.close()

    async def main() -> tuple[bytes, bytes]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        handler = plain if kind == "function" else coro
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            got = []
            for _ in range(2):
                reader, writer = await _connect(port)
                got.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
                await writer.wait_closed()
            return got[0], got[1]

    first, second = run(loop_kind, main)
    assert (first, second) == (b"", b"second\n")
    assert [type(ctx.get("exception")) for ctx in seen] == [KeyError]
    assert "unhandled exception in client_connected_cb" in seen[0]["message"]


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["awaited a cancelled future", "its task cancelled"])
def test_a_client_connected_cb_that_ends_cancelled_closes_its_connection(
    loop_kind: str, how: str
) -> None:
    """A handler whose coroutine ends in CancelledError left its connection open: only an
    Exception closed the writer, and the connection keeps the writer, so the client waited
    for an EOF until it gave up. It now reads EOF at once, as from asyncio's own servers
    (3.12 on), nothing reaches the exception handler, and the server serves on."""
    seen: list[dict[str, Any]] = []
    handlers: list[asyncio.Task[Any]] = []

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        await reader.readline()
        if how == "awaited a cancelled future":
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await asyncio.sleep(30)  # (cancelled by main)

    async def main() -> list[bytes]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            got = []
            for _ in range(2):
                reader, writer = await _connect(port)
                writer.write(b"request\n")
                if how == "its task cancelled":
                    while not handlers:
                        await asyncio.sleep(0.01)
                    handlers.pop().cancel()
                got.append(await asyncio.wait_for(reader.read(), 10))
                writer.close()
                await writer.wait_closed()
            return got

    assert run(loop_kind, main) == [b"", b""]
    assert seen == []


# asyncio before 3.12 drops a socket it accepted as its server closed, unclosed until the
# collector finds it (asyncio.start_server's own clients too): its warnings, not ours; the
# descriptors are counted instead.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_no_client_is_served_once_the_server_is_closed(loop_kind: str, turns: int) -> None:
    """Clients the kernel accepted while the loop was busy reach connection_made one or more
    turns of the loop later. close() in that window cancelled the handshakes it could see,
    but the later ones started after it, escaped wait_closed(), and ran the handler for a
    server the application had shut down. Now no handler runs after close(), no handshake
    outlives wait_closed(), and each such client is refused (or left unanswered by the
    loop itself: asyncio 3.11 may drop a socket accepted at close), and nothing is left open."""
    served: list[int] = []
    before = len(os.listdir("/proc/self/fd"))

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        served.append(1)
        writer.write(b"served")
        await writer.drain()
        writer.close()

    def handshake(sock: socket.socket) -> str:
        sock.setblocking(True)
        sock.settimeout(3)
        try:
            inp, out = S.ports_to_ssl_ports(
                sock.makefile("rb"), sock.makefile("wb"), mode="connect", close_original=True
            )
        except (OSError, S.SSLError) as exc:
            return type(exc).__name__
        with inp, out:
            return "served"

    async def main() -> tuple[int, list[str]]:
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        port = server.sockets[0].getsockname()[1]
        socks = []
        for _ in range(5):  # (the kernel completes these connects: the loop accepts later)
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            socks.append(sock)
        time.sleep(0.05)  # the loop is busy: all five wait to be accepted
        for _ in range(turns):
            await asyncio.sleep(0)
        server.close()
        await server.wait_closed()
        alive = [t for t in asyncio.all_tasks() if "on_client" in repr(t)]
        try:
            outcomes = await asyncio.gather(*[asyncio.to_thread(handshake, s) for s in socks])
        finally:
            for sock in socks:
                sock.close()
        return len(alive), outcomes

    alive, outcomes = run(loop_kind, main)
    assert alive == 0
    assert "served" not in outcomes and served == [], outcomes
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_lingering_close_looks_less_often_as_it_waits(loop_kind: str) -> None:
    """A closed connection whose peer has not taken our last bytes lingers (up to 10 s) and
    looked at its send queue every 20 ms: with a few thousand such peers (clients that stop
    reading) a loop spent a core on it. It now looks again after twice the time each time,
    up to 0.32 s: in 1.5 s, 7 looks (20 ms: 75). What it waits for still arrives: the peer
    that reads at last gets every byte and the EOF."""
    looks: list[float] = []
    real_next_wait = aio._Lingering.next_wait
    size = 8 << 20

    def counted(self: Any) -> float:
        looks.append(real_next_wait(self))
        return looks[-1]

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        await reader.readline()
        writer.write(b"x" * size)
        writer.close()  # (the client reads nothing yet: this close lingers)

    async def main() -> int:
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await _connect(port)
            writer.write(b"go\n")
            await asyncio.sleep(1.5)
            lingered = len(looks)
            got = await asyncio.wait_for(reader.read(), 20)
            writer.close()
            return lingered if len(got) == size else -len(got)

    aio._Lingering.next_wait = counted  # type: ignore[method-assign]
    try:
        lingered = run(loop_kind, main)
    finally:
        aio._Lingering.next_wait = real_next_wait  # type: ignore[method-assign]
    assert 1 <= lingered <= 10, lingered
    assert max(looks) == aio._LINGER_POLL_MAX


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_server_start_serving_and_serve_forever(loop_kind: str) -> None:
    """SSLServer as asyncio.Server: start_serving=False defers accepting until
    start_serving(); get_loop() and is_serving() tell; cancelling serve_forever() closes the
    server (asyncio's does), after which a connection is refused."""

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        writer.write(await reader.readline())
        writer.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await aio.start_ssl_server(
            handler, "127.0.0.1", 0, server_context(), start_serving=False
        )
        assert server.get_loop() is loop
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        port = server.sockets[0].getsockname()[1]
        forever = asyncio.ensure_future(server.serve_forever())
        reader, writer = await _connect(port)
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"ping\n"
        writer.close()
        await writer.wait_closed()
        forever.cancel()
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert not server.is_serving()
        await asyncio.wait_for(server.wait_closed(), 10)
        with pytest.raises(OSError):
            await aio.open_ssl_connection("127.0.0.1", port, client_context(), timeout=10)

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_client_reset_mid_handshake_is_a_debug_line(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends half a ClientHello and resets the connection, both seen by the server
    in one turn of the loop, is dropped with a debug line naming its address (aio's docstring),
    and the writer's "peername" stays available after the transport closed. On uvloop the
    debug line asked the closed transport for "peername", which raised ValueError('negative
    file descriptor'): every such client put a "Task exception was never retrieved" traceback
    through the loop's exception handler."""
    import os
    import struct

    seen: list[dict[str, Any]] = []
    addresses: list[Any] = []

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        writer.close()
        await writer.wait_closed()
        addresses.append(writer.get_extra_info("peername"))

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            for _ in range(5):
                # a blocking socket, without yielding to the loop: the server meets the bytes
                # and the reset in one turn
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(bytes.fromhex("16030100c8010000c40303") + os.urandom(50))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
                await asyncio.sleep(0.05)
            _, writer = await aio.open_ssl_connection(
                "localhost", port, client_context(), timeout=10
            )
            writer.close()
            for _ in range(100):
                if addresses:
                    break
                await asyncio.sleep(0.02)

    with caplog.at_level("DEBUG", logger="sslports"):
        run(loop_kind, main)
    assert seen == []
    lines = [r.getMessage() for r in caplog.records if "start_ssl_server" in r.getMessage()]
    assert len(lines) == 5, lines
    # (asyncio's accept() tells the address; uvloop asks the socket, which a peer that reset
    # before the loop got to it no longer has)
    known = "from ('127.0.0.1', "
    assert all(
        known in line or (loop_kind != "asyncio" and line.endswith(" from None")) for line in lines
    ), lines
    assert len(addresses) == 1 and addresses[0][0] == "127.0.0.1", addresses
