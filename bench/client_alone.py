"""One client process alone against the C server: what a Python process costs per connection.

    .venv/bin/python bench/client_alone.py                 # 600 resumed connections x 5 rounds
    .venv/bin/python bench/client_alone.py -n 400 --full   # full handshakes (no tickets)

run_all.py's handshake rows pair each client with a server of its own implementation; here
every client faces the same C server (bench/c/sp_ref), a fresh one per run, and the clients
alternate round by round:

  c         the C reference client (sp_ref client mode=hs)
  ctypes    a Python process whose connections are C's: bench/c/conn_one.c through ctypes,
            one call per connection (what OpenSSL and the kernel cost, inside an interpreter)
  sslports  bench/peer.py impl=sslports
  pyssl     bench/peer.py impl=pyssl (Python's ssl, resuming with session=)

Prints each client's CPU per connection (its own getrusage, user + system) and connections
per second, medians over the rounds, and the ratios to C. If `ctypes` costs what `c` does, a
Python process by itself adds nothing per connection, and the gap between `sslports` and `c`
is the library's own work (bench/README.md, section 2).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import OPENSSL_CONF, SUITE, pack_header  # noqa: E402
from run_all import PY, ROOT, _result_line, build_ref, peer_cmd  # noqa: E402

PEM = str(ROOT / "src" / "sslports" / "test.pem")
CLIENTS = ("c", "ctypes", "sslports", "pyssl")


def ctypes_client(opts: dict[str, str]) -> None:
    """The `ctypes` client: conn_one() n times, then a RESULT line like sp_ref's."""
    from conn_costs import build_lib

    lib = ctypes.CDLL(str(build_lib()))
    if not lib.conn_one_init(opts["ca"].encode()):
        raise SystemExit("conn_one_init failed")
    n, port, resume = int(opts["n"]), int(opts["port"]), int(opts["resume"])
    header = pack_header("hs", 0, 0, 0, 0, 0)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    reused = 0
    for _ in range(n):
        status = lib.conn_one(port, resume, header)
        if not status:
            raise SystemExit("the C connection failed")
        reused += status == 2
    t1, r1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    print("RESULT " + json.dumps({"wall": t1 - t0, "cpu": cpu, "resumed": reused}), flush=True)


def one_run(name: str, n: int, resume: bool, env: dict[str, str]) -> tuple[float, float]:
    """(client CPU ms per connection, connections per second) of one run of client `name`."""
    server = subprocess.Popen(
        [*peer_cmd("c", "server", {"cert": PEM, "key": PEM, "suites": SUITE}),
         f"conns={n}", f"tickets={2 if resume else 0}"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = server.stdout.readline().split()[1]
        opts = {"ca": PEM, "suites": SUITE, "mode": "hs", "n": n, "resume": int(resume)}
        if name == "ctypes":
            cmd = [PY, __file__, "--ctypes-client", *(f"{k}={v}" for k, v in opts.items())]
        else:
            cmd = peer_cmd(name, "client", opts)
        out = subprocess.run(
            [*cmd, f"port={port}"], capture_output=True, text=True, check=True, env=env
        ).stdout
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    result = _result_line(out, name)
    return result["cpu"] / n * 1e3, n / result["wall"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--ctypes-client":
        ctypes_client(dict(arg.split("=", 1) for arg in sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=600, help="connections per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--full", action="store_true", help="full handshakes (no tickets)")
    ap.add_argument("--clients", default=",".join(CLIENTS))
    args = ap.parse_args()
    build_ref()
    names = args.clients.split(",")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "openssl.cnf")  # Python's ssl: the same TLS 1.3 suite (run_all.py)
        conf.write_text(OPENSSL_CONF)
        env = dict(os.environ, OPENSSL_CONF=str(conf))
        for _ in range(args.rounds):
            for name in names:
                runs[name].append(one_run(name, args.n, not args.full, env))
    kind = "full" if args.full else "resumed"
    print(f"{kind} connections, each client alone against the C server, {args.n} x {args.rounds}")
    base_cpu = statistics.median(cpu for cpu, _ in runs[names[0]])
    base_rate = statistics.median(rate for _, rate in runs[names[0]])
    print(
        f"{'client':<9} {'CPU ms/conn':>11} {'conns/s':>8}   {'CPU':>5} {'rate':>5}  vs {names[0]}"
    )
    for name in names:
        cpu = statistics.median(c for c, _ in runs[name])
        rate = statistics.median(r for _, r in runs[name])
        print(f"{name:<9} {cpu:11.3f} {rate:8.0f}   {cpu / base_cpu:5.2f} {rate / base_rate:5.2f}")


if __name__ == "__main__":
    main()
