"""ports_to_ssl_ports over arbitrary byte streams: tiny in-memory pipes, OS pipes, socket files,
minimal objects and streams that return short reads."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import re
import socket
import threading
import time
from typing import Any, Callable, Optional

import pytest
from conftest import (
    MIB,
    Pipe,
    random_bytes,
    read_exactly,
    run_in_thread,
    sha1,
    socket_ports,
    socket_under,
    wait_until,
)

import sslports
from sslports import SSLError
from sslports._streams import _FLUSH_STALL, _SEND_HIGH


def connect_pair(
    pki: Any,
    client_streams: tuple[Any, Any],
    server_streams: tuple[Any, Any],
    client_kw: dict[str, Any] | None = None,
    server_kw: dict[str, Any] | None = None,
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Handshake a verifying client and a server over the given streams (server in a thread)."""
    skw = {"mode": "accept", "context": pki.server_context(), **(server_kw or {})}
    ckw = {
        "mode": "connect",
        "context": pki.client_context(),
        "hostname": "localhost",
        **(client_kw or {}),
    }
    join = run_in_thread(lambda: sslports.ports_to_ssl_ports(*server_streams, **skw))
    try:
        client = sslports.ports_to_ssl_ports(*client_streams, **ckw)
    except BaseException:
        for s in (*client_streams, *server_streams):
            if hasattr(s, "close"):
                s.close()
        raise
    server = join(60)
    return client, server


def exchange(client: tuple[Any, Any], server: tuple[Any, Any], size: int) -> None:
    """Both ends write `size` bytes before reading the other's (needs buffering: no deadlock)."""
    c_data = random_bytes(size, seed=10)
    s_data = random_bytes(size, seed=11)

    def server_side() -> bytes:
        server[1].write(s_data)
        server[1].flush()
        return read_exactly(server[0], size)

    join = run_in_thread(server_side)
    client[1].write(c_data)
    client[1].flush()
    got_by_client = read_exactly(client[0], size)
    got_by_server = join(60)
    assert sha1(got_by_client) == sha1(s_data)
    assert sha1(got_by_server) == sha1(c_data)


# -- tiny in-memory pipes: every combination of close_original / shutdown_on_close ---------------


@pytest.mark.parametrize("capacity", [1, 10, 100])
@pytest.mark.parametrize("close_original", [False, True])
@pytest.mark.parametrize("shutdown_on_close", [False, True])
@pytest.mark.parametrize("strict", [False, True], ids=["lax", "strict"])
def test_tiny_pipes(
    pki: Any,
    pipe_pair: Callable[[int], tuple[Pipe, Pipe]],
    capacity: int,
    close_original: bool,
    shutdown_on_close: bool,
    strict: bool,
) -> None:
    c2s, s2c = pipe_pair(capacity)
    (cin, cout), (sin, sout) = connect_pair(
        pki,
        (s2c, c2s),
        (c2s, s2c),
        client_kw={"close_original": close_original, "shutdown_on_close": shutdown_on_close},
        server_kw={"strict_eof": strict},
    )
    exchange((cin, cout), (sin, sout), 300)

    # The server waits for the end of the stream while the client closes.
    def server_reads_to_end() -> bytes:
        return sin.read()

    end = run_in_thread(server_reads_to_end)

    cin.close()
    assert (c2s.close_calls, s2c.close_calls) == (0, 0), "closed before both ports were"
    cout.close()
    expected = 1 if close_original else 0
    assert (c2s.close_calls, s2c.close_calls) == (expected, expected)

    if not close_original and not shutdown_on_close:
        c2s.close()  # without a close_notify, the server only learns when the transport ends

    if shutdown_on_close or not strict:
        assert end(60) == b""  # a clean EOF (even with strict_eof when close_notify came)
    else:
        with pytest.raises(SSLError, match="unexpected eof"):
            end(60)
    sin.close()
    sout.close()
    assert (c2s.close_calls, s2c.close_calls) == (
        expected + int(not close_original and not shutdown_on_close),
        expected,
    ), "the server's ports must not close the originals (close_original=False there)"


@pytest.mark.parametrize("capacity", [1, 100])
def test_tiny_pipes_tls12(pki: Any, pipe_pair: Any, capacity: int) -> None:
    c2s, s2c = pipe_pair(capacity)
    client, server = connect_pair(
        pki,
        (s2c, c2s),
        (c2s, s2c),
        client_kw={"context": pki.client_context("tls12")},
        server_kw={"context": pki.server_context("tls12")},
    )
    exchange(client, server, 500)
    for p in (*client, *server):
        p.close()


def test_close_order_input_last(pki: Any, pipe_pair: Any) -> None:
    """The originals close when the *second* port closes, whichever it is."""
    c2s, s2c = pipe_pair(100)
    (cin, cout), (sin, sout) = connect_pair(
        pki, (s2c, c2s), (c2s, s2c), client_kw={"close_original": True}
    )
    cout.close()
    assert c2s.close_calls == 0 and s2c.close_calls == 0
    cin.close()
    assert c2s.close_calls == 1 and s2c.close_calls == 1
    cin.close()  # closing again changes nothing
    assert c2s.close_calls == 1
    sin.close()
    sout.close()


def test_peer_close_notify_then_shutdown_on_close(pki: Any, pipe_pair: Any) -> None:
    """shutdown_on_close sends close_notify also after the peer's close_notify arrived."""
    c2s, s2c = pipe_pair(100)
    (cin, cout), (sin, sout) = connect_pair(
        pki,
        (s2c, c2s),
        (c2s, s2c),
        client_kw={"shutdown_on_close": True},
        server_kw={"shutdown_on_close": True, "strict_eof": True},
    )
    sout.write(b"bye")
    client_reads = run_in_thread(lambda: cin.read())  # closing waits for the pipe to take it
    sout.close()  # the server's close_notify
    assert client_reads(60) == b"bye"  # clean EOF here
    end = run_in_thread(lambda: sin.read())
    cout.close()  # the client's close_notify, after having received the server's
    assert end(60) == b""  # strict_eof: it really was a close_notify
    cin.close()
    sin.close()


def test_abandon_stream_port_sends_no_close_notify(pki: Any, pipe_pair: Any) -> None:
    c2s, s2c = pipe_pair(100)
    (cin, cout), (sin, sout) = connect_pair(
        pki,
        (s2c, c2s),
        (c2s, s2c),
        client_kw={"shutdown_on_close": True, "close_original": True},
        server_kw={"strict_eof": True},
    )
    cout.write(b"last words")
    sslports.ssl_abandon_port(cout)  # pending data still goes out, close_notify does not
    sslports.ssl_abandon_port(cin)
    assert c2s.close_calls == 1
    assert read_exactly(sin, 10) == b"last words"
    with pytest.raises(SSLError, match="unexpected eof"):
        sin.read(1)
    sin.close()
    sout.close()


def test_stream_ports_have_no_tcp_addresses(pki: Any, pipe_pair: Any) -> None:
    c2s, s2c = pipe_pair(1000)
    client, server = connect_pair(pki, (s2c, c2s), (c2s, s2c))
    for port in (*client, *server):
        assert sslports.is_ssl_port(port)
        with pytest.raises(SSLError, match="not connected to TCP port"):
            sslports.ssl_addresses(port)
    for p in (*client, *server):
        p.close()


# -- other kinds of streams ---------------------------------------------------------------------


def test_os_pipes(pki: Any) -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    files = [os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb")]
    c_in, s_out, s_in, c_out = files
    client, server = connect_pair(
        pki,
        (c_in, c_out),
        (s_in, s_out),
        client_kw={"close_original": True, "shutdown_on_close": True},
        server_kw={"close_original": True, "shutdown_on_close": True, "strict_eof": True},
    )
    exchange(client, server, 300_000)  # more than a kernel pipe holds, both ends at once
    end = run_in_thread(lambda: server[0].read())
    client[0].close()
    client[1].close()
    assert c_out.closed
    assert end(60) == b""
    server[0].close()
    server[1].close()
    # c_in too; a read a flush made ahead (the peer was blocked writing) may still wait in
    # it: that read closes it as the server's close ends it (see the last test)
    for _ in range(500):
        if c_in.closed:
            break
        threading.Event().wait(0.01)
    assert all(f.closed for f in files)


def duplex(client: tuple[Any, Any], server: tuple[Any, Any], size: int) -> None:
    """Each end writes `size` bytes from one thread while another reads the peer's."""
    c_data, s_data = random_bytes(size, seed=12), random_bytes(size, seed=13)

    def send(port: Any, data: bytes) -> None:
        for at in range(0, len(data), 65536):
            port.write(data[at : at + 65536])
        port.flush()

    joins = [
        run_in_thread(lambda: send(client[1], c_data)),
        run_in_thread(lambda: send(server[1], s_data)),
        run_in_thread(lambda: read_exactly(client[0], size)),
        run_in_thread(lambda: read_exactly(server[0], size)),
    ]
    results = [join(120) for join in joins]
    assert sha1(results[2]) == sha1(s_data)
    assert sha1(results[3]) == sha1(c_data)


# Full duplex past the stream sender's queue limit (1 MiB), both ends at once (the third API
# audit): each reader's push_out waited for room behind its own writer, which waited for the
# peer's reader to take its bytes: all four threads stopped after ~1.1 MB written and ~50 KB
# read. Over OS pipes, and streams facing a socket server (an echo: its reader writes).
@pytest.mark.parametrize("timeout", [None, 60.0], ids=["untimed", "timed"])
def test_full_duplex_past_the_senders_queue_limit(pki: Any, timeout: Any) -> None:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    files = [os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb")]
    kw = {"close_original": True, "timeout": timeout}
    client, server = connect_pair(
        pki, (files[0], files[3]), (files[2], files[1]), client_kw=kw, server_kw=kw
    )
    duplex(client, server, 4 * MIB)
    for port in (*client, *server):
        port.close()


def test_full_duplex_streams_against_an_echoing_socket_server(pki: Any) -> None:
    client_sock, server_sock = socket.socketpair()
    served = run_in_thread(
        lambda: sslports.ssl_wrap_socket(server_sock, mode="accept", context=pki.server_context())
    )
    with client_sock:
        cin, cout = socket_ports(client_sock, "connect", pki.client_context(), hostname="localhost")
        sin, sout = served(60)

        def echo() -> None:
            while data := sin.read1(65536):
                sout.write(data)
                sout.flush()

        echoing = run_in_thread(echo)
        size = 8 * MIB
        data = random_bytes(size, seed=14)

        def send() -> None:
            for at in range(0, size, 65536):
                cout.write(data[at : at + 65536])
            cout.flush()

        sending = run_in_thread(send)
        assert sha1(read_exactly(cin, size)) == sha1(data)
        sending(60)
        cout.close()
        cin.close()
    echoing(60)  # (its read met the end of the connection)
    sin.close()
    sout.close()


@pytest.mark.parametrize("buffering", [-1, 0], ids=["buffered", "raw"])
def test_handshake_timeout_bounds_a_silent_pipe(pki: Any, buffering: int) -> None:
    """A pipe whose peer says nothing: the stream's own read would block forever, and the
    timeout the caller set still ends the call (API.md: no hang past a timeout you set)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    c_in, c_out = os.fdopen(r1, "rb", buffering=buffering), os.fdopen(w2, "wb")
    try:
        with pytest.raises(TimeoutError):
            sslports.ports_to_ssl_ports(
                c_in, c_out, mode="connect", context=pki.client_context(),
                hostname="localhost", timeout=0.5,
            )  # fmt: skip
        assert os.read(r2, 65536)[:1] == b"\x16"  # the ClientHello did go out
    finally:
        os.close(w1)  # (the read left outstanding meets EOF: a buffered close waits for it)
        c_in.close()
        c_out.close()
        os.close(r2)


def os_pipes_pair(
    pki: Any, client_closes: bool = True, server_closes: bool = True
) -> tuple[list[Any], tuple[Any, Any], tuple[Any, Any]]:
    """A connection over two OS pipes, each end close_original unless told otherwise: (the
    four files: client in, server out, server in, client out; client ports, server ports)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    files = [os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb")]
    c_in, s_out, s_in, c_out = files
    client, server = connect_pair(
        pki, (c_in, c_out), (s_in, s_out), client_kw={"close_original": client_closes},
        server_kw={"close_original": server_closes},
    )  # fmt: skip
    return files, client, server


def test_port_timeout_on_a_stream_loses_nothing(pki: Any) -> None:
    """A read of a stream port under a timeout gives up waiting (TimeoutError) while the
    stream's own read goes on; what that read then gets is the next read's, in order."""
    files, client, server = os_pipes_pair(pki)
    client[0].settimeout(0.3)
    for _ in range(3):
        with pytest.raises(TimeoutError):
            client[0].read(5)
    body = random_bytes(200_000)
    server[1].write(b"hello" + body)
    server[1].flush()
    assert client[0].read(5) == b"hello"
    client[0].settimeout(30)
    assert sha1(read_exactly(client[0], len(body))) == sha1(body)
    client[1].write(b"back")
    client[1].flush()
    assert read_exactly(server[0], 4) == b"back"
    for port in (*server, *client):
        port.close()
    assert all(f.closed for f in files)
    # The thread that read for the client under its timeout ends with the connection.
    for _ in range(250):
        if not any(t.name == "sslports-receiver" for t in threading.enumerate()):
            break
        threading.Event().wait(0.02)
    assert not any(t.name == "sslports-receiver" for t in threading.enumerate())


def test_socketpair_makefile(pki: Any) -> None:
    a, b = socket.socketpair()
    fa = a.makefile("rwb")
    fb = b.makefile("rwb")
    try:
        client, server = connect_pair(pki, (fa, fa), (fb, fb))
        exchange(client, server, 200_000)
        data = random_bytes(1 << 20, seed=12)
        join = run_in_thread(lambda: read_exactly(server[0], len(data)))
        client[1].write(data)
        client[1].flush()
        assert sha1(join(60)) == sha1(data)
        for p in (*client, *server):
            p.close()
    finally:
        for obj in (fa, fb, a, b):
            obj.close()


@pytest.mark.parametrize("how", ["flush", "abandon"])
def test_flush_and_abandon_return_once_the_stream_has_every_byte(pki: Any, how: str) -> None:
    """flush() and ssl_abandon_port() hand the ciphertext to the output stream before they
    return (API.md: flush sends; an abandoned port's pending data is still sent), so the
    caller may shut the stream down right after: Python's ssl on the other end gets it all.
    (They used to return once the sender thread had it queued: the peer often got none.)"""
    data = random_bytes(100_000, seed=31)
    for _ in range(5):
        a, b = socket.socketpair()
        with a, b:

            def serve(a: socket.socket = a) -> int:
                got = 0
                with pki.py_server_context("tls13").wrap_socket(a, server_side=True) as std:
                    while chunk := std.recv(65536):
                        got += len(chunk)
                return got

            join = run_in_thread(serve)
            with b.makefile("rwb") as f:
                cin, cout = sslports.ports_to_ssl_ports(
                    f, f, mode="connect", context=pki.client_context(), hostname="localhost"
                )
                cout.write(data)
                if how == "flush":
                    cout.flush()
                else:
                    sslports.ssl_abandon_port(cout)
                b.shutdown(socket.SHUT_WR)  # no more from us: what was not written is lost
                assert join(60) == len(data)
                cin.close()
                if how == "flush":
                    cout.close()


def test_a_flush_the_peer_does_not_read_returns_and_loses_nothing(pki: Any) -> None:
    """A flush waits for its bytes only while the stream takes them: with a peer that does
    not read (here: its reader is this very thread, after the flush), it returns once the
    stream stalls, and the bytes arrive in order once the peer reads. Under a port timeout
    shorter than that wait, it raises TimeoutError, and nothing is lost either."""
    files, client, server = os_pipes_pair(pki)
    body = random_bytes(500_000, seed=32)  # far more than a kernel pipe holds
    client[1].write(body)  # queued (under the sender's limit): returns
    client[1].flush()  # returns: the peer reads only after it
    client[1].write(body)
    client[1].settimeout(0.05)
    with pytest.raises(TimeoutError, match="flush: write timed out"):
        client[1].flush()
    assert sha1(read_exactly(server[0], 2 * len(body))) == sha1(body + body)
    client[1].flush()  # all written now
    for port in (*server, *client):
        port.close()
    assert all(f.closed for f in files)


@pytest.mark.parametrize("how", ["close", "drop"])
@pytest.mark.parametrize("close_original", [False, True])
def test_the_last_close_returns_though_the_peer_does_not_read_and_loses_nothing(
    pki: Any, close_original: bool, how: str
) -> None:
    """The last close waits for the output port's bytes only while the stream takes them: to
    a peer that does not read, it returns once the stream stalls, so do the finalizers of
    ports dropped without close(), and the sender writes them on in the background (then
    closes the stream, with close_original): the peer gets them all when it reads. (The close
    used to wait for them without end, while the flush before it returned.)"""
    files, client, server = os_pipes_pair(pki, close_original, server_closes=False)
    c_in, _, _, c_out = files
    body = random_bytes(1_000_000, seed=33)  # far more than a kernel pipe holds
    client[1].write(body)
    client[1].flush()  # returns once the stream stalls: the server reads only later
    held = [client]
    del client

    def last_close() -> None:
        ports = held.pop()
        if how == "close":
            for port in ports:
                port.close()
        # "drop": the ports' finalizers close them as `ports` goes, when this returns

    run_in_thread(last_close)(60)  # (it hung: TimeoutError)
    assert sha1(read_exactly(server[0], len(body))) == sha1(body)
    if close_original:
        assert server[0].read() == b""  # the sender closed the stream after the last bytes
        assert c_in.closed and c_out.closed
    for port in server:
        port.close()
    for f in files:
        f.close()


class SlowReader:
    """The peer's input stream: at most `chunk` bytes a read, `delay` seconds before each (a
    peer that reads slowly but steadily). `times`: when each read returned."""

    def __init__(self, raw: Any, chunk: int, delay: float) -> None:
        self.raw, self.chunk, self.delay = raw, chunk, delay
        self.times: list[float] = []

    def read1(self, n: int) -> bytes:
        time.sleep(self.delay)
        data: bytes = self.raw.read1(min(n, self.chunk))
        self.times.append(time.monotonic())
        return data

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time between start, the reads that returned until end, and end."""
        marks = [start, *(t for t in self.times if start < t < end), end]
        return max(b - a for a, b in zip(marks, marks[1:]))


@pytest.mark.parametrize(
    ("how", "size", "chunk", "delay"),
    [("flush", 2_000_000, 65536, 0.05), ("close", 300_000, 16384, 0.25)],
    ids=["flush", "close"],
)
def test_flush_and_close_wait_for_a_peer_that_reads_slowly(
    pki: Any, how: str, size: int, chunk: int, delay: float
) -> None:
    """flush() and the last close wait while the peer reads, slowly (here 1.3 MB/s
    and 64 KB/s of ciphertext), so the caller may shut the socket down right after: the peer
    gets every byte. They took the sender's returns from write() for progress, which a Unix
    socket lets out only once half its buffer is free: the flush returned after its 0.2 s
    with 0.6 MB unsent (the peer got 1.1 of 2 MB), the close after its 1 s.

    A flush returns, as documented, once the stream took nothing for _FLUSH_STALL (0.2 s): a
    round in which the peer's thread paused that long (a loaded machine) says nothing, and
    runs again."""
    for _ in range(3):
        a, b = socket.socketpair()
        with a, b:
            server_in = SlowReader(b.makefile("rb"), 65536, 0.0)
            client, server = connect_pair(
                pki, (a.makefile("rb"), a.makefile("wb")), (server_in, b.makefile("wb"))
            )
            server_in.chunk, server_in.delay = chunk, delay
            body = random_bytes(size, seed=34)

            def peer(port: Any = server[0]) -> bytes:
                got = bytearray()
                while chunk := port.read1(65536):
                    got += chunk
                return bytes(got)

            join = run_in_thread(peer)
            client[1].write(body)
            start = time.monotonic()
            client[1].flush()
            flushed = time.monotonic()
            if how == "close":
                for port in client:
                    port.close()
            a.shutdown(socket.SHUT_WR)  # no more from us: what was not written is lost
            got = join(120)
            paused = how == "flush" and server_in.longest_pause(start, flushed) > _FLUSH_STALL / 2
            if sha1(got) != sha1(body) and paused:
                for port in (*client, *server):
                    with contextlib.suppress(SSLError):  # (the rest's write: Broken pipe)
                        port.close()
                continue
            assert sha1(got) == sha1(body)
            for port in (*client, *server):
                port.close()
            return
    raise AssertionError("the peer paused for the flush's stall in every round")


@pytest.mark.parametrize("close_original", [False, True])
def test_a_write_waiting_for_room_as_both_ports_close_raises(
    pki: Any, close_original: bool
) -> None:
    """A write in another thread that waits for room in the sender's queue (a peer that does
    not read) ends with an error when the last close returns, as on a socket: its thread
    stops once the queue is written. It waited on for ever, or refilled the queue after the
    thread had ended and returned as if its bytes had gone out (the peer got a prefix and,
    with close_original, EOF). The peer gets a prefix of what was written."""
    files, client, server = os_pipes_pair(pki, close_original, server_closes=False)
    c_out = files[3]
    body = random_bytes(3_000_000, seed=35)  # over the sender's 1 MiB queue and the pipe
    join_write = run_in_thread(lambda: client[1].write(body))
    conn = client[1]._sslports_conn
    wait_until(
        lambda: conn.write_lock.locked() and conn.transport.sender.queued >= _SEND_HIGH,
        "the write never came to wait for room",
    )
    for port in client:
        port.close()
    with pytest.raises(SSLError, match=r"^write: write failed \(the connection was closed") as e:
        join_write(60)
    assert e.value.errno == errno.EPIPE

    def peer() -> bytes:
        got = bytearray()
        while len(got) < len(body) and (chunk := server[0].read1(65536)):
            got += chunk
        return bytes(got)

    join = run_in_thread(peer)
    if not close_original:  # (the sender writes what was queued: then the test ends the pipe)
        time.sleep(0.5)
        c_out.close()
    got = join(60)
    assert 0 < len(got) < len(body) and got == body[: len(got)]
    for port in server:
        port.close()
    for f in files:
        f.close()


def test_a_stream_write_failure_is_raised_by_the_flush_that_waits_for_it(pki: Any) -> None:
    """A write hands its ciphertext to the sender thread and returns; the flush after it waits
    until the stream took it, and raises the stream's failure itself (not a later call)."""
    a, b = socket.socketpair()
    with a, b:
        ba, bb = Breakable(a), Breakable(b)
        client, server = connect_pair(pki, (ba, ba), (bb, bb))
        client[1].flush()  # (the handshake's last bytes are written)
        ba.broken = True
        client[1].write(b"x" * 1000)  # queued: the sender has not tried it yet
        with pytest.raises(SSLError, match=r"^flush: write failed \(Broken pipe\)") as info:
            client[1].flush()
        assert info.value.errno == errno.EPIPE
        client[1].flush()  # said once, as a write says it
        for p in (*client, *server):
            p.close()


class ReadWriteOnly:
    """Nothing but read(n) and write(b) (write returns None, like some legacy objects)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, n: int) -> bytes:
        return self._sock.recv(n)

    def write(self, b: Any) -> None:
        self._sock.sendall(b)


class ShortReads:
    """A stream whose reads return 1 to 5 bytes at a time."""

    def __init__(self, sock: socket.socket, seed: int) -> None:
        self._sock = sock
        self._rng = random.Random(seed)
        self.reads = 0

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = self._sock.recv_into(view[: self._rng.randint(1, 5)])
        self.reads += 1
        return n

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        return len(b)


def test_object_with_only_read_and_write(pki: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        ra, rb = ReadWriteOnly(a), ReadWriteOnly(b)
        client, server = connect_pair(pki, (ra, ra), (rb, rb))
        exchange(client, server, 100_000)
        for p in (*client, *server):
            p.close()


class _OverSocket:
    """What the io subclasses below share: a socket, written to with sendall."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        return len(b)


class BufferedReadOnly(_OverSocket, io.BufferedIOBase):
    """A buffered stream written the usual way: read() and write(), the rest io's."""

    def read(self, n: Optional[int] = -1) -> bytes:
        return self._sock.recv(n if n is not None and n >= 0 else 65536)


class BufferedReadAndReadinto(BufferedReadOnly):
    def readinto(self, b: Any) -> int:
        return self._sock.recv_into(b)


class RawReadOnly(_OverSocket, io.RawIOBase):
    def read(self, n: int = -1) -> bytes:
        return self._sock.recv(n if n >= 0 else 65536)


@pytest.mark.parametrize("kind", [BufferedReadOnly, BufferedReadAndReadinto, RawReadOnly])
def test_io_subclasses_that_implement_read_alone(pki: Any, kind: type) -> None:
    """API.md section 3: any readable binary file-like object. A subclass of
    io.BufferedIOBase or io.RawIOBase that implements read() (and maybe readinto()) inherits
    io's readinto1 / readinto, which raise (UnsupportedOperation "read1",
    NotImplementedError): chosen first, they failed every handshake ("connect failed
    (read1)", or a bare NotImplementedError). The stream is read with what it implements."""
    a, b = socket.socketpair()
    with a, b:
        ra, rb = kind(a), kind(b)
        client, server = connect_pair(pki, (ra, ra), (rb, rb))
        exchange(client, server, 100_000)
        for p in (*client, *server):
            p.close()


def test_short_reads(pki: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        sa, sb = ShortReads(a, 1), ShortReads(b, 2)
        client, server = connect_pair(pki, (sa, sa), (sb, sb))
        exchange(client, server, 20_000)
        assert sa.reads > 4000 and sb.reads > 4000  # it really went a few bytes at a time
        for p in (*client, *server):
            p.close()


def test_readline_and_iteration(pki: Any, pipe_pair: Any) -> None:
    c2s, s2c = pipe_pair(64)
    (cin, cout), (sin, sout) = connect_pair(
        pki, (s2c, c2s), (c2s, s2c), server_kw={"shutdown_on_close": True}
    )
    lines = run_in_thread(lambda: (cin.readline(), list(cin)))
    sout.writelines([b"one\n", b"two\n", b"three"])
    sout.close()
    assert lines(60) == (b"one\n", [b"two\n", b"three"])
    for p in (cin, cout, sin):
        p.close()


# -- failures and the error= keyword ------------------------------------------------------------


class CustomError(Exception):
    pass


class RaisedByCallable(Exception):
    pass


def test_error_class_used_for_handshake_failure(pki: Any, pipe_pair: Any) -> None:
    c2s, s2c = pipe_pair(1000)
    server_join = run_in_thread(
        lambda: sslports.ports_to_ssl_ports(c2s, s2c, context=pki.server_context())
    )
    with pytest.raises(CustomError) as info:
        sslports.ports_to_ssl_ports(
            s2c,
            c2s,
            mode="connect",
            context=pki.client_context(trust=False),
            hostname="localhost",
            error=CustomError,
        )
    assert "certificate verify failed" in str(info.value)
    assert str(info.value).startswith("ports_to_ssl_ports: ")
    with pytest.raises(SSLError):  # the server got the client's alert
        server_join(60)


def test_error_callable_used_after_handshake(pki: Any, pipe_pair: Any) -> None:
    messages: list[str] = []

    def raise_it(message: str) -> None:
        messages.append(message)
        raise RaisedByCallable(message)

    c2s, s2c = pipe_pair(1000)
    (cin, cout), (sin, sout) = connect_pair(
        pki, (s2c, c2s), (c2s, s2c), client_kw={"error": raise_it}
    )
    sout.write(b"fine")
    sout.flush()
    assert read_exactly(cin, 4) == b"fine"
    # Now a forged application-data record: its authentication fails.
    s2c.write(b"\x17\x03\x03\x00\x20" + bytes(32))
    with pytest.raises(RaisedByCallable) as info:
        cin.read(1)
    assert messages and messages[0] == str(info.value)
    assert "read failed" in messages[0]
    for p in (cin, cout, sin, sout):
        p.close()


def test_a_timeout_is_a_timeout_error_whatever_error_says(pki: Any, pipe_pair: Any) -> None:
    """error= picks the class of communication errors; a timeout the caller set is not one of
    them: it stays a TimeoutError (API.md: a timeout that expires raises an instance of
    TimeoutError), so `except TimeoutError` catches it and the connection can be retried.
    Both for the handshake's timeout and for a port's, after it."""
    c2s, s2c = pipe_pair(1000)  # nobody answers the ClientHello
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        sslports.ports_to_ssl_ports(
            s2c, c2s, mode="connect", hostname="localhost", timeout=0.3, error=CustomError
        )
    assert not isinstance(info.value, CustomError)
    assert isinstance(info.value, SSLError)
    assert time.monotonic() - start < 10

    c2s, s2c = pipe_pair(1000)
    (cin, cout), (sin, sout) = connect_pair(
        pki, (s2c, c2s), (c2s, s2c), client_kw={"error": CustomError}
    )
    cin.settimeout(0.2)
    with pytest.raises(TimeoutError) as later:
        cin.read(1)  # the server says nothing
    assert not isinstance(later.value, CustomError)
    sout.write(b"late")
    sout.flush()
    assert read_exactly(cin, 4) == b"late"  # the timeout lost nothing
    for p in (cin, cout, sin, sout):
        p.close()


def test_error_ssl_subclass_keeps_attributes(pki: Any, pipe_pair: Any) -> None:
    class MySSLError(SSLError):
        pass

    c2s, s2c = pipe_pair(1000)
    server_join = run_in_thread(
        lambda: sslports.ports_to_ssl_ports(
            c2s, s2c, context=pki.server_context(chain=pki.other_chain, key=pki.other_key)
        )
    )
    with pytest.raises(MySSLError) as info:
        sslports.ports_to_ssl_ports(
            s2c,
            c2s,
            mode="connect",
            context=pki.client_context(),
            hostname="localhost",
            error=MySSLError,
        )
    assert info.value.verify_message is not None
    assert info.value.verify_message.startswith("hostname mismatch")
    assert info.value.verify_code is not None
    with pytest.raises(SSLError):
        server_join(60)


@pytest.mark.parametrize("mode", ["connect", "accept"])
def test_hostname_required_for_verification(pki: Any, pipe_pair: Any, mode: str) -> None:
    c2s, s2c = pipe_pair(1000)
    if mode == "connect":
        ctx: Any = pki.client_context()
    else:
        ctx = pki.server_context()
        sslports.ssl_set_verify_hostname(ctx, True)
    with pytest.raises(SSLError) as info:
        sslports.ports_to_ssl_ports(s2c, c2s, mode=mode, context=ctx)
    # (Racket's words for the step: "accept failed" in accept mode, as a handshake's failure)
    assert str(info.value) == (
        f"ports_to_ssl_ports: {mode} failed (hostname not provided for verification)"
    )
    assert c2s.total_written == 0  # refused before any byte went out


def test_peer_garbage_fails_handshake(pki: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"SSH-2.0-OpenSSH_9.0\r\n")
        fa = a.makefile("rwb")
        with fa, pytest.raises(SSLError, match="ports_to_ssl_ports: accept failed"):
            sslports.ports_to_ssl_ports(fa, fa, context=pki.server_context())


def test_transport_eof_during_handshake(pki: Any, pipe_pair: Any) -> None:
    c2s, s2c = pipe_pair(100000)
    s2c.close()  # the server is gone before it said anything
    with pytest.raises(SSLError, match="connect failed"):
        sslports.ports_to_ssl_ports(
            s2c, c2s, mode="connect", hostname="localhost", context=pki.client_context()
        )


def test_concurrent_reads_on_one_port_are_safe(pki: Any, pipe_pair: Any) -> None:
    """Two threads reading one port get the bytes between them exactly once, no crash."""
    c2s, s2c = pipe_pair(4096)
    (cin, cout), (sin, sout) = connect_pair(
        pki, (s2c, c2s), (c2s, s2c), server_kw={"shutdown_on_close": True}
    )
    data = random_bytes(200_000, seed=13)
    parts: list[bytes] = []
    lock = threading.Lock()

    def reader() -> None:
        while True:
            chunk = cin.read1(1000)
            if not chunk:
                return
            with lock:
                parts.append(chunk)

    readers = [run_in_thread(reader) for _ in range(2)]
    sout.write(data)
    sout.close()
    for join in readers:
        join(60)
    assert sum(map(len, parts)) == len(data)
    assert sorted(data) == sorted(b"".join(parts))  # same bytes, order split among readers
    for p in (cin, cout, sin):
        p.close()


class Breakable:
    """A socket stream that can be made to fail like a reset connection."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.broken = False

    def readinto(self, b: Any) -> int:
        if self.broken:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._sock.recv_into(b)

    def write(self, b: Any) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self._sock.sendall(b)
        return len(b)


class Overcounting(Breakable):
    """A stream whose readinto, once `lying`, claims one byte more than the buffer holds."""

    lying = False

    def readinto(self, b: Any) -> int:
        n = super().readinto(b)
        return len(b) + 1 if self.lying else n


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_stream_that_overcounts_its_read_is_a_transport_failure(
    pki: Any, timeout: Optional[float]
) -> None:
    """A readinto that returns more than the buffer holds is a broken stream, as
    io.BufferedReader says: the read fails with the reason, on the direct path and on the
    receiver thread's (a port timeout), instead of taking it for EOF or feeding stale bytes."""
    a, b = socket.socketpair()
    with a, b:
        ba, bb = Overcounting(a), Overcounting(b)
        client, server = connect_pair(pki, (ba, ba), (bb, bb))
        client[0].settimeout(timeout)
        server[1].write(b"x" * 100)
        server[1].flush()
        ba.lying = True
        with pytest.raises(SSLError) as info:
            client[0].read(10)
        assert "read failed" in str(info.value)
        assert "returned" in str(info.value) and "for a buffer of" in str(info.value)
        for p in (*client, *server):
            p.close()


@pytest.mark.parametrize("error", [None, CustomError])
def test_transport_failure_on_read_is_ssl_error(pki: Any, error: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        ba, bb = Breakable(a), Breakable(b)
        kw = {} if error is None else {"error": error}
        client, server = connect_pair(pki, (ba, ba), (bb, bb), client_kw=kw)
        ba.broken = True
        with pytest.raises(error or SSLError) as info:
            client[0].read(1)
        assert "read failed" in str(info.value)
        for p in (*client, *server):
            p.close()


@pytest.mark.parametrize("error", [None, CustomError])
def test_transport_failure_on_write_is_ssl_error(pki: Any, error: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        ba, bb = Breakable(a), Breakable(b)
        kw = {} if error is None else {"error": error}
        client, server = connect_pair(pki, (ba, ba), (bb, bb), client_kw=kw)
        ba.broken = True
        with pytest.raises(error or SSLError) as info:
            for _ in range(100):  # the failure surfaces on a later write or flush
                client[1].write(b"x" * 20000)
                client[1].flush()
        assert "write failed" in str(info.value)
        for p in (*client, *server):
            p.close()


class BuggyWriter(Breakable):
    """A stream whose write, once `broken`, raises what a bug in it would (not an OSError)."""

    def write(self, b: Any) -> int:
        if self.broken:
            raise RuntimeError("the stream object is broken")
        return super().write(b)


def test_an_output_stream_that_raises_something_else_fails_the_write_not_the_close(
    pki: Any,
) -> None:
    """An output stream whose write raises a RuntimeError (a bug in the stream object): the
    write or flush that meets it raises SSLError ('write failed'); closing the ports after,
    with shutdown_on_close (whose close_notify can no longer go out), raises nothing more,
    as after a broken pipe (it raised that RuntimeError again), and closes them."""
    a, b = socket.socketpair()
    with a, b:
        ba, bb = BuggyWriter(a), Breakable(b)
        client, server = connect_pair(
            pki, (ba, ba), (bb, bb), client_kw={"shutdown_on_close": True}
        )
        ba.broken = True
        with pytest.raises(SSLError, match=r"write failed.*the stream object is broken") as info:
            for _ in range(100):  # (the failure surfaces on a later write or flush)
                client[1].write(b"x" * 20000)
                client[1].flush()
        assert isinstance(info.value.__cause__, RuntimeError)  # (errors.md)
        client[0].close()
        client[1].close()
        assert client[0].closed and client[1].closed
        for p in server:
            p.close()


def test_an_output_stream_that_raises_something_else_in_the_handshake_passes_it() -> None:
    """errors.md: during the handshake, which writes the output stream on the caller's
    thread, what the stream's write raises that is no OSError or ValueError passes as it is
    (as from the input stream: a signal handler's exception must)."""
    a, b = socket.socketpair()
    with a, b:
        buggy = BuggyWriter(a)
        buggy.broken = True
        # Only its write: a read broken too raised its ConnectionResetError first whenever the
        # sender thread reported the write's failure late (a loaded machine; seen in CI).
        buggy.readinto = a.recv_into  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="the stream object is broken"):
            sslports.ports_to_ssl_ports(buggy, buggy, mode="connect", timeout=10)


@pytest.mark.parametrize("error", [None, CustomError])
def test_transport_failure_during_handshake(pki: Any, error: Any) -> None:
    a, b = socket.socketpair()
    with a, b:
        broken = Breakable(a)
        broken.broken = True
        kw = {} if error is None else {"error": error}
        with pytest.raises(error or SSLError) as info:
            sslports.ports_to_ssl_ports(
                broken, broken, mode="connect", context=pki.client_context(),
                hostname="localhost", **kw,
            )  # fmt: skip
        assert str(info.value).startswith("ports_to_ssl_ports: connect failed (")


def test_a_failing_stream_gives_its_errno_as_a_socket_does() -> None:
    """ports_to_ssl_ports over a TCP socket's streams: the peer resets, and the read's SSLError
    carries ECONNRESET in errno, as a socket connection's does (it was only in the message and
    the exception's cause). A write after it fails too, with ECONNRESET or EPIPE: at once, or,
    as flush() hands the records to the background sender (docs/guide/threading.md), at the
    first write after the sender met the reset."""
    import struct

    pem = str(sslports.TEST_PEM)
    ctx = sslports.ssl_make_server_context("tls13")
    sslports.ssl_load_certificate_chain(ctx, pem)
    sslports.ssl_load_private_key(ctx, pem)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        raw, _ = listener.accept()

    def serve() -> None:
        _i, o = sslports.ssl_wrap_socket(raw, mode="accept", context=ctx, timeout=20)
        under = socket_under(o)  # (the socket object given was detached)
        o.write(b"ready")
        o.flush()
        under.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        under.close()  # (a reset: the ports' own close would end with a FIN)

    join = run_in_thread(serve)
    rfile, wfile = client.makefile("rb"), client.makefile("wb")
    inp, out = sslports.ports_to_ssl_ports(
        rfile, wfile, mode="connect", close_original=True, timeout=20
    )
    try:
        assert read_exactly(inp, 5) == b"ready"
        join(20)
        with pytest.raises(SSLError) as info:
            inp.read(1)
        assert info.value.errno == errno.ECONNRESET, repr(info.value)
        deadline = time.monotonic() + 10
        with pytest.raises(SSLError) as later:
            while time.monotonic() < deadline:
                out.write(b"x" * 100000)
                out.flush()
                time.sleep(0.01)
        assert later.value.errno in (errno.ECONNRESET, errno.EPIPE), repr(later.value)
    finally:
        for port in (out, inp):
            with contextlib.suppress(SSLError, OSError):
                port.close()
        client.close()


class WriteBreakable(Breakable):
    """A socket stream whose writes, once `write_broken`, fail like a broken pipe; its reads
    still work (the peer is there, waiting for what we send)."""

    write_broken = False

    def write(self, b: Any) -> int:
        if self.write_broken:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(b)


@pytest.mark.parametrize("error", [None, CustomError])
def test_a_write_the_sender_lost_fails_the_read_that_waits_for_the_answer(
    pki: Any, error: Any
) -> None:
    """write() hands ciphertext to the sender thread and returns; the output stream then
    fails. A read that waits for the peer's answer (which cannot come: the peer never got
    the request) used to wait for it forever in the input stream; it now raises the stream's
    failure, with the error class. (A flush would raise it itself: the next test.)"""
    a, b = socket.socketpair()
    with a, b:
        wa, wb = WriteBreakable(a), WriteBreakable(b)
        kw = {} if error is None else {"error": error}
        client, server = connect_pair(pki, (wa, wa), (wb, wb), client_kw=kw)
        client[1].flush()  # (the handshake's last bytes are written before the stream breaks)
        wa.write_broken = True
        # (more than a record: sent without a flush; returns, the sender meets the failure)
        client[1].write(b"request" * 3000)
        reading = run_in_thread(lambda: client[0].read(6))
        with pytest.raises(error or SSLError) as info:
            reading(60)  # (hung here)
        assert str(info.value) == "read: read failed (Broken pipe)"
        for p in (*client, *server):
            p.close()


def test_an_output_stream_that_fails_at_once_fails_the_handshake(pki: Any) -> None:
    """The ClientHello cannot be written (the output stream is closed): the handshake used to
    wait in the input stream for the peer's answer to it, forever; it now fails with the
    stream's reason."""
    a, b = socket.socketpair()
    # (b, the peer, closes first: a read still waiting in rfile then meets its EOF)
    with a, a.makefile("rb") as rfile, a.makefile("wb") as wfile, b:
        wfile.close()
        connecting = run_in_thread(
            lambda: sslports.ports_to_ssl_ports(
                rfile, wfile, mode="connect", context=pki.client_context(), hostname="localhost"
            )
        )
        with pytest.raises(SSLError) as info:
            connecting(60)  # (hung here: b, the peer, waits for a ClientHello)
        assert str(info.value) == "ports_to_ssl_ports: connect failed (write to closed file)"


class BadWriteCount(Breakable):
    """A socket stream whose write, once `count` is set, writes everything and returns it."""

    count: Any = None

    def write(self, b: Any) -> Any:
        n = super().write(b)
        return n if self.count is None else self.count


@pytest.mark.parametrize(
    "count", [0, -1, 1 << 20, 1.0], ids=["zero", "negative", "beyond", "float"]
)
def test_a_stream_write_with_a_bad_count_is_a_transport_failure(pki: Any, count: Any) -> None:
    """A write that returns a count outside 1..len(b) is a broken stream, as
    io.BufferedWriter says: the flush that waits for it raises SSLError with the reason
    (or the write, when the sender thread met the failure before the write returned).
    (0 used to make the sender thread write again forever, a negative count made it send
    bytes again, forever; a float ended it with a TypeError that was not the connection's
    error.)"""
    a, b = socket.socketpair()
    with a, b:
        ba, bb = BadWriteCount(a), BadWriteCount(b)
        client, server = connect_pair(pki, (ba, ba), (bb, bb))
        client[1].flush()  # (the handshake's last bytes are written before the count turns)
        ba.count = count
        with pytest.raises(SSLError) as info:
            # queued: the sender thread meets the failure, and the flush that waits for it
            # says it (the write does when the sender met it first)
            client[1].write(b"x" * 20000)
            client[1].flush()
        reason = f"write failed (output_port's write returned {count!r} for "
        assert re.match(rf"(write|flush): {re.escape(reason)}", str(info.value))
        for p in (*client, *server):
            p.close()


class LaggingWriter:
    """An output stream whose writes take `delay` seconds (a sender thread that runs late on a
    busy machine); `returned`: when each write returned."""

    def __init__(self, raw: Any, delay: float) -> None:
        self.raw, self.delay = raw, delay
        self.returned: list[float] = []

    def write(self, b: Any) -> int:
        time.sleep(self.delay)
        n: int = self.raw.write(b)
        self.returned.append(time.monotonic())
        return n

    def flush(self) -> None:
        self.raw.flush()


def test_a_last_close_that_keeps_the_streams_leaves_nothing_to_write_after_it(pki: Any) -> None:
    """With close_original=False the caller keeps the streams once the last close returns: to
    close them, or to use them on. A server's session tickets, queued as its handshake ends,
    were left to its sender thread, which wrote them after the close had returned when it ran
    late (a busy machine: here writes that take 0.1 s): into a stream the caller had closed
    (its close then raised BrokenPipeError for them) or between the caller's own bytes."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    c_in, s_in, c_out = os.fdopen(r1, "rb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb")
    s_out = LaggingWriter(os.fdopen(w1, "wb"), 0.1)
    try:
        client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out))
        for p in server:
            p.close()
        closed = time.monotonic()
        s_out.raw.write(b"the caller's own")  # (the stream is the caller's again)
        s_out.raw.flush()
        time.sleep(0.5)  # (what a lagging sender would write, it has written by now)
        assert s_out.returned and max(s_out.returned) <= closed
        for p in client:
            p.close()
    finally:
        for f in (s_out.raw, c_out, c_in, s_in):
            f.close()


def test_a_non_blocking_raw_output_stream_that_would_block_is_an_error(pki: Any) -> None:
    """io.RawIOBase.write returns None for "would block, nothing written" (a non-blocking
    FileIO). That was taken for "all written" (as from a plain object's write): the bytes were
    dropped silently and the peer read a corrupt stream. Now the write says why it failed."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    c_in, s_out, s_in = os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb")
    c_out = open(w2, "wb", buffering=0)  # noqa: SIM115  (a raw FileIO)
    try:
        client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out))
        os.set_blocking(w2, False)
        with pytest.raises(SSLError) as info:
            for _ in range(100):  # (more than the pipe holds: the server does not read)
                client[1].write(b"x" * 65536)
                client[1].flush()
        assert "output_port's write would block (non-blocking)" in str(info.value)
        for p in (*client, *server):
            p.close()
    finally:
        for f in (s_out, c_out, c_in, s_in):  # (writers first: nothing left unflushed)
            f.close()


class MessageOnlyError(SSLError):
    """An SSLError subclass whose __init__ takes the message only (a common way to write one)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def test_error_ssl_subclass_taking_only_the_message(pki: Any) -> None:
    """error= an SSLError subclass that takes only the message: the failure is raised as that
    class (it was a TypeError about the keyword openssl_errors), with the errno and the
    attributes of the failure."""
    a, b = socket.socketpair()
    with a, b:
        ba, bb = Breakable(a), Breakable(b)
        client, server = connect_pair(
            pki, (ba, ba), (bb, bb), client_kw={"error": MessageOnlyError}
        )
        ba.broken = True
        with pytest.raises(MessageOnlyError) as info:
            client[0].read(1)
        assert str(info.value) == "read: read failed (Connection reset by peer)"
        assert info.value.errno == errno.ECONNRESET
        assert info.value.openssl_errors == []
        for p in (*client, *server):
            p.close()


class NegativeCount(Breakable):
    """A stream whose readinto, once `failing`, returns -1 (as a C-style read does)."""

    failing = False

    def readinto(self, b: Any) -> int:
        return -1 if self.failing else super().readinto(b)


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_stream_read_with_a_negative_count_is_a_transport_failure(
    pki: Any, timeout: Optional[float]
) -> None:
    """A readinto that returns a negative count is a broken stream (io.BufferedReader's
    check), on the direct path and on the receiver thread's: it used to be an OverflowError
    on the one and to feed the buffer's stale bytes to OpenSSL on the other."""
    a, b = socket.socketpair()
    with a, b:
        na, nb = NegativeCount(a), NegativeCount(b)
        client, server = connect_pair(pki, (na, na), (nb, nb))
        client[0].settimeout(timeout)
        na.failing = True
        with pytest.raises(SSLError) as info:
            client[0].read(10)
        assert str(info.value) == (
            "read: read failed (input_port's readinto returned -1 for a buffer of 65536 bytes)"
        )
        for p in (*client, *server):
            p.close()


def test_close_original_while_a_read_waits_in_the_stream_does_not_hang(pki: Any) -> None:
    """No timeout: a read of another thread waits in the input stream's own read (a buffered
    pipe). close() of both ports with close_original=True used to close the stream under that
    read, which waits for the read's lock: forever, as the peer says nothing. The read closes
    the stream once it returns instead."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    c_in, s_out, s_in, c_out = (
        os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb"),
    )  # fmt: skip
    client, server = connect_pair(
        pki, (c_in, c_out), (s_in, s_out), client_kw={"close_original": True}
    )
    with contextlib.ExitStack() as cleanup:
        for f in (s_out, s_in, c_out, c_in):
            cleanup.callback(f.close)
        reading = run_in_thread(lambda: client[0].read1(5))
        transport = client[0]._sslports_conn.transport
        while not transport.reading:  # (the read is on its way into c_in's own read)
            threading.Event().wait(0.001)
        closing = run_in_thread(lambda: [p.close() for p in client])
        closing(60)  # (hung here)
        assert c_out.closed
        for p in server:
            p.close()
        s_out.close()  # the peer's end: the read waiting in c_in returns, and closes c_in
        assert reading(60) == b""
        assert c_in.closed


@pytest.mark.parametrize("buffering", [-1, 0], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("timeout", [5.0, None], ids=["deadline", "no-deadline"])
def test_closing_under_a_waiting_read_closes_a_socket_stream_and_the_peer_sees_eof(
    pki: Any, buffering: int, timeout: Optional[float]
) -> None:
    """close_original over a socket's makefile streams, with another thread's read waiting in
    the input stream: closing the ports (and the socket) ends that read with EOF, closes the
    stream and so the socket, and the peer reads its EOF. The stream's read used to stay
    outstanding (the stream is closed once it returns), so the socket stayed open, the peer,
    waiting for this end, never saw EOF, and a thread and a descriptor stayed behind for good
    (with the call's timeout: the receiver thread; without: the reading thread itself)."""
    listener = sslports.ssl_listen(0, 5, True, "127.0.0.1", pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    peer_eof = threading.Event()

    def serve() -> None:
        i, o = sslports.ssl_accept(listener)
        o.write(b"hi")
        o.flush()
        if i.read(1) == b"":  # (waits for this end's EOF)
            peer_eof.set()
        i.close()
        o.close()

    served = run_in_thread(serve)
    sock = socket.create_connection(("127.0.0.1", port))
    rfile, wfile = sock.makefile("rb", buffering), sock.makefile("wb", buffering)
    try:
        inp, out = sslports.ports_to_ssl_ports(
            rfile, wfile, mode="connect", context=pki.client_context(), hostname="localhost",
            close_original=True, timeout=timeout,
        )  # fmt: skip
        assert read_exactly(inp, 2) == b"hi"
        reading = run_in_thread(lambda: inp.read(10))
        time.sleep(0.3)  # (the read waits in the stream by now)
        inp.close()
        out.close()
        sock.close()
        assert reading(10) == b""
        assert peer_eof.wait(10), "the peer never saw this end's EOF"
        served(10)
        deadline = time.monotonic() + 10
        while not rfile.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rfile.closed and wfile.closed
        assert sock.fileno() == -1
    finally:
        sock.close()
        sslports.ssl_close(listener)
