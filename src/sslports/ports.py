"""The two ports of a TLS connection and the connection they share.

HOW A CALL MOVES BYTES

Every port operation is one loop around one pump call (csrc/sp_conn.c explains the pump):

* Socket transports (``ssl_connect``, ``ssl_accept``, ``ssl_wrap_socket``): the pump does all
  socket I/O in C. It waits at most ``_SLICE_MS`` per call and then returns ``WANT_*`` with the
  progress made; this loop checks the deadline and lets Python run signal handlers (Ctrl-C)
  before calling again. No Python runs per TLS record.
* Stream transports (``ports_to_ssl_ports`` over any file-like pair): the pump reports
  ``WANT_READ`` when it needs ciphertext. This loop then first hands every queued outgoing
  byte to the sender thread, then reads once from the input stream and feeds the pump
  (_streams.py: the threads, and why a stream is written from one of its own).

LOCKS

The input port serialises readers and the output port serialises writers (threading.Lock, or
with the C fast path its own lock type that behaves the same and that the C methods take without
a Python call: a second thread waits, interruptibly); one reader and one writer run at once
(full duplex).
The C pump has its own per-connection locks, never held while waiting.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import functools
import io
import itertools
import math
import operator
import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable, ClassVar, NoReturn, Optional, Union, cast

from . import _binding
from ._binding import build_error
from ._streams import (
    _ABANDON_DRAIN,
    _CLOSED,
    _StreamTransport,
    _transport_error,
    _TransportError,
)
from ._timing import (
    _LINGER_MOST_SECONDS,
    _LINGER_SECONDS,
    _NO_DEADLINE,
    _SLICE_MS,
    BREAKS,
    _Deadline,
    _deadline,
    drop_break,
    raise_break_from_callback,
)
from .errors import NotCopyable, SSLError, SSLNetworkError, SSLTimeoutError

# Pump statuses (csrc/sp_conn.h), as plain ints for the hot loops.
_SP_OK, _SP_WANT_READ, _SP_WANT_WRITE, _SP_EOF, _SP_RAGGED_EOF, _SP_OK_SEND = 0, 1, 2, 3, 4, 5
if _binding.lib is not None and (
    _binding.lib.SP_OK,
    _binding.lib.SP_WANT_READ,
    _binding.lib.SP_WANT_WRITE,
    _binding.lib.SP_EOF,
    _binding.lib.SP_RAGGED_EOF,
    _binding.lib.SP_OK_SEND,
) != (0, 1, 2, 3, 4, 5):
    raise ImportError("sslports: pump status numbers changed; update ports.py")
# Sockets the pump owns may stay blocking: it passes MSG_DONTWAIT itself (not on Windows).
SOCKETS_MAY_BLOCK = _binding.lib is not None and bool(_binding.lib.SP_RECV_WAITS)
_RECORD = 16384  # output buffering: up to one full TLS record is held (see SSLOutputPort.write)
_READ_CHUNK = 65536
# The most read1(n) returns ("at most n", as io's returns at most its buffer): a huge n would
# otherwise cost its whole size in memory (sp_fastport.c READ1_MOST, the same)
_READ1_MOST = 1 << 20
_PEEK_MAX = 8192  # peek() returns at most this, unless asked for more (io.DEFAULT_BUFFER_SIZE)
# Reads of fewer bytes read ahead (what arrived, up to _READ_CHUNK), as io.BufferedReader's do
# (sp_fastport.c SMALL_READ). Not reads of 1 KiB or more: for request/response traffic that
# reads what was sent, reading ahead only adds a copy and a buffer (ping-pong +8 % instructions
# per round trip with 8 KiB here).
_SMALL_READ = 512

ErrorArg = Union[type[BaseException], Callable[[str], Any]]


class _Scratch(threading.local):
    """This thread's error record for pump calls and a count cell (sp_ctx_open_conn's failed
    step; the ports' pump calls count in their connection's cells), as `_per_thread.pair`:
    made on a thread's first use (threading.local runs __init__ then), then one attribute
    load per call, no allocation and no Python call."""

    pair: tuple[Any, Any]
    err_addr: int  # pair[0]'s address, for sp_fastport.c

    def __init__(self) -> None:
        ffi = _binding.ffi
        if ffi is not None:
            self.pair = (ffi.new("sp_err *"), ffi.new("size_t *"))
            self.err_addr = int(ffi.cast("uintptr_t", self.pair[0]))


_per_thread = _Scratch()


_from_buffer: Any = getattr(_binding.ffi, "from_buffer", None)  # None without the native module


def _read_all(reader: Any, conn: Connection, out: Optional[list[bytes]] = None) -> bytes:
    """read() / read(-1) (the port's, or the C fast path's `reader`): everything up to EOF, in
    chunks of what arrives, all under one deadline of the port's timeout (a peer that sends a
    byte now and then must not make a whole read() outlast it). What arrived before a
    timeout, a failure or Ctrl-C is not lost: the port serves it first, next read. Each chunk
    goes from read1 into `chunks` inside one C call (list.extend of an islice of `more`): a
    signal handler's exception, which comes as a call returns to Python (the C read1's
    return), never finds a chunk read and not kept. The result also goes to `out[0]` when
    given (SSLInputPort.read)."""
    chunks: list[bytes] = []
    if reader._timeout is None:
        read1 = functools.partial(reader.read1, _READ_CHUNK)
    else:
        read1 = functools.partial(reader._read_new, _READ_CHUNK, False, _deadline(reader._timeout))
    more = iter(read1, b"")  # (ends at EOF's b"")
    try:
        had = -1
        while len(chunks) > had:
            had = len(chunks)
            chunks.extend(itertools.islice(more, 1))
        data = b"".join(chunks)
        if out is not None:
            out[0] = data  # (inline, no call from here on)
        return data
    except BaseException as exc:
        if chunks and isinstance(exc, ValueError) and not conn.open_ports:
            # Both ports were closed during this read(), after a chunk (the next read1 found
            # its port closed): its EOF, after what it had, as the read1 under way at the
            # close ends (Connection.read).
            data = b"".join(chunks)
            if out is not None:
                out[0] = data
            return data
        if chunks and (out is None or not out[0]):  # (not when handed over: the caller keeps)
            # (inline: the join is the one call before they are safe)
            with conn.read_lock:
                reader._buf[:0] = b"".join(chunks)
        raise


def _load_fastport() -> Any:
    """The ports' hot methods in C (csrc/py/sp_fastport.c), bound to the pump; None when the
    module is not built (PyPy) or SSLPORTS_NO_FASTPORT is set, and then
    the ports' own Python methods do the same work."""
    if _binding.lib is None or os.environ.get("SSLPORTS_NO_FASTPORT"):
        return None
    try:
        from . import _fastport  # type: ignore[attr-defined]
    except ImportError:
        return None
    ffi, lib = _binding.ffi, _binding.lib
    pump = [
        "sp_read",
        "sp_write2",
        "sp_write_hold",
        "sp_held_out",
        "sp_written",
        "sp_conn_broken",
        "sp_flush",
        "sp_conn_drain_tickets",
        "sp_conn_drop_unread",
        "sp_handshake",
        "sp_held_out_try",
        "sp_conn_forked",
        "sp_conn_in_callback",
        "sp_conn_unsent",
        "sp_take_break",
        "sp_conn_note_write",
    ]  # (init's order)
    _fastport.init(
        tuple(int(ffi.cast("uintptr_t", ffi.addressof(lib, name))) for name in pump),
        ffi.sizeof("sp_err"),
        _SLICE_MS,
        _RECORD,
        _read_all,
    )
    return _fastport


_fastport = _load_fastport()

_REENTERED = (
    "reentrant call inside an SSL port: this thread is already in a call on it "
    "(from a stream of its own or a callback)"
)
_IN_CALLBACK = (
    "reentrant call inside an SSL port: this thread is inside a callback of its connection, "
    "and another thread's call on the port waits for it"
)


class _PortLock:
    """threading.Lock, except that its holder's thread never waits for it: a port called
    again from inside one of its own calls (a stream of its own that reads the port it
    feeds, a key logger that reads the connection it logs) raises RuntimeError, as
    io.BufferedReader does, instead of waiting for itself forever (a timed wait times out,
    as threading.Lock's). So does a wait from inside an OpenSSL callback of the connection at
    `conn_addr` (a key logger that writes to it while another thread writes): the holder
    waits for the connection's ssl_lock, which this thread holds there (sp_conn.c
    CALLBACKS). sp_fastport.c Lock does the same for the fast path.

    Over an RLock (never taken twice), which records its owner in the call that takes it: a
    signal handler's exception (Ctrl-C) that comes as that call returns finds it this
    thread's and gives it back, where a lock taken by nobody would stay held for ever."""

    __slots__ = ("_conn", "_held", "_holder", "_lock")

    def __init__(self, conn_addr: int = 0) -> None:
        self._lock: Any = threading.RLock()
        self._held = False  # (locked(); set once taken, cleared before the release)
        self._holder = 0  # (_owner(): the thread that took it)
        self._conn = _binding.ffi.cast("sp_conn *", conn_addr) if conn_addr else None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._lock
        if self._held and lock._is_owned():  # (this thread's only while _held)
            if blocking and timeout < 0:
                raise RuntimeError(_REENTERED)
            if blocking and timeout > 0:
                time.sleep(timeout)  # (a timed wait for oneself times out)
            return False
        me = threading.get_ident()  # (before: nothing may call between the take and the stores)
        try:
            if not lock.acquire(False):
                conn = self._conn
                waits = blocking and timeout < 0 and conn is not None
                if waits and _binding.lib.sp_conn_in_callback(conn):
                    raise RuntimeError(_IN_CALLBACK)
                if not (blocking and lock.acquire(True, timeout)):
                    return False
        except BaseException:
            if lock._is_owned():  # taken as the exception came: not taken after all
                lock.release()
            raise
        self._holder = me
        self._held = True
        return True

    __enter__ = acquire

    def release(self) -> None:
        self._held = False
        self._lock.release()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        return self._held

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())

    def _owner(self) -> int:
        """The holder's thread ident, or 0 while it is free."""
        return self._holder if self._held else 0

    def release_taken(self, held_before: bool) -> None:
        """The `finally` of a `try` that takes the lock with a timeout: give it back if this
        thread took it. The acquire goes inside the `try`, never before it: a signal
        handler's exception (Ctrl-C) as the acquire returns would come before the `try` (on
        Python 3.9 and 3.10 also at `try:` itself), and the lock would stay held, every later
        call on the port waiting for it. `held_before`: _is_owned() before the `try` (a call
        made from inside one of the port's own calls, whose lock it is not to give back).
        sp_fastport.c Lock does the same in one C call, which no such exception can split."""
        if not held_before and self._lock._is_owned():
            self.release()


# The ports' direction locks: _PortLock; with the fast path, its own lock type (the same
# behaviour), which the C methods take without a Python call.
_new_lock: Callable[..., Any] = _PortLock if _fastport is None else _fastport.Lock


_LINGER_MAX = 256  # sockets lingering at once; past that, the last close closes at once
_LINGER_POLL_MS = 20  # how soon the lingerer first looks at a socket's send queue
# ... looking again after twice the time each time, up to this (seconds): 256 sockets whose
# peers read nothing cost it ~5 % of a core for their _LINGER_SECONDS at 20 ms each (aio's
# _LINGER_POLL_MAX, the same)
_LINGER_POLL_MAX = 0.32
# How long a last close that would linger waits for another thread's call on the connection to
# notice the close (a read waiting in recv() does so at the end of its wait slice) before it
# wakes that call with shutdown(SHUT_RDWR) and closes at once instead (a reset then drops what
# the kernel had still to send, should the peer's late bytes come: 20 slices, 1 s as
# _CLOSE_WAIT, as a thread on a busy machine can run that late).
_LINGER_WAKE = 20 * _SLICE_MS / 1000
_ABORT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


class _Lingerer:
    """Closes sockets whose last write the kernel has not yet delivered (sp_conn.c LINGERING
    CLOSE), from one daemon thread, started when first needed and ended when idle. Each socket
    was shut down for writing only, so the peer has our FIN; what it sends meanwhile (a late
    TLS 1.3 ticket) is read and dropped instead of being answered with the reset that would
    drop the rest of our bytes. A socket closes once its send queue is empty, at the peer's EOF
    or reset, or once the peer took none of it for _LINGER_SECONDS (a peer that reads slowly
    is waited for while it reads, up to _LINGER_MOST_SECONDS). At exit the process's own close
    of its descriptors takes over, as for a plain close()."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # socket -> [its deadline, the bytes its kernel still held at the last look, the
        # latest the deadline may move to, when to look next, the wait after that look]
        self.socks: dict[_socket.socket, list[float]] = {}
        self.dropped: set[_socket.socket] = set()  # those that read away bytes of the peer's
        self.running = False

    def add(self, sock: _socket.socket) -> bool:
        """Take `sock` to close later; False when too many already wait (close it now)."""
        with self.lock:
            if len(self.socks) >= _LINGER_MAX:
                return False
            now, first = time.monotonic(), _LINGER_POLL_MS / 1000
            self.socks[sock] = [
                now + _LINGER_SECONDS,
                math.inf,
                now + _LINGER_MOST_SECONDS,
                now + first,
                first,
            ]
            if not self.running:
                threading.Thread(target=self._run, name="sslports-linger", daemon=True).start()
                self.running = True
        return True

    def _run(self) -> None:
        try:
            self._linger()
        finally:  # (the loop ends only with nothing left; an error must not keep it "running")
            with self.lock:
                self.running = False

    def _linger(self) -> None:
        unsent = _binding.lib.sp_fd_unsent
        poller = select.poll()
        polled: set[int] = set()
        while True:
            with self.lock:
                if not self.socks:
                    return
                socks = list(self.socks.items())
            live: dict[int, tuple[_socket.socket, list[float]]] = {}
            for sock, watch in socks:
                fd = sock.fileno()
                if fd < 0:  # its owner closed it meanwhile (a `with socket...` block's end)
                    self._done(sock)
                else:
                    live[fd] = (sock, watch)
            for fd in polled - live.keys():
                poller.unregister(fd)
            for fd in live.keys() - polled:
                poller.register(fd, select.POLLIN)
            polled = set(live)
            due = min((watch[3] for _sock, watch in live.values()), default=0.0)
            wait_ms = max(0, min(_LINGER_POLL_MS, math.ceil((due - time.monotonic()) * 1000)))
            ready = {fd for fd, _event in poller.poll(wait_ms)} if live else set()
            now = time.monotonic()
            for fd, (sock, watch) in live.items():
                if fd not in ready and now < watch[3]:
                    continue  # (not due yet: each socket's looks back off)
                left = unsent(fd)
                if left < watch[1]:  # the peer took some: it reads, slowly maybe; wait on
                    watch[0] = min(now + _LINGER_SECONDS, watch[2])
                watch[1] = left
                watch[3], watch[4] = now + watch[4], min(2 * watch[4], _LINGER_POLL_MAX)
                if (fd in ready and not self._drop_input(sock)) or now > watch[0] or not left:
                    self._done(sock)

    def _done(self, sock: _socket.socket) -> None:
        """Close `sock`. If bytes the peer sent after our close were read away, with a reset
        (SO_LINGER 0), as the kernel answers such bytes: the peer learns that they went
        nowhere, now that ours were delivered (it reads them before the reset's error)."""
        with self.lock:
            self.socks.pop(sock, None)
            dropped = sock in self.dropped
            self.dropped.discard(sock)
        if dropped:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT)
        sock.close()

    def _drop_input(self, sock: _socket.socket) -> bool:
        """Read away what arrived; False at the peer's EOF or an error (nothing more to wait
        for: the peer has everything it will take)."""
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if data:
            with self.lock:
                self.dropped.add(sock)
        return bool(data)

    def forget(self) -> None:
        """In a forked child: the parent's lingering sockets are the parent's to close; this
        process closes its copies now (no thread of the parent runs here)."""
        self.lock = threading.Lock()
        socks, self.socks, self.running = self.socks, {}, False
        self.dropped = set()
        for sock in socks:
            sock.close()


_lingerer = _Lingerer()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_lingerer.forget)


class _SocketTransport:
    """A socket whose I/O the C pump does itself (a socket.socket, or the bare _socket.socket
    ssl_connect and ssl_accept make)."""

    __slots__ = ("sock",)  # (one per connection: no instance dict)
    fed = 0  # (the pump reads the socket itself: see _StreamTransport.fed)

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    def raise_send_failure(self) -> None:
        """(the pump reports it itself: sp_conn.c SEND FAILURE)"""

    def close(self, close_original: bool, timeout: Optional[float]) -> None:
        self.sock.close()


class Connection:
    """What the two ports of one TLS connection share."""

    # Defaults every connection starts with (class attributes: nothing to store per connection).
    closed = False
    sni_error: Optional[BaseException] = None
    # The input port's bytes read ahead (its _buf, shared), where the bytes a call other than
    # its own reads go (a failed read's, in front; pump_once's, at the end): set when the
    # ports are made (make_ports).
    kept: Optional[bytearray] = None
    caches_session = False  # a client whose context keeps sessions (in C) for the next connect
    free_at_last_close = False  # finalized with a port still open: its last close frees it
    # The transports of connections whose ports are made and not both closed (make_ports adds,
    # the last close discards; sp_fastport.c conn_port_closed too). The collector finalizes a
    # cycle's garbage in any order, and from Python 3.12 a socket is such garbage too: ports
    # dropped in a cycle found their socket closed by its own finalizer (their held bytes
    # lost; the descriptor's number free for another file to take meanwhile) or their output
    # stream closed. Held here, the transport is not garbage until the last close is done.
    live_transports: ClassVar[set[Any]] = set()
    # The peer's (host, port) for a failed handshake's message, when the caller knows it
    # (net.py: what ssl_connect connected to, whom ssl_accept accepted); see peer_text.
    peer: Optional[tuple[Any, ...]] = None
    # The count cells of this connection's reads and writes (read_cell, write_cell; the error
    # record is per thread, _per_thread, and says whose call filled it: own_record): a signal
    # handler that reads or writes on another connection of this thread, run as a pump call
    # here returns, must not overwrite its count, and a read needs its count after the handler
    # raised (Connection.read). Made by the first call that needs one: the C methods never do.
    got: Any = None
    done: Any = None

    def __init__(
        self,
        ptr: Any,
        transport: Union[_SocketTransport, _StreamTransport],
        context: Any,
        error: ErrorArg,
        strict_eof: bool,
        shutdown_on_close: bool,
        close_original: bool,
        hostname: Optional[str],
    ) -> None:
        # The connection frees its sp_conn itself (__del__), not through ffi.gc: when ports,
        # connection and pointer become garbage together (a cycle, interpreter exit), the
        # collector runs their finalizers in any order (cffi's destructor is one too), and a
        # port's close() must never reach a pointer freed before it: __del__ leaves an open
        # port's connection to its last close (free_at_last_close).
        # (a plain pointer to it: the detached ffi.gc object and the cdata it wraps cost 80 bytes)
        _binding.ffi.gc(ptr, None)
        self.ptr: Any = _binding.ffi.cast("sp_conn *", ptr)
        # The address the C fast path pumps (sp_fastport.c); 0 once the connection is closed.
        self._fast_addr = int(_binding.ffi.cast("uintptr_t", ptr))
        self.transport = transport
        self.context = context
        self.error = error
        self.strict_eof = strict_eof
        self.shutdown_on_close = shutdown_on_close
        self.close_original = close_original
        self.hostname = hostname
        # One item per open port, popped by its close (atomic): the port that pops False is
        # the last. Empty once both are closed: a read still waiting then ends with EOF.
        self.open_ports = [False, True]
        # One reader and one writer at a time (the ports take these around every call); the
        # last close waits for both, so no call can still be using the socket.
        self.read_lock = _new_lock(self._fast_addr)
        self.write_lock = _new_lock(self._fast_addr)
        self.is_socket = type(transport) is _SocketTransport

    def read_cell(self) -> Any:
        """The count cell (size_t *) of this connection's reads."""
        got = self.got
        if got is None:
            got = self.got = _binding.ffi.new("size_t *")
        return got

    def write_cell(self) -> Any:
        """The count cell (size_t *) of this connection's writes."""
        done = self.done
        if done is None:
            done = self.done = _binding.ffi.new("size_t *")
        return done

    def free(self) -> None:
        """Release the C connection; every later call sees a closed connection."""
        ptr, self.ptr = getattr(self, "ptr", None), None
        self._fast_addr = 0
        self.closed = True
        if ptr is not None:
            _binding.lib.sp_conn_free(ptr)

    def __del__(self) -> None:
        """The collector's end of the connection: free it, as free() does (its body again: one
        Python frame per connection), unless a port is still open. The collector finalizes
        garbage in any order (at exit on a free-threaded CPython, the connection before its
        ports): that port's close must still flush and say goodbye, and the connection's last
        close frees it then (port_closed; sp_fastport.c conn_port_closed)."""
        ptr = getattr(self, "ptr", None)
        if ptr is not None and self.kept is not None and self.open_ports:
            # (kept: its ports were made, and one of them will be finalized too; a
            # connection whose handshake failed has none and is freed here)
            self.free_at_last_close = True
            return
        self.ptr = None
        self._fast_addr = 0
        self.closed = True
        if ptr is not None:
            _binding.lib.sp_conn_free(ptr)

    # -- errors -----------------------------------------------------------------------------

    def fail(self, func: str, what: str, err: Any) -> BaseException:
        """The exception for a failed pump call, made by the connection's error argument."""
        err = self.own_record(err)
        hint = _binding.established_hint(self.ptr, err) if self.ptr is not None else None
        exc = build_error(func, what, err, conn=self.ptr, hostname=self.hostname, hint=hint)
        self.push_alert()
        return self.make_error(exc)

    def push_alert(self) -> None:
        """After a failure, streams: send what it queued, the alert that tells the peer why
        (the socket BIO sends it at once). Bounded and best effort: a peer that no longer
        reads, or an output stream that failed, cannot hold the caller."""
        if isinstance(self.transport, _StreamTransport) and self.ptr is not None:
            try:
                self.transport.push_out(self.ptr, _Deadline(_ABANDON_DRAIN))
            except Exception:
                pass

    def own_record(self, err: Any) -> Any:
        """The error record `err` of this connection's failed pump call, or, if a call on
        another connection filled it since (this thread's record: a signal handler's call, run
        as the failed call returned), what the connection kept of that failure."""
        if err.conn != self.ptr and self.ptr is not None:
            err = _binding.ffi.new("sp_err *")
            _binding.lib.sp_conn_failure(self.ptr, err)
        return err

    def make_error(self, exc: SSLError) -> BaseException:
        factory = self.error
        if isinstance(factory, type) and issubclass(factory, SSLError):
            try:
                return factory(
                    exc.message,
                    openssl_errors=exc.openssl_errors,
                    verify_code=exc.verify_code,
                    verify_message=exc.verify_message,
                    errno=exc.errno,  # the socket's reason (ECONNRESET, EPIPE), if there is one
                )
            except TypeError:
                pass  # a subclass whose __init__ takes the message only: made as any class is
        made: object
        if isinstance(factory, type) and issubclass(factory, BaseException):
            made = factory(exc.message)
        else:
            try:
                made = cast(Any, factory)(exc.message)
            except BaseException as raised:
                made = raised
        if isinstance(made, BaseException):
            for attr in ("openssl_errors", "verify_code", "verify_message"):
                with contextlib.suppress(AttributeError):
                    setattr(made, attr, getattr(exc, attr))
            if isinstance(made, OSError) and made.errno is None:
                made.errno = exc.errno
            return made
        return exc

    @contextlib.contextmanager
    def transport_errors(
        self, func: str, what: str, cls: type[SSLError] = SSLError
    ) -> Iterator[None]:
        """Report a failing stream transport as this connection's error (API.md: a transport
        failure raises SSLError, or what the ``error=`` argument makes)."""
        try:
            yield
        except _TransportError as exc:
            raise self.transport_failure(func, what, exc, cls) from exc

    def transport_failure(
        self, func: str, what: str, exc: _TransportError, cls: type[SSLError] = SSLError
    ) -> BaseException:
        """The connection's error for a failing stream transport: "<func>: <what> failed
        (<reason>)", with the stream's errno (the ``error=`` argument makes it)."""
        return self.make_error(cls(f"{func}: {what} failed ({exc.message})", errno=exc.errno))

    # -- the loop around every pump call -----------------------------------------------------

    def wait_for_pump(
        self, status: int, deadline: _Deadline, func: str, seen: int, reading: bool = False
    ) -> None:
        """Do what a WANT_* status asks: move stream bytes, or check the deadline. `seen`: the
        transport's `fed` before the pump call that returned `status`; `reading`: for a read
        of the input port (see _StreamTransport.push_out)."""
        lib = _binding.lib
        transport = self.transport
        if isinstance(transport, _StreamTransport):
            transport.push_out(self.ptr, deadline, reading, func)
            if status == lib.SP_WANT_READ:
                transport.pull_in(self.ptr, deadline, seen)
            return
        if deadline.expired():
            raise SSLTimeoutError(f"{func}: timed out")

    def handshake(self, func: str, timeout: Optional[float], cls: type[SSLError]) -> None:
        if BREAKS.exc is not None:  # (see _timing.BREAKS)
            drop_break()
        if self.is_socket and _fastport is not None:
            # The loop below in C (sp_fastport.c handshake): it runs once per connection, cold.
            status = _fastport.handshake(self._fast_addr, timeout, _per_thread.err_addr)
            if BREAKS.exc is not None:
                raise_break_from_callback()
            if status == _SP_OK:
                return
            if status in (_SP_WANT_READ, _SP_WANT_WRITE):
                raise self.handshake_timed_out(func)
            self.handshake_failed(func, status, cls)
        lib = _binding.lib
        err = _per_thread.pair[0]
        deadline = _deadline(timeout)
        while True:
            wait = _SLICE_MS if deadline.at is None else deadline.slice_ms()
            seen = self.transport.fed
            status = lib.sp_handshake(self.ptr, wait, err)
            if BREAKS.exc is not None:
                raise_break_from_callback()
            if status == _SP_OK:
                if not self.is_socket:
                    transport = cast(_StreamTransport, self.transport)
                    with self.transport_errors(func, self.handshake_what(), cls):
                        transport.push_out(self.ptr, deadline)
                    if not _binding.lib.SSL_is_server(_binding.lib.sp_conn_ssl(self.ptr)):
                        # (a client's last flight, its Finished, counts as the output port's
                        # bytes; a server's is session tickets, of no use to a peer gone away)
                        transport.sender.written_mark = transport.sender.put_total
                    transport.handshaking = False
                return
            if status in (_SP_WANT_READ, _SP_WANT_WRITE):
                if self.is_socket:  # the pump waited a slice (or a signal came): call again
                    if deadline.expired():
                        raise self.handshake_timed_out(func)
                    continue
                if deadline.expired():  # (a stream read under it gives up at the deadline)
                    raise self.handshake_timed_out(func)
                try:
                    self.wait_for_pump(status, deadline, func, seen)
                except _TransportError as exc:
                    # The stream's own timeout ended a read that outlasted the deadline
                    # (docs/guide/timeouts.md): that is the deadline expiring. (A socket's
                    # timeout is TimeoutError from Python 3.10 on; before, socket.timeout.)
                    timed_out = isinstance(exc.__cause__, (TimeoutError, socket.timeout))
                    if timed_out and deadline.expired():
                        raise self.handshake_timed_out(func) from exc
                    raise self.transport_failure(func, self.handshake_what(), exc, cls) from exc
                continue
            self.handshake_failed(func, status, cls)

    def in_a_child(self) -> bool:
        """Is this process a child of the one that made the connection (fork)? (sp_fastport.c
        in_a_child; False once the connection is freed)"""
        ptr = self.ptr
        return ptr is not None and _binding.lib.sp_conn_forked(ptr) == 2  # (3: it wrote)

    def handshake_what(self) -> str:
        """What a failed handshake's message says failed (`_binding.handshake_step`)."""
        lib = _binding.lib
        return _binding.handshake_step(bool(lib.SSL_is_server(lib.sp_conn_ssl(self.ptr))))

    def peer_text(self) -> Optional[str]:
        """The peer's host:port for a failed handshake's message: what the caller said
        (`peer`), else what the socket says (nothing once a reset disconnected it), else None
        (a stream transport). An address that a socket gave (a server's client, accepted on a
        dual-stack listener) is said as ssl_addresses says it: IPv4 in its IPv4 form."""
        addr = self.peer
        said = addr is not None and self.handshake_what() == "connect"
        if addr is None and self.is_socket:
            try:
                addr = cast(_SocketTransport, self.transport).sock.getpeername()
            except OSError:
                return None
        if not isinstance(addr, tuple) or len(addr) < 2:
            return None  # (an AF_UNIX peer has no host:port)
        host = str(addr[0])
        return _binding.endpoint(host if said else _binding.unmapped(host), addr[1])

    def handshake_timed_out(self, func: str) -> SSLTimeoutError:
        where = self.peer_text()
        if where is not None and self.handshake_what() == "accept":
            where = f"client {where}"
        return SSLTimeoutError(f"{func}: handshake timed out" + (f" ({where})" if where else ""))

    def handshake_failed(self, func: str, status: int, cls: type[SSLError]) -> NoReturn:
        """Raise what a failed handshake (`status`, this thread's error record) means."""
        what = self.handshake_what()
        where = self.peer_text()
        if status == _SP_RAGGED_EOF and self.sni_error is None:
            at = f": {where}" if where else ""
            raise cls(f"{func}: {what} failed (connection closed by peer{at})")
        record = self.own_record(_per_thread.pair[0])
        exc = build_error(
            func,
            what,
            record,
            cls,
            conn=self.ptr,
            hostname=self.hostname,
            peer=where,
            client_peer=what == "accept",
            hint=_binding.server_hint(self.ptr, record),
        )
        self.push_alert()  # (also when an SNI callback failed)
        # Raised with no local (nor the connection) still naming the exception once it leaves:
        # its traceback holds this frame (and the SNI callback's), so a name would make a
        # cycle that keeps the connection and its C memory (~150 KB) until the cyclic
        # collector runs, for every failed handshake.
        sni_error, self.sni_error = self.sni_error, None
        try:
            if sni_error is not None:
                raise sni_error
            if cls is SSLError and self.error is not SSLError:
                raise self.make_error(exc)
            raise exc
        finally:
            del exc, sni_error

    def read(
        self,
        func: str,
        view: Any,
        fill: bool,
        deadline: _Deadline,
        total: int = 0,
        onto: Optional[bytearray] = None,
        placed: Optional[list[int]] = None,
    ) -> int:
        """Read into the writable buffer `view`: at least one byte (or all of it when `fill`),
        0 at EOF. `total`: bytes a caller's own pump call already put at the start of `view`
        (they count, and are returned even if this call then fails). `onto` (the kept bytes,
        with `view` a bytearray of scratch): what was read goes to its end before this call
        returns or raises, as a count handed back would be lost to a signal handler's
        exception that comes as the call returns. `placed` (a cell, see
        SSLInputPort.readinto; given when `onto` is not): on the way out, returning or
        raising, how many bytes `view` holds, which the caller keeps again if it does not
        hand them over."""
        if self.closed:
            if not self.open_ports:
                # Both ports were closed while a call of the input port was under way (its
                # port was open when it began: a later call raises ValueError there), and this
                # is that call going on for more (a stream read returned after the close: a
                # readline, a read(n) that had part): its EOF, after what it had, as the read
                # ends that the close finds waiting (threading.md).
                return total
            if placed is not None:  # (freed with its ports open: free())
                placed[0] = total
            raise ValueError("I/O operation on closed SSL connection")
        err = _per_thread.pair[0]
        sp_read = _binding.lib.sp_read
        ptr = self.ptr
        transport = self.transport
        # A signal handler's exception (Ctrl-C) comes as a pump call returns, before its count
        # is added: `got` keeps that count, `base` is where the call started (None before the
        # first), and the except clause adds what is missing. Any instruction may be the one
        # that raises (PyPy, CPython < 3.10): `got` is zeroed before `base` moves, so
        # base + got[0] never counts a byte twice.
        got = self.read_cell()
        base = None
        looked = False  # (a stream read past its deadline looked at what the stream brought)
        appended = False  # (onto has them)
        try:
            # `with` releases the buffer export on the way out, also on an exception: a
            # traceback keeping this frame alive must not keep `view` exported (the caller's
            # memoryview of it would raise BufferError as it is released, in place of the
            # exception, and the cyclic GC may clear the memoryview while exported and then
            # crash when it is freed). So the export is made in the `with` statement itself:
            # an exception as a call before it returns leaves none behind.
            with _from_buffer("unsigned char[]", view, require_writable=True) as buf:
                size = len(buf)
                while total < size:
                    wait = _SLICE_MS if deadline.at is None else deadline.slice_ms()
                    want = size - total if fill else 1
                    seen = transport.fed
                    got[0] = 0
                    base = total
                    status = sp_read(ptr, buf + base, size - base, want, got, wait, err)
                    total = base + got[0]
                    if BREAKS.exc is not None:  # (a key logger's Ctrl-C: _timing.BREAKS)
                        raise_break_from_callback()
                    if status == _SP_OK:
                        if not fill or total >= size:
                            break
                        continue
                    if status == _SP_OK_SEND:
                        # (streams: reading queued ciphertext, the peer may wait for it: a
                        # post-handshake authentication's answer. It goes out now, as a
                        # socket port's does, not at this connection's next wait or write.)
                        self.wait_for_pump(_SP_WANT_WRITE, deadline, func, seen, reading=True)
                        if not fill or total >= size:
                            break
                        continue
                    if status == _SP_EOF:
                        break
                    if status == _SP_RAGGED_EOF:
                        if self.strict_eof and total == 0 and self.open_ports:
                            raise self.make_error(SSLError(f"{func}: read failed (unexpected eof)"))
                        if total == 0 and self.open_ports:
                            # (streams: after the output stream failed, the end of the input
                            # without close_notify is that failure: the reset; sockets: in C)
                            self.transport.raise_send_failure()
                        break
                    if status in (_SP_WANT_READ, _SP_WANT_WRITE):
                        if not self.open_ports:
                            # Both ports were closed while this read waited (a lingering
                            # close, which does not wake it: linger_when_idle): its EOF.
                            break
                        # (streams too: their read under a deadline gives up at it)
                        if deadline.expired() and (self.is_socket or looked):
                            # Also with part of a `fill` read (read(n), readinto): a short
                            # read is the end of the stream to every consumer of a file
                            # object (http.client, pickle, gzip...), as io's. The part is
                            # kept (below) for the retry.
                            raise SSLTimeoutError(f"{func}: read timed out")
                        # A stream's bytes reach the pump only here (the socket pump reads
                        # its socket itself): a deadline already gone (timeout 0, a poll)
                        # still takes what the stream delivered by now, once, and asks for
                        # more (the read stays outstanding for the next call).
                        looked = deadline.expired()
                        self.wait_for_pump(status, deadline, func, seen, reading=True)
                        continue
                    if total:
                        break  # hand over what arrived; the error is sticky and comes next call
                    if not self.open_ports:
                        # Both ports closed while the read waited: that is its EOF,
                        # whatever the socket said after our own shutdown (a peer's late alert
                        # makes the kernel reset a shut-down socket).
                        break
                    raise self.fail(func, "read", err)
            if onto is not None:  # (inline, no call: see `onto`)
                onto += view[:total]
                appended = True
            elif placed is not None:
                placed[0] = total
        except BaseException as exc:
            # Ctrl-C, a signal handler's exception, a failing stream: bytes this call (or
            # its caller) already put in `view` are not lost, the next read returns them.
            if base is not None and base + got[0] > total:
                total = base + got[0]
            # (no call before the bytes are safe: a second signal's exception can come at any)
            if onto is not None:
                if total and not appended:
                    onto += view[:total]
            elif placed is not None:
                placed[0] = total
            if isinstance(exc, _TransportError):
                raise self.transport_failure(func, "read", exc) from exc
            raise
        return total

    def read_rest(self, b: Any, fill: bool, total: int) -> int:
        """The C fast path's continuation (sp_fastport.c), called with the read lock held for
        everything but a read that got all it asked for: waits, EOF, errors."""
        if BREAKS.exc is not None:  # (the pump call ran a key logger that met Ctrl-C)
            raise_break_from_callback()
        if not self.open_ports:  # both ports were closed while this call waited: EOF for it
            return total
        if total and not fill:  # (a read that got bytes, handed over for a break: done)
            return total
        # (as SSLInputPort.readinto: b's bytes viewed first, kept with no call; sp_fastport.c
        # keep_read_bytes then sees them kept, and keeps the first `total` itself if this
        # frame raised before its try)
        placed = [total]
        data: Any = None
        try:
            data = memoryview(b).cast("B")
            return self.read("read", data, fill, _NO_DEADLINE, total, None, placed)
        except BaseException:
            if placed[0] and data is not None and self.kept is not None:
                self.kept[:0] = data[: placed[0]]
            if data is not None:
                data.release()
            raise

    def write_rest(self, pending: bytearray, data: Any, sent: int, func: str) -> None:
        """The C fast path's continuation for writes and flushes (`func`, the name errors
        carry; see read_rest): send the rest of the held bytes `pending`, then of `data`,
        after the first `sent` bytes of the two (on an exception, sp_fastport.c
        continue_write keeps what was not sent)."""
        if BREAKS.exc is not None:  # (the pump call ran a key logger that met Ctrl-C)
            raise_break_from_callback()
        _send_rest(self, pending, None, data, sent, func)

    def written(self) -> int:
        """Plaintext OpenSSL has taken from this connection's writers so far (sp_written)."""
        ptr = self.ptr
        return int(_binding.lib.sp_written(ptr)) if ptr is not None else 0

    def pump_once(
        self, func: str, view: memoryview, deadline: _Deadline, waiting: Callable[[Any], int]
    ) -> int:
        """Process what arrives within one wait slice (handshake records included): the
        application bytes read go to the input port's reader (after its kept bytes), also
        when a signal handler's exception comes as the pump call returns. `waiting(ptr)`:
        whether what the caller waits for is still to come once the pump processed what it
        had; when it is not, a stream connection sends what processing queued and reads no
        more input.

        Returns how many (possibly 0), or -1 at EOF.
        """
        lib = _binding.lib
        ffi = _binding.ffi
        err = ffi.new("sp_err *")
        got = ffi.new("size_t *")  # (this call's own: 0 until the pump call read)
        buf = ffi.from_buffer("unsigned char[]", view, require_writable=True)
        lock = self.read_lock
        held_before = lock._is_owned()
        try:
            if not lock.acquire(timeout=deadline.slice_ms() / 1000):
                # A read in another thread holds it, for as long as nothing arrives: its pump
                # processes what does (the caller's exchange too). The caller looks again.
                if deadline.expired():
                    raise SSLTimeoutError(f"{func}: timed out")
                return 0
            with buf:
                if self.closed:  # (under the lock: the last close waits for it, then closes)
                    raise ValueError("I/O operation on closed SSL connection")
                seen = self.transport.fed
                try:
                    status = lib.sp_read(self.ptr, buf, len(view), 0, got, deadline.slice_ms(), err)
                finally:  # (inline, no call: a call's start can run a signal handler)
                    if self.kept is not None:
                        self.kept += view[: got[0]]
        finally:
            lock.release_taken(held_before)
        if BREAKS.exc is not None:  # (a key logger's Ctrl-C: _timing.BREAKS)
            raise_break_from_callback()
        if status == _SP_OK_SEND:  # (streams: what reading queued goes out now, see read)
            with self.transport_errors(func, "read"):
                self.wait_for_pump(lib.SP_WANT_WRITE, deadline, func, seen, reading=True)
            return int(got[0])
        if status in (lib.SP_OK, lib.SP_WANT_READ, lib.SP_WANT_WRITE):
            if got[0] == 0 and status != lib.SP_OK:
                # (streams too: their read under a deadline gives up at it, and returns here)
                if deadline.expired():
                    raise SSLTimeoutError(f"{func}: timed out")
                if status == lib.SP_WANT_READ and not waiting(self.ptr):
                    status = lib.SP_WANT_WRITE  # (for streams: push out, but no read)
                with self.transport_errors(func, "read"):
                    self.wait_for_pump(status, deadline, func, seen)
            return int(got[0])
        if status in (lib.SP_EOF, lib.SP_RAGGED_EOF):
            return -1
        raise self.fail(func, "read", err)

    def write(self, func: str, data: Any, deadline: _Deadline, head: Any = b"") -> int:
        """Encrypt and send all of the buffer `head`, then all of `data`, as one stream. Returns
        how much of the two was accepted before a timeout. One pump call in the common case (it
        also sends what it encrypted)."""
        if self.closed:
            if not self.open_ports:
                # Both ports were closed since the port's call began (a signal handler's
                # close, run inside it): the error of a write that the close ended
                # (threading.md), not the ValueError of a call on a closed port.
                closed = SSLError(f"{func}: write failed ({_CLOSED})", errno=errno.EPIPE)
                raise self.make_error(closed)
            raise ValueError("I/O operation on closed SSL connection")
        lib = _binding.lib
        err, done = _per_thread.pair[0], self.write_cell()
        total = 0
        if not self.is_socket:  # until its ciphertext is queued (a timeout: flush() pushes it)
            cast(_StreamTransport, self.transport).write_left = True
        ptr = self.ptr
        transport = self.transport
        # (`with` from where the exports are made: see read)
        with (
            _from_buffer("unsigned char[]", head) as hbuf,
            _from_buffer("unsigned char[]", data) as buf,
        ):
            hsize = len(hbuf)
            size = hsize + len(buf)
            try:
                while True:
                    wait = _SLICE_MS if deadline.at is None else deadline.slice_ms()
                    seen = transport.fed
                    if total < size:  # what is left of head, then of data
                        h, d = min(total, hsize), max(total - hsize, 0)
                        status = lib.sp_write2(
                            ptr, hbuf + h, hsize - h, buf + d, size - hsize - d, done, wait, err
                        )
                        total += done[0]
                    else:
                        status = lib.sp_flush(ptr, wait, err)
                    if BREAKS.exc is not None:  # (a key logger's Ctrl-C: _timing.BREAKS)
                        raise_break_from_callback()
                    if status == _SP_OK and total >= size:
                        break
                    if status in (_SP_OK, _SP_WANT_READ, _SP_WANT_WRITE):
                        # (streams too: a write that drives a renegotiation reads, and a
                        # read under a deadline gives up at it, and returns here)
                        if deadline.expired():
                            exc = SSLTimeoutError(f"{func}: write timed out")
                            exc.characters_written = total  # type: ignore[attr-defined]
                            try:
                                raise exc
                            finally:  # (a name for it here would be a cycle through its
                                del exc  # traceback, keeping the connection until gc runs)
                        if (
                            status == _SP_WANT_READ
                            and not self.is_socket
                            and lib.sp_stash_full(ptr)
                        ):
                            # This write drives a renegotiation: it reads whatever it is fed
                            # and keeps the reader's data. With that much kept, wait a slice
                            # for the reader to take some, as on a socket, rather than read the
                            # peer's data on without bound (its own records go out first).
                            cast(_StreamTransport, transport).push_out(ptr, deadline, func=func)
                            time.sleep(deadline.slice_ms() / 1000)
                            continue
                        self.wait_for_pump(status, deadline, func, seen)
                        continue
                    raise self.fail(func, "write", err)
                if isinstance(transport, _StreamTransport):
                    try:
                        transport.push_out(ptr, deadline, func=func)
                        transport.write_left = False
                    finally:  # (the output port's bytes: close waits for them)
                        transport.sender.written_mark = transport.sender.put_total
            except _TransportError as exc:
                raise self.transport_failure(func, "write", exc) from exc
        return total

    def wait_written(self, func: str, timeout: Optional[float]) -> None:
        """A stream connection's flush: wait until the sender thread has written the output
        port's bytes to the output stream (_StreamTransport.wait_written: while the stream
        takes them). The stream's failure that lost some of them is raised here (once, as a
        write would); SSLTimeoutError when `timeout` passes first (they stay queued and
        still go out)."""
        transport = cast(_StreamTransport, self.transport)
        if not transport.wait_written(_deadline(timeout)):
            raise SSLTimeoutError(f"{func}: write timed out")
        lost = transport.sender.unreported_loss()
        if lost is not None:
            raise self.transport_failure(func, "write", _transport_error(lost)) from lost

    def send_close_notify(self, deadline: _Deadline) -> None:
        """Queue our close_notify and push it out without waiting for the reply. (Only
        ports_to_ssl_ports sets shutdown_on_close: the transport is a stream's.)"""
        if self.ptr is None:  # freed already (free())
            return
        transport = cast(_StreamTransport, self.transport)
        err = _binding.ffi.new("sp_err *")
        try:
            while True:
                seen = transport.fed
                status = _binding.lib.sp_shutdown(self.ptr, err)
                if status != _SP_WANT_READ or deadline.expired():
                    break
                # (a TLS 1.2 renegotiation under way ends first: it needs the peer's flight)
                self.wait_for_pump(status, deadline, "close", seen)
            transport.push_out(self.ptr, deadline)
            transport.sender.drain(deadline.remaining())
        except (OSError, SSLError):
            pass  # a transport that can no longer be written is not an error here
        except Exception as exc:
            # Nor one whose write raised something else (a broken stream object): the
            # sender's failure, which a write or flush reported already, raised again here.
            failed = transport.sender.error
            if failed is None or type(exc) is not type(failed):
                raise

    def port_closed(self, timeout: Optional[float]) -> None:
        if not self.open_ports.pop():  # (True: the other port is still open)
            try:
                self.last_port_closed(timeout)
            finally:
                self.live_transports.discard(self.transport)
                if self.free_at_last_close:  # (the collector finalized the connection first)
                    self.free()

    def last_port_closed(self, timeout: Optional[float]) -> None:
        """The second port was closed (sp_fastport.c close_port calls this too): the
        connection ends."""
        if self.ptr is None:  # freed already (free())
            self.transport.close(self.close_original, 0)
            return
        if self.is_socket:
            forked = _binding.lib.sp_conn_forked(self.ptr)
            if forked and self.close_shared(forked, timeout):
                return
        self._fast_addr = 0  # the C fast path hands every later call to read/write_rest
        self.closed = True  # every later call raises ValueError before reaching C
        if self.caches_session:
            # Tickets that already arrived go to the session cache, unless a read in another
            # thread is still under way (shutdown() below ends it): the drain's SSL_read
            # would take application data from between the bytes that read returns, a hole
            # in its stream. Such a connection's tickets go uncached. (closed first: a read
            # that waited for the lock meanwhile finds the connection closed, not the bytes
            # after the drained ones.)
            held_before = self.read_lock._is_owned()
            try:
                if self.read_lock.acquire(False):
                    _binding.lib.sp_conn_drain_tickets(self.ptr)
            finally:
                self.read_lock.release_taken(held_before)
        if self.is_socket:
            # What is still queued leaves without waiting: a TLS 1.3 server's session tickets,
            # which wait for the connection's first write (sp_handshake), when it never wrote.
            _binding.lib.sp_flush(self.ptr, 0, _per_thread.pair[0])
            sock = cast(_SocketTransport, self.transport).sock
            if _binding.lib.sp_conn_unsent(self.ptr) and self.linger_when_idle(sock):
                return
            # shutdown() first: it wakes a call still waiting on this socket in another
            # thread, and puts our FIN on the wire before close() can answer ciphertext we
            # never read (a late TLS 1.3 ticket) with a reset, so the peer reads a clean EOF.
            # Then wait for such a call to leave (it holds its direction's lock): a reused
            # descriptor number must never reach C.
            try:  # (not contextlib.suppress: three Python calls on every connection)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if self.read_lock._is_owned() or self.write_lock._is_owned():
                # Closed from a signal handler or a callback that runs inside this thread's
                # own call on the connection, which holds its lock until it returns (its
                # wait ends at the shutdown: EOF, or the closed connection's error): waiting
                # here would wait for itself. A thread of its own closes the socket then.
                threading.Thread(
                    target=self.close_socket, args=(timeout,), name="sslports-close", daemon=True
                ).start()
                return
            self.close_socket(timeout)
            return
        # A stream transport: bytes the output stream refused raise here, as a write's would.
        with self.transport_errors("close", "write"):
            self.transport.close(self.close_original, timeout)

    def close_socket(self, timeout: Optional[float]) -> None:
        """The last close's end (sp_fastport.c conn_last_closed, the same): once no call is in
        the pump (each holds its direction's lock), close the socket."""
        with self.read_lock, self.write_lock:
            pass
        # Unread bytes would make close() answer with a reset, which also drops what the
        # kernel still has to send (the end of the last write, to a slow reader).
        _binding.lib.sp_conn_drop_unread(self.ptr)
        self.transport.close(self.close_original, timeout)

    def linger_when_idle(self, sock: _socket.socket) -> bool:
        """The last close of a socket whose kernel still holds bytes to deliver (sp_conn.c
        LINGERING CLOSE): shut our side only, read away what arrived, and leave the socket to
        the lingerer. A call of another thread still under way learns of the close without
        shutdown(SHUT_RD), which would make the kernel answer the peer's late bytes with a
        reset: a write fails at once (our side is shut), a read waiting in recv() ends at its
        wait slice (read(): both ports closed, its EOF). False when the call has not left
        within _LINGER_WAKE (the usual close then wakes it with shutdown(SHUT_RDWR))."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        read_lock, write_lock = self.read_lock, self.write_lock
        read_before, write_before = read_lock._is_owned(), write_lock._is_owned()
        if read_before or write_before:  # (this thread's own call: see last_port_closed)
            return False
        try:
            if not read_lock.acquire(timeout=_LINGER_WAKE):
                return False
            if not write_lock.acquire(timeout=_LINGER_WAKE):
                return False
            _binding.lib.sp_conn_drop_unread(self.ptr)
        finally:
            write_lock.release_taken(write_before)
            read_lock.release_taken(read_before)
        self.linger_close(sock)
        return True

    def linger_close(self, sock: _socket.socket) -> None:
        """Close `sock`, shut down for writing, once the kernel delivered what it holds (the
        lingerer), or now when too many sockets already linger (sp_fastport.c calls this)."""
        if not _lingerer.add(sock):
            sock.close()

    def close_shared(self, forked: int, timeout: Optional[float]) -> bool:
        """The last close of a socket connection after a fork (`forked`: sp_conn_forked,
        nonzero), when another process may hold the socket and use its copy of the connection:
        a prefork worker, a child it was handed to, the parent of this child. A child that
        wrote since its fork (4) took the connection over and closes it as usual (False),
        unless a lock is taken: by a thread of the parent at the fork, which this process
        does not have and which would never give it back (a bare close then, as before).
        Close this process's descriptor only, as Python's ssl does: shutdown() would end the
        connection for the other process too, and queued bytes sent or unread bytes read away
        here would corrupt its stream. False when a thread of this process is still in a call
        on it: the usual close then wakes that thread with shutdown()."""
        read_lock, write_lock = self.read_lock, self.write_lock
        idle = read_lock.acquire(False)
        if idle and not write_lock.acquire(False):
            read_lock.release()
            idle = False
        if forked == 4 and (idle or not _held_by_a_thread_gone(read_lock, write_lock)):
            if idle:  # (a child that took the connection over: the usual close)
                write_lock.release()
                read_lock.release()
            return False
        if not idle and forked == 1:
            return False
        # (in a child, a held lock's owner is a thread of the parent, which does not exist
        # here: the lock stays held forever, and waiting for it would hang)
        try:
            self._fast_addr = 0
            self.closed = True
            self.transport.close(self.close_original, timeout)
        finally:
            if idle:
                write_lock.release()
                read_lock.release()
        return True


class _SSLPort(NotCopyable, io.BufferedIOBase):
    """What the two ports share: the timeout and the switch to the C fast path."""

    # Slots, not the instance dict (io's base classes make one only when a name outside these is
    # set: the close claim, a timeout, an abandoned output port): an idle connection's ports cost
    # ~0.3 K less per end (bench/README.md section 4). `_fast`, the state of the C methods
    # (sp_fastport.c Reader / Writer) or None without them, is read by the C methods at its fixed
    # offset; set when the port is made, never replaced. `_buf` is shared with `_fast` (changed
    # in place only); `_lock` is the connection's lock of the port's direction.
    __slots__ = ("_buf", "_fast", "_lock", "_sslports_conn")
    _fast: Any
    _sslports_conn: Connection
    _lock: Any
    _buf: bytearray
    _timeout: Optional[float] = None
    # Set in the instance dict by the one close() that claims the port (_claim_close).
    _close_claimed: Optional[object] = None

    def _fast_mode(self) -> int:
        """What the C methods do (sp_fastport.c): the whole call while the common case holds,
        a socket port without a timeout (1); with a timeout or over streams (2), what needs no
        wait (the input port: serve what the kept bytes hold whole, a small read, a line, a
        peek; the output port: a write that only adds to the pending bytes), calling the
        Python methods for the rest (KEPT_ONLY); on a closed port, nothing (0)."""
        if self.closed:
            return 0
        return 1 if self._timeout is None and self._sslports_conn.is_socket else 2

    def _sync_fast(self) -> None:
        if self._fast is not None:
            self._fast.set_mode(self._fast_mode())

    def settimeout(self, seconds: Optional[float]) -> None:
        """Bound each later read, or write and flush, on this port (None: wait forever).
        Extension."""
        self._timeout = _check_timeout("settimeout", seconds)
        self._sync_fast()

    def gettimeout(self) -> Optional[float]:
        """The current timeout of this port's reads, or writes and flushes. Extension."""
        return self._timeout

    def seekable(self) -> bool:
        if self.closed:  # (as io's files say)
            raise ValueError("I/O operation on closed SSL port")
        return False


class SSLInputPort(_SSLPort):
    """The readable side of a TLS connection (a binary file-like object)."""

    # As socket.makefile("rb")'s: consumers that take a mode from the file (gzip.GzipFile,
    # tarfile) read it.
    mode = "rb"

    def __init__(self, conn: Connection, timeout: Optional[float]) -> None:
        # (io.BufferedIOBase.__init__ is object's: nothing to call.) Socket ports without a
        # timeout are made by sp_fastport.c make_ports instead: keep the two in step.
        self._sslports_conn = conn
        if timeout is not None:
            self._timeout = timeout
        self._lock = conn.read_lock
        # Bytes read ahead (by readline, peek, a failed read), served first: changed in place
        # only, under the read lock (shared with _fast).
        self._buf = bytearray()
        self._fast = None
        if _fastport is not None:
            self._fast = _fastport.Reader(conn, conn.read_lock, self._buf, self._fast_mode())

    def __repr__(self) -> str:
        return f"<SSLInputPort{' closed' if self.closed else ''}>"

    def readable(self) -> bool:
        self._check()  # (closed: ValueError, as io's files and sockets say)
        return True

    def _check(self) -> Connection:
        if self.closed:
            raise ValueError("I/O operation on closed SSL port")
        return self._sslports_conn

    def _readinto(
        self, b: Any, fill: bool, deadline: Optional[_Deadline], placed: list[int]
    ) -> int:
        """readinto / readinto1 (`fill`: all of b), under `deadline` (None: the port's timeout
        from now), into `b`, a bytearray or a memoryview of bytes (format "B") that the caller
        holds for the call, as io's readinto holds its argument: another thread cannot resize
        it while this waits. `placed[0]`: how many bytes `b` holds, set before they can be
        handed over (a count returned through a call is lost to a signal handler's exception
        that comes as the call returns): the caller keeps them again if it does not return
        them."""
        conn = self._check()
        with self._lock:
            kept = self._buf
            if (
                not kept
                and self._timeout is None
                and conn.is_socket
                and not conn.closed
                and not _small_buffer(b)
            ):
                # The common case in one pump call and one Python frame (this code runs cold,
                # between two waits on the network: every bytecode counts).
                err = _per_thread.pair[0]  # per thread: an sp_err per port would cost 2 KB each
                got = conn.read_cell()
                got[0] = 0
                try:
                    with _from_buffer("unsigned char[]", b, require_writable=True) as buf:
                        size = len(buf)
                        status = _binding.lib.sp_read(
                            conn.ptr, buf, size, size if fill else 1, got, _SLICE_MS, err
                        )
                    n = placed[0] = int(got[0])
                    if status == _SP_OK and (n == size or (n and not fill)):
                        return n
                    return conn.read("read", b, fill, _NO_DEADLINE, n, None, placed)
                except BaseException:
                    # A signal handler's exception (Ctrl-C) that came as the pump call
                    # returned, before its count was placed (conn.read places its own).
                    if not placed[0]:
                        placed[0] = got[0]
                    raise
            if not kept:
                if deadline is None:
                    deadline = _deadline(self._timeout)
                if not _small_buffer(b):
                    return conn.read("read", b, fill, deadline, 0, None, placed)
                # A small read: one read of what arrives (up to 64 KiB) into the kept bytes,
                # served from there, as io.BufferedReader serves from its buffer: the next
                # small reads make no pump call (sp_fastport.c read_start does the same).
                if not self._fill_locked(_READ_CHUNK, deadline):
                    return 0  # EOF
            n = min(len(b), len(kept))
            b[:n] = kept[:n]
            del kept[:n]
            placed[0] = n  # (inline, no call since the del)
            if n == len(b) or not fill:
                return n
            # (the kept bytes count: conn.read places them with its own)
            if deadline is None:
                deadline = _deadline(self._timeout)
            return conn.read("read", b, fill, deadline, n, None, placed)

    def readinto(self, b: Any, /) -> int:
        # `data`: b's bytes, viewed before anything is read, so that the recovery keeps what
        # the read placed there with no call (a second signal's exception can come at any
        # call, a Python function's entry too); released there, as a traceback that keeps
        # this frame must not keep b exported. (readinto1: the same, not shared: a helper's
        # return is one more place where an exception can come.)
        self._check()  # (a closed port: ValueError, whatever b is, as the C method)
        placed = [0]
        data: Any = None
        try:
            data = memoryview(b).cast("B")
            return self._readinto(data, True, None, placed)
        except BaseException as exc:
            if placed[0]:
                with self._lock:
                    self._buf[:0] = data[: placed[0]]
            if data is not None:
                data.release()
            if isinstance(exc, (BufferError, TypeError)):
                _check_writable("readinto", b)
            raise

    def readinto1(self, b: Any, /) -> int:
        self._check()  # (a closed port: ValueError, whatever b is, as the C method)
        placed = [0]
        data: Any = None
        try:
            data = memoryview(b).cast("B")
            return self._readinto(data, False, None, placed)
        except BaseException as exc:
            if placed[0]:
                with self._lock:
                    self._buf[:0] = data[: placed[0]]
            if data is not None:
                data.release()
            if isinstance(exc, (BufferError, TypeError)):
                _check_writable("readinto1", b)
            raise

    def read(self, size: Optional[int] = -1, /) -> bytes:
        size = _size_arg("read", size)
        if size < -1:  # (as io.BufferedReader; sp_fastport.c read_bytes, the same)
            raise ValueError("read length must be non-negative or -1")
        # (the bytes come back in `out`, not as a call's result, which a signal handler's
        # exception as the call returns would lose: they are kept again then)
        out = [b""]
        try:
            if size < 0:
                _read_all(self, self._sslports_conn, out)
            else:
                self._read_new(size, True, None, out)
        except BaseException:
            if out[0]:  # (inline, no call: a second signal's exception can come at any)
                with self._lock:
                    self._buf[:0] = out[0]
            raise
        return out[0]

    def read1(self, size: Optional[int] = -1, /) -> bytes:
        size = _size_arg("read1", size)
        out = [b""]  # (as read's)
        try:
            self._read_new(min(size, _READ1_MOST) if size >= 0 else _READ_CHUNK, False, None, out)
        except BaseException:
            if out[0]:  # (as read's)
                with self._lock:
                    self._buf[:0] = out[0]
            raise
        return out[0]

    def _read_new(
        self,
        size: int,
        fill: bool,
        deadline: Optional[_Deadline] = None,
        out: Optional[list[bytes]] = None,
    ) -> bytes:
        """read / read1: up to `size` bytes (all of them when `fill`) as a new bytes, also
        put in `out[0]` when given (see read). If an exception comes before they are handed
        over (a signal handler's, Ctrl-C, as a call returns), they are read first next time."""
        buf = bytearray(size)
        placed = [0]
        try:
            n = self._readinto(buf, fill, deadline, placed)
            del buf[n:]
            data = bytes(buf)
            if out is not None:
                out[0] = data  # (inline, no call from here on)
            return data
        except BaseException:
            # (inline, no call: a second signal's exception can come at any; not when they
            # were handed over in `out`, which the caller keeps)
            if placed[0] and (out is None or not out[0]):
                with self._lock:
                    self._buf[:0] = buf[: placed[0]]
            raise

    def _fill_locked(self, size: int, deadline: Optional[_Deadline] = None) -> int:
        """With the read lock held: one read of what arrives (up to `size`, at least one byte)
        onto the end of the kept bytes. Returns how many, 0 at EOF."""
        if deadline is None:
            deadline = _deadline(self._timeout)
        # (onto: the read puts them there itself, also when an exception comes as it returns)
        return self._sslports_conn.read("read", bytearray(size), False, deadline, 0, self._buf)

    def peek(self, size: int = 0, /) -> bytes:
        """The kept bytes, without taking them (at least one, unless at EOF; at most `size` or
        _PEEK_MAX, whichever is more, as io.BufferedReader gives at most its buffer). With
        none kept, one read of what arrives first, up to 64 KiB as readline's: a loop of
        peek(1) and read(1) is served from the kept bytes, not one read per byte, and costs
        the same however many bytes are kept. The C fast path's peek does the same steps
        (sp_fastport.c reader_peek)."""
        self._check()
        try:  # (an int, as io.BufferedReader's)
            most = max(_ssize(operator.index(size)), _PEEK_MAX)
        except TypeError:
            raise TypeError(f"peek() argument must be an int, not {type(size).__name__}") from None
        with self._lock:  # (one reader at a time)
            kept = self._buf
            if not kept:
                self._fill_locked(_READ_CHUNK)
            if len(kept) <= most:
                return bytes(kept)
            with memoryview(kept) as view, view[:most] as part:  # (released: kept can resize)
                return bytes(part)

    def readline(self, size: Optional[int] = -1, /) -> bytes:
        """The C fast path's readline does the same steps (sp_fastport.c reader_readline)."""
        self._check()
        limit = _size_arg("readline", size)
        if limit == 0:
            return b""
        kept = self._buf
        deadline = None  # (one for the whole line, from its first read)
        line, taken = b"", False
        try:
            with self._lock:  # (a whole line for one reader; another thread waits)
                scanned = 0
                while True:
                    stop = len(kept) if limit < 0 else min(len(kept), limit)
                    end = kept.find(b"\n", scanned, stop) + 1 or (stop if stop == limit else 0)
                    if end:
                        break
                    scanned = stop
                    # Read more onto the end of the line so far (it stays where it is: a line
                    # of many reads is not copied again for each; a read that fails puts
                    # what it had there too: Connection.read's `onto`).
                    if deadline is None:
                        deadline = _deadline(self._timeout)
                    if not self._fill_locked(_READ_CHUNK, deadline):
                        end = len(kept)  # EOF: the last line has no newline
                        break
                line = bytes(kept[:end])
                del kept[:end]
                taken = True  # (inline, no call since the del)
        except BaseException:
            if taken:  # (a signal handler's exception as the lock was given back: kept again)
                with self._lock:
                    kept[:0] = line
            raise
        return line

    def readlines(self, hint: Optional[int] = -1, /) -> list[bytes]:
        """io's readlines (lines until their total exceeds `hint`, all when it is <= 0), except
        that the lines read before an exception (a timeout, a failure, Ctrl-C) are not lost:
        the next read returns them first, as read()'s chunks (_read_all, the same way: each
        line goes from readline into `lines` inside one C call)."""
        self._check()
        limit = _size_arg("readlines", hint)
        lines: list[bytes] = []
        more = iter(self.readline, b"")  # (ends at EOF's b"")
        try:
            if limit <= 0:
                lines.extend(more)  # (one C call for all: as fast as io's; keeps each line)
                return lines
            total, had = 0, -1
            while len(lines) > had and total <= limit:
                had = len(lines)
                lines.extend(itertools.islice(more, 1))
                total += len(lines[-1]) if len(lines) > had else 0
            return lines
        except BaseException:
            if lines:  # (inline: the join is the one call before they are safe)
                with self._lock:
                    self._buf[:0] = b"".join(lines)
            raise

    def write(self, b: Any, /) -> int:
        raise io.UnsupportedOperation("write")

    def close(self) -> None:
        if not _claim_close(self):
            return
        io.BufferedIOBase.close(self)
        self._sync_fast()  # (closed: takes the C methods away)
        self._sslports_conn.port_closed(self._timeout)

    def detach(self) -> Any:
        raise io.UnsupportedOperation("detach")


class SSLOutputPort(_SSLPort):
    """The writable side of a TLS connection; buffers up to one TLS record."""

    _abandoned = False
    # close() has flushed, or has given up waiting for a write in another thread (set in the
    # instance dict; sp_fastport.c close_port too): io's close() then calls flush() in vain.
    _close_flushed = False
    # As socket.makefile("wb")'s: gzip.GzipFile(fileobj=port) without a mode writes.
    mode = "wb"

    def __init__(self, conn: Connection, timeout: Optional[float]) -> None:
        # (Socket ports without a timeout: sp_fastport.c make_ports; keep the two in step.)
        self._sslports_conn = conn
        if timeout is not None:
            self._timeout = timeout
        self._lock = conn.write_lock
        self._buf = bytearray()  # pending bytes: changed in place only (shared with _fast)
        self._fast = None
        if _fastport is not None:
            self._fast = _fastport.Writer(conn, conn.write_lock, self._buf, self._fast_mode())

    def __repr__(self) -> str:
        return f"<SSLOutputPort{' closed' if self.closed else ''}>"

    def writable(self) -> bool:
        if self.closed:  # (as io's files say)
            raise ValueError("I/O operation on closed SSL port")
        return True

    def write(self, b: Any, /) -> int:
        """Buffer `b` while at most one record (16 KiB) is pending; once more is, send it all.

        A write that leaves exactly one full record pending is held, as io.BufferedWriter holds a
        write that fits its buffer exactly: a stream of 16 KiB writes then leaves two records
        per send(), not one. On TimeoutError the unsent bytes stay buffered
        (``exc.characters_written`` counts all of `b`): retry with ``flush()``."""
        if self.closed:
            raise ValueError("write to closed SSL port")
        if type(b) is bytes:
            return self._write(b)
        # (held for the call, as io's writers hold it: another thread cannot resize b meanwhile)
        with _bytes_arg("write", b) as view:
            if not view.c_contiguous:  # the error io's own writers (and the C path) raise
                raise BufferError("memoryview: underlying buffer is not C-contiguous")
            with view.cast("B") as data:  # counts bytes, whatever the item format
                return self._write(data)

    def _write(self, b: Any) -> int:
        """write(b) for bytes or a byte memoryview."""
        n = len(b)
        with self._lock:
            if self._close_claimed is not None:  # (close() has begun: after its flush, lost)
                raise ValueError("write to closed SSL port")
            ptr = self._sslports_conn.ptr
            if ptr is not None:  # (after a fork: this process has taken the connection over)
                _binding.lib.sp_conn_note_write(ptr)
            try:
                if len(self._buf) + n > _RECORD or (n and not self._buf and self._conn_holds()):
                    self._send_locked(b)
                else:
                    self._buf += b
            except SSLTimeoutError as exc:
                exc.characters_written = n  # type: ignore[attr-defined]  # all sent or buffered
                raise
        return n

    def _conn_holds(self) -> bool:
        """The connection still queues bytes this port wrote (sp_held_out): a record the C
        path held already encrypted (sp_fastport.c hold_record), or what a write that ran out
        of time could not send. They count as pending: the next write sends them, and so does
        flush()."""
        conn = self._sslports_conn
        if conn.closed:
            return False
        if conn.is_socket:
            return bool(_binding.lib.sp_held_out(conn.ptr))
        # A stream connection: ciphertext a timed-out write left in the pump (push_out).
        transport = cast(_StreamTransport, conn.transport)
        return transport.write_left and transport.sender.error is None  # (else: lost anyway)

    def writelines(self, lines: Iterable[Any]) -> None:
        """io's writelines, except that on TimeoutError ``exc.characters_written`` counts every
        byte this call took (the lines before, all sent or buffered, and all of the line that
        timed out, buffered: see write), not only that line's: where a retry resumes."""
        if self.closed:  # (even with no line: as io's writers say)
            raise ValueError("writelines to closed SSL port")
        took = 0
        for line in lines:
            try:
                took += self.write(line)
            except SSLTimeoutError as exc:
                in_line = getattr(exc, "characters_written", 0)
                exc.characters_written = took + in_line  # type: ignore[attr-defined]
                raise

    def _send_locked(self, data: Any = b"", func: str = "write") -> None:
        """Send the held bytes, topped up from `data` to whole records (records stay full), then
        the rest of `data` (bytes, bytearray or a byte memoryview) without copying it. What
        stops it and leaves the connection usable (a timeout, a signal handler's exception
        such as Ctrl-C) leaves held exactly the bytes OpenSSL did not take, counted by the
        connection: nothing is sent twice, and flush() sends the rest; a broken connection
        drops them (the C path: sp_fastport.c continue_write)."""
        held = self._buf
        conn = self._sslports_conn
        top = 0
        start = -1  # (set inside the try: an exception can come with any call's return)
        try:
            start = conn.written()
            top = min(-len(held) % _RECORD, len(data))
            if top:
                held += data[:top]
            # (views released on the way out: an exception's frames must not pin the caller's
            # bytearray, which could then not be resized)
            with memoryview(data) as whole, whole[top:] as rest:
                if self._timeout is None and conn.is_socket and not conn.closed:
                    # The common case in one pump call (see SSLInputPort._readinto).
                    err, done = _per_thread.pair[0], conn.write_cell()
                    with (
                        _from_buffer("unsigned char[]", held) as chead,
                        _from_buffer("unsigned char[]", rest) as cdata,
                    ):
                        size = len(chead) + len(cdata)
                        status = _binding.lib.sp_write2(
                            conn.ptr, chead, len(chead), cdata, len(cdata), done, _SLICE_MS, err
                        )
                    sent = int(done[0])
                    if status == _SP_OK and sent == size:
                        del held[:]
                        return
                    _send_rest(conn, held, None, rest, sent, func)  # a wait, a flush, an error
                    return
                _send_rest(conn, held, self._timeout, rest, 0, func)
        except BaseException as exc:
            if conn.ptr is None or _binding.lib.sp_conn_broken(conn.ptr):
                del held[:]  # nothing more can be sent (the exception says why)
            else:
                taken = max(conn.written() - start, 0) if start >= 0 else 0
                with memoryview(data) as whole, whole[top:] as rest:
                    _keep_unsent(held, rest, taken)
            if isinstance(exc, SSLTimeoutError):
                exc.characters_written = len(held)  # type: ignore[attr-defined]
            raise

    def flush(self) -> None:
        if self.closed:  # (as io's writers: nothing can be sent any more)
            raise ValueError("flush of closed SSL port")
        if self._close_flushed:
            return  # (io's close() after close(): it flushed, or does not wait for a write)
        if self._buf or self._conn_holds():
            with self._lock:
                if self._buf or self._conn_holds():
                    self._send_locked(func="flush")
        conn = self._sslports_conn
        if not conn.is_socket and not conn.closed:  # (a stream's: until they are written)
            conn.wait_written("flush", self._timeout)

    def close(self) -> None:
        if not _claim_close(self):
            return
        conn = self._sslports_conn
        timeout = self._timeout
        try:
            # A write in another thread holds the write lock: one that only runs ends within
            # _CLOSE_WAIT, and then this close sends what is pending; one that waits for a
            # peer that does not read may never end, and is not waited for: its bytes stay
            # its own, and the last close shuts the socket down, which ends it with an error.
            # A child of the process that made the connection (fork) sends nothing at its
            # close: neither what the parent left buffered nor a close_notify. Its TLS state
            # is the parent's copy, so a record from it would reuse the parent's sequence
            # number (and AEAD nonce, over other bytes), and the parent's next record would
            # break the connection. The parent's bytes stay the parent's to send.
            if not conn.in_a_child() and _write_ends_soon(self._lock):
                self.flush()
                if conn.shutdown_on_close and not self._abandoned:
                    self._close_notify()
        except (KeyboardInterrupt, SystemExit):
            timeout = 0  # a request to stop (Ctrl-C): the last close does not wait either
            raise
        finally:
            self._close_flushed = True
            try:  # (io's close calls flush(): it returns at once)
                io.BufferedIOBase.close(self)
            finally:
                self._sync_fast()  # (closed: takes the C methods away)
                conn.port_closed(timeout)

    def _close_notify(self) -> None:
        """close(): say goodbye (sp_fastport.c close_port calls this too)."""
        timeout = self._timeout  # (0: no wait; None: 5 s, close_notify is a courtesy)
        self._sslports_conn.send_close_notify(_Deadline(5.0 if timeout is None else timeout))

    def read(self, size: Optional[int] = -1) -> bytes:
        raise io.UnsupportedOperation("read")

    def detach(self) -> Any:
        raise io.UnsupportedOperation("detach")


# The hot methods in C (sp_fastport.c), on the classes: each finds the port's _fast and does
# the call with no Python frame, or calls the Python method above when the common case does
# not hold (a timeout, streams, a closed port). And close() in C (close_port), the same steps
# as the methods above: every connection closes two ports, cold, and their Python frames cost
# ~5 % of a resumed one. The Python methods serve without the C module (and the tests of both
# paths).
_HOT = {
    SSLInputPort: ("readinto", "readinto1", "read", "read1", "readline", "peek", "close"),
    SSLOutputPort: ("write", "flush", "close"),
}
PYTHON_METHODS = {cls: {name: cls.__dict__[name] for name in names} for cls, names in _HOT.items()}
if _fastport is not None:
    _fastport.hot_methods(SSLInputPort, SSLOutputPort)
    SSLInputPort.close = _fastport.close_method(SSLInputPort, False)  # type: ignore[method-assign]
    SSLOutputPort.close = _fastport.close_method(SSLOutputPort, True)  # type: ignore[method-assign]


def _size_arg(func: str, size: Any) -> int:
    """A read method's size (None: -1), an int as io's and the C path's (sp_fastport.c
    size_arg): else a TypeError naming the method (API.md: the message names the function)."""
    if size is None:
        return -1
    try:
        return _ssize(operator.index(size))
    except TypeError:
        raise TypeError(
            f"{func}() argument must be an int or None, not {type(size).__name__}"
        ) from None


def _ssize(n: int) -> int:
    """n, if a C Py_ssize_t holds it: else the OverflowError io's methods and the C path's
    raise for such a size (a read(-10**30) is no "read it all")."""
    if -sys.maxsize - 1 <= n <= sys.maxsize:
        return n
    raise OverflowError("Python int too large to convert to C ssize_t")


def _bytes_arg(func: str, b: Any) -> memoryview:
    """A memoryview of what a write method was given: a TypeError naming the method for what
    is not bytes-like (as sp_fastport.c's writer_write)."""
    try:
        return memoryview(b)
    except TypeError:
        raise TypeError(
            f"{func}() argument must be a bytes-like object, not {type(b).__name__}"
        ) from None


def _check_writable(func: str, b: Any) -> None:
    """After a BufferError or TypeError in a read into `b`: io's TypeError when `b` cannot be
    read into (read-only, not contiguous, not a buffer), as API.md has for a wrong argument
    type (sp_fastport.c writable_arg, the same); else the error stands."""
    try:
        with memoryview(b) as view:
            if not view.readonly and view.c_contiguous:
                return
    except TypeError:
        pass
    raise TypeError(
        f"{func}() argument must be read-write bytes-like object, not {type(b).__name__}"
    ) from None


def _small_buffer(b: Any) -> bool:
    """A read into `b` that reads ahead (SSLInputPort._readinto; sp_fastport.c read_start, for
    any buffer of that size): a bytearray or a writable contiguous memoryview of fewer than
    _SMALL_READ bytes (io.BufferedReader reads directly into what is at least its buffer's
    size)."""
    if type(b) is bytearray:
        return 0 < len(b) < _SMALL_READ
    return (
        type(b) is memoryview and not b.readonly and b.c_contiguous and 0 < b.nbytes < _SMALL_READ
    )


def _send_rest(
    conn: Connection,
    pending: bytearray,
    timeout: Optional[float],
    data: Any,
    sent: int,
    func: str = "write",
) -> None:
    """Send the held bytes `pending`, then `data` (a caller's buffer of any item format, never
    `pending` itself), after the first `sent` bytes of the two, and empty `pending`. On an
    exception `pending` is left as it was: the caller keeps what was not sent (_keep_unsent,
    or sp_fastport.c continue_write), by the connection's count of what OpenSSL took."""
    assert data is not pending, "the held bytes are sent first anyway"
    held = len(pending)
    head = pending[sent:] if sent < held else b""
    # (`sent` and what follows count bytes; views copy nothing and are released on the way out)
    with (
        memoryview(data) as whole,
        whole.cast("B") as view,
        view[max(sent - held, 0) :] as rest,
    ):
        conn.write(func, rest, _deadline(timeout), head)
    del pending[:]


def _keep_unsent(pending: bytearray, data: Any, sent: int) -> None:
    """After a write that an exception stopped: `pending` becomes what of pending + data (a
    buffer of any item format) is left after the first `sent` bytes, the ones OpenSSL took."""
    held = len(pending)
    with memoryview(data) as whole, whole.cast("B") as view:
        if sent < held:
            del pending[:sent]
            pending += view
        else:
            pending[:] = view[sent - held :]


_CLOSE_WAIT = 1.0  # seconds close() waits for a write running in another thread


def _held_by_a_thread_gone(*locks: Any) -> bool:
    """Does a thread this process does not have hold one of `locks` (a thread of the parent,
    inside a call when the process forked: it never gives the lock back)? A thread of this
    process that holds one is alive (threading lists it; a thread started outside threading
    that never asked for current_thread() counts as gone)."""
    holders = {lock._owner() for lock in locks} - {0}
    return bool(holders - {thread.ident for thread in threading.enumerate()})


def _write_ends_soon(lock: Any) -> bool:
    """The lock is free, or a write holding it in another thread ends within _CLOSE_WAIT
    (sp_fastport.c write_ends_soon, the same). Taken, not only looked at (`locked()`): a write
    that takes it afterwards then sees the close claimed (free-threaded builds too)."""
    if lock._is_owned():  # (a close from a signal handler inside this thread's own write)
        return False
    try:
        return bool(lock.acquire(timeout=_CLOSE_WAIT))
    finally:
        lock.release_taken(False)


def _claim_close(port: Any) -> bool:
    """True for exactly one caller of close() on `port`, even from several threads (one
    dict.setdefault is atomic)."""
    mine = object()
    return port.__dict__.setdefault("_close_claimed", mine) is mine


# The longest timeout (about 292 years): threading's waits refuse longer ones (OverflowError).
MAX_TIMEOUT = float(threading.TIMEOUT_MAX)


def _check_timeout(
    func: str, seconds: object, name: str = "timeout", least: str = ">= 0"
) -> Optional[float]:
    """`seconds` as a float, or None; `least` words the lower bound (the caller checks 0)."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{func}: {name} must be a number or None")
    try:
        value = float(seconds)
    except OverflowError:  # (an int beyond a float's range)
        raise ValueError(f"{func}: {name} must be at most {MAX_TIMEOUT:.0f} seconds") from None
    if not math.isfinite(value):
        raise ValueError(f"{func}: {name} must be a finite number or None, got {seconds!r}")
    if value < 0:
        raise ValueError(f"{func}: {name} must be {least}")
    if value > MAX_TIMEOUT:
        raise ValueError(f"{func}: {name} must be at most {MAX_TIMEOUT:.0f} seconds")
    return value


def check_handshake_timeout(func: str, seconds: object) -> Optional[float]:
    """A server's bound on each client's handshake: seconds > 0, or None (no bound). Zero is
    refused, as asyncio refuses ssl_handshake_timeout=0: it would end every handshake before
    its first byte, a server that accepts nobody."""
    least = "> 0, or None for no bound"
    value = _check_timeout(func, seconds, "handshake_timeout", least)
    if value == 0:
        raise ValueError(f"{func}: handshake_timeout must be {least}")
    return value


# Either port of a connection: what the connection facts take (API.md section 5).
SSLPort = Union[SSLInputPort, SSLOutputPort]


def is_ssl_port(v: object) -> bool:
    """True for ports made by ssl_connect, ssl_accept, ports_to_ssl_ports. Racket: ssl-port?"""
    return isinstance(v, (SSLInputPort, SSLOutputPort))


def connection_of(func: str, p: object) -> Connection:
    """The connection behind an SSL port, or TypeError naming `func`."""
    if isinstance(p, (SSLInputPort, SSLOutputPort)):
        return p._sslports_conn
    conn = getattr(p, "_sslports_conn", None)
    if getattr(conn, "is_async", False):  # an sslports.aio reader or writer
        return cast(Connection, conn)
    raise TypeError(f"{func}: expected an SSL port, got {type(p).__name__}")


def ssl_abandon_port(p: SSLPort) -> None:
    """Close a port without sending close_notify (output: pending data is still sent, except
    by a forked child that never wrote on the connection: the parent's bytes are its own).

    Racket: ssl-abandon-port
    """
    if not isinstance(p, (SSLInputPort, SSLOutputPort)):
        # (an sslports.aio reader or writer too: its close() sends no close_notify already)
        raise TypeError(f"ssl_abandon_port: expected an SSL port, got {type(p).__name__}")
    if isinstance(p, SSLOutputPort):
        p._abandoned = True
    p.close()


def make_ports(conn: Connection, timeout: Optional[float]) -> tuple[SSLInputPort, SSLOutputPort]:
    """The two ports of a connection whose handshake is done."""
    if _fastport is not None and conn.is_socket and timeout is None:
        # The same two ports, built in one C call (sp_fastport.c make_ports; a test checks
        # that they match what __init__ makes): this runs cold once per connection.
        made: tuple[SSLInputPort, SSLOutputPort] = _fastport.make_ports(
            conn, SSLInputPort, SSLOutputPort
        )  # (annotated, not cast(): no Python call on every connection)
    else:
        inp = SSLInputPort(conn, timeout)
        conn.kept = inp._buf
        made = inp, SSLOutputPort(conn, timeout)
    conn.live_transports.add(conn.transport)  # (until the last close: see live_transports)
    return made


__all__ = [
    "Connection",
    "SSLInputPort",
    "SSLNetworkError",
    "SSLOutputPort",
    "connection_of",
    "is_ssl_port",
    "make_ports",
    "ssl_abandon_port",
]
