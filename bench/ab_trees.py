"""Paired runs of two sslports source trees: which engine moves bytes (or connects) faster.

    git worktree add /tmp/old <commit> && (cd /tmp/old && ../main/.venv/bin/python setup.py -q
        build_ext --inplace)
    .venv/bin/python bench/ab_trees.py /tmp/old/src src --mode down --buf 16384 --rounds 8
    .venv/bin/python bench/ab_trees.py /tmp/old/src src --mode resumed --conns 400

Both ends of each run come from one tree (PYTHONPATH), bench/peer.py drives them, and the two
trees alternate round by round (old new, new old, ...), so the machine's drift falls on both
alike. Prints MB/s (bulk: up, down) or connections per second (handshakes, RSA-2048: full,
resumed) and the CPU seconds of each end per tree (bulk: the data phase), and the per-round
ratio new / old with its median. Separate runs of run_all.py on this shared VM move by 20-30 %;
paired like this, a change of ~10 % shows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SUITE  # noqa: E402
from run_all import _result_line, peer_cmd  # noqa: E402

PEM = str(HERE.parent / "src" / "sslports" / "test.pem")


HANDSHAKES = ("full", "resumed")


def one_run(tree: str, mode: str, size: int, buf: int, conns: int) -> tuple[float, float, float]:
    """(MB/s or connections/s, client CPU s, server CPU s) of one run, both ends from `tree`."""
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    hs = mode in HANDSHAKES
    server_opts = {"cert": PEM, "key": PEM, "suites": SUITE, "conns": conns if hs else 1}
    if hs:  # full: no tickets, so nobody resumes (as run_all.py measures it)
        server_opts["tickets"] = 2 if mode == "resumed" else 0
    server = subprocess.Popen(
        peer_cmd("sslports", "server", server_opts), stdout=subprocess.PIPE, text=True, env=env
    )
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    opts: dict[str, object] = {"ca": PEM, "suites": SUITE, "port": port}
    if hs:
        opts.update(mode="hs", n=conns, resume=int(mode == "resumed"))
    else:
        opts.update(mode=mode, size=size, wbuf=buf, rbuf=buf)
    client = subprocess.run(
        peer_cmd("sslports", "client", opts),
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )  # fmt: skip
    c = _result_line(client.stdout, "client")
    s = _result_line(server.communicate(timeout=60)[0], "server")
    if hs:
        return conns / c["wall"], float(c["cpu"]), float(s["cpu"])
    return size / c["wall"] / 1e6, float(c["cpu"]), float(s["data_cpu"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="the first tree's src directory")
    ap.add_argument("new", help="the second tree's src directory")
    ap.add_argument("--mode", choices=("up", "down", *HANDSHAKES), default="up")
    ap.add_argument("--buf", type=int, default=16384, help="write and read size")
    ap.add_argument("--size", type=int, default=512 << 20, help="bytes per run")
    ap.add_argument("--conns", type=int, default=300, help="connections per handshake run")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {"old": [], "new": []}
    trees = {"old": args.old, "new": args.new}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            runs[name].append(one_run(trees[name], args.mode, args.size, args.buf, args.conns))
    if args.mode in HANDSHAKES:
        unit = "conns/s"
        print(f"{args.mode} handshakes, RSA-2048, {args.conns} connections x {args.rounds}")
    else:
        unit = "MB/s"
        size = f"{args.size >> 20} MiB x {args.rounds}"
        print(f"{args.mode}, {args.buf}-byte writes and reads, {size}")
    for name, rows in runs.items():
        mbs = [row[0] for row in rows]
        print(
            f"{name} ({trees[name]}): {statistics.median(mbs):.0f} {unit}, CPU s client "
            f"{statistics.median(row[1] for row in rows):.3f} server "
            f"{statistics.median(row[2] for row in rows):.3f}; rounds "
            + " ".join(f"{x:.0f}" for x in mbs)
        )
    ratios = [new[0] / old[0] for new, old in zip(runs["new"], runs["old"])]
    print(
        f"new / old {unit} per round: "
        + " ".join(f"{x:.2f}" for x in ratios)
        + f"; median {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
