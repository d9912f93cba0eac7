"""Build the `sslports._native` CFFI module: our C shim (csrc/) linked to the system OpenSSL.

The cdef is the shim's own API (csrc/cdef/*.cdef, one piece per topic), plus the handful of
OpenSSL configuration calls Python makes directly. Set SSLPORTS_OPENSSL_DIR to build against
another OpenSSL prefix (its include/ and lib/ or lib64/ are used, and lib/ is put on the rpath),
and SSLPORTS_SANITIZE (e.g. "address,undefined") to build with sanitizers.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def _version() -> str:
    text = (HERE / "src" / "sslports" / "_version.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    if not match:
        raise RuntimeError("no __version__ in src/sslports/_version.py")
    return match.group(1)


def openssl_prefix() -> Path | None:
    """The OpenSSL prefix SSLPORTS_OPENSSL_DIR names (None: unset, the system's OpenSSL). One
    without OpenSSL's headers is refused: a typo would otherwise build against the system's
    OpenSSL without a word."""
    prefix = os.environ.get("SSLPORTS_OPENSSL_DIR")
    if not prefix:
        return None
    if not Path(prefix, "include", "openssl", "ssl.h").is_file():
        raise RuntimeError(
            f"SSLPORTS_OPENSSL_DIR={prefix!r} holds no OpenSSL (include/openssl/ssl.h is missing)"
        )
    return Path(prefix)


def openssl_license() -> Path | None:
    """The license text of the OpenSSL that SSLPORTS_OPENSSL_DIR names, when it has one
    (scripts/build_openssl.py copies it there as LICENSE-OpenSSL.txt): setup.py ships it in
    the wheel, beside the libraries that auditwheel, delocate and delvewheel vendor (the
    Apache License 2.0 asks for its text with every copy)."""
    prefix = openssl_prefix()
    if prefix is None or not (prefix / "LICENSE-OpenSSL.txt").is_file():
        return None
    return prefix / "LICENSE-OpenSSL.txt"


def _openssl_dirs() -> tuple[list[str], list[str], list[str]]:
    found = openssl_prefix()
    if found is None:
        return [], [], []
    prefix = str(found)
    libdirs = [str(Path(prefix, d)) for d in ("lib64", "lib") if Path(prefix, d).is_dir()]
    rpath = [] if sys.platform == "win32" else libdirs
    return [str(Path(prefix, "include"))], libdirs, rpath


def _libraries() -> list[str]:
    if sys.platform == "win32":
        return ["libssl", "libcrypto", "ws2_32", "crypt32", "advapi32", "user32"]
    return ["ssl", "crypto"]


include_dirs, library_dirs, runtime_dirs = _openssl_dirs()
cflags = [] if sys.platform == "win32" else ["-std=c99", "-fvisibility=hidden"]
# SSLPORTS_SANITIZE=address,undefined builds with those sanitizers (scripts/asan.sh).
sanitize = os.environ.get("SSLPORTS_SANITIZE", "")
ldflags = [f"-fsanitize={sanitize}"] if sanitize else []
if sanitize:
    cflags += [*ldflags, "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g", "-O1"]

ffibuilder = FFI()
ffibuilder.cdef("\n".join(p.read_text() for p in sorted((CSRC / "cdef").glob("*.cdef"))))
ffibuilder.set_source(
    "sslports._native",
    '#include "sp.h"\n',
    sources=[str(p.relative_to(HERE)) for p in sorted(CSRC.glob("*.c"))],
    include_dirs=[str(CSRC), *include_dirs],
    library_dirs=library_dirs,
    runtime_library_dirs=runtime_dirs,
    libraries=_libraries(),
    define_macros=[("SP_BUILD_VERSION", f'"{_version()}"')],
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
