"""sslports.aio: the engine under asyncio (default loop and uvloop), against real peers."""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import logging
import os
import resource
import socket
import ssl
import warnings
from collections.abc import Awaitable
from typing import Any, Callable

import pytest

import sslports as S
from sslports import aio

try:
    import uvloop
except ImportError:  # uvloop is a test dependency on POSIX; elsewhere only the default loop
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])
VERSIONS = ["tls12", "tls13"]


def run(loop_kind: str, coro_fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    if loop_kind == "uvloop":
        assert uvloop is not None
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(guarded())
    finally:
        try:  # as asyncio.run: end what is still running, let transports close their sockets
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()

            async def finish() -> None:
                await asyncio.gather(*pending, return_exceptions=True)
                await asyncio.sleep(0)
                await loop.shutdown_asyncgens()

            loop.run_until_complete(finish())
        finally:
            loop.close()


def server_context(version: str = "auto") -> S.SSLServerContext:
    return S.ssl_make_server_context(
        version, private_key=("pem", S.TEST_PEM), certificate_chain=S.TEST_PEM
    )


def client_context(version: str = "auto") -> S.SSLClientContext:
    ctx = S.ssl_make_client_context(version)
    S.ssl_load_verify_source(ctx, S.TEST_PEM)
    S.ssl_set_verify(ctx, True)
    S.ssl_set_verify_hostname(ctx, True)
    return ctx


async def connect_by(
    how: str, port: int, **kw: Any
) -> tuple[aio.SSLStreamReader, aio.SSLStreamWriter]:
    """A client of 127.0.0.1:port ("localhost"): open_ssl_connection ("open"), or a TCP
    connection wrapped with wrap_ssl_streams ("wrap"); `kw` go to either."""
    if how == "open":
        return await aio.open_ssl_connection("localhost", port, client_context(), **kw)
    raw = await asyncio.open_connection("127.0.0.1", port)
    return await aio.wrap_ssl_streams(*raw, context=client_context(), hostname="localhost", **kw)


async def echo(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
    while True:
        data = await reader.read(65536)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()


async def exchange(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter, data: bytes) -> bytes:
    async def send() -> None:
        for i in range(0, len(data), 50_000):
            writer.write(data[i : i + 50_000])
            await writer.drain()

    sender = asyncio.create_task(send())
    got = await reader.readexactly(len(data))
    await sender
    return got


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("version", VERSIONS)
def test_echo_verified_alpn_and_facts(loop_kind: str, version: str) -> None:
    async def main() -> None:
        srv = server_context(version)
        S.ssl_set_server_alpn(srv, [b"h2", b"http/1.1"])
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, srv)
        async with server:
            port = server.sockets[0].getsockname()[1]
            cli = client_context(version)
            for attempt in range(2):
                r, w = await aio.open_ssl_connection(
                    "localhost", port, cli, alpn=[b"http/1.1", b"h2"], timeout=10
                )
                assert S.ssl_protocol_version(w) == version
                assert S.ssl_get_alpn_selected(r) == b"h2"
                assert S.ssl_peer_verified(r)
                assert "localhost" in S.ssl_peer_certificate_hostnames(w)
                assert S.ssl_session_reused(w) is (attempt == 1)
                data = os.urandom(1 << 20)
                got = await exchange(r, w, data)
                assert hashlib.sha1(got).digest() == hashlib.sha1(data).digest()
                w.close()
                await w.wait_closed()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_readline_readuntil_iteration_and_eof(loop_kind: str) -> None:
    async def main() -> None:
        async def handler(r: aio.SSLStreamReader, w: aio.SSLStreamWriter) -> None:
            w.write(b"one\ntwo\r\nthree;four")
            await w.drain()
            await w.shutdown()
            w.close()

        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            assert await r.readline() == b"one\n"
            assert await r.readuntil(b"\r\n") == b"two\r\n"
            assert await r.readuntil(b";") == b"three;"
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await r.readexactly(10)
            assert info.value.partial == b"four"
            assert await r.read() == b""
            assert r.at_eof()
            w.close()

    run(loop_kind, main)


@pytest.mark.parametrize("version", VERSIONS)
def test_interop_with_asyncio_ssl_both_ways(version: str) -> None:
    async def main() -> None:
        # asyncio's own TLS server, our client
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(str(S.TEST_PEM))
        sctx.minimum_version = sctx.maximum_version = getattr(
            ssl.TLSVersion, "TLSv1_3" if version == "tls13" else "TLSv1_2"
        )

        async def plain_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        server = await asyncio.start_server(plain_echo, "127.0.0.1", 0, ssl=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await aio.open_ssl_connection("localhost", port, client_context(version))
            data = os.urandom(300_000)
            assert await exchange(r, w, data) == data
            w.close()
        # our server, asyncio's TLS client
        ours = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context(version))
        async with ours:
            port = ours.sockets[0].getsockname()[1]
            cctx = ssl.create_default_context(cafile=str(S.TEST_PEM))
            pr, pw = await asyncio.open_connection("localhost", port, ssl=cctx)
            data = os.urandom(300_000)
            pw.write(data)
            await pw.drain()
            assert await pr.readexactly(len(data)) == data
            pw.close()

    run("asyncio", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_wrap_ssl_streams_both_modes(loop_kind: str) -> None:
    async def main() -> None:
        got: dict[str, bytes] = {}
        served = asyncio.Event()

        async def plain(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            sr, sw = await aio.wrap_ssl_streams(r, w, mode="accept", context=server_context())
            got["server"] = await sr.readexactly(5)
            sw.write(b"world")
            await sw.drain()
            sw.close()
            await sw.wait_closed()
            served.set()

        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            sr, sw = await aio.wrap_ssl_streams(
                r, w, mode="connect", context=client_context(), hostname="localhost"
            )
            sw.write(b"hello")
            await sw.drain()
            assert await sr.readexactly(5) == b"world"
            assert got["server"] == b"hello"
            sw.close()
            await sw.wait_closed()
            await asyncio.wait_for(served.wait(), 10)  # the handler's socket is closed too

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_writes_after_close_are_dropped_as_asyncio_does(
    loop_kind: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio's transports drop a write made after close() (logging a warning from the fifth
    on) rather than raise: a task still writing while another closes the writer (a heartbeat,
    a broadcast to many clients) must not fail with it. write() raised SSLError there."""

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await connect_by(how, port)
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            w.close()
            for _ in range(4):
                w.write(b"late")
            assert not warnings()  # (the first few go quietly, as asyncio's)
            w.writelines([b"late", b"r"])
            await w.wait_closed()
            w.write(bytearray(b"later still"))

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "sslports"]

    with caplog.at_level(logging.WARNING, logger="sslports"):
        run(loop_kind, main)
    assert len(warnings()) == 2, warnings()
    assert all("closed" in message for message in warnings())


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_drain_after_the_close_raises_as_asyncio_s_does(loop_kind: str, how: str) -> None:
    """Once close() has ended the connection, drain() raises (asyncio's: ConnectionResetError)
    over both entry points: a writer loop that drains learns that its data goes nowhere.
    Over wrap_ssl_streams it returned as if the data had gone."""

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            r, w = await connect_by(how, server.sockets[0].getsockname()[1])
            w.write(b"ping")
            await w.drain()
            assert await r.readexactly(4) == b"ping"
            w.close()
            await w.wait_closed()
            with pytest.raises(S.SSLNetworkError, match=r"(?i)write failed \(connection lost\)"):
                await w.drain()

    run(loop_kind, main)


def test_verify_failure_and_bad_arguments() -> None:
    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            strict = S.ssl_make_client_context()
            S.ssl_set_verify(strict, True)  # trusts nothing
            with pytest.raises(S.SSLNetworkError, match="certificate verify failed"):
                await aio.open_ssl_connection("localhost", port, strict)
            raw_r, raw_w = await asyncio.open_connection("127.0.0.1", port)
            with pytest.raises(S.SSLNetworkError) as info:
                await aio.wrap_ssl_streams(
                    raw_r, raw_w, context=client_context(), hostname="wrong.example.test"
                )
            assert info.value.verify_message is not None
            assert info.value.verify_message.startswith("hostname mismatch")
            # the server keeps serving
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            assert await exchange(r, w, b"still here") == b"still here"
            w.close()
        with pytest.raises(ValueError, match="open_ssl_connection"):
            await aio.open_ssl_connection("localhost", 0)
        with pytest.raises(TypeError, match="open_ssl_connection"):
            await aio.open_ssl_connection(b"localhost", 443)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="wrap_ssl_streams"):
            await aio.wrap_ssl_streams(None, None, mode="sideways")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="start_ssl_server"):
            await aio.start_ssl_server(echo, "127.0.0.1", 0, client_context())  # type: ignore[arg-type]

    run("asyncio", main)


BAD_TIMEOUTS = [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError)]
BAD_TIMEOUTS += [(10**400, ValueError), ("5", TypeError), (True, TypeError)]


@pytest.mark.parametrize(("timeout", "error"), BAD_TIMEOUTS)
def test_a_bad_timeout_is_refused_before_connecting(timeout: Any, error: type) -> None:
    """open_ssl_connection and wrap_ssl_streams passed timeout= on unchecked: -1 timed out at
    once (closing the caller's writer), nan timed out or raised uvloop's "cannot convert float
    NaN to integer", inf and True were taken, "5" raised an unnamed TypeError. Now the
    TypeError / ValueError that names the call, as ssl_connect's, before anything is opened."""

    async def main() -> None:
        with pytest.raises(error, match=r"^open_ssl_connection: timeout must"):
            await aio.open_ssl_connection("localhost", 443, client_context(), timeout=timeout)
        raw_r, raw_w = await asyncio.open_connection(*silent.getsockname())
        with pytest.raises(error, match=r"^wrap_ssl_streams: timeout must"):
            await aio.wrap_ssl_streams(raw_r, raw_w, context=client_context(), timeout=timeout)
        assert not raw_w.is_closing()  # (an argument error leaves the caller's streams)
        raw_w.close()

    with socket.create_server(("127.0.0.1", 0)) as silent:
        run("asyncio", main)


def test_hostile_and_stalled_clients_do_not_stop_the_server() -> None:
    async def main() -> None:
        server = await aio.start_ssl_server(
            echo, "127.0.0.1", 0, server_context(), handshake_timeout=0.5
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            # garbage instead of a ClientHello
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(os.urandom(3000))
            await w.drain()
            assert await asyncio.wait_for(r.read(), 5) is not None  # the server hangs up
            w.close()
            # a client that connects and says nothing: dropped after handshake_timeout
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r2.read(), 5) == b""
            w2.close()
            # a good client still works (again if it too took over 0.5 s: a busy machine)
            for _ in range(5):
                try:
                    sr, sw = await aio.open_ssl_connection("localhost", port, client_context())
                    break
                except S.SSLNetworkError:
                    continue
            else:
                raise AssertionError("no client got through the server")
            assert await exchange(sr, sw, b"ok") == b"ok"
            sw.close()

    run("asyncio", main)


def test_connect_timeout_against_a_silent_server() -> None:
    async def main() -> None:
        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await asyncio.sleep(10)
            finally:
                w.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(TimeoutError) as info:
                await aio.open_ssl_connection("127.0.0.1", port, client_context(), timeout=0.3)
            assert isinstance(info.value, S.SSLNetworkError)
            # the endpoint, as ssl_connect's (docs/guide/errors.md; it was left out)
            assert str(info.value) == f"open_ssl_connection: handshake timed out (127.0.0.1:{port})"

    run("asyncio", main)


@pytest.mark.parametrize("how", ["open", "wrap"])
def test_a_deadline_already_gone_leaves_no_coroutine_unawaited(how: str) -> None:
    """timeout=0 (or a deadline that ran out as the TCP connect completed): the timeout, and
    no 'coroutine ... was never awaited' RuntimeWarning (asyncio.wait_for cancelled the
    handshake's or the connect's coroutine before its first step, and it was collected
    unstarted)."""

    async def main() -> None:
        server = await aio.start_ssl_server(
            lambda r, w: w.close(), "127.0.0.1", 0, server_context()
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            with pytest.raises(TimeoutError) as info:
                if how == "open":
                    await aio.open_ssl_connection("localhost", port, client_context(), timeout=0)
                else:
                    raw_r, raw_w = await asyncio.open_connection("127.0.0.1", port)
                    await aio.wrap_ssl_streams(
                        raw_r, raw_w, context=client_context(), hostname="localhost", timeout=0
                    )
            assert isinstance(info.value, S.SSLNetworkError)

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run("asyncio", main)
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]


def test_connect_failures_read_as_ssl_connect_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/guide/errors.md: the same messages for aio. A refused connect said asyncio's
    "Connect call failed ('127.0.0.1', P)" with no errno, a name that does not resolve only
    the resolver's words."""

    async def main() -> None:
        closed = socket.create_server(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        with pytest.raises(S.SSLNetworkError) as info:
            await aio.open_ssl_connection("127.0.0.1", port, "auto")
        refused = os.strerror(errno.ECONNREFUSED)
        assert (
            str(info.value) == f"open_ssl_connection: connect failed ({refused}: 127.0.0.1:{port})"
        )
        assert info.value.errno == errno.ECONNREFUSED

        def fail(*args: Any, **kw: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        monkeypatch.setattr(socket, "getaddrinfo", fail)
        with pytest.raises(S.SSLNetworkError) as info:
            await aio.open_ssl_connection("nowhere.invalid", 443, "auto")
        assert str(info.value).startswith(
            "open_ssl_connection: connect failed (cannot resolve 'nowhere.invalid': "
        )

    run("asyncio", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_a_deadline_around_the_client_handshake_closes_the_socket(loop_kind: str, how: str) -> None:
    """The client has no default handshake timeout (as ssl_connect, ports_to_ssl_ports; the
    server's is start_ssl_server's handshake_timeout): a deadline the caller puts around
    open_ssl_connection / wrap_ssl_streams against a server that never answers raises
    TimeoutError, and the socket is closed (the server sees its EOF)."""

    async def main() -> None:
        accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()
        ends: list[asyncio.StreamWriter] = []

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ends.append(w)
            await accepted.put(r)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            if how == "open":
                connecting = aio.open_ssl_connection("localhost", port, client_context())
            else:
                raw = await asyncio.open_connection("127.0.0.1", port)
                connecting = aio.wrap_ssl_streams(
                    *raw, context=client_context(), hostname="localhost"
                )
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(connecting, 0.2)
            r = await accepted.get()
            hello = await asyncio.wait_for(r.read(), 10)  # the ClientHello, then EOF
            assert hello[:1] == b"\x16"  # (a handshake record)
            for w in ends:
                w.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelled_read_loses_nothing_and_full_duplex(loop_kind: str) -> None:
    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            pending = asyncio.create_task(r.readexactly(4))
            await asyncio.sleep(0.05)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            data = os.urandom(4 << 20)  # writer and reader tasks at once
            got = await exchange(r, w, data)
            assert hashlib.sha1(got).digest() == hashlib.sha1(data).digest()
            w.close()

    run(loop_kind, main)


def test_strict_eof_and_ragged_close() -> None:
    async def main() -> None:
        async def rude(r: aio.SSLStreamReader, w: aio.SSLStreamWriter) -> None:
            w.write(b"bye")
            await w.drain()
            w.close()  # no close_notify

        server = await aio.start_ssl_server(rude, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            assert await r.read() == b"bye"  # EOF without close_notify is EOF by default
            w.close()
            r, w = await aio.open_ssl_connection(
                "localhost", port, client_context(), strict_eof=True
            )
            assert await r.readexactly(3) == b"bye"
            with pytest.raises(S.SSLError, match="unexpected eof"):
                await r.read(10)
            w.close()

    run("asyncio", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_thousand_concurrent_connections_on_one_loop(loop_kind: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))

    async def main() -> None:
        server = await aio.start_ssl_server(
            echo, "127.0.0.1", 0, server_context("tls13"), backlog=1024
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            cli = client_context("tls13")
            sem = asyncio.Semaphore(200)  # bound the handshakes in flight, not the connections

            async def one(i: int) -> tuple[aio.SSLStreamReader, aio.SSLStreamWriter]:
                async with sem:
                    return await aio.open_ssl_connection("localhost", port, cli, timeout=60)

            pairs = await asyncio.gather(*(one(i) for i in range(1000)))
            payloads = [f"conn {i}".encode() for i in range(1000)]
            results = await asyncio.gather(
                *(exchange(r, w, p) for (r, w), p in zip(pairs, payloads))
            )
            assert results == payloads
            for _r, w in pairs:
                w.close()

    run(loop_kind, main, timeout=240)


def test_socket_is_not_blocking_the_loop() -> None:
    """A slow peer never blocks the event loop: a ticker keeps running meanwhile."""

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def slow(r: aio.SSLStreamReader, w: aio.SSLStreamWriter) -> None:
            await asyncio.sleep(0.5)
            w.write(b"late")
            await w.drain()
            w.close()

        server = await aio.start_ssl_server(slow, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            t = asyncio.create_task(ticker())
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            assert await r.readexactly(4) == b"late"
            t.cancel()
            assert ticks >= 10
            w.close()

    run("asyncio", main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_write_eof_raises_as_over_asyncio_tls(loop_kind: str) -> None:
    """can_write_eof() is False, and write_eof() raises NotImplementedError as asyncio's TLS
    transport does (code written for asyncio falls back on it); there was no write_eof()
    (AttributeError). The connection is unharmed."""

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await aio.open_ssl_connection("localhost", port, client_context())
            assert not w.can_write_eof()
            with pytest.raises(NotImplementedError, match="shutdown"):
                w.write_eof()
            w.write(b"still open")
            assert await r.readexactly(10) == b"still open"
            w.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_writing_through_writer_transport_is_encrypted(loop_kind: str, how: str) -> None:
    """writer.transport was the TCP transport: transport.write() sent the caller's bytes in
    the clear (the server failed on a non-TLS record), and transport.can_write_eof() said True
    (write_eof() sent a bare FIN). As over asyncio's TLS transport, what it writes is now
    encrypted, it cannot write an EOF, it answers the TLS keys of get_extra_info, and the
    rest is the TCP transport's (its write buffer, abort: the test below)."""

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await connect_by(how, port)
            transport = w.transport
            transport.write(b"secret ")
            transport.writelines([b"over ", b"tls"])
            assert await asyncio.wait_for(r.readexactly(15), 10) == b"secret over tls"
            assert transport.can_write_eof() is False
            with pytest.raises(NotImplementedError):
                transport.write_eof()
            assert transport.get_extra_info("cipher") == w.get_extra_info("cipher")
            assert transport.get_extra_info("cipher") is not None
            assert transport.get_write_buffer_size() == 0
            assert not transport.is_closing()
            transport.close()
            assert w.is_closing()
            await asyncio.wait_for(w.wait_closed(), 10)

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
@pytest.mark.parametrize("strict", [False, True])
def test_transport_abort_as_over_asyncio_tls(loop_kind: str, how: str, strict: bool) -> None:
    """writer.transport.abort() (the TCP transport's): as over asyncio's TLS transport, the
    writer is closing at once, a waiting read ends with EOF, drain() raises a ConnectionError
    and wait_closed() returns. An abort is our own end, not a truncation by the peer: with
    strict_eof=True the waiting read raised SSLError (unexpected eof), though our own close()
    ends it with EOF. (Over wrap_ssl_streams it still does: a stream pair cannot tell an
    abort from its peer's EOF.)"""

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await connect_by(how, port, strict_eof=strict)
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
            waiting = asyncio.ensure_future(r.read(10))
            await asyncio.sleep(0)
            w.transport.abort()
            assert w.is_closing()
            if strict and how == "wrap":
                with pytest.raises(S.SSLError, match="unexpected eof"):
                    await asyncio.wait_for(waiting, 10)
            else:
                assert await asyncio.wait_for(waiting, 10) == b""
            w.write(b"lost")
            with pytest.raises(S.SSLNetworkError):
                await w.drain()
            await asyncio.wait_for(w.wait_closed(), 10)
            w.close()

    run(loop_kind, main)


def test_wrapped_socket_family_extra_info() -> None:
    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            _r, w = await aio.open_ssl_connection("localhost", port, client_context())
            sock = w.get_extra_info("socket")
            assert sock.family in (socket.AF_INET, socket.AF_INET6)
            assert w.get_extra_info("peername")[1] == port
            w.close()

    run("asyncio", main)


def _facts(w: aio.SSLStreamWriter) -> dict[str, Any]:
    return {
        "subject_name": S.ssl_peer_subject_name(w),
        "issuer_name": S.ssl_peer_issuer_name(w),
        "hostnames": S.ssl_peer_certificate_hostnames(w),
    }


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("version", VERSIONS)
def test_tls_extra_info_against_a_python_ssl_peer(loop_kind: str, version: str) -> None:
    """get_extra_info answers the TLS keys of asyncio's TLS transport: 'cipher' as the peer's
    ssl.SSLObject.cipher() says, 'sslcontext' our context, 'peercert' the section 5 facts of a
    verified peer (None for an unverified one), 'compression' None, 'ssl_object' the default;
    also after close(), as asyncio's. They all gave the default: code written for
    asyncio.open_connection(ssl=...) read a verified peer as having no certificate."""
    pinned = getattr(ssl.TLSVersion, "TLSv1_3" if version == "tls13" else "TLSv1_2")

    async def main() -> None:
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(str(S.TEST_PEM))
        sctx.minimum_version = sctx.maximum_version = pinned
        sctx.verify_mode = ssl.CERT_OPTIONAL  # (a client certificate when there is one)
        sctx.load_verify_locations(str(S.TEST_PEM))
        seen: asyncio.Queue[tuple[Any, Any]] = asyncio.Queue()

        async def tell(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            obj = w.get_extra_info("ssl_object")
            await seen.put((obj.cipher(), obj.getpeercert()))
            w.close()

        server = await asyncio.start_server(tell, "127.0.0.1", 0, ssl=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            # our client verifies the server and presents a certificate of its own
            cli = S.ssl_make_client_context(
                version, private_key=("pem", S.TEST_PEM), certificate_chain=S.TEST_PEM
            )
            S.ssl_load_verify_source(cli, S.TEST_PEM)
            S.ssl_set_verify(cli, True)
            _r, w = await aio.open_ssl_connection("localhost", port, cli)
            try:
                their_cipher, their_cert = await seen.get()
                assert their_cert["subject"]  # (the server verified our certificate)
                assert w.get_extra_info("cipher") == their_cipher
                assert their_cipher[1] == ("TLSv1.3" if version == "tls13" else "TLSv1.2")
                assert their_cipher[0] == S.ssl_cipher_name(w)
                assert w.get_extra_info("sslcontext") is cli
                cert = w.get_extra_info("peercert")
                assert cert == _facts(w)
                assert cert["subject_name"].endswith(b"/CN=localhost")
                assert "localhost" in cert["hostnames"]
                assert w.get_extra_info("compression") is None
                sentinel = object()
                assert w.get_extra_info("ssl_object", sentinel) is sentinel
                assert w.get_extra_info("peername")[1] == port  # (the TCP transport's)
            finally:
                w.close()
            await w.wait_closed()
            assert w.get_extra_info("cipher") == their_cipher
            assert w.get_extra_info("peercert") == cert
            # an unverifying client ("auto"): no verified certificate, so no peercert
            auto = S.ssl_make_client_context(version)
            _r, w = await aio.open_ssl_connection("localhost", port, auto)
            try:
                their_cipher, _ = await seen.get()
                assert w.get_extra_info("peercert") is None
                assert w.get_extra_info("cipher") == their_cipher
            finally:
                w.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["server", "wrap"])
def test_tls_extra_info_on_the_server_side(loop_kind: str, how: str) -> None:
    """A start_ssl_server (or wrap_ssl_streams) writer answers the TLS keys too: the client's
    certificate as 'peercert' once it verified (None from a client without one), and the
    cipher a Python ssl client negotiated."""

    async def main() -> None:
        srv = server_context()
        S.ssl_load_verify_source(srv, S.TEST_PEM)
        S.ssl_try_verify(srv, True)  # ask for a client certificate, take clients without one
        seen: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def tell(r: aio.SSLStreamReader, w: aio.SSLStreamWriter) -> None:
            keys = ["peercert", "cipher", "sslcontext", "compression", "ssl_object"]
            try:
                await seen.put({k: w.get_extra_info(k) for k in keys} | {"facts": _facts(w)})
            finally:
                w.close()

        async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await tell(*await aio.wrap_ssl_streams(r, w, mode="accept", context=srv))

        if how == "server":
            server: Any = await aio.start_ssl_server(tell, "127.0.0.1", 0, srv)
        else:
            server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            for with_cert in (True, False):
                cctx = ssl.create_default_context(cafile=str(S.TEST_PEM))
                if with_cert:
                    cctx.load_cert_chain(str(S.TEST_PEM))
                _pr, pw = await asyncio.open_connection("localhost", port, ssl=cctx)
                try:
                    info = await seen.get()
                    assert info["cipher"] == pw.get_extra_info("cipher")
                    assert info["sslcontext"] is srv
                    assert info["compression"] is None and info["ssl_object"] is None
                    if with_cert:
                        assert info["peercert"] == info["facts"]
                        assert info["peercert"]["subject_name"].endswith(b"/CN=localhost")
                    else:
                        assert info["peercert"] is None
                finally:
                    pw.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelled_drains_do_not_pile_up(loop_kind: str) -> None:
    """A service that puts a deadline on each drain() (asyncio.wait_for(w.drain(), t)) against
    a peer that stopped reading cancels a drain again and again: each cancelled one left its
    future in the connection until writing resumed, so memory grew with every attempt. The
    writes before and after arrive whole once the peer reads again."""

    async def main() -> None:
        release = asyncio.Event()
        got = bytearray()

        async def slow(r: aio.SSLStreamReader, w: aio.SSLStreamWriter) -> None:
            await release.wait()  # not reading: the client's writes back up
            while chunk := await r.read(65536):
                got.extend(chunk)
            w.close()

        server = await aio.start_ssl_server(slow, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            _r, w = await aio.open_ssl_connection("localhost", port, client_context())
            block = os.urandom(1 << 20)
            sent = 0
            while True:  # until drain() would wait: the transport's buffer is over its limit
                w.write(block)
                sent += len(block)
                try:
                    await asyncio.wait_for(w.drain(), 0.2)
                except asyncio.TimeoutError:
                    if w._sslports_conn.write_paused:  # (not only a slow turn of the loop)
                        break
            conn = w._sslports_conn
            for _ in range(300):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(w.drain(), 0.001)
            assert len(conn.drain_waiters) <= 1, len(conn.drain_waiters)
            release.set()
            await w.drain()
            w.close()
            await w.wait_closed()
            for _ in range(3000):
                if len(got) == sent:
                    break
                await asyncio.sleep(0.01)
            assert len(got) == sent

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_reader_iteration_bad_sizes_and_a_second_waiting_reader(loop_kind: str, how: str) -> None:
    """As asyncio.StreamReader: ``async for`` yields lines (the last without its newline) and
    ends at EOF; readexactly(-1) and readuntil(b"") are ValueError; a second coroutine that
    waits on a reader another one already waits on gets RuntimeError, and the first still
    gets its bytes. (Over wrap_ssl_streams the second reader was queued behind the first,
    unreported.)"""

    async def main() -> None:
        go = asyncio.Event()

        async def handler(r: aio.SSLStreamReader, w: aio.SSLStreamWriter) -> None:
            await go.wait()
            w.write(b"first\n")
            await w.drain()
            await r.readline()  # (the client's go-ahead)
            w.write(b"one\ntwo\nlast")
            await w.drain()
            w.close()

        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await connect_by(how, port, timeout=10)
            with pytest.raises(ValueError):
                await r.readexactly(-1)
            with pytest.raises(ValueError):
                await r.readuntil(b"")
            waiting = asyncio.ensure_future(r.readline())
            await asyncio.sleep(0)  # (it runs up to its wait: nothing is sent before `go`)
            assert not waiting.done()
            with pytest.raises(RuntimeError):
                await r.read(10)
            go.set()
            assert await asyncio.wait_for(waiting, 10) == b"first\n"
            w.write(b"go\n")
            lines = [line async for line in r]
            assert lines == [b"one\n", b"two\n", b"last"]
            assert r.at_eof()
            w.close()
            await w.wait_closed()

    run(loop_kind, main)


def test_ssl_abandon_port_refuses_an_asyncio_reader_or_writer() -> None:
    """ssl_abandon_port takes the synchronous ports: given an aio reader or writer it failed
    an internal assertion (a bare AssertionError; under `python -O`, it closed the writer).
    It is the TypeError of any other non-port, and the connection goes on."""

    async def main() -> bytes:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            r, w = await connect_by("open", port, timeout=10)
            for end in (r, w):
                with pytest.raises(TypeError, match="ssl_abandon_port: expected an SSL port"):
                    S.ssl_abandon_port(end)  # type: ignore[arg-type]
            got = await exchange(r, w, b"still open")
            w.close()
            await w.wait_closed()
            return got

    assert run("asyncio", main) == b"still open"
