"""A peer that makes the reader answer (KeyUpdate, renegotiation) and never reads the answers.

Each test plays a misbehaving peer over real loopback sockets against the socket pump (the C
path ``ssl_connect`` / ``ssl_accept`` / ``ssl_wrap_socket`` use) and checks what it may cost:
memory, CPU, descriptors, time.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from conftest import LOCAL, run_in_thread
from test_hostile import REC_HANDSHAKE, RawTLSClient

import sslports
from sslports import SSLError

JOIN = 10.0
SMALL = 4096  # kernel socket buffers of both ends: what the kernel holds stays small


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_answers_to_a_peer_that_never_reads_stay_bounded(pki: Any, version: str) -> None:
    """The peer floods records that each make the reader answer (TLS 1.2: renegotiation
    ClientHellos, each refused with a warning alert; TLS 1.3: KeyUpdates asking for one back)
    and never reads the answers. Once the answers fill the socket, the reader takes no more
    input, so what it queues stays bounded (before: it read the whole flood and queued every
    answer, ~31 bytes per 37 read, without limit); it waits without spinning, and the
    connection ends with an error when the peer goes."""
    ctx = pki.server_context(version)
    if version == "tls13":
        sslports.ssl_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")  # the forger's suite
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)  # (inherited by accept)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    listener.bind((LOCAL, 0))
    listener.listen(1)
    reading = threading.Event()

    def serve() -> Any:
        sock, _ = listener.accept()
        inp, out = sslports.ssl_wrap_socket(sock, mode="accept", context=ctx, timeout=JOIN)
        try:
            inp.settimeout(None)
            reading.set()
            return inp.read(100)
        except SSLError as exc:
            return exc
        finally:
            sslports.ssl_abandon_port(out)
            inp.close()

    join = run_in_thread(serve)
    c = RawTLSClient(listener.getsockname()[1], version)
    try:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        c.handshake()
        assert reading.wait(JOIN)
        records = 36_000 if version == "tls13" else 30_000  # about 1 MB either way
        if version == "tls13":
            flood = b"".join(c.key_update(True) for _ in range(records))
        else:
            flood = b"".join(
                c.record(REC_HANDSHAKE, b"\x01\x00\x00\x04abcd") for _ in range(records)
            )
        sent = 0
        c.sock.settimeout(2.0)
        try:
            view = memoryview(flood)
            while sent < len(flood):
                sent += c.sock.send(view[sent : sent + 65536])
        except socket.timeout:  # (TimeoutError from Python 3.10 on; not a subclass of it on 3.9)
            pass
        # The reader now waits for the peer to take its answers: it must not spin.
        cpu = time.process_time()
        time.sleep(2.0)
        cpu = time.process_time() - cpu
    finally:
        c.close()
    result = join(JOIN)
    listener.close()
    assert sent < len(flood) // 2, f"the server read {sent} bytes of answers it cannot send"
    assert cpu < 1.0, f"{cpu:.2f} s of CPU in 2 s of waiting"
    assert isinstance(result, SSLError) or result == b""
