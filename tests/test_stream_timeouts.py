"""ports_to_ssl_ports reads under a deadline (the receiver thread, _streams.py _Receiver): closing
after a read timed out, and a non-blocking stream under a timeout. Each test here failed
before its fix."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
from typing import Any

import pytest
from conftest import read_exactly, run_in_thread, wait_read_under_way
from test_streams import connect_pair

import sslports
from sslports import SSLError


def _pipes() -> tuple[Any, Any, Any, Any]:
    """(client_in, server_out, server_in, client_out) over two OS pipes, buffered."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    return os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb")


def _receivers_gone() -> bool:
    for _ in range(250):
        if not any(t.name == "sslports-receiver" for t in threading.enumerate()):
            return True
        threading.Event().wait(0.02)
    return False


def _new_threads(name: str, before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t not in before]


def _gone(name: str, before: set[threading.Thread]) -> bool:
    """The threads called `name` that were not among `before` end within 5 s."""
    for _ in range(250):
        if not _new_threads(name, before):
            return True
        threading.Event().wait(0.02)
    return False


def test_close_original_after_a_timed_out_read_does_not_hang(pki: Any) -> None:
    """A port read timed out on a silent pipe: its read stays outstanding in the receiver
    thread. close() with close_original=True used to close the buffered input stream under
    that read, which waits for the read's lock: forever, as the peer says nothing."""
    c_in, s_out, s_in, c_out = files = _pipes()
    client, server = connect_pair(
        pki, (c_in, c_out), (s_in, s_out), client_kw={"close_original": True},
        server_kw={"close_original": True},
    )  # fmt: skip
    client[0].settimeout(0.2)
    with pytest.raises(TimeoutError):
        client[0].read(5)
    join = run_in_thread(lambda: [p.close() for p in client])
    join(10)  # (hung here)
    assert c_out.closed
    for p in server:
        p.close()
    # The peer's close ends the outstanding read: the receiver closes the stream and ends.
    assert _receivers_gone()
    assert all(f.closed for f in files)


@pytest.mark.parametrize("method", ["read1", "read", "readline", "peek"])
def test_a_timeout_of_zero_polls_what_the_stream_brought(pki: Any, method: str) -> None:
    """settimeout(0) on a stream port is a poll, as on a socket port (threading.md: a timeout
    of 0 waits for nothing): TimeoutError while nothing has arrived, and the bytes once they
    have. The stream was never read under a deadline already gone (the read timed out before
    asking the stream), so such a poll never returned anything."""
    c_in, s_out, s_in, c_out = files = _pipes()
    client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out))
    try:
        client[0].settimeout(0)
        with pytest.raises(TimeoutError):
            getattr(client[0], method)(3)
        server[1].write(b"new\n")
        server[1].flush()
        got = None
        for _ in range(500):  # (the receiver thread reads the pipe: up to 10 s)
            try:
                got = getattr(client[0], method)(3)
                break
            except TimeoutError:
                threading.Event().wait(0.02)
        assert got is not None and got[:1] == b"n"
        taken = 0 if method == "peek" else len(got)  # (peek leaves them to read)
        client[0].settimeout(5)
        assert client[0].read(4 - taken) == b"new\n"[taken:]
    finally:
        for p in (*client, *server):
            p.close()
        for f in files:
            f.close()


@pytest.mark.parametrize("timeout", [5.0, None])
def test_nonblocking_stream_without_data_is_not_fatal_under_a_timeout(
    pki: Any, timeout: Any
) -> None:
    """A non-blocking input stream that has no data yet: a read says so, and a later read
    gets what arrived since. Under a port timeout (the receiver thread) the first "no data"
    used to stick: every later read failed the same way, data or not. (Without a timeout
    the caller's thread reads the stream itself: the same.)"""
    c_in, s_out, s_in, c_out = files = _pipes()
    client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out))
    try:
        os.set_blocking(c_in.fileno(), False)
        client[0].settimeout(timeout)
        with pytest.raises(Exception, match="non-blocking"):
            client[0].read(5)
        server[1].write(b"hello")
        server[1].flush()
        got = b""
        for _ in range(100):
            try:
                got += client[0].read(5 - len(got))
            except Exception as exc:  # (the pipe may not have it yet)
                assert "non-blocking" in str(exc)
                threading.Event().wait(0.02)
            if len(got) == 5:
                break
        assert got == b"hello"
    finally:
        for p in (*client, *server):
            p.close()
        for f in files:
            f.close()


@pytest.mark.parametrize("close_original", [False, True])
def test_close_wakes_a_read_waiting_under_a_timeout(pki: Any, close_original: bool) -> None:
    """A thread reads a silent stream under a 30 s port timeout (its read waits for the
    receiver thread); another thread closes both ports. The reader used to wait out its whole
    timeout; it now ends at once with the connection's EOF, as a socket port's read does when
    the ports are closed under it."""
    c_in, s_out, s_in, c_out = _pipes()
    kw = {"close_original": close_original}
    client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out), client_kw=kw)
    client[0].settimeout(30.0)
    reading = run_in_thread(lambda: client[0].read(5))
    wait_read_under_way(client[0])
    threading.Event().wait(0.3)  # (the read is waiting: nothing will arrive)
    for p in client:
        p.close()
    # Bounded well below the timeout: the correct outcome takes milliseconds.
    assert reading(10) == b""
    for p in server:
        p.close()
    # The write ends first: the read still outstanding on c_in (close_original=False leaves it
    # to the caller's stream) then meets EOF, and closing c_in does not wait for it.
    for f in (s_out, c_out, s_in, c_in):
        f.close()


def test_a_write_the_peer_does_not_read_times_out_as_a_socket_ports_does(pki: Any) -> None:
    """A stream port's write under a timeout, to a peer that reads nothing: an SSLError and
    TimeoutError saying "write: write timed out", as a socket port's does (it said "write: timed
    out waiting for the transport" when the sender's queue was what stayed full), with
    characters_written (a flush then says "flush: write timed out"); the port stays usable:
    once the peer reads, flush() sends the rest and the peer gets every byte accepted, in
    order."""
    c_in, s_out, s_in, c_out = _pipes()
    client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out), client_kw={"timeout": 0.3})
    chunk = bytes(range(256)) * 256  # 64 KiB
    accepted = 0
    with pytest.raises(TimeoutError) as info:
        for _ in range(1000):  # (far more than the pipe and the sender's queue hold)
            accepted += client[1].write(chunk)
    assert isinstance(info.value, sslports.SSLError)
    assert str(info.value) == "write: write timed out"
    accepted += info.value.characters_written  # type: ignore[attr-defined]
    # A flush now (the sender's queue still full) names itself, as a socket port's does
    with pytest.raises(TimeoutError) as info:
        client[1].flush()
    assert str(info.value) == "flush: write timed out"
    got = run_in_thread(lambda: read_exactly(server[0], accepted))
    client[1].settimeout(30.0)
    client[1].flush()
    data = got(60)
    assert len(data) == accepted and data == (chunk * (accepted // len(chunk) + 1))[:accepted]
    for p in (*client, *server):
        p.close()
    for f in (c_in, s_out, s_in, c_out):
        f.close()


def test_a_nonblocking_stream_without_data_in_the_handshake_names_the_function_once(
    pki: Any,
) -> None:
    """A raw input stream whose readinto returns None (a non-blocking stream with no data)
    during the handshake: the message named the function twice ("ports_to_ssl_ports: accept
    failed (ports_to_ssl_ports: input_port has no data (non-blocking))")."""

    class NoData(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> None:
            return None

    a, b = socket.socketpair()
    with a, b, a.makefile("wb", buffering=0) as out, pytest.raises(SSLError) as info:
        sslports.ports_to_ssl_ports(
            NoData(), out, mode="accept", context=pki.server_context(), timeout=5
        )
    assert str(info.value) == (
        "ports_to_ssl_ports: accept failed (input_port has no data (non-blocking))"
    )


@pytest.mark.parametrize("buffering", [0, -1], ids=["raw", "buffered"])
def test_a_handshake_that_timed_out_on_a_silent_socket_leaves_no_thread(
    pki: Any, buffering: int
) -> None:
    """A server over a TCP socket's streams (ports_to_ssl_ports, timeout=) meets a client that
    connects and says nothing (slowloris): the handshake times out, and the receiver thread's
    read of the socket, still outstanding, ended only when the client spoke or left: one thread
    and its buffers per such client, and the caller's close of the socket sent no FIN (the read
    held it). Now the failed handshake shuts the socket's reading side: the thread ends, and
    the client sees the server's close."""
    before = set(threading.enumerate())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        sock, _addr = listener.accept()
    with client:
        s_in = sock.makefile("rb", buffering=buffering)
        s_out = sock.makefile("wb")
        with pytest.raises((SSLError, TimeoutError)):
            sslports.ports_to_ssl_ports(
                s_in, s_out, mode="accept", context=pki.server_context(), timeout=0.3
            )
        assert _gone("sslports-receiver", before), "the receiver still reads"
        for f in (s_in, s_out, sock):
            f.close()  # (a buffered stream's close waited for the read)
        client.settimeout(10)
        assert client.recv(1) == b""  # the server's FIN (a reset would raise)


def test_a_close_gives_up_on_a_socket_peer_that_reads_nothing(
    pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close_original=True over a TCP socket's streams, to a client (Python's ssl) that never
    reads: the close returns while the sender thread still writes (it writes on for a slow
    reader), and that thread, the socket and up to 1 MiB of queued ciphertext stayed until the
    peer read or left. Now, as a socket port's lingering close, it gives up once the peer took
    nothing for _LINGER_SECONDS (here 0.5 s): the socket is shut down, the write fails, the
    thread ends and closes the stream."""
    monkeypatch.setattr(sslports._streams, "_CLOSE_STALL", 0.3)
    monkeypatch.setattr(sslports._streams, "_LINGER_SECONDS", 0.5)
    before = set(threading.enumerate())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        c_sock = socket.create_connection(listener.getsockname())
        s_sock, _addr = listener.accept()
    s_in, s_out = s_sock.makefile("rb", buffering=0), s_sock.makefile("wb", buffering=0)
    s_sock.close()  # (the streams hold it: close_original closes them)
    accept = run_in_thread(
        lambda: sslports.ports_to_ssl_ports(
            s_in, s_out, mode="accept", context=pki.server_context(), close_original=True
        )
    )
    py_ctx = pki.py_client_context("tls13")
    with py_ctx.wrap_socket(c_sock, server_hostname="localhost") as client:
        inp, out = accept(30)
        out.settimeout(0.5)
        with pytest.raises((TimeoutError, SSLError)):
            for _ in range(64):  # until the client's buffers and the sender's queue are full
                out.write(b"x" * (1 << 20))
        for p in (inp, out):  # (the output port's flush of what the write kept times out)
            with contextlib.suppress(TimeoutError, SSLError):
                p.close()
        assert out.closed
        assert _new_threads("sslports-sender", before), "the sender was not left writing"
        assert _gone("sslports-sender", before), "the sender still writes"
        assert s_out.closed
        client.settimeout(10)
        with contextlib.suppress(OSError):  # (a reset or a bad record: the stream was cut)
            while client.recv(1 << 20):
                pass  # what the server had sent, then its close
