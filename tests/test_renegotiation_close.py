"""Ending a connection while a TLS 1.2 server's renegotiation is under way (an independent
review found all four broken).

The server is sslports over TLS 1.2: after the client's first line it asks for a client
certificate (``ssl_try_verify`` on its port: a HelloRequest, then a renegotiation), then reads
to the end with ``strict_eof``, so a connection that ends without close_notify is an error
there. The client reaches it through `Relay`, a TCP relay on 127.0.0.1 that passes the
server's bytes on `lag` seconds late (or holds them for good once `hold` is set), so the
client is in the middle of the renegotiation while the test ends its side:

* asyncio ``writer.shutdown()`` while written bytes are held back by the renegotiation: they
  go first, then close_notify (OpenSSL sends none inside a handshake; the shutdown used to
  report success and send nothing);
* asyncio ``writer.close()`` while held back, and the server's flight never comes: the close
  ends within the lingering close's bound (it waited forever);
* ports_to_ssl_ports with ``shutdown_on_close``: closing the output port while a read is in
  the renegotiation sends close_notify once it ends (it sent none);
* ports_to_ssl_ports whose output stream fails while it writes the flight a read queued: the
  read raises that failure (it waited forever for an answer to a flight that never left).
* ports_to_ssl_ports whose read waits in the input stream for the server's flight, which
  never comes: a close with ``shutdown_on_close``, or a write under a timeout, in another
  thread ends at its own bound (each waited for the reader's stream without one; under load
  a close waited so even after the reader had processed the renegotiation's end).

And the server's side, through `HoldingRelay`: an sslports server over ports_to_ssl_ports with
``shutdown_on_close`` whose ``ssl_try_verify`` timed out in the middle of the renegotiation
(the client's last flight held back) closes: close_notify follows the renegotiation's end (it
sent none, and a strict client read a truncation).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from conftest import LOCAL, run_in_thread

import sslports
from sslports import SSLError, SSLNetworkError, _binding, aio
from sslports.ports import connection_of

TIMEOUT = 30.0
LAG = 0.4  # how late the relay hands the server's bytes on


class Relay:
    """One connection, client <-> server_port; the server's bytes are passed on `lag` seconds
    after they came, and not at all while `hold` is set."""

    def __init__(self, server_port: int, lag: float) -> None:
        self.listener = socket.create_server((LOCAL, 0))
        self.port: int = self.listener.getsockname()[1]
        self.server_port = server_port
        self.lag = lag
        self.hold = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection((LOCAL, self.server_port))
        self.socks += [client, server]
        threading.Thread(target=self._up, args=(client, server), daemon=True).start()
        self._pass(server, client, self.lag)

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        self._pass(client, server, 0.0)

    def _pass(self, src: socket.socket, dst: socket.socket, lag: float) -> None:
        try:
            while True:
                data = src.recv(65536)
                time.sleep(lag)
                while self.hold.is_set():
                    time.sleep(0.05)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.hold.clear()
        for sock in [self.listener, *self.socks]:
            with contextlib.suppress(OSError):  # (wakes a recv() in another thread)
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def tls12_server() -> tuple[socket.socket, Any]:
    """A TLS 1.2 sslports listener and the join of its one session: first line, renegotiation
    (a client certificate asked for, not required), then everything to the end with
    strict_eof. The join gives (first line, the rest, the end: "close_notify" or the error)."""
    ctx = sslports.ssl_make_server_context("tls12")
    sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
    sslports.ssl_load_private_key(ctx, sslports.TEST_PEM, False)
    listener = socket.create_server((LOCAL, 0))

    def serve() -> tuple[bytes, bytes, str]:
        with listener:
            sock, _ = listener.accept()
        inp, out = sslports.ssl_wrap_socket(
            sock, mode="accept", context=ctx, strict_eof=True, timeout=TIMEOUT
        )
        with inp, out:
            first = inp.readline()
            sslports.ssl_try_verify(inp, True)
            rest = bytearray()
            while True:
                try:
                    data = inp.read1(65536)
                except SSLError as exc:
                    return first, bytes(rest), str(exc)
                if not data:
                    return first, bytes(rest), "close_notify"
                rest += data

    return listener, serve


@pytest.fixture
def relayed() -> Iterator[tuple[Relay, Any]]:
    listener, serve = tls12_server()
    port = listener.getsockname()[1]
    join = run_in_thread(serve)
    relay = Relay(port, LAG)
    try:
        yield relay, join
    finally:
        relay.close()


async def _held_back_writer(relay: Relay) -> tuple[Any, bytes]:
    """An asyncio client whose writes the renegotiation holds back: its first line starts the
    renegotiation; lines follow until one is held (the server's flight comes LAG late)."""
    ctx = sslports.ssl_make_client_context("tls12")
    _, writer = await aio.open_ssl_connection(LOCAL, relay.port, ctx, timeout=TIMEOUT)
    writer.write(b"first\n")
    await writer.drain()
    sent = bytearray()
    for i in range(500):
        line = b"line %d\n" % i
        writer.write(line)
        sent += line
        if writer._sslports_conn.pending_write is not None:
            return writer, bytes(sent)
        await asyncio.sleep(0.01)
    raise AssertionError("no write was held back by the renegotiation")


def test_aio_shutdown_during_renegotiation_sends_close_notify(
    relayed: tuple[Relay, Any],
) -> None:
    relay, join = relayed

    async def main() -> bytes:
        writer, sent = await _held_back_writer(relay)
        await asyncio.wait_for(writer.shutdown(), TIMEOUT)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
        return sent

    sent = asyncio.run(main())
    first, rest, end = join(TIMEOUT)
    assert (first, rest, end) == (b"first\n", sent, "close_notify")


def test_aio_close_during_renegotiation_with_a_silent_peer_ends(
    relayed: tuple[Relay, Any],
) -> None:
    relay, join = relayed

    async def main() -> Optional[int]:
        writer, _ = await _held_back_writer(relay)
        relay.hold.set()  # the server's flight never comes
        sock = writer.get_extra_info("socket")
        writer.close()
        # (ends within the lingering close's 10 s: it waited forever; and says that the
        # held-back bytes did not go: it returned as if they had)
        with pytest.raises(SSLNetworkError) as info:
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)
        assert info.value.errno == errno.ETIMEDOUT, info.value
        assert "not delivered" in str(info.value), info.value
        return sock.fileno() if sock is not None else None

    assert asyncio.run(main()) == -1  # the socket is closed
    _server_meets_an_unclean_end(relay, join)


def _server_meets_an_unclean_end(relay: Relay, join: Any) -> None:
    """The relay ends both sides: the server's renegotiation fails, or its read ends without
    close_notify."""
    relay.close()
    try:
        end = join(TIMEOUT)[2]
    except SSLError:
        return
    assert end != "close_notify"


def _renegotiating(port: Any) -> bool:
    return bool(_binding.lib.sp_conn_renegotiating(connection_of("test", port).ptr))


def _wait_renegotiating(port: Any) -> None:
    end = time.monotonic() + TIMEOUT
    while not _renegotiating(port):
        assert time.monotonic() < end, "the client never entered the renegotiation"
        time.sleep(0.005)


def _streams_client(relay: Relay, lines: bytes = b"first\n") -> tuple[socket.socket, Any, Any]:
    """A TLS 1.2 client over ports_to_ssl_ports (the socket's own streams) through `relay`;
    `lines` are written, so the server's renegotiation comes."""
    sock = socket.create_connection((LOCAL, relay.port))
    inp, out = sslports.ports_to_ssl_ports(
        sock.makefile("rb", buffering=0),
        sock.makefile("wb", buffering=0),
        mode="connect",
        encrypt="tls12",
        shutdown_on_close=True,
        close_original=True,
    )
    out.write(lines)
    out.flush()
    return sock, inp, out


def test_streams_shutdown_on_close_during_renegotiation(relayed: tuple[Relay, Any]) -> None:
    relay, join = relayed
    sock, inp, out = _streams_client(relay, b"first\nsecond\n")
    try:
        reader = run_in_thread(lambda: inp.read())  # meets the HelloRequest, answers it
        _wait_renegotiating(inp)
        out.close()  # close_notify once the renegotiation ended
        sock.shutdown(socket.SHUT_WR)
        assert join(TIMEOUT) == (b"first\n", b"second\n", "close_notify")
        assert reader(TIMEOUT) == b""
    finally:
        inp.close()
        out.close()
        sock.close()


@contextlib.contextmanager
def _client_stuck_renegotiating(relay: Relay, join: Any) -> Iterator[tuple[Any, Any]]:
    """A _streams_client whose read (without a deadline) waits in the input stream, holding
    it, for the server's renegotiation flight, which never comes. At the end all is closed and
    the server meets an unclean end."""
    sock, inp, out = _streams_client(relay)
    try:
        reader = run_in_thread(lambda: inp.read())
        _wait_renegotiating(inp)
        relay.hold.set()  # the server's flight never comes
        yield inp, out
    finally:
        inp.close()
        out.close()
        relay.close()  # (ends the reader's stream)
        sock.close()
    with contextlib.suppress(SSLError):
        reader(TIMEOUT)
    _server_meets_an_unclean_end(relay, join)


def test_streams_close_during_renegotiation_with_a_silent_peer_ends(
    relayed: tuple[Relay, Any],
) -> None:
    # The close waits for the renegotiation's end within its own bound, not for the stream
    # (it waited as long as the peer said nothing, and under load also when the reader had
    # already processed that end: CI saw a close hang for 30 s).
    with _client_stuck_renegotiating(*relayed) as (inp, out):
        closer = run_in_thread(out.close)
        assert closer(TIMEOUT) is None  # (ends at close_notify's 5 s bound)
        assert out.closed and _renegotiating(inp)


def test_streams_close_with_timeout_zero_during_renegotiation_does_not_wait(
    relayed: tuple[Relay, Any],
) -> None:
    # A port timeout of 0 (no waiting) is close_notify's bound too: it was taken for "none"
    # and the close waited 5 s for the renegotiation's end.
    with _client_stuck_renegotiating(*relayed) as (_, out):
        out.settimeout(0)
        closer = run_in_thread(out.close)
        assert closer(3.0) is None
        assert out.closed


def test_streams_write_timeout_during_renegotiation_with_a_silent_peer(
    relayed: tuple[Relay, Any],
) -> None:
    # The same wait, by a write under a timeout: it times out (it waited for the reader's
    # stream, without bound).
    with _client_stuck_renegotiating(*relayed) as (_, out):
        out.settimeout(1.0)

        def write() -> None:
            out.write(b"second\n")
            out.flush()

        writer = run_in_thread(write)
        with pytest.raises(TimeoutError, match=r"^flush: write timed out"):
            writer(TIMEOUT)
        with pytest.raises(TimeoutError, match=r"^flush: write timed out"):
            out.close()  # (its bytes are still held: it tries once more; closed anyway)
        assert out.closed


class _BreakableOutput(io.RawIOBase):
    """A socket's output stream that fails (EPIPE) once `broken` is set."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.broken = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.sock.sendall(b)
        return len(b)


def test_streams_read_when_the_renegotiation_flight_is_lost(relayed: tuple[Relay, Any]) -> None:
    relay, join = relayed
    sock = socket.create_connection((LOCAL, relay.port))
    output = _BreakableOutput(sock)
    inp, out = sslports.ports_to_ssl_ports(
        sock.makefile("rb", buffering=0),
        output,
        mode="connect",
        encrypt="tls12",
        close_original=True,
    )
    try:
        out.write(b"first\n")
        out.flush()
        output.broken = True  # the ClientHello answering the HelloRequest cannot go
        reader = run_in_thread(lambda: inp.read1(100))
        with pytest.raises(SSLError, match=r"^read: read failed \(Broken pipe\)"):
            reader(TIMEOUT)  # (it waited forever for the server's answer)
    finally:
        inp.close()
        out.close()
        sock.close()
    _server_meets_an_unclean_end(relay, join)


class HoldingRelay(Relay):
    """A Relay without lag that passes the client's records until the renegotiation's
    ClientHello (the first handshake record after application data), then holds the client's
    bytes until `release` is set."""

    def __init__(self, server_port: int) -> None:
        self.release = threading.Event()
        super().__init__(server_port, 0.0)

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        pending, data_seen, holding = b"", False, False
        try:
            while data := client.recv(65536):
                pending += data
                while len(pending) >= 5 + int.from_bytes(pending[3:5], "big") >= 5:
                    size = 5 + int.from_bytes(pending[3:5], "big")
                    record, pending = pending[:size], pending[size:]
                    if holding:
                        self.release.wait(TIMEOUT)
                    server.sendall(record)
                    data_seen = data_seen or record[0] == 23
                    holding = holding or (record[0] == 22 and data_seen)
            server.shutdown(socket.SHUT_WR)
        except OSError:
            return

    def close(self) -> None:
        self.release.set()
        super().close()


def test_streams_server_closes_during_its_renegotiation() -> None:
    ctx = sslports.ssl_make_server_context("tls12")
    sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
    sslports.ssl_load_private_key(ctx, sslports.TEST_PEM, False)
    listener = socket.create_server((LOCAL, 0))
    verify_ended = threading.Event()

    def serve() -> str:
        with listener:
            sock, _ = listener.accept()
        inp, out = sslports.ports_to_ssl_ports(
            sock.makefile("rb", buffering=0),
            sock.makefile("wb", buffering=0),
            mode="accept",
            context=ctx,
            shutdown_on_close=True,
            close_original=True,
            timeout=TIMEOUT,
        )
        try:
            assert inp.readline() == b"first\n"
            # (the verify's bound; the output port's close waits on, under TIMEOUT, for the
            # renegotiation's end, however late the relay passes the client's flight)
            inp.settimeout(1.0)
            with pytest.raises(SSLError, match="timed out"):  # (the client's flight is held)
                sslports.ssl_try_verify(inp, True)
            verify_ended.set()
            out.close()  # close_notify once the renegotiation ended
            return "closed"
        finally:
            verify_ended.set()
            inp.close()
            out.close()
            sock.close()

    join = run_in_thread(serve)
    relay = HoldingRelay(listener.getsockname()[1])
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection((LOCAL, relay.port))
    try:
        with client_ctx.wrap_socket(raw, suppress_ragged_eofs=False) as client:
            client.settimeout(TIMEOUT)
            client.sendall(b"first\n")

            def read_to_end() -> bytes:
                received = bytearray()
                while data := client.recv(65536):  # (answers the HelloRequest on the way)
                    received += data
                return bytes(received)

            reader = run_in_thread(read_to_end)
            assert verify_ended.wait(TIMEOUT)
            time.sleep(0.2)  # the server's close waits for the renegotiation's end
            relay.release.set()
            assert reader(TIMEOUT) == b""  # close_notify; was SSLEOFError (a truncation)
            assert join(TIMEOUT) == "closed"
    finally:
        relay.close()
        raw.close()
