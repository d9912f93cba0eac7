"""The digest engine behind ``sslports.sha1`` and ``sslports.md5``.

HOW INPUT IS READ

``digest(algo, func, in_port)`` hashes ``in_port`` to EOF and picks the cheapest way to get at
the bytes, in this order:

* ``bytes``/``bytearray``/``memoryview``: hashed in place, one C call per 64 MiB.
* A plain file object over a descriptor (``io.FileIO``, or an ``io.BufferedReader`` /
  ``io.BufferedRandom`` whose raw stream is an ``io.FileIO``: ``open(path, "rb")``, pipes from
  ``os.fdopen`` or ``subprocess``, ``sys.stdin.buffer``): C reads the descriptor itself
  (``sp_digest_update_fd``), GIL released, 64 MiB per call so Python can run signal handlers in
  between. Only these exact types qualify: a subclass or wrapper may transform what it reads
  (``gzip.GzipFile.fileno()`` is the compressed file's, an SSL socket's is the ciphertext's),
  so ``fileno()`` alone proves nothing.

  - Seekable: the logical position is ``tell()`` (which accounts for what Python buffered), C
    reads from there with ``pread`` without moving the descriptor, and the object is then
    ``seek``-ed to where C stopped, which also discards its buffer. A later read returns
    ``b""``, as after any read to EOF.
  - Not seekable (pipes): the bytes Python already buffered are taken first. ``peek()`` returns
    them without touching the descriptor when there are any; when there are none it performs
    the one blocking read we need anyway. Then C reads the rest.
  - A non-blocking descriptor is left to the generic path, which waits for it with ``select``.

* An ``io.BytesIO`` still sharing the ``bytes`` it was made from: ``read()`` hands that object
  over without a copy.
* Anything else: ``readinto`` (else ``readinto1``, else ``read``) into one reusable 256 KiB
  ``bytearray``, hashed through a single ``ffi.from_buffer`` view: one C call per block, no
  allocation per block. ``readinto`` is preferred because a digest needs every byte to EOF, so
  a full block per call means fewer crossings.

When the native module is unavailable the same walk runs over :mod:`hashlib`, and the first use
logs one warning on the ``sslports`` logger.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import selectors
import sys
import threading
from collections.abc import Iterator
from typing import Any, Callable, Optional, Protocol, Union

from . import _binding

__all__ = ["MD5", "SHA1", "Algorithm", "InPort", "digest", "native_available"]

_BLOCK = 256 * 1024  # one read in the generic path
_CALL_LIMIT = 64 * 1024 * 1024  # bytes per C call: how long Ctrl-C may wait, ~50-120 ms
_ONESHOT_MAX = _CALL_LIMIT

_logger = logging.getLogger("sslports")


class SupportsRead(Protocol):
    """A readable binary stream, as far as the type checker needs to know."""

    def read(self, size: int, /) -> Optional[bytes]: ...


InPort = Union[bytes, bytearray, memoryview, SupportsRead]


class Algorithm:
    """One digest algorithm: its hashlib name and native kind (the C side knows its size)."""

    __slots__ = ("kind", "name")

    def __init__(self, name: str, kind: int) -> None:
        self.name = name
        self.kind = kind


SHA1 = Algorithm("sha1", 1)
MD5 = Algorithm("md5", 2)


def native_available() -> bool:
    """Whether digests run through the native module (else through hashlib)."""
    return _binding.lib is not None


# ---- the two hashers: native (sp_digest) and hashlib --------------------------------------


class _NativeHasher:
    """An ``sp_digest`` owned through ``ffi.gc``; released at ``close`` or by the collector."""

    __slots__ = ("_d", "_done", "_err", "func")

    def __init__(self, algo: Algorithm, func: str) -> None:
        ffi, lib = _binding.ffi, _binding.lib
        self.func = func
        self._err = ffi.new("sp_err *")
        d = lib.sp_digest_new(algo.kind, self._err)
        if d == ffi.NULL:
            raise _binding.build_error(func, "digest setup", self._err)
        self._d = ffi.gc(d, lib.sp_digest_free)
        self._done = ffi.new("unsigned long long *")

    def update(self, data: Any, size: int) -> None:
        """Hash the first ``size`` bytes of a ``ffi.from_buffer`` view."""
        if not _binding.lib.sp_digest_update(self._d, data, size, self._err):
            raise _binding.build_error(self.func, "digest update", self._err)

    def update_view(self, view: memoryview) -> None:
        """Hash a byte-format, contiguous memoryview, 64 MiB per C call."""
        ffi = _binding.ffi
        total = len(view)
        for start in range(0, total, _CALL_LIMIT):
            chunk = ffi.from_buffer("unsigned char[]", view[start : start + _CALL_LIMIT])
            try:
                self.update(chunk, len(chunk))
            finally:
                ffi.release(chunk)

    def update_fd(self, fd: int, offset: int) -> int:
        """Hash ``fd`` to EOF (pread from ``offset``, or read() when it is -1); bytes hashed.

        :raises OSError: the descriptor could not be read (``errno`` set).
        """
        lib = _binding.lib
        update_fd, d, done, err = lib.sp_digest_update_fd, self._d, self._done, self._err
        eof, fail = lib.SP_DIGEST_EOF, lib.SP_DIGEST_FAIL
        total = 0
        while True:  # each turn returns to the interpreter, which runs pending signal handlers
            status = update_fd(
                d, fd, offset if offset < 0 else offset + total, _CALL_LIMIT, done, err
            )
            total += int(done[0])
            if status == eof:
                return total
            if status == fail:
                code = int(err.sys_errno)
                if code:
                    raise _FdReadError(code, total)
                raise _binding.build_error(self.func, "digest update", err)

    def finish(self) -> bytes:
        """The digest; the hasher cannot be updated afterwards."""
        ffi, lib = _binding.ffi, _binding.lib
        out = ffi.new("unsigned char[]", lib.SP_DIGEST_MAX_SIZE)
        size = lib.sp_digest_final(self._d, out, len(out), self._err)
        if size < 0:
            raise _binding.build_error(self.func, "digest final", self._err)
        return bytes(ffi.buffer(out, size))

    def close(self) -> None:
        """Free the native state now rather than at garbage collection."""
        _binding.ffi.release(self._d)


class _FdReadError(OSError):
    """The descriptor path failed with ``errno`` after hashing ``done`` bytes."""

    def __init__(self, code: int, done: int) -> None:
        super().__init__(code, os.strerror(code))
        self.done = done


class _HashlibHasher:
    """The fallback: the same interface over a hashlib object."""

    __slots__ = ("_h",)

    def __init__(self, algo: Algorithm) -> None:
        self._h = hashlib.new(algo.name, usedforsecurity=False)

    def update_view(self, view: memoryview) -> None:
        """Hash a byte-format, contiguous memoryview."""
        self._h.update(view)

    def finish(self) -> bytes:
        """The digest."""
        return self._h.digest()

    def close(self) -> None:
        """Nothing to free."""


_Hasher = Union[_NativeHasher, _HashlibHasher]

_warned = False
_warn_lock = threading.Lock()


def _new_lock_in_child() -> None:
    """(see context._new_lock_in_child)"""
    global _warn_lock
    _warn_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def _warn_fallback_once() -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    _logger.warning(
        "sslports: the native digest path is unavailable (%s); sha1 and md5 use hashlib",
        _binding.ssl_load_fail_reason or "the native module did not load",
    )


# ---- input kinds ---------------------------------------------------------------------------


def _byte_view(data: Union[bytes, bytearray, memoryview]) -> memoryview:
    """A flat, byte-format view of any bytes-like argument (non-contiguous ones are copied)."""
    view = memoryview(data)
    if view.ndim == 1 and view.format in ("B", "b", "c") and view.c_contiguous:
        return view
    if view.nbytes == 0:  # (cast() refuses a shape with a zero in it)
        return memoryview(b"")
    if view.c_contiguous:
        return view.cast("B")
    return memoryview(view.tobytes())


def _plain_fd(port: object) -> Optional[tuple[int, bool]]:
    """``(fd, buffered)`` when ``port`` is a plain, blocking, readable file object, else None."""
    if not _binding.lib.SP_DIGEST_HAS_FD:
        return None
    kind = type(port)
    try:
        if kind is io.FileIO:
            raw: Any = port
        elif kind is io.BufferedReader or kind is io.BufferedRandom:
            raw = port.raw  # type: ignore[attr-defined]
            if type(raw) is not io.FileIO:
                return None
        else:
            return None
        if raw.closed or not raw.readable():
            return None
        fd = raw.fileno()
        if not os.get_blocking(fd):
            return None
    except (OSError, ValueError):  # detached, closed, or not a descriptor after all
        return None
    return fd, raw is not port


def _digest_plain_file(
    hasher: _NativeHasher, port: Any, fd: int, buffered: bool, func: str
) -> bool:
    """Hash a plain file object through its descriptor; False to use the generic path instead."""
    if port.seekable():
        if type(port) is io.BufferedRandom:
            port.flush()  # pending writes are part of what a read would see
        start = port.tell()
        try:
            done = hasher.update_fd(fd, start)
        except _FdReadError as exc:
            if exc.errno == errno.ESPIPE and exc.done == 0:  # seekable, yet no pread
                return False
            raise OSError(exc.errno, f"{func}: read failed ({exc.strerror})") from None
        port.seek(start + done)
        return True
    if buffered:
        pending = port.peek()  # buffered bytes, or one blocking read when there are none
        if not pending:
            return True  # EOF
        chunk = port.read(len(pending))  # served from the buffer: no descriptor read
        hasher.update_view(memoryview(chunk))
    try:
        hasher.update_fd(fd, -1)
    except _FdReadError as exc:
        raise OSError(exc.errno, f"{func}: read failed ({exc.strerror})") from None
    return True


def _shared_bytesio_value(port: object) -> Optional[bytes]:
    """The whole rest of an ``io.BytesIO`` without a copy, when that is possible."""
    if type(port) is not io.BytesIO or port.closed or port.tell() != 0:
        return None
    # CPython counts the buffer in __sizeof__ only when the BytesIO owns it; when it still
    # shares the bytes it was made from, read() returns that very object.
    try:
        owns_buffer = sys.getsizeof(port) > object.__sizeof__(port) + 256
    except TypeError:  # no getsizeof (PyPy)
        return None
    if owns_buffer:
        return None
    value = port.read()
    return value if isinstance(value, bytes) else None


# Reads in a row that may return None (no data) although the descriptor was readable each
# time: a stream that always does would make the digest spin for ever.
_NONE_READS_MAX = 100


def _wait_readable(port: Any, func: str, nones: int) -> int:
    """A non-blocking stream had no data (its `nones`-th None in a row, counting from 0): wait
    for its descriptor, or give up. Returns the count for the next None."""
    if nones >= _NONE_READS_MAX:
        raise OSError(
            f"{func}: the stream's read returned None {nones} times in a row although its "
            "descriptor was readable"
        )
    try:
        fd = port.fileno()
    except (AttributeError, OSError, ValueError):
        raise BlockingIOError(
            errno.EAGAIN, f"{func}: the stream is non-blocking and has no data ready"
        ) from None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        sel.select()
    return nones + 1


def _check_count(count: object, limit: int, func: str) -> int:
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"{func}: readinto() returned {type(count).__name__}, expected int")
    count = int.__index__(count)  # (its value: an int subclass's comparisons could pass any)
    if not 0 <= count <= limit:
        raise OSError(f"{func}: readinto() returned {count}, outside 0..{limit}")
    return count


# The io base classes' own readinto is no reader: io.RawIOBase's raises NotImplementedError and
# io.BufferedIOBase's calls read() and insists on bytes (no bytearray, memoryview or None). A
# subclass that overrides read() but inherits them is read through its own read().
_BASE_READINTO = (
    io.RawIOBase.readinto,
    io.BufferedIOBase.readinto,
    io.BufferedIOBase.readinto1,
)
_BASE_READ = (io.RawIOBase.read, io.BufferedIOBase.read)


def _readinto_of(port: Any) -> Optional[Callable[[bytearray], Any]]:
    """The ``readinto`` (else ``readinto1``) to read ``port`` with, or None to use ``read``."""
    kind = type(port)
    if (
        isinstance(port, (io.RawIOBase, io.BufferedIOBase))
        and getattr(kind, "read", None) not in _BASE_READ
    ):
        for name in ("readinto", "readinto1"):
            method = getattr(kind, name, None)
            if method is not None and method not in _BASE_READINTO:
                return getattr(port, name)  # type: ignore[no-any-return]
        return None
    return getattr(port, "readinto", None) or getattr(port, "readinto1", None)


def _digest_stream_native(hasher: _NativeHasher, port: Any, func: str) -> None:
    """The generic path over the native hasher: one C call per block, no allocation per block."""
    readinto = _readinto_of(port)
    if readinto is None:
        _digest_stream_read(hasher, port, func)
        return
    ffi, lib = _binding.ffi, _binding.lib
    buf = bytearray(_BLOCK)  # (each call its own: a stream may keep what it was lent)
    cbuf = ffi.from_buffer("unsigned char[]", buf, require_writable=True)
    try:
        update, d, err = lib.sp_digest_update, hasher._d, hasher._err
        for count in _counts_read(readinto, buf, port, func):
            if not update(d, cbuf, count, err):
                raise _binding.build_error(func, "digest update", err)
    finally:
        ffi.release(cbuf)


def _digest_stream_hashlib(hasher: _HashlibHasher, port: Any, func: str) -> None:
    """The generic path over hashlib."""
    readinto = _readinto_of(port)
    if readinto is None:
        _digest_stream_read(hasher, port, func)
        return
    buf = bytearray(_BLOCK)  # (each call its own: a stream may keep what it was lent)
    with memoryview(buf) as view:
        for count in _counts_read(readinto, buf, port, func):
            hasher.update_view(view[:count])


def _counts_read(
    readinto: Callable[[bytearray], Any], buf: bytearray, port: Any, func: str
) -> Iterator[int]:
    """How many bytes each readinto(buf) put in buf, up to EOF."""
    for count in _results(lambda: readinto(buf), port, func):
        count = _check_count(count, len(buf), func)
        if not count:
            return
        yield count


def _digest_stream_read(hasher: _Hasher, port: Any, func: str) -> None:
    """The generic path for objects that only have ``read``."""
    read = port.read
    for chunk in _results(lambda: read(_BLOCK), port, func):
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"{func}: read() returned {type(chunk).__name__}; a binary stream is needed"
            )
        if not chunk:
            return
        hasher.update_view(_byte_view(chunk))


def _results(call: Callable[[], Any], port: Any, func: str) -> Iterator[Any]:
    """What each read (`call`) returns, for ever, but None (no data yet from a non-blocking
    stream): then it waits for the stream's descriptor."""
    nones = 0
    while True:
        result = call()
        if result is None:
            nones = _wait_readable(port, func, nones)
            continue
        nones = 0
        yield result


def _check_port(port: object, func: str) -> None:
    if isinstance(port, io.TextIOBase) or _text_spooled_file(port):
        raise TypeError(f"{func}: expected a binary input port, got a text stream")
    if isinstance(port, io.IOBase) and _closed(port):
        raise ValueError(f"{func}: I/O operation on closed file")
    if not (hasattr(port, "read") or hasattr(port, "readinto") or hasattr(port, "readinto1")):
        raise TypeError(
            f"{func}: expected a readable binary file-like object, bytes, bytearray or "
            f"memoryview, got {type(port).__name__}"
        )
    if _write_only(port):
        raise TypeError(
            f"{func}: expected a readable binary file-like object, got a write-only "
            f"{type(port).__name__}"
        )


def _text_spooled_file(port: object) -> bool:
    """A text-mode tempfile.SpooledTemporaryFile (not an io.TextIOBase, though its reads
    return str; its readinto fails with AttributeError)."""
    tempfile = sys.modules.get("tempfile")  # (none made unless it was imported)
    return (
        tempfile is not None
        and isinstance(port, tempfile.SpooledTemporaryFile)
        and "b" not in str(port.mode)
    )


def _closed(port: io.IOBase) -> bool:
    try:
        return bool(port.closed)
    except ValueError:  # a detached buffer: its read says so
        return False


def _write_only(port: object) -> bool:
    """True for an open ``io.IOBase`` that says it is not readable (a file opened "wb", an
    output port). (A closed one: _check_port's ValueError.)"""
    if not isinstance(port, io.IOBase):
        return False
    try:
        return not port.closed and not port.readable()
    except ValueError:  # a detached buffer: its read says so
        return False


def _oneshot(algo: Algorithm, view: memoryview, func: str) -> bytes:
    ffi, lib = _binding.ffi, _binding.lib
    err = ffi.new("sp_err *")
    out = ffi.new("unsigned char[]", lib.SP_DIGEST_MAX_SIZE)
    data = ffi.from_buffer("unsigned char[]", view)
    try:
        size = lib.sp_digest_oneshot(algo.kind, data, len(view), out, len(out), err)
    finally:
        ffi.release(data)
    if size < 0:
        raise _binding.build_error(func, "digest", err)
    return bytes(ffi.buffer(out, size))


def digest(algo: Algorithm, func: str, in_port: object) -> bytes:
    """Hash ``in_port`` to EOF with ``algo``; errors name ``func``.

    :param algo: :data:`SHA1` or :data:`MD5`.
    :param func: the public function's name, for messages.
    :param in_port: a readable binary file-like object, or bytes, bytearray or memoryview.
    :returns: the raw digest.
    :raises TypeError: ``in_port`` is neither a readable binary stream nor bytes-like.
    """
    native = _binding.lib is not None
    if not native:
        _warn_fallback_once()
    if isinstance(in_port, (bytes, bytearray, memoryview)):
        try:
            view = _byte_view(in_port)
        except ValueError as exc:  # (a released memoryview)
            raise ValueError(f"{func}: {exc}") from None
        if native and len(view) <= _ONESHOT_MAX:
            return _oneshot(algo, view, func)
        return _run(algo, func, lambda hasher: hasher.update_view(view))
    _check_port(in_port, func)
    if native:
        return _run(algo, func, lambda hasher: _digest_port_native(hasher, in_port, func))
    return _run(algo, func, lambda hasher: _digest_port_hashlib(hasher, in_port, func))


def _run(algo: Algorithm, func: str, feed: Callable[[Any], None]) -> bytes:
    """Make the hasher (native when loaded), let ``feed`` fill it, return the digest."""
    hasher: _Hasher = (
        _NativeHasher(algo, func) if _binding.lib is not None else _HashlibHasher(algo)
    )
    try:
        feed(hasher)
        return hasher.finish()
    finally:
        hasher.close()


def _digest_port_native(hasher: _NativeHasher, port: Any, func: str) -> None:
    plain = _plain_fd(port)
    if plain is not None and _digest_plain_file(hasher, port, plain[0], plain[1], func):
        return
    value = _shared_bytesio_value(port)
    if value is not None:
        hasher.update_view(memoryview(value))
        return
    _digest_stream_native(hasher, port, func)


def _digest_port_hashlib(hasher: _HashlibHasher, port: Any, func: str) -> None:
    value = _shared_bytesio_value(port)
    if value is not None:
        hasher.update_view(memoryview(value))
        return
    _digest_stream_hashlib(hasher, port, func)


def openssl_versions() -> dict[str, Optional[str]]:
    """The OpenSSL this module was compiled against and the one it runs on (demo, `info`).

    :returns: ``{"linked": ..., "loaded": ...}``; ``None`` values when the native module is
        unavailable.
    """
    ffi, lib = _binding.ffi, _binding.lib
    if lib is None:
        return {"linked": None, "loaded": None}
    return {
        "linked": ffi.string(lib.sp_openssl_linked_version_text()).decode("ascii", "replace"),
        "loaded": ffi.string(lib.sp_openssl_version_text()).decode("ascii", "replace"),
    }
