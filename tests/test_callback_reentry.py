"""User code the library calls, calling the library back: key loggers, server-name callbacks,
the ``error=`` argument of ports_to_ssl_ports, the streams under it, and the
ssl_default_verify_sources parameter.

A call that would wait for a lock its own thread holds gets an error instead of a deadlock:
- a port called from inside a call on it (a stream of its own that reads the port it feeds,
  an ``error=`` callable that reads its port, a key logger that reads the connection whose
  renegotiation it logs) raises RuntimeError, as io.BufferedReader's reentrant call;
- a pump call (write, flush, read) from a callback that runs inside an OpenSSL call on the
  same connection fails with errno EDEADLK, and the connection goes on; queries work there.

Every step that could hang runs in a thread joined with a bound: before these fixes, each
of them deadlocked forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import logging
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

import pytest
from conftest import LOCAL, run_in_thread

import sslports
from sslports import SSLError, aio, ports

JOIN = 20.0  # seconds: the correct outcome takes well under one


@pytest.fixture
def locks(path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ports' fast path and its C Lock, then their Python methods with the Python lock
    (without the C module both are what is left)."""
    if path == "python":
        monkeypatch.setattr(ports, "_new_lock", ports._PortLock)
    return path


# -- a key logger that uses the connection whose TLS 1.2 renegotiation it logs ---------------


def _renegotiating_pair(
    pki: Any, keylogged: str, action: Callable[[Any, Any], None]
) -> tuple[list[bytes], list[bytes]]:
    """A TLS 1.2 connection whose server renegotiates (ssl_try_verify) after the first line;
    the `keylogged` side's key logger runs action(in, out) on its own ports for each line of
    the renegotiation. Returns the lines the server read, and those the client read."""
    sctx = pki.server_context()
    cctx = pki.client_context("tls12")
    armed: dict[str, tuple[Any, Any]] = {}

    def keylogger(line: bytes) -> None:
        if keylogged in armed:
            action(*armed[keylogged])

    sslports.ssl_set_keylogger(sctx if keylogged == "server" else cctx, keylogger)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, sctx)
    port = sslports.ssl_addresses(listener, True)[1]
    server_lines: list[bytes] = []

    def serve() -> None:
        i, o = sslports.ssl_accept(listener)
        armed["server"] = (i, o)
        server_lines.append(i.readline())
        sslports.ssl_try_verify(i, True)  # renegotiates: new key-log lines on both sides
        o.write(b"after\n")
        o.flush()
        while server_lines[-1] != b"bye\n":
            server_lines.append(i.readline())
        o.close()
        i.close()

    def client() -> list[bytes]:
        i, o = sslports.ssl_connect("localhost", port, cctx, timeout=JOIN)
        armed["client"] = (i, o)
        o.write(b"hello\n")
        o.flush()
        got = [i.readline()]  # runs the client's side of the renegotiation
        while got[-1] != b"after\n":
            got.append(i.readline())
        o.write(b"bye\n")
        o.flush()
        o.close()
        i.close()
        return got

    try:
        join_server = run_in_thread(serve)
        join_client = run_in_thread(client)
        client_lines = join_client(JOIN)
        join_server(JOIN)
    finally:
        listener.close()
    return server_lines, client_lines


@pytest.mark.parametrize("keylogged", ["client", "server"])
def test_keylogger_writing_to_its_own_connection_gets_edeadlk(
    pki: Any, locks: str, keylogged: str
) -> None:
    seen: list[object] = []

    def action(i: Any, o: Any) -> None:
        o.write(b"early\n")
        try:
            o.flush()
        except SSLError as exc:
            seen.append(exc.errno)

    server_lines, client_lines = _renegotiating_pair(pki, keylogged, action)
    # Refused, the connection unharmed; what was refused stays pending, as after a timeout,
    # and goes out with the next flush: nothing lost, nothing twice.
    assert seen and set(seen) == {errno.EDEADLK}, seen
    early = [b"early\n"] * len(seen)
    if keylogged == "client":
        assert (server_lines, client_lines) == ([b"hello\n", *early, b"bye\n"], [b"after\n"])
    else:
        assert (server_lines, client_lines) == ([b"hello\n", b"bye\n"], [*early, b"after\n"])


@pytest.mark.parametrize("keylogged", ["client", "server"])
def test_keylogger_reading_its_own_connection_is_a_reentrant_call(
    pki: Any, locks: str, keylogged: str
) -> None:
    """The side that renegotiates holds its input port's lock (a read, ssl_try_verify's
    pump): reading that port from the key logger would wait for this very thread."""
    seen: list[object] = []

    def action(i: Any, o: Any) -> None:
        try:
            i.read1(1)
        except RuntimeError as exc:
            seen.append(str(exc))

    _renegotiating_pair(pki, keylogged, action)
    assert seen and all("reentrant call" in s for s in seen), seen


def test_keylogger_reverifying_its_own_connection_gets_edeadlk(pki: Any, locks: str) -> None:
    """The server's key logger asks for the client's certificate again (ssl_try_verify) from
    inside the renegotiation it logs: a renegotiation inside a renegotiation's OpenSSL call.
    Refused with EDEADLK (the pump call would re-enter OpenSSL's state machine), and the
    renegotiation and the connection go on unharmed."""
    seen: list[object] = []

    def action(i: Any, o: Any) -> None:
        try:
            sslports.ssl_try_verify(i, True)
            seen.append("verified again")
        except SSLError as exc:
            seen.append(exc.errno)

    server_lines, client_lines = _renegotiating_pair(pki, "server", action)
    assert seen and set(seen) == {errno.EDEADLK}, seen
    assert (server_lines, client_lines) == ([b"hello\n", b"bye\n"], [b"after\n"])


@pytest.mark.parametrize("keylogged", ["client", "server"])
def test_keylogger_queries_its_own_connection(pki: Any, locks: str, keylogged: str) -> None:
    """Queries take the connection's lock, which this thread holds inside the callback: they
    answer (before, they waited for it forever)."""
    seen: list[object] = []

    def action(i: Any, o: Any) -> None:
        seen.append(
            (
                sslports.ssl_protocol_version(i),
                sslports.ssl_peer_verified(o),
                sslports.ssl_peer_check_hostname(i, "localhost"),
            )
        )

    _renegotiating_pair(pki, keylogged, action)
    # (the server's peer, the client, has no certificate)
    expected = ("tls12", keylogged == "client", keylogged == "client")
    assert seen and set(seen) == {expected}, seen


def test_keylogger_writing_while_another_thread_writes_is_a_reentrant_call(
    pki: Any, locks: str
) -> None:
    """Full duplex: another thread is in a write on the port the key logger writes to, holding
    the port's lock while it waits for the connection's ssl_lock, which the key logger's own
    thread holds (the renegotiation it logs runs in that thread's read). Waiting for the
    port's lock would wait for that thread, which waits for this one: the key logger's write
    raises RuntimeError instead, and both threads go on (before, both hung for ever)."""
    seen: list[object] = []
    writer: list[Callable[..., Any]] = []
    big = b"w" * 100_000 + b"\n"

    def action(i: Any, o: Any) -> None:
        writer.append(run_in_thread(lambda: o.write(big)))  # (waits for ssl_lock)
        lock = o._sslports_conn.write_lock
        for _ in range(int(JOIN / 0.001)):  # until that write holds the port's lock
            if lock.locked():
                break
            time.sleep(0.001)
        try:
            o.write(b"early\n")
        except RuntimeError as exc:
            seen.append(exc)

    server_lines, client_lines = _renegotiating_pair(pki, "client", action)
    assert [w(JOIN) for w in writer] == [len(big)]
    assert len(seen) == 1 and "reentrant call" in str(seen[0]), seen
    assert (server_lines, client_lines) == ([b"hello\n", big, b"bye\n"], [b"after\n"])


def test_aio_keylogger_writing_to_its_own_connection(pki: Any) -> None:
    """Under asyncio the same key logger ran into the same lock on the loop's thread: the
    whole event loop hung."""
    sctx = pki.server_context()
    cctx = pki.client_context("tls12")
    listener = sslports.ssl_listen(0, 4, True, LOCAL, sctx)
    port = sslports.ssl_addresses(listener, True)[1]
    server_lines: list[bytes] = []
    seen: list[object] = []
    writer: list[Any] = []

    def serve() -> None:
        i, o = sslports.ssl_accept(listener)
        server_lines.append(i.readline())
        sslports.ssl_try_verify(i, True)
        o.write(b"after\n")
        o.flush()
        server_lines.append(i.readline())
        o.close()
        i.close()

    def keylogger(line: bytes) -> None:
        if writer:
            try:
                writer[0].write(b"from the key logger\n")
            except SSLError as exc:
                seen.append(exc.errno)

    sslports.ssl_set_keylogger(cctx, keylogger)

    async def main() -> bytes:
        r, w = await aio.open_ssl_connection("localhost", port, cctx, timeout=JOIN)
        writer.append(w)
        w.write(b"hello\n")
        await w.drain()
        got = await r.readline()
        w.write(b"bye\n")
        await w.drain()
        w.close()
        return got

    try:
        join_server = run_in_thread(serve)
        join_loop = run_in_thread(lambda: asyncio.run(main()))
        assert join_loop(JOIN) == b"after\n"
        join_server(JOIN)
    finally:
        listener.close()
    assert seen and set(seen) == {errno.EDEADLK}, seen
    assert server_lines == [b"hello\n", b"bye\n"]


def test_keylogger_removed_while_a_handshake_calls_it(
    pki: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """ssl_set_keylogger(ctx, None) in another thread between the key-log callback's check
    and its call: the line is dropped, not reported as a failing callback (`_keylogger`
    reads as the callback once, then None, as that thread's change would make it)."""
    lines: list[bytes] = []

    class Racing(sslports.SSLClientContext):
        reads = 0

        @property  # type: ignore[override]
        def _keylogger(self) -> Optional[Callable[[bytes], Any]]:
            self.reads += 1
            return self._real if self.reads == 1 else None

        @_keylogger.setter
        def _keylogger(self, value: Optional[Callable[[bytes], Any]]) -> None:
            self._real = value
            self.reads = 0

    ctx = Racing("tls13")
    sslports.ssl_set_keylogger(ctx, lines.append)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    try:
        join = run_in_thread(lambda: sslports.ssl_accept(listener))
        with caplog.at_level(logging.ERROR, logger="sslports"):
            i, o = sslports.ssl_connect("localhost", port, ctx, timeout=JOIN)
        si, so = join(JOIN)
        for p in (i, o, si, so):
            p.close()
    finally:
        listener.close()
    assert len(lines) == 1  # the first line; the rest came after the (simulated) removal
    assert not [r for r in caplog.records if "key log callback failed" in r.getMessage()]


def _accept_fails(listener: Any) -> None:
    with pytest.raises(SSLError):
        sslports.ssl_accept(listener)


def test_handshake_failing_after_a_keylogger_call_reports_its_own_error(pki: Any) -> None:
    """The key logger's own pump calls run on this thread's error record, inside the call
    whose failure fills that record: one that fails (or is refused, EDEADLK) left its errors
    there, and a failure later in the same OpenSSL call added its own (a TLS 1.3 client
    checks the server's certificate in the call that gave the key logger its first line).
    Before, the connection's error, and the failure it keeps, held the nested call's too."""
    garbage = socket.create_server((LOCAL, 0))  # answers a ClientHello with plain text
    garbage_port = garbage.getsockname()[1]

    def answer_garbage() -> None:
        conn, _ = garbage.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            conn.recv(1)

    nested: list[SSLError] = []

    def keylogger(line: bytes) -> None:
        if not nested:
            join_garbage = run_in_thread(answer_garbage)
            try:
                sslports.ssl_connect(LOCAL, garbage_port, pki.client_context(), timeout=JOIN)
            except SSLError as exc:
                nested.append(exc)
            join_garbage(JOIN)

    cctx = pki.client_context("tls13")
    sslports.ssl_set_keylogger(cctx, keylogger)
    rogue = pki.server_context(chain=pki.rogue_chain, key=pki.rogue_key)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, rogue)
    port = sslports.ssl_addresses(listener, True)[1]
    try:
        join = run_in_thread(lambda: _accept_fails(listener))
        with pytest.raises(SSLError, match="certificate verify failed") as info:
            sslports.ssl_connect("localhost", port, cctx, timeout=JOIN)
        join(JOIN)
    finally:
        listener.close()
        garbage.close()
    assert len(nested) == 1 and "wrong version number" in str(nested[0]), nested
    assert info.value.errno is None
    assert [e for e in info.value.openssl_errors if "certificate verify failed" not in e] == []


def test_aio_sni_callback_base_exception_goes_to_the_exception_handler(pki: Any) -> None:
    """As an Exception does (test_aio_hostile.py): before, a GeneratorExit ended the
    handshake's task unretrieved, and the server's exception handler never heard of it."""
    ctx = pki.server_context()

    def callback(name: str) -> None:
        if name == "bad.test":
            raise GeneratorExit

    sslports.ssl_set_server_name_identification_callback(ctx, callback)

    async def main() -> tuple[list[object], list[dict[str, Any]]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, c: errors.append(c))

        async def echo(r: Any, w: Any) -> None:
            w.write(await r.readline())
            await w.drain()
            w.close()

        server = await aio.start_ssl_server(echo, LOCAL, 0, context=ctx)
        port = server.sockets[0].getsockname()[1]
        got = [await asyncio.to_thread(_client, port, name) for name in ("bad.test", LOCAL)]
        for _ in range(int(JOIN / 0.01)):
            if errors:
                break
            await asyncio.sleep(0.01)
        server.close()
        return got, errors

    got, errors = run_in_thread(lambda: asyncio.run(main()))(JOIN)
    assert isinstance(got[0], SSLError) and got[1] == b"hi\n"
    assert [(c["message"], type(c["exception"])) for c in errors] == [
        ("start_ssl_server: the server-name callback failed during the handshake", GeneratorExit)
    ]


# -- streams and error= callables that call their own ports ----------------------------------


class _ReentrantStream(io.RawIOBase):
    """The client's input stream over a socket; once armed, its next read first calls
    `action` (which uses the SSL ports this stream feeds) and records what that raised."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.action: Optional[Callable[[], object]] = None
        self.seen: list[object] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        action, self.action = self.action, None
        if action is not None:
            try:
                self.seen.append(action())
            except BaseException as exc:
                self.seen.append(exc)
        return self.sock.recv_into(buf)


def _wrapped_pair(
    pki: Any, **kwargs: Any
) -> tuple[_ReentrantStream, tuple[Any, Any], Callable[..., Any], socket.socket]:
    """Client ports over a stream of ours (a socketpair); the server answers each line with
    "pong" until EOF."""
    a, b = socket.socketpair()

    def serve() -> None:
        i, o = sslports.ports_to_ssl_ports(
            b.makefile("rb"),
            b.makefile("wb"),
            mode="accept",
            context=pki.server_context(),
            close_original=True,
        )
        for line in i:
            o.write(b"pong " + line)
            o.flush()
        i.close()
        with contextlib.suppress(SSLError):  # (a test may have shut the transport down)
            o.close()

    join = run_in_thread(serve)
    stream = _ReentrantStream(a)
    ssl_ports = sslports.ports_to_ssl_ports(
        stream, a.makefile("wb"), mode="connect", close_original=True, **kwargs
    )
    return stream, ssl_ports, join, b


def test_stream_that_reads_the_port_it_feeds_is_a_reentrant_call(pki: Any, locks: str) -> None:
    stream, (i, o), join, other = _wrapped_pair(pki)

    def client() -> bytes:
        stream.action = lambda: i.read1(1)  # from inside i.readline's own stream read
        o.write(b"ping\n")
        o.flush()
        line = i.readline()
        o.close()
        i.close()
        stream.sock.shutdown(socket.SHUT_RDWR)  # the server's EOF
        return bytes(line)

    try:
        assert run_in_thread(client)(JOIN) == b"pong ping\n"
        join(JOIN)
    finally:
        stream.sock.close()
        other.close()
    assert len(stream.seen) == 1 and isinstance(stream.seen[0], RuntimeError), stream.seen
    assert "reentrant call" in str(stream.seen[0])


def test_stream_that_writes_the_other_port_goes_on(pki: Any, locks: str) -> None:
    """The other direction's lock is free: a stream's read may write (and flush)."""
    stream, (i, o), join, other = _wrapped_pair(pki)

    def client() -> list[bytes]:
        stream.action = lambda: (o.write(b"two\n"), o.flush())
        o.write(b"one\n")
        o.flush()
        lines = [i.readline(), i.readline()]
        o.close()
        i.close()
        stream.sock.shutdown(socket.SHUT_RDWR)  # the server's EOF
        return lines

    try:
        assert run_in_thread(client)(JOIN) == [b"pong one\n", b"pong two\n"]
        join(JOIN)
    finally:
        stream.sock.close()
        other.close()
    assert stream.seen == [(4, None)]


def test_error_callable_that_reads_its_port_is_a_reentrant_call(pki: Any, locks: str) -> None:
    """The error= callable runs inside the failing read, which holds the port's lock."""
    ports_of: list[Any] = []
    seen: list[object] = []

    class Failed(Exception):
        pass

    def error(message: str) -> Exception:
        try:
            ports_of[0].read1(1)
        except RuntimeError as exc:
            seen.append(exc)
        return Failed(message)

    stream, (i, o), join, other = _wrapped_pair(pki, error=error, strict_eof=True)
    ports_of.append(i)

    def client() -> object:
        o.write(b"ping\n")
        o.flush()
        assert i.readline() == b"pong ping\n"
        other.shutdown(socket.SHUT_RDWR)  # the transport ends without close_notify
        try:
            i.read()
        except Failed as exc:
            return exc
        finally:
            i.close()
            with contextlib.suppress(Failed):
                o.close()
        return None

    try:
        got = run_in_thread(client)(JOIN)
        assert isinstance(got, Failed) and "unexpected eof" in str(got)
        join(JOIN)
    finally:
        stream.sock.close()
        other.close()
    assert len(seen) == 1 and "reentrant call" in str(seen[0])


def test_port_lock_behaves_as_threading_lock() -> None:
    """The Python lock (and the C one) keep threading.Lock's answers to other threads and to
    non-blocking and timed attempts (a timed wait for oneself times out); only a wait
    without end for oneself raises."""
    kinds: list[Any] = [ports._PortLock]
    if ports._fastport is not None:
        kinds.append(ports._fastport.Lock)
    for kind in kinds:
        _check_port_lock(kind())


def test_python_port_lock_taken_as_an_exception_comes_is_given_back() -> None:
    """A signal handler's exception (Ctrl-C) comes as a call returns to Python: when that
    call took the Python lock's inner lock, acquire raises, and the lock must not stay held,
    by nobody (before, every later call on the port, and its close, waited for ever)."""

    class Stop(Exception):
        pass

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_return" and getattr(arg, "__name__", "") == "acquire":
            sys.setprofile(None)
            raise Stop  # (as the inner lock's acquire returns, taken)

    lock = ports._PortLock()
    sys.setprofile(profile)
    try:
        with pytest.raises(Stop):
            lock.acquire()
    finally:
        sys.setprofile(None)
    assert not lock.locked()
    assert run_in_thread(lambda: (lock.acquire(timeout=JOIN), lock.release()))(JOIN) == (
        True,
        None,
    )


def _check_port_lock(lock: Any) -> None:
    assert lock.acquire() and lock.locked()
    assert lock.acquire(False) is False
    assert lock.acquire(timeout=0.01) is False
    with pytest.raises(RuntimeError, match="reentrant call"):
        lock.acquire()
    assert run_in_thread(lambda: lock.acquire(timeout=0.01))(JOIN) is False
    lock.release()
    assert not lock.locked()
    with lock:
        assert run_in_thread(lambda: lock.acquire(False))(JOIN) is False
    assert run_in_thread(lambda: (lock.acquire(), lock.release()))(JOIN) == (True, None)


# -- ssl_default_verify_sources ---------------------------------------------------------------


def test_default_verify_sources_keeps_what_it_checked() -> None:
    """A sequence that gives other items on a second pass: what is kept is what was checked
    (before, the second pass was kept, unchecked: an int, which made ssl_secure_client_context
    fail later with a TypeError that named no function)."""

    class Shifty(Sequence[object]):
        passes = 0

        def __len__(self) -> int:
            return 1

        def __getitem__(self, k: Any) -> Any:
            if k != 0:
                raise IndexError(k)
            self.passes += 1
            return str(sslports.TEST_PEM) if self.passes == 1 else 42

    def body() -> list[object]:
        sslports.ssl_default_verify_sources(Shifty())
        sslports.ssl_secure_client_context()  # loads them
        return list(sslports.ssl_default_verify_sources())

    import contextvars

    assert contextvars.copy_context().run(body) == [str(sslports.TEST_PEM)]


# -- server-name callbacks ---------------------------------------------------------------------


def _serve_sni(
    ctx: sslports.SSLServerContext, names: Sequence[str]
) -> tuple[list[object], list[object]]:
    """Clients sending each name as SNI (over ssl_wrap_socket: any name); returns what the
    clients and the acceptors got."""
    listener = sslports.ssl_listen(0, 8, True, LOCAL, ctx)
    port = sslports.ssl_addresses(listener, True)[1]
    served: list[object] = []

    def accept() -> None:
        try:
            i, o = sslports.ssl_accept(listener)
        except BaseException as exc:
            served.append(exc)
            return
        try:
            o.write(i.readline())
            o.flush()
            served.append("ok")
        finally:
            o.close()
            i.close()

    got: list[object] = []
    try:
        for name in names:
            join = run_in_thread(accept)
            got.append(_client(port, name))
            join(JOIN)
    finally:
        listener.close()
    return got, served


def _echo_one(listener: Any) -> object:
    """Accept one connection on `listener` and echo its first line; "ok"."""
    i, o = sslports.ssl_accept(listener)
    o.write(i.readline())
    o.flush()
    o.close()
    i.close()
    return "ok"


def _client(port: int, name: str) -> object:
    sock = socket.create_connection((LOCAL, port), timeout=JOIN)
    try:
        i, o = sslports.ssl_wrap_socket(sock, hostname=name, timeout=JOIN)
    except SSLError as exc:
        return exc
    o.write(b"hi\n")
    o.flush()
    line = i.readline()
    o.close()
    i.close()
    return bytes(line)


@pytest.mark.parametrize(
    "raised", [SystemExit(3), GeneratorExit(), KeyboardInterrupt(), ValueError("x")]
)
def test_sni_callback_base_exceptions_reach_ssl_accept(pki: Any, raised: BaseException) -> None:
    ctx = pki.server_context()
    sslports.ssl_set_server_name_identification_callback(
        ctx, lambda name: (_ for _ in ()).throw(raised)
    )
    got, served = _serve_sni(ctx, ["sni.test"])
    assert isinstance(got[0], SSLError) and "alert" in got[0].message
    assert len(served) == 1 and type(served[0]) is type(raised)
    got, served = _serve_sni(ctx, [LOCAL])  # no SNI, no callback: served
    assert got == [b"hi\n"] and served == ["ok"]


def test_sni_callback_returning_a_listener_is_a_type_error(pki: Any) -> None:
    other = sslports.ssl_listen(0, 1, True, LOCAL, pki.server_context())
    try:
        ctx = pki.server_context()
        sslports.ssl_set_server_name_identification_callback(ctx, lambda name: other)
        got, served = _serve_sni(ctx, ["sni.test"])
    finally:
        other.close()
    assert isinstance(got[0], SSLError)
    assert isinstance(served[0], TypeError) and "SSLListener" in str(served[0])


def test_sni_callback_reenters_the_library(pki: Any) -> None:
    """From inside the callback: replace the callback (its own context may not change, but
    the callback is Python's), connect to the same listener (served by another acceptor:
    no C lock is held that the nested handshake needs), return a sealed context, and the
    listener's own context."""
    ctx = pki.server_context()
    sealed = pki.server_context()
    sslports.ssl_seal_context(sealed)
    inner: list[object] = []
    port: list[int] = []

    def first(name: str) -> Optional[sslports.SSLServerContext]:
        if name == "outer.test":
            inner.append(_client(port[0], "inner.test"))  # the second acceptor serves it
            return sealed
        return ctx

    def second(name: str) -> Optional[sslports.SSLServerContext]:
        sslports.ssl_set_server_name_identification_callback(ctx, None)
        return None

    sslports.ssl_set_server_name_identification_callback(ctx, first)
    listener = sslports.ssl_listen(0, 8, True, LOCAL, ctx)
    port.append(sslports.ssl_addresses(listener, True)[1])

    accept = functools.partial(_echo_one, listener)

    try:
        joins = [run_in_thread(accept), run_in_thread(accept)]
        assert _client(port[0], "outer.test") == b"hi\n"
        assert [j(JOIN) for j in joins] == ["ok", "ok"]
        assert inner == [b"hi\n"]
        sslports.ssl_set_server_name_identification_callback(ctx, second)
        join = run_in_thread(accept)
        assert _client(port[0], "x.test") == b"hi\n"
        assert join(JOIN) == "ok"
        assert ctx._sni_callback is None  # (set to None from inside: the next is not called)
    finally:
        listener.close()


def test_slow_sni_callback_holds_up_only_its_own_handshake(pki: Any) -> None:
    ctx = pki.server_context()
    release = threading.Event()

    def callback(name: str) -> None:
        if name == "slow.test":
            release.wait(JOIN)

    sslports.ssl_set_server_name_identification_callback(ctx, callback)
    listener = sslports.ssl_listen(0, 8, True, LOCAL, ctx)
    port = sslports.ssl_addresses(listener, True)[1]

    accept = functools.partial(_echo_one, listener)

    try:
        joins = [run_in_thread(accept), run_in_thread(accept)]
        slow = run_in_thread(lambda: _client(port, "slow.test"))
        assert _client(port, "fast.test") == b"hi\n"  # while the slow callback waits
        release.set()
        assert slow(JOIN) == b"hi\n"
        assert [j(JOIN) for j in joins] == ["ok", "ok"]
    finally:
        release.set()
        listener.close()


def test_sni_callback_accepts_on_and_closes_its_listener(pki: Any) -> None:
    """ssl_accept on the same listener from inside the callback (a second client, connected
    from another thread), then ssl_close of that listener: both handshakes complete, and the
    next accept says the listener is closed."""
    ctx = pki.server_context()
    listener = sslports.ssl_listen(0, 8, True, LOCAL, ctx)
    port = sslports.ssl_addresses(listener, True)[1]
    inner: list[object] = []

    def callback(name: str) -> None:
        if name == "outer.test":
            client = run_in_thread(lambda: _client(port, "inner.test"))
            i, o = sslports.ssl_accept(listener)
            o.write(i.readline())
            o.flush()
            o.close()
            i.close()
            inner.append(client(JOIN))
            sslports.ssl_close(listener)

    sslports.ssl_set_server_name_identification_callback(ctx, callback)

    accept = functools.partial(_echo_one, listener)

    try:
        join = run_in_thread(accept)
        assert _client(port, "outer.test") == b"hi\n"
        assert join(JOIN) == "ok"
        assert inner == [b"hi\n"]
        with pytest.raises(SSLError, match="listener is closed"):
            sslports.ssl_accept(listener)
    finally:
        listener.close()


def test_keylogger_replaces_itself_and_connects_from_inside(pki: Any) -> None:
    """A key logger may set the context's key logger (its own context, unlike the changes
    that wait for the context's lock) and open a connection of its own (whose handshake runs
    nested in this one's, on this thread)."""
    other = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context())
    other_port = sslports.ssl_addresses(other, True)[1]
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    cctx = pki.client_context("tls13")
    first: list[bytes] = []
    second: list[bytes] = []
    nested: list[object] = []

    def logger(line: bytes) -> None:
        first.append(line)
        sslports.ssl_set_keylogger(cctx, second.append)
        nested.append(_client(other_port, "localhost"))

    sslports.ssl_set_keylogger(cctx, logger)

    try:
        joins = [run_in_thread(functools.partial(_echo_one, lst)) for lst in (other, listener)]
        i, o = sslports.ssl_connect("localhost", port, cctx, timeout=JOIN)
        o.write(b"hi\n")
        o.flush()
        assert i.readline() == b"hi\n"
        o.close()
        i.close()
        assert [j(JOIN) for j in joins] == ["ok", "ok"]
    finally:
        other.close()
        listener.close()
    assert len(first) == 1 and nested == [b"hi\n"]
    # TLS 1.3: five lines in all; the four after the first went to the new logger (the nested
    # connection has a context of its own)
    assert len(second) == 4, second
