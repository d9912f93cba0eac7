"""The sslports benchmark suite (issue 5): `make bench`, or `.venv/bin/python bench/run_all.py`.

Every case runs three implementations side by side, interleaved A B C A B C ... in one run:

    A  sslports      bench/peer.py impl=sslports   (ports over the C pump)
    B  python-ssl    bench/peer.py impl=pyssl      (ssl.SSLSocket, blocking)
    C  c-ref         bench/c/sp_ref                (plain C, OpenSSL socket BIO via SSL_set_fd)

Each measurement is a fresh server process and a fresh client process over 127.0.0.1 (so the
CPU of each end is its own getrusage), speaking the protocol in bench/common.py. Everything
prints medians, min/max and the per-round ratios; the closing table checks the issue's targets
on the median of the per-round ratios.

Options: --quick (3 rounds, small sizes), --rounds, --size, --small-size, --only, --readme
(rewrite the results section of bench/README.md), --check (interop matrix first). See --help.
"""

from __future__ import annotations

import argparse
import compileall
import datetime
import functools
import json
import os
import platform
import select
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from common import OPENSSL_CONF, SUITE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_SRC = HERE / "c" / "sp_ref.c"
REF = HERE / "c" / "sp_ref"
OUT = HERE / "out"
PY = sys.executable

MiB = 1 << 20
GiB = 1 << 30
LABELS = {
    "sslports": "A sslports",
    "pyssl": "B python-ssl",
    "c": "C c-ref",
    "sslports-thread": "A sslports threaded",
    "pyssl-thread": "B python-ssl threaded",
    "pyssl-fork": "C python-ssl fork/conn",
}
TRIO = ("sslports", "pyssl", "c")
SERVERS = ("sslports-thread", "pyssl-thread", "pyssl-fork")


class BenchError(RuntimeError):
    pass


# -- setup -----------------------------------------------------------------------------------


def build_ref() -> Path:
    """Build bench/c/sp_ref when missing or older than its source."""
    if REF.exists() and REF.stat().st_mtime >= REF_SRC.stat().st_mtime:
        return REF
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(REF), str(REF_SRC), "-lssl", "-lcrypto"]
    print("building:", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return REF


def make_ecdsa(directory: Path) -> tuple[str, str]:
    """An ECDSA P-256 key and self-signed certificate for localhost / 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = directory / "ecdsa-key.pem"
    cert_path = directory / "ecdsa-cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


# -- running one measurement ------------------------------------------------------------------


def peer_cmd(impl: str, role: str, opts: dict[str, Any]) -> list[str]:
    kv = [f"{k}={v}" for k, v in opts.items()]
    if impl == "c":
        return [str(REF), role, *kv]
    return [PY, str(HERE / "peer.py"), role, f"impl={impl}", *kv]


def _result_line(text: str, what: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise BenchError(f"{what}: no RESULT line in output {text[-500:]!r}")


class Runner:
    def __init__(self, env: dict[str, str], timeout: float, verbose: bool) -> None:
        self.env = env
        self.timeout = timeout
        self.verbose = verbose

    def pair(
        self, server: list[str], clients: list[list[str]]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Start the server, then the clients (port=N added), and collect every RESULT."""
        if self.verbose:
            print("   $", shlex.join(server), flush=True)
        with tempfile.TemporaryFile() as errs:
            return self._pair(server, clients, errs)

    def _pair(
        self, server: list[str], clients: list[list[str]], errs: Any
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        srv = subprocess.Popen(
            server, stdout=subprocess.PIPE, stderr=errs, env=self.env, text=True, cwd=ROOT
        )
        procs: list[subprocess.Popen[str]] = []
        try:
            port = self._read_port(srv, errs)
            for cmd in clients:
                full = [*cmd, f"port={port}"]
                if self.verbose:
                    print("   $", shlex.join(full), flush=True)
                procs.append(
                    subprocess.Popen(
                        full,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=self.env,
                        text=True,
                        cwd=ROOT,
                    )
                )
            deadline = time.monotonic() + self.timeout
            results = []
            for p in procs:
                out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                if p.returncode != 0:
                    raise BenchError(f"client failed ({p.returncode}): {err.strip()[-800:]}")
                results.append(_result_line(out, "client"))
            out, _ = srv.communicate(timeout=max(5.0, deadline - time.monotonic()))
            if srv.returncode != 0:
                errs.seek(0)
                raise BenchError(f"server failed ({srv.returncode}): {errs.read().decode()[-800:]}")
            return _result_line(out, "server"), results
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"timed out after {self.timeout:.0f}s: {shlex.join(server)}") from exc
        finally:
            for p in [*procs, srv]:
                if p.poll() is None:
                    p.kill()
                    p.wait()

    def _read_port(self, srv: subprocess.Popen[str], errs: Any) -> int:
        assert srv.stdout is not None
        ready, _, _ = select.select([srv.stdout], [], [], 30.0)
        line = srv.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            srv.kill()
            srv.wait()
            errs.seek(0)
            raise BenchError(f"server did not start: {line!r} {errs.read().decode()[-800:]}")
        return int(line.split()[1])


# -- statistics -------------------------------------------------------------------------------


class Case:
    """One benchmark case: per implementation, per round, a dict of metrics."""

    def __init__(self, scenario: str, name: str, impls: tuple[str, ...], metrics: list[str]):
        self.scenario = scenario
        self.name = name
        self.impls = impls
        self.metrics = metrics  # the first is the headline
        self.rounds: dict[str, list[dict[str, Optional[float]]]] = {i: [] for i in impls}
        self.notes: list[str] = []

    def values(self, impl: str, metric: str) -> list[float]:
        return [v for r in self.rounds[impl] if (v := r.get(metric)) is not None]

    def median(self, impl: str, metric: str) -> Optional[float]:
        vals = self.values(impl, metric)
        return statistics.median(vals) if vals else None

    def ratios(self, a: str, b: str, metric: str) -> list[float]:
        out = []
        for ra, rb in zip(self.rounds[a], self.rounds[b]):
            va, vb = ra.get(metric), rb.get(metric)
            if va is not None and vb:
                out.append(va / vb)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "metrics": self.metrics,
            "rounds": self.rounds,
            "notes": self.notes,
        }


def fmt(v: Optional[float], metric: str = "") -> str:
    if v is None:
        return "n/a"
    if metric.startswith("B/conn"):
        return f"{v / 1024:.1f}K"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def print_case(case: Case) -> None:
    print(f"\n## {case.name}")
    for metric in case.metrics:
        print(f"  {metric:<22} {'median':>10} {'min':>10} {'max':>10}   rounds")
        for impl in case.impls:
            vals = case.values(impl, metric)
            med = statistics.median(vals) if vals else None
            lo = min(vals) if vals else None
            hi = max(vals) if vals else None
            rounds = " ".join(fmt(v, metric) for v in vals) or "n/a"
            print(
                f"  {LABELS[impl]:<22} {fmt(med, metric):>10} {fmt(lo, metric):>10} "
                f"{fmt(hi, metric):>10}   {rounds}"
            )
        a = case.impls[0]
        for b in case.impls[1:] if not metric.endswith("%") else ():
            rs = case.ratios(a, b, metric)
            if rs:
                per = " ".join(f"{r:.2f}" for r in rs)
                print(f"    ratio {a}/{b}: median {statistics.median(rs):.2f}  per round: {per}")
    for note in case.notes:
        print(f"  note: {note}")
    sys.stdout.flush()


# -- scenarios --------------------------------------------------------------------------------


class Bench:
    def __init__(
        self, args: argparse.Namespace, runner: Runner, certs: dict[str, tuple[str, str, str]]
    ) -> None:
        self.args = args
        self.runner = runner
        self.certs = certs  # name -> (cert, key, ca)
        self.cases: list[Case] = []

    def server_opts(self, cert: str = "rsa", **extra: Any) -> dict[str, Any]:
        c, k, _ca = self.certs[cert]
        return {"cert": c, "key": k, "suites": SUITE, **extra}

    def client_opts(self, cert: str = "rsa", **extra: Any) -> dict[str, Any]:
        return {"ca": self.certs[cert][2], "suites": SUITE, **extra}

    def interleave(self, case: Case, one: Callable[[str], dict[str, Optional[float]]]) -> Case:
        print(f"\n# {case.name}: {self.args.rounds} rounds of {' '.join(case.impls)}", flush=True)
        for r in range(self.args.rounds):
            for impl in case.impls:
                metrics = one(impl)
                case.rounds[impl].append(metrics)
                head = case.metrics[0]
                print(
                    f"  round {r + 1} {LABELS[impl]:<24} {head} = {fmt(metrics.get(head), head)}",
                    flush=True,
                )
        self.cases.append(case)
        print_case(case)
        return case

    def one_pair(
        self, impl: str, server: dict[str, Any], client: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        srv, (cli,) = self.runner.pair(
            peer_cmd(impl, "server", server), [peer_cmd(impl, "client", client)]
        )
        check_cipher(impl, srv, cli)
        return srv, cli

    # 1. bulk
    def bulk(self) -> None:
        a = self.args
        variants = [("64K", 65536, 65536, a.size), ("16K", 16384, 16384, a.size)]
        variants.append(("1K writes", 1024, 65536, a.small_size))
        metrics = ["MB/s", "CPU s/GiB both", "CPU s/GiB client", "CPU s/GiB server"]
        for direction in ("up", "down"):
            for label, wbuf, rbuf, size in variants:
                arrow = "client->server" if direction == "up" else "server->client"
                case = Case("bulk", f"bulk {arrow} {label} ({size // MiB} MiB)", TRIO, metrics)
                opts = self.client_opts(mode=direction, size=size, wbuf=wbuf, rbuf=rbuf)
                self.interleave(case, functools.partial(self._bulk_one, opts=opts))

    def _bulk_one(self, impl: str, opts: dict[str, Any]) -> dict[str, Optional[float]]:
        srv, cli = self.one_pair(impl, self.server_opts(), opts)
        size = opts["size"]
        gib = size / GiB
        return {
            "MB/s": size / cli["wall"] / 1e6,
            "CPU s/GiB both": (cli["cpu"] + srv["data_cpu"]) / gib,
            "CPU s/GiB client": cli["cpu"] / gib,
            "CPU s/GiB server": srv["data_cpu"] / gib,
        }

    # 2. ping-pong
    def pingpong(self) -> None:
        n = self.args.pingpong
        metrics = ["round trips/s", "CPU us/rt both"]
        case = Case("pingpong", f"ping-pong 1 KiB / 1 KiB x {n}", TRIO, metrics)
        self.interleave(case, self._pingpong_one)

    def _pingpong_one(self, impl: str) -> dict[str, Optional[float]]:
        n = self.args.pingpong
        opts = self.client_opts(mode="pingpong", count=n, wbuf=1024, rbuf=1024)
        srv, cli = self.one_pair(impl, self.server_opts(), opts)
        return {
            "round trips/s": n / cli["wall"],
            "CPU us/rt both": (cli["cpu"] + srv["data_cpu"]) / n * 1e6,
        }

    # 3. handshakes
    HS_METRICS = ("conns/s", "client CPU ms/conn", "server CPU ms/conn", "resumed %")

    def handshakes(self) -> None:
        n = self.args.handshakes
        reuse_api = sslports_has("ssl_session_reused")
        for cert, label in (("rsa", "RSA-2048"), ("ecdsa", "ECDSA P-256")):
            for resume in (False, True):
                kind = "resumed" if resume else "full"
                name = f"handshakes {kind} {label} x {n}"
                case = Case("handshake", name, TRIO, list(self.HS_METRICS))
                one = functools.partial(
                    self._hs_one, cert=cert, resume=resume, skip=resume and not reuse_api
                )
                self.interleave(case, one)
                if resume and not reuse_api:
                    case.notes.append("sslports has no ssl_session_reused: resumption n/a")
                for impl in TRIO:
                    pct = case.median(impl, "resumed %")
                    if resume and pct is not None and pct < 95:
                        case.notes.append(
                            f"{impl}: only {pct:.0f}% of the connections resumed (median)"
                        )

    def _hs_one(self, impl: str, cert: str, resume: bool, skip: bool) -> dict[str, Optional[float]]:
        if skip and impl == "sslports":
            return dict.fromkeys(self.HS_METRICS)
        n = self.args.handshakes
        # full: the server issues no tickets, so no client can resume (sslports resumes by
        # itself); resumed: OpenSSL's default of 2 tickets per connection.
        srv, cli = self.one_pair(
            impl,
            self.server_opts(cert, conns=n, tickets=2 if resume else 0),
            self.client_opts(cert, mode="hs", n=n, resume=int(resume)),
        )
        reused = cli["resumed"]
        return {
            "conns/s": n / cli["wall"],
            "client CPU ms/conn": cli["cpu"] / n * 1e3,
            "server CPU ms/conn": srv["cpu"] / n * 1e3,
            "resumed %": None if reused is None else 100.0 * reused / n,
        }

    # 4. memory
    def memory(self) -> None:
        n = self.args.idle
        metrics = ["B/conn both", "B/conn client", "B/conn server"]
        case = Case("memory", f"memory per idle connection, {n} open", TRIO, metrics)

        def one(impl: str) -> Any:
            srv, cli = self.one_pair(
                impl, self.server_opts(conns=n + 1), self.client_opts(mode="idle", n=n)
            )
            c = (cli["rss1"] - cli["rss0"]) / n
            s = (srv["rss1"] - srv["rss0"]) / n
            return {"B/conn both": c + s, "B/conn client": c, "B/conn server": s}

        self.interleave(case, one)

    # 5. concurrency
    def concurrency(self) -> None:
        dur = self.args.echo_seconds
        for nclients in self.args.clients:
            name = f"echo server, {nclients} C client process(es), 64 KiB echoes, {dur:g}s"
            case = Case("concurrency", name, SERVERS, ["MB/s aggregate", "server CPU s"])
            self.interleave(case, functools.partial(self._echo_one, nclients=nclients))

    def _echo_one(self, kind: str, nclients: int) -> dict[str, Optional[float]]:
        impl, model = kind.split("-")
        # The clients connect and handshake first, then all start at the same moment.
        start_at = time.monotonic() + 0.8 + 0.05 * nclients
        opts = self.client_opts(
            mode="echo", wbuf=65536, start_at=f"{start_at:.6f}", duration=self.args.echo_seconds
        )
        srv, clis = self.runner.pair(
            peer_cmd(impl, "server", self.server_opts(conns=nclients, model=model)),
            [peer_cmd("c", "client", opts)] * nclients,
        )
        total = sum(c["bytes"] for c in clis)
        span = max(c["wall"] for c in clis)
        return {"MB/s aggregate": total / span / 1e6, "server CPU s": srv["cpu"]}

    def find(self, scenario: str, prefix: str) -> Optional[Case]:
        for c in self.cases:
            if c.scenario == scenario and c.name.startswith(prefix):
                return c
        return None


def check_cipher(impl: str, srv: dict[str, Any], cli: dict[str, Any]) -> None:
    for r in (srv, cli):
        if r.get("cipher") and r["cipher"] not in (SUITE, "?"):
            raise BenchError(f"{impl}: negotiated {r['cipher']}, not {SUITE}")


def sslports_has(name: str) -> bool:
    out = subprocess.run(
        [PY, "-c", f"import sslports; print(hasattr(sslports, {name!r}))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() == "True"


# -- targets -----------------------------------------------------------------------------------


class Target:
    def __init__(
        self,
        label: str,
        scenario: str,
        prefix: str,
        metric: str,
        num: str,
        den: str,
        op: str,
        threshold: float,
        den_prefix: Optional[str] = None,
    ) -> None:
        self.label = label
        self.scenario = scenario
        self.prefix = prefix
        self.metric = metric
        self.num = num
        self.den = den
        self.op = op
        self.threshold = threshold
        self.den_prefix = den_prefix  # compare two cases (medians) instead of two impls

    def evaluate(self, bench: Bench) -> tuple[Optional[float], str]:
        case = bench.find(self.scenario, self.prefix)
        if case is None:
            return None, "skipped"
        if self.den_prefix is not None:
            other = bench.find(self.scenario, self.den_prefix)
            a = case.median(self.num, self.metric)
            b = other.median(self.den, self.metric) if other else None
            ratio = a / b if a is not None and b else None
        else:
            rs = case.ratios(self.num, self.den, self.metric)
            ratio = statistics.median(rs) if rs else None
        if ratio is None:
            return None, "n/a"
        ok = ratio >= self.threshold if self.op == ">=" else ratio <= self.threshold
        return ratio, "PASS" if ok else "MISS"


def targets(args: argparse.Namespace) -> list[Target]:
    t: list[Target] = []
    for d in ("client->server", "server->client"):
        for buf in ("64K", "16K"):
            p = f"bulk {d} {buf} "
            t.append(
                Target(
                    f"bulk {d} {buf}: MB/s vs python-ssl",
                    "bulk",
                    p,
                    "MB/s",
                    "sslports",
                    "pyssl",
                    ">=",
                    1.3,
                )
            )
            t.append(
                Target(f"bulk {d} {buf}: MB/s vs C", "bulk", p, "MB/s", "sslports", "c", ">=", 1.2)
            )
            t.append(
                Target(
                    f"bulk {d} {buf}: CPU s/GiB (both ends) vs C",
                    "bulk",
                    p,
                    "CPU s/GiB both",
                    "sslports",
                    "c",
                    "<=",
                    0.85,
                )
            )
        t.append(
            Target(
                f"bulk {d} 1K writes: MB/s vs C",
                "bulk",
                f"bulk {d} 1K writes",
                "MB/s",
                "sslports",
                "c",
                ">=",
                0.9,
            )
        )
    t.append(
        Target(
            "ping-pong: round trips/s vs python-ssl",
            "pingpong",
            "ping-pong",
            "round trips/s",
            "sslports",
            "pyssl",
            ">=",
            1.3,
        )
    )
    for label in ("RSA-2048", "ECDSA P-256"):
        t.append(
            Target(
                f"handshakes full {label}: conns/s vs python-ssl",
                "handshake",
                f"handshakes full {label}",
                "conns/s",
                "sslports",
                "pyssl",
                ">=",
                1.05,
            )
        )
        t.append(
            Target(
                f"handshakes resumed {label}: conns/s vs python-ssl resumed",
                "handshake",
                f"handshakes resumed {label}",
                "conns/s",
                "sslports",
                "pyssl",
                ">=",
                1.5,
            )
        )
        t.append(
            Target(
                f"handshakes resumed {label}: conns/s vs C resumed",
                "handshake",
                f"handshakes resumed {label}",
                "conns/s",
                "sslports",
                "c",
                ">=",
                0.9,
            )
        )
    t.append(
        Target(
            "memory per idle conn (both ends) vs python-ssl",
            "memory",
            "memory",
            "B/conn both",
            "sslports",
            "pyssl",
            "<=",
            0.8,
        )
    )
    if 8 in args.clients:
        t.append(
            Target(
                "echo 8 clients: threaded sslports vs python-ssl fork/conn",
                "concurrency",
                "echo server, 8 ",
                "MB/s aggregate",
                "sslports-thread",
                "pyssl-fork",
                ">=",
                0.95,
            )
        )
        if 2 in args.clients:
            t.append(
                Target(
                    "echo: sslports 8 clients vs 2 clients (no drop, 5% noise)",
                    "concurrency",
                    "echo server, 8 ",
                    "MB/s aggregate",
                    "sslports-thread",
                    "sslports-thread",
                    ">=",
                    0.95,
                    den_prefix="echo server, 2 ",
                )
            )
    return t


def summary(bench: Bench, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    rows = []
    for t in targets(args):
        ratio, verdict = t.evaluate(bench)
        rows.append(
            (
                t.label,
                "n/a" if ratio is None else f"{ratio:.2f}",
                f"{t.op} {t.threshold:g}",
                verdict,
            )
        )
    return rows


def print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows) if rows else 10
    print("\n# Targets (median of per-round ratios sslports/other)")
    print(f"  {'target':<{width}}  {'ratio':>6}  {'goal':>7}  verdict")
    for label, ratio, goal, verdict in rows:
        print(f"  {label:<{width}}  {ratio:>6}  {goal:>7}  {verdict}")
    passed = sum(r[3] == "PASS" for r in rows)
    print(f"  {passed} PASS, {sum(r[3] == 'MISS' for r in rows)} MISS of {len(rows)}")


# -- markdown -------------------------------------------------------------------------------


def markdown(bench: Bench, rows: list[tuple[str, str, str, str]], command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Run: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {machine()} "
        f"(at start {bench.args.load_start}), {bench.args.rounds} rounds interleaved, "
        f"{bench.args.engine}.",
        "",
        "| case | metric | A sslports | B python-ssl / threaded | C c-ref / fork | A/B | A/C |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in bench.cases:
        shown = case.metrics[:3] if case.scenario in ("handshake", "memory") else case.metrics[:2]
        for metric in shown:
            meds = [case.median(i, metric) for i in case.impls]
            rat = []
            for other in case.impls[1:]:
                rs = case.ratios(case.impls[0], other, metric)
                rat.append(f"{statistics.median(rs):.2f}" if rs else "n/a")
            cells = " | ".join(fmt(m, metric) for m in meds)
            lines.append(f"| {case.name} | {metric} | {cells} | {' | '.join(rat)} |")
    lines += ["", "| target | ratio | goal | verdict |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    notes = [f"- {c.name}: {n}" for c in bench.cases for n in c.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} x {cpu}, {platform.python_implementation()} "
        f"{platform.python_version()}, {ssl.OPENSSL_VERSION}, load {loadavg()}"
    )


def engine_id() -> str:
    """Which engine build ran: the git commit (read-only query), dirty or not, and the native
    module's mtime (a rebuild during a run would mix builds; main() warns about that)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "csrc", "src"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        head, dirty = "?", ""
    return (
        f"engine {head or '?'}{' + local changes' if dirty else ''}, native module {native_mtime()}"
    )


def native_mtime() -> str:
    mods = sorted((ROOT / "src" / "sslports").glob("_native*.so"))
    if not mods:
        return "?"
    return datetime.datetime.fromtimestamp(mods[0].stat().st_mtime).strftime("%H:%M:%S")


def compile_bytecode(package: Path) -> None:
    """Write the .pyc files of the package the peers import and of the bench's own modules,
    as an installed wheel has them (the peers run with PYTHONDONTWRITEBYTECODE, so they never
    write any). A peer that compiles a module from source at import frees the compiler's
    memory in its C heap, which its measured connections then reuse: the idle-memory rows
    moved by ~0.5 K per end with whether `src/` held current .pyc files (34.1 K against 34.4
    K per connection pair, the same engine)."""
    for path in (package, HERE):
        compileall.compile_dir(str(path), quiet=1, maxlevels=0)


def loadavg() -> str:
    """The 1-minute load average: other work on the machine makes every number noisier."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def update_readme(md: str) -> None:
    path = HERE / "README.md"
    begin, end = "<!-- results:begin -->", "<!-- results:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{md}{end}{tail}")


# -- interop check ------------------------------------------------------------------------------


def interop_check(bench: Bench) -> None:
    """Every server implementation against every client implementation, small traffic."""
    print("\n# interop check (server <- client)", flush=True)
    checks: tuple[tuple[str, dict[str, Any]], ...] = (
        ("up", {"size": 3 * MiB + 5, "wbuf": 1024, "rbuf": 65536}),
        ("down", {"size": 3 * MiB + 5, "wbuf": 16384, "rbuf": 1000}),
        ("pingpong", {"count": 100, "wbuf": 1024, "rbuf": 1024}),
    )
    for s in TRIO:
        for c in TRIO:
            for mode, extra in checks:
                bench.runner.pair(
                    peer_cmd(s, "server", bench.server_opts()),
                    [peer_cmd(c, "client", bench.client_opts(mode=mode, **extra))],
                )
            bench.runner.pair(
                peer_cmd(s, "server", bench.server_opts("ecdsa", conns=3)),
                [peer_cmd(c, "client", bench.client_opts("ecdsa", mode="hs", n=3, resume=1))],
            )
            print(f"  {s:>8} <- {c:<8} ok", flush=True)


# -- main ---------------------------------------------------------------------------------------

SCENARIOS = ("bulk", "pingpong", "handshakes", "memory", "concurrency")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 rounds and small sizes (~2 min)")
    p.add_argument("--rounds", type=int, help="rounds per case (default 5; --quick 3)")
    p.add_argument("--size", type=int, help="bulk bytes, 64K/16K buffers (default 1 GiB)")
    p.add_argument("--small-size", type=int, help="bulk bytes, 1K writes (default 256 MiB)")
    p.add_argument("--pingpong", type=int, help="round trips (default 20000)")
    p.add_argument("--handshakes", type=int, help="connections per handshake run (default 300)")
    p.add_argument("--idle", type=int, help="idle connections held (default 1000)")
    p.add_argument("--echo-seconds", type=float, help="echo run length (default 1.5)")
    p.add_argument("--clients", default="1,2,4,8", help="echo client counts (default 1,2,4,8)")
    p.add_argument(
        "--only", default=",".join(SCENARIOS), help="comma list of " + ", ".join(SCENARIOS)
    )
    p.add_argument("--check", action="store_true", help="run the interop matrix first")
    p.add_argument(
        "--digest", action="store_true", help="also run bench/digest_bench.py (same --size)"
    )
    p.add_argument("--readme", action="store_true", help="write the tables into bench/README.md")
    p.add_argument("--timeout", type=float, default=600.0, help="per measurement (s)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every command")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 3 if quick else 5,
        "size": 64 * MiB if quick else GiB,
        "small_size": 16 * MiB if quick else 256 * MiB,
        "pingpong": 2000 if quick else 20000,
        "handshakes": 60 if quick else 300,
        "idle": 200 if quick else 1000,
        "echo_seconds": 0.5 if quick else 1.5,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.clients = [int(x) for x in args.clients.split(",") if x]
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/run_all.py", *argv])
    args.load_start = loadavg()
    args.engine = engine_id()
    built = native_mtime()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks reap peers
    build_ref()
    tmp = Path(tempfile.mkdtemp(prefix="sslports-bench-"))
    try:
        conf = tmp / "openssl.cnf"
        conf.write_text(OPENSSL_CONF)
        env = dict(os.environ, OPENSSL_CONF=str(conf), PYTHONDONTWRITEBYTECODE="1")
        import sslports

        compile_bytecode(Path(sslports.__file__).parent)
        pem = str(sslports.TEST_PEM)
        ec_cert, ec_key = make_ecdsa(tmp)
        certs = {"rsa": (pem, pem, pem), "ecdsa": (ec_cert, ec_key, ec_cert)}
        bench = Bench(args, Runner(env, args.timeout, args.verbose), certs)
        print(f"sslports benchmarks: {machine()}; {args.engine}; {command}", flush=True)
        if args.check:
            interop_check(bench)
        steps = {
            "bulk": bench.bulk,
            "pingpong": bench.pingpong,
            "handshakes": bench.handshakes,
            "memory": bench.memory,
            "concurrency": bench.concurrency,
        }
        started = time.monotonic()
        for name in SCENARIOS:
            if name in args.only:
                steps[name]()
        if native_mtime() != built:
            print("WARNING: the native module was rebuilt during this run; results mix builds")
            args.engine += f" (REBUILT during the run, now {native_mtime()})"
        rows = summary(bench, args)
        print_summary(rows)
        print(f"\n(total {time.monotonic() - started:.0f}s, load average now {loadavg()})")
        md = markdown(bench, rows, command)
        OUT.mkdir(exist_ok=True)
        (OUT / "latest.md").write_text(md)
        (OUT / "latest.json").write_text(
            json.dumps({"command": command, "cases": [c.to_json() for c in bench.cases]}, indent=1)
        )
        if args.readme:
            update_readme(md)
            print("bench/README.md updated")
        if args.digest and (HERE / "digest_bench.py").exists():
            cmd = [PY, str(HERE / "digest_bench.py"), "--size", str(args.size)]
            cmd += ["--rounds", str(max(3, args.rounds))]
            print("\n$", shlex.join(cmd), flush=True)
            return subprocess.run(cmd, cwd=ROOT, check=False).returncode
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
