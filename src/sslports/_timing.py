"""Deadlines of the ports' calls, and the wait slice that bounds every wait inside C."""

from __future__ import annotations

import threading
import time
from typing import Optional

from . import _binding

# Longest wait inside C; bounds how late Ctrl-C and deadlines are noticed. The pump sets its
# sockets' receive timeout to it (a read that waits a whole slice waits inside recv()).
_SLICE_MS = 50 if _binding.lib is None else int(_binding.lib.SP_WAIT_SLICE_MS)

# A close whose last bytes the peer has not taken yet goes on sending them in the background
# (a socket port's lingering close, aio's, a stream port's sender with close_original) while
# the peer takes some: it gives up on a peer that took none for this long (seconds) ...
_LINGER_SECONDS = 10.0
_LINGER_MOST_SECONDS = 300.0  # ... and on one that takes a few now and then, after this


# A Ctrl-C (KeyboardInterrupt) or sys.exit() (SystemExit) that came while a callback into
# Python ran inside an OpenSSL call (sni.py _keylog, _sni; also at the callback's first line,
# before its own `try`: sni.py _lost_in_callback): not a failure of the callback, to log, but a
# request to stop. The call that drove OpenSSL raises it once its pump call returns
# (raise_break_from_callback): a handshake, and a read or a write, where a KeyUpdate or a TLS
# 1.2 renegotiation logs keys too. A key logger's also sets the pump's flag (sp_conn.h BREAKS),
# which the C fast path asks after each pump call: a read that got its bytes would otherwise
# return without looking. Per thread (the callback runs in the thread of the OpenSSL call).
# A close raises none: one that came in a close's drain of tickets (a KeyUpdate's line) is
# raised by this thread's next read or write, as a Ctrl-C a moment late, unless a handshake
# comes first: each clears what is left (drop_break), which belongs to no call of its own.
class _Breaks(threading.local):
    exc: Optional[BaseException] = None


BREAKS = _Breaks()


def drop_break() -> None:
    BREAKS.exc = None
    if _binding.lib is not None:
        _binding.lib.sp_take_break()


def raise_break_from_callback() -> None:
    exc = BREAKS.exc
    if exc is not None:
        drop_break()
        try:
            raise exc
        finally:
            del exc


class _Deadline:
    """A point in monotonic time, or none."""

    __slots__ = ("at",)

    def __init__(self, timeout: Optional[float]) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def slice_ms(self) -> int:
        if self.at is None:
            return _SLICE_MS
        left = self.at - time.monotonic()
        return max(0, min(_SLICE_MS, int(left * 1000) + 1))

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def remaining(self) -> Optional[float]:
        return None if self.at is None else max(0.0, self.at - time.monotonic())


_NO_DEADLINE = _Deadline(None)  # immutable: shared by every call without a timeout


def _deadline(timeout: Optional[float]) -> _Deadline:
    return _NO_DEADLINE if timeout is None else _Deadline(timeout)
