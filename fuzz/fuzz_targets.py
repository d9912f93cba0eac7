"""Fuzz targets shared by the atheris harness (fuzz/atheris_fuzz.py), the time-boxed hypothesis
runner (fuzz/run.py) and the short deterministic run in tests/test_fuzz.py.

Each target takes one ``bytes`` input and returns normally when sslports behaved as documented:
it either succeeded or raised the documented exception (`SSLError`, or `ValueError` for
``hex_string_to_bytes``). Any other exception propagates and is a finding; so is a crash of the
process or a case that does not finish (the callers bound each case in time).

Targets
    stream_accept / stream_connect
        ``ports_to_ssl_ports`` in "accept" / "connect" mode over an in-memory transport whose
        input returns the fuzz bytes (after the first, which picks the read size) and then EOF;
        writes are discarded. Must end with SSLError, or (never in practice) a handshake whose
        reads end with EOF or SSLError.
    private_key
        ``ssl_load_private_key(ctx, ("data", bytes), rsa, asn1)``; the first byte picks rsa,
        asn1 and whether a certificate is loaded first (so the key/certificate check runs).
    certificate_chain / verify_source
        ``ssl_load_certificate_chain`` / ``ssl_load_verify_source`` on a temporary file holding
        the fuzz bytes.
    dhe
        ``ssl_server_context_enable_dhe`` with PEM bytes (``-----BEGIN`` is always present, so
        the bytes are never taken for a path).
    hex
        ``sslports.sha1.hex_string_to_bytes`` on the input decoded as Latin-1 or UTF-8, checked
        against ``bytes.fromhex``.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from collections.abc import Iterable
from typing import Any, Callable

import sslports
from sslports import SSLError
from sslports.sha1 import hex_string_to_bytes

READ_SIZES = (1, 7, 100, 1000, 65536)
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


class Hang(AssertionError):
    """A fuzz case that did not finish within its time limit."""


# -- the in-memory transport --------------------------------------------------------------------


class FuzzInput:
    """A readable binary stream that returns `data` in reads of at most `step` bytes, then EOF."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = memoryview(data)
        self.step = step
        self.pos = 0
        self.closed = False

    def readinto1(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self.step, len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n

    def close(self) -> None:
        self.closed = True


class Sink:
    """A writable binary stream that discards everything."""

    written = 0

    def write(self, b: Any) -> int:
        n = len(memoryview(b))
        self.written += n
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- contexts, made once per process ------------------------------------------------------------

_lock = threading.Lock()
_cache: dict[str, Any] = {}


def _once(name: str, make: Callable[[], Any]) -> Any:
    with _lock:
        if name not in _cache:
            _cache[name] = make()
        return _cache[name]


def _server_context() -> sslports.SSLServerContext:
    def make() -> sslports.SSLServerContext:
        ctx = sslports.ssl_make_server_context("auto")
        sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
        sslports.ssl_load_private_key(ctx, sslports.TEST_PEM)
        sslports.ssl_server_context_enable_dhe(ctx)
        return ctx

    return _once("server", make)


def _client_context() -> sslports.SSLClientContext:
    def make() -> sslports.SSLClientContext:
        ctx = sslports.ssl_make_client_context("auto")
        sslports.ssl_load_verify_source(ctx, sslports.TEST_PEM)
        sslports.ssl_set_verify(ctx, True)
        return ctx

    return _once("client", make)


def _scratch_file() -> str:
    def make() -> str:
        fd, path = tempfile.mkstemp(prefix=f"sslports-fuzz-{os.getpid()}-")
        os.close(fd)
        return path

    return str(_once("file", make))


def cleanup() -> None:
    """Remove the scratch file (the contexts go with the process)."""
    path = _cache.pop("file", None)
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


# -- the targets ------------------------------------------------------------------------------


def _stream(mode: str, data: bytes) -> None:
    if not data:
        data = b"\x00"
    step = READ_SIZES[data[0] % len(READ_SIZES)]
    inp = FuzzInput(data[1:], step)
    ctx: Any = _server_context() if mode == "accept" else _client_context()
    try:
        ports = sslports.ports_to_ssl_ports(
            inp,
            Sink(),
            mode=mode,
            context=ctx,
            hostname=None if mode == "accept" else "localhost",
            timeout=5.0,
        )
    except SSLError:
        return
    # A handshake cannot really complete on fuzz bytes, but if it did: read to the end.
    sin, sout = ports
    try:
        while sin.read1(65536):
            pass
    except SSLError:
        pass
    finally:
        sslports.ssl_abandon_port(sout)
        sin.close()


def stream_accept(data: bytes) -> None:
    _stream("accept", data)


def stream_connect(data: bytes) -> None:
    _stream("connect", data)


def private_key(data: bytes) -> None:
    if not data:
        data = b"\x00"
    flags, body = data[0], data[1:]
    rsa, asn1, with_cert = bool(flags & 1), bool(flags & 2), bool(flags & 4)

    def make_plain() -> sslports.SSLServerContext:
        return sslports.ssl_make_server_context()

    def make_with_cert() -> sslports.SSLServerContext:
        ctx = sslports.ssl_make_server_context()
        sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
        return ctx

    ctx = _once("key+cert", make_with_cert) if with_cert else _once("key", make_plain)
    try:
        sslports.ssl_load_private_key(ctx, ("data", body), rsa, asn1)
    except SSLError:
        pass


def _with_file(data: bytes, load: Callable[[str], None]) -> None:
    path = _scratch_file()
    with open(path, "wb") as f:
        f.write(data)
    try:
        load(path)
    except SSLError:
        pass


def certificate_chain(data: bytes) -> None:
    ctx = _once("chain", sslports.ssl_make_server_context)
    _with_file(data, lambda path: sslports.ssl_load_certificate_chain(ctx, path))


def verify_source(data: bytes) -> None:
    ctx = sslports.ssl_make_client_context()  # fresh: a store only ever grows
    _with_file(data, lambda path: sslports.ssl_load_verify_source(ctx, path))


def dhe(data: bytes) -> None:
    if b"-----BEGIN" not in data:
        data = b"-----BEGIN DH PARAMETERS-----\n" + data
    ctx = _once("dhe", sslports.ssl_make_server_context)
    try:
        sslports.ssl_server_context_enable_dhe(ctx, data)
    except SSLError:
        pass


def hex_(data: bytes) -> None:
    for text in (data.decode("latin-1"), data.decode("utf-8", "replace")):
        valid = len(text) % 2 == 0 and all(c in _HEXDIGITS for c in text)
        try:
            got = hex_string_to_bytes(text)
        except ValueError:
            if valid:
                raise AssertionError(f"hex_string_to_bytes refused {text!r}") from None
            continue
        if not valid or got != bytes.fromhex(text):
            raise AssertionError(f"hex_string_to_bytes({text!r}) == {got!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "stream_accept": stream_accept,
    "stream_connect": stream_connect,
    "private_key": private_key,
    "certificate_chain": certificate_chain,
    "verify_source": verify_source,
    "dhe": dhe,
    "hex": hex_,
}


# -- running one case with a time limit -------------------------------------------------------


def run_bounded(target: Callable[[bytes], None], data: bytes, limit: float = 10.0) -> None:
    """Run target(data) in a worker thread; re-raise what it raised; Hang past `limit`."""
    box: dict[str, BaseException] = {}

    def work() -> None:
        try:
            target(data)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=work, name="sslports-fuzz-case", daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        name = getattr(target, "__name__", repr(target))
        raise Hang(f"{name} did not finish in {limit} s on {data!r:.200}")
    if "error" in box:
        raise box["error"]


# -- seeds --------------------------------------------------------------------------------------


def _handshake_bytes(version: ssl.TLSVersion) -> tuple[bytes, bytes]:
    """(ClientHello, the server's first flight) of a real in-memory handshake."""
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.maximum_version = version
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(sslports.TEST_PEM))
    sctx.maximum_version = version
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = sctx.wrap_bio(s_in, s_out, server_side=True)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = c_out.read()
    s_in.write(hello)
    try:
        server.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return hello, s_out.read()


def _key_seeds() -> list[bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    keys: list[Any] = [
        rsa.generate_private_key(65537, 1024),
        ec.generate_private_key(ec.SECP256R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ]
    out = []
    for key in keys:
        for enc, fmt in (
            (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8),
            (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8),
        ):
            blob = key.private_bytes(enc, fmt, serialization.NoEncryption())
            flags = 2 if enc is serialization.Encoding.DER else 0
            out.append(bytes([flags]) + blob)
            out.append(bytes([flags | 1]) + blob)
    out.append(b"\x05" + sslports.TEST_PEM.read_bytes())
    enc_key = keys[1].private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    out.append(b"\x00" + enc_key)  # encrypted, no password: must fail without a prompt
    return out


def seeds(name: str) -> list[bytes]:
    """A small starting corpus for target `name` (deterministic except for fresh keys)."""
    test_pem = sslports.TEST_PEM.read_bytes()
    cert_only = test_pem[test_pem.index(b"-----BEGIN CERTIFICATE-----") :]
    if name in ("stream_accept", "stream_connect"):
        flights = [_handshake_bytes(v) for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)]
        pick = 0 if name == "stream_accept" else 1
        out = [b"\x04" + f[pick] for f in flights] + [b"\x00" + f[pick] for f in flights]
        out.append(b"\x02\x16\x03\x01\x48\x01" + b"\x00" * 64)
        return out
    if name == "private_key":
        return _key_seeds()
    if name in ("certificate_chain", "verify_source"):
        return [cert_only, test_pem, cert_only * 3, b"-----BEGIN CERTIFICATE-----\n\n"]
    if name == "dhe":
        from sslports.context import ssl_dh4096_param_bytes

        return [ssl_dh4096_param_bytes, b"-----BEGIN DH PARAMETERS-----\nMAA=\n-----END DH"]
    if name == "hex":
        return [b"", b"00ff", b"DEADbeef", b"abc", b"0x12", "\u0661\u0662".encode()]
    raise KeyError(name)


def all_seeds() -> Iterable[tuple[str, bytes]]:
    for name in TARGETS:
        for s in seeds(name):
            yield name, s


def target_named(name: str) -> Callable[[bytes], None]:
    try:
        return TARGETS[name]
    except KeyError:
        raise SystemExit(f"unknown fuzz target {name!r}; one of: {', '.join(TARGETS)}") from None


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: flip, overwrite, insert, delete, truncate, repeat."""
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            buf.append(value & 0xFF)
            continue
        i = pos % len(buf)
        k = kind % 6
        if k == 0:
            buf[i] ^= 1 << (value % 8)
        elif k == 1:
            buf[i] = value & 0xFF
        elif k == 2:
            buf.insert(i, value & 0xFF)
        elif k == 3:
            del buf[i]
        elif k == 4:
            del buf[i:]
        else:
            buf[i:i] = buf[i : i + 1 + value % 16] * (1 + value % 4)
    return bytes(buf)


def strategy(name: str, max_size: int = 4096) -> Any:
    """A hypothesis strategy for target `name`: raw bytes, or a seed with a few edits."""
    from hypothesis import strategies as st

    edits = st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8
    )
    mutated = st.builds(mutate, st.sampled_from(seeds(name)), edits)
    return st.one_of(st.binary(max_size=max_size), mutated)
