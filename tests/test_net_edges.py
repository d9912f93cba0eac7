"""Edges of the networking layer (net.py): IPv6 listeners and literals, name resolution with
several addresses, listening errors and options, accept under closing / resets / silence,
connect timeouts at the TCP stage, and file-descriptor hygiene on every failure path.

Regression tests (they failed before the fix beside them):

* ssl_listen with every descriptor in use raised a bare OSError (socket() was outside the
  try that turns failures into SSLNetworkError);
* ssl_listen with a backlog above a C int raised OverflowError and left the socket to the
  collector;
* a listener took socket.setdefaulttimeout() (ssl_accept then failed with "accept failed
  (timed out)", an SSLNetworkError that is no TimeoutError), unlike ssl_connect, which ignores
  that default;
* a refused ssl_connect did not chain the OSError (a resolver failure does);
* ssl_addresses of a closed listener raised a bare OSError (EBADF), not SSLError;
* messages and repr wrote IPv6 endpoints as "::1:443" instead of "[::1]:443".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import ipaddress
import os
import resource
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from certs import chain_file, client_context, in_thread, ipv6_loopback_works, make_cert
from certs import server_context as make_server_context
from conftest import ctrl_c_after

import sslports
import sslports.aio
from sslports import SSLError, SSLNetworkError

LOCAL = "127.0.0.1"
HAS_IPV6 = ipv6_loopback_works()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no working IPv6 loopback here")


def _server_ctx() -> sslports.SSLServerContext:
    return sslports.ssl_make_server_context(
        private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM
    )


def _nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _nfds_settle(expected: int) -> int:
    """The descriptor count once a server thread has closed its side (up to 2 s)."""
    deadline = time.monotonic() + 2
    while _nfds() != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return _nfds()


def _refused_port(host: str) -> tuple[socket.socket, int]:
    """A socket bound (not listening) on host: connecting to its port is refused."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family)
    s.bind((host, 0))
    return s, s.getsockname()[1]


def _connect_and_accept(listener: Any, host: str, **kw: Any) -> tuple[Any, Any, Any, Any]:
    port = sslports.ssl_addresses(listener, True)[1]
    join = in_thread(lambda: sslports.ssl_accept(listener), 20)
    cin, cout = sslports.ssl_connect(host, port, **kw)
    sin, sout = join()
    return cin, cout, sin, sout


def _close(*ports: Any) -> None:
    for p in ports:
        p.close()


class _PyServer:
    """A Python ssl server (TEST_PEM) that records the SNI of each handshake."""

    def __init__(self, host: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sslports.TEST_PEM)
        self.sni: list[Any] = []
        ctx.sni_callback = lambda _s, name, _c: self.sni.append(name)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.ctx = ctx
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hi")
            except OSError:
                conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def py_server() -> Iterator[Callable[[str], _PyServer]]:
    made: list[_PyServer] = []

    def make(host: str) -> _PyServer:
        made.append(_PyServer(host))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _fake_resolver(
    monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[tuple[str, int]]
) -> None:
    """Make `name` resolve to `addresses`, in that order (other names resolve as usual)."""
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kw: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kw)
        out: list[Any] = []
        for addr, p in addresses:
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, p, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, p)))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", fake)


# -- regressions ---------------------------------------------------------------------------------


@pytest.fixture
def no_free_descriptors() -> Iterator[None]:
    """Every descriptor in use (the soft limit lowered to what is open, then filled)."""
    with _descriptors_exhausted():
        yield


@contextlib.contextmanager
def _descriptors_exhausted() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[socket.socket] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (_nfds() + 8, hard))
    try:
        with pytest.raises(OSError):
            while True:
                held.append(socket.socket())
        yield
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_without_descriptors_is_network_error_and_the_listener_stays(
    ctx_first: sslports.SSLServerContext,
) -> None:
    """API.md: a failed accept raises SSLNetworkError and the listener stays usable. With
    every descriptor in use, accept() fails (EMFILE) and the client waits in the backlog;
    once descriptors are free, the next ssl_accept takes that very client."""
    with sslports.ssl_listen(0, 5, False, LOCAL, ctx_first) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        client = socket.create_connection((LOCAL, port), timeout=30)
        accept_failed = pytest.raises(SSLNetworkError, match=r"^ssl_accept: accept failed \(")
        with _descriptors_exhausted(), accept_failed as info:
            sslports.ssl_accept(listener)
        assert info.value.errno == errno.EMFILE
        join = in_thread(lambda: sslports.ssl_wrap_socket(client, mode="connect"), 30)
        sin, sout = sslports.ssl_accept(listener)
        cin, cout = join()
        cout.write(b"queued")
        cout.flush()
        assert sin.read(6) == b"queued"
        _close(cin, cout, sin, sout)


@pytest.fixture
def ctx_first() -> sslports.SSLServerContext:
    return _server_ctx()  # (loading TEST_PEM takes a descriptor: before they are all taken)


@pytest.mark.parametrize("host", [None, LOCAL])
def test_listen_without_descriptors_is_network_error(
    host: Any, ctx_first: sslports.SSLServerContext, no_free_descriptors: None
) -> None:
    ctx = ctx_first
    with pytest.raises(SSLNetworkError, match=r"^ssl_listen: listen failed \(") as info:
        sslports.ssl_listen(0, 5, False, host, ctx)
    assert info.value.errno == errno.EMFILE
    assert isinstance(info.value.__cause__, OSError)


def test_listen_backlog_beyond_a_c_int_is_capped() -> None:
    before = _nfds()
    with sslports.ssl_listen(0, 2**40, False, LOCAL, _server_ctx()) as listener:
        cin, cout, sin, sout = _connect_and_accept(listener, LOCAL)
        _close(cin, cout, sin, sout)
    assert _nfds() == before


def test_listener_ignores_the_socket_default_timeout() -> None:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.2)
    try:
        listener = sslports.ssl_listen(0, 5, False, LOCAL, _server_ctx())
    finally:
        socket.setdefaulttimeout(old)
    with listener:
        port = sslports.ssl_addresses(listener, True)[1]
        join = in_thread(lambda: sslports.ssl_accept(listener), 20)
        time.sleep(0.6)  # three default timeouts: ssl_accept still waits for a client
        cin, cout = sslports.ssl_connect(LOCAL, port, timeout=10)
        sin, sout = join()
        cout.write(b"x")
        cout.flush()
        assert sin.read(1) == b"x"
        _close(cin, cout, sin, sout)


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_refused_connect_chains_the_oserror(timeout: Any) -> None:
    s, port = _refused_port(LOCAL)
    with s, pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect(LOCAL, port, timeout=timeout)
    cause = info.value.__cause__
    assert isinstance(cause, ConnectionRefusedError)
    assert cause.errno == info.value.errno == errno.ECONNREFUSED


def test_addresses_of_a_closed_listener_is_ssl_error() -> None:
    listener = sslports.ssl_listen(0, 5, False, LOCAL)
    listener.close()
    with pytest.raises(SSLError, match=r"^ssl_addresses: listener is closed"):
        sslports.ssl_addresses(listener, True)
    assert repr(listener) == "<SSLListener closed>"


def test_addresses_of_closed_ports_say_the_port_is_closed() -> None:
    """One port closed: the connection's addresses still answer (the other is open). Both:
    "port is closed", as the listener's message, where it read "not connected to TCP port
    ([Errno 9] Bad file descriptor)" (or, for a socket lingering after its close, answered)."""
    listener = sslports.ssl_listen(0, 5, False, LOCAL, _server_ctx())
    port = sslports.ssl_addresses(listener, True)[1]
    accepted = in_thread(lambda: sslports.ssl_accept(listener))
    cin, cout = sslports.ssl_connect(LOCAL, port, timeout=10)
    sin, sout = accepted()
    try:
        cin.close()
        assert sslports.ssl_addresses(cin) == (LOCAL, LOCAL)
        cout.close()
        for p in (cin, cout):
            with pytest.raises(SSLError, match=r"^ssl_addresses: port is closed$"):
                sslports.ssl_addresses(p, True)
    finally:
        _close(cin, cout, sin, sout)
        listener.close()


@needs_ipv6
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_ipv6_endpoints_are_bracketed_in_messages(timeout: Any) -> None:
    s, port = _refused_port("::1")
    with s, pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("::1", port, timeout=timeout)
    assert str(info.value) == (
        f"ssl_connect: connect failed ({os.strerror(errno.ECONNREFUSED)}: [::1]:{port})"
    )
    with sslports.ssl_listen(0, 5, False, "::1") as listener:
        lport = sslports.ssl_addresses(listener, True)[1]
        assert repr(listener) == f"<SSLListener [::1]:{lport}>"
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_listen(lport, 5, False, "::1")
        assert str(info.value) == (
            f"ssl_listen: listen failed ({os.strerror(errno.EADDRINUSE)}: [::1]:{lport})"
        )


# -- IPv6 ----------------------------------------------------------------------------------------


@needs_ipv6
def test_ipv6_listener_and_port_addresses() -> None:
    with sslports.ssl_listen(0, 5, True, "::1", _server_ctx()) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        assert sslports.ssl_addresses(listener, True) == ("::1", port, "::", 0)
        assert sslports.ssl_addresses(listener) == ("::1", "::")
        cin, cout, sin, sout = _connect_and_accept(listener, "::1")
        local, lport, peer, pport = sslports.ssl_addresses(cin, True)
        assert (local, peer, pport) == ("::1", "::1", port)
        assert sslports.ssl_addresses(sout, True) == ("::1", port, "::1", lport)
        assert sslports.ssl_addresses(sin) == ("::1", "::1")
        _close(cin, cout, sin, sout)


@needs_ipv6
def test_ipv6_wildcard_listener_is_ipv6_only() -> None:
    # As the README says: "::" is IPv6 only (as socket.create_server does).
    with sslports.ssl_listen(0, 5, True, "::", _server_ctx()) as listener:
        assert sslports.ssl_addresses(listener, True)[::2] == ("::", "::")
        sock = socket.socket(fileno=os.dup(listener.fileno()))
        with sock:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        cin, cout, sin, sout = _connect_and_accept(listener, "::1")
        _close(cin, cout, sin, sout)


@needs_ipv6
def test_listener_on_every_address_takes_ipv4_and_ipv6() -> None:
    # API.md: None binds "all" addresses (Racket: all of the machine's addresses), IPv6 too;
    # an IPv4 client's address reads as IPv4, not as the dual-stack socket's v4-mapped form.
    with sslports.ssl_listen(0, 5, False, None, _server_ctx()) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        assert sslports.ssl_addresses(listener, True) == ("::", port, "::", 0)
        for host in (LOCAL, "::1"):
            cin, cout, sin, sout = _connect_and_accept(listener, host)
            try:
                cout.write(b"ping " + host.encode())
                cout.flush()
                assert sin.read(5 + len(host)) == b"ping " + host.encode()
                assert sslports.ssl_addresses(sin, True)[::2] == (host, host)
                assert sslports.ssl_addresses(cin, True)[::2] == (host, host)
                assert sslports.ssl_addresses(sin, True)[1] == port
            finally:
                _close(cin, cout, sin, sout)


@needs_ipv6
def test_listener_on_every_address_falls_back_to_ipv4() -> None:
    # The port's IPv6 side taken by an IPv6-only socket: None still listens, on IPv4 (what it
    # did before it took IPv6 too) rather than failing.
    for _attempt in range(20):
        six = socket.socket(socket.AF_INET6)
        six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        six.bind(("::", 0))
        six.listen(1)
        port = six.getsockname()[1]
        try:
            listener = sslports.ssl_listen(port, 5, False, None, _server_ctx())
            break
        except SSLNetworkError as exc:  # that port's IPv4 side is another program's
            assert exc.errno == errno.EADDRINUSE
            six.close()
    else:
        pytest.fail("no port free on IPv4 whose IPv6 side could be taken")
    with six, listener:
        assert sslports.ssl_addresses(listener, True) == ("0.0.0.0", port, "0.0.0.0", 0)
        cin, cout, sin, sout = _connect_and_accept(listener, LOCAL)
        _close(cin, cout, sin, sout)


@needs_ipv6
def test_ip_literals_send_no_sni(py_server: Callable[[str], _PyServer]) -> None:
    six = py_server("::1")
    four = py_server(LOCAL)
    lo = socket.if_nametoindex("lo") if hasattr(socket, "if_nametoindex") else 1
    for host, server in [
        ("::1", six),
        ("0:0::1", six),
        (f"::1%{lo}", six),  # scoped: resolved, still a literal
        (LOCAL, four),
        ("::ffff:127.0.0.1", four),  # v4-mapped, through the IPv4 listener
    ]:
        inp, out = sslports.ssl_connect(host, server.port, timeout=10)
        assert inp.read(2) == b"hi"
        _close(inp, out)
    assert six.sni == [None, None, None]
    assert four.sni == [None, None]


def test_a_bracketed_address_is_no_name(py_server: Callable[[str], _PyServer]) -> None:
    """ "[::1]" (a URL's way of writing an address) was sent as the SNI name by the wrappers
    (RFC 6066 allows no address there, and it is not a name either): it now names nothing,
    as "*" does: no SNI, and a context that checks names refuses it, saying why."""
    server = py_server(LOCAL)
    sock = socket.create_connection((LOCAL, server.port), timeout=10)
    inp, out = sslports.ssl_wrap_socket(
        sock, context=sslports.ssl_make_client_context(), hostname="[::1]", timeout=10
    )
    assert inp.read(2) == b"hi"
    _close(inp, out)
    assert server.sni == [None]
    secure = sslports.ssl_make_client_context("secure")
    with (
        socket.create_connection((LOCAL, server.port), timeout=10) as sock2,
        pytest.raises(SSLNetworkError, match=r"'\[::1\]' .*without brackets"),
    ):
        sslports.ssl_wrap_socket(sock2, context=secure, hostname="[::1]")


def test_an_over_long_hostname_is_value_error_everywhere() -> None:
    """A name over 253 characters (no DNS name is longer; SNI takes at most 255 bytes) was a
    ValueError from ssl_connect, but an SSLError from OpenSSL's refusal of the SNI name
    ("hostname setup failed") from the wrappers."""
    name = ".".join(["a" * 63] * 4) + ".example"
    with pytest.raises(ValueError, match=r"^ssl_connect: hostname"):
        sslports.ssl_connect(name, 443, timeout=5)
    a, b = socket.socketpair()
    with a, b, pytest.raises(ValueError, match=r"^ssl_wrap_socket: hostname is longer than"):
        sslports.ssl_wrap_socket(a, hostname=name)
    with pytest.raises(ValueError, match=r"^ports_to_ssl_ports: hostname is longer than"):
        sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), hostname=name)
    with pytest.raises(ValueError, match=r"^open_ssl_connection: hostname is longer than"):
        asyncio.run(sslports.aio.open_ssl_connection(name, 443, timeout=5))


def test_dns_name_sni_drops_the_trailing_dot(
    py_server: Callable[[str], _PyServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = py_server(LOCAL)
    _fake_resolver(monkeypatch, "Host.Example.", [(LOCAL, server.port)])
    inp, out = sslports.ssl_connect("Host.Example.", server.port, timeout=10)
    assert inp.read(2) == b"hi"
    _close(inp, out)
    assert server.sni == ["Host.Example"]


@needs_ipv6
@pytest.mark.parametrize(("san", "ok"), [("::1", True), ("::2", False)])
def test_scoped_ipv6_literal_verified_against_ip_san(san: str, ok: bool) -> None:
    # (test_verify.py checks "::1" itself; here the zone, which is no part of the address)
    root = make_cert("net-edges root", ca=True)
    leaf = make_cert("v6 leaf", issuer=root, dns=["localhost"], ips=[san])
    lo = socket.if_nametoindex("lo") if hasattr(socket, "if_nametoindex") else 1
    ctx = client_context("auto", roots=[chain_file(root)])
    with sslports.ssl_listen(0, 5, True, "::1", make_server_context("auto", leaf)) as listener:
        if ok:
            cin, cout, sin, sout = _connect_and_accept(
                listener, f"::1%{lo}", client_protocol=ctx, timeout=10
            )
            assert sslports.ssl_peer_verified(cin)
            assert sslports.ssl_peer_check_hostname(cin, f"::1%{lo}")
            _close(cin, cout, sin, sout)
        else:
            port = sslports.ssl_addresses(listener, True)[1]
            join = in_thread(lambda: sslports.ssl_accept(listener), 20)
            with pytest.raises(SSLNetworkError) as info:
                sslports.ssl_connect(f"::1%{lo}", port, ctx, timeout=10)
            assert info.value.verify_code == 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
            assert info.value.verify_message is not None
            assert info.value.verify_message.startswith("IP address mismatch")
            with pytest.raises(SSLNetworkError):
                join()


# -- name resolution -----------------------------------------------------------------------------


@needs_ipv6
@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("order", ["v6-refused-first", "v4-refused-first"])
def test_every_resolved_address_is_tried_in_order(
    monkeypatch: pytest.MonkeyPatch, py_server: Callable[[str], _PyServer], timeout: Any, order: str
) -> None:
    live = LOCAL if order == "v6-refused-first" else "::1"
    dead = "::1" if order == "v6-refused-first" else LOCAL
    server = py_server(live)
    blocker, _ = _refused_port(dead)
    # the dead address on the live port: refused, unless something else listens there
    with blocker:
        try:
            probe = socket.create_connection((dead, server.port), timeout=1)
        except OSError:
            pass
        else:
            probe.close()
            pytest.skip(f"something listens on {dead} port {server.port}")
        _fake_resolver(monkeypatch, "dual.test", [(dead, server.port), (live, server.port)])
        before = _nfds()
        inp, out = sslports.ssl_connect("dual.test", server.port, timeout=timeout)
        assert sslports.ssl_addresses(inp, True)[2:] == (live, server.port)
        assert inp.read(2) == b"hi"
        _close(inp, out)
        assert server.sni == ["dual.test"]
        assert _nfds_settle(before) == before


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_all_addresses_refused(monkeypatch: pytest.MonkeyPatch, timeout: Any) -> None:
    a, port_a = _refused_port(LOCAL)
    b, port_b = _refused_port(LOCAL)
    with a, b:  # (the fake resolver puts its own port in each address)
        _fake_resolver(monkeypatch, "dead.test", [(LOCAL, port_a), (LOCAL, port_b)])
        before = _nfds()
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect("dead.test", port_a, timeout=timeout)
        assert _nfds() == before
    assert not isinstance(info.value, TimeoutError)
    assert info.value.errno == errno.ECONNREFUSED
    assert str(info.value) == (
        f"ssl_connect: connect failed ({os.strerror(errno.ECONNREFUSED)}: dead.test:{port_a})"
    )


def test_unresolvable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kw: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(SSLNetworkError, match=r"^ssl_connect: connect failed \(cannot resolve "):
        sslports.ssl_connect("nowhere.invalid", 443)
    with pytest.raises(SSLNetworkError, match=r"^ssl_listen: listen failed \(cannot resolve ") as e:
        sslports.ssl_listen(0, 5, False, "nowhere.invalid")
    assert isinstance(e.value.__cause__, socket.gaierror)


@pytest.mark.parametrize("name", ["a" * 64 + ".example", "x..example", "\u00e9" * 70 + ".test"])
def test_a_name_dns_cannot_carry_is_value_error_naming_the_call(name: str) -> None:
    """A label over 63 characters (or an empty one) cannot be IDNA-encoded for the resolver:
    getaddrinfo's bare UnicodeError ("encoding with 'idna' codec failed") named neither the
    call nor the name."""
    with pytest.raises(ValueError, match=r"^ssl_connect: hostname .* is not a valid DNS name"):
        sslports.ssl_connect(name, 443, timeout=5)
    with pytest.raises(ValueError, match=r"^ssl_listen: hostname .* is not a valid DNS name"):
        sslports.ssl_listen(0, 5, False, name)
    # (its "secure" default refuses the last two first: no valid reference name to verify)
    with pytest.raises((ValueError, SSLNetworkError), match=r"^open_ssl_connection: "):
        asyncio.run(sslports.aio.open_ssl_connection(name, 443, timeout=5))


@pytest.mark.parametrize(
    ("port", "exc"),
    [(0, ValueError), (65536, ValueError), (-1, ValueError), ("443", TypeError),
     (443.0, TypeError), (True, TypeError), (None, TypeError)],
)  # fmt: skip
def test_connect_port_arguments(port: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^ssl_connect: "):
        sslports.ssl_connect(LOCAL, port)


@pytest.mark.parametrize(
    ("port", "exc"),
    [(65536, ValueError), (-1, ValueError), ("0", TypeError), (False, TypeError)],
)  # fmt: skip
def test_listen_port_arguments(port: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^ssl_listen: "):
        sslports.ssl_listen(port)


@pytest.mark.parametrize(
    ("value", "exc", "says"),
    [(0, ValueError, "must be > 0, or None"), (0.0, ValueError, "must be > 0, or None"),
     (-1, ValueError, "must be > 0, or None"), (float("nan"), ValueError, "must be a finite"),
     ("30", TypeError, "must be a number"), (True, TypeError, "must be a number")],
)  # fmt: skip
def test_handshake_timeout_arguments(value: Any, exc: type[Exception], says: str) -> None:
    """A server's handshake_timeout is checked where it is given, by ssl_listen and by
    aio.start_ssl_server alike. Zero would time out every handshake before its first byte (it
    did: a listener whose every ssl_accept raised), so it is refused as asyncio refuses
    ssl_handshake_timeout=0; start_ssl_server took anything and failed each client's handshake
    with it later, reported per client."""
    before = _nfds()
    with pytest.raises(exc, match=rf"^ssl_listen: handshake_timeout {says}"):
        sslports.ssl_listen(0, 5, True, LOCAL, handshake_timeout=value)
    assert _nfds() == before  # (nothing was bound)

    async def serve() -> None:
        async def nothing(r: Any, w: Any) -> None:
            raise AssertionError("no client connects")

        await sslports.aio.start_ssl_server(
            nothing, LOCAL, 0, _server_ctx(), handshake_timeout=value
        )

    with pytest.raises(exc, match=rf"^start_ssl_server: handshake_timeout {says}"):
        asyncio.run(serve())
    assert _nfds() == before


# -- listening -----------------------------------------------------------------------------------


def _link_local() -> Optional[str]:
    """A link-local IPv6 address of this machine with its zone ("fe80::1%eth0"), or None."""
    try:
        with open("/proc/net/if_inet6") as table:
            rows = [line.split() for line in table]
    except OSError:
        return None
    for hexaddr, _index, _plen, scope, _flags, name in rows:
        if scope == "20":  # (IPV6_ADDR_LINKLOCAL)
            return f"{ipaddress.IPv6Address(bytes.fromhex(hexaddr))}%{name}"
    return None


def test_addresses_keep_a_link_local_zone() -> None:
    """ssl_addresses gave a link-local address without its zone ("fe80::1", which no
    connect can reach: the zone says which link) where getnameinfo and Racket's
    tcp-addresses say "fe80::1%eth0". Both ends, the listener, and its repr keep it, and a
    client reaches the server again at the address its listener reports."""
    host = _link_local()
    if host is None:
        pytest.skip("no link-local IPv6 address on this machine")
    with sslports.ssl_listen(0, 5, True, host, _server_ctx()) as listener:
        local, port, _any, _zero = sslports.ssl_addresses(listener, True)
        assert local == host
        assert f"[{host}]:{port}" in repr(listener)
        result: dict[str, Any] = {}

        def serve() -> None:
            si, so = sslports.ssl_accept(listener)
            with si, so:
                result["server"] = sslports.ssl_addresses(si, True)
                so.write(si.read(4))

        t = threading.Thread(target=serve)
        t.start()
        ci, co = sslports.ssl_connect(local, port, timeout=10)
        with ci, co:
            client = sslports.ssl_addresses(co, True)
            co.write(b"ping")
            co.flush()
            assert ci.read(4) == b"ping"
        t.join(10)
    assert client[0] == client[2] == host and client[3] == port
    assert result["server"] == (host, port, host, client[1])


def test_port_in_use() -> None:
    with sslports.ssl_listen(0, 5, True, LOCAL) as first:
        port = sslports.ssl_addresses(first, True)[1]
        for reuse in (False, True):  # SO_REUSEADDR does not share a listening port
            before = _nfds()
            with pytest.raises(SSLNetworkError) as info:
                sslports.ssl_listen(port, 5, reuse, LOCAL)
            assert _nfds() == before
            assert info.value.errno == errno.EADDRINUSE
            assert str(info.value) == (
                f"ssl_listen: listen failed ({os.strerror(errno.EADDRINUSE)}: {LOCAL}:{port})"
            )
            assert isinstance(info.value.__cause__, OSError)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port_listeners_share_the_connections() -> None:
    ctx = _server_ctx()
    a = sslports.ssl_listen(0, 64, False, LOCAL, ctx, reuse_port=True)
    port = sslports.ssl_addresses(a, True)[1]
    b = sslports.ssl_listen(port, 64, False, LOCAL, ctx, reuse_port=True)
    counts = {"a": 0, "b": 0}

    def serve(name: str, listener: Any) -> None:
        while True:
            try:
                inp, out = sslports.ssl_accept(listener)
            except SSLNetworkError:
                return  # closed
            counts[name] += 1
            _close(inp, out)

    threads = [threading.Thread(target=serve, args=x, daemon=True) for x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    try:
        for _ in range(40):  # each goes to one listener by a hash of its source port
            inp, out = sslports.ssl_connect(LOCAL, port, timeout=10)
            _close(inp, out)
        deadline = time.monotonic() + 5
        while sum(counts.values()) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        a.close()
        b.close()
        for t in threads:
            t.join(5)
    assert sum(counts.values()) == 40
    assert counts["a"] and counts["b"], counts
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("host", [LOCAL, "::1", None])
def test_close_wakes_every_blocked_accept(host: Any) -> None:
    if host == "::1" and not HAS_IPV6:
        pytest.skip("no working IPv6 loopback here")
    # Both woken threads must see "listener is closed"; one used to see close()'s
    # shutdown() as "accept failed ([Errno 22] Invalid argument)": it looked at the socket
    # before close() had closed it. Several rounds: that was a race.
    for _ in range(5):
        _close_under_accepts(host)


def _close_under_accepts(host: Any) -> None:
    before = _nfds()
    listener = sslports.ssl_listen(0, 5, False, host)
    joins = [in_thread(lambda: sslports.ssl_accept(listener), 10) for _ in range(3)]
    time.sleep(0.1)  # all blocked in accept()
    start = time.monotonic()
    sslports.ssl_close(listener)
    for join in joins:
        with pytest.raises(
            SSLNetworkError, match=r"^ssl_accept: accept failed \(listener is closed"
        ):
            join(5)
    assert time.monotonic() - start < 2
    assert not listener._accepting
    with pytest.raises(SSLNetworkError, match="listener is closed"):
        sslports.ssl_accept(listener)
    assert _nfds() == before  # (the wake-up pair too, closed by the last thread to wake)


def test_accept_survives_resets_eofs_and_silence() -> None:
    before = _nfds()
    with sslports.ssl_listen(0, 8, False, LOCAL, _server_ctx(), handshake_timeout=0.3) as lst:
        port = sslports.ssl_addresses(lst, True)[1]

        reset = socket.create_connection((LOCAL, port))
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()  # RST
        with pytest.raises(SSLNetworkError, match=r"^ssl_accept: accept failed") as info:
            sslports.ssl_accept(lst)
        assert info.value.errno == errno.ECONNRESET

        socket.create_connection((LOCAL, port)).close()  # FIN before a ClientHello
        with pytest.raises(SSLNetworkError, match=r"^ssl_accept: accept failed"):
            sslports.ssl_accept(lst)

        with socket.create_connection((LOCAL, port)):  # connects, sends nothing
            start = time.monotonic()
            with pytest.raises(SSLNetworkError) as info:
                sslports.ssl_accept(lst)
            assert isinstance(info.value, TimeoutError)
            assert time.monotonic() - start < 10  # (its 0.3 s, not the default's 30)

        lst.handshake_timeout = 30.0  # (a good client on a busy machine may take 0.3 s)
        cin, cout, sin, sout = _connect_and_accept(lst, LOCAL, timeout=10)
        _close(cin, cout, sin, sout)
    assert _nfds() == before


# -- connect at the TCP stage --------------------------------------------------------------------


@pytest.fixture(params=[LOCAL, "::1"])
def blackhole(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """(host, port) where a SYN goes unanswered: a listener whose accept queue is full."""
    host = request.param
    if host == "::1" and not HAS_IPV6:
        pytest.skip("no working IPv6 loopback here")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fill: list[socket.socket] = []
    try:
        for _ in range(8):
            s = socket.socket(family)
            s.setblocking(False)
            s.connect_ex((host, port))
            fill.append(s)
        with socket.socket(family) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect((host, port))
            except (TimeoutError, socket.timeout):
                pass
            else:
                pytest.skip("the kernel answers SYNs beyond the backlog here")
        yield host, port
    finally:
        for s in fill:
            s.close()
        listener.close()


def test_connect_timeout_at_the_tcp_stage(blackhole: tuple[str, int]) -> None:
    host, port = blackhole
    before = _nfds()
    start = time.monotonic()
    with pytest.raises(SSLNetworkError, match=r"^ssl_connect: connect timed out") as info:
        sslports.ssl_connect(host, port, timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert 0.4 < time.monotonic() - start < 2
    assert _nfds() == before


def test_aio_connect_timeout_at_the_tcp_stage(blackhole: tuple[str, int]) -> None:
    """open_ssl_connection's timeout also bounds the TCP connect: the same exception as
    ssl_connect's (an SSLNetworkError that is a TimeoutError, naming the call)."""
    host, port = blackhole
    with pytest.raises(SSLNetworkError, match=r"^open_ssl_connection: connect timed out") as info:
        asyncio.run(sslports.aio.open_ssl_connection(host, port, timeout=0.5))
    assert isinstance(info.value, TimeoutError)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_interrupting_a_tcp_connect(blackhole: tuple[str, int], timeout: Any) -> None:
    host, port = blackhole
    before = _nfds()
    with ctrl_c_after():
        sslports.ssl_connect_enable_break(host, port, timeout=timeout)
    assert _nfds() == before


def test_an_address_that_never_answers_leaves_time_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
    blackhole: tuple[str, int],
    py_server: Callable[[str], _PyServer],
) -> None:
    """A name whose first address drops SYNs (a host's broken IPv6, say) and whose second
    serves: each address but the last gets an equal share of the timeout. The first took the
    whole of it before, and ssl_connect timed out with the live address untried."""
    dead_host, dead_port = blackhole
    server = py_server(LOCAL)
    _fake_resolver(monkeypatch, "dual.test", [(dead_host, dead_port), (LOCAL, server.port)])
    start = time.monotonic()
    inp, out = sslports.ssl_connect("dual.test", server.port, timeout=6)
    assert time.monotonic() - start > 2.5  # (3 s on the dead address, then the live one)
    assert sslports.ssl_addresses(inp, True)[2:] == (LOCAL, server.port)
    assert inp.read(2) == b"hi"
    _close(inp, out)


def test_aio_an_address_that_never_answers_leaves_time_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
    blackhole: tuple[str, int],
    py_server: Callable[[str], _PyServer],
) -> None:
    """open_ssl_connection as ssl_connect (asyncio's own create_connection gave the first
    address the whole timeout)."""
    dead_host, dead_port = blackhole
    server = py_server(LOCAL)
    _fake_resolver(monkeypatch, "dual.test", [(dead_host, dead_port), (LOCAL, server.port)])

    async def talk() -> bytes:
        reader, writer = await sslports.aio.open_ssl_connection(
            "dual.test", server.port, "auto", timeout=6
        )
        try:
            assert writer.get_extra_info("peername")[:2] == (LOCAL, server.port)
            return await reader.readexactly(2)
        finally:
            writer.close()

    start = time.monotonic()
    assert asyncio.run(talk()) == b"hi"
    assert time.monotonic() - start > 2.5


def test_when_every_address_is_silent_the_timeout_names_the_last(
    monkeypatch: pytest.MonkeyPatch, blackhole: tuple[str, int]
) -> None:
    host, port = blackhole
    _fake_resolver(monkeypatch, "silent.test", [(host, port), (host, port)])
    start = time.monotonic()
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("silent.test", port, timeout=1)
    assert 0.9 < time.monotonic() - start < 3
    assert isinstance(info.value, TimeoutError)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert str(info.value) == f"ssl_connect: connect timed out ({endpoint})"


def _slow_resolver(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A resolver that takes `seconds` (a DNS server that does not answer), then fails. As
    glibc's, which retries its poll() on EINTR, it holds signals off its thread meanwhile."""

    def slow(*args: Any, **kw: Any) -> Any:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            time.sleep(seconds)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow)


def test_the_timeout_bounds_name_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """API.md: `timeout` bounds the connect, which starts with the lookup; it waited for the
    resolver's own timeouts (5 s a try), then raised a resolver error, not a TimeoutError."""
    _slow_resolver(monkeypatch, 3)
    start = time.monotonic()
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("slow.test", 443, timeout=0.5)
    assert time.monotonic() - start < 2
    assert isinstance(info.value, TimeoutError)
    assert str(info.value) == "ssl_connect: connect timed out (resolving 'slow.test')"


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no setitimer")
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_interrupting_name_resolution(monkeypatch: pytest.MonkeyPatch, timeout: Any) -> None:
    """API.md: Ctrl-C interrupts the connect within about 100 ms; getaddrinfo held it off
    until the resolver gave up."""
    _slow_resolver(monkeypatch, 3)
    with ctrl_c_after():
        sslports.ssl_connect_enable_break("slow.test", 443, timeout=timeout)


@pytest.mark.parametrize("call", ["ssl_connect", "ssl_listen"])
def test_a_lookup_without_descriptors_says_so(call: str) -> None:
    """With every descriptor in use, glibc cannot read /etc/hosts and may say that
    "localhost" is not known: the error said "Name or service not known", errno None."""
    with _descriptors_exhausted(), pytest.raises(SSLNetworkError) as info:
        if call == "ssl_connect":
            sslports.ssl_connect("localhost", 443)
        else:
            sslports.ssl_listen(0, 5, False, "localhost")
    assert info.value.errno == errno.EMFILE, repr(info.value)
    assert f"cannot resolve 'localhost': {os.strerror(errno.EMFILE)}" in str(info.value)


def test_an_empty_hostname_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"^ssl_connect: hostname is empty$"):
        sslports.ssl_connect("", 443)
    with pytest.raises(ValueError, match=r"^ssl_listen: hostname is empty \(None binds every"):
        sslports.ssl_listen(0, 5, False, "")


def test_a_bracketed_ipv6_address_gets_a_hint() -> None:
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("[::1]", 443)
    assert str(info.value).endswith("; an IPv6 address is written without brackets here)")


# -- descriptors ---------------------------------------------------------------------------------


def test_failures_leave_no_descriptor_behind() -> None:
    dead, port = _refused_port(LOCAL)
    verifying = sslports.ssl_make_client_context()
    sslports.ssl_set_verify(verifying, True)  # TEST_PEM is self-signed: verification fails
    with dead, sslports.ssl_listen(0, 5, True, LOCAL, _server_ctx()) as listener:
        lport = sslports.ssl_addresses(listener, True)[1]
        # (the listener's wake-up pair, made at its first wait, lives as long as it does)
        join = in_thread(lambda: sslports.ssl_accept(listener), 10)
        while listener._wake is None:
            time.sleep(0.01)
        _close(*sslports.ssl_connect(LOCAL, lport, timeout=5), *join())
        before = _nfds()
        for _ in range(20):
            for timeout in (None, 5.0):
                with pytest.raises(SSLNetworkError):
                    sslports.ssl_connect(LOCAL, port, timeout=timeout)
            with pytest.raises(SSLNetworkError):
                sslports.ssl_listen(lport, 5, False, LOCAL)
            with pytest.raises(SSLNetworkError):
                sslports.ssl_listen(0, 5, False, "192.0.2.1")  # not ours: cannot be bound
            join = in_thread(lambda: sslports.ssl_accept(listener), 10)
            with pytest.raises(SSLNetworkError, match="certificate verify failed"):
                sslports.ssl_connect(LOCAL, lport, verifying, timeout=5)
            with pytest.raises(SSLNetworkError):
                join()
        assert _nfds() == before


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_sockets_are_not_inheritable(timeout: Any) -> None:
    with sslports.ssl_listen(0, 5, True, LOCAL, _server_ctx()) as listener:
        assert not os.get_inheritable(listener.fileno())
        cin, cout, sin, sout = _connect_and_accept(listener, LOCAL, timeout=timeout)
        for p in (cin, sin):
            assert not os.get_inheritable(p._sslports_conn.transport.sock.fileno())
        _close(cin, cout, sin, sout)


@contextlib.contextmanager
def _low_descriptors_taken(above: int) -> Iterator[None]:
    """Every descriptor below `above` in use (dups of /dev/null), so that the sockets made
    meanwhile get numbers above it: select() cannot wait on those (FD_SETSIZE is 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = above + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"the hard descriptor limit ({hard}) is below {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[int] = []
    try:
        while not held or held[-1] < above:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_descriptors_above_fd_setsize_connect_wait_and_time_out() -> None:
    """A service with more than 1024 descriptors open: the listener, the accepted socket and the
    client's socket all numbered above FD_SETSIZE. Connecting with a deadline, a read that
    times out and then reads, a write that waits for the peer to drain and the close all work:
    every wait is poll() (net.py, sp_conn.c), which has no such limit; select() would fail or
    overrun its fd_set there."""
    with _low_descriptors_taken(1100):
        before = set(os.listdir("/proc/self/fd"))
        with sslports.ssl_listen(0, 5, False, LOCAL, _server_ctx()) as listener:
            assert listener.fileno() >= 1100
            cin, cout, sin, sout = _connect_and_accept(listener, LOCAL, timeout=10)
            made = {int(fd) for fd in set(os.listdir("/proc/self/fd")) - before}
            assert len(made) >= 3 and min(made) >= 1100, made  # listener, accepted, client
            try:
                cin.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    cin.read(1)
                sout.write(b"after the timeout")
                sout.flush()
                assert cin.read(17) == b"after the timeout"
                # 8 MiB: more than both sockets' buffers hold, so the writer waits in poll()
                # for POLLOUT until the server, which starts reading 0.3 s later, drains it.
                body = os.urandom(1 << 23)

                def drain() -> bytes:
                    time.sleep(0.3)
                    got = bytearray()
                    while len(got) < len(body):
                        chunk = sin.read1(1 << 16)
                        assert chunk, "EOF before the whole body"
                        got += chunk
                    return bytes(got)

                join = in_thread(drain, 30)
                cout.settimeout(20)
                cout.write(body)
                cout.flush()
                assert join() == body
            finally:
                _close(cin, cout, sin, sout)
        assert _nfds_settle(len(before)) == len(before)


_ACCEPT_SIGNALS = r"""
import faulthandler, random, signal, sys, threading, time
import sslports as S

faulthandler.dump_traceback_later(40, exit=True)  # (a hang: stacks, and a failing exit)
which = sys.argv[1]
if which == "other-thread":
    # SIGINT taken by a thread other than the one waiting in ssl_accept (the kernel may hand a
    # process's signal to any thread that does not block it)
    lst = S.ssl_listen(0, 5, True, "127.0.0.1")
    release = threading.Event()
    bystander = threading.Thread(target=release.wait)
    bystander.start()
    threading.Timer(0.3, signal.pthread_kill, (bystander.ident, signal.SIGINT)).start()
    start = time.monotonic()
    try:
        S.ssl_accept(lst)
    except KeyboardInterrupt:
        print("interrupted after %.2f s" % (time.monotonic() - start))
    release.set()
else:
    # a SIGALRM handler that closes the listener ssl_accept waits on, at random moments
    current = [None]
    signal.signal(signal.SIGALRM, lambda *_: current[0].close())
    outcomes = {}
    for _ in range(600):
        current[0] = S.ssl_listen(0, 5, False, "127.0.0.1")
        signal.setitimer(signal.ITIMER_REAL, random.uniform(1e-6, 3e-4))
        try:
            S.ssl_accept(current[0])
            said = "accepted"
        except S.SSLNetworkError as e:
            said = str(e)
        signal.setitimer(signal.ITIMER_REAL, 0)
        current[0].close()
        outcomes[said] = outcomes.get(said, 0) + 1
    print(outcomes)
"""


def _accept_signals(which: str) -> str:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _ACCEPT_SIGNALS, which], capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX threads' signals")
def test_ssl_accept_hears_a_ctrl_c_that_another_thread_took() -> None:
    """ssl_accept waited for a connection in one unbounded poll(): a SIGINT the kernel handed
    to another thread (or that came just before the poll began) was handled only when a
    client connected, never on an idle listener. It now waits in 50 ms slices, as the pump
    does: the KeyboardInterrupt comes at the end of the slice."""
    said = _accept_signals("other-thread")
    assert said.startswith("interrupted after "), said


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
def test_a_signal_handler_that_closes_the_listener_ends_ssl_accept() -> None:
    """The usual way to stop an accept loop, a SIGTERM (here SIGALRM) handler that closes
    the listener: the handler runs in the thread waiting in ssl_accept, and when it came while
    that thread held the listener's lock (making the wake-up pair, counting itself in or out),
    close() waited for the lock for ever (a few in every few hundred). The lock is reentrant
    now, and each accept ends with 'listener is closed'."""
    said = _accept_signals("handler-closes")
    assert said == "{'ssl_accept: accept failed (listener is closed)': 600}", said


def _accept_closed_at_line(k: int) -> tuple[str, int]:
    """ssl_accept on a fresh listener that a 'signal handler' closes just before the k-th line
    the accept path runs in net.py (a tracer stands in for the handler: CPython runs handlers
    between the same bytecodes), or at its third wait if that comes first; what it ended with,
    and how many lines ran before that third wait."""
    lst = sslports.ssl_listen(0, 5, False, LOCAL)
    seen = [0, 0]  # lines, waits

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != sslports.net.__file__:
            return None
        if event == "call" and frame.f_code.co_name == "_wait_fds":
            seen[1] += 1
            if seen[1] == 3:
                lst.close()
        elif event == "line" and seen[1] < 3:
            seen[0] += 1
            if seen[0] == k:
                lst.close()
        return tracer

    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        sslports.ssl_accept(lst)
        said = "accepted"
    except SSLNetworkError as exc:
        said = str(exc)
    finally:
        sys.settrace(before)
        lst.close()
    return said, seen[0]


def test_a_close_at_any_line_of_the_accept_path_ends_ssl_accept() -> None:
    """test_a_signal_handler_that_closes_the_listener_ends_ssl_accept's random moments, made
    exhaustive: a close before each line ssl_accept runs, through its first two waits. A close
    between _wait_fds' check and its fileno() call passed fd -1 to poll.register, and ssl_accept
    raised ValueError ("file descriptor cannot be a negative integer") instead of
    SSLNetworkError (once in the official CI)."""
    said, lines = _accept_closed_at_line(0)
    outcomes = {said: [0]}
    assert lines > 20  # (the path's lines, through two waits)
    for k in range(1, lines + 1):
        outcomes.setdefault(_accept_closed_at_line(k)[0], []).append(k)
    assert list(outcomes) == ["ssl_accept: accept failed (listener is closed)"], outcomes


def _python_tls_server(count: int) -> tuple[socket.socket, threading.Thread]:
    """A Python ssl server (TEST_PEM) that echoes one line to each of `count` clients."""
    listener = socket.create_server((LOCAL, 0))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sslports.TEST_PEM)

    def serve() -> None:
        for _ in range(count):
            conn, _addr = listener.accept()
            conn.settimeout(10)
            with tls.wrap_socket(conn, server_side=True) as s:
                s.sendall(s.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_wrap_socket_keeps_the_socket_s_own_timeout() -> None:
    """ssl_wrap_socket without timeout= took over the socket and dropped its timeout
    (sock.settimeout(0.5)): against a server that says nothing, it waited for ever, where
    Python's ssl raises TimeoutError after 0.5 s, and the ports had no timeout (a server
    bounding silent clients by its sockets' timeout was held by each one). Now the socket's
    timeout bounds the handshake and becomes the ports' timeout; a non-blocking socket's 0
    does not (the ports take its blocking mode over); timeout= still decides when given."""
    with socket.create_server((LOCAL, 0)) as silent:
        sock = socket.create_connection(silent.getsockname())
        sock.settimeout(0.5)
        started = time.monotonic()
        wrap = in_thread(lambda: sslports.ssl_wrap_socket(sock, hostname="localhost"))
        with pytest.raises(TimeoutError):
            wrap(10)
        assert time.monotonic() - started < 5

    listener, serving = _python_tls_server(3)
    with listener:
        for own, given, expected in [(3.0, None, 3.0), (0.0, None, None), (3.0, 7.0, 7.0)]:
            sock = socket.create_connection(listener.getsockname())
            sock.settimeout(own)
            inp, out = sslports.ssl_wrap_socket(sock, hostname="localhost", timeout=given)
            with inp, out:
                assert (inp.gettimeout(), out.gettimeout()) == (expected, expected)
                out.write(b"hi\n")
                out.flush()
                assert inp.readline() == b"hi\n"
        serving.join(10)
