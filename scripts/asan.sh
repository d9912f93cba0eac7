#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer and run the tests on it
# (`make asan`).
#
#   scripts/asan.sh [pytest arguments]     (default: the whole suite)
#
# The sanitized build is made in a copy of the sources under build/asan/tree
# (scripts/sanitized_build.sh), so the normal in-place extension in src/ is never replaced and
# other runs keep working meanwhile. The tests import the sanitized copy through PYTHONPATH,
# with libasan preloaded (CPython itself is not instrumented) and PYTHONMALLOC=malloc so Python
# buffers handed to C are checked too. Leak detection is off: CPython does not free everything
# at exit (scripts/valgrind.sh checks leaks). Any sanitizer
# report fails the run; the logs are in build/asan/.
set -euo pipefail
# shellcheck source=scripts/sanitized_build.sh
source "$(dirname "$0")/sanitized_build.sh"
sanitized_build asan address,undefined libasan.so
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
