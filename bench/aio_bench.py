"""asyncio benchmark: sslports.aio against asyncio's own SSL streams, side by side.

Each round runs both implementations (A = sslports.aio, B = asyncio + ssl) interleaved over
loopback, the client and the server each in a fresh process (each end has its own core, GIL
and getrusage), on the same kind of event loop:

* bulk: the client sends --size MiB in 64 KiB writes; the server answers one byte at the end;
* ping-pong: --round-trips round trips of 1 KiB request / 1 KiB response (write, drain,
  readexactly on the client; readexactly, write on the server);
* handshakes: --handshakes sequential connections (connect, handshake, one byte each way,
  close), full (the server issues no tickets) and resumed (2 tickets: sslports.aio resumes by
  itself; asyncio's streams cannot pass a session, so its "resumed" row is full handshakes).
  CPU per connection: the client's loop, and the server process's whole run.

Both sides use TLS 1.3 with TLS_AES_128_GCM_SHA256 (asyncio's ssl cannot choose TLS 1.3 suites,
so an OPENSSL_CONF system_default section sets it for every process of the run). Prints each
round's rates and CPU per operation on each end, then medians, min/max and the ratio A/B.

Run: .venv/bin/python bench/aio_bench.py [--only pingpong|bulk|handshakes] [--loop uvloop|both]
[--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import ssl
import statistics
import tempfile
import time
from typing import Any, Optional

from common import OPENSSL_CONF, SUITE, set_tickets

import sslports as S
from sslports import aio

CHUNK = 65536
MSG = 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _server_ctx_py(tickets: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(S.TEST_PEM))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.num_tickets = tickets
    return ctx


def _server_ctx_sp(tickets: int) -> S.SSLServerContext:
    ctx = S.ssl_make_server_context(
        "tls13", private_key=("pem", S.TEST_PEM), certificate_chain=S.TEST_PEM
    )
    S.ssl_set_ciphersuites(ctx, SUITE)
    if tickets != 2:
        set_tickets(ctx, tickets)
    return ctx


def _server_main(
    kind: str, loop_kind: str, ports: Any, stop: Any, cpu: Any, tickets: Optional[int] = None
) -> None:
    """Serve until `stop`. `tickets`: a handshake run's server, issuing that many tickets, which
    puts the CPU of its whole run on `cpu` as it ends (else OpenSSL's default of 2)."""

    async def serve(reader: Any, writer: Any) -> None:
        """b"B" + 8-byte size -> consume size bytes, reply b"k"; b"P" + 4-byte count -> echo
        count messages of MSG bytes; b"H" -> reply b"k" (a handshake's connection). Puts the
        CPU seconds the exchange took on `cpu` (handshakes: the whole run's, at the end)."""
        head = await reader.readexactly(1)
        start = _cpu()
        if head == b"H":
            writer.write(b"k")
            await writer.drain()
            writer.close()
            return
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
        cpu.put(_cpu() - start)
        writer.close()

    issued = 2 if tickets is None else tickets

    async def main() -> None:
        if kind == "sslports":
            ctx = _server_ctx_sp(issued)
            server: Any = await aio.start_ssl_server(serve, "127.0.0.1", 0, ctx)
        else:
            server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=_server_ctx_py(issued))
        start = _cpu()
        ports.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()
        if tickets is not None:
            cpu.put(_cpu() - start)

    _new_loop(loop_kind).run_until_complete(main())


def _client_context(kind: str) -> Any:
    if kind == "sslports":
        ctx = S.ssl_make_client_context("tls13")
        S.ssl_set_ciphersuites(ctx, SUITE)
        return ctx
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    return cctx


async def _connect(kind: str, port: int, ctx: Any = None) -> tuple[Any, Any]:
    ctx = _client_context(kind) if ctx is None else ctx
    if kind == "sslports":
        return await aio.open_ssl_connection("127.0.0.1", port, ctx)
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx)


async def _bulk(kind: str, port: int, size: int) -> tuple[float, float]:
    reader, writer = await _connect(kind, port)
    payload = os.urandom(CHUNK)
    start, cpu = time.perf_counter(), _cpu()
    writer.write(b"B" + size.to_bytes(8, "big"))
    sent = 0
    while sent < size:
        writer.write(payload)
        sent += CHUNK
        await writer.drain()
    await reader.readexactly(1)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    writer.close()
    return size / elapsed / 1e6, cpu


async def _pingpong(kind: str, port: int, count: int) -> tuple[float, float]:
    reader, writer = await _connect(kind, port)
    msg = os.urandom(MSG)
    writer.write(b"P" + count.to_bytes(4, "big"))
    start, cpu = time.perf_counter(), _cpu()
    for _ in range(count):
        writer.write(msg)
        await writer.drain()
        await reader.readexactly(MSG)
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    writer.close()
    return count / elapsed, cpu


async def _handshakes(kind: str, port: int, count: int, resumed: bool) -> tuple[float, float]:
    ctx = _client_context(kind)  # (one context: sslports' session cache is the context's)
    reused = 0
    start, cpu = time.perf_counter(), _cpu()
    for _ in range(count):
        reader, writer = await _connect(kind, port, ctx)
        writer.write(b"H")
        await writer.drain()
        await reader.readexactly(1)
        if kind == "sslports":
            reused += S.ssl_session_reused(reader)
        writer.close()
        await writer.wait_closed()
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    if kind == "sslports" and reused != (count - 1 if resumed else 0):
        raise RuntimeError(f"{reused} of {count} connections resumed")
    return count / elapsed, cpu


def _client_main(kind: str, loop_kind: str, test: str, arg: int, port: int, out: Any) -> None:
    if test == "bulk":
        coro = _bulk(kind, port, arg)
    elif test == "pingpong":
        coro = _pingpong(kind, port, arg)
    else:
        coro = _handshakes(kind, port, arg, test == "resumed handshakes")
    out.put(_new_loop(loop_kind).run_until_complete(coro))


def _measure(kind: str, loop_kind: str, test: str, arg: int) -> tuple[float, float, float]:
    """(rate, client CPU per op, server CPU per op); an op is a MiB, a round trip or a
    connection."""
    ctx = mp.get_context("spawn")
    ports: Any = ctx.Queue()
    results: Any = ctx.Queue()
    server_cpu: Any = ctx.Queue()
    stop = ctx.Event()
    tickets = {"full handshakes": 0, "resumed handshakes": 2}.get(test)
    server = ctx.Process(
        target=_server_main, args=(kind, loop_kind, ports, stop, server_cpu, tickets)
    )
    server.start()
    try:
        port = ports.get(timeout=30)
        client = ctx.Process(target=_client_main, args=(kind, loop_kind, test, arg, port, results))
        client.start()
        rate, client_cpu = results.get(timeout=600)
        client.join(30)
        ops = arg / (1 << 20) if test == "bulk" else arg
        if tickets is not None:  # the server's whole run: it puts its CPU as it stops
            stop.set()
        return rate, client_cpu / ops, server_cpu.get(timeout=30) / ops
    finally:
        stop.set()
        server.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="MiB per bulk run")
    parser.add_argument("--round-trips", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--handshakes", type=int, default=300, help="connections per run")
    parser.add_argument(
        "--only", choices=("bulk", "pingpong", "handshakes"), help="run one kind of test"
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop", "both"), default="asyncio", help="event loop"
    )
    args = parser.parse_args()
    fd, conf = tempfile.mkstemp(prefix="aio-bench-openssl-", suffix=".cnf")
    with os.fdopen(fd, "w") as f:
        f.write(OPENSSL_CONF)
    os.environ["OPENSSL_CONF"] = conf  # read by every (spawned) client and server process
    try:
        loops = ("asyncio", "uvloop") if args.loop == "both" else (args.loop,)
        tests = [
            ("bulk", args.size << 20, "MB/s", "ms/MiB", 1e3),
            ("pingpong", args.round_trips, "round trips/s", "us/rt", 1e6),
            ("full handshakes", args.handshakes, "conns/s", "ms/conn", 1e3),
            ("resumed handshakes", args.handshakes, "conns/s", "ms/conn", 1e3),
        ]
        for loop_kind in loops:
            for test, arg, unit, cpu_unit, scale in tests:
                if args.only and args.only not in test:
                    continue
                _run_case(loop_kind, test, arg, unit, cpu_unit, scale, args.rounds)
    finally:
        os.unlink(conf)


def _run_case(
    loop_kind: str, test: str, arg: int, unit: str, cpu_unit: str, scale: float, rounds: int
) -> None:
    a: list[tuple[float, float, float]] = []
    b: list[tuple[float, float, float]] = []
    for r in range(rounds):
        a.append(_measure("sslports", loop_kind, test, arg))
        b.append(_measure("asyncio", loop_kind, test, arg))
        print(
            f"{loop_kind} {test} round {r + 1}: sslports.aio {a[-1][0]:.0f}  asyncio+ssl "
            f"{b[-1][0]:.0f} {unit}  ratio {a[-1][0] / b[-1][0]:.2f}   CPU {cpu_unit} client/"
            f"server: {a[-1][1] * scale:.2f}/{a[-1][2] * scale:.2f} vs "
            f"{b[-1][1] * scale:.2f}/{b[-1][2] * scale:.2f}",
            flush=True,
        )
    ma, mb = statistics.median(x[0] for x in a), statistics.median(x[0] for x in b)
    ratios = [x[0] / y[0] for x, y in zip(a, b)]

    def cpu(rows: list[tuple[float, float, float]]) -> str:
        client = statistics.median(x[1] for x in rows) * scale
        server = statistics.median(x[2] for x in rows) * scale
        return f"{client:.2f}/{server:.2f}"

    print(
        f"{loop_kind} {test}: median sslports.aio {ma:.0f} (min {min(x[0] for x in a):.0f}, "
        f"max {max(x[0] for x in a):.0f}) vs asyncio+ssl {mb:.0f} (min "
        f"{min(x[0] for x in b):.0f}, max {max(x[0] for x in b):.0f}) {unit}; ratio of medians "
        f"{ma / mb:.2f}, median of round ratios {statistics.median(ratios):.2f}; "
        f"CPU {cpu_unit} client/server {cpu(a)} vs {cpu(b)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
