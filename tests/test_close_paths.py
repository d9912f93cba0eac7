"""How connections end, against a real TLS peer (Python's ssl over a raw socket, so the test
decides exactly what goes on the wire: close_notify or not, TCP half-close, garbage, resets).

* A peer that half-closes TCP (``shutdown(SHUT_WR)``) without close_notify and then waits for
  the answer: the read is EOF (or ``unexpected eof`` with ``strict_eof``), and the answer still
  reaches the peer. OpenSSL 3 treats that EOF as fatal unless told otherwise: it sent the peer
  a decode_error alert and failed every later write (``write: write failed``).
* A peer that sends close_notify and keeps its socket open: reads end at once, bytes after the
  close_notify are never data, our writes still go (TLS allows it), close() does not wait.
* Half-close from our side, closing from several threads while a third waits, resets, large
  certificate chains.
"""

from __future__ import annotations

import datetime
import errno
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import random_bytes, run_in_thread, wait_read_under_way

import sslports
from sslports import SSLError, SSLNetworkError

PEM = str(sslports.TEST_PEM)
# Python 3.9 on OpenSSL 3 sets SSL_OP_IGNORE_UNEXPECTED_EOF (0x80, unnamed in its ssl module) on
# every context: a TCP EOF without close_notify would read as close_notify. The peer clears it.
OP_IGNORE_UNEXPECTED_EOF = getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0x80)


class Peer:
    """A TLS endpoint on a raw socket, driven by hand (ssl.SSLObject over memory BIOs)."""

    def __init__(self, sock: socket.socket, server: bool) -> None:
        self.sock = sock
        sock.settimeout(20)
        if server:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(PEM)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.options &= ~OP_IGNORE_UNEXPECTED_EOF
        self.inc, self.outg = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.outg, server_side=server)

    def _flush(self) -> None:
        data = self.outg.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.inc.write(data)
        else:
            self.inc.write_eof()

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def write(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def read_to_end(self) -> tuple[bytes, str]:
        """Everything until the end, and how it ended: "close_notify", "eof" (TCP EOF without
        close_notify) or the ssl error's text (an alert)."""
        got = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return bytes(got), "close_notify"
            except ssl.SSLEOFError:
                return bytes(got), "eof"
            except ssl.SSLError as exc:
                if exc.reason == "UNEXPECTED_EOF_WHILE_READING":  # (an SSLError before 3.10)
                    return bytes(got), "eof"
                return bytes(got), str(exc)
            if not chunk:
                return bytes(got), "close_notify"
            got += chunk

    def close_notify(self) -> None:
        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:  # sent ours; we do not wait for the reply
            pass
        self._flush()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        yield s


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def client_ports(kind: str, port: int, **kw: Any) -> tuple[Any, Any, Any]:
    """sslports client ports over a fresh TCP connection; the third value is the socket to
    close afterwards (wrapped streams) or None."""
    if kind == "connect":
        i, o = sslports.ssl_connect("127.0.0.1", port, timeout=20, **kw)
        return i, o, None
    sock = socket.create_connection(("127.0.0.1", port))
    f = sock.makefile("rwb")
    i, o = sslports.ports_to_ssl_ports(
        f,
        f,
        mode="connect",
        close_original=True,
        shutdown_on_close=kind == "wrap-sdc",
        timeout=20,
        **kw,
    )
    return i, o, sock


def close_all(*things: Any) -> None:
    for t in things:
        if t is not None:
            t.close()


ANSWER = random_bytes(3 << 20, seed=7)


# -- the peer half-closes TCP without close_notify, and waits for our answer --------------------


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("kind", ["connect", "wrap-sdc", "wrap"])
def test_peer_half_close_without_close_notify_still_gets_the_answer(
    listener: socket.socket, kind: str, strict: bool
) -> None:
    def peer() -> tuple[bytes, str]:
        conn, _ = listener.accept()
        with conn:
            p = Peer(conn, server=True)
            p.handshake()
            p.write(b"request")
            conn.shutdown(socket.SHUT_WR)  # a FIN, no close_notify
            return p.read_to_end()

    join = run_in_thread(peer)
    i, o, sock = client_ports(kind, listener.getsockname()[1], strict_eof=strict)
    try:
        assert i.read(7) == b"request"
        if strict:
            with pytest.raises(SSLError, match=r"^read: read failed \(unexpected eof\)$"):
                i.read(1)
        else:
            assert i.read(1) == b""
            assert i.read(1) == b""  # (sticky)
        o.write(ANSWER)  # was: "write: write failed", and the peer got a decode_error alert
        o.flush()
    finally:
        close_all(o, i, sock)
    got, end = join(30)
    assert got == ANSWER
    assert end == ("close_notify" if kind == "wrap-sdc" else "eof")


def test_server_answers_a_client_that_half_closed_without_close_notify() -> None:
    """The same from the server side (ssl_accept): request, FIN, then the response."""
    with sslports.ssl_listen(0, 5, True, "127.0.0.1") as lst:
        sslports.ssl_load_certificate_chain(lst, PEM)
        sslports.ssl_load_private_key(lst, PEM)
        port = sslports.ssl_addresses(lst, True)[1]

        def client() -> tuple[bytes, str]:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                p = Peer(sock, server=False)
                p.handshake()
                p.write(b"GET /\n")
                sock.shutdown(socket.SHUT_WR)
                return p.read_to_end()

        join = run_in_thread(client)
        i, o = sslports.ssl_accept(lst)
        try:
            assert i.readline() == b"GET /\n"
            assert i.read() == b""
            o.write(ANSWER)
        finally:
            close_all(o, i)
        got, end = join(30)
    assert got == ANSWER
    assert end == "eof"  # ssl_accept ports send no close_notify


# -- the peer sends close_notify and keeps its socket open -------------------------------------


@pytest.mark.parametrize("garbage", [b"", b"\x17\x03\x03\x00\x05abcde", b"not TLS at all" * 100])
@pytest.mark.parametrize("kind", ["connect", "wrap-sdc"])
def test_peer_close_notify_then_socket_stays_open(
    listener: socket.socket, kind: str, garbage: bytes
) -> None:
    """Reads end at once (the socket stays open: no waiting for a FIN); whatever follows the
    close_notify is never data; writing afterwards is allowed and arrives; close() returns."""
    done = threading.Event()

    def peer() -> tuple[bytes, str]:
        conn, _ = listener.accept()
        with conn:
            p = Peer(conn, server=True)
            p.handshake()
            p.write(b"last words")
            p.close_notify()
            if garbage:
                conn.sendall(garbage)
            result = p.read_to_end()
            done.wait(20)  # the socket stays open until the client is done
            return result

    join = run_in_thread(peer)
    i, o, sock = client_ports(kind, listener.getsockname()[1], strict_eof=True)
    try:
        assert i.read() == b"last words"  # read(-1): to EOF, which the close_notify is
        assert i.read(10) == b""
        o.write(b"after your close_notify")
        o.flush()
    finally:
        close_all(o, i, sock)
        done.set()
    got, end = join(30)
    assert got == b"after your close_notify"
    assert end == ("close_notify" if kind == "wrap-sdc" else "eof")


# -- our half-close --------------------------------------------------------------------------


def test_half_close_with_shutdown_on_close_keeps_reading(listener: socket.socket) -> None:
    """Closing only the output port (shutdown_on_close) sends close_notify; the input port still
    reads all the peer sends after it; closing it then ends the connection with a FIN."""

    def peer() -> tuple[bytes, str, bytes, str]:
        conn, _ = listener.accept()
        with conn:
            p = Peer(conn, server=True)
            p.handshake()
            request, how = p.read_to_end()  # ends with the client's close_notify
            p.write(ANSWER)
            p.close_notify()
            conn.settimeout(20)
            tail = conn.recv(100)  # after our close_notify: the client's FIN, nothing else
            return request, how, tail, "fin" if tail == b"" else "data"

    join = run_in_thread(peer)
    i, o, sock = client_ports("wrap-sdc", listener.getsockname()[1], strict_eof=True)
    try:
        o.write(b"request")
        o.close()
        assert i.read() == ANSWER
    finally:
        close_all(i, sock)
    request, how, tail, _ = join(30)
    assert (request, how, tail) == (b"request", "close_notify", b"")


# -- closing from two threads while a third waits --------------------------------------------


@pytest.mark.parametrize("abandon", [False, True])
@pytest.mark.parametrize("op", ["read", "readline", "write"])
def test_close_from_two_threads_wakes_a_third(
    listener: socket.socket, op: str, abandon: bool
) -> None:
    """Socket ports: a read waiting in another thread ends with EOF, a write waiting for a peer
    that does not read ends with SSLNetworkError; neither closer hangs."""
    stop = threading.Event()

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            Peer(conn, server=True).handshake()
            stop.wait(30)  # never reads, never writes

    join = run_in_thread(peer)
    i, o = sslports.ssl_connect("127.0.0.1", listener.getsockname()[1])
    try:
        started = threading.Event()

        def third() -> Any:
            started.set()
            try:
                if op == "read":
                    return i.read(10)
                if op == "readline":
                    return i.readline()
                while True:
                    o.write(b"x" * 65536)
            except (SSLNetworkError, ValueError) as exc:  # (ValueError: its next write came
                return exc  # after the close, when the peer's buffers were not full yet)

        waiter = run_in_thread(third)
        started.wait(10)
        if op != "write":  # (a read the close came before would raise ValueError)
            wait_read_under_way(i)
        threading.Event().wait(0.2)  # (let it reach its wait: no timing is asserted)
        close = sslports.ssl_abandon_port if abandon else (lambda p: p.close())
        closers = [run_in_thread(lambda p=p: close(p)) for p in (o, i)]
        for c in closers:
            c(20)
        result = waiter(20)
    finally:
        stop.set()
        join(30)
    if op == "write":
        assert isinstance(result, (SSLNetworkError, ValueError))
        assert "write failed" in str(result) or "closed" in str(result)
    else:
        assert result == b""


# -- resets ----------------------------------------------------------------------------------


def test_reset_after_data_delivers_the_data_then_the_error(listener: socket.socket) -> None:
    sent = random_bytes(50_000, seed=3)
    ready = threading.Event()

    def peer() -> None:
        conn, _ = listener.accept()
        p = Peer(conn, server=True)
        p.handshake()
        p.write(sent)
        ready.wait(20)
        reset(conn)

    join = run_in_thread(peer)
    i, o = sslports.ssl_connect("127.0.0.1", listener.getsockname()[1], timeout=20)
    try:
        got = bytearray(i.read(1))
        ready.set()
        join(20)
        with pytest.raises(SSLNetworkError, match=r"^read: read failed \(") as info:
            while True:
                chunk = i.read1(65536)
                assert chunk, "a reset is no EOF"
                got += chunk
        assert info.value.errno == errno.ECONNRESET
        assert bytes(got) == sent
    finally:
        close_all(o, i)


def test_reset_during_a_large_write(listener: socket.socket) -> None:
    def peer() -> None:
        conn, _ = listener.accept()
        p = Peer(conn, server=True)
        p.handshake()
        conn.recv(1000)  # the first bytes of the write arrived
        reset(conn)

    join = run_in_thread(peer)
    i, o = sslports.ssl_connect("127.0.0.1", listener.getsockname()[1], timeout=20)
    try:
        with pytest.raises(SSLNetworkError, match=r"^write: write failed \(") as info:
            o.write(random_bytes(32 << 20, seed=4))
            o.flush()
        assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)
    finally:
        join(20)
        i.close()
    for _ in range(2):
        # The write reported the failure; what was still queued cannot go, and close() does
        # not fail again (it did, at random, with "write failed (Broken pipe)").
        o.close()


@pytest.mark.parametrize("timeout", [None, 20.0], ids=["blocking", "timeout"])
def test_a_flush_that_fails_says_flush(listener: socket.socket, path: str, timeout: Any) -> None:
    """The bytes a flush() sends meet a reset: its error names flush(), as API.md's
    "<function>: <what> failed (...)" says (it read "write: write failed", on both paths,
    blocking or under a timeout), and a write that only buffers raises nothing."""

    def peer() -> None:
        conn, _ = listener.accept()
        Peer(conn, server=True).handshake()
        reset(conn)

    join = run_in_thread(peer)
    i, o = sslports.ssl_connect("127.0.0.1", listener.getsockname()[1], timeout=20)
    o.settimeout(timeout)
    try:
        join(20)
        with pytest.raises(SSLNetworkError) as info:
            for _ in range(500):  # (the first sends can go before the reset arrives)
                assert o.write(b"ping") == 4  # buffered: nothing is sent here
                o.flush()
                time.sleep(0.01)
        assert str(info.value).startswith("flush: write failed ("), str(info.value)
        assert info.value.errno in (errno.ECONNRESET, errno.EPIPE)
    finally:
        i.close()
        o.close()


# -- large certificate chains ------------------------------------------------------------------


def make_chain(
    tmp: Path, intermediates: int, pad: int, leaf_pad: int = 0, root_name: str = "root"
) -> tuple[Path, Path, Path]:
    """root -> `intermediates` CAs (each with `pad` SAN names, to make it big) -> localhost
    (with `leaf_pad` more names)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(
        subject: str, issuer: x509.Name, key: Any, signer: Any, ca: bool, sans: list[str]
    ) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
        )
        if ca:
            b = b.add_extension(x509.BasicConstraints(True, None), True)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), False)
        return b.sign(signer, hashes.SHA256())

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = cert(root_name, name(root_name), root_key, root_key, True, [])
    chain, key, issuer = [], root_key, root
    for k in range(intermediates):
        nk = ec.generate_private_key(ec.SECP256R1())
        c = cert(
            f"ca{k}", issuer.subject, nk, key, True, [f"pad{j}.ca{k}.invalid" for j in range(pad)]
        )
        chain.append(c)
        key, issuer = nk, c
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    pads = [f"pad{j}.leaf.invalid" for j in range(leaf_pad)]
    leaf = cert("localhost", issuer.subject, leaf_key, key, False, ["localhost", *pads])
    pem = serialization.Encoding.PEM
    (tmp / "chain.pem").write_bytes(b"".join(c.public_bytes(pem) for c in [leaf, *chain[::-1]]))
    (tmp / "key.pem").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp / "root.pem").write_bytes(root.public_bytes(pem))
    return tmp / "chain.pem", tmp / "key.pem", tmp / "root.pem"


def chain_exchange(chain: Path, key: Path, root: Path) -> tuple[Any, Any]:
    """An sslports server and client, each presenting `chain` and verifying the other's."""
    sctx = sslports.ssl_make_server_context("auto")
    sslports.ssl_load_certificate_chain(sctx, chain)
    sslports.ssl_load_private_key(sctx, key, False)
    sslports.ssl_load_verify_source(sctx, root)
    sslports.ssl_set_verify(sctx, True)
    cctx = sslports.ssl_make_client_context(
        "auto", private_key=("pem", key), certificate_chain=chain
    )
    sslports.ssl_load_verify_source(cctx, root)
    sslports.ssl_set_verify(cctx, True)
    sslports.ssl_set_verify_hostname(cctx, True)
    with sslports.ssl_listen(0, 5, True, "127.0.0.1", sctx, handshake_timeout=20) as lst:
        port = sslports.ssl_addresses(lst, True)[1]

        def serve() -> Any:
            try:
                i, o = sslports.ssl_accept(lst)
            except SSLError as exc:
                return exc
            verified = sslports.ssl_peer_verified(i)
            o.write(b"hi")
            close_all(o, i)
            return verified

        join = run_in_thread(serve)
        try:
            i, o = sslports.ssl_connect("localhost", port, cctx, timeout=20)
        except SSLError as exc:
            client: Any = exc
        else:
            client = (sslports.ssl_peer_verified(i), i.read())
            close_all(o, i)
        return client, join(30)


def test_chain_of_twenty_intermediates_both_ways(tmp_path: Path) -> None:
    chain, key, root = make_chain(tmp_path, 20, 40)  # ~20 KiB of DER each way
    assert chain_exchange(chain, key, root) == ((True, b"hi"), True)


def test_a_client_leaf_too_big_for_a_ticket_gets_no_ticket(tmp_path: Path) -> None:
    """A TLS 1.3 server's session ticket holds the client's certificate, and OpenSSL cannot
    build one whose session encodes to more than 0xFF00 bytes: it fails the handshake after the
    client's Finished with "internal error" (Python's ssl server and `openssl s_server -verify`
    do, on the same OpenSSL). An sslports server sends such a client no ticket: the handshake
    and the data go through, that client does not resume (a full handshake each time), and a
    client with a usual certificate of the same server still resumes."""
    big_chain, big_key, big_root = make_chain(tmp_path, 0, 0, 3500, "big root")
    assert len(ssl.PEM_cert_to_DER_cert(big_chain.read_text())) > 72 << 10
    small = tmp_path / "small"
    small.mkdir()
    chain, key, root = make_chain(small, 0, 0)
    sctx = sslports.ssl_make_server_context("auto")
    sslports.ssl_load_certificate_chain(sctx, chain)
    sslports.ssl_load_private_key(sctx, key, False)
    sslports.ssl_load_verify_source(sctx, root)
    sslports.ssl_load_verify_source(sctx, big_root)
    sslports.ssl_set_verify(sctx, True)

    def client_context(chain: Path, key: Path) -> Any:
        cctx = sslports.ssl_make_client_context(
            "auto", private_key=("pem", key), certificate_chain=chain
        )
        sslports.ssl_load_verify_source(cctx, root)
        sslports.ssl_set_verify(cctx, True)
        return cctx

    clients = [client_context(big_chain, big_key), client_context(chain, key)]
    with sslports.ssl_listen(0, 5, True, "127.0.0.1", sctx, handshake_timeout=20) as lst:
        port = sslports.ssl_addresses(lst, True)[1]

        def serve() -> Any:
            seen = []
            for _ in range(4):
                try:
                    i, o = sslports.ssl_accept(lst)
                except SSLError as exc:
                    return exc
                seen.append((sslports.ssl_peer_verified(i), sslports.ssl_session_reused(i)))
                o.write(i.read(5))
                close_all(o, i)
            return seen

        join = run_in_thread(serve)
        got = []
        try:
            for cctx in (clients[0], clients[0], clients[1], clients[1]):
                i, o = sslports.ssl_connect("localhost", port, cctx, timeout=20)
                o.write(b"hello")
                o.flush()
                got.append(
                    (sslports.ssl_protocol_version(i), i.read(), sslports.ssl_session_reused(i))
                )
                close_all(o, i)
        finally:
            served = join(60)
    assert got == [
        ("tls13", b"hello", False),
        ("tls13", b"hello", False),
        ("tls13", b"hello", False),
        ("tls13", b"hello", True),
    ]
    assert served == [(True, False), (True, False), (True, False), (True, True)]


def test_chain_beyond_the_default_max_cert_list_fails_clearly(tmp_path: Path) -> None:
    """OpenSSL's default max_cert_list (100 KiB) applies, as it does to Python's ssl: the
    handshake fails with OpenSSL's reason, and the server keeps running."""
    chain, key, root = make_chain(tmp_path, 25, 240)  # ~115 KiB of DER
    client, server = chain_exchange(chain, key, root)
    assert isinstance(client, SSLNetworkError)
    assert "excessive message size" in str(client)
    assert isinstance(server, SSLNetworkError)
