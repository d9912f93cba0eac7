"""What a connection holds after the traffic is gone: a bound, not a function of the traffic.

Each test runs both ends of a connection in a child process and measures the C heap there
(glibc's mallinfo2: bytes in use, mmapped blocks included) before and after a burst, once the
peer has received everything and the caller's own buffer is freed. A bounded implementation
holds the same few buffers (sp_conn.c MEMORY: SP_OUT_HIGH of queued ciphertext, one read of
the input stream, OpenSSL's record buffers) whatever the burst was; one that keeps a copy of
the burst shows it growing with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest
from conftest import MIB, PY_ENV

# The children's measure: bytes in use in the C heap, mmapped blocks included.
HEAP = r"""
import ctypes, gc

libc = ctypes.CDLL(None)
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc.mallinfo2.restype = MallInfo2

def heap():
    gc.collect()
    m = libc.mallinfo2()
    return m.uordblks + m.hblkhd
"""

# Runs in the child: argv[1] is the transport; prints {size_mib: bytes still held}.
CHILD = (
    HEAP
    + r"""
import asyncio, json, os, socket, sys, threading
import sslports
import sslports.aio as aio

def server_context():
    ctx = sslports.ssl_make_server_context("tls13")
    sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
    sslports.ssl_load_private_key(ctx, sslports.TEST_PEM)
    return ctx

def stream_ends(kind):
    timeout = 30.0 if kind.endswith("timeout") else None
    if kind.startswith("socketpair"):
        a, b = socket.socketpair()
        fa, fb = a.makefile("rwb"), b.makefile("rwb")
        server_io, client_io = (fa, fa), (fb, fb)
    else:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        server_io = (open(r1, "rb"), open(w2, "wb"))
        client_io = (open(r2, "rb"), open(w1, "wb"))
    made = {}
    def accept():
        made["server"] = sslports.ports_to_ssl_ports(
            *server_io, mode="accept", context=server_context(), timeout=timeout)
    t = threading.Thread(target=accept)
    t.start()
    client = sslports.ports_to_ssl_ports(*client_io, mode="connect", timeout=timeout)
    t.join()
    return made["server"], client

def held_after_one_write_streams(kind, size):
    (sin, sout), (cin, cout) = stream_ends(kind)
    got = [0]
    def drain():
        while got[0] < size:
            got[0] += len(sin.read1(1 << 16))
    empty = heap()
    data = bytes(size)
    before = heap()
    own = before - empty  # the data's bytes in this heap (none where objects live in mimalloc)
    t = threading.Thread(target=drain)
    t.start()
    cout.write(data)
    cout.flush()
    t.join()
    del data
    held = heap() - before + own
    for p in (cout, cin, sout, sin):
        p.close()
    return held

async def held_after_one_write_aio(kind, size):
    got = [0]
    done = asyncio.Event()
    async def on_client(r, w):
        while got[0] < size:
            got[0] += len(await r.read(1 << 18))
        done.set()
    server = await aio.start_ssl_server(on_client, "127.0.0.1", 0, server_context())
    port = server.sockets[0].getsockname()[1]
    if kind == "aio_protocol":
        r, w = await aio.open_ssl_connection("127.0.0.1", port, "auto")
    else:
        raw_r, raw_w = await asyncio.open_connection("127.0.0.1", port)
        r, w = await aio.wrap_ssl_streams(raw_r, raw_w, mode="connect")
    empty = heap()
    data = bytes(size)
    before = heap()
    own = before - empty  # the data's bytes in this heap (none where objects live in mimalloc)
    w.write(data)
    await w.drain()
    await asyncio.wait_for(done.wait(), 60)
    del data
    held = heap() - before + own
    w.close()
    server.close()
    return held

kind = sys.argv[1]
result = {}
for mib in (16, 64):
    if kind.startswith("aio"):
        result[mib] = asyncio.run(held_after_one_write_aio(kind, mib << 20))
    else:
        result[mib] = held_after_one_write_streams(kind, mib << 20)
print(json.dumps(result))
"""
)


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


needs_mallinfo2 = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not _has_mallinfo2()
    or "ASAN_OPTIONS" in os.environ
    or "TSAN_OPTIONS" in os.environ,
    reason="measures the C heap with glibc's mallinfo2 (not a sanitizer's allocator)",
)


@needs_mallinfo2
@pytest.mark.parametrize(
    "kind", ["socketpair", "pipe", "pipe_timeout", "aio_protocol", "aio_streams"]
)
def test_one_large_write_leaves_no_copy_behind(kind: str) -> None:
    """A single write of 16 MiB, then of 64 MiB, over a stream transport (ports_to_ssl_ports
    over socket.makefile or os.pipe, with and without timeout=; asyncio's protocol and stream
    pair). Before: the pump encrypted the whole write into its memory BIO, which keeps its
    largest size until the connection ends (~1.2x the write), and the stream sender's thread
    kept its last chunk (the whole write) while idle: 35 MiB held after 16 MiB, 144 MiB after
    64 MiB. Now the pump hands the ciphertext over SP_OUT_HIGH at a time: ~0.2-0.6 MiB held
    for either size."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind],
        capture_output=True,
        timeout=120,
        env=PY_ENV,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    held = {int(k): v for k, v in json.loads(out.stdout).items()}
    # Not a copy of the write: a few 64 KiB buffers (wbio up to SP_OUT_HIGH plus one
    # SP_WRITE_CHUNK of records, rbio one read, OpenSSL's record buffers, asyncio's per-thread
    # buffers) and allocator noise; 8 MiB is half the smaller write.
    assert held[16] < 8 * MIB, held
    # Not growing with the write: four times the data may not cost twice the memory (plus
    # 4 MiB of slack for the allocator's own bookkeeping).
    assert held[64] < 2 * max(held[16], 0) + 4 * MIB, held


# Runs in the child: N socket connection pairs per traffic shape, both ends in this process;
# prints {shape: C heap bytes held per idle pair}.
IDLE_CHILD = (
    HEAP
    + r"""
import json, sys, threading
import sslports

ctx = sslports.ssl_make_server_context("auto")
sslports.ssl_load_certificate_chain(ctx, sslports.TEST_PEM)
sslports.ssl_load_private_key(ctx, sslports.TEST_PEM)
listener = sslports.ssl_listen(0, 128, True, "127.0.0.1", ctx)
port = sslports.ssl_addresses(listener, True)[1]
client_ctx = sslports.ssl_make_client_context("auto")
BULK = bytes(256 << 10)

def read_n(p, n):
    got = 0
    while got < n:
        chunk = p.read1(1 << 16)
        assert chunk, "early EOF"
        got += len(chunk)

def pair():
    made = {}
    t = threading.Thread(target=lambda: made.setdefault("s", sslports.ssl_accept(listener)))
    t.start()
    cin, cout = sslports.ssl_connect("127.0.0.1", port, client_ctx)
    t.join()
    return (cin, cout) + made["s"]

def handshake_only(cin, cout, sin, sout):
    pass

def ping(cin, cout, sin, sout):
    cout.write(b"?")
    cout.flush()
    assert sin.read(1) == b"?"
    sout.write(b"!")
    sout.flush()
    assert cin.read(1) == b"!"

def bulk(cin, cout, sin, sout):
    # 256 KiB each way at once (64 KiB writes: records queued and sent by the pump), then
    # 16 KiB writes (one record held encrypted until the next), then a ping
    def serve():
        read_n(sin, len(BULK))
        sout.write(BULK)
        sout.flush()
    t = threading.Thread(target=serve)
    t.start()
    for off in range(0, len(BULK), 1 << 16):
        cout.write(BULK[off:off + (1 << 16)])
    cout.flush()
    read_n(cin, len(BULK))
    t.join()
    for _ in range(4):
        cout.write(BULK[:1 << 14])
    cout.flush()
    read_n(sin, 4 << 14)
    ping(cin, cout, sin, sout)

def lines(cin, cout, sin, sout):
    # readline reads ahead 64 KiB at a time; a peek, then everything read
    sout.write(b"line\n" * 20000)
    sout.flush()
    assert cin.peek(1)[:1] == b"l"
    for _ in range(20000):
        assert cin.readline() == b"line\n"
    ping(cin, cout, sin, sout)

def timed_out(cin, cout, sin, sout):
    # a read that waited out its timeout, then one that reads
    cin.settimeout(0.02)
    try:
        cin.read(1)
    except TimeoutError:
        pass
    else:
        raise AssertionError("no timeout")
    cin.settimeout(None)
    ping(cin, cout, sin, sout)

N = 24
result = {}
for shape in (handshake_only, ping, bulk, lines, timed_out):
    kept = [pair()]
    shape(*kept[0])  # warm-up: the first connection of a shape grows pools and caches
    before = heap()
    for _ in range(N):
        ends = pair()
        shape(*ends)
        kept.append(ends)
    result[shape.__name__] = (heap() - before) / N
    for ends in kept:
        for p in ends:
            p.close()
print(json.dumps(result))
"""
)


@needs_mallinfo2
def test_idle_socket_connections_hold_no_io_buffers() -> None:
    """sp_conn.c MEMORY: an idle socket connection holds no I/O buffers, whatever it did
    before (OpenSSL's record buffers released, the send queues freed once sent, readline's
    read-ahead handed out), so a service holding many idle connections pays per connection
    after traffic what a connection that only shook hands costs. Five shapes, 24 connection
    pairs each, both ends in one child process: the handshake alone (the server's session
    tickets still queued for its first write), one byte each way, 256 KiB each way at once
    plus 16 KiB writes, 20 000 lines read with readline after a peek, a read that timed out.
    Measured per pair: ~31 KiB of C heap after traffic and ~36 KiB after the handshake alone on
    OpenSSL 3.0, ~62 and ~66 KiB on 3.5. An end that kept its read buffer measured +16 KiB
    (one byte each way, the timed-out read: 47 KiB on 3.0)."""
    out = subprocess.run(
        [sys.executable, "-c", IDLE_CHILD],
        capture_output=True,
        timeout=120,
        env=PY_ENV,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    held = json.loads(out.stdout)
    base = held["handshake_only"]
    assert 4096 < base < 256 * 1024, held
    for shape in ("ping", "bulk", "lines", "timed_out"):
        assert held[shape] < base + 4096, (shape, held)
