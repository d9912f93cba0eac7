"""Behaviour the Racket documentation specifies (seed/000_551031babc52e4cc.txt) that API.md
leaves as it is: checked against real sockets and certificates."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import sslports

SRC = str(Path(sslports.__file__).resolve().parent.parent)
TEST_PEM = str(sslports.TEST_PEM)


def _sources_in_child(env: dict[str, str]) -> list[Any]:
    code = textwrap.dedent(
        """
        import json, sslports
        from sslports import _binding
        ffi, lib = _binding.ffi, _binding.lib
        print(json.dumps({
            "sources": sslports.ssl_default_verify_sources(),
            "file": ffi.string(lib.X509_get_default_cert_file()).decode(),
            "dir": ffi.string(lib.X509_get_default_cert_dir()).decode(),
        }))
        """
    )
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    child = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "PYTHONPATH": SRC, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout)
    return [got["sources"], got["file"], got["dir"]]


def test_default_verify_sources_ssl_cert_dir_alone_keeps_default_file() -> None:
    # Racket: the sources come from SSL_CERT_FILE and SSL_CERT_DIR "if the variables are set,
    # or the system-wide default locations otherwise" -- each variable on its own, as OpenSSL
    # itself reads them. Setting only SSL_CERT_DIR must not drop the default bundle file.
    sources, default_file, _default_dir = _sources_in_child({"SSL_CERT_DIR": "/d1:/d2"})
    assert sources == [default_file, ["directory", "/d1"], ["directory", "/d2"]]


def test_default_verify_sources_ssl_cert_file_alone_keeps_default_dir() -> None:
    sources, _default_file, default_dir = _sources_in_child({"SSL_CERT_FILE": "/x/roots.pem"})
    assert sources == ["/x/roots.pem", ["directory", default_dir]]


def _wrapped_pair(server_ctx: Any, client_ctx: Any, server_hostname: str) -> tuple[Any, Any]:
    """A server (ports_to_ssl_ports, accept mode, checking `server_hostname`) and a client
    over a socketpair. Returns the server's exception, or what it knows of its peer
    (certificate hostnames, verified), and the client's exception or None."""
    a, b = socket.socketpair()
    streams = [a.makefile("rb"), a.makefile("wb"), b.makefile("rb"), b.makefile("wb")]
    got: dict[str, Any] = {}

    def serve() -> None:
        try:
            got["server"] = sslports.ports_to_ssl_ports(
                streams[0], streams[1], mode="accept", context=server_ctx,
                hostname=server_hostname, timeout=10,
            )  # fmt: skip
        except BaseException as exc:  # handed to the test
            got["server"] = exc

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        client: Any = sslports.ports_to_ssl_ports(
            streams[2], streams[3], mode="connect", context=client_ctx, timeout=10
        )
    except sslports.SSLError as exc:
        client = exc
    t.join(30)
    if isinstance(client, tuple):
        for port in client:
            port.close()
        client = None
    server = got["server"]
    if isinstance(server, tuple):
        facts = (
            sslports.ssl_peer_certificate_hostnames(server[0]),
            sslports.ssl_peer_verified(server[0]),
        )
        for port in server:
            port.close()
        server = facts
    for stream in streams:
        stream.close()
    a.close()
    b.close()
    return server, client


def _hostname_checking_server(try_verify: bool = False) -> sslports.SSLServerContext:
    ctx = sslports.ssl_make_server_context(
        private_key=("pem", TEST_PEM), certificate_chain=TEST_PEM
    )
    sslports.ssl_set_verify_hostname(ctx, True)  # hostname checks only, no chain verification
    if try_verify:
        sslports.ssl_try_verify(ctx, True)
    return ctx


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("try_verify", [False, True])
def test_server_hostname_verification_rejects_client_without_certificate(
    version: str, try_verify: bool
) -> None:
    # Racket, ssl-set-verify-hostname! (client or server context): "If the peer certificate does
    # not contain an entry matching the hostname, or if the peer does not present a
    # certificate, the connection is rejected and an exception is raised."
    server, _client = _wrapped_pair(
        _hostname_checking_server(try_verify),
        sslports.ssl_make_client_context(version),
        "localhost",
    )
    assert isinstance(server, sslports.SSLError), server
    assert "certificate" in str(server)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_server_hostname_verification_checks_the_client_certificate(version: str) -> None:
    # "Hostname verification does not imply certificate verification": an untrusted client
    # certificate naming the host passes, one naming another host does not.
    client_ctx = sslports.ssl_make_client_context(
        version, private_key=("pem", TEST_PEM), certificate_chain=TEST_PEM
    )
    server, _client = _wrapped_pair(_hostname_checking_server(), client_ctx, "localhost")
    assert isinstance(server, tuple), server
    hostnames, verified = server
    assert "localhost" in hostnames
    assert not verified  # the chain itself was not verified
    server, _client = _wrapped_pair(_hostname_checking_server(), client_ctx, "other.example")
    assert isinstance(server, sslports.SSLError), server
    assert server.verify_message is not None
    assert server.verify_message.startswith("hostname mismatch")


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_server_resumes_only_sessions_made_for_the_checked_client_name(version: str) -> None:
    """A resumed session is not checked again: a server that checks the client's name resumes
    only sessions made for that name (one whose certificate matched "localhost" must not let
    the client in where "other.example" is expected)."""
    import ssl

    ctx = _hostname_checking_server()
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    py = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    py.check_hostname = False
    py.verify_mode = ssl.CERT_NONE
    py.load_cert_chain(TEST_PEM)
    py.minimum_version = py.maximum_version = (
        ssl.TLSVersion.TLSv1_3 if version == "tls13" else ssl.TLSVersion.TLSv1_2
    )

    def one(expected: str, session: Any) -> tuple[Any, Any]:
        got: dict[str, Any] = {}

        def serve() -> None:
            sock, _ = lst.accept()
            try:
                inp, out = sslports.ssl_wrap_socket(
                    sock, mode="accept", context=ctx, hostname=expected, timeout=10
                )
                out.write(b"hi\n")
                out.flush()
                got["server"] = sslports.ssl_session_reused(inp)
                inp.readline()  # (the client's close)
                inp.close()
                out.close()
            except sslports.SSLError as exc:
                got["server"] = exc

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        new_session = None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            try:
                with py.wrap_socket(raw, session=session) as tls:
                    tls.recv(16)  # (TLS 1.3: the tickets come first)
                    new_session = tls.session
            except (ssl.SSLError, OSError):
                pass
        t.join(20)
        return got["server"], new_session

    try:
        reused, session = one("localhost", None)
        assert reused is False and session is not None
        reused, _ = one("localhost", session)
        assert reused is True  # (resumption itself works for the same name)
        failed, _ = one("other.example", session)
        assert isinstance(failed, sslports.SSLError), failed
        assert failed.verify_message is not None
        assert failed.verify_message.startswith("hostname mismatch")
    finally:
        lst.close()
