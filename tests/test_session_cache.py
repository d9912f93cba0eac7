"""What a client context's session cache offers, and when it stops offering it.

* A TLS 1.3 ticket is offered once (RFC 8446 C.4): it travels in the clear, and a ticket
  offered by several connections links them for anyone watching.
* A session the server did not resume is not offered again (declined once, it is declined
  again, each time in the clear, for as long as the server's ticket lifetime).
* A cipher change forgets the sessions made under the old ciphers: a server must not go on
  resuming a suite it no longer allows, and a client must not offer a session whose suite it
  no longer offers (a TLS 1.2 server answers that with a fatal alert).
* TLS 1.2 without the extended master secret (RFC 7627): such a session is not resumed by our
  clients, and tls-unique is refused on one resumed anyway (the triple handshake makes two
  such connections' Finished messages alike).

What each ClientHello offers is read on the wire, by a relay between the client and the server
(`HelloRelay`). Real sockets on 127.0.0.1, sslports, Python's ``ssl`` and ``openssl s_server``
as servers.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from certs import (
    LOCAL,
    VERSIONS,
    BackgroundServer,
    Issued,
    chain_file,
    client_context,
    echo_line,
    key_file,
    make_cert,
    server_context,
)

import sslports
from sslports import SSLError, SSLNetworkError

LINGER_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection

# OpenSSL 3's SSL_OP_NO_EXTENDED_MASTER_SECRET (the ssl module has no name for it)
OP_NO_EXTENDED_MASTER_SECRET = 1 << 0


@dataclass
class Pki:
    root: Path
    server: Issued


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = make_cert("Session Cache Root", ca=True)
    server = make_cert("localhost", issuer=root, dns=["localhost"], ips=["127.0.0.1"])
    return Pki(root=chain_file(root), server=server)


@dataclass
class Offer:
    """What one ClientHello offers to resume: a TLS 1.2 session id and ticket, a TLS 1.3
    PSK identity (the ticket). Empty bytes: nothing of that kind."""

    session_id: bytes
    ticket: bytes
    psk_identity: bytes

    def offered(self, version: str) -> bytes:
        """The session this hello offers: its ticket (TLS 1.3: PSK identity; TLS 1.2: the
        session_ticket extension), else its TLS 1.2 session id; b"" for none. (A TLS 1.3
        hello's session id is a middlebox-compatibility random, not a session.)"""
        if version == "tls13":
            return self.psk_identity
        return self.ticket or self.session_id


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the client closed inside its ClientHello")
        data += chunk
    return data


def _parse_client_hello(body: bytes) -> Offer:
    """RFC 8446 4.1.2 / RFC 5246 7.4.1.2, after the handshake header."""
    p = 2 + 32  # legacy_version, random
    sid = body[p + 1 : p + 1 + body[p]]
    p += 1 + body[p]
    p += 2 + struct.unpack_from(">H", body, p)[0]  # cipher_suites
    p += 1 + body[p]  # compression methods
    end = p + 2 + struct.unpack_from(">H", body, p)[0]
    p += 2
    ticket = psk = b""
    while p < end:
        kind, size = struct.unpack_from(">HH", body, p)
        ext = body[p + 4 : p + 4 + size]
        p += 4 + size
        if kind == 35:  # session_ticket
            ticket = ext
        elif kind == 41:  # pre_shared_key: identities<7..2^16-1>, the first one
            first = struct.unpack_from(">H", ext, 2)[0]
            psk = ext[4 : 4 + first]
    return Offer(sid, ticket, psk)


class HelloRelay:
    """A TCP relay on 127.0.0.1 to `backend` (a port, changeable between connections): it
    parses each connection's ClientHello into `offers`, then copies bytes both ways."""

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.offers: list[Offer] = []
        self.listener = socket.create_server((LOCAL, 0))
        self.port = self.listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _addr = self.listener.accept()
            except OSError:  # closed
                return
            self._socks.append(client)
            t = threading.Thread(target=self._relay, args=(client, self.backend), daemon=True)
            self._threads.append(t)
            t.start()

    def _relay(self, client: socket.socket, backend: int) -> None:
        try:
            header = _read_exactly(client, 5)
            record = _read_exactly(client, struct.unpack(">H", header[3:5])[0])
            assert header[0] == 22 and record[0] == 1, "not a ClientHello"
            size = int.from_bytes(record[1:4], "big")
            assert size <= len(record) - 4, "a ClientHello in more than one record"
            self.offers.append(_parse_client_hello(record[4 : 4 + size]))
        except (OSError, EOFError):
            client.close()
            return
        server = socket.create_connection((LOCAL, backend))
        self._socks.append(server)
        server.sendall(header + record)
        back = threading.Thread(target=_copy, args=(server, client), daemon=True)
        back.start()
        _copy(client, server)
        back.join(30)
        client.close()
        server.close()

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(10)


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF, then pass the EOF on (a reset or a closed socket ends it too)."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def relays() -> Iterator[list[HelloRelay]]:
    made: list[HelloRelay] = []
    yield made
    for relay in made:
        relay.close()


def _echo_server(servers: list[BackgroundServer], ctx: Any) -> BackgroundServer:
    server = BackgroundServer(ctx, echo_line)
    servers.append(server)
    return server


def _talk(inp: Any, out: Any) -> None:
    out.write(b"hi\n")
    out.flush()
    assert inp.readline() == b"hi\n"  # (TLS 1.3: the server's tickets came before it)


def _connect(port: int, ctx: Any, talk: bool = True) -> tuple[bool, str]:
    """One connection: (resumed, cipher), after one echoed line."""
    inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=10)
    with inp, out:
        facts = (sslports.ssl_session_reused(inp), sslports.ssl_cipher_name(inp))
        if talk:
            _talk(inp, out)
        return facts


# -- TLS 1.3 tickets are used once ----------------------------------------------------------------


def test_tls13_ticket_is_offered_by_one_connection_only(
    pki: Pki, relays: list[HelloRelay], servers: list[BackgroundServer]
) -> None:
    """A pool of three connections opened together after a first one got the server's two
    tickets: two resume, each with a ticket of its own, the third makes a full handshake.
    (Before: all three offered the first connection's newest ticket.)"""
    server = _echo_server(servers, server_context("tls13", pki.server))
    relay = HelloRelay(server.port)
    relays.append(relay)
    ctx = client_context("tls13", roots=[pki.root])
    assert _connect(relay.port, ctx)[0] is False  # two tickets arrive with the echo

    pool = [sslports.ssl_connect("localhost", relay.port, ctx, timeout=10) for _ in range(3)]
    reused = [sslports.ssl_session_reused(inp) for inp, _out in pool]
    for inp, out in pool:
        with inp, out:
            _talk(inp, out)

    offered = [offer.psk_identity for offer in relay.offers[1:]]
    assert reused == [True, True, False], offered
    assert offered[0] and offered[1] and offered[0] != offered[1]
    assert offered[2] == b""
    assert relay.offers[0].psk_identity == b""


def test_tls13_sequential_connections_keep_resuming_with_fresh_tickets(
    pki: Pki, relays: list[HelloRelay], servers: list[BackgroundServer]
) -> None:
    """Each resumed connection gets a new ticket from the server: one connection after another
    resumes for ever, and no ticket is offered twice."""
    server = _echo_server(servers, server_context("tls13", pki.server))
    relay = HelloRelay(server.port)
    relays.append(relay)
    ctx = client_context("tls13", roots=[pki.root])
    reused = [_connect(relay.port, ctx)[0] for _ in range(8)]
    assert reused == [False] + [True] * 7
    identities = [offer.psk_identity for offer in relay.offers[1:]]
    assert all(identities) and len(set(identities)) == len(identities)


# -- a session the server declined is not offered again ----------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_declined_session_is_not_offered_again(
    pki: Pki,
    relays: list[HelloRelay],
    servers: list[BackgroundServer],
    openssl_tool: Any,
    version: str,
) -> None:
    """The peer behind a name changes to a server that resumes nothing and issues nothing
    (`openssl s_server` without tickets or a session cache; a restart with new ticket keys
    looks the same): the session offered once and declined is forgotten, not offered in the
    clear by every later connection. (Before: TLS 1.2 and 1.3 offered it again each time.)"""
    first = _echo_server(servers, server_context(version, pki.server))
    relay = HelloRelay(first.port)
    relays.append(relay)
    ctx = client_context(version, roots=[pki.root])
    assert _connect(relay.port, ctx)[0] is False
    assert _connect(relay.port, ctx)[0] is True  # the cache works with this server

    no_sessions = ["-no_ticket", "-no_cache"] if version == "tls12" else ["-num_tickets", "0"]
    flag = "-tls1_2" if version == "tls12" else "-tls1_3"
    credentials = ["-cert", str(chain_file(pki.server)), "-key", str(key_file(pki.server))]
    _proc, port = openssl_tool.s_server([*credentials, flag, *no_sessions, "-quiet"])
    relay.backend = port
    for _ in range(3):
        assert _connect(relay.port, ctx, talk=False)[0] is False

    offered = [offer.offered(version) for offer in relay.offers]
    assert offered[0] == b"" and offered[1] != b""
    assert offered[2] != b"", "the cached session was not offered to the new server"
    assert offered[3] == offered[4] == b"", offered


def test_a_reset_connection_costs_only_its_own_session(pki: Pki) -> None:
    """TLS 1.3: a pooled connection that the server resets (an idle keep-alive connection
    dropped) while other connections got fresh tickets: a reset is a transport failure, not a
    TLS one, and the next connection still resumes with another connection's ticket. (The
    first version of the ticket queue forgot every ticket of the peer at any failure.)"""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sctx.load_cert_chain(str(chain_file(pki.server)), str(key_file(pki.server)))
    listener = socket.create_server((LOCAL, 0))
    reset_now = threading.Event()

    def handle(raw: socket.socket, first: bool) -> None:
        with sctx.wrap_socket(raw, server_side=True) as conn:
            conn.sendall(conn.recv(3))
            if first:
                reset_now.wait(30)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
            else:
                conn.recv(1)  # until the client closes

    def serve() -> None:
        for n in range(4):
            raw, _addr = listener.accept()
            threading.Thread(target=handle, args=(raw, n == 0), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        ctx = client_context("tls13", roots=[pki.root])
        inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=10)
        with inp, out:
            _talk(inp, out)  # (its two tickets come with the echo)
            assert [_connect(port, ctx)[0] for _ in range(2)] == [True, True]
            reset_now.set()
            with pytest.raises(SSLNetworkError, match="reset"):
                inp.read1(10)
        assert _connect(port, ctx)[0] is True
    finally:
        reset_now.set()
        listener.close()


# -- cipher changes --------------------------------------------------------------------------------


def test_server_does_not_resume_a_suite_it_no_longer_allows(
    pki: Pki, servers: list[BackgroundServer]
) -> None:
    """TLS 1.2: a server that narrows its ciphers (dropping a CBC suite) on a live context must
    not resume sessions made with the suite it dropped. (Before: clients that held a session
    got the dropped suite on every resumed connection, up to the session's lifetime.)"""
    sctx = server_context("tls12", pki.server, ciphers="ECDHE-ECDSA-AES128-SHA")
    server = _echo_server(servers, sctx)
    ctx = client_context("tls12", roots=[pki.root])
    assert _connect(server.port, ctx) == (False, "ECDHE-ECDSA-AES128-SHA")
    assert _connect(server.port, ctx) == (True, "ECDHE-ECDSA-AES128-SHA")

    sslports.ssl_set_ciphers(sctx, "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert _connect(server.port, ctx) == (False, "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert _connect(server.port, ctx) == (True, "ECDHE-ECDSA-AES128-GCM-SHA256")


def test_client_cipher_change_does_not_fail_the_next_connect(
    pki: Pki, servers: list[BackgroundServer]
) -> None:
    """TLS 1.2: after ssl_set_ciphers on a client context, the next connect to a peer whose
    session used a suite no longer offered is a full handshake. (Before: it offered that
    session, and the server refused the connection: "illegal parameter".)"""
    server = _echo_server(servers, server_context("tls12", pki.server))
    ctx = client_context("tls12", roots=[pki.root])
    sslports.ssl_set_ciphers(ctx, "ECDHE-ECDSA-AES256-GCM-SHA384")
    assert _connect(server.port, ctx) == (False, "ECDHE-ECDSA-AES256-GCM-SHA384")
    sslports.ssl_set_ciphers(ctx, "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert _connect(server.port, ctx) == (False, "ECDHE-ECDSA-CHACHA20-POLY1305")
    assert _connect(server.port, ctx) == (True, "ECDHE-ECDSA-CHACHA20-POLY1305")


def test_server_suite_change_tls13_clients_resume_again(
    pki: Pki, servers: list[BackgroundServer]
) -> None:
    """TLS 1.3: a server's ssl_set_ciphersuites makes its clients' tickets unusable (its
    session id context changes). OpenSSL 3.0's server, declining a ticket, sends no new ones
    (3.5's does); the client then forgets that peer's tickets, so the connection after brings
    new ones and the one after that resumes. (Before, on 3.0: the declined tickets stayed
    cached, were offered by every connection, no new one came, and no client resumed again for
    the tickets' lifetime.)"""
    sctx = server_context("tls13", pki.server)
    sslports.ssl_set_ciphersuites(sctx, "TLS_AES_128_GCM_SHA256")
    server = _echo_server(servers, sctx)
    ctx = client_context("tls13", roots=[pki.root])
    assert _connect(server.port, ctx) == (False, "TLS_AES_128_GCM_SHA256")
    assert _connect(server.port, ctx) == (True, "TLS_AES_128_GCM_SHA256")

    sslports.ssl_set_ciphersuites(sctx, "TLS_AES_256_GCM_SHA384")
    after = [_connect(server.port, ctx) for _ in range(4)]
    assert {cipher for _resumed, cipher in after} == {"TLS_AES_256_GCM_SHA384"}
    resumed = [resumed for resumed, _cipher in after]
    assert resumed in ([False, False, True, True], [False, True, True, True]), resumed


# -- TLS 1.2 without the extended master secret --------------------------------------------------


def _python_tls12_server(pki: Pki, ems: bool) -> tuple[socket.socket, ssl.SSLContext]:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(chain_file(pki.server)), str(key_file(pki.server)))
    sctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if not ems:
        sctx.options |= OP_NO_EXTENDED_MASTER_SECRET
    return socket.create_server((LOCAL, 0)), sctx


def _serve_python(listener: socket.socket, sctx: ssl.SSLContext, count: int) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            raw, _addr = listener.accept()
            with sctx.wrap_socket(raw, server_side=True) as conn:
                conn.sendall(conn.recv(3))
                conn.recv(1)  # until the client closes

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ems", [True, False], ids=["ems", "no-ems"])
def test_client_resumes_tls12_only_with_the_extended_master_secret(pki: Pki, ems: bool) -> None:
    """Against a TLS 1.2 server without the extended master secret, every connection is a full
    handshake (RFC 7627 5.3: such sessions are not offered); with it, the second resumes.
    (Before: the session was resumed, and tls-unique given on it.)"""
    listener, sctx = _python_tls12_server(pki, ems)
    thread = _serve_python(listener, sctx, 3)
    port = listener.getsockname()[1]
    try:
        ctx = client_context("tls12", roots=[pki.root])
        reused = []
        for _ in range(3):
            inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=10)
            with inp, out:
                reused.append(sslports.ssl_session_reused(inp))
                # a full handshake: tls-unique is the client's Finished, with or without EMS
                assert sslports.ssl_default_channel_binding(inp)[0] == "tls-unique"
                out.write(b"abc")
                out.flush()
                assert inp.read(3) == b"abc"
        assert reused == ([False, True, True] if ems else [False, False, False])
    finally:
        thread.join(30)
        listener.close()


def test_server_refuses_tls_unique_on_a_session_resumed_without_ems(
    pki: Pki, servers: list[BackgroundServer]
) -> None:
    """A client that resumes a TLS 1.2 session made without the extended master secret (Python's
    ``ssl`` passing ``session=``): our server's tls-unique of that connection is refused, as
    is the default binding (tls-unique on TLS 1.2); tls-server-end-point still answers. On the
    full handshake before it, tls-unique is given. (Before: given on both.)"""
    seen: list[Any] = []

    def handler(inp: Any, out: Any) -> None:
        facts: list[Any] = [sslports.ssl_session_reused(inp)]
        for kind in ("tls-unique", "default", "tls-server-end-point"):
            try:
                if kind == "default":
                    facts.append(sslports.ssl_default_channel_binding(inp))
                else:
                    facts.append(sslports.ssl_channel_binding(inp, kind))
            except SSLError as exc:
                facts.append(exc)
        seen.append(facts)
        echo_line(inp, out)

    server = BackgroundServer(server_context("tls12", pki.server), handler)
    servers.append(server)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(str(pki.root))
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    cctx.options |= OP_NO_EXTENDED_MASTER_SECRET
    session: Optional[ssl.SSLSession] = None
    for _ in range(2):
        with (
            socket.create_connection((LOCAL, server.port)) as raw,
            cctx.wrap_socket(raw, server_hostname="localhost", session=session) as conn,
        ):
            conn.sendall(b"hi\n")
            assert conn.recv(3) == b"hi\n"
            session = conn.session
    assert len(seen) == 2
    full, resumed = seen
    assert full[0] is False and isinstance(full[1], bytes) and full[2][0] == "tls-unique"
    assert resumed[0] is True
    for refused in resumed[1:3]:
        assert isinstance(refused, SSLError), resumed
        assert "extended master secret" in str(refused)
    assert resumed[3] == full[3]  # tls-server-end-point: the same certificate
