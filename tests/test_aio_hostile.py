"""Hostile peers against sslports.aio (issue 9): tests/test_hostile.py's scenarios, on asyncio.

Each test runs on the default event loop and on uvloop. The misbehaving peer is the blocking
code of test_hostile.py (raw sockets, ``RawTLSClient``'s forged records, ``openssl s_client``)
run in a worker thread, so the loop under test keeps serving meanwhile. Every test checks:

* the documented exception: what the server's handler or the aio client saw, or, for a failed
  handshake, the exception ``start_ssl_server`` logs at debug level on the ``sslports`` logger
  (a failing server-name callback goes to the loop's exception handler instead);
* that the server keeps serving: a verified client gets a full round trip afterwards;
* that nothing is left behind: when the server is closed no task is pending and every
  transport is closed (the process has the sockets it had before the server started).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import hashlib
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Awaitable
from typing import Any, Callable, Optional

import pytest
from conftest import LOCAL
from test_aio import LOOPS, client_context, run
from test_hostile import (
    FORGED,
    HOSTILE_SERVERS,
    MALFORMED_FIRST_RECORDS,
    REC_ALERT,
    REC_DATA,
    REC_HANDSHAKE,
    WEAK_SUITES,
    RawTLSClient,
    act_hostile_server,
    alert_of,
    client_hello,
    read_until_closed,
    weak_client_hello,
)
from test_hostile import _forged as forged_record

import sslports
from sslports import SSLError, SSLNetworkError, aio

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

HANDSHAKE_TIMEOUT = 3.0  # the server's; every failing handshake below must end well before
JOIN = 10.0  # the longest any one step may take

Handler = Callable[[aio.SSLStreamReader, aio.SSLStreamWriter], Awaitable[Any]]


def _sockets() -> set[str]:
    """The sockets this process has open (descriptor: inode)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory's own descriptor, closed meanwhile
            continue
        if target.startswith("socket:"):
            found.add(f"{fd}: {target}")
    return found


def raw_connect(port: int) -> socket.socket:
    return socket.create_connection((LOCAL, port), timeout=JOIN)


def send_and_read(port: int, data: bytes, read: bool = True) -> bytes:
    """Connect, send `data`, then read until the server closes (or close at once)."""
    with raw_connect(port) as s:
        if data:
            s.sendall(data)
        return read_until_closed(s) if read else b""


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run the blocking peer `fn` in a worker thread, bounded by JOIN."""
    return await asyncio.wait_for(asyncio.to_thread(fn), JOIN)


async def echo_line(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> bytes:
    line = await reader.readline()
    writer.write(line)
    await writer.drain()
    return line


class _Failures(logging.Handler):
    """Collects the exceptions start_ssl_server logs for the handshakes it drops."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.seen.append(record.exc_info[1])


class Server:
    """An aio server under test (``async with``), for one test's connections in turn.

    Each accepted connection runs the next handler of `handlers` (default: echo one line); its
    result, or the exception it raised, lands in `results`. At exit the server is closed and
    the test fails if a task is still pending or a socket is still open.
    """

    def __init__(
        self,
        pki: Any,
        version: str = "auto",
        *,
        context: Optional[sslports.SSLServerContext] = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.pki = pki
        self.context = context or pki.server_context(version)
        if context is None and version == "tls13":
            # RawTLSClient forges with one suite; the server must pick it
            sslports.ssl_set_ciphersuites(self.context, "TLS_AES_128_GCM_SHA256")
        self.handshake_timeout = handshake_timeout
        self.handlers: list[Handler] = []
        self.results: asyncio.Queue[Any] = asyncio.Queue()
        self.failures = _Failures()
        self.loop_errors: list[dict[str, Any]] = []
        self.port = 0

    async def _on_client(self, reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        handler = self.handlers.pop(0) if self.handlers else echo_line
        try:
            result: Any = await asyncio.wait_for(handler(reader, writer), JOIN)
        except Exception as exc:
            result = exc
        finally:
            writer.close()
        await self.results.put(result)

    async def __aenter__(self) -> Server:
        self.sockets = _sockets()
        self.tasks = asyncio.all_tasks()  # the test's own
        logger = logging.getLogger("sslports")
        self.saved_level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self.failures)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.server = await aio.start_ssl_server(
            self._on_client,
            LOCAL,
            0,
            self.context,
            handshake_timeout=self.handshake_timeout,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        logger = logging.getLogger("sslports")
        try:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), JOIN)
            if exc[0] is None:
                await self.check_nothing_left()
        finally:
            logger.removeHandler(self.failures)
            logger.setLevel(self.saved_level)
            asyncio.get_running_loop().set_exception_handler(None)

    async def check_nothing_left(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            tasks = [t for t in asyncio.all_tasks() if t not in self.tasks]
            left = _sockets() - self.sockets
            if (not tasks and not left) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        assert not tasks, f"tasks left pending: {tasks}"
        assert not left, f"sockets left open: {left}"
        assert not self.loop_errors, self.loop_errors

    async def result(self) -> Any:
        return await asyncio.wait_for(self.results.get(), JOIN)

    async def failure(self) -> BaseException:
        """The next handshake failure the server logs (waiting for it)."""
        deadline = time.monotonic() + JOIN
        while not self.failures.seen:
            assert time.monotonic() < deadline, "no handshake failure was logged"
            await asyncio.sleep(0.01)
        return self.failures.seen.pop(0)

    async def assert_serving(self) -> None:
        """A verified client still gets a full round trip (to 127.0.0.1: no SNI)."""
        reader, writer = await aio.open_ssl_connection(
            LOCAL, self.port, self.pki.client_context(), timeout=JOIN
        )
        try:
            writer.write(b"still serving\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), JOIN) == b"still serving\n"
        finally:
            writer.close()
            await writer.wait_closed()
        assert await self.result() == b"still serving\n"
        assert not self.failures.seen, self.failures.seen


# -- 1. garbage, truncation and malformed records before the handshake completes ----------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_garbage_truncated_and_malformed_hellos(pki: Any, loop_kind: str) -> None:
    hello = client_hello()
    peers: list[tuple[str, bytes]] = [
        (f"random-{seed}", hashlib.shake_256(seed.to_bytes(4, "big")).digest(64 + 300 * seed))
        for seed in range(3)
    ]
    peers += [(f"truncated-{f}", hello[: max(1, int(len(hello) * f))]) for f in (0.05, 0.5, 0.95)]
    peers += sorted(MALFORMED_FIRST_RECORDS.items())
    peers.append(("empty", b""))

    async def main() -> None:
        async with Server(pki) as srv:
            for name, data in peers:
                started = time.monotonic()
                wait = not (name.startswith("truncated") or name == "empty")
                answer = await in_thread(functools.partial(send_and_read, srv.port, data, wait))
                exc = await srv.failure()
                assert time.monotonic() - started < HANDSHAKE_TIMEOUT, name
                assert isinstance(exc, SSLNetworkError), (name, exc)
                assert not isinstance(exc, TimeoutError), (name, exc)
                assert exc.message.startswith("ssl_accept: accept failed"), (name, exc)
                if name in MALFORMED_FIRST_RECORDS and name != "alert-first":
                    alert = alert_of(answer)
                    assert alert is None or alert[0] == 2, f"{name}: a non-fatal alert"
            await srv.assert_serving()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_hostile_server_handshakes(loop_kind: str) -> None:
    """open_ssl_connection against servers that misbehave before the handshake completes."""

    def serve_once(srv: socket.socket, behaviour: str) -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(JOIN)
            act_hostile_server(conn, behaviour)

    async def main() -> None:
        sockets = _sockets()
        behaviours = HOSTILE_SERVERS
        for behaviour in behaviours:
            with socket.socket() as srv:
                srv.bind((LOCAL, 0))
                srv.listen(1)
                srv.settimeout(JOIN)
                port = srv.getsockname()[1]
                peer = asyncio.ensure_future(
                    in_thread(functools.partial(serve_once, srv, behaviour))
                )
                with pytest.raises(SSLNetworkError) as info:
                    await aio.open_ssl_connection(LOCAL, port, timeout=JOIN)
                await peer
            assert info.value.message.startswith("open_ssl_connection: "), behaviour
            if behaviour == "alert":
                assert "alert handshake failure" in info.value.message
        assert _sockets() <= sockets

    run(loop_kind, main)


# -- 2. stalls ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_stalled_handshakes_time_out(pki: Any, loop_kind: str) -> None:
    """handshake_timeout bounds each handshake: silent, half a hello, one byte at a time."""
    hello = client_hello()

    async def main() -> None:
        async with Server(pki, handshake_timeout=0.5) as srv:
            stop = threading.Event()
            socks = [raw_connect(srv.port) for _ in range(3)]
            socks[1].sendall(hello[: len(hello) // 2])

            def drip() -> None:
                for i in range(len(hello) - 1):
                    if stop.wait(0.05):
                        return
                    try:
                        socks[2].send(hello[i : i + 1])
                    except OSError:
                        return

            started = time.monotonic()
            dripper = asyncio.ensure_future(asyncio.to_thread(drip))
            try:
                failures = [await srv.failure() for _ in socks]
                elapsed = time.monotonic() - started
            finally:
                stop.set()
                await dripper
                for s in socks:
                    s.close()
            for exc in failures:
                assert isinstance(exc, SSLNetworkError) and isinstance(exc, TimeoutError)
                assert "timed out" in exc.message
            assert 0.3 < elapsed < 5
            await srv.assert_serving()
            # a handshake still in progress when the server closes is cancelled, its
            # connection closed (the peer reads EOF at once)
            with raw_connect(srv.port) as stalled:
                await asyncio.sleep(0.1)
                srv.server.close()
                await asyncio.wait_for(srv.server.wait_closed(), JOIN)
                assert await in_thread(lambda: read_until_closed(stalled)) == b""

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_stall_mid_record_read_timeout(pki: Any, loop_kind: str, version: str) -> None:
    """Half a record, a read that times out (wait_for), then the rest: nothing is lost."""

    async def main() -> None:
        half_sent = asyncio.Event()
        rest_sent = threading.Event()

        async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
            await half_sent.wait()
            started = time.monotonic()
            try:
                await asyncio.wait_for(reader.read(100), 0.3)
            except asyncio.TimeoutError:
                waited = time.monotonic() - started
            rest_sent.set()
            return waited, await reader.readexactly(12), await reader.readexactly(6)

        async with Server(pki, version) as srv:
            srv.handlers.append(handler)
            c = RawTLSClient(srv.port, version)
            try:
                await in_thread(c.handshake)
                rec = c.record(REC_DATA, b"first record")
                c.send(rec[:9])
                half_sent.set()
                await in_thread(lambda: rest_sent.wait(JOIN))
                c.send(rec[9:] + c.record(REC_DATA, b"second"))
                waited, first, second = await srv.result()
            finally:
                c.close()
            assert 0.2 < waited < 3
            assert (first, second) == (b"first record", b"second")
            await srv.assert_serving()

    run(loop_kind, main)


# -- 3. forged records after the handshake: malformed, oversized, alerts -------------------------


async def _read_then_fail(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
    results: list[Any] = [await reader.readexactly(len(b"before"))]
    for _ in range(2):  # the failure is sticky
        try:
            results.append(await reader.read(100))
        except SSLError as exc:
            results.append(exc)
    return results


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_forged_records_mid_stream(pki: Any, loop_kind: str, version: str) -> None:
    async def main() -> None:
        async with Server(pki, version) as srv:
            for kind in FORGED:
                srv.handlers.append(_read_then_fail)
                c = RawTLSClient(srv.port, version)
                try:
                    await in_thread(c.handshake)
                    c.send(c.record(REC_DATA, b"before") + forged_record(c, kind))
                    results = await srv.result()
                    await in_thread(functools.partial(read_until_closed, c.sock))
                finally:
                    c.close()
                assert results[0] == b"before", kind
                exc = results[1]
                assert isinstance(exc, SSLNetworkError), (kind, results)
                assert exc.message.startswith("read: read failed ("), (kind, exc)
                assert exc.openssl_errors or exc.errno, kind
                if kind == "fatal-alert":
                    assert "alert internal error" in exc.message
                assert results[2] is exc, kind
            await srv.assert_serving()

    run(loop_kind, main)


# -- 4. EOF without close_notify ------------------------------------------------------------------


def _python_tls_server(pki: Any, version: str, ending: str) -> tuple[socket.socket, Any]:
    """A one-connection Python ssl server that sends b"payload" and then ends as `ending`."""
    ctx = pki.py_server_context(version)
    srv = socket.socket()
    srv.bind((LOCAL, 0))
    srv.listen(1)
    srv.settimeout(JOIN)

    def act() -> None:
        conn, _ = srv.accept()
        conn.settimeout(JOIN)
        tls = ctx.wrap_socket(conn, server_side=True)
        tls.sendall(b"payload")
        if ending == "close_notify":
            try:
                tls.unwrap()  # sends close_notify, then waits for ours: never sent
            except (ssl.SSLError, OSError):
                pass
            tls.close()
            return
        time.sleep(0.05)
        raw = socket.socket(fileno=tls.detach())
        if ending == "truncated-record":
            raw.sendall(b"\x17\x03\x03\x00\x40" + b"\x00" * 20)  # 20 of 64 announced bytes
        raw.close()  # no close_notify

    return srv, act


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("strict", [False, True])
def test_eof_policy(pki: Any, loop_kind: str, strict: bool) -> None:
    async def main() -> None:
        sockets = _sockets()
        for version in ("tls12", "tls13"):
            for ending in ("ragged", "truncated-record", "close_notify"):
                for kind in ("open_ssl_connection", "wrap_ssl_streams"):
                    srv, act = _python_tls_server(pki, version, ending)
                    port = srv.getsockname()[1]
                    peer = asyncio.ensure_future(in_thread(act))
                    ctx = pki.client_context(version)
                    if kind == "open_ssl_connection":
                        reader, writer = await aio.open_ssl_connection(
                            "localhost", port, ctx, timeout=JOIN, strict_eof=strict
                        )
                    else:
                        raw = await asyncio.open_connection(LOCAL, port)
                        reader, writer = await aio.wrap_ssl_streams(
                            *raw, context=ctx, hostname="localhost", strict_eof=strict
                        )
                    case = (version, ending, kind, strict)
                    try:
                        assert await reader.readexactly(7) == b"payload", case
                        if strict and ending != "close_notify":
                            for _ in range(2):  # sticky
                                with pytest.raises(SSLError, match="unexpected eof"):
                                    await asyncio.wait_for(reader.read(100), JOIN)
                        else:
                            assert await asyncio.wait_for(reader.read(100), JOIN) == b"", case
                            assert await reader.read(100) == b"", case
                            assert reader.at_eof()
                    finally:
                        writer.close()
                        await writer.wait_closed()
                        await peer
                        srv.close()
        assert _sockets() <= sockets

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_server_side_ragged_eof_is_eof(pki: Any, loop_kind: str, version: str) -> None:
    async def read_to_end(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
        return await reader.readexactly(5), await reader.read(100), await reader.read(100)

    async def main() -> None:
        async with Server(pki, version) as srv:
            srv.handlers.append(read_to_end)
            c = RawTLSClient(srv.port, version)
            try:
                await in_thread(c.handshake)
                c.send(c.record(REC_DATA, b"hello"))
                c.sock.shutdown(socket.SHUT_WR)  # a FIN without close_notify
                assert await srv.result() == (b"hello", b"", b"")
                await in_thread(lambda: read_until_closed(c.sock))
            finally:
                c.close()
            await srv.assert_serving()

    run(loop_kind, main)


# -- 5. renegotiation and KeyUpdate -------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_client_initiated_renegotiation_refused(pki: Any, loop_kind: str) -> None:
    """``openssl s_client -tls1_2`` and "R": the server refuses; its read reports the end."""

    async def main() -> None:
        got_line = threading.Event()

        async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
            results: list[Any] = [await reader.readline()]
            got_line.set()
            try:
                results.append(await reader.read(100))
            except SSLError as exc:
                results.append(exc)
            return results

        async with Server(pki, "tls12") as srv:
            srv.handlers.append(handler)
            assert OPENSSL is not None
            cmd = [OPENSSL, "s_client", "-connect", f"{LOCAL}:{srv.port}", "-tls1_2"]

            def s_client() -> bytes:
                proc = subprocess.Popen(
                    [*cmd, "-no_ign_eof"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(b"hello\n")
                    proc.stdin.flush()
                    assert got_line.wait(JOIN)
                    proc.stdin.write(b"R\n")
                    proc.stdin.flush()
                    return proc.communicate(timeout=JOIN)[1]
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.communicate()

            err = await in_thread(s_client)
            results = await srv.result()
            assert results[0] == b"hello\n"
            assert b"RENEGOTIATING" in err and b"no renegotiation" in err
            # s_client gave up on our no_renegotiation warning with a fatal alert
            assert isinstance(results[1], SSLNetworkError), results
            assert "alert handshake failure" in results[1].message
            # ... in words that fit: not the first handshake's "no cipher in common"
            assert "gave up the renegotiation it asked for" in results[1].message
            assert "cipher" not in results[1].message
            await srv.assert_serving()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_renegotiation_and_key_update_floods(pki: Any, loop_kind: str) -> None:
    """TLS 1.2: 1000 renegotiation ClientHellos, each refused (one warning each) while data
    flows; TLS 1.3: 1000 KeyUpdates (answered when requested); TLS 1.3 renegotiation is fatal."""

    async def data_then_eof(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
        return await reader.readexactly(len(b"still here")), await reader.read(100)

    async def main() -> None:
        async with Server(pki, "tls12") as srv:
            srv.handlers.append(data_then_eof)
            c = RawTLSClient(srv.port, "tls12")
            try:
                await in_thread(c.handshake)
                hellos = b"".join(
                    c.record(REC_HANDSHAKE, b"\x01\x00\x00\x04abcd") for _ in range(1000)
                )
                tail = c.record(REC_DATA, b"still here") + c.record(REC_ALERT, b"\x01\x00")
                c.send(hellos + tail)
                assert await srv.result() == (b"still here", b"")
                answers = await in_thread(lambda: read_until_closed(c.sock))
            finally:
                c.close()
            assert len(answers) >= 1000 * 31  # one encrypted warning per ClientHello
            await srv.assert_serving()
        for requested in (False, True):
            async with Server(pki, "tls13") as srv:
                srv.handlers.append(data_then_eof)
                c = RawTLSClient(srv.port, "tls13")
                try:
                    await in_thread(c.handshake)
                    flood = b"".join(c.key_update(requested) for _ in range(1000))
                    tail = c.record(REC_DATA, b"still here") + c.record(REC_ALERT, b"\x01\x00")
                    c.send(flood + tail)
                    assert await srv.result() == (b"still here", b"")
                finally:
                    c.close()
                await srv.assert_serving()

        async def read_fails(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
            try:
                return await reader.read(100)
            except SSLError as exc:
                return exc

        async with Server(pki, "tls13") as srv:
            srv.handlers.append(read_fails)
            c = RawTLSClient(srv.port, "tls13")
            try:
                await in_thread(c.handshake)
                c.send(c.record(REC_HANDSHAKE, client_hello()[5:]))
                exc = await srv.result()
            finally:
                c.close()
            assert isinstance(exc, SSLNetworkError) and "unexpected message" in exc.message
            await srv.assert_serving()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_answers_to_a_peer_that_never_reads_stay_bounded(pki: Any, loop_kind: str) -> None:
    """TLS 1.2: a client floods renegotiation ClientHellos, each refused with a warning alert,
    and never reads the alerts. Once they fill the transport's write buffer past its high-water
    mark the server reads no more of the flood (even while its handler waits to read), so what
    it buffers stays bounded; the connection still ends when the client goes."""
    hellos = 100_000

    async def hold(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> Any:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel holds little
        held.append(writer)
        try:
            return await reader.read(100)
        except SSLError as exc:
            return exc

    held: list[aio.SSLStreamWriter] = []

    async def main() -> tuple[int, int, Any]:
        async with Server(pki, "tls12") as srv:
            srv.handlers.append(hold)
            c = RawTLSClient(srv.port, "tls12")
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                await in_thread(c.handshake)
                hello = b"\x01\x00\x00\x04abcd"
                flood = b"".join(c.record(REC_HANDSHAKE, hello) for _ in range(hellos))
                while not held:
                    await asyncio.sleep(0.01)
                transport = held[0].transport
                high = transport.get_write_buffer_limits()[1]
                sender = threading.Thread(target=lambda: _quietly(c.sock.sendall, flood))
                sender.start()
                # Watched for 5 s from when the answers first reach the high-water mark (on a
                # slow build, such as the sanitizers', that takes longer), or until what the
                # flood's last input makes is in.
                peak, give_up = 0, time.monotonic() + 120
                watch_until: Optional[float] = None
                settled: Optional[float] = None
                while True:
                    now = time.monotonic()
                    peak = max(peak, transport.get_write_buffer_size())
                    if watch_until is None and peak >= high:
                        watch_until = now + 5
                    if settled is None and not sender.is_alive():
                        settled = now + 0.5
                    if now >= min(t for t in (watch_until, settled, give_up) if t is not None):
                        break
                    await asyncio.sleep(0.01)
            finally:
                c.close()
            sender.join(JOIN)
            return peak, high, await srv.result()

    peak, high, result = run(loop_kind, main)
    assert high <= peak <= 8 * high  # (before: it grew with the flood, ~1.4 MB here)
    assert isinstance(result, SSLNetworkError) or result == b""


def _resetting_server() -> tuple[socket.socket, threading.Thread]:
    """A one-connection Python ssl server that reads a line, then resets the connection."""
    listener = socket.create_server((LOCAL, 0))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sslports.TEST_PEM)

    listener.settimeout(JOIN)  # (a test that fails before sending its line ends this thread)

    def serve() -> None:
        conn, _addr = listener.accept()
        conn.settimeout(JOIN)
        with tls.wrap_socket(conn, server_side=True) as s:
            s.recv(100)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    join = threading.Thread(target=serve)
    join.start()
    return listener, join


async def _connect(how: str, port: int) -> tuple[aio.SSLStreamReader, aio.SSLStreamWriter]:
    if how == "open":
        return await aio.open_ssl_connection(LOCAL, port, client_context(), timeout=JOIN)
    raw = await asyncio.open_connection(LOCAL, port)
    return await aio.wrap_ssl_streams(*raw, context=client_context(), hostname=LOCAL, timeout=JOIN)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_writes_after_a_reset_raise(loop_kind: str, how: str) -> None:
    """The peer resets the connection: a writer that goes on writing and draining gets
    SSLNetworkError (a ConnectionError, as asyncio's own drain() raises), over a stream pair
    too, instead of its bytes vanishing; with the errno of the failure, as a read's (README,
    asyncio.md: it had none, only its text in the message)."""
    listener, join = _resetting_server()
    port = listener.getsockname()[1]

    async def main() -> Any:
        _reader, writer = await _connect(how, port)
        writer.write(b"hello\n")
        await writer.drain()
        await asyncio.to_thread(join.join, JOIN)  # reset by now
        try:
            for _ in range(200):
                writer.write(b"x" * 16384)
                await writer.drain()
                await asyncio.sleep(0.005)
        except SSLNetworkError as exc:
            return exc
        finally:
            writer.close()
        return "every write went through"

    try:
        failure = run(loop_kind, main)
    finally:
        listener.close()
    assert isinstance(failure, SSLNetworkError), failure
    assert failure.errno in (errno.ECONNRESET, errno.EPIPE), failure


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_what_came_before_a_reset_is_read_first(loop_kind: str, how: str) -> None:
    """asyncio.md: after a reset, what arrived before it is read first, then the error is
    raised. Over wrap_ssl_streams the ciphertext the raw StreamReader held was lost: its read()
    raises the reset before it returns what it buffered, and the reader got none of the
    100 000 bytes the server sent (and the kernel delivered) before resetting."""
    listener = socket.create_server((LOCAL, 0))
    listener.settimeout(JOIN)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sslports.TEST_PEM)
    payload = os.urandom(100_000)

    def serve() -> None:
        conn, _addr = listener.accept()
        conn.settimeout(JOIN)
        with tls.wrap_socket(conn, server_side=True) as s:
            s.recv(100)
            s.sendall(payload)
            time.sleep(0.3)  # (delivered: the client's kernel acknowledged it by now)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    join = threading.Thread(target=serve)
    join.start()

    async def main() -> tuple[bytes, BaseException]:
        reader, writer = await _connect(how, listener.getsockname()[1])
        writer.write(b"hello\n")
        await writer.drain()
        await asyncio.to_thread(join.join, JOIN)
        await asyncio.sleep(0.3)  # (the reset came in: the raw side holds its error)
        got = b""
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    return got, EOFError("EOF")
                got += chunk
        except SSLNetworkError as exc:
            return got, exc
        finally:
            writer.close()

    try:
        got, end = run(loop_kind, main)
    finally:
        listener.close()
    assert (len(got), got == payload) == (len(payload), True)
    assert isinstance(end, SSLNetworkError) and end.errno == errno.ECONNRESET, end


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_drain_after_close_raises_and_lets_the_loop_run(loop_kind: str, how: str) -> None:
    """A producer's write-and-drain loop to a peer that reads slowly, and another task that
    closes the writer (a shutdown handler). After close() writes are dropped, and drain()
    returned at once without a turn of the loop once writing resumed: the producer spun at
    100 % for ever and no other task ran again. Now drain() after close() gives the loop a
    turn and raises SSLNetworkError, as asyncio's drain() raises once the transport closes."""
    listener = socket.create_server((LOCAL, 0))
    listener.settimeout(JOIN)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sslports.TEST_PEM)

    def serve() -> None:  # (reads slowly until the end)
        conn, _addr = listener.accept()
        conn.settimeout(JOIN)
        with tls.wrap_socket(conn, server_side=True) as s, contextlib.suppress(OSError):
            while s.recv(4096):
                time.sleep(0.001)

    join = threading.Thread(target=serve)
    join.start()

    async def main() -> tuple[int, int, Any]:
        _reader, writer = await _connect(how, listener.getsockname()[1])
        ticks = [0]

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        async def closer() -> None:
            await asyncio.sleep(0.2)
            writer.close()

        tick_task = asyncio.create_task(ticker())
        close_task = asyncio.create_task(closer())
        rounds = ticks_then = 0
        failure: Any = "drain() never raised"
        try:
            while rounds < 100_000:
                if writer.is_closing():
                    rounds += 1
                    ticks_then = ticks_then or ticks[0]
                writer.write(b"x" * 1024)
                await writer.drain()
        except SSLNetworkError as exc:
            failure = exc
        tick_task.cancel()
        await close_task
        with contextlib.suppress(SSLNetworkError):
            await writer.wait_closed()  # (the lingering close: the peer reads the rest)
        return rounds, ticks[0] - ticks_then, failure

    try:
        rounds, ticks_after, failure = run(loop_kind, main)
    finally:
        listener.close()
        join.join(JOIN)
    # ("the writer is closed", or over a stream pair what its closed transport says)
    assert isinstance(failure, SSLNetworkError), (failure, rounds, ticks_after)
    assert rounds == 1 and ticks_after >= 1, (rounds, ticks_after)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_wait_closed_reports_a_reset(loop_kind: str, how: str) -> None:
    """As asyncio's StreamWriter.wait_closed() re-raises what the transport lost the connection
    with, close() then wait_closed() after a reset raises SSLNetworkError (a ConnectionError,
    with the errno), on every call; it returned as after a clean close. ``async with writer``
    raises it too, but never over an exception of its body."""
    listeners: list[socket.socket] = []

    async def reset_connection() -> aio.SSLStreamWriter:
        listener, join = _resetting_server()
        listeners.append(listener)
        reader, writer = await _connect(how, listener.getsockname()[1])
        writer.write(b"hello\n")
        await writer.drain()
        await asyncio.to_thread(join.join, JOIN)  # reset by now
        with pytest.raises(SSLNetworkError):
            await asyncio.wait_for(reader.read(100), JOIN)
        return writer

    async def main() -> None:
        writer = await reset_connection()
        writer.close()
        for _ in range(2):
            with pytest.raises(SSLNetworkError) as info:
                await asyncio.wait_for(writer.wait_closed(), JOIN)
            assert isinstance(info.value, ConnectionError)
            assert info.value.errno == errno.ECONNRESET, info.value
        with pytest.raises(SSLNetworkError):
            async with await reset_connection():
                pass
        with pytest.raises(ValueError, match="the body's"):
            async with await reset_connection():
                raise ValueError("the body's own error")

    try:
        run(loop_kind, main)
    finally:
        for listener in listeners:
            listener.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
@pytest.mark.parametrize("alert_first", [False, True])
def test_a_reset_during_the_handshake_names_the_reset(
    loop_kind: str, how: str, alert_first: bool
) -> None:
    """A server that reads the ClientHello, then resets the connection: the handshake fails
    with the reset and its errno, as a socket port's handshake (ssl_connect) says it; it said
    "unexpected eof ... the peer closed the connection", with no errno, on asyncio. A server
    that sends a fatal alert right before its reset: the alert is the reason."""
    listener = socket.create_server((LOCAL, 0))
    listener.settimeout(JOIN)
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _addr = listener.accept()
        with conn:
            conn.settimeout(JOIN)
            conn.recv(4096)  # the ClientHello
            if alert_first:
                conn.sendall(bytes([REC_ALERT, 3, 3, 0, 2, 2, 40]))  # fatal handshake_failure
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    server = threading.Thread(target=serve)
    server.start()

    async def main() -> BaseException:
        with pytest.raises(SSLNetworkError) as info:
            await _connect(how, port)
        return info.value

    try:
        failure = run(loop_kind, main)
    finally:
        server.join(JOIN)
        listener.close()
    if alert_first:
        assert "alert handshake failure" in str(failure), failure
        return
    assert failure.errno == errno.ECONNRESET
    assert "connect failed (Connection reset by peer" in str(failure), failure
    assert f"{LOCAL}:{port}" in str(failure)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_cancelled_wait_closed_leaves_the_outcome(loop_kind: str, how: str) -> None:
    """A deadline around wait_closed() that expired while the connection was still open
    cancelled the connection's own close future (asyncio's StreamWriter has the same flaw):
    every later wait_closed() raised CancelledError, as if its caller had been cancelled, and
    the reset that ended the connection was never reported. Now a later call waits again and
    reports it. Over wrap_ssl_streams each cancelled call also left a task behind, whose
    reset nobody retrieved ("Task exception was never retrieved", logged once per call)."""
    listener, join = _resetting_server()
    logged: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: logged.append(context["message"])
        )
        reader, writer = await _connect(how, listener.getsockname()[1])
        before = len(asyncio.all_tasks())
        for _ in range(5):  # (the server holds the connection open until it gets a line)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.01)
        assert len(asyncio.all_tasks()) <= before + 1  # (one the calls share, at most)
        writer.write(b"hello\n")
        await writer.drain()
        await asyncio.to_thread(join.join, JOIN)  # reset by now
        with pytest.raises(SSLNetworkError):
            await asyncio.wait_for(reader.read(100), JOIN)
        writer.close()
        for _ in range(2):
            with pytest.raises(SSLNetworkError) as info:
                await asyncio.wait_for(writer.wait_closed(), JOIN)
            assert info.value.errno == errno.ECONNRESET, info.value
        del reader, writer
        gc.collect()  # (an unretrieved exception is logged as its task is freed)
        await asyncio.sleep(0)

    try:
        run(loop_kind, main)
    finally:
        listener.close()
    assert logged == []


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(OSError):
        fn(*args)


# -- 6. old protocols and weak ciphers ---------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("loop_kind", LOOPS)
def test_old_protocols_and_weak_ciphers_refused(pki: Any, loop_kind: str) -> None:
    weak_clients = [
        ("tls1", ["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
        ("tls1_1", ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
    ]

    async def main() -> None:
        async with Server(pki) as srv:
            assert OPENSSL is not None
            for name, args in weak_clients:
                cmd = [OPENSSL, "s_client", "-connect", f"{LOCAL}:{srv.port}", *args]
                run_client = functools.partial(
                    subprocess.run, cmd, input=b"", capture_output=True, timeout=JOIN
                )
                proc = await in_thread(run_client)
                if b"no cipher match" in proc.stderr or b"no protocols available" in proc.stderr:
                    continue  # this openssl cannot offer it; nothing reached the server
                assert proc.returncode != 0, name
                exc = await srv.failure()
                assert isinstance(exc, SSLNetworkError), (name, exc)
                assert "unsupported protocol" in exc.message, (name, exc.message)
            for family, suites in sorted(WEAK_SUITES.items()):
                hello = weak_client_hello(suites)
                answer = await in_thread(functools.partial(send_and_read, srv.port, hello))
                exc = await srv.failure()
                assert "no shared cipher" in exc.message, (family, exc)
                assert alert_of(answer) == (2, 40), family  # fatal handshake_failure
            await srv.assert_serving()

    run(loop_kind, main)


# -- 7. server-name callbacks that misbehave -------------------------------------------------------


class _Boom(Exception):
    pass


def _raise(name: str) -> Any:
    raise _Boom(f"no context for {name}")


SNI_CASES: list[tuple[str, Callable[[str], Any], type[BaseException]]] = [
    ("raises", _raise, _Boom),
    ("str", lambda name: "a string", TypeError),
    ("int", lambda name: 42, TypeError),
    ("client-context", lambda name: sslports.ssl_make_client_context(), TypeError),
    ("no-certificate", lambda name: sslports.ssl_make_server_context(), SSLNetworkError),
]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_sni_callback_misbehaves(pki: Any, loop_kind: str) -> None:
    """The client gets an alert; a callback's own exception goes to the loop's exception
    handler (a failure of the context it returned is a handshake failure, logged); IP-literal
    clients (no SNI, no callback) are still served."""

    async def main() -> None:
        for name, callback, expected in SNI_CASES:
            ctx = pki.server_context()
            sslports.ssl_set_server_name_identification_callback(ctx, callback)
            async with Server(pki, context=ctx) as srv:
                with pytest.raises(SSLNetworkError) as client_side:
                    await aio.open_ssl_connection(
                        "localhost", srv.port, pki.client_context(), timeout=JOIN
                    )
                assert "alert" in client_side.value.message, name
                if expected is SSLNetworkError:
                    exc = await srv.failure()
                else:
                    deadline = time.monotonic() + JOIN
                    while not srv.loop_errors:
                        assert time.monotonic() < deadline, name
                        await asyncio.sleep(0.01)
                    context = srv.loop_errors.pop()
                    exc = context["exception"]
                    assert "server-name callback" in context["message"]
                assert isinstance(exc, expected), (name, exc)
                await srv.assert_serving()  # an IP literal sends no SNI

    run(loop_kind, main)
