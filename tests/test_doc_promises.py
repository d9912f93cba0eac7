"""Claims of the documentation (README, docs/guide, API.md) that the code did not meet.

Real sockets on 127.0.0.1 and the bundled test certificate; no mocks (the "broken stream" is a
real file-like object whose writes fail, as a closed pipe's do).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import pkgutil
import socket
import threading
import time
import typing
from pathlib import Path
from typing import Any

import pytest

import sslports

PEM = sslports.TEST_PEM


def _server_context() -> sslports.SSLServerContext:
    return sslports.ssl_make_server_context(private_key=("pem", PEM), certificate_chain=PEM)


class _BreakableWriter:
    """A socket file whose writes fail with EPIPE once `broken` is set (a peer that left)."""

    def __init__(self, sock: socket.socket) -> None:
        self.f = sock.makefile("wb")
        self.broken = False

    def write(self, data: Any) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        return int(self.f.write(data))

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _stream_pair() -> tuple[Any, Any, Any, list[Any], socket.socket, socket.socket]:
    """A ports_to_ssl_ports client over a socketpair whose output stream can break."""
    a, b = socket.socketpair()
    box: list[Any] = []
    server = threading.Thread(
        target=lambda: box.append(
            sslports.ports_to_ssl_ports(
                b.makefile("rb"),
                b.makefile("wb"),
                context=_server_context(),
                timeout=10,
                close_original=True,
            )
        ),
        daemon=True,
    )
    server.start()
    writer = _BreakableWriter(a)
    inp, out = sslports.ports_to_ssl_ports(
        a.makefile("rb"), writer, mode="connect", timeout=10, close_original=True
    )
    server.join(10)
    return inp, out, writer, box, a, b


def _close_pair(inp: Any, out: Any, box: list[Any], a: socket.socket, b: socket.socket) -> None:
    """Close what _stream_pair made: both ends' ports and the socketpair."""
    for p in (inp, out, *(box[0] if box else ())):
        p.close()
    a.close()
    b.close()


@pytest.mark.parametrize("order", ["output_first", "input_first"])
def test_stream_write_failure_is_not_lost_silently_at_close(order: str) -> None:
    """API.md: a transport failure after the handshake (a broken pipe) raises SSLError. A
    write whose ciphertext the output stream refused must not end in a close() that returns
    as if every byte went out."""
    inp, out, writer, box, a, b = _stream_pair()
    try:
        writer.broken = True
        out.write(b"x" * 1000)  # buffered (or queued): the failure comes later
        with pytest.raises(sslports.SSLError, match="Broken pipe"):
            if order == "output_first":
                out.close()  # its flush waits for the bytes: here it learns they failed
            else:
                inp.close()
                out.close()  # (the last close waits for them too)
        inp.close()  # (said once)
        assert inp.closed and out.closed
    finally:
        _close_pair(inp, out, box, a, b)


def test_stream_close_reports_failure_only_once() -> None:
    """A write that already raised the stream's failure is not raised again by close()."""
    inp, out, writer, box, a, b = _stream_pair()
    try:
        writer.broken = True
        with pytest.raises(sslports.SSLError):
            for _ in range(200):  # the failure surfaces on one of the later writes
                out.write(b"y" * 20000)
                out.flush()
                time.sleep(0.005)
        out.close()
        inp.close()
    finally:
        _close_pair(inp, out, box, a, b)


def test_stream_handshake_deadline_raises_timeout_error() -> None:
    """docs/guide/timeouts.md: give a stream its own timeout so a stalled peer cannot block the
    handshake forever; API.md: a `timeout` that expires raises a TimeoutError. The stream's
    read returns (with its own timeout) only after the deadline: that is the deadline's
    expiry, not some other failure."""
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) and says nothing
    sock = socket.create_connection(listener.getsockname())
    sock.settimeout(1.0)  # the stream's own timeout, longer than the deadline
    reader, writer = sock.makefile("rb"), sock.makefile("wb")
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            sslports.ports_to_ssl_ports(reader, writer, mode="connect", timeout=0.3)
        assert time.monotonic() - start < 5
    finally:
        reader.close()
        writer.close()
        sock.close()
        listener.close()


def _connect_once(listener: Any, host: str, client: Any) -> None:
    """One connection to `listener` (accepted in a thread), closed at once."""
    port = sslports.ssl_addresses(listener, True)[1]
    box: list[Any] = []
    server = threading.Thread(target=lambda: box.append(sslports.ssl_accept(listener)))
    server.start()
    try:
        inp, out = sslports.ssl_connect(host, port, client, timeout=10)
        inp.close()
        out.close()
    finally:
        server.join(10)
        for p in box[0] if box else ():
            p.close()


def test_keylog_file_gets_lines_when_the_callback_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/guide/keylog.md: with SSLKEYLOGFILE set, every context appends one line per secret
    to that file; an exception raised by the callback is logged and breaks nothing."""
    log = tmp_path / "keys.log"
    server_ctx = _server_context()  # made before: only the client's lines go to the file
    monkeypatch.setenv("SSLKEYLOGFILE", str(log))
    ctx = sslports.ssl_make_client_context("tls13")

    def failing(line: bytes) -> None:
        raise RuntimeError("a broken key logger")

    sslports.ssl_set_keylogger(ctx, failing)
    with sslports.ssl_listen(0, 5, True, "127.0.0.1", server_ctx) as listener:
        _connect_once(listener, "127.0.0.1", ctx)
    names = {line.split()[0] for line in log.read_bytes().splitlines()}
    assert {b"CLIENT_HANDSHAKE_TRAFFIC_SECRET", b"CLIENT_TRAFFIC_SECRET_0"} <= names


@pytest.mark.parametrize("protocol", ["secure", "auto"])
def test_keylog_file_set_at_run_time_reaches_the_shared_contexts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    """docs/guide/keylog.md: the contexts the library shares (the secure one, a protocol
    name's) read SSLKEYLOGFILE again each time they are handed out, so setting it after their
    first connection reaches the next one. The secure context was cached without key logging
    before, and kept it off for the rest of the process."""
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    contextvars.copy_context().run(_keylog_at_run_time, tmp_path, monkeypatch, protocol)


def _keylog_at_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    sslports.ssl_default_verify_sources([str(sslports.TEST_PEM)])  # (this context's only)
    log = tmp_path / "keys.log"
    with sslports.ssl_listen(0, 5, True, "127.0.0.1", _server_context()) as listener:
        _connect_once(listener, "localhost", protocol)  # the shared context is made here
        assert not log.exists()
        monkeypatch.setenv("SSLKEYLOGFILE", str(log))
        _connect_once(listener, "localhost", protocol)
    names = {line.split()[0] for line in log.read_bytes().splitlines()}
    assert {b"CLIENT_HANDSHAKE_TRAFFIC_SECRET", b"CLIENT_TRAFFIC_SECRET_0"} <= names


def test_annotations_evaluate_on_every_supported_python() -> None:
    """pyproject.toml: requires-python >= 3.9, and the package ships py.typed. Under
    ``from __future__ import annotations`` an ``int | None`` imports on 3.9 but
    typing.get_type_hints (pydantic, typeguard, Sphinx and cattrs call it) raised TypeError
    there on SSLError, its subclasses, bytes_to_hex_string and connection_facts."""
    failed = []
    for info in pkgutil.iter_modules(sslports.__path__):
        if info.name in ("__main__", "_native", "_fastport"):
            continue
        module = importlib.import_module(f"sslports.{info.name}")
        for obj in list(vars(module).values()):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = [obj]
            if inspect.isclass(obj):
                members += [m for m in vars(obj).values() if inspect.isfunction(m)]
            for member in members:
                if not (inspect.isclass(member) or inspect.isfunction(member)):
                    continue
                name = f"{module.__name__}.{member.__qualname__}"
                # (3.10 and later evaluate ``X | Y``: on them, the strings show it)
                written = getattr(member, "__annotations__", {}).values()
                if any(isinstance(a, str) and "|" in a for a in written):
                    failed.append(f"{name}: an X | Y annotation (Python 3.9 cannot evaluate it)")
                try:
                    typing.get_type_hints(member)
                except Exception as exc:
                    failed.append(f"{name}: {exc}")
    assert not failed


# The cipher string Python's ssl gives its default contexts (3.10+), which security.md
# recommends where a server may pick a suite without forward secrecy.
PYTHON_CIPHERS = "ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"


@pytest.mark.parametrize("suite", ["AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA"])
def test_secure_cipher_string_allows_what_python_refuses(suite: str) -> None:
    """security.md, "Forward secrecy": the "secure" cipher string (Racket's, fixed by API.md)
    still takes a TLS 1.2 suite without forward secrecy (static RSA key exchange) or with a
    SHA-1 MAC when the server picks one, and Python's cipher string, set on one's own
    context as the guide shows, refuses both."""
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    server.set_ciphers(suite)
    server.load_cert_chain(PEM)

    def connect(ciphers: str) -> str:
        ctx = sslports.ssl_make_client_context("auto")
        sslports.ssl_load_verify_source(ctx, PEM)
        sslports.ssl_set_verify(ctx, True)
        sslports.ssl_set_verify_hostname(ctx, True)
        sslports.ssl_set_ciphers(ctx, ciphers)
        with socket.create_server(("127.0.0.1", 0)) as listener:

            def serve() -> None:
                sock, _ = listener.accept()
                with sock, contextlib.suppress(ssl.SSLError, OSError):
                    server.wrap_socket(sock, server_side=True).close()

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            try:
                inp, out = sslports.ssl_connect(
                    "127.0.0.1", listener.getsockname()[1], ctx, timeout=10
                )
            except sslports.SSLNetworkError as exc:
                return f"refused: {exc}"
            finally:
                thread.join(10)
            with inp, out:
                return sslports.ssl_cipher_name(inp)

    from sslports.context import SECURE_CIPHERS

    assert connect(SECURE_CIPHERS) == suite
    assert connect(PYTHON_CIPHERS).startswith("refused: "), suite
