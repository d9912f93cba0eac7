"""Blind acceptance tests for sslports, written only from API.md and the Racket documentation.

Every test exercises a behaviour a user of the documented API would notice.  Peers are real
sockets on 127.0.0.1 (Python's ``ssl`` module, ``openssl s_client`` or sslports itself) and the
certificates are made here with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import datetime
import hashlib
import io
import ipaddress
import json
import os
import pathlib
import pickle
import re
import select
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

import sslports as S

pytestmark = pytest.mark.timeout(90)

PY = sys.executable
SRC = str(pathlib.Path(S.__file__).resolve().parent.parent)
OPENSSL = shutil.which("openssl")
JOIN = 30.0  # seconds any helper thread may take


# --------------------------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------------------------

NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(
    cn: str | None, *, c: str | None = None, o: str | None = None, extra_cn: tuple[str, ...] = ()
) -> x509.Name:
    attrs = []
    if c:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, c))
    if o:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    for e in extra_cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, e))
    if cn:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: tuple[x509.Certificate, Any] | None = None,
    *,
    sans: list[x509.GeneralName] | None = None,
    ca: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    hash_alg: Any = "sha256",
) -> x509.Certificate:
    issuer_name = issuer[0].subject if issuer else subject
    signing_key = issuer[1] if issuer else key
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        b = b.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if isinstance(signing_key, ed25519.Ed25519PrivateKey):
        alg = None
    else:
        alg = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[
            hash_alg
        ]
    return b.sign(signing_key, alg)


def _pem_cert(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _pem_key(k: Any, password: bytes | None = None) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _der_key(k: Any) -> bytes:
    return k.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(k, rsa.RSAPrivateKey)
        else serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class PKI:
    def __init__(self, d: pathlib.Path) -> None:
        self.d = d
        dns = x509.DNSName
        ip = lambda s: x509.IPAddress(ipaddress.ip_address(s))  # noqa: E731

        self.ca_key = _rsa()
        self.ca = _cert(_name("Blind Test CA", o="Blind Test"), self.ca_key, ca=True)
        self.ca_pem = self._w("ca.pem", _pem_cert(self.ca))

        other_ca_key = _rsa()
        other_ca = _cert(_name("Other CA"), other_ca_key, ca=True)
        self.other_ca_pem = self._w("other_ca.pem", _pem_cert(other_ca))

        # main leaf: localhost, www.example.com, 127.0.0.1, ::1
        self.leaf_key = _rsa()
        self.leaf = _cert(
            _name("localhost", c="US", o="Example"),
            self.leaf_key,
            (self.ca, self.ca_key),
            sans=[dns("localhost"), dns("www.example.com"), ip("127.0.0.1"), ip("::1")],
        )
        self.leaf_cert = self._w("leaf_cert.pem", _pem_cert(self.leaf))
        self.leaf_keyf = self._w("leaf_key.pem", _pem_key(self.leaf_key))
        self.leaf_both = self._w("leaf_both.pem", _pem_key(self.leaf_key) + _pem_cert(self.leaf))
        self.leaf_key_der = self._w("leaf_key.der", _der_key(self.leaf_key))
        self.leaf_key_enc = self._w("leaf_key_enc.pem", _pem_key(self.leaf_key, b"s3cret"))

        # a leaf that only names other.example (no IP SAN)
        k = _rsa()
        self.other = self._pair(
            "other",
            _cert(_name("other.example"), k, (self.ca, self.ca_key), sans=[dns("other.example")]),
            k,
        )
        # expired leaf for localhost
        k = _rsa()
        self.expired = self._pair(
            "expired",
            _cert(
                _name("localhost"),
                k,
                (self.ca, self.ca_key),
                sans=[dns("localhost")],
                not_before=NOW - datetime.timedelta(days=30),
                not_after=NOW - datetime.timedelta(days=1),
            ),
            k,
        )
        # self-signed leaf
        k = _rsa()
        self.selfsigned = self._pair(
            "selfsigned", _cert(_name("localhost"), k, sans=[dns("localhost")]), k
        )
        # wildcard certificates
        k = _rsa()
        self.wild = self._pair(
            "wild", _cert(_name("wild"), k, (self.ca, self.ca_key), sans=[dns("*.example.com")]), k
        )
        k = _rsa()
        self.partial = self._pair(
            "partial",
            _cert(_name("partial"), k, (self.ca, self.ca_key), sans=[dns("f*.example.com")]),
            k,
        )
        # no SAN, two CNs
        k = _rsa()
        self.cnonly = self._pair(
            "cnonly",
            _cert(_name("last.example", extra_cn=("first.example",)), k, (self.ca, self.ca_key)),
            k,
        )
        # SHA-384-signed leaf
        k = _rsa()
        self.sha384 = self._pair(
            "sha384",
            _cert(
                _name("localhost"),
                k,
                (self.ca, self.ca_key),
                sans=[dns("localhost")],
                hash_alg="sha384",
            ),
            k,
        )
        # intermediate chain
        ik = _rsa()
        inter = _cert(_name("Blind Intermediate"), ik, (self.ca, self.ca_key), ca=True)
        k = _rsa()
        leaf2 = _cert(_name("localhost"), k, (inter, ik), sans=[dns("localhost")])
        self.chain_cert = self._w("chain.pem", _pem_cert(leaf2) + _pem_cert(inter))
        self.chain_key = self._w("chain_key.pem", _pem_key(k))
        # EC and Ed25519 leaves
        eck = ec.generate_private_key(ec.SECP256R1())
        self.ec = self._pair(
            "ec",
            _cert(
                _name("ec.localhost"),
                eck,
                (self.ca, self.ca_key),
                sans=[dns("ec.localhost"), dns("localhost")],
            ),
            eck,
        )
        edk = ed25519.Ed25519PrivateKey.generate()
        self.ed = self._pair(
            "ed",
            _cert(_name("ed.localhost"), edk, (self.ca, self.ca_key), sans=[dns("ed.localhost")]),
            edk,
        )
        # EC key followed by the main RSA leaf key in one file
        self.mixed_keys = self._w("mixed_keys.pem", _pem_key(eck) + _pem_key(self.leaf_key))
        # client certificates
        k = _rsa()
        self.client = self._pair("client", _cert(_name("client"), k, (self.ca, self.ca_key)), k)
        k = _rsa()
        self.bad_client = self._pair(
            "bad_client", _cert(_name("client"), k, (other_ca, other_ca_key)), k
        )

    def _w(self, name: str, data: bytes) -> pathlib.Path:
        p = self.d / name
        p.write_bytes(data)
        return p

    def _pair(
        self, name: str, cert: x509.Certificate, key: Any
    ) -> tuple[pathlib.Path, pathlib.Path]:
        self.__dict__.setdefault("_certs", {})[name] = cert
        return (
            self._w(name + "_cert.pem", _pem_cert(cert)),
            self._w(name + "_key.pem", _pem_key(key)),
        )

    def certobj(self, name: str) -> x509.Certificate:
        return self.__dict__["_certs"][name]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("blindpki"))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def server_ctx(cert: Any = None, key: Any = None, proto: str = "auto") -> Any:
    ctx = S.ssl_make_server_context(proto)
    S.ssl_load_certificate_chain(ctx, cert or S.TEST_PEM)
    S.ssl_load_private_key(ctx, key or cert or S.TEST_PEM)
    return ctx


def trusting_client(pki: PKI, proto: str = "auto", *, hostname: bool = True) -> Any:
    ctx = S.ssl_make_client_context(proto)
    S.ssl_load_verify_source(ctx, pki.ca_pem)
    S.ssl_set_verify(ctx, True)
    S.ssl_set_verify_hostname(ctx, hostname)
    return ctx


def echo(i: Any, o: Any) -> bytes:
    got = b""
    while True:
        d = i.read1(65536)
        if not d:
            return got
        got += d
        o.write(d)
        o.flush()


class SPServer:
    """An sslports listener on 127.0.0.1 accepting ``count`` connections in a thread."""

    def __init__(
        self,
        ctx: Any = "auto",
        handler: Callable[[Any, Any], Any] = echo,
        count: int = 1,
        host: str = "127.0.0.1",
        **kw: Any,
    ) -> None:
        self.listener = S.ssl_listen(0, 5, False, host, ctx, **kw)
        if isinstance(ctx, str):
            S.ssl_load_certificate_chain(self.listener, S.TEST_PEM)
            S.ssl_load_private_key(self.listener, S.TEST_PEM)
        self.port = S.ssl_addresses(self.listener, True)[1]
        self.handler = handler
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(count,), daemon=True)
        self.thread.start()

    def _run(self, count: int) -> None:
        for _ in range(count):
            try:
                i, o = S.ssl_accept(self.listener)
            except BaseException as e:
                self.errors.append(e)
                continue
            try:
                self.results.append(self.handler(i, o))
            except BaseException as e:
                self.errors.append(e)
            finally:
                with contextlib.suppress(Exception):
                    o.close()
                with contextlib.suppress(Exception):
                    i.close()

    def join(self) -> None:
        self.thread.join(JOIN)
        assert not self.thread.is_alive(), "server thread hung"

    def __enter__(self) -> SPServer:
        return self

    def __exit__(self, *a: Any) -> None:
        self.thread.join(JOIN)
        S.ssl_close(self.listener)


class PyServer:
    """A Python ``ssl`` server accepting ``count`` connections in a thread."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        handler: Callable[[ssl.SSLSocket], Any] | None = None,
        count: int = 1,
        host: str = "127.0.0.1",
        suppress_ragged: bool = True,
    ) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=fam)
        self.port = self.sock.getsockname()[1]
        self.ctx = ctx
        self.handler = handler or self._echo
        self.suppress = suppress_ragged
        self.results: list[Any] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(count,), daemon=True)
        self.thread.start()

    @staticmethod
    def _echo(s: ssl.SSLSocket) -> bytes:
        got = b""
        while True:
            d = s.recv(65536)
            if not d:
                return got
            got += d
            s.sendall(d)

    def _run(self, count: int) -> None:
        for _ in range(count):
            c, _ = self.sock.accept()
            c.settimeout(JOIN)
            s = None
            try:
                s = self.ctx.wrap_socket(c, server_side=True, suppress_ragged_eofs=self.suppress)
                self.results.append(self.handler(s))
            except BaseException as e:
                self.errors.append(e)
            finally:
                (s or c).close()
                c.close()

    def join(self) -> None:
        self.thread.join(JOIN)
        assert not self.thread.is_alive(), "server thread hung"

    def __enter__(self) -> PyServer:
        return self

    def __exit__(self, *a: Any) -> None:
        self.thread.join(JOIN)
        self.sock.close()


def py_server_ctx(cert: Any = None, key: Any = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert or S.TEST_PEM), str(key) if key else None)
    return ctx


@contextlib.contextmanager
def stalled_server() -> Iterator[tuple[int, threading.Event]]:
    """Accept TCP, read, never answer, until released."""
    lsock = socket.create_server(("127.0.0.1", 0))
    release = threading.Event()

    def run() -> None:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            release.wait(JOIN)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield lsock.getsockname()[1], release
    finally:
        release.set()
        # unblock accept if nobody connected
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", lsock.getsockname()[1]), timeout=2).close()
        t.join(JOIN)
        lsock.close()


def socket_fds() -> set[int]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                out.add(int(name))
    return out


def tcp_nodelay_of(local: tuple[str, int], peer: tuple[str, int]) -> int | None:
    for fd in socket_fds():
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if s.getsockname()[:2] == local and s.getpeername()[:2] == peer:
                return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        except OSError:
            pass
        finally:
            s.close()
    return None


def pair(
    server_context: Any = "auto",
    client_context: Any = "auto",
    host: str = "localhost",
    handler: Callable[[Any, Any], Any] | None = None,
    **connect_kw: Any,
) -> tuple[Any, Any, SPServer]:
    srv = SPServer(server_context, handler or echo)
    i, o = S.ssl_connect(host, srv.port, client_context, **connect_kw)
    return i, o, srv


def run_thread(fn: Callable[[], Any]) -> Any:
    ex = ThreadPoolExecutor(1)
    fut = ex.submit(fn)
    ex.shutdown(wait=False)
    return fut


def run_py(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC
    if env:
        e.update(env)
    r = subprocess.run(
        [PY, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


# --------------------------------------------------------------------------------------------
# names, modules, status
# --------------------------------------------------------------------------------------------

TOP_NAMES = [
    "ssl_available",
    "ssl_load_fail_reason",
    "TEST_PEM",
    "SSLError",
    "SSLNetworkError",
    "SSLUnsupportedError",
    "ssl_connect",
    "ssl_connect_enable_break",
    "ssl_secure_client_context",
    "ssl_make_client_context",
    "supported_client_protocols",
    "is_ssl_client_context",
    "ssl_max_client_protocol",
    "ssl_listen",
    "ssl_close",
    "is_ssl_listener",
    "ssl_accept",
    "ssl_accept_enable_break",
    "ssl_abandon_port",
    "ssl_addresses",
    "is_ssl_port",
    "ssl_make_server_context",
    "is_ssl_server_context",
    "supported_server_protocols",
    "ssl_max_server_protocol",
    "ports_to_ssl_ports",
    "SSLInputPort",
    "SSLOutputPort",
    "SSLListener",
    "SSLClientContext",
    "SSLServerContext",
    "ssl_load_verify_source",
    "ssl_default_verify_sources",
    "ssl_load_default_verify_sources",
    "ssl_load_verify_root_certificates",
    "ssl_set_ciphers",
    "ssl_set_ciphersuites",
    "ssl_seal_context",
    "ssl_load_certificate_chain",
    "ssl_load_private_key",
    "ssl_load_suggested_certificate_authorities",
    "ssl_server_context_enable_dhe",
    "ssl_server_context_enable_ecdh",
    "ssl_dh4096_param_bytes",
    "ssl_set_server_name_identification_callback",
    "ssl_set_verify",
    "ssl_try_verify",
    "ssl_peer_verified",
    "ssl_set_verify_hostname",
    "ssl_peer_certificate_hostnames",
    "ssl_peer_check_hostname",
    "ssl_peer_subject_name",
    "ssl_peer_issuer_name",
    "ssl_channel_binding",
    "ssl_get_alpn_selected",
    "ssl_set_server_alpn",
    "ssl_default_channel_binding",
    "ssl_export_keying_material",
    "ssl_protocol_version",
    "ssl_cipher_name",
    "ssl_set_keylogger",
    "ssl_wrap_socket",
    "ssl_session_reused",
]


@pytest.mark.parametrize("name", TOP_NAMES)
def test_top_level_name_exists(name: str) -> None:
    assert hasattr(S, name), name


def test_submodules_export_their_names() -> None:
    import sslports.libcrypto as LC
    import sslports.libssl as LS
    import sslports.md5 as M
    import sslports.sha1 as H

    for n in ("sha1", "sha1_bytes", "bytes_to_hex_string", "hex_string_to_bytes"):
        assert callable(getattr(H, n))
    for n in ("md5", "md5_bytes"):
        assert callable(getattr(M, n))
    for n in ("libcrypto", "libcrypto_load_fail_reason", "openssl_lib_versions"):
        assert hasattr(LC, n)
    for n in ("libssl", "libssl_load_fail_reason"):
        assert hasattr(LS, n)


def test_status_values() -> None:
    assert S.ssl_available is True
    assert S.ssl_load_fail_reason is None


def test_test_pem_contents() -> None:
    p = S.TEST_PEM
    assert isinstance(p, pathlib.Path) and p.is_file()
    data = p.read_bytes()
    key = serialization.load_pem_private_key(data, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    cert = x509.load_pem_x509_certificate(data)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life >= datetime.timedelta(days=20 * 365)
    assert cert.not_valid_after_utc > NOW + datetime.timedelta(days=365 * 5)


def test_test_pem_as_verify_source_verifies_itself() -> None:
    ctx = S.ssl_make_client_context()
    S.ssl_load_verify_source(ctx, S.TEST_PEM)
    S.ssl_set_verify(ctx, True)
    S.ssl_set_verify_hostname(ctx, True)
    i, o, srv = pair(client_context=ctx, host="localhost")
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()
    i, o, srv = pair(client_context=ctx, host="127.0.0.1")
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def test_exception_hierarchy() -> None:
    assert issubclass(S.SSLError, OSError)
    assert issubclass(S.SSLNetworkError, S.SSLError)
    assert issubclass(S.SSLNetworkError, ConnectionError)
    assert issubclass(S.SSLUnsupportedError, S.SSLError)
    assert not issubclass(S.SSLUnsupportedError, S.SSLNetworkError)


# --------------------------------------------------------------------------------------------
# libcrypto / libssl
# --------------------------------------------------------------------------------------------


def test_libcrypto_libssl_modules() -> None:
    import ctypes

    import sslports.libcrypto as LC
    import sslports.libssl as LS

    assert isinstance(LC.libcrypto, ctypes.CDLL)
    assert isinstance(LS.libssl, ctypes.CDLL)
    assert LC.libcrypto_load_fail_reason is None
    assert LS.libssl_load_fail_reason is None
    vs = LC.openssl_lib_versions
    assert isinstance(vs, list) and vs and all(isinstance(v, str) for v in vs)
    assert "3" in vs
    if "1.1" in vs:
        assert vs.index("3") < vs.index("1.1")
    LC.libcrypto.OpenSSL_version_num.restype = ctypes.c_ulong
    assert LC.libcrypto.OpenSSL_version_num() >> 28 >= 1
    assert hasattr(LS.libssl, "SSL_CTX_new")


def test_libcrypto_is_the_library_the_extension_uses() -> None:
    out = run_py("""
        import sslports, sslports.libcrypto, sslports.libssl
        ctx = sslports.ssl_make_client_context()
        names = set()
        for line in open('/proc/self/maps'):
            parts = line.split()
            if len(parts) >= 6 and ('libcrypto' in parts[5] or 'libssl' in parts[5]):
                names.add(__import__('os').path.realpath(parts[5]))
        print(sorted(names))
    """)
    names = eval(out)
    assert len([n for n in names if "libcrypto" in n]) == 1, names
    assert len([n for n in names if "libssl" in n]) == 1, names


# --------------------------------------------------------------------------------------------
# digests
# --------------------------------------------------------------------------------------------


class OnlyRead:
    """A file-like object with only ``read`` that returns short reads."""

    def __init__(self, data: bytes, chunk: int = 7) -> None:
        self.data, self.pos, self.chunk = data, 0, chunk

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self.data)
        n = min(n, self.chunk)
        d = self.data[self.pos : self.pos + n]
        self.pos += len(d)
        return d


def test_sha1_and_md5_on_file_likes(tmp_path: pathlib.Path) -> None:
    from sslports.md5 import md5, md5_bytes
    from sslports.sha1 import sha1, sha1_bytes

    assert sha1(io.BytesIO(b"abc")) == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert sha1_bytes(io.BytesIO(b"abc")) == hashlib.sha1(b"abc").digest()
    assert md5(io.BytesIO(b"abc")) == "900150983cd24fb0d6963f7d28e17f72"
    assert md5_bytes(io.BytesIO(b"abc")) == hashlib.md5(b"abc").digest()
    assert sha1(io.BytesIO(b"")) == hashlib.sha1(b"").hexdigest()
    big = os.urandom(3_000_000)
    assert sha1(OnlyRead(big, 65521)) == hashlib.sha1(big).hexdigest()
    assert md5_bytes(OnlyRead(big[:10000], 3)) == hashlib.md5(big[:10000]).digest()
    f = tmp_path / "f.bin"
    f.write_bytes(big)
    with open(f, "rb", buffering=0) as fh:
        assert md5(fh) == hashlib.md5(big).hexdigest()
        assert fh.read() == b""  # consumed to EOF
    with open(f, "rb") as fh:
        assert sha1_bytes(fh) == hashlib.sha1(big).digest()
    bio = io.BytesIO(b"xyz" * 1000)
    sha1(bio)
    assert bio.read() == b""


def test_digest_return_types_and_lengths() -> None:
    from sslports.md5 import md5, md5_bytes
    from sslports.sha1 import sha1, sha1_bytes

    h = sha1(io.BytesIO(b"x"))
    assert isinstance(h, str) and len(h) == 40 and h == h.lower()
    assert isinstance(sha1_bytes(io.BytesIO(b"x")), bytes) and len(sha1_bytes(io.BytesIO())) == 20
    m = md5(io.BytesIO(b"x"))
    assert isinstance(m, str) and len(m) == 32 and m == m.lower()
    assert isinstance(md5_bytes(io.BytesIO()), bytes) and len(md5_bytes(io.BytesIO())) == 16


def test_digest_accepts_bytes_like() -> None:
    from sslports.md5 import md5, md5_bytes
    from sslports.sha1 import sha1, sha1_bytes

    for v in (b"hello", bytearray(b"hello"), memoryview(b"hello")):
        assert sha1(v) == hashlib.sha1(b"hello").hexdigest()
        assert sha1_bytes(v) == hashlib.sha1(b"hello").digest()
        assert md5(v) == hashlib.md5(b"hello").hexdigest()
        assert md5_bytes(v) == hashlib.md5(b"hello").digest()


@pytest.mark.parametrize("bad", ["hello", 12, None, [b"a"], object()])
def test_digest_rejects_other_types(bad: Any) -> None:
    from sslports.md5 import md5, md5_bytes
    from sslports.sha1 import sha1, sha1_bytes

    for f in (sha1, sha1_bytes, md5, md5_bytes):
        with pytest.raises(TypeError):
            f(bad)


def test_hex_strings() -> None:
    from sslports.sha1 import bytes_to_hex_string, hex_string_to_bytes

    assert bytes_to_hex_string(b"\x00\x01\xab\xff") == "0001abff"
    assert bytes_to_hex_string(b"") == ""
    assert hex_string_to_bytes("0001abff") == b"\x00\x01\xab\xff"
    assert hex_string_to_bytes("0001ABFF") == b"\x00\x01\xab\xff"
    assert hex_string_to_bytes("") == b""
    data = os.urandom(300)
    assert hex_string_to_bytes(bytes_to_hex_string(data)) == data
    with pytest.raises(ValueError, match="hex_string_to_bytes"):
        hex_string_to_bytes("abc")
    with pytest.raises(ValueError):
        hex_string_to_bytes("zz")
    with pytest.raises(ValueError):
        hex_string_to_bytes("0g")


FALLBACK_SCRIPT = r"""
import importlib.abc, importlib.machinery, logging, sys, io, hashlib, json
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith("sslports."):
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.origin and spec.origin.endswith((".so", ".pyd")):
                raise ImportError("blocked native module " + name)
        return None
sys.meta_path.insert(0, Block())
records = []
class H(logging.Handler):
    def emit(self, r):
        records.append(r)
lg = logging.getLogger("sslports")
lg.addHandler(H())
lg.setLevel(logging.DEBUG)
import sslports
out = {"available": sslports.ssl_available, "reason": sslports.ssl_load_fail_reason}
errs = {}
import socket
a, b = socket.socketpair()
calls = [
    ("ssl_connect", lambda: sslports.ssl_connect("localhost", 443)),
    ("ssl_connect", lambda: sslports.ssl_connect("localhost", 443, "secure")),
    ("ssl_listen", lambda: sslports.ssl_listen(0)),
    ("ssl_make_client_context", lambda: sslports.ssl_make_client_context()),
    ("ssl_make_client_context", lambda: sslports.ssl_make_client_context("secure")),
    ("ssl_make_server_context", lambda: sslports.ssl_make_server_context()),
    ("ssl_secure_client_context", lambda: sslports.ssl_secure_client_context()),
    ("ports_to_ssl_ports", lambda: sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO())),
    ("ports_to_ssl_ports",
     lambda: sslports.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), mode="connect")),
    ("ssl_wrap_socket", lambda: sslports.ssl_wrap_socket(a)),
]
for i, (name, call) in enumerate(calls):
    try:
        call()
        errs[f"{i} {name}"] = None
    except Exception as e:
        unsupported = isinstance(e, sslports.SSLUnsupportedError)
        errs[f"{i} {name}"] = [type(e).__name__, unsupported, str(e)]
out["errs"] = errs
from sslports.sha1 import sha1, sha1_bytes, bytes_to_hex_string, hex_string_to_bytes
from sslports.md5 import md5, md5_bytes
ok = []
for _ in range(3):
    ok.append(sha1(io.BytesIO(b"abc")) == hashlib.sha1(b"abc").hexdigest())
    ok.append(sha1_bytes(io.BytesIO(b"abc")) == hashlib.sha1(b"abc").digest())
    ok.append(md5(io.BytesIO(b"abc")) == hashlib.md5(b"abc").hexdigest())
    ok.append(md5_bytes(b"abc") == hashlib.md5(b"abc").digest())
    ok.append(hex_string_to_bytes(bytes_to_hex_string(b"\x01\xfe")) == b"\x01\xfe")
out["ok"] = ok
out["warnings"] = [r.getMessage() for r in records if r.levelno == logging.WARNING]
print(json.dumps(out))
"""


def test_fallback_without_native_extension() -> None:
    out = json.loads(run_py(FALLBACK_SCRIPT).strip().splitlines()[-1])
    assert out["available"] is False
    reason = out["reason"]
    assert isinstance(reason, str) and reason
    assert len(out["errs"]) == 10
    for key, e in out["errs"].items():
        assert e is not None, key
        assert e[1], (key, e)
        assert reason in e[2], (key, e)
        # (named for the call made, not the function it calls: ssl_connect made a context)
        assert e[2].startswith(key.split()[1] + ": SSL not available ("), (key, e)
    assert all(out["ok"]), out["ok"]
    assert len(out["warnings"]) == 1, out["warnings"]


# --------------------------------------------------------------------------------------------
# client
# --------------------------------------------------------------------------------------------


def test_ssl_connect_auto_to_python_server() -> None:
    with PyServer(py_server_ctx()) as srv:
        i, o = S.ssl_connect("localhost", srv.port)
        assert isinstance(i, S.SSLInputPort) and isinstance(o, S.SSLOutputPort)
        assert o.write(b"hello") == 5
        o.flush()
        assert i.read(5) == b"hello"
        o.close()
        i.close()
        srv.join()
    assert srv.results == [b"hello"]


def test_ssl_connect_default_client_protocol_is_auto_and_insecure(pki: PKI) -> None:
    # self-signed untrusted cert, name mismatch: "auto" checks neither
    with PyServer(py_server_ctx(*pki.other)) as srv:
        i, o = S.ssl_connect("localhost", srv.port)
        assert S.ssl_peer_verified(i) is False
        o.close()
        i.close()


def test_ssl_connect_secure_verifies_with_default_sources(pki: PKI) -> None:
    def body() -> None:
        S.ssl_default_verify_sources([str(pki.ca_pem)])
        with PyServer(py_server_ctx(pki.leaf_cert, pki.leaf_keyf)) as srv:
            i, o = S.ssl_connect("localhost", srv.port, "secure")
            assert S.ssl_peer_verified(i) is True
            o.write(b"x")
            o.flush()
            assert i.read(1) == b"x"
            o.close()
            i.close()
        with PyServer(py_server_ctx(*pki.selfsigned)) as srv:  # noqa: SIM117
            with pytest.raises(S.SSLNetworkError):
                S.ssl_connect("localhost", srv.port, "secure")
        with PyServer(py_server_ctx(*pki.other)) as srv:  # trusted chain, wrong name
            with pytest.raises(S.SSLNetworkError) as ei:
                S.ssl_connect("localhost", srv.port, "secure")
            assert ei.value.verify_message.startswith("hostname mismatch")

    contextvars.copy_context().run(body)


def _python_verify_error(
    port: int, cafile: pathlib.Path, host: str
) -> ssl.SSLCertVerificationError:
    c = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port)) as s:
        try:
            c.wrap_socket(s, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            return e
    raise AssertionError("python client verified")


def test_verify_failure_message_matches_api_example(pki: PKI) -> None:
    with PyServer(py_server_ctx(*pki.selfsigned)) as srv:  # noqa: SIM117
        with pytest.raises(S.SSLNetworkError) as ei:
            S.ssl_connect("localhost", srv.port, trusting_client(pki))
    assert re.match(
        r"^ssl_connect: connect failed \(.*certificate verify failed.*\)$", str(ei.value)
    ), ei.value


def test_verify_failure_message_and_attributes(pki: PKI) -> None:
    with PyServer(py_server_ctx(*pki.selfsigned), count=2) as srv:
        pe = _python_verify_error(srv.port, pki.ca_pem, "localhost")
        with pytest.raises(S.SSLNetworkError) as ei:
            S.ssl_connect("localhost", srv.port, trusting_client(pki))
    e = ei.value
    assert re.match(r"^ssl_connect: [a-z ]+ failed \(.*certificate verify failed.*\)$", str(e)), e
    assert isinstance(e.openssl_errors, list) and all(isinstance(x, str) for x in e.openssl_errors)
    assert any("certificate verify failed" in x for x in e.openssl_errors)
    assert e.verify_code == pe.verify_code
    assert isinstance(e.verify_message, str)
    assert e.verify_message.startswith(pe.verify_message)


def test_verify_expired_and_hostname_mismatch(pki: PKI) -> None:
    with PyServer(py_server_ctx(*pki.expired)) as srv, pytest.raises(S.SSLNetworkError) as ei:
        S.ssl_connect("localhost", srv.port, trusting_client(pki))
    assert ei.value.verify_code == 10
    assert ei.value.verify_message.startswith("certificate has expired")
    with PyServer(py_server_ctx(*pki.other)) as srv, pytest.raises(S.SSLNetworkError) as ei:
        S.ssl_connect("localhost", srv.port, trusting_client(pki))
    assert ei.value.verify_message.startswith("hostname mismatch")
    assert ei.value.verify_code == 62


def test_every_ssl_error_has_the_attributes() -> None:
    ctx = S.ssl_make_client_context()
    with pytest.raises(S.SSLError) as ei:
        S.ssl_set_ciphers(ctx, "NO-SUCH-CIPHER-AT-ALL")
    e = ei.value
    assert isinstance(e.openssl_errors, list)
    assert e.verify_code is None and e.verify_message is None
    assert str(e).startswith("ssl_set_ciphers:")


def test_hostname_verification_for_ip_literals(pki: PKI) -> None:
    with PyServer(py_server_ctx(pki.leaf_cert, pki.leaf_keyf)) as srv:
        i, o = S.ssl_connect("127.0.0.1", srv.port, trusting_client(pki))
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()
    with PyServer(py_server_ctx(*pki.other)) as srv, pytest.raises(S.SSLNetworkError):
        S.ssl_connect("127.0.0.1", srv.port, trusting_client(pki))


def _sni_recorder() -> tuple[ssl.SSLContext, list[Any]]:
    seen: list[Any] = []
    ctx = py_server_ctx()

    def cb(sock: Any, name: Any, c: Any) -> None:
        seen.append(name)

    ctx.sni_callback = cb
    return ctx, seen


def test_ssl_connect_sends_sni_except_for_ip_literals() -> None:
    ctx, seen = _sni_recorder()
    with PyServer(ctx, count=2) as srv:
        for host in ("localhost", "127.0.0.1"):
            i, o = S.ssl_connect(host, srv.port)
            o.write(b"a")
            o.flush()
            assert i.read(1) == b"a"
            o.close()
            i.close()
    assert seen == ["localhost", None]


def test_ssl_connect_ipv6_literal() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = PyServer(py_server_ctx(), host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with srv:
        i, o = S.ssl_connect("::1", srv.port)
        o.write(b"six")
        o.flush()
        assert i.read(3) == b"six"
        assert S.ssl_addresses(i)[1] == "::1"
        o.close()
        i.close()


def test_ssl_connect_tries_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Make the name resolve to a closed port first, then to the server.
    with PyServer(py_server_ctx()) as srv:
        dead = socket.socket()
        dead.bind(("127.0.0.2", 0))
        dead_port = dead.getsockname()[1]
        dead.close()
        real_gai = socket.getaddrinfo

        def fake(host: Any, port: Any, *a: Any, **k: Any) -> Any:
            if host == "multi.test":
                return [
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", dead_port)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", srv.port)),
                ]
            return real_gai(host, port, *a, **k)

        monkeypatch.setattr(socket, "getaddrinfo", fake)
        try:
            i, o = S.ssl_connect("multi.test", srv.port)
        finally:
            monkeypatch.undo()
        o.write(b"z")
        o.flush()
        assert i.read(1) == b"z"
        o.close()
        i.close()


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_ssl_connect_port_range(port: int) -> None:
    with pytest.raises(ValueError, match="ssl_connect"):
        S.ssl_connect("localhost", port)


@pytest.mark.parametrize(
    "args",
    [
        (123, 443),
        (b"localhost", 443),
        ("localhost", "443"),
        ("localhost", 44.3),
        ("localhost", None),
    ],
)
def test_ssl_connect_type_errors(args: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError, match="ssl_connect"):
        S.ssl_connect(*args)


def test_ssl_connect_bad_protocol_values() -> None:
    with pytest.raises(ValueError, match="ssl_connect"):
        S.ssl_connect("localhost", 443, "tls99")
    with pytest.raises(TypeError):
        S.ssl_connect("localhost", 443, S.ssl_make_server_context())
    with pytest.raises(TypeError):
        S.ssl_connect("localhost", 443, 12)


def test_ssl_connect_refused_raises_network_error_and_closes_socket() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    before = socket_fds()
    with pytest.raises(S.SSLNetworkError) as ei:
        S.ssl_connect("127.0.0.1", port)
    assert isinstance(ei.value, ConnectionError)
    assert str(ei.value).startswith("ssl_connect:")
    assert socket_fds() <= before


def test_failed_handshake_closes_socket(pki: PKI) -> None:
    with PyServer(py_server_ctx(*pki.selfsigned)) as srv:
        before = socket_fds()
        with pytest.raises(S.SSLNetworkError):
            S.ssl_connect("localhost", srv.port, trusting_client(pki))
        srv.join()
        assert socket_fds() <= before


def test_alpn_is_keyword_only_and_negotiates() -> None:
    ctx = py_server_ctx()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with PyServer(ctx, count=3) as srv:
        with pytest.raises(TypeError):
            S.ssl_connect("localhost", srv.port, "auto", [b"h2"])  # type: ignore[misc]
        i, o = S.ssl_connect("localhost", srv.port, alpn=[b"http/1.1", b"h2"])
        assert S.ssl_get_alpn_selected(i) == b"h2"
        assert S.ssl_get_alpn_selected(o) == b"h2"
        o.close()
        i.close()
        # any sequence
        i, o = S.ssl_connect("localhost", srv.port, alpn=(b"http/1.1",))
        assert S.ssl_get_alpn_selected(i) == b"http/1.1"
        o.close()
        i.close()
        i, o = S.ssl_connect("localhost", srv.port)
        assert S.ssl_get_alpn_selected(i) is None
        o.close()
        i.close()


@pytest.mark.parametrize("bad", [[b""], [b"x" * 256]])
def test_alpn_name_length_is_checked(bad: list[bytes]) -> None:
    with stalled_server() as (port, _), pytest.raises(ValueError, match="ssl_connect"):
        S.ssl_connect("127.0.0.1", port, alpn=bad, timeout=5)


def test_alpn_name_255_bytes_ok_and_type_checked() -> None:
    with stalled_server() as (port, _), pytest.raises(TypeError):
        S.ssl_connect("127.0.0.1", port, alpn=["h2"], timeout=5)  # str, not bytes
    ctx = py_server_ctx()
    long = "a" * 255
    ctx.set_alpn_protocols([long])
    with PyServer(ctx) as srv:
        i, o = S.ssl_connect("localhost", srv.port, alpn=[long.encode()])
        assert S.ssl_get_alpn_selected(i) == long.encode()
        o.close()
        i.close()


def test_ssl_connect_close_does_not_send_close_notify() -> None:
    box: list[Any] = []

    def handler(s: ssl.SSLSocket) -> None:
        s.sendall(b"ready")
        try:
            box.append(s.recv(10))
        except ssl.SSLError as e:
            box.append(e)

    ctx = py_server_ctx()
    ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0x80)  # (set by Python 3.9)
    with PyServer(ctx, handler, suppress_ragged=False) as srv:
        i, o = S.ssl_connect("localhost", srv.port)
        assert i.read(5) == b"ready"
        o.close()
        i.close()
        srv.join()
    assert len(box) == 1 and isinstance(box[0], ssl.SSLError), box  # ragged EOF, no close_notify


def test_ssl_connect_timeout_bounds_handshake_and_cleans_up() -> None:
    with stalled_server() as (port, release):
        before = socket_fds()
        with pytest.raises(TimeoutError) as ei:
            S.ssl_connect("127.0.0.1", port, timeout=0.5)
        assert isinstance(ei.value, S.SSLNetworkError)
        release.set()
    time.sleep(0.1)
    assert socket_fds() <= before


def test_ssl_connect_timeout_becomes_port_timeout() -> None:
    with PyServer(py_server_ctx()) as srv:
        i, o = S.ssl_connect("localhost", srv.port, timeout=7.5)
        assert i.gettimeout() == 7.5
        assert o.gettimeout() == 7.5
        o.close()
        i.close()
    with PyServer(py_server_ctx()) as srv:
        i, o = S.ssl_connect("localhost", srv.port)
        assert i.gettimeout() is None and o.gettimeout() is None
        o.close()
        i.close()


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("fn_name", ["ssl_connect", "ssl_connect_enable_break"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, _Interrupt])
def test_connect_can_be_interrupted(fn_name: str, exc: type[BaseException]) -> None:
    fn = getattr(S, fn_name)

    def handler(signum: int, frame: Any) -> None:
        raise exc()

    old = signal.signal(signal.SIGUSR1, handler)
    pid = os.getpid()
    try:
        with stalled_server() as (port, release):
            before = socket_fds()
            caught: BaseException | None = None
            timer = threading.Timer(0.3, lambda: os.kill(pid, signal.SIGUSR1))
            timer.start()
            try:
                # the stalled server gives up after JOIN seconds at most
                fn("127.0.0.1", port)
            except BaseException as e:
                caught = e
            finally:
                timer.cancel()
                timer.join()
            assert isinstance(caught, exc), repr(caught)
            release.set()
        # (the stalled server's own accepted socket is closed by now)
        assert socket_fds() <= before
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_ssl_connect_enable_break_same_signature() -> None:
    ctx = py_server_ctx()
    ctx.set_alpn_protocols(["h2"])
    with PyServer(ctx) as srv:
        i, o = S.ssl_connect_enable_break("localhost", srv.port, "auto", alpn=[b"h2"], timeout=10)
        assert S.ssl_get_alpn_selected(i) == b"h2"
        o.close()
        i.close()


def test_secure_client_context_properties(pki: PKI) -> None:
    def body() -> None:
        c1 = S.ssl_secure_client_context()
        assert S.is_ssl_client_context(c1)
        assert S.ssl_secure_client_context() is c1
        assert S.ssl_make_client_context("secure") is c1
        with pytest.raises(S.SSLError, match="context is sealed"):
            S.ssl_set_verify(c1, False)
        S.ssl_default_verify_sources([str(pki.ca_pem)])
        c2 = S.ssl_secure_client_context()
        assert c2 is not c1
        assert S.ssl_secure_client_context() is c2

    contextvars.copy_context().run(body)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_secure_context_requires_tls12(pki: PKI) -> None:
    def body() -> None:
        S.ssl_default_verify_sources([str(pki.ca_pem)])
        ctx = py_server_ctx(pki.leaf_cert, pki.leaf_keyf)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with PyServer(ctx) as srv, pytest.raises(S.SSLNetworkError):
            S.ssl_connect("localhost", srv.port, "secure")

    contextvars.copy_context().run(body)


def test_make_client_context_protocols() -> None:
    for p in ("auto", "sslv2-or-v3", "tls12", "tls13"):
        c = S.ssl_make_client_context(p)
        assert S.is_ssl_client_context(c)
        assert not S.is_ssl_server_context(c)
    c = S.ssl_make_client_context()
    assert S.is_ssl_client_context(c)
    for p in ("sslv2", "sslv3"):
        with pytest.raises(S.SSLUnsupportedError, match="requested protocol not supported"):
            S.ssl_make_client_context(p)
    with pytest.raises(ValueError, match="ssl_make_client_context"):
        S.ssl_make_client_context("tls99")
    with pytest.raises(TypeError, match="ssl_make_client_context"):
        S.ssl_make_client_context(12)


def test_make_client_context_secure_with_credentials(pki: PKI) -> None:
    c = S.ssl_make_client_context(
        "secure", private_key=("pem", pki.client[1]), certificate_chain=pki.client[0]
    )
    assert S.is_ssl_client_context(c)
    assert c is not S.ssl_secure_client_context()
    with pytest.raises(S.SSLError, match="context is sealed"):
        S.ssl_set_verify(c, False)


def test_make_context_credentials_are_keyword_only(pki: PKI) -> None:
    with pytest.raises(TypeError):
        S.ssl_make_client_context("auto", ("pem", pki.client[1]))  # type: ignore[misc]
    with pytest.raises(TypeError):
        S.ssl_make_server_context("auto", ("pem", pki.client[1]))  # type: ignore[misc]


def _client_cert_server(pki: PKI, try_: bool = False) -> Any:
    ctx = server_ctx(pki.leaf_cert, pki.leaf_keyf)
    S.ssl_load_verify_source(ctx, pki.ca_pem)
    (S.ssl_try_verify if try_ else S.ssl_set_verify)(ctx, True)
    return ctx


def _verified_handler(i: Any, o: Any) -> Any:
    return (
        S.ssl_peer_verified(i),
        S.ssl_peer_subject_name(i),
        S.ssl_peer_issuer_name(o),
        S.ssl_peer_certificate_hostnames(i),
    )


def _verified_echo_handler(i: Any, o: Any) -> Any:
    facts = _verified_handler(i, o)
    o.write(i.read(1))
    o.flush()
    return facts


@pytest.mark.parametrize("kind", ["pem-str", "pem-bytes", "pem-pathlike", "der", "pem-data"])
def test_client_credentials_forms(pki: PKI, kind: str) -> None:
    cert, key = pki.client
    der = pki.d / "client_key.der"
    der.write_bytes(_der_key(serialization.load_pem_private_key(key.read_bytes(), None)))
    pk = {
        "pem-str": ("pem", str(key)),
        "pem-bytes": ("pem", os.fsencode(key)),
        "pem-pathlike": ("pem", key),
        "der": ("der", der),
        "pem-data": ("pem-data", key.read_bytes()),
    }[kind]
    chain: Any = {"pem-str": str(cert), "pem-bytes": os.fsencode(cert)}.get(kind, cert)
    cctx = S.ssl_make_client_context("auto", private_key=pk, certificate_chain=chain)
    srv = SPServer(_client_cert_server(pki), _verified_handler)
    with srv:
        i, o = S.ssl_connect("localhost", srv.port, cctx)
        o.close()
        i.close()
        srv.join()
    assert not srv.errors, srv.errors
    assert srv.results[0][0] is True
    assert srv.results[0][1] == b"/CN=client"
    assert srv.results[0][2] == b"/O=Blind Test/CN=Blind Test CA"


@pytest.mark.parametrize("which", ["ec", "ed"])
def test_non_rsa_keys(pki: PKI, which: str) -> None:
    cert, key = getattr(pki, which)
    sctx = S.ssl_make_server_context("auto", private_key=("pem", key), certificate_chain=cert)
    name = "ec.localhost" if which == "ec" else "ed.localhost"
    i, o, srv = pair(sctx, "auto", host="localhost")
    with srv:
        assert S.ssl_peer_check_hostname(i, name)
        o.close()
        i.close()
    # and as a client credential
    cctx = S.ssl_make_client_context("auto", private_key=("pem", key), certificate_chain=cert)
    srv = SPServer(_client_cert_server(pki), _verified_handler)
    with srv:
        i, o = S.ssl_connect("localhost", srv.port, cctx)
        o.close()
        i.close()
        srv.join()
    assert not srv.errors, srv.errors
    assert srv.results[0][0] is True
    assert name in srv.results[0][3]


def test_supported_protocol_lists() -> None:
    cl = S.supported_client_protocols()
    sl = S.supported_server_protocols()
    for lst in (cl, sl):
        assert isinstance(lst, list) and all(isinstance(x, str) for x in lst)
        assert lst[:2] == ["secure", "auto"]
        assert "sslv2-or-v3" not in lst
        assert "sslv2" not in lst and "sslv3" not in lst
        assert "tls12" in lst and "tls13" in lst
        assert len(set(lst)) == len(lst)
        assert set(lst) <= {"secure", "auto", "tls", "tls11", "tls12", "tls13"}
    assert S.ssl_max_client_protocol() == "tls13"
    assert S.ssl_max_server_protocol() == "tls13"


@pytest.mark.parametrize("proto", ["tls", "tls11", "tls12", "tls13"])
def test_every_listed_version_really_handshakes(proto: str) -> None:
    if proto not in S.supported_client_protocols():
        assert proto in ("tls", "tls11"), f"{proto} must be supported"
        pytest.skip(f"{proto} not listed by this build")
    assert proto in S.supported_server_protocols()
    sctx = server_ctx(proto=proto)
    i, o, srv = pair(sctx, S.ssl_make_client_context(proto))
    with srv:
        assert S.ssl_protocol_version(i) == proto
        o.write(b"v")
        o.flush()
        assert i.read(1) == b"v"
        o.close()
        i.close()


def test_tls12_context_pins_version() -> None:
    i, o, srv = pair("auto", "tls12")
    with srv:
        assert S.ssl_protocol_version(i) == "tls12"
        assert isinstance(S.ssl_cipher_name(i), str) and S.ssl_cipher_name(i)
        o.close()
        i.close()
    i, o, srv = pair("auto", "auto")
    with srv:
        assert S.ssl_protocol_version(o) == "tls13"
        assert S.ssl_cipher_name(o).startswith("TLS_")
        o.close()
        i.close()


def test_context_predicates() -> None:
    c = S.ssl_make_client_context()
    s = S.ssl_make_server_context()
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    try:
        assert S.is_ssl_client_context(c) and not S.is_ssl_client_context(s)
        assert S.is_ssl_server_context(s) and not S.is_ssl_server_context(c)
        assert not S.is_ssl_server_context(lst)
        assert not S.is_ssl_client_context(lst)
        for v in (None, 1, "auto", object()):
            assert not S.is_ssl_client_context(v)
            assert not S.is_ssl_server_context(v)
            assert not S.is_ssl_listener(v)
            assert not S.is_ssl_port(v)
        assert S.is_ssl_listener(lst)
        assert not S.is_ssl_listener(s)
        assert not S.is_ssl_port(lst)
        assert S.is_ssl_server_context(S.ssl_make_server_context("secure"))
        assert isinstance(c, S.SSLClientContext) and isinstance(s, S.SSLServerContext)
        assert isinstance(lst, S.SSLListener)
    finally:
        S.ssl_close(lst)


# --------------------------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------------------------


def test_listen_accept_and_addresses() -> None:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    try:
        S.ssl_load_certificate_chain(lst, S.TEST_PEM)
        S.ssl_load_private_key(lst, S.TEST_PEM)
        addr = S.ssl_addresses(lst, True)
        assert addr[0] == "127.0.0.1" and isinstance(addr[1], int) and addr[1] > 0
        assert addr[2:] == ("0.0.0.0", 0)
        assert S.ssl_addresses(lst) == ("127.0.0.1", "0.0.0.0")
        port = addr[1]
        fut = run_thread(lambda: S.ssl_connect("localhost", port))
        r, _, _ = select.select([lst], [], [], JOIN)
        assert r == [lst]
        si, so = S.ssl_accept(lst)
        ci, co = fut.result(JOIN)
        assert S.is_ssl_port(si) and S.is_ssl_port(so) and S.is_ssl_port(ci)
        assert S.ssl_addresses(si) == ("127.0.0.1", "127.0.0.1")
        sl = S.ssl_addresses(so, True)
        cl = S.ssl_addresses(ci, True)
        assert sl[1] == port and cl[3] == port
        assert sl[3] == cl[1]
        assert all(isinstance(x, int) for x in (sl[1], sl[3]))
        so.write(b"from server")
        so.flush()
        assert ci.read(11) == b"from server"
        for p in (si, so, ci, co):
            p.close()
    finally:
        S.ssl_close(lst)


def test_listener_selectors_and_context_manager() -> None:
    with S.ssl_listen(0, 5, False, "127.0.0.1") as lst:
        S.ssl_load_certificate_chain(lst, S.TEST_PEM)
        S.ssl_load_private_key(lst, S.TEST_PEM)
        port = S.ssl_addresses(lst, True)[1]
        sel = selectors.DefaultSelector()
        sel.register(lst, selectors.EVENT_READ)
        assert sel.select(0) == []
        fut = run_thread(lambda: S.ssl_connect("localhost", port))
        assert len(sel.select(JOIN)) == 1
        sel.close()
        si, so = S.ssl_accept_enable_break(lst)
        ci, co = fut.result(JOIN)
        for p in (si, so, ci, co):
            p.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_ssl_close_closes_listener() -> None:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    port = S.ssl_addresses(lst, True)[1]
    S.ssl_close(lst)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    lst.close()  # idempotent enough not to raise


def test_listen_ipv6_addresses() -> None:
    try:
        lst = S.ssl_listen(0, 5, False, "::1")
    except S.SSLError:
        pytest.skip("no IPv6")
    try:
        a = S.ssl_addresses(lst, True)
        assert a[0] == "::1" and a[2:] == ("::", 0)
    finally:
        S.ssl_close(lst)


def test_listen_reuse_options() -> None:
    lst = S.ssl_listen(0, 5, True, "127.0.0.1")
    try:
        s = socket.socket(fileno=os.dup(lst.fileno()))
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        s.close()
    finally:
        S.ssl_close(lst)
    lst = S.ssl_listen(0, 5, False, "127.0.0.1", reuse_port=True)
    try:
        s = socket.socket(fileno=os.dup(lst.fileno()))
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        s.close()
    finally:
        S.ssl_close(lst)


@pytest.mark.parametrize("port", [-1, 65536])
def test_listen_port_range(port: int) -> None:
    with pytest.raises(ValueError, match="ssl_listen"):
        S.ssl_listen(port)


def test_listen_type_errors() -> None:
    with pytest.raises(TypeError, match="ssl_listen"):
        S.ssl_listen("0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        S.ssl_listen(0, 5, False, "127.0.0.1", S.ssl_make_client_context())
    with pytest.raises(ValueError):
        S.ssl_listen(0, 5, False, "127.0.0.1", "tls99")


def test_listen_with_server_context_object(pki: PKI) -> None:
    sctx = server_ctx(pki.leaf_cert, pki.leaf_keyf)
    i, o, srv = pair(sctx, trusting_client(pki))
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def test_accept_handshake_timeout_keeps_listener_usable() -> None:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1", handshake_timeout=0.5)
    try:
        S.ssl_load_certificate_chain(lst, S.TEST_PEM)
        S.ssl_load_private_key(lst, S.TEST_PEM)
        port = S.ssl_addresses(lst, True)[1]
        staller = socket.create_connection(("127.0.0.1", port))
        with pytest.raises(S.SSLNetworkError):
            S.ssl_accept(lst)
        staller.close()
        for _ in range(5):  # (a good client on a loaded machine may take 0.5 s too: again)
            fut = run_thread(lambda: S.ssl_connect("localhost", port))
            try:
                si, so = S.ssl_accept(lst)
                break
            except S.SSLNetworkError:
                with contextlib.suppress(Exception):
                    fut.result(JOIN)
        else:
            raise AssertionError("no client got through the listener")
        ci, co = fut.result(JOIN)
        co.write(b"ok")
        co.flush()
        assert si.read(2) == b"ok"
        for p in (si, so, ci, co):
            p.close()
    finally:
        S.ssl_close(lst)


def test_accept_garbage_client_keeps_listener_usable() -> None:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    try:
        S.ssl_load_certificate_chain(lst, S.TEST_PEM)
        S.ssl_load_private_key(lst, S.TEST_PEM)
        port = S.ssl_addresses(lst, True)[1]
        before = socket_fds()
        for garbage in (b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x00" * 100):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(garbage)
            c.shutdown(socket.SHUT_WR)
            with pytest.raises(S.SSLNetworkError) as ei:
                S.ssl_accept(lst)
            assert str(ei.value).startswith("ssl_accept")
            c.close()
        assert socket_fds() <= before  # each failed handshake closed its socket
        fut = run_thread(lambda: S.ssl_connect("localhost", port))
        si, so = S.ssl_accept(lst)
        ci, co = fut.result(JOIN)
        for p in (si, so, ci, co):
            p.close()
    finally:
        S.ssl_close(lst)


def test_listener_without_certificate_fails_handshake_only() -> None:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    try:
        port = S.ssl_addresses(lst, True)[1]
        fut = run_thread(lambda: S.ssl_connect("localhost", port))
        with pytest.raises(S.SSLNetworkError):
            S.ssl_accept(lst)
        with pytest.raises(S.SSLNetworkError):
            fut.result(JOIN)
    finally:
        S.ssl_close(lst)


def test_abandon_port_flushes_output() -> None:
    def handler(i: Any, o: Any) -> None:
        o.write(b"pending data")
        S.ssl_abandon_port(o)
        assert o.closed
        assert i.read(3) == b"bye"
        S.ssl_abandon_port(i)
        assert i.closed

    i, o, srv = pair(handler=handler)
    with srv:
        assert i.read(12) == b"pending data"
        o.write(b"bye")
        o.flush()
        srv.join()
        assert not srv.errors, srv.errors
        assert i.read() == b""
        o.close()
        i.close()


def test_is_ssl_port_false_for_other_things() -> None:
    assert not S.is_ssl_port(io.BytesIO())
    with socket.socket() as sock:
        assert not S.is_ssl_port(sock)
    assert not S.is_ssl_port(S.ssl_make_client_context())


# --------------------------------------------------------------------------------------------
# ports_to_ssl_ports
# --------------------------------------------------------------------------------------------


class BoundedPipe:
    """A one-way in-memory pipe holding at most ``cap`` bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.cv = threading.Condition()
        self.w_closed = False
        self.r_closed = False
        self.reader = _PipeReader(self)
        self.writer = _PipeWriter(self)


class _PipeReader:
    def __init__(self, p: BoundedPipe) -> None:
        self.p = p
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        p = self.p
        with p.cv:
            while not p.buf and not p.w_closed:
                p.cv.wait()
            if n is None or n < 0:
                n = len(p.buf)
            d = bytes(p.buf[:n])
            del p.buf[:n]
            p.cv.notify_all()
            return d

    def close(self) -> None:
        with self.p.cv:
            self.closed = True
            self.p.r_closed = True
            self.p.cv.notify_all()


class _PipeWriter:
    def __init__(self, p: BoundedPipe) -> None:
        self.p = p
        self.closed = False

    def write(self, b: Any) -> int:
        b = bytes(b)
        p = self.p
        off = 0
        with p.cv:
            while off < len(b):
                while len(p.buf) >= p.cap and not p.r_closed:
                    p.cv.wait()
                if p.r_closed:
                    raise BrokenPipeError("reader closed")
                n = min(p.cap - len(p.buf), len(b) - off)
                p.buf += b[off : off + n]
                off += n
                p.cv.notify_all()
        return len(b)

    def close(self) -> None:
        with self.p.cv:
            self.closed = True
            self.p.w_closed = True
            self.p.cv.notify_all()


_ORIGINALS: list[Any] = []  # every stream wrapped_pair made, closed after each test


@pytest.fixture(autouse=True)
def _close_originals() -> Iterator[None]:
    yield
    while _ORIGINALS:
        with contextlib.suppress(Exception):
            _ORIGINALS.pop().close()


def wrapped_pair(
    transport: str = "socket",
    cap: int = 65536,
    server_kw: dict[str, Any] | None = None,
    client_kw: dict[str, Any] | None = None,
) -> tuple[Any, Any, Any, Any, Any]:
    """Connect a client and a server made by ports_to_ssl_ports.

    Returns (ci, co, si, so, originals)."""
    if transport == "socket":
        a, b = socket.socketpair()
        ca, cb = a.makefile("rb"), a.makefile("wb")
        sa, sb = b.makefile("rb"), b.makefile("wb")
        a.close()
        b.close()
        orig = (ca, cb, sa, sb)
    elif transport == "pipe":
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        ca, cb = open(r1, "rb"), open(w2, "wb")  # noqa: SIM115
        sa, sb = open(r2, "rb"), open(w1, "wb")  # noqa: SIM115
        orig = (ca, cb, sa, sb)
    elif transport == "rawpipe":
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        ca, cb = open(r1, "rb", buffering=0), open(w2, "wb", buffering=0)  # noqa: SIM115
        sa, sb = open(r2, "rb", buffering=0), open(w1, "wb", buffering=0)  # noqa: SIM115
        orig = (ca, cb, sa, sb)
    else:
        p1, p2 = BoundedPipe(cap), BoundedPipe(cap)
        ca, cb = p1.reader, p2.writer
        sa, sb = p2.reader, p1.writer
        orig = (ca, cb, sa, sb)
    _ORIGINALS.extend(orig)
    skw = {"context": server_ctx()} | (server_kw or {})
    fut = run_thread(lambda: S.ports_to_ssl_ports(sa, sb, mode="accept", **skw))
    try:
        ci, co = S.ports_to_ssl_ports(ca, cb, mode="connect", **(client_kw or {}))
    except BaseException:
        for f in (ca, cb):  # the server then sees EOF
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(Exception):
            fut.result(JOIN)
        for f in (sa, sb):
            with contextlib.suppress(Exception):
                f.close()
        raise
    si, so = fut.result(JOIN)
    return ci, co, si, so, orig


@pytest.mark.parametrize("transport", ["socket", "pipe", "rawpipe", "custom"])
def test_ports_to_ssl_ports_transports(transport: str) -> None:
    ci, co, si, so, _ = wrapped_pair(transport)
    for p in (ci, co, si, so):
        assert S.is_ssl_port(p)
    payload = os.urandom(100_000)
    fut = run_thread(lambda: si.read(len(payload)))
    co.write(payload)
    co.flush()
    assert fut.result(JOIN) == payload
    so.write(b"reply")
    so.flush()
    assert ci.read(5) == b"reply"
    for p in (co, ci, so, si):
        p.close()


@pytest.mark.parametrize("cap", [1, 10, 100])
def test_tiny_buffer_transports_do_not_deadlock(cap: int) -> None:
    ci, co, si, so, _ = wrapped_pair("custom", cap)
    # right after the handshake the server (TLS 1.3) wants to send session tickets while the
    # client writes its request
    co.write(b"request" * 50)
    co.flush()
    assert si.read(350) == b"request" * 50
    so.write(b"response" * 50)
    so.flush()
    assert ci.read(400) == b"response" * 50
    for p in (co, ci, so, si):
        p.close()


def test_tiny_buffer_both_sides_write_at_once() -> None:
    ci, co, si, so, _ = wrapped_pair("custom", 10)
    data = os.urandom(20_000)

    def server() -> bytes:
        so.write(data)
        so.flush()
        return si.read(len(data))

    fut = run_thread(server)
    co.write(data)
    co.flush()
    assert ci.read(len(data)) == data
    assert fut.result(JOIN) == data
    for p in (co, ci, so, si):
        p.close()


class _SlowBytesIO(io.BytesIO):
    def write(self, b: Any) -> int:
        time.sleep(0.05)  # a stream that takes a moment to accept bytes
        return super().write(b)


@pytest.mark.parametrize("cls", [io.BytesIO, _SlowBytesIO])
def test_bytesio_pair_is_accepted_as_transport(cls: type[io.BytesIO]) -> None:
    out = cls()
    with pytest.raises(S.SSLError):
        S.ports_to_ssl_ports(io.BytesIO(), out, mode="connect", timeout=10)
    # when the call has returned, what it wrote is in the stream
    data = out.getvalue()
    assert data[:1] == b"\x16"  # a ClientHello was written


def test_ports_to_ssl_ports_mode_and_context_checks() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    with pytest.raises(ValueError, match="ports_to_ssl_ports"):
        S.ports_to_ssl_ports(a, b, mode="listen")
    with pytest.raises(TypeError, match="ports_to_ssl_ports"):
        S.ports_to_ssl_ports(a, b, mode="accept", context=S.ssl_make_client_context())
    with pytest.raises(TypeError, match="ports_to_ssl_ports"):
        S.ports_to_ssl_ports(a, b, mode="connect", context=S.ssl_make_server_context())
    with pytest.raises(ValueError):
        S.ports_to_ssl_ports(a, b, mode="connect", encrypt="tls99")
    with pytest.raises(TypeError):
        S.ports_to_ssl_ports(a, b, "connect")  # type: ignore[misc]


def test_default_mode_is_accept() -> None:
    a, b = socket.socketpair()
    fut = run_thread(
        lambda: S.ports_to_ssl_ports(
            b.makefile("rb"), b.makefile("wb"), context=server_ctx(), close_original=True
        )
    )
    ci, co = S.ports_to_ssl_ports(
        a.makefile("rb"), a.makefile("wb"), mode="connect", close_original=True
    )
    si, so = fut.result(JOIN)
    co.write(b"m")
    co.flush()
    assert si.read(1) == b"m"
    for p in (co, ci, so, si):
        p.close()
    a.close()
    b.close()


def test_accept_mode_alpn_raises_value_error() -> None:
    with pytest.raises(ValueError, match="ssl_set_server_alpn"):
        S.ports_to_ssl_ports(
            io.BytesIO(), io.BytesIO(), mode="accept", context=server_ctx(), alpn=[b"h2"]
        )


def test_connect_mode_alpn_and_server_alpn() -> None:
    sctx = server_ctx()
    S.ssl_set_server_alpn(sctx, [b"h2", b"http/1.1"])
    ci, co, si, so, _ = wrapped_pair(
        server_kw={"context": sctx}, client_kw={"alpn": [b"http/1.1", b"h2"]}
    )
    assert S.ssl_get_alpn_selected(ci) == b"h2"  # server preference
    assert S.ssl_get_alpn_selected(si) == b"h2"
    for p in (co, ci, so, si):
        p.close()


def test_server_alpn_no_overlap() -> None:
    sctx = server_ctx()
    S.ssl_set_server_alpn(sctx, [b"h2"])
    ci, co, si, so, _ = wrapped_pair(server_kw={"context": sctx}, client_kw={"alpn": [b"spdy/1"]})
    assert S.ssl_get_alpn_selected(ci) is None
    for p in (co, ci, so, si):
        p.close()
    sctx = server_ctx()
    S.ssl_set_server_alpn(sctx, [b"h2"], False)
    with pytest.raises(S.SSLError):
        wrapped_pair(server_kw={"context": sctx}, client_kw={"alpn": [b"spdy/1"]})


def test_close_original() -> None:
    ci, co, si, so, orig = wrapped_pair("pipe", client_kw={"close_original": True})
    ca, cb, sa, sb = orig
    ci.close()
    assert not ca.closed and not cb.closed
    co.close()
    assert ca.closed and cb.closed
    so.close()
    si.close()
    assert not sa.closed and not sb.closed
    sa.close()
    with contextlib.suppress(BrokenPipeError):  # (the server's tickets, into a closed pipe)
        sb.close()


def test_close_original_keyword_only() -> None:
    with pytest.raises(TypeError):
        S.ports_to_ssl_ports(io.BytesIO(), io.BytesIO(), "connect", None, "auto", True)  # type: ignore[misc]


def test_shutdown_on_close_sends_close_notify_and_strict_eof() -> None:
    ci, co, si, so, _ = wrapped_pair(
        server_kw={"shutdown_on_close": True}, client_kw={"strict_eof": True}
    )
    so.write(b"last")
    so.close()
    assert ci.read() == b"last"  # close_notify: clean EOF even with strict_eof
    co.close()
    ci.close()
    si.close()


def test_strict_eof_raises_without_close_notify() -> None:
    ci, co, si, so, orig = wrapped_pair(client_kw={"strict_eof": True})
    so.write(b"x")
    so.flush()
    assert ci.read(1) == b"x"
    so.close()
    si.close()
    orig[2].close()
    orig[3].close()  # transport EOF, no close_notify
    with pytest.raises(S.SSLError, match="unexpected eof"):
        ci.read()
    co.close()
    ci.close()


def test_transport_eof_without_close_notify_is_eof_by_default() -> None:
    ci, co, si, so, orig = wrapped_pair()
    so.close()
    si.close()
    orig[2].close()
    orig[3].close()
    assert ci.read() == b""
    assert ci.read(10) == b""
    co.close()
    ci.close()


def test_shutdown_on_close_after_peer_close_notify_and_dead_transport() -> None:
    ci, co, si, so, orig = wrapped_pair(
        server_kw={"shutdown_on_close": True}, client_kw={"shutdown_on_close": True}
    )
    so.close()
    assert ci.read() == b""
    co.close()  # peer's close_notify already arrived: no error
    ci.close()
    si.close()
    # dead transport at close time
    ci, co, si, so, orig = wrapped_pair(client_kw={"shutdown_on_close": True})
    so.close()
    si.close()
    orig[2].close()
    orig[3].close()
    time.sleep(0.05)
    co.close()  # the transport can no longer be written: not an error
    ci.close()


def test_without_shutdown_on_close_no_close_notify() -> None:
    ci, co, si, so, orig = wrapped_pair(server_kw={"strict_eof": True})
    so.write(b"t")
    so.flush()
    assert ci.read(1) == b"t"  # (the client has also read the session tickets: a clean close)
    co.close()
    ci.close()
    orig[0].close()
    orig[1].close()
    with pytest.raises(S.SSLError, match="unexpected eof"):
        si.read()
    so.close()
    si.close()


class _MyError(Exception):
    pass


def test_error_class_during_handshake() -> None:
    junk = io.BytesIO(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
    with pytest.raises(_MyError):
        S.ports_to_ssl_ports(junk, io.BytesIO(), mode="connect", error=_MyError)

    def raiser(msg: str) -> None:
        raise LookupError("custom: " + msg)

    junk = io.BytesIO(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
    with pytest.raises(LookupError, match=r"^custom: "):
        S.ports_to_ssl_ports(junk, io.BytesIO(), mode="connect", error=raiser)
    junk = io.BytesIO(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
    with pytest.raises(S.SSLError):
        S.ports_to_ssl_ports(junk, io.BytesIO(), mode="connect")


class _Tamper:
    """Reads from an inner file; once armed, returns a forged TLS record."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.armed = False

    def read(self, n: int = -1) -> bytes:
        if self.armed:
            self.armed = False
            return b"\x17\x03\x03\x00\x30" + b"\x01" * 0x30
        return self.inner.read1(n if n and n > 0 else 65536)

    def close(self) -> None:
        self.inner.close()


def test_error_class_after_handshake() -> None:
    a, b = socket.socketpair()
    files = [a.makefile("rb"), a.makefile("wb"), b.makefile("rb"), b.makefile("wb")]
    _ORIGINALS.extend(files)  # close_original=False: ours to close
    tamper = _Tamper(files[0])
    fut = run_thread(lambda: S.ports_to_ssl_ports(files[2], files[3], context=server_ctx()))
    ci, co = S.ports_to_ssl_ports(tamper, files[1], mode="connect", error=_MyError)
    si, so = fut.result(JOIN)
    so.write(b"ok")
    so.flush()
    assert ci.read(2) == b"ok"
    tamper.armed = True
    with pytest.raises(_MyError):
        ci.read(10)
    for p in (co, ci, so, si):
        with contextlib.suppress(Exception):
            p.close()
    for f in files:
        f.close()
    a.close()
    b.close()


def test_hostname_required_when_verifying_hostname(pki: PKI) -> None:
    cctx = trusting_client(pki)
    with pytest.raises(S.SSLError, match="hostname not provided for verification"):
        wrapped_pair(
            server_kw={"context": server_ctx(pki.leaf_cert, pki.leaf_keyf)},
            client_kw={"context": cctx, "timeout": 10},
        )
    # accept mode
    sctx = server_ctx(pki.leaf_cert, pki.leaf_keyf)
    S.ssl_set_verify_hostname(sctx, True)
    a, b = socket.socketpair()
    a_files = a.makefile("rb"), a.makefile("wb")
    b_files = b.makefile("rb"), b.makefile("wb")
    _ORIGINALS.extend((*a_files, *b_files))  # close_original=False: ours to close
    fut = run_thread(lambda: S.ports_to_ssl_ports(*a_files, mode="connect", timeout=10))
    with pytest.raises(S.SSLError, match="hostname not provided for verification"):
        S.ports_to_ssl_ports(*b_files, context=sctx, timeout=10)
    for f in b_files:  # the client then sees EOF
        f.close()
    b.close()
    with contextlib.suppress(Exception):
        fut.result(JOIN)
    for f in a_files:  # the writer may hold a ClientHello it cannot flush any more
        with contextlib.suppress(OSError):
            f.close()
    a.close()


def test_hostname_verification_through_wrapper(pki: PKI) -> None:
    sk = {"context": server_ctx(pki.leaf_cert, pki.leaf_keyf)}
    ci, co, si, so, _ = wrapped_pair(
        server_kw=sk, client_kw={"context": trusting_client(pki), "hostname": "www.example.com"}
    )
    assert S.ssl_peer_verified(ci)
    for p in (co, ci, so, si):
        p.close()
    with pytest.raises(S.SSLError) as ei:
        wrapped_pair(
            server_kw={"context": server_ctx(pki.leaf_cert, pki.leaf_keyf)},
            client_kw={"context": trusting_client(pki), "hostname": "nope.example"},
        )
    assert ei.value.verify_message.startswith("hostname mismatch")


def test_partial_wildcard_never_matches(pki: PKI) -> None:
    with pytest.raises(S.SSLError):
        wrapped_pair(
            server_kw={"context": server_ctx(*pki.partial)},
            client_kw={"context": trusting_client(pki), "hostname": "foo.example.com"},
        )
    ci, co, si, so, _ = wrapped_pair(
        server_kw={"context": server_ctx(*pki.wild)},
        client_kw={"context": trusting_client(pki), "hostname": "foo.example.com"},
    )
    assert S.ssl_peer_verified(ci)
    assert not S.ssl_peer_check_hostname(ci, "a.b.example.com")
    for p in (co, ci, so, si):
        p.close()
    ci, co, si, so, _ = wrapped_pair(server_kw={"context": server_ctx(*pki.partial)})
    assert not S.ssl_peer_check_hostname(ci, "foo.example.com")
    assert not S.ssl_peer_check_hostname(ci, "f.example.com")
    for p in (co, ci, so, si):
        p.close()


def test_wrapper_sni() -> None:
    pctx, seen = _sni_recorder()
    with PyServer(pctx, count=2) as srv:
        for host in ("sni.example", "127.0.0.1"):
            s = socket.create_connection(("127.0.0.1", srv.port))
            ci, co = S.ports_to_ssl_ports(
                s.makefile("rb"),
                s.makefile("wb"),
                mode="connect",
                hostname=host,
                close_original=True,
            )
            s.close()
            co.write(b"q")
            co.flush()
            assert ci.read(1) == b"q"
            co.close()
            ci.close()
    assert seen == ["sni.example", None]


def test_wrapped_ports_have_no_tcp_addresses() -> None:
    ci, co, si, so, _ = wrapped_pair()
    with pytest.raises(S.SSLError, match="not connected to TCP port"):
        S.ssl_addresses(ci)
    with pytest.raises(S.SSLError, match="not connected to TCP port"):
        S.ssl_addresses(so, True)
    for p in (co, ci, so, si):
        p.close()


def test_wrapper_handshake_timeout_socket_stream() -> None:
    a, b = socket.socketpair()
    a.settimeout(0.5)  # the stream's own timeout, as docs/guide/timeouts.md advises
    # the makefile() streams are closed before the sockets (close_original=False)
    with a, b, a.makefile("rb") as fin, a.makefile("wb") as fout, pytest.raises(TimeoutError):
        S.ports_to_ssl_ports(fin, fout, mode="connect", timeout=0.3)


def test_wrapper_handshake_timeout() -> None:
    r, w = os.pipe()
    r2, w2 = os.pipe()
    fin = open(r, "rb", buffering=0)  # noqa: SIM115
    fout = open(w2, "wb", buffering=0)  # noqa: SIM115
    try:
        with pytest.raises(TimeoutError):
            S.ports_to_ssl_ports(fin, fout, mode="connect", timeout=0.5)
    finally:
        for f in (fin, fout):
            f.close()
        os.close(w)
        os.close(r2)


# --------------------------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------------------------


@pytest.fixture
def conn() -> Iterator[tuple[Any, Any, Any, Any]]:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    S.ssl_load_certificate_chain(lst, S.TEST_PEM)
    S.ssl_load_private_key(lst, S.TEST_PEM)
    port = S.ssl_addresses(lst, True)[1]
    fut = run_thread(lambda: S.ssl_accept(lst))
    ci, co = S.ssl_connect("localhost", port)
    si, so = fut.result(JOIN)
    S.ssl_close(lst)
    yield ci, co, si, so
    for p in (co, ci, so, si):
        with contextlib.suppress(Exception):
            p.close()


def test_port_classes(conn: Any) -> None:
    ci, co, si, so = conn
    for p in (ci, si):
        assert isinstance(p, io.BufferedIOBase) and isinstance(p, S.SSLInputPort)
    for p in (co, so):
        assert isinstance(p, io.BufferedIOBase) and isinstance(p, S.SSLOutputPort)
    assert ci.readable()
    assert co.writable()


def test_input_methods(conn: Any) -> None:
    ci, _co, si, so = conn
    so.write(b"line one\nline two\n")
    so.writelines([b"abc", b"def", b"\n"])
    so.write(b"0123456789")
    so.flush()
    assert ci.readline() == b"line one\n"
    assert next(iter(ci)) == b"line two\n"
    assert ci.read(3) == b"abc"
    assert ci.read1(3) == b"def"
    buf = bytearray(1)
    assert ci.readinto(buf) == 1 and buf == b"\n"
    buf = memoryview(bytearray(4))
    n = ci.readinto1(buf)
    assert 1 <= n <= 4 and bytes(buf[:n]) == b"0123"[:n]
    rest = ci.read(10 - n)
    assert (b"0123"[:n] + rest) == b"0123456789"
    so.write(b"a\nb\nc")
    so.close()
    si.close()
    assert list(ci) == [b"a\n", b"b\n", b"c"]
    assert ci.read() == b""
    assert ci.read(5) == b""
    assert ci.read1(5) == b""


def test_read_all_until_eof(conn: Any) -> None:
    ci, _co, si, so = conn
    data = os.urandom(300_000)

    def send() -> None:
        so.write(data)
        so.close()
        si.close()

    t = run_thread(send)
    assert ci.read() == data
    t.result(JOIN)


def test_write_returns_count_and_close_flushes(conn: Any) -> None:
    _ci, co, si, _so = conn
    assert co.write(b"") == 0
    assert co.write(b"12345") == 5
    assert co.write(bytearray(b"678")) == 3
    assert co.write(memoryview(b"90")) == 2
    co.close()  # sends pending data
    assert co.closed
    assert si.read(10) == b"1234567890"
    with pytest.raises(ValueError):
        co.write(b"x")


def test_port_context_managers(conn: Any) -> None:
    ci, co, si, _so = conn
    with co:
        co.write(b"cm")
    assert co.closed
    assert si.read(2) == b"cm"
    with ci:
        pass
    assert ci.closed
    with pytest.raises(ValueError):
        ci.read(1)
    # readable() / writable() of a closed port: ValueError, as io's files and sockets say
    with pytest.raises(ValueError, match="closed"):
        ci.readable()
    with pytest.raises(ValueError, match="closed"):
        co.writable()
    assert not ci.writable() and not co.readable()  # (io's defaults, closed or not)
    # ... and so do seekable() and writelines() with nothing to write, as io's files do
    with pytest.raises(ValueError, match="closed"):
        ci.seekable()
    with pytest.raises(ValueError, match="closed"):
        co.seekable()
    with pytest.raises(ValueError, match="closed"):
        co.writelines([])


def test_contexts_and_listeners_are_neither_copied_nor_pickled() -> None:
    """They own an SSL_CTX or a listening socket: a copied listener closed by ssl_close left
    the original open in name (is_ssl_listener, a second ssl_close) over a closed socket."""
    listener = S.ssl_listen(0, 5, False, "127.0.0.1")
    try:
        for obj in (S.ssl_make_client_context(), S.ssl_make_server_context(), listener):
            for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
                with pytest.raises(TypeError, match=type(obj).__name__):
                    attempt(obj)
    finally:
        S.ssl_close(listener)


def _stream_conn() -> tuple[Any, Any, Any, Any]:
    """Both ends of ports_to_ssl_ports over a socketpair's unbuffered files."""
    a, b = socket.socketpair()
    ctx = S.ssl_make_server_context("auto")
    S.ssl_load_certificate_chain(ctx, S.TEST_PEM)
    S.ssl_load_private_key(ctx, S.TEST_PEM)

    def ends(sock: socket.socket, mode: str, context: Any) -> tuple[Any, Any]:
        files = [sock.makefile(m, buffering=0) for m in ("rb", "wb")]
        sock.close()  # (the files keep the connection; closing both ports closes them)
        return S.ports_to_ssl_ports(*files, mode=mode, context=context, close_original=True)

    fut = run_thread(lambda: ends(b, "accept", ctx))
    ci, co = ends(a, "connect", None)
    si, so = fut.result(JOIN)
    return ci, co, si, so


@pytest.mark.parametrize("kind", ["socket", "streams"])
def test_ports_are_neither_copied_nor_pickled(conn: Any, kind: str) -> None:
    """A port is one end of a live connection: copy.copy made a second port of it, whose close
    counted as one of the connection's two (the real other port then accepted writes into a
    closed connection, and its close raised IndexError). Refused as io's files refuse."""
    ci, co, si, so = conn if kind == "socket" else _stream_conn()
    for port in (ci, co):
        name = type(port).__name__
        for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match=name):
                attempt(port)
    # The two ports still count as two: the output port outlives the input port's close.
    ci.close()
    co.write(b"still open\n")
    co.flush()
    assert si.readline() == b"still open\n"
    co.close()  # the last: the connection ends (no close_notify, as shutdown_on_close=False)
    if kind == "socket":
        assert si.read() == b""
    else:  # (the client's socket closed with the server's tickets unread: a reset on Linux)
        try:
            assert si.read() == b""
        except S.SSLError as exc:
            assert "reset" in str(exc)
    so.close()
    si.close()


def test_ports_stay_open_until_both_closed(conn: Any) -> None:
    ci, co, si, so = conn
    ci.close()
    co.write(b"still")
    co.flush()
    assert si.read(5) == b"still"
    so.close()
    si.close()


def test_output_survives_closing_input_and_vice_versa(conn: Any) -> None:
    ci, co, _si, so = conn
    co.close()
    so.write(b"still here")
    so.flush()
    assert ci.read(10) == b"still here"


def test_full_duplex_two_threads(conn: Any) -> None:
    ci, co, si, so = conn
    up = os.urandom(2_000_000)
    down = os.urandom(2_000_000)

    def srv_read() -> bytes:
        return si.read(len(up))

    def srv_write() -> None:
        for k in range(0, len(down), 50_000):
            so.write(down[k : k + 50_000])
        so.flush()

    def cli_write() -> None:
        for k in range(0, len(up), 70_000):
            co.write(up[k : k + 70_000])
        co.flush()

    f1 = run_thread(srv_read)
    f2 = run_thread(srv_write)
    f3 = run_thread(cli_write)
    got = ci.read(len(down))
    assert got == down
    assert f1.result(JOIN) == up
    f2.result(JOIN)
    f3.result(JOIN)


def test_two_threads_on_one_port_never_crash(conn: Any) -> None:
    ci, _co, si, so = conn
    data = os.urandom(500_000)
    results: list[Any] = [b"", b""]
    errors: list[BaseException] = []

    def reader(k: int) -> None:
        try:
            while True:
                d = ci.read1(4096)
                if not d:
                    return
                results[k] += d
        except Exception as e:
            errors.append(e)

    ts = [threading.Thread(target=reader, args=(k,), daemon=True) for k in (0, 1)]
    for t in ts:
        t.start()
    so.write(data)
    so.close()
    si.close()
    for t in ts:
        t.join(JOIN)
        assert not t.is_alive()
    if not errors:
        assert len(results[0]) + len(results[1]) == len(data)


def test_read_timeout_is_retryable(conn: Any) -> None:
    ci, co, si, so = conn
    ci.settimeout(0.3)
    assert ci.gettimeout() == 0.3
    with pytest.raises(TimeoutError):
        ci.read(4)
    so.write(b"late")
    so.flush()
    ci.settimeout(10)
    assert ci.read(4) == b"late"
    ci.settimeout(None)
    assert ci.gettimeout() is None
    # still usable both ways
    co.write(b"back")
    co.flush()
    assert si.read(4) == b"back"


def test_write_timeout(conn: Any) -> None:
    _ci, co, si, so = conn
    co.settimeout(0.3)
    chunk = b"z" * 65536
    with pytest.raises(TimeoutError):
        for _ in range(2000):  # 128 MiB at most; the peer never reads
            co.write(chunk)
            co.flush()
    so.close()
    si.close()


def test_tcp_nodelay(conn: Any) -> None:
    ci, _co, si, _so = conn
    lh, lp, ph, pp = S.ssl_addresses(ci, True)
    assert tcp_nodelay_of((lh, lp), (ph, pp))
    lh, lp, ph, pp = S.ssl_addresses(si, True)
    assert tcp_nodelay_of((lh, lp), (ph, pp))


def test_reset_after_handshake_raises_network_error() -> None:
    def handler(s: ssl.SSLSocket) -> None:
        s.sendall(b"hi")
        assert s.recv(1) == b"k"  # the client has read "hi"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    with PyServer(py_server_ctx(), handler) as srv:
        i, o = S.ssl_connect("localhost", srv.port)
        assert i.read(2) == b"hi"
        o.write(b"k")
        o.flush()
        srv.join()
        assert not srv.errors, srv.errors
        time.sleep(0.1)
        with pytest.raises(S.SSLNetworkError):
            i.read(1)
            for _ in range(100):
                o.write(b"x" * 1000)
                o.flush()
        with contextlib.suppress(Exception):
            o.close()
        i.close()


# --------------------------------------------------------------------------------------------
# context procedures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["str", "bytes", "pathlike"])
def test_load_verify_source_path_forms(pki: PKI, form: str) -> None:
    p: Any = {"str": str(pki.ca_pem), "bytes": os.fsencode(pki.ca_pem), "pathlike": pki.ca_pem}[
        form
    ]
    ctx = S.ssl_make_client_context()
    S.ssl_load_verify_source(ctx, p)
    S.ssl_set_verify(ctx, True)
    i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), ctx)
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def _hash_name(pem: pathlib.Path) -> str:
    assert OPENSSL
    return subprocess.run(
        [OPENSSL, "x509", "-hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_directory_source_is_lazy(pki: PKI, tmp_path: pathlib.Path) -> None:
    if not OPENSSL:
        pytest.skip("no openssl CLI")
    d = tmp_path / "hashed"
    d.mkdir()
    ctx = S.ssl_make_client_context()
    S.ssl_load_verify_source(ctx, ("directory", d))
    S.ssl_set_verify(ctx, True)
    shutil.copy(pki.ca_pem, d / (_hash_name(pki.ca_pem) + ".0"))  # after loading
    i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), ctx)
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def test_directory_source_str_path(pki: PKI, tmp_path: pathlib.Path) -> None:
    if not OPENSSL:
        pytest.skip("no openssl CLI")
    shutil.copy(pki.ca_pem, tmp_path / (_hash_name(pki.ca_pem) + ".0"))
    ctx = S.ssl_make_client_context()
    S.ssl_load_verify_source(ctx, ("directory", str(tmp_path)))
    S.ssl_set_verify(ctx, True)
    i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), ctx)
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def test_unsupported_sources_on_linux() -> None:
    ctx = S.ssl_make_client_context()
    with pytest.raises(S.SSLUnsupportedError):
        S.ssl_load_verify_source(ctx, ("win32-store", "ROOT"))
    with pytest.raises(S.SSLUnsupportedError):
        S.ssl_load_verify_source(ctx, ("macosx-keychain", "/System/x.keychain"))


def test_load_verify_source_failures(tmp_path: pathlib.Path) -> None:
    ctx = S.ssl_make_client_context()
    missing = tmp_path / "missing.pem"
    with pytest.raises(S.SSLError) as ei:
        S.ssl_load_verify_source(ctx, missing)
    assert not isinstance(ei.value, S.SSLUnsupportedError)
    assert str(ei.value).startswith("ssl_load_verify_source:")
    S.ssl_load_verify_source(ctx, missing, try_=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(S.SSLError):
        S.ssl_load_verify_source(ctx, garbage)
    S.ssl_load_verify_source(ctx, garbage, try_=True)
    with pytest.raises(TypeError):
        S.ssl_load_verify_source(ctx, missing, True)  # type: ignore[misc]
    with pytest.raises((TypeError, ValueError)):
        S.ssl_load_verify_source(ctx, ("nonsense", "x"))
    with pytest.raises(TypeError):
        S.ssl_load_verify_source(ctx, 42)


def test_default_verify_sources_from_env(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "roots.pem"
    f.write_bytes(b"")
    d1 = tmp_path / "d1"
    d2 = tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    out = run_py(
        """
        import json, sslports
        print(json.dumps([x if isinstance(x, str) else ["T:" + type(x).__name__, *x]
                          for x in sslports.ssl_default_verify_sources()]))
    """,
        env={"SSL_CERT_FILE": str(f), "SSL_CERT_DIR": f"{d1}:{d2}"},
    )
    got = json.loads(out)
    assert got == [str(f), ["T:tuple", "directory", str(d1)], ["T:tuple", "directory", str(d2)]]


def test_default_verify_sources_system_default() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["PYTHONPATH"] = SRC
    # (OpenSSL's defaults: of the OpenSSL sslports runs on, which is not Python's ssl's when
    # a wheel carries its own: its OPENSSLDIR is /etc/ssl, Debian's /usr/lib/ssl)
    code = """
        import ctypes, json, sslports
        from sslports.libcrypto import libcrypto
        default = {}
        for name in ("X509_get_default_cert_file", "X509_get_default_cert_dir"):
            f = getattr(libcrypto, name)
            f.restype = ctypes.c_char_p
            default[name] = f().decode()
        print(json.dumps([[x if isinstance(x, str) else list(x)
                           for x in sslports.ssl_default_verify_sources()],
                          default["X509_get_default_cert_file"],
                          default["X509_get_default_cert_dir"]]))
    """
    r = subprocess.run(
        [PY, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    srcs, cafile, capath = json.loads(r.stdout)
    assert srcs == [cafile, ["directory", capath]]


def test_default_verify_sources_computed_lazily(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "late.pem"
    f.write_bytes(b"")
    out = run_py(
        f"""
        import os, sslports
        os.environ["SSL_CERT_FILE"] = {str(f)!r}
        os.environ["SSL_CERT_DIR"] = {str(tmp_path)!r}
        print(sslports.ssl_default_verify_sources()[0])
    """,
        env={"SSL_CERT_FILE": "/nonexistent/early.pem", "SSL_CERT_DIR": "/nonexistent"},
    )
    assert out.strip() == str(f)


def test_default_verify_sources_contextvar_semantics(pki: PKI) -> None:
    base = S.ssl_default_verify_sources()
    assert isinstance(base, list)
    assert all(isinstance(x, (str, tuple)) for x in base)

    seen_in_thread: list[Any] = []

    def in_thread() -> None:
        S.ssl_default_verify_sources([str(pki.ca_pem)])
        seen_in_thread.append(S.ssl_default_verify_sources())

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(JOIN)
    assert list(seen_in_thread[0]) == [str(pki.ca_pem)]
    assert S.ssl_default_verify_sources() == base

    async def task() -> Any:
        S.ssl_default_verify_sources((str(pki.other_ca_pem),))
        await asyncio.sleep(0)
        return S.ssl_default_verify_sources()

    async def main() -> Any:
        r = await asyncio.gather(asyncio.create_task(task()))
        return r[0], S.ssl_default_verify_sources()

    inner, outer_in_loop = asyncio.run(main())
    assert list(inner) == [str(pki.other_ca_pem)]
    assert outer_in_loop == base
    assert S.ssl_default_verify_sources() == base

    def in_copy() -> Any:
        assert S.ssl_default_verify_sources([("directory", str(pki.d)), str(pki.ca_pem)]) is None
        return S.ssl_default_verify_sources()

    v = contextvars.copy_context().run(in_copy)
    assert list(v) == [("directory", str(pki.d)), str(pki.ca_pem)]
    assert S.ssl_default_verify_sources() == base


def test_default_verify_sources_rejects_bad_values() -> None:
    def body() -> None:
        with pytest.raises(TypeError):
            S.ssl_default_verify_sources(42)

    contextvars.copy_context().run(body)


def test_load_default_verify_sources_ignores_failures(pki: PKI, tmp_path: pathlib.Path) -> None:
    def body() -> None:
        S.ssl_default_verify_sources(
            [str(tmp_path / "nope.pem"), ("directory", str(tmp_path / "nodir")), str(pki.ca_pem)]
        )
        ctx = S.ssl_make_client_context()
        S.ssl_load_default_verify_sources(ctx)
        S.ssl_set_verify(ctx, True)
        i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), ctx)
        with srv:
            assert S.ssl_peer_verified(i)
            o.close()
            i.close()

    contextvars.copy_context().run(body)


def test_load_verify_root_certificates(pki: PKI) -> None:
    ctx = S.ssl_make_client_context()
    S.ssl_load_verify_root_certificates(ctx, pki.ca_pem)
    S.ssl_set_verify(ctx, True)
    i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), ctx)
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def test_listener_context_procedures_client_auth(pki: PKI) -> None:
    lst = S.ssl_listen(0, 5, False, "127.0.0.1")
    try:
        S.ssl_load_certificate_chain(lst, pki.leaf_cert)
        S.ssl_load_private_key(lst, pki.leaf_keyf)
        S.ssl_load_verify_root_certificates(lst, pki.ca_pem)
        S.ssl_load_suggested_certificate_authorities(lst, pki.ca_pem)
        S.ssl_set_verify(lst, True)
        port = S.ssl_addresses(lst, True)[1]
        cctx = S.ssl_make_client_context(
            "auto", private_key=("pem", pki.client[1]), certificate_chain=pki.client[0]
        )
        fut = run_thread(lambda: S.ssl_connect("localhost", port, cctx))
        si, so = S.ssl_accept(lst)
        ci, co = fut.result(JOIN)
        assert S.ssl_peer_verified(si)
        for p in (si, so, ci, co):
            p.close()
        # without a client certificate the server refuses
        fut = run_thread(lambda: S.ssl_connect("localhost", port))
        with pytest.raises(S.SSLNetworkError):
            S.ssl_accept(lst)
        with contextlib.suppress(Exception):
            ci, co = fut.result(JOIN)
            ci.read(1)
    finally:
        S.ssl_close(lst)


def test_set_ciphers_tls12(pki: PKI) -> None:
    sctx = server_ctx()
    S.ssl_set_ciphers(sctx, "ECDHE-RSA-AES128-GCM-SHA256")
    cctx = S.ssl_make_client_context("tls12")
    S.ssl_set_ciphers(cctx, "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384")
    i, o, srv = pair(sctx, cctx)
    with srv:
        assert S.ssl_cipher_name(i) == "ECDHE-RSA-AES128-GCM-SHA256"
        o.close()
        i.close()
    with pytest.raises(S.SSLError):
        S.ssl_set_ciphers(cctx, "NOT-A-CIPHER")
    with pytest.raises(TypeError):
        S.ssl_set_ciphers(cctx, b"DEFAULT")  # type: ignore[arg-type]


def test_set_ciphersuites_tls13() -> None:
    cctx = S.ssl_make_client_context("tls13")
    S.ssl_set_ciphersuites(cctx, "TLS_CHACHA20_POLY1305_SHA256")
    i, o, srv = pair("auto", cctx)
    with srv:
        assert S.ssl_cipher_name(i) == "TLS_CHACHA20_POLY1305_SHA256"
        assert S.ssl_protocol_version(i) == "tls13"
        o.close()
        i.close()


def test_sealed_context_refuses_all_changes(pki: PKI) -> None:
    c = S.ssl_make_client_context()
    s = server_ctx()
    S.ssl_seal_context(c)
    S.ssl_seal_context(s)
    calls: list[Callable[[], Any]] = [
        lambda: S.ssl_set_verify(c, True),
        lambda: S.ssl_try_verify(c, True),
        lambda: S.ssl_set_verify_hostname(c, True),
        lambda: S.ssl_load_verify_source(c, pki.ca_pem),
        lambda: S.ssl_load_verify_root_certificates(c, pki.ca_pem),
        lambda: S.ssl_load_default_verify_sources(c),
        lambda: S.ssl_set_ciphers(c, "DEFAULT"),
        lambda: S.ssl_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256"),
        lambda: S.ssl_load_certificate_chain(c, pki.client[0]),
        lambda: S.ssl_load_private_key(c, pki.client[1]),
        lambda: S.ssl_load_certificate_chain(s, S.TEST_PEM),
        lambda: S.ssl_load_private_key(s, S.TEST_PEM),
        lambda: S.ssl_load_suggested_certificate_authorities(s, pki.ca_pem),
        lambda: S.ssl_server_context_enable_dhe(s),
        lambda: S.ssl_server_context_enable_ecdh(s, "secp384r1"),
        lambda: S.ssl_set_server_name_identification_callback(s, lambda h: None),
        lambda: S.ssl_set_server_alpn(s, [b"h2"]),
        lambda: S.ssl_set_verify(s, True),
    ]
    for k, call in enumerate(calls):
        with pytest.raises(S.SSLError, match="context is sealed"):
            call()
        assert k >= 0
    # a sealed server context still serves
    i, o, srv = pair(s, c)
    with srv:
        o.close()
        i.close()


def test_certificate_chain_sent_leaf_first(pki: PKI) -> None:
    sctx = server_ctx(pki.chain_cert, pki.chain_key)
    i, o, srv = pair(sctx, trusting_client(pki))
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()


def test_private_key_rsa_flag(pki: PKI) -> None:
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    S.ssl_load_private_key(ctx, pki.mixed_keys)  # rsa=True: skips the EC key
    i, o, srv = pair(ctx, trusting_client(pki))
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.ec[0])
    S.ssl_load_private_key(ctx, pki.mixed_keys, False)  # first key of any type: EC
    i, o, srv = pair(ctx, "auto")
    with srv:
        assert S.ssl_peer_check_hostname(i, "ec.localhost")
        o.close()
        i.close()
    ctx = S.ssl_make_server_context()
    with pytest.raises(S.SSLError):
        S.ssl_load_private_key(ctx, pki.ec[1], True)  # no RSA key at all
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.ec[0])
    S.ssl_load_private_key(ctx, pki.ec[1], False)
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    with pytest.raises(S.SSLError):
        S.ssl_load_private_key(ctx, pki.mixed_keys, False)  # EC key, RSA cert: mismatch


def test_private_key_asn1_data_password_and_mismatch(pki: PKI) -> None:
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    S.ssl_load_private_key(ctx, pki.leaf_key_der, True, True)
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    S.ssl_load_private_key(ctx, ("data", pki.leaf_keyf.read_bytes()))
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    S.ssl_load_private_key(ctx, pki.leaf_key_enc, password=b"s3cret")
    i, o, srv = pair(ctx, trusting_client(pki))
    with srv:
        assert S.ssl_peer_verified(i)
        o.close()
        i.close()
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    with pytest.raises(S.SSLError):
        S.ssl_load_private_key(ctx, pki.leaf_key_enc, password=b"wrong")
    ctx = S.ssl_make_server_context()
    S.ssl_load_certificate_chain(ctx, pki.leaf_cert)
    with pytest.raises(S.SSLError):
        S.ssl_load_private_key(ctx, pki.other[1])  # does not match the certificate


def test_encrypted_key_without_password_never_prompts(pki: PKI) -> None:
    out = run_py(
        f"""
        import sslports
        ctx = sslports.ssl_make_server_context()
        try:
            sslports.ssl_load_private_key(ctx, {str(pki.leaf_key_enc)!r})
            print("loaded")
        except sslports.SSLError as e:
            print("SSLError", e)
    """,
        timeout=30,
    )
    assert out.startswith("SSLError")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\n!!\n", b"\x30\x82\xff\xff" + b"\x00" * 50],
)
def test_malformed_pem_inputs_raise(tmp_path: pathlib.Path, content: bytes) -> None:
    f = tmp_path / "bad.pem"
    f.write_bytes(content)
    ctx = S.ssl_make_server_context()
    with pytest.raises(S.SSLError):
        S.ssl_load_certificate_chain(ctx, f)
    with pytest.raises(S.SSLError):
        S.ssl_load_private_key(ctx, f)
    with pytest.raises(S.SSLError):
        S.ssl_load_private_key(ctx, f, False, True)
    with pytest.raises(S.SSLError):
        S.ssl_load_verify_root_certificates(ctx, f)


def test_suggested_certificate_authorities_are_sent(pki: PKI) -> None:
    if not OPENSSL:
        pytest.skip("no openssl CLI")
    sctx = server_ctx(pki.leaf_cert, pki.leaf_keyf)
    S.ssl_load_verify_source(sctx, pki.ca_pem)
    S.ssl_load_suggested_certificate_authorities(sctx, pki.ca_pem)
    S.ssl_try_verify(sctx, True)

    def handler(i: Any, o: Any) -> None:
        o.write(b"done\n")
        o.flush()
        i.read()

    with SPServer(sctx, handler) as srv:
        r = subprocess.run(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-tls1_2"],
            input=b"",
            capture_output=True,
            timeout=30,
        )
        srv.join()
    text = r.stdout.decode(errors="replace")
    m = re.search(r"Acceptable client certificate CA names\n(.*?)\n", text)
    assert m, text
    assert "Blind Test CA" in m.group(1)


@pytest.mark.filterwarnings("ignore:Diffie-Hellman")
def test_dh_params() -> None:
    b = S.ssl_dh4096_param_bytes
    assert isinstance(b, bytes)
    assert b.lstrip().startswith(b"-----BEGIN DH PARAMETERS-----")
    params = serialization.load_pem_parameters(b)
    assert params.parameter_numbers().p.bit_length() == 4096


@pytest.mark.parametrize("form", ["default", "bytes", "path"])
def test_enable_dhe(form: str, tmp_path: pathlib.Path) -> None:
    spec = "DHE-RSA-AES128-GCM-SHA256"
    cctx = S.ssl_make_client_context("tls12")
    S.ssl_set_ciphers(cctx, spec)
    sctx = server_ctx(proto="tls12")
    S.ssl_set_ciphers(sctx, spec)
    # off until enabled
    srv = SPServer(sctx)
    with srv, pytest.raises(S.SSLNetworkError):
        S.ssl_connect("localhost", srv.port, cctx)
    sctx = server_ctx(proto="tls12")
    S.ssl_set_ciphers(sctx, spec)
    if form == "default":
        S.ssl_server_context_enable_dhe(sctx)
    elif form == "bytes":
        S.ssl_server_context_enable_dhe(sctx, S.ssl_dh4096_param_bytes)
    else:
        p = tmp_path / "dh.pem"
        p.write_bytes(S.ssl_dh4096_param_bytes)
        S.ssl_server_context_enable_dhe(sctx, str(p))
    i, o, srv = pair(sctx, cctx)
    with srv:
        assert S.ssl_cipher_name(i) == spec
        o.close()
        i.close()


def test_enable_ecdh_preferred_group() -> None:
    if not OPENSSL:
        pytest.skip("no openssl CLI")
    sctx = server_ctx()
    S.ssl_server_context_enable_ecdh(sctx, "secp384r1")

    def handler(i: Any, o: Any) -> None:
        o.write(b"hi\n")
        o.flush()
        i.read()

    with SPServer(sctx, handler) as srv:
        r = subprocess.run(
            [OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-tls1_2"],
            input=b"",
            capture_output=True,
            timeout=30,
        )
        srv.join()
    text = r.stdout.decode(errors="replace")
    assert re.search(r"Server Temp Key: ECDH, (secp384r1|P-384)", text), text


SEED_CURVES = [
    "sect163k1",
    "sect163r1",
    "sect163r2",
    "sect193r1",
    "sect193r2",
    "sect233k1",
    "sect233r1",
    "sect239k1",
    "sect283k1",
    "sect283r1",
    "sect409k1",
    "sect409r1",
    "sect571k1",
    "sect571r1",
    "secp160k1",
    "secp160r1",
    "secp160r2",
    "secp192k1",
    "secp224k1",
    "secp224r1",
    "secp256k1",
    "secp384r1",
    "secp521r1",
    "prime192v",
    "prime256v",
    "prime192v1",
    "prime256v1",
]


def test_enable_ecdh_curve_names() -> None:
    for name in SEED_CURVES:
        sctx = S.ssl_make_server_context()
        try:
            S.ssl_server_context_enable_ecdh(sctx, name)
        except S.SSLUnsupportedError:
            pass
    for name in ("secp521r1", "prime256v", "prime256v1", "secp384r1"):
        S.ssl_server_context_enable_ecdh(S.ssl_make_server_context(), name)
    S.ssl_server_context_enable_ecdh(S.ssl_make_server_context())
    with pytest.raises(ValueError):
        S.ssl_server_context_enable_ecdh(S.ssl_make_server_context(), "nosuchcurve")


def test_enable_ecdh_then_handshake() -> None:
    sctx = server_ctx()
    S.ssl_server_context_enable_ecdh(sctx, "prime256v")
    i, o, srv = pair(sctx, "tls12")
    with srv:
        assert S.ssl_cipher_name(i).startswith("ECDHE")
        o.close()
        i.close()


# --------------------------------------------------------------------------------------------
# SNI callback
# --------------------------------------------------------------------------------------------


def test_sni_callback_switches_context(pki: PKI) -> None:
    a = server_ctx(pki.leaf_cert, pki.leaf_keyf)
    b = server_ctx(*pki.other)
    S.ssl_set_server_alpn(a, [b"a-proto"])
    S.ssl_set_server_alpn(b, [b"b-proto"])
    calls: list[Any] = []

    def cb(host: Any) -> Any:
        calls.append(host)
        return b if host == "other.example" else None

    S.ssl_set_server_name_identification_callback(a, cb)
    srv = SPServer(a, count=3)
    with srv:
        # switch
        s = socket.create_connection(("127.0.0.1", srv.port))
        ci, co = S.ports_to_ssl_ports(
            s.makefile("rb"),
            s.makefile("wb"),
            mode="connect",
            context=trusting_client(pki),
            hostname="other.example",
            alpn=[b"a-proto", b"b-proto"],
            close_original=True,
        )
        s.close()
        assert S.ssl_peer_verified(ci)
        assert S.ssl_get_alpn_selected(ci) == b"b-proto"
        co.close()
        ci.close()
        # None keeps the original
        i, o = S.ssl_connect(
            "localhost", srv.port, trusting_client(pki), alpn=[b"a-proto", b"b-proto"]
        )
        assert S.ssl_get_alpn_selected(i) == b"a-proto"
        o.close()
        i.close()
        # no SNI: not called
        n = len(calls)
        i, o = S.ssl_connect("127.0.0.1", srv.port, trusting_client(pki))
        o.close()
        i.close()
        srv.join()
    assert calls[:2] == ["other.example", "localhost"]
    assert all(isinstance(c, str) for c in calls)
    assert len(calls) == n == 2


def test_sni_callback_switch_applies_verify_settings(pki: PKI) -> None:
    a = server_ctx()
    b = server_ctx(pki.leaf_cert, pki.leaf_keyf)
    S.ssl_load_verify_source(b, pki.ca_pem)
    S.ssl_set_verify(b, True)
    S.ssl_set_server_name_identification_callback(a, lambda h: b if h == "localhost" else None)
    srv = SPServer(a, _verified_handler, count=2)
    with srv:
        cctx = S.ssl_make_client_context(
            "auto", private_key=("pem", pki.client[1]), certificate_chain=pki.client[0]
        )
        i, o = S.ssl_connect("localhost", srv.port, cctx)
        o.close()
        i.close()
        with contextlib.suppress(S.SSLError):
            i, o = S.ssl_connect("localhost", srv.port)  # no client certificate
            i.read(1)
        srv.join()
    assert srv.results and srv.results[0][0] is True
    assert len(srv.errors) == 1 and isinstance(srv.errors[0], S.SSLNetworkError)


class _CallbackBoom(Exception):
    pass


def test_sni_callback_exception_reraised_server_keeps_running() -> None:
    def cb(host: str) -> Any:
        if host == "boom.example":
            raise _CallbackBoom("boom")
        return None

    sctx = server_ctx()
    S.ssl_set_server_name_identification_callback(sctx, cb)
    lst = S.ssl_listen(0, 5, False, "127.0.0.1", sctx)
    try:
        port = S.ssl_addresses(lst, True)[1]

        def client(host: str) -> Any:
            s = socket.create_connection(("127.0.0.1", port))
            files = s.makefile("rb"), s.makefile("wb")
            try:
                return S.ports_to_ssl_ports(
                    *files, mode="connect", hostname=host, close_original=True, timeout=10
                )
            except BaseException:
                for f in files:  # (a failed call leaves the streams to the caller)
                    f.close()
                raise
            finally:
                s.close()

        fut = run_thread(lambda: client("boom.example"))
        with pytest.raises(_CallbackBoom):
            S.ssl_accept(lst)
        with pytest.raises(S.SSLError):
            fut.result(JOIN)
        fut = run_thread(lambda: client("fine.example"))
        si, so = S.ssl_accept(lst)
        ci, co = fut.result(JOIN)
        for p in (si, so, ci, co):
            p.close()
    finally:
        S.ssl_close(lst)


def test_sni_callback_bad_result_does_not_crash() -> None:
    sctx = server_ctx()
    S.ssl_set_server_name_identification_callback(sctx, lambda h: 42)
    lst = S.ssl_listen(0, 5, False, "127.0.0.1", sctx)
    try:
        port = S.ssl_addresses(lst, True)[1]
        fut = run_thread(lambda: S.ssl_connect("localhost", port, timeout=10))
        with pytest.raises(Exception):  # noqa: B017 - any clean exception, no crash
            S.ssl_accept(lst)
        with pytest.raises(S.SSLNetworkError):
            fut.result(JOIN)
    finally:
        S.ssl_close(lst)


# --------------------------------------------------------------------------------------------
# peer verification and connection facts
# --------------------------------------------------------------------------------------------


def test_try_verify_on_server_context(pki: PKI) -> None:
    cases = [("none", None), ("bad", pki.bad_client), ("good", pki.client)]
    for name, cred in cases:
        sctx = _client_cert_server(pki, try_=True)
        cctx = (
            S.ssl_make_client_context(
                "auto", private_key=("pem", cred[1]), certificate_chain=cred[0]
            )
            if cred
            else "auto"
        )
        srv = SPServer(sctx, _verified_echo_handler)
        with srv:
            i, o = S.ssl_connect("localhost", srv.port, cctx)
            o.write(b"x")
            o.flush()
            assert i.read(1) == b"x"
            o.close()
            i.close()
            srv.join()
        assert not srv.errors, (name, srv.errors)
        verified, subject, _, names = srv.results[0]
        assert verified is (name == "good"), name
        if name == "good":
            assert subject == b"/CN=client"
        else:
            assert subject is None
        if name == "none":
            assert names == []


def test_set_verify_on_server_context_rejects_missing_and_untrusted(pki: PKI) -> None:
    for cred in (None, pki.bad_client):
        sctx = _client_cert_server(pki)
        cctx = (
            S.ssl_make_client_context(
                "auto", private_key=("pem", cred[1]), certificate_chain=cred[0]
            )
            if cred
            else "auto"
        )
        srv = SPServer(sctx, _verified_handler)
        with srv:
            with contextlib.suppress(S.SSLError):
                i, _o = S.ssl_connect("localhost", srv.port, cctx)
                i.read(1)
            srv.join()
        assert len(srv.errors) == 1 and isinstance(srv.errors[0], S.SSLNetworkError)


@pytest.mark.parametrize("proto", ["tls12", "tls13"])
@pytest.mark.parametrize("fn", ["ssl_set_verify", "ssl_try_verify"])
def test_verify_on_port_after_handshake(pki: PKI, proto: str, fn: str) -> None:
    sctx = server_ctx(pki.leaf_cert, pki.leaf_keyf, proto=proto)
    S.ssl_load_verify_source(sctx, pki.ca_pem)
    box: dict[str, Any] = {}

    def handler(i: Any, o: Any) -> None:
        box["before"] = S.ssl_peer_verified(i)
        getattr(S, fn)(i, True)
        box["after"] = S.ssl_peer_verified(i)
        box["subject"] = S.ssl_peer_subject_name(o)
        o.write(b"done")
        o.flush()
        i.read()

    cctx = S.ssl_make_client_context(
        proto, private_key=("pem", pki.client[1]), certificate_chain=pki.client[0]
    )
    srv = SPServer(sctx, handler)
    with srv:
        i, o = S.ssl_connect("localhost", srv.port, cctx, timeout=20)
        assert i.read(4) == b"done"
        o.close()
        i.close()
        srv.join()
    assert not srv.errors, srv.errors
    assert box == {"before": False, "after": True, "subject": b"/CN=client"}


@pytest.mark.parametrize("proto", ["tls12", "tls13"])
def test_set_verify_on_port_failure(pki: PKI, proto: str) -> None:
    sctx = server_ctx(pki.leaf_cert, pki.leaf_keyf, proto=proto)
    S.ssl_load_verify_source(sctx, pki.ca_pem)
    box: dict[str, Any] = {}

    def handler(i: Any, o: Any) -> None:
        try:
            S.ssl_set_verify(i, True)
        except S.SSLError as e:
            box["err"] = e

    srv = SPServer(sctx, handler)
    with srv:
        i, o = S.ssl_connect("localhost", srv.port, proto, timeout=20)
        with contextlib.suppress(S.SSLError, TimeoutError):
            i.read(1)
        o.close()
        i.close()
        srv.join()
    assert "err" in box, srv.errors
    msg = str(box["err"])
    assert msg.startswith("ssl_set_verify:") and "failed" in msg


@pytest.mark.parametrize("proto", ["tls12", "tls13"])
def test_try_verify_on_port_untrusted_keeps_connection(pki: PKI, proto: str) -> None:
    sctx = server_ctx(pki.leaf_cert, pki.leaf_keyf, proto=proto)
    S.ssl_load_verify_source(sctx, pki.ca_pem)
    box: dict[str, Any] = {}

    def handler(i: Any, o: Any) -> None:
        S.ssl_try_verify(i, True)
        box["v"] = S.ssl_peer_verified(i)
        o.write(b"ok")
        o.flush()
        box["echo"] = i.read(3)

    cctx = S.ssl_make_client_context(
        proto, private_key=("pem", pki.bad_client[1]), certificate_chain=pki.bad_client[0]
    )
    srv = SPServer(sctx, handler)
    with srv:
        i, o = S.ssl_connect("localhost", srv.port, cctx, timeout=20)
        assert i.read(2) == b"ok"
        o.write(b"yes")
        o.flush()
        srv.join()
        o.close()
        i.close()
    assert not srv.errors, srv.errors
    assert box == {"v": False, "echo": b"yes"}


def test_verify_hostname_without_chain_verification(pki: PKI) -> None:
    ctx = S.ssl_make_client_context()
    S.ssl_set_verify_hostname(ctx, True)
    with PyServer(py_server_ctx(*pki.selfsigned)) as srv:  # untrusted, right name
        i, o = S.ssl_connect("localhost", srv.port, ctx)
        assert S.ssl_peer_verified(i) is False
        o.close()
        i.close()
    with PyServer(py_server_ctx(*pki.other)) as srv:  # wrong name  # noqa: SIM117
        with pytest.raises(S.SSLNetworkError):
            S.ssl_connect("localhost", srv.port, ctx)


def test_peer_hostnames_and_checks(pki: PKI) -> None:
    i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), "auto")
    with srv:
        names = S.ssl_peer_certificate_hostnames(i)
        assert isinstance(names, list) and all(isinstance(n, str) for n in names)
        assert names[:2] == ["localhost", "www.example.com"]
        assert "127.0.0.1" in names
        assert S.ssl_peer_check_hostname(i, "localhost") is True
        assert S.ssl_peer_check_hostname(o, "WWW.EXAMPLE.COM") is True
        assert S.ssl_peer_check_hostname(i, "example.com") is False
        assert S.ssl_peer_check_hostname(i, "127.0.0.1") is True
        assert S.ssl_peer_check_hostname(i, "127.0.0.2") is False
        # not verified: no subject/issuer
        assert S.ssl_peer_subject_name(i) is None
        assert S.ssl_peer_issuer_name(i) is None
        o.close()
        i.close()
    i, o, srv = pair(server_ctx(*pki.cnonly), "auto")
    with srv:
        assert S.ssl_peer_certificate_hostnames(i) == ["last.example"]
        assert S.ssl_peer_check_hostname(i, "last.example")
        o.close()
        i.close()


def test_peer_facts_without_certificate() -> None:
    box: dict[str, Any] = {}

    def handler(i: Any, o: Any) -> None:
        box["names"] = S.ssl_peer_certificate_hostnames(i)
        box["check"] = S.ssl_peer_check_hostname(i, "localhost")
        box["verified"] = S.ssl_peer_verified(i)
        box["subject"] = S.ssl_peer_subject_name(i)
        box["issuer"] = S.ssl_peer_issuer_name(i)

    i, o, srv = pair(handler=handler)
    with srv:
        srv.join()
        o.close()
        i.close()
    assert not srv.errors, srv.errors
    assert box == {"names": [], "check": False, "verified": False, "subject": None, "issuer": None}


def test_subject_and_issuer_names(pki: PKI) -> None:
    i, o, srv = pair(server_ctx(pki.leaf_cert, pki.leaf_keyf), trusting_client(pki))
    with srv:
        assert S.ssl_peer_verified(o) is True
        assert S.ssl_peer_subject_name(i) == b"/C=US/O=Example/CN=localhost"
        assert S.ssl_peer_issuer_name(o) == b"/O=Blind Test/CN=Blind Test CA"
        o.close()
        i.close()


def test_channel_binding_tls12(pki: PKI) -> None:
    box: dict[str, Any] = {}

    def handler(i: Any, o: Any) -> None:
        box["u"] = S.ssl_channel_binding(i, "tls-unique")
        box["e"] = S.ssl_channel_binding(o, "tls-server-end-point")
        box["x"] = S.ssl_channel_binding(i, "tls-exporter")
        box["d"] = S.ssl_default_channel_binding(i)
        box["k"] = S.ssl_export_keying_material(i, b"EXPERIMENTAL-test", 48, b"ctx")
        o.write(b"k")
        o.flush()
        i.read()

    i, o, srv = pair(
        server_ctx(pki.leaf_cert, pki.leaf_keyf, proto="tls12"), "tls12", handler=handler
    )
    with srv:
        assert i.read(1) == b"k"
        u = S.ssl_channel_binding(i, "tls-unique")
        e = S.ssl_channel_binding(o, "tls-server-end-point")
        x = S.ssl_channel_binding(i, "tls-exporter")
        d = S.ssl_default_channel_binding(o)
        k = S.ssl_export_keying_material(o, b"EXPERIMENTAL-test", 48, b"ctx")
        o.close()
        i.close()
        srv.join()
    assert not srv.errors, srv.errors
    assert isinstance(u, bytes) and len(u) == 12 and u == box["u"]
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    assert e == box["e"] == hashlib.sha256(der).digest()
    assert len(x) == 32 and x == box["x"]
    assert d == box["d"] == ("tls-unique", u)
    assert len(k) == 48 and k == box["k"]


def test_channel_binding_tls13(pki: PKI) -> None:
    box: dict[str, Any] = {}

    def handler(i: Any, o: Any) -> None:
        box["x"] = S.ssl_channel_binding(i, "tls-exporter")
        box["e"] = S.ssl_channel_binding(i, "tls-server-end-point")
        box["k"] = S.ssl_export_keying_material(o, b"EXPORTER-Channel-Binding", 32, b"")
        o.write(b"k")
        o.flush()
        i.read()

    i, o, srv = pair(server_ctx(*pki.sha384), "tls13", handler=handler)
    with srv:
        assert i.read(1) == b"k"
        with pytest.raises(S.SSLError):
            S.ssl_channel_binding(i, "tls-unique")
        x = S.ssl_channel_binding(o, "tls-exporter")
        e = S.ssl_channel_binding(i, "tls-server-end-point")
        d = S.ssl_default_channel_binding(i)
        o.close()
        i.close()
        srv.join()
    assert not srv.errors, srv.errors
    assert len(x) == 32 and x == box["x"] == box["k"]
    der = pki.certobj("sha384").public_bytes(serialization.Encoding.DER)
    assert e == box["e"] == hashlib.sha384(der).digest()
    assert d == ("tls-exporter", x)


def test_channel_binding_exporter_requires_ems() -> None:
    ctx = py_server_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= 0x1  # SSL_OP_NO_EXTENDED_MASTER_SECRET
    with PyServer(ctx) as srv:
        i, o = S.ssl_connect("localhost", srv.port, "tls12")
        with pytest.raises(S.SSLError):
            S.ssl_channel_binding(i, "tls-exporter")
        assert len(S.ssl_channel_binding(i, "tls-unique")) == 12
        o.close()
        i.close()


def test_channel_binding_bad_type_and_closed(conn: Any) -> None:
    ci, co, _si, _so = conn
    with pytest.raises(ValueError):
        S.ssl_channel_binding(ci, "tls-nonsense")
    co.close()
    ci.close()
    with pytest.raises((S.SSLError, ValueError)):
        S.ssl_channel_binding(ci, "tls-exporter")


def test_keylogger_callback() -> None:
    lines: list[bytes] = []
    cctx = S.ssl_make_client_context()
    S.ssl_set_keylogger(cctx, lines.append)
    i, o, srv = pair("auto", cctx)
    with srv:
        o.close()
        i.close()
    assert lines and all(isinstance(x, bytes) for x in lines)
    labels = {x.split(b" ")[0] for x in lines}
    assert {b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0"} <= labels
    lines.clear()
    S.ssl_set_keylogger(cctx, None)
    i, o, srv = pair("auto", cctx)
    with srv:
        o.close()
        i.close()
    assert lines == []


def test_sslkeylogfile_env(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "keys.log"
    log.write_text("# existing\n")
    run_py(
        """
        import threading, sslports as S
        lst = S.ssl_listen(0, 5, False, "127.0.0.1")
        S.ssl_load_certificate_chain(lst, S.TEST_PEM)
        S.ssl_load_private_key(lst, S.TEST_PEM)
        port = S.ssl_addresses(lst, True)[1]
        box = []
        t = threading.Thread(target=lambda: box.append(S.ssl_accept(lst)))
        t.start()
        i, o = S.ssl_connect("localhost", port)
        t.join(30)
        for p in (i, o, *box[0]):
            p.close()
        S.ssl_close(lst)
    """,
        env={"SSLKEYLOGFILE": str(log)},
    )
    text = log.read_text()
    assert text.startswith("# existing\n")
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in text


def test_ssl_wrap_socket_connect_starttls() -> None:
    def handler(raw: socket.socket) -> bytes:
        raw.sendall(b"220 ready\r\n")
        # exactly the line: the client's ClientHello may already be queued behind it
        assert raw.recv(len(b"STARTTLS\r\n"), socket.MSG_WAITALL) == b"STARTTLS\r\n"
        with py_server_ctx().wrap_socket(raw, server_side=True) as s:
            got = s.recv(100)
            s.sendall(got.upper())
            return s.recv(100)  # EOF after the client closes both ports

    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    fut = run_thread(lambda: handler(lsock.accept()[0]))
    sock = socket.create_connection(("127.0.0.1", port))
    assert sock.recv(100) == b"220 ready\r\n"
    sock.sendall(b"STARTTLS\r\n")
    i, o = S.ssl_wrap_socket(sock, hostname="localhost")
    assert S.is_ssl_port(i)
    _lh, _lp, ph, pp = S.ssl_addresses(i, True)
    assert (ph, pp) == ("127.0.0.1", port)
    o.write(b"hello")
    o.flush()
    assert i.read(5) == b"HELLO"
    o.close()
    i.close()
    assert fut.result(JOIN) == b""  # the socket was closed by the ports
    lsock.close()


def test_ssl_wrap_socket_accept_and_failure(pki: PKI) -> None:
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    fut = run_thread(lambda: S.ssl_connect("localhost", port, trusting_client(pki)))
    conn_, _ = lsock.accept()
    si, so = S.ssl_wrap_socket(
        conn_, mode="accept", context=server_ctx(pki.leaf_cert, pki.leaf_keyf)
    )
    ci, co = fut.result(JOIN)
    assert S.ssl_peer_verified(ci)
    for p in (si, so, ci, co):
        p.close()
    # failure: garbage from the peer
    fut = run_thread(lambda: socket.create_connection(("127.0.0.1", port)))
    conn_, _ = lsock.accept()
    peer = fut.result(JOIN)
    peer.sendall(b"not tls at all\r\n" * 10)
    with pytest.raises(S.SSLNetworkError):
        S.ssl_wrap_socket(conn_, mode="accept", context=server_ctx(), timeout=10)
    peer.close()
    lsock.close()


def test_session_resumption(pki: PKI) -> None:
    def handler(i: Any, o: Any) -> None:
        o.write(b"hi")
        o.flush()
        i.read()

    cctx = S.ssl_make_client_context()
    srv = SPServer("auto", handler, count=2)
    with srv:
        results = []
        for _ in range(2):
            i, o = S.ssl_connect("localhost", srv.port, cctx)
            assert i.read(2) == b"hi"
            results.append(S.ssl_session_reused(i))
            o.close()
            i.close()
    assert results == [False, True]


def test_protocol_version_and_cipher_name_types(conn: Any) -> None:
    ci, co, si, so = conn
    assert S.ssl_protocol_version(ci) == "tls13" == S.ssl_protocol_version(so)
    assert isinstance(S.ssl_cipher_name(si), str)
    assert S.ssl_cipher_name(si) == S.ssl_cipher_name(co)


# --------------------------------------------------------------------------------------------
# robustness: hostile peers never crash the process
# --------------------------------------------------------------------------------------------


def test_random_bytes_from_server_never_crash() -> None:
    for k in range(20):
        blob = os.urandom(50 + 37 * k)
        if k % 2:
            blob = b"\x16\x03\x03" + blob
        ci = io.BytesIO(blob)
        with pytest.raises(S.SSLError):
            S.ports_to_ssl_ports(ci, io.BytesIO(), mode="connect", timeout=5)


def test_garbage_to_verify_functions(conn: Any) -> None:
    ci, _co, _si, _so = conn
    with pytest.raises(TypeError):
        S.ssl_peer_check_hostname(ci, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        S.ssl_peer_verified(io.BytesIO())
    with pytest.raises(TypeError):
        S.ssl_addresses(io.BytesIO())
    with pytest.raises(TypeError):
        S.ssl_set_verify(42, True)


def test_strict_eof_on_ssl_connect() -> None:
    def handler(s: ssl.SSLSocket) -> None:
        s.sendall(b"x")  # then close without close_notify

    for strict in (False, True):
        with PyServer(py_server_ctx(), handler) as srv:
            i, o = S.ssl_connect("localhost", srv.port, strict_eof=strict)
            assert i.read(1) == b"x"
            srv.join()
            if strict:
                with pytest.raises(S.SSLError, match="unexpected eof"):
                    i.read(1)
            else:
                assert i.read(1) == b""
            o.close()
            i.close()


def test_transport_failure_on_wrapped_ports_is_ssl_error() -> None:
    a, b = socket.socketpair()
    fut = run_thread(
        lambda: S.ports_to_ssl_ports(
            b.makefile("rb"), b.makefile("wb"), context=server_ctx(), close_original=True
        )
    )
    a_files = a.makefile("rb"), a.makefile("wb")
    ci, co = S.ports_to_ssl_ports(*a_files, mode="connect")
    si, so = fut.result(JOIN)
    so.close()
    si.close()
    b.close()  # the peer's end of the transport is gone
    with pytest.raises(S.SSLError):
        for _ in range(200):
            co.write(b"x" * 10000)
            co.flush()
    with contextlib.suppress(Exception):
        co.close()
    ci.close()
    for f in a_files:
        with contextlib.suppress(Exception):
            f.close()
    a.close()


def test_export_keying_material_default_context(conn: Any) -> None:
    ci, _co, _si, so = conn
    k1 = S.ssl_export_keying_material(ci, b"EXPERIMENTAL-x", 20)
    k2 = S.ssl_export_keying_material(so, b"EXPERIMENTAL-x", 20)
    assert isinstance(k1, bytes) and len(k1) == 20 and k1 == k2
    assert S.ssl_export_keying_material(ci, b"EXPERIMENTAL-y", 20) != k1
