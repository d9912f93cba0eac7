"""A TLS 1.2 server's renegotiation met by a client that writes (sp_conn.c, A SERVER'S
RENEGOTIATION MET BY A WRITER), over a socket (ssl_wrap_socket) and over streams
(ports_to_ssl_ports), against ``openssl s_server``.

Once the client read the server's HelloRequest, its writer drives the renegotiation by reading,
and keeps the application data the server sends meanwhile (until its ServerHello) for the
reader: the stash, at most 64 KiB. Here the renegotiation is held in its middle for as long as
a test needs: the client reaches s_server through `Relay`, a TCP relay on 127.0.0.1 that passes
the server's bytes on at once but holds the client's (its ClientHello) while its gate is
closed. Meanwhile s_server goes on sending, and the tests check, with hashed data:

* a reader that takes part of the stash while the writer goes on keeping more: every byte
  once, in order, and the write goes through once the renegotiation ends;
* a reader that does not read while s_server floods: the writer stops keeping data at the
  bound (it pauses: memory stays bounded) and resumes once the reader takes some;
* the server ends the connection in the middle of the renegotiation (its TCP end closes after
  s_server is killed with SIGKILL, a FIN, or a reset): the write fails with the exception
  API.md names (no hang), and the reader gets every byte the server sent before the end, then
  EOF or the error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import selectors
import signal
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from conftest import LOCAL, MIB, random_bytes, read_exactly, run_in_thread, sha1, socket_under
from test_interop_features import _NO_COMMANDS
from test_post_handshake import SServer

import sslports
from sslports import _binding

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Relay asks Linux's socket queues")

TIMEOUT = 30.0
SHORT = 0.5  # a write's deadline while the writer must pause (a full stash)
JOIN = 15.0  # the longest a write that must fail may take (it fails within a slice or two)
STASH_MAX = 65536  # sp_conn.c SP_STASH_MAX
SIOCINQ = termios.FIONREAD
SIOCOUTQ = 0x5411  # (linux/sockios.h: TIOCOUTQ)


def _queued(sock: socket.socket, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


class Relay:
    """A TCP relay for one connection, client <-> `server_port`. The server's bytes go to the
    client as they come (at most 64 KiB buffered here: s_server's writes wait once the client
    stops taking them); the client's are held while `gate` is clear. Once the server ended
    its side and the client's kernel got everything it sent, the relay ends the client's:
    `server_end` "fin" (shutdown(SHUT_WR)) or "reset" (an RST)."""

    def __init__(self, server_port: int, server_end: str = "fin") -> None:
        self.server_port = server_port
        self.server_end = server_end
        self.listener = socket.create_server((LOCAL, 0))
        self.port: int = self.listener.getsockname()[1]
        self.gate = threading.Event()
        self.gate.set()
        self.to_client = 0  # bytes handed to the client's socket
        self.server_data = 0  # application data the server sent (see _count_records)
        self._records = bytearray()  # (the server's bytes, from a record's start)
        self.client: Optional[socket.socket] = None
        self.ended = threading.Event()  # the server's end was passed on
        self._stop = threading.Event()
        self.join = run_in_thread(self._run)

    def client_consumed(self, client: socket.socket) -> int:
        """What the client took from its socket: what we handed over, less what is still on
        its way (our send queue, its receive queue)."""
        assert self.client is not None
        return self.to_client - _queued(self.client, SIOCOUTQ) - _queued(client, SIOCINQ)

    def close(self) -> None:
        """Once the client closed: what it sent goes to the server, then the relay ends."""
        self.gate.set()
        try:
            self.join(TIMEOUT)
        finally:
            self._stop.set()

    def _run(self) -> None:
        self.listener.settimeout(TIMEOUT)
        try:
            client, _ = self.listener.accept()
        finally:
            self.listener.close()
        server = socket.create_connection((LOCAL, self.server_port), timeout=TIMEOUT)
        self.client = client
        try:
            self._relay(client, server)
        finally:
            client.close()
            server.close()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        client.setblocking(False)
        server.setblocking(False)
        up, down = bytearray(), bytearray()  # client -> server, server -> client
        up_eof = down_eof = False  # the client's / the server's end came (or was made here)
        client_done = server_done = False  # that socket is finished with (closed or shut)
        client_shut = server_shut = False  # our FIN to it went
        sel = selectors.DefaultSelector()
        while not self._stop.is_set() and not (client_done and server_done):
            if self.server_end == "reset" and down_eof and not down:
                if _queued(client, SIOCOUTQ) == 0:  # (all of it reached the client)
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    client.close()
                    self.ended.set()
                    return
            elif down_eof and not down and not client_shut:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)  # (reading on: a close with unread bytes
                client_shut = True  # would reset)
                self.ended.set()
            if up_eof and not up and not server_shut and not down_eof:
                with contextlib.suppress(OSError):
                    server.shutdown(socket.SHUT_WR)
                server_shut = True
            client_done = up_eof and client_shut
            server_done = down_eof  # (it ends once it read ours: SHUT_WR above)
            wanted = []
            events = (0 if up_eof else selectors.EVENT_READ) | (
                selectors.EVENT_WRITE if down else 0
            )
            if events and not client_done:
                wanted.append((client, events))
            events = (selectors.EVENT_READ if not down_eof and len(down) < 65536 else 0) | (
                selectors.EVENT_WRITE if up and self.gate.is_set() and not server_done else 0
            )
            if events and not server_done:
                wanted.append((server, events))
            for sock, events in wanted:
                sel.register(sock, events)
            try:
                ready = sel.select(0.02)
            finally:
                for sock, _ in wanted:
                    sel.unregister(sock)
            for key, events in ready:
                if key.fileobj is client:
                    if events & selectors.EVENT_READ:
                        data = _recv(client)
                        if data == b"":
                            up_eof = True
                        elif data and not server_done:  # (else: nowhere to go)
                            up += data
                    if events & selectors.EVENT_WRITE:
                        try:
                            n = client.send(down)
                        except BlockingIOError:
                            n = 0
                        except OSError:  # the client is gone: what it would get, too
                            n = len(down)
                        del down[:n]
                        self.to_client += n
                else:
                    if events & selectors.EVENT_READ:
                        data = _recv(server)
                        if data == b"":
                            down_eof = True
                        elif data:
                            down += data
                            self._count_records(data)
                    if events & selectors.EVENT_WRITE:
                        try:
                            n = server.send(up)
                        except BlockingIOError:
                            n = 0
                        except OSError:
                            n = len(up)
                        del up[:n]
        sel.close()

    def _count_records(self, data: bytes) -> None:
        """Count the application data in the server's records (TLS 1.2, AES-GCM: an explicit
        nonce of 8 bytes and a tag of 16 around it)."""
        self._records += data
        while len(self._records) >= 5:
            size = 5 + int.from_bytes(self._records[3:5], "big")
            if len(self._records) < size:
                break
            if self._records[0] == 23:
                self.server_data += size - 5 - 24
            del self._records[:size]


def _recv(sock: socket.socket) -> Optional[bytes]:
    """What the socket has: b"" at its end (or a reset), None if nothing yet."""
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    except ConnectionError:
        return b""


class Held:
    """A client of s_server (through a Relay) in the middle of a renegotiation."""

    server: SServer
    relay: Relay
    sock: socket.socket
    inp: Any
    out: Any


@contextlib.contextmanager
def held_renegotiation(
    pki: Any, openssl_tool: Any, mode: str, seed: int, server_end: str = "fin", context: Any = None
) -> Iterator[Held]:
    """A TLS 1.2 client (ssl_wrap_socket with a timeout, "socket", or without, "untimed"; or
    ports_to_ssl_ports over the socket's streams, "streams") of
    s_server, through a Relay whose gate then holds the client's bytes: s_server sent data,
    renegotiated (its HelloRequest) and sent more right behind, and the client's reader read
    all of it (so it read the HelloRequest and sent its ClientHello, which the relay holds).
    The renegotiation stays in its middle until the test opens the gate. (`server_end`: see
    Relay.)"""
    h = Held()
    cipher = ["-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]  # (Relay counts its records)
    h.server = SServer(pki, openssl_tool, cipher)
    h.relay = Relay(h.server.port, server_end)
    h.sock = socket.create_connection((LOCAL, h.relay.port), timeout=TIMEOUT)
    ctx = context or pki.client_context("tls12")
    if mode != "streams":  # (untimed: the ports' C fast path takes every call first)
        timeout = None if mode == "untimed" else TIMEOUT
        h.inp, h.out = sslports.ssl_wrap_socket(
            h.sock, mode="connect", context=ctx, hostname="localhost", timeout=timeout
        )
        h.sock = socket_under(h.inp)  # (the socket object given was detached)
    else:
        h.inp, h.out = sslports.ports_to_ssl_ports(
            h.sock.makefile("rb", buffering=0),
            h.sock.makefile("wb", buffering=0),
            mode="connect",
            context=ctx,
            hostname="localhost",
            close_original=True,
            timeout=TIMEOUT,
        )
    before, behind = (
        random_bytes(n, seed=seed + i).translate(_NO_COMMANDS)
        for i, n in enumerate((50_000, 20_000))
    )
    try:
        h.server.send(before)
        assert read_exactly(h.inp, len(before)) == before
        h.relay.gate.clear()
        h.server.command(b"r")
        h.server.send(behind)  # (data right behind the HelloRequest)
        assert read_exactly(h.inp, len(behind)) == behind  # the HelloRequest was read too
        yield h
    finally:
        h.relay.gate.set()
        h.inp.close()
        with contextlib.suppress(sslports.SSLError):  # (a test that failed: what it wrote)
            h.out.close()
        h.sock.close()
        h.relay.close()


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        time.sleep(0.005)


def _read_until_end(inp: Any) -> tuple[bytes, Optional[BaseException]]:
    """Everything the input port still gives, in reads smaller than the stash, then how it
    ended: None (EOF) or the exception."""
    got = bytearray()
    try:
        while chunk := inp.read1(4000):
            got += chunk
    except sslports.SSLError as exc:
        return bytes(got), exc
    return bytes(got), None


@pytest.mark.parametrize("mode", ["socket", "untimed", "streams"])
def test_reader_takes_part_of_the_stash_while_the_writer_keeps_more(
    pki: Any, openssl_tool: Any, mode: str
) -> None:
    """The renegotiation is held in its middle while s_server floods and the client writes:
    the writer keeps the flood's data for the reader, pauses once it keeps 64 KiB (socket: the
    client took no more than that from its socket), and goes on keeping more as the reader
    takes the kept data a part at a time. Once the renegotiation goes on, the write goes
    through; the reader got the flood whole, in order, once."""
    flood = random_bytes(2 * MIB, seed=81).translate(_NO_COMMANDS)
    upstream = random_bytes(300_000, seed=82)
    with held_renegotiation(pki, openssl_tool, mode, 80) as h:
        sending = run_in_thread(lambda: h.server.send(flood))  # (blocks: nobody reads)
        h.out.settimeout(SHORT)
        with pytest.raises(TimeoutError):  # the writer pauses: the reader must take some
            h.out.write(upstream)
            h.out.flush()
        if mode != "streams":
            # The kept data (64 KiB), what OpenSSL holds, one recv() beyond: not the flood.
            consumed = h.relay.client_consumed(h.sock)
            assert consumed < 8 * STASH_MAX, consumed
        h.out.settimeout(None if mode == "untimed" else TIMEOUT)
        writing = run_in_thread(h.out.flush)  # the rest of the write, paused again
        conn = h.inp._sslports_conn
        got = bytearray()
        for _ in range(3):
            _wait_for(lambda: _binding.lib.sp_stash_full(conn.ptr), "the stash to fill")
            while _binding.lib.sp_stash_full(conn.ptr):  # take a part, from the stash
                chunk = h.inp.read1(4000)
                assert chunk, "early EOF"
                got += chunk
            # (the writer now goes on from there: it keeps more behind the rest)
        assert got == flood[: len(got)]
        if mode != "streams":
            consumed = h.relay.client_consumed(h.sock)
            assert consumed - len(got) < 8 * STASH_MAX, consumed - len(got)
        while len(got) < MIB:  # the reader and the writer (keeping more) take turns
            chunk = h.inp.read1(4000)
            assert chunk, "early EOF"
            got += chunk
        h.relay.gate.set()  # the renegotiation goes on
        got += read_exactly(h.inp, len(flood) - len(got))
        assert sha1(bytes(got)) == sha1(flood)
        sending(TIMEOUT)
        writing(TIMEOUT)
    received = h.server.received(upstream[:64], len(upstream))
    assert sha1(received) == sha1(upstream)


@pytest.mark.parametrize("mode", ["socket", "untimed", "streams"])
def test_a_ctrl_c_in_a_key_logger_during_a_write_that_renegotiates(
    pki: Any, openssl_tool: Any, mode: str
) -> None:
    """The renegotiation's key log line (its CLIENT_RANDOM) comes inside the write that drives
    it. A Ctrl-C in the key logger there is the write's to raise (the write went on, and the
    Ctrl-C was lost); flush() then sends the rest, and s_server gets every byte once."""
    upstream = random_bytes(300_000, seed=91)
    randoms: list[bytes] = []

    def logger(line: bytes) -> None:
        if line.startswith(b"CLIENT_RANDOM "):
            randoms.append(line)
            if len(randoms) == 2:
                raise KeyboardInterrupt

    ctx = pki.client_context("tls12")
    sslports.ssl_set_keylogger(ctx, logger)
    with held_renegotiation(pki, openssl_tool, mode, 90, context=ctx) as h:
        opener = threading.Timer(0.3, h.relay.gate.set)  # (the write waits for it by then)
        opener.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                h.out.write(upstream)
                h.out.flush()
        finally:
            opener.join()
        h.out.flush()
        assert len(randoms) == 2
    received = h.server.received(upstream[:64], len(upstream))
    assert sha1(received) == sha1(upstream)


def _reason(exc: BaseException) -> Optional[int]:
    """The errno of a transport failure: the exception's own, or (over streams, where the
    stream's read or write failed) that of the stream's exception, its cause."""
    cause: Optional[BaseException] = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def _kill_server_once_it_sent_all(h: Held) -> None:
    """SIGKILL to s_server once the relay has passed on everything it was given to send."""
    deadline = time.monotonic() + TIMEOUT
    while h.relay.server_data < h.server.given:
        assert time.monotonic() < deadline, "s_server did not send its data"
        time.sleep(0.01)
    h.server.proc.send_signal(signal.SIGKILL)


@pytest.mark.parametrize("mode", ["socket", "untimed", "streams"])
@pytest.mark.parametrize("end", ["sigkill", "reset", "quit"])
@pytest.mark.parametrize("size", [40_000, 100_000], ids=["kept", "beyond"])
def test_server_ends_the_connection_in_the_middle_of_the_renegotiation(
    pki: Any, openssl_tool: Any, mode: str, end: str, size: int
) -> None:
    """The renegotiation is held in its middle while the client writes (its writer drives the
    renegotiation: it reads, and keeps s_server's data for the reader), and s_server sends
    data, then the connection ends: s_server is killed (SIGKILL; its TCP end then closes, and
    the relay passes that on as a FIN, or as a reset), or closes it itself (its Q command).
    The write fails with the exception API.md names for a transport failure, errno EPIPE
    (nothing more can be written) or ECONNRESET; it does not wait for a peer that is gone. The
    reader then gets every byte s_server sent, once, in order, then EOF, or the reset.

    "beyond": s_server sent more than the writer keeps, so the writer pauses (a full stash) in
    front of the end: it fails once the reader took the data (and met the end itself)."""
    tail = random_bytes(size, seed=91).translate(_NO_COMMANDS)
    upstream = random_bytes(MIB, seed=92)
    server_end = "reset" if end == "reset" else "fin"
    with held_renegotiation(pki, openssl_tool, mode, 90, server_end) as h:
        writing = run_in_thread(lambda: (h.out.write(upstream), h.out.flush()))
        h.server.send(tail)
        if end == "quit":
            h.server.command(b"Q")
        else:
            _kill_server_once_it_sent_all(h)
        assert h.relay.ended.wait(TIMEOUT)
        if size > STASH_MAX:
            got, ended = _read_until_end(h.inp)
        with pytest.raises(sslports.SSLError) as info:
            writing(JOIN)
        failed = info.value
        if mode != "streams":  # (ports made over a socket: SSLNetworkError)
            assert isinstance(failed, sslports.SSLNetworkError), repr(failed)
        want = errno.ECONNRESET if end == "reset" else errno.EPIPE
        # Over streams, two threads use the socket: the receiver's reads and the sender's
        # writes (docs/guide/threading.md). The kernel reports a reset once, to whichever call
        # meets it first; after it, a send fails with EPIPE and a recv returns EOF, as for any
        # two threads on one socket. So the write's reason is either, and the reader's end
        # (below) is the reset or an EOF.
        shared = mode == "streams" and end == "reset"
        wants = {want, errno.EPIPE} if shared else {want}
        assert _reason(failed) in wants, repr(failed)
        if size <= STASH_MAX:
            got, ended = _read_until_end(h.inp)
        assert len(got) == len(tail) and sha1(got) == sha1(tail)
        if end == "reset" and not (shared and ended is None):
            assert isinstance(ended, sslports.SSLError), repr(ended)
            assert _reason(ended) == errno.ECONNRESET, repr(ended)
        else:
            assert ended is None, repr(ended)
        with pytest.raises(sslports.SSLError) as again:  # (and so does every later write)
            h.out.write(b"more")
            h.out.flush()
        assert _reason(again.value) in wants, repr(again.value)
        with contextlib.suppress(sslports.SSLError):  # (what is left of the write cannot go)
            h.out.close()
        assert h.out.closed


@pytest.mark.parametrize("mode", ["socket", "untimed"])
def test_a_writer_paused_by_a_full_stash_does_not_spin_on_a_reset(
    pki: Any, openssl_tool: Any, mode: str
) -> None:
    """The writer pauses while the stash is full (the reader has not taken its data), and
    the server resets the connection meanwhile. The pause was a poll() of the socket for no
    event, which a reset socket answers at once: the write spun at 100 % of a core until the
    reader came (for ever, with a reader that never does). Now it pauses a slice at a time:
    over 2 s it takes well under a quarter of a core's time, and it still fails once the
    reader took the data."""
    tail = random_bytes(100_000, seed=93).translate(_NO_COMMANDS)
    upstream = random_bytes(MIB, seed=94)
    with held_renegotiation(pki, openssl_tool, mode, 90, "reset") as h:
        writing = run_in_thread(lambda: (h.out.write(upstream), h.out.flush()))
        h.server.send(tail)
        _kill_server_once_it_sent_all(h)
        assert h.relay.ended.wait(TIMEOUT)
        time.sleep(0.2)  # (the reset has reached the client)
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(2.0)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        got, ended = _read_until_end(h.inp)  # (first: this ends the pause, spinning or not)
        with pytest.raises(sslports.SSLError):
            writing(JOIN)
        assert cpu < wall / 4, f"{cpu:.2f} s of CPU in {wall:.2f} s: the paused writer spins"
        assert len(got) == len(tail) and sha1(got) == sha1(tail)
        assert isinstance(ended, sslports.SSLError) and _reason(ended) == errno.ECONNRESET
