"""Post-handshake messages (TLS 1.2 renegotiation) over stream ports, at the edges the
full-duplex tests of test_interop_features.py do not reach: a deadline that expires in the
middle of a renegotiation, for a client's writer (``openssl s_server`` renegotiates) and for a
server's ``ssl_try_verify`` (which renegotiates itself).

The peer is stalled in the middle of the renegotiation by an output stream that holds our
flight back (`GatedWriter`), so the deadline is met at a known point.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import pytest
from conftest import (
    LOCAL,
    collect_stdout,
    random_bytes,
    read_exactly,
    run_in_thread,
    sha1,
    wait_stdin_taken,
    wait_until,
)
from test_interop_features import _NO_COMMANDS, _REPORT_LINES

import sslports

TIMEOUT = 30.0
SHORT = 0.5  # the deadline that expires in the middle of the renegotiation
# A stall detector: the correct outcome (a TimeoutError at SHORT) takes well under a second;
# a call that never checks its deadline only ends once the peer moves on, i.e. never here.
STALL_BOUND = 10.0


class GatedWriter:
    """A writable stream that holds every write while its gate is closed."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.open = threading.Event()
        self.open.set()

    def write(self, data: Any) -> int:
        if not self.open.wait(TIMEOUT):
            raise TimeoutError("GatedWriter: the gate stayed closed")
        return int(self.raw.write(data))

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.open.set()
        self.raw.close()


def _outcome(fn: Any) -> Any:
    """fn's result or the exception it raised, within STALL_BOUND (None: still running)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(STALL_BOUND)
    return box[0] if box else None


class SServer:
    """``openssl s_server -tls1_2`` for one connection (and `extra` arguments): sends its
    stdin to the client, writes what it receives to stdout (collected here). `given`: the
    application data it was given to send."""

    def __init__(self, pki: Any, openssl_tool: Any, extra: Sequence[str] = ()) -> None:
        args = ["-cert", str(pki.server_chain), "-key", str(pki.server_key), "-tls1_2", *extra]
        self.proc, self.port = openssl_tool.s_server([*args, "-naccept", "1"])
        self.given = 0
        self.stdout = bytearray()
        self.pump = collect_stdout(self.proc, self.stdout)

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        self.given += len(data)

    def command(self, letter: bytes) -> None:
        # (s_server must read the line alone: in a read of its own, not with what follows)
        wait_stdin_taken(self.proc)
        self.proc.stdin.write(letter + b"\n")  # (not application data: not in `given`)
        self.proc.stdin.flush()
        wait_stdin_taken(self.proc)

    def received(self, first: bytes, size: int) -> bytes:
        """What s_server received from `first` (its first bytes) on, up to `size` bytes, once
        it exited."""
        self.proc.wait(TIMEOUT)
        self.pump.join(TIMEOUT)
        output = bytes(self.stdout)
        for line in _REPORT_LINES:
            output = output.replace(line, b"")
        start = output.find(first)
        assert start >= 0
        return output[start : start + size]


class CountingReader:
    """A readable stream that counts the bytes read from it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.count = 0

    def readinto(self, buf: Any) -> Optional[int]:
        n = self.raw.readinto(buf)
        self.count += n or 0
        return n  # type: ignore[no-any-return]

    def close(self) -> None:
        self.raw.close()


@contextlib.contextmanager
def stalled_renegotiation(
    pki: Any, openssl_tool: Any, upstream: bytes, seed: int
) -> Iterator[tuple[SServer, GatedWriter, CountingReader, Any, Any]]:
    """A TLS 1.2 client of s_server over stream ports (timeout=TIMEOUT; its output through a
    GatedWriter, its input counted) in the middle of a renegotiation whose ClientHello is held
    back: s_server sent some data, renegotiated and sent more (right behind its HelloRequest),
    and the client read all of it. Afterwards (the gate open) the ports are closed and what
    s_server received must be `upstream`, whole and once."""
    server = SServer(pki, openssl_tool)
    sock = socket.create_connection((LOCAL, server.port), timeout=TIMEOUT)
    gate = GatedWriter(sock.makefile("wb", buffering=0))
    counting = CountingReader(sock.makefile("rb", buffering=0))
    inp, out = sslports.ports_to_ssl_ports(
        counting,
        gate,
        mode="connect",
        context=pki.client_context("tls12"),
        hostname="localhost",
        close_original=True,
        timeout=TIMEOUT,
    )
    before, behind = (
        random_bytes(n, seed=seed + i).translate(_NO_COMMANDS)
        for i, n in enumerate((50_000, 20_000))
    )
    try:
        server.send(before)
        assert read_exactly(inp, len(before)) == before
        gate.open.clear()
        server.command(b"r")
        server.send(behind)  # (data right behind the HelloRequest)
        assert read_exactly(inp, len(behind)) == behind  # the HelloRequest was read too
        yield server, gate, counting, inp, out
    finally:
        gate.open.set()
        inp.close()
        out.close()
        sock.close()
    received = server.received(upstream[:64], len(upstream))
    assert sha1(received) == sha1(upstream)


def test_client_write_deadline_during_server_renegotiation(pki: Any, openssl_tool: Any) -> None:
    """Stream ports with a timeout (reads go through the receiver thread). s_server
    renegotiates; our ClientHello is held back, so the renegotiation stalls, and a write then
    has to read (the writer drives the renegotiation). The write never checked its deadline
    over streams (only a socket's pump call did): it spun at 100% CPU, past its timeout, for as
    long as the peer said nothing. It must raise TimeoutError with nothing lost or sent twice,
    and a retry once the peer moves on must send the rest."""
    upstream = random_bytes(300_000, seed=63)
    after = random_bytes(300_000, seed=62).translate(_NO_COMMANDS)
    with stalled_renegotiation(pki, openssl_tool, upstream, 60) as (server, gate, _, inp, out):
        out.settimeout(SHORT)
        outcome = _outcome(lambda: (out.write(upstream), out.flush()))
        gate.open.set()  # (lets a stalled write finish: the test ends either way)
        assert outcome is not None, "the write ran past its deadline"
        assert isinstance(outcome, TimeoutError), outcome

        out.settimeout(TIMEOUT)
        out.flush()  # the rest: the renegotiation goes on now
        server.send(after)
        assert read_exactly(inp, len(after)) == after


@pytest.mark.parametrize("given", ["input", "output"])
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_server_verify_deadline_over_streams(pki: Any, version: str, given: str) -> None:
    """A stream server's ssl_try_verify (TLS 1.2: a renegotiation; TLS 1.3: a certificate
    request) whose request is held back: the deadline (the timeout of the port it is given,
    either one) expires. The pump_once loop checked it for sockets only, and spun until the
    client answered, i.e. forever. It must give up at the deadline; the connection then
    carries data as before."""
    listener = socket.create_server((LOCAL, 0))
    port = listener.getsockname()[1]
    connect = run_in_thread(
        lambda: sslports.ssl_connect(LOCAL, port, pki.client_context(version), timeout=TIMEOUT)
    )
    conn, _ = listener.accept()
    listener.close()
    gate = GatedWriter(conn.makefile("wb", buffering=0))
    sin, sout = sslports.ports_to_ssl_ports(
        conn.makefile("rb", buffering=0),
        gate,
        mode="accept",
        context=pki.server_context(version),
        close_original=True,
        timeout=TIMEOUT,
    )
    cin, cout = connect(TIMEOUT)
    try:
        gate.open.clear()
        port = sin if given == "input" else sout
        port.settimeout(SHORT)
        outcome = _outcome(lambda: sslports.ssl_try_verify(port, True))
        gate.open.set()
        assert outcome is not None, "ssl_try_verify ran past its deadline"
        assert isinstance(outcome, sslports.SSLError), outcome
        assert "timed out" in str(outcome)

        port.settimeout(TIMEOUT)
        cin.settimeout(TIMEOUT)
        cout.write(b"still here\n")
        cout.flush()
        assert read_exactly(sin, 11) == b"still here\n"
        sout.write(b"and here\n")
        sout.flush()
        assert read_exactly(cin, 9) == b"and here\n"
    finally:
        gate.open.set()
        for p in (sin, sout, cin, cout):
            p.close()
        conn.close()


def test_a_stream_read_that_returns_data_sends_the_answer_its_pump_queued(pki: Any) -> None:
    """A stream client (ports_to_ssl_ports) whose read returns the data that came right after
    the server's certificate request (TLS 1.3 post-handshake authentication) sends its answer
    then, as a socket port does, and not only at its next read's wait or write: here it does
    neither, and the server's ssl_try_verify, which waits for that answer, returns. It
    waited until its own timeout."""
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context("tls13"))
    port = sslports.ssl_addresses(listener, True)[1]
    accept = run_in_thread(lambda: sslports.ssl_accept(listener))
    sock = socket.create_connection((LOCAL, port))
    cin, cout = sslports.ports_to_ssl_ports(
        sock.makefile("rb", buffering=0),
        sock.makefile("wb", buffering=0),
        mode="connect",
        context=pki.client_context("tls13"),
        hostname="localhost",
        close_original=True,
    )
    sin, sout = accept(TIMEOUT)
    try:
        sout.write(b"a")  # (the server's session tickets go out with its first write)
        sout.flush()
        assert cin.read1(100) == b"a"
        assert _received(sock) == 0
        sin.settimeout(STALL_BOUND)
        verify = run_in_thread(lambda: sslports.ssl_try_verify(sin, True))
        _wait_received(sock, 1)  # (the request: the write below comes after it)
        request = _received(sock)
        sout.write(b"x")
        sout.flush()
        _wait_received(sock, request + 1)  # (both in the client's socket: one read takes them)
        assert cin.read1(100) == b"x"
        verify(STALL_BOUND + 5)  # (raised TimeoutError at STALL_BOUND)
        cout.write(b"still here\n")
        cout.flush()
        assert read_exactly(sin, 11) == b"still here\n"
    finally:
        for p in (sin, sout, cin, cout):
            p.close()
        sock.close()
        listener.close()


def test_writer_driving_a_renegotiation_keeps_a_bounded_stash_over_streams(
    pki: Any, openssl_tool: Any
) -> None:
    """s_server renegotiates, our ClientHello is held back, and s_server goes on sending (it
    may, until that hello arrives) while the application writes and does not read. The writer
    drives the renegotiation: it reads the peer's records and keeps their data for the reader.
    Over streams it read the stream on and on, keeping everything the peer sent in memory; it
    now stops once it keeps 64 KiB (as on a socket) and waits for the reader. Nothing is lost:
    the reader then gets all of it, in order, and the write goes through."""
    flood = random_bytes(8 * 1024 * 1024, seed=72).translate(_NO_COMMANDS)
    upstream = random_bytes(100_000, seed=73)
    with stalled_renegotiation(pki, openssl_tool, upstream, 70) as (
        server,
        gate,
        counting,
        inp,
        out,
    ):
        sending = run_in_thread(lambda: server.send(flood))  # (blocks once nobody reads)
        time.sleep(0.5)  # (the flood fills the socket buffers meanwhile)
        pulled = counting.count
        out.settimeout(SHORT)
        outcome = _outcome(lambda: (out.write(upstream), out.flush()))
        assert isinstance(outcome, TimeoutError), outcome
        # What the writer took from the stream: the kept data (64 KiB) and one read beyond
        # it; without the bound, whatever the socket buffers held (megabytes).
        assert counting.count - pulled < 512 * 1024, counting.count - pulled
        gate.open.set()
        out.settimeout(TIMEOUT)
        assert sha1(read_exactly(inp, len(flood))) == sha1(flood)
        sending(TIMEOUT)
        out.flush()  # the rest of the write, now that the renegotiation goes on


def test_server_verify_deadline_while_the_client_only_writes(pki: Any) -> None:
    """A TLS 1.3 socket server's ssl_try_verify whose client never reads (so never answers the
    certificate request) but writes without pause: each pump step found data to read, and the
    loop met its deadline only in a step that read nothing, so the call ran (keeping all the
    client wrote for the input port) for as long as the client wrote. It must give up at the
    deadline with a TimeoutError; every byte read meanwhile is still the input port's."""
    stop = threading.Event()
    chunk = b"w" * 65536  # (faster than the server reads: there is always more to read)
    with sslports.ssl_listen(0, 5, False, LOCAL, pki.server_context("tls13")) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        accept = run_in_thread(lambda: sslports.ssl_accept(listener))
        cin, cout = sslports.ssl_connect(
            "localhost", port, pki.client_context("tls13"), timeout=TIMEOUT
        )
        sin, sout = accept(TIMEOUT)

    def write_until_stopped() -> int:
        sent = 0
        while not stop.is_set():
            cout.write(chunk)
            cout.flush()
            sent += len(chunk)
        cout.close()  # (the server reads on to the EOF)
        cin.close()
        return sent

    writer = run_in_thread(write_until_stopped)
    try:
        assert read_exactly(sin, 1) == b"w"  # (the client is writing)
        sin.settimeout(SHORT)
        outcome = _outcome(lambda: sslports.ssl_try_verify(sin, True))
        stop.set()
        assert outcome is not None, "ssl_try_verify ran past its deadline"
        assert isinstance(outcome, sslports.SSLError), outcome
        assert isinstance(outcome, TimeoutError), outcome
        assert "timed out" in str(outcome)
        sin.settimeout(TIMEOUT)
        got = 1
        while True:
            more = sin.read1(1 << 20)
            if not more:
                break
            assert more == b"w" * len(more)
            got += len(more)
        assert got == writer(TIMEOUT)
    finally:
        stop.set()
        for p in (sin, sout, cin, cout):
            p.close()


def _received(sock: socket.socket) -> int:
    """Bytes the kernel holds for `sock` to read (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


def _wait_received(sock: socket.socket, size: int) -> None:
    """Until the kernel holds `size` bytes for `sock` to read."""
    wait_until(lambda: _received(sock) >= size, "the server's records never came", TIMEOUT)


def test_a_second_hello_request_during_the_renegotiation_is_ignored(
    pki: Any, openssl_tool: Any
) -> None:
    """s_server asks for a renegotiation twice (two HelloRequests) and sends data before the
    client reads, so that one read meets all three records at once. The client renegotiates
    and ignores the second request (RFC 5246 7.4.1.1: a HelloRequest during a handshake is
    ignored); the data is read, and the connection goes on. With OpenSSL's read-ahead (on for
    TLS 1.3 only since), OpenSSL failed the read with "unexpected record" (an independent audit;
    Python's ssl client read the data)."""
    server = SServer(pki, openssl_tool)
    inp, out = sslports.ssl_connect(
        "localhost", server.port, pki.client_context("tls12"), timeout=TIMEOUT
    )
    data = b"data after two renegotiation requests\n"
    try:
        server.command(b"r")
        server.command(b"r")
        server.send(data)
        # Two HelloRequest records (33 bytes each with AES-GCM: header, nonce, message, tag)
        # and the data's record (29 bytes and the data), all in the socket before the read.
        _wait_received(sslports.ports.connection_of("test", inp).transport.sock, 95 + len(data))
        assert read_exactly(inp, len(data)) == data
        out.write(b"and back\n")
        out.flush()
    finally:
        inp.close()
        out.close()
    assert server.received(b"and back", 9) == b"and back\n"
