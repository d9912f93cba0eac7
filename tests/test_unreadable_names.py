"""A certificate whose subjectAltName cannot be decoded, with a CN that names the host.

OpenSSL will not load such a certificate (nor will GnuTLS), so the peer that presents it is
tlslite-ng, a TLS stack in pure Python that sends the certificate's bytes as they are. Two
ways to break the names: a truncated subjectAltName, and two subjectAltName extensions.

OpenSSL's name check (X509_check_host) reads the CN when it cannot decode the subjectAltName.
RFC 6125 says the subjectAltName replaces the CN, and ssl_peer_check_hostname already refused
such a name. The handshake did not: a context that checks the name but not the chain
(ssl_set_verify_hostname alone) took the certificate for "victim.example" by its CN. Now the
handshake refuses it, on either end, with a hostname mismatch that says why.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from certs import DAY, NOW, in_thread, make_key, outcome, tcp_connect, wrap_client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

import sslports
from sslports import SSLError, SSLNetworkError

with warnings.catch_warnings():  # (tlslite-ng's asyncore mixin, before Python 3.12)
    warnings.simplefilter("ignore", DeprecationWarning)
    import tlslite.api as tlslite  # (the `test` extra)

HOSTNAME_MISMATCH = 62
SAN_OID = b"\x06\x03\x55\x1d\x11"  # 2.5.29.17, subjectAltName
STAND_INS = [99, 98]  # 2.5.29.99 and .98: what cryptography signs, renamed afterwards

# The subjectAltName's DER, each with its (renamed) stand-in extension's value.
BROKEN = {
    # a SEQUENCE whose dNSName claims 9 bytes and holds 2
    "truncated": [b"\x30\x06\x82\x09ab"],
    # two well-formed extensions: one.example and two.example
    "two": [b"\x30\x0d\x82\x0bone.example", b"\x30\x0d\x82\x0btwo.example"],
}


def broken_certificate(kind: str) -> tuple[bytes, str]:
    """(DER, key PEM) of a self-signed RSA certificate, CN victim.example, whose
    subjectAltName is BROKEN[kind]. cryptography would not write those names as a
    subjectAltName, so they go in as an unknown extension that is renamed afterwards: the
    signature no longer matches, which nothing here verifies."""
    key = make_key("rsa")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "victim.example")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
    )
    for value, arc in zip(BROKEN[kind], STAND_INS):
        stand_in = x509.UnrecognizedExtension(x509.ObjectIdentifier(f"2.5.29.{arc}"), value)
        builder = builder.add_extension(stand_in, critical=False)
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    for arc in STAND_INS[: len(BROKEN[kind])]:
        stand_in_oid = b"\x06\x03\x55\x1d" + bytes([arc])
        assert der.count(stand_in_oid) == 1
        der = der.replace(stand_in_oid, SAN_OID)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return der, pem


def tlslite_credentials(kind: str) -> tuple[Any, Any]:
    der, pem = broken_certificate(kind)
    cert = tlslite.X509()
    cert.parseBinary(bytearray(der))
    key = tlslite.parsePEMKey(pem, private=True, implementations=["python"])
    return tlslite.X509CertChain([cert]), key


def tlslite_settings(version: str) -> Any:
    settings = tlslite.HandshakeSettings()
    settings.minVersion = settings.maxVersion = (3, 4) if version == "tls13" else (3, 3)
    return settings


@pytest.fixture(params=sorted(BROKEN))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def tlslite_server(kind: str) -> Iterator[Any]:
    """serve(version): a listening port whose one connection tlslite-ng serves with the
    broken certificate; returns the port and a join() giving the server's outcome."""
    listener = socket.create_server(("127.0.0.1", 0))
    chain, key = tlslite_credentials(kind)

    def serve(version: str) -> tuple[int, Any]:
        def one() -> None:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with conn:
                tls = tlslite.TLSConnection(conn)
                tls.handshakeServer(
                    certChain=chain, privateKey=key, settings=tlslite_settings(version)
                )
                while tls.read(max=4096):
                    pass

        return listener.getsockname()[1], in_thread(one)

    yield serve
    listener.close()


def name_checking_client(version: str) -> sslports.SSLClientContext:
    """Checks the name and not the chain (the certificate is self-signed and untrusted)."""
    ctx = sslports.ssl_make_client_context(version)
    sslports.ssl_set_verify_hostname(ctx, True)
    return ctx


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("name", ["victim.example", "one.example"])
def test_a_client_that_checks_the_name_refuses_it(
    tlslite_server: Any, version: str, name: str
) -> None:
    port, join = tlslite_server(version)
    with pytest.raises(SSLNetworkError) as info:
        wrap_client(port, name_checking_client(version), name)
    assert info.value.verify_code == HOSTNAME_MISMATCH, repr(info.value)
    assert info.value.verify_message == (
        f"hostname mismatch: the certificate's subjectAltName cannot be decoded, not '{name}'"
    )
    assert isinstance(outcome(join), Exception)  # (the server saw the alert)


def test_a_server_that_checks_the_clients_name_refuses_it(kind: str) -> None:
    """TLS 1.2: a tlslite-ng 0.8 client's TLS 1.3 certificate never completes a handshake
    with OpenSSL (openssl s_server -Verify 1 neither), a certificate it can read included."""
    version = "tls12"
    ctx = sslports.ssl_make_server_context(version)
    sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
    sslports.ssl_load_private_key(ctx, sslports.TEST_PEM)
    sslports.ssl_set_verify_hostname(ctx, True)
    chain, key = tlslite_credentials(kind)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:

        def client() -> None:
            with tcp_connect(listener.getsockname()[1]) as sock:
                sock.settimeout(10)
                tls = tlslite.TLSConnection(sock)
                tls.handshakeClientCert(chain, key, settings=tlslite_settings(version))
                tls.read(max=1)

        join = in_thread(client)
        conn, _ = listener.accept()
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_wrap_socket(
                conn, mode="accept", context=ctx, hostname="victim.example", timeout=10
            )
    assert info.value.verify_code == HOSTNAME_MISMATCH, repr(info.value)
    assert "subjectAltName cannot be decoded, not 'victim.example'" in str(info.value)
    assert isinstance(outcome(join), Exception)


def test_without_a_name_check_the_names_are_not_read_as_the_cn(
    tlslite_server: Any, kind: str
) -> None:
    """Nothing checked, the handshake completes; the names are then unreadable, not the CN."""
    port, join = tlslite_server("tls13")
    inp, out = wrap_client(port, sslports.ssl_make_client_context("tls13"), None)
    with inp, out:
        assert sslports.ssl_peer_check_hostname(inp, "victim.example") is False
        with pytest.raises(SSLError) as info:
            sslports.ssl_peer_certificate_hostnames(inp)
        said = str(info.value)
        assert said.startswith("ssl_peer_certificate_hostnames: reading the names failed ("), said
        if kind == "two":  # (OpenSSL reports no error of its own for it)
            assert "the certificate has two subjectAltName extensions" in said, said
            assert "Cannot allocate memory" not in said, said
    outcome(join)
