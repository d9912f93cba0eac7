"""How a socket port's large writes leave: two full records per sendmsg(), every byte in order.

The pump's socket BIO queues a write's records and sends them itself from OpenSSL's buffer
(sp_conn.c send_direct): the last record of each write, and each full record that completes a
pair with a full record queued ahead of it. A 64 KiB write is two sendmsg() calls of two
records each (two of its records copied into the queue, not three; bench/README.md section 3
measured the difference). What a user can notice is in the second half: whatever the socket
takes, through a window so small that most sends are partial, the peer gets every byte once
and in order.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import pytest
from conftest import LOCAL, random_bytes, run_in_thread

import sslports

TIMEOUT = 30.0
FULL_RECORD = 16384 + 22  # a TLS 1.3 record of 16 KiB on the wire (header, type, tag)


def _hashing_server(
    context: ssl.SSLContext, rcvbuf: int = 0, pause: float = 0.0, ack_after: int = 0
) -> tuple[int, Any]:
    """A Python ssl server for one connection that reads until EOF (in 1000-byte reads with
    `pause` seconds between them) and returns (bytes read, their SHA-256). `rcvbuf`: the
    accepted socket's SO_RCVBUF (0: the system's). `ack_after`: once it has read that many
    bytes, it answers b"K" (a client that then reads it knows everything arrived)."""
    listener = socket.socket()
    if rcvbuf:  # (before listen(): the accepted socket inherits it, and so does the window)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    listener.bind((LOCAL, 0))
    listener.listen()

    def serve() -> tuple[int, str]:
        raw, _ = listener.accept()
        listener.close()
        raw.settimeout(TIMEOUT)
        digest, total = hashlib.sha256(), 0
        with context.wrap_socket(raw, server_side=True) as tls:
            while chunk := tls.recv(1000):
                digest.update(chunk)
                if total < ack_after <= total + len(chunk):
                    tls.sendall(b"K")
                total += len(chunk)
                if pause:
                    time.sleep(pause)
        return total, digest.hexdigest()

    return listener.getsockname()[1], run_in_thread(serve)


COUNT_SEND_CHILD = """
import ctypes, socket, sys
import sslports
shim = ctypes.CDLL(None)  # (tests/countrecv.c, preloaded)
port, writes = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port))
# A fixed send buffer that holds every write (no autotuning: no send is ever partial here).
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
inp, out = sslports.ssl_wrap_socket(sock, context=sslports.ssl_make_client_context("tls13"))
block = bytes(range(256)) * 256  # 64 KiB
out.write(b"x")  # (the first write of a connection; not counted)
out.flush()
shim.countrecv_reset()
for _ in range(writes):
    out.write(block)
out.flush()
calls, most = ctypes.c_ulong(), ctypes.c_ulong()
shim.countsend_get(ctypes.byref(calls), ctypes.byref(most))
# The peer's answer: it has every byte (exiting before then could cut the tail off when the
# peer is slow, as under valgrind: the process's exit closes the socket at once).
assert inp.read(1) == b"K"
out.close()
inp.close()
print(calls.value, most.value)
"""


def test_a_64k_write_leaves_as_two_pairs_of_records(
    pki: Any, countrecv_env: dict[str, str]
) -> None:
    """Four 64 KiB writes on a socket port: eight sendmsg() calls, none of more than two full
    records (the previous engine sent each write's four records in one sendmsg() of 65.6 KB).
    Counted in a child Python with tests/countrecv.c preloaded (its sendmsg() wraps libc's)."""
    writes = 4
    block = bytes(range(256)) * 256
    port, join = _hashing_server(pki.py_server_context("tls13"), ack_after=1 + writes * 65536)
    proc = subprocess.run(
        [sys.executable, "-c", COUNT_SEND_CHILD, str(port), str(writes)],
        env=countrecv_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    calls, most = (int(v) for v in proc.stdout.split())
    total, digest = join(TIMEOUT)
    assert total == 1 + writes * len(block)
    assert digest == hashlib.sha256(b"x" + block * writes).hexdigest()
    assert most <= 2 * FULL_RECORD, f"a sendmsg() of {most} bytes: more than two records"
    assert calls == 2 * writes, f"{calls} sendmsg() calls for {writes} writes of 64 KiB"


# Writes of every shape the batching distinguishes: whole pairs, an odd record out, a last
# record short or full, one byte, 1 MiB (several SSL_write_ex calls of four records each).
SIZES = [65536, 49152, 16385, 100000, 1, 16384, 65543, 1 << 20, 32768, 3, 81920]


@pytest.mark.parametrize("timeout", [None, TIMEOUT], ids=["fast-path", "timeout"])
@pytest.mark.parametrize("threads", [1, 2])
def test_large_writes_through_a_small_window_arrive_whole(
    pki: Any, threads: int, timeout: Optional[float]
) -> None:
    """A peer that reads slowly through a 4 KiB receive window: most sends are partial, so
    pairs meet a queue still being sent, and the records behind it wait their turn. The peer
    gets every byte once, in order. With two threads, they take turns, each write from the
    other thread than the one before (some flushed). Ports without a timeout write through
    the C methods, with one through ports.py: the same pump call."""
    data = random_bytes(sum(SIZES), seed=5)
    port, join = _hashing_server(pki.py_server_context("tls13"), rcvbuf=4096, pause=0.0002)
    inp, out = sslports.ssl_connect(LOCAL, port, "tls13", timeout=timeout)
    pieces, offset = [], 0
    for size in SIZES:
        pieces.append(data[offset : offset + size])
        offset += size
    if threads == 1:
        for piece in pieces:
            out.write(piece)
    else:
        # Two writers taking turns (the order is known): each write's records go behind
        # what the other thread's write left queued.
        turn = threading.Condition()
        state = {"next": 0}  # the index of the piece whose turn it is

        def writer(parity: int) -> None:
            for i in range(parity, len(pieces), 2):
                with turn:
                    assert turn.wait_for(lambda i=i: state["next"] == i, TIMEOUT)
                    out.write(pieces[i])
                    if i % 3 == 0:
                        out.flush()
                    state["next"] = i + 1
                    turn.notify_all()

        workers = [threading.Thread(target=writer, args=(p,)) for p in (0, 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(TIMEOUT)
            assert not w.is_alive()
    out.close()
    inp.close()
    total, digest = join(TIMEOUT)
    assert total == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
