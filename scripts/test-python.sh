#!/usr/bin/env bash
# Run tests on a newer CPython than the project's venv (`make test-python`; .ci/run runs it).
#
#   scripts/test-python.sh [PYTHON [pytest arguments]]     (a free-threaded PYTHON works too)
#   scripts/test-python.sh --oldest [pytest arguments]
#
# Without PYTHON: the newest CPython 3.12 or later on this machine (on PATH, or installed by
# pyenv). Without pytest arguments: the tests of what the collector does with unclosed ports
# and failed connections. From 3.12 on, a socket is cyclic garbage like any other object (its
# type is tracked by the collector), so the collector may close it before the ports' own
# finalizers flush: those tests catch it there, and not on the venv's 3.11.
#
# --oldest: the oldest CPython the package supports that is older than the venv's (3.9, else
# 3.10), and without pytest arguments the whole suite: the C fast path calls the C API of
# every version, and a call that 3.11 forgives may lose an exception on 3.9 (it did: a
# stream port's failed write, reported by no close).
#
# --debug: the whole suite on a debug build of CPython (Debian's python3-dbg, apt-installed when
# missing), whose checks abort on C API misuse that a release build lets pass: a call made
# with an exception set, a slot that succeeds with one set, a reference count gone wrong.
#
# The extension is built for that interpreter in a copy of the sources (build/pyX.Y/tree:
# scripts/sanitized_build.sh's build_copy), with its own venv in build/pyX.Y/venv holding the
# `test` extra's packages (the linters aside).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # the first of the versions given that this machine has
  local v found
  for v in "$@"; do
    if found=$(command -v "python$v") && "$found" -V >/dev/null 2>&1; then
      echo "$found"
      return 0
    fi
    for found in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v"; do
      if [ -x "$found" ] && "$found" -V >/dev/null 2>&1; then
        echo "$found"
        return 0
      fi
    done
  done
  return 1
}

whole_suite=0
if [ "${1:-}" = --oldest ]; then
  shift
  whole_suite=1
  if ! PYTHON=$(find_python 3.9 3.10); then
    echo "test-python: SKIPPED: no CPython 3.9 or 3.10 on this machine (PATH, pyenv)"
    exit 0
  fi
elif [ "${1:-}" = --debug ]; then
  shift
  whole_suite=1
  dbg=/usr/bin/$(readlink /usr/bin/python3 2>/dev/null || echo python3)-dbg
  if ! "$dbg" -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends python3-dbg python3-venv >/dev/null || true
  fi
  if ! "$dbg" -c 'import sys, ensurepip; assert hasattr(sys, "gettotalrefcount")' 2>/dev/null; then
    echo "test-python: SKIPPED: no debug build of CPython with venv here ($dbg; apt: python3-dbg)"
    exit 0
  fi
  PYTHON=$dbg
elif [ $# -gt 0 ]; then
  PYTHON=$1
  shift
elif ! PYTHON=$(find_python 3.14 3.13 3.12); then
  echo "test-python: SKIPPED: no CPython 3.12 or later on this machine (PATH, pyenv)"
  exit 0
fi
ver=$("$PYTHON" -c 'import sys, sysconfig
print("%d.%d%s%s" % (*sys.version_info[:2], "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "",
                    "d" if hasattr(sys, "gettotalrefcount") else ""))')
VENVDIR=$PWD/build/py$ver/venv
echo "test-python: $("$PYTHON" -V) ($PYTHON)"
[ -x "$VENVDIR/bin/python" ] || "$PYTHON" -m venv "$VENVDIR"
"$VENVDIR/bin/python" -m pip install -q --upgrade pip setuptools wheel 'cffi>=2'
# The `test` extra from pyproject.toml, without the linters (they run on the venv's Python).
# (read by a Python with tomllib: 3.11 or later)
toml_python=$VENVDIR/bin/python
"$toml_python" -c 'import tomllib' 2>/dev/null || toml_python=$(find_python 3.14 3.13 3.12 3.11)
mapfile -t deps < <("$toml_python" - <<'PY'
import tomllib

with open("pyproject.toml", "rb") as f:
    extra = tomllib.load(f)["project"]["optional-dependencies"]["test"]
for req in extra:
    if req.split(";")[0].strip() not in ("ruff", "mypy"):
        print(req)
PY
)
"$VENVDIR/bin/python" -m pip install -q "${deps[@]}"

export VPY=$VENVDIR/bin/python
# shellcheck source=scripts/sanitized_build.sh
source scripts/sanitized_build.sh
build_copy "py$ver"
"$VPY" - "$TREE" <<'PY'
import sys
import sysconfig

import sslports
from sslports import _fastport, _native

for mod in (_native, _fastport):
    if not mod.__file__.startswith(sys.argv[1] + "/"):
        sys.exit(f"test-python: the tests would import {mod.__file__}, not the copy")
if not sslports.ssl_available:
    sys.exit(f"test-python: {sslports.ssl_load_fail_reason}")
if sysconfig.get_config_var("Py_GIL_DISABLED") and sys._is_gil_enabled():
    sys.exit("test-python: importing sslports turned the GIL on (a module that needs it)")
PY

if [ $# -eq 0 ] && [ $whole_suite = 1 ]; then
  set -- tests
elif [ $# -eq 0 ]; then
  set -- tests/test_finalize.py tests/test_fastport.py tests/test_handshake_cycles.py \
    tests/test_user_journeys.py
fi
"$VPY" -m pytest -q -p no:cacheprovider "$@"
