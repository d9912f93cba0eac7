"""What a user's type checker sees: the package ships py.typed, and the public functions whose
result API.md gives a shape return that shape, not Any (mypy --strict on a small program that
imports the sslports under test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sslports

pytest.importorskip("mypy")

PROGRAM = """\
import sslports

reveal_type(sslports.ssl_addresses(object(), True))
reveal_type(sslports.ssl_addresses(object()))
reveal_type(sslports.ssl_default_verify_sources())
reveal_type(sslports.ssl_default_verify_sources([]))
count: int = sslports.ssl_default_verify_sources()
"""


def test_a_type_checker_sees_the_shapes_api_md_gives(tmp_path: Path) -> None:
    """ssl_addresses was tuple[Any, ...] and ssl_default_verify_sources() Any: a caller's
    `host, port = ssl_addresses(p)` or `count: int = ssl_default_verify_sources()` passed
    mypy --strict unchecked."""
    (tmp_path / "user.py").write_text(PROGRAM)
    src = str(Path(sslports.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "user.py"],
        cwd=tmp_path, env={"MYPYPATH": src, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = result.stdout.replace("builtins.", "").replace("Tuple[", "tuple[").splitlines()
    revealed = [line.split('Revealed type is "', 1)[1].rstrip('"') for line in lines
                if "Revealed type is" in line]  # fmt: skip
    assert revealed[:2] == ["tuple[str, int, str, int]", "tuple[str, str]"], result.stdout
    assert revealed[2].startswith(("list[str | bytes", "list[Union[str, bytes")), result.stdout
    assert revealed[3] == "None", result.stdout
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1 and "user.py:7:" in errors[0], result.stdout
