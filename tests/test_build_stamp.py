"""The native module carries the package version; a stale build is refused loudly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import sslports


def test_native_module_is_stamped_with_the_package_version() -> None:
    from sslports import _binding

    assert _binding.lib is not None
    stamp = _binding.ffi.string(_binding.lib.sp_build_version()).decode()
    assert stamp == sslports.__version__


def test_a_stale_native_module_fails_the_import(tmp_path: Path) -> None:
    package = Path(sslports.__file__).resolve().parent
    copy = tmp_path / "sslports"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    libs = package.parent / "sslports.libs"  # a repaired Linux wheel's own libssl/libcrypto
    if libs.is_dir():
        shutil.copytree(libs, tmp_path / libs.name)
    (copy / "_version.py").write_text('__version__ = "0.0.0-stale"\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import sslports"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "stale sslports native module" in result.stderr
