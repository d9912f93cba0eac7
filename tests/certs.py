"""Certificates and small server helpers for the verification tests (issues 4 and 6).

Certificates are made with the ``cryptography`` package (SHA-1 signatures, which its bundled
OpenSSL refuses to make, with the system ``openssl`` tool). Keys are EC P-256 unless a test
needs another kind, so that generation and handshakes stay cheap. Everything is written to
one temporary directory per test session.

* `Issued` -- a certificate with its key; `make_cert` issues one; `chain_file`/`key_data`
  turn them into what ``ssl_load_certificate_chain`` / ``ssl_load_private_key`` take.
* `Server` -- an sslports listener on 127.0.0.1 (or ::1) whose accepts a test drives one at a
  time (``accept()`` returns a join function), so the server-side outcome of every
  connection is known exactly; `BackgroundServer` accepts forever and ignores failures.
* `wrap_client` -- a TCP connection to 127.0.0.1 wrapped with ``ssl_wrap_socket``, so any
  hostname can be verified without DNS.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import itertools
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import sslports

LOCAL = "127.0.0.1"
VERSIONS = ["tls12", "tls13"]
ORG = "sslports tests"
OPENSSL = shutil.which("openssl")

Key = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]

_DIR = tempfile.TemporaryDirectory(prefix="sslports-certs-")
atexit.register(_DIR.cleanup)  # explicitly: the finalizer would warn (ResourceWarning) at exit
WORKDIR = Path(_DIR.name)
_counter = itertools.count()
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def make_key(kind: str = "ec") -> Key:
    """``"ec"`` (P-256), ``"ec384"``, ``"rsa"`` (2048), ``"rsa1024"`` or ``"ed25519"``."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


@dataclass
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def subject_oneline(self) -> bytes:
        """The subject the way X509_NAME_oneline prints our names (O then CNs)."""
        return oneline(self.cert.subject)

    @property
    def issuer_oneline(self) -> bytes:
        return oneline(self.cert.issuer)


def oneline(name: x509.Name) -> bytes:
    short = {NameOID.ORGANIZATION_NAME: "O", NameOID.COMMON_NAME: "CN"}
    return "".join(f"/{short[a.oid]}={a.value}" for a in name).encode()


def make_name(cns: Union[str, Sequence[str], None]) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG)]
    if isinstance(cns, str):
        cns = [cns]
    for cn in cns or ():
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def make_cert(
    cns: Union[str, Sequence[str], None],
    *,
    issuer: Optional[Issued] = None,
    key: Union[Key, str] = "ec",
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    ca: bool = False,
    basic_constraints: bool = True,
    not_before: Optional[datetime.datetime] = None,
    not_after: Optional[datetime.datetime] = None,
    hash_alg: Optional[hashes.HashAlgorithm] = None,
    permitted_dns: Sequence[str] = (),
    eku: Optional[Sequence[x509.ObjectIdentifier]] = None,
    cert_sign: bool = True,
    other_sans: Sequence[x509.GeneralName] = (),
) -> Issued:
    """Issue a certificate (self-signed without `issuer`).

    `eku`: the extended key usages (default: none for a CA, serverAuth and clientAuth for a
    leaf). `cert_sign`: a CA's key usage includes keyCertSign. `other_sans`: subjectAltNames
    after the DNS and IP ones (URIs, otherNames)."""
    priv = make_key(key) if isinstance(key, str) else key
    signer = issuer.key if issuer is not None else priv
    subject = make_name(cns)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 365 * DAY)
    )
    if basic_constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku is None and not ca:
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += list(other_sans)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if permitted_dns:
        builder = builder.add_extension(
            x509.NameConstraints([x509.DNSName(d) for d in permitted_dns], None), critical=True
        )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(priv.public_key()), critical=False
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.key.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        algorithm = None
    else:
        algorithm = hash_alg or hashes.SHA256()
    return Issued(builder.sign(signer, algorithm), priv)  # type: ignore[arg-type]


def resign_sha1(leaf: Issued, issuer: Issued) -> Issued:
    """A copy of `leaf` (same key, names, extensions) signed by `issuer` with SHA-1.

    cryptography's bundled OpenSSL no longer signs with SHA-1; the system openssl does.
    """
    if OPENSSL is None:
        raise RuntimeError("the openssl command is needed to make a SHA-1 signed certificate")
    d = WORKDIR / f"sha1-{next(_counter)}"
    d.mkdir()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(leaf.cert.subject)
        .sign(leaf.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    (d / "leaf.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    (d / "ca.pem").write_bytes(issuer.pem)
    (d / "ca.key").write_bytes(issuer.key_pem)
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    alt = ",".join(
        f"DNS:{n.value}" if isinstance(n, x509.DNSName) else f"IP:{n.value}" for n in san
    )
    (d / "ext.cnf").write_text(
        f"[v3]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName={alt}\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    subprocess.run(
        [
            *(OPENSSL, "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-set_serial", "4242", "-days", "30", "-sha1", "-extfile", "ext.cnf"),
            *("-extensions", "v3", "-out", "leaf.pem"),
        ],
        cwd=d,
        check=True,
        capture_output=True,
    )
    cert = x509.load_pem_x509_certificate((d / "leaf.pem").read_bytes())
    return Issued(cert, leaf.key)


def chain_file(*certs: Issued) -> Path:
    """A PEM file holding `certs` in order (leaf first)."""
    path = WORKDIR / f"chain-{next(_counter)}.pem"
    path.write_bytes(b"".join(c.pem for c in certs))
    return path


def key_file(issued: Issued) -> Path:
    """A PEM file holding the private key of `issued`."""
    path = WORKDIR / f"key-{next(_counter)}.pem"
    path.write_bytes(issued.key_pem)
    return path


def subject_hash(cert_pem: Path) -> str:
    """The name of the certificate's file in a hashed directory, less its ".N" (c_rehash)."""
    return subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert_pem)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def key_data(issued: Issued) -> tuple[str, bytes]:
    """The ``("data", pem)`` argument of ssl_load_private_key."""
    return ("data", issued.key_pem)


# -- contexts -------------------------------------------------------------------------------------


def server_context(
    version: str,
    *chain: Issued,
    verify: Optional[str] = None,
    roots: Sequence[Path] = (),
    ciphers: Optional[str] = None,
) -> sslports.SSLServerContext:
    """A server context pinned to `version` serving `chain` (leaf first).

    `verify`: None, ``"set"`` (ssl_set_verify) or ``"try"`` (ssl_try_verify) for clients.
    """
    ctx = sslports.ssl_make_server_context(version)
    if ciphers is not None:
        sslports.ssl_set_ciphers(ctx, ciphers)
    sslports.ssl_load_certificate_chain(ctx, chain_file(*chain))
    sslports.ssl_load_private_key(ctx, key_data(chain[0]), False)
    for root in roots:
        sslports.ssl_load_verify_source(ctx, root)
    if verify == "set":
        sslports.ssl_set_verify(ctx, True)
    elif verify == "try":
        sslports.ssl_try_verify(ctx, True)
    return ctx


def client_context(
    version: str,
    *,
    roots: Sequence[Path] = (),
    verify: bool = True,
    hostname: bool = True,
    identity: Sequence[Issued] = (),
) -> sslports.SSLClientContext:
    """A client context pinned to `version` that trusts `roots` and presents `identity`."""
    kw: dict[str, Any] = {}
    if identity:
        kw["certificate_chain"] = chain_file(*identity)
        kw["private_key"] = ("pem-data", identity[0].key_pem)
    ctx = sslports.ssl_make_client_context(version, **kw)
    for root in roots:
        sslports.ssl_load_verify_source(ctx, root)
    if verify:
        sslports.ssl_set_verify(ctx, True)
    if hostname:
        sslports.ssl_set_verify_hostname(ctx, True)
    return ctx


# -- threads and servers --------------------------------------------------------------------------


def in_thread(fn: Callable[[], Any], default_timeout: float = 30.0) -> Callable[..., Any]:
    """Run fn in a daemon thread; the returned ``join(timeout=default_timeout)`` returns its
    result or re-raises its exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the joining thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def join(timeout: float = default_timeout) -> Any:
        t.join(timeout)
        if t.is_alive():
            raise AssertionError("thread did not finish (deadlock?)")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    return join


def outcome(join: Callable[..., Any], timeout: float = 30.0) -> Any:
    """What join() returned, or the exception it raised (as a value)."""
    try:
        return join(timeout)
    except Exception as exc:
        return exc


class Server:
    """An sslports listener; each ``accept(handler)`` call serves exactly one connection."""

    def __init__(
        self, context: Any, host: str = LOCAL, handshake_timeout: Optional[float] = 10.0
    ) -> None:
        self.host = host
        self.listener = sslports.ssl_listen(
            0, 32, True, host, context, handshake_timeout=handshake_timeout
        )
        self.port = int(sslports.ssl_addresses(self.listener, True)[1])

    def accept(self, handler: Optional[Callable[[Any, Any], Any]] = None) -> Callable[..., Any]:
        """Accept one connection in a thread; ``handler(inp, out)`` runs on it (the ports
        are closed afterwards). Without a handler the join returns the two ports."""

        def run() -> Any:
            inp, out = sslports.ssl_accept(self.listener)
            if handler is None:
                return inp, out
            with inp, out:
                return handler(inp, out)

        return in_thread(run)

    def close(self) -> None:
        self.listener.close()


class BackgroundServer:
    """Accepts and serves connections until closed; handshake failures are counted."""

    def __init__(self, context: Any, handler: Optional[Callable[[Any, Any], Any]] = None) -> None:
        self.listener = sslports.ssl_listen(0, 64, True, LOCAL, context, handshake_timeout=10.0)
        self.port = int(sslports.ssl_addresses(self.listener, True)[1])
        self.handler = handler or drain
        self.failures = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(0.05):
                    continue
                try:
                    inp, out = sslports.ssl_accept(self.listener)
                except sslports.SSLError:
                    self.failures += 1
                    continue
                threading.Thread(target=self._serve, args=(inp, out), daemon=True).start()

    def _serve(self, inp: Any, out: Any) -> None:
        try:
            with inp, out:
                self.handler(inp, out)
        except sslports.SSLError:
            pass
        except BaseException as exc:  # a bug in a handler: the test looks at .errors
            self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()


def drain(inp: Any, out: Any) -> None:
    """Read until EOF (the client closed)."""
    while inp.read1(65536):
        pass


def echo_line(inp: Any, out: Any) -> None:
    """Echo lines until EOF."""
    while True:
        line = inp.readline()
        if not line:
            return
        out.write(line)
        out.flush()


def tcp_connect(port: int, host: str = LOCAL) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def wrap_client(
    port: int,
    context: sslports.SSLClientContext,
    hostname: Optional[str],
    *,
    alpn: Sequence[bytes] = (),
    host: str = LOCAL,
) -> tuple[sslports.SSLInputPort, sslports.SSLOutputPort]:
    """Connect to host:port and run the client handshake with ``ssl_wrap_socket``."""
    sock = tcp_connect(port, host)
    try:
        return sslports.ssl_wrap_socket(
            sock, mode="connect", context=context, hostname=hostname, alpn=alpn, timeout=10
        )
    except BaseException:
        sock.close()
        raise


def close_all(*ports: Any) -> None:
    for p in ports:
        p.close()


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            s.listen(1)
            with socket.create_connection(("::1", s.getsockname()[1]), timeout=5):
                pass
    except OSError:
        return False
    return True
