"""asyncio: sslports' engine under an event loop (no thread per connection).

HOW IT WORKS

Each connection is one C pump in stream mode (memory BIOs, csrc/sp_conn.c): its calls never
wait; they report WANT_READ when they need ciphertext. The event loop does the waiting.

* ``open_ssl_connection`` and ``start_ssl_server``: the connection *is* the transport's
  protocol (an ``asyncio.BufferedProtocol``). The transport receives into a per-thread buffer
  (no bytes object per read); ``buffer_updated`` feeds the pump and, once the handshake is
  done, decrypts everything it can at once into the reader's plaintext buffer, then wakes a
  waiting reader. A read that finds enough plaintext buffered returns without awaiting.
* ``wrap_ssl_streams`` (over an asyncio StreamReader/StreamWriter pair): a read that needs
  more ciphertext awaits the raw reader (one coroutine at a time, under a lock), feeds and
  decrypts what came, and looks again.
* Writing encrypts at once (``SSLStreamWriter.write`` is synchronous, like asyncio's) and
  hands the ciphertext to the transport. ``drain()`` returns at once unless the transport
  paused writing (back-pressure) or a renegotiation holds plaintext back.
* Reading back-pressure: when more than ``_READ_HIGH`` bytes of plaintext wait unread, the
  transport stops reading until the application catches up; when reading made answers of its
  own (a KeyUpdate reply, an alert refusing a renegotiation) and the raw side's write buffer is
  full, reading waits until it drained, even for a waiting reader (``replied``): a peer that
  asks for answers and never reads them cannot make them pile up.
* ``close()`` while a renegotiation holds written bytes back lets them go first (a task
  feeds the renegotiation until they are out), as a transport sends its buffer first.

There is no other background task: cancelling any await leaves nothing half-done (plaintext stays
in the reader's buffer, the pump keeps what it was fed), and one task may read while another
writes (full duplex).

``start_ssl_server`` returns an ``SSLServer`` (``asyncio.Server``'s essentials). A client whose
handshake fails or stalls past ``handshake_timeout`` is dropped and logged at debug level on
the ``sslports`` logger (with the exception); an exception raised by a server-name callback
or by ``client_connected_cb`` goes to the loop's exception handler. Closing the server also
cancels the handshakes still in progress.

The connection-fact functions of API.md section 5 (``ssl_peer_verified``,
``ssl_get_alpn_selected``, ``ssl_channel_binding``, ...) accept the reader or the writer, and
``SSLStreamWriter.get_extra_info`` answers asyncio's TLS keys ("cipher", "peercert", ...) from
them. Clients have no default handshake deadline (as ssl_connect); servers have
``handshake_timeout=30.0`` (as ssl_listen): docs/guide/asyncio.md.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import socket
import sys
import threading
import warnings
from asyncio.constants import LOG_THRESHOLD_FOR_CONNLOST_WRITES
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Optional, Union

from . import _binding
from ._binding import build_error
from ._timing import (
    _LINGER_MOST_SECONDS,
    _LINGER_SECONDS,
    BREAKS,
    drop_break,
    raise_break_from_callback,
)
from .context import SSLClientContext, SSLServerContext, _Context, encode_alpn, literal_family
from .errors import SSLError, SSLNetworkError, SSLTimeoutError
from .ports import _LINGER_POLL_MS, _check_timeout, check_handshake_timeout
from .verify import cipher_info, peer_certificate

_BUF = 1 << 18  # per-thread receive and ciphertext buffers (asyncio's max_size)
# Plaintext is decrypted in pieces of at most this size, each one bytes object. glibc's malloc
# gives blocks of 128 KiB and more of varying size a fresh mapping (mmap) each time, so every
# page of them faults when first written: decrypted whole, the 256 KiB that uvloop hands over at
# once made a uvloop server's reads cost twice the CPU (bench/README.md, section 4).
_PLAIN_CHUNK = 1 << 16
# Unread plaintext at which the transport stops reading, and starts again: what a connection
# whose handler does not read holds (plus what it had fed: up to one _BUF receive, decrypted).
# asyncio's StreamReader pauses at 2 x its limit, 128 KiB. (1 MiB here held 1.7 MB per such
# client against asyncio's 0.9.)
_READ_HIGH = 1 << 18
_READ_LOW = 1 << 16
_LIMIT = 2**16  # asyncio's default `limit`: the longest line readline() and readuntil() return
_LINGER_POLL = _LINGER_POLL_MS / 1000  # (close_raw lingers as the synchronous ports' close)
# ... looking again after twice the time each time, up to this: a thousand connections whose
# peers read slowly (or not at all) cost a loop ~1000 calls a second at first and ~3 a second
# each from then on, not 50 each for up to _LINGER_SECONDS (one busy core per ~2 500)
_LINGER_POLL_MAX = 0.32
# pump statuses (csrc/sp_conn.h)
_OK, _WANT_READ, _WANT_WRITE, _EOF, _RAGGED_EOF = 0, 1, 2, 3, 4
_log = logging.getLogger("sslports")

# The pump calls of the hot paths, looked up once (None without the native module, which every
# entry point refuses first).
_lib: Any = _binding.lib
_sp_read: Any = _lib and _lib.sp_read
_sp_write: Any = _lib and _lib.sp_write
_sp_feed: Any = _lib and _lib.sp_feed
_sp_take: Any = _lib and _lib.sp_take
_sp_pending_out: Any = _lib and _lib.sp_pending_out
_unpack: Any = _binding.ffi and _binding.ffi.unpack

_per_thread = threading.local()


def _tcp_fd(transport: asyncio.BaseTransport) -> int:
    """The descriptor of a TCP transport's socket, or -1 (another kind of transport)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return -1
    try:
        return int(sock.fileno())
    except (OSError, ValueError):
        return -1


def _thread_buffers() -> tuple[Any, Any, Any, Any, Any, Any]:
    """This thread's buffers: the receive bytearray and its cdata, then the plaintext and the
    ciphertext buffers, each as ``unsigned char[]`` (for the pump) and ``char *`` (for
    ``ffi.unpack``, which makes bytes in one step).

    Each is filled and emptied with no await in between, so every connection of the thread's
    event loop can share them (they stay alive with the thread's ``_per_thread``); the receive
    buffer only where the loop fills it and reports it in one step (_fills_at_once).
    """
    try:
        return _per_thread.bufs  # type: ignore[no-any-return]
    except AttributeError:
        ffi = _binding.ffi
        alloc = ffi.new_allocator(should_clear_after_alloc=False)
        recv = bytearray(_BUF)
        plain = alloc("unsigned char[]", _PLAIN_CHUNK)
        out = alloc("unsigned char[]", _BUF)
        _per_thread.bufs = (
            recv,
            ffi.from_buffer("unsigned char[]", recv, require_writable=True),
            plain,
            ffi.cast("char *", plain),
            out,
            ffi.cast("char *", out),
        )
        return _per_thread.bufs  # type: ignore[no-any-return]


def _fills_at_once(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `loop` fills a BufferedProtocol's buffer and reports it (buffer_updated) in one
    step, as selector loops and uvloop do: then its connections can share the thread's receive
    buffer. A proactor loop (Windows' default) keeps the buffer through an overlapped receive
    while other connections receive: there each connection has its own."""
    return isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) or (
        type(loop).__module__.partition(".")[0] == "uvloop"
    )


__all__ = [
    "SSLServer",
    "SSLStreamReader",
    "SSLStreamWriter",
    "open_ssl_connection",
    "start_ssl_server",
    "wrap_ssl_streams",
]


def _lost(func: str, exc: BaseException) -> SSLNetworkError:
    """The error for a connection the raw side lost to `exc` (a reset, a broken pipe)."""
    return SSLNetworkError(f"{func}: connection lost ({exc})", errno=_errno_of(exc))


# The errno a ConnectionError of asyncio's own stands for ("Connection lost" carries none)
_CLASS_ERRNO = (
    (BrokenPipeError, errno.EPIPE),
    (ConnectionResetError, errno.ECONNRESET),
    (ConnectionAbortedError, errno.ECONNABORTED),
)


def _errno_of(exc: Optional[BaseException]) -> Optional[int]:
    """The errno of a failure, for the SSLNetworkError it becomes (README, asyncio.md: a reset
    is `exc.errno == errno.ECONNRESET`, whichever call meets it)."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int):
        return number
    return next((n for cls, n in _CLASS_ERRNO if isinstance(exc, cls)), None)


def _ran_out(status: int, err: Any) -> bool:
    """A failed handshake step (`status`, its error record) met the end of its input: no alert
    from the peer, no verification failure."""
    if status == _RAGGED_EOF:
        return True
    lines = _binding.err_lines(err)
    return err.verify_result <= 0 and all("unexpected eof" in line for line in lines)


class AioConnection:
    """One asyncio TLS connection: the pump, the plaintext read so far and the raw side.

    Subclasses move the ciphertext: `_SSLProtocol` is the transport's protocol,
    `_StreamConnection` runs over an asyncio stream pair.
    """

    is_async = True
    must_drain = False  # drain() has to ask the raw side even when nothing is held back
    paused_reading = False  # too much plaintext waits unread: the raw side stopped reading
    sending = True  # the raw side takes ciphertext (until closed or lost)
    input_ended = False  # the raw side reported its end (EOF or loss)
    peer_closed = False  # the peer's close_notify arrived (its write side is closed, not ours)
    closing: Optional[asyncio.Task[None]] = None  # close() waits for held-back bytes (close)
    dropped_writes = 0  # writes made after close() (write)
    # The transport was closed on our side (writer.transport.abort()), not by the peer: the
    # end of input that follows is no truncation, even under strict_eof. (_SSLProtocol only:
    # a stream pair cannot tell an abort from its peer's EOF.)
    ended_here = False
    # What the raw side's input failed with (a reset): a failed handshake names it (handshake)
    input_error: Optional[OSError] = None
    # A server connection (start_ssl_server) holds its writer until the connection is lost:
    # the collector must not close it under a task that still reads (SSLStreamWriter.__del__).
    keeps_writer = False
    app_writer: Optional[SSLStreamWriter] = None

    def __init__(
        self, ptr: Any, context: _Context, hostname: Optional[str], strict_eof: bool
    ) -> None:
        self.ptr = ptr
        self.context = context
        self.hostname = hostname
        self.strict_eof = strict_eof
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.established = False  # the handshake completed: decrypt as ciphertext arrives
        self.sni_error: Optional[BaseException] = None
        self.sni_failed = False  # the handshake failed on sni_error (raised, then dropped)
        self.switched_context: Optional[_Context] = None
        self.err = _binding.ffi.new("sp_err *")
        self.count = _binding.ffi.new("size_t *")
        bufs = _thread_buffers()
        self.plain_buf, self.plain_chars, self.out_buf, self.out_chars = bufs[2:]
        # What the reader takes from: plaintext, then the end (EOF) or the failure. Plaintext
        # that arrives while none is buffered stays one bytes object (`head`), which a read of
        # that size returns as is; otherwise it goes to (or joins) the bytearray `plain`.
        self.head: Optional[bytes] = None
        self.plain = bytearray()
        self.eof = False
        self.exc: Optional[BaseException] = None
        self.waiter: Optional[asyncio.Future[None]] = None  # the reader's or the handshake's
        # Plaintext held back by a renegotiation: a bytearray of its own, which later writes
        # join at its end and sending takes from its front (no copy of what it holds).
        self.pending_write: Optional[bytearray] = None
        self.write_exc: Optional[BaseException] = None
        self.drain_waiters: list[asyncio.Future[None]] = []
        # Why a close gave up on the bytes a renegotiation held back (close_when_sent):
        # wait_closed()'s error.
        self.unsent: Optional[BaseException] = None

    # -- the raw side (subclasses) ------------------------------------------------------------

    def push_out(self) -> None:
        """Hand everything the pump queued to the raw side (never waits)."""
        n = _sp_take(self.ptr, self.out_buf, _BUF)
        while n:
            if self.sending:
                self.raw_write(_unpack(self.out_chars, n))
            if n < _BUF:
                return
            n = _sp_take(self.ptr, self.out_buf, _BUF)

    def raw_write(self, data: bytes) -> None:
        raise NotImplementedError

    def wait_input(self) -> Awaitable[None]:
        """Wait until more ciphertext (or its end) was fed to the pump."""
        raise NotImplementedError

    def wait_progress(self) -> Awaitable[None]:
        """Wait until input moved a renegotiation on (a held-back write may go)."""
        raise NotImplementedError

    def wait_read(self) -> Awaitable[None]:
        """wait_input for the reader: a second coroutine reading at once is a RuntimeError,
        as asyncio's StreamReader says."""
        return self.wait_input()

    async def drain_raw(self) -> None:
        """Wait for the raw side's back-pressure."""

    def close_raw(self) -> None:
        raise NotImplementedError

    def abort_raw(self) -> None:
        """Close the raw side at once, dropping what it still buffers."""
        raise NotImplementedError

    async def wait_closed(self) -> None:
        """Wait until the raw side is closed; raise what it lost the connection with."""
        raise NotImplementedError

    def raw_closing(self) -> bool:
        raise NotImplementedError

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        raise NotImplementedError

    @property
    def transport(self) -> Any:
        raise NotImplementedError

    def pause_reading(self) -> None:
        """Too much plaintext waits unread: stop the raw side reading."""

    def resume_reading(self) -> None:
        """The reader took enough plaintext: let the raw side read again."""

    def replied(self) -> None:
        """Reading queued ciphertext of its own (replies to the peer's records): a peer that
        sends records that need answers and never reads the answers must not make them pile
        up without bound, so the raw side reads on only once they drained."""

    # -- the engine ---------------------------------------------------------------------------

    def decrypt(self) -> None:
        """Decrypt all the ciphertext fed so far into `plain`; note the end or the failure;
        send what reading queued (a KeyUpdate reply, an alert); wake the reader if it has
        something new to take. A part of a record (a 16 KiB record comes in a dozen TCP
        segments) gives it nothing: waking it anyway would cost a turn of the loop per
        segment, for a read that only waits again."""
        news = self.exc is not None or self.eof or self.input_ended
        if self.exc is None and not self.eof:
            ptr = self.ptr
            buf = self.plain_buf
            count = self.count
            while True:
                status = _sp_read(ptr, buf, _PLAIN_CHUNK, _PLAIN_CHUNK, count, 0, self.err)
                n = count[0]
                if n:
                    news = True
                    data = _unpack(self.plain_chars, n)
                    if self.head is None and not self.plain:
                        self.head = data
                    else:
                        if self.head is not None:
                            self.plain += self.head
                            self.head = None
                        self.plain += data
                        if len(self.plain) > _READ_HIGH and not self.paused_reading:
                            self.pause_reading()
                if status == _WANT_READ:  # everything fed was consumed
                    break
                if status == _OK:  # the buffer was full, or data came before the end
                    if n:
                        continue
                    break
                if status == _EOF:
                    self.eof = True
                    self.peer_closed = True
                elif status == _RAGGED_EOF:
                    if self.strict_eof and not (self.closed or self.ended_here):
                        # (our own close or abort is no failure)
                        self.exc = SSLError("read: read failed (unexpected eof)")
                    else:
                        self.eof = True
                else:
                    self.exc = self.failure("read")
                news = True
                break
            if _sp_pending_out(ptr):
                self.push_out()  # a KeyUpdate reply, a renegotiation flight, an alert
                self.replied()
            if self.pending_write is not None:
                self.retry_write()
        if self.drain_waiters:
            self.wake_drain()
        waiter = self.waiter
        if waiter is not None and news:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if BREAKS.exc is not None:
            # A key logger met Ctrl-C (a KeyUpdate's, a renegotiation's line): raised from
            # the protocol's callback, it stops the event loop, as asyncio raises one there.
            # What was decrypted stays for the reader.
            raise_break_from_callback()

    def input_arrived(self) -> None:
        """Ciphertext (or its end) was fed: decrypt it, or wake the handshake."""
        if self.established:
            self.decrypt()
        else:
            waiter = self.waiter
            if waiter is not None:
                self.waiter = None
                if not waiter.done():
                    waiter.set_result(None)

    async def handshake(self, func: str) -> None:
        lib = _binding.lib
        from .sni import bind_connection

        if BREAKS.exc is not None:  # (see _timing.BREAKS)
            drop_break()
        while True:
            with bind_connection(self, func):
                status = lib.sp_handshake(self.ptr, 0, self.err)
            raise_break_from_callback()
            self.push_out()
            if status == _OK:
                break
            if status == _WANT_READ:
                await self.wait_input()
                continue
            if self.sni_error is not None:
                # Raised with neither the connection nor a local naming it once it leaves: its
                # traceback holds this frame, so either would be a cycle that keeps the
                # connection until the cyclic collector runs. (`sni_failed` tells the server.)
                sni_error, self.sni_error = self.sni_error, None
                self.sni_failed = True
                try:
                    raise sni_error
                finally:
                    del sni_error
            what = _binding.handshake_step(bool(lib.SSL_is_server(lib.sp_conn_ssl(self.ptr))))
            if (
                self.input_error is not None
                and self.sni_error is None
                and _ran_out(status, self.err)
            ):
                # the input ended in the transport's failure (a reset), not in an alert the
                # peer sent before it: say so, as a socket port's handshake does
                failure = self.input_error
                reason = _binding.strerror(failure.errno) if failure.errno else str(failure)
                peer = self.get_extra_info("peername")
                if isinstance(peer, tuple) and len(peer) >= 2:
                    reason += f": {_binding.endpoint(_binding.unmapped(str(peer[0])), peer[1])}"
                raise SSLNetworkError(f"{func}: {what} failed ({reason})", errno=failure.errno)
            if status == _RAGGED_EOF:
                raise SSLNetworkError(f"{func}: {what} failed (connection closed by peer)")
            raise build_error(
                func,
                what,
                self.err,
                SSLNetworkError,
                conn=self.ptr,
                hostname=self.hostname,
                hint=_binding.server_hint(self.ptr, self.err),
            )
        self.established = True
        self.decrypt()  # what came with the peer's last flight (data, TLS 1.3 tickets)

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Encrypt `data` and queue the ciphertext on the raw side.

        After close() the data is dropped, as asyncio's transports drop it (a task may still be
        writing while another closes): a warning from the fifth such write on, as theirs.
        """
        if self.closed:
            self.dropped_writes += 1
            if self.dropped_writes >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                _log.warning("write: connection is closed (the data is dropped)")
            return
        self.encrypt(data)
        if BREAKS.exc is not None:  # (a renegotiation's key log met Ctrl-C: see decrypt)
            raise_break_from_callback()

    def encrypt(self, data: Union[bytes, bytearray, memoryview]) -> None:
        held = self.pending_write
        if held is not None:
            held += data  # (after what is held: a copy of `data` only)
            return
        done = self.encrypt_some(data)
        if done >= 0:
            # A renegotiation is under way: the rest goes once the peer's flight came in.
            self.pending_write = bytearray(memoryview(data).cast("B")[done:])

    def encrypt_some(self, data: Union[bytes, bytearray, memoryview]) -> int:
        """Encrypt `data` and queue the ciphertext: -1 once all of it went, else how much of it
        did before a renegotiation held the rest back."""
        # The buffer exports are released on the way out, also on an exception: its traceback
        # keeps this frame, and a write's error stored on the connection (write_exc) makes a
        # cycle; the collector clearing a memoryview that is still exported, then freeing the
        # export, crashed the interpreter.
        view: Optional[memoryview] = None
        cdata: Any = None
        try:
            if type(data) is bytes:
                n = len(data)
                cdata = data
            else:
                view = memoryview(data)
                n = view.nbytes
                cdata = _binding.ffi.from_buffer(view)
            if not n:
                return -1
            status = _sp_write(self.ptr, cdata, n, self.count, 0, self.err)
            self.push_out()
            if status == _OK:
                return -1
            done: int = self.count[0]
            if status == _WANT_WRITE:
                # A large write: the pump hands its ciphertext over a part at a time (sp_conn.c
                # MEMORY), so that it never holds all of it.
                if type(data) is bytes:
                    cdata = _binding.ffi.from_buffer(data)
                while status == _WANT_WRITE:
                    status = _sp_write(self.ptr, cdata + done, n - done, self.count, 0, self.err)
                    self.push_out()
                    done += self.count[0]
                if status == _OK:
                    return -1
            if status == _WANT_READ:
                return done
            raise self.failure("write")
        finally:
            if view is not None:
                if cdata is not None:
                    _binding.ffi.release(cdata)
                view.release()

    def failure(self, what: str) -> SSLError:
        """The exception for a read or write of the established connection that failed."""
        hint = _binding.established_hint(self.ptr, self.err)
        return build_error(what, what, self.err, SSLNetworkError, hint=hint)

    def retry_write(self) -> None:
        """After input: send what a renegotiation held back, if it has moved on."""
        held, self.pending_write = self.pending_write, None
        if held is not None:
            try:
                done = self.encrypt_some(held)
            except SSLError as exc:
                self.write_exc = exc
            else:
                if done >= 0:  # still held: keep the rest in place (CPython drops a
                    del held[:done]  # bytearray's front without moving what follows)
                    self.pending_write = held
        if self.pending_write is None:
            self.wake_drain()

    def wake_drain(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def drain(self) -> None:
        """The slow path of SSLStreamWriter.drain: something holds writing back."""
        while self.pending_write is not None:
            if self.eof or self.exc is not None or self.input_ended:
                raise SSLNetworkError("write: write failed (connection closed by peer)")
            await self.wait_progress()
        if self.write_exc is not None:
            exc, self.write_exc = self.write_exc, None
            raise exc
        await self.drain_raw()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.pending_write is not None:  # a renegotiation holds written bytes back:
                # they go first, as a transport sends what it buffered before it closes
                # (wait_closed() waits for both); without a running loop, close at once
                try:
                    self.closing = asyncio.get_running_loop().create_task(self.close_when_sent())
                    return
                except RuntimeError:
                    pass
            self.close_raw()

    async def close_when_sent(self) -> None:
        held = len(self.pending_write or b"")
        try:
            # (what it raises means nothing more can go; a peer that moves the renegotiation
            # on no further within the lingering close's bound is given up on, as that is;
            # either way wait_closed() says so)
            await asyncio.wait_for(self.drain(), _LINGER_SECONDS)
        except asyncio.TimeoutError:
            left = len(self.pending_write or b"") or held
            self.unsent = TimeoutError(
                errno.ETIMEDOUT,
                f"our last {left} bytes not delivered: the peer's renegotiation did not move"
                f" on for {_LINGER_SECONDS:g} s",
            )
            self.abort_raw()
        except Exception as exc:
            # (without its traceback, whose frames name this connection: no cycle)
            self.unsent = exc.with_traceback(None)
        finally:
            self.close_raw()


class _Lingering:
    """A lingering close's bookkeeping (_SSLProtocol.close_raw and linger): it waits while
    the peer takes our last bytes, for at most _LINGER_SECONDS without progress and
    _LINGER_MOST_SECONDS in all, looking again after _LINGER_POLL, then twice the time each
    time up to _LINGER_POLL_MAX."""

    def __init__(self, now: float) -> None:
        self.until = now + _LINGER_SECONDS  # it gives up then, unless the peer takes some
        self.most = now + _LINGER_MOST_SECONDS  # the latest `until` may move to
        self.left = math.inf  # the bytes it still had at its last look
        self.wait = _LINGER_POLL
        self.abandoned: Optional[OSError] = None  # why it gave up with bytes undelivered

    def next_wait(self) -> float:
        wait, self.wait = self.wait, min(2 * self.wait, _LINGER_POLL_MAX)
        return wait

    def ends(self, fd: int, buffered: int, now: float) -> Optional[bool]:
        """None while the close waits on (`buffered`: the bytes the transport still holds);
        else True when the transport must be aborted (bytes arrived unread, or ours were
        given up on: `abandoned` says why), False when it closes as usual."""
        in_kernel = _lib.sp_fd_unsent(fd)
        # (a small tail that has left is delivered: sp_fd_linger_needed asks the kernel again)
        delivered = buffered == 0 and (in_kernel == 0 or not _lib.sp_fd_linger_needed(fd))
        left = buffered + in_kernel
        if left < self.left:  # the peer took some: it reads, slowly maybe; wait on
            self.until = min(now + _LINGER_SECONDS, self.most)
        self.left = left
        if not delivered and now < self.until:
            return None
        # Bytes read away: a reset, the peer learns that they went nowhere (as ports.py's
        # lingerer does); a peer that took nothing for _LINGER_SECONDS: given up on (as
        # asyncio's TLS transport gives up its shutdown), not waited for without end, and
        # what it did not take is wait_closed()'s error (the abort drops it).
        if _lib.sp_fd_drop_unread(fd) > 0 or buffered:
            if not delivered and left:
                why = (
                    f"the close lingered {_LINGER_MOST_SECONDS:g} s"
                    if now >= self.most
                    else f"the peer took none of them for {_LINGER_SECONDS:g} s"
                )
                self.abandoned = TimeoutError(
                    errno.ETIMEDOUT, f"our last {left} bytes not delivered: {why}"
                )
            return True
        return False


def _take_buffered(reader: asyncio.StreamReader) -> bytes:
    """What `reader` buffered and has not returned: once it holds an exception (the stream
    was reset), its read() raises that first and the bytes before it are unreachable."""
    buffered = getattr(reader, "_buffer", None)  # (asyncio's StreamReader, every version)
    if not isinstance(buffered, bytearray) or not buffered:
        return b""
    data = bytes(buffered)
    buffered.clear()
    return data


def _address(transport: asyncio.BaseTransport, name: str) -> Any:
    """The transport's "peername" or "sockname"; None where it has none (a peer gone)."""
    try:
        return transport.get_extra_info(name)
    except (OSError, ValueError):
        return None


class _SSLProtocol(AioConnection, asyncio.BufferedProtocol):
    """The connection as the transport's protocol: ciphertext straight from the socket."""

    def __init__(
        self, ptr: Any, context: _Context, hostname: Optional[str], strict_eof: bool
    ) -> None:
        super().__init__(ptr, context, hostname, strict_eof)
        self.transport_: Optional[asyncio.Transport] = None
        self.addresses: dict[str, Any] = {}
        if _fills_at_once(self.loop):
            self.recv_buf, self.recv_c = _thread_buffers()[:2]
        else:
            self.recv_buf = bytearray(_BUF)
            self.recv_c = _binding.ffi.from_buffer(
                "unsigned char[]", self.recv_buf, require_writable=True
            )
        self.lost: Optional[BaseException] = None
        self.is_lost = False
        self.paused_reading = False
        self.write_paused = False
        self.held_for_replies = False  # reading waits until our replies drained (replied)
        self.lingering: Optional[_Lingering] = None  # a lingering close (close_raw)
        self.abandoned: Optional[OSError] = None  # why it gave up with bytes undelivered
        self.closed_future: asyncio.Future[None] = self.loop.create_future()

    # asyncio.BufferedProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport_ = transport  # type: ignore[assignment]
        self.raw_write = transport.write  # type: ignore[attr-defined,method-assign]
        # Kept now, as asyncio's own transports keep them, so that they stay available after
        # the transport closed: uvloop's asks the socket again where it could not keep one (a
        # peer that reset before this), which on a closed transport raises ValueError.
        self.addresses = {name: _address(transport, name) for name in ("peername", "sockname")}
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.recv_buf  # type: ignore[no-any-return]

    def buffer_updated(self, nbytes: int) -> None:
        if self.eof or self.exc is not None or self.lingering is not None:
            return  # the connection ended, failed or closes (close_raw): what follows is not read
        if not _sp_feed(self.ptr, self.recv_c, nbytes):
            self.exc = MemoryError("sslports: cannot buffer incoming ciphertext")
        if self.established:
            self.decrypt()
        else:
            self.input_arrived()

    def eof_received(self) -> bool:
        self.end_input()
        # After the peer's close_notify its TCP EOF is a half-close (RFC 8446 6.1): keep the
        # transport open so that we can still answer; writer.close() closes it. An EOF without
        # close_notify (a truncation, or a failed handshake) closes the transport as before.
        return self.peer_closed and not self.closed

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = exc if exc is not None else self.abandoned
        self.is_lost = True
        if isinstance(exc, OSError):
            self.input_error = exc
        if exc is None and not self.input_ended:  # (the peer's end comes as eof_received)
            self.ended_here = True
        self.must_drain = True
        self.sending = False
        if exc is not None and self.exc is None and not self.eof and self.established:
            # a transport failure (a reset): plaintext already here is still read first
            self.exc = SSLNetworkError(
                f"read: read failed ({exc})", errno=getattr(exc, "errno", None)
            )
        self.end_input()
        self.wake_drain()
        self.app_writer = None  # (a server's: the connection ended, the collector may have it)
        if not self.closed_future.done():
            self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.must_drain = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.must_drain = self.is_lost
        if self.held_for_replies:
            self.held_for_replies = False
            if not self.paused_reading:
                self.set_reading(True)
        self.wake_drain()

    def replied(self) -> None:
        if self.write_paused and not self.held_for_replies:
            self.held_for_replies = True
            self.set_reading(False)

    def set_reading(self, on: bool) -> None:
        transport = self.transport_
        if transport is not None and not transport.is_closing():
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def end_input(self) -> None:
        if not self.input_ended:
            self.input_ended = True
            _binding.lib.sp_feed_eof(self.ptr)
        self.input_arrived()

    # the raw side
    def wait_input(self) -> Awaitable[None]:
        fut: asyncio.Future[None] = asyncio.Future(loop=self.loop)
        if self.input_ended:
            if self.established and self.exc is None:
                self.eof = True  # (decrypt has said so already)
            fut.set_result(None)
            return fut
        if self.waiter is not None and not self.waiter.done():
            raise RuntimeError("read: another coroutine is already waiting for this connection")
        self.waiter = fut
        if self.paused_reading:  # the reader wants more than is buffered: read on regardless
            self.paused_reading = False
            if not self.held_for_replies:
                self.set_reading(True)
        return fut

    def wait_progress(self) -> Awaitable[None]:
        return self.drain_waiter()

    def drain_waiter(self) -> asyncio.Future[None]:
        """A future that wake_drain resolves. Those of cancelled waits (a drain() under a
        deadline, again and again against a peer that stopped reading) are dropped here, so
        the list holds only live waits, not one per attempt until writing resumes."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.drain_waiters = [f for f in self.drain_waiters if not f.done()]
        self.drain_waiters.append(fut)
        return fut

    def pause_reading(self) -> None:
        if self.transport_ is not None and not self.transport_.is_closing():
            self.paused_reading = True
            self.transport_.pause_reading()

    def resume_reading(self) -> None:
        if self.paused_reading and len(self.plain) <= _READ_LOW:
            self.paused_reading = False
            if not self.held_for_replies:
                self.set_reading(True)

    async def drain_raw(self) -> None:
        while self.write_paused and not self.is_lost:
            await self.drain_waiter()
        if self.is_lost:
            reason = self.lost or "connection lost"
            raise SSLNetworkError(f"write: write failed ({reason})", errno=_errno_of(self.lost))

    def close_raw(self) -> None:
        """Close the TCP connection without destroying the end of what we sent (as ports.py
        does, README "A lingering close"): bytes that arrive unread (a TLS 1.3 server's session
        tickets, sent after its handshake) would make the kernel answer with a reset, which
        drops what it still had to deliver, and the peer would read a reset where our data
        and our EOF belong. So our side shuts first (FIN after what the transport buffers),
        what arrives is read and dropped, and the transport closes once the kernel has
        delivered our bytes, at the peer's EOF, or once the peer took none of them for
        _LINGER_SECONDS, or after _LINGER_MOST_SECONDS in any case (then wait_closed() raises
        if any were left undelivered)."""
        self.sending = False
        transport = self.transport_
        if transport is None:
            return
        fd = _tcp_fd(transport)
        if fd < 0 or not self.established or self.is_lost or self.input_ended:
            transport.close()  # (a failed handshake's alert is no data to linger for)
            return
        if transport.is_closing():
            return
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        self.paused_reading = self.held_for_replies = False
        self.set_reading(True)
        self.lingering = _Lingering(self.loop.time())
        self.linger(fd)

    def abort_raw(self) -> None:
        self.sending = False
        if self.transport_ is not None:
            self.transport_.abort()

    def linger(self, fd: int) -> None:
        transport, lingering = self.transport_, self.lingering
        if transport is None or lingering is None or self.is_lost or transport.is_closing():
            return  # (the peer's EOF closed it: eof_received)
        abort = lingering.ends(fd, transport.get_write_buffer_size(), self.loop.time())
        if abort is None:
            self.loop.call_later(lingering.next_wait(), self.linger, fd)
            return
        self.abandoned = lingering.abandoned
        if abort:
            transport.abort()
        else:
            transport.close()

    async def wait_closed(self) -> None:
        # shielded: cancelling one wait (asyncio.wait_for(writer.wait_closed(), t)) must not
        # cancel the connection's future, which every later wait_closed() would then raise
        # as a CancelledError of its own caller's (asyncio's StreamWriter has that flaw)
        if not self.closed_future.done():
            await asyncio.shield(self.closed_future)
        failure = self.unsent or self.lost
        if failure is not None:
            raise _lost("wait_closed", failure) from failure

    def raw_closing(self) -> bool:
        return self.transport_ is None or self.transport_.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport_ is None:
            return default
        if name in self.addresses:
            address = self.addresses[name]
            return default if address is None else address
        return self.transport_.get_extra_info(name, default)

    @property
    def transport(self) -> Any:
        return self.transport_


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback: the future's exception counts as retrieved (the awaiting calls raise
    it, if any come)."""
    if not future.cancelled():
        future.exception()


class _StreamConnection(AioConnection):
    """The connection over an asyncio StreamReader / StreamWriter pair (wrap_ssl_streams)."""

    must_drain = True

    def __init__(
        self,
        ptr: Any,
        context: _Context,
        hostname: Optional[str],
        strict_eof: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(ptr, context, hostname, strict_eof)
        self.raw_reader = reader
        self.raw_writer = writer
        self.lock = asyncio.Lock()  # one raw read at a time (the reader, a held-back write)
        self.generation = 0  # bumped by every feed: a waiter that sees it move skips reading
        self.replies_out = False  # reading queued replies: drain them before reading on
        self.reading = False  # a reader waits (wait_read)
        self.raw_closed: Optional[asyncio.Future[None]] = None  # (wait_closed's, made once)

    def raw_write(self, data: bytes) -> None:
        if not self.raw_writer.is_closing():
            self.raw_writer.write(data)

    async def wait_read(self) -> None:
        # (wait_input itself queues its callers on the lock: a held-back write waits there too)
        if self.reading:
            raise RuntimeError("read: another coroutine is already waiting for this connection")
        self.reading = True
        try:
            await self.wait_input()
        finally:
            self.reading = False

    async def wait_input(self) -> None:
        seen = self.generation
        async with self.lock:
            if self.generation != seen:
                return  # another coroutine fed the pump meanwhile
            if self.replies_out:  # (replied): the raw writer's back-pressure first
                self.replies_out = False
                try:
                    await self.raw_writer.drain()
                except (ConnectionError, OSError):
                    pass  # the read below meets the end
            if self.input_ended:
                data = b""
            else:
                try:
                    data = await self.raw_reader.read(_BUF)
                except (ConnectionError, OSError) as exc:
                    # (asyncio's StreamReader raises before it returns what it buffered: what
                    # came before the failure is decrypted and read first, as over a socket)
                    # (the next read raises again, with nothing buffered)
                    data = _take_buffered(self.raw_reader)
                    if not data:
                        self.input_error = exc
                        if self.established and self.exc is None:
                            self.exc = SSLNetworkError(
                                f"read: read failed ({exc})", errno=getattr(exc, "errno", None)
                            )
            self.generation += 1
            lib = _binding.lib
            if not data:
                self.input_ended = True
                lib.sp_feed_eof(self.ptr)
            elif not lib.sp_feed(self.ptr, data, len(data)):
                raise MemoryError("sslports: cannot buffer incoming ciphertext")
            self.input_arrived()

    def wait_progress(self) -> Awaitable[None]:
        return self.wait_input()

    def replied(self) -> None:
        self.replies_out = True

    async def drain_raw(self) -> None:
        # (a raw side that closed, ours after close() or one reset, raises here as asyncio's
        # drain() does: once the connection is lost)
        try:
            await self.raw_writer.drain()
        except (ConnectionError, OSError) as exc:
            raise SSLNetworkError(f"write: write failed ({exc})", errno=_errno_of(exc)) from exc

    def close_raw(self) -> None:
        # (no lingering close, as asyncio's StreamWriter.close(): the stream pair is the
        # caller's, whose reader takes what arrives; asyncio.md says how not to lose the end)
        self.sending = False
        self.raw_writer.close()

    def abort_raw(self) -> None:
        self.sending = False
        self.raw_writer.transport.abort()

    async def wait_closed(self) -> None:
        # Shielded, as _SSLProtocol's: the raw writer's wait_closed() awaits its protocol's
        # future. One task for every call: a cancelled call (a deadline around it) must not
        # leave a task of its own behind, whose end (a reset) nobody would retrieve.
        if self.raw_closed is None:
            self.raw_closed = asyncio.ensure_future(self.raw_writer.wait_closed())
            self.raw_closed.add_done_callback(_retrieved)
        try:
            await asyncio.shield(self.raw_closed)
        except (ConnectionError, OSError) as exc:
            raise _lost("wait_closed", self.unsent or exc) from exc
        if self.unsent is not None:
            raise _lost("wait_closed", self.unsent) from self.unsent

    def raw_closing(self) -> bool:
        return self.raw_writer.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw_writer.get_extra_info(name, default)

    @property
    def transport(self) -> Any:
        return self.raw_writer.transport


class SSLStreamReader:
    """The plaintext side of an asyncio TLS connection (asyncio.StreamReader's API).

    Plaintext that arrived before a failure is read first; then every read raises it.
    """

    def __init__(self, conn: AioConnection, limit: int = _LIMIT) -> None:
        self._sslports_conn = conn
        self._limit = limit

    def _buffered(self) -> bytearray:
        """All buffered plaintext, as the connection's bytearray."""
        conn = self._sslports_conn
        if conn.head is not None:
            conn.plain += conn.head
            conn.head = None
        return conn.plain

    def _take(self, n: int) -> bytes:
        conn = self._sslports_conn
        buf = self._buffered()
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(memoryview(buf)[:n])
            del buf[:n]
        if conn.paused_reading:
            conn.resume_reading()
        return data

    async def _at_end(self) -> bool:
        """Nothing more is buffered: raise the read failure, or True at EOF, else wait."""
        conn = self._sslports_conn
        if conn.exc is not None:
            raise conn.exc
        if conn.eof:
            return True
        await conn.wait_read()
        return False

    def at_eof(self) -> bool:
        conn = self._sslports_conn
        return conn.eof and conn.head is None and not conn.plain

    def exception(self) -> Optional[BaseException]:
        return self._sslports_conn.exc

    async def read(self, n: int = -1) -> bytes:
        conn = self._sslports_conn
        if n < 0:
            while not await self._at_end():
                pass
            return self._take(len(self._buffered()))
        if n == 0:
            return b""
        while True:
            head = conn.head
            if head is not None and len(head) <= n:
                conn.head = None
                return head
            if head is not None or conn.plain:
                return self._take(n)
            if conn.exc is not None:
                raise conn.exc
            if conn.eof:
                return b""
            await conn.wait_read()

    async def readexactly(self, n: int) -> bytes:
        if n <= 0:
            if n < 0:
                raise ValueError("readexactly size can not be less than zero")
            return b""
        conn = self._sslports_conn
        while True:
            head = conn.head
            if head is not None:
                if len(head) == n:
                    conn.head = None
                    return head
            elif not conn.plain and conn.exc is None and not conn.eof:
                await conn.wait_read()  # (the common case: nothing is here yet)
                continue
            buf = self._buffered()
            if len(buf) >= n:
                return self._take(n)
            if conn.exc is not None:
                raise conn.exc
            if conn.eof:
                raise asyncio.IncompleteReadError(self._take(len(buf)), n)
            await conn.wait_read()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """As asyncio's: LimitOverrunError (nothing taken) when the separator is not within
        the reader's limit, however the bytes arrived."""
        if not separator:
            raise ValueError("readuntil: separator must not be empty")
        start = 0
        while True:
            buf = self._buffered()
            i = buf.find(separator, start)
            if i >= 0:
                if i > self._limit:
                    raise asyncio.LimitOverrunError(
                        "Separator is found, but chunk is longer than limit", i
                    )
                return self._take(i + len(separator))
            start = max(0, len(buf) - len(separator) + 1)
            if start > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", start
                )
            if await self._at_end():
                raise asyncio.IncompleteReadError(self._take(len(buf)), None)

    async def readline(self) -> bytes:
        """As asyncio's: a line longer than the limit is dropped with ValueError (up to its end
        when it is here, else all that is buffered)."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            buf = self._buffered()
            self._take(exc.consumed + 1 if buf.startswith(b"\n", exc.consumed) else len(buf))
            raise ValueError(exc.args[0]) from None

    def __aiter__(self) -> SSLStreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class _TLSTransport:
    """SSLStreamWriter.transport: the TCP transport under a TLS face. It was the TCP transport
    itself, whose write() sent the caller's bytes in the clear (a peer then failed on a
    non-TLS record) and whose can_write_eof() said True (write_eof() sent a bare FIN)."""

    __slots__ = ("_raw", "_writer")

    def __init__(self, writer: SSLStreamWriter, raw: asyncio.BaseTransport) -> None:
        self._writer = writer
        self._raw = raw

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        self._writer.write(data)

    def writelines(self, list_of_data: Sequence[bytes]) -> None:
        self._writer.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self._writer.write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._writer.is_closing()

    def close(self) -> None:
        self._writer.close()

    def __getattr__(self, name: str) -> Any:  # (abort, pause_reading, buffer sizes, ...)
        return getattr(self._raw, name)

    def __repr__(self) -> str:
        return f"<sslports TLS transport over {self._raw!r}>"


class SSLStreamWriter:
    """The plaintext side for writing (asyncio.StreamWriter's API).

    ``write(data)`` encrypts at once and hands the ciphertext to the transport (it is the
    connection's own method, bound here: no extra call per write); ``drain()`` waits only
    when the transport paused writing.
    """

    write: Callable[[Union[bytes, bytearray, memoryview]], None]

    def __init__(self, conn: AioConnection, reader: SSLStreamReader) -> None:
        self._sslports_conn = conn
        self._reader = reader
        self.write = conn.write

    @property
    def transport(self) -> Any:
        """As asyncio's writer.transport, the TLS transport's face: what it writes is
        encrypted (this writer's write), it cannot write an EOF, get_extra_info and close are
        this writer's; the rest (abort, pause_reading, get_write_buffer_size, ...) is the TCP
        transport's (_TLSTransport)."""
        raw = self._sslports_conn.transport
        return None if raw is None else _TLSTransport(self, raw)

    def writelines(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    async def drain(self) -> None:
        conn = self._sslports_conn
        if conn.closed:
            # (after close() writes are dropped: a write-and-drain loop that another task's
            # close() ended must hear of it, and give the loop a turn, as asyncio's drain())
            await asyncio.sleep(0)
            await conn.drain()  # (once the connection is lost: what it was lost to)
            raise SSLNetworkError("write: write failed (the writer is closed)")
        if conn.must_drain or conn.pending_write is not None or conn.write_exc is not None:
            await conn.drain()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        """Not supported, as over asyncio's TLS transport: ``await shutdown()`` sends close_notify
        (TLS's end of data), and the connection stays open for reading until close()."""
        raise NotImplementedError("write_eof: not supported over TLS (await shutdown() instead)")

    def is_closing(self) -> bool:
        return self._sslports_conn.closed or self._sslports_conn.raw_closing()

    def close(self) -> None:
        """Close the connection (no close_notify: use shutdown() first for one)."""
        self._sslports_conn.close()

    def __del__(self) -> None:
        # As asyncio's StreamWriter (3.11.5 on): a client's writer dropped without close()
        # closes its connection, with a ResourceWarning. Otherwise the event loop keeps the
        # transport, and with it the descriptor and the connection's C memory, for as long as
        # the peer keeps the connection open: for ever, for a server that waits for the next
        # request. (A server's writers are kept alive by their connection until it ends, as
        # asyncio's servers keep theirs: a handler may return and leave the connection to a
        # task of its own.)
        conn = self.__dict__.get("_sslports_conn")
        if conn is None or conn.closed or conn.raw_closing() or conn.keeps_writer:
            return
        loop = conn.loop
        if loop.is_closed():
            warnings.warn("loop is closed", ResourceWarning, stacklevel=1)
            return
        try:
            if _running_loop() is loop:
                conn.close()
            else:  # (the collector may run in any thread)
                loop.call_soon_threadsafe(conn.close)
        except RuntimeError:  # the loop closed meanwhile
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1)

    async def shutdown(self) -> None:
        """Send close_notify (without waiting for the peer's), then drain.

        Bytes a TLS 1.2 renegotiation holds back go first, and a renegotiation under way ends
        before close_notify goes (OpenSSL sends none inside a handshake).
        """
        conn = self._sslports_conn
        await conn.drain()
        while _binding.lib.sp_shutdown(conn.ptr, conn.err) == _WANT_READ:
            conn.push_out()  # (our flight of the renegotiation)
            if conn.eof or conn.exc is not None or conn.input_ended:
                raise SSLNetworkError("shutdown: failed (connection closed by peer)")
            await conn.wait_progress()
        conn.push_out()
        await conn.drain()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed.

        Cancelling it (a deadline around it) leaves the connection as it was: a later call
        waits again and reports the same outcome.

        :raises SSLNetworkError: the connection was lost to a failure (a reset), as asyncio's
            StreamWriter.wait_closed() re-raises it; on every call.
        """
        await self._sslports_conn.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The TCP transport's extra info ("peername", "sockname", "socket", ...), and the
        TLS keys of asyncio's TLS transport, answered from what sslports knows (there is no
        ssl.SSLObject); like asyncio's, they stay available after close():

        * ``"sslcontext"``: the SSLClientContext / SSLServerContext the connection was made
          with (also after a server-name callback switched contexts, as asyncio's).
        * ``"cipher"``: ``(name, version, secret_bits)`` as ssl.SSLSocket.cipher() gives them,
          e.g. ``("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)``; the version is the one that
          defines the suite (ssl_protocol_version tells the connection's).
        * ``"peercert"``: None unless the peer's certificate verified (ssl_peer_verified; an
          unverified one is None too, where getpeercert() gives ``{}``: both falsy), else
          ``{"subject_name": ..., "issuer_name": ..., "hostnames": [...]}``, what
          ssl_peer_subject_name, ssl_peer_issuer_name and ssl_peer_certificate_hostnames
          return. Not getpeercert()'s dict: it shares none of its keys, so code that reads
          that shape fails with KeyError instead of misreading this one.
        * ``"compression"``: None (sslports turns TLS compression off: SSL_OP_NO_COMPRESSION).
        * ``"ssl_object"``: `default`: there is no ssl.SSLObject (the section 5 functions,
          ssl_peer_verified, ssl_channel_binding, ..., take the reader or the writer).
        """
        conn = self._sslports_conn
        if name in _TLS_EXTRA_INFO:
            if name == "sslcontext":
                return conn.context
            if name == "cipher":
                return cipher_info(conn.ptr)
            if name == "peercert":
                return peer_certificate(conn.ptr)
            if name == "compression":
                return None
            return default  # "ssl_object"
        return conn.get_extra_info(name, default)

    async def __aenter__(self) -> SSLStreamWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        try:
            await self.wait_closed()
        except SSLNetworkError:
            if exc[0] is None:  # (a lost connection never hides the body's own exception)
                raise


# The keys asyncio's TLS transport adds to the TCP transport's (SSLStreamWriter.get_extra_info).
_TLS_EXTRA_INFO = frozenset({"sslcontext", "ssl_object", "peercert", "cipher", "compression"})


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _pair(conn: AioConnection, limit: int) -> tuple[SSLStreamReader, SSLStreamWriter]:
    reader = SSLStreamReader(conn, limit)
    return reader, SSLStreamWriter(conn, reader)


def _check_limit(func: str, limit: int) -> int:
    if type(limit) is not int:
        raise TypeError(f"{func}: limit must be an int, got {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"{func}: limit must be positive, got {limit}")
    return limit


async def wrap_ssl_streams(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    mode: str = "connect",
    context: Optional[_Context] = None,
    encrypt: str = "auto",
    hostname: Optional[str] = None,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
    limit: int = _LIMIT,
) -> tuple[SSLStreamReader, SSLStreamWriter]:
    """TLS over an asyncio stream pair: the async counterpart of ports_to_ssl_ports.

    `limit`: as asyncio's, the longest line the reader's readline() / readuntil() return.
    `timeout` bounds the handshake; None (the default) waits as long as the peer takes, as
    ports_to_ssl_ports does (a deadline around the call, asyncio.timeout(), works too).

    :raises SSLNetworkError: the handshake failed (the raw writer is closed).
    :raises TimeoutError: the handshake took longer than `timeout` (the raw writer is closed).
    """
    from .net import _new_connection, wrap_arguments

    func = "wrap_ssl_streams"
    ctx, host, wire = wrap_arguments(func, mode, context, encrypt, hostname, alpn)
    _check_limit(func, limit)
    timeout = _check_timeout(func, timeout)
    is_server = mode == "accept"
    try:
        ptr = _new_connection(func, ctx, is_server, -1, host, wire, SSLNetworkError)
    except BaseException:
        writer.close()
        raise
    conn = _StreamConnection(ptr, ctx, host, strict_eof, reader, writer)
    return await _start(func, conn, timeout, limit)


async def _wait_for(aw: Awaitable[object], timeout: Optional[float]) -> None:
    """Await `aw`; asyncio.TimeoutError once `timeout` passes (None: no bound).

    Not asyncio.wait_for, which up to Python 3.11 returned the result of `aw` when the
    caller's cancel came in the turn `aw` finished: the cancel was dropped (the caller went on
    with a live connection, a server ran its callback after close()); and a failure it raised
    from its frame made a cycle that held the connection (and its C memory) until the cyclic
    collector ran. 3.11 on, `aw` runs in this task under a timer that cancels it, and the
    task's cancel count tells the timer's cancel from any other, as asyncio.timeout() does;
    before, in a task of its own (_failure_in_task). No local names the task or the
    exception, so neither a failure nor a timeout leaves a cycle.
    """
    if timeout is None:
        await aw
        return
    if timeout <= 0:
        # (the timer could not cancel `aw` before its first step: a deadline can run out
        # between connect and handshake, and `aw` would run unbounded)
        if asyncio.iscoroutine(aw):
            aw.close()  # (never awaited: no RuntimeWarning once collected)
        raise asyncio.TimeoutError
    if sys.version_info < (3, 11):
        failure = await _failure_in_task(aw, timeout)
        if failure is not None:
            try:  # (raised here: no frame that names the task, which holds it as its result)
                raise failure
            finally:
                del failure
        return
    before = _cancel_count(False)
    expired: list[bool] = []
    handle = asyncio.get_running_loop().call_later(
        timeout, _expire, asyncio.current_task(), expired
    )
    try:
        await aw
    except asyncio.CancelledError:
        if expired:
            expired.clear()  # (its cancel withdrawn here)
            if _cancel_count(True) <= before:  # (no other cancel came)
                raise asyncio.TimeoutError from None
        raise
    finally:
        handle.cancel()  # (drops its reference to the task)
        if expired:  # (`aw` answered the timer's cancel otherwise: withdrawn all the same)
            _cancel_count(True)


def _expire(task: Optional[asyncio.Task[Any]], expired: list[bool]) -> None:
    if task is not None and not task.done():
        expired.append(True)
        task.cancel()


def _cancel_count(withdraw_one: bool) -> int:
    """This task's pending cancellations (Task.cancelling, 3.11 on), after withdrawing one
    (Task.uncancel) when `withdraw_one`: the timer's."""
    if sys.version_info < (3, 11):
        return 0
    task = asyncio.current_task()
    if task is None:
        return 0
    return task.uncancel() if withdraw_one else task.cancelling()


async def _failure_in_task(aw: Awaitable[object], timeout: float) -> Optional[Exception]:
    """_wait_for up to Python 3.10, which counts no cancels: a timer's cancel and another
    that came in the same turn would be one, and nested timers (a connect's per address
    inside the whole connect's) could take each other's. `aw` runs in a task of its own,
    and what it raised is returned; a cancel of the caller always propagates, after that
    task ended."""
    inner = asyncio.ensure_future(_failure_of(aw))
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout)
    except asyncio.CancelledError:
        inner.cancel()
        await asyncio.wait({inner})
        raise
    if not done:
        inner.cancel()
        await asyncio.wait({inner})
        if inner.cancelled():
            del inner, done  # (not held by the traceback)
            raise asyncio.TimeoutError
    return inner.result()  # (also when it finished as the timeout came: its outcome stands)


async def _failure_of(aw: Awaitable[object]) -> Optional[Exception]:
    """What `aw` raised, or None (a cancellation propagates): the failure is raised from the
    caller's frame, not through the task's, which would hold it in a cycle."""
    try:
        await aw
    except Exception as exc:
        return exc
    return None


async def _start(
    func: str, conn: AioConnection, timeout: Optional[float], limit: int, where: str = ""
) -> tuple[SSLStreamReader, SSLStreamWriter]:
    """Run the handshake (closing the raw side if it fails) and make the stream pair.
    `where`: the peer's host:port, for a timeout's message (as ssl_connect's)."""
    try:
        try:
            await _wait_for(conn.handshake(func), timeout)
        except asyncio.TimeoutError as exc:
            at = f" ({where})" if where else ""
            raise SSLTimeoutError(f"{func}: handshake timed out{at}") from exc
    except BaseException:
        conn.close_raw()
        raise
    return _pair(conn, limit)


async def open_ssl_connection(
    host: str,
    port: int,
    context: Union[SSLClientContext, str] = "secure",
    *,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
    limit: int = _LIMIT,
) -> tuple[SSLStreamReader, SSLStreamWriter]:
    """Connect and run the TLS handshake as a client (asyncio.open_connection's shape).

    :param context: a client context or a protocol name (``"secure"`` by default).
    :param timeout: bounds the TCP connect and the handshake together. None (the default)
        waits as long as the server takes, as ssl_connect does (asyncio's open_connection
        defaults to 60 s for the handshake); a deadline around the call (asyncio.timeout())
        works too, and either closes the socket.
    :param limit: as asyncio's, the longest line readline() / readuntil() return.
    :raises SSLNetworkError: the connection or the handshake failed.
    :raises TimeoutError: `timeout` passed (also an SSLNetworkError).
    """
    from .net import (
        _check_hostname_arg,
        _check_port_number,
        _client_context,
        _new_connection,
        _not_a_dns_name,
    )

    func = "open_ssl_connection"
    if not isinstance(host, str):
        raise TypeError(f"{func}: host must be a str")
    _check_hostname_arg(func, host)
    _check_port_number(func, port, 1)
    ctx = _client_context(func, context)
    wire = encode_alpn(func, alpn)
    _check_limit(func, limit)
    timeout = _check_timeout(func, timeout)
    _binding.require_native(func)
    # (resumes from, and files new sessions into, the context's cache for (host, port))
    ptr = _new_connection(func, ctx, False, -1, host, wire, SSLNetworkError, port)
    conn = _SSLProtocol(ptr, ctx, host, strict_eof)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        await _wait_for(_tcp_connect(loop, lambda: conn, host, port, deadline), timeout)
    except asyncio.TimeoutError as exc:
        raise SSLTimeoutError(f"{func}: connect timed out") from exc
    except UnicodeError as exc:
        raise _not_a_dns_name(func, host, exc) from None
    except OSError as exc:
        # Python 3.9's create_connection keeps the exception of a failed connect in a reference
        # cycle of its own (through its list of the attempts' exceptions): with its traceback,
        # which holds this frame and create_connection's (the factory), that cycle would keep
        # the connection until the cyclic collector runs. The message carries what it said,
        # in ssl_connect's words: the errno's text and the endpoint, or the resolver's.
        if isinstance(exc, socket.gaierror):
            reason = f"cannot resolve {host!r}: {exc}"
        else:
            said = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            reason = f"{said}: {_binding.endpoint(host, port)}"
        code = None if isinstance(exc, socket.gaierror) else exc.errno  # (as ssl_connect)
        raise SSLNetworkError(
            f"{func}: connect failed ({reason})", errno=code
        ) from exc.with_traceback(None)
    left = None if deadline is None else max(0.0, deadline - loop.time())
    return await _start(func, conn, left, limit, _binding.endpoint(host, port))


async def _tcp_connect(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    deadline: Optional[float],
) -> None:
    """loop.create_connection(factory, host, port); with a deadline (in loop time), each
    address but the last gets an equal share of what is left of it, as ssl_connect's do
    (net._tcp_connect): one that never answers leaves time for the next. asyncio's gives the
    first the whole of it (and uvloop has no happy_eyeballs_delay)."""
    if deadline is None or literal_family(host):
        await loop.create_connection(factory, host, port)
        return
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error = (errno.EHOSTUNREACH, "no address")
    for i, (family, kind, proto, _name, addr) in enumerate(infos):
        left = len(infos) - 1 - i  # (addresses after this one)
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            share = None if left == 0 else max(0.0, deadline - loop.time()) / (left + 1)
            await _wait_for(loop.sock_connect(sock, addr), share)
        except OSError as exc:  # (asyncio.TimeoutError too, from 3.11 on)
            sock.close()
            # (its traceback holds this frame, and the factory's connection: on 3.9 the
            # failed future of sock_connect keeps the exception, a cycle until collected)
            exc.__traceback__ = None
            error = (exc.errno, exc.strerror or "") if exc.errno else _SHARE_PASSED
            continue
        except asyncio.TimeoutError as exc:  # (before 3.11)
            sock.close()
            exc.__traceback__ = None
            error = _SHARE_PASSED
            continue
        except BaseException:
            sock.close()
            raise
        await loop.create_connection(factory, sock=sock)
        return
    raise OSError(*error)  # (a new one: the attempts' leave no cycle through this frame)


_SHARE_PASSED = (errno.ETIMEDOUT, "its share of the timeout passed")


ClientConnected = Callable[[SSLStreamReader, SSLStreamWriter], Optional[Awaitable[None]]]


class SSLServer(asyncio.AbstractServer):
    """What start_ssl_server returns: asyncio.Server's essentials.

    ``close()`` also cancels the handshakes in progress; ``wait_closed()`` waits for them.
    """

    def __init__(
        self, server: asyncio.Server, handshakes: set[asyncio.Task[None]], closed: list[bool]
    ) -> None:
        self._server = server
        self._handshakes = handshakes
        self._closed = closed  # [True] once closed: a client accepted then is not served

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets)

    def close(self) -> None:
        self._closed[0] = True
        self._server.close()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()
        while self._handshakes:  # (cancelled by close(): a few turns of the loop)
            await asyncio.wait(list(self._handshakes))

    if sys.version_info >= (3, 13):  # asyncio.Server's two since 3.13 (AbstractServer's too)

        def close_clients(self) -> None:
            """Close every client's transport (handshakes in progress too), as asyncio's."""
            close = getattr(self._server, "close_clients", None)
            if close is None:  # a loop whose servers lack it (uvloop)
                raise NotImplementedError("close_clients: not supported by this event loop")
            close()

        def abort_clients(self) -> None:
            """Abort every client's transport (handshakes in progress too), as asyncio's."""
            abort = getattr(self._server, "abort_clients", None)
            if abort is None:
                raise NotImplementedError("abort_clients: not supported by this event loop")
            abort()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._server.get_loop()

    def is_serving(self) -> bool:
        return self._server.is_serving()

    async def start_serving(self) -> None:
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        try:
            await self._server.serve_forever()
        finally:
            self.close()


async def start_ssl_server(
    client_connected_cb: ClientConnected,
    host: Optional[str],
    port: int,
    context: SSLServerContext,
    *,
    handshake_timeout: Optional[float] = 30.0,
    limit: int = _LIMIT,
    **kwargs: Any,
) -> SSLServer:
    """Serve TLS: each client's handshake runs, then ``client_connected_cb(reader, writer)``.

    Returns an SSLServer (close, wait_closed, serve_forever, sockets, async with). A failed or
    stalled handshake closes that connection (logged at debug level); the server keeps
    serving. `limit`: as asyncio's, the longest line the readers' readline() / readuntil()
    return. `kwargs` go to ``loop.create_server`` (backlog, reuse_port, ...).
    """
    func = "start_ssl_server"
    if not isinstance(context, SSLServerContext):
        raise TypeError(f"{func}: expected a server context, got {type(context).__name__}")
    handshake_timeout = check_handshake_timeout(func, handshake_timeout)
    _check_limit(func, limit)
    _binding.require_native(func)
    from .net import _new_connection

    loop = asyncio.get_running_loop()
    handshakes: set[asyncio.Task[None]] = set()
    closed = [False]  # (SSLServer.close)

    def report(message: str, exc: BaseException, conn: AioConnection) -> None:
        loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": conn.transport}
        )

    async def on_client(conn: _SSLProtocol) -> None:
        try:
            ssl_reader, ssl_writer = await _start("ssl_accept", conn, handshake_timeout, limit)
        except Exception as exc:
            if conn.sni_failed or not isinstance(exc, (SSLError, OSError)):
                # a server-name callback failed (whatever it raised): a bug of the server's
                report(f"{func}: the server-name callback failed during the handshake", exc, conn)
            else:  # that client is gone; the server keeps serving
                _log.debug(
                    "%s: %s from %s", func, exc, conn.get_extra_info("peername"), exc_info=exc
                )
            return
        except BaseException as exc:
            # A server-name callback's other BaseException (GeneratorExit, a class of its own)
            # is its bug too, not the end of the loop (KeyboardInterrupt, SystemExit) or of
            # this task (cancelled): else it ended the task, unretrieved.
            if not conn.sni_failed or isinstance(
                exc, (KeyboardInterrupt, SystemExit, asyncio.CancelledError)
            ):
                raise
            report(f"{func}: the server-name callback failed during the handshake", exc, conn)
            return
        if not conn.is_lost:  # kept until the connection ends, as asyncio's servers keep theirs
            conn.app_writer = ssl_writer
        task = asyncio.current_task()
        if task is not None:
            handshakes.discard(task)  # the handshake is over: close() leaves it alone now
        try:
            result = client_connected_cb(ssl_reader, ssl_writer)
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            report(f"{func}: unhandled exception in client_connected_cb", exc, conn)
            ssl_writer.close()

    def make_protocol() -> _SSLProtocol:
        ptr = _new_connection("ssl_accept", context, True, -1, None, b"", SSLNetworkError)
        return _ServerProtocol(ptr, context, None, False)

    class _ServerProtocol(_SSLProtocol):
        keeps_writer = True

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if closed[0]:
                # The kernel accepted it before close(), the loop made it after: a client that
                # close() must not leave to be served (its handshake escaped the cancelling,
                # and wait_closed() had already returned).
                self.close_raw()
                return
            task = loop.create_task(on_client(self))
            handshakes.add(task)
            task.add_done_callback(self.task_done)

        def task_done(self, task: asyncio.Task[None]) -> None:
            handshakes.discard(task)
            if not self.established:  # e.g. cancelled by close() before it even started
                self.close_raw()
            elif task.cancelled() and self.app_writer is not None:
                # client_connected_cb ended cancelled (it awaited something cancelled, or its
                # task was): nothing else will close the writer it leaves, which the
                # connection keeps (app_writer), so the client would wait for its EOF until it
                # left. Closed, as asyncio's own servers do (3.12 on); an exception it raised
                # closed it already (on_client).
                self.app_writer.close()

    server = await loop.create_server(make_protocol, host, port, **kwargs)
    return SSLServer(server, handshakes, closed)
