"""Security checks that a mutation audit found untested: each test names the mutation it
kills (a deliberate break of the code that no other test noticed).

* An IP-literal hostname that the certificate's IP SANs do not hold is fatal also when the
  chain itself is not verified (``ssl_set_verify_hostname`` on, ``ssl_set_verify`` off).
* After an SNI switch the protocol range of the context switched to applies (it did not:
  SSL_set_SSL_CTX keeps the first context's minimum and maximum version).
* The client session cache: a session is keyed by host name too, and a connection set up
  under an old verification policy resumes nothing filed under the new one.
* The "auto" protocol's TLS 1.2 floor holds by itself, also at security level 0.
* A server resumes a session only in the context that made it (not in another context with
  the same client policy but other roots, switched to by SNI).
* A client that needs the server's certificate never offers an anonymous suite, also where
  the cipher string (at @SECLEVEL=0) allows them.

Every socket is on 127.0.0.1; certificates come from tests/certs.py.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest
from certs import (
    LOCAL,
    VERSIONS,
    BackgroundServer,
    Issued,
    Server,
    chain_file,
    client_context,
    echo_line,
    in_thread,
    key_file,
    make_cert,
    outcome,
    server_context,
)

import sslports
from sslports import SSLNetworkError


@pytest.fixture(scope="module")
def root() -> Issued:
    return make_cert("Mutation Root CA", ca=True)


# -- hostname verification without chain verification --------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_ip_literal_mismatch_is_fatal_without_chain_verification(
    root: Issued, servers: list[Server], version: str
) -> None:
    """Kills: verify_callback (sp_conn.c) forgiving X509_V_ERR_IP_ADDRESS_MISMATCH when the
    chain need not verify. The certificate names other.example.test and no address; the client
    checks hostnames but not the chain, and reaches the server as 127.0.0.1."""
    other = make_cert("other.example.test", issuer=root, dns=["other.example.test"])
    server = Server(server_context(version, other))
    servers.append(server)
    join = server.accept(echo_line)
    ctx = client_context(version, verify=False, hostname=True)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect(LOCAL, server.port, ctx)
    assert info.value.verify_code == 64
    assert info.value.verify_message is not None
    assert info.value.verify_message.startswith("IP address mismatch")
    assert isinstance(outcome(join), SSLNetworkError)


# -- SNI: the switched-to context's protocol range -------------------------------------------------


def _python_client(port: int, name: str, maximum: ssl.TLSVersion) -> str:
    """A Python ssl client (no verification) offering up to `maximum`: the version it got."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = maximum
    sock = socket.create_connection((LOCAL, port), timeout=10)
    with sock, ctx.wrap_socket(sock, server_hostname=name) as tls:
        version = tls.version()
        tls.sendall(b"ping\n")
        assert tls.recv(5) == b"ping\n"
        return str(version)


@pytest.fixture
def sni_versions(root: Issued, servers: list[Server]) -> Server:
    """An "auto" listener whose callback switches tls13.example.test to a "tls13" context and
    tls12.example.test to a "tls12" one (same certificate everywhere)."""
    leaf = make_cert("sni", issuer=root, dns=["tls13.example.test", "tls12.example.test"])
    only13 = server_context("tls13", leaf)
    only12 = server_context("tls12", leaf)
    main = server_context("auto", leaf)
    switch = {"tls13.example.test": only13, "tls12.example.test": only12}
    sslports.ssl_set_server_name_identification_callback(main, switch.get)
    server = Server(main)
    servers.append(server)
    return server


def test_sni_switch_to_a_tls13_context_refuses_tls12(sni_versions: Server) -> None:
    """Kills (and fixed): the client hello callback (sp_verify.c) switching the context but
    keeping the listener context's protocol range, so a name served by a "tls13" context
    still negotiated TLS 1.2."""
    server = sni_versions
    # The listener's own context takes TLS 1.2 ...
    join = server.accept(echo_line)
    assert _python_client(server.port, "other.example.test", ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    join()
    # ... the one switched to does not.
    join = server.accept(echo_line)
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version"):
        _python_client(server.port, "tls13.example.test", ssl.TLSVersion.TLSv1_2)
    exc = outcome(join)
    assert isinstance(exc, SSLNetworkError)
    assert "unsupported protocol" in str(exc)
    # The switched-to context itself serves TLS 1.3.
    join = server.accept(echo_line)
    assert _python_client(server.port, "tls13.example.test", ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    join()


def test_sni_switch_to_a_tls12_context_caps_the_version(sni_versions: Server) -> None:
    """The other end of the range: a "tls12" context switched to negotiates TLS 1.2 with a
    client that offers TLS 1.3."""
    server = sni_versions

    def handler(inp: Any, out: Any) -> Any:
        version = sslports.ssl_protocol_version(inp)
        echo_line(inp, out)
        return version

    join = server.accept(handler)
    assert _python_client(server.port, "tls12.example.test", ssl.TLSVersion.TLSv1_3) == "TLSv1.2"
    assert join() == "tls12"
    join = server.accept(handler)
    assert _python_client(server.port, "other.example.test", ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert join() == "tls13"


# -- the client session cache --------------------------------------------------------------------


def _talk(inp: Any, out: Any) -> bool:
    """One line there and back (which also reads a TLS 1.3 server's tickets); whether the
    connection resumed a session."""
    with inp, out:
        out.write(b"ping\n")
        out.flush()
        assert inp.readline() == b"ping\n"
        return bool(sslports.ssl_session_reused(inp))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_is_never_resumed_under_another_host_name(root: Issued, version: str) -> None:
    """Kills: the session cache key (sp_session.c) losing its host part. A resumed session is
    not verified again, so a session made for 127.0.0.1 (which the certificate names) must
    not let a connection to localhost (same address and port, a name the certificate lacks)
    skip the hostname check."""
    leaf = make_cert("addr only", issuer=root, dns=["other.example.test"], ips=[LOCAL])
    server = BackgroundServer(server_context(version, leaf), echo_line)
    try:
        ctx = client_context(version, roots=[chain_file(root)])
        assert _talk(*sslports.ssl_connect(LOCAL, server.port, ctx)) is False
        assert _talk(*sslports.ssl_connect(LOCAL, server.port, ctx)) is True  # (it resumes)
        with pytest.raises(SSLNetworkError) as info:
            _talk(*sslports.ssl_connect("localhost", server.port, ctx))
        assert info.value.verify_code == 62
    finally:
        server.close()


# -- the protocol floor --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (ssl.TLSVersion.TLSv1)
def test_auto_keeps_its_tls12_floor_at_security_level_0(root: Issued) -> None:
    """Kills: the "auto" protocol's minimum (context.py) lowered to TLS 1.0. OpenSSL 3's
    default security level refuses TLS 1.0/1.1 by itself, which hid the floor from every
    test: here the cipher string lowers the level, and the floor alone must hold."""
    leaf = make_cert("localhost", issuer=root, dns=["localhost"], key="rsa")
    py_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    py_server.set_ciphers("DEFAULT:@SECLEVEL=0")
    py_server.minimum_version = ssl.TLSVersion.TLSv1
    py_server.maximum_version = ssl.TLSVersion.TLSv1_1
    py_server.load_cert_chain(chain_file(leaf), key_file(leaf))
    ctx = sslports.ssl_make_client_context("auto")
    sslports.ssl_set_ciphers(ctx, "DEFAULT:@SECLEVEL=0")
    with socket.create_server((LOCAL, 0)) as listener:

        def serve() -> None:
            sock, _ = listener.accept()
            with sock, pytest.raises(ssl.SSLError):
                py_server.wrap_socket(sock, server_side=True).close()

        join = in_thread(serve)
        with pytest.raises(SSLNetworkError, match="protocol version"):
            sslports.ssl_connect(LOCAL, listener.getsockname()[1], ctx)
        join()


# -- server sessions and SNI ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_a_session_verified_by_one_context_is_not_resumed_by_another(
    root: Issued, servers: list[Server], version: str
) -> None:
    """Kills: the server session id context (sp_ctx.c) losing the context's own tag, so that
    two contexts with the same client policy accept each other's sessions. The listener's
    SNI callback switches a.example.test to a context that requires client certificates from
    root A, b.example.test to one that requires them from root B. A client certified by root
    A must not reach b.example.test by offering its a.example.test session."""
    root_b = make_cert("Mutation Root B", ca=True)
    leaf = make_cert("sni", issuer=root, dns=["a.example.test", "b.example.test"])
    client = make_cert("root A client", issuer=root)
    ctx_a = server_context(version, leaf, verify="set", roots=[chain_file(root)])
    ctx_b = server_context(version, leaf, verify="set", roots=[chain_file(root_b)])
    main = server_context(version, leaf)
    switch = {"a.example.test": ctx_a, "b.example.test": ctx_b}
    sslports.ssl_set_server_name_identification_callback(main, switch.get)
    server = Server(main)
    servers.append(server)

    def facts(inp: Any, out: Any) -> tuple[bool, bool]:
        result = (sslports.ssl_session_reused(inp), sslports.ssl_peer_verified(inp))
        echo_line(inp, out)
        return result

    py = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    py.check_hostname = False
    py.verify_mode = ssl.CERT_NONE
    py.minimum_version = py.maximum_version = (
        ssl.TLSVersion.TLSv1_3 if version == "tls13" else ssl.TLSVersion.TLSv1_2
    )
    py.load_cert_chain(str(chain_file(client)), str(key_file(client)))

    def connect(name: str, session: Any) -> Any:
        with socket.create_connection((LOCAL, server.port), timeout=10) as sock:
            try:
                with py.wrap_socket(sock, server_hostname=name, session=session) as tls:
                    tls.sendall(b"hi\n")
                    assert tls.recv(100) == b"hi\n"
                    return tls.session
            except (ssl.SSLError, OSError):
                return None

    join = server.accept(facts)
    session = connect("a.example.test", None)
    assert join() == (False, True) and session is not None
    join = server.accept(facts)
    connect("a.example.test", session)
    assert join() == (True, True)  # (context A resumes its own sessions)
    join = server.accept(facts)
    connect("b.example.test", session)
    result = outcome(join)
    assert isinstance(result, SSLNetworkError), result
    assert "certificate verify failed" in str(result)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_connection_set_up_under_the_old_policy_resumes_nothing_filed_under_the_new(
    root: Issued, version: str
) -> None:
    """Kills: sp_session_lookup (sp_session.c) ignoring the cache's epoch. A connection reads
    the context's policy once (`_conn_policy`: verify flags and cache epoch); a policy change
    in another thread between that read and the lookup must not hand it a session filed under
    the new policy. Here the race is made deterministic: the old policy (verification
    required) is captured, verification is turned off and an unverified session is filed,
    then a connection set up with the captured policy must verify, not resume."""
    leaf = make_cert("localhost", issuer=root, dns=["localhost"], ips=[LOCAL])
    server = BackgroundServer(server_context(version, leaf), echo_line)
    try:
        ctx = client_context(version, roots=[], verify=True, hostname=False)  # trusts nothing
        old_policy = ctx._conn_policy
        sslports.ssl_set_verify(ctx, False)
        assert _talk(*sslports.ssl_connect(LOCAL, server.port, ctx)) is False
        assert _talk(*sslports.ssl_connect(LOCAL, server.port, ctx)) is True  # (filed)
        new_policy, ctx._conn_policy = ctx._conn_policy, old_policy
        try:
            with pytest.raises(SSLNetworkError) as info:
                _talk(*sslports.ssl_connect(LOCAL, server.port, ctx))
            assert info.value.verify_code is not None
        finally:
            ctx._conn_policy = new_policy
    finally:
        server.close()


# -- anonymous suites ------------------------------------------------------------------------------


def _python_anonymous_server(listener: socket.socket) -> Any:
    """Serve one connection with a TLS 1.2 anonymous suite only (no certificate at all);
    the suite it used, or the exception."""

    def serve() -> Any:
        py = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        py.maximum_version = ssl.TLSVersion.TLSv1_2
        py.set_ciphers("aNULL:@SECLEVEL=0")
        sock, _ = listener.accept()
        with sock, py.wrap_socket(sock, server_side=True) as tls:
            tls.sendall(b"anonymous\n")
            return tls.cipher()[0]

    return in_thread(serve)


@pytest.mark.parametrize(
    ("policy", "refused"),
    [("verify", True), ("hostname only", True), ("try", False), ("none", False)],
)
def test_a_client_that_needs_a_certificate_refuses_anonymous_suites(
    root: Issued, policy: str, refused: bool
) -> None:
    """Kills: security_callback (sp_conn.c) letting aNULL suites through. A client whose
    cipher string allows anonymous suites (only possible at @SECLEVEL=0) completed a TLS 1.2
    handshake with a server that sent no certificate although ssl_set_verify (or the
    hostname check) was on: nothing was verified, and OpenSSL (like Python's ssl) does not
    object. Now such a client does not offer them; one that requires nothing still may."""
    ctx = client_context(
        "tls12",
        roots=[chain_file(root)],
        verify=policy == "verify",
        hostname=policy in ("verify", "hostname only"),
    )
    if policy == "try":
        sslports.ssl_try_verify(ctx, True)
    sslports.ssl_set_ciphers(ctx, "ALL:@SECLEVEL=0")
    with socket.create_server((LOCAL, 0)) as listener:
        join = _python_anonymous_server(listener)
        sock = socket.create_connection(listener.getsockname(), timeout=10)
        try:
            inp, out = sslports.ssl_wrap_socket(sock, context=ctx, hostname="localhost", timeout=10)
        except SSLNetworkError as exc:
            assert refused, exc
            assert isinstance(outcome(join), ssl.SSLError)
            return
        with inp, out:
            assert not refused
            assert inp.readline() == b"anonymous\n"
            assert sslports.ssl_peer_verified(inp) is False
        assert join().startswith(("ADH", "AECDH"))  # (an anonymous suite)


@pytest.mark.parametrize(("verify", "refused"), [("set", True), ("try", False)])
def test_a_server_that_requires_a_certificate_refuses_anonymous_suites(
    root: Issued, verify: str, refused: bool
) -> None:
    """The server side, which OpenSSL already gets right (a guard, not a mutation test): a
    server cannot ask for a client certificate in an anonymous suite, and one that requires
    client certificates never chooses one (a client offering nothing else gets a handshake
    failure), also where its cipher string allows them; a server that only asks may."""
    leaf = make_cert("localhost", issuer=root, dns=["localhost"])
    ctx = server_context("tls12", leaf, verify=verify, roots=[chain_file(root)])
    sslports.ssl_set_ciphers(ctx, "ALL:@SECLEVEL=0")
    server = Server(ctx)
    try:
        join = server.accept(lambda inp, out: sslports.ssl_peer_verified(inp))
        py = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        py.check_hostname = False
        py.verify_mode = ssl.CERT_NONE
        py.maximum_version = ssl.TLSVersion.TLSv1_2
        py.set_ciphers("aNULL:@SECLEVEL=0")
        try:
            sock = socket.create_connection((LOCAL, server.port), timeout=10)
            with sock, py.wrap_socket(sock) as tls:
                tls.sendall(b"hi")
                client: Any = tls.cipher()[0]
        except (ssl.SSLError, OSError) as exc:
            client = exc
        result = outcome(join)
        if refused:
            assert isinstance(client, ssl.SSLError), client
            assert isinstance(result, SSLNetworkError), result
        else:
            assert isinstance(client, str) and client.startswith(("ADH", "AECDH")), client
            assert result is False
    finally:
        server.close()
