"""Ctrl-C (or sys.exit) that comes while OpenSSL runs a callback into Python, after the
handshake: a key logger gets a line for each KeyUpdate the peer sends, in the middle of a read.

The request to stop must reach the caller (the read raises it), whichever way the read goes (the
C fast path of a socket port, the Python path of a port with a timeout, ports over streams,
asyncio), and the bytes the read had already taken must not be lost: the next read returns
them. It must also survive coming at the callback's first line, before the callback's own
`try` (a signal handler runs there), where CFFI would print it and go on.

The server is tests/forged_tls.py: Python's ssl for the handshake, then records of its own.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import pytest
from certs import in_thread
from forged_tls import ForgingServer

import sslports
from sslports import aio

pytestmark = pytest.mark.timeout(60)

BEFORE, AFTER, LATER = b"before\n", b"after\n", b"and later\n"
ALL = BEFORE + AFTER + LATER


@pytest.fixture
def forger() -> Iterator[ForgingServer]:
    server = ForgingServer()
    yield server
    server.close()


def serve_a_key_update(forger: ForgingServer) -> Callable[..., Any]:
    """The server's side: BEFORE, a KeyUpdate and AFTER in one send; LATER and close_notify
    0.2 s later (a read that wants more than came first reads on, and gets it); then wait for
    the client to leave. Returns the join()."""

    def serve() -> None:
        forger.accept()
        forger.send(forger.data(BEFORE) + forger.key_update() + forger.data(AFTER))
        time.sleep(0.2)
        forger.send(forger.data(LATER) + forger.close_notify())
        assert forger.sock is not None
        try:
            while forger.sock.recv(65536):
                pass
        except OSError:
            pass

    return in_thread(serve, 60)


def updates_a_key(line: bytes) -> bool:
    """The key log line of a KeyUpdate's new secret (OpenSSL 3 labels it
    SERVER_TRAFFIC_SECRET_N, as no key log reader knows the key's number)."""
    return line.startswith(b"SERVER_TRAFFIC_SECRET_") and not line.startswith(
        b"SERVER_TRAFFIC_SECRET_0 "
    )


class Logger:
    """A key logger that raises `exc` at the line of the server's KeyUpdate."""

    def __init__(self, exc: type[BaseException]) -> None:
        self.exc = exc
        self.lines: list[bytes] = []

    def __call__(self, line: bytes) -> None:
        self.lines.append(line)
        if updates_a_key(line):
            raise self.exc("stop")


def client_context(logger: Optional[Callable[[bytes], None]]) -> Any:
    ctx = sslports.ssl_make_client_context("auto")
    if logger is not None:
        sslports.ssl_set_keylogger(ctx, logger)
    return ctx


def read_through(inp: Any, exc: type[BaseException], read: str = "readline") -> bytes:
    """Read to EOF (a line, what is there, or 20 bytes at a time): the stop must come (once) on
    the way, and every byte still arrive, in order."""
    got = b""
    stopped = 0
    for _ in range(10):  # (a few reads, then EOF again and again)
        try:
            if read == "readline":
                data = inp.readline()
            elif read == "read1":
                data = inp.read1(65536)
            else:  # (more than arrives: the read reads on after its first bytes)
                data = inp.read(20)
        except exc:
            stopped += 1
            continue
        if not data:
            break
        got += data
    assert stopped == 1
    return got


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("read", ["readline", "read1", "read(20)"])
@pytest.mark.parametrize("how", ["socket", "socket with a timeout", "streams"])
def test_a_stop_in_a_key_logger_during_a_read_is_raised_and_loses_nothing(
    forger: ForgingServer, how: str, read: str, exc: type[BaseException]
) -> None:
    join = serve_a_key_update(forger)
    logger = Logger(exc)
    ctx = client_context(logger)
    if how == "streams":
        sock = socket.create_connection(("127.0.0.1", forger.port))
        inp, out = sslports.ports_to_ssl_ports(
            sock.makefile("rb"), sock.makefile("wb"), mode="connect", context=ctx,
            close_original=True, timeout=30,
        )  # fmt: skip
    else:
        inp, out = sslports.ssl_connect("127.0.0.1", forger.port, ctx, timeout=30)
        if how == "socket with a timeout":
            inp.settimeout(30)
    assert read_through(inp, exc, read) == ALL
    assert any(updates_a_key(line) for line in logger.lines)
    out.close()
    inp.close()
    if how == "streams":
        sock.close()
    join()


@contextmanager
def raising_at_entry_of(name: str, exc: type[BaseException]) -> Any:
    """Raise `exc` at the first line of the next call of the function `name` in this thread, as
    a signal handler does that runs there (a trace function's exception at a 'call' event
    leaves the frame before its first instruction)."""
    fired = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "call" and frame.f_code.co_name == name and not fired:
            fired.append(True)
            raise exc("stop")
        return None

    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(None)


def test_a_stop_at_a_key_loggers_first_line_is_not_lost(forger: ForgingServer) -> None:
    join = serve_a_key_update(forger)
    ctx = client_context(lambda line: None)
    inp, out = sslports.ssl_connect("127.0.0.1", forger.port, ctx, timeout=30)
    with raising_at_entry_of("_keylog", KeyboardInterrupt) as fired:
        got = read_through(inp, KeyboardInterrupt)
    assert fired
    assert got == ALL
    out.close()
    inp.close()
    join()


def test_a_stop_at_a_server_name_callbacks_first_line_stops_the_accept() -> None:
    server_ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(server_ctx, sslports.TEST_PEM)
    sslports.ssl_load_private_key(server_ctx, sslports.TEST_PEM)
    called = []
    sslports.ssl_set_server_name_identification_callback(server_ctx, lambda n: called.append(n))
    listener = sslports.ssl_listen(0, 5, True, "127.0.0.1", server_ctx)
    port = sslports.ssl_addresses(listener, True)[1]

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            try:
                sslports.ssl_wrap_socket(sock, hostname="sni.example", timeout=30)
            except sslports.SSLError:
                pass  # (the server failed its handshake)

    join = in_thread(client, 60)
    try:
        with (
            raising_at_entry_of("_sni", KeyboardInterrupt) as fired,
            pytest.raises(KeyboardInterrupt),
        ):
            sslports.ssl_accept(listener)
        assert fired and not called
        join()
    finally:
        sslports.ssl_close(listener)


def test_a_stop_in_a_key_logger_during_an_aio_read_stops_the_loop(
    forger: ForgingServer,
) -> None:
    """Raised from the protocol's callback, as asyncio raises a KeyboardInterrupt there: it
    leaves run_until_complete, and the loop can go on (nothing of the stream is lost)."""
    join = serve_a_key_update(forger)
    ctx = client_context(Logger(KeyboardInterrupt))
    got: list[bytes] = []

    async def main() -> None:
        reader, writer = await aio.open_ssl_connection("127.0.0.1", forger.port, ctx)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                got.append(line)
        finally:
            writer.close()
            await writer.wait_closed()

    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(main())
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        loop.run_until_complete(task)
    finally:
        loop.close()
    assert b"".join(got) == ALL
    join()
