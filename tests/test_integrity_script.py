"""scripts/integrity.py (``make integrity``, issue 6) runs here with a small size so that it
cannot rot: 8 full-duplex connections of 4 MiB each way must arrive intact, and a corrupted
byte (``--inject-fault``) must make it fail, so its checking is not vacuous."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import PY_ENV

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "integrity.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=PY_ENV,
        timeout=240,
    )


def test_integrity_script_small_run() -> None:
    result = run("--mib", "4", "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    streams = [line for line in lines if line.split()[:1] and line.split()[0].isdigit()]
    assert len(streams) == 16  # 8 connections x 2 directions
    assert all(line.endswith(" ok") and f" {4 << 20} " in line for line in streams), streams
    assert {line.split()[1] for line in streams} == {"tls12", "tls13"}
    assert {line.split()[4] for line in streams} == {"EOF", "count"}
    assert lines[-1].startswith("integrity: OK: all 16 streams")
    assert "MB/s" in lines[-2]


def test_integrity_script_detects_corruption() -> None:
    result = run("--mib", "1", "--connections", "2", "--inject-fault", "--timeout", "60")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("SHA-1 MISMATCH") == 1
    assert "integrity: FAILED: 1 of 4 streams went wrong" in result.stdout
