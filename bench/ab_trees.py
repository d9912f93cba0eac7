"""Paired bulk runs of two sslports source trees: which engine moves bytes faster.

    git worktree add /tmp/old <commit> && (cd /tmp/old && ../main/.venv/bin/python setup.py -q
        build_ext --inplace)
    .venv/bin/python bench/ab_trees.py /tmp/old/src src --mode down --buf 16384 --rounds 8

Both ends of each run come from one tree (PYTHONPATH), bench/peer.py drives them, and the two
trees alternate round by round (old new, new old, ...), so the machine's drift falls on both
alike. Prints MB/s and the CPU seconds of each end (data phase) per tree, and the per-round
ratio of throughput new / old with its median. Separate runs of run_all.py on this shared VM
move by 20-30 %; paired like this, a change of ~10 % shows.
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


def one_run(tree: str, mode: str, size: int, buf: int) -> tuple[float, float, float]:
    """(MB/s, client CPU s, server CPU s) of one connection, both ends from `tree`."""
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
    server = subprocess.Popen(
        peer_cmd("sslports", "server", {"cert": PEM, "key": PEM, "suites": SUITE, "conns": 1}),
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    opts = {"ca": PEM, "suites": SUITE, "mode": mode, "size": size, "wbuf": buf, "rbuf": buf,
            "port": port}  # fmt: skip
    client = subprocess.run(
        peer_cmd("sslports", "client", opts),
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )  # fmt: skip
    c = _result_line(client.stdout, "client")
    s = _result_line(server.communicate(timeout=60)[0], "server")
    return size / c["wall"] / 1e6, float(c["cpu"]), float(s["data_cpu"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="the first tree's src directory")
    ap.add_argument("new", help="the second tree's src directory")
    ap.add_argument("--mode", choices=("up", "down"), default="up")
    ap.add_argument("--buf", type=int, default=16384, help="write and read size")
    ap.add_argument("--size", type=int, default=512 << 20, help="bytes per run")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {"old": [], "new": []}
    trees = {"old": args.old, "new": args.new}
    for r in range(args.rounds):
        for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
            runs[name].append(one_run(trees[name], args.mode, args.size, args.buf))
    print(f"{args.mode}, {args.buf}-byte writes and reads, {args.size >> 20} MiB x {args.rounds}")
    for name, rows in runs.items():
        mbs = [row[0] for row in rows]
        print(
            f"{name} ({trees[name]}): {statistics.median(mbs):.0f} MB/s, CPU s client "
            f"{statistics.median(row[1] for row in rows):.3f} server "
            f"{statistics.median(row[2] for row in rows):.3f}; rounds "
            + " ".join(f"{x:.0f}" for x in mbs)
        )
    ratios = [new[0] / old[0] for new, old in zip(runs["new"], runs["old"])]
    print(
        "new / old MB/s per round: "
        + " ".join(f"{x:.2f}" for x in ratios)
        + f"; median {statistics.median(ratios):.2f}"
    )


if __name__ == "__main__":
    main()
