#!/usr/bin/env bash
# System packages the build and the tests need: a C compiler, OpenSSL headers, the real TLS
# peers the tests talk to, and what building OpenSSL itself needs (make test-openssl).
# Idempotent; installs only what is missing (needs root or sudo for apt).
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v gnutls-cli >/dev/null 2>&1 || need+=(gnutls-bin)
# (tests/test_real_link.py: a lossy link between two network namespaces, ip and tc)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || need+=(iproute2)
# (make test-openssl builds OpenSSL from source: its Configure needs perl with IPC::Cmd)
command -v make >/dev/null 2>&1 || need+=(make)
perl -MIPC::Cmd -e1 >/dev/null 2>&1 || need+=(perl)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: please install: ${need[*]}" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
