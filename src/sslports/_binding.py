"""Load the native module and turn its error records into exceptions.

`import sslports` must work even when `_native` or libssl cannot be loaded: then `ffi` and `lib`
are None, `ssl_available` is False and `ssl_load_fail_reason` says why. A `_native` built from
another version of the package is refused loudly (ImportError), never used.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from ._version import __version__
from .errors import SSLError, SSLUnsupportedError

ffi: Any = None
lib: Any = None
ssl_load_fail_reason: Optional[str] = None

try:
    from . import _native  # type: ignore[attr-defined]
except ImportError as exc:  # the extension or libssl/libcrypto could not be loaded
    ssl_load_fail_reason = f"cannot load the sslports native module: {exc}"
else:
    _stamp = _native.ffi.string(_native.lib.sp_build_version()).decode()
    if _stamp != __version__:
        raise ImportError(
            f"stale sslports native module: built for {_stamp}, package is {__version__}; "
            "rebuild it (pip install -e . or make build)"
        )
    ffi, lib = _native.ffi, _native.lib

ssl_available: bool = lib is not None


def require_native(func: str) -> Any:
    """Return `lib`, or raise SSLUnsupportedError naming `func` and the load failure."""
    if lib is None:
        raise SSLUnsupportedError(f"{func}: SSL not available ({ssl_load_fail_reason})")
    return lib


def err_lines(err: Any) -> list[str]:
    """The OpenSSL errors recorded in an sp_err, one string each."""
    if err.nerrs == 0:
        return []
    return [line for line in ffi.string(err.text).decode("utf-8", "replace").split("\n") if line]


def verify_text(code: int) -> str:
    """OpenSSL's text for an X509 verify result code."""
    return str(ffi.string(lib.X509_verify_cert_error_string(code)).decode("utf-8", "replace"))


# SSL_get_error's kinds that can end an operation with an empty error queue.
_SSL_ERROR_NAMES = {1: "SSL_ERROR_SSL", 5: "SSL_ERROR_SYSCALL", 6: "SSL_ERROR_ZERO_RETURN"}


def build_error(
    func: str,
    what: str,
    err: Any = None,
    cls: type[SSLError] = SSLError,
    detail: Optional[str] = None,
) -> SSLError:
    """Make the exception for `func` whose `what` failed, from an sp_err record (or the queue)."""
    if err is None:
        err = ffi.new("sp_err *")
        lib.sp_err_reset(err)
        lib.sp_err_drain(err)
    errors = err_lines(err)
    verify_code = int(err.verify_result) if err.verify_result > 0 else None
    verify_message = verify_text(verify_code) if verify_code is not None else None
    reason = detail or (errors[-1] if errors else None)
    if reason is None and err.sys_errno:
        reason = strerror(err.sys_errno)
    if reason is None and err.ssl_error in _SSL_ERROR_NAMES:  # (still say what kind)
        reason = f"OpenSSL gave no reason: {_SSL_ERROR_NAMES[err.ssl_error]}"
    if verify_message and (reason is None or "certificate verify failed" in reason):
        reason = f"{reason}: {verify_message}" if reason else verify_message
    message = f"{func}: {what + ' ' if what else ''}failed" + (f" ({reason})" if reason else "")
    exc = cls(
        message,
        openssl_errors=errors,
        verify_code=verify_code,
        verify_message=verify_message,
        errno=int(err.sys_errno) or None,
    )
    return exc


def strerror(code: int) -> str:
    """The system's text for an error number: os.strerror, except for Winsock's codes
    (WSAECONNRESET 10054, ...), which only FormatMessage knows ("Unknown error" otherwise)."""
    if sys.platform == "win32" and code >= 10000:  # pragma: no cover - Windows
        import ctypes

        return ctypes.FormatError(code).strip()
    return os.strerror(code)
