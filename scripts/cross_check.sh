#!/usr/bin/env bash
# Compile the C the way the wheels' builds do where nobody develops: for Windows (with mingw-w64
# gcc and with clang targeting it, the nearest to the wheels' MSVC that runs here) and with clang
# (macOS's compiler; here for Linux). Syntax only, every warning an error (`make crosscheck`).
#
#   scripts/cross_check.sh
#
# Each compiler checks csrc/*.c, csrc/py/sp_fastport.c and the C that build_ffi.py generates for
# the CFFI module (sslports._native: Python.h, then sp.h and the cdef's checks), with the flags
# of `make cwarn` plus -Wconversion on our own files (long is 32 bits on 64-bit Windows: a
# size_t or pointer kept in a long is cut there; MSVC warns about that at its default level).
# The Windows passes use Debian's OpenSSL headers (the arch's configuration.h made LLP64) and
# the interpreter's Python headers with a stand-in for CPython's Windows pyconfig.h, under
# _WIN32_WINNT = Windows 8.1 (the oldest Windows CPython 3.9 runs on): an API newer than that
# does not compile. What it cannot see: MSVC itself (its C dialect is close to what
# mingw-w64 gcc accepts with -std=c99) and macOS's SDK headers (which hide non-POSIX names
# under _POSIX_C_SOURCE: see sp_digest.c).
#
# Installs the two compilers and the OpenSSL headers with apt when they are missing (as root or
# through sudo). Needs the venv's Python (VPY, default .venv/bin/python) with cffi.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VPY=${VPY:-$ROOT/.venv/bin/python}
case "$VPY" in /*) ;; *) VPY=$ROOT/$VPY ;; esac
MINGW=x86_64-w64-mingw32-gcc

need=()
command -v "$MINGW" >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
command -v clang >/dev/null 2>&1 || need+=(clang)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "cross_check.sh: please install: ${need[*]}" >&2
    exit 2
  fi
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "cross_check.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# OpenSSL's headers for Windows: the common ones, this arch's configuration.h and
# opensslconf.h, with the bignum word of an LLP64 target (only BN's own headers read it).
mkdir -p "$TMP/win/openssl"
cp /usr/include/openssl/*.h "$TMP/win/openssl/"
if [ ! -f "$TMP/win/openssl/configuration.h" ]; then
  multiarch=$(gcc -print-multiarch 2>/dev/null || true)
  for dir in "/usr/include/$multiarch/openssl" /usr/include/*/openssl; do
    if [ -f "$dir/configuration.h" ]; then
      cp "$dir/"*.h "$TMP/win/openssl/"
      break
    fi
  done
fi
if [ ! -f "$TMP/win/openssl/configuration.h" ]; then
  echo "cross_check.sh: no openssl/configuration.h under /usr/include (OpenSSL 3 headers)" >&2
  exit 2
fi
sed -i -e 's/^\(# *\)define SIXTY_FOUR_BIT_LONG$/\1define SIXTY_FOUR_BIT/' \
  -e 's/^\(# *\)undef SIXTY_FOUR_BIT$/\1undef SIXTY_FOUR_BIT_LONG/' \
  "$TMP/win/openssl/configuration.h"

# The interpreter's Python headers with a Windows pyconfig.h: just what <Python.h> needs to
# parse as 64-bit Windows (a syntax check only, never a build).
PYINC=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
mkdir -p "$TMP/pywin"
cp -r "$PYINC/." "$TMP/pywin/"
cat > "$TMP/pywin/pyconfig.h" <<'EOF'
#ifndef Py_CONFIG_H
#define Py_CONFIG_H
#define MS_WIN32
#define MS_WIN64
#define MS_WINDOWS
#define NT_THREADS
#define Py_ENABLE_SHARED 1
#define HAVE_DECLSPEC_DLL
#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define SIZEOF_LONG_LONG 8
#define SIZEOF_FLOAT 4
#define SIZEOF_DOUBLE 8
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_WCHAR_T 2
#define SIZEOF__BOOL 1
#define LONG_BIT 32
#define PY_LONG_LONG long long
#define HAVE_SSIZE_T 1
#define HAVE_UINTPTR_T 1
#define HAVE_INTPTR_T 1
#define HAVE_WCHAR_H 1
#define DOUBLE_IS_LITTLE_ENDIAN_IEEE754 1
#include <stdio.h>
#endif
EOF

# The CFFI module's C, as setup.py would compile it.
"$VPY" -c 'import sys, build_ffi; build_ffi.ffibuilder.emit_c_code(sys.argv[1])' \
  "$TMP/_native.c" >/dev/null

BASE=(-std=c99 -Wall -Wextra -Wshadow -Werror -fsyntax-only -DSP_BUILD_VERSION='"check"')
OURS=(-Wconversion)
WIN=(-D_WIN32_WINNT=0x0603 -isystem "$TMP/win")
failed=0

# check NAME COMPILER-AND-FLAGS... -- PYTHON-INCLUDE
check() {
  local name=$1; shift
  local cc=() pyinc f
  while [ "$1" != -- ]; do cc+=("$1"); shift; done
  pyinc=$2
  for f in csrc/*.c; do
    "${cc[@]}" "${BASE[@]}" "${OURS[@]}" -Icsrc "$f" || { echo "  ($name: $f)"; failed=1; }
  done
  "${cc[@]}" "${BASE[@]}" "${OURS[@]}" -isystem "$pyinc" csrc/py/sp_fastport.c \
    || { echo "  ($name: csrc/py/sp_fastport.c)"; failed=1; }
  "${cc[@]}" "${BASE[@]}" -isystem "$pyinc" -Icsrc "$TMP/_native.c" \
    || { echo "  ($name: the CFFI module's generated C)"; failed=1; }
}

check "mingw-w64 gcc" "$MINGW" "${WIN[@]}" -- "$TMP/pywin"
check "clang, Windows target" clang --target=x86_64-w64-mingw32 "${WIN[@]}" -- "$TMP/pywin"
check "clang" clang -- "$PYINC"

if [ "$failed" -ne 0 ]; then
  echo "cross_check.sh: warnings or errors above" >&2
  exit 1
fi
echo "cross_check.sh: mingw-w64 gcc, clang for Windows and clang: no warnings"
