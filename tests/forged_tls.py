"""A TLS 1.3 server that writes its own records once the handshake is done.

Python's ssl runs the handshake (over memory BIOs, so every byte it sends passes here); its key
log gives the server's traffic secret, from which this module encrypts whatever records a test
needs, including ones OpenSSL would never send in that number or shape: a flood of KeyUpdates,
or of session tickets, or a ticket as large as RFC 8446 allows. After `accept()`, every record
the server sends must come from `record()` (it counts the sequence numbers).
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import tempfile
from typing import Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import sslports

HANDSHAKE, APPLICATION_DATA, ALERT = 22, 23, 21
NEW_SESSION_TICKET, KEY_UPDATE = 4, 24


# The suites an OpenSSL client offers first: their hash and key length.
SUITES = {
    "TLS_AES_256_GCM_SHA384": (hashes.SHA384, 32),
    "TLS_AES_128_GCM_SHA256": (hashes.SHA256, 16),
}


def hkdf_label(secret: bytes, label: bytes, length: int, hash_: type = hashes.SHA256) -> bytes:
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + b"\0"
    return HKDFExpand(hash_(), length, info).derive(secret)


def handshake_message(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def new_session_ticket(ticket: bytes) -> bytes:
    """A NewSessionTicket message: lifetime 7200 s, an age add, a nonce, `ticket`, no
    extensions."""
    body = struct.pack(">II", 7200, 1) + b"\x01n" + struct.pack(">H", len(ticket)) + ticket
    return handshake_message(NEW_SESSION_TICKET, body + b"\0\0")


class ForgingServer:
    """Listens on 127.0.0.1; `accept()` takes one client and runs the handshake (TLS 1.3 with
    AES-GCM, sslports.TEST_PEM, no tickets of its own)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sock: Optional[socket.socket] = None

    def accept(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sslports.TEST_PEM)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.num_tickets = 0
        fd, keylog = tempfile.mkstemp(prefix="forged-tls-keylog-")
        os.close(fd)
        try:
            ctx.keylog_filename = keylog
            self.sock, _ = self.listener.accept()
            self.sock.settimeout(30)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_side=True)
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.sock.sendall(outgoing.read())
                    data = self.sock.recv(65536)
                    if not data:
                        raise ConnectionError("the client left in the handshake") from None
                    incoming.write(data)
            self.sock.sendall(outgoing.read())
            self.hash, self.key_len = SUITES[tls.cipher()[0]]
            with open(keylog) as log:
                secrets = dict(line.split()[0::2] for line in log if not line.startswith("#"))
        finally:
            os.unlink(keylog)
        self._use_secret(bytes.fromhex(secrets["SERVER_TRAFFIC_SECRET_0"]))

    def _use_secret(self, secret: bytes) -> None:
        self.secret = secret
        self.aead = AESGCM(hkdf_label(secret, b"key", self.key_len, self.hash))
        self.iv = hkdf_label(secret, b"iv", 12, self.hash)
        self.seq = 0

    def record(self, content_type: int, payload: bytes) -> bytes:
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big")))
        inner = payload + bytes([content_type])
        header = bytes([APPLICATION_DATA, 3, 3]) + struct.pack(">H", len(inner) + 16)
        self.seq += 1
        return header + self.aead.encrypt(nonce, inner, header)

    def handshake(self, message: bytes) -> bytes:
        """`message` in records of at most 16 KiB (a handshake message may span several)."""
        return b"".join(
            self.record(HANDSHAKE, message[i : i + 16384]) for i in range(0, len(message), 16384)
        )

    def data(self, payload: bytes) -> bytes:
        return self.record(APPLICATION_DATA, payload)

    def key_update(self) -> bytes:
        """A KeyUpdate (update_not_requested); the records after it use the next key."""
        update = self.record(HANDSHAKE, handshake_message(KEY_UPDATE, b"\0"))
        self._use_secret(hkdf_label(self.secret, b"traffic upd", len(self.secret), self.hash))
        return update

    def close_notify(self) -> bytes:
        return self.record(ALERT, b"\x01\x00")

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.listener.close()
