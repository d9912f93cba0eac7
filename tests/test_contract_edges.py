"""Edges of the API contract in the Python layer: a listener closed under a waiting accept, stream
deadlines against a trickling peer, the SNI alert over streams, closed sockets, curve lists,
non-finite timeouts, pickled errors, the secure context cache across threads, argument types."""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import socket
import subprocess
import threading
import time
from typing import Any

import pytest
from certs import OPENSSL, in_thread

import sslports
from sslports import SSLError, SSLNetworkError


def _server_ctx() -> Any:
    return sslports.ssl_make_server_context(
        private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM
    )


# ssl_close() from another thread must wake a thread blocked in ssl_accept() (Racket's
# tcp-close does); before, that thread stayed blocked in accept() forever.
def test_close_listener_wakes_blocked_accept() -> None:
    listener = sslports.ssl_listen(0, 5, True, "127.0.0.1")
    join = in_thread(lambda: sslports.ssl_accept(listener))
    time.sleep(0.3)  # let it block in accept()
    sslports.ssl_close(listener)
    with pytest.raises(SSLNetworkError, match="ssl_accept"):
        join(5)


# ports_to_ssl_ports(timeout=...): the deadline must be checked between transport reads.
# A peer that trickles bytes kept the handshake going forever.
class _Trickle(io.RawIOBase):
    """One byte every 20 ms: the header of a 16 KiB handshake record, then its body; EOF
    after 8 s so that a failing test does not leave a thread behind for long."""

    def __init__(self) -> None:
        self.head = bytes([0x16, 3, 1, 0x40, 0])
        self.sent = 0
        self.stop_at = time.monotonic() + 8

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        time.sleep(0.02)
        if time.monotonic() > self.stop_at:
            return 0
        b[0] = self.head[self.sent] if self.sent < len(self.head) else 1
        self.sent += 1
        return 1


class _Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def test_stream_handshake_timeout_with_trickling_peer() -> None:
    ctx = _server_ctx()
    start = time.monotonic()
    join = in_thread(
        lambda: sslports.ports_to_ssl_ports(
            _Trickle(), _Sink(), mode="accept", context=ctx, timeout=0.5
        )
    )
    with pytest.raises(TimeoutError):
        join(12)
    assert time.monotonic() - start < 6  # (its 0.5 s, not the trickle's end at 8 s)


# ssl_wrap_socket() of a closed socket (fileno -1, which the C layer takes for "no socket":
# the memory-BIO mode of ports_to_ssl_ports) spun at 100% CPU until the timeout, forever
# without one. It must fail at once.
def test_wrap_closed_socket_fails_at_once() -> None:
    sock = socket.socket()
    sock.close()
    start = time.monotonic()
    cpu = time.process_time()
    with pytest.raises((ValueError, SSLError)) as info:
        sslports.ssl_wrap_socket(sock, timeout=30)
    assert not isinstance(info.value, TimeoutError)
    assert "ssl_wrap_socket" in str(info.value)
    assert time.monotonic() - start < 10  # (at once: not the timeout's 30 s, nor a busy loop)
    assert time.process_time() - cpu < 10


# ssl_wrap_socket() of a socket that is not connected (never connected; a listening socket,
# in accept mode): the handshake's first write failed with only the errno's text ("connect
# failed (Broken pipe)", "accept failed (Transport endpoint is not connected)"). Like a
# closed socket, it is a bad argument, said so; the caller keeps the socket.
@pytest.mark.parametrize("mode", ["connect", "accept"])
def test_wrap_unconnected_socket_says_so(mode: str) -> None:
    with socket.socket() as sock:
        if mode == "accept":
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        with pytest.raises(ValueError) as info:
            sslports.ssl_wrap_socket(
                sock, mode=mode, context=_server_ctx() if mode == "accept" else None, timeout=5
            )
        assert str(info.value) == "ssl_wrap_socket: the socket is not connected"
        assert sock.fileno() >= 0  # (not taken: the caller's still)


# ssl_wrap_socket() of a connected datagram (UDP) socket: the handshake completed (its
# flights fit in datagrams), then a read returned a short 16 KiB and every later one failed
# with "bad record mac" (TLS over datagrams loses and splits records: DTLS's place). Python's
# ssl refuses it too. A bad argument, said so; the caller keeps the socket.
def test_wrap_datagram_socket_says_so() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", 9))
        with pytest.raises(ValueError) as info:
            sslports.ssl_wrap_socket(sock, timeout=5)
        assert str(info.value).startswith("ssl_wrap_socket: only stream sockets are supported")
        assert sock.fileno() >= 0  # (not taken: the caller's still)


# ssl_server_context_enable_ecdh("prime256v1"/"secp384r1"): the group list with the usual
# groups appended named the same curve twice (P-256 / P-384), OpenSSL refused it, and the
# server was left with that single group: an X25519-only client could no longer connect
# (it can with the default secp521r1). The client is ``openssl s_client -groups X25519``:
# Python's ssl makes one only from 3.10 on (3.9's set_ecdh_curve takes EC curves only).
@pytest.mark.parametrize("curve", ["prime256v1", "prime256v", "secp384r1", "secp521r1"])
def test_enable_ecdh_keeps_the_usual_groups(curve: str) -> None:
    assert OPENSSL is not None
    ctx = _server_ctx()
    sslports.ssl_server_context_enable_ecdh(ctx, curve)
    with sslports.ssl_listen(0, 5, True, "127.0.0.1", ctx, handshake_timeout=10) as listener:
        port = sslports.ssl_addresses(listener, True)[1]

        def serve() -> None:
            i, o = sslports.ssl_accept(listener)
            o.write(b"hi")
            o.close()
            i.close()

        join = in_thread(serve)
        try:
            # -quiet: only the application data on stdout, and read on after stdin's end
            # (until the server's close, which sends no close_notify: s_client exits 1)
            cmd = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-groups", "X25519"]
            proc = subprocess.run([*cmd, "-quiet"], input=b"", capture_output=True, timeout=15)
            assert proc.stdout == b"hi", proc.stderr
        finally:
            join(15)


# timeout=nan / inf: NaN is malformed (ValueError naming the function, as
# socket.settimeout does); inf was accepted and then failed with an OverflowError from
# poll() ("timestamp out of range") or int() far from the call that took it.
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_timeouts_are_value_errors(bad: float) -> None:
    with pytest.raises(ValueError, match="ssl_connect"):
        sslports.ssl_connect("127.0.0.1", 9, timeout=bad)
    with pytest.raises(ValueError, match="ssl_listen"):
        sslports.ssl_listen(0, 5, False, "127.0.0.1", handshake_timeout=bad)


# SSLError keeps errno when pickled (multiprocessing, concurrent.futures): before, the
# ECONNREFUSED that ssl_connect reports was lost.
def test_pickled_ssl_error_keeps_errno() -> None:
    exc = SSLNetworkError("ssl_connect: connect failed (x)", errno=errno.ECONNREFUSED)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is SSLNetworkError
    assert back.errno == errno.ECONNREFUSED
    assert str(back) == str(exc)


# ssl_secure_client_context(): "the same object is returned until
# ssl_default_verify_sources() changes". Another thread that overrides the sources (the
# ContextVar is per thread) made this thread's next call build a new context (reloading the
# system CA bundle and losing its session cache).
def test_secure_context_not_replaced_by_other_threads_sources() -> None:
    first = sslports.ssl_secure_client_context()

    def other() -> None:
        sslports.ssl_default_verify_sources([str(sslports.TEST_PEM)])
        sslports.ssl_secure_client_context()

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert sslports.ssl_secure_client_context() is first


# An exception in the SNI callback "aborts that handshake (fatal alert)": over
# ports_to_ssl_ports the alert was never written to the output stream, so the client
# waited for the server's reply forever.
def test_sni_exception_over_streams_sends_the_alert() -> None:
    server_ctx = _server_ctx()

    def boom(name: str) -> Any:
        raise RuntimeError(f"boom {name}")

    sslports.ssl_set_server_name_identification_callback(server_ctx, boom)
    a, b = socket.socketpair()
    files = [a.makefile("rb"), a.makefile("wb"), b.makefile("rb"), b.makefile("wb")]
    try:
        server = in_thread(
            lambda: sslports.ports_to_ssl_ports(
                files[0], files[1], mode="accept", context=server_ctx
            )
        )
        client = in_thread(
            lambda: sslports.ports_to_ssl_ports(
                files[2], files[3], mode="connect", hostname="localhost"
            )
        )
        with pytest.raises(RuntimeError, match="boom localhost"):
            server(10)
        with pytest.raises(SSLError, match="alert"):
            client(5)
    finally:
        for sock in (a, b):  # wakes a read still waiting (the client, before the fix)
            sock.shutdown(socket.SHUT_RDWR)
        for f in files:
            f.close()
        a.close()
        b.close()


# The same after the handshake: a stream port's settimeout() never fired while the
# transport kept delivering bytes slowly (the check was for sockets only).
class _Slow(io.RawIOBase):
    """Wraps a readable stream; while `slow` is set (for at most 4 s, so that a failing test
    ends), one byte per 20 ms."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.slow = False
        self.slow_until = 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.slow and time.monotonic() < self.slow_until:
            time.sleep(0.02)
            return int(self.inner.readinto(memoryview(b)[:1]))
        return int(self.inner.readinto1(b))


def test_stream_read_timeout_with_trickling_peer() -> None:
    server_ctx = _server_ctx()
    a, b = socket.socketpair()
    files = [a.makefile("rb"), a.makefile("wb"), b.makefile("rb"), b.makefile("wb")]
    slow = _Slow(files[2])
    server = in_thread(
        lambda: sslports.ports_to_ssl_ports(files[0], files[1], mode="accept", context=server_ctx)
    )
    cin, cout = sslports.ports_to_ssl_ports(slow, files[3], mode="connect")
    sin, sout = server(10)
    try:
        payload = bytes(range(256)) * 64  # one 16 KiB record
        sout.write(payload)
        sout.flush()
        slow.slow = True
        slow.slow_until = time.monotonic() + 4
        cin.settimeout(0.5)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            cin.read(len(payload))
        assert time.monotonic() - start < 3
        slow.slow = False  # the connection stays usable for a retry
        cin.settimeout(10)
        got = b""
        while len(got) < len(payload):
            chunk = cin.read1(len(payload) - len(got))
            assert chunk
            got += chunk
        assert got == payload
    finally:
        slow.slow = False
        for p in (cin, cout, sin, sout, *files):
            p.close()
        a.close()
        b.close()


# Closing an idle listener must not shut the socket down for the other
# descriptors of it (a prefork parent closing its copy).
def test_close_idle_listener_leaves_shared_socket_listening() -> None:
    listener = sslports.ssl_listen(0, 5, True, "127.0.0.1")
    port = sslports.ssl_addresses(listener, True)[1]
    copy = socket.socket(fileno=socket.dup(listener.fileno()))
    try:
        sslports.ssl_close(listener)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            copy.settimeout(5)
            conn, _ = copy.accept()
            conn.close()
    finally:
        copy.close()


# "Wrong argument types raise TypeError": mode=None / 1 raised ValueError.
@pytest.mark.parametrize("mode", [None, 1, b"connect"])
def test_mode_of_wrong_type_is_type_error(mode: Any) -> None:
    a, b = socket.socketpair()
    try:
        with pytest.raises(TypeError, match="ports_to_ssl_ports"):
            sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), mode=mode)
        with pytest.raises(TypeError, match="ssl_wrap_socket"):
            sslports.ssl_wrap_socket(b, mode=mode)
    finally:
        a.close()
        b.close()


# ssl_wrap_socket() whose handshake fails closes the socket (as Python's ssl and ssl_connect
# do): before, it was left open, blocking, with the pump's 50 ms receive timeout on it.
def test_wrap_socket_closes_the_socket_when_the_handshake_fails() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)  # the ClientHello
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # not TLS

    join = in_thread(serve)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with pytest.raises(SSLNetworkError, match="ssl_wrap_socket: connect failed"):
            sslports.ssl_wrap_socket(sock, timeout=10)
        assert sock.fileno() == -1
    finally:
        sock.close()
        join(10)
        listener.close()


# ssl_wrap_socket() detaches the socket it is given, as SSLContext.wrap_socket does. Before, a
# caller that closed its socket object after wrapping (the end of a `with` block) freed the
# descriptor's number under the ports: the next socket opened got it, and the port's records
# went into that unrelated connection (its close() then closed that one too).
def test_wrap_socket_detaches_the_callers_socket() -> None:
    client_sock, server_sock = socket.socketpair()
    served = in_thread(
        lambda: sslports.ssl_wrap_socket(
            server_sock, mode="accept", context=_server_ctx(), timeout=10
        )
    )
    with client_sock:
        inp, out = sslports.ssl_wrap_socket(client_sock, timeout=10)
        assert client_sock.fileno() == -1  # detached: it reads as closed
    sin, sout = served(10)
    assert server_sock.fileno() == -1
    unrelated, unrelated_peer = socket.socketpair()  # (may reuse a freed descriptor number)
    with unrelated, unrelated_peer:
        out.write(b"to the TLS peer")
        out.flush()
        assert sin.read(15) == b"to the TLS peer"
        for p in (inp, out, sin, sout):
            p.close()
        unrelated_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            unrelated_peer.recv(4096)  # nothing of ours reached the unrelated connection
        unrelated.sendall(b"still open")  # and closing the ports did not close it
        unrelated_peer.setblocking(True)
        assert unrelated_peer.recv(64) == b"still open"


# A long but finite timeout (30 days) made ssl_connect raise OverflowError at once ("timeout
# is too large": poll() takes a C int of milliseconds, about 24.8 days), and one past
# threading's limit (about 292 years) made a stream read or ports_to_ssl_ports raise
# OverflowError ("timestamp out of range for platform time_t"); an int beyond a float's range
# (10**400) raised OverflowError without the function's name. A long timeout now waits; one
# past the limit is a ValueError naming the function ("out-of-range values raise ValueError").
def test_a_long_timeout_waits_and_a_huge_one_is_a_value_error() -> None:
    stalled = socket.create_server(("127.0.0.1", 0))  # accepts (its backlog), never answers
    port = stalled.getsockname()[1]
    join = in_thread(lambda: sslports.ssl_connect("127.0.0.1", port, timeout=30 * 86400.0))
    time.sleep(0.5)
    stalled.close()  # the handshake then fails: the connect waited until now
    with pytest.raises(SSLNetworkError, match="ssl_connect"):
        join(15)
    for huge in (10**400, 1e12):
        with pytest.raises(ValueError, match="ssl_connect"):
            sslports.ssl_connect("127.0.0.1", 9, timeout=huge)
        with pytest.raises(ValueError, match="ssl_listen"):
            sslports.ssl_listen(0, 5, False, "127.0.0.1", handshake_timeout=huge)
        with pytest.raises(ValueError, match="ports_to_ssl_ports"):
            sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), mode="connect", timeout=huge)


# After ssl_seal_context "every modifying procedure raises (context is sealed)":
# ssl_load_private_key and ssl_server_context_enable_dhe read their file first, so a path that
# does not load said "load failed (No such file ...)" instead.
def test_sealed_context_is_reported_before_the_file_is_read(tmp_path: Any) -> None:
    ctx = _server_ctx()
    sslports.ssl_seal_context(ctx)
    missing = tmp_path / "missing.pem"
    with pytest.raises(SSLError, match="ssl_load_private_key: context is sealed"):
        sslports.ssl_load_private_key(ctx, missing)
    with pytest.raises(SSLError, match="ssl_server_context_enable_dhe: context is sealed"):
        sslports.ssl_server_context_enable_dhe(ctx, missing)


# A text stream (open(path, "w"), io.StringIO) given to ports_to_ssl_ports: as input it
# raised "TypeError: string argument without an encoding" (no function named); as output the
# failed write of the ClientHello went unnoticed and the handshake waited for an answer
# forever (or said "handshake timed out"). "Wrong argument types raise TypeError."
def test_text_streams_are_type_errors() -> None:
    r, w = os.pipe()
    with open(r, "rb", 0) as inp, open(w, "wb", 0) as out:
        with pytest.raises(TypeError, match="ports_to_ssl_ports: input_port"):
            sslports.ports_to_ssl_ports(io.StringIO("x"), out, mode="connect")
        with pytest.raises(TypeError, match="ports_to_ssl_ports: output_port"):
            sslports.ports_to_ssl_ports(inp, io.StringIO(), mode="connect", timeout=5)


@pytest.mark.parametrize("entry", ["ssl_wrap_socket", "ports_to_ssl_ports"])
def test_sni_callback_type_error_names_the_call_that_ran_it(entry: str) -> None:
    """A server name callback returning a str fails the handshake with a TypeError naming
    the accepting call (it said ssl_accept for every one: an independent audit)."""
    ctx = _server_ctx()
    sslports.ssl_set_server_name_identification_callback(ctx, lambda host: "not a context")
    a, b = socket.socketpair()

    def serve() -> Any:
        if entry == "ssl_wrap_socket":
            return sslports.ssl_wrap_socket(b, mode="accept", context=ctx, timeout=10)
        inp, out = b.makefile("rb"), b.makefile("wb")
        with b, inp, out:
            return sslports.ports_to_ssl_ports(inp, out, mode="accept", context=ctx, timeout=10)

    join = in_thread(serve, 20)
    with pytest.raises(SSLError):
        sslports.ssl_wrap_socket(a, hostname="example.com", timeout=10)
    with pytest.raises(TypeError, match=rf"^{entry}: the server name callback must return"):
        join()


def test_flags_of_load_verify_source_and_addresses_are_bools() -> None:
    """try_= and port_numbers took any value (a truthy "no" hid a failing load), where every
    other flag raises TypeError (an independent audit)."""
    ctx = sslports.ssl_make_client_context()
    with pytest.raises(TypeError, match=r"^ssl_load_verify_source: try_ must be a bool"):
        sslports.ssl_load_verify_source(ctx, "/nonexistent.pem", try_="no")  # type: ignore[arg-type]
    with sslports.ssl_listen(0, 1, True, "127.0.0.1") as listener:
        with pytest.raises(TypeError, match=r"^ssl_addresses: port_numbers must be a bool"):
            sslports.ssl_addresses(listener, "no")  # type: ignore[arg-type]
        assert len(sslports.ssl_addresses(listener, False)) == 2


@pytest.mark.parametrize("setter", ["ssl_set_ciphers", "ssl_set_ciphersuites"])
def test_a_cipher_spec_that_is_not_utf8_is_a_value_error(setter: str) -> None:
    """A lone surrogate raised a bare UnicodeEncodeError naming nothing."""
    ctx = sslports.ssl_make_client_context()
    with pytest.raises(ValueError, match=rf"^{setter}: .* cannot be encoded as UTF-8"):
        getattr(sslports, setter)(ctx, "\udcff")


def test_keying_material_on_tls12_takes_what_its_prf_can() -> None:
    """TLS 1.2's exporter runs the PRF over label, both randoms and the context with its
    length, at most 1024 bytes in OpenSSL: up to that both ends agree; beyond it a ValueError
    says why (it was OpenSSL's "internal error", for contexts API.md allows up to 65535)."""
    a, b = socket.socketpair()
    ctx = _server_ctx()
    join = in_thread(lambda: sslports.ssl_wrap_socket(b, mode="accept", context=ctx), 20)
    cin, cout = sslports.ssl_wrap_socket(a, encrypt="tls12", timeout=10)
    sin, sout = join()
    try:
        label = b"EXPERIMENTAL-test"
        fits = b"c" * (1024 - len(label) - 64 - 2)
        assert sslports.ssl_export_keying_material(
            cin, label, 32, fits
        ) == sslports.ssl_export_keying_material(sin, label, 32, fits)
        for side in (cin, sin):
            with pytest.raises(ValueError, match=r"^ssl_export_keying_material: .*TLS 1\.2"):
                sslports.ssl_export_keying_material(side, label, 32, fits + b"c")
        assert len(sslports.ssl_export_keying_material(cin, b"L" * 960, 32)) == 32
        with pytest.raises(ValueError, match="1025 bytes, at most 1024"):
            sslports.ssl_export_keying_material(cin, b"L" * 961, 32)
    finally:
        for p in (cin, cout, sin, sout):
            p.close()


# A private_key of the wrong shape: the message lists every form API.md gives, the
# extension's ("pem-data", bytes) too (it named only 'pem' and 'der').
@pytest.mark.parametrize("make", ["ssl_make_client_context", "ssl_make_server_context"])
def test_a_wrong_private_key_lists_every_form(make: str) -> None:
    with pytest.raises(TypeError) as info:
        getattr(sslports, make)(private_key="notatuple")
    assert str(info.value) == (
        f"{make}: private_key must be ('pem', path), ('der', path), ('pem-data', bytes) or None"
    )
