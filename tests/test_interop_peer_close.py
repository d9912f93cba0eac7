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
import fcntl
import socket
import ssl
import sys
import termios
import threading
import time
from typing import Any, Optional

import pytest
from conftest import LOCAL, connect_ports, run_in_thread

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
