"""Per-call cost of everyday port and stream calls: sslports against Python's ssl.

    .venv/bin/python bench/api_costs.py                         # every case, wall clock
    .venv/bin/python bench/api_costs.py --cases read1,peek1 --rounds 5
    .venv/bin/python bench/api_costs.py --cases readline_t --instructions
    .venv/bin/python bench/api_costs.py --list

Each case is one call a user makes in a loop (`read(1)`, `peek(1)` then `read(1)`, iteration,
`write` of 16 bytes, ...), made by sslports and by the natural Python ssl equivalent:
socket ports (`ssl_connect`) against `SSLSocket.makefile("rb"/"wb")`; `_t` cases with a
timeout set on both (`settimeout`: sslports' Python path); `_s` cases over
`ports_to_ssl_ports` on a socket's `makefile` pair (the pure Python stream transport);
`_w` over `ssl_wrap_socket`; `aio_` cases `sslports.aio` against asyncio streams with `ssl=`.
The peer is a Python ssl server thread in the same process, identical for both (it sends the
whole body at once before the client reads, or reads everything the client writes).
Wall clock: implementations alternate within each round; the median of per-round ratios is
printed (this 2-core VM is noisy: compare ratios). --instructions runs each implementation
under callgrind with two call counts; the difference divided by the extra calls is the cost
of one call (start-up and handshake cancelled out), the peer thread included.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
import sslports  # noqa: E402
from sslports import aio  # noqa: E402

IMPLS = ("sslports", "pyssl")
LINE = b"x" * 15 + b"\n"
LONG = int(os.environ.get("API_COSTS_LONG", 1 << 20))  # readline_1m line length


class Case(NamedTuple):
    what: str  # "read": the peer sends `body(count)`; "write": the client sends, peer reads
    body: Callable[[int], bytes]  # bytes the peer sends (read) or expects (write)
    calls: int  # default call count (callgrind uses it and 3x it)
    kind: str  # "sock", "timeout", "stream", "wrap", "aio"
    run: Callable[[Any, int], Any]  # the loop: (file or (reader, writer), count)


def _lines(count: int) -> bytes:
    return LINE * count


def _long_lines(count: int) -> bytes:
    return (b"z" * (LONG - 1) + b"\n") * count


def _bytes(count: int) -> bytes:
    return b"y" * count


def _loop_readline(f: Any, count: int) -> None:
    for _ in range(count):
        f.readline()


def _loop_iter(f: Any, count: int) -> None:
    for n, _line in enumerate(f, 1):
        if n == count:
            break


def _loop_readlines(f: Any, count: int) -> None:
    f.readlines()  # (the peer closes after the body: EOF)


def _loop_read(size: int) -> Callable[[Any, int], None]:
    def loop(f: Any, count: int) -> None:
        for _ in range(count):
            f.read(size)

    return loop


def _loop_readinto(size: int) -> Callable[[Any, int], None]:
    def loop(f: Any, count: int) -> None:
        b = bytearray(size)
        for _ in range(count):
            f.readinto(b)

    return loop


def _loop_peek(f: Any, count: int) -> None:
    for _ in range(count):
        f.peek(1)
        f.read(1)


def _loop_readline_peek(f: Any, count: int) -> None:
    for _ in range(count):
        f.readline()
        f.peek(1)  # (a header parser looking for a continuation line)


def _loop_readall(f: Any, count: int) -> None:
    f.read()


def _loop_write(make: Callable[[], Any], flush_each: bool) -> Callable[[Any, int], None]:
    def loop(f: Any, count: int) -> None:
        piece = make()
        for _ in range(count):
            f.write(piece)
            if flush_each:
                f.flush()
        f.flush()

    return loop


def _loop_writelines(f: Any, count: int) -> None:
    f.writelines([LINE] * count)
    f.flush()


async def _aio_readline(rw: Any, count: int) -> None:
    for _ in range(count):
        await rw[0].readline()


async def _aio_readuntil(rw: Any, count: int) -> None:
    for _ in range(count):
        await rw[0].readuntil(b"\n")


async def _aio_iter(rw: Any, count: int) -> None:
    n = 0
    async for _line in rw[0]:
        n += 1
        if n == count:
            break


def _aio_read(size: int, exactly: bool) -> Callable[[Any, int], Any]:
    async def loop(rw: Any, count: int) -> None:
        call = rw[0].readexactly if exactly else rw[0].read
        for _ in range(count):
            await call(size)

    return loop


async def _aio_readall(rw: Any, count: int) -> None:
    await rw[0].read()


def _aio_write(drain_each: bool) -> Callable[[Any, int], Any]:
    async def loop(rw: Any, count: int) -> None:
        writer = rw[1]
        for _ in range(count):
            writer.write(LINE)
            if drain_each:
                await writer.drain()
        await writer.drain()

    return loop


async def _aio_writelines(rw: Any, count: int) -> None:
    rw[1].writelines([LINE] * count)
    await rw[1].drain()


def _sync_cases(suffix: str, kind: str) -> dict[str, Case]:
    cases = {
        "readline": Case("read", _lines, 20000, kind, _loop_readline),
        "readline_1m": Case("read", _long_lines, 16, kind, _loop_readline),
        "iter": Case("read", _lines, 20000, kind, _loop_iter),
        "readlines": Case("read", _lines, 20000, kind, _loop_readlines),
        "read1": Case("read", _bytes, 20000, kind, _loop_read(1)),
        "read100": Case("read", lambda n: _bytes(100 * n), 20000, kind, _loop_read(100)),
        "readinto64": Case("read", lambda n: _bytes(64 * n), 20000, kind, _loop_readinto(64)),
        "peek1": Case("read", _bytes, 20000, kind, _loop_peek),
        "readline_peek": Case("read", _lines, 20000, kind, _loop_readline_peek),
        "readall_1k": Case("read", lambda n: _bytes(1024 * n), 4000, kind, _loop_readall),
        "write16": Case("write", _lines, 20000, kind, _loop_write(lambda: LINE, False)),
        "write16_flush": Case("write", _lines, 5000, kind, _loop_write(lambda: LINE, True)),
        "writelines16": Case("write", _lines, 20000, kind, _loop_writelines),
        "write_mv16": Case(
            "write", _lines, 20000, kind, _loop_write(lambda: memoryview(LINE), False)
        ),
        "write_ba16": Case(
            "write", _lines, 20000, kind, _loop_write(lambda: bytearray(LINE), False)
        ),
        "write_arr16": Case(
            "write",
            lambda n: array.array("i", [0x78787878] * 4).tobytes() * n,
            20000,
            kind,
            _loop_write(lambda: array.array("i", [0x78787878] * 4), False),
        ),
    }
    return {name + suffix: case for name, case in cases.items()}


CASES: dict[str, Case] = {
    **_sync_cases("", "sock"),
    **_sync_cases("_t", "timeout"),
    **_sync_cases("_s", "stream"),
    **_sync_cases("_w", "wrap"),
    "aio_readline": Case("read", _lines, 20000, "aio", _aio_readline),
    "aio_readuntil": Case("read", _lines, 20000, "aio", _aio_readuntil),
    "aio_iter": Case("read", _lines, 20000, "aio", _aio_iter),
    "aio_read16": Case("read", _lines, 20000, "aio", _aio_read(16, False)),
    "aio_read1": Case("read", _bytes, 20000, "aio", _aio_read(1, False)),
    "aio_readexactly16": Case("read", _lines, 20000, "aio", _aio_read(16, True)),
    "aio_readall_1k": Case("read", lambda n: _bytes(1024 * n), 4000, "aio", _aio_readall),
    "aio_write16": Case("write", _lines, 20000, "aio", _aio_write(False)),
    "aio_write16_drain": Case("write", _lines, 20000, "aio", _aio_write(True)),
    "aio_writelines16": Case("write", _lines, 20000, "aio", _aio_writelines),
}


def _serve(listening: socket.socket, what: str, body: bytes) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sslports.TEST_PEM)
    conn, _ = listening.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with ctx.wrap_socket(conn, server_side=True) as tls:
        if what == "read":
            tls.sendall(body)
            tls.shutdown(socket.SHUT_WR)  # (EOF for the readers to EOF; raw from here on)
            tls.recv(1)  # the client's "k" (or its close): nothing unread is reset
            return
        got = 0
        buf = bytearray(65536)
        while got < len(body):
            n = tls.recv_into(buf)
            if not n:
                raise RuntimeError("client ended early")
            got += n
        tls.sendall(b"k")
        tls.recv(1)


def run(impl: str, name: str, count: int) -> float:
    """Seconds per call for `count` calls of case `name`."""
    case = CASES[name]
    body = case.body(count)
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        server = threading.Thread(target=_serve, args=(listening, case.what, body))
        server.start()
        try:
            if case.kind == "aio":
                return asyncio.run(_run_aio(impl, case, port, count))
            return _run_sync(impl, case, port, count)
        finally:
            server.join()


def _timed(case: Case, f: Any, count: int) -> float:
    start = time.perf_counter()
    case.run(f, count)
    return (time.perf_counter() - start) / count


def _run_sync(impl: str, case: Case, port: int, count: int) -> float:
    timeout = 30.0 if case.kind == "timeout" else None
    if impl == "pyssl":
        ctx = ssl.create_default_context(cafile=str(sslports.TEST_PEM))
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(timeout)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            with tls.makefile("rb") as rf, tls.makefile("wb") as wf:
                took = _timed(case, rf if case.what == "read" else wf, count)
                if case.what == "write":
                    rf.read(1)
            try:
                tls.sendall(b"k")
            except (OSError, ssl.SSLError):  # (ssl refuses to write after the peer's EOF)
                pass
        return took
    if case.kind == "stream":
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cin, cout = sslports.ports_to_ssl_ports(
            sock.makefile("rb"), sock.makefile("wb"), mode="connect", close_original=True
        )
        sock.close()  # (the makefile pair keeps the descriptor)
    elif case.kind == "wrap":
        sock = socket.create_connection(("127.0.0.1", port))
        cin, cout = sslports.ssl_wrap_socket(sock, mode="connect")
    else:
        cin, cout = sslports.ssl_connect("127.0.0.1", port)
    if timeout is not None:
        cin.settimeout(timeout)
        cout.settimeout(timeout)
    took = _timed(case, cin if case.what == "read" else cout, count)
    if case.what == "write":
        cin.read(1)
    cout.write(b"k")
    cout.flush()
    cin.close()
    cout.close()
    return took


async def _run_aio(impl: str, case: Case, port: int, count: int) -> float:
    rw: tuple[Any, Any]
    if impl == "pyssl":
        ctx = ssl.create_default_context(cafile=str(sslports.TEST_PEM))
        rw = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    else:
        rw = await aio.open_ssl_connection("127.0.0.1", port, "auto")
    start = time.perf_counter()
    await case.run(rw, count)
    took = (time.perf_counter() - start) / count
    if case.what == "write":
        await rw[0].readexactly(1)
    rw[1].write(b"k")
    await rw[1].drain()
    rw[1].close()
    try:
        await rw[1].wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass
    return took


def instructions(impl: str, name: str, counts: tuple[int, int]) -> float:
    """Instructions per call (callgrind, the whole process, two runs' difference)."""
    totals = []
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                 sys.executable, __file__, "--one", impl, name, str(count)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        found = re.search(r"Collected : (\d+)", out.stderr)
        assert found, out.stderr[-2000:]
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (counts[1] - counts[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every call count")
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", nargs=3, metavar=("IMPL", "CASE", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.list:
        print("\n".join(CASES))
        return
    if args.one:
        run(args.one[0], args.one[1], int(args.one[2]))
        return
    for name in args.cases.split(","):
        count = max(1, int(CASES[name].calls * args.scale))
        if args.instructions:
            counts = (count // 4, count)
            per = {impl: instructions(impl, name, counts) for impl in IMPLS}
            print(
                f"{name:20s} instructions per call  sslports {per['sslports']:10,.0f}"
                f"  ssl {per['pyssl']:10,.0f}  ratio {per['sslports'] / per['pyssl']:6.2f}",
                flush=True,
            )
            continue
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(args.rounds):
            for impl in IMPLS:
                times[impl].append(run(impl, name, count))
        ratios = [a / b for a, b in zip(times["sslports"], times["pyssl"])]
        print(
            f"{name:20s} us per call  sslports {statistics.median(times['sslports']) * 1e6:8.2f}"
            f"  ssl {statistics.median(times['pyssl']) * 1e6:8.2f}"
            f"  ratio median {statistics.median(ratios):6.2f}"
            f"  ({' '.join(f'{r:.2f}' for r in ratios)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
