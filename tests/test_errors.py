"""Argument errors, sealed contexts, and malformed or missing files (never a crash)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import LOCAL

import sslports
from sslports import SSLError, SSLNetworkError, SSLUnsupportedError


def raises(exc: type[BaseException], func: str, call: Callable[[], Any]) -> BaseException:
    """call() raises exc, and the message names the function."""
    with pytest.raises(exc) as info:
        call()
    assert func in str(info.value), f"{func!r} not in {str(info.value)!r}"
    return info.value


def test_exception_hierarchy() -> None:
    assert issubclass(SSLError, OSError)
    assert issubclass(SSLNetworkError, SSLError) and issubclass(SSLNetworkError, ConnectionError)
    assert issubclass(SSLUnsupportedError, SSLError)
    exc = SSLError("x: y failed")
    assert exc.openssl_errors == [] and exc.verify_code is None and exc.verify_message is None


# -- ssl_connect -----------------------------------------------------------------------------------


def test_ssl_connect_argument_errors(pki: Any) -> None:
    f = "ssl_connect"
    raises(TypeError, f, lambda: sslports.ssl_connect(b"localhost", 443))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_connect(None, 443))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", "443"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443.0))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", True))
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", 0))
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", -1))
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", 65536))
    server_ctx = sslports.ssl_make_server_context()
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443, server_ctx))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443, 5))  # type: ignore[arg-type]
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", 443, "tls14"))
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", 443, alpn=[b""]))
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", 443, alpn=[b"x" * 256]))
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443, alpn=["h2"]))  # type: ignore[list-item]
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443, alpn=b"h2"))
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443, timeout="1"))  # type: ignore[arg-type]
    raises(ValueError, f, lambda: sslports.ssl_connect("localhost", 443, timeout=-1))
    raises(TypeError, f, lambda: sslports.ssl_connect("localhost", 443, strict_eof=1))  # type: ignore[arg-type]
    raises(ValueError, f, lambda: sslports.ssl_connect("local\0host", 443))


# The _enable_break variants' messages name them, not ssl_connect / ssl_accept ("Messages read
# '<python function name>: <what> failed (...)'"); they named the other function before.
def test_enable_break_variants_name_themselves() -> None:
    def message(exc_type: type[BaseException], call: Callable[[], object]) -> str:
        with pytest.raises(exc_type) as info:
            call()
        return str(info.value)

    fc, fa = "ssl_connect_enable_break: ", "ssl_accept_enable_break: "
    assert message(
        ValueError, lambda: sslports.ssl_connect_enable_break("localhost", 0)
    ).startswith(fc)
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    refused = message(SSLNetworkError, lambda: sslports.ssl_connect_enable_break("127.0.0.1", port))
    assert refused.startswith(fc + "connect failed"), refused
    assert message(TypeError, lambda: sslports.ssl_accept_enable_break(None)).startswith(fa)  # type: ignore[arg-type]
    with sslports.ssl_listen(0, 5, False, "127.0.0.1", handshake_timeout=0.2) as listener:
        silent = socket.create_connection(("127.0.0.1", sslports.ssl_addresses(listener, True)[1]))
        with silent:
            stalled = message(TimeoutError, lambda: sslports.ssl_accept_enable_break(listener))
    assert stalled.startswith(fa + "handshake timed out"), stalled


def test_alpn_length_limits_accepted(pki: Any) -> None:
    """1 and 255 bytes are fine (the connection itself then fails: nothing listens)."""
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]
        for name in (b"x", b"y" * 255):
            with pytest.raises(SSLNetworkError):
                sslports.ssl_connect(LOCAL, port, alpn=[name])


def test_unresolvable_host_is_network_error() -> None:
    raises(
        SSLNetworkError, "ssl_connect", lambda: sslports.ssl_connect("no-such-host.invalid", 443)
    )


# -- ssl_listen / ssl_accept ---------------------------------------------------------------------


def test_ssl_listen_argument_errors() -> None:
    f = "ssl_listen"
    raises(TypeError, f, lambda: sslports.ssl_listen("0"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_listen(False))
    raises(ValueError, f, lambda: sslports.ssl_listen(-1))
    raises(ValueError, f, lambda: sslports.ssl_listen(65536))
    raises(TypeError, f, lambda: sslports.ssl_listen(0, "5"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_listen(0, 5, 1))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_listen(0, 5, False, 127))  # type: ignore[arg-type]
    client_ctx = sslports.ssl_make_client_context()
    raises(TypeError, f, lambda: sslports.ssl_listen(0, 5, False, LOCAL, client_ctx))  # type: ignore[arg-type]
    raises(ValueError, f, lambda: sslports.ssl_listen(0, 5, False, LOCAL, "tls99"))
    raises(TypeError, f, lambda: sslports.ssl_listen(0, handshake_timeout="1"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: sslports.ssl_listen(0, reuse_port=1))  # type: ignore[arg-type]


def test_accept_and_close_need_a_listener() -> None:
    ctx = sslports.ssl_make_server_context()
    raises(TypeError, "ssl_accept", lambda: sslports.ssl_accept(ctx))  # type: ignore[arg-type]
    raises(TypeError, "ssl_close", lambda: sslports.ssl_close(ctx))  # type: ignore[arg-type]
    raises(TypeError, "ssl_addresses", lambda: sslports.ssl_addresses(ctx))
    raises(TypeError, "ssl_abandon_port", lambda: sslports.ssl_abandon_port(ctx))


# -- ports_to_ssl_ports and ssl_wrap_socket ------------------------------------------------------


def test_ports_to_ssl_ports_argument_errors(pki: Any, pipe_pair: Any) -> None:
    f = "ports_to_ssl_ports"
    c2s, s2c = pipe_pair(100)
    p2s = sslports.ports_to_ssl_ports
    client_ctx = sslports.ssl_make_client_context()
    server_ctx = pki.server_context()
    raises(ValueError, f, lambda: p2s(s2c, c2s, mode="client"))
    raises(TypeError, f, lambda: p2s(s2c, c2s, mode="connect", context=server_ctx))
    raises(TypeError, f, lambda: p2s(s2c, c2s, mode="accept", context=client_ctx))
    raises(TypeError, f, lambda: p2s(s2c, c2s, mode="accept", context="auto"))  # type: ignore[arg-type]
    raises(ValueError, f, lambda: p2s(s2c, c2s, mode="connect", encrypt="tls99"))
    raises(TypeError, f, lambda: p2s(s2c, c2s, context=server_ctx, close_original=1))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: p2s(s2c, c2s, context=server_ctx, shutdown_on_close="y"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: p2s(s2c, c2s, context=server_ctx, strict_eof=None))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: p2s(s2c, c2s, context=server_ctx, error="boom"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: p2s(s2c, c2s, mode="connect", hostname=b"localhost"))  # type: ignore[arg-type]
    raises(TypeError, f, lambda: p2s(object(), c2s, context=server_ctx))
    raises(TypeError, f, lambda: p2s(s2c, object(), context=server_ctx))
    raises(ValueError, f, lambda: p2s(s2c, c2s, mode="connect", alpn=[b""]))
    raises(ValueError, f, lambda: p2s(s2c, c2s, mode="connect", alpn=[bytes(256)]))
    exc = raises(ValueError, f, lambda: p2s(s2c, c2s, context=server_ctx, alpn=[b"h2"]))
    assert "ssl_set_server_alpn" in str(exc)
    raises(TypeError, f, lambda: p2s(s2c, c2s, context=server_ctx, timeout=[1]))  # type: ignore[arg-type]
    assert c2s.total_written == 0 and s2c.total_written == 0  # nothing started


def test_ssl_wrap_socket_argument_errors(pki: Any) -> None:
    f = "ssl_wrap_socket"
    raises(TypeError, f, lambda: sslports.ssl_wrap_socket(5))  # type: ignore[arg-type]
    a, b = socket.socketpair()
    with a, b:
        raises(TypeError, f, lambda: sslports.ssl_wrap_socket(a, context=pki.server_context()))
        raises(ValueError, f, lambda: sslports.ssl_wrap_socket(a, mode="listen"))
        raises(
            ValueError,
            f,
            lambda: sslports.ssl_wrap_socket(
                a, mode="accept", context=pki.server_context(), alpn=[b"h2"]
            ),
        )


def test_port_settimeout_errors(pki: Any, pipe_pair: Any) -> None:
    import threading

    c2s, s2c = pipe_pair(1000)
    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(
            sslports.ports_to_ssl_ports(c2s, s2c, context=pki.server_context())
        )
    )
    t.start()
    cin, cout = sslports.ports_to_ssl_ports(s2c, c2s, mode="connect")
    t.join(30)
    sin, sout = result[0]
    for port in (cin, cout):
        raises(TypeError, "settimeout", lambda p=port: p.settimeout("1"))
        raises(TypeError, "settimeout", lambda p=port: p.settimeout(True))
        raises(ValueError, "settimeout", lambda p=port: p.settimeout(-0.5))
    for p in (cin, cout, sin, sout):
        p.close()


# -- context procedures ----------------------------------------------------------------------------


def test_context_constructor_errors(pki: Any) -> None:
    for maker, f in (
        (sslports.ssl_make_client_context, "ssl_make_client_context"),
        (sslports.ssl_make_server_context, "ssl_make_server_context"),
    ):
        raises(ValueError, f, lambda m=maker: m("tls14"))
        raises(ValueError, f, lambda m=maker: m("TLS12"))
        raises(TypeError, f, lambda m=maker: m(12))
        raises(TypeError, f, lambda m=maker: m(private_key=str(pki.server_key)))
        raises(ValueError, f, lambda m=maker: m(private_key=("p12", pki.server_key)))


def test_context_procedure_type_errors(pki: Any) -> None:
    ctx = sslports.ssl_make_server_context()
    not_ctx = object()
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("ssl_load_certificate_chain", lambda: sslports.ssl_load_certificate_chain(not_ctx, "x")),
        ("ssl_load_certificate_chain", lambda: sslports.ssl_load_certificate_chain(ctx, 5)),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(not_ctx, "x")),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, 5)),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, pki.server_key, 1)),  # type: ignore[arg-type]
        (
            "ssl_load_private_key",
            lambda: sslports.ssl_load_private_key(ctx, pki.server_key, True, "no"),
        ),  # type: ignore[arg-type]
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, ("data", "text"))),
        (
            "ssl_load_private_key",
            lambda: sslports.ssl_load_private_key(ctx, pki.server_key, password=5),
        ),  # type: ignore[arg-type]
        ("ssl_load_verify_source", lambda: sslports.ssl_load_verify_source(not_ctx, "x")),
        ("ssl_load_verify_source", lambda: sslports.ssl_load_verify_source(ctx, 5)),
        (
            "ssl_load_verify_root_certificates",
            lambda: sslports.ssl_load_verify_root_certificates(not_ctx, "x"),
        ),
        (
            "ssl_load_suggested_certificate_authorities",
            lambda: sslports.ssl_load_suggested_certificate_authorities(not_ctx, "x"),
        ),
        ("ssl_set_ciphers", lambda: sslports.ssl_set_ciphers(not_ctx, "DEFAULT")),
        ("ssl_set_ciphers", lambda: sslports.ssl_set_ciphers(ctx, b"DEFAULT")),  # type: ignore[arg-type]
        ("ssl_seal_context", lambda: sslports.ssl_seal_context(not_ctx)),
        ("ssl_set_verify", lambda: sslports.ssl_set_verify(ctx, 1)),  # type: ignore[arg-type]
        ("ssl_set_verify", lambda: sslports.ssl_set_verify(not_ctx, True)),
        ("ssl_try_verify", lambda: sslports.ssl_try_verify(ctx, "yes")),  # type: ignore[arg-type]
        ("ssl_set_verify_hostname", lambda: sslports.ssl_set_verify_hostname(ctx, None)),  # type: ignore[arg-type]
        (
            "ssl_server_context_enable_dhe",
            lambda: sslports.ssl_server_context_enable_dhe(sslports.ssl_make_client_context()),
        ),
        (
            "ssl_server_context_enable_ecdh",
            lambda: sslports.ssl_server_context_enable_ecdh(sslports.ssl_make_client_context()),
        ),
        (
            "ssl_server_context_enable_ecdh",
            lambda: sslports.ssl_server_context_enable_ecdh(ctx, 521),
        ),  # type: ignore[arg-type]
        (
            "ssl_load_default_verify_sources",
            lambda: sslports.ssl_load_default_verify_sources(not_ctx),
        ),
    ]
    for f, call in calls:
        raises(TypeError, f, call)
    raises(
        ValueError,
        "ssl_load_verify_source",
        lambda: sslports.ssl_load_verify_source(ctx, ("nowhere", "x")),
    )
    raises(
        ValueError,
        "ssl_server_context_enable_ecdh",
        lambda: sslports.ssl_server_context_enable_ecdh(ctx, "secp999r1"),
    )


def test_default_verify_sources_argument_errors() -> None:
    f = "ssl_default_verify_sources"
    raises(TypeError, f, lambda: sslports.ssl_default_verify_sources("/etc/ssl/cert.pem"))
    raises(TypeError, f, lambda: sslports.ssl_default_verify_sources([5]))
    raises(ValueError, f, lambda: sslports.ssl_default_verify_sources([("bogus", "x")]))
    raises(TypeError, f, lambda: sslports.ssl_default_verify_sources([], []))  # type: ignore[call-arg]


# -- sealed contexts -----------------------------------------------------------------------------


def test_secure_client_context_is_sealed(pki: Any, tmp_path: Path) -> None:
    ctx = sslports.ssl_secure_client_context()
    mutators: list[tuple[str, Callable[[], Any]]] = [
        ("ssl_load_verify_source", lambda: sslports.ssl_load_verify_source(ctx, pki.ca_pem)),
        (
            "ssl_load_verify_source",
            lambda: sslports.ssl_load_verify_source(ctx, tmp_path / "missing", try_=True),
        ),
        ("ssl_load_default_verify_sources", lambda: sslports.ssl_load_default_verify_sources(ctx)),
        (
            "ssl_load_verify_root_certificates",
            lambda: sslports.ssl_load_verify_root_certificates(ctx, pki.ca_pem),
        ),
        ("ssl_set_ciphers", lambda: sslports.ssl_set_ciphers(ctx, "DEFAULT")),
        (
            "ssl_set_ciphersuites",
            lambda: sslports.ssl_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"),
        ),
        (
            "ssl_load_certificate_chain",
            lambda: sslports.ssl_load_certificate_chain(ctx, pki.server_chain),
        ),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, pki.server_key)),
        (
            "ssl_load_private_key",
            lambda: sslports.ssl_load_private_key(ctx, ("data", pki.server_key.read_bytes())),
        ),
        (
            "ssl_load_suggested_certificate_authorities",
            lambda: sslports.ssl_load_suggested_certificate_authorities(ctx, pki.ca_pem),
        ),
        ("ssl_set_verify", lambda: sslports.ssl_set_verify(ctx, False)),
        ("ssl_try_verify", lambda: sslports.ssl_try_verify(ctx, True)),
        ("ssl_set_verify_hostname", lambda: sslports.ssl_set_verify_hostname(ctx, False)),
    ]
    keylogger = getattr(sslports, "ssl_set_keylogger", None)
    if keylogger is not None:  # an extension (section "Extensions")
        mutators.append(("ssl_set_keylogger", lambda: keylogger(ctx, lambda line: None)))
    for f, call in mutators:
        exc = raises(SSLError, f, call)
        assert "context is sealed" in str(exc)
    assert sslports.ssl_secure_client_context() is ctx  # still the cached one, unchanged


def test_sealed_server_context(pki: Any) -> None:
    ctx = pki.server_context()
    sslports.ssl_seal_context(ctx)
    mutators: list[tuple[str, Callable[[], Any]]] = [
        ("ssl_server_context_enable_dhe", lambda: sslports.ssl_server_context_enable_dhe(ctx)),
        (
            "ssl_server_context_enable_ecdh",
            lambda: sslports.ssl_server_context_enable_ecdh(ctx, "prime256v1"),
        ),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, pki.server_key)),
        ("ssl_set_verify", lambda: sslports.ssl_set_verify(ctx, True)),
        ("ssl_set_ciphers", lambda: sslports.ssl_set_ciphers(ctx, "DEFAULT")),
    ]
    for name, arg in (
        ("ssl_set_server_alpn", [b"h2"]),
        ("ssl_set_server_name_identification_callback", lambda name: None),
    ):
        fn = getattr(sslports, name, None)
        if fn is not None:  # extensions / section 4, present once implemented
            mutators.append((name, lambda fn=fn, arg=arg: fn(ctx, arg)))
    for f, call in mutators:
        exc = raises(SSLError, f, call)
        assert "context is sealed" in str(exc)


# -- malformed and missing files ------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path: Path, pki: Any) -> dict[str, Path]:
    cert = pki.server_chain.read_bytes()
    key = pki.server_key.read_bytes()
    files = {
        "missing": tmp_path / "missing.pem",
        "empty": tmp_path / "empty.pem",
        "random": tmp_path / "random.bin",
        "text": tmp_path / "text.pem",
        "truncated-cert": tmp_path / "truncated-cert.pem",
        "corrupt-cert": tmp_path / "corrupt-cert.pem",
        "truncated-key": tmp_path / "truncated-key.pem",
        "corrupt-key": tmp_path / "corrupt-key.pem",
        "directory": tmp_path,
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(os.urandom(3000))
    files["text"].write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n")
    files["truncated-cert"].write_bytes(cert[: len(cert) // 3])
    # Break the outer DER SEQUENCE header of the first object (its first base64 characters).
    start = cert.index(b"\n") + 1
    files["corrupt-cert"].write_bytes(cert[:start] + b"////////" + cert[start + 8 :])
    files["truncated-key"].write_bytes(key[: len(key) // 2])
    start = key.index(b"\n") + 1
    files["corrupt-key"].write_bytes(key[:start] + b"////////" + key[start + 8 :])
    return files


def test_bad_files_raise_ssl_error(bad_files: dict[str, Path], pki: Any) -> None:
    for kind, path in bad_files.items():
        loaders: list[tuple[str, Callable[[Any], Any]]] = [
            (
                "ssl_load_certificate_chain",
                lambda ctx, p=path: sslports.ssl_load_certificate_chain(ctx, p),
            ),
            ("ssl_load_private_key", lambda ctx, p=path: sslports.ssl_load_private_key(ctx, p)),
            (
                "ssl_load_private_key",
                lambda ctx, p=path: sslports.ssl_load_private_key(ctx, p, False),
            ),
            (
                "ssl_load_private_key",
                lambda ctx, p=path: sslports.ssl_load_private_key(ctx, p, False, True),
            ),
            (
                "ssl_load_verify_root_certificates",
                lambda ctx, p=path: sslports.ssl_load_verify_root_certificates(ctx, p),
            ),
            (
                "ssl_load_suggested_certificate_authorities",
                lambda ctx, p=path: sslports.ssl_load_suggested_certificate_authorities(ctx, p),
            ),
            (
                "ssl_server_context_enable_dhe",
                lambda ctx, p=path: sslports.ssl_server_context_enable_dhe(ctx, p),
            ),
        ]
        if kind not in ("truncated-key", "corrupt-key", "directory"):
            # (a directory is a valid lazy source kind's path; a key file holds no certificate
            # to reject, except when it is truncated/corrupt in a way OpenSSL skips)
            loaders.append(
                (
                    "ssl_load_verify_source",
                    lambda ctx, p=path: sslports.ssl_load_verify_source(ctx, p),
                )
            )
        for f, load in loaders:
            ctx = sslports.ssl_make_server_context()
            with pytest.raises(SSLError) as info:
                load(ctx)
            assert str(info.value).startswith(f), (kind, f, str(info.value))
        # the same calls with try_ never raise
        sslports.ssl_load_verify_source(sslports.ssl_make_server_context(), path, try_=True)


def test_bad_key_data_and_dh_bytes(pki: Any) -> None:
    ctx = sslports.ssl_make_server_context()
    for data in (b"", b"garbage", os.urandom(2000), b"-----BEGIN PRIVATE KEY-----\n-----END"):
        for der in (False, True):
            with pytest.raises(SSLError):
                sslports.ssl_load_private_key(ctx, ("data", data), False, der)
    for dh in (
        b"-----BEGIN DH PARAMETERS-----\nAAAA\n-----END DH PARAMETERS-----\n",
        pki.server_chain.read_bytes(),
    ):
        with pytest.raises(SSLError, match="ssl_server_context_enable_dhe"):
            sslports.ssl_server_context_enable_dhe(ctx, dh)


# `openssl dhparam -dsaparam 1024` (OpenSSL 3 writes X9.42 parameters)
X942_DH_PEM = b"""\
-----BEGIN X9.42 DH PARAMETERS-----
MIIBJwKBgQCn3ss+X7ooXHThQjt0QOd7YdKiQGrCtrfuNehXb4ENgQlw1PBHtrph
TsjyI1DUOtYLCnwKo4G3ja18nD4uQ0eBiQfUMr7H9mhpzcVIaaUY4uC0UJmrWgqp
9iMPV6sA7XNQ0oSp6neXEiNgP5BByNno/Zp8blEXQATzsArb9/GvyQKBgQCOuGQi
ZAWQmKQ0N/xFYW0Lj7Qtzvqvv5iR9sxdzx6MlyfhPL8S/pGziLoqr+WKL3sWVQU/
yANVm40ijlzvWr2KBykiq8dtK5XOnve2Qv8aOtcGm3x63mAoNl0LmF0bjgHfw/ik
nA7H8zS5bdjukyWrXm/TOazMcaf9mz6PumByKQIdAIqkT8KHBg0ClEr/GzpjhgGn
3aq/mJzbq8N+El0=
-----END X9.42 DH PARAMETERS-----
"""


def test_dh_parameters_that_tls_cannot_take_say_why(tmp_path: Path) -> None:
    """X9.42 parameters (a file or bytes) and DER bytes: an SSLError that says what is wrong
    (the X9.42 one said nothing at all; DER bytes read as a path with a NUL byte)."""
    x942 = tmp_path / "x942.pem"
    x942.write_bytes(X942_DH_PEM)
    ctx = sslports.ssl_make_server_context()
    for dh in (x942, X942_DH_PEM):
        with pytest.raises(SSLError) as info:
            sslports.ssl_server_context_enable_dhe(ctx, dh)
        assert str(info.value).startswith(
            "ssl_server_context_enable_dhe: loading DH parameters failed (X9.42 DH parameters; "
            "TLS takes PKCS#3 ones ('openssl dhparam' writes them)"
        ), str(info.value)
    der = b"0\x82\x01\x08\x02\x82\x01\x01\x00" + os.urandom(64)
    for data in (der, bytearray(der), bytearray(b"garbage")):
        with pytest.raises(SSLError) as info:
            sslports.ssl_server_context_enable_dhe(ctx, data)
        assert str(info.value).startswith(
            "ssl_server_context_enable_dhe: loading DH parameters failed (no DH parameters found"
        ), str(info.value)
    sslports.ssl_server_context_enable_dhe(ctx, bytearray(sslports.ssl_dh4096_param_bytes))


def test_certificate_chain_rejects_key_only_file(pki: Any) -> None:
    with pytest.raises(SSLError, match="ssl_load_certificate_chain"):
        sslports.ssl_load_certificate_chain(sslports.ssl_make_server_context(), pki.server_key)


def test_missing_file_messages(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    ctx = sslports.ssl_make_server_context()
    for f, call in (
        ("ssl_load_certificate_chain", lambda: sslports.ssl_load_certificate_chain(ctx, missing)),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, missing)),
        ("ssl_load_private_key", lambda: sslports.ssl_load_private_key(ctx, missing, False, True)),
        (
            "ssl_load_verify_root_certificates",
            lambda: sslports.ssl_load_verify_root_certificates(ctx, missing),
        ),
        (
            "ssl_load_suggested_certificate_authorities",
            lambda: sslports.ssl_load_suggested_certificate_authorities(ctx, missing),
        ),
        (
            "ssl_server_context_enable_dhe",
            lambda: sslports.ssl_server_context_enable_dhe(ctx, missing),
        ),
    ):
        exc = raises(SSLError, f, call)
        assert "failed" in str(exc)
    # The makers load through the context procedures (as Racket's do); either name is fine.
    for call in (
        lambda: sslports.ssl_make_server_context(private_key=("pem", missing)),
        lambda: sslports.ssl_make_client_context(certificate_chain=missing),
    ):
        with pytest.raises(SSLError, match="failed"):
            call()


@pytest.mark.parametrize(
    ("ssl_error", "text"),
    [
        (1, "OpenSSL gave no reason: SSL_ERROR_SSL"),
        (5, "OpenSSL gave no reason: SSL_ERROR_SYSCALL"),
        (6, "the peer closed the connection with a close_notify alert"),
    ],
)
def test_failure_without_a_reason_still_reads_what_failed(ssl_error: int, text: str) -> None:
    """An operation OpenSSL failed with an empty error queue and no errno still gets the
    "<func>: <what> failed (<text>)" form (it read "write: write failed", nothing more);
    SSL_ERROR_ZERO_RETURN, the peer's close_notify, says so."""
    from sslports import _binding

    err = _binding.ffi.new("sp_err *")
    _binding.lib.sp_err_reset(err)
    err.ssl_error = ssl_error
    exc = _binding.build_error("write", "write", err, SSLNetworkError)
    assert str(exc) == f"write: write failed ({text})"
    assert isinstance(exc, SSLNetworkError) and exc.openssl_errors == []
