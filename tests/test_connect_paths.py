"""The per-connection fast paths of ssl_connect / ssl_accept (issue 5, handshake rate).

ssl_connect connects address literals without name resolution, uses a blocking connect()
when nothing bounds it and a non-blocking one waited for in Python under a timeout, and hands
the handshake a non-blocking TCP_NODELAY socket either way. ssl_accept does the same on its
side. Connection setup is one C call (sp_ctx_open_conn) fed from a verify policy the context
keeps up to date.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
import struct
import threading
from typing import Any, Callable

import pytest
from conftest import LOCAL, read_exactly

import sslports
from sslports import SSLNetworkError
from sslports._timing import _SLICE_MS
from sslports.ports import SOCKETS_MAY_BLOCK


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _sock(p: Any) -> _socket.socket:
    sock = p._sslports_conn.transport.sock
    assert isinstance(sock, _socket.socket)  # ssl_connect/ssl_accept: a bare one
    return sock


def _accept_in_thread(listener: Any) -> Callable[[], Any]:
    """Start ssl_accept on a thread; the returned function joins it and gives the ports."""
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(sslports.ssl_accept(listener)), daemon=True)
    t.start()

    def join() -> Any:
        t.join(20)
        return got[0]

    return join


def _check_tcp_socket(sock: _socket.socket) -> None:
    """TCP_NODELAY, and the blocking mode the pump relies on: where it passes MSG_DONTWAIT
    itself, a blocking descriptor whose receive timeout is the wait slice (a read that waits
    does it inside recv()); elsewhere a non-blocking one."""
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    if SOCKETS_MAY_BLOCK:
        assert os.get_blocking(sock.fileno()) is True
        tv = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("ll"))
        sec, usec = struct.unpack("ll", tv)
        assert _SLICE_MS <= (sec * 1_000_000 + usec) / 1000 <= _SLICE_MS + 20  # kernel ticks
    else:
        assert os.get_blocking(sock.fileno()) is False


@pytest.mark.parametrize("timeout", [None, 20.0])
def test_address_literal_needs_no_resolver(
    pki: Any, echo_server: Any, monkeypatch: pytest.MonkeyPatch, timeout: Any
) -> None:
    server = echo_server(pki.server_context())

    def no_resolver(*args: Any, **kw: Any) -> Any:
        raise AssertionError("getaddrinfo called for an address literal")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolver)
    inp, out = sslports.ssl_connect(LOCAL, server.port, pki.client_context(), timeout=timeout)
    with inp, out:
        _check_tcp_socket(_sock(inp))
        out.write(b"ping")
        out.flush()
        assert read_exactly(inp, 4) == b"ping"


@pytest.mark.parametrize("timeout", [None, 20.0])
def test_names_still_resolve_and_try_each_address(pki: Any, echo_server: Any, timeout: Any) -> None:
    # "localhost" may resolve to ::1 first, where nothing listens: the next address is tried.
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context(), timeout=timeout)
    with inp, out:
        _check_tcp_socket(_sock(inp))
        assert sslports.ssl_addresses(inp, True)[3] == server.port


def test_accepted_sockets_have_nodelay_and_the_pumps_blocking_mode(pki: Any) -> None:
    listener = sslports.ssl_listen(0, 5, True, LOCAL, pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    with listener:
        accepted = _accept_in_thread(listener)
        inp, out = sslports.ssl_connect(LOCAL, port, pki.client_context())
        sin, sout = accepted()
        with inp, out, sin, sout:
            sock = _sock(sin)
            _check_tcp_socket(sock)
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
            local, lport, peer, pport = sslports.ssl_addresses(sin, True)
            assert (local, lport, peer) == (LOCAL, port, LOCAL)
            assert pport == sslports.ssl_addresses(inp, True)[1]


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_refused_connect_reports_errno(timeout: Any) -> None:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect(LOCAL, port, timeout=timeout)
    assert info.value.errno == errno.ECONNREFUSED
    assert str(info.value).startswith("ssl_connect: connect failed (")
    assert f"{LOCAL}:{port}" in str(info.value)
    assert os.strerror(errno.ECONNREFUSED) in str(info.value)  # the system's own text


def test_socket_default_timeout_does_not_leak_into_ports(
    pki: Any, echo_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = echo_server(pki.server_context())
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        inp, out = sslports.ssl_connect(LOCAL, server.port, pki.client_context())
    finally:
        socket.setdefaulttimeout(old)
    with inp, out:
        _check_tcp_socket(_sock(inp))
        assert inp.gettimeout() is None


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("timeout", [None, 20.0])
def test_ipv6_literal(pki: Any, timeout: Any) -> None:
    listener = sslports.ssl_listen(0, 5, True, "::1", pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    with listener:
        accepted = _accept_in_thread(listener)
        ctx = pki.client_context(verify=False)
        inp, out = sslports.ssl_connect("::1", port, ctx, timeout=timeout)
        sin, sout = accepted()
        with inp, out, sin, sout:
            assert _sock(inp).family == socket.AF_INET6
            _check_tcp_socket(_sock(sin))
            out.write(b"six")
            out.flush()
            assert read_exactly(sin, 3) == b"six"


def _connect_and_keep_session(host: str, port: int, ctx: Any) -> None:
    """One connection whose TLS 1.3 tickets surely arrived (an echo after the handshake)."""
    inp, out = sslports.ssl_connect(host, port, ctx)
    with inp, out:
        out.write(b"t")
        out.flush()
        assert read_exactly(inp, 1) == b"t"


def test_verify_policy_changes_reach_new_connections(pki: Any, echo_server: Any) -> None:
    """The context caches the policy each connection starts with: a change must show, and a
    session made under the old policy must not be resumed (resumption skips verification)."""
    rogue = echo_server(pki.server_context(chain=pki.rogue_chain, key=pki.rogue_key))
    ctx = pki.client_context(verify=False)
    _connect_and_keep_session(LOCAL, rogue.port, ctx)  # not verified: fine
    _connect_and_keep_session(LOCAL, rogue.port, ctx)
    sslports.ssl_set_verify(ctx, True)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect(LOCAL, rogue.port, ctx)
    assert info.value.verify_code is not None
    sslports.ssl_set_verify(ctx, False)
    sslports.ssl_try_verify(ctx, True)  # asks, but lets it through
    _connect_and_keep_session(LOCAL, rogue.port, ctx)
    inp, out = sslports.ssl_connect(LOCAL, rogue.port, ctx)
    with inp, out:
        assert sslports.ssl_session_reused(inp)  # same policy: resumed
        assert not sslports.ssl_peer_verified(inp)


def test_hostname_policy_change_reaches_new_connections(pki: Any, echo_server: Any) -> None:
    other = echo_server(pki.server_context(chain=pki.other_chain, key=pki.other_key))
    ctx = pki.client_context(verify=False)
    sslports.ssl_set_verify(ctx, True)  # the chain is good; the name is not "localhost"
    _connect_and_keep_session("localhost", other.port, ctx)
    sslports.ssl_set_verify_hostname(ctx, True)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("localhost", other.port, ctx)
    assert info.value.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH


def test_alpn_and_session_through_one_setup_call(pki: Any) -> None:
    """ALPN offer and automatic resumption both go through the single setup call."""
    sctx = pki.server_context()
    sslports.ssl_set_server_alpn(sctx, [b"h2", b"http/1.1"])
    listener = sslports.ssl_listen(0, 5, True, LOCAL, sctx)
    port = sslports.ssl_addresses(listener, True)[1]
    ctx = pki.client_context()
    with listener:
        for attempt in range(2):
            accepted = _accept_in_thread(listener)
            inp, out = sslports.ssl_connect(LOCAL, port, ctx, alpn=[b"http/1.1"])
            sin, sout = accepted()
            with sin, sout:
                assert sslports.ssl_get_alpn_selected(inp) == b"http/1.1"
                out.write(b"x")
                out.flush()
                assert read_exactly(sin, 1) == b"x"  # the server's tickets arrive meanwhile
                sout.write(b"y")
                sout.flush()
                assert read_exactly(inp, 1) == b"y"
                assert sslports.ssl_session_reused(inp) == (attempt == 1)
                inp.close()
                out.close()


def test_bad_alpn_setup_is_reported_as_such(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    with pytest.raises(ValueError):
        sslports.ssl_connect(LOCAL, server.port, pki.client_context(), alpn=[b""])
