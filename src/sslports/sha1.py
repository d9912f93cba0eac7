"""SHA-1 digests of streams and byte strings, and hex conversion (Racket: openssl/sha1).

The digest is computed by OpenSSL through the native module, reading file descriptors in C
when the input is a plain file; without the native module it falls back to :mod:`hashlib`.
"""

from __future__ import annotations

import re
from typing import Union

from ._digest import SHA1, InPort, digest

__all__ = ["bytes_to_hex_string", "hex_string_to_bytes", "sha1", "sha1_bytes"]

_HEX = re.compile(r"[0-9a-fA-F]*")


def sha1(in_port: InPort) -> str:
    """The SHA-1 digest of everything left in ``in_port``, as 40 lowercase hex digits.

    Racket: sha1

    :param in_port: a readable binary file-like object, read to EOF; or (extension) bytes,
        bytearray or memoryview.
    :returns: the digest in lowercase hexadecimal.
    :raises TypeError: ``in_port`` is not a readable binary stream (a text stream, a file
        opened for writing only) nor a bytes-like object.
    :raises OSError: reading the stream failed.
    """
    return digest(SHA1, "sha1", in_port).hex()


def sha1_bytes(in_port: InPort) -> bytes:
    """The SHA-1 digest of everything left in ``in_port``, as 20 bytes.

    Racket: sha1-bytes

    :param in_port: a readable binary file-like object, read to EOF; or (extension) bytes,
        bytearray or memoryview.
    :returns: the raw digest.
    :raises TypeError: ``in_port`` is not a readable binary stream (a text stream, a file
        opened for writing only) nor a bytes-like object.
    :raises OSError: reading the stream failed.
    """
    return digest(SHA1, "sha1_bytes", in_port)


def bytes_to_hex_string(b: Union[bytes, bytearray, memoryview]) -> str:
    """The bytes of ``b`` as lowercase hex digits, two per byte.

    Racket: bytes->hex-string

    :param b: bytes, bytearray or memoryview.
    :returns: the hex string (empty for empty input).
    :raises TypeError: ``b`` is not bytes-like.
    """
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"bytes_to_hex_string: expected bytes, bytearray or memoryview, got {type(b).__name__}"
        )
    return memoryview(b).hex()  # (not b.hex(): a subclass may say anything)


def hex_string_to_bytes(s: str) -> bytes:
    """The bytes that the hex digits of ``s`` spell, two digits per byte, either case.

    Racket: hex-string->bytes

    :param s: an even number of hexadecimal digits, nothing else (no spaces, no ``0x``).
    :returns: the decoded bytes.
    :raises TypeError: ``s`` is not a str.
    :raises ValueError: odd length or a character that is not a hex digit.
    """
    if not isinstance(s, str):
        raise TypeError(f"hex_string_to_bytes: expected str, got {type(s).__name__}")
    if not _HEX.fullmatch(s):
        raise ValueError(f"hex_string_to_bytes: not a hex string: {s!r:.80}")
    if len(s) % 2:
        raise ValueError(f"hex_string_to_bytes: odd number of hex digits ({len(s)}) in {s!r:.80}")
    return bytes.fromhex(s)
