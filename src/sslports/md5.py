"""MD5 digests of streams and byte strings (Racket: openssl/md5).

The digest is computed by OpenSSL through the native module, reading file descriptors in C
when the input is a plain file; without the native module it falls back to :mod:`hashlib`.
"""

from __future__ import annotations

from ._digest import MD5, InPort, digest

__all__ = ["md5", "md5_bytes"]


def md5(in_port: InPort) -> str:
    """The MD5 digest of everything left in ``in_port``, as 32 lowercase hex digits.

    Racket: md5

    :param in_port: a readable binary file-like object, read to EOF; or (extension) bytes,
        bytearray or memoryview.
    :returns: the digest in lowercase hexadecimal.
    :raises TypeError: ``in_port`` is not a readable binary stream (a text stream, a file
        opened for writing only) nor a bytes-like object.
    :raises OSError: reading the stream failed.
    """
    return digest(MD5, "md5", in_port).hex()


def md5_bytes(in_port: InPort) -> bytes:
    """The MD5 digest of everything left in ``in_port``, as 16 bytes.

    Racket: md5-bytes

    :param in_port: a readable binary file-like object, read to EOF; or (extension) bytes,
        bytearray or memoryview.
    :returns: the raw digest.
    :raises TypeError: ``in_port`` is not a readable binary stream (a text stream, a file
        opened for writing only) nor a bytes-like object.
    :raises OSError: reading the stream failed.
    """
    return digest(MD5, "md5_bytes", in_port)
