"""A TLS 1.3 server that floods the client with records carrying no data, after the handshake.

OpenSSL processes such records (KeyUpdates, session tickets) inside one SSL_read for as long as
the socket holds more of them. The socket BIO fed it while recv() came back full, so a server
that kept the socket full held a read past its timeout and past Ctrl-C, and held close() (whose
ticket drain reads what came) for as long as it kept sending. Now one OpenSSL call takes at
most SP_RECV_PER_CALL bytes before the pump looks at the clock.

And a ticket as large as RFC 8446 allows, which no ClientHello can carry back: the session
cache kept it, and every second ssl_connect to that server failed.

The server is tests/forged_tls.py: Python's ssl for the handshake, then records of its own.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from certs import in_thread
from conftest import ctrl_c_after
from forged_tls import HANDSHAKE, ForgingServer, new_session_ticket

import sslports

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def forger() -> Iterator[ForgingServer]:
    server = ForgingServer()
    yield server
    server.close()


def connect(port: int) -> tuple[Any, Any]:
    """A context of its own: the shared "auto" one may carry a key logger from another test,
    which OpenSSL calls for each KeyUpdate's new secret."""
    return sslports.ssl_connect(
        "127.0.0.1", port, sslports.ssl_make_client_context("auto"), timeout=30
    )


KEY_UPDATES = 250_000  # (27 bytes each, ~7 MB: OpenSSL takes seconds for them)


def flood_of_key_updates(forger: ForgingServer) -> tuple[Any, Any, Any]:
    """Connected ports and a join(); the server has sent "go\\n", then sends KEY_UPDATES
    KeyUpdates, "after\\n" and close_notify, and waits for the client to leave."""

    def serve() -> None:
        forger.accept()
        go = forger.data(b"go\n")
        flood = b"".join(forger.key_update() for _ in range(KEY_UPDATES))
        forger.send(go)
        try:
            forger.send(flood + forger.data(b"after\n") + forger.close_notify())
            assert forger.sock is not None
            while forger.sock.recv(65536):
                pass
        except OSError:
            pass  # (a client interrupted leaves before it read all)

    join = in_thread(serve, 120)
    inp, out = connect(forger.port)
    assert inp.readline() == b"go\n"
    time.sleep(0.5)  # (the flood fills the socket's buffers meanwhile)
    return inp, out, join


def test_a_key_update_flood_cannot_hold_a_read_past_its_timeout(forger: ForgingServer) -> None:
    inp, out, join = flood_of_key_updates(forger)
    inp.settimeout(0.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        inp.read1(100)
    assert time.monotonic() - start < 1.5
    inp.settimeout(60)  # the data after the flood is still there, in order
    assert inp.readline() == b"after\n"
    assert inp.read() == b""
    out.close()
    inp.close()
    join()


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
def test_a_key_update_flood_cannot_hold_off_ctrl_c(forger: ForgingServer) -> None:
    inp, out, join = flood_of_key_updates(forger)
    with ctrl_c_after():
        inp.read1(100)
    out.close()
    inp.close()
    join()


def test_a_ticket_flood_cannot_hold_close(forger: ForgingServer) -> None:
    """close() lets OpenSSL read the tickets that came (for the session cache), without
    waiting: a server that never stops sending them held it as long as it kept on."""
    stop = threading.Event()

    def serve() -> None:
        forger.accept()
        forger.send(forger.data(b"go\n"))
        assert forger.sock is not None
        forger.sock.settimeout(2)  # (a closed client's kernel may only stop the flow)
        tickets = new_session_ticket(b"t" * 200) * 50
        try:
            while not stop.is_set():
                forger.send(b"".join(forger.record(HANDSHAKE, tickets) for _ in range(20)))
        except OSError:
            pass  # (the client left)

    join = in_thread(serve, 60)
    inp, out = connect(forger.port)
    assert inp.readline() == b"go\n"
    time.sleep(0.5)  # the flood is under way
    start = time.monotonic()
    out.close()
    inp.close()
    took = time.monotonic() - start
    stop.set()
    join()
    assert took < 2, f"close() took {took:.1f} s"


def test_a_ticket_too_large_for_a_client_hello_is_not_cached(forger: ForgingServer) -> None:
    """RFC 8446 allows tickets of up to 2^16 - 1 bytes; a ClientHello carrying one beside its
    other extensions cannot exist, and OpenSSL fails the connect ("internal error"). Every
    second connect to such a server failed; now none does (and none resumes)."""
    ctx = sslports.ssl_make_client_context("auto")

    def serve() -> None:
        forger.accept()
        forger.send(
            forger.handshake(new_session_ticket(b"T" * 65_400))
            + forger.data(b"hello\n")
            + forger.close_notify()
        )
        assert forger.sock is not None
        while forger.sock.recv(65536):
            pass
        forger.sock.close()

    for _ in range(3):
        join = in_thread(serve, 30)
        inp, out = sslports.ssl_connect("127.0.0.1", forger.port, ctx, timeout=30)
        assert inp.read() == b"hello\n"
        assert not sslports.ssl_session_reused(inp)
        out.close()
        inp.close()
        join()
