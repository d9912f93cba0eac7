"""A ctypes handle on the libcrypto the native module uses (Racket: openssl/libcrypto).

``libcrypto`` is a :class:`ctypes.CDLL` of the very file the extension is linked against
(found through the dynamic loader, not by guessing names), or ``None`` with
``libcrypto_load_fail_reason`` saying why. Without the native module, the names in
``openssl_lib_versions`` (newest first) and then ``ctypes.util.find_library`` are tried.
"""

from __future__ import annotations

import ctypes
from typing import Optional

from ._openssl_libs import load_library, openssl_lib_versions

__all__ = ["libcrypto", "libcrypto_load_fail_reason", "openssl_lib_versions"]

libcrypto: Optional[ctypes.CDLL]
libcrypto_load_fail_reason: Optional[str]
libcrypto, libcrypto_load_fail_reason = load_library("crypto")
