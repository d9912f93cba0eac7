"""Issue 6: the certificate matrix.

Each case is a server certificate chain (made here with ``cryptography``) and the hostname the
client asks for. The client trusts only our test root (``ssl_load_verify_source``) and turns
on ``ssl_set_verify`` and ``ssl_set_verify_hostname``; it connects with ``ssl_wrap_socket`` over
a TCP connection to 127.0.0.1, so any hostname can be checked without DNS. A case either
completes the handshake (and ``ssl_peer_verified`` is true) or fails with the X509_V_ERR_*
code OpenSSL assigns, and then the server sees the client's alert as an error too.
"""

from __future__ import annotations

import contextvars
import datetime
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from certs import (
    DAY,
    NOW,
    OPENSSL,
    VERSIONS,
    Issued,
    Server,
    chain_file,
    client_context,
    key_file,
    make_cert,
    outcome,
    resign_sha1,
    server_context,
    wrap_client,
)
from conftest import system_default_conf
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

import sslports
from sslports import SSLNetworkError

# X509_V_ERR_* numbers (openssl/x509_vfy.h) and OpenSSL 3's text for each.
CERT_NOT_YET_VALID = 9
CERT_HAS_EXPIRED = 10
DEPTH_ZERO_SELF_SIGNED_CERT = 18
SELF_SIGNED_CERT_IN_CHAIN = 19
UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
INVALID_PURPOSE = 26
INVALID_CA = 79  # (24 is X509_V_ERR_NO_ISSUER_PUBLIC_KEY in OpenSSL 3)
PERMITTED_VIOLATION = 47
HOSTNAME_MISMATCH = 62
IP_ADDRESS_MISMATCH = 64
EE_KEY_TOO_SMALL = 66
CA_MD_TOO_WEAK = 68

TEXT = {
    CERT_NOT_YET_VALID: "certificate is not yet valid",
    CERT_HAS_EXPIRED: "certificate has expired",
    DEPTH_ZERO_SELF_SIGNED_CERT: "self-signed certificate",
    SELF_SIGNED_CERT_IN_CHAIN: "self-signed certificate in certificate chain",
    UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unable to get local issuer certificate",
    INVALID_PURPOSE: "unsuitable certificate purpose",
    INVALID_CA: "invalid CA certificate",
    PERMITTED_VIOLATION: "permitted subtree violation",
    HOSTNAME_MISMATCH: "hostname mismatch",
    IP_ADDRESS_MISMATCH: "IP address mismatch",
    EE_KEY_TOO_SMALL: "EE certificate key too weak",
    CA_MD_TOO_WEAK: "CA signature digest algorithm too weak",
}


@dataclass
class Case:
    chain: tuple[Issued, ...]  # what the server sends, leaf first
    hostname: str
    code: Optional[int]  # None: accepted
    weak: bool = False  # the server needs @SECLEVEL=0 to even load the certificate


@dataclass
class Matrix:
    root: Path
    cases: dict[str, Case]
    servers: dict[tuple[str, str], Server]

    def server(self, name: str, version: str) -> Server:
        key = (name, version)
        if key not in self.servers:
            case = self.cases[name]
            ciphers = "DEFAULT:@SECLEVEL=0" if case.weak else None
            self.servers[key] = Server(server_context(version, *case.chain, ciphers=ciphers))
        return self.servers[key]


def _build() -> tuple[Path, dict[str, Case]]:
    root = make_cert("Matrix Root CA", ca=True)
    inter = make_cert("Matrix Intermediate CA", issuer=root, ca=True)
    good = make_cert("good.example.test", issuer=inter, dns=["good.example.test"])
    direct = make_cert("direct.example.test", issuer=root, dns=["direct.example.test"])
    expired = make_cert(
        "expired.example.test",
        issuer=root,
        dns=["expired.example.test"],
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    future = make_cert(
        "future.example.test",
        issuer=root,
        dns=["future.example.test"],
        not_before=NOW + 10 * DAY,
        not_after=NOW + 40 * DAY,
    )
    selfsigned = make_cert("self.example.test", dns=["self.example.test"])
    other_root = make_cert("Other Root CA", ca=True)
    stranger = make_cert("stranger.example.test", issuer=other_root, dns=["stranger.example.test"])
    ip = make_cert("ip leaf", issuer=root, ips=["127.0.0.1", "::1"])
    wild = make_cert("wildcard leaf", issuer=root, dns=["*.example.test"])
    partial = make_cert("partial wildcard leaf", issuer=root, dns=["f*.example.test"])
    cn_only = make_cert("cn.example.test", issuer=root)
    rsa1024 = make_cert("weak.example.test", issuer=root, key="rsa1024", dns=["weak.example.test"])
    leaf_ca = make_cert("not a CA", issuer=root, dns=["notca.example.test"])
    under_leaf = make_cert("under.example.test", issuer=leaf_ca, dns=["under.example.test"])
    no_bc_ca = make_cert("no basicConstraints", issuer=root, basic_constraints=False)
    under_no_bc = make_cert("nobc.example.test", issuer=no_bc_ca, dns=["nobc.example.test"])
    nc_inter = make_cert(
        "Constrained Intermediate", issuer=root, ca=True, permitted_dns=["allowed.test"]
    )
    nc_ok = make_cert("ok.allowed.test", issuer=nc_inter, dns=["ok.allowed.test"])
    nc_bad = make_cert("evil.example.test", issuer=nc_inter, dns=["evil.example.test"])
    expired_inter = make_cert(
        "Expired Intermediate CA",
        issuer=root,
        ca=True,
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    under_expired = make_cert("late.example.test", issuer=expired_inter, dns=["late.example.test"])
    client_only = make_cert(
        "client-only leaf",
        issuer=root,
        dns=["clientonly.example.test"],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    client_inter = make_cert(
        "Intermediate for clients", issuer=root, ca=True, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    under_client_inter = make_cert(
        "eku.example.test", issuer=client_inter, dns=["eku.example.test"]
    )
    no_sign_ca = make_cert("CA without keyCertSign", issuer=root, ca=True, cert_sign=False)
    under_no_sign = make_cert("nosign.example.test", issuer=no_sign_ca, dns=["nosign.example.test"])
    sha384 = make_cert(
        "sha384.example.test", issuer=root, dns=["sha384.example.test"], hash_alg=hashes.SHA384()
    )
    cases = {
        "valid chain with intermediate": Case((good, inter), "good.example.test", None),
        "valid, directly under the root": Case((direct,), "direct.example.test", None),
        "valid, upper-case hostname": Case((good, inter), "GOOD.Example.TEST", None),
        "valid, trailing dot": Case((good, inter), "good.example.test.", None),
        "valid, SHA-384 signature": Case((sha384,), "sha384.example.test", None),
        "missing intermediate": Case(
            (good,), "good.example.test", UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        ),
        "expired": Case((expired,), "expired.example.test", CERT_HAS_EXPIRED),
        "not yet valid": Case((future,), "future.example.test", CERT_NOT_YET_VALID),
        "wrong host": Case((good, inter), "bad.example.test", HOSTNAME_MISMATCH),
        "wrong host, parent domain": Case((good, inter), "example.test", HOSTNAME_MISMATCH),
        "self-signed leaf": Case((selfsigned,), "self.example.test", DEPTH_ZERO_SELF_SIGNED_CERT),
        "untrusted root sent along": Case(
            (stranger, other_root), "stranger.example.test", SELF_SIGNED_CERT_IN_CHAIN
        ),
        "untrusted root not sent": Case(
            (stranger,), "stranger.example.test", UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        ),
        "IP SAN right": Case((ip,), "127.0.0.1", None),
        "IP SAN right, IPv6 literal": Case((ip,), "::1", None),
        "IP SAN wrong": Case((ip,), "127.0.0.2", IP_ADDRESS_MISMATCH),
        "IP SAN wrong, IPv6 literal": Case((ip,), "::2", IP_ADDRESS_MISMATCH),
        "IP SAN is not a DNS name": Case((ip,), "localhost", HOSTNAME_MISMATCH),
        "wildcard right": Case((wild,), "a.example.test", None),
        "wildcard right, upper case": Case((wild,), "ABC.EXAMPLE.TEST", None),
        "wildcard, two labels deep": Case((wild,), "a.b.example.test", HOSTNAME_MISMATCH),
        "wildcard, bare domain": Case((wild,), "example.test", HOSTNAME_MISMATCH),
        "partial wildcard f*": Case((partial,), "foo.example.test", HOSTNAME_MISMATCH),
        "partial wildcard f* vs f": Case((partial,), "f.example.test", HOSTNAME_MISMATCH),
        # OpenSSL 3 (X509_check_host without X509_CHECK_FLAG_NEVER_CHECK_SUBJECT) falls back
        # to the subject CN when a certificate has no DNS SAN, and sslports does not turn that
        # off: a CN-only certificate is accepted for its CN ...
        "CN-only certificate, its CN": Case((cn_only,), "cn.example.test", None),
        # ... and only for it.
        "CN-only certificate, other name": Case((cn_only,), "x.example.test", HOSTNAME_MISMATCH),
        "SHA-1 signed leaf": Case(
            (resign_sha1(good, inter), inter), "good.example.test", CA_MD_TOO_WEAK, weak=True
        ),
        "leaf used as a CA": Case((under_leaf, leaf_ca), "under.example.test", INVALID_CA),
        # Without basicConstraints a certificate is no CA either (OpenSSL 3 is strict).
        "CA without basicConstraints": Case(
            (under_no_bc, no_bc_ca), "nobc.example.test", INVALID_CA
        ),
        "expired intermediate": Case(
            (under_expired, expired_inter), "late.example.test", CERT_HAS_EXPIRED
        ),
        # A leaf for TLS clients only (extendedKeyUsage clientAuth) is no server.
        "leaf with clientAuth only": Case(
            (client_only,), "clientonly.example.test", INVALID_PURPOSE
        ),
        # ... nor is a leaf under an intermediate restricted to clientAuth.
        "intermediate with clientAuth only": Case(
            (under_client_inter, client_inter), "eku.example.test", INVALID_PURPOSE
        ),
        "CA without keyCertSign": Case(
            (under_no_sign, no_sign_ca), "nosign.example.test", INVALID_CA
        ),
        "name constraints respected": Case((nc_ok, nc_inter), "ok.allowed.test", None),
        "name constraints violated": Case(
            (nc_bad, nc_inter), "evil.example.test", PERMITTED_VIOLATION
        ),
    }
    cases["RSA-1024 leaf"] = Case((rsa1024,), "weak.example.test", None, weak=True)
    return chain_file(root), cases


@pytest.fixture(scope="module")
def matrix() -> Iterator[Matrix]:
    if OPENSSL is None:
        pytest.fail("the openssl command is required (scripts/install-system-deps.sh)")
    root, cases = _build()
    m = Matrix(root, cases, {})
    yield m
    for server in m.servers.values():
        server.close()


CASE_NAMES = [
    "valid chain with intermediate",
    "valid, directly under the root",
    "valid, upper-case hostname",
    "valid, trailing dot",
    "valid, SHA-384 signature",
    "missing intermediate",
    "expired",
    "not yet valid",
    "wrong host",
    "wrong host, parent domain",
    "self-signed leaf",
    "untrusted root sent along",
    "untrusted root not sent",
    "IP SAN right",
    "IP SAN right, IPv6 literal",
    "IP SAN wrong",
    "IP SAN wrong, IPv6 literal",
    "IP SAN is not a DNS name",
    "wildcard right",
    "wildcard right, upper case",
    "wildcard, two labels deep",
    "wildcard, bare domain",
    "partial wildcard f*",
    "partial wildcard f* vs f",
    "CN-only certificate, its CN",
    "CN-only certificate, other name",
    "SHA-1 signed leaf",
    "leaf used as a CA",
    "CA without basicConstraints",
    "name constraints respected",
    "name constraints violated",
    "expired intermediate",
    "leaf with clientAuth only",
    "intermediate with clientAuth only",
    "CA without keyCertSign",
]


def _connect(matrix: Matrix, name: str, version: str, ctx: Any) -> tuple[Any, Any]:
    """(client result or exception, server result or exception) for one case."""
    case = matrix.cases[name]
    server = matrix.server(name, version)
    join = server.accept(lambda i, o: sslports.ssl_peer_verified(i))
    try:
        inp, out = wrap_client(server.port, ctx, case.hostname)
    except sslports.SSLError as exc:
        return exc, outcome(join)
    with inp, out:
        client = (
            sslports.ssl_peer_verified(inp),
            sslports.ssl_peer_subject_name(inp),
            sslports.ssl_protocol_version(out),
        )
    return client, outcome(join)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_matrix(matrix: Matrix, name: str, version: str) -> None:
    case = matrix.cases[name]
    ctx = client_context(version, roots=[matrix.root])
    client, server = _connect(matrix, name, version, ctx)
    if case.code is None:
        assert not isinstance(client, BaseException), f"{name}: {client!r}"
        verified, subject, proto = client
        assert verified is True
        assert subject == case.chain[0].subject_oneline
        assert proto == version
        assert server is False  # the server asked for no client certificate
        return
    assert isinstance(client, SSLNetworkError), f"{name}: expected code {case.code}, got {client!r}"
    assert client.verify_code == case.code, (name, client.verify_code, client.verify_message)
    assert client.verify_message is not None
    assert client.verify_message.startswith(TEXT[case.code]), client.verify_message
    assert "ssl_wrap_socket: connect failed" in str(client)
    # The client aborted with an alert, so the server's handshake failed as well.
    assert isinstance(server, SSLNetworkError), repr(server)
    assert "alert" in str(server)


@pytest.mark.parametrize("version", VERSIONS)
def test_without_verification_every_case_connects(matrix: Matrix, version: str) -> None:
    """With ssl_set_verify off and no hostname check, every chain is accepted, and
    ssl_peer_verified tells the good ones from the bad ones."""
    for name in ("valid chain with intermediate", "expired", "self-signed leaf", "wrong host"):
        ctx = client_context(version, roots=[matrix.root], verify=False, hostname=False)
        client, server = _connect(matrix, name, version, ctx)
        assert not isinstance(client, BaseException), (name, client)
        expect_ok = name == "valid chain with intermediate"
        # Without hostname checking the name plays no part: "wrong host" verifies.
        if name == "wrong host":
            expect_ok = True
        assert client[0] is expect_ok, name
        assert client[1] == (matrix.cases[name].chain[0].subject_oneline if expect_ok else None)
        assert server is False


@pytest.mark.parametrize("version", VERSIONS)
def test_verification_off_hostname_on_still_rejects_mismatch(matrix: Matrix, version: str) -> None:
    """The chain may fail (not required), but a hostname mismatch is still fatal."""
    ctx = client_context(version, roots=[], verify=False, hostname=True)
    client, server = _connect(matrix, "wrong host", version, ctx)
    assert isinstance(client, SSLNetworkError)
    assert client.verify_code == HOSTNAME_MISMATCH
    assert client.verify_message is not None and client.verify_message.startswith(
        "hostname mismatch"
    )
    assert isinstance(server, SSLNetworkError)
    # The right name with the same (unverifiable) chain connects, unverified.
    client, server = _connect(matrix, "valid chain with intermediate", version, ctx)
    assert not isinstance(client, BaseException), client
    assert client[0] is False and client[1] is None


def _secure_context_for(root: Path) -> sslports.SSLClientContext:
    """The real ssl_secure_client_context, with our root as its only default verify source
    (set in a copied contextvars context, so no other test sees it)."""

    def make() -> sslports.SSLClientContext:
        sslports.ssl_default_verify_sources([root])
        return sslports.ssl_secure_client_context()

    return contextvars.copy_context().run(make)


@pytest.mark.parametrize("version", VERSIONS)
def test_secure_context_weak_leaves(matrix: Matrix, version: str) -> None:
    """The "secure" context refuses an RSA-1024 leaf and a SHA-1 signed leaf.

    Every context starts at OpenSSL security level 2 (112 bits) or higher, as Python's ssl
    contexts do, whatever level this OpenSSL compiles in: an RSA-1024 key (80 bits) is refused
    with X509_V_ERR_EE_KEY_TOO_SMALL, a SHA-1 signature (rated 63 bits by OpenSSL 3) with
    X509_V_ERR_CA_MD_TOO_WEAK. Both servers need @SECLEVEL=0 to load their certificates at all.
    """
    ctx = _secure_context_for(matrix.root)
    assert sslports.is_ssl_client_context(ctx) and ctx._sealed
    client, server = _connect(matrix, "RSA-1024 leaf", version, ctx)
    assert isinstance(client, SSLNetworkError), client
    assert client.verify_code == EE_KEY_TOO_SMALL
    assert client.verify_message is not None
    assert client.verify_message.startswith(TEXT[EE_KEY_TOO_SMALL])
    assert isinstance(server, SSLNetworkError)
    client, server = _connect(matrix, "SHA-1 signed leaf", version, ctx)
    assert isinstance(client, SSLNetworkError)
    assert client.verify_code == CA_MD_TOO_WEAK
    assert client.verify_message is not None
    assert client.verify_message.startswith(TEXT[CA_MD_TOO_WEAK])


# An OpenSSL configuration that lowers every new SSL_CTX to security level 1, as upstream
# OpenSSL's compiled-in default (and e.g. a LEGACY system crypto policy) does.
LEVEL_1_CONF = system_default_conf("CipherString = DEFAULT:@SECLEVEL=1")

LEVEL_1_SCRIPT = textwrap.dedent(
    """\
    import sys, threading
    import sslports
    from sslports import _binding

    root, chain, key = sys.argv[1:4]
    level = _binding.lib.SSL_CTX_get_security_level
    server = sslports.ssl_make_server_context("tls13")
    sslports.ssl_set_ciphers(server, "DEFAULT:@SECLEVEL=0")  # (to serve an RSA-1024 leaf)
    sslports.ssl_load_certificate_chain(server, chain)
    sslports.ssl_load_private_key(server, key)
    sslports.ssl_default_verify_sources([root])
    raw = _binding.lib.sp_ctx_new(0, _binding.ffi.new("sp_err *"))  # (OpenSSL's default)
    print("openssl", level(raw))
    _binding.lib.sp_ctx_free(raw)
    for protocol in ("secure", "auto", "tls12", "tls13"):
        print(protocol, level(sslports.ssl_make_client_context(protocol)._ptr))
    print("server", level(sslports.ssl_make_server_context("auto")._ptr))
    listener = sslports.ssl_listen(0, 5, True, "127.0.0.1", server)
    port = sslports.ssl_addresses(listener, True)[1]

    def serve():
        try:
            sslports.ssl_accept(listener)
        except sslports.SSLError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        sslports.ssl_connect("127.0.0.1", port, "secure", timeout=10)
        print("connected", "despite the RSA-1024 key")
    except sslports.SSLNetworkError as exc:
        print("refused", exc.verify_code)
    thread.join(10)
    """
)


def test_security_level_floor_under_a_level_1_openssl(tmp_path: Path) -> None:
    """Where OpenSSL's default security level is 1 (upstream builds; an openssl.cnf that
    lowers it), contexts still start at level 2, like Python's: the "secure" context refuses
    a server whose key is RSA-1024 (it accepted it, before, everywhere but on distributions
    that compile in level 2)."""
    root = make_cert("Level Root CA", ca=True)
    leaf = make_cert("127.0.0.1", issuer=root, key="rsa1024", ips=["127.0.0.1"])
    conf = tmp_path / "level1.cnf"
    conf.write_text(LEVEL_1_CONF)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            LEVEL_1_SCRIPT,
            str(chain_file(root)),
            str(chain_file(leaf)),
            str(key_file(leaf)),
        ],
        env={**os.environ, "OPENSSL_CONF": str(conf)},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = dict(line.split(" ", 1) for line in proc.stdout.decode().splitlines())
    assert lines["openssl"] == "1"  # (the configuration applies)
    for name in ("secure", "auto", "tls12", "tls13", "server"):
        assert lines[name] == "2", (name, lines)
    assert lines["refused"] == str(EE_KEY_TOO_SMALL), lines


@pytest.mark.parametrize(("level", "accepted"), [(1, True), (2, False)])
def test_rsa1024_by_security_level(matrix: Matrix, level: int, accepted: bool) -> None:
    """An RSA-1024 leaf passes at @SECLEVEL=1 (80 bits) and is refused at 2 (112 bits)."""
    ctx = client_context("tls13", roots=[matrix.root])
    sslports.ssl_set_ciphers(ctx, f"DEFAULT:@SECLEVEL={level}")
    client, server = _connect(matrix, "RSA-1024 leaf", "tls13", ctx)
    if accepted:
        assert not isinstance(client, BaseException), client
        assert client[0] is True
        assert server is False
    else:
        assert isinstance(client, SSLNetworkError), client
        assert client.verify_code == EE_KEY_TOO_SMALL
        assert isinstance(server, SSLNetworkError)


def test_expired_case_really_is_expired(matrix: Matrix) -> None:
    """Guard against a broken generator: the dates are what the cases claim."""
    now = datetime.datetime.now(datetime.timezone.utc)
    assert matrix.cases["expired"].chain[0].cert.not_valid_after_utc < now
    assert matrix.cases["not yet valid"].chain[0].cert.not_valid_before_utc > now


@pytest.mark.parametrize("version", VERSIONS)
def test_server_refuses_a_client_certificate_for_servers_only(version: str) -> None:
    """The purpose check the other way round: a server that requires client certificates
    refuses one whose extendedKeyUsage is serverAuth only (X509_V_ERR_INVALID_PURPOSE)."""
    root = make_cert("Client Purpose Root CA", ca=True)
    leaf = make_cert("localhost", issuer=root, dns=["localhost"])
    client = make_cert("server-only client", issuer=root, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    server = Server(server_context(version, leaf, verify="set", roots=[chain_file(root)]))
    try:
        join = server.accept(lambda inp, out: inp.read())
        ctx = client_context(version, verify=False, hostname=False, identity=[client])
        try:
            inp, out = wrap_client(server.port, ctx, None)
            with inp, out:
                out.write(b"hi")
                out.flush()
                inp.read()  # (TLS 1.3: the server's alert comes with the first read)
        except sslports.SSLError:
            pass
        result = outcome(join)
        assert isinstance(result, SSLNetworkError), result
        assert result.verify_code == INVALID_PURPOSE, result
    finally:
        server.close()
