#!/usr/bin/env bash
# Run a subset of the tests under valgrind's leak checker (`make valgrind`) and report the
# definite leaks whose allocation stack involves our code (csrc/, the _native extension).
#
#   scripts/valgrind.sh [pytest arguments]     (default: the subset below)
#
# PYTHONMALLOC=malloc makes CPython allocate with malloc, so valgrind sees every block. CPython,
# OpenSSL and the other libraries keep some memory until exit; only "definitely lost" blocks
# with one of our frames on the allocation stack count. Zero is expected: the script exits 1
# otherwise. The full log is build/valgrind/valgrind.log.
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${VPY:-.venv/bin/python}
OUT=build/valgrind
mkdir -p "$OUT"

if ! command -v valgrind >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
  else
    echo "valgrind.sh: valgrind is not installed" >&2
    exit 2
  fi
fi

if [ $# -eq 0 ]; then
  # Handshakes, data, every failure class, both transports, the loaders; a few minutes.
  set -- tests/test_fuzz.py::test_seeds tests/test_fuzz.py::test_edge_inputs \
    tests/test_hostile.py::test_forged_record_mid_stream \
    tests/test_hostile.py::test_eof_policy \
    tests/test_hostile.py::test_malformed_first_record \
    tests/test_hostile.py::test_sni_callback_misbehaves \
    tests/test_hostile.py::test_truncated_client_hello \
    tests/test_hostile.py::test_weak_cipher_hello_refused \
    tests/test_hostile.py::test_stall_mid_record_then_rest_arrives
fi

echo "valgrind.sh: running pytest $* under valgrind (slow)"
set +e
PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite \
  --errors-for-leak-kinds=definite --num-callers=40 --log-file="$OUT/valgrind.log" \
  "$VPY" -m pytest -q -p no:cacheprovider -o addopts="" --timeout=900 "$@" \
  >"$OUT/pytest.log" 2>&1
status=$?
set -e
tail -n 3 "$OUT/pytest.log"

set +e
"$VPY" - "$OUT/valgrind.log" <<'PY'
import re
import sys

text = open(sys.argv[1], errors="replace").read()
records = re.split(r"\n==\d+== \n", text)
FRAME = re.compile(r"(?:at|by) 0x[0-9A-F]+: (\S+) \((?:in )?([^)]*)\)")
MODULE_INIT = {"_cffi_init", "PyInit__native"}  # CFFI's one-time module objects


def ours(rec):
    """A frame of our C code (csrc/sp_*.c, sp_* functions) or of _native.c past its init."""
    if "lib_build_and_cache_attr" in rec:
        return False  # CFFI builds `lib.<name>` once, on first use (here from a callback)
    for func, where in FRAME.findall(rec):
        if "csrc/" in where or where.startswith("sp_") or func.startswith("sp_"):
            return True
        if "_native." in where and func not in MODULE_INIT:
            return True
    return False


def openssl(rec):
    return "libssl" in rec or "libcrypto" in rec


leaks = [r for r in records if "definitely lost in loss record" in r]
bad = [r for r in records if re.search(r"Invalid (read|write|free)|uninitialised|Mismatched", r)]
our_leaks = [r for r in leaks if ours(r)]
our_bad = [r for r in bad if ours(r) or openssl(r)]
summary = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
print(f"valgrind.sh: definite leaks involving sslports (csrc/, _native): {len(our_leaks)}")
print(f"valgrind.sh: definite leaks elsewhere (CPython, cffi module init): {len(leaks) - len(our_leaks)}"
      + (f", {summary.group(1)} bytes in {summary.group(2)} blocks" if summary else ""))
print(f"valgrind.sh: memory errors involving sslports or OpenSSL: {len(our_bad)} "
      f"(elsewhere: {len(bad) - len(our_bad)})")
for rec in our_leaks + our_bad:
    print(rec)
sys.exit(1 if our_leaks or our_bad else 0)
PY
leaks=$?
set -e
if [ $status -ne 0 ]; then
  echo "valgrind.sh: pytest failed under valgrind (see $OUT/pytest.log)" >&2
  exit $status
fi
exit $leaks
