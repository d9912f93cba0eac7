"""Diagnostic: how much of sslports' per-call cost is the Python port layer, how much the C pump.

    .venv/bin/python bench/pump_floor.py [--count 20000] [--size 268435456]

Against a C reference server (bench/c/sp_ref), the same sslports connection is driven twice:
through the ports (`readinto`, `write` + `flush`, as bench/peer.py does) and straight through
the pump (`lib.sp_read` / `lib.sp_write` with preallocated arguments, no Python per call beyond
the loop). The difference is the cost of ports.py per call. This reaches into sslports internals
(`_sslports_conn.ptr`, `_binding.lib`); it is a profiling aid, not part of `make bench`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import OPENSSL_CONF, cpu_seconds, now, pack_header

HERE = Path(__file__).resolve().parent
SUITE = "TLS_AES_128_GCM_SHA256"


def connect(port: int, pem: str) -> tuple[Any, Any]:
    import sslports as sp

    ctx = sp.ssl_make_client_context()
    sp.ssl_load_verify_source(ctx, pem)
    sp.ssl_set_verify(ctx, True)
    sp.ssl_set_ciphersuites(ctx, SUITE)
    return sp.ssl_connect("127.0.0.1", port, ctx)


def pingpong(port: int, pem: str, n: int, raw: bool) -> tuple[float, float]:
    from sslports import _binding

    inp, out = connect(port, pem)
    out.write(pack_header("pingpong", 0, 1024, 1024, n, 0))
    out.flush()
    req, resp = os.urandom(1024), bytearray(1024)
    t0, c0 = now(), cpu_seconds()
    if raw:
        lib, ffi = _binding.lib, _binding.ffi
        ptr = inp._sslports_conn.ptr
        rb = ffi.from_buffer("unsigned char[]", resp, require_writable=True)
        wb = ffi.from_buffer("unsigned char[]", req)
        err, got, done = ffi.new("sp_err *"), ffi.new("size_t *"), ffi.new("size_t *")
        sp_read, sp_write = lib.sp_read, lib.sp_write
        for _ in range(n):
            sent = 0
            while sent < 1024:
                sp_write(ptr, wb + sent, 1024 - sent, done, 50, err)
                sent += done[0]
            total = 0
            while total < 1024:
                sp_read(ptr, rb + total, 1024 - total, 1024 - total, got, 50, err)
                total += got[0]
    else:
        readinto, write, flush = inp.readinto, out.write, out.flush
        for _ in range(n):
            write(req)
            flush()
            readinto(resp)
    result = now() - t0, cpu_seconds() - c0
    out.close()
    inp.close()
    return result


def bulk_up(port: int, pem: str, size: int, wbuf: int, raw: bool) -> tuple[float, float]:
    from sslports import _binding

    inp, out = connect(port, pem)
    out.write(pack_header("up", 0, wbuf, wbuf, 0, size))
    out.flush()
    chunk = os.urandom(wbuf)
    t0, c0 = now(), cpu_seconds()
    if raw:
        lib, ffi = _binding.lib, _binding.ffi
        ptr = inp._sslports_conn.ptr
        wb = ffi.from_buffer("unsigned char[]", chunk)
        err, done = ffi.new("sp_err *"), ffi.new("size_t *")
        sp_write = lib.sp_write
        for _ in range(size // wbuf):
            sent = 0
            while sent < wbuf:
                sp_write(ptr, wb + sent, wbuf - sent, done, 50, err)
                sent += done[0]
    else:
        write = out.write
        for _ in range(size // wbuf):
            write(chunk)
        out.flush()
    inp.read(1)
    result = now() - t0, cpu_seconds() - c0
    out.close()
    inp.close()
    return result


def bulk_down(port: int, pem: str, size: int, rbuf: int, raw: bool) -> tuple[float, float]:
    """Read `size` bytes with reads of up to `rbuf` bytes."""
    from sslports import _binding

    inp, out = connect(port, pem)
    out.write(pack_header("down", 0, rbuf, rbuf, 0, size))
    out.flush()
    buf = bytearray(rbuf)
    left = size
    t0, c0 = now(), cpu_seconds()
    if raw:
        lib, ffi = _binding.lib, _binding.ffi
        ptr = inp._sslports_conn.ptr
        rb = ffi.from_buffer("unsigned char[]", buf, require_writable=True)
        err, got = ffi.new("sp_err *"), ffi.new("size_t *")
        sp_read = lib.sp_read
        while left > 0:
            sp_read(ptr, rb, min(rbuf, left), 1, got, 50, err)
            left -= got[0]
    else:
        view = memoryview(buf)
        readinto1 = inp.readinto1
        while left >= rbuf:
            left -= readinto1(view)
        while left > 0:
            left -= readinto1(view[:left])
    result = now() - t0, cpu_seconds() - c0
    out.write(b"K")
    out.flush()
    out.close()
    inp.close()
    return result


def serve_once(pem: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], int]:
    ref = HERE / "c" / "sp_ref"
    proc = subprocess.Popen(
        [str(ref), "server", f"cert={pem}", f"key={pem}", f"suites={SUITE}"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--count", type=int, default=20000, help="ping-pong round trips")
    p.add_argument("--size", type=int, default=256 << 20, help="bulk bytes")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from run_all import build_ref

    import sslports

    build_ref()
    pem = str(sslports.TEST_PEM)
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "openssl.cnf"
        conf.write_text(OPENSSL_CONF)
        env = dict(os.environ, OPENSSL_CONF=str(conf))
        cases: list[tuple[str, str, int, int | None]] = [
            ("ping-pong 1K/1K", "rt", args.count, None)
        ]
        cases += [
            (f"bulk up {w // 1024}K writes", "write", args.size // w, w) for w in (16384, 65536)
        ]
        cases += [
            (f"bulk down {r // 1024}K reads", "MiB", args.size >> 20, -r) for r in (16384, 65536)
        ]
        for name, unit, ops, wbuf in cases:
            for raw in (False, True):
                best = None
                for _ in range(args.rounds):
                    proc, port = serve_once(pem, env)
                    if wbuf is None:
                        wall, cpu = pingpong(port, pem, ops, raw)
                    elif wbuf < 0:
                        wall, cpu = bulk_down(port, pem, args.size, -wbuf, raw)
                    else:
                        wall, cpu = bulk_up(port, pem, args.size, wbuf, raw)
                    proc.wait(timeout=60)
                    if best is None or cpu < best[1]:
                        best = (wall, cpu)
                assert best is not None
                how = "raw pump (sp_read/sp_write)" if raw else "ports (readinto/write/flush)"
                print(
                    f"{name:<20} {how:<30} client CPU {best[1] / ops * 1e6:7.1f} us/{unit}"
                    f"   {ops / best[0]:9.0f} {unit}/s  (best of {args.rounds})",
                    flush=True,
                )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
