"""Issue 4: channel binding, exported keying material and connection facts.

* ssl_channel_binding: "tls-unique" (TLS 1.2; SSLError on 1.3), "tls-exporter" (TLS 1.3, or
  TLS 1.2 with the extended master secret), "tls-server-end-point" (RFC 5929 hash of the
  server certificate, checked against ``cryptography``'s DER); both ends equal; tls-unique
  also compared with Python's ``ssl`` (``get_channel_binding``) on the other end, fresh and
  resumed; ssl_default_channel_binding; ssl_export_keying_material.
* Facts: ssl_protocol_version, ssl_cipher_name, ssl_session_reused (ssl_connect resumes by
  itself), SSLKEYLOGFILE (in a subprocess, several threads at once), ssl_set_keylogger.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from certs import (
    LOCAL,
    VERSIONS,
    Issued,
    Server,
    chain_file,
    client_context,
    echo_line,
    in_thread,
    key_file,
    make_cert,
    outcome,
    resign_sha1,
    server_context,
)
from conftest import AgreeingInt, socket_under
from cryptography.hazmat.primitives import hashes

import sslports
from sslports import SSLError

PY_VERSION = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


@dataclass
class Certs:
    root: Path
    sha256: Issued  # localhost, ECDSA with SHA-256
    sha384: Issued  # localhost, ECDSA with SHA-384
    sha1: Issued  # localhost, ECDSA with SHA-1 (tls-server-end-point upgrades it to SHA-256)
    ed25519: Issued  # localhost, Ed25519 (no single hash: tls-server-end-point undefined)
    ed_root: Path


FORGED_RECORD_ERRORS = ("bad record mac", "record layer failure")


@pytest.fixture(scope="module")
def certs() -> Certs:
    root = make_cert("Binding Root CA", ca=True, key="ec384")
    names: dict[str, Any] = {"dns": ["localhost"], "ips": [LOCAL]}
    leaf = make_cert("localhost", issuer=root, **names)
    ed_root = make_cert("Ed25519 Root CA", ca=True, key="ed25519")
    return Certs(
        root=chain_file(root),
        sha256=leaf,
        sha384=make_cert("localhost", issuer=root, hash_alg=hashes.SHA384(), **names),
        sha1=resign_sha1(leaf, root),
        ed25519=make_cert("localhost", issuer=ed_root, key="ed25519", **names),
        ed_root=chain_file(ed_root),
    )


def _pair(
    server_ctx: Any,
    client_ctx: Any,
    server_fn: Callable[[Any, Any], Any],
    client_fn: Callable[[Any, Any], Any],
    host: str = "localhost",
) -> tuple[Any, Any]:
    """One connection: (client_fn(inp, out), server_fn(inp, out)); then a line is echoed."""
    server = Server(server_ctx)
    try:

        def handler(inp: Any, out: Any) -> Any:
            result = server_fn(inp, out)
            echo_line(inp, out)
            return result

        join = server.accept(handler)
        inp, out = sslports.ssl_connect(host, server.port, client_ctx)
        with inp, out:
            client = client_fn(inp, out)
            out.write(b"end\n")
            out.flush()
            assert inp.readline() == b"end\n"
        return client, join()
    finally:
        server.close()


def _bindings(inp: Any, out: Any) -> dict[str, Any]:
    """Every binding type from both ports (an SSLError becomes its message)."""
    result: dict[str, Any] = {}
    for kind in ("tls-unique", "tls-exporter", "tls-server-end-point"):
        values = []
        for p in (inp, out):
            try:
                values.append(sslports.ssl_channel_binding(p, kind))
            except SSLError as exc:
                values.append(f"SSLError: {exc}")
        assert values[0] == values[1], kind  # both ports of one end agree
        result[kind] = values[0]
    result["default"] = sslports.ssl_default_channel_binding(out)
    return result


@pytest.mark.parametrize("version", VERSIONS)
def test_bindings_equal_at_both_ends(certs: Certs, version: str) -> None:
    client, server = _pair(
        server_context(version, certs.sha256),
        client_context(version, roots=[certs.root]),
        _bindings,
        _bindings,
    )
    assert client == server
    assert client["tls-server-end-point"] == hashlib.sha256(certs.sha256.der).digest()
    assert len(client["tls-exporter"]) == 32
    if version == "tls12":
        assert isinstance(client["tls-unique"], bytes) and len(client["tls-unique"]) == 12
        assert client["default"] == ("tls-unique", client["tls-unique"])
    else:
        assert client["tls-unique"].startswith("SSLError: ssl_channel_binding")
        assert "TLS 1.3" in client["tls-unique"]
        assert client["default"] == ("tls-exporter", client["tls-exporter"])
    # A second connection binds to different values.
    again, _server = _pair(
        server_context(version, certs.sha256),
        client_context(version, roots=[certs.root]),
        _bindings,
        _bindings,
    )
    assert again["tls-exporter"] != client["tls-exporter"]
    assert again["tls-server-end-point"] == client["tls-server-end-point"]
    if version == "tls12":
        assert again["tls-unique"] != client["tls-unique"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("which", "digest"), [("sha384", hashlib.sha384), ("sha1", hashlib.sha256)]
)
def test_server_end_point_hash_follows_signature(
    certs: Certs, version: str, which: str, digest: Any
) -> None:
    """SHA-384 signed: SHA-384 of the DER. SHA-1 signed: upgraded to SHA-256 (RFC 5929)."""
    leaf: Issued = getattr(certs, which)
    sctx = server_context(version, leaf, ciphers="DEFAULT:@SECLEVEL=0")
    cctx = client_context(version, verify=False, hostname=False)
    sslports.ssl_set_ciphers(cctx, "DEFAULT:@SECLEVEL=0")

    def endpoint(inp: Any, out: Any) -> bytes:
        return sslports.ssl_channel_binding(inp, "tls-server-end-point")

    client, server = _pair(sctx, cctx, endpoint, endpoint)
    assert client == server == digest(leaf.der).digest()


@pytest.mark.parametrize("version", VERSIONS)
def test_server_end_point_ed25519_raises(certs: Certs, version: str) -> None:
    def endpoint(inp: Any, out: Any) -> str:
        with pytest.raises(SSLError, match="ssl_channel_binding") as info:
            sslports.ssl_channel_binding(out, "tls-server-end-point")
        # The other bindings still work on this connection.
        assert len(sslports.ssl_channel_binding(inp, "tls-exporter")) == 32
        return str(info.value)

    client, server = _pair(
        server_context(version, certs.ed25519),
        client_context(version, roots=[certs.ed_root]),
        endpoint,
        endpoint,
    )
    assert "tls-server-end-point" in client and "tls-server-end-point" in server


def test_server_end_point_without_a_server_certificate_raises() -> None:
    """An anonymous suite (TLS 1.2, @SECLEVEL=0, a client that requires no certificate): the
    server presents no certificate, so there is nothing to bind to. tls-server-end-point
    raises at both ends (never empty bytes, which would bind nothing); tls-unique works."""

    def endpoint(inp: Any, out: Any) -> tuple[str, str, int]:
        with pytest.raises(SSLError, match="no server certificate") as info:
            sslports.ssl_channel_binding(out, "tls-server-end-point")
        return (
            sslports.ssl_cipher_name(inp),
            str(info.value),
            len(sslports.ssl_channel_binding(inp, "tls-unique")),
        )

    server_ctx = sslports.ssl_make_server_context("tls12")
    sslports.ssl_set_ciphers(server_ctx, "aNULL:@SECLEVEL=0")
    client_ctx = sslports.ssl_make_client_context("tls12")
    sslports.ssl_set_ciphers(client_ctx, "ALL:@SECLEVEL=0")
    client, server = _pair(server_ctx, client_ctx, endpoint, endpoint)
    assert client[0].startswith(("ADH", "AECDH")) and client == server
    assert "tls-server-end-point" in client[1] and client[2] == 12


# -- against Python's ssl ------------------------------------------------------------------------


def _py_server_ctx(certs: Certs, version: str, ems: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain_file(certs.sha256), key_file(certs.sha256))
    ctx.minimum_version = ctx.maximum_version = PY_VERSION[version]
    if not ems:
        ctx.options |= 1  # SSL_OP_NO_EXTENDED_MASTER_SECRET (OpenSSL 3)
    return ctx


def _py_serve(ctx: ssl.SSLContext, count: int) -> tuple[int, Callable[..., Any]]:
    """A Python ssl server for `count` connections; each echoes one line. The join returns
    [(tls-unique, session_reused, tls-exporter), ...]."""
    listener = socket.create_server((LOCAL, 0))
    port = listener.getsockname()[1]

    def run() -> list[tuple[Optional[bytes], bool]]:
        seen = []
        with listener:
            for _ in range(count):
                raw, _addr = listener.accept()
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    seen.append((conn.get_channel_binding("tls-unique"), conn.session_reused))
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(100)
                        if not chunk:
                            break
                        data += chunk
                    conn.sendall(data)
        return seen

    return port, in_thread(run)


def test_tls_unique_matches_python_server(certs: Certs) -> None:
    """sslports client, Python server, TLS 1.2; the second connection resumes, where
    tls-unique is the server's Finished instead of the client's."""
    port, join = _py_serve(_py_server_ctx(certs, "tls12"), 2)
    ctx = client_context("tls12", roots=[certs.root])
    mine = []
    for _ in range(2):
        inp, out = sslports.ssl_connect("localhost", port, ctx)
        with inp, out:
            out.write(b"x\n")
            out.flush()
            assert inp.readline() == b"x\n"
            mine.append(
                (sslports.ssl_channel_binding(inp, "tls-unique"), sslports.ssl_session_reused(out))
            )
    theirs = join()
    assert mine == theirs
    assert [reused for _cb, reused in mine] == [False, True]


def test_tls_unique_matches_python_client(certs: Certs) -> None:
    server = Server(server_context("tls12", certs.sha256))
    try:
        join = server.accept(
            lambda i, o: (sslports.ssl_channel_binding(o, "tls-unique"), echo_line(i, o))[0]
        )
        ctx = ssl.create_default_context(cafile=str(certs.root))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection((LOCAL, server.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as s,
        ):
            theirs = s.get_channel_binding("tls-unique")
            s.sendall(b"x\n")
            assert s.recv(10) == b"x\n"
        assert theirs is not None and join() == theirs
    finally:
        server.close()


def test_tls_exporter_needs_ems_on_tls12(certs: Certs) -> None:
    """A TLS 1.2 peer without the extended master secret: tls-exporter is undefined and
    raises; tls-unique (and so the default binding) still works."""
    port, join = _py_serve(_py_server_ctx(certs, "tls12", ems=False), 1)
    inp, out = sslports.ssl_connect("localhost", port, client_context("tls12", roots=[certs.root]))
    with inp, out:
        with pytest.raises(SSLError, match="extended master secret"):
            sslports.ssl_channel_binding(inp, "tls-exporter")
        unique = sslports.ssl_channel_binding(inp, "tls-unique")
        assert sslports.ssl_default_channel_binding(out) == ("tls-unique", unique)
        out.write(b"x\n")
        out.flush()
        assert inp.readline() == b"x\n"
    assert join() == [(unique, False)]


# -- exported keying material ------------------------------------------------------------------


def _ekm(inp: Any, out: Any) -> dict[str, bytes]:
    return {
        "plain": sslports.ssl_export_keying_material(inp, b"EXPERIMENTAL-test", 48),
        "ctx": sslports.ssl_export_keying_material(out, b"EXPERIMENTAL-test", 48, b"context"),
        "empty": sslports.ssl_export_keying_material(out, b"EXPERIMENTAL-test", 48, b""),
        "other": sslports.ssl_export_keying_material(inp, b"EXPERIMENTAL-other", 48),
        "long": sslports.ssl_export_keying_material(inp, bytearray(b"EXPERIMENTAL-test"), 4096),
        "rfc9266": sslports.ssl_export_keying_material(out, b"EXPORTER-Channel-Binding", 32, b""),
        "exporter": sslports.ssl_channel_binding(inp, "tls-exporter"),
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_export_keying_material(certs: Certs, version: str) -> None:
    client, server = _pair(
        server_context(version, certs.sha256),
        client_context(version, roots=[certs.root]),
        _ekm,
        _ekm,
    )
    assert client == server
    assert len(client["plain"]) == 48 and len(client["long"]) == 4096
    assert len({client["plain"], client["ctx"], client["other"]}) == 3
    # RFC 8446 7.5: in TLS 1.3 "no context" and an empty context are the same;
    # RFC 5705 (TLS 1.2) tells them apart.
    assert (client["empty"] == client["plain"]) is (version == "tls13")
    assert client["rfc9266"] == client["exporter"]


def test_export_keying_material_bad_arguments(certs: Certs) -> None:
    def check(inp: Any, out: Any) -> None:
        f = sslports.ssl_export_keying_material
        for args, exc in [
            (("label", 16), TypeError),
            ((b"label", "16"), TypeError),
            ((b"label", True), TypeError),
            ((b"label", 16.0), TypeError),
            ((b"label", 0), ValueError),
            ((b"label", -1), ValueError),
            ((b"label", 65537), ValueError),
            ((b"label", AgreeingInt(1 << 40)), ValueError),  # (was a 1 TiB ffi.new)
            ((b"label", 16, "context"), TypeError),
            ((b"label", 16, 5), TypeError),
            ((b"label", 16, bytes(65536)), ValueError),  # RFC 5705: a 2-byte length
        ]:
            with pytest.raises(exc, match="ssl_export_keying_material"):
                f(inp, *args)
        with pytest.raises(TypeError, match="ssl_export_keying_material"):
            f(object(), b"label", 16)
        # TLS 1.2 reserves the labels of its own key derivation.
        with pytest.raises(SSLError, match="ssl_export_keying_material"):
            f(inp, b"master secret", 16)
        with pytest.raises(ValueError, match="ssl_channel_binding"):
            sslports.ssl_channel_binding(inp, "tls-unknown")
        with pytest.raises(TypeError, match="ssl_channel_binding"):
            sslports.ssl_channel_binding(inp, b"tls-unique")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="ssl_channel_binding"):
            sslports.ssl_channel_binding(object(), "tls-unique")

    _pair(
        server_context("tls12", certs.sha256),
        client_context("tls12", roots=[certs.root]),
        lambda i, o: None,
        check,
    )


# TLS 1.3 exports through HKDF-Expand: at most 255 x the suite's hash length (8160 bytes with
# SHA-256, 12240 with SHA-384). Past it OpenSSL failed with a bare "internal error" SSLError;
# it is an out-of-range value, a ValueError that names the limit. TLS 1.2 has no such limit.
@pytest.mark.parametrize(
    ("version", "suite", "limit"),
    [
        ("tls13", "TLS_AES_128_GCM_SHA256", 8160),
        ("tls13", "TLS_AES_256_GCM_SHA384", 12240),
        ("tls12", None, 65536),
    ],
)
def test_export_keying_material_length_limit(
    certs: Certs, version: str, suite: Optional[str], limit: int
) -> None:
    def check(inp: Any, out: Any) -> bytes:
        f = sslports.ssl_export_keying_material
        if version == "tls13":
            with pytest.raises(ValueError, match=f"ssl_export_keying_material: .* {limit} "):
                f(inp, b"EXPERIMENTAL-test", limit + 1)
            # a label of more than 249 bytes: OpenSSL's bare "tls illegal exporter label"
            # SSLError before, now a ValueError that names the limit (a longer TLS 1.2
            # label and context was one already)
            assert len(f(inp, b"x" * 249, 16)) == 16
            with pytest.raises(ValueError, match=r"ssl_export_keying_material: .* 249 bytes"):
                f(inp, b"x" * 250, 16)
        return f(out, b"EXPERIMENTAL-test", limit)

    cctx = client_context(version, roots=[certs.root])
    if suite is not None:
        sslports.ssl_set_ciphersuites(cctx, suite)
    client, server = _pair(server_context(version, certs.sha256), cctx, check, check)
    assert client == server and len(client) == limit


# -- connection facts ----------------------------------------------------------------------------


def _facts(inp: Any, out: Any) -> tuple[Any, ...]:
    return (
        sslports.ssl_protocol_version(inp),
        sslports.ssl_protocol_version(out),
        sslports.ssl_cipher_name(inp),
        sslports.ssl_cipher_name(out),
        sslports.ssl_session_reused(inp),
    )


@pytest.mark.parametrize(
    ("version", "cipher"),
    [
        ("tls12", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("tls12", "ECDHE-ECDSA-CHACHA20-POLY1305"),
        ("tls13", "TLS_AES_128_GCM_SHA256"),
        ("tls13", "TLS_CHACHA20_POLY1305_SHA256"),
    ],
)
def test_protocol_version_and_cipher(certs: Certs, version: str, cipher: str) -> None:
    cctx = client_context(version, roots=[certs.root])
    if version == "tls12":
        sslports.ssl_set_ciphers(cctx, cipher)
    else:
        sslports.ssl_set_ciphersuites(cctx, cipher)
    client, server = _pair(server_context(version, certs.sha256), cctx, _facts, _facts)
    assert client == server == (version, version, cipher, cipher, False)


def test_protocol_version_auto_negotiates_tls13(certs: Certs) -> None:
    client, server = _pair(
        server_context("auto", certs.sha256),
        client_context("auto", roots=[certs.root]),
        _facts,
        _facts,
    )
    assert client[:2] == server[:2] == ("tls13", "tls13")
    assert client[2].startswith("TLS_")


def _talk(inp: Any, out: Any) -> None:
    out.write(b"hi\n")
    out.flush()
    assert inp.readline() == b"hi\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_session_resumption(certs: Certs, version: str) -> None:
    """ssl_connect resumes by itself: the same client context, host and port. A TLS 1.3
    client gets its tickets after the handshake; it reads the echo before closing, so it has
    processed them."""
    server = Server(server_context(version, certs.sha256))
    other = Server(server_context(version, certs.sha256))
    try:
        ctx = client_context(version, roots=[certs.root])
        expected = [
            (server, ctx, False),
            (server, ctx, True),
            (server, ctx, True),
            (other, ctx, False),  # another port: no session for it yet
            (other, ctx, True),
            (server, client_context(version, roots=[certs.root]), False),  # another context
            (server, ctx, True),  # the first context still has its session
        ]
        for srv, cctx, reused in expected:
            join = srv.accept(lambda i, o: (sslports.ssl_session_reused(o), echo_line(i, o))[0])
            inp, out = sslports.ssl_connect("localhost", srv.port, cctx)
            with inp, out:
                assert sslports.ssl_session_reused(inp) is reused
                assert sslports.ssl_peer_verified(inp)  # a resumed session is still verified
                assert sslports.ssl_peer_subject_name(inp) == b"/O=sslports tests/CN=localhost"
                _talk(inp, out)
            assert join() is reused
    finally:
        server.close()
        other.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_session_survives_close_without_close_notify(certs: Certs, version: str) -> None:
    """The server closes first without close_notify (as ssl_accept ports do) and the client
    reads to that EOF: a truncation, not an attack, so the session stays resumable (TLS 1.1+,
    RFC 5246 7.2.1), although OpenSSL 3 raises a fatal alert internally for it."""
    server = Server(server_context(version, certs.sha256))

    def say_bye(inp: Any, out: Any) -> bool:
        assert inp.readline() == b"hi\n"
        out.write(b"bye\n")
        out.flush()
        return sslports.ssl_session_reused(inp)

    try:
        ctx = client_context(version, roots=[certs.root])
        for reused in (False, True, True):
            join = server.accept(say_bye)
            inp, out = sslports.ssl_connect("localhost", server.port, ctx)
            with inp, out:
                assert sslports.ssl_session_reused(inp) is reused
                out.write(b"hi\n")
                out.flush()
                assert inp.readline() == b"bye\n"
                assert join() is reused
                assert inp.read() == b""  # the server's EOF, without close_notify
    finally:
        server.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_session_invalidated_by_real_failure(certs: Certs, version: str) -> None:
    """A forged record after the handshake is a real failure (bad record MAC): the session
    must not be resumed afterwards (RFC 5246 7.2.2). The next clean connection starts a new
    session, which the one after it resumes."""
    listener = socket.create_server((LOCAL, 0))
    port = listener.getsockname()[1]
    sctx = server_context(version, certs.sha256)

    def serve(forge: bool) -> bool:
        raw, _addr = listener.accept()
        inp, out = sslports.ssl_wrap_socket(raw, mode="accept", context=sctx, timeout=10)
        with inp, out:
            reused = sslports.ssl_session_reused(inp)
            if forge:  # an application-data record no key ever made, under the TLS layer
                socket_under(inp).send(b"\x17\x03\x03\x00\x20" + bytes(range(32)))
            else:
                echo_line(inp, out)
            try:
                inp.read()  # until the client goes away
            except SSLError as exc:  # its alert about our forgery
                # OpenSSL 3.0 says "bad record mac", 3.5 "record layer failure"
                assert forge and any(t in str(exc) for t in FORGED_RECORD_ERRORS)
        return reused

    try:
        ctx = client_context(version, roots=[certs.root])
        for forge, reused in [(False, False), (True, True), (False, False), (False, True)]:
            join = in_thread(lambda forge=forge: serve(forge))
            inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=10)
            with inp, out:
                assert sslports.ssl_session_reused(inp) is reused
                if forge:
                    with pytest.raises(SSLError, match=r"bad record mac|record layer failure"):
                        inp.read(1)
                else:
                    _talk(inp, out)
            assert join() is reused
    finally:
        listener.close()


def test_session_tickets_drained_at_close(certs: Certs) -> None:
    """TLS 1.3: a client that never reads still resumes next time if the tickets reached its
    socket before it closed: closing processes what already arrived."""
    server = Server(server_context("tls13", certs.sha256))
    try:
        ctx = client_context("tls13", roots=[certs.root])
        join = server.accept(lambda i, o: i.read())
        inp, out = sslports.ssl_connect("localhost", server.port, ctx)
        sock = inp._sslports_conn.transport.sock  # white box: wait for the tickets, unread
        assert select.select([sock], [], [], 10)[0]
        inp.close()
        out.close()
        join()
        join = server.accept(lambda i, o: i.read())
        inp, out = sslports.ssl_connect("localhost", server.port, ctx)
        with inp, out:
            assert sslports.ssl_session_reused(inp)
        join()
    finally:
        server.close()


def test_a_servers_tickets_leave_with_its_first_write(certs: Certs) -> None:
    """TLS 1.3: the tickets a server queues as its handshake ends wait for its first write and
    leave with it, in one send: nothing reaches the client before the server speaks, and the
    client resumes next time. A server that closes without a word sends them as it closes."""
    server = Server(server_context("tls13", certs.sha256))
    speak = threading.Event()

    def banner(inp: Any, out: Any) -> bytes:
        assert speak.wait(10)
        out.write(b"220 ready\n")
        out.flush()
        return bytes(inp.read())

    try:
        ctx = client_context("tls13", roots=[certs.root])
        join = server.accept(banner)
        inp, out = sslports.ssl_connect("localhost", server.port, ctx)
        sock = inp._sslports_conn.transport.sock  # white box: what reached the socket
        assert not select.select([sock], [], [], 0.3)[0]  # no tickets before the banner
        speak.set()
        assert inp.readline() == b"220 ready\n"
        inp.close()
        out.close()
        assert join() == b""
        join = server.accept(lambda i, o: None)  # closes at once: the tickets still go
        inp, out = sslports.ssl_connect("localhost", server.port, ctx)
        with inp, out:
            sock = inp._sslports_conn.transport.sock
            join()
            assert select.select([sock], [], [], 10)[0]
            assert len(sock.recv(4096, socket.MSG_PEEK)) > 200  # tickets, then the EOF
            assert sslports.ssl_session_reused(inp)
            assert inp.read() == b""
        join = server.accept(banner)
        inp, out = sslports.ssl_connect("localhost", server.port, ctx)
        with inp, out:
            assert sslports.ssl_session_reused(inp)
            speak.set()
            assert inp.readline() == b"220 ready\n"
        join()
    finally:
        server.close()


def test_session_cache_key_ignores_host_case(certs: Certs) -> None:
    """The cache files sessions under (host, port) with the host in lower case: "LOCALHOST"
    resumes the session "localhost" got (and verifies the same certificate)."""
    server = Server(server_context("tls13", certs.sha256))
    try:
        ctx = client_context("tls13", roots=[certs.root])
        for host, reused in [("localhost", False), ("LOCALHOST", True), ("LocalHost", True)]:
            join = server.accept(echo_line)
            inp, out = sslports.ssl_connect(host, server.port, ctx)
            with inp, out:
                _talk(inp, out)
                assert sslports.ssl_session_reused(inp) is reused, host
            join()
    finally:
        server.close()


def test_session_cache_forgets_least_recently_used_peer(certs: Certs) -> None:
    """A context keeps sessions for its 256 most recently used peers (host, port): the 257th
    peer pushes out the one used longest ago, not the oldest entry nor a random one."""
    sctx = server_context("tls13", certs.sha256)
    listeners = [sslports.ssl_listen(0, 4, True, LOCAL, sctx) for _ in range(257)]
    ports = [int(sslports.ssl_addresses(lst, True)[1]) for lst in listeners]
    ctx = client_context("tls13", roots=[certs.root])

    def serve(i: int) -> None:
        inp, out = sslports.ssl_accept(listeners[i])
        with inp, out:
            echo_line(inp, out)

    def visit(i: int) -> bool:
        join = in_thread(lambda: serve(i))
        inp, out = sslports.ssl_connect("localhost", ports[i], ctx)
        with inp, out:
            _talk(inp, out)  # (reads the echo: the tickets came before it)
            reused = bool(sslports.ssl_session_reused(inp))
        join()
        return reused

    try:
        assert not any(visit(i) for i in range(256))  # the cache is full
        assert visit(0)  # peer 0 is now the most recently used; peer 1 the least
        assert not visit(256)  # a new peer: peer 1 goes
        assert visit(0)
        assert visit(256)
        assert visit(2)
        assert not visit(1)  # forgotten: a full handshake (its new session is kept again)
        assert visit(1)
    finally:
        for lst in listeners:
            sslports.ssl_close(lst)


def test_wrapped_sockets_do_not_resume(certs: Certs) -> None:
    """Only ssl_connect knows host and port; ssl_wrap_socket always makes a full handshake."""
    server = Server(server_context("tls13", certs.sha256))
    try:
        ctx = client_context("tls13", roots=[certs.root])
        for _ in range(2):
            join = server.accept(echo_line)
            sock = socket.create_connection((LOCAL, server.port), timeout=10)
            inp, out = sslports.ssl_wrap_socket(sock, context=ctx, hostname="localhost")
            with inp, out:
                _talk(inp, out)
                assert not sslports.ssl_session_reused(inp)
            join()
    finally:
        server.close()


# -- key logging -----------------------------------------------------------------------------------

NSS_LINE = re.compile(
    rb"^(CLIENT_RANDOM|CLIENT_HANDSHAKE_TRAFFIC_SECRET|SERVER_HANDSHAKE_TRAFFIC_SECRET"
    rb"|CLIENT_TRAFFIC_SECRET_0|SERVER_TRAFFIC_SECRET_0|EXPORTER_SECRET) [0-9a-f]{64} [0-9a-f]+$"
)
TLS13_LABELS = {
    b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    b"SERVER_HANDSHAKE_TRAFFIC_SECRET",
    b"CLIENT_TRAFFIC_SECRET_0",
    b"SERVER_TRAFFIC_SECRET_0",
    b"EXPORTER_SECRET",
}

KEYLOG_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import sslports

    chain, key, root, per_version = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    errors = []

    def serve(version, count):
        ctx = sslports.ssl_make_server_context(version)
        sslports.ssl_load_certificate_chain(ctx, chain)
        sslports.ssl_load_private_key(ctx, key, False)
        listener = sslports.ssl_listen(0, 64, True, "127.0.0.1", ctx)
        port = sslports.ssl_addresses(listener, True)[1]

        def accept_all():
            for _ in range(count):
                inp, out = sslports.ssl_accept(listener)
                with inp, out:
                    out.write(inp.readline())
                    out.flush()

        t = threading.Thread(target=accept_all)
        t.start()
        return port, t

    def client(version, port, barrier):
        try:
            ctx = sslports.ssl_make_client_context(version)
            sslports.ssl_load_verify_source(ctx, root)
            sslports.ssl_set_verify(ctx, True)
            barrier.wait()
            inp, out = sslports.ssl_connect("127.0.0.1", port, ctx)
            with inp, out:
                out.write(b"x\\n")
                out.flush()
                assert inp.readline() == b"x\\n"
        except BaseException as exc:
            errors.append(exc)

    threads = []
    barrier = threading.Barrier(2 * per_version)
    servers = []
    for version in ("tls12", "tls13"):
        port, t = serve(version, per_version)
        servers.append(t)
        for _ in range(per_version):
            threads.append(threading.Thread(target=client, args=(version, port, barrier)))
    for t in threads:
        t.start()
    for t in threads + servers:
        t.join(60)
    if errors:
        raise SystemExit(repr(errors))
    print("ok")
    """
)


def test_sslkeylogfile_env_in_subprocess(certs: Certs, tmp_path: Path) -> None:
    """Client and server in one process, 6 TLS 1.2 and 6 TLS 1.3 connections at once:
    every line appended to SSLKEYLOGFILE is one whole NSS key-log line, and each connection's
    secrets appear exactly twice (logged by its client and by its server)."""
    log = tmp_path / "keys.log"
    log.write_bytes(b"# existing content stays\n")
    per_version = 6
    env = {**os.environ, "SSLKEYLOGFILE": str(log)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            KEYLOG_SCRIPT,
            str(chain_file(certs.sha256)),
            str(key_file(certs.sha256)),
            str(certs.root),
            str(per_version),
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"ok"
    lines = log.read_bytes().split(b"\n")
    assert lines[0] == b"# existing content stays"
    assert lines[-1] == b""  # ends with a newline
    body = lines[1:-1]
    bad = [line for line in body if not NSS_LINE.match(line)]
    assert bad == []
    by_random: dict[bytes, collections.Counter[bytes]] = collections.defaultdict(
        collections.Counter
    )
    for line in body:
        by_random[line.split(b" ")[1]][line] += 1
    tls12 = [c for c in by_random.values() if any(k.startswith(b"CLIENT_RANDOM") for k in c)]
    tls13 = [c for c in by_random.values() if c not in tls12]
    assert len(tls12) == per_version and len(tls13) == per_version
    for counter in tls12:
        assert list(counter.values()) == [2]  # one CLIENT_RANDOM line, from each side
    for counter in tls13:
        assert {line.split(b" ")[0] for line in counter} == TLS13_LABELS
        assert set(counter.values()) == {2} and len(counter) == 5


@pytest.mark.parametrize("flag", ["-E", "-I"])
def test_sslkeylogfile_ignored_when_python_ignores_the_environment(
    certs: Certs, tmp_path: Path, flag: str
) -> None:
    """`python -E` / `-I` ignore PYTHON* variables, and ssl.create_default_context then
    ignores SSLKEYLOGFILE too: a program run that way does not trust its environment, which
    must not make it write every connection's secrets to a file of the environment's choice.
    (The same connections as above, one per version: no file.)"""
    log = tmp_path / "keys.log"
    env = {**os.environ, "SSLKEYLOGFILE": str(log)}
    src = str(Path(sslports.__file__).resolve().parent.parent)  # (-E drops PYTHONPATH)
    proc = subprocess.run(
        [
            sys.executable,
            flag,
            "-c",
            f"import sys; sys.path.insert(0, {src!r})\n{KEYLOG_SCRIPT}",
            str(chain_file(certs.sha256)),
            str(key_file(certs.sha256)),
            str(certs.root),
            "1",
        ],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"ok"
    assert not log.exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_keylogger_callback(certs: Certs, version: str) -> None:
    client_lines: list[bytes] = []
    server_lines: list[bytes] = []
    sctx = server_context(version, certs.sha256)
    cctx = client_context(version, roots=[certs.root])
    sslports.ssl_set_keylogger(sctx, server_lines.append)
    sslports.ssl_set_keylogger(cctx, client_lines.append)
    _pair(sctx, cctx, lambda i, o: None, lambda i, o: None)
    assert client_lines and sorted(client_lines) == sorted(server_lines)
    assert all(NSS_LINE.match(line) for line in client_lines)
    labels = {line.split(b" ")[0] for line in client_lines}
    assert labels == ({b"CLIENT_RANDOM"} if version == "tls12" else TLS13_LABELS)
    # Turned off again: no more lines.
    sslports.ssl_set_keylogger(cctx, None)
    count = len(client_lines)
    _pair(sctx, cctx, lambda i, o: None, lambda i, o: None)
    assert len(client_lines) == count
    assert len(server_lines) == 2 * count


@pytest.mark.parametrize("version", VERSIONS)
def test_keylogger_that_raises_does_not_break_handshake(
    certs: Certs, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(line: bytes) -> None:
        calls.append(line)
        raise RuntimeError("key logger exploded")

    cctx = client_context(version, roots=[certs.root])
    sslports.ssl_set_keylogger(cctx, broken)
    with caplog.at_level(logging.ERROR, logger="sslports"):
        client, _server = _pair(
            server_context(version, certs.sha256), cctx, lambda i, o: None, _facts
        )
    assert client[0] == version
    assert calls
    assert any("key logger exploded" in (r.exc_text or "") for r in caplog.records)


def test_keylogger_argument_checks(certs: Certs) -> None:
    ctx = sslports.ssl_make_client_context()
    with pytest.raises(TypeError, match="ssl_set_keylogger"):
        sslports.ssl_set_keylogger(ctx, "not callable")  # type: ignore[arg-type]
    listener = sslports.ssl_listen(0, 5, True, LOCAL)
    with listener, pytest.raises(TypeError, match="ssl_set_keylogger"):
        sslports.ssl_set_keylogger(listener, print)
    sslports.ssl_seal_context(ctx)
    with pytest.raises(SSLError, match="context is sealed"):
        sslports.ssl_set_keylogger(ctx, print)


def test_facts_reject_non_ports() -> None:
    for fn in (
        sslports.ssl_protocol_version,
        sslports.ssl_cipher_name,
        sslports.ssl_session_reused,
        sslports.ssl_get_alpn_selected,
        sslports.ssl_default_channel_binding,
    ):
        with pytest.raises(TypeError, match=fn.__name__):
            fn(object())


def test_outcome_helper_reports_exceptions() -> None:
    """The helper the tests use to collect a server's result hands back exceptions."""

    def fail() -> None:
        raise ValueError("x")

    assert isinstance(outcome(in_thread(fail)), ValueError)
