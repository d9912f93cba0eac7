"""Run every fuzz target for a set time and report executions (``make fuzz``).

    python fuzz/run.py [TARGET ...]

Environment:
    FUZZ_SECONDS  seconds per target (default 60)
    FUZZ_ENGINE   "atheris" (coverage-guided, fuzz/atheris_fuzz.py, one process per target) or
                  "hypothesis" (random and mutated inputs in this process); by default atheris
                  when it can be imported, else hypothesis.

Each case is bounded in time (atheris: libFuzzer's -timeout; hypothesis: a worker thread joined
with a limit). Findings: atheris saves the input under build/fuzz-artifacts/; hypothesis prints
the shrunk input. The corpus grows under build/fuzz-corpus/<target>/. Exit status 1 on any
finding.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import fuzz_targets as targets  # noqa: E402

CASE_LIMIT = 10  # seconds one input may take


def run_atheris(name: str, seconds: int) -> tuple[int, bool, str]:
    corpus = ROOT / "build" / "fuzz-corpus" / name
    artifacts = ROOT / "build" / "fuzz-artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(targets.seeds(name)):
        path = corpus / f"seed-{i}"
        if not path.exists():
            path.write_bytes(seed)
    cmd = [
        sys.executable,
        str(HERE / "atheris_fuzz.py"),
        name,
        f"-max_total_time={seconds}",
        f"-timeout={CASE_LIMIT}",
        "-print_final_stats=1",
        "-max_len=8192",
        f"-artifact_prefix={artifacts}/{name}-",
        str(corpus),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    match = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    execs = int(match[-1]) if match else 0
    ok = proc.returncode == 0
    detail = "" if ok else proc.stderr[-4000:]
    return execs, ok, detail


def run_hypothesis(name: str, seconds: int) -> tuple[int, bool, str]:
    from hypothesis import HealthCheck, given, settings

    fn = targets.target_named(name)
    count = 0

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(targets.strategy(name))
    def case(data: bytes) -> None:
        nonlocal count
        count += 1
        targets.run_bounded(fn, data, CASE_LIMIT)

    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            case()
    except Exception as exc:  # hypothesis re-raises the shrunk failure
        return count, False, f"{type(exc).__name__}: {exc}"
    return count, True, ""


def main() -> int:
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    engine = os.environ.get("FUZZ_ENGINE") or (
        "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
    )
    if engine not in ("atheris", "hypothesis"):
        raise SystemExit(f"FUZZ_ENGINE must be atheris or hypothesis, not {engine!r}")
    names = sys.argv[1:] or list(targets.TARGETS)
    for name in names:
        targets.target_named(name)
    print(f"fuzz: engine {engine}, {seconds} s per target", flush=True)
    total = 0
    failed = []
    for name in names:
        runner = run_atheris if engine == "atheris" else run_hypothesis
        started = time.monotonic()
        execs, ok, detail = runner(name, seconds)
        total += execs
        took = time.monotonic() - started
        status = "ok" if ok else "FINDING"
        print(f"fuzz: {name:<18} {execs:>9} executions in {took:5.1f} s  {status}", flush=True)
        if not ok:
            failed.append(name)
            print(detail, flush=True)
    targets.cleanup()
    print(f"fuzz: {total} executions in all, {len(failed)} finding(s) {failed or ''}".rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
