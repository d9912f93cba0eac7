"""ports_to_ssl_ports over input streams that misbehave: a read that returns what is neither
bytes nor a count, a read that raises once and then works, and data that arrives after the
ports were closed under a read of another thread. Each test failed before its fix."""

from __future__ import annotations

import array
import contextlib
import os
import socket
import threading
from typing import Any, Optional

import pytest
from conftest import run_in_thread
from test_streams import connect_pair

from sslports import SSLError

TIMEOUTS = pytest.mark.parametrize("timeout", [None, 5.0], ids=["direct", "receiver"])


class Misreading:
    """A socket stream that reads with one method, `method` (readinto, read or read1), and
    writes whole. Once `returns` is set, that read returns it instead of reading (not-bytes,
    not-a-count); once `raises` is set, the next read raises it (once), reading nothing."""

    returns: Any = None
    raises: Optional[BaseException] = None

    def __init__(self, sock: socket.socket, method: str) -> None:
        self._sock = sock
        setattr(self, method, self._readinto if method == "readinto" else self._read)

    def _misbehave(self) -> Any:
        if self.raises is not None:
            try:  # (no local names it: its traceback would hold it, a cycle)
                raise self.raises
            finally:
                self.raises = None
        return self.returns

    def _readinto(self, b: Any) -> Any:
        bad = self._misbehave()
        return self._sock.recv_into(b) if bad is None else bad

    def _read(self, n: int) -> Any:
        bad = self._misbehave()
        return self._sock.recv(n) if bad is None else bad

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        return len(b)


@contextlib.contextmanager
def misreading_pair(
    pki: Any, method: str, timeout: Optional[float], stream: type[Misreading] = Misreading
) -> Any:
    """(client ports, server ports, the client's stream: a `stream`) over a socketpair; the
    client's input port under `timeout` (None: the caller's thread reads the stream; else the
    receiver's)."""
    a, b = socket.socketpair()
    with a, b:
        ca, sb = stream(a, method), Misreading(b, "readinto")
        client, server = connect_pair(pki, (ca, ca), (sb, sb))
        client[0].settimeout(timeout)
        try:
            yield client, server, ca
        finally:
            for p in (*client, *server):
                with contextlib.suppress(SSLError):
                    p.close()


# -- 1. a read that returns neither bytes nor a count ---------------------------------------

BAD_RESULTS = [
    ("readinto", "abc", "for a buffer of 65536 bytes"),
    ("readinto", 1.0, "for a buffer of 65536 bytes"),
    ("readinto", 0.0, "for a buffer of 65536 bytes"),  # (not 0: not the stream's end)
    ("read", "abc", "(not bytes)"),
    ("read", "", "(not bytes)"),  # (not b"": not the stream's end)
    ("read", 2.5, "(not bytes)"),
    ("read1", 7, "(not bytes)"),  # (a count where bytes belong: not 7 zero bytes)
    ("read1", "x" * 1000, "(not bytes)"),
]


@TIMEOUTS
@pytest.mark.parametrize(
    ("method", "value", "tail"), BAD_RESULTS, ids=[f"{m}-{v!r:.8}" for m, v, _ in BAD_RESULTS]
)
def test_a_read_that_returns_neither_bytes_nor_a_count_is_a_transport_failure(
    pki: Any, timeout: Optional[float], method: str, value: Any, tail: str
) -> None:
    """The read raised a raw TypeError from inside the library (a str, a float), took an empty
    str or 0.0 for the end of the stream, or fed an int's worth of zero bytes to OpenSSL
    (under a timeout). It is now the read failure a negative count already was: SSLError
    naming the stream's method and what it returned (long values cut short)."""
    with misreading_pair(pki, method, timeout) as (client, server, stream):
        server[1].write(b"hello")
        server[1].flush()
        stream.returns = value
        with pytest.raises(SSLError) as info:
            client[0].read(5)
        shown = "'xxxxxxxxxxxx...xxxxxxxxxxxxx'" if value == "x" * 1000 else repr(value)
        assert str(info.value) == (
            f"read: read failed (input_port's {method} returned {shown} {tail})"
        )


# -- 2. a read that raises once, or returns a broken result once ---------------------------


@TIMEOUTS
def test_a_stream_read_that_raised_once_is_tried_again(pki: Any, timeout: Optional[float]) -> None:
    """The stream's read raised (before it gave any byte) and then recovered. Without a
    timeout the next port read read the stream again; under one (the receiver thread) every
    later read raised the first exception again, forever. Both now try again, as
    io.BufferedReader does over a raw stream whose read raised: nothing was lost."""
    with misreading_pair(pki, "readinto", timeout) as (client, server, stream):
        server[1].write(b"hello")
        server[1].flush()
        stream.raises = RuntimeError("stream hiccup")
        with pytest.raises(RuntimeError, match="stream hiccup"):
            client[0].read(5)
        assert client[0].read(5) == b"hello"  # (raised the RuntimeError again)


@TIMEOUTS
def test_a_broken_read_result_fails_every_later_read(pki: Any, timeout: Optional[float]) -> None:
    """A read that returned a result no stream may (a count beyond the buffer, not bytes)
    leaves the stream at an unknown place: it may have consumed part of a record. Every later
    read raises that failure, on both paths, as a write does after a broken write count
    (the receiver's did; without a timeout the next read went on in the stream)."""
    with misreading_pair(pki, "readinto", timeout) as (client, server, stream):
        server[1].write(b"hello")
        server[1].flush()
        stream.returns = 1 << 20
        with pytest.raises(SSLError) as first:
            client[0].read(5)
        stream.returns = None  # (the stream "recovers": its next read would read)
        with pytest.raises(SSLError) as again:
            client[0].read(5)  # (returned b"hello")
        assert str(again.value) == str(first.value)
        assert "input_port's readinto returned 1048576 for a buffer of" in str(again.value)


class _EqualToAll(int):
    """An int whose == says yes to anything: `n in range(...)` asks it for a non-exact int."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


class _CountSubclassReading(Misreading):
    """A stream whose readinto returns its (true) counts as an int subclass."""

    def _readinto(self, b: Any) -> Any:
        n = super()._readinto(b)
        return type("Count", (int,), {})(n) if type(n) is int else n


@TIMEOUTS
def test_a_read_count_is_checked_by_its_value(pki: Any, timeout: Optional[float]) -> None:
    """A readinto count of an int subclass whose == says yes to everything passed the range
    check of the pump's feed: sp_feed copied that many bytes out of the transport's 64 KiB
    buffer (a heap over-read, under ASan; a segfault with a larger count). The count's value is
    checked now, as an int's, and the read is the broken stream it is. A stream whose counts
    are honest int subclasses still reads."""
    with misreading_pair(pki, "readinto", timeout) as (client, server, stream):
        server[1].write(b"hello")
        server[1].flush()
        stream.returns = _EqualToAll(4 * 65536)
        with pytest.raises(SSLError) as info:
            client[0].read(5)
        assert str(info.value) == (
            "read: read failed (input_port's readinto returned 262144 for a buffer of 65536 bytes)"
        )
    with misreading_pair(pki, "readinto", timeout, _CountSubclassReading) as (client, server, _):
        server[1].write(b"hello" * 5000)
        server[1].flush()
        assert client[0].read(25000) == b"hello" * 5000


# -- 3. data that arrives after the ports were closed under a read ---------------------------


def _pipes() -> tuple[Any, Any, Any, Any]:
    """(client_in, server_out, server_in, client_out) over two OS pipes, buffered."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    return os.fdopen(r1, "rb"), os.fdopen(w1, "wb"), os.fdopen(r2, "rb"), os.fdopen(w2, "wb")


def _wait_in_the_stream(port: Any) -> None:
    """Until a read of another thread waits in the input stream's own read (on its thread,
    or in the receiver thread under a timeout)."""
    transport = port._sslports_conn.transport
    for _ in range(30000):
        receiver = transport.receiver
        if transport.reading or (receiver is not None and receiver.reading):
            return
        threading.Event().wait(0.001)
    raise AssertionError("the read never reached the stream")


READS = {
    "read(100)": lambda port: port.read(100),
    "readline": lambda port: port.readline(),
    "read()": lambda port: port.read(),
}


@TIMEOUTS
@pytest.mark.parametrize("op", list(READS))
def test_data_after_the_ports_were_closed_under_a_read_is_no_error(
    pki: Any, timeout: Optional[float], op: str
) -> None:
    """Another thread closes both ports while a read waits in the input stream (a silent
    pipe), then the peer's bytes arrive. The read used to raise ValueError ("I/O operation on
    closed SSL connection" or "... SSL port") when it went on for more, and the bytes it had
    were dropped. It now ends as a socket port's read does when its ports are closed under
    it: what it had (a prefix of what the peer sent), else b"" (EOF)."""
    c_in, s_out, s_in, c_out = files = _pipes()
    client, server = connect_pair(pki, (c_in, c_out), (s_in, s_out))
    with contextlib.ExitStack() as cleanup:
        for f in files:
            cleanup.callback(f.close)
        for p in server:
            cleanup.callback(p.close)
        client[0].settimeout(timeout)
        reading = run_in_thread(lambda: READS[op](client[0]))
        _wait_in_the_stream(client[0])
        for p in client:
            p.close()
        server[1].write(b"hello")  # (no newline: a readline wants more)
        server[1].flush()
        got = reading(10)  # (raised ValueError)
        assert b"hello".startswith(got)


# -- 4. a read that returns a buffer of items wider than a byte -----------------------------------


class WideItems(Misreading):
    """A socket stream whose read returns what it read as an array('I') (4-byte items) when
    the count allows, else bytes: a bytes-like object whose len() is not its size in bytes."""

    def _read(self, n: int) -> Any:
        data = self._sock.recv(n)
        return array.array("I", data) if data and len(data) % 4 == 0 else data


@TIMEOUTS
def test_a_read_returning_wide_items_feeds_all_their_bytes(pki: Any, timeout: Any) -> None:
    """Every byte of the array goes to OpenSSL (len() counts its items: a quarter of them)."""
    payload = os.urandom(50_000)
    with misreading_pair(pki, "read", timeout, WideItems) as (client, server, _):
        join = run_in_thread(lambda: (server[1].write(payload), server[1].flush()))
        try:
            got = client[0].read(len(payload))
        finally:
            join(10)
    assert got == payload
