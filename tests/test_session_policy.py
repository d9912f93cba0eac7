"""Which sessions a server resumes, and hostnames that fold into patterns.

A server resumes a session without asking for a certificate again, so a session must never be
resumed where the policy asks for more than it had when it was made:

* a client that got a session from a server context that did not verify clients must not
  resume it after ``ssl_set_verify(context, True)``: "require a valid peer certificate on later
  connections" (API.md section 5);
* a client that got a session under SNI name A (a context that does not verify clients) must
  not resume it under SNI name B, whose context (switched to by the SNI callback) requires a
  client certificate: that would skip client authentication altogether.

Hostname verification: the rule "a reference name is never a pattern" must hold after IDNA
encoding too (look-alike asterisks fold to '*').

Real sockets on 127.0.0.1, certificates from certs.py, the system OpenSSL.
"""

from __future__ import annotations

import socket
import ssl
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
    Server,
    chain_file,
    client_context,
    close_all,
    echo_line,
    in_thread,
    key_data,
    make_cert,
    outcome,
    server_context,
    subject_hash,
    wrap_client,
)

import sslports
from sslports import SSLNetworkError


@dataclass
class Pki:
    root: Path
    server: Issued  # localhost, open.test, secure.test
    client: Issued
    client2: Issued
    server2: Issued  # localhost, another key and subject


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = make_cert("Review Root CA", ca=True)
    return Pki(
        root=chain_file(root),
        server=make_cert(
            "localhost",
            issuer=root,
            dns=["localhost", "open.test", "secure.test"],
            ips=["127.0.0.1"],
        ),
        client=make_cert("review client", issuer=root),
        client2=make_cert("second client", issuer=root),
        server2=make_cert("second server", issuer=root, dns=["localhost"]),
    )


def _facts(inp: Any, out: Any) -> tuple[bool, bool]:
    """Server side: (resumed, peer verified), after one echoed line."""
    facts = (sslports.ssl_session_reused(inp), sslports.ssl_peer_verified(inp))
    echo_line(inp, out)
    return facts


def _connect(port: int, ctx: sslports.SSLClientContext) -> Any:
    """ssl_connect (which resumes from the context's cache), one line echoed: the client's
    (resumed, None) or the exception the client saw."""
    try:
        return _connect_seeing(port, ctx)[0]
    except sslports.SSLError as exc:
        return exc


@pytest.mark.parametrize("version", VERSIONS)
def test_server_set_verify_not_bypassed_by_resumption(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """A session made before ssl_set_verify(server context, True), by a client without a
    certificate, must not let that client in afterwards: it was resumed, and the server's
    ssl_accept returned a connection whose peer never presented a certificate."""
    sctx = server_context(version, pki.server, roots=[pki.root])
    server = Server(sctx)
    servers.append(server)
    cctx = client_context(version, roots=[pki.root])  # no client certificate

    join = server.accept(_facts)
    assert _connect(server.port, cctx) is False
    assert join() == (False, False)

    sslports.ssl_set_verify(sctx, True)  # from now on: a valid client certificate
    join = server.accept(_facts)
    client = _connect(server.port, cctx)
    result = outcome(join)
    assert isinstance(result, sslports.SSLError), (client, result)
    assert "peer did not return a certificate" in str(result)


@pytest.mark.parametrize("version", VERSIONS)
def test_server_resumption_with_client_certificate_still_works(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """Where the policy did not change, a verified client still resumes (and stays verified)."""
    server = Server(server_context(version, pki.server, roots=[pki.root], verify="set"))
    servers.append(server)
    cctx = client_context(version, roots=[pki.root], identity=[pki.client])
    for reused in (False, True, True):
        join = server.accept(_facts)
        assert _connect(server.port, cctx) is reused
        assert join() == (reused, True)


def _py_client(root: Path, version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(root))
    v = ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3
    ctx.minimum_version = ctx.maximum_version = v
    return ctx


def _py_connect(
    port: int, ctx: ssl.SSLContext, name: str, session: Optional[ssl.SSLSession]
) -> tuple[Any, Optional[ssl.SSLSession]]:
    """Python's ssl client, offering `session` under SNI `name`: (resumed or the exception,
    the session to offer next)."""
    sock = socket.create_connection((LOCAL, port), timeout=10)
    try:
        with ctx.wrap_socket(sock, server_hostname=name, session=session) as tls:
            tls.sendall(b"hi\n")
            assert tls.recv(100) == b"hi\n"
            return tls.session_reused, tls.session
    except (ssl.SSLError, OSError) as exc:
        return exc, None
    finally:
        sock.close()


def _open_and_secure_server(pki: Pki, servers: list[Server], version: str) -> Server:
    """A listener whose context serves open.test without client certificates and whose SNI
    callback switches secure.test to a context that requires one."""
    open_ctx = server_context(version, pki.server, roots=[pki.root])
    secure_ctx = server_context(version, pki.server, roots=[pki.root], verify="set")
    sslports.ssl_set_server_name_identification_callback(
        open_ctx, lambda name: secure_ctx if name == "secure.test" else None
    )
    server = Server(open_ctx)
    servers.append(server)
    return server


@pytest.mark.parametrize("version", VERSIONS)
def test_sni_switch_to_verifying_context_not_bypassed_by_resumption(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """The listener's context serves open.test without client certificates; its SNI callback
    switches secure.test to a context that requires one. A session from open.test offered
    under secure.test was resumed (TLS 1.3: the PSK is chosen before the SNI callback runs;
    TLS 1.2: OpenSSL even hands the callback the old session's name), so the client reached
    the verifying context without any certificate."""
    server = _open_and_secure_server(pki, servers, version)
    py = _py_client(pki.root, version)

    join = server.accept(_facts)
    reused, session = _py_connect(server.port, py, "open.test", None)
    assert reused is False and session is not None
    assert join() == (False, False)

    join = server.accept(_facts)
    client, _ = _py_connect(server.port, py, "secure.test", session)
    result = outcome(join)
    assert isinstance(result, sslports.SSLError), (client, result)
    assert "peer did not return a certificate" in str(result)

    # The open name still resumes its own session.
    join = server.accept(_facts)
    reused, _ = _py_connect(server.port, py, "open.test", session)
    assert reused is True
    assert join() == (True, False)


@pytest.mark.parametrize("version", VERSIONS)
def test_sni_switched_context_resumes_its_own_sessions(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """A verified client of the switched-to context resumes there, still verified."""
    server = _open_and_secure_server(pki, servers, version)
    py = _py_client(pki.root, version)
    cert_file = chain_file(pki.client)
    key_path = cert_file.with_suffix(".key")
    key_path.write_bytes(pki.client.key_pem)
    py.load_cert_chain(str(cert_file), str(key_path))
    session = None
    for reused in (False, True):
        join = server.accept(_facts)
        got, session = _py_connect(server.port, py, "secure.test", session)
        assert got is reused
        assert join() == (reused, True)


# -- a change of identity or roots: sessions made before are not resumed ------------------------
#
# A resumed session carries what its full handshake saw: the certificate each end showed and the
# verdict on it. After a context loads another certificate and key, or more trusted roots, a
# resumed connection would show the old identity, or keep the old verdict, on either end.


def _peer(inp: Any, out: Any) -> tuple[bool, bool, Optional[bytes]]:
    """(resumed, peer verified, peer subject) of one end, then one line each way."""
    facts = _peer_facts(inp)
    echo_line(inp, out)
    return facts


def _connect_seeing(port: int, ctx: sslports.SSLClientContext) -> tuple[bool, bool, Any]:
    """The client's (resumed, peer verified, peer subject) after one echoed line."""
    inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=10)
    with inp, out:
        out.write(b"hi\n")
        out.flush()
        assert inp.readline() == b"hi\n"  # (TLS 1.3: the tickets came before it)
        return _peer_facts(inp)


def _peer_facts(inp: Any) -> tuple[bool, bool, Optional[bytes]]:
    """(resumed, peer verified, peer subject) of one end's connection."""
    return (
        sslports.ssl_session_reused(inp),
        sslports.ssl_peer_verified(inp),
        sslports.ssl_peer_subject_name(inp),
    )


def _subject(issued: Issued) -> bytes:
    """As ssl_peer_subject_name says it: /O=.../CN=..."""
    return "".join(f"/{a.rfc4514_attribute_name}={a.value!s}" for a in issued.cert.subject).encode()


@pytest.mark.parametrize("version", VERSIONS)
def test_client_new_identity_is_what_the_server_sees(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """ssl_load_certificate_chain + ssl_load_private_key on a client context: the next
    connection shows the new certificate; the server saw the old one on a resumed session."""
    server = Server(server_context(version, pki.server, roots=[pki.root], verify="set"))
    servers.append(server)
    cctx = client_context(version, roots=[pki.root], identity=[pki.client])
    for reused in (False, True):  # (it resumes while nothing changes)
        join = server.accept(_peer)
        assert _connect_seeing(server.port, cctx)[0] is reused
        assert join() == (reused, True, _subject(pki.client))

    sslports.ssl_load_certificate_chain(cctx, chain_file(pki.client2))
    sslports.ssl_load_private_key(cctx, key_data(pki.client2), False)
    for reused in (False, True):
        join = server.accept(_peer)
        assert _connect_seeing(server.port, cctx)[0] is reused
        assert join() == (reused, True, _subject(pki.client2))


@pytest.mark.parametrize("version", VERSIONS)
def test_server_new_identity_is_what_the_client_sees(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """The same on a server context: a client offering a session made before the server
    loaded its new certificate does full handshake and sees the new certificate."""
    sctx = server_context(version, pki.server)
    server = Server(sctx)
    servers.append(server)
    cctx = client_context(version, roots=[pki.root])
    for reused in (False, True):
        join = server.accept(echo_line)
        assert _connect_seeing(server.port, cctx) == (reused, True, _subject(pki.server))
        join()

    sslports.ssl_load_certificate_chain(sctx, chain_file(pki.server2))
    sslports.ssl_load_private_key(sctx, key_data(pki.server2), False)
    for reused in (False, True):
        join = server.accept(echo_line)
        assert _connect_seeing(server.port, cctx) == (reused, True, _subject(pki.server2))
        join()


def test_renegotiation_after_a_new_identity_files_no_stale_session(
    pki: Pki, servers: list[Server]
) -> None:
    """TLS 1.2: a connection made before the server loaded its new certificate renegotiates
    afterwards (ssl_set_verify on its port) and makes a session showing the old certificate,
    which no later connection may resume (its session id context is the one of the identity
    the connection serves, not the context's newest)."""
    sctx = server_context("tls12", pki.server, roots=[pki.root], verify="set")
    server = Server(sctx)
    servers.append(server)
    cctx = client_context("tls12", roots=[pki.root], identity=[pki.client])
    join = server.accept()
    inp, out = sslports.ssl_connect("localhost", server.port, cctx, timeout=10)
    sin, sout = join()
    with inp, out, sin, sout:
        sslports.ssl_load_certificate_chain(sctx, chain_file(pki.server2))
        sslports.ssl_load_private_key(sctx, key_data(pki.server2), False)
        reads = in_thread(inp.readline)  # (the client answers the renegotiation as it reads)
        sslports.ssl_set_verify(sin, True)
        sout.write(b"after\n")
        sout.flush()
        assert reads() == b"after\n"
        assert sslports.ssl_peer_subject_name(inp) == _subject(pki.server)  # (still)
    for reused in (False, True):
        join = server.accept(echo_line)
        assert _connect_seeing(server.port, cctx) == (reused, True, _subject(pki.server2))
        join()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("source", ["file", "directory"])
def test_client_roots_loaded_later_take_effect(
    pki: Pki, servers: list[Server], version: str, source: str, tmp_path: Path
) -> None:
    """ssl_try_verify client without roots: not verified, and a resumed session keeps that
    verdict; once ssl_load_verify_source gives it the root, the next connection is verified."""
    server = Server(server_context(version, pki.server))
    servers.append(server)
    cctx = client_context(version, verify=False, hostname=False)
    sslports.ssl_try_verify(cctx, True)
    for reused in (False, True):
        join = server.accept(echo_line)
        assert _connect_seeing(server.port, cctx) == (reused, False, None)
        join()

    sslports.ssl_load_verify_source(cctx, _roots_source(pki, source, tmp_path))
    for reused in (False, True):
        join = server.accept(echo_line)
        assert _connect_seeing(server.port, cctx) == (reused, True, _subject(pki.server))
        join()


def _roots_source(pki: Pki, source: str, tmp_path: Path) -> Any:
    if source == "file":
        return pki.root
    # An OpenSSL hashed directory (<subject hash>.0), read at verification time.
    (tmp_path / f"{subject_hash(pki.root)}.0").write_bytes(pki.root.read_bytes())
    return ("directory", tmp_path)


@pytest.mark.parametrize("version", VERSIONS)
def test_server_roots_loaded_later_take_effect(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """The same on a server that tries to verify clients."""
    sctx = server_context(version, pki.server, verify="try")
    server = Server(sctx)
    servers.append(server)
    cctx = client_context(version, roots=[pki.root], identity=[pki.client])
    for reused in (False, True):
        join = server.accept(_peer)
        assert _connect_seeing(server.port, cctx)[0] is reused
        assert join() == (reused, False, None)  # (no subject when not verified)

    sslports.ssl_load_verify_source(sctx, pki.root)
    for reused in (False, True):
        join = server.accept(_peer)
        assert _connect_seeing(server.port, cctx)[0] is reused
        assert join() == (reused, True, _subject(pki.client))


# -- hostname verification: look-alike characters -----------------------------------------------

HOSTNAME_MISMATCH = 62


@pytest.fixture(scope="module")
def wild_server(pki: Pki) -> Iterator[tuple[Path, int]]:
    root = make_cert("Review Wildcard Root", ca=True)
    cert = make_cert("wild", issuer=root, dns=["*.wild.example.test", "www.example.test"])
    server = BackgroundServer(server_context("tls13", cert))
    try:
        yield chain_file(root), server.port
    finally:
        server.close()


@pytest.mark.parametrize("star", ["\uff0a", "\ufe61"])  # FULLWIDTH / SMALL ASTERISK
def test_lookalike_asterisk_is_never_a_pattern(wild_server: tuple[Path, int], star: str) -> None:
    """A reference name with '*' never matches (a name is not a pattern, test_hostnames.py),
    but the check ran before IDNA encoding, whose NFKC step turns U+FF0A / U+FE61 into '*':
    "\uff0a.wild.example.test" verified against the SAN *.wild.example.test, literally."""
    root, port = wild_server
    name = star + ".wild.example.test"
    ctx = client_context("tls13", roots=[root])
    with pytest.raises(SSLNetworkError) as info:
        inp, out = wrap_client(port, ctx, name)
        close_all(inp, out)
    assert info.value.verify_code == HOSTNAME_MISMATCH
    probe = client_context("tls13", verify=False, hostname=False)
    inp, out = wrap_client(port, probe, None)
    with inp, out:
        assert not sslports.ssl_peer_check_hostname(inp, name)
        assert sslports.ssl_peer_check_hostname(inp, "a.wild.example.test")


def test_ideographic_full_stop_at_the_end_is_a_trailing_dot(wild_server: tuple[Path, int]) -> None:
    """IDNA reads U+3002 as a dot: a trailing one is ignored like a trailing '.' is."""
    root, port = wild_server
    ctx = client_context("tls13", roots=[root])
    inp, out = wrap_client(port, ctx, "www.example.test\u3002")
    with inp, out:
        assert sslports.ssl_peer_verified(inp)
        assert sslports.ssl_peer_check_hostname(inp, "www.example.test\u3002")
