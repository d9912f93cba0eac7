"""What the benchmark drivers share: the wire header, the modes and process measurements.

The protocol (also spoken by bench/c/sp_ref.c, so any end can face any other): after the TLS
handshake the client sends a 32-byte header, then the mode's traffic.

    offset  size  field
    0       4     magic b"SPB1"
    4       1     mode (MODES below)
    5       1     flags (idle: bit 0 = warm-up connection, closed after the answer)
    6       2     zero
    8       4     wbuf: the client's write size (ping-pong: request size)
    12      4     rbuf: the server's read size (ping-pong: response size)
    16      4     count: ping-pong round trips
    20      4     zero
    24      8     size: bulk bytes
"""

from __future__ import annotations

import ctypes
import os
import resource
import struct
import time
from typing import Callable

HEADER = struct.Struct("!4sBBHIIIIQ")
MAGIC = b"SPB1"
MODES = {"up": 1, "down": 2, "pingpong": 3, "hs": 4, "idle": 5, "echo": 6}
MODE_NAMES = {v: k for k, v in MODES.items()}
FLAG_WARMUP = 1
ACK = b"K"

SUITE = "TLS_AES_128_GCM_SHA256"
# The ssl module cannot set TLS 1.3 suites; OpenSSL's system_default section does it for every
# process of a run (sslports and sp_ref also set them explicitly).
OPENSSL_CONF = f"""openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = {SUITE}
"""

PAGE = os.sysconf("SC_PAGE_SIZE")


def pack_header(mode: str, flags: int, wbuf: int, rbuf: int, count: int, size: int) -> bytes:
    return HEADER.pack(MAGIC, MODES[mode], flags, 0, wbuf, rbuf, count, 0, size)


def unpack_header(data: bytes) -> tuple[str, int, int, int, int, int]:
    magic, mode, flags, _z, wbuf, rbuf, count, _z2, size = HEADER.unpack(data)
    if magic != MAGIC or mode not in MODE_NAMES:
        raise ValueError(f"bad header {data!r}")
    return MODE_NAMES[mode], flags, wbuf, rbuf, count, size


def set_tickets(ctx: object, tickets: int) -> None:
    """The TLS 1.3 tickets a sslports server context issues per handshake (OpenSSL's default is
    2; sslports has no API for it: a bench-only reach into C, through the libssl sslports uses).
    With 0 the server's session cache is off too, so that no client resumes."""
    from sslports import _binding
    from sslports.libssl import libssl

    assert libssl is not None
    setter = libssl.SSL_CTX_set_num_tickets
    setter.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    setter(int(_binding.ffi.cast("uintptr_t", ctx._ptr)), tickets)  # type: ignore[attr-defined]
    if tickets == 0:
        _binding.lib.SSL_CTX_set_session_cache_mode(ctx._ptr, 0)  # type: ignore[attr-defined]


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _malloc_trim() -> Callable[[int], int]:
    """glibc's malloc_trim, or a no-op where the C library has none."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return lambda pad: 0


_TRIM = _malloc_trim()


def rss_bytes() -> int:
    """Resident set size now (from /proc/self/statm), after handing the C heap's free pages
    back (malloc_trim): what the process holds, not what its start-up freed. Without it, the
    idle-memory rows depended on start-up garbage: a process that compiled the package from
    source (no .pyc) left megabytes free in the heap, which the measured connections reused,
    and sslports measured 31.7 K per connection pair against 36.9 K with .pyc files present."""
    _TRIM(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def now() -> float:
    """CLOCK_MONOTONIC seconds: the same clock as sp_ref's, so start times can be shared."""
    return time.monotonic()


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def parse_kv(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, got {arg!r}")
        out[key] = value
    return out
