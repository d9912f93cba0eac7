"""A peer that answers and ends the connection while the client still writes.

The peer (Python's ``ssl``) gets a request, sends its answer, optionally close_notify (a
non-blocking ``unwrap()``), and closes its socket with the client's upload unread: a reset, as
from an HTTP server that refuses an upload. The client's writer, still uploading, fails
(SSLError). What the peer sent before it closed is in the client's socket all the same, and a
read returns it (a read of Python's ssl does): the answer, then the EOF of the close_notify
(API.md, Ports: "Reading returns b"" at EOF: a close_notify from the peer"), or, without
one, the reset (API.md, Exceptions: "A transport failure after the handshake (a reset, a
broken pipe) raises SSLError"). The failed send used to break the whole connection at once:
the read raised the writer's error (``read: read failed (Broken pipe)``), and the answer and
the close_notify were lost (``openssl s_server``'s ``q`` command shows it too).
"""

from __future__ import annotations

import array
import errno
import fcntl
import socket
import ssl
import sys
import termios
import threading
import time
from typing import Any, Optional

import pytest
from conftest import LOCAL, connect_ports, run_in_thread, socket_ports

import sslports

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SIOCOUTQ")

TIMEOUT = 30.0
REQUEST = b"PUT /upload\n"
ANSWER = b"HTTP/1.1 413 Content Too Large\n"


def _unacked(sock: socket.socket) -> int:
    """Bytes sock sent that the peer's kernel has not acknowledged yet (SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("streams", [False, True], ids=["socket", "streams"])
@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "no_close_notify"])
@pytest.mark.parametrize("chunk", [1000, 32768])  # (one record sent from OpenSSL's buffer; two)
def test_answer_before_the_end_survives_a_failed_upload(
    pki: Any, version: str, streams: bool, close_notify: bool, chunk: int
) -> None:
    listener = socket.create_server((LOCAL, 0))
    ctx = pki.py_server_context(version)
    uploading = threading.Event()

    def serve() -> bytes:
        raw, _ = listener.accept()
        with raw, ctx.wrap_socket(raw, server_side=True) as s:
            s.settimeout(TIMEOUT)
            request = b""
            while not request.endswith(b"\n"):
                request += s.recv(100)
            assert uploading.wait(TIMEOUT)
            s.sendall(ANSWER)
            if close_notify:
                s.setblocking(False)
                try:
                    s.unwrap()  # sends close_notify; the client's does not come
                except (ssl.SSLWantReadError, ssl.SSLError):
                    pass  # (or the upload after it: "application data after close notify")
            # (Linux drops what it received but had not acknowledged yet when a reset follows
            # at once: the client must have it all before the reset)
            deadline = time.monotonic() + TIMEOUT
            while _unacked(s) and time.monotonic() < deadline:
                time.sleep(0.001)
            assert _unacked(s) == 0
        return request  # (closed with the upload unread: a reset)

    join_server = run_in_thread(serve)
    port = int(listener.getsockname()[1])
    inp, out, sock = connect_ports(streams, port, pki.client_context(version), TIMEOUT)
    try:
        out.write(REQUEST)
        out.flush()

        def upload() -> Optional[BaseException]:
            try:
                while True:
                    out.write(b"u" * chunk)
                    out.flush()
                    uploading.set()
            except sslports.SSLError as exc:
                return exc

        join_writer = run_in_thread(upload)
        assert join_server(TIMEOUT) == REQUEST
        assert isinstance(join_writer(TIMEOUT), sslports.SSLError)  # the upload fails

        inp.settimeout(TIMEOUT)
        assert inp.readline() == ANSWER
        if close_notify:
            assert inp.read() == b""
        else:
            with pytest.raises(sslports.SSLError):
                inp.read()
    finally:
        inp.close()
        out.close()
        if sock is not None:
            sock.close()
        listener.close()


class _TicketsHeld:
    """A server's output stream that holds its second write (TLS 1.3: the session tickets,
    after the handshake's flight) until `release` is set; `done` is set once it went or
    failed."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.writes = 0
        self.release = threading.Event()
        self.done = threading.Event()

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes != 2:
            return int(self.raw.write(data))
        assert self.release.wait(TIMEOUT)
        try:
            return int(self.raw.write(data))
        finally:
            self.done.set()

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()


@pytest.mark.parametrize("server_writes", [False, True])
def test_lost_tickets_do_not_turn_the_peer_s_end_into_a_failure(
    pki: Any, server_writes: bool
) -> None:
    """Streams, TLS 1.3: a client writes, closes without close_notify and shuts its socket
    down before the server's session tickets went out; writing them meets the closed peer
    (EPIPE). That loses nothing the server wrote, so the peer's end is its EOF: the server
    reads the data, then b"" (it used to raise "read failed (Broken pipe)"). What the server
    did write and lose (server_writes: a write into the closed peer) still turns the end
    into that failure, as a reset does."""
    a, b = socket.socketpair()
    with a, b:
        cctx = pki.client_context("tls13")
        held = _TicketsHeld(b.makefile("wb", buffering=0))
        server_ready = threading.Event()

        def serve() -> tuple[bytes, Any]:
            inp, out = sslports.ports_to_ssl_ports(
                b.makefile("rb", buffering=0),
                held,
                mode="accept",
                context=pki.server_context("tls13"),
                close_original=True,
            )
            with inp, out:
                server_ready.set()
                assert held.done.wait(TIMEOUT)  # (the tickets met the closed peer)
                if server_writes:
                    with pytest.raises(sslports.SSLError):
                        out.write(b"w" * 1000)
                        out.flush()
                got = inp.readline()
                try:
                    rest: Any = inp.read()
                except sslports.SSLError as exc:
                    rest = exc
                return got, rest

        join = run_in_thread(serve)
        inp, out = socket_ports(a, "connect", cctx, hostname="localhost")
        assert server_ready.wait(TIMEOUT)
        out.write(b"bye\n")
        out.close()
        inp.close()
        a.shutdown(socket.SHUT_RDWR)
        held.release.set()
        got, rest = join(TIMEOUT)
    assert held.writes >= 2
    assert got == b"bye\n"
    if server_writes:
        assert isinstance(rest, sslports.SSLError) and rest.errno == errno.EPIPE, rest
    else:
        assert rest == b""
