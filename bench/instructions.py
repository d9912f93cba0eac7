"""User-space instructions per operation of one end, by library (callgrind, deterministic).

    .venv/bin/python bench/instructions.py pingpong            # per 1 KiB round trip
    .venv/bin/python bench/instructions.py up 16384            # per 16 KiB write (client sends)
    .venv/bin/python bench/instructions.py down 65536          # per 64 KiB read (client reads)
    .venv/bin/python bench/instructions.py resumed             # per resumed connection
    .venv/bin/python bench/instructions.py full --role server  # per full handshake, server end
    options: --impls sslports,pyssl,c  --top 12  --role client|server  --cert rsa|ecdsa

Timings on a shared 2-core VM move by tens of percent between runs; instruction counts do not.
Each implementation's end (bench/peer.py or bench/c/sp_ref; the client unless --role server)
runs twice under callgrind against the C reference as the other end, with a small and a large
amount of work; the difference divided by the extra operations is the cost of one operation,
start-up (and for data, the handshake) cancelled out. Kernel time (system calls, the loopback)
is not counted: compare `strace -c` for that. Handshakes: RSA-2048 (`test.pem`; `--cert ecdsa`:
a P-256 certificate made as run_all.py makes it), no tickets for `full`, OpenSSL's two for
`resumed`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import OPENSSL_CONF, SUITE  # noqa: E402
from run_all import ROOT, build_ref, make_ecdsa, peer_cmd  # noqa: E402

PEM = str(ROOT / "src" / "sslports" / "test.pem")
LINE = re.compile(r"\s*([\d,]+) \([\s\d.]+%\)\s+(\S.*)")


def callgrind(
    impl: str,
    role: str,
    opts: dict[str, object],
    out: Path,
    env: dict[str, str],
    server_opts: dict[str, object],
    cert: tuple[str, str],
) -> None:
    """One run with `impl` as `role` under callgrind, the other end the C reference;
    `cert`: the server's (certificate, key), the certificate also the client's root."""
    server_opts = {"cert": cert[0], "key": cert[1], "suites": SUITE, **server_opts}
    measured = role == "server"
    cmd = peer_cmd(impl if measured else "c", "server", server_opts)
    if measured:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
    server = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("PORT "):
            raise SystemExit(f"instructions.py: the server said {line!r}")
        port = line.split()[1]
        client = peer_cmd(
            "c" if measured else impl,
            "client",
            {"ca": cert[0], "suites": SUITE, **opts, "port": port},
        )
        if not measured:
            client = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *client]
        subprocess.run(
            client, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server.wait(120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def exclusive_by_function(path: Path) -> collections.Counter[str]:
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = LINE.match(line)
        if not m or "=>" in line or "PROGRAM TOTALS" in line or "events annotated" in line:
            continue
        name = m.group(2)
        lib = name.rsplit("[", 1)[-1].rstrip("]").rsplit("/", 1)[-1] if "[" in name else "other"
        func = name.split(" [")[0].rsplit(":", 1)[-1]
        counts[f"{lib}:{func}"] += int(m.group(1).replace(",", ""))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["pingpong", "up", "down", "resumed", "full"])
    ap.add_argument("buf", nargs="?", type=int, default=16384, help="bulk: bytes per call")
    ap.add_argument("--impls", default="sslports,pyssl,c")
    ap.add_argument(
        "--role",
        choices=["client", "server"],
        default="client",
        help="the end measured (the other is the C reference)",
    )
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--cert", choices=["rsa", "ecdsa"], default="rsa", help="the server's key")
    a = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        sys.exit("instructions.py: needs valgrind (apt-get install valgrind)")
    build_ref()
    env = {**os.environ, "OPENSSL_CONF": ""}
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "openssl.cnf")
        conf.write_text(OPENSSL_CONF)
        env["OPENSSL_CONF"] = str(conf)
        cert = make_ecdsa(Path(tmp)) if a.cert == "ecdsa" else (PEM, PEM)
        server_opts: list[dict[str, object]] = [{}, {}]
        if a.mode in ("resumed", "full"):
            small, large = 50, 250
            ops = large - small
            tickets = 2 if a.mode == "resumed" else 0
            opts = {"mode": "hs", "resume": 1}
            sizes = [{"n": small}, {"n": large}]
            server_opts = [{"conns": n, "tickets": tickets} for n in (small, large)]
            what = f"{a.mode} connection"
        elif a.mode == "pingpong":
            small, large, ops = 1000, 5000, 4000
            opts = {"mode": "pingpong", "wbuf": 1024, "rbuf": 1024}
            sizes = [{"count": small}, {"count": large}]
            what = "round trip"
        else:
            small, large = 4 << 20, 20 << 20
            ops = (large - small) // a.buf
            opts = {"mode": a.mode, "wbuf": a.buf, "rbuf": a.buf}
            sizes = [{"size": small}, {"size": large}]
            what = f"{a.buf}-byte {'write' if a.mode == 'up' else 'read'}"
        for impl in a.impls.split(","):
            runs = []
            for i, extra in enumerate(sizes):
                out = Path(tmp, f"{impl}.{i}.out")
                callgrind(impl, a.role, {**opts, **extra}, out, env, server_opts[i], cert)
                runs.append(exclusive_by_function(out))
            diff = {k: (runs[1][k] - runs[0][k]) / ops for k in set(runs[0]) | set(runs[1])}
            by_lib: dict[str, float] = {}
            for key, v in diff.items():
                lib = key.split(":", 1)[0]
                by_lib[lib] = by_lib.get(lib, 0.0) + v
            print(f"\n{impl} {a.role}: {sum(diff.values()):,.0f} instructions per {what}")
            for lib, v in sorted(by_lib.items(), key=lambda kv: -kv[1])[:6]:
                print(f"  {v:9,.0f}  {lib}")
            for key, v in sorted(diff.items(), key=lambda kv: -kv[1])[: a.top]:
                print(f"      {v:9,.0f}  {key}")


if __name__ == "__main__":
    main()
