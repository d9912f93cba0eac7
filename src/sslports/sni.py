"""Server Name Indication: the per-connection callback that may switch contexts.

`bind_connection` makes the Connection reachable from C callbacks during its handshake.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def bind_connection(conn: Any) -> Iterator[None]:
    """Make `conn` known to the C callbacks for the duration of its handshake."""
    yield
