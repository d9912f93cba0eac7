"""Stream transports: TLS over any pair of Python binary streams (``ports_to_ssl_ports``).

The pump (csrc/sp_conn.c) keeps its ciphertext in memory BIOs; `_StreamTransport` moves it
between them and the two streams. ports.py's loop calls ``push_out`` when the pump has bytes to
send and ``pull_in`` when it reports ``WANT_READ``.

WHY A SENDER THREAD FOR STREAMS

A blocking ``write`` to a tiny pipe only returns once the peer reads. If we wrote on the
caller's thread, two ends that each write before reading (a TLS 1.3 server sends session
tickets right after its handshake while the client already sends data) would wait on each
other forever. So outgoing ciphertext goes into a queue that one daemon thread per connection
writes out; the caller only waits when the queue is over ``_SEND_HIGH`` (back-pressure), at
a flush (while the stream takes the bytes: ``wait_written``), or at close. Reading the input
stream stays on the caller's thread, except for a read under a deadline, or while the sender
is slow to write: that read runs on a second daemon thread (`_Receiver`), since a blocking
stream's own read cannot be interrupted.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import copy
import errno
import functools
import io
import itertools
import operator
import os
import reprlib
import socket
import stat
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Optional, Union

from . import _binding
from ._timing import _LINGER_MOST_SECONDS, _LINGER_SECONDS, _SLICE_MS, _Deadline, _deadline
from .errors import SSLError, SSLTimeoutError

_TRANSPORT_CHUNK = 65536
_SEND_HIGH = 1 << 20  # queued ciphertext at which a stream writer waits
_WRITE_MOST = _SEND_HIGH // 4  # bytes a write call of the sender hands the stream at most
_SEND_WAIT = _SLICE_MS / 1000  # seconds a stream read waits for the sender (pull_in)
# A flush waits for its bytes to be written while the stream keeps taking them; once it took
# none for this long (seconds: a peer that does not read, perhaps waiting for us to read
# first), the flush returns and the sender writes them on (_StreamTransport.wait_written)
_FLUSH_STALL = 0.2
# The last close waits so for the output port's bytes too, with a longer stall (seconds, the
# 5 s a close_notify and Python's exit wait): the caller may close the streams once it
# returns. Past it the close returns, and the sender writes them on in the background
# (closing the output stream after them: close_original).
_CLOSE_STALL = 5.0
_CLOSED = "the connection was closed meanwhile"  # (a write that waited while it closed)
_ABANDON_DRAIN = 1.0  # seconds a failed stream handshake waits for its last bytes to be written
_EXIT_DRAIN = 5.0  # seconds Python's exit waits for the sender threads (_drain_senders_at_exit)


def _detached(exc: BaseException) -> BaseException:
    """What to raise for the sticky stream failure `exc` that a sender or receiver thread
    keeps: a copy (same type, arguments and attributes), so that the kept one never gets the
    traceback of a raise. Its frames name the thread's object (and up the stack the transport
    and the connection), which keeps the failure: a reference cycle that would hold the
    connection, its C memory and its streams until the cyclic collector runs, for every
    connection whose stream failed. `exc` itself (without traceback) when it cannot be copied.
    """
    try:
        new = copy.copy(exc)
    except Exception:
        new = None
    if type(new) is not type(exc):
        return exc.with_traceback(None)
    assert new is not None
    return new.with_traceback(None)


class _Sender:
    """Writes queued ciphertext to a blocking output stream from a daemon thread.

    What a caller hands over goes from the pump to the queue in one C call (put_from), and
    the counts are the queue's own (queued, put_total): a signal handler's exception (Ctrl-C),
    which comes as a call returns to Python, finds the ciphertext either still in the pump or
    in the queue, and counted, never lost on its way nor counted twice."""

    def __init__(self, out: Any) -> None:
        self.out = out
        # `with self.lock`, never `with self.cond`: Condition.__enter__ is Python, and a
        # signal handler's exception (Ctrl-C) as its acquire returns would leave the lock
        # held for good. (An RLock: queued and put_total take it too.)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.queue: collections.deque[bytearray] = collections.deque()
        self.in_flight = 0  # bytes the thread took off the queue and is writing
        self.error: Optional[BaseException] = None
        self.stopping = False
        self.thread: Optional[threading.Thread] = None
        self.done_total = 0  # bytes written out so far
        self.moved = 0  # bytes the output stream's write calls took (moves as they return)
        self.lost_total = 0  # ... and dropped when the stream failed
        self.written_mark = 0  # put_total after the last write of the output port
        self.reported = False  # `error` was raised to a caller (a write, a flush)
        self.writing = False  # the thread took bytes off the queue and is writing them
        self.close_out = False  # close_original: the thread closes `out` once it is done
        # The receiver (_StreamTransport.pull_in): a read that waits there for the peer wakes
        # when the output stream fails, as the peer may be waiting for what was lost.
        self.wake: Optional[_Receiver] = None

    def wait_room(self, deadline: _Deadline, func: str = "write") -> None:
        """Wait until the queue has room (back-pressure); raise the sender's error or a
        timeout. Called before ciphertext is taken from the pump, so a timeout loses none.
        The last close (stop) ends the wait with an error, as a socket's shutdown ends a
        write waiting for room: its thread ends once the queue is written, and what came
        after would never go out."""
        with self.lock:
            while self.queued >= _SEND_HIGH and self.error is None and not self.stopping:
                if not self.cond.wait(deadline.remaining()):
                    # (the words of a socket port's write, or flush: `func`)
                    raise SSLTimeoutError(f"{func}: write timed out")
            self.check_open()

    def check_open(self, report: bool = True) -> None:
        """Raise the sender's error, or _CLOSED once the last close stopped it. (Holds the
        lock: the caller's.) `report`: the caller raises the error on (not a read, which
        drops it: see push_out), so it counts as reported."""
        if self.error is not None:
            if report:
                self.reported = True
            raise _detached(self.error)
        if self.stopping:
            raise BrokenPipeError(errno.EPIPE, _CLOSED)

    @property
    def queued(self) -> int:
        """Bytes handed over and not written yet."""
        with self.lock:
            return sum(map(len, self.queue)) + self.in_flight

    @property
    def put_total(self) -> int:
        """Bytes handed over so far."""
        with self.lock:
            return self.done_total + self.lost_total + sum(map(len, self.queue)) + self.in_flight

    def has_room(self) -> bool:
        """The queue is under its high-water mark (or the stream failed: nothing waits)."""
        return self.queued < _SEND_HIGH or self.error is not None

    def put_from(self, take: Any, conn: Any, chunk: bytearray, reading: bool = False) -> None:
        """Queue the ciphertext take(conn, <chunk>, len(chunk)) moves from the pump into
        `chunk`, all of it (the caller holds the out lock, so the pump holds at least that
        much: take returns len(chunk)). The caller waited for room, or is a read, which does
        not wait. The take and the append are one C call (deque.extend of an iterator that
        makes it), so no Python runs between them (see the class)."""
        with self.lock:
            self.check_open(report=not reading)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="sslports-sender", daemon=True
                )
                self.thread.start()
                _senders.add(self)
            with _binding.ffi.from_buffer(chunk) as cbuf:
                taken = map(take, (conn,), (cbuf,), (len(chunk),))
                self.queue.extend(itertools.compress((chunk,), taken))
            self.cond.notify_all()

    def kick(self) -> None:
        """Wake the thread for what is queued (a put_from that an exception stopped before
        its notify left it asleep)."""
        if self.queue:
            with self.lock:
                self.cond.notify_all()

    def _run(self) -> None:
        try:
            self._write_queue()
        finally:
            if self.close_out:
                try:
                    self.out.close()
                except Exception:  # closing is best effort
                    pass

    def forget_thread(self) -> None:
        """In a forked child: the thread is the parent's, and what it had queued the parent
        writes (here it is forgotten, counted as written). The child's next put starts a
        thread of its own."""
        self.lock = threading.RLock()  # (the parent's may have been held at the fork)
        self.cond = threading.Condition(self.lock)
        self.done_total = self.put_total  # (with what its write under way had taken)
        self.queue.clear()
        self.in_flight = 0
        self.writing = False
        self.close_out = False
        self.thread = None

    def close_when_done(self) -> bool:
        """close_original, after a drain that did not finish (a peer that does not read):
        when the thread still has something to write, it closes the output stream once it is
        done (closing it here would wait for its write, without end and uninterruptibly: a
        buffered stream's close takes the lock the write holds). True if it will."""
        with self.lock:
            if self.thread is not None and (self.writing or self.queue):
                self.close_out = True
                self.cond.notify_all()
                return True
            return False

    def _write_queue(self) -> None:
        while True:
            with self.lock:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue:
                    return
                data = self.queue.popleft()
                self.in_flight = len(data)
                self.writing = True
            try:
                _write_fully(self.out, data, self)
            except BaseException as exc:
                with self.lock:
                    self.error = exc.with_traceback(None)  # (see _detached)
                    self.lost_total += sum(map(len, self.queue)) + self.in_flight
                    self.queue.clear()
                    self.in_flight = 0
                    self.writing = False
                    self.cond.notify_all()
                self.wake_reader()
                return
            n = len(data)
            del data  # (not kept while the thread waits for the next: an idle one holds none)
            with self.lock:
                self.in_flight = 0
                self.done_total += n
                self.writing = False
                self.cond.notify_all()
                left = self.queued
                room = left < _SEND_HIGH <= left + n
            if room:  # (a read that left ciphertext in the pump waits for it: held_back)
                self.wake_reader()

    def wake_reader(self) -> None:
        """Wake a read waiting in the receiver thread (`wake`, its condition)."""
        wake = self.wake
        if wake is not None:
            with wake.lock:
                wake.cond.notify_all()

    def write_here(self) -> bool:
        """drain() at Python's exit (sys.is_finalizing()), when the ports' finalizers close
        them: daemon threads run no Python any more, so the thread would never write what the
        close queued (the port's last bytes, a close_notify), and waiting for it would wait
        forever (a child process serving TLS on its stdin and stdout that ends without
        closing its ports never exited). Write the queue on this thread instead, unless the
        thread stopped inside a write (what follows would go out of order) or the stream
        failed. True when nothing is left."""
        if not self.lock.acquire(timeout=1.0):  # (held by a thread that stopped under it)
            return False
        try:
            if self.writing or self.error is not None or not self.queue:
                return not self.queue
            data = b"".join(self.queue)
            self.queue.clear()
            self.in_flight = len(data)
        finally:
            self.lock.release()
        try:
            _write_fully(self.out, data)
        except Exception as exc:  # (as the thread would have)
            self.error = exc.with_traceback(None)
            self.lost_total += len(data)
            return True
        finally:
            self.in_flight = 0
        self.done_total += len(data)
        return True

    def drain(self, timeout: Optional[float]) -> bool:
        """Wait until everything queued was written (or failed). False on timeout."""
        if sys.is_finalizing():
            return self.write_here()
        with self.lock:
            self.cond.notify_all()  # (see kick)
            return self.cond.wait_for(lambda: self.queued == 0 or self.error is not None, timeout)

    def drain_written(self, timeout: Optional[float], mark: Optional[int] = None) -> bool:
        """Wait until the output port's bytes (up to `mark`, by default its written_mark)
        were written (not what reads queued later, such as an alert to a peer that no longer
        reads). False on timeout."""
        if sys.is_finalizing():
            return self.write_here()
        with self.lock:
            self.cond.notify_all()  # (see kick)
            if mark is None:
                mark = self.written_mark
            return self.cond.wait_for(
                lambda: self.done_total >= mark or self.error is not None, timeout
            )

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.cond.notify_all()

    def idle_or_failed(self) -> bool:
        return self.queued == 0 or self.error is not None

    def lost_written(self, handshaking: bool) -> bool:
        """The output stream failed, no call has said so yet, and what it failed to write
        includes bytes of the handshake (`handshaking`) or of the output port's writes: the
        peer may be waiting for them, and a read that waits for its answer would wait forever
        (_StreamTransport.pull_in). (Not when only what reads queued was lost, such as session
        tickets to a peer that went away: reading on meets its last bytes, its EOF.)"""
        return (
            self.error is not None and not self.reported and (handshaking or self.writes_unsent())
        )

    def writes_unsent(self) -> bool:
        """Bytes of the output port's writes are not written yet (or were lost)."""
        return self.done_total < self.written_mark

    def unreported_loss(self) -> Optional[BaseException]:
        """The failure that lost bytes of the output port's writes, if no call has said so
        yet; reported from then on (a flush, the last close)."""
        with self.lock:
            if self.error is None or self.reported or not self.writes_unsent():
                return None
            self.reported = True
            return self.error

    def report(self) -> BaseException:
        """The failure lost_written saw, to raise (once: it is reported from then on)."""
        with self.lock:
            self.reported = True
            assert self.error is not None
            return _detached(self.error)


# Senders that started their thread. Python's exit waits (_EXIT_DRAIN) for what they hold: a
# daemon thread stops when the interpreter finalizes, and bytes a flush() handed to it would
# be lost (a child process that answers over its stdout and ends without closing its ports).
# A forked child has none of its parent's threads: its senders and receivers forget theirs,
# and start their own when they need one (a connection handed over to the child works).
_senders: weakref.WeakSet[_Sender] = weakref.WeakSet()
_receivers: weakref.WeakSet[_Receiver] = weakref.WeakSet()


@atexit.register
def _drain_senders_at_exit() -> None:
    deadline = _Deadline(_EXIT_DRAIN)
    for sender in list(_senders):
        sender.drain(deadline.remaining())


def _forget_threads_in_child() -> None:
    for receiver in list(_receivers):
        receiver.forget_thread()
    for sender in list(_senders):
        sender.forget_thread()
    _senders.clear()
    _receivers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads_in_child)


class _Receiver:
    """Reads the input stream from a daemon thread, one read at a time on request, so that a
    read under a deadline can stop waiting: a blocking stream's own read cannot be interrupted
    (a pipe whose peer says nothing would hang the caller past its timeout). A read that
    outlived its deadline stays outstanding; the next request takes its result."""

    def __init__(self, read_once: Callable[[], bytes]) -> None:
        self.read_once = read_once  # b"" at EOF; raises what the stream raises
        self.lock = threading.RLock()  # (`with self.lock`: see _Sender)
        self.cond = threading.Condition(self.lock)
        self.requested = False  # a read was asked for and has not delivered yet
        # The read's result, until the caller takes it (popleft: see _StreamTransport.feed)
        self.results: collections.deque[bytes] = collections.deque()
        self.error: Optional[BaseException] = None
        self.stopping = False
        self.reading = False  # the thread is in the stream's read
        self.close_after: Any = None  # a stream the thread closes once its read returns
        self.thread: Optional[threading.Thread] = None

    def get(self, deadline: _Deadline, failed: Callable[[], bool]) -> Optional[bool]:
        """Wait for the next bytes of the stream: True once they are in `results` (b"" at its
        end), False when the connection was closed under this read (its EOF), None if the
        deadline passed first or `failed()` came true (the output stream failed: the caller
        raises that). Raises what the stream's read raised, once: the stream raised it before
        it gave a byte, so nothing is lost, and the next call asks the stream again (as a read
        without a deadline does, and io.BufferedReader over a raw stream whose read raised).
        (A broken result, _BrokenStream, the transport raises again itself.)"""
        with self.lock:
            if not self.requested:
                self.requested = True
                if self.thread is None:
                    self.thread = threading.Thread(
                        target=self._run, name="sslports-receiver", daemon=True
                    )
                    self.thread.start()
                    _receivers.add(self)
                self.cond.notify_all()
            self.cond.wait_for(
                lambda: bool(self.results) or self.error is not None or self.stopping or failed(),
                deadline.remaining(),
            )
            if not self.results and self.error is None and self.stopping:
                return False  # the connection was closed under this read: its EOF
            if self.error is not None:
                self.requested = False
                try:  # (raised with no local naming it, and not kept: see _detached)
                    raise self.error
                finally:
                    self.error = None
            if self.results:
                self.requested = False
                return True
            return None

    def forget_thread(self) -> None:
        """In a forked child: the thread is the parent's (a read it had outstanding reads
        for the parent). The child's next read that needs one starts its own."""
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.requested = False
        self.reading = False
        self.close_after = None
        self.thread = None

    def idle(self) -> bool:
        """No read is outstanding, nor a result or a failure waiting to be taken: the next
        read of the stream may be made on the caller's thread (stream order holds)."""
        with self.lock:
            return not self.requested and not self.results and self.error is None

    def stop(self, then_close: Any = None) -> bool:
        """The connection is closed: the thread ends once idle (or its outstanding read
        returns). True when a read is outstanding and the thread takes `then_close` (the
        input stream, close_original): it closes it once that read returns. Closing it here
        would wait for the read (a buffered stream's close takes the lock its read holds),
        forever when the peer says nothing, and closing a raw descriptor under a read in
        progress would let a new file reuse its number under that read."""
        with self.lock:
            self.stopping = True
            taken = then_close is not None and self.reading
            if taken:
                self.close_after = then_close
            self.cond.notify_all()
            return taken

    def _run(self) -> None:
        while True:
            with self.lock:
                while (
                    self.results or self.error is not None or not self.requested
                ) and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                self.reading = True
            try:
                data = self.read_once()
            except BaseException as exc:
                with self.lock:
                    self.reading = False
                    self.error = exc.with_traceback(None)  # (see _detached)
                    self.cond.notify_all()
                if self._close_after():
                    return
                continue  # (the next request reads again: see get)
            with self.lock:
                self.reading = False
                self.results.append(data)
                self.cond.notify_all()
            if self._close_after() or not data:
                return  # closed, or EOF: nothing more to read

    def _close_after(self) -> bool:
        with self.lock:
            stream, self.close_after = self.close_after, None
        if stream is None:
            return False
        try:
            stream.close()
        except Exception:  # closing is best effort (as _StreamTransport.close)
            pass
        return True


def _write_fully(out: Any, data: Union[bytes, bytearray], sender: Optional[_Sender] = None) -> None:
    """Write all of `data` to `out`, then flush it; count each write's bytes in sender.moved
    (what a waiting flush or close sees move: _StreamTransport.wait_written). At most
    _WRITE_MOST bytes a call, so that the count moves while a slow stream takes a megabyte
    (a buffered write returns only once its last byte is in). (64 KiB calls cost 10 % of
    the bulk throughput over a socketpair; 256 KiB ones are within its noise.)"""
    view = memoryview(data)
    while view:
        piece = view[:_WRITE_MOST]
        n = out.write(piece)
        if n is None:
            if isinstance(out, io.RawIOBase):
                # io's raw streams say "would block, nothing written" so (a non-blocking
                # FileIO or SocketIO): taken for "all written", the bytes would be lost
                raise BlockingIOError(
                    "output_port's write would block (non-blocking): it must be blocking"
                )
            n = len(piece)  # a plain object that consumed everything and returned nothing
        if type(n) is not int or not 0 < n <= len(piece):
            # (io.BufferedWriter's check, and 0: writing on after "nothing written" would
            # spin forever, a negative count would send bytes again, a larger one drop some)
            raise OSError(f"output_port's write returned {n!r} for {len(piece)} bytes")
        view = view[n:]
        if sender is not None:
            sender.moved += n
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()


def _no_backlog() -> int:
    return -1


def _kernel_backlog(out: Any) -> Callable[[], int]:
    """How many bytes the output stream's pipe or socket still holds for the peer, as a
    function to poll (Linux: FIONREAD on a pipe, SIOCOUTQ on a socket; -1 when it cannot
    tell). A blocked write returns only once the kernel has room for much of it (a Unix
    socket wakes its writer when half its buffer is free), so its count alone would show a
    peer that reads slowly as one that stopped; this shows each read. (Not sp_fd_unsent:
    that counts TCP only, for the lingering close, where a Unix socket's bytes are the
    peer's already.)"""
    if sys.platform != "linux":
        return _no_backlog
    import fcntl
    import termios

    try:
        fd = out.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError, TypeError):
        return _no_backlog
    if stat.S_ISFIFO(mode):
        request = termios.FIONREAD
    elif stat.S_ISSOCK(mode):
        request = termios.TIOCOUTQ  # (SIOCOUTQ)
    else:
        return _no_backlog

    def backlog() -> int:
        try:
            return int.from_bytes(fcntl.ioctl(fd, request, bytes(4)), sys.byteorder, signed=True)
        except OSError:
            return -1

    return backlog


def _socket_of(stream: Any) -> Optional[socket.socket]:
    """The socket under a socket's stream (`sock.makefile(...)`, buffered or not), or None."""
    raw = getattr(stream, "raw", stream)
    sock = getattr(raw, "_sock", None) if isinstance(raw, socket.SocketIO) else None
    return sock if isinstance(sock, socket.socket) else None


def _wake_socket_reader(stream: Any) -> None:
    """close_original, with a read of the input stream still outstanding: if the stream is a
    socket's (`sock.makefile("rb")`, buffered or not), shut the socket's reading side down, so
    that the read returns its EOF now and the stream is closed as it returns. Otherwise both
    would wait for the peer, and a peer that waits for this end's EOF (which only closing
    the stream and its socket sends) waits forever, as does the thread in the read. Nothing is
    sent to the peer; what it still sends is dropped, as the closed port would. (A stream of
    another kind cannot be woken: timeouts.md.)"""
    sock = _socket_of(stream)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


class _TransportError(SSLError):
    """The stream under a connection failed (a reset, a broken pipe, a closed file).

    Raised by _StreamTransport; Connection.transport_errors turns it into the connection's
    error (the ``error=`` argument) with the usual "<func>: <what> failed (...)" message.
    """


def _transport_error(exc: BaseException) -> _TransportError:
    """The stream's failure, with its reason and errno (ECONNRESET, EPIPE: as a socket
    connection's error carries it)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    errno = exc.errno if isinstance(exc, OSError) and isinstance(exc.errno, int) else None
    return _TransportError(reason or type(exc).__name__, errno=errno)


_NO_DATA = "input_port has no data (non-blocking)"


# The counts of a readinto into the transport's buffer that are fed (a C-level test of an int):
# not one beyond the buffer or negative (a broken stream's; 0, EOF, and None are filtered first).
# Each count is made a plain int first (_count_of, as C calls in feed's chain): an int subclass's
# own comparisons could pass any value (one whose == says yes to everything is "in" the range),
# and sp_feed would copy that many bytes out of the 64 KiB buffer.
_FEEDABLE = range(1, _TRANSPORT_CHUNK + 1)


def _count_of(n: Any) -> int:
    """A read count as a plain int, its value as int itself holds it (not as an int subclass's
    comparisons, __index__ or __bool__ tell it); TypeError when `n` is no integer. (On 3.9
    operator.index may return a subclass: int.__index__ copies its value.)"""
    return int.__index__(operator.index(n))


_NOT_READ = object()  # (the stream's read raised: it returned nothing)


class _BrokenStream(OSError):
    """The input stream's read returned what no read may: a count outside the buffer or no
    count at all, or no bytes-like object. Such a stream may have consumed bytes it did not
    give (part of a record): its place in the TLS stream is lost, and every later read of the
    connection raises this again (_StreamTransport.broken), as every write does after a
    broken write count. (A failure the stream raises gave no byte: the next read tries
    again, as io.BufferedReader's does.)"""


def _bad_count(n: Any, size: int, method: str) -> _BrokenStream:
    """A stream's readinto said it read more than the buffer holds, or a negative count
    (io.BufferedReader's check), or returned no int at all (a str; a float, 0.0 included:
    not the stream's end)."""
    shown = reprlib.repr(n)  # (a long value cut short)
    return _BrokenStream(f"input_port's {method} returned {shown} for a buffer of {size} bytes")


def _not_bytes(data: Any, method: str) -> _BrokenStream:
    """A stream's read returned neither a bytes-like object nor None: a str ("" included: not
    the stream's end), an int (bytes() would have made that many zero bytes of it)."""
    return _BrokenStream(f"input_port's {method} returned {reprlib.repr(data)} (not bytes)")


def _as_buffer(data: Any, method: str) -> memoryview:
    """What a stream's read returned that is not bytes, as a buffer: a bytearray's or a
    memoryview's bytes; anything else is a broken stream."""
    try:
        return memoryview(data)
    except TypeError:
        raise _not_bytes(data, method) from None


def _is_end(returned: Any, counts: bool) -> bool:
    """A read's result that is the end of the stream: 0 from a readinto (`counts`), an empty
    bytes-like object from a read."""
    if counts:
        try:
            return _count_of(returned) == 0
        except TypeError:
            return False
    try:
        with memoryview(returned) as view:
            return view.nbytes == 0
    except TypeError:
        return False


def _read_stream(
    readinto: Optional[Callable[[memoryview], Optional[int]]],
    read: Optional[Callable[[int], Optional[bytes]]],
    view: memoryview,
    method: str,
) -> Any:
    """One read of an input stream (its readinto into `view`, else its read; `method` names
    it): a buffer of the bytes read, empty at EOF."""
    data: Any
    if readinto is not None:
        returned = readinto(view)
        data = None
        if returned is not None:
            try:
                n = _count_of(returned)
            except TypeError:  # (no integer: a str, a float)
                raise _bad_count(returned, len(view), method) from None
            if not 0 <= n <= len(view):
                raise _bad_count(n, len(view), method)
            data = view[:n]
    else:
        assert read is not None
        data = read(_TRANSPORT_CHUNK)
        if type(data) is not bytes and data is not None:
            data = _as_buffer(data, method)  # (not bytes(data): it makes an int zero bytes)
    if data is None:
        raise BlockingIOError(_NO_DATA)
    return data


# io's abstract bases: what a stream inherits from them unchanged is a stub (readinto1 of a
# BufferedIOBase that implements only read() raises UnsupportedOperation("read1"), readinto of
# such a RawIOBase NotImplementedError) or reads through another method of its own.
_IO_BASES = frozenset(
    {io.IOBase, io.RawIOBase, io.BufferedIOBase, io.TextIOBase}
    | {klass for base in (io.RawIOBase, io.BufferedIOBase, io.TextIOBase)
       for klass in base.__mro__ if klass.__module__ == "_io"}
)  # fmt: skip


def _implemented(inp: Any, name: str) -> Any:
    """`inp`'s method `name`, unless it has it only from io's abstract bases (None)."""
    if name not in getattr(inp, "__dict__", ()):
        for klass in type(inp).__mro__:
            if name in vars(klass):
                if klass in _IO_BASES:
                    return None
                break
    return getattr(inp, name, None)


def _read_method(inp: Any) -> tuple[str, Any]:
    """The input stream's method that _StreamTransport reads with, and its name: its first of
    readinto1, readinto, read1, read (None if it has none) that it implements, not one it
    inherits unchanged from io's abstract bases: a subclass of io.BufferedIOBase that
    implements read() alone is read with read()."""
    for name in ("readinto1", "readinto", "read1"):
        method = _implemented(inp, name)
        if method:
            return name, method
    return "read", getattr(inp, "read", None)


class _StreamTransport:
    """Ciphertext to and from two Python binary streams (ports_to_ssl_ports)."""

    sock = None
    # A read's broken result (_BrokenStream, without traceback: see _detached), raised again
    # by every later read
    broken: Optional[BaseException] = None

    def __init__(self, inp: Any, out: Any) -> None:
        self.inp = inp
        self.out = out
        self.buf = bytearray(_TRANSPORT_CHUNK)
        self.view = memoryview(self.buf)
        self.feed_buf: Any = None  # sp_feed(conn, <buf>, n) (feed)
        self.in_lock: Any = threading.RLock()  # (see pull_in)
        self.out_lock = threading.Lock()
        self.sender = _Sender(out)
        self.receiver: Optional[_Receiver] = None  # reads under a deadline (pull_in)
        self.write_left = False  # a write's ciphertext is still in the pump (a timeout)
        self.eof = False
        # A read of the input stream on a caller's thread is under way (`reading`); a close
        # meanwhile (close_original) leaves closing the input stream to it (`close_inp`).
        self.close_lock = threading.Lock()
        self.reading = False
        self.close_inp = False
        self.inp_closed = False
        self.tight = False  # the sender was once slow to write (see pull_in)
        # A read's push_out left ciphertext in the pump, the sender's queue being full: its
        # next stream read runs in the receiver, which it leaves once the queue has room.
        self.held_back = False
        self.handshaking = True  # (until Connection.handshake succeeds: see _Sender.lost_written)
        # Feeds so far. A reader and a writer may both need input (a TLS 1.2 renegotiation
        # while one thread reads and another writes): each takes `fed` before its pump call,
        # and pull_in does not wait for the stream when another thread fed the pump since.
        # What that thread fed may be what this call wanted (the renegotiation's end, which
        # the other call then processed, or data that a writer kept for the reader), and
        # reading on would wait for bytes the peer has no reason to send.
        self.fed = 0
        # The stream's method the transport reads with (its name: for the message of a broken
        # result), the first of readinto1, readinto, read1, read it has
        self.read_method, method = _read_method(inp)
        counts = self.read_method.startswith("readinto")
        self._readinto: Optional[Callable[[memoryview], Optional[int]]] = method if counts else None
        self._read: Optional[Callable[[int], Optional[bytes]]] = None if counts else method
        if method is None or isinstance(inp, io.TextIOBase):
            raise TypeError("ports_to_ssl_ports: input_port is not a readable binary stream")
        if not callable(getattr(out, "write", None)) or isinstance(out, io.TextIOBase):
            raise TypeError("ports_to_ssl_ports: output_port is not a writable binary stream")

    def push_out(
        self, conn: Any, deadline: _Deadline, reading: bool = False, func: str = "write"
    ) -> None:
        """Hand every byte of ciphertext the pump queued to the sender thread.

        A write waits for room in the sender's queue first (back-pressure), holding no lock:
        a read of another thread must push out in the meantime. A read never waits for room:
        with the queue full it leaves the ciphertext in the pump (for the next push, its own
        or a write's) and reads on (`held_back`). Two ends that each write and read at once
        would otherwise wait for each other for ever, each writer for its peer's reader and
        each reader for its own writer's room.

        `reading`: for a read, a failed output stream is not the end: the peer may have
        answered and sent close_notify before it closed (an HTTP server refusing an upload),
        and the input stream still holds that. The ciphertext (what reading queued, or what
        a failed write left) is dropped, and the writes report the failure (as the socket
        ports do: sp_conn.c SEND FAILURE). `func`: the caller's name, for a timeout's message."""
        lib = _binding.lib
        sender = self.sender
        while True:
            try:
                if not reading:
                    # Room first: ciphertext taken from the pump must reach the queue (a
                    # timeout leaves it in the pump, for the next push).
                    sender.wait_room(deadline, func)
                with self.out_lock:
                    pending = lib.sp_pending_out(conn)
                    if pending == 0:
                        self.held_back = False
                        sender.kick()
                        return
                    if not sender.has_room():  # (a read's push filled it meanwhile)
                        if reading:
                            self.held_back = True
                            return
                        continue
                    sender.put_from(lib.sp_take, conn, bytearray(pending), reading)
            except SSLError:
                raise
            except (OSError, ValueError) as exc:  # what the sender thread's write raised
                if not reading:
                    raise _transport_error(exc) from exc
                scratch = bytearray(_TRANSPORT_CHUNK)
                with self.out_lock, _binding.ffi.from_buffer(scratch) as cbuf:
                    while lib.sp_take(conn, cbuf, len(scratch)):
                        pass
                self.held_back = False
                return

    def wait_written(
        self, deadline: _Deadline, mark: Optional[int] = None, stall_for: float = _FLUSH_STALL
    ) -> bool:
        """flush(): wait until the sender has written the output port's bytes (the
        handshake's too; up to `mark` if given) to the output stream and flushed it, as a
        socket's flush returns once the kernel has them: the caller may then shut the stream
        down, or hand it on. False when the deadline passed first. Only while the stream keeps
        taking bytes: once it took none for `stall_for` seconds, this returns True, and the
        sender writes them on in the background (in order). Waiting on would deadlock with a
        peer that writes before it reads and waits in its own flush, or whose reader is this
        thread (API.md: tiny pipes must not deadlock), and would hang the last close (and the
        collector's finalizer) for good with a peer that never reads."""
        sender = self.sender
        if mark is None:
            mark = sender.written_mark
        if sys.is_finalizing():  # (one try, on this thread: _Sender.write_here)
            return sender.drain_written(None, mark)
        if sender.drain_written(0, mark):  # (most flushes: no fstat, no ioctl)
            return True
        moved = sender.moved
        backlog = _kernel_backlog(self.out)
        held = backlog()
        stall = time.monotonic() + stall_for
        while True:
            wait = _FLUSH_STALL / 4
            if deadline.at is not None:
                wait = min(wait, deadline.remaining() or 0.0)
            if sender.drain_written(wait, mark):
                return True
            if deadline.expired():
                return False
            now, level = time.monotonic(), backlog()
            if sender.moved != moved or level != held:  # (the peer read, or we wrote)
                moved, held, stall = sender.moved, level, now + stall_for
            elif now >= stall:
                return True

    def raise_send_failure(self) -> None:
        """Raise the failure of the output stream, if it lost bytes of the output port's
        writes (a read's transport EOF without close_notify then reports it, as the reset it
        is on a socket: sp_conn.c SEND FAILURE). Not when it lost only what the pump queued
        by itself (a server's session tickets, a KeyUpdate reply) to a peer that closed: its
        end without close_notify is then the EOF it is with nothing written (lost_written)."""
        sender = self.sender
        with sender.lock:
            failed = sender.error if sender.writes_unsent() else None
        if failed is not None:
            raise _transport_error(failed)

    def copying_reader(self) -> Callable[[], bytes]:
        """One read of the input stream for the receiver thread, as bytes of its own (the
        view is reused; b"" at EOF). Not a bound method: the transport holds its receiver,
        and a receiver holding the transport back would be a reference cycle, keeping the
        transport, its streams and its 64 KiB buffer after the connection closed until the
        cyclic collector runs, for every connection that ever read under a deadline."""
        readinto, read, view, method = self._readinto, self._read, self.view, self.read_method

        def read_copy() -> bytes:
            return bytes(_read_stream(readinto, read, view, method))

        return read_copy

    def pull_in(self, conn: Any, deadline: _Deadline, seen: int) -> None:
        """Read once from the input stream and feed the pump (EOF included), unless another
        thread fed it since the caller's pump call (`seen`: `fed` before that call). Under a
        deadline, or while a sender that was once slow (`tight`) still writes, the read runs
        in the receiver thread, and this returns with nothing fed when the deadline passes
        first (the caller checks it); so does a caller that waited a slice for another thread
        reading the stream. A failure of the output stream that lost the handshake's
        or the output port's bytes is raised (once) instead of waiting for an answer to them
        (_Sender.lost_written)."""
        lib = _binding.lib
        # (an RLock, whose release() raises unless this thread holds it: the finally gives
        # it back also when a signal handler's exception came as acquire returned)
        in_lock = self.in_lock
        try:
            if not in_lock.acquire(False) and not in_lock.acquire(
                timeout=deadline.slice_ms() / 1000
            ):
                # Another thread reads the stream. A read without a deadline blocks in it
                # holding the lock for as long as the peer sends nothing, and what this caller
                # waits for may already be done: that thread's pump call processed what it fed
                # (the end of a renegotiation, which a close or a write waits for). Return
                # after a slice: the caller calls the pump again and checks its deadline. (The
                # lock is not fair: waiting for it to be free would wait for the peer's next
                # bytes.)
                return
            if self.fed != seen:
                return  # call the pump again first
            if self.eof:
                if self.broken is not None:
                    raise _transport_error(self.broken)
                lib.sp_feed_eof(conn)
                self.fed += 1
                return
            sender, receiver = self.sender, self.receiver
            try:
                held_back = self.held_back  # (then wait in the receiver: see push_out)
                direct = (
                    deadline.at is None and not held_back and (receiver is None or receiver.idle())
                )
                if direct and sender.queued and not self.tight:
                    # Let the sender write what is queued first: the peer's answer cannot
                    # come before it, and a read blocked in the stream on this thread would
                    # never learn that the write failed. A sender that takes longer (a peer
                    # that does not read, blocked writing to us: tiny pipes) makes this
                    # transport read from the receiver thread while the sender writes.
                    with sender.lock:
                        if not sender.cond.wait_for(sender.idle_or_failed, _SEND_WAIT):
                            self.tight = True
                # What the pump queued is the handshake's, or a TLS 1.2 renegotiation's: the
                # peer's answer (what this read waits for) needs all of it.
                handshaking = self.handshaking or bool(lib.sp_conn_renegotiating(conn))
                if sender.lost_written(handshaking):
                    raise sender.report()
                if direct and sender.queued == 0:
                    readinto, read = self._readinto, self._read
                    left: Any = b""  # (close_input closed it: the connection was closed)
                    try:
                        with self.close_lock:
                            self.reading = not self.inp_closed
                        if self.reading:
                            if readinto is not None:
                                left = self.feed(conn, map(readinto, (self.view,)), True)
                            else:
                                assert read is not None
                                left = self.feed(conn, map(read, (_TRANSPORT_CHUNK,)), False)
                    finally:
                        with self.close_lock:
                            self.reading = False
                            close_inp, self.close_inp = self.close_inp, False
                            if close_inp:
                                self.inp_closed = True
                        if close_inp:  # (close_input left it to this read)
                            with contextlib.suppress(Exception):
                                self.inp.close()
                else:  # (a read outstanding in the receiver comes first: stream order)
                    if receiver is None:
                        receiver = self.receiver = _Receiver(self.copying_reader())
                        sender.wake = receiver
                    ready = receiver.get(
                        deadline,
                        lambda: (
                            sender.lost_written(handshaking) or (held_back and sender.has_room())
                        ),
                    )
                    if ready is None:  # (the read stays outstanding, for the next call)
                        if sender.lost_written(handshaking):
                            raise sender.report()
                        return  # the deadline passed, or there is room for what push_out left
                    results = receiver.results
                    taken = itertools.islice(iter(results.popleft, None), 1 if ready else 0)
                    left = self.feed(conn, taken, False)
                if left is None:
                    raise BlockingIOError(_NO_DATA)
            except SSLError:
                raise
            except (OSError, ValueError) as exc:
                if isinstance(exc, _BrokenStream):  # (its place in the stream is lost)
                    self.eof, self.broken = True, _detached(exc)
                raise _transport_error(exc) from exc
            if left is not True:  # (0, b"", or nothing at all: the end; feed checked it)
                self.eof = True
                lib.sp_feed_eof(conn)
                self.fed += 1
        finally:
            try:  # (one C call that checks the owner: no signal handler between look and release)
                in_lock.release()
            except RuntimeError:
                pass  # not taken by this call: another thread's read holds it

    def feed(self, conn: Any, reads: Iterator[Any], counts: bool) -> Any:
        """Make the one read of the input stream that `reads` holds (an iterator, lazily: of a
        readinto's count into the transport's buffer, or of bytes), and feed the pump what it
        read, within one C call (list.extend over tee, filter, map and zip). A signal handler's
        exception (Ctrl-C), which comes as a call returns to Python, then finds the ciphertext
        either unread or fed: never read and dropped, which would cut a record short, and the
        connection with it. (A stream's own read may run Python, socket.SocketIO.readinto
        does: a handler's exception there is the stream's.) True once fed; else what the read
        returned (0 or b"": EOF; None: a non-blocking stream had nothing), b"" when `reads`
        was empty (the receiver's EOF). What no read may return (a count beyond the buffer,
        a str...) raises _BrokenStream."""
        lib = _binding.lib
        raw, kept = itertools.tee(reads)
        if counts:  # (a count beyond the buffer or < 0 is not fed: pull_in refuses it)
            feed = self.feed_buf
            if feed is None or feed.args[0] is not conn:
                feed = functools.partial(lib.sp_feed, conn, _binding.ffi.from_buffer(self.buf))
                self.feed_buf = feed
            counted = map(int.__index__, map(operator.index, filter(None, raw)))  # (_count_of)
            feeds = map(feed, filter(_FEEDABLE.__contains__, counted))
        else:
            # (any bytes-like object; the length of its char[] view is its size in bytes, not
            # its len(): an array('I') counts items)
            bufs, sized = itertools.tee(map(_binding.ffi.from_buffer, filter(None, raw)))
            feeds = map(functools.partial(lib.sp_feed, conn), bufs, map(len, sized))
        done: list[tuple[int, Any]] = []
        try:
            done.extend(zip(feeds, kept))
        except TypeError:
            # cffi refused what the read returned (a float count, a str). A TypeError the
            # stream's read raised itself leaves nothing in `kept`: it is the stream's.
            returned = next(kept, _NOT_READ)
            if returned is _NOT_READ:
                raise
            raise self.broken_result(returned, counts) from None
        if done:
            self.fed += 1
            if not done[0][0]:
                raise MemoryError("sslports: cannot buffer incoming ciphertext")
            return True
        returned = next(kept, b"")  # (not fed: the end, "no data", or a broken result)
        if returned is None or _is_end(returned, counts):
            return returned
        raise self.broken_result(returned, counts)

    def broken_result(self, returned: Any, counts: bool) -> _BrokenStream:
        """The failure for a read that returned `returned`, a count (`counts`) or bytes that no
        read may return."""
        if counts:
            return _bad_count(returned, _TRANSPORT_CHUNK, self.read_method)
        return _not_bytes(returned, self.read_method)

    def close_input(self) -> None:
        """close_original: close the input stream, unless a read of another thread waits in
        it (pull_in, without a deadline): closing it here would wait for that read (a
        buffered stream's close takes the lock its read holds), forever if the peer says
        nothing, and a raw one would let a new file reuse its descriptor under the read.
        That read closes it as it returns."""
        with self.close_lock:
            if self.reading:
                self.close_inp = True
                _wake_socket_reader(self.inp)
                return
            self.inp_closed = True  # (a read that had not begun meets EOF)
            try:
                self.inp.close()
            except Exception:  # closing is best effort
                pass

    def abandon(self) -> None:
        """After a failed handshake: let what the pump queued (a ClientHello, the alert that
        tells the peer why) reach the output stream before the caller gets the exception, so
        the stream is not written behind the caller's back once the call has returned. Bounded
        (a peer that no longer reads cannot hold the caller), like the alert's own push."""
        self.sender.drain(_ABANDON_DRAIN)
        self.close(False, 0)
        # A read of the receiver's still outstanding (a peer that sent nothing more: the
        # handshake timed out) would keep its thread, and the socket under a socket's stream
        # (the caller's close cannot end the read: no FIN goes out), until the peer speaks or
        # leaves, and take what it sends then. The stream is of no more use to TLS: a
        # socket's is woken, its reading side shut (the caller reads EOF); a stream of
        # another kind waits for its peer (timeouts.md).
        receiver = self.receiver
        if receiver is not None:
            with receiver.lock:  # (stopped by close: no read starts after this look)
                reading = receiver.reading
            if reading:
                _wake_socket_reader(self.inp)

    def give_up_later(self) -> None:
        """close_original, and the sender still writes after the close (a peer that does not
        read): over a socket's stream it writes on while the peer takes some, as a socket
        port's lingering close does (_LINGER_SECONDS without progress, _LINGER_MOST_SECONDS
        in all), then shuts the socket down, which fails the write: the thread ends, and
        closes the stream, instead of holding both, and the queue, until the peer reads or
        leaves. A stream of another kind cannot be woken (threading.md)."""
        sock = _socket_of(self.out)
        if sock is None:
            return
        sender = self.sender
        mark = sender.put_total

        def watch() -> None:
            self.wait_written(_deadline(_LINGER_MOST_SECONDS), mark, _LINGER_SECONDS)
            if not sender.drain_written(0, mark):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=watch, name="sslports-stream-linger", daemon=True).start()

    def close(self, close_original: bool, timeout: Optional[float]) -> None:
        # Every byte written goes to the output stream before close() returns, also when the
        # caller keeps (and may close right after) the streams, and what the connection
        # queued by itself too (tickets, an alert). Only while the stream takes them
        # (wait_written): a peer that never reads must not hang the close, nor a finalizer.
        deferred = False  # the receiver thread closes the input stream (see _Receiver.stop)
        if self.receiver is not None:
            deferred = self.receiver.stop(self.inp if close_original else None)
            if deferred:
                _wake_socket_reader(self.inp)
        sender = self.sender
        deadline = _deadline(timeout)
        if close_original:
            self.wait_written(deadline, sender.put_total, _CLOSE_STALL)
        elif self.wait_written(deadline, sender.written_mark, _CLOSE_STALL):
            # Then what the connection queued by itself (a server's session tickets, a
            # close_notify, an alert), briefly: the caller keeps the stream, which the sender
            # should not write once close() returned (a sender that lagged, on a busy
            # machine, wrote the tickets after it, into a stream the caller had closed or
            # used on). Not for long: it is of no use to a peer that no longer reads.
            self.wait_written(deadline, sender.put_total, _FLUSH_STALL)
        sender.stop()
        lost = sender.unreported_loss()  # (the output port's bytes, and no call said so)
        if close_original:
            # A sender still writing (a drain that did not finish: a peer that does not read)
            # closes the output stream itself when done (close_when_done). At Python's exit its
            # thread is stopped for good inside that write, holding the stream's lock: a
            # buffered stream's close() would then abort the process ("could not acquire lock
            # ... at interpreter shutdown"). Left open: the process is ending.
            stuck = sender.writing if sys.is_finalizing() else sender.close_when_done()
            if stuck and not sys.is_finalizing():
                self.give_up_later()
            if not deferred and not (stuck and self.out is self.inp):
                self.close_input()
            if self.out is not self.inp and not stuck:  # (one object for both: close_input)
                try:
                    self.out.close()
                except Exception:  # closing is best effort
                    pass
        if lost is not None:
            raise _transport_error(lost) from lost
