#!/usr/bin/env bash
# Coverage-guided fuzzing inside the C shim (`make fuzz-c`): each harness of fuzz/c/ built with
# clang's libFuzzer, AddressSanitizer (LeakSanitizer included) and UBSan, and run for
# FUZZ_SECONDS (default 60) seconds, one harness after the other, one process. Only csrc/ and
# the harnesses are instrumented (the system OpenSSL is not): the coverage is our C's.
#
#   scripts/fuzz-c.sh [HARNESS ...]     (default: server client server_sock client_sock pair
#                                        load cert)
#   scripts/fuzz-c.sh --seeds           record the server and client seeds again (gen_seeds.c)
#
# Each corpus grows under build/fuzz-c/corpus/<harness>, seeded from fuzz/c/corpus/<harness>
# (X_sock: also from fuzz/c/corpus/X, whose inputs it reads).
# A crash, leak, UBSan report, broken invariant or a unit slower than 10 s stops that harness:
# the input is saved as build/fuzz-c/<harness>-crash-* (or leak-, timeout-); replay it with
# build/fuzz-c/fuzz_<harness> FILE. Once fixed, commit it to fuzz/c/corpus/<harness>/: the test
# suite replays those directories (tests/test_fuzz_c.py). Exit status 1 on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG=${CLANG:-clang}
SECS=${FUZZ_SECONDS:-60}
OUT=build/fuzz-c
if ! echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return d && n && 0; }' \
    | "$CLANG" -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "fuzz-c: $CLANG cannot build libFuzzer targets (install clang)" >&2
  exit 2
fi
CFLAGS=(-std=c99 -D_DEFAULT_SOURCE -g -O1 -fno-omit-frame-pointer -Wall -Wextra -Wshadow -Werror
        -Icsrc -Ifuzz/c '-DSP_BUILD_VERSION="fuzz"' -fsanitize=address,undefined
        -fno-sanitize-recover=all)
mkdir -p "$OUT/obj"
for f in csrc/*.c fuzz/c/fz_common.c; do
  "$CLANG" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link -c "$f" -o "$OUT/obj/$(basename "$f" .c).o"
done

if [ "${1:-}" = "--seeds" ]; then
  "$CLANG" "${CFLAGS[@]}" fuzz/c/gen_seeds.c "$OUT"/obj/*.o -lssl -lcrypto -o "$OUT/gen_seeds"
  rm -rf "$OUT/seeds"
  "$OUT/gen_seeds" "$OUT/seeds"
  for h in server client; do
    rm -f fuzz/c/corpus/$h/*-[01]
    cp "$OUT/seeds/$h"/* fuzz/c/corpus/$h/
  done
  exit 0
fi

[ $# -gt 0 ] || set -- server client server_sock client_sock pair load cert
for h in "$@"; do # (all built before any runs: a run takes minutes, the sources may change)
  "$CLANG" "${CFLAGS[@]}" -fsanitize=fuzzer "fuzz/c/fuzz_$h.c" "$OUT"/obj/*.o -lssl -lcrypto \
    -o "$OUT/fuzz_$h"
done
status=0
for h in "$@"; do
  mkdir -p "$OUT/corpus/$h"
  for seeds in "fuzz/c/corpus/$h" "fuzz/c/corpus/${h%_sock}"; do
    [ ! -d "$seeds" ] || cp -n "$seeds"/* "$OUT/corpus/$h/"
  done
  echo "fuzz-c: $h for ${SECS}s (log: $OUT/$h.log)"
  set +e
  "$OUT/fuzz_$h" -max_total_time="$SECS" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$OUT/$h-" "$OUT/corpus/$h" >"$OUT/$h.log" 2>&1
  rc=$?
  set -e
  grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|average_exec_per_sec)" \
    "$OUT/$h.log" || true
  if [ $rc -ne 0 ]; then
    echo "fuzz-c: $h FOUND SOMETHING (exit $rc):" >&2
    grep -E -A 25 "ERROR|runtime error|invariant broken|Test unit written" "$OUT/$h.log" \
      | head -n 60 >&2
    status=1
  fi
done
exit $status
