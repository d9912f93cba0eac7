"""Ports under timeouts and threads: nothing read is lost when a read, a peek or a readline times
out, two readers on one port get whole lines, a stream write that times out loses no
ciphertext, closing without close_original hands every byte over, and close() from another
thread does not hang on a write waiting for a peer that does not read."""

from __future__ import annotations

import array
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    bytearray_exports,
    connected_ports,
    random_bytes,
    read_exactly,
    run_in_thread,
    sha1,
    wait_read_under_way,
    wait_until,
)

import sslports

LOCAL = "127.0.0.1"


@pytest.fixture
def pair(pki: Any, path: str) -> Iterator[tuple[Any, Any, Any, Any]]:
    """(client in, client out, server in, server out) over 127.0.0.1, on the path chosen."""
    yield from connected_ports(pki)


@contextlib.contextmanager
def stream_pair(
    pki: Any, **client_kw: Any
) -> Iterator[tuple[Any, Any, Any, Any, socket.socket, socket.socket]]:
    """ports_to_ssl_ports over a socketpair's makefile() pairs: (cin, cout, sin, sout, csock,
    ssock). On exit the SSL ports, then the makefile() streams (close_original=False: the
    caller owns them), then the sockets are closed."""
    with contextlib.ExitStack() as stack:
        a, b = socket.socketpair()
        stack.enter_context(a)
        stack.enter_context(b)
        ca = (a.makefile("rb", buffering=0), a.makefile("wb", buffering=0))
        sb = (b.makefile("rb", buffering=0), b.makefile("wb", buffering=0))
        for f in (*ca, *sb):
            stack.enter_context(f)
        join = run_in_thread(
            lambda: sslports.ports_to_ssl_ports(*sb, mode="accept", context=pki.server_context())
        )
        cin, cout = sslports.ports_to_ssl_ports(
            *ca, mode="connect", context=pki.client_context(), hostname="localhost", **client_kw
        )
        stack.callback(cout.close)
        stack.callback(cin.close)
        sin, sout = join(30)
        stack.callback(sout.close)
        stack.callback(sin.close)
        yield cin, cout, sin, sout, a, b


# -- reads that time out must not lose bytes kept by readline/peek ------------------------------


def test_readline_that_times_out_mid_line_loses_nothing(pair: Any) -> None:
    cin, _cout, _sin, sout = pair
    sout.write(b"abc")
    sout.flush()
    cin.settimeout(0.3)
    with pytest.raises(TimeoutError):
        cin.readline()
    sout.write(b"def\n")
    sout.flush()
    assert cin.readline() == b"abcdef\n"


def test_read_after_peek_that_times_out_loses_nothing(pair: Any) -> None:
    cin, _cout, sin, sout = pair
    sout.write(b"abc")
    sout.flush()
    assert cin.peek() == b"abc"
    cin.settimeout(0.3)
    with pytest.raises(TimeoutError):
        cin.read(6)  # (not a short read of b"abc": test_stdlib_consumers)
    sout.write(b"def")
    sout.close()
    sin.close()
    cin.settimeout(5)
    assert cin.read() == b"abcdef"


def test_read_all_that_times_out_loses_nothing(pair: Any) -> None:
    cin, _cout, sin, sout = pair
    sout.write(b"abc")
    sout.flush()
    cin.settimeout(0.3)
    with pytest.raises(TimeoutError):
        cin.read()  # to EOF, which does not come in time
    sout.write(b"def")
    sout.close()
    sin.close()
    assert cin.read() == b"abcdef"


def test_readlines_that_times_out_loses_no_line(pair: Any) -> None:
    """io's readlines drops the lines it gathered when a readline raises (found by
    test_diff_ops): under a port timeout, the whole lines before the one that timed out."""
    cin, _cout, sin, sout = pair
    sout.write(b"one\ntwo\nthr")
    sout.flush()
    cin.settimeout(0.3)
    with pytest.raises(TimeoutError):
        cin.readlines()  # to EOF, which does not come in time
    sout.write(b"ee\nfour\n")
    sout.flush()
    assert cin.readlines(12) == [b"one\n", b"two\n", b"three\n"]  # (as io: stop at 12 bytes)
    sout.close()
    sin.close()
    assert cin.readlines() == [b"four\n"]


def _small_reads(cin: Any, sout: Any, switch: bool) -> None:
    """Small reads of every kind on a port whose reads take the Python path (they read ahead
    into the kept bytes, up to 64 KiB, and serve from there): every byte once, in order, with
    the C path (`switch`: the timeout taken off and put back) and readline taking turns on
    what was read ahead; a read that waits past the timeout raises TimeoutError, also after
    part of what it asked for, which the next read returns: nothing is lost."""
    body = random_bytes(200_000, seed=7)
    sout.write(body)
    sout.flush()
    got = bytearray()
    ints = array.array("i", [0] * 3)
    step = 0
    while len(got) < len(body):
        step += 1
        if switch and step % 50 == 0:
            cin.settimeout(None if cin.gettimeout() else 30)
        kind = step % 7
        if kind == 0:
            got += cin.read(1)
        elif kind == 1:
            got += cin.read(min(13, len(body) - len(got)))
        elif kind == 2:
            buf = bytearray(5)
            got += buf[: cin.readinto1(buf)]
        elif kind == 3:
            n = min(12, len(body) - len(got))
            view = memoryview(ints).cast("B")[:n]
            assert cin.readinto(view) == n
            got += view
        elif kind == 4:
            got += cin.read1(3)
        elif kind == 5:
            assert cin.read(0) == b"" and cin.readinto(bytearray()) == 0
            got += cin.read(9000 if len(body) - len(got) >= 9000 else 1)
        else:
            got += cin.readline(min(40, len(body) - len(got)))
    assert bytes(got) == body
    cin.settimeout(0.3)
    with pytest.raises(TimeoutError):
        cin.read(1)
    sout.write(b"abc")
    sout.flush()
    with pytest.raises(TimeoutError):
        cin.read(10)  # (b"abc" came: kept, not a short read)
    assert cin.read(3) == b"abc"
    sout.write(b"defgh")
    sout.flush()
    cin.settimeout(5)
    assert read_exactly(cin, 5) == b"defgh"


def test_small_reads_with_a_timeout_read_ahead_and_lose_nothing(pair: Any) -> None:
    cin, _cout, _sin, sout = pair
    cin.settimeout(30)
    sout.write(b"ab")
    sout.flush()
    assert cin.read(1) == b"a" and cin._buf == b"b"  # (read ahead: kept for the next read)
    assert cin.read(1) == b"b"
    _small_reads(cin, sout, switch=True)


def test_small_reads_of_stream_ports_read_ahead_and_lose_nothing(pki: Any) -> None:
    with stream_pair(pki) as (cin, _cout, _sin, sout, _a, _b):
        cin.settimeout(30)
        _small_reads(cin, sout, switch=False)


def test_small_writes_of_stream_ports_lose_nothing(pki: Any) -> None:
    """Over streams the output port's C write adds to pending bytes (sp_fastport.c KEPT_ONLY)
    and its Python write sends: many writes of every size and kind arrive once, in order."""
    with stream_pair(pki) as (_cin, cout, sin, _sout, _a, _b):
        pieces = [random_bytes(n, seed=n) for n in [1, 0, 16, 700, 16384, 9000, 3] * 300]
        expect = b"".join(pieces)
        join = run_in_thread(lambda: read_exactly(sin, len(expect)))
        for i, piece in enumerate(pieces):
            assert cout.write([bytes, bytearray, memoryview][i % 3](piece)) == len(piece)
            if i % 500 == 0:
                cout.flush()
        cout.flush()
        assert join(30) == expect


def test_two_threads_reading_lines_lose_no_line(pair: Any) -> None:
    """Two threads on one input port are serialised (API.md): every line reaches one of them."""
    cin, _cout, sin, sout = pair
    lines = [b"%06d\n" % i for i in range(20000)]
    got: list[list[bytes]] = [[], []]

    def reader(k: int) -> None:
        while True:
            line = cin.readline()
            if not line:
                return
            got[k].append(line)

    threads = [threading.Thread(target=reader, args=(k,), daemon=True) for k in (0, 1)]
    for t in threads:
        t.start()
    for i in range(0, len(lines), 7):
        sout.write(b"".join(lines[i : i + 7]))
        sout.flush()
    sout.close()
    sin.close()
    for t in threads:
        t.join(30)
    assert sorted(got[0] + got[1]) == lines


# -- ports_to_ssl_ports: a write timeout and a close must not drop ciphertext --------------------


def test_stream_write_timeout_then_retry_loses_nothing(pki: Any) -> None:
    """A write timed out by back-pressure (the peer reads late) keeps its bytes: flush() and
    later writes deliver the whole stream, in order."""
    with stream_pair(pki) as (_cin, cout, sin, _sout, _a, _b):
        data = random_bytes(4 << 20, seed=3)
        cout.settimeout(0.2)
        timeouts = 0
        pos = 0
        while timeouts < 3 and pos < len(data):  # the peer does not read yet
            try:
                cout.write(data[pos : pos + 65536])
            except TimeoutError as exc:
                assert exc.characters_written == len(data[pos : pos + 65536])
                timeouts += 1
            pos += 65536
        assert timeouts == 3
        sin.settimeout(10)
        join = run_in_thread(lambda: read_exactly(sin, len(data)))
        cout.settimeout(10)
        cout.flush()
        cout.write(data[pos:])  # the rest, after the retried bytes
        cout.flush()
        got = join(30)
        assert len(got) == len(data) and sha1(got) == sha1(data)


def test_writelines_that_times_out_says_where_to_resume(pki: Any) -> None:
    """writelines' TimeoutError counts every byte the call took (the lines before, and the one
    that timed out, buffered), not only the last line's (found by test_diff_ops): resuming
    after that many bytes delivers the stream once, in order."""
    with stream_pair(pki) as (_cin, cout, sin, _sout, _a, _b):
        data = random_bytes(4 << 20, seed=4)
        lines = [data[i : i + 65536] for i in range(0, len(data), 65536)]
        cout.settimeout(0.2)
        with pytest.raises(TimeoutError) as info:
            cout.writelines(lines)  # the peer does not read yet
        took = info.value.characters_written
        assert took % 65536 == 0 and 65536 < took < len(data)
        sin.settimeout(10)
        join = run_in_thread(lambda: read_exactly(sin, len(data)))
        cout.settimeout(10)
        cout.writelines(lines[took // 65536 :])
        cout.flush()
        got = join(30)
        assert len(got) == len(data) and sha1(got) == sha1(data)


def test_stream_close_without_close_original_hands_over_every_byte(pki: Any) -> None:
    """The caller owns the streams (close_original=False): once both SSL ports are closed, all
    ciphertext was written to the output stream, so closing it then loses nothing."""
    with stream_pair(pki) as (cin, cout, sin, sout, a, _b):
        data = random_bytes(2 << 20, seed=4)
        join = run_in_thread(lambda: read_exactly(sin, len(data)))
        cout.write(data)
        cout.close()
        cin.close()
        a.shutdown(socket.SHUT_RDWR)  # the caller is done with its socket
        a.close()
        got = join(60)
        assert len(got) == len(data) and sha1(got) == sha1(data)
        sin.close()
        sout.close()


# -- close() from another thread while a write waits ----------------------------------------------


def test_closing_both_ports_ends_a_write_waiting_in_another_thread(pair: Any) -> None:
    cin, cout, _sin, _sout = pair
    result: list[Any] = []

    def writer() -> None:
        try:
            cout.write(b"x" * (64 << 20))  # the peer does not read: this waits
            result.append("returned")
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.5)
    closer = threading.Thread(target=lambda: (cin.close(), cout.close()), daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive(), "close() hangs while another thread's write waits"
    t.join(5)
    assert not t.is_alive(), "the waiting write never ends"
    assert result and isinstance(result[0], (OSError, ValueError))


def test_flush_of_a_closed_output_port_raises(pair: tuple[Any, Any, Any, Any]) -> None:
    """As io's writers: flush() after close() is ValueError (it returned as if it had sent),
    also through a flush method taken before the close; close() again stays quiet."""
    _cin, cout, sin, _sout = pair
    flush = cout.flush
    cout.write(b"last\n")
    cout.close()
    assert sin.readline() == b"last\n"
    for call in (cout.flush, flush):
        with pytest.raises(ValueError, match="closed"):
            call()
    cout.close()


# -- a write racing close() in another thread ---------------------------------------------------


def _write_lines_until_closed(cout: Any, written: list[bytes], started: threading.Event) -> None:
    """Write numbered lines to `cout` until a write raises ValueError; `written` gets each line
    a write took, `started` is set after the 200th."""
    i = 0
    while True:
        line = b"%08d\n" % i
        try:
            assert cout.write(line) == len(line)
        except ValueError:
            return
        written.append(line)
        i += 1
        if i == 200:
            started.set()


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["no-timeout", "timeout"])
def test_a_write_racing_close_is_sent_or_raises(pki: Any, path: str, timeout: Any) -> None:
    """Each write() that returns its count is delivered before the peer's EOF; once close() has
    begun in another thread, a write raises ValueError, as io.BufferedWriter's does. (Before,
    a write that passed its closed check just before close() was claimed waited for the
    write lock, then buffered its bytes after close's flush: it returned its count and the
    bytes never went out.)

    The peer reads as the lines arrive: close() does not wait for a write that waits for a
    peer that does not read (that write ends with an error, the bytes it holds unsent), and a
    writer scheduled far ahead of this thread fills the socket buffers (~4 MB) before close."""
    for _ in range(20):
        gen = connected_ports(pki)
        cin, cout, sin, _sout = next(gen)
        try:
            cin.close()  # (so that closing cout ends the connection: the peer reads its EOF)
            cout.settimeout(timeout)
            received = run_in_thread(sin.read)
            written: list[bytes] = []
            started = threading.Event()
            t = threading.Thread(
                target=_write_lines_until_closed, args=(cout, written, started), daemon=True
            )
            t.start()
            assert started.wait(10)
            cout.close()
            t.join(10)
            assert not t.is_alive()
            assert received(30) == b"".join(written)
        finally:
            with contextlib.suppress(StopIteration):
                next(gen)


# -- the caller's buffer is held for the call, as io's files hold it ----------------------------


@pytest.mark.parametrize("timeout", [None, 30.0], ids=["no-timeout", "timeout"])
def test_a_waiting_readinto_holds_its_buffer(pair: Any, timeout: Any) -> None:
    """A small readinto() that waits for data holds its bytearray: another thread's resize
    raises BufferError, and the read then fills the buffer it was given. (Before, on the
    Python path, the resize went through: the read returned 0, a false EOF, or filled the
    buffer's new size.)"""
    cin, _cout, _sin, sout = pair
    cin.settimeout(timeout)
    buf = bytearray(100)
    join = run_in_thread(lambda: cin.readinto(buf))
    wait_read_under_way(cin)  # (it holds the buffer before it takes the lock, and waits)
    with pytest.raises(BufferError):
        buf.extend(b"x" * 1000)
    with pytest.raises(BufferError):
        del buf[:]
    sout.write(b"y" * 150)
    sout.flush()
    assert join(10) == 100
    assert buf == b"y" * 100
    assert cin.read(50) == b"y" * 50


def test_a_write_waiting_for_the_lock_holds_its_buffer(pair: Any) -> None:
    """A write() waiting for the write lock (another thread's write waits for the peer) holds
    its bytearray: a resize raises BufferError, and the bytes it was given are the ones sent.
    (Before, on the Python path, it counted the old size and sent the new contents.)"""
    _cin, cout, sin, _sout = pair
    big = random_bytes(16 << 20)
    small = bytearray(b"z" * 100)
    first = run_in_thread(lambda: cout.write(big))  # the peer does not read yet: this waits
    lock = cout._sslports_conn.write_lock
    wait_until(lock.locked, "the first write never took the lock")
    second = run_in_thread(lambda: cout.write(small))
    wait_until(lambda: bytearray_exports(small) > 0, "the second write never took its buffer")
    assert lock.locked()  # (the first still waits for the peer: the second waits for it)
    with pytest.raises(BufferError):
        small.extend(b"!" * 50)
    with pytest.raises(BufferError):
        del small[:]
    got = run_in_thread(lambda: read_exactly(sin, len(big) + 100))
    assert first(30) == len(big)
    assert second(30) == 100
    cout.flush()
    data = got(30)
    assert sha1(data[: len(big)]) == sha1(big)
    assert data[len(big) :] == b"z" * 100


class _Size:
    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


@pytest.mark.parametrize(
    ("method", "bad", "message"),
    [
        ("write", "text", r"^write\(\) argument must be a bytes-like object, not str$"),
        ("writelines", ["text"], r"^write\(\) argument must be a bytes-like object, not str$"),
        ("write", 42, r"^write\(\) argument must be a bytes-like object, not int$"),
        ("read", "x", r"^read\(\) argument must be an int or None, not str$"),
        ("read1", 1.5, r"^read1\(\) argument must be an int or None, not float$"),
        ("readline", "x", r"^readline\(\) argument must be an int or None, not str$"),
        ("readlines", b"x", r"^readlines\(\) argument must be an int or None, not bytes$"),
        ("peek", None, r"^peek\(\) argument must be an int, not NoneType$"),
        ("readinto", b"ro", r"^readinto\(\) argument must be read-write bytes-like object"),
    ],
)
def test_a_wrong_argument_type_names_the_method(
    pair: Any, method: str, bad: Any, message: str
) -> None:
    """API.md: wrong argument types raise TypeError, and the message names the function: a
    port's methods too, on both paths (not memoryview's or int's own words). Nothing is
    written or taken: the connection goes on as before."""
    cin, cout, sin, sout = pair
    port = cout if method.startswith("write") else cin
    with pytest.raises(TypeError, match=message):
        getattr(port, method)(bad)
    cout.write(b"up")
    cout.flush()
    assert read_exactly(sin, 2) == b"up"
    sout.write(b"down")
    sout.flush()
    assert read_exactly(cin, 4) == b"down"


def test_a_read_size_below_minus_one_is_a_value_error(pair: Any) -> None:
    """read(n) takes n >= 0 or -1 (None), as io.BufferedReader, socket.makefile("rb")'s:
    read(-2) raised TimeoutError on a port with a timeout and, without one, waited for EOF
    (read to the end). On both paths; nothing is taken. read1's other negatives stay
    'what is there', as io's read1."""
    cin, _cout, _sin, sout = pair
    sout.write(b"hello")
    sout.flush()
    for size in (-2, -(2**40)):
        with pytest.raises(ValueError, match=r"^read length must be non-negative or -1$"):
            cin.read(size)
    assert cin.read1(-7) == b"hello"


def test_read_sizes_are_any_index(pair: Any) -> None:
    """read() and read1() take any object with __index__ as their size, as io's do, on both
    paths, and refuse a float with a TypeError naming the method (API.md: the message names
    the function)."""
    cin, _cout, _sin, sout = pair
    sout.write(b"abcdef")
    sout.flush()
    assert cin.read(_Size(2)) == b"ab"
    assert cin.read1(_Size(2)) == b"cd"
    for call in (cin.read, cin.read1):
        with pytest.raises(TypeError, match=rf"^{call.__name__}\(\) argument must be an int or "):
            call(2.0)
    assert cin.read(2) == b"ef"
