"""Integrity under load: many concurrent full-duplex TLS connections, SHA-1 checked at both ends.

    python scripts/integrity.py [--mib 256] [--connections 8] [--tls mixed|tls12|tls13]

Everything runs in this process over 127.0.0.1, sslports at both ends: an ``ssl_listen`` server
(``ssl_accept``) and ``ssl_connect`` clients that verify the certificate and the name. On every
connection both ends send --mib MiB at once (full duplex: a sender thread and a receiver thread
per end, 4 threads per connection). With ``--tls mixed`` (the default) connections alternate
between TLS 1.3 and TLS 1.2.

The data of each direction of each connection is its own deterministic pseudo-random stream
(an AES-128-CTR keystream from ``cryptography`` when it is installed, else SHAKE-128 blocks),
written in chunks of varying size (1 byte to 256 KiB, with flushes at random points) and read
with varying read sizes. Each end hashes what it sends and what it receives; per connection and
direction the sender's and the receiver's byte counts and SHA-1 digests must be equal, so
nothing was lost, added, altered or reordered. The stream ends are checked too: on half of the
connections the client closes first, on the other half the server, and the end that did not
close reads until EOF, so bytes beyond the expected count would be counted.

Prints one line per connection and direction, then the totals (MB/s over all the bytes moved,
both directions). Exit status 1 on any mismatch or error. ``--inject-fault`` corrupts one
received byte on connection 0 (a self-test of the checking: the run must then fail).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import sslports

LOCAL = "127.0.0.1"
PEM = sslports.TEST_PEM
MIB = 1 << 20
BLOCK = MIB
MAX_CHUNK = 256 * 1024


# -- data -----------------------------------------------------------------------------------------


def _block_source(name: str) -> tuple[str, Callable[[], bytes]]:
    """(description, next_block) for the deterministic stream called `name`."""
    digest = hashlib.sha256(name.encode()).digest()
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        counter = iter(range(1 << 62))

        def shake_block() -> bytes:
            return hashlib.shake_128(digest + next(counter).to_bytes(8, "big")).digest(BLOCK)

        return "SHAKE-128 blocks", shake_block
    encryptor = Cipher(algorithms.AES(digest[:16]), modes.CTR(digest[16:])).encryptor()
    zeros = bytes(BLOCK)
    return "AES-128-CTR keystream", lambda: encryptor.update(zeros)


class Stream:
    """A deterministic pseudo-random byte stream, taken in pieces of any size."""

    def __init__(self, name: str) -> None:
        self.kind, self._next_block = _block_source(name)
        self._block = memoryview(b"")
        self._pos = 0

    def take(self, n: int) -> memoryview:
        if self._pos + n <= len(self._block):
            piece = self._block[self._pos : self._pos + n]
            self._pos += n
            return piece
        parts = [self._block[self._pos :]]
        need = n - len(parts[0])
        while need:
            self._block = memoryview(self._next_block())
            self._pos = min(need, len(self._block))
            parts.append(self._block[: self._pos])
            need -= self._pos
        return memoryview(b"".join(parts))


def chunk_size(rng: random.Random) -> int:
    """Mostly large, sometimes tiny: 1-16 B, 17-1500 B, 1.5-16 KiB, 16-256 KiB."""
    r = rng.random()
    if r < 0.05:
        return rng.randint(1, 16)
    if r < 0.20:
        return rng.randint(17, 1500)
    if r < 0.50:
        return rng.randint(1501, 16384)
    return rng.randint(16385, MAX_CHUNK)


# -- one end of one connection --------------------------------------------------------------------


@dataclass
class Half:
    """What one end saw of one direction: bytes and SHA-1 of what it sent or received."""

    count: int = 0
    sha1: str = ""
    error: Optional[str] = None


@dataclass
class End:
    """One end (client or server) of one connection."""

    index: int
    role: str  # "client" or "server"
    inp: Any
    out: Any
    closes_first: bool
    version: str = ""
    cipher: str = ""
    sent: Half = field(default_factory=Half)
    received: Half = field(default_factory=Half)
    finished: float = 0.0

    def abort(self) -> None:
        """Close both ports (unblocks the other thread of this end, and the peer)."""
        for p in (self.out, self.inp):
            try:
                p.close()
            except Exception:  # the connection already failed; closing is best effort
                pass


def direction(end: End, sending: bool) -> str:
    return "c>s" if (end.role == "client") == sending else "s>c"


def send(end: End, total: int, seed: int) -> None:
    name = f"{seed}:{end.index}:{direction(end, True)}"
    stream = Stream(name)
    rng = random.Random(name + ":writes")
    h = hashlib.sha1()
    try:
        while end.sent.count < total:
            piece = stream.take(min(chunk_size(rng), total - end.sent.count))
            h.update(piece)
            end.sent.count += end.out.write(piece)
            if rng.random() < 0.1:
                end.out.flush()
        end.out.flush()
    except BaseException as exc:
        end.sent.error = f"{type(exc).__name__}: {exc}"
        end.abort()
    end.sent.sha1 = h.hexdigest()


def receive(end: End, total: int, seed: int, corrupt: bool) -> None:
    """Read `total` bytes, or (if the peer closes first) everything until EOF."""
    rng = random.Random(f"{seed}:{end.index}:{direction(end, False)}:reads")
    h = hashlib.sha1()
    until_eof = not end.closes_first
    try:
        while until_eof or end.received.count < total:
            want = chunk_size(rng)
            if not until_eof:
                want = min(want, total - end.received.count)
            chunk = end.inp.read1(want)
            if not chunk:
                break
            if corrupt:
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
                corrupt = False
            h.update(chunk)
            end.received.count += len(chunk)
    except BaseException as exc:
        end.received.error = f"{type(exc).__name__}: {exc}"
        end.abort()
    end.received.sha1 = h.hexdigest()


def run_end(end: End, total: int, seed: int, corrupt: bool) -> None:
    sender = threading.Thread(target=send, args=(end, total, seed), name=f"send-{end.role}")
    sender.start()
    receive(end, total, seed, corrupt)
    sender.join()
    end.abort()  # the normal close, once both directions are done at this end
    end.finished = time.monotonic()


# -- the run --------------------------------------------------------------------------------------


def client_context(protocol: str) -> sslports.SSLClientContext:
    ctx = sslports.ssl_make_client_context(protocol)
    sslports.ssl_load_verify_source(ctx, PEM)
    sslports.ssl_set_verify(ctx, True)
    sslports.ssl_set_verify_hostname(ctx, True)
    return ctx


def connect_all(n: int, tls: str, timeout: float) -> list[tuple[End, End]]:
    """n verified connections: (client end, server end) pairs, matched by port numbers."""
    ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(ctx, PEM)
    sslports.ssl_load_private_key(ctx, PEM)
    contexts = {v: client_context(v) for v in ("tls12", "tls13")}
    accepted: list[tuple[Any, Any]] = []
    failure: list[BaseException] = []
    with sslports.ssl_listen(0, 2 * n, True, LOCAL, ctx, handshake_timeout=timeout) as listener:
        port = sslports.ssl_addresses(listener, True)[1]

        def accept() -> None:
            try:
                for _ in range(n):
                    accepted.append(sslports.ssl_accept(listener))
            except BaseException as exc:
                failure.append(exc)

        acceptor = threading.Thread(target=accept, name="accept")
        acceptor.start()
        clients = []
        for i in range(n):
            protocol = tls if tls != "mixed" else ("tls13", "tls12")[i % 2]
            clients.append(sslports.ssl_connect(LOCAL, port, contexts[protocol], timeout=timeout))
        acceptor.join(timeout)
    if failure or len(accepted) != n:
        raise RuntimeError(f"accepting failed: {failure}")
    by_peer_port = {sslports.ssl_addresses(p[0], True)[3]: p for p in accepted}
    pairs = []
    for i, (inp, out) in enumerate(clients):
        s_inp, s_out = by_peer_port[sslports.ssl_addresses(inp, True)[1]]
        client_first = (i // 2) % 2 == 0  # so that each TLS version gets both orders
        for p in (inp, out, s_inp, s_out):
            p.settimeout(timeout)
        version = sslports.ssl_protocol_version(inp) or "?"
        cipher = sslports.ssl_cipher_name(inp)
        if sslports.ssl_protocol_version(s_inp) != version:
            raise RuntimeError(f"connection {i}: the two ends disagree on the TLS version")
        client = End(i, "client", inp, out, client_first, version, cipher)
        pairs.append((client, End(i, "server", s_inp, s_out, not client_first, version, cipher)))
    return pairs


def check(sender: End, receiver: End, total: int) -> list[str]:
    """The problems with one direction of one connection ([] when it arrived intact)."""
    problems = []
    for who, half in (("sender", sender.sent), ("receiver", receiver.received)):
        if half.error:
            problems.append(f"{who} {half.error}")
    if sender.sent.count != total:
        problems.append(f"sent {sender.sent.count} bytes, not {total}")
    if receiver.received.count != sender.sent.count:
        problems.append(f"received {receiver.received.count} of {sender.sent.count} bytes")
    if receiver.received.sha1 != sender.sent.sha1:
        problems.append(
            f"SHA-1 MISMATCH: sent {sender.sent.sha1}, received {receiver.received.sha1}"
        )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB each way per connection")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--tls", choices=["mixed", "tls12", "tls13"], default="mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per read/write, seconds")
    parser.add_argument("--inject-fault", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = args.mib * MIB

    pairs = connect_all(args.connections, args.tls, args.timeout)
    print(
        f"integrity: {args.connections} connections, {args.mib} MiB each way on each, "
        f"TLS {args.tls}; data: {Stream('x').kind}, writes and reads of 1 B to 256 KiB",
        flush=True,
    )
    started = time.monotonic()
    threads = []
    for client, server in pairs:
        for end in (client, server):
            corrupt = args.inject_fault and end.index == 0 and end.role == "server"
            t = threading.Thread(
                target=run_end,
                args=(end, total, args.seed, corrupt),
                name=f"{end.role}-{end.index}",
            )
            t.start()
            threads.append(t)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    failures = 0
    moved = 0
    print(
        f"{'conn':>4} {'tls':5} {'cipher':28} {'dir':3} {'ends at':7} {'bytes':>11} "
        f"{'secs':>6} {'sha1 (both ends)':16} result"
    )
    for client, server in pairs:
        secs = max(client.finished, server.finished) - started
        for sender, receiver in ((client, server), (server, client)):
            problems = check(sender, receiver, total)
            failures += bool(problems)
            moved += receiver.received.count
            ends_at = "EOF" if not receiver.closes_first else "count"
            digest = sender.sent.sha1[:16] if not problems else "-"
            result = "ok" if not problems else "FAILED: " + "; ".join(problems)
            print(
                f"{client.index:>4} {client.version:5} {client.cipher:28} "
                f"{direction(sender, True)} {ends_at:7} {receiver.received.count:>11} "
                f"{secs:>6.1f} {digest:16} {result}"
            )
    rate = moved / 1e6 / elapsed
    print(
        f"integrity: {moved / MIB:.0f} MiB moved in {elapsed:.1f} s: {rate:.1f} MB/s "
        f"({moved / MIB / elapsed:.1f} MiB/s) over {len(pairs)} connections, both directions"
    )
    if failures:
        print(f"integrity: FAILED: {failures} of {2 * len(pairs)} streams went wrong")
        return 1
    print(f"integrity: OK: all {2 * len(pairs)} streams arrived complete and intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
