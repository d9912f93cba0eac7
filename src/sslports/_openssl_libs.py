"""Open ctypes handles on the libcrypto / libssl the native module runs on.

The native module asks the dynamic loader which file holds one of each library's functions
(``sp_lib_path``: dladdr on POSIX, the owning module on Windows) and that exact path is opened,
which hands back the copy already loaded. Only without the native module are names searched,
versioned ones first in :data:`openssl_lib_versions` order, then ``ctypes.util.find_library``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
from typing import Optional

from . import _binding

__all__ = ["candidate_names", "load_library", "openssl_lib_versions"]

openssl_lib_versions: list[str] = ["3", "1.1"]

_PATH_MAX = 32768


def candidate_names(base: str) -> list[str]:
    """The file names tried for ``lib<base>`` when the native module cannot say, best first.

    :param base: ``"crypto"`` or ``"ssl"``.
    :returns: names for :class:`ctypes.CDLL`, versioned ones in ``openssl_lib_versions`` order.
    """
    names: list[str] = []
    for version in openssl_lib_versions:
        if sys.platform == "win32":
            dashed = version.replace(".", "_")
            if struct.calcsize("P") == 8:
                names.append(f"lib{base}-{dashed}-x64.dll")
            names.append(f"lib{base}-{dashed}.dll")
        elif sys.platform == "darwin":
            names.append(f"lib{base}.{version}.dylib")
        else:
            names.append(f"lib{base}.so.{version}")
    found = ctypes.util.find_library(base)
    if found and found not in names:
        names.append(found)
    return names


def _native_path(which: int) -> Optional[str]:
    ffi, lib = _binding.ffi, _binding.lib
    out = ffi.new("char[]", _PATH_MAX)
    size = lib.sp_lib_path(which, out, _PATH_MAX)
    if size <= 0:
        return None
    raw = ffi.buffer(out, size)[:]
    return raw.decode("utf-8") if sys.platform == "win32" else os.fsdecode(raw)


def load_library(base: str) -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """Open ``lib<base>``: the native module's own copy, else the first candidate that loads.

    :param base: ``"crypto"`` or ``"ssl"``.
    :returns: ``(handle, None)`` or ``(None, reason)``.
    """
    errors: list[str] = []
    lib = _binding.lib
    if lib is not None:
        which = lib.SP_LIB_CRYPTO if base == "crypto" else lib.SP_LIB_SSL
        path = _native_path(which)
        if path is not None:
            try:
                return ctypes.CDLL(path), None
            except OSError as exc:
                errors.append(f"{path}: {exc}")
        else:
            errors.append(f"the native module could not tell where lib{base} is")
    else:
        errors.append(_binding.ssl_load_fail_reason or "the native module did not load")
    for name in candidate_names(base):
        try:
            return ctypes.CDLL(name), None
        except OSError as exc:
            errors.append(str(exc) if name in str(exc) else f"{name}: {exc}")
    return None, f"cannot load lib{base}: " + "; ".join(errors)
