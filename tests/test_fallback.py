"""Without the native module: import works, digests fall back to hashlib with one warning.

A child interpreter gets an LD_LIBRARY_PATH whose libssl.so.3 / libcrypto.so.3 are garbage, so
the extension (and Python's own _hashlib) cannot load OpenSSL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sslports

SRC = Path(sslports.__file__).resolve().parent.parent

CHILD = r"""
import hashlib, io, json, logging, os, sys, tempfile

records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)

import sslports
logging.getLogger("sslports").addHandler(Keep(level=logging.DEBUG))
logging.getLogger("sslports").setLevel(logging.DEBUG)

from sslports.sha1 import sha1, sha1_bytes, bytes_to_hex_string, hex_string_to_bytes
from sslports.md5 import md5, md5_bytes
from sslports import libcrypto as libcrypto_mod, libssl as libssl_mod

data = os.urandom(3 * 1024 * 1024 + 7)
path = os.path.join(tempfile.mkdtemp(), "f.bin")
with open(path, "wb") as f:
    f.write(data)
checks = []
for _ in range(3):
    checks.append(sha1(b"abc") == "a9993e364706816aba3e25717850c26c9cd0d89d")
    checks.append(md5(b"") == "d41d8cd98f00b204e9800998ecf8427e")
    checks.append(sha1(io.BytesIO(data)) == hashlib.sha1(data).hexdigest())
    checks.append(md5_bytes(bytearray(data)) == hashlib.md5(data).digest())
    with open(path, "rb") as f:
        f.read(100)
        checks.append(sha1_bytes(f) == hashlib.sha1(data[100:]).digest())
        checks.append(f.read() == b"")
    with open(path, "rb", buffering=0) as f:
        checks.append(md5(f) == hashlib.md5(data).hexdigest())
try:
    sha1("abc")
    checks.append(False)
except TypeError as exc:
    checks.append(str(exc).startswith("sha1: "))
checks.append(hex_string_to_bytes(bytes_to_hex_string(b"\x01\xab")) == b"\x01\xab")

print(json.dumps({
    "file": sslports.__file__,
    "ssl_available": sslports.ssl_available,
    "ssl_load_fail_reason": sslports.ssl_load_fail_reason,
    "checks": checks,
    "warnings": [r.getMessage() for r in records if r.levelno == logging.WARNING],
    "libcrypto": repr(libcrypto_mod.libcrypto),
    "libcrypto_load_fail_reason": libcrypto_mod.libcrypto_load_fail_reason,
    "libssl": repr(libssl_mod.libssl),
    "libssl_load_fail_reason": libssl_mod.libssl_load_fail_reason,
}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_LIBRARY_PATH and .so.3")
def test_broken_openssl_falls_back_to_hashlib(tmp_path: Path) -> None:
    broken = tmp_path / "broken-libs"
    broken.mkdir()
    for name in ("libssl.so.3", "libcrypto.so.3", "libssl.so.1.1", "libcrypto.so.1.1"):
        (broken / name).write_bytes(b"this is not an ELF shared object\n" * 100)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(broken)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert Path(result["file"]).resolve() == Path(sslports.__file__).resolve()
    assert result["ssl_available"] is False
    reason = result["ssl_load_fail_reason"]
    assert isinstance(reason, str) and reason.strip()
    assert all(result["checks"]), result["checks"]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "native" in result["warnings"][0] and "unavailable" in result["warnings"][0]
    assert reason in result["warnings"][0]
    assert result["libcrypto"] == "None" and result["libssl"] == "None"
    assert result["libcrypto_load_fail_reason"] and result["libssl_load_fail_reason"]
    assert str(broken) in result["libcrypto_load_fail_reason"]


def test_a_package_without_its_native_file_says_so(tmp_path: Path) -> None:
    """A copy of the package whose _native extension file is missing (a broken install, a
    source checkout that was never built): ssl_load_fail_reason names the missing module,
    not Python's "partially initialized module ... circular import" guess, and TLS calls
    raise SSLUnsupportedError with that reason."""
    package = Path(sslports.__file__).resolve().parent
    copy = tmp_path / "sslports"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    # (every protocol name: "tls13", "tls" and "tls11" said only "requested protocol not
    # supported", without the reason, for want of a probe of the versions)
    child = (
        "import json, sslports\n"
        "said = []\n"
        "for name in ('auto', 'secure', 'tls12', 'tls13', 'tls', 'tls11'):\n"
        "    for make in (sslports.ssl_make_client_context, sslports.ssl_make_server_context):\n"
        "        try:\n"
        "            make(name)\n"
        "            said.append(None)\n"
        "        except sslports.SSLUnsupportedError as exc:\n"
        "            said.append(str(exc))\n"
        "print(json.dumps([sslports.__file__, sslports.ssl_load_fail_reason, said]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", child],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    where, reason, said = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(where).resolve().parent == copy.resolve()
    assert reason == "cannot load the sslports native module: No module named 'sslports._native'"
    assert len(said) == 12 and all(raised is not None and reason in raised for raised in said)
