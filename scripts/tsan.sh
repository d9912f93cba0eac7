#!/usr/bin/env bash
# Build the extension with ThreadSanitizer and run the tests on it (`make tsan`).
#
#   scripts/tsan.sh [pytest arguments]     (no test path among them: the thread-heavy tests below)
#
# As scripts/asan.sh: the sanitized build is made in a copy of the sources under build/tsan/tree
# (scripts/sanitized_build.sh), the tests import it through PYTHONPATH with
# libtsan preloaded, and the normal in-place extension in src/ is never replaced.
# Only our C (csrc/, _fastport) is instrumented. TSan still sees what goes through pthreads
# (the GIL, our mutexes, OpenSSL's CRYPTO_RWLOCK) and the libc calls it intercepts (memcpy,
# free...) from OpenSSL too, but not OpenSSL's inline atomics (reference counts): reports that
# are shown to be outside our code or false are suppressed, each with its reason, in
# scripts/tsan.supp. Reports go to build/tsan/tsan.<pid> (one per process: pytest captures
# stderr, and subprocesses report too); any report fails the run.
# On kernels whose mmap randomisation is too wide for TSan's memory layout ("unexpected memory
# mapping"), the run goes through `setarch -R` (ASLR off for it), found by a probe below.
#
# Free-threaded: VPY=<a free-threaded CPython configured --with-thread-sanitizer> (with the test
# packages on PYTHONPATH, e.g. a 3.14t venv's site-packages) checks the C fast path where no GIL
# orders anything: the interpreter is instrumented itself, CPython's own suppressions are added
# to ours (CPYTHON_TSAN_SUPP=<its source tree>/Tools/tsan/suppressions_free_threading.txt; found
# by itself when VPY runs from the build tree), and its allocator stays (such a build refuses
# PYTHONMALLOC=malloc). The build copy is build/tsan-ft.
set -euo pipefail
# shellcheck source=scripts/sanitized_build.sh
source "$(dirname "$0")/sanitized_build.sh"
ft_srcdir=$("$VPY" -c 'import sysconfig as s
if s.get_config_var("Py_GIL_DISABLED") and "--with-thread-sanitizer" in s.get_config_var("CONFIG_ARGS"):
    print(s.get_config_var("srcdir"))')
supp=$ROOT/scripts/tsan.supp
if [ -n "$ft_srcdir" ]; then
  ft_supp=${CPYTHON_TSAN_SUPP:-$ft_srcdir/Tools/tsan/suppressions_free_threading.txt}
  if [ ! -e "$ft_supp" ]; then
    echo "tsan.sh: a free-threaded TSan CPython: set CPYTHON_TSAN_SUPP to its source tree's" \
      "Tools/tsan/suppressions_free_threading.txt" >&2
    exit 2
  fi
  sanitized_build tsan-ft thread libtsan.so
  supp=$OUT/tsan.supp
  cat "$ROOT/scripts/tsan.supp" "$ft_supp" >"$supp"
else
  sanitized_build tsan thread libtsan.so
  export PYTHONMALLOC=malloc
fi
# allocator_may_return_null: the tests that ask for more memory than there is expect
# MemoryError (TSan's allocator would end the process); history_size, second_deadlock_stack:
# both stacks of a report.
TSAN_OPTIONS="log_path=$OUT/tsan:suppressions=$supp:allocator_may_return_null=1"
export TSAN_OPTIONS="$TSAN_OPTIONS:history_size=4:second_deadlock_stack=1"

# TSan maps its shadow memory at fixed addresses; with too many bits of mmap randomisation
# it stops at start ("unexpected memory mapping"): then run with ASLR off.
RUN=()
if ! "$VPY" -c pass >/dev/null 2>&1; then
  RUN=(setarch "$(uname -m)" -R)
  if ! "${RUN[@]}" "$VPY" -c pass >/dev/null 2>&1; then
    echo "tsan.sh: Python does not start with libtsan preloaded, even with setarch -R" >&2
    exit 2
  fi
  echo "tsan.sh: running with ASLR off (setarch -R)"
fi

native=$("${RUN[@]}" "$VPY" -c 'import sslports, sslports._native as n; assert sslports.ssl_available, sslports.ssl_load_fail_reason; print(n.__file__)')
case "$native" in
  "$TREE"/*) echo "tsan.sh: testing $native" ;;
  *) echo "tsan.sh: the tests would import $native, not the sanitized build" >&2; exit 1 ;;
esac
for so in "$native" "$TREE"/src/sslports/_fastport*.so; do
  if [ -e "$so" ] && [ "$(nm -D "$so" | grep -c __tsan_)" -eq 0 ]; then
    echo "tsan.sh: $so is not instrumented" >&2
    exit 1
  fi
done

# No test file or directory among the arguments (none, or options only): the thread-heavy ones.
named=0
for arg in "$@"; do [ -e "${arg%%::*}" ] && named=1; done
if [ "$named" -eq 0 ]; then
  set -- tests/test_context_threads.py tests/test_port_races.py tests/test_close_paths.py \
    tests/test_chaos_regressions.py tests/test_callback_reentry.py tests/test_fastport.py \
    tests/test_session_policy.py tests/test_chaos.py "$@"
fi
set +e
"${RUN[@]}" "$VPY" -m pytest -q -p no:cacheprovider "$@" >"$OUT/pytest.log" 2>&1
status=$?
set -e
tail -n 15 "$OUT/pytest.log"
logs=$(find "$OUT" -maxdepth 1 -name 'tsan.*' | sort)
reports=0
if [ -n "$logs" ]; then
  # shellcheck disable=SC2086
  reports=$(cat $logs | grep -c -E "(WARNING|ERROR|FATAL): ThreadSanitizer" || true)
fi
echo "tsan.sh: sanitizer reports: $reports (pytest exit status $status); logs: $OUT/pytest.log, $OUT/tsan.<pid>"
echo "tsan.sh: the normal extension in src/sslports was not touched"
if [ "$reports" -ne 0 ]; then
  # shellcheck disable=SC2086
  grep -h -A 30 -E "(WARNING|ERROR|FATAL): ThreadSanitizer" $logs | head -n 120
  exit 1
fi
exit $status
