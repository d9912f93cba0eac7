"""The C reference with memory BIOs: does "fewer, larger system calls" beat the socket BIO here?

    .venv/bin/python bench/mem_bio.py                       # 256 MiB x 5 rounds, up and down
    .venv/bin/python bench/mem_bio.py --size 1073741824 --batch 65536,262144 --pair ""

Issue 5 sets the bulk target against C at 1.2x, saying that a C program pumping memory BIOs
reaches 1.25x the socket-BIO C program. bench/c/sp_ref's `bio=mem batch=N` is that program:
OpenSSL writes records into a memory BIO, and the program sends them once N bytes wait (or
before it waits to read), in one write(); it reads up to N bytes at a time into the read BIO
(one copy); `bio=pair` does the same through a BIO pair, reading into and writing from its
buffer in place (one copy fewer per byte read). Both ends of a run use the same variant. This
runs, interleaved round by round:

  c           sp_ref with OpenSSL's socket BIO (run_all.py's C reference)
  c-mem-N     sp_ref bio=mem batch=N, for each N of --batch
  c-pair-N    sp_ref bio=pair batch=N, for each N of --pair
  sslports    bench/peer.py impl=sslports

and prints MB/s and the CPU seconds per GiB of both ends, medians over the rounds, with the
median per-round ratio to `c`. bench/README.md section 3 has the results.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SUITE  # noqa: E402
from run_all import Runner, build_ref, peer_cmd  # noqa: E402

PEM = str(HERE.parent / "src" / "sslports" / "test.pem")
GiB = 1 << 30


def commands(variant: str, client: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(server, client) commands of one variant."""
    server: dict[str, Any] = {"cert": PEM, "key": PEM, "suites": SUITE}
    impl, extra = variant, {}
    if variant.startswith(("c-mem-", "c-pair-")):
        _c, bio, batch = variant.split("-")
        impl, extra = "c", {"bio": bio, "batch": batch}
    server_cmd = peer_cmd(impl, "server", {**server, **extra})
    return server_cmd, peer_cmd(impl, "client", {**client, **extra})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256 << 20, help="bytes per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bufs", default="65536,16384", help="application buffer sizes")
    ap.add_argument("--batch", default="32768,65536", help="bio=mem I/O sizes, comma list")
    ap.add_argument("--pair", default="32768,65536", help="bio=pair I/O sizes ('' for none)")
    ap.add_argument("--modes", default="up,down")
    args = ap.parse_args()
    build_ref()
    runner = Runner(dict(os.environ), timeout=600, verbose=False)
    variants = ["c", *(f"c-mem-{b}" for b in args.batch.split(",") if b)]
    variants += [*(f"c-pair-{b}" for b in args.pair.split(",") if b), "sslports"]
    gib = args.size / GiB
    for mode in args.modes.split(","):
        for buf in (int(b) for b in args.bufs.split(",")):
            client = {"ca": PEM, "suites": SUITE, "mode": mode, "size": args.size}
            client.update(wbuf=buf, rbuf=buf)
            runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            for _ in range(args.rounds):
                for v in variants:
                    server_cmd, client_cmd = commands(v, client)
                    srv, (cli,) = runner.pair(server_cmd, [client_cmd])
                    cpu = (cli["cpu"] + srv["data_cpu"]) / gib
                    runs[v].append((args.size / cli["wall"] / 1e6, cpu))
            print(f"\n{mode}, {buf}-byte writes and reads, {args.size >> 20} MiB x {args.rounds}")
            print(f"  {'variant':<14} {'MB/s':>7} {'CPU s/GiB':>10}   vs c: {'MB/s':>5} {'CPU':>5}")
            for v in variants:
                rate = statistics.median(r for r, _ in runs[v])
                cpu = statistics.median(c for _, c in runs[v])
                r_rate = statistics.median(a[0] / b[0] for a, b in zip(runs[v], runs["c"]))
                r_cpu = statistics.median(a[1] / b[1] for a, b in zip(runs[v], runs["c"]))
                print(f"  {v:<14} {rate:7.0f} {cpu:10.3f}         {r_rate:5.2f} {r_cpu:5.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
