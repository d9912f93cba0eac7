"""Peer verification and connection facts (API.md section 5)."""

from __future__ import annotations

from typing import Any

from .errors import SSLError


def verify_port_now(func: str, port: Any, on: bool, try_only: bool) -> None:
    """Verify the peer of an established connection now (renegotiation / PHA)."""
    raise SSLError(f"{func}: verifying an established connection is not implemented yet")
