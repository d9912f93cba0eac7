"""What the exception text tells a user debugging a TLS failure (docs/guide/errors.md).

Each failure is made for real (certificates made here, real handshakes over 127.0.0.1) and the
test pins the facts its message must carry: which certificate and why for a verification
failure (the host name asked for and the names the certificate holds, the expiry date, the
issuer nobody trusts), who sent an alert and what it means, the peer's address, the file
whose contents failed to load. Not the full text: the words around the facts may change.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import (
    DAY,
    NOW,
    VERSIONS,
    Issued,
    Server,
    chain_file,
    client_context,
    key_file,
    make_cert,
    make_key,
    make_name,
    server_context,
    tcp_connect,
    wrap_client,
)
from conftest import LOCAL
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from forged_tls import ALERT, ForgingServer

import sslports
from sslports import SSLError, SSLNetworkError

CA = make_cert("errmsg CA", ca=True)
ROOTS = [chain_file(CA)]
LEAF = make_cert("localhost", issuer=CA, dns=["localhost"], ips=[LOCAL])


@pytest.fixture
def server() -> Iterator[Any]:
    """server(context, handshake_timeout=10.0) -> a certs.Server, closed after the test."""
    made: list[Server] = []

    def make(context: Any, handshake_timeout: float = 10.0) -> Server:
        made.append(Server(context, handshake_timeout=handshake_timeout))
        return made[-1]

    yield make
    for s in made:
        s.close()


def client_fails(server: Any, chain: list[Issued], version: str, host: str = "localhost") -> Any:
    """(the client's exception, the server's) for a client that verifies `chain`."""
    srv = server(server_context(version, *chain))
    join = srv.accept()
    with pytest.raises(SSLNetworkError) as info:
        wrap_client(srv.port, client_context(version, roots=ROOTS), host)
    with pytest.raises(SSLNetworkError) as server_info:
        join()
    return info.value, server_info.value


def utc(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


# -- verification, as the client sees it -----------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_hostname_mismatch_names_the_host_and_the_certificate_names(
    server: Any, version: str
) -> None:
    other = make_cert("other.example", issuer=CA, dns=["other.example", "www.other.example"])
    exc, _ = client_fails(server, [other], version)
    assert exc.verify_code == 62
    assert exc.verify_message.startswith("hostname mismatch: ")
    for fact in ("'localhost'", "other.example", "www.other.example"):
        assert fact in exc.verify_message and fact in str(exc), (fact, str(exc))
    assert str(exc).startswith("ssl_wrap_socket: connect failed (error:0A000086:")
    assert exc.openssl_errors[-1].endswith("certificate verify failed")  # (kept as it was)


@pytest.mark.parametrize("count", [9, 300])
def test_hostname_mismatch_counts_the_names_it_leaves_out(server: Any, count: int) -> None:
    """At most 8 names, then "and N more" (docs/guide/errors.md): N counts every name, also
    those past what the failure record holds (1 KiB; 300 names said "and 48 more" before)."""
    names = [f"h{i}.example.com" for i in range(count)]
    many = make_cert("many", issuer=CA, dns=names, ips=["192.0.2.1"])
    exc, _ = client_fails(server, [many], "tls13")
    assert (
        ", ".join(names[:8]) + f" and {count + 1 - 8} more, not 'localhost'" in exc.verify_message
    )


@pytest.mark.parametrize(
    "dns, said",
    [
        (["b" * 2000, "ok.example"], "the certificate is for ok.example and 1 more"),
        (["b" * 2000], "the certificate's 1 name(s) are too long to show"),
    ],
)
def test_hostname_mismatch_with_a_name_too_long_for_the_message(
    server: Any, dns: list[str], said: str
) -> None:
    """A name that does not fit the failure record (1 KiB) is counted, not shown; before,
    the message listed its unwritten bytes as empty names ("for , , , , , , , ,")."""
    long = make_cert("long", issuer=CA, dns=dns)
    exc, _ = client_fails(server, [long], "tls13")
    assert exc.verify_message == f"hostname mismatch: {said}, not 'localhost'"


def test_hostname_mismatch_through_ssl_connect(server: Any) -> None:
    srv = server(server_context("tls13", make_cert("x", issuer=CA, dns=["other.example"])))
    join = srv.accept()
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("localhost", srv.port, client_context("tls13", roots=ROOTS))
    assert "other.example, not 'localhost'" in str(info.value)
    with pytest.raises(SSLNetworkError):
        join()


def test_ip_address_mismatch_names_the_address_and_the_certificate_names(server: Any) -> None:
    dns_only = make_cert("localhost", issuer=CA, dns=["localhost"], ips=["10.1.2.3"])
    exc, _ = client_fails(server, [dns_only], "tls13", host=LOCAL)
    assert exc.verify_code == 64
    assert exc.verify_message.startswith("IP address mismatch: ")
    assert f"'{LOCAL}'" in str(exc) and "localhost, 10.1.2.3" in str(exc)


def test_a_certificate_with_many_names_lists_some() -> None:
    """(a CDN's certificate may carry hundreds: the message stays a line)"""
    from sslports import _binding

    raw = b"".join(len(n).to_bytes(4, "big") + n for n in (b"a%d.example" % i for i in range(20)))
    assert len(_binding.hostname_list(raw)) == 20
    assert _binding.hostname_list(raw[:-3]) == [f"a{i}.example" for i in range(19)]  # (cut short)
    assert _binding._printable("good.example\0.evil") == "good.example\\x00.evil"


@pytest.mark.parametrize("version", VERSIONS)
def test_expired_and_not_yet_valid_say_which_certificate_and_when(
    server: Any, version: str
) -> None:
    ended = NOW - DAY
    expired = make_cert("expired.test", issuer=CA, dns=["localhost"], not_after=ended)
    exc, server_exc = client_fails(server, [expired], version)
    assert exc.verify_code == 10
    assert exc.verify_message.startswith("certificate has expired: ")
    assert "CN=expired.test" in str(exc) and f"expired on {utc(ended)}" in str(exc)
    assert "the peer says our certificate has expired" in str(server_exc)

    starts = NOW + DAY
    future = make_cert("future.test", issuer=CA, dns=["localhost"], not_before=starts)
    exc, _ = client_fails(server, [future], version)
    assert exc.verify_code == 9
    assert "CN=future.test" in str(exc) and f"valid only from {utc(starts)}" in str(exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_untrusted_issuer_is_named_on_both_ends(server: Any, version: str) -> None:
    rogue_ca = make_cert("Rogue CA", ca=True)
    rogue = make_cert("localhost", issuer=rogue_ca, dns=["localhost"])
    exc, server_exc = client_fails(server, [rogue], version)
    assert exc.verify_code == 20
    assert "issued by '/O=sslports tests/CN=Rogue CA'" in str(exc)
    assert "not a trusted root" in exc.verify_message
    # The server reads the client's alert: who refused, and why.
    assert "tlsv1 alert unknown ca" in str(server_exc)
    assert "the peer does not trust the CA that issued our certificate" in str(server_exc)
    assert f"client {LOCAL}:" in str(server_exc)


def test_missing_intermediate_names_it(server: Any) -> None:
    inter = make_cert("errmsg Intermediate", issuer=CA, ca=True)
    leaf = make_cert("localhost", issuer=inter, dns=["localhost"])
    exc, _ = client_fails(server, [leaf], "tls13")  # (the server does not send `inter`)
    assert exc.verify_code == 20
    assert "CN=errmsg Intermediate" in str(exc) and "not sent by the peer" in str(exc)
    srv = server(server_context("tls13", leaf, inter))  # with it, all is well
    join = srv.accept()
    inp, out = wrap_client(srv.port, client_context("tls13", roots=ROOTS), "localhost")
    for p in (inp, out, *join()):
        p.close()


def test_self_signed_says_so(server: Any) -> None:
    exc, _ = client_fails(server, [make_cert("selfie", dns=["localhost"])], "tls13")
    assert exc.verify_code == 18
    assert "'/O=sslports tests/CN=selfie' is self-signed and not trusted" in str(exc)


def test_wrong_purpose_names_the_certificate(server: Any) -> None:
    key = make_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(make_name("client-only"))
        .issuer_name(CA.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(CA.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    exc, server_exc = client_fails(server, [Issued(cert, key)], "tls13")
    assert exc.verify_code == 26
    assert "unsuitable certificate purpose: certificate '/O=sslports tests/CN=client-only'" in (
        str(exc)
    )
    assert "rejected our certificate's type or purpose" in str(server_exc)


def test_verifying_an_established_client_port_says_why(server: Any) -> None:
    """ssl_set_verify on a client port whose server did not verify (it read only
    "peer certificate did not verify")."""
    rogue = make_cert("localhost", issuer=make_cert("Other CA", ca=True), dns=["localhost"])
    srv = server(server_context("tls13", rogue))
    join = srv.accept()
    ctx = client_context("tls13", roots=ROOTS, verify=False, hostname=False)
    inp, out = wrap_client(srv.port, ctx, None)
    try:
        with pytest.raises(SSLError) as info:
            sslports.ssl_set_verify(inp, True)
        # (verification that need not succeed goes on after a failure: 20, then 21 for the
        # same missing issuer; the verdict is the last)
        assert info.value.verify_code == 21
        assert "peer certificate did not verify: unable to verify the first" in str(info.value)
        assert "issued by '/O=sslports tests/CN=Other CA'" in str(info.value)
    finally:
        for p in (inp, out, *join()):
            p.close()


# -- client certificates -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_rejected_client_certificate_on_both_ends(server: Any, version: str) -> None:
    stranger = make_cert("stranger", issuer=make_cert("Stranger CA", ca=True))
    srv = server(server_context(version, LEAF, verify="set", roots=ROOTS))
    join = srv.accept(lambda inp, out: inp.read())
    ctx = client_context(version, roots=ROOTS, identity=[stranger])
    with pytest.raises(SSLNetworkError) as info:
        inp, out = wrap_client(srv.port, ctx, "localhost")
        with inp, out:
            inp.read()  # (TLS 1.3: the server's verdict comes after the client's handshake)
    assert "the peer does not trust the CA that issued our certificate" in str(info.value)
    with pytest.raises(SSLNetworkError) as server_info:
        join()
    assert server_info.value.verify_code == 20
    assert "CN=stranger" in str(server_info.value) and "CN=Stranger CA" in str(server_info.value)


def test_missing_client_certificate_tls13(server: Any) -> None:
    srv = server(server_context("tls13", LEAF, verify="set", roots=ROOTS))
    join = srv.accept(lambda inp, out: inp.read())
    with pytest.raises(SSLNetworkError) as info:
        inp, out = wrap_client(srv.port, client_context("tls13", roots=ROOTS), "localhost")
        with inp, out:
            inp.read()
    assert "the peer requires a client certificate and we sent none" in str(info.value)
    with pytest.raises(SSLNetworkError, match="peer did not return a certificate"):
        join()


@pytest.mark.parametrize("prefix", ["sslv3 alert", "ssl/tls alert"])
def test_alerts_read_the_same_in_both_spellings(prefix: str) -> None:
    """OpenSSL 3.2 and later (the wheels carry 3.5) renamed the alerts SSL 3.0 defined from
    "sslv3 alert ..." to "ssl/tls alert ...": the plain words followed only the old spelling,
    so a wheel's "certificate expired" alert came without them (make test-openssl found it).
    Both spellings, whichever OpenSSL this run uses."""
    from sslports import _binding

    for alert, words in [
        ("certificate expired", "the peer says our certificate has expired"),
        ("unsupported certificate", "the peer rejected our certificate's type or purpose"),
        ("handshake failure", "the peer refused the handshake"),
        ("bad certificate", "the peer rejected our certificate"),
    ]:
        hint = _binding.reason_hint(f"error:0A000415:SSL routines::{prefix} {alert}")
        assert hint is not None and hint.startswith(words), (alert, hint)


# -- protocol ------------------------------------------------------------------------------


def test_version_mismatch_says_who_refused(server: Any) -> None:
    srv = server(server_context("tls13", LEAF))
    join = srv.accept()
    with pytest.raises(SSLNetworkError) as info:
        wrap_client(srv.port, client_context("tls12", roots=ROOTS), "localhost")
    assert "alert protocol version: the peer accepts none of the TLS versions" in str(info.value)
    with pytest.raises(SSLNetworkError) as server_info:
        join()
    assert "unsupported protocol: the peer and this end allow no TLS version" in str(
        server_info.value
    )


def test_alpn_without_overlap_says_alpn(server: Any) -> None:
    ctx = server_context("tls13", LEAF)
    sslports.ssl_set_server_alpn(ctx, [b"h2"], False)
    srv = server(ctx)
    join = srv.accept()
    with pytest.raises(SSLNetworkError) as info:
        wrap_client(srv.port, client_context("tls13", roots=ROOTS), "localhost", alpn=[b"http/1.1"])
    assert "the peer supports none of the ALPN protocols we offered" in str(info.value)
    with pytest.raises(SSLNetworkError, match="no application protocol"):
        join()


def test_a_plain_text_server_is_named_as_such() -> None:
    with socket.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(1)

        def http() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        t = threading.Thread(target=http)
        t.start()
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect(LOCAL, listener.getsockname()[1], timeout=10)
        t.join()
    assert "wrong version number: the peer does not speak TLS" in str(info.value)


def test_a_plain_http_client_is_named_with_its_address(server: Any) -> None:
    srv = server(server_context("tls13", LEAF))
    join = srv.accept()
    with tcp_connect(srv.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        with pytest.raises(SSLNetworkError) as info:
            join()
        me = sock.getsockname()
    assert "http request: the peer sent a plain HTTP request, not TLS" in str(info.value)
    assert str(info.value).endswith(f"; client {me[0]}:{me[1]})")


@pytest.mark.parametrize(
    "reply, hint",
    [
        (b"GET / HTTP/1.0\r\n\r\n", "http request: the peer sent a plain HTTP request, not TLS"),
        (b"CONNECT a:1 HTTP/1.1\r\n\r\n", "https proxy request: the peer sent an HTTP proxy"),
        (
            b"\x15\x03\x03\x00\x02\x01\x00",  # alert (warning): close_notify
            "(the peer closed the connection with a close_notify alert)",
        ),
    ],
    ids=["http", "proxy", "close_notify"],
)
def test_a_client_meeting_request_bytes_does_not_blame_a_client(reply: bytes, hint: str) -> None:
    """A client whose server answers with bytes that start as an HTTP request: OpenSSL's
    reason is the same as a server's, and the words must fit this end too (they said "the
    client sent ... to this TLS port" to the client). A server that answers the ClientHello
    with a close_notify: OpenSSL gives no reason (SSL_ERROR_ZERO_RETURN), and the message
    said only that ("OpenSSL gave no reason: SSL_ERROR_ZERO_RETURN")."""
    with socket.create_server((LOCAL, 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(reply)

        t = threading.Thread(target=serve)
        t.start()
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect(LOCAL, listener.getsockname()[1], timeout=10)
        t.join()
    assert hint in str(info.value)
    assert "client sent" not in str(info.value)


def test_an_alert_openssl_has_no_name_for_is_called_an_alert() -> None:
    """An alert number OpenSSL has no text for (255 here; a newer peer's alert, say) read only
    "reason(1255)", in the handshake and, TLS 1.3's alerts being encrypted, on a read after it
    (the post-handshake path): both now say it is the peer's alert and its number."""
    said = "reason(1255): a fatal alert sent by the peer, number 255, unknown to OpenSSL)"
    with socket.create_server((LOCAL, 0)) as listener:

        def refuse() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"\x15\x03\x03\x00\x02\x02\xff")  # alert: fatal, 255

        t = threading.Thread(target=refuse)
        t.start()
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect(LOCAL, listener.getsockname()[1], timeout=10)
        t.join()
    assert str(info.value).endswith(said), str(info.value)
    server = ForgingServer()
    try:
        t = threading.Thread(target=server.accept)
        t.start()
        inp, out = sslports.ssl_connect(LOCAL, server.port, "tls13", timeout=10)
        t.join()
        with inp, out:
            server.send(server.data(b"first") + server.record(ALERT, b"\x02\xff"))
            assert inp.read(5) == b"first"
            with pytest.raises(SSLError) as after:
                inp.read(1)
        assert str(after.value).endswith(said), str(after.value)
    finally:
        server.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_server_without_a_certificate_is_told_so(server: Any, version: str) -> None:
    """OpenSSL's reason ("no shared cipher", or for TLS 1.3 "unsupported protocol") hides
    the cause: the listener's context never got a certificate."""
    srv = server(sslports.ssl_make_server_context(version))
    join = srv.accept()
    with pytest.raises(SSLNetworkError):
        sslports.ssl_connect(LOCAL, srv.port, version, timeout=10)
    with pytest.raises(SSLNetworkError) as info:
        join()
    assert "this server has no certificate (ssl_load_certificate_chain" in str(info.value)


@pytest.mark.parametrize("version", VERSIONS)
def test_an_sni_switch_to_a_context_without_a_certificate_is_told_so(
    server: Any, version: str
) -> None:
    """The context an SNI callback switches to has no certificate: OpenSSL's reason for TLS 1.3
    is "no suitable signature algorithm" (the hint was missing), for 1.2 "no shared cipher"."""
    ctx = server_context(version, LEAF)
    sslports.ssl_set_server_name_identification_callback(
        ctx, lambda name: sslports.ssl_make_server_context(version)
    )
    srv = server(ctx)
    join = srv.accept()
    with pytest.raises(SSLNetworkError):
        sslports.ssl_connect("localhost", srv.port, version, timeout=10)
    with pytest.raises(SSLNetworkError) as info:
        join()
    assert "this server has no certificate (ssl_load_certificate_chain" in str(info.value)


def test_reset_and_close_mid_handshake_name_the_peer(path: str) -> None:
    """(`path`: also the ports' Python handshake loop, which runs without the C fast path:
    it reports the peer's EOF itself when the pump saw it before OpenSSL did.)"""
    with socket.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(2)
        port = listener.getsockname()[1]

        def serve() -> None:
            for reset in (True, False):
                conn, _ = listener.accept()
                with conn:
                    conn.recv(1)  # (the ClientHello came)
                    if reset:  # unread data and linger 0: an RST
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    else:  # the whole ClientHello read, then a FIN
                        conn.settimeout(0.2)
                        try:
                            while conn.recv(65536):
                                pass
                        except OSError:
                            pass

        t = threading.Thread(target=serve)
        t.start()
        with pytest.raises(SSLNetworkError) as reset_info:
            sslports.ssl_connect(LOCAL, port, timeout=10)
        with pytest.raises(SSLNetworkError) as closed_info:
            sslports.ssl_connect(LOCAL, port, timeout=10)
        t.join()
    assert str(reset_info.value).endswith(f"Connection reset by peer: {LOCAL}:{port})")
    closed = str(closed_info.value)  # (OpenSSL's words, or the pump's when it saw the EOF first)
    assert "unexpected eof while reading: the peer closed the connection" in closed or (
        closed.endswith(f"connection closed by peer: {LOCAL}:{port})")
    ), closed


def test_an_ipv4_client_of_a_dual_stack_listener_is_named_in_its_ipv4_form() -> None:
    """ssl_listen(port) with no address listens on [::] for IPv4 too, whose clients the socket
    reports as v4-mapped IPv6 addresses. A failed handshake named them "[::ffff:127.0.0.1]:port"
    where ssl_addresses says "127.0.0.1": both now say the IPv4 form."""
    listener = sslports.ssl_listen(
        0, 5, True, None, server_context("tls13", LEAF), handshake_timeout=0.3
    )
    with listener:
        if sslports.ssl_addresses(listener)[1] != "::":
            pytest.skip("no IPv6 here: ssl_listen(port) listens on IPv4 alone")
        port = sslports.ssl_addresses(listener, True)[1]
        with socket.create_connection((LOCAL, port)) as sock:  # says nothing
            me = sock.getsockname()
            with pytest.raises(TimeoutError) as timed_out:
                sslports.ssl_accept(listener)
        assert str(timed_out.value) == f"ssl_accept: handshake timed out (client {LOCAL}:{me[1]})"
        with socket.create_connection((LOCAL, port)) as sock:
            me = sock.getsockname()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            with pytest.raises(SSLNetworkError) as failed:
                sslports.ssl_accept(listener)
        assert str(failed.value).endswith(f"; client {LOCAL}:{me[1]})"), str(failed.value)


def test_handshake_timeouts_name_the_peer(server: Any) -> None:
    srv = server(server_context("tls13", LEAF), handshake_timeout=0.2)
    join = srv.accept()
    with tcp_connect(srv.port) as sock:  # says nothing
        with pytest.raises(TimeoutError) as info:
            join()
        me = sock.getsockname()
    assert str(info.value) == f"ssl_accept: handshake timed out (client {me[0]}:{me[1]})"
    with socket.socket() as listener:  # accepts, says nothing
        listener.bind((LOCAL, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(TimeoutError) as info:
            sslports.ssl_connect(LOCAL, port, timeout=0.2)
    assert str(info.value) == f"ssl_connect: handshake timed out ({LOCAL}:{port})"


def test_asyncio_handshake_failures_say_why_too(server: Any) -> None:
    from sslports import aio

    srv = server(server_context("tls13", make_cert("x", issuer=CA, dns=["other.example"])))
    srv.accept()  # (its failure is not looked at)

    async def main() -> None:
        with pytest.raises(SSLNetworkError) as info:
            await aio.open_ssl_connection(
                "localhost", srv.port, client_context("tls13", roots=ROOTS), timeout=10
            )
        assert "the certificate is for other.example, not 'localhost'" in str(info.value)
        assert info.value.verify_message.startswith("hostname mismatch: ")

    asyncio.run(main())


def test_asyncio_server_without_a_certificate() -> None:
    from sslports import aio

    async def main() -> None:
        failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def accept(reader: Any, writer: Any) -> None:
            no_certificate = sslports.ssl_make_server_context("tls13")
            try:
                await aio.wrap_ssl_streams(reader, writer, mode="accept", context=no_certificate)
            except SSLNetworkError as exc:
                failed.set_result(exc)

        plain = await asyncio.start_server(accept, LOCAL, 0)
        async with plain:
            port = plain.sockets[0].getsockname()[1]
            raw_r, raw_w = await asyncio.open_connection(LOCAL, port)
            with pytest.raises(SSLNetworkError):
                plain_client = client_context("tls13", verify=False, hostname=False)
                await aio.wrap_ssl_streams(raw_r, raw_w, context=plain_client)
            exc = await failed
        assert "this server has no certificate (ssl_load_certificate_chain" in str(exc)

    asyncio.run(main())


# -- configuration ----------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        d[name] = tmp_path / name
        d[name].write_bytes(data)

    put("bad.pem", b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n")
    put("text.pem", b"hello\n")
    put("chain.pem", LEAF.pem)
    put("key.pem", LEAF.key_pem)
    put(
        "encrypted.pem",
        LEAF.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
    )
    put(
        "key.der",
        LEAF.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return d


def load_fails(call: Any) -> str:
    with pytest.raises(SSLError) as info:
        call()
    return str(info.value)


def test_contents_that_fail_to_load_name_their_file(files: dict[str, Path]) -> None:
    S = sslports.ssl_make_server_context
    bad, text = files["bad.pem"], files["text.pem"]
    for path, call, reason in (
        (bad, lambda: sslports.ssl_load_certificate_chain(S(), bad), "bad base64 decode"),
        (text, lambda: sslports.ssl_load_certificate_chain(S(), text), "no certificate found"),
        (bad, lambda: sslports.ssl_load_private_key(S(), bad, False), "no readable private"),
        (bad, lambda: sslports.ssl_load_verify_source(S(), bad), "bad base64 decode"),
        (text, lambda: sslports.ssl_load_verify_source(S(), text), "no certificate or CRL"),
        (text, lambda: sslports.ssl_load_verify_root_certificates(S(), text), "no certificate"),
        (
            text,
            lambda: sslports.ssl_load_suggested_certificate_authorities(S(), text),
            "no certificate found",
        ),
        (bad, lambda: sslports.ssl_server_context_enable_dhe(S(), bad), "no DH parameters"),
        (text, lambda: S(private_key=("pem", text)), "no readable private key"),
    ):
        message = load_fails(call)
        assert message.endswith(f"{reason}: {str(path)!r})") or (
            reason in message and message.endswith(f": {str(path)!r})")
        ), message


def test_a_key_that_does_not_match_names_its_file(files: dict[str, Path]) -> None:
    ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(ctx, files["chain.pem"])
    other = key_file(make_cert("someone else"))
    message = load_fails(lambda: sslports.ssl_load_private_key(ctx, other, False))
    assert message.endswith(f"private key does not match the certificate: {str(other)!r})")


def test_encrypted_keys_say_what_is_missing(files: dict[str, Path]) -> None:
    ctx = sslports.ssl_make_server_context()
    path = files["encrypted.pem"]
    message = load_fails(lambda: sslports.ssl_load_private_key(ctx, path, False))
    assert "the key is encrypted and no password was given" in message
    assert message.endswith(f": {str(path)!r})")
    message = load_fails(lambda: sslports.ssl_load_private_key(ctx, path, False, password="no"))
    assert "wrong password" in message and message.endswith(f": {str(path)!r})")
    sslports.ssl_load_private_key(ctx, path, False, password="secret")


def test_pem_and_der_mixed_up(files: dict[str, Path]) -> None:
    ctx = sslports.ssl_make_server_context()
    message = load_fails(lambda: sslports.ssl_load_private_key(ctx, files["key.pem"], False, True))
    assert "the data is PEM, which asn1=False reads" in message
    message = load_fails(lambda: sslports.ssl_load_private_key(ctx, files["key.der"], False))
    assert "the data looks like DER, which asn1=True reads" in message
    sslports.ssl_load_private_key(ctx, files["key.der"], False, True)


def test_a_directory_source_says_what_the_path_is(files: dict[str, Path], tmp_path: Path) -> None:
    ctx = sslports.ssl_make_server_context()
    missing = tmp_path / "no-such-dir"
    message = load_fails(lambda: sslports.ssl_load_verify_source(ctx, ("directory", missing)))
    assert message == (
        f"ssl_load_verify_source: load failed (No such file or directory: {str(missing)!r})"
    )
    a_file = files["chain.pem"]
    message = load_fails(lambda: sslports.ssl_load_verify_source(ctx, ("directory", a_file)))
    assert message == f"ssl_load_verify_source: load failed (not a directory: {str(a_file)!r})"
    sslports.ssl_load_verify_source(ctx, ("directory", missing), try_=True)  # (still quiet)


def test_cipher_specs_are_quoted_with_a_hint() -> None:
    ctx = sslports.ssl_make_server_context()
    message = load_fails(lambda: sslports.ssl_set_ciphers(ctx, "NOPE-CIPHER"))
    assert message == (
        "ssl_set_ciphers: cipher selection failed "
        "(error:0A0000B9:SSL routines::no cipher match: 'NOPE-CIPHER')"
    )
    message = load_fails(lambda: sslports.ssl_set_ciphers(ctx, "TLS_AES_128_GCM_SHA256"))
    assert "TLS 1.3 suites (TLS_...) are set with ssl_set_ciphersuites" in message
    message = load_fails(lambda: sslports.ssl_set_ciphersuites(ctx, "AES128-SHA"))
    assert "'AES128-SHA'; TLS <= 1.2 suites are set with ssl_set_ciphers" in message
    message = load_fails(lambda: sslports.ssl_set_ciphers(ctx, "A\0B"))
    assert "contains a NUL character" in message


def test_unknown_protocol_names_suggest_the_right_one() -> None:
    for given, meant in (("TLSv1.2", "tls12"), ("tls1.3", "tls13"), ("TLS", "tls")):
        with pytest.raises(ValueError) as info:
            sslports.ssl_make_client_context(given)
        assert str(info.value) == (
            f"ssl_make_client_context: unknown protocol {given!r} (did you mean {meant!r}?)"
        )
    with pytest.raises(ValueError) as info:
        sslports.ssl_connect("localhost", 443, "tls99")
    assert "expected one of: secure, auto, sslv2-or-v3, sslv2, sslv3, tls, tls11, tls12, tls13" in (
        str(info.value)
    )


def test_path_type_errors_name_the_type() -> None:
    with pytest.raises(TypeError) as info:
        sslports.ssl_load_certificate_chain(sslports.ssl_make_server_context(), 5)
    assert str(info.value).endswith("got int")


@pytest.mark.parametrize("how", ["wrap_socket", "ports"])
def test_a_hostname_too_long_for_sni_fails_its_setup(how: str) -> None:
    """SNI carries at most 255 bytes (RFC 6066), and a valid DNS name has at most 253
    characters: a longer hostname is an out-of-range value, a ValueError naming the call (as
    from ssl_connect), before anything is sent (the peer sees no ClientHello). (It was an
    SSLError from OpenSSL's refusal of the SNI name: "hostname setup failed".)"""
    name = ".".join(["a" * 60] * 5)  # (304 bytes)
    a, b = socket.socketpair()
    ctx = sslports.ssl_make_client_context("tls12")
    try:
        func = "ssl_wrap_socket" if how == "wrap_socket" else "ports_to_ssl_ports"
        with pytest.raises(ValueError, match=rf"^{func}: hostname is longer than"):
            if how == "wrap_socket":
                sslports.ssl_wrap_socket(a, context=ctx, hostname=name, timeout=5)
            else:
                rf, wf = a.makefile("rb"), a.makefile("wb")
                with rf, wf:
                    sslports.ports_to_ssl_ports(rf, wf, mode="connect", context=ctx, hostname=name)
        b.setblocking(False)
        try:
            sent = b.recv(1)  # (nothing, or b"" once the socket is closed)
        except BlockingIOError:
            sent = b""
        assert sent == b""
    finally:
        a.close()
        b.close()


def test_hostname_mismatch_of_a_non_ascii_name_shows_the_form_compared(server: Any) -> None:
    """A non-ASCII name is checked in its IDNA form: a certificate naming 'bücher.example'
    itself (a U-label, which RFC 6125 certificates must not hold) does not match it, and the
    message read "the certificate is for bücher.example, not 'bücher.example'"."""
    ulabel = make_cert("bücher.example", issuer=CA, dns=[])
    exc, _ = client_fails(server, [ulabel], "tls13", host="bücher.example")
    assert exc.verify_message == (
        "hostname mismatch: the certificate is for bücher.example, not 'bücher.example' "
        "(compared as 'xn--bcher-kva.example')"
    )
