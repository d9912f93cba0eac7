"""readline() per line: sslports' socket ports against Python's ssl (`SSLSocket.makefile("rb")`).

    .venv/bin/python bench/readline.py                    # 16, 80, 1000-byte lines, 5 rounds
    .venv/bin/python bench/readline.py --sizes 16 --rounds 9
    .venv/bin/python bench/readline.py --instructions     # callgrind: instructions per line

A server thread writes 4 MiB of equal lines at once; the client reads them with readline().
Both ends live in one process over 127.0.0.1 (the server is idle while the client reads: its
write went out before). Wall clock: the implementations alternate within each round, and the
ratio of each round is printed with their median (this 2-core VM is noisy: compare ratios).
--instructions runs each implementation under callgrind with two line counts; the difference
divided by the extra lines is the cost of one line, start-up and handshake cancelled out.
Not part of run_all.py: line protocols are no target of issue 5, but they are what many
services read (HTTP headers, SMTP, Redis).
"""

from __future__ import annotations

import argparse
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
from typing import Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
import sslports  # noqa: E402

IMPLS = ("sslports", "pyssl")


def run(impl: str, line_len: int, count: int) -> float:
    """Seconds per line for `count` readline() calls of `line_len`-byte lines."""
    line = b"x" * (line_len - 1) + b"\n"
    if impl == "sslports":
        ctx = sslports.ssl_make_server_context(
            private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM
        )
        with sslports.ssl_listen(0, 5, True, "127.0.0.1", ctx) as listener:
            port = sslports.ssl_addresses(listener, True)[1]

            def serve() -> None:
                sin, sout = sslports.ssl_accept(listener)
                sout.write(line * count)
                sout.flush()
                sin.read(1)
                sin.close()
                sout.close()

            server = threading.Thread(target=serve)
            server.start()
            cin, cout = sslports.ssl_connect("127.0.0.1", port)
            took = _read_lines(cin.readline, count)
            cout.write(b"k")
            cout.flush()
            server.join()
            cin.close()
            cout.close()
        return took
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(sslports.TEST_PEM)
    client_ctx = ssl.create_default_context(cafile=str(sslports.TEST_PEM))
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]

        def serve_ssl() -> None:
            conn, _ = listening.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(line * count)
                tls.recv(1)

        server = threading.Thread(target=serve_ssl)
        server.start()
        raw = socket.create_connection(("127.0.0.1", port))
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            with tls.makefile("rb") as reader:
                took = _read_lines(reader.readline, count)
            tls.sendall(b"k")
        server.join()
    return took


def _read_lines(readline: Callable[[], bytes], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        readline()
    return (time.perf_counter() - start) / count


def instructions(impl: str, line_len: int, counts: tuple[int, int]) -> float:
    """Instructions per line (callgrind, the whole process, two runs' difference)."""
    totals = []
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                 sys.executable, __file__, "--one", impl, str(line_len), str(count)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        found = re.search(r"Collected : (\d+)", out.stderr)
        assert found, out.stderr[-2000:]
        totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (counts[1] - counts[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="16,80,1000", help="line lengths in bytes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--total", type=int, default=4 << 20, help="bytes of lines per run")
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--one", nargs=3, metavar=("IMPL", "LEN", "COUNT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run(args.one[0], int(args.one[1]), int(args.one[2]))
        return
    for size in (int(s) for s in args.sizes.split(",")):
        if args.instructions:
            counts = (10000, 30000)
            per = {impl: instructions(impl, size, counts) for impl in IMPLS}
            print(
                f"{size:5d}-byte lines: instructions per line  sslports {per['sslports']:,.0f}"
                f"  ssl {per['pyssl']:,.0f}  ratio {per['sslports'] / per['pyssl']:.2f}"
            )
            continue
        count = max(1, args.total // size)
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(args.rounds):
            for impl in IMPLS:
                times[impl].append(run(impl, size, count))
        ratios = [a / b for a, b in zip(times["sslports"], times["pyssl"])]
        print(
            f"{size:5d}-byte lines x {count}: us per line (median)"
            f"  sslports {statistics.median(times['sslports']) * 1e6:.2f}"
            f"  ssl {statistics.median(times['pyssl']) * 1e6:.2f}"
            f"  time ratio per round {' '.join(f'{r:.2f}' for r in ratios)}"
            f"  median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
