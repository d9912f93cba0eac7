"""The release machinery that only runs elsewhere: scripts/test-wheel.sh (``make wheel``) and the
cibuildwheel configuration of pyproject.toml (.github/workflows/wheels.yml). These tests read the
files of a source checkout; they skip where only tests/ was copied (the wheel venv of
``make wheel``, an unpacked sdist)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CHECKOUT = (ROOT / "build_ffi.py").is_file() and (ROOT / "scripts" / "test-wheel.sh").is_file()
needs_checkout = pytest.mark.skipif(not IN_CHECKOUT, reason="needs the source checkout")

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy brings tomli on Python < 3.11
    tomllib = pytest.importorskip("tomli")


def cibuildwheel() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        config: dict[str, Any] = tomllib.load(f)["tool"]["cibuildwheel"]
    return config


def commands(value: Any) -> list[str]:
    """A cibuildwheel command option (a string, or a list joined with &&) as single commands."""
    items = value if isinstance(value, list) else [value]
    return [c.strip() for item in items for c in str(item).split("&&") if c.strip()]


# Under `set -o pipefail`, `producer | grep -q PATTERN` fails whenever grep exits at its first
# match while the producer is still writing: the producer dies of SIGPIPE (Python: BrokenPipeError)
# and the pipeline's status is its failure, so the check reports a match as missing. It happened
# to `make wheel` here ("sslports/_native missing from wheelhouse/...whl", about 1 run in 8 with
# PYTHONUNBUFFERED=1).
GREP_Q_IN_PIPE = re.compile(r"\|\s*grep\s+(?:-[A-Za-z]*q|--quiet|--silent)")


@needs_checkout
def test_no_pipefail_script_pipes_into_grep_q() -> None:
    offenders = []
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        text = script.read_text("utf-8")
        if not re.search(r"set -\w*o pipefail|set -o pipefail", text):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if not line.lstrip().startswith("#") and GREP_Q_IN_PIPE.search(line):
                offenders.append(f"{script.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


# What cibuildwheel itself provides for the repair step: auditwheel in the manylinux and musllinux
# images, delocate on macOS. Nothing on Windows (its docs: "cibuildwheel doesn't yet ship a
# default repair command for Windows"): a repair tool there must be pip-installed by before-build,
# which runs in the environment the repair command runs in.
PROVIDED = {"linux": {"auditwheel"}, "macos": {"delocate-wheel", "delocate-listdeps"}}


@needs_checkout
@pytest.mark.parametrize("platform", ["linux", "macos", "windows"])
def test_cibuildwheel_repair_tools_are_installed(platform: str) -> None:
    config = cibuildwheel()
    table = config.get(platform, {})
    repair = table.get("repair-wheel-command", config.get("repair-wheel-command", ""))
    installed = set(PROVIDED.get(platform, ()))
    for command in commands(table.get("before-build", config.get("before-build", ""))):
        words = shlex.split(command)
        if "install" in words and "pip" in words[: words.index("install")]:
            installed.update(w for w in words[words.index("install") + 1 :] if w[:1] != "-")
    tools = {shlex.split(c)[0] for c in commands(repair)}
    assert tools <= installed, f"{platform}: {sorted(tools - installed)} never installed"


@needs_checkout
def test_cibuildwheel_files_exist() -> None:
    """test-sources and the scripts before-all runs are files of the checkout."""
    config = cibuildwheel()
    missing = [p for p in config.get("test-sources", []) if not (ROOT / p).exists()]
    tables = [config, *(config.get(p, {}) for p in ("linux", "macos", "windows"))]
    for table in tables:
        for command in commands(table.get("before-all", "")):
            for path in re.findall(r"\{project\}/(\S+)", command):
                if not (ROOT / path).exists():
                    missing.append(path)
    assert missing == []
    # test-command runs from a temporary directory holding only the test-sources.
    for path in re.findall(r"\S+\.py", config["test-command"]):
        assert path in config["test-sources"], path


def _build_ffi() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        import build_ffi
    finally:
        sys.path.remove(str(ROOT))
    return build_ffi


@needs_checkout
def test_a_wrong_openssl_dir_fails_the_build(tmp_path: Path, monkeypatch: Any) -> None:
    """SSLPORTS_OPENSSL_DIR naming a directory without OpenSSL's headers (a typo) built
    against the system's OpenSSL without a word; it now fails, saying why."""
    build_ffi = _build_ffi()
    monkeypatch.setenv("SSLPORTS_OPENSSL_DIR", str(tmp_path / "nothing"))
    with pytest.raises(RuntimeError, match=r"holds no OpenSSL \(include/openssl/ssl.h"):
        build_ffi.openssl_prefix()
    monkeypatch.delenv("SSLPORTS_OPENSSL_DIR")
    assert build_ffi.openssl_prefix() is None and build_ffi.openssl_license() is None


@needs_checkout
def test_a_wheel_with_its_own_openssl_ships_the_openssl_license(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The release wheels vendor the OpenSSL of SSLPORTS_OPENSSL_DIR (scripts/build_openssl.py
    copies its LICENSE.txt there as LICENSE-OpenSSL.txt, which no wheel carried): setup.py's
    build_py puts that file in the package (sslports/LICENSE-OpenSSL.txt)."""
    build_ffi = _build_ffi()
    (tmp_path / "include" / "openssl").mkdir(parents=True)
    (tmp_path / "include" / "openssl" / "ssl.h").write_text("")
    monkeypatch.setenv("SSLPORTS_OPENSSL_DIR", str(tmp_path))
    assert build_ffi.openssl_license() is None  # (a prefix of one's own may have none)
    (tmp_path / "LICENSE-OpenSSL.txt").write_text("Apache License 2.0")
    assert build_ffi.openssl_license() == tmp_path / "LICENSE-OpenSSL.txt"
    assert '"LICENSE-OpenSSL.txt"' in (ROOT / "scripts" / "build_openssl.py").read_text()
    # setup.py's build_py (what a wheel's Python files come from), in a copy of the project
    tree = tmp_path / "tree"
    skip = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.egg-info", ".native-built")
    tree.mkdir()
    for name in ("setup.py", "build_ffi.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("src", "csrc"):
        shutil.copytree(ROOT / name, tree / name, ignore=skip)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=tree, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    shipped = tmp_path / "lib" / "sslports" / "LICENSE-OpenSSL.txt"
    assert shipped.read_text() == "Apache License 2.0"
    assert (tmp_path / "lib" / "sslports" / "net.py").is_file()


@needs_checkout
def test_the_classifiers_name_every_python_a_wheel_is_built_for() -> None:
    """PyPI's page lists the versions from the classifiers: each CPython of cibuildwheel's
    build list, no other, and Typing :: Typed (the package ships py.typed)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    classifiers = project["classifiers"]
    listed = {c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r".*:: 3\.\d+", c)}
    built = {f"3.{m.group(1)}" for b in cibuildwheel()["build"] if (m := re.match(r"cp3(\d+)-", b))}
    assert listed == built
    assert f"3.{min(int(v.split('.')[1]) for v in built)}" in project["requires-python"]
    assert "Typing :: Typed" in classifiers
    assert (ROOT / "src" / "sslports" / "py.typed").is_file()
