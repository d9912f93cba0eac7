"""Real peers that send unusual but legal record and message shapes.

* A post-handshake message that spans records: ``openssl s_server -max_send_frag 512`` with a
  client certificate sends a TLS 1.3 NewSessionTicket (it holds that certificate) of more than
  512 bytes, so in several records. A TCP proxy that reads the (plaintext) record headers holds
  back all but the first of them, and the client's exporter and channel binding are asked for
  meanwhile: OpenSSL is back "in init" until the rest of the message arrives, yet the keys the
  two derive from have not changed (the handshake completed long ago).
* A Python ``ssl`` peer over memory BIOs that shapes what it sends: one record per byte of
  data, and its records cut into TCP segments of one byte (TCP_NODELAY, a send() each), against
  ``ssl_connect``, ``ports_to_ssl_ports`` and ``sslports.aio``: every read method returns what
  API.md promises, nothing lost or reordered, and EOF after close_notify. And a 16 KiB record
  in many segments wakes an asyncio reader once, not once per segment.
* A client KeyUpdate cut into two records (header, then body) by a proxy that opens and makes
  again the client's records with its traffic secret (from its key log): a server's
  ``ssl_set_verify`` meanwhile, with OpenSSL back "in init", reads the rest, then asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import itertools
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional, Union

import pytest
from conftest import (
    LOCAL,
    collect_stdout,
    connect_ports,
    random_bytes,
    run_in_thread,
    socket_ports,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import sslports
from sslports import _binding, aio
from sslports.libssl import libssl

TIMEOUT = 10.0
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
DATA = b"0123456789\n"  # (what s_server sends: no line of it is an s_server command)


class RecordGate:
    """A TCP proxy from a client to ``server_port`` that passes the handshake through, then
    forwards the server's first post-handshake record and holds the rest until ``release()``.

    The server's records are post-handshake once the client sent more than its ClientHello (a
    TLS 1.3 server sends its tickets only after the client's Finished, and the client sends
    its second flight only after the server's whole first flight came through here)."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.listener = socket.create_server((LOCAL, 0))
        self.port = self.listener.getsockname()[1]
        self.client_records = 0
        self.first_forwarded = threading.Event()
        self.released = threading.Event()
        self.socks: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        for s in self.socks:  # (shutdown: a recv() in another thread returns)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.thread.join(TIMEOUT)

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection((LOCAL, self.server_port), timeout=TIMEOUT)
        self.socks += [client, server]
        up = threading.Thread(target=self._pass, args=(client, server, True), daemon=True)
        up.start()
        self._pass(server, client, False)
        up.join(TIMEOUT)

    def _pass(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        buf = bytearray()
        posted = 0
        with contextlib.suppress(OSError):
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    dst.shutdown(socket.SHUT_WR)
                    return
                buf += chunk
                while len(buf) >= 5 and len(buf) >= 5 + struct.unpack(">H", buf[3:5])[0]:
                    n = 5 + struct.unpack(">H", buf[3:5])[0]
                    record, buf = bytes(buf[:n]), buf[n:]
                    if upstream:
                        self.client_records += 1
                    elif self.client_records > 1:  # post-handshake
                        if posted == 1:
                            self.released.wait(TIMEOUT)
                        posted += 1
                    dst.sendall(record)
                    if posted == 1:
                        self.first_forwarded.set()


def _exporter_facts(p: Any) -> tuple[bytes, bytes]:
    return (
        sslports.ssl_export_keying_material(p, EXPORTER_LABEL, 32),
        sslports.ssl_channel_binding(p, "tls-exporter"),
    )


@pytest.mark.parametrize("transport", ["socket", "streams", "aio"])
def test_exporter_while_a_ticket_is_half_received(
    pki: Any, openssl_tool: Any, transport: str
) -> None:
    """Until the rest of a NewSessionTicket that spans records arrives, the exporter and the
    tls-exporter channel binding still work, and give what s_server's exporter gives."""
    proc, port = openssl_tool.s_server(
        [
            *("-cert", str(pki.server_chain), "-key", str(pki.server_key), "-tls1_3"),
            *("-Verify", "1", "-CAfile", str(pki.ca_pem), "-max_send_frag", "512"),
            *("-num_tickets", "1", "-naccept", "1"),
            *("-keymatexport", EXPORTER_LABEL.decode(), "-keymatexportlen", "32"),
        ]
    )
    stdout = bytearray()
    pump = collect_stdout(proc, stdout)
    gate = RecordGate(port)
    ctx = sslports.ssl_make_client_context(
        "tls13", private_key=("pem", pki.server_key), certificate_chain=pki.server_chain
    )
    sock: Optional[socket.socket] = None
    try:
        if transport == "aio":

            async def main() -> tuple[bytes, bytes, bytes]:
                reader, writer = await aio.open_ssl_connection(LOCAL, gate.port, ctx)
                async with writer:
                    assert await asyncio.get_running_loop().run_in_executor(
                        None, gate.first_forwarded.wait, TIMEOUT
                    )
                    await asyncio.sleep(0.3)  # (the record arrives and is decrypted meanwhile)
                    facts = _exporter_facts(writer)
                    gate.release()
                    proc.stdin.write(DATA)
                    proc.stdin.flush()
                    got = await asyncio.wait_for(reader.readexactly(len(DATA)), TIMEOUT)
                return (got, *facts)

            got, keymat, binding = asyncio.run(main())
        else:
            if transport == "socket":
                inp, out = sslports.ssl_connect(LOCAL, gate.port, ctx, timeout=TIMEOUT)
            else:
                sock = socket.create_connection((LOCAL, gate.port), timeout=TIMEOUT)
                inp, out = sslports.ports_to_ssl_ports(
                    sock.makefile("rb", buffering=0),
                    sock.makefile("wb", buffering=0),
                    mode="connect",
                    context=ctx,
                    close_original=True,
                    timeout=TIMEOUT,
                )
            with inp, out:
                assert gate.first_forwarded.wait(TIMEOUT)
                inp.settimeout(0.3)
                with pytest.raises(TimeoutError):  # (reads the first part of the ticket)
                    inp.read1(1)
                inp.settimeout(TIMEOUT)
                keymat, binding = _exporter_facts(inp)
                gate.release()
                proc.stdin.write(DATA)
                proc.stdin.flush()
                got = inp.read(len(DATA))
    finally:
        if sock is not None:  # (ends the read a timed-out read left outstanding on it)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        gate.close()
    proc.wait(TIMEOUT)
    pump.join(TIMEOUT)
    assert got == DATA
    theirs = re.search(rb"Keying material: ([0-9A-F]+)", bytes(stdout))
    assert theirs is not None, bytes(stdout)[-2000:]
    assert keymat == binding == bytes.fromhex(theirs.group(1).decode())


class ShapingServer:
    """A TLS server on Python's ssl module over memory BIOs, for one connection: after the
    handshake it sends ``data`` as records of ``record`` bytes each (None: up to 16 KiB), cut
    into TCP segments of ``segment`` bytes (None: as they come; a tuple: sizes taken in turn)
    with ``pause`` seconds between segments, then reads ``expect`` bytes from the client and
    sends close_notify. It returns what it read."""

    def __init__(
        self,
        context: ssl.SSLContext,
        data: bytes,
        record: Optional[int] = None,
        segment: Union[int, tuple[int, ...], None] = None,
        pause: float = 0.0,
        expect: int = 0,
    ) -> None:
        self.context = context
        self.data, self.record, self.segment, self.pause = data, record, segment, pause
        self.expect = expect
        self.listener = socket.create_server((LOCAL, 0))
        self.port = self.listener.getsockname()[1]
        self.join = run_in_thread(self._run)

    def _run(self) -> bytes:
        sock, _ = self.listener.accept()
        self.listener.close()
        with sock:
            sock.settimeout(TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.context.wrap_bio(inc, outg, server_side=True)

            def pull() -> bool:
                chunk = sock.recv(65536)
                if chunk:
                    inc.write(chunk)
                else:
                    inc.write_eof()
                return bool(chunk)

            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._send(sock, outg.read())  # (the handshake flight is cut up too)
                    pull()
            step = self.record or len(self.data)
            for i in range(0, len(self.data), step):
                tls.write(self.data[i : i + step])  # (longer than 16 KiB: several records)
            self._send(sock, outg.read())
            got = bytearray()
            while len(got) < self.expect:
                try:
                    got += tls.read(self.expect - len(got))
                except ssl.SSLWantReadError:
                    if not pull():
                        break
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()  # close_notify (it does not wait for the client's)
            self._send(sock, outg.read())
            return bytes(got)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        sizes = self.segment if isinstance(self.segment, tuple) else (self.segment or len(data),)
        i = 0
        for step in itertools.cycle(sizes):
            if i >= len(data):
                break
            sock.sendall(data[i : i + step])
            i += step
            if self.pause:
                time.sleep(self.pause)


def _client_ports(transport: str, port: int, ctx: Any) -> tuple[Any, Any, Optional[socket.socket]]:
    return connect_ports(transport != "socket", port, ctx, TIMEOUT, strict_eof=True)


def _reader(inp: Any, how: str) -> Callable[[], bytes]:
    """One read of the kind `how`, checked against what API.md (io.BufferedIOBase) says."""

    def read() -> bytes:
        data = inp.read(1000)
        assert len(data) in (0, 1000) or inp.read(1) == b""  # short only at EOF
        return bytes(data)

    def readinto() -> bytes:
        buf = bytearray(777)
        n = inp.readinto(buf)
        assert n == 777 or inp.read(1) == b""
        return bytes(buf[:n])

    def peek_read1() -> bytes:
        seen = inp.peek(0)
        data = inp.read1(65536)
        assert data[: len(seen)] == seen[: len(data)]
        return bytes(data)

    return {
        "read": read,
        "read1": lambda: bytes(inp.read1(65536)),
        "readinto": readinto,
        "readline": lambda: bytes(inp.readline()),
        "peek": peek_read1,
    }[how]


async def _aio_lines(port: int, ctx: Any, reply: bytes) -> bytes:
    """Send `reply`, then read lines to EOF (close_notify: strict_eof) over sslports.aio."""
    reader, writer = await aio.open_ssl_connection("localhost", port, ctx, strict_eof=True)
    async with writer:
        writer.write(reply)
        await writer.drain()
        lines = [line async for line in reader]
    assert all(line.endswith(b"\n") for line in lines)
    return b"".join(lines)


TEXT = b"".join(b"%d:%s\n" % (i, b"x" * (i % 13)) for i in range(900))  # lines of many lengths


@pytest.mark.parametrize(
    "shape", ["1-byte records", "1-byte segments"], ids=["records1", "segments1"]
)
@pytest.mark.parametrize("transport", ["socket", "streams", "aio"])
def test_tiny_records_and_segments(pki: Any, transport: str, shape: str) -> None:
    """Pins behaviour (it works): data in 1-byte records, and 16 KiB records in 1-byte TCP
    segments (the handshake too), read by every read method; close_notify is a clean EOF
    (strict_eof), and what the client sends meanwhile arrives intact."""
    record, segment = (1, None) if shape == "1-byte records" else (None, 1)
    data = TEXT if record else random_bytes(20000, seed=7).replace(b"\n", b"") + TEXT
    reply = random_bytes(30000, seed=8)
    hows = ["read", "read1", "readinto", "readline", "peek"] if transport != "aio" else ["aio"]
    for how in hows:
        server = ShapingServer(
            pki.py_server_context("tls13"), data, record, segment, expect=len(reply)
        )
        ctx = pki.client_context("tls13")
        if transport == "aio":
            got = asyncio.run(asyncio.wait_for(_aio_lines(server.port, ctx, reply), TIMEOUT))
        else:
            inp, out, sock = _client_ports(transport, server.port, ctx)
            with inp, out:
                out.write(reply)
                out.flush()
                read = _reader(inp, how)
                parts = []
                while part := read():
                    parts.append(part)
                got = b"".join(parts)
                assert inp.read(1) == b""  # (EOF is sticky)
            if sock is not None:
                sock.close()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), how
        assert server.join(TIMEOUT) == reply


@pytest.mark.parametrize("how", ["read", "read1", "readinto", "readline", "peek"])
def test_records_cut_at_odd_points_with_pauses(pki: Any, how: str) -> None:
    """Socket mode, a peer that cuts what it sends (the handshake and the close_notify too)
    into pieces of 5, 1, 20000, 3 and 16000 bytes in turn, each on its own (a pause between):
    a header alone, a byte, then the rest of a record and more of the next (a read waits for
    the rest of a record inside recv(), and keeps what OpenSSL has no room for yet). Every
    read method gets every byte in order, then EOF (close_notify: strict_eof), and closes."""
    data = random_bytes(100000, seed=12).replace(b"\n", b"") + TEXT
    shape = (5, 1, 20000, 3, 16000)
    server = ShapingServer(pki.py_server_context("tls13"), data, None, shape, 0.003)
    inp, out, _ = _client_ports("socket", server.port, pki.client_context("tls13"))
    with inp, out:
        read = _reader(inp, how)
        parts = []
        while part := read():
            parts.append(part)
        assert inp.read(1) == b""  # (EOF is sticky)
    assert hashlib.sha256(b"".join(parts)).digest() == hashlib.sha256(data).digest()
    assert server.join(TIMEOUT) == b""


COUNT_RECV_CHILD = """
import ctypes, hashlib, sys
import sslports
shim = ctypes.CDLL(None)  # (tests/countrecv.c, preloaded)
port, digest = int(sys.argv[1]), sys.argv[2]
ctx = sslports.ssl_make_client_context("tls13")
inp, out = sslports.ssl_connect("127.0.0.1", port, ctx, strict_eof=True)
shim.countrecv_reset()  # (the handshake's recv() calls do not count)
data = inp.read()
calls, eagain = ctypes.c_ulong(), ctypes.c_ulong()
shim.countrecv_get(ctypes.byref(calls), ctypes.byref(eagain))
inp.close()
out.close()
print(hashlib.sha256(data).hexdigest() == digest, calls.value, eagain.value)
"""


def test_a_record_in_pieces_costs_one_recv_per_piece(
    pki: Any, countrecv_env: dict[str, str]
) -> None:
    """Socket mode, a 16 KiB record that arrives in 165 TCP segments of 100 bytes, each on its
    own (a pause between), then close_notify: the read takes each piece with one recv(), which
    waits for it. A recv() that returns less than it asked for leaves the socket's queue
    empty, so none follows it that would only meet EAGAIN (each piece used to cost poll() +
    recv() + a recv() that met EAGAIN). Counted in a child Python with tests/countrecv.c
    preloaded (its recv() wraps libc's)."""
    data = random_bytes(16384, seed=13)
    # The record's pieces (TLS 1.3: 5 + 16384 + 1 + 16 bytes), then the close_notify's one.
    pieces = -(-(16384 + 22) // 100) + 1
    server_ctx = pki.py_server_context("tls13")
    server_ctx.num_tickets = 0  # (no session tickets: their pieces would count too)
    server = ShapingServer(server_ctx, data, None, 100, 0.002)
    child = [sys.executable, "-c", COUNT_RECV_CHILD, str(server.port)]
    proc = subprocess.run(
        [*child, hashlib.sha256(data).hexdigest()],
        env=countrecv_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    whole, calls, eagain = proc.stdout.split()
    assert whole == "True"  # every byte, then EOF (close_notify)
    assert server.join(TIMEOUT) == b""
    assert int(eagain) <= 3, f"{eagain} of {calls} recv() calls met EAGAIN ({pieces} pieces)"
    assert int(calls) <= pieces + 3, f"{calls} recv() calls ({eagain} EAGAIN) for {pieces} pieces"


def test_aio_reader_wakes_per_record_not_per_segment(pki: Any) -> None:
    """One 16 KiB record that arrives in 80 TCP segments wakes a waiting asyncio reader when
    the record is complete, not at each segment (each wake-up is a turn of the event loop and
    a task step for a read that only waits again)."""
    data = random_bytes(16384, seed=9)
    server = ShapingServer(pki.py_server_context("tls13"), data, None, 16384 // 80, 0.005)
    ctx = pki.client_context("tls13")

    async def main() -> tuple[bytes, int]:
        reader, writer = await aio.open_ssl_connection("localhost", server.port, ctx)
        conn = reader._sslports_conn
        wait_input = conn.wait_input
        waits = 0

        def counted() -> Any:
            nonlocal waits
            waits += 1
            return wait_input()

        conn.wait_input = counted
        got = await reader.readexactly(len(data))
        assert await reader.read() == b""
        writer.close()
        return got, waits

    got, waits = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert got == data
    assert server.join(TIMEOUT) == b""
    assert waits <= 4, f"{waits} wake-ups for one record"


# -- a KeyUpdate that spans records ---------------------------------------------------------

_TLS13_SUITES = {  # OpenSSL's name: (AEAD, key length, hash)
    "TLS_AES_128_GCM_SHA256": (AESGCM, 16, hashes.SHA256()),
    "TLS_AES_256_GCM_SHA384": (AESGCM, 32, hashes.SHA384()),
    "TLS_CHACHA20_POLY1305_SHA256": (ChaCha20Poly1305, 32, hashes.SHA256()),
}


class _RecordKeys:
    """TLS 1.3 record protection (RFC 8446 5.2, 7.3) from one traffic secret."""

    def __init__(self, suite: str, secret: bytes) -> None:
        aead, key_len, hash_alg = _TLS13_SUITES[suite]
        self.aead = aead(self._expand(hash_alg, secret, b"key", key_len))
        self.iv = self._expand(hash_alg, secret, b"iv", 12)

    @staticmethod
    def _expand(hash_alg: Any, secret: bytes, label: bytes, length: int) -> bytes:
        full = b"tls13 " + label
        info = struct.pack(">HB", length, len(full)) + full + b"\0"
        return HKDFExpand(hash_alg, length, info).derive(secret)

    def _nonce(self, seq: int) -> bytes:
        return bytes(a ^ b for a, b in zip(self.iv, seq.to_bytes(12, "big")))

    def seal(self, inner: bytes, seq: int) -> bytes:
        header = b"\x17\x03\x03" + struct.pack(">H", len(inner) + 16)
        return header + self.aead.encrypt(self._nonce(seq), inner, header)

    def open(self, record: bytes, seq: int) -> bytes:
        return bytes(self.aead.decrypt(self._nonce(seq), record[5:], record[:5]))


class KeyUpdateSplitter:
    """A TCP proxy from a client to ``server_port`` that sends the client's KeyUpdate on as two
    records: the message's 4-byte header (then ``header_forwarded`` is set), and, once
    ``release`` is set, its 1-byte body (``split``; else the message as it came). The records
    are opened and made again with the client's first application traffic secret, given with
    ``arm()`` (from the client's key log) before the client sends its first application record;
    everything else passes as it came."""

    def __init__(self, server_port: int, split: bool) -> None:
        self.server_port = server_port
        self.split = split
        self.listener = socket.create_server((LOCAL, 0))
        self.port = self.listener.getsockname()[1]
        self.keys: Optional[_RecordKeys] = None
        self.armed = threading.Event()
        self.header_forwarded = threading.Event()
        self.release = threading.Event()
        self.socks: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def arm(self, suite: str, secret: bytes) -> None:
        self.keys = _RecordKeys(suite, secret)
        self.armed.set()

    def close(self) -> None:
        self.release.set()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.thread.join(TIMEOUT)

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection((LOCAL, self.server_port), timeout=TIMEOUT)
        self.socks += [client, server]
        down = threading.Thread(target=self._pass_down, args=(server, client), daemon=True)
        down.start()
        with contextlib.suppress(OSError):
            self._pass_up(client, server)
        down.join(TIMEOUT)

    @staticmethod
    def _pass_down(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)

    def _pass_up(self, src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        encrypted = 0  # the client's encrypted records: its Finished, then application keys
        done = False  # (the KeyUpdate went by: the rest passes as it comes)
        while chunk := src.recv(65536):
            buf += chunk
            while len(buf) >= 5 and len(buf) >= 5 + struct.unpack(">H", buf[3:5])[0]:
                n = 5 + struct.unpack(">H", buf[3:5])[0]
                record, buf = buf[:n], buf[n:]
                if done or record[0] != 0x17:
                    dst.sendall(record)
                    continue
                encrypted += 1
                seq = encrypted - 2
                if seq < 0:  # (the Finished, under the handshake keys)
                    dst.sendall(record)
                    continue
                assert self.armed.wait(TIMEOUT)
                assert self.keys is not None
                inner = self.keys.open(record, seq)
                if not inner.startswith(b"\x18") or inner.rstrip(b"\0")[-1] != 0x16:
                    dst.sendall(record)
                    continue
                done = True  # a KeyUpdate, the last record under these keys
                if not self.split:
                    dst.sendall(record)
                    self.header_forwarded.set()
                    continue
                message = inner.rstrip(b"\0")[:-1]
                dst.sendall(self.keys.seal(message[:4] + b"\x16", seq))
                self.header_forwarded.set()
                assert self.release.wait(TIMEOUT)
                dst.sendall(self.keys.seal(message[4:] + b"\x16", seq + 1))
        dst.shutdown(socket.SHUT_WR)


@pytest.mark.parametrize("streams", [False, True], ids=["socket", "streams"])
@pytest.mark.parametrize("split", [True, False])
def test_server_verify_while_a_key_update_is_half_received(
    pki: Any, split: bool, streams: bool
) -> None:
    """ssl_set_verify on a TLS 1.3 server port while the client's KeyUpdate is half received
    (OpenSSL is back "in init" until the rest arrives, and SSL_verify_client_post_handshake
    refused with "still in init"): the server reads the rest of the message, then asks for the
    certificate; the client is verified and no data is lost. (split=False: the same exchange
    with the KeyUpdate in one record. streams: the server's ports from ports_to_ssl_ports over
    the accepted socket's streams.)"""
    ctx = pki.server_context("tls13")
    sslports.ssl_load_verify_source(ctx, pki.ca_pem)
    listener: Any = (
        socket.create_server((LOCAL, 0))
        if streams
        else sslports.ssl_listen(0, 5, True, LOCAL, ctx, handshake_timeout=TIMEOUT)
    )
    with listener:
        port = listener.getsockname()[1] if streams else sslports.ssl_addresses(listener, True)[1]
        gate = KeyUpdateSplitter(port, split)

        def accept() -> tuple[Any, Any]:
            if not streams:
                return sslports.ssl_accept(listener)
            raw, _ = listener.accept()
            with raw:  # (the streams keep the descriptor)
                return socket_ports(raw, "accept", ctx)

        def serve() -> tuple[bool, bytes]:
            inp, out = accept()
            with inp, out:
                assert gate.header_forwarded.wait(TIMEOUT)
                if split:
                    inp.settimeout(0.3)
                    with pytest.raises(TimeoutError):  # (reads the KeyUpdate's first record)
                        inp.read1(1)
                    gate.release.set()
                    inp.settimeout(TIMEOUT)
                sslports.ssl_set_verify(inp, True)
                verified = sslports.ssl_peer_verified(inp)
                out.write(b"verified\n" if verified else b"not verified\n")
                out.flush()
                return verified, inp.readline()

        join = run_in_thread(serve)
        client_ctx = pki.client_context("tls13")
        sslports.ssl_load_certificate_chain(client_ctx, pki.server_chain)
        sslports.ssl_load_private_key(client_ctx, pki.server_key, False)
        keylog: list[bytes] = []
        sslports.ssl_set_keylogger(client_ctx, keylog.append)
        try:
            inp, out = sslports.ssl_connect("localhost", gate.port, client_ctx, timeout=TIMEOUT)
            with inp, out:
                secret = next(
                    line.split()[2]
                    for line in keylog
                    if line.startswith(b"CLIENT_TRAFFIC_SECRET_0 ")
                )
                gate.arm(sslports.ssl_cipher_name(inp), bytes.fromhex(secret.decode()))
                # Python's ssl has no KeyUpdate: OpenSSL's own, on the client's connection (it
                # is sent before the next write's data)
                assert libssl is not None
                ptr = _binding.ffi.cast(
                    "uintptr_t", _binding.lib.sp_conn_ssl(inp._sslports_conn.ptr)
                )
                assert libssl.SSL_key_update(ctypes.c_void_p(int(ptr)), 0) == 1
                out.write(b"after\n")
                out.flush()
                answer = inp.readline()  # (answers the certificate request on the way)
        finally:
            gate.close()
        assert join(TIMEOUT) == (True, b"after\n")
    assert answer == b"verified\n"
