"""A ctypes handle on the libssl the native module uses (Racket: openssl/libssl).

``libssl`` is a :class:`ctypes.CDLL` of the very file the extension is linked against (found
through the dynamic loader, not by guessing names), or ``None`` with ``libssl_load_fail_reason``
saying why. Without the native module, the names in
``sslports.libcrypto.openssl_lib_versions`` (newest first) and then
``ctypes.util.find_library`` are tried.
"""

from __future__ import annotations

import ctypes
from typing import Optional

from ._openssl_libs import load_library

__all__ = ["libssl", "libssl_load_fail_reason"]

libssl: Optional[ctypes.CDLL]
libssl_load_fail_reason: Optional[str]
libssl, libssl_load_fail_reason = load_library("ssl")
