"""Issue 4: server name indication (context switching) and ALPN.

SNI: ``ssl_set_server_name_identification_callback(ctx, cb)``: ``cb(hostname)`` returns a
server context to switch to (its certificate, ALPN list, verify settings and key logger then
apply) or None; it is not called without SNI; an exception in it aborts that handshake with a
fatal alert and comes out of ``ssl_accept``, and the listener keeps serving.

ALPN: the client's ``alpn=`` against ``openssl s_server -alpn`` and against our own server
(``ssl_set_server_alpn``: server preference, ``allow_no_match``), on both ports of both ends.
"""

from __future__ import annotations

import array
import hashlib
import io
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from certs import (
    LOCAL,
    OPENSSL,
    VERSIONS,
    Issued,
    Server,
    chain_file,
    client_context,
    echo_line,
    key_file,
    make_cert,
    outcome,
    server_context,
    wrap_client,
)
from conftest import python_under_openssl_conf, system_default_conf

import sslports
from sslports import SSLNetworkError


@dataclass
class Sni:
    root: Path
    default: Issued  # default.example.test
    alt: Issued  # alt.example.test, xn--bcher-kva.example.test
    secure: Issued  # secure.example.test
    client: Issued  # a client certificate from the same root
    calls: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def sni() -> Sni:
    root = make_cert("SNI Root CA", ca=True)
    return Sni(
        root=chain_file(root),
        default=make_cert("default", issuer=root, dns=["default.example.test"]),
        alt=make_cert("alt", issuer=root, dns=["alt.example.test", "xn--bcher-kva.example.test"]),
        secure=make_cert("secure", issuer=root, dns=["secure.example.test"]),
        client=make_cert("sni client", issuer=root),
    )


class Boom(Exception):
    pass


@dataclass
class SniServer:
    server: Server
    calls: list[str]
    raised: list[BaseException]
    main_log: list[bytes]
    alt_log: list[bytes]
    version: str


@pytest.fixture(params=VERSIONS)
def sni_server(request: pytest.FixtureRequest, sni: Sni) -> Iterator[SniServer]:
    """A listener whose callback switches alt.example.test / xn--bcher-kva.example.test to
    the alt context, secure.example.test to a context requiring a client certificate,
    raises for boom.example.test, returns a wrong type for wrong.example.test, False (as
    Racket's `(and (equal? h ...) ctx)` does) for false.example.test, and returns None for
    everything else."""
    version = request.param
    main = server_context(version, sni.default)
    sslports.ssl_set_server_alpn(main, [b"main-proto", b"shared"])
    alt = server_context(version, sni.alt)
    sslports.ssl_set_server_alpn(alt, [b"alt-proto", b"shared"])
    secure = server_context(version, sni.secure, verify="set", roots=[sni.root])
    main_log: list[bytes] = []
    alt_log: list[bytes] = []
    sslports.ssl_set_keylogger(main, main_log.append)
    sslports.ssl_set_keylogger(alt, alt_log.append)
    calls: list[str] = []
    raised: list[BaseException] = []

    def callback(name: str) -> Optional[sslports.SSLServerContext]:
        calls.append(name)
        if name in ("alt.example.test", "xn--bcher-kva.example.test"):
            return alt
        if name == "secure.example.test":
            return secure
        if name == "boom.example.test":
            exc = Boom("callback exploded")
            raised.append(exc)
            raise exc
        if name == "wrong.example.test":
            return "not a context"  # type: ignore[return-value]
        if name == "false.example.test":
            return False  # type: ignore[return-value]  # Racket's #f: keep the original
        return None

    sslports.ssl_set_server_name_identification_callback(main, callback)
    server = Server(main)
    yield SniServer(server, calls, raised, main_log, alt_log, version)
    server.close()


def _server_view(inp: Any, out: Any) -> dict[str, Any]:
    view = {
        "alpn": (sslports.ssl_get_alpn_selected(inp), sslports.ssl_get_alpn_selected(out)),
        "endpoint": sslports.ssl_channel_binding(inp, "tls-server-end-point"),
        "verified": sslports.ssl_peer_verified(inp),
    }
    echo_line(inp, out)
    return view


def _client_ctx(s: SniServer, **kw: Any) -> sslports.SSLClientContext:
    return client_context(s.version, verify=False, hostname=False, **kw)


def _connect(
    s: SniServer, hostname: Optional[str], ctx: Optional[Any] = None, alpn: Any = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Connect with SNI `hostname` (None: no SNI); both ends' views of the connection."""
    join = s.server.accept(_server_view)
    inp, out = wrap_client(s.server.port, ctx or _client_ctx(s), hostname, alpn=alpn)
    with inp, out:
        client = {
            "names": sslports.ssl_peer_certificate_hostnames(inp),
            "alpn": (sslports.ssl_get_alpn_selected(inp), sslports.ssl_get_alpn_selected(out)),
            "endpoint": sslports.ssl_channel_binding(out, "tls-server-end-point"),
        }
        out.write(b"ping\n")
        out.flush()
        assert inp.readline() == b"ping\n"
    return client, join()


SNI_TABLE = [
    # (hostname the client uses, name the callback gets or None, names the client sees)
    ("alt.example.test", "alt.example.test", ["alt.example.test", "xn--bcher-kva.example.test"]),
    ("alt.example.test.", "alt.example.test", ["alt.example.test", "xn--bcher-kva.example.test"]),
    (
        "bücher.example.test",
        "xn--bcher-kva.example.test",
        ["alt.example.test", "xn--bcher-kva.example.test"],
    ),
    ("default.example.test", "default.example.test", ["default.example.test"]),
    ("unknown.example.test", "unknown.example.test", ["default.example.test"]),
    ("false.example.test", "false.example.test", ["default.example.test"]),
    (
        "ALT.EXAMPLE.TEST",
        "ALT.EXAMPLE.TEST",
        ["default.example.test"],
    ),  # the callback compares exactly
    (LOCAL, None, ["default.example.test"]),  # an IP literal is never sent as SNI
    (LOCAL + ".", None, ["default.example.test"]),  # ... nor with a trailing dot
    ("::1", None, ["default.example.test"]),
    ("fe80::1%lo", None, ["default.example.test"]),
    (None, None, ["default.example.test"]),  # no hostname at all
]


@pytest.mark.parametrize(("hostname", "called_with", "names"), SNI_TABLE)
def test_sni_table(
    sni_server: SniServer, hostname: Optional[str], called_with: Optional[str], names: list[str]
) -> None:
    client, server = _connect(sni_server, hostname)
    assert client["names"] == names
    assert sni_server.calls == ([called_with] if called_with else [])
    # Both ends agree on which certificate was used.
    assert client["endpoint"] == server["endpoint"]


def test_sni_no_state_leaks_between_connections(sni_server: SniServer, sni: Sni) -> None:
    alt_names = ["alt.example.test", "xn--bcher-kva.example.test"]
    sequence = [
        ("alt.example.test", alt_names),
        ("default.example.test", ["default.example.test"]),
        (None, ["default.example.test"]),
        ("alt.example.test", alt_names),
        (LOCAL, ["default.example.test"]),
        ("other.example.test", ["default.example.test"]),
        ("alt.example.test", alt_names),
    ]
    for hostname, names in sequence:
        client, server = _connect(sni_server, hostname)
        assert client["names"] == names, hostname
        digest = hashlib.sha256((sni.alt if names == alt_names else sni.default).der).digest()
        assert client["endpoint"] == server["endpoint"] == digest
    assert sni_server.calls == [
        "alt.example.test",
        "default.example.test",
        "alt.example.test",
        "other.example.test",
        "alt.example.test",
    ]


def test_sni_exception_aborts_handshake_and_server_keeps_serving(sni_server: SniServer) -> None:
    for _round in range(2):
        join = sni_server.server.accept(_server_view)
        with pytest.raises(SSLNetworkError) as info:
            wrap_client(sni_server.server.port, _client_ctx(sni_server), "boom.example.test")
        assert "alert internal error" in str(info.value)
        with pytest.raises(Boom) as raised:
            join()
        assert raised.value is sni_server.raised[-1]  # the callback's own exception object
        # The next connection on the same listener is served normally.
        client, _server = _connect(sni_server, "alt.example.test")
        assert client["names"][0] == "alt.example.test"


def test_sni_wrong_return_type_is_type_error(sni_server: SniServer) -> None:
    join = sni_server.server.accept(_server_view)
    with pytest.raises(SSLNetworkError):
        wrap_client(sni_server.server.port, _client_ctx(sni_server), "wrong.example.test")
    with pytest.raises(TypeError, match="ssl_accept") as info:
        join()
    assert "str" in str(info.value)
    client, _server = _connect(sni_server, "default.example.test")
    assert client["names"] == ["default.example.test"]


def test_sni_switched_context_alpn_applies(sni_server: SniServer) -> None:
    offer = [b"main-proto", b"alt-proto", b"shared"]
    client, server = _connect(sni_server, "alt.example.test", alpn=offer)
    assert client["alpn"] == server["alpn"] == (b"alt-proto", b"alt-proto")
    client, server = _connect(sni_server, "default.example.test", alpn=offer)
    assert client["alpn"] == server["alpn"] == (b"main-proto", b"main-proto")
    client, server = _connect(sni_server, None, alpn=offer)
    assert client["alpn"] == (b"main-proto", b"main-proto")


def test_sni_switched_context_verify_settings_apply(sni_server: SniServer, sni: Sni) -> None:
    """secure.example.test switches to a context that requires a client certificate."""
    with_cert = _client_ctx(sni_server, identity=[sni.client])
    client, server = _connect(sni_server, "secure.example.test", with_cert)
    assert client["names"] == ["secure.example.test"]
    assert server["verified"] is True
    # Without a certificate the switched-to context refuses the client ...
    join = sni_server.server.accept(_server_view)
    try:
        inp, out = wrap_client(
            sni_server.server.port, _client_ctx(sni_server), "secure.example.test"
        )
    except SSLNetworkError as exc:  # TLS 1.2: during the handshake
        assert "alert" in str(exc)
    else:  # TLS 1.3: the client's handshake ended first; the alert comes with the first read
        with inp, out, pytest.raises(sslports.SSLError, match="alert"):
            inp.read(1)
    server_exc = outcome(join)
    assert isinstance(server_exc, SSLNetworkError)
    assert "peer did not return a certificate" in str(server_exc)
    # ... while the original context (no client certificate needed) still lets it in.
    client, server = _connect(sni_server, "default.example.test")
    assert server["verified"] is False


@pytest.mark.parametrize(
    ("hostname", "names"),
    [
        ("default.example.test", ["default.example.test"]),
        ("alt.example.test", ["alt.example.test", "xn--bcher-kva.example.test"]),
    ],
)
def test_sni_callback_runs_once_per_connection_across_a_hello_retry(
    sni: Sni, hostname: str, names: list[str]
) -> None:
    """A TLS 1.3 client whose key share is for a group the server does not take (X448) is
    sent a HelloRetryRequest, and its second ClientHello carries the SNI name again. The
    callback runs for the first hello only (it is not called twice for one connection), and
    the connection gets the certificate that first call chose."""
    main = server_context("tls13", sni.default)
    sslports.ssl_server_context_enable_ecdh(main, "secp384r1")  # (P-384, X25519, P-256)
    alt = server_context("tls13", sni.alt)
    sslports.ssl_server_context_enable_ecdh(alt, "secp384r1")  # (a switch takes alt's groups)
    calls: list[str] = []

    def callback(name: str) -> Optional[sslports.SSLServerContext]:
        calls.append(name)
        return alt if name == "alt.example.test" else None

    sslports.ssl_set_server_name_identification_callback(main, callback)
    server = Server(main)
    try:
        ctx = client_context("tls13", verify=False, hostname=False)
        # (no public call chooses a client's groups: its key share is for the first one)
        assert sslports._binding.lib.SSL_CTX_set1_groups_list(ctx._ptr, b"X448:P-256") == 1
        join = server.accept(echo_line)
        inp, out = wrap_client(server.port, ctx, hostname)
        with inp, out:
            assert sslports.ssl_peer_certificate_hostnames(inp) == names
            out.write(b"ping\n")
            out.flush()
            assert inp.readline() == b"ping\n"
        join(30)
    finally:
        server.close()
    assert calls == [hostname]


def _server_temp_key(port: int, name: str, groups: str = "P-256:P-384") -> str:
    """The key exchange group a TLS 1.2 server chose, as ``openssl s_client`` reports it, for a
    client that offers `groups` (by default P-256 first, then P-384). (s_client runs without
    the caller's OPENSSL_CONF: its offer is its own.)"""
    assert OPENSSL is not None
    cmd = [OPENSSL, "s_client", "-connect", f"{LOCAL}:{port}", "-servername", name, "-tls1_2"]
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    out = subprocess.run(
        [*cmd, "-groups", groups], input=b"", capture_output=True, timeout=30, env=env, check=False
    ).stdout.decode(errors="replace")
    return next(line.split(",")[1].strip() for line in out.splitlines() if "Temp Key" in line)


@pytest.mark.parametrize(
    "listener_curve, switched_curve, expected",
    [(None, "secp384r1", "secp384r1"), ("secp384r1", None, "prime256v1")],
)
def test_sni_switched_context_ecdh_group_applies(
    sni: Sni, listener_curve: Optional[str], switched_curve: Optional[str], expected: str
) -> None:
    """The context switched to chooses the key exchange group with its own
    ssl_server_context_enable_ecdh preference, or OpenSSL's default where it set none: the
    listener's preference neither hides the one of a name nor leaks into another."""
    main = server_context("tls12", sni.default)
    alt = server_context("tls12", sni.alt)
    for ctx, curve in ((main, listener_curve), (alt, switched_curve)):
        if curve is not None:
            sslports.ssl_server_context_enable_ecdh(ctx, curve)
    sslports.ssl_set_server_name_identification_callback(main, lambda name: alt)
    server = Server(main)
    try:
        join = server.accept(echo_line)
        assert _server_temp_key(server.port, "alt.example.test") == expected
        join(30)
    finally:
        server.close()


_GROUPS_POLICY = system_default_conf("Groups = P-384:P-256")

_POLICY_CHILD = """
import sys
from certs import Server, echo_line, make_cert, server_context
from test_sni_alpn import _server_temp_key
import sslports
root = make_cert("Root", ca=True)
main = server_context("tls12", make_cert("m", issuer=root, dns=["main.example.test"]))
alt = server_context("tls12", make_cert("a", issuer=root, dns=["alt.example.test"]))
sslports.ssl_server_context_enable_ecdh(main, "secp521r1")
sslports.ssl_set_server_name_identification_callback(main, lambda name: alt)
server = Server(main)
join = server.accept(echo_line)
print(_server_temp_key(server.port, "alt.example.test", sys.argv[1]))
join(30)
server.close()
"""


def test_sni_switch_to_a_context_without_groups_keeps_the_system_policy(tmp_path: Path) -> None:
    """A system-wide Groups policy (openssl.cnf's system_default, as crypto-policies writes
    it) is what a context that set no groups uses; a switch to such a context from one that
    did must give it that, not OpenSSL's compiled-in default (a first version of the switch
    installed the default: X25519, which the policy leaves out)."""
    out = python_under_openssl_conf(_GROUPS_POLICY, tmp_path, _POLICY_CHILD, "X25519:P-256:P-384")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["secp384r1"]


def test_sni_switched_context_key_logger(sni_server: SniServer) -> None:
    """After a switch the switched-to context's key logger gets every line, and they are
    exactly the client's lines for that connection."""
    client_log: list[bytes] = []
    ctx = _client_ctx(sni_server)
    sslports.ssl_set_keylogger(ctx, client_log.append)
    _connect(sni_server, "alt.example.test", ctx)
    assert sni_server.main_log == []
    assert client_log and sorted(sni_server.alt_log) == sorted(client_log)
    del client_log[:]
    _connect(sni_server, "default.example.test", ctx)
    assert client_log and sorted(sni_server.main_log) == sorted(client_log)


def test_sni_callback_argument_checks(sni: Sni) -> None:
    ctx = server_context("tls13", sni.default)
    with pytest.raises(TypeError, match="ssl_set_server_name_identification_callback"):
        sslports.ssl_set_server_name_identification_callback(ctx, "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ssl_set_server_name_identification_callback"):
        sslports.ssl_set_server_name_identification_callback(
            sslports.ssl_make_client_context(),
            lambda n: None,  # type: ignore[arg-type]
        )
    sslports.ssl_seal_context(ctx)
    with pytest.raises(sslports.SSLError, match="context is sealed"):
        sslports.ssl_set_server_name_identification_callback(ctx, lambda n: None)


# -- ALPN ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpn_cert() -> tuple[Path, Issued]:
    root = make_cert("ALPN Root CA", ca=True)
    return chain_file(root), make_cert("localhost", issuer=root, dns=["localhost"], ips=[LOCAL])


@pytest.mark.parametrize("version", VERSIONS)
def test_alpn_against_openssl_s_server(
    openssl_tool: Any, alpn_cert: tuple[Path, Issued], version: str
) -> None:
    root, leaf = alpn_cert
    flag = {"tls12": "-tls1_2", "tls13": "-tls1_3"}[version]
    proc, port = openssl_tool.s_server(
        ["-cert", str(chain_file(leaf)), "-key", str(key_file(leaf)), flag, "-alpn", "h2,http/1.1"]
    )
    ctx = client_context(version, roots=[root])
    for offer, selected in [
        ([b"http/1.1", b"h2"], b"h2"),  # the server's preference wins
        ([b"http/1.1"], b"http/1.1"),
        ([b"spdy/3", b"h2"], b"h2"),
        ([], None),
    ]:
        inp, out = sslports.ssl_connect(LOCAL, port, ctx, alpn=offer, timeout=10)
        with inp, out:
            assert sslports.ssl_get_alpn_selected(inp) == selected, offer
            assert sslports.ssl_get_alpn_selected(out) == selected, offer
    # No overlap: s_server's callback (SSL_select_next_proto) sends a fatal alert.
    with pytest.raises(SSLNetworkError, match="no application protocol"):
        sslports.ssl_connect(LOCAL, port, ctx, alpn=[b"spdy/3"], timeout=10)
    inp, out = sslports.ssl_connect(LOCAL, port, ctx, alpn=[b"h2"], timeout=10)  # still serving
    with inp, out:
        assert sslports.ssl_get_alpn_selected(inp) == b"h2"
    proc.kill()
    stdout, _ = proc.communicate(timeout=10)
    assert b"ALPN protocols advertised by the client: http/1.1, h2" in stdout


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("server_list", "allow", "offer", "selected"),
    [
        ([b"h2", b"http/1.1"], True, [b"http/1.1", b"h2"], b"h2"),
        ([b"http/1.1", b"h2"], True, [b"h2", b"http/1.1"], b"http/1.1"),
        ([b"h2", b"http/1.1"], True, [b"x", b"http/1.1"], b"http/1.1"),
        ([b"h2", b"http/1.1"], True, [b"x"], None),
        ([b"h2"], False, [], None),  # a client that offers nothing never fails
        ([], True, [b"h2"], None),  # an empty list selects nothing ...
        ([], False, [], None),  # ... and refuses only a client that offers something
        ([b"a" * 255], False, [b"b", b"a" * 255], b"a" * 255),
        ([b"\x00\xff"], False, [b"\x00\xff"], b"\x00\xff"),  # names are bytes, any bytes
    ],
)
def test_alpn_own_server(
    alpn_cert: tuple[Path, Issued],
    version: str,
    server_list: list[bytes],
    allow: bool,
    offer: list[bytes],
    selected: Optional[bytes],
) -> None:
    root, leaf = alpn_cert
    ctx = server_context(version, leaf)
    sslports.ssl_set_server_alpn(ctx, server_list, allow)
    server = Server(ctx)
    try:
        join = server.accept(
            lambda i, o: (sslports.ssl_get_alpn_selected(i), sslports.ssl_get_alpn_selected(o))
        )
        inp, out = sslports.ssl_connect(
            LOCAL, server.port, client_context(version, roots=[root]), alpn=offer
        )
        with inp, out:
            client = (sslports.ssl_get_alpn_selected(inp), sslports.ssl_get_alpn_selected(out))
        assert client == join() == (selected, selected)
    finally:
        server.close()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("server_list", [[b"h2"], []])
def test_alpn_no_match_fails_when_not_allowed(
    alpn_cert: tuple[Path, Issued], version: str, server_list: list[bytes]
) -> None:
    """No overlap with allow_no_match=False is a fatal alert, an empty server list too (it
    matches nothing, as in Racket; it used to turn ALPN off whatever allow_no_match said)."""
    root, leaf = alpn_cert
    ctx = server_context(version, leaf)
    sslports.ssl_set_server_alpn(ctx, server_list, allow_no_match=False)
    server = Server(ctx)
    try:
        join = server.accept(echo_line)
        with pytest.raises(SSLNetworkError, match="no application protocol"):
            sslports.ssl_connect(
                LOCAL, server.port, client_context(version, roots=[root]), alpn=[b"http/1.1"]
            )
        server_exc = outcome(join)
        assert isinstance(server_exc, SSLNetworkError)
        assert "ssl_accept: accept failed" in str(server_exc)
        # The listener still serves a client that offers what it selects.
        offer = server_list[:1]
        join = server.accept(lambda i, o: sslports.ssl_get_alpn_selected(o))
        inp, out = sslports.ssl_connect(
            LOCAL, server.port, client_context(version, roots=[root]), alpn=offer
        )
        expected = offer[0] if offer else None
        with inp, out:
            assert sslports.ssl_get_alpn_selected(inp) == expected
        assert join() == expected
    finally:
        server.close()


@pytest.mark.parametrize("bad", [b"", b"x" * 256])
def test_alpn_name_length_is_value_error(alpn_cert: tuple[Path, Issued], bad: bytes) -> None:
    _root, leaf = alpn_cert
    with pytest.raises(ValueError, match="ssl_connect"):
        sslports.ssl_connect(LOCAL, 1, alpn=[b"h2", bad])
    with pytest.raises(ValueError, match="ssl_set_server_alpn"):
        sslports.ssl_set_server_alpn(server_context("tls13", leaf), [bad])
    with pytest.raises(ValueError, match="ports_to_ssl_ports"):
        sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), mode="connect", alpn=[bad])


def test_alpn_list_length_is_value_error(alpn_cert: tuple[Path, Issued]) -> None:
    """RFC 7301 caps the whole list at 65535 bytes: 256 names of 255 bytes (65536 with their
    length bytes) are a ValueError at once (before: an SSLNetworkError from the handshake's
    setup, "ALPN setup failed", with no reason), 255 of them are not refused here."""
    _root, leaf = alpn_cert
    names = [b"%03d" % i + b"x" * 252 for i in range(256)]
    with pytest.raises(ValueError, match="ssl_connect: the ALPN protocol list"):
        sslports.ssl_connect(LOCAL, 1, alpn=names)
    with pytest.raises(ValueError, match="ssl_set_server_alpn: the ALPN protocol list"):
        sslports.ssl_set_server_alpn(server_context("tls13", leaf), names)
    with pytest.raises(ValueError, match="ports_to_ssl_ports: the ALPN protocol list"):
        sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), mode="connect", alpn=names)
    sslports.ssl_set_server_alpn(server_context("tls13", leaf), names[:255])


def test_alpn_names_may_be_any_bytes_like(alpn_cert: tuple[Path, Issued]) -> None:
    """A protocol name is taken as its bytes, whatever holds them: a memoryview (a slice of a
    config buffer, say) was a TypeError, a bytearray was not. A memoryview of 16-bit items
    counts its bytes, not its items, against the 255-byte limit."""
    root, leaf = alpn_cert
    ctx = server_context("tls13", leaf)
    sslports.ssl_set_server_alpn(ctx, [memoryview(b"xx h2")[3:], bytearray(b"http/1.1")], False)
    server = Server(ctx)
    try:
        join = server.accept(lambda i, o: sslports.ssl_get_alpn_selected(o))
        offer = [memoryview(b"spdy/1"), memoryview(b"h2")]
        inp, out = sslports.ssl_connect(
            LOCAL, server.port, client_context("tls13", roots=[root]), alpn=offer
        )
        with inp, out:
            assert sslports.ssl_get_alpn_selected(inp) == b"h2"
        assert join() == b"h2"
    finally:
        server.close()
    wide = memoryview(array.array("H", [0x6161] * 128))  # 128 items, 256 bytes
    with pytest.raises(ValueError, match="ssl_connect: ALPN protocol names must be 1 to 255"):
        sslports.ssl_connect(LOCAL, 1, alpn=[wide])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="ssl_connect: each ALPN protocol must be bytes, got int"):
        sslports.ssl_connect(LOCAL, 1, alpn=[2])  # type: ignore[list-item]


def test_alpn_argument_types(alpn_cert: tuple[Path, Issued]) -> None:
    _root, leaf = alpn_cert
    with pytest.raises(TypeError, match="ssl_connect"):
        sslports.ssl_connect(LOCAL, 1, alpn=b"h2")
    with pytest.raises(TypeError, match="ssl_connect"):
        sslports.ssl_connect(LOCAL, 1, alpn=["h2"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="ssl_set_server_alpn"):
        sslports.ssl_set_server_alpn(sslports.ssl_make_client_context(), [b"h2"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ssl_set_server_alpn"):
        sslports.ssl_set_server_alpn(server_context("tls13", leaf), [b"h2"], 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ssl_set_server_alpn"):
        sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), mode="accept", alpn=[b"h2"])


def test_server_alpn_replaced_while_handshakes_select(pki: Any) -> None:
    """sp_ctx_set_server_alpn freed the context's old ALPN policy while a handshake in
    another thread could be reading it in select_alpn (a heap use-after-free; contexts are
    not sealed, so ssl_set_server_alpn on a serving context is allowed). Reported by
    AddressSanitizer (scripts/asan.sh); a long list on each side keeps select_alpn busy."""
    from sslports import _binding

    lib, ffi = _binding.lib, _binding.ffi
    server = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(server, pki.ec_chain)
    sslports.ssl_load_private_key(server, pki.ec_key, False)
    names = [b"s%058d" % i for i in range(1000)]
    sslports.ssl_set_server_alpn(server, names)
    client = sslports.ssl_make_client_context()
    err = ffi.new("sp_err *")
    c = ffi.gc(lib.sp_conn_new(client._ptr, 0, -1, err), lib.sp_conn_free)
    offer = b"".join(bytes([59]) + b"c%058d" % i for i in range(1000))
    assert lib.SSL_set_alpn_protos(lib.sp_conn_ssl(c), offer, len(offer)) == 0
    assert lib.sp_handshake(c, 0, err) == lib.SP_WANT_READ
    hello = ffi.new("unsigned char[]", 1 << 17)
    n = lib.sp_take(c, hello, 1 << 17)
    assert n > 60000
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            sslports.ssl_set_server_alpn(server, names)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            s = ffi.gc(lib.sp_conn_new(server._ptr, 1, -1, err), lib.sp_conn_free)
            assert lib.sp_feed(s, hello, n)
            status = lib.sp_handshake(s, 0, err)  # (no ALPN in common: goes on without)
            assert status == lib.SP_WANT_READ, ffi.string(err.text)
            ffi.release(s)
    finally:
        stop.set()
        t.join()
