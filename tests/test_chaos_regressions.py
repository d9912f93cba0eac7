"""Regressions found by scripts/chaos.py (many connections at once, seeded; see its header).

Each test is the smallest setting that showed the bug, with real sockets on 127.0.0.1 and
Python's ``ssl`` as the peer.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from typing import Callable

import pytest
from conftest import LOCAL, socket_under, wait_read_under_way

import sslports as sp

pytestmark = pytest.mark.skipif(not sp.ssl_available, reason="libssl not loadable")
PEM = str(sp.TEST_PEM)
JOIN = 30.0


def _stream(n: int) -> bytes:
    """Numbered lines: any hole or reordering shows."""
    return b"".join(b"%07d\n" % i for i in range(n))


def _python_server(
    serve: Callable[[ssl.SSLSocket], None], rcvbuf: int = 0
) -> tuple[int, Callable[[], None]]:
    """A Python ssl server for one connection on 127.0.0.1 (TLS 1.3, PEM); returns its port
    and a join(). `rcvbuf`: SO_RCVBUF of the accepted socket (0: the system's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(PEM)
    lsock = socket.socket()
    if rcvbuf:  # (set before listen(): accepted sockets inherit it, and so does the window)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    lsock.bind((LOCAL, 0))
    lsock.listen()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            raw, _ = lsock.accept()
            raw.settimeout(JOIN)
            with ctx.wrap_socket(raw, server_side=True) as s:
                serve(s)
        except OSError:
            pass  # (the client closed while this wrote: expected here)
        except BaseException as exc:  # pragma: no cover - shown by join()
            errors.append(exc)
        finally:
            lsock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join() -> None:
        t.join(JOIN)
        assert not t.is_alive()
        assert not errors, errors

    return lsock.getsockname()[1], join


@pytest.mark.parametrize("round_", range(40))
def test_close_while_another_thread_reads_leaves_no_hole(round_: int) -> None:
    """Closing both ports while another thread reads (threading.md: the read "returns what it
    had, else b''"): the reader's bytes must be a prefix of what the peer sent. The last
    close of a TLS 1.3 client used to read the session tickets that had arrived with one
    SSL_read of its own, with the other thread's read still under way: that SSL_read took up
    to 4 KiB of application data, which nobody got, and the reader went on with the bytes
    after them (a hole in the middle of the stream)."""
    data = _stream(200000)  # 1.6 MB in records of 1000 bytes: data always waits in the socket
    closed = threading.Event()

    def serve(s: ssl.SSLSocket) -> None:
        # The last record goes only once both ports are closed, so that the close always
        # comes before the end of the stream (a reader that is quicker than the main thread,
        # on a loaded machine, read all of it before the close: nothing was cut).
        view = memoryview(data)
        for i in range(0, len(view) - 1000, 1000):
            s.sendall(view[i : i + 1000])
        assert closed.wait(JOIN)
        s.sendall(view[-1000:])

    port, join = _python_server(serve)
    inp, out = sp.ssl_connect(LOCAL, port, sp.ssl_make_client_context("tls13"))
    got = bytearray()
    started = threading.Event()

    def reader() -> None:
        try:
            while True:
                chunk = inp.read1(500)
                if not chunk:
                    return
                got.extend(chunk)
                if len(got) > 100000:
                    started.set()
        except (sp.SSLError, ValueError):
            return
        finally:
            started.set()

    t = threading.Thread(target=reader)
    t.start()
    assert started.wait(JOIN)
    out.close()
    inp.close()  # (the last close, while the reader reads)
    closed.set()
    t.join(JOIN)
    assert not t.is_alive()
    join()
    assert len(got) < len(data)  # (the close did cut the stream)
    first = next((i for i, (a, b) in enumerate(zip(got, data)) if a != b), None)
    assert first is None, (
        f"hole at byte {first} of {len(got)} read: {bytes(got[first : first + 16])!r}"
    )


def test_close_before_the_server_reads_loses_nothing(path: str) -> None:
    """A client writes, closes, and only then does the server start reading. An OpenSSL
    server sends its TLS 1.3 session tickets as late as its first read; they reached a socket
    whose receiving side the close had shut, with the end of the write still in its send
    queue, and the kernel answered with a reset, which threw that end away: the server got a
    clean-looking EOF short of the data (12 of 40 connections lost 100-460 KB). The close now
    lingers (sp_conn.c LINGERING CLOSE): our side only is shut, the socket stays open until
    the kernel delivered everything, and the descriptor is released then."""
    for _round in range(8):
        sock = _close_then_server_reads()
        _released(sock, JOIN)


def test_lingering_close_gives_up_on_a_peer_that_never_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that never reads keeps our bytes in the send queue for ever: the lingering
    socket is closed all the same once its time is up (here 2 s instead of 10: the test looks
    at the socket within that time, however late this thread runs), and a close with nothing
    left to deliver does not linger at all."""
    monkeypatch.setattr(sp.ports, "_LINGER_SECONDS", 2.0)
    stop = threading.Event()
    port, join = _python_server(lambda s: stop.wait(JOIN), rcvbuf=16384)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.connect((LOCAL, port))
        inp, out = sp.ssl_wrap_socket(sock, context=sp.ssl_make_client_context("tls13"))
        sock = socket_under(inp)  # (the socket object given was detached)
        out.settimeout(JOIN)
        out.write(_stream(25000))
        out.close()
        inp.close()
        assert sock.fileno() >= 0  # lingering: the peer has not taken the bytes
        _released(sock, 10.0)
    finally:
        stop.set()
        join()
    # nothing left to deliver (the peer read it all): released at the close itself
    port, join = _python_server(lambda s: s.recv(100) and s.sendall(b"ok"))
    inp, out = sp.ssl_connect(LOCAL, port, sp.ssl_make_client_context("tls13"))
    out.write(b"hello")
    out.flush()
    assert inp.read(2) == b"ok"
    sock = inp._sslports_conn.transport.sock
    out.close()
    inp.close()
    assert sock.fileno() == -1
    join()


def test_lingering_close_waits_on_a_peer_that_reads_slowly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_LINGER_SECONDS (here 0.5 s) bounds how long a lingering close waits for a peer that
    takes nothing, not how long a peer may take to read it all. A peer that sends a record
    after our close (read away: the lingerer ends with a reset, as the kernel would have
    answered) and reads 1 MB slowly (~0.5 MB/s) lost the tail of the stream: the reset came
    0.5 s after the close, with most of it still in our send queue."""
    monkeypatch.setattr(sp.ports, "_LINGER_SECONDS", 0.5)
    data = _stream(125000)  # 1 MB
    closed = threading.Event()
    got = bytearray()

    def serve(s: ssl.SSLSocket) -> None:
        assert closed.wait(JOIN)
        s.sendall(b"late")  # (after the client's close: its lingerer reads it away)
        while True:
            try:
                chunk = s.recv(16384)
            except (ConnectionResetError, ssl.SSLError):
                return  # (the reset that ends the lingering: after our data, not inside it)
            if not chunk:
                return
            got.extend(chunk)
            time.sleep(0.03)

    _released(_write_and_close(serve, data, got, closed), JOIN)


def _released(sock: socket.socket, within: float) -> None:
    """Wait until the lingerer closed `sock` (its descriptor released)."""
    deadline = time.monotonic() + within
    while sock.fileno() >= 0:
        assert time.monotonic() < deadline, "the lingering socket was never closed"
        time.sleep(0.01)


def _close_then_server_reads() -> socket.socket:
    data = _stream(25000)  # 200 KB
    closed = threading.Event()
    got = bytearray()

    def serve(s: ssl.SSLSocket) -> None:
        assert closed.wait(JOIN)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            got.extend(chunk)

    return _write_and_close(serve, data, got, closed)


def _write_and_close(
    serve: Callable[[ssl.SSLSocket], None], data: bytes, got: bytearray, closed: threading.Event
) -> socket.socket:
    """A TLS 1.3 client writes `data` to a Python ssl server running `serve`, closes both
    ports, sets `closed`; the server must have got `data` whole. Returns the client's socket.
    A small window at the server, a big send buffer at the client: the write returns with
    most of it still in the client's send queue."""
    port, join = _python_server(serve, rcvbuf=16384)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.connect((LOCAL, port))
    inp, out = sp.ssl_wrap_socket(sock, context=sp.ssl_make_client_context("tls13"))
    sock = socket_under(inp)  # (the socket object given was detached)
    out.settimeout(JOIN)
    out.write(data)
    out.close()
    inp.close()
    closed.set()
    join()
    assert len(got) == len(data)
    assert got == data
    return sock


_SIOCOUTQ, _SIOCOUTQNSD = 0x5411, 0x894B  # (linux/sockios.h: queued; not yet transmitted)


def _queued(sock: socket.socket, request: int) -> int:
    import fcntl
    import struct

    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCOUTQNSD is Linux's")
def test_close_with_a_small_tail_the_peer_has_not_taken_loses_nothing(path: str) -> None:
    """The lingering close's threshold (16 KiB) is for bytes waiting for their
    acknowledgement; a tail of a few KiB that the kernel could not even transmit (the peer's
    window is full: it is not reading) is as exposed to the peer's late bytes as a large one.
    The close used to reset such a socket at the server's late tickets, and the server read a
    stream short of its last KiB or two (in every round)."""
    for _round in range(4):
        _released(_small_tail_then_server_reads(), JOIN)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIOCOUTQNSD is Linux's")
def test_close_while_another_thread_reads_lingers_too(path: str) -> None:
    """The same close while another thread waits in a read of the connection. The close woke
    that read with shutdown(SHUT_RDWR), and a socket shut for reading answers the peer's late
    bytes with a reset: the server lost the tail in every round. The close now shuts our side
    only; the read ends at its wait slice with EOF, and the socket lingers as above."""
    for _round in range(4):
        _released(_small_tail_then_server_reads(busy=True), JOIN)


def _small_tail_then_server_reads(busy: bool = False) -> socket.socket:
    closed = threading.Event()
    got = bytearray()

    def serve(s: ssl.SSLSocket) -> None:
        assert closed.wait(JOIN)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return
            got.extend(chunk)

    port, join = _python_server(serve, rcvbuf=2048)
    sock = socket.socket()
    sock.connect((LOCAL, port))
    inp, out = sp.ssl_wrap_socket(sock, context=sp.ssl_make_client_context("tls13"))
    sock = socket_under(inp)  # (the socket object given was detached)
    out.settimeout(JOIN)
    sent = bytearray()
    line = 0
    # Fill the peer's small window, then leave 2 KiB that the kernel could not transmit.
    while _queued(sock, _SIOCOUTQNSD) < 2048:
        chunk = _stream(line + 128)[line * 8 :]  # 1 KiB of numbered lines
        line += 128
        out.write(chunk)
        out.flush()
        sent += chunk
        assert len(sent) < 1 << 22, "the peer's window never filled"
    assert _queued(sock, _SIOCOUTQ) <= 16384  # (a small tail: under the 16 KiB threshold)
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(inp.read(1)))
    if busy:
        reader.start()
        wait_read_under_way(inp)
    out.close()
    inp.close()
    closed.set()
    join()
    assert len(got) == len(sent)
    assert got == sent
    if busy:
        reader.join(JOIN)
        assert read == [b""]  # (both ports closed while it waited: its EOF)
    return sock
