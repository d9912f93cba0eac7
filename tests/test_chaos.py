"""A short seeded run of scripts/chaos.py (many connections at once, every peer and misdeed
it knows; see its header) in a process of its own, which must end with status 0: no exception
of a type API.md does not name, no lost or corrupted byte, no hang, and the descriptors and
threads of that process back where they started. `make chaos` runs it for longer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sslports as sp

pytestmark = pytest.mark.skipif(not sp.ssl_available, reason="libssl not loadable")
ROOT = Path(__file__).resolve().parent.parent


def test_short_seeded_chaos_run() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(sp.__file__).parent.parent), env.get("PYTHONPATH")])
    )
    args = ["--seconds", "6", "--seed", "20261130", "--slots", "6", "--deadline", "8"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, report
    assert "scenarios in" in proc.stdout, report
