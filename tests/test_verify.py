"""Issue 4: peer verification and what a connection knows about its peer.

* client certificates verified early (a server context with ssl_set_verify / ssl_try_verify)
  and late (ssl_set_verify / ssl_try_verify on an established server port: TLS 1.2
  renegotiation, TLS 1.3 post-handshake authentication), also against Python's ssl client;
* hostname verification (ssl_set_verify_hostname), IP literals, leading and trailing dots;
* ssl_peer_verified, ssl_peer_certificate_hostnames, ssl_peer_check_hostname,
  ssl_peer_subject_name, ssl_peer_issuer_name.

Every protocol test runs under "tls12" and "tls13" contexts.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from certs import (
    LOCAL,
    VERSIONS,
    Issued,
    Server,
    chain_file,
    client_context,
    echo_line,
    ipv6_loopback_works,
    key_file,
    make_cert,
    outcome,
    server_context,
    wrap_client,
)
from conftest import run_in_thread, socket_ports

import sslports
from sslports import SSLError, SSLNetworkError

BULK = hashlib.shake_256(b"bulk").digest(300_000)  # more than one socket buffer


@dataclass
class Pki:
    root: Path  # PEM of the test root, for ssl_load_verify_source
    root_cert: Issued
    server: Issued  # localhost, 127.0.0.1, ::1
    other: Issued  # other.example.test only
    client: Issued  # CN "client one", no SAN
    client_two_cn: Issued  # CNs "first client", "second client"
    rogue_client: Issued  # CN "rogue client", from a root nobody trusts


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = make_cert("Verify Root CA", ca=True)
    rogue_root = make_cert("Rogue Root CA", ca=True)
    return Pki(
        root=chain_file(root),
        root_cert=root,
        server=make_cert("localhost", issuer=root, dns=["localhost"], ips=["127.0.0.1", "::1"]),
        other=make_cert("other.example.test", issuer=root, dns=["other.example.test"]),
        client=make_cert("client one", issuer=root),
        client_two_cn=make_cert(["first client", "second client"], issuer=root),
        rogue_client=make_cert("rogue client", issuer=rogue_root),
    )


def _server(servers: list[Server], ctx: Any, host: str = LOCAL) -> Server:
    s = Server(ctx, host)
    servers.append(s)
    return s


def _peer_facts(p: Any) -> dict[str, Any]:
    return {
        "verified": sslports.ssl_peer_verified(p),
        "subject": sslports.ssl_peer_subject_name(p),
        "issuer": sslports.ssl_peer_issuer_name(p),
        "names": sslports.ssl_peer_certificate_hostnames(p),
    }


# -- client certificates verified during the handshake ---------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_verified_early(pki: Pki, servers: list[Server], version: str) -> None:
    server = _server(servers, server_context(version, pki.server, verify="set", roots=[pki.root]))

    def handler(inp: Any, out: Any) -> dict[str, Any]:
        facts = _peer_facts(inp)
        echo_line(inp, out)
        return facts

    join = server.accept(handler)
    ctx = client_context(version, roots=[pki.root], identity=[pki.client])
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        out.write(b"hello\n")
        out.flush()
        assert inp.readline() == b"hello\n"
        assert sslports.ssl_peer_verified(inp)
        assert sslports.ssl_peer_subject_name(out) == b"/O=sslports tests/CN=localhost"
    facts = join()
    assert facts == {
        "verified": True,
        "subject": b"/O=sslports tests/CN=client one",
        "issuer": b"/O=sslports tests/CN=Verify Root CA",
        "names": ["client one"],  # no DNS SAN: the CN
    }


def _client_fails_or_first_read_fails(connect: Any) -> BaseException:
    """TLS 1.2: the client's handshake fails. TLS 1.3: the client finishes its handshake
    before the server has seen its certificate, so the server's alert arrives with the
    first read."""
    try:
        inp, out = connect()
    except SSLError as exc:
        return exc
    with inp, out:
        inp.settimeout(10)
        with pytest.raises(SSLError) as info:
            inp.read(1)
    return info.value


@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_missing_early(pki: Pki, servers: list[Server], version: str) -> None:
    server = _server(servers, server_context(version, pki.server, verify="set", roots=[pki.root]))
    join = server.accept(echo_line)
    ctx = client_context(version, roots=[pki.root])
    client_exc = _client_fails_or_first_read_fails(
        lambda: sslports.ssl_connect("localhost", server.port, ctx)
    )
    assert "alert" in str(client_exc)
    server_exc = outcome(join)
    assert isinstance(server_exc, SSLNetworkError)
    assert "ssl_accept: accept failed" in str(server_exc)
    assert "peer did not return a certificate" in str(server_exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_untrusted_early(pki: Pki, servers: list[Server], version: str) -> None:
    server = _server(servers, server_context(version, pki.server, verify="set", roots=[pki.root]))
    join = server.accept(echo_line)
    ctx = client_context(version, roots=[pki.root], identity=[pki.rogue_client])
    client_exc = _client_fails_or_first_read_fails(
        lambda: sslports.ssl_connect("localhost", server.port, ctx)
    )
    assert "alert" in str(client_exc)  # unknown ca
    server_exc = outcome(join)
    assert isinstance(server_exc, SSLNetworkError)
    assert server_exc.verify_code == 20  # unable to get local issuer certificate
    assert server_exc.verify_message is not None
    assert server_exc.verify_message.startswith("unable to get local issuer certificate")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["good", "rogue", "none"])
def test_try_verify_context(pki: Pki, servers: list[Server], version: str, who: str) -> None:
    """ssl_try_verify on the server context: every client gets in; ssl_peer_verified tells."""
    server = _server(servers, server_context(version, pki.server, verify="try", roots=[pki.root]))

    def handler(inp: Any, out: Any) -> dict[str, Any]:
        facts = _peer_facts(inp)
        facts["check"] = sslports.ssl_peer_check_hostname(inp, "client one")
        echo_line(inp, out)
        return facts

    join = server.accept(handler)
    identity = {"good": [pki.client], "rogue": [pki.rogue_client], "none": []}[who]
    ctx = client_context(version, roots=[pki.root], identity=identity)
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        out.write(b"in\n")
        out.flush()
        assert inp.readline() == b"in\n"
    facts = join()
    if who == "good":
        assert facts["verified"] is True
        assert facts["subject"] == b"/O=sslports tests/CN=client one"
        assert facts["names"] == ["client one"]
        assert facts["check"] is True  # a CN-only certificate matches its CN
    elif who == "rogue":
        assert facts["verified"] is False
        assert facts["subject"] is None and facts["issuer"] is None
        assert facts["names"] == ["rogue client"]  # the certificate is there, unverified
        assert facts["check"] is False
    else:
        assert facts == {
            "verified": False,
            "subject": None,
            "issuer": None,
            "names": [],
            "check": False,  # no certificate: False, never an exception
        }


# -- client certificates verified late, on an established port -------------------------------------


def _late_server(
    try_only: bool, use_output_port: bool
) -> Any:  # the server's handler for the late-verification tests
    def handler(inp: Any, out: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"before": inp.readline()}
        result["verified_before"] = sslports.ssl_peer_verified(inp)
        target = out if use_output_port else inp
        try:
            (sslports.ssl_try_verify if try_only else sslports.ssl_set_verify)(target, True)
        except SSLError as exc:
            result["error"] = exc
            return result
        result.update(_peer_facts(inp))
        # What the client sent before and during the re-verification is all still there.
        data = bytearray()
        while len(data) < len(BULK):
            chunk = inp.read1(len(BULK) - len(data))
            assert chunk, "EOF inside the bulk data"
            data += chunk
        result["bulk_ok"] = bytes(data) == BULK
        result["after"] = inp.readline()
        out.write(b"verified\n" if result["verified"] else b"not verified\n")
        out.flush()
        result["tail"] = inp.readline()  # sent by the client after the re-verification
        return result

    return handler


def _late_client(inp: Any, out: Any) -> tuple[bytes, bytes]:
    """Send a line, bulk data and another line without reading, then read the answer (which
    is when the client handles the server's request) and send one more line."""
    out.write(b"before\n")
    out.flush()
    out.write(BULK)
    out.write(b"after\n")
    out.flush()
    inp.settimeout(20)
    answer = inp.readline()
    out.write(b"tail\n")
    out.flush()
    return answer, inp.readline()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("port_kind", ["input", "output"])
def test_set_verify_port_late_success(
    pki: Pki, servers: list[Server], version: str, port_kind: str
) -> None:
    server = _server(servers, server_context(version, pki.server, roots=[pki.root]))
    join = server.accept(_late_server(False, port_kind == "output"))
    ctx = client_context(version, roots=[pki.root], identity=[pki.client])
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        answer, eof = _late_client(inp, out)
        assert answer == b"verified\n"
        assert eof == b""  # the server closed after reading the tail
        assert sslports.ssl_protocol_version(inp) == version
    result = join()
    assert "error" not in result, result.get("error")
    assert result["before"] == b"before\n"
    assert result["verified_before"] is False
    assert result["verified"] is True
    assert result["subject"] == b"/O=sslports tests/CN=client one"
    assert result["issuer"] == b"/O=sslports tests/CN=Verify Root CA"
    assert result["bulk_ok"] is True
    assert result["after"] == b"after\n"
    assert result["tail"] == b"tail\n"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["none", "rogue"])
def test_set_verify_port_late_failure(
    pki: Pki, servers: list[Server], version: str, who: str
) -> None:
    server = _server(servers, server_context(version, pki.server, roots=[pki.root]))
    join = server.accept(_late_server(False, False))
    identity = [pki.rogue_client] if who == "rogue" else []
    ctx = client_context(version, roots=[pki.root], identity=identity)
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        out.write(b"before\n")
        out.flush()
        inp.settimeout(20)
        try:  # the server aborts the connection with an alert
            got = inp.readline()
        except SSLError as exc:
            assert "alert" in str(exc)
        else:
            assert got == b""
    result = join()
    exc = result.get("error")
    assert isinstance(exc, SSLError), result
    assert str(exc).startswith("ssl_set_verify: failed"), str(exc)
    if who == "rogue":
        assert exc.verify_code == 20


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["good", "none", "rogue"])
def test_try_verify_port_late(pki: Pki, servers: list[Server], version: str, who: str) -> None:
    """ssl_try_verify on a port: a missing or untrusted certificate leaves the connection
    working; ssl_peer_verified tells. No data is lost either way."""
    server = _server(servers, server_context(version, pki.server, roots=[pki.root]))
    join = server.accept(_late_server(True, False))
    identity = {"good": [pki.client], "rogue": [pki.rogue_client], "none": []}[who]
    ctx = client_context(version, roots=[pki.root], identity=identity)
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        answer, _eof = _late_client(inp, out)
    result = join()
    assert "error" not in result, result.get("error")
    assert answer == (b"verified\n" if who == "good" else b"not verified\n")
    assert result["verified"] is (who == "good")
    assert result["names"] == {"good": ["client one"], "rogue": ["rogue client"], "none": []}[who]
    assert result["subject"] == (b"/O=sslports tests/CN=client one" if who == "good" else None)
    assert result["bulk_ok"] and result["after"] == b"after\n" and result["tail"] == b"tail\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_set_verify_client_port_checks_server(
    pki: Pki, servers: list[Server], version: str
) -> None:
    """On a client port, ssl_set_verify checks the certificate the server presented."""
    server = _server(servers, server_context(version, pki.server))
    join = server.accept(echo_line)
    trusting = client_context(version, roots=[pki.root], verify=False, hostname=False)
    inp, out = sslports.ssl_connect("localhost", server.port, trusting)
    with inp, out:
        sslports.ssl_set_verify(inp, True)  # verifies: no exception
        sslports.ssl_try_verify(out, True)
    join()
    join = server.accept(echo_line)
    blind = client_context(version, verify=False, hostname=False)
    inp, out = sslports.ssl_connect("localhost", server.port, blind)
    with inp, out:
        sslports.ssl_try_verify(inp, True)  # does not raise
        assert sslports.ssl_peer_verified(inp) is False
        with pytest.raises(SSLError, match=r"^ssl_set_verify: failed"):
            sslports.ssl_set_verify(inp, True)
        out.write(b"still fine\n")  # the connection is unaffected
        out.flush()
        assert inp.readline() == b"still fine\n"
    join()


# -- late verification against Python's ssl client -------------------------------------------------


def _py_client_context(pki: Pki, version: str, *, cert: bool, pha: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.root))
    v = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}[version]
    ctx.minimum_version = ctx.maximum_version = v
    if cert:
        ctx.load_cert_chain(chain_file(pki.client), key_file(pki.client))
    ctx.post_handshake_auth = pha
    return ctx


def _py_late_exchange(port: int, ctx: ssl.SSLContext) -> tuple[bytes, Optional[BaseException]]:
    with (
        socket.create_connection((LOCAL, port), timeout=20) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"before\n" + BULK + b"after\n")
        answer = b""
        try:
            while not answer.endswith(b"\n"):
                chunk = s.recv(100)  # handles the server's request on the way
                if not chunk:
                    break
                answer += chunk
            s.sendall(b"tail\n")
        except (ssl.SSLError, OSError) as exc:
            return answer, exc
        return answer, None


@pytest.mark.parametrize("version", VERSIONS)
def test_set_verify_port_late_python_client(pki: Pki, servers: list[Server], version: str) -> None:
    server = _server(servers, server_context(version, pki.server, roots=[pki.root]))
    join = server.accept(_late_server(False, False))
    answer, error = _py_late_exchange(
        server.port, _py_client_context(pki, version, cert=True, pha=True)
    )
    assert error is None, error
    assert answer == b"verified\n"
    result = join()
    assert result["verified"] is True
    assert result["subject"] == b"/O=sslports tests/CN=client one"
    assert result["bulk_ok"] and result["after"] == b"after\n" and result["tail"] == b"tail\n"


def test_set_verify_port_late_python_client_without_pha(pki: Pki, servers: list[Server]) -> None:
    """A TLS 1.3 client that did not offer post-handshake authentication cannot be asked:
    ssl_set_verify raises, saying so (it gave only OpenSSL's "extension not received");
    ssl_try_verify leaves the connection as it was, unverified."""
    server = _server(servers, server_context("tls13", pki.server, roots=[pki.root]))
    join = server.accept(_late_server(False, False))
    ctx = _py_client_context(pki, "tls13", cert=True, pha=False)
    with (
        socket.create_connection((LOCAL, server.port), timeout=20) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"before\n")
        result = join()
    exc = result.get("error")
    assert isinstance(exc, SSLError)
    assert str(exc).startswith("ssl_set_verify: failed"), str(exc)
    assert str(exc).endswith(
        "extension not received: the client did not offer post-handshake authentication "
        "(TLS 1.3), so it cannot be asked for a certificate after the handshake)"
    ), str(exc)

    join = server.accept(_late_server(True, False))
    answer, error = _py_late_exchange(server.port, ctx)
    assert error is None, error
    assert answer == b"not verified\n"
    result = join()
    assert "error" not in result, result.get("error")
    assert result["verified"] is False
    assert result["bulk_ok"] and result["tail"] == b"tail\n"


@pytest.mark.parametrize("func", ["ssl_set_verify", "ssl_try_verify"])
def test_late_verify_client_refusing_renegotiation(
    pki: Pki, servers: list[Server], func: str
) -> None:
    """TLS 1.2, a Python client with OP_NO_RENEGOTIATION: its no_renegotiation alert is
    fatal in OpenSSL (handshake_failure), so both functions raise and the connection ends."""
    server = _server(servers, server_context("tls12", pki.server, roots=[pki.root]))
    join = server.accept(_late_server(func == "ssl_try_verify", False))
    ctx = _py_client_context(pki, "tls12", cert=True, pha=False)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    answer, error = _py_late_exchange(server.port, ctx)
    assert answer == b""
    assert isinstance(error, ssl.SSLError) and "handshake failure" in str(error)
    exc = join().get("error")
    assert isinstance(exc, SSLError)
    assert str(exc).startswith(f"{func}: failed")
    assert "no renegotiation" in str(exc)


# -- hostname verification -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verify_hostname_success(pki: Pki, servers: list[Server], version: str, host: str) -> None:
    server = _server(servers, server_context(version, pki.server))
    join = server.accept(echo_line)
    inp, out = sslports.ssl_connect(host, server.port, client_context(version, roots=[pki.root]))
    with inp, out:
        out.write(b"x\n")
        out.flush()
        assert inp.readline() == b"x\n"
        assert sslports.ssl_peer_verified(out)
        assert sslports.ssl_peer_certificate_hostnames(inp) == ["localhost", "127.0.0.1", "::1"]
    join()


@pytest.mark.parametrize("version", VERSIONS)
def test_verify_hostname_ipv6_literal(pki: Pki, servers: list[Server], version: str) -> None:
    if not ipv6_loopback_works():  # then the IPv6 rows of test_hostnames.py still check ::1
        pytest.skip("no IPv6 loopback on this machine")
    server = _server(servers, server_context(version, pki.server), host="::1")
    join = server.accept(echo_line)
    inp, out = sslports.ssl_connect("::1", server.port, client_context(version, roots=[pki.root]))
    with inp, out:
        assert sslports.ssl_peer_verified(inp)
        assert sslports.ssl_peer_check_hostname(inp, "::1")
        assert sslports.ssl_addresses(inp)[1] == "::1"
    join()
    other = _server(servers, server_context(version, pki.other), host="::1")
    join = other.accept(echo_line)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("::1", other.port, client_context(version, roots=[pki.root]))
    assert info.value.verify_code == 64
    assert isinstance(outcome(join), SSLNetworkError)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("verify", [True, False])
def test_verify_hostname_mismatch(
    pki: Pki, servers: list[Server], version: str, verify: bool
) -> None:
    """A certificate for other.example.test, reached as localhost. With ssl_set_verify off
    (and no trusted root) the mismatch is still fatal, because hostname checking is on."""
    server = _server(servers, server_context(version, pki.other))
    join = server.accept(echo_line)
    roots = [pki.root] if verify else []
    ctx = client_context(version, roots=roots, verify=verify, hostname=True)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("localhost", server.port, ctx)
    exc = info.value
    assert exc.verify_code == 62
    assert exc.verify_message is not None and exc.verify_message.startswith("hostname mismatch")
    assert str(exc).startswith("ssl_connect: connect failed")
    server_exc = outcome(join)
    assert isinstance(server_exc, SSLNetworkError)
    assert "alert" in str(server_exc)
    # The same contexts accept the certificate's own name.
    join = server.accept(echo_line)
    inp, out = wrap_client(server.port, ctx, "other.example.test")
    with inp, out:
        assert sslports.ssl_peer_verified(inp) is verify
    join()


@pytest.mark.parametrize("version", VERSIONS)
def test_verify_hostname_ip_literal_without_ip_san(
    pki: Pki, servers: list[Server], version: str
) -> None:
    server = _server(servers, server_context(version, pki.other))
    join = server.accept(echo_line)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect(LOCAL, server.port, client_context(version, roots=[pki.root]))
    assert info.value.verify_code == 64
    assert info.value.verify_message is not None
    assert info.value.verify_message.startswith("IP address mismatch")
    assert isinstance(outcome(join), SSLNetworkError)


@pytest.mark.parametrize("version", VERSIONS)
def test_leading_dot_rejected_trailing_dot_ignored(
    pki: Pki, servers: list[Server], version: str
) -> None:
    server = _server(servers, server_context(version, pki.server))
    ctx = client_context(version, roots=[pki.root])
    for name in (".localhost", "..localhost"):
        join = server.accept(echo_line)
        with pytest.raises(SSLNetworkError) as info:
            wrap_client(server.port, ctx, name)
        assert info.value.verify_code == 62
        assert info.value.verify_message == "hostname mismatch"
        # Refused before any handshake: the server only sees the connection close.
        assert isinstance(outcome(join), SSLNetworkError)
    join = server.accept(echo_line)
    inp, out = wrap_client(server.port, ctx, "localhost.")
    with inp, out:
        assert sslports.ssl_peer_verified(inp)
        assert sslports.ssl_peer_check_hostname(inp, "localhost.")
        assert not sslports.ssl_peer_check_hostname(inp, ".localhost")
    join()


def test_verify_hostname_without_hostname(pki: Pki, servers: list[Server]) -> None:
    server = _server(servers, server_context("tls13", pki.server))
    join = server.accept(echo_line)
    ctx = client_context("tls13", roots=[pki.root])
    sock = socket.create_connection((LOCAL, server.port), timeout=10)
    with sock, pytest.raises(SSLError, match="hostname not provided for verification"):
        sslports.ssl_wrap_socket(sock, context=ctx)
    outcome(join)


def test_verify_hostname_type_check() -> None:
    ctx = sslports.ssl_make_client_context("auto")
    with pytest.raises(TypeError, match="ssl_set_verify_hostname"):
        sslports.ssl_set_verify_hostname(ctx, 1)  # type: ignore[arg-type]


# -- peer facts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_peer_facts_both_ends(pki: Pki, servers: list[Server], version: str) -> None:
    """The server asked for no certificate: on the server every peer query says "nothing"
    without raising; on the verifying client they describe the server."""
    server = _server(servers, server_context(version, pki.server))

    def handler(inp: Any, out: Any) -> dict[str, Any]:
        facts = _peer_facts(out)
        facts["check"] = [
            sslports.ssl_peer_check_hostname(inp, n) for n in ("localhost", LOCAL, "", ".x", "::1")
        ]
        echo_line(inp, out)
        return facts

    join = server.accept(handler)
    inp, out = sslports.ssl_connect(
        "localhost", server.port, client_context(version, roots=[pki.root])
    )
    with inp, out:
        assert _peer_facts(inp) == {
            "verified": True,
            "subject": b"/O=sslports tests/CN=localhost",
            "issuer": b"/O=sslports tests/CN=Verify Root CA",
            "names": ["localhost", "127.0.0.1", "::1"],
        }
        assert sslports.ssl_peer_check_hostname(out, "LOCALHOST")
        assert sslports.ssl_peer_check_hostname(out, "::1")
        assert not sslports.ssl_peer_check_hostname(out, "127.0.0.2")
        out.write(b"bye\n")
        out.flush()
        assert inp.readline() == b"bye\n"
    facts = join()
    assert facts == {
        "verified": False,
        "subject": None,
        "issuer": None,
        "names": [],
        "check": [False] * 5,
    }


def test_peer_names_longer_than_4_kib(servers: list[Server]) -> None:
    """A subject and an issuer of many RDNs (about 6 KB as one line) come back whole, the
    last CN included: they are not cut at a fixed buffer's end."""
    root = make_cert([f"Long Root CA part {i:03}" for i in range(250)], ca=True)
    leaf_cns = [f"unit {i:03} of a long subject" for i in range(200)] + ["localhost"]
    leaf = make_cert(leaf_cns, issuer=root, dns=["localhost"])
    assert len(leaf.subject_oneline) > 6000 and len(root.subject_oneline) > 6000
    server = _server(servers, server_context("auto", leaf))
    join = server.accept(echo_line)
    ctx = client_context("auto", roots=[chain_file(root)])
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        assert sslports.ssl_peer_subject_name(inp) == leaf.subject_oneline
        assert sslports.ssl_peer_subject_name(inp).endswith(b"/CN=localhost")
        assert sslports.ssl_peer_issuer_name(out) == root.subject_oneline
        out.write(b"bye\n")
        out.flush()
        assert inp.readline() == b"bye\n"
    join()


@pytest.mark.parametrize("version", VERSIONS)
def test_peer_names_none_unless_verified(pki: Pki, servers: list[Server], version: str) -> None:
    """A client that does not trust the root still sees the names, but no subject/issuer."""
    server = _server(servers, server_context(version, pki.server))
    join = server.accept(echo_line)
    ctx = client_context(version, verify=False, hostname=False)
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        assert sslports.ssl_peer_verified(inp) is False
        assert sslports.ssl_peer_subject_name(inp) is None
        assert sslports.ssl_peer_issuer_name(out) is None
        assert sslports.ssl_peer_certificate_hostnames(inp) == ["localhost", "127.0.0.1", "::1"]
        assert sslports.ssl_peer_check_hostname(inp, "localhost") is True
    join()


@pytest.mark.parametrize("version", VERSIONS)
def test_two_cn_client_certificate(pki: Pki, servers: list[Server], version: str) -> None:
    server = _server(servers, server_context(version, pki.server, verify="set", roots=[pki.root]))

    def handler(inp: Any, out: Any) -> dict[str, Any]:
        facts = _peer_facts(inp)
        facts["check"] = (
            sslports.ssl_peer_check_hostname(inp, "first client"),
            sslports.ssl_peer_check_hostname(inp, "second client"),
        )
        echo_line(inp, out)
        return facts

    join = server.accept(handler)
    ctx = client_context(version, roots=[pki.root], identity=[pki.client_two_cn])
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    with inp, out:
        out.write(b".\n")
        out.flush()
        assert inp.readline() == b".\n"
    facts = join()
    assert facts["names"] == ["second client"]  # the last CN
    assert facts["subject"] == b"/O=sslports tests/CN=first client/CN=second client"
    assert facts["verified"] is True
    # "first client" is no valid DNS name (a space), so neither CN is checked as one: OpenSSL
    # compares the reference name to each CN, and these match literally.
    assert facts["check"] == (True, True)


def test_peer_queries_reject_non_ports() -> None:
    for fn in (
        sslports.ssl_peer_verified,
        sslports.ssl_peer_certificate_hostnames,
        sslports.ssl_peer_subject_name,
        sslports.ssl_peer_issuer_name,
    ):
        with pytest.raises(TypeError, match=fn.__name__):
            fn(object())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["good", "none", "rogue"])
@pytest.mark.parametrize("func", ["ssl_set_verify", "ssl_try_verify"])
def test_verify_port_late_over_streams(pki: Pki, version: str, who: str, func: str) -> None:
    """Late verification on a server port from ports_to_ssl_ports (streams, no timeout set):
    the call returns as soon as the client's answer is in, although the client then sends
    nothing until it has the server's reply (it used to wait for more input after the
    client's Finished: for ever, or until the port's timeout); a failure sends the client the
    alert, which is all it can learn it from while the socket stays open (it used to stay in
    the pump: the client waited for its timeout)."""
    a, b = socket.socketpair()
    with a, b:
        sctx = server_context(version, pki.server, roots=[pki.root])
        identity = {"good": [pki.client], "rogue": [pki.rogue_client], "none": []}[who]
        cctx = client_context(version, roots=[pki.root], identity=identity)

        def serve() -> tuple[Any, bool]:
            inp, out = socket_ports(b, "accept", sctx)
            with inp, out:
                assert inp.readline() == b"go\n"
                try:
                    getattr(sslports, func)(inp, True)
                except SSLError as exc:
                    return exc, False
                verified = sslports.ssl_peer_verified(inp)
                out.write(b"verified\n" if verified else b"not verified\n")
                out.flush()
                assert inp.readline() == b"tail\n"
                return None, verified

        join = run_in_thread(serve)
        inp, out = socket_ports(a, "connect", cctx, hostname="localhost")
        with inp, out:
            out.write(b"go\n")
            out.flush()
            inp.settimeout(20)
            answer: Any
            try:
                answer = inp.readline()
            except SSLError as exc:  # a failed ssl_set_verify aborts the connection
                answer = exc
            if isinstance(answer, bytes):
                out.write(b"tail\n")
                out.flush()
            error, verified = join(20)
    if func == "ssl_try_verify" or who == "good":
        assert error is None, error
        assert verified is (who == "good")
        assert answer == (b"verified\n" if who == "good" else b"not verified\n")
    else:
        assert isinstance(error, SSLError) and str(error).startswith("ssl_set_verify: failed")
        assert not isinstance(answer, TimeoutError), answer
        assert isinstance(answer, SSLError) and "alert" in str(answer), answer


def test_try_verify_off_turns_off_what_set_verify_turned_on() -> None:
    """ssl_try_verify(ctx, False) is verification off, as Racket's ssl-try-verify! with #f (and
    as ssl_try_verify(port, False)): it left an earlier ssl_set_verify(ctx, True) in force, so
    a client still refused an untrusted server and a server a client with no certificate."""
    server_ctx = sslports.ssl_make_server_context(
        private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM
    )
    client_ctx = sslports.ssl_make_client_context()  # (no roots: the server is untrusted)
    for ctx in (server_ctx, client_ctx):
        sslports.ssl_set_verify(ctx, True)
        sslports.ssl_try_verify(ctx, False)
    listener = sslports.ssl_listen(0, 4, True, "127.0.0.1", server_ctx)
    port = sslports.ssl_addresses(listener, True)[1]

    @run_in_thread
    def serve() -> tuple[bool, bytes]:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            line = inp.readline()
            out.write(line)
            return sslports.ssl_peer_verified(inp), line

    try:
        inp, out = sslports.ssl_connect("127.0.0.1", port, client_ctx, timeout=10)
        with inp, out:
            out.write(b"in\n")
            out.flush()
            assert inp.readline() == b"in\n"
            assert sslports.ssl_peer_verified(inp) is False
        assert serve() == (False, b"in\n")
    finally:
        sslports.ssl_close(listener)
