"""Hostile peers over real loopback sockets (issue 6).

Every test plays a scripted, misbehaving peer against an sslports end and checks three things:
the documented exception (or EOF), that an sslports server keeps serving (a good, verified
connection works afterwards), and that no thread is left blocked (every helper thread is joined
with a timeout, and an autouse fixture checks that no thread started by the test survives it).

Peers that must speak real TLS and then misbehave use `RawTLSClient`: Python's ``ssl`` over
memory BIOs on a raw socket, with a key log, so the test knows the client's traffic keys and can
forge any record it likes (an encrypted alert, a bogus content type, a renegotiation
ClientHello, a KeyUpdate) with the ``cryptography`` package. Nothing here depends on timing
except the stall tests, which only bound how long a timeout may take.
"""

from __future__ import annotations

import array
import errno
import hashlib
import hmac
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from conftest import LOCAL, run_in_thread
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import sslports
from sslports import SSLError, SSLNetworkError

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

HANDSHAKE_TIMEOUT = 3.0  # the listener's; every failing handshake below must end well before
JOIN = 10.0  # the longest any helper thread may take


# -- no thread left behind --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not left, f"threads left running: {left}"


# -- an sslports server driven one accept at a time ---------------------------------------------


class Target:
    """An sslports listener on 127.0.0.1 whose accepts the test drives one at a time."""

    def __init__(self, pki: Any, context: sslports.SSLServerContext, timeout: float) -> None:
        self.pki = pki
        self.listener = sslports.ssl_listen(0, 16, True, LOCAL, context, handshake_timeout=timeout)
        self.port: int = sslports.ssl_addresses(self.listener, True)[1]

    def accept(self) -> Callable[[float], Any]:
        """Start one ssl_accept in a thread; the returned join gives its ports or raises."""
        return run_in_thread(lambda: sslports.ssl_accept(self.listener))

    def serve(self, handler: Callable[[Any, Any], Any]) -> Callable[[float], Any]:
        """Accept one connection and run handler(in, out) on it, closing both ports after."""

        def run() -> Any:
            inp, out = sslports.ssl_accept(self.listener)
            try:
                return handler(inp, out)
            finally:
                sslports.ssl_abandon_port(out)
                inp.close()

        return run_in_thread(run)

    def expect_handshake_failure(self, peer: Callable[[], Any]) -> SSLNetworkError:
        """Run `peer` (the hostile client) against one accept that must fail."""
        join = self.accept()
        started = time.monotonic()
        try:
            peer()
        finally:
            with pytest.raises(SSLNetworkError) as info:
                ports = join(JOIN)
                for p in ports:  # pragma: no cover - only when the test is about to fail
                    p.close()
        assert time.monotonic() - started < JOIN
        return info.value

    def assert_serving(self) -> None:
        """A verified client still gets a full round trip."""

        def echo(inp: Any, out: Any) -> bytes:
            line = inp.readline()
            out.write(line)
            out.flush()
            return bytes(line)

        join = self.serve(echo)
        ctx = self.pki.client_context()
        inp, out = sslports.ssl_connect(LOCAL, self.port, ctx, timeout=JOIN)
        try:
            out.write(b"still serving\n")
            out.flush()
            assert inp.readline() == b"still serving\n"
        finally:
            out.close()
            inp.close()
        assert join(JOIN) == b"still serving\n"

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def target(pki: Any) -> Iterator[Callable[..., Target]]:
    made: list[Target] = []

    def make(
        protocol: str = "auto",
        *,
        timeout: float = HANDSHAKE_TIMEOUT,
        context: Optional[sslports.SSLServerContext] = None,
    ) -> Target:
        ctx = context or pki.server_context(protocol)
        if context is None and protocol == "tls13":
            # the forger implements one suite; the server must pick it
            sslports.ssl_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")
        t = Target(pki, ctx, timeout)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def raw_connect(port: int) -> socket.socket:
    return socket.create_connection((LOCAL, port), timeout=JOIN)


# -- a TLS client whose records the test can forge ---------------------------------------------


def _hkdf_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label (RFC 8446 7.1), SHA-256, empty context."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def _prf(secret: bytes, label: bytes, seed: bytes, n: int) -> bytes:
    """The TLS 1.2 PRF with SHA-256 (RFC 5246 5)."""
    out = b""
    a = label + seed
    while len(out) < n:
        a = hmac.new(secret, a, hashlib.sha256).digest()
        out += hmac.new(secret, a + label + seed, hashlib.sha256).digest()
    return out[:n]


REC_CHANGE_CIPHER, REC_ALERT, REC_HANDSHAKE, REC_DATA = 20, 21, 22, 23


class RawTLSClient:
    """Python ``ssl`` over memory BIOs on a raw socket, plus a forger of the client's records.

    TLS 1.2 uses ECDHE-RSA-AES128-GCM-SHA256, TLS 1.3 TLS_AES_128_GCM_SHA256; the key log gives
    the secrets. After `handshake`, `record` encrypts whatever the test wants as the next
    client record. Python's own writes must not be mixed with forged records (the sequence
    numbers would disagree); the test forges everything it sends after the handshake.
    """

    def __init__(self, port: int, version: str) -> None:
        self.version = version
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        v = ssl.TLSVersion.TLSv1_2 if version == "tls12" else ssl.TLSVersion.TLSv1_3
        ctx.minimum_version = ctx.maximum_version = v
        if version == "tls12":
            ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        fd, self.keylog = tempfile.mkstemp(prefix="sslports-keylog-")
        os.close(fd)
        ctx.keylog_filename = self.keylog
        self.sock = raw_connect(port)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.received = bytearray()
        self.seq = 0
        self.secret = b""
        self.key = b""
        self.iv = b""

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("server closed during the handshake") from None
                self.received += data
                self.incoming.write(data)
        secrets: dict[str, bytes] = {}
        client_random = b""
        with open(self.keylog) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and not line.startswith("#"):
                    secrets[parts[0]] = bytes.fromhex(parts[2])
                    client_random = bytes.fromhex(parts[1])
        os.unlink(self.keylog)
        if self.version == "tls13":
            self._set_tls13_secret(secrets["CLIENT_TRAFFIC_SECRET_0"])
        else:
            # The server's first record is its ServerHello: type, version, length, then the
            # handshake header (4 bytes), legacy version (2) and the 32-byte random.
            assert self.received[0] == REC_HANDSHAKE and self.received[5] == 2
            server_random = bytes(self.received[11:43])
            block = _prf(
                secrets["CLIENT_RANDOM"], b"key expansion", server_random + client_random, 40
            )
            self.key, self.iv = block[0:16], block[32:36]
            self.seq = 1  # the client's Finished was record 0 under these keys

    def _set_tls13_secret(self, secret: bytes) -> None:
        self.secret = secret
        self.key = _hkdf_label(secret, b"key", 16)
        self.iv = _hkdf_label(secret, b"iv", 12)
        self.seq = 0

    def key_update(self, update_requested: bool) -> bytes:
        """A TLS 1.3 KeyUpdate record; later records use the next key."""
        rec = self.record(REC_HANDSHAKE, bytes([24, 0, 0, 1, int(update_requested)]))
        self._set_tls13_secret(_hkdf_label(self.secret, b"traffic upd", 32))
        return rec

    def record(self, content_type: int, payload: bytes, version: bytes = b"\x03\x03") -> bytes:
        """The next client record carrying `payload` as `content_type`, encrypted."""
        aead = AESGCM(self.key)
        if self.version == "tls13":
            nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big")))
            inner = payload + bytes([content_type])
            header = bytes([REC_DATA]) + version + struct.pack(">H", len(inner) + 16)
            rec = header + aead.encrypt(nonce, inner, header)
        else:
            explicit = self.seq.to_bytes(8, "big")
            aad = explicit + bytes([content_type]) + version + struct.pack(">H", len(payload))
            body = explicit + aead.encrypt(self.iv + explicit, payload, aad)
            rec = bytes([content_type]) + version + struct.pack(">H", len(body)) + body
        self.seq += 1
        return rec

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def client_hello(version: Optional[str] = None) -> bytes:
    """The bytes of a real ClientHello as Python's ssl would send it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version == "tls12":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:  # it waits for the ServerHello: the ClientHello is out
        pass
    hello = out.read()
    assert hello[0] == REC_HANDSHAKE
    return hello


def weak_client_hello(suites: list[int]) -> bytes:
    """A TLS 1.2 ClientHello offering only `suites` (no extensions: RSA key exchange)."""
    body = b"\x03\x03" + hashlib.sha256(b"random").digest() + b"\x00"
    body += struct.pack(">H", 2 * len(suites)) + b"".join(struct.pack(">H", s) for s in suites)
    body += b"\x01\x00"  # compression: null only
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    data = bytearray()
    sock.settimeout(JOIN)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def alert_of(server_bytes: bytes) -> Optional[tuple[int, int]]:
    """(level, description) of a plaintext alert record among the first records, if any."""
    i = 0
    while i + 5 <= len(server_bytes):
        kind = server_bytes[i]
        length = struct.unpack(">H", server_bytes[i + 3 : i + 5])[0]
        if kind == REC_ALERT and length == 2 and i + 7 <= len(server_bytes):
            return server_bytes[i + 5], server_bytes[i + 6]
        i += 5 + length
    return None


# -- 1. garbage and truncation before the handshake completes -------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_instead_of_client_hello(target: Callable[..., Target], seed: int) -> None:
    t = target()
    garbage = hashlib.shake_256(seed.to_bytes(4, "big")).digest(64 + 300 * seed)

    def peer() -> None:
        with raw_connect(t.port) as s:
            s.sendall(garbage)
            read_until_closed(s)

    exc = t.expect_handshake_failure(peer)
    assert exc.message.startswith("ssl_accept: accept failed (")
    t.assert_serving()


def test_empty_connection(target: Callable[..., Target]) -> None:
    t = target()

    def peer() -> None:
        raw_connect(t.port).close()

    exc = t.expect_handshake_failure(peer)
    assert "ssl_accept" in exc.message
    t.assert_serving()


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_client_hello(target: Callable[..., Target], fraction: float) -> None:
    """The peer sends part of a real ClientHello, then closes: fails at once (no timeout)."""
    t = target()
    hello = client_hello()
    started = time.monotonic()

    def peer() -> None:
        with raw_connect(t.port) as s:
            s.sendall(hello[: max(1, int(len(hello) * fraction))])

    t.expect_handshake_failure(peer)
    assert time.monotonic() - started < HANDSHAKE_TIMEOUT
    t.assert_serving()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_peer_closes_after_server_flight(target: Callable[..., Target], version: str) -> None:
    """A full ClientHello, the server's whole flight read, then the peer vanishes."""
    t = target()
    hello = client_hello(version)

    def peer() -> None:
        with raw_connect(t.port) as s:
            s.sendall(hello)
            s.recv(65536)

    t.expect_handshake_failure(peer)
    t.assert_serving()


MALFORMED_FIRST_RECORDS = {
    # a record header claiming 2^14 + 2048 + 1 bytes (more than any TLS record may hold)
    "oversized": b"\x16\x03\x01\x48\x01" + b"\x00" * 64,
    "oversized-max": b"\x16\x03\x01\xff\xff" + b"\x00" * 64,
    "bogus-content-type": b"\x63\x03\x01\x00\x05hello",
    "bad-version": b"\x16\x09\x09\x00\x05\x01\x00\x00\x01\x00",
    "sslv2-hello": b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + b"\x00" * 37,
    "empty-handshake-records": b"\x16\x03\x01\x00\x00" * 64,  # OpenSSL allows 32
    "alert-first": b"\x15\x03\x01\x00\x02\x02\x28",
    "change-cipher-spec-first": b"\x14\x03\x01\x00\x01\x01",
    "application-data-first": b"\x17\x03\x03\x00\x05hello",
    "hello-with-huge-length": b"\x16\x03\x01\x00\x08\x01\xff\xff\xff\x03\x03\x00\x00",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_FIRST_RECORDS))
def test_malformed_first_record(target: Callable[..., Target], name: str) -> None:
    t = target()
    data = MALFORMED_FIRST_RECORDS[name]
    answer: list[bytes] = []

    def peer() -> None:
        with raw_connect(t.port) as s:
            s.sendall(data)
            answer.append(read_until_closed(s))

    exc = t.expect_handshake_failure(peer)
    assert exc.message.startswith("ssl_accept: accept failed (")
    if name != "alert-first":  # a peer's alert is not answered
        alert = alert_of(answer[0])
        assert alert is None or alert[0] == 2, "any alert the server sends is fatal"
    t.assert_serving()


def with_server_name(hello: bytes, body: bytes) -> bytes:
    """`hello` (one ClientHello record) with its server_name extension's data replaced by
    `body`, every enclosing length fixed."""
    hs = hello[5:]
    at = 4 + 2 + 32
    at += 1 + hs[at]  # session id
    at += 2 + struct.unpack(">H", hs[at : at + 2])[0]  # cipher suites
    at += 1 + hs[at]  # compression methods
    exts, i, out = hs[at + 2 :], 0, b""
    while i < len(exts):
        kind, n = struct.unpack(">HH", exts[i : i + 4])
        data = body if kind == 0 else exts[i + 4 : i + 4 + n]
        out += struct.pack(">HH", kind, len(data)) + data
        i += 4 + n
    msg = hs[4:at] + struct.pack(">H", len(out)) + out
    msg = b"\x01" + len(msg).to_bytes(3, "big") + msg
    return hello[:3] + struct.pack(">H", len(msg)) + msg


def _names(*entries: tuple[int, bytes]) -> bytes:
    listed = b"".join(bytes([kind]) + struct.pack(">H", len(n)) + n for kind, n in entries)
    return struct.pack(">H", len(listed)) + listed


SERVER_NAME_BODIES = {  # the server_name extension's data (RFC 6066 3)
    "one-name": _names((0, b"localhost")),
    "upper-case": _names((0, b"LOCALHOST")),
    "longest-name": _names((0, b"a" * 255)),
    "name-too-long": _names((0, b"a" * 256)),
    "empty-name": _names((0, b"")),
    "nul-in-name": _names((0, b"local\x00host")),
    "other-type": _names((1, b"localhost")),
    "two-entries": _names((0, b"localhost"), (0, b"evil.test")),
    "list-length-short": b"\x00\x0b" + _names((0, b"localhost"))[2:],
    "list-length-long": b"\x00\x0d" + _names((0, b"localhost"))[2:],
    "name-length-short": b"\x00\x0c\x00\x00\x08localhost",
    "name-length-long": b"\x00\x0c\x00\x00\x0alocalhost",
    "empty-list": b"\x00\x00",
    "no-list": b"",
    "truncated": b"\x00\x0c\x00",
}


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("case", sorted(SERVER_NAME_BODIES))
def test_sni_callback_sees_the_name_openssl_accepts(
    target: Callable[..., Target], pki: Any, case: str, version: str
) -> None:
    """The SNI callback reads the ClientHello's server_name extension itself (csrc/sp_verify.c:
    it runs before OpenSSL parses it): whenever the server answers a hello with a name, the
    callback saw exactly that name; a malformed extension is refused (OpenSSL's alert) with no
    call, and the server keeps serving."""
    ctx = pki.server_context()
    seen: list[str] = []

    def callback(name: str) -> None:
        seen.append(name)

    sslports.ssl_set_server_name_identification_callback(ctx, callback)
    t = target(context=ctx)
    body = SERVER_NAME_BODIES[case]
    hello = with_server_name(client_hello(version), body)
    answer: list[bytes] = []

    def peer() -> None:
        with raw_connect(t.port) as s:
            s.sendall(hello)
            first = s.recv(65536)  # a ServerHello (the server then waits for us) or an alert
            answer.append(first)

    t.expect_handshake_failure(peer)
    answered = answer[0][:1] == bytes([REC_HANDSHAKE]) and answer[0][5:6] == b"\x02"
    listed = body[5:] if len(body) >= 5 and body[2] == 0 else b""
    if answered and case != "empty-name":
        assert seen == [listed.decode()], case
    else:
        assert seen == [], case
    expected = {"one-name", "upper-case", "longest-name", "empty-name"}
    assert answered == (case in expected), (case, answer[0][:16])
    t.assert_serving()


# -- 2. stalls -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["nothing", "half-hello", "drip"])
def test_stalled_handshake_times_out(target: Callable[..., Target], sent: str) -> None:
    """handshake_timeout bounds the whole handshake, also for a peer that sends a byte at a time."""
    t = target(timeout=0.5)
    hello = client_hello()
    s = raw_connect(t.port)
    stop = threading.Event()
    dripper = None
    try:
        if sent == "half-hello":
            s.sendall(hello[: len(hello) // 2])
        elif sent == "drip":

            def drip() -> None:
                for i in range(len(hello) - 1):
                    if stop.wait(0.05):
                        return
                    try:
                        s.send(hello[i : i + 1])
                    except OSError:
                        return

            dripper = threading.Thread(target=drip)
            dripper.start()
        join = t.accept()
        started = time.monotonic()
        with pytest.raises(SSLNetworkError) as info:
            join(JOIN)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        if dripper is not None:
            dripper.join(JOIN)
        s.close()
    assert isinstance(info.value, TimeoutError)
    assert "timed out" in info.value.message
    assert 0.3 < elapsed < 5
    t.assert_serving()


DRIPS = {
    # what the server's read gets every few milliseconds: never what it waits for
    "read(n)": ("data", lambda inp: inp.read(1 << 20)),
    "readinto": ("data", lambda inp: inp.readinto(bytearray(1 << 20))),
    "readline": ("data", lambda inp: inp.readline()),
    "read()": ("data", lambda inp: inp.read()),
    "read1 / KeyUpdates": ("key update", lambda inp: inp.read1(100)),
    "readline / KeyUpdates": ("key update", lambda inp: inp.readline()),
}


@pytest.mark.parametrize("case", DRIPS)
def test_port_timeout_bounds_a_read_against_a_dripping_peer(
    target: Callable[..., Target], case: str
) -> None:
    """A port's timeout bounds the whole read (timeouts.md), also when the peer keeps the
    socket busy: a record every few milliseconds, a byte of data or a KeyUpdate, that never
    gives the read what it waits for (the n bytes, a newline, EOF, any data). The pump went on
    waiting while anything came within each wait slice, and readline() and read() took a
    deadline per chunk: each read here returned only when the peer stopped (5 s later), at
    EOF. The bytes that came are kept for the next read."""
    kind, read = DRIPS[case]
    t = target("tls13")
    done = threading.Event()

    def handler(inp: Any, out: Any) -> Any:
        inp.settimeout(0.5)
        try:
            return repr(read(inp))[:60]
        except TimeoutError:
            inp.settimeout(JOIN)
            return "timed out", inp.read1(1 << 20) if kind == "data" else b""
        finally:
            done.set()

    join = t.serve(handler)
    c = RawTLSClient(t.port, "tls13")
    try:
        c.handshake()
        sent = 0
        stop = time.monotonic() + 5
        while not done.is_set() and time.monotonic() < stop:
            if kind == "data":
                c.send(c.record(REC_DATA, b"x"))
                sent += 1
            else:
                c.send(c.key_update(False))
            time.sleep(0.005)
        if not done.is_set():
            c.sock.close()  # (the read then ends at EOF, long past its deadline)
        outcome = join(JOIN)
        assert outcome[0] == "timed out", outcome
        if kind == "data":  # what came before the timeout is read next, not lost
            assert 0 < len(outcome[1]) <= sent and outcome[1] == b"x" * len(outcome[1])
    finally:
        c.close()
    t.assert_serving()


def test_port_timeout_bounds_a_write_to_a_peer_that_takes_a_little_at_a_time(
    target: Callable[..., Target], pki: Any
) -> None:
    """A write's timeout bounds the whole write, also when the peer keeps taking a little
    (2 KiB every 2 ms, through a 4 KiB send buffer): each wait for room ended within its slice,
    and the pump waited again, for as long as the peer went on reading (4 MiB: ~4 s). Now
    the write raises TimeoutError; what it had not sent, flush() sends later, in order."""
    t = target("tls13")
    data = os.urandom(4 << 20)
    reading = threading.Event()
    outcome: list[Any] = []

    def handler(inp: Any, out: Any) -> None:
        sock = sslports.ports.connection_of("test", out).transport.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        out.settimeout(0.5)
        reading.wait(JOIN)
        try:
            out.write(data)
            outcome.append("written")
        except TimeoutError:
            outcome.append("timed out")
        out.settimeout(JOIN)
        out.flush()  # the rest, in order

    join = t.serve(handler)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect: the window)
    raw.connect((LOCAL, t.port))
    with raw:
        ctx = pki.py_client_context("tls13")
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            reading.set()
            got = bytearray()
            while len(got) < len(data):
                if not outcome:
                    time.sleep(0.002)  # a little at a time while the write runs
                chunk = tls.recv(2048 if not outcome else 1 << 16)
                assert chunk, "EOF before the data"
                got += chunk
            join(JOIN)
    assert outcome == ["timed out"]
    assert got == data


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("cut", [5, 9])
def test_stall_mid_record_then_rest_arrives(
    target: Callable[..., Target], version: str, cut: int
) -> None:
    """Part of a record (its header alone, or a little more), a read timeout, then the rest:
    the connection is still usable. (Stopping right after the header is where OpenSSL before
    3.0.14 freed a buffer in use if asked to release an idle connection's buffers,
    CVE-2024-4741: the pump does not ask there.)"""
    t = target(version)
    got: list[Any] = []
    half_sent = threading.Event()
    timed_out = threading.Event()
    rest_sent = threading.Event()

    def handler(inp: Any, out: Any) -> None:
        half_sent.wait(JOIN)
        inp.settimeout(0.3)
        started = time.monotonic()
        try:
            inp.read1(100)
        except TimeoutError as exc:
            got.append((type(exc), time.monotonic() - started))
        finally:
            timed_out.set()  # (the rest is sent only now, however late this thread ran)
        rest_sent.wait(JOIN)
        inp.settimeout(JOIN)
        got.append(inp.read(len(b"first record")))
        got.append(inp.read(len(b"second")))

    join = t.serve(handler)
    c = RawTLSClient(t.port, version)
    try:
        c.handshake()
        rec = c.record(REC_DATA, b"first record")
        c.send(rec[:cut])
        half_sent.set()
        timed_out.wait(JOIN)  # the server's read times out meanwhile
        c.send(rec[cut:] + c.record(REC_DATA, b"second"))
        rest_sent.set()
        join(JOIN)
    finally:
        half_sent.set()
        rest_sent.set()
        c.close()
    kind, waited = got[0]
    assert issubclass(kind, TimeoutError) and issubclass(kind, SSLError)
    assert 0.2 < waited < 3
    assert got[1:] == [b"first record", b"second"]
    t.assert_serving()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_peer_that_does_not_read(pki: Any, target: Callable[..., Target], version: str) -> None:
    """A writer blocked by a peer that stops reading times out; nothing is lost or doubled."""
    t = target(version)
    payload = hashlib.shake_256(b"not reading").digest(16 << 20)  # far above socket buffers
    outcome: dict[str, Any] = {}
    timed_out = threading.Event()

    def handler(inp: Any, out: Any) -> None:
        out.settimeout(0.3)
        started = time.monotonic()
        try:
            out.write(payload)
        except TimeoutError as exc:
            outcome["exc"] = exc
            outcome["waited"] = time.monotonic() - started
        timed_out.set()
        out.settimeout(JOIN)
        out.flush()  # the rest, now that the peer reads
        outcome["line"] = inp.readline()

    join = t.serve(handler)
    ctx = pki.py_client_context(version)
    raw = socket.create_connection((LOCAL, t.port), timeout=JOIN)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert timed_out.wait(JOIN)
        got = bytearray()
        while len(got) < len(payload):
            chunk = tls.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        tls.sendall(b"done\n")
        join(JOIN)
    exc = outcome["exc"]
    assert isinstance(exc, SSLError) and 0.2 < outcome["waited"] < 5
    assert exc.characters_written == len(payload)  # all of it accepted: sent or buffered
    assert hashlib.sha1(got).digest() == hashlib.sha1(payload).digest()
    assert outcome["line"] == b"done\n"
    t.assert_serving()


def _late_reader(pki: Any, version: str) -> tuple[Any, Any, threading.Event, Callable[..., Any]]:
    """(inp, out, go, join): ports of an ssl_wrap_socket client (no session cache, so nothing
    reads the TLS 1.3 tickets) whose socket and peer have 4 KiB buffers, facing a Python `ssl`
    server that reads nothing until `go` is set, then all until EOF (what join() returns)."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted one
    srv.bind((LOCAL, 0))
    srv.listen(1)
    go = threading.Event()

    def server() -> bytes:
        try:
            conn, _ = srv.accept()
        finally:
            srv.close()
        with pki.py_server_context(version).wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(JOIN)
            assert go.wait(JOIN)
            got = bytearray()
            while chunk := tls.recv(65536):
                got += chunk
            return bytes(got)

    join = run_in_thread(server)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect((LOCAL, srv.getsockname()[1]))
    inp, out = sslports.ssl_wrap_socket(sock, context=pki.client_context(), hostname="localhost")
    return inp, out, go, join


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_flush_sends_what_a_timed_out_write_left_encrypted(pki: Any, version: str) -> None:
    """A write that times out after OpenSSL took all of it (small socket buffers, a peer that
    reads late) leaves no plaintext held, only ciphertext queued: flush() must still send it,
    and close() must not drop it."""
    payload = hashlib.shake_256(b"queued").digest(60000)  # encrypted whole: under 64 KiB
    inp, out, reading, join = _late_reader(pki, version)
    out.settimeout(0.3)
    with pytest.raises(TimeoutError) as info:
        out.write(payload)
        out.flush()
    assert getattr(info.value, "characters_written", None) == len(payload)
    reading.set()
    out.settimeout(JOIN)
    out.flush()
    out.close()
    inp.close()
    assert join(JOIN) == payload


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_closing_while_the_kernel_still_sends_loses_nothing(pki: Any, version: str) -> None:
    """Closing both ports while the kernel still has the end of the last write to send (the
    peer's window is full) must not throw it away. A TLS 1.3 client that never read the
    server's session tickets has unread bytes, and close() on such a socket answers with a
    reset, which drops what was still to send: the ports drop the unread bytes first."""
    payload = hashlib.shake_256(b"still sending").digest(8000)  # one record, fits the buffers
    inp, out, closed, join = _late_reader(pki, version)
    time.sleep(0.1)  # the TLS 1.3 tickets arrive, unread
    out.write(payload)
    out.close()
    inp.close()
    closed.set()  # the server reads only now
    assert join(JOIN) == payload


def test_client_stalled_server_times_out() -> None:
    """ssl_connect to a server that accepts TCP and says nothing: its timeout holds."""
    with socket.socket() as srv:
        srv.bind((LOCAL, 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect(LOCAL, port, timeout=0.5)
        elapsed = time.monotonic() - started
        conn, _ = srv.accept()
        conn.close()
    assert isinstance(info.value, TimeoutError)
    assert 0.3 < elapsed < 5


# -- 3. hostile servers against an sslports client ------------------------------------------------


def _one_shot_server(behaviour: Callable[[socket.socket], None]) -> tuple[int, Callable[..., Any]]:
    srv = socket.socket()
    srv.bind((LOCAL, 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def run() -> None:
        try:
            srv.settimeout(JOIN)
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(JOIN)
                behaviour(conn)
        finally:
            srv.close()

    return port, run_in_thread(run)


HOSTILE_SERVERS = ["garbage", "close-at-once", "close-after-hello", "oversized-record", "alert"]


def act_hostile_server(conn: socket.socket, behaviour: str) -> None:
    """Answer a client's ClientHello the hostile way `behaviour` names (HOSTILE_SERVERS)."""
    if behaviour == "close-at-once":
        return
    conn.recv(65536)  # the ClientHello
    if behaviour == "close-after-hello":
        return
    if behaviour == "garbage":
        conn.sendall(hashlib.shake_256(b"server").digest(512))
    elif behaviour == "oversized-record":
        conn.sendall(b"\x16\x03\x03\x48\x01" + b"\x00" * 32)
    elif behaviour == "alert":
        conn.sendall(b"\x15\x03\x03\x00\x02\x02\x28")
    read_until_closed(conn)


@pytest.mark.parametrize("behaviour", HOSTILE_SERVERS)
def test_hostile_server_handshake(behaviour: str) -> None:
    port, join = _one_shot_server(lambda conn: act_hostile_server(conn, behaviour))
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect(LOCAL, port, timeout=JOIN)
    join(JOIN)
    assert info.value.message.startswith("ssl_connect: ")
    if behaviour == "alert":
        assert "alert handshake failure" in info.value.message


# -- 4. EOF without close_notify -------------------------------------------------------------------


def _python_tls_server(
    pki: Any, version: str, then: Callable[[ssl.SSLSocket], None]
) -> tuple[int, Callable[..., Any]]:
    ctx = pki.py_server_context(version)

    def act(conn: socket.socket) -> None:
        tls = ctx.wrap_socket(conn, server_side=True)
        then(tls)

    return _one_shot_server(act)


def _ragged_close(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"payload")
    time.sleep(0.05)
    socket.socket(fileno=tls.detach()).close()  # the raw socket goes, no close_notify


def _clean_close(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"payload")
    try:
        tls.unwrap()  # sends close_notify, then waits for ours: the client never sends one
    except (ssl.SSLError, OSError):
        pass
    tls.close()


def _truncated_record(tls: ssl.SSLSocket) -> None:
    tls.sendall(b"payload")
    raw = socket.socket(fileno=tls.detach())
    raw.sendall(b"\x17\x03\x03\x00\x40" + b"\x00" * 20)  # 20 of 64 announced bytes
    raw.close()


def _client_ports(kind: str, port: int, ctx: Any, strict: bool) -> tuple[Any, Any]:
    if kind == "ssl_connect":
        return sslports.ssl_connect(LOCAL, port, ctx, timeout=JOIN, strict_eof=strict)
    sock = socket.create_connection((LOCAL, port), timeout=JOIN)
    files = sock.makefile("rb"), sock.makefile("wb")
    sock.close()  # the descriptor stays open until both files are closed (close_original)
    return sslports.ports_to_ssl_ports(
        files[0],
        files[1],
        mode="connect",
        context=ctx,
        hostname="localhost",
        close_original=True,
        strict_eof=strict,
        timeout=JOIN,
    )


@pytest.mark.parametrize("kind", ["ssl_connect", "ports_to_ssl_ports"])
@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("ending", ["ragged", "truncated-record", "close_notify"])
@pytest.mark.parametrize("strict", [False, True])
def test_eof_policy(
    pki: Any, kind: str, version: str, ending: str, strict: bool, request: Any
) -> None:
    then = {"ragged": _ragged_close, "truncated-record": _truncated_record}.get(
        ending, _clean_close
    )
    port, join = _python_tls_server(pki, version, then)
    inp, out = _client_ports(kind, port, pki.client_context(version), strict)
    try:
        assert inp.read(7) == b"payload"
        if strict and ending != "close_notify":
            with pytest.raises(SSLError, match="unexpected eof"):
                inp.read1(100)
        else:
            assert inp.read1(100) == b""
            assert inp.read1(100) == b""  # EOF is sticky
    finally:
        sslports.ssl_abandon_port(out)
        inp.close()
    join(JOIN)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_server_side_ragged_eof_is_eof(target: Callable[..., Target], version: str) -> None:
    t = target(version)
    join = t.serve(lambda inp, out: (inp.read(5), inp.read1(100)))
    c = RawTLSClient(t.port, version)
    try:
        c.handshake()
        c.send(c.record(REC_DATA, b"hello"))
        # A FIN without close_notify. (Closing with the server's TLS 1.3 tickets still unread
        # would make the kernel send a reset instead, a transport error rather than an EOF.)
        c.sock.shutdown(socket.SHUT_WR)
        assert join(JOIN) == (b"hello", b"")
        read_until_closed(c.sock)
    finally:
        c.close()
    t.assert_serving()


# -- 5. forged records after the handshake ---------------------------------------------------------


def _forged(c: RawTLSClient, kind: str) -> bytes:
    if kind == "fatal-alert":
        return c.record(REC_ALERT, b"\x02\x50")  # internal_error
    if kind == "bogus-content-type":
        return c.record(0x63, b"zzz")
    if kind == "bad-version":
        return c.record(REC_DATA, b"zzz", b"\x09\x09")
    if kind == "oversized-header":  # 2^14 + 2048 + 1 announced (and sent)
        return b"\x17\x03\x03\x48\x01" + bytes(18433)
    if kind == "oversized-plaintext":  # a well-encrypted record holding 2^14 + 1 bytes
        return c.record(REC_DATA, bytes(16385))
    if kind == "bad-mac":
        rec = bytearray(c.record(REC_DATA, b"tampered"))
        rec[-1] ^= 1
        return bytes(rec)
    if kind == "plaintext-alert":
        return b"\x15\x03\x03\x00\x02\x02\x28"
    if kind == "change-cipher-spec":
        return c.record(REC_CHANGE_CIPHER, b"\x01")
    if kind == "empty-alert":
        return c.record(REC_ALERT, b"")
    if kind == "warning-alert-flood":  # user_canceled warnings: OpenSSL allows 4 in a row
        return b"".join(c.record(REC_ALERT, b"\x01\x5a") for _ in range(10))
    if kind == "empty-record-flood":  # OpenSSL allows 32 empty records in a row
        return b"".join(c.record(REC_DATA, b"") for _ in range(100))
    if kind == "heartbeat":
        return c.record(24, b"\x01\x40\x00" + bytes(16))
    raise AssertionError(kind)


FORGED = [
    "fatal-alert",
    "bogus-content-type",
    "bad-version",
    "oversized-header",
    "oversized-plaintext",
    "bad-mac",
    "plaintext-alert",
    "change-cipher-spec",
    "empty-alert",
    "warning-alert-flood",
    "empty-record-flood",
    "heartbeat",
]


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("kind", FORGED)
def test_forged_record_mid_stream(target: Callable[..., Target], version: str, kind: str) -> None:
    t = target(version)
    results: list[Any] = []

    def handler(inp: Any, out: Any) -> None:
        results.append(inp.read(len(b"before")))
        try:
            results.append(inp.read1(100))
        except SSLNetworkError as exc:
            results.append(exc)
        try:  # the failure is sticky
            results.append(inp.read1(100))
        except SSLNetworkError as exc:
            results.append(exc)

    join = t.serve(handler)
    c = RawTLSClient(t.port, version)
    try:
        c.handshake()
        c.send(c.record(REC_DATA, b"before") + _forged(c, kind))
        join(JOIN)
    finally:
        c.close()
    assert results[0] == b"before"
    exc = results[1]
    assert isinstance(exc, SSLNetworkError), results
    assert exc.message.startswith("read: read failed (")
    assert exc.openssl_errors or exc.errno
    if kind == "fatal-alert":
        assert "alert internal error" in exc.message
    assert isinstance(results[2], SSLNetworkError)
    t.assert_serving()


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_forged_close_notify_is_eof(target: Callable[..., Target], version: str) -> None:
    """The forger's own sanity check: data, then a close_notify, read as data then EOF."""
    t = target(version)
    join = t.serve(lambda inp, out: (inp.read(4), inp.read1(100)))
    c = RawTLSClient(t.port, version)
    try:
        c.handshake()
        c.send(c.record(REC_DATA, b"data") + c.record(REC_ALERT, b"\x01\x00"))
        assert join(JOIN) == (b"data", b"")
    finally:
        c.close()


# -- 6. renegotiation ------------------------------------------------------------------------------


@needs_openssl
def test_client_initiated_renegotiation_refused(target: Callable[..., Target]) -> None:
    """``openssl s_client -tls1_2`` and "R": the server refuses (OpenSSL 3's default)."""
    t = target("tls12")
    results: list[Any] = []

    def handler(inp: Any, out: Any) -> None:
        results.append(inp.readline())
        try:
            results.append(inp.read1(100))
        except SSLNetworkError as exc:
            results.append(exc)

    join = t.serve(handler)
    assert OPENSSL is not None
    proc = subprocess.Popen(
        [OPENSSL, "s_client", "-connect", f"{LOCAL}:{t.port}", "-tls1_2", "-no_ign_eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        deadline = time.monotonic() + JOIN
        while not results and time.monotonic() < deadline:
            time.sleep(0.02)
        assert results == [b"hello\n"]
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        _out, err = proc.communicate(timeout=JOIN)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    join(JOIN)
    assert b"RENEGOTIATING" in err
    assert b"no renegotiation" in err
    # The server answered with a no_renegotiation warning; s_client then gave up with a fatal
    # alert, which the server's read reports. No second handshake ever completed.
    assert isinstance(results[1], SSLNetworkError)
    assert "alert handshake failure" in results[1].message
    # ... in words that fit: not the first handshake's "no cipher in common"
    assert "gave up the renegotiation it asked for" in results[1].message
    assert "cipher" not in results[1].message
    t.assert_serving()


def test_renegotiation_flood_tls12(target: Callable[..., Target]) -> None:
    """1000 renegotiation ClientHellos in one TLS 1.2 connection: each refused, data flows."""
    t = target("tls12")
    join = t.serve(lambda inp, out: (inp.read(len(b"still here")), inp.read1(100)))
    c = RawTLSClient(t.port, "tls12")
    started = time.monotonic()
    try:
        c.handshake()
        # a ClientHello header is all OpenSSL looks at before refusing
        flood = b"".join(c.record(REC_HANDSHAKE, b"\x01\x00\x00\x04abcd") for _ in range(1000))
        c.send(flood + c.record(REC_DATA, b"still here") + c.record(REC_ALERT, b"\x01\x00"))
        assert join(JOIN) == (b"still here", b"")
        answers = read_until_closed(c.sock)
    finally:
        c.close()
    assert time.monotonic() - started < JOIN
    # one encrypted no_renegotiation warning per ClientHello (alerts are 2 bytes + 24 overhead)
    assert len(answers) >= 1000 * 31
    t.assert_serving()


@pytest.mark.parametrize("requested", [False, True])
def test_key_update_flood_tls13(target: Callable[..., Target], requested: bool) -> None:
    """TLS 1.3's analogue: 1000 KeyUpdates, then data under the 1001st key."""
    t = target("tls13")
    join = t.serve(lambda inp, out: (inp.read(len(b"still here")), inp.read1(100)))
    c = RawTLSClient(t.port, "tls13")
    try:
        c.handshake()
        flood = b"".join(c.key_update(requested) for _ in range(1000))
        c.send(flood + c.record(REC_DATA, b"still here") + c.record(REC_ALERT, b"\x01\x00"))
        assert join(JOIN) == (b"still here", b"")
    finally:
        c.close()
    t.assert_serving()


def unacked(sock: socket.socket) -> int:
    """Bytes sock sent that the peer's kernel has not acknowledged yet (SIOCOUTQ)."""
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


@pytest.mark.skipif(sys.platform != "linux", reason="SIOCOUTQ, and Linux's reset semantics")
@pytest.mark.parametrize(
    "version, before", [("tls13", None), ("tls13", "key update"), ("tls12", "renegotiation")]
)
def test_data_before_a_reset_reaches_the_reader(
    target: Callable[..., Target], version: str, before: Optional[str]
) -> None:
    """A peer sends a record that the reading end answers at once (a TLS 1.2 renegotiation
    attempt: the server's no_renegotiation warning), then data, then resets the connection.
    The read that decrypts the data also sends that answer, which meets the reset: the read
    raised EPIPE, and the data the peer sent before its reset never reached the caller. Now
    the read returns it, as a read of the same data alone does, and the next read reports the
    reset. (TLS 1.3: the read of a KeyUpdate here sent nothing; checked all the same.)"""
    t = target(version)
    reset = threading.Event()

    def handler(inp: Any, out: Any) -> Any:
        assert reset.wait(JOIN)  # (the records and the reset are all in this socket now)
        got = inp.read1(100)
        try:
            return got, inp.read1(100)
        except SSLNetworkError as exc:
            return got, exc

    join = t.serve(handler)
    c = RawTLSClient(t.port, version)
    try:
        c.handshake()
        first = b""
        if before == "key update":
            first = c.key_update(True)
        elif before == "renegotiation":
            first = c.record(REC_HANDSHAKE, b"\x01\x00\x00\x04abcd")
        c.send(first + c.record(REC_DATA, b"last words"))
        # (Linux drops bytes it received but had not acknowledged yet when a reset follows
        # at once: the server must have them before the reset, or there is nothing to lose)
        deadline = time.monotonic() + JOIN
        while unacked(c.sock) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert unacked(c.sock) == 0
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        c.close()  # (SO_LINGER 0: a reset)
        reset.set()
    got, then = join(JOIN)
    assert got == b"last words"
    assert isinstance(then, SSLNetworkError) and then.errno in (errno.ECONNRESET, errno.EPIPE)
    t.assert_serving()


def test_renegotiation_in_tls13_is_fatal(target: Callable[..., Target]) -> None:
    t = target("tls13")

    def handler(inp: Any, out: Any) -> Any:
        try:
            return inp.read1(100)
        except SSLNetworkError as exc:
            return exc

    join = t.serve(handler)
    c = RawTLSClient(t.port, "tls13")
    try:
        c.handshake()
        c.send(c.record(REC_HANDSHAKE, client_hello()[5:]))
        exc = join(JOIN)
    finally:
        c.close()
    assert isinstance(exc, SSLNetworkError)
    assert "unexpected message" in exc.message
    t.assert_serving()


# -- 7. old protocols and weak ciphers -------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize(
    "args",
    [
        ["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
        ["-tls1_2", "-cipher", "eNULL:@SECLEVEL=0"],
        ["-tls1_2", "-cipher", "aNULL:@SECLEVEL=0"],
        ["-tls1_2", "-cipher", "kRSA:@SECLEVEL=0", "-sigalgs", "RSA+SHA1"],
    ],
    ids=["tls1", "tls1_1", "eNULL", "aNULL", "sha1-only"],
)
def test_weak_openssl_client_refused(target: Callable[..., Target], args: list[str]) -> None:
    t = target()
    assert OPENSSL is not None
    join = t.accept()
    proc = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"{LOCAL}:{t.port}", *args],
        input=b"",
        capture_output=True,
        timeout=JOIN,
    )
    if b"no cipher match" in proc.stderr or b"no protocols available" in proc.stderr:
        # this openssl cannot even offer it; nothing reached the server: end our accept
        raw_connect(t.port).close()
        with pytest.raises(SSLNetworkError):
            join(JOIN)
        pytest.skip(f"openssl s_client cannot offer {args}")
    with pytest.raises(SSLNetworkError) as info:
        for p in join(JOIN):  # pragma: no cover - only when a weak client got in
            p.close()
    assert proc.returncode != 0
    reasons = ("unsupported protocol", "no shared cipher", "no shared signature algorithms")
    assert any(reason in info.value.message for reason in reasons), info.value.message
    t.assert_serving()


WEAK_SUITES = {
    "RC4": [0x0005, 0x0004, 0xC011, 0xC007],
    "EXPORT": [0x0003, 0x0006, 0x0008, 0x0014, 0x0011],
    "DES": [0x0009, 0x0015, 0x0012, 0x000A, 0x0016, 0xC012],  # DES and 3DES
    "NULL": [0x0001, 0x0002, 0x003B, 0xC010],
    "anon": [0x0018, 0x0034, 0x006C, 0xC018],
}


@pytest.mark.parametrize("family", sorted(WEAK_SUITES))
def test_weak_cipher_hello_refused(target: Callable[..., Target], family: str) -> None:
    """A hand-made ClientHello offering only RC4 / EXPORT / DES / NULL / anonymous suites."""
    t = target()
    answer: list[bytes] = []

    def peer() -> None:
        with raw_connect(t.port) as s:
            s.sendall(weak_client_hello(WEAK_SUITES[family]))
            answer.append(read_until_closed(s))

    exc = t.expect_handshake_failure(peer)
    assert "no shared cipher" in exc.message
    assert alert_of(answer[0]) == (2, 40)  # fatal handshake_failure
    t.assert_serving()


# -- 8. SNI callbacks that misbehave ---------------------------------------------------------------


class _Boom(Exception):
    pass


def _raise(name: str) -> Any:
    raise _Boom(f"no context for {name}")


@pytest.mark.parametrize(
    "callback, expected",
    [
        (_raise, _Boom),
        (lambda name: "a string", TypeError),
        (lambda name: 42, TypeError),
        (lambda name: sslports.ssl_make_client_context(), TypeError),
        (lambda name: (_ for _ in ()).throw(KeyboardInterrupt()), KeyboardInterrupt),
        (lambda name: sslports.ssl_make_server_context(), SSLNetworkError),
    ],
    ids=["raises", "str", "int", "client-context", "keyboard-interrupt", "no-certificate"],
)
def test_sni_callback_misbehaves(
    pki: Any, target: Callable[..., Target], callback: Any, expected: type[BaseException]
) -> None:
    ctx = pki.server_context()
    sslports.ssl_set_server_name_identification_callback(ctx, callback)
    t = target(context=ctx)
    join = t.accept()
    with pytest.raises(SSLNetworkError) as client_side:
        sslports.ssl_connect("localhost", t.port, pki.client_context(), timeout=JOIN)
    with pytest.raises(expected):
        join(JOIN)
    assert "alert" in client_side.value.message
    # Without SNI the callback is not called: an IP literal still connects.
    t.assert_serving()
