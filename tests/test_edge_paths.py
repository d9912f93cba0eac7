"""Edges a user can reach on Linux/CPython that no other test ran (found by measuring the
suite's branch coverage, every test and child Python included): each test drives one from the
public API, with real sockets and peers, and checks what API.md says a user sees.

* a client that goes away before the server's ssl_set_verify on the port: an SSLError, not a
  wait for an answer that never comes;
* an ``error=`` callable that returns something other than an exception: SSLError stands;
* an input stream with only ``read`` (no ``readinto``) under a timeout (the receiver thread);
* ssl_addresses of ports over a socket that is not TCP (ssl_wrap_socket of an AF_UNIX pair);
* ``detach()``, which a port cannot do (io.UnsupportedOperation);
* argument errors: a negative backlog, a non-str protocol name for ``encrypt``, NUL bytes in
  paths and passwords, text where key data must be bytes, a win32-store name that is no str;
* aio: wrap_ssl_streams that fails before its handshake closes the raw writer, as it says;
* ssl_peer_certificate_hostnames of a certificate whose names take more than the first
  buffer (4 KiB): every name, in order;
* ssl_set_verify / ssl_try_verify on an aio connection: an SSLError that says why.
"""

from __future__ import annotations

import asyncio
import io
import socket
from typing import Any, Callable

import pytest
from certs import chain_file, in_thread, key_file, make_cert

import sslports
from sslports import SSLError, aio

LOCAL = "127.0.0.1"


def _server_ctx(version: str = "auto") -> sslports.SSLServerContext:
    return sslports.ssl_make_server_context(
        version, private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM
    )


def _close(*ports: Any) -> None:
    for p in ports:
        p.close()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_reverifying_a_client_that_went_away_is_an_error(version: str) -> None:
    """The server asks the client for a certificate on an established connection (TLS 1.2:
    renegotiation; TLS 1.3: post-handshake authentication) after the client closed: the
    connection's end during the request is ssl_set_verify's failure, at once; not a
    timeout, not a success."""
    with sslports.ssl_listen(0, 5, False, LOCAL, _server_ctx(version)) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        join = in_thread(lambda: sslports.ssl_accept(listener), 20)
        cin, cout = sslports.ssl_connect(LOCAL, port, version)
        sin, sout = join()
        _close(cout, cin)  # (no close_notify is read by the server before the request)
        sin.settimeout(20)  # a wait for the client's answer fails the test, not hangs it
        with pytest.raises(SSLError) as info:
            sslports.ssl_set_verify(sin, True)
        assert not isinstance(info.value, TimeoutError)
        assert str(info.value).startswith("ssl_set_verify: failed (")
        assert not sslports.ssl_peer_verified(sin)
        _close(sin, sout)


def test_an_error_callable_that_returns_no_exception_leaves_ssl_error() -> None:
    """``error=`` may be a callable that raises; one that returns something else (None here)
    makes no exception: the failure is raised as SSLError with its message, not lost and
    not a TypeError from raising None."""
    calls: list[str] = []

    def returns_none(message: str) -> None:
        calls.append(message)

    a, b = socket.socketpair()

    def reset_peer() -> None:
        b.recv(1)  # (the ClientHello came) unread data, then linger 0: an RST
        b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        b.close()

    join = in_thread(reset_peer, 20)
    with a, a.makefile("rb") as rin, a.makefile("wb") as rout, pytest.raises(SSLError) as info:
        sslports.ports_to_ssl_ports(rin, rout, mode="connect", error=returns_none)
    join()
    assert type(info.value) is SSLError
    assert str(info.value).startswith("ports_to_ssl_ports: connect failed (")
    assert calls == [str(info.value)]


class _ReadOnlyStream:
    """A transport with read() and write() only (no readinto, read1, flush)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def read(self, n: int) -> bytes:
        return self.sock.recv(n)

    def write(self, data: Any) -> int:
        self.sock.sendall(data)
        return len(data)


def test_a_stream_with_only_read_works_under_a_timeout() -> None:
    """API.md: the engine uses readinto1/read1, else readinto/read. With a timeout the
    stream's reads run in the receiver thread; a stream that has only read() must work
    there too, both ways, and a read that outlasts the timeout is a TimeoutError."""
    a, b = socket.socketpair()
    with a, b:
        ca, cb = _ReadOnlyStream(a), _ReadOnlyStream(b)
        join = in_thread(
            lambda: sslports.ports_to_ssl_ports(
                cb, cb, mode="accept", context=_server_ctx(), timeout=20
            ),
            30,
        )
        cin, cout = sslports.ports_to_ssl_ports(ca, ca, mode="connect", timeout=20)
        sin, sout = join()
        cout.write(b"ping\n")
        cout.flush()
        assert sin.readline() == b"ping\n"
        sout.write(b"pong\n")
        sout.flush()
        assert cin.readline() == b"pong\n"
        cin.settimeout(0.2)
        with pytest.raises(TimeoutError):
            cin.read(1)
        sout.write(b"late")
        sout.flush()
        cin.settimeout(20)
        assert cin.read(4) == b"late"  # (the read that timed out lost nothing)
        _close(cin, cout, sin, sout)


def test_addresses_of_ports_over_a_unix_socket_is_ssl_error() -> None:
    """API.md: ssl_addresses raises SSLError (not connected to TCP port) for ports that are
    not over TCP, here ssl_wrap_socket over an AF_UNIX pair."""
    a, b = socket.socketpair()
    join = in_thread(lambda: sslports.ssl_wrap_socket(b, mode="accept", context=_server_ctx()))
    cin, cout = sslports.ssl_wrap_socket(a, mode="connect")
    sin, sout = join()
    for port in (cin, cout, sin):
        with pytest.raises(SSLError, match=r"^ssl_addresses: not connected to TCP port$"):
            sslports.ssl_addresses(port, True)
    _close(cin, cout, sin, sout)


def test_ports_cannot_detach() -> None:
    """io.BufferedIOBase.detach(): a port has no raw stream to hand over, and says so with
    io.UnsupportedOperation; the port stays usable."""
    a, b = socket.socketpair()
    join = in_thread(lambda: sslports.ssl_wrap_socket(b, mode="accept", context=_server_ctx()))
    cin, cout = sslports.ssl_wrap_socket(a, mode="connect")
    sin, sout = join()
    for port in (cin, cout):
        with pytest.raises(io.UnsupportedOperation):
            port.detach()
    cout.write(b"still here")
    cout.flush()
    assert sin.read(10) == b"still here"
    _close(cin, cout, sin, sout)


def _raises(exc: type[BaseException], func: str, call: Callable[[], Any]) -> None:
    with pytest.raises(exc, match=rf"^{func}: "):
        call()


def test_argument_errors_name_the_function() -> None:
    """API.md: wrong types are TypeError, malformed values ValueError, naming the function."""
    _raises(ValueError, "ssl_listen", lambda: sslports.ssl_listen(0, -1))
    _raises(
        TypeError,
        "ports_to_ssl_ports",
        lambda: sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), encrypt=5),  # type: ignore[arg-type]
    )
    ctx = sslports.ssl_make_server_context()
    pem = str(sslports.TEST_PEM)
    _raises(
        ValueError,
        "ssl_load_certificate_chain",
        lambda: sslports.ssl_load_certificate_chain(ctx, pem + "\0.txt"),
    )
    _raises(
        ValueError,
        "ssl_load_private_key",
        lambda: sslports.ssl_load_private_key(ctx, pem, password="a\0b"),
    )
    _raises(
        TypeError,
        "ssl_make_server_context",
        lambda: sslports.ssl_make_server_context(private_key=("pem-data", pem)),  # type: ignore[arg-type]
    )
    _raises(
        TypeError,
        "ssl_load_verify_source",
        lambda: sslports.ssl_load_verify_source(
            sslports.ssl_make_client_context(), ("win32-store", 1)
        ),
    )


def test_wrap_ssl_streams_closes_the_raw_writer_when_it_cannot_start() -> None:
    """A context that verifies host names and no hostname: wrap_ssl_streams fails before the
    handshake, and (its docstring) the raw writer is closed, so the peer sees the end."""

    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read())  # EOF, once the other side's writer closed
            writer.close()

        server = await asyncio.start_server(peer, LOCAL, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection(LOCAL, port)
            with pytest.raises(SSLError, match="hostname not provided for verification"):
                await aio.wrap_ssl_streams(
                    reader, writer, context=sslports.ssl_secure_client_context()
                )
            assert writer.is_closing()
            await asyncio.wait_for(writer.wait_closed(), 10)
            return await asyncio.wait_for(got, 10)

    assert asyncio.run(main()) == b""


def test_verify_now_on_an_aio_connection_says_to_use_the_context() -> None:
    """ssl_set_verify / ssl_try_verify on an sslports.aio reader or writer cannot renegotiate
    from a synchronous call: an SSLError that says where to set it, and the connection goes
    on."""

    async def main() -> bytes:
        async def echo(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await aio.start_ssl_server(echo, LOCAL, 0, _server_ctx())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection(LOCAL, port, "auto", timeout=10)
            for call in (sslports.ssl_set_verify, sslports.ssl_try_verify):
                with pytest.raises(SSLError, match=r"not supported on asyncio connections"):
                    call(writer, True)
            writer.write(b"still here\n")
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            await writer.wait_closed()
            return line

    assert asyncio.run(main()) == b"still here\n"


def test_all_names_of_a_certificate_with_many_sans() -> None:
    """A server certificate with 300 DNS names (a CDN's shared certificate has hundreds):
    ssl_peer_certificate_hostnames returns them all, in the certificate's order, not the
    part that fits the first buffer; ssl_peer_check_hostname finds the last one."""
    names = [f"host-{i:03d}.a-rather-long-subdomain-label.example.test" for i in range(300)]
    leaf = make_cert("many", dns=names)
    ctx = sslports.ssl_make_server_context(
        private_key=("pem", key_file(leaf)), certificate_chain=chain_file(leaf)
    )
    with sslports.ssl_listen(0, 5, False, LOCAL, ctx) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        join = in_thread(lambda: sslports.ssl_accept(listener), 20)
        cin, cout = sslports.ssl_connect(LOCAL, port)
        sin, sout = join()
        assert sum(map(len, names)) > 4096
        assert sslports.ssl_peer_certificate_hostnames(cin) == names
        assert sslports.ssl_peer_check_hostname(cin, names[-1])
        _close(cin, cout, sin, sout)
