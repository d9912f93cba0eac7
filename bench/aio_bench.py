"""asyncio benchmark: sslports.aio against asyncio's own SSL streams, side by side.

Each round runs both implementations (A = sslports.aio, B = asyncio + ssl) interleaved over
loopback, with the server in its own process so each end has its own core and GIL:

* bulk: the client sends --size MiB in 64 KiB writes; the server answers one byte at the end;
* ping-pong: --rounds-trips round trips of 1 KiB request / 1 KiB response.

Prints per-round numbers, medians and the ratio A/B. Run: .venv/bin/python bench/aio_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import ssl
import statistics
import time
from typing import Any

import sslports as S
from sslports import aio

CHUNK = 65536
MSG = 1024


def _server_ctx_py() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(S.TEST_PEM))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _server_ctx_sp() -> S.SSLServerContext:
    ctx = S.ssl_make_server_context(
        "tls13", private_key=("pem", S.TEST_PEM), certificate_chain=S.TEST_PEM
    )
    S.ssl_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")
    return ctx


async def _serve(reader: Any, writer: Any) -> None:
    """Protocol: b"B" + 8-byte size -> consume size bytes, reply b"k"; b"P" + 4-byte count ->
    echo count messages of MSG bytes."""
    head = await reader.readexactly(1)
    if head == b"B":
        left = int.from_bytes(await reader.readexactly(8), "big")
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                break
            left -= len(data)
        writer.write(b"k")
    else:
        count = int.from_bytes(await reader.readexactly(4), "big")
        for _ in range(count):
            writer.write(await reader.readexactly(MSG))
    await writer.drain()
    writer.close()


def _server_main(kind: str, port_queue: Any, stop: Any) -> None:
    async def main() -> None:
        if kind == "sslports":
            server = await aio.start_ssl_server(_serve, "127.0.0.1", 0, _server_ctx_sp())
        else:
            server = await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=_server_ctx_py())
        port_queue.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(main())


async def _connect(kind: str, port: int) -> tuple[Any, Any]:
    if kind == "sslports":
        ctx = S.ssl_make_client_context("tls13")
        S.ssl_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256")
        return await aio.open_ssl_connection("127.0.0.1", port, ctx)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    return await asyncio.open_connection("127.0.0.1", port, ssl=cctx)


async def _bulk(kind: str, port: int, size: int) -> float:
    reader, writer = await _connect(kind, port)
    payload = os.urandom(CHUNK)
    start = time.perf_counter()
    writer.write(b"B" + size.to_bytes(8, "big"))
    sent = 0
    while sent < size:
        writer.write(payload)
        sent += CHUNK
        await writer.drain()
    await reader.readexactly(1)
    elapsed = time.perf_counter() - start
    writer.close()
    return size / elapsed / 1e6


async def _pingpong(kind: str, port: int, count: int) -> float:
    reader, writer = await _connect(kind, port)
    msg = os.urandom(MSG)
    writer.write(b"P" + count.to_bytes(4, "big"))
    start = time.perf_counter()
    for _ in range(count):
        writer.write(msg)
        await writer.drain()
        await reader.readexactly(MSG)
    elapsed = time.perf_counter() - start
    writer.close()
    return count / elapsed


def _measure(kind: str, test: str, arg: int) -> float:
    ctx = mp.get_context("spawn")
    ports: Any = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_server_main, args=(kind, ports, stop))
    proc.start()
    try:
        port = ports.get(timeout=30)
        coro = _bulk(kind, port, arg) if test == "bulk" else _pingpong(kind, port, arg)
        return asyncio.run(coro)
    finally:
        stop.set()
        proc.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="MiB per bulk run")
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for test, arg, unit in (
        ("bulk", args.size << 20, "MB/s"),
        ("pingpong", args.round_trips, "round trips/s"),
    ):
        a: list[float] = []
        b: list[float] = []
        for r in range(args.rounds):
            a.append(_measure("sslports", test, arg))
            b.append(_measure("asyncio", test, arg))
            print(
                f"{test} round {r + 1}: sslports.aio {a[-1]:.0f}  asyncio+ssl {b[-1]:.0f} {unit}"
                f"  ratio {a[-1] / b[-1]:.2f}"
            )
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"{test}: median sslports.aio {ma:.0f} (min {min(a):.0f}, max {max(a):.0f}) vs "
            f"asyncio+ssl {mb:.0f} (min {min(b):.0f}, max {max(b):.0f}) {unit}; "
            f"ratio {ma / mb:.2f} (target >= 1.3)"
        )


if __name__ == "__main__":
    main()
