"""Deadlines of the ports' calls, and the wait slice that bounds every wait inside C."""

from __future__ import annotations

import threading
import time
from typing import Optional

from . import _binding

# Longest wait inside C; bounds how late Ctrl-C and deadlines are noticed. The pump sets its
# sockets' receive timeout to it (a read that waits a whole slice waits inside recv()).
_SLICE_MS = 50 if _binding.lib is None else int(_binding.lib.SP_WAIT_SLICE_MS)


# A Ctrl-C (KeyboardInterrupt) or sys.exit() (SystemExit) that came while a key logger's
# callback ran, inside a handshake (sni.py _keylog): not a failure of the callback, to log,
# but a request to stop. The handshake raises it once its pump call returns
# (raise_break_from_callback). Per thread (the callback runs in the thread of the OpenSSL
# call), and cleared as a handshake begins: one that came during a renegotiation that a read
# or a write drove is not raised by some later handshake.
class _Breaks(threading.local):
    exc: Optional[BaseException] = None


BREAKS = _Breaks()


def raise_break_from_callback() -> None:
    exc = BREAKS.exc
    if exc is not None:
        BREAKS.exc = None
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
