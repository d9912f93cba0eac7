"""Smoke test of an installed sslports wheel (cibuildwheel's test-command, and `make wheel`).

Run it as a script from a directory outside the source tree: `python smoke.py`. It checks that
sslports is imported from site-packages (not a source checkout), prints the OpenSSL it was built
against and the one it loaded, runs a verified TLS 1.3 echo over loopback against the bundled
TEST_PEM, and hashes with sslports.sha1. Any failure exits non-zero.

If SSLPORTS_EXPECT_PREFIX is set, sslports must be imported from below that directory (e.g. the
virtual environment the wheel was installed into); SSLPORTS_SMOKE_ALLOW_SOURCE=1 lets a developer
run the checks against a source checkout. Only the standard library and the installed
sslports are imported (pytest and conftest.py are not involved).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
# The script's own directory is sys.path[0]: drop it, so nothing next to this file (a source
# checkout's tests/) can shadow the installed package.
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]

FAILURES: list[str] = []


def check(name: str, func: Callable[[], Any]) -> None:
    try:
        detail = func()
    except Exception:
        FAILURES.append(name)
        print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
    else:
        print(f"ok   {name}" + (f": {detail}" if detail else ""), flush=True)


def version_text(number: int) -> str:
    """OPENSSL_VERSION_NUMBER (3.x layout 0xMNN00PP0) as 'M.N.P'."""
    return f"{number >> 28}.{(number >> 20) & 0xFF}.{(number >> 4) & 0xFF}"


def check_location() -> str:
    import sslports

    location = Path(sslports.__file__).resolve()
    root = location.parent.parent
    in_source = (root.parent / "build_ffi.py").is_file() or (root / "build_ffi.py").is_file()
    if in_source and os.environ.get("SSLPORTS_SMOKE_ALLOW_SOURCE") != "1":
        raise AssertionError(f"sslports imported from a source tree: {location}")
    expected = os.environ.get("SSLPORTS_EXPECT_PREFIX")
    if expected and Path(expected).resolve() not in location.parents:
        raise AssertionError(f"sslports imported from {location}, not below {expected}")
    return str(location)


def check_openssl() -> str:
    import sslports
    from sslports import _binding

    if not sslports.ssl_available:
        raise AssertionError(f"ssl not available: {sslports.ssl_load_fail_reason}")
    ffi, lib = _binding.ffi, _binding.lib
    loaded = ffi.string(lib.sp_openssl_version_text()).decode()
    loaded_number = int(lib.sp_openssl_version_number())
    linked_number = int(lib.sp_openssl_linked_version_number())
    linked = version_text(linked_number)
    if hasattr(lib, "sp_openssl_linked_version_text"):
        linked = ffi.string(lib.sp_openssl_linked_version_text()).decode()
    print(f"     OpenSSL loaded: {loaded} (0x{loaded_number:08x})")
    print(f"     OpenSSL linked: {linked} (0x{linked_number:08x})")
    if loaded_number >> 28 < 3:
        raise AssertionError("sslports needs OpenSSL 3.x at run time")
    if loaded_number >> 28 != linked_number >> 28 or loaded_number < linked_number:
        raise AssertionError(
            "the loaded OpenSSL is older than (or a different major from) the linked one"
        )
    try:
        from sslports import libcrypto, libssl

        libs = [getattr(m, "_name", repr(m)) for m in (libssl.libssl, libcrypto.libcrypto)]
        print(f"     libraries: {', '.join(str(x) for x in libs)}")
    except Exception as exc:  # informational only
        print(f"     (library paths unavailable: {exc})")
    return loaded


def check_tls13_echo() -> str:
    import sslports

    server_ctx = sslports.ssl_make_server_context(
        "tls13", private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM
    )
    listener = sslports.ssl_listen(0, 5, True, "127.0.0.1", server_ctx)
    port = sslports.ssl_addresses(listener, True)[1]
    server_error: list[BaseException] = []

    def serve() -> None:
        try:
            sin, sout = sslports.ssl_accept(listener)
            with sin, sout:
                line = sin.readline()
                sout.write(line)
                sout.flush()
        except BaseException as exc:
            server_error.append(exc)

    thread = threading.Thread(target=serve, name="smoke-server", daemon=True)
    thread.start()
    try:
        client_ctx = sslports.ssl_make_client_context("auto")
        sslports.ssl_load_verify_source(client_ctx, sslports.TEST_PEM)
        sslports.ssl_set_verify(client_ctx, True)
        sslports.ssl_set_verify_hostname(client_ctx, True)
        cin, cout = sslports.ssl_connect("localhost", port, client_ctx, timeout=30)
        with cin, cout:
            message = b"hello over TLS 1.3\n"
            cout.write(message)
            cout.flush()
            echoed = cin.readline()
            version = sslports.ssl_protocol_version(cin)
            verified = sslports.ssl_peer_verified(cin)
            cipher = sslports.ssl_cipher_name(cin)
        thread.join(30)
    finally:
        listener.close()
    if server_error:
        raise AssertionError(f"server side failed: {server_error[0]!r}")
    if thread.is_alive():
        raise AssertionError("server thread did not finish")
    if echoed != message:
        raise AssertionError(f"echo mismatch: {echoed!r}")
    if version != "tls13":
        raise AssertionError(f"negotiated {version}, expected tls13")
    if not verified:
        raise AssertionError("peer certificate not verified")
    return f"{version}, {cipher}, peer verified, port {port}"


def check_fast_path() -> str:
    """On CPython the wheel carries the ports' C fast path, free-threaded builds included,
    and there importing it leaves the interpreter without a GIL."""
    import importlib.util
    import platform
    import sysconfig

    if platform.python_implementation() != "CPython":
        return "not CPython: the ports' Python methods"
    # (the module itself: SSLPORTS_NO_FASTPORT set in the environment leaves it unused, not
    # missing)
    if importlib.util.find_spec("sslports._fastport") is None:
        raise AssertionError("sslports._fastport is missing from this CPython wheel")
    import sslports._fastport  # noqa: F401  (loads; fails on an ABI mismatch)

    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        if sys._is_gil_enabled():  # type: ignore[attr-defined]
            raise AssertionError("importing sslports turned the GIL on")
        return "built; free-threaded, the GIL stays off"
    return "built"


def check_sha1() -> str:
    from sslports.sha1 import sha1

    assert sha1(io.BytesIO(b"abc")) == "a9993e364706816aba3e25717850c26c9cd0d89d"
    data = bytes(range(256)) * 4099
    digest = sha1(io.BytesIO(data))
    assert digest == hashlib.sha1(data).hexdigest(), digest
    return digest


def main() -> int:
    print(f"Python {sys.version.split()[0]} ({sys.executable}), cwd {os.getcwd()}")
    check("import location", check_location)
    if FAILURES:
        return 1
    check("OpenSSL versions", check_openssl)
    check("TLS 1.3 loopback echo with verification", check_tls13_echo)
    check("sha1", check_sha1)
    check("the ports' C fast path", check_fast_path)
    if FAILURES:
        print(f"smoke: {len(FAILURES)} failed: {', '.join(FAILURES)}")
        return 1
    print("smoke: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
