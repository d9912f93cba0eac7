"""How much of a threaded echo server's work holds the GIL: sslports against Python's ssl.

    .venv/bin/python bench/gil_share.py [--impls sslports,pyssl] [--clients 2] [--seconds 3]

Issue 5 asks that a threaded sslports server scale with cores as a forked one does. A 2-core
machine cannot show that, so this measures what would stop it: the work a server thread does
with the GIL held, which no number of cores runs in parallel, and how often it takes the GIL.

1. callgrind (deterministic): the server end of 64 KiB echoes (bench/peer.py's ping-pong
   server reads 64 KiB and writes it back; the C client), two runs of different lengths, the
   difference per echo: user-space instructions by library, and how often the GIL is taken
   (calls of CPython's take_gil).
2. perf (time; skipped when perf is missing): the threaded echo server (bench/peer.py
   model=thread) with `--clients` C clients for `--seconds`; the CPU samples of its serving
   threads, by library.

In both, the interpreter (libpython) and the binding module (sslports' _fastport, ssl's _ssl)
run only with the GIL held; OpenSSL, our pump (_native, which CFFI and the fast path call with
the GIL released) and the kernel run without it; libc serves both (the pump's copies, the
interpreter's malloc) and is shown apart. The kernel's work (the system calls, the loopback)
is not in the instruction counts and runs without the GIL, so there the GIL's share of the
instructions overstates its share of the time; perf's samples include the kernel.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import OPENSSL_CONF, SUITE  # noqa: E402
from instructions import PEM, callgrind, exclusive_by_function  # noqa: E402
from run_all import build_ref, peer_cmd  # noqa: E402

ECHO = 65536
# The libraries whose code runs only with the GIL held: the interpreter and the binding module
# (sslports' C fast path; Python's ssl's _ssl). OpenSSL, our pump (_native, which CFFI and the
# fast path call with the GIL released) and the kernel run without it; libc serves both sides
# (the pump's copies, the interpreter's malloc) and is shown apart.
HELD_LIBS = {"sslports": ("libpython", "_fastport"), "pyssl": ("libpython", "_ssl.")}
NAMED = re.compile(r"c?fn=\((\d+)\)(?: (\S+))?")


def gil_acquisitions(path: Path) -> int:
    """Calls of CPython's take_gil in a callgrind profile (its format names a function once,
    `cfn=(id) name`, then `cfn=(id)`; `calls=N ...` follows the `cfn=` of the function called)."""
    names: dict[str, str] = {}
    callee = ""
    total = 0
    with path.open() as f:
        for line in f:
            m = NAMED.match(line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                callee = names.get(m.group(1), "")
            elif line.startswith("calls=") and callee == "take_gil":
                total += int(line[6:].split()[0])
    return total


def share_line(impl: str, by_lib: dict[str, float], unit: str) -> str:
    total = sum(by_lib.values())
    held = sum(v for k, v in by_lib.items() if k.startswith(HELD_LIBS[impl]))
    libc = sum(v for k, v in by_lib.items() if k.startswith("libc."))
    return (
        f"{held:,.1f} {unit} with the GIL held ({100 * held / total:.2f} %), libc {libc:,.1f}"
        f" ({100 * libc / total:.1f} %), of {total:,.1f}"
    )


def instructions(impl: str, env: dict[str, str], tmp: str) -> tuple[dict[str, float], float]:
    """(user-space instructions per echo by library, GIL acquisitions per echo)."""
    small, large = 100, 500
    runs, takes = [], []
    for count in (small, large):
        opts = {"mode": "pingpong", "wbuf": ECHO, "rbuf": ECHO, "count": count}
        out = Path(tmp, f"{impl}.{count}.out")
        callgrind(impl, "server", opts, out, env, {}, (PEM, PEM))
        runs.append(exclusive_by_function(out))
        takes.append(gil_acquisitions(out))
    by_lib: dict[str, float] = collections.defaultdict(float)
    for key in set(runs[0]) | set(runs[1]):
        by_lib[key.split(":", 1)[0]] += (runs[1][key] - runs[0][key]) / (large - small)
    return by_lib, (takes[1] - takes[0]) / (large - small)


def perf_samples(
    impl: str, clients: int, seconds: float, env: dict[str, str], tmp: str
) -> tuple[int, collections.Counter[str]]:
    """(echoes the clients made, CPU samples of the serving threads by library)."""
    data = Path(tmp, f"{impl}.perf")
    server_cmd = peer_cmd(
        impl,
        "server",
        {"cert": PEM, "key": PEM, "suites": SUITE, "conns": clients, "model": "thread"},
    )
    server = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-o", str(data), *server_cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert server.stdout is not None
    port = server.stdout.readline().split()[1]
    start = time.monotonic() + 0.3
    client = peer_cmd(
        "c",
        "client",
        {
            "ca": PEM,
            "suites": SUITE,
            "port": port,
            "mode": "echo",
            "wbuf": ECHO,
            "rbuf": ECHO,
            "duration": seconds,
            "start_at": f"{start:.6f}",
        },
    )
    echoes = 0
    try:
        procs = [
            subprocess.Popen(client, stdout=subprocess.PIPE, env=env, text=True)
            for _ in range(clients)
        ]
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    echoes += int(json.loads(line[7:])["bytes"]) // ECHO
        server.wait(60)
    finally:
        if server.poll() is None:  # (a client failed: the server still waits for it)
            server.kill()
            server.wait()
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,tid,ip,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    by_lib: collections.Counter[str] = collections.Counter()
    for line in script.splitlines():
        fields = line.split()  # "pid/tid ip (dso)"
        if len(fields) < 2 or "/" not in fields[0]:
            continue
        pid, tid = fields[0].split("/", 1)
        if pid != tid:  # (the main thread: start-up, accept)
            by_lib[fields[-1].strip("()").rsplit("/", 1)[-1]] += 1
    return echoes, by_lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--impls", default="sslports,pyssl")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        sys.exit("gil_share.py: needs valgrind (apt-get install valgrind)")
    build_ref()
    impls = a.impls.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "openssl.cnf")
        conf.write_text(OPENSSL_CONF)
        env = {**os.environ, "OPENSSL_CONF": str(conf)}
        print("Per 64 KiB echo, the server end (callgrind, user-space instructions):")
        for impl in impls:
            by_lib, takes = instructions(impl, env, tmp)
            print(f"  {impl:<9} {share_line(impl, by_lib, 'instr')}; GIL taken {takes:.1f} times")
        if shutil.which("perf") is None:
            print("perf is not installed: no time shares")
            return
        print(
            f"\nThreaded echo server, {a.clients} C clients, {a.seconds:g} s"
            " (perf, the serving threads):"
        )
        for impl in impls:
            echoes, samples = perf_samples(impl, a.clients, a.seconds, env, tmp)
            if not samples:
                print(f"  {impl}: no samples (perf record needs perf_event_paranoid <= 1 or root)")
                continue
            seconds = sum(samples.values()) / 10000  # (-F 10000)
            us = {k: v / 10000 / max(echoes, 1) * 1e6 for k, v in samples.items()}
            print(
                f"  {impl:<9} {seconds:.2f} s of CPU for {echoes:,} echoes:"
                f" {share_line(impl, us, 'us')} per echo"
            )


if __name__ == "__main__":
    main()
