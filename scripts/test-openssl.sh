#!/usr/bin/env bash
# Run the tests against the OpenSSL the wheels carry (`make test-openssl`; .ci/run runs it after
# `make test`). `make test` builds against the system's OpenSSL (3.0 on Debian 12); every wheel
# carries its own 3.5 LTS instead (scripts/build_openssl.py), whose record layer, error queue and
# defaults (hybrid post-quantum key shares, among others) differ.
#
#   scripts/test-openssl.sh [pytest arguments]     (default: the whole suite)
#
# OpenSSL is built from its SHA-256-pinned tarball by scripts/build_openssl.py into
# build/openssl/prefix (once: kept between runs). The release is the wheels' own, or, where that
# tarball cannot be fetched (a machine that reaches only package registries gets it from
# Debian's pool, which keeps only the releases Debian ships), the same series' release below.
# The extension is built against it in a copy of the sources (build/openssl/tree:
# scripts/sanitized_build.sh's build_copy), and LD_LIBRARY_PATH makes every process use it,
# Python's own ssl and hashlib included: a process that loaded the system's libcrypto.so.3 first
# (import hashlib) would otherwise resolve the extension's libssl against that one.
set -euo pipefail
# shellcheck source=scripts/sanitized_build.sh
source "$(dirname "$0")/sanitized_build.sh"

# The 3.5 LTS releases Debian 13 has shipped (its pool has them when the wheels' pin is not
# there yet), newest first: the pool drops a release some time after Debian moves on from it,
# so several are tried. Each digest is the upstream tarball's, as independent pins of it give.
FALLBACKS=(
  3.5.7=a8c0d28a529ca480f9f36cf5792e2cd21984552a3c8e4aa11a24aa31aeac98e8
  3.5.6=deae7c80cba99c4b4f940ecadb3c3338b13cb77418409238e57d7f31f2a3b736
  3.5.5=b28c91532a8b65a1f983b4c28b7488174e4a01008e29ce8e69bd789f28bc2a89
  3.5.4=967311f84955316969bdb1d8d4b983718ef42338639c621ec4c34fddef355e99
)

PREFIX=$ROOT/build/openssl/prefix
mkdir -p "$ROOT/build/openssl"
"$VPY" scripts/build_openssl.py --prefix "$PREFIX" "${FALLBACKS[@]/#/--fallback=}" \
  >"$ROOT/build/openssl/openssl-build.log" 2>&1 ||
  { tail -n 40 "$ROOT/build/openssl/openssl-build.log"; exit 1; }
grep "^build_openssl:" "$ROOT/build/openssl/openssl-build.log" | tail -n 2
build_copy openssl SSLPORTS_OPENSSL_DIR="$PREFIX"
export LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The tests must import the copy, and it (and Python's ssl) must run on the OpenSSL just built.
"$VPY" - "$TREE" <<'PY'
import ssl
import sys

import sslports
from sslports import _digest, _native

if not _native.__file__.startswith(sys.argv[1] + "/"):
    sys.exit(f"test-openssl.sh: the tests would import {_native.__file__}, not the copy")
if not sslports.ssl_available:
    sys.exit(f"test-openssl.sh: {sslports.ssl_load_fail_reason}")
loaded = _digest.openssl_versions()["loaded"]
print(f"test-openssl.sh: sslports runs on {loaded}; Python's ssl on {ssl.OPENSSL_VERSION}")
if not str(loaded).startswith("OpenSSL 3.5.") or ssl.OPENSSL_VERSION != loaded:
    sys.exit("test-openssl.sh: not running on the OpenSSL built for this run")
PY

[ $# -eq 0 ] && set -- tests
"$VPY" -m pytest -q -p no:cacheprovider "$@"
