"""Channel binding against independent implementations (Python's ``ssl``, openssl s_server).

* tls-server-end-point on a server with two certificates (ECDSA and RSA, as many servers
  are set up): a resumed handshake sends no certificate, and the server must still bind to
  the one the session was made with, i.e. the one the client holds as its peer certificate;
  TLS 1.2 with a ticket, TLS 1.2 with a session id (no tickets), and TLS 1.3; and a
  certificate with no single hash (Ed25519) stays "undefined" (SSLError) when resumed.
* ssl_export_keying_material without a context against ``openssl s_server -keymatexport``.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import ssl
import time
from typing import Any, Optional

import pytest
from certs import (
    LOCAL,
    Issued,
    Server,
    chain_file,
    client_context,
    key_data,
    key_file,
    make_cert,
    server_context,
)

import sslports
from sslports import SSLError

PY_VERSION = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


def echo_once(inp: Any, out: Any) -> None:
    out.write(inp.readline())
    out.flush()


@pytest.fixture(scope="module")
def dual() -> tuple[Issued, Issued, Issued]:
    root = make_cert("Dual Root CA", ca=True)
    names: dict[str, Any] = {"dns": ["localhost"], "ips": [LOCAL]}
    ec = make_cert("localhost", issuer=root, key="ec", **names)
    rsa = make_cert("localhost", issuer=root, key="rsa", **names)
    return root, ec, rsa


def _dual_server_context(version: str, ec: Issued, rsa: Issued) -> Any:
    """ECDSA loaded first, RSA last: RSA is OpenSSL's "current" certificate until a full
    handshake picks one (the clients here prefer ECDSA)."""
    ctx = sslports.ssl_make_server_context(version)
    for leaf in (ec, rsa):
        sslports.ssl_load_certificate_chain(ctx, chain_file(leaf))
        sslports.ssl_load_private_key(ctx, key_data(leaf), False)
    return ctx


@pytest.mark.parametrize(
    ("version", "tickets"), [("tls12", True), ("tls12", False), ("tls13", True)]
)
def test_server_end_point_of_resumed_session_on_dual_certificate_server(
    dual: tuple[Issued, Issued, Issued], version: str, tickets: bool
) -> None:
    root, ec, rsa = dual
    server = Server(_dual_server_context(version, ec, rsa))
    client = ssl.create_default_context(cafile=str(chain_file(root)))
    client.minimum_version = client.maximum_version = PY_VERSION[version]
    if not tickets:
        client.options |= ssl.OP_NO_TICKET  # TLS 1.2 resumes by session id
    session: Optional[ssl.SSLSession] = None
    seen = []
    try:
        for _ in range(3):

            def handler(inp: Any, out: Any) -> tuple[bytes, bool]:
                result = (
                    sslports.ssl_channel_binding(out, "tls-server-end-point"),
                    sslports.ssl_session_reused(inp),
                )
                echo_once(inp, out)  # (then closes first: the session stays resumable)
                return result

            join = server.accept(handler)
            with (
                socket.create_connection((LOCAL, server.port), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname="localhost", session=session) as s,
            ):
                s.sendall(b"x\n")
                assert s.recv(10) == b"x\n"  # (TLS 1.3: the tickets came before it)
                der = s.getpeercert(binary_form=True)
                assert der is not None
                theirs = (hashlib.sha256(der).digest(), s.session_reused)
                session = s.session
            seen.append((join(), theirs))
    finally:
        server.close()
    assert [reused for (_mine, reused), _theirs in seen] == [False, True, True]
    for mine, theirs in seen:
        assert mine == theirs
    assert seen[0][1][0] == hashlib.sha256(ec.der).digest()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_server_end_point_undefined_stays_undefined_when_resumed(version: str) -> None:
    """An Ed25519 server certificate has no single hash: both ends raise, on the full
    handshake and on the resumed one (whose session carries "undefined", not a value)."""
    root = make_cert("Ed Root CA", ca=True, key="ed25519")
    leaf = make_cert("localhost", issuer=root, key="ed25519", dns=["localhost"])
    server = Server(server_context(version, leaf))
    cctx = client_context(version, roots=[chain_file(root)])
    try:
        for reused in (False, True):

            def handler(inp: Any, out: Any) -> str:
                with pytest.raises(SSLError, match="tls-server-end-point") as info:
                    sslports.ssl_channel_binding(out, "tls-server-end-point")
                echo_once(inp, out)
                return str(info.value)

            join = server.accept(handler)
            inp, out = sslports.ssl_connect("localhost", server.port, cctx)
            with inp, out:
                assert sslports.ssl_session_reused(inp) is reused
                with pytest.raises(SSLError, match="no single hash"):
                    sslports.ssl_channel_binding(inp, "tls-server-end-point")
                out.write(b"x\n")
                out.flush()
                assert inp.readline() == b"x\n"
            assert "no single hash" in join()
    finally:
        server.close()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_export_keying_material_matches_openssl_s_server(openssl_tool: Any, version: str) -> None:
    """RFC 5705 / 8446 without a context, against ``openssl s_server -keymatexport``."""
    root = make_cert("EKM Root CA", ca=True)
    leaf = make_cert("localhost", issuer=root, dns=["localhost"])
    label, length = "EXPERIMENTAL-sslports-review", 100
    proc, port = openssl_tool.s_server(
        [
            *("-cert", str(chain_file(leaf)), "-key", str(key_file(leaf))),
            {"tls12": "-tls1_2", "tls13": "-tls1_3"}[version],
            *("-keymatexport", label, "-keymatexportlen", str(length)),
        ]
    )
    inp, out = sslports.ssl_connect(
        "localhost", port, client_context(version, roots=[chain_file(root)])
    )
    with inp, out:
        mine = sslports.ssl_export_keying_material(inp, label.encode(), length)
        out.write(b"ready\n")
        out.flush()
        seen = b""
        deadline = time.monotonic() + 10
        while b"ready" not in seen and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                seen += proc.stdout.read1(65536)
    match = re.search(rb"Keying material: ([0-9A-F]+)", seen)
    assert match is not None, seen
    assert mine == bytes.fromhex(match.group(1).decode())
