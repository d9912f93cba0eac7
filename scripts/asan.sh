#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the tests on it
# (`make asan`).
#
#   scripts/asan.sh [pytest arguments]     (default: the whole suite)
#
# The sanitized build is made in a copy of the sources under build/asan/tree (build_ffi.py reads
# SSLPORTS_SANITIZE=address,undefined), so the normal in-place extension in src/ is never
# replaced and other runs keep working meanwhile. The tests import the sanitized copy through
# PYTHONPATH, with libasan preloaded (CPython itself is not instrumented) and
# PYTHONMALLOC=malloc so Python buffers handed to C are checked too. Leak detection is off:
# CPython does not free everything at exit (scripts/valgrind.sh checks leaks). Any sanitizer
# report fails the run; the logs are in build/asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VPY=${VPY:-$ROOT/.venv/bin/python}
case "$VPY" in /*) ;; *) VPY=$ROOT/$VPY ;; esac
OUT=$ROOT/build/asan
TREE=$OUT/tree
CC=${CC:-gcc}

LIBASAN=$("$CC" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ] || [ "$LIBASAN" = libasan.so ]; then
  echo "asan.sh: $CC has no libasan.so (install gcc's sanitizer runtime)" >&2
  exit 2
fi

echo "asan.sh: building the sanitized extension in $TREE"
rm -rf "$TREE"
mkdir -p "$TREE/src"
cp -r csrc build_ffi.py setup.py pyproject.toml "$TREE/"
[ -f README.md ] && cp README.md "$TREE/"
cp -r src/sslports "$TREE/src/"
rm -f "$TREE"/src/sslports/_native*.so "$TREE"/src/sslports/_fastport*.so "$TREE"/src/sslports/_native.c \
  "$TREE"/src/sslports/.native-built
(cd "$TREE" && SSLPORTS_SANITIZE=address,undefined CC="$CC" "$VPY" setup.py -q build_ext --inplace) \
  >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }

# libasan must be preloaded into every Python process that loads the sanitized module (the CLI
# tests start some), but not into other tools the tests run: curl, for one, hangs at start with
# it. This sitecustomize takes LD_PRELOAD out of the environment once Python has started and
# puts it back only for children that are Python.
mkdir -p "$OUT/site"
cat >"$OUT/site/sitecustomize.py" <<'PY'
import os
import shutil
import subprocess
import sys

_PRELOAD = os.environ.pop("LD_PRELOAD", "")


def _is_python(args, shell):
    if shell:
        return False
    prog = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
    prog = shutil.which(os.fsdecode(prog)) or os.fsdecode(prog)
    if prog == sys.executable or os.path.basename(prog).startswith("python"):
        return True
    try:
        with open(prog, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


if _PRELOAD:
    _init = subprocess.Popen.__init__

    def _popen_init(self, args, *a, **kw):
        env = dict(kw["env"] if kw.get("env") is not None else os.environ)
        own = env.pop("LD_PRELOAD", "")  # (a test's own shim: kept, after libasan)
        if _is_python(args, kw.get("shell", False)):
            own = " ".join(filter(None, [_PRELOAD, own]))
        if own:
            env["LD_PRELOAD"] = own
        kw["env"] = env
        _init(self, args, *a, **kw)

    subprocess.Popen.__init__ = _popen_init
PY

export PYTHONPATH="$OUT/site:$TREE/src${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$LIBASAN"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONMALLOC=malloc

native=$("$VPY" -c 'import sslports, sslports._native as n; assert sslports.ssl_available, sslports.ssl_load_fail_reason; print(n.__file__)')
case "$native" in
  "$TREE"/*) echo "asan.sh: testing $native" ;;
  *) echo "asan.sh: the tests would import $native, not the sanitized build" >&2; exit 1 ;;
esac
if [ "$(nm -D "$native" | grep -c __asan_)" -eq 0 ]; then
  echo "asan.sh: $native is not instrumented" >&2
  exit 1
fi

[ $# -eq 0 ] && set -- tests
set +e
"$VPY" -m pytest -q -p no:cacheprovider "$@" >"$OUT/pytest.log" 2>&1
status=$?
set -e
tail -n 15 "$OUT/pytest.log"
reports=$(grep -c -E "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer" "$OUT/pytest.log" || true)
echo "asan.sh: sanitizer reports: $reports (pytest exit status $status); log: $OUT/pytest.log"
echo "asan.sh: the normal extension in src/sslports was not touched"
if [ "$reports" -ne 0 ]; then
  grep -n -A 30 -E "ERROR: AddressSanitizer|runtime error:" "$OUT/pytest.log" | head -n 120
  exit 1
fi
exit $status
