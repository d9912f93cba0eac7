"""asyncio: sslports' engine under an event loop (no thread per connection).

HOW IT WORKS

Each connection is one C pump in stream mode (memory BIOs, csrc/sp_conn.c): its calls never
wait, they return WANT_READ when they need ciphertext. The event loop does the waiting:

* writing encrypts at once (``SSLStreamWriter.write`` is synchronous, like asyncio's) and hands
  the ciphertext to the raw transport, whose buffer ``drain()`` waits on (back-pressure);
* reading asks the pump for plaintext; on WANT_READ it awaits the raw reader once, feeds what
  arrived, and asks again.

So there is no background task: cancelling any await leaves nothing half-done (the raw reader
keeps bytes it has not handed over, the pump keeps what it was fed), and one task may read
while another writes (full duplex; the pump's own lock orders the C calls).

The connection-fact functions of API.md section 5 (``ssl_peer_verified``,
``ssl_get_alpn_selected``, ``ssl_channel_binding``, ...) accept the reader or the writer.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Optional, Union

from . import _binding
from ._binding import build_error
from .context import SSLClientContext, SSLServerContext, _Context, encode_alpn
from .errors import SSLError, SSLNetworkError, SSLTimeoutError
from .ports import _scratch

_CHUNK = 65536
_IN_HIGH = 1 << 20  # unread ciphertext at which the transport is paused
_uncleared: Any = (
    _binding.ffi.new_allocator(should_clear_after_alloc=False) if _binding.ffi else None
)
_per_thread = threading.local()


def _thread_buffer() -> Any:
    """This thread's 64 KiB scratch buffer: filled and copied out with no await between."""
    try:
        return _per_thread.buf
    except AttributeError:
        _per_thread.buf = _uncleared("unsigned char[]", _CHUNK)
        return _per_thread.buf


__all__ = [
    "SSLStreamReader",
    "SSLStreamWriter",
    "open_ssl_connection",
    "start_ssl_server",
    "wrap_ssl_streams",
]


class _StreamRaw:
    """Ciphertext over an existing asyncio StreamReader / StreamWriter pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.eof = False

    generation = 0  # a stream pair feeds only inside pull(): nothing arrives unseen

    async def pull(self, ptr: Any, seen: int) -> None:
        """Wait for ciphertext and feed it to the pump (EOF included)."""
        lib = _binding.lib
        if self.eof:
            lib.sp_feed_eof(ptr)
            return
        try:
            data = await self.reader.read(_CHUNK)
        except (ConnectionError, OSError) as exc:
            raise SSLNetworkError(f"read: read failed ({exc})") from exc
        if not data:
            self.eof = True
            lib.sp_feed_eof(ptr)
        elif not lib.sp_feed(ptr, data, len(data)):
            raise MemoryError("sslports: cannot buffer incoming ciphertext")

    def consumed(self, ptr: Any) -> None:
        """Plaintext was taken: nothing to resume for a stream pair."""

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()

    async def wait_closed(self) -> None:
        await self.writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.writer.get_extra_info(name, default)

    @property
    def transport(self) -> Any:
        return self.writer.transport


class _ProtocolRaw(asyncio.Protocol):
    """Ciphertext straight from the transport's callbacks into the pump (no raw streams).

    data_received feeds the pump at once; a reader waiting for ciphertext is woken. When more
    than _IN_HIGH bytes of ciphertext wait unread, the transport is paused until plaintext is
    consumed (back-pressure); pause_writing / resume_writing gate drain().
    """

    def __init__(self) -> None:
        self.ptr: Any = None
        self.transport_: Optional[asyncio.Transport] = None
        self.waiter: Optional[asyncio.Future[None]] = None
        self.eof = False
        self.lost: Optional[BaseException] = None
        self.paused_reading = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.closed_future: Optional[asyncio.Future[None]] = None
        self.early: list[bytes] = []  # ciphertext that came before the pump existed
        self.generation = 0  # bumped by every arrival: a waiter compares it to skip waiting

    def attach(self, ptr: Any) -> None:
        self.ptr = ptr
        for data in self.early:
            _binding.lib.sp_feed(ptr, data, len(data))
        self.early.clear()
        if self.eof:
            _binding.lib.sp_feed_eof(ptr)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport_ = transport  # type: ignore[assignment]
        self.closed_future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        lib = _binding.lib
        if self.ptr is None:
            self.early.append(data)
            return
        lib.sp_feed(self.ptr, data, len(data))
        self.generation += 1
        if lib.sp_pending_in(self.ptr) > _IN_HIGH and self.transport_ is not None:
            self.transport_.pause_reading()
            self.paused_reading = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        if self.ptr is not None:
            _binding.lib.sp_feed_eof(self.ptr)
        self._wake()
        return False

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = exc
        if not self.eof:
            self.eof = True
            if self.ptr is not None:
                _binding.lib.sp_feed_eof(self.ptr)
        self._wake()
        for fut in self.drain_waiters:
            if not fut.done():
                fut.set_result(None)
        if self.closed_future is not None and not self.closed_future.done():
            self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for fut in self.drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self.drain_waiters.clear()

    def _wake(self) -> None:
        self.generation += 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # the raw interface
    async def pull(self, ptr: Any, seen: int) -> None:
        """Wait until ciphertext arrives after generation `seen` (at once if it already did)."""
        if self.eof:
            _binding.lib.sp_feed_eof(ptr)
            return
        if self.generation != seen:
            return
        if self.paused_reading:
            self.consumed(ptr)
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def consumed(self, ptr: Any) -> None:
        if self.paused_reading and _binding.lib.sp_pending_in(ptr) <= _IN_HIGH // 2:
            self.paused_reading = False
            if self.transport_ is not None and not self.transport_.is_closing():
                self.transport_.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport_ is not None:
            self.transport_.write(data)

    async def drain(self) -> None:
        if self.lost is not None:
            raise SSLNetworkError(f"write: write failed ({self.lost})")
        if self.write_paused:
            fut = asyncio.get_running_loop().create_future()
            self.drain_waiters.append(fut)
            await fut

    def is_closing(self) -> bool:
        return self.transport_ is None or self.transport_.is_closing()

    def close(self) -> None:
        if self.transport_ is not None:
            self.transport_.close()

    async def wait_closed(self) -> None:
        if self.closed_future is not None:
            await self.closed_future

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default if self.transport_ is None else self.transport_.get_extra_info(name, default)

    @property
    def transport(self) -> Any:
        return self.transport_


Raw = Union[_StreamRaw, _ProtocolRaw]


class AioConnection:
    """The pump of one asyncio TLS connection and the raw transport it runs over."""

    is_async = True

    def __init__(
        self, ptr: Any, raw: Raw, context: _Context, hostname: Optional[str], strict_eof: bool
    ) -> None:
        self.ptr = ptr
        self.raw = raw
        self.context = context
        self.hostname = hostname
        self.strict_eof = strict_eof
        self.closed = False
        self.sni_error: Optional[BaseException] = None
        self.switched_context: Optional[_Context] = None
        self.session_key: Optional[tuple[str, int]] = None
        self.raw_lock = asyncio.Lock()  # one raw read at a time (reader and a renegotiation)
        self.pending_write: Optional[bytes] = None  # plaintext held back by a renegotiation
        self.err = _binding.ffi.new("sp_err *")

    # -- moving ciphertext -------------------------------------------------------------------

    def push_out(self) -> None:
        """Hand everything the pump queued to the raw transport (never waits)."""
        lib = _binding.lib
        buf = _thread_buffer()
        while True:
            n = lib.sp_take(self.ptr, buf, _CHUNK)
            if n and not self.raw.is_closing():
                self.raw.write(_binding.ffi.buffer(buf, n)[:])
            if n < _CHUNK:
                return

    async def pull_in(self, seen: int) -> None:
        """Wait for ciphertext that arrived after generation `seen` (taken before the pump
        call that asked for more), so data that came in meanwhile is never waited for."""
        async with self.raw_lock:
            await self.raw.pull(self.ptr, seen)

    async def drain(self) -> None:
        self.push_out()
        if not self.raw.is_closing():
            try:
                await self.raw.drain()
            except (ConnectionError, OSError) as exc:
                raise SSLNetworkError(f"write: write failed ({exc})") from exc

    # -- operations --------------------------------------------------------------------------

    async def handshake(self, func: str) -> None:
        lib = _binding.lib
        from .sni import bind_connection

        while True:
            seen = self.raw.generation
            with bind_connection(self):
                status = lib.sp_handshake(self.ptr, 0, self.err)
            if status == lib.SP_OK:
                await self.drain()
                self.remember_session()
                return
            if status == lib.SP_WANT_READ:
                await self.drain()
                await self.pull_in(seen)
                continue
            if self.sni_error is not None:
                raise self.sni_error
            self.push_out()  # the alert, so the peer learns why
            if status == lib.SP_RAGGED_EOF:
                raise SSLNetworkError(f"{func}: handshake failed (connection closed by peer)")
            raise build_error(func, "handshake", self.err, SSLNetworkError)

    async def read_some(self, size: int) -> bytes:
        """At least one byte of plaintext (at most `size`), or b"" at EOF."""
        lib = _binding.lib
        ffi = _binding.ffi
        size = min(size, _CHUNK)
        buf = _thread_buffer()
        err, got = _scratch()
        while True:
            seen = self.raw.generation
            status = lib.sp_read(self.ptr, buf, size, 1, got, 0, err)
            if got[0]:
                self.raw.consumed(self.ptr)
                if lib.sp_pending_out(self.ptr):
                    self.push_out()  # e.g. a KeyUpdate reply
                return ffi.buffer(buf, got[0])[:]  # type: ignore[no-any-return]
            if status == lib.SP_WANT_READ:
                await self.drain()
                await self.pull_in(seen)
                continue
            if status == lib.SP_EOF:
                return b""
            if status == lib.SP_RAGGED_EOF:
                if self.strict_eof:
                    raise SSLError("read: read failed (unexpected eof)")
                return b""
            self.push_out()
            raise build_error("read", "read", err, SSLNetworkError)

    def write_now(self, data: bytes) -> None:
        """Encrypt `data` and queue the ciphertext on the raw transport."""
        lib = _binding.lib
        ffi = _binding.ffi
        err, done = _scratch()
        view = memoryview(data)
        total = 0
        while total < len(view):
            rest = view[total:]
            status = lib.sp_write(self.ptr, ffi.from_buffer(rest), len(rest), done, 0, err)
            total += done[0]
            self.push_out()
            if status == lib.SP_OK:
                continue
            if status == lib.SP_WANT_READ:
                # A renegotiation is under way: drain() sends the rest once it moved on.
                self.pending_write = bytes(view[total:])
                return
            raise build_error("write", "write", err, SSLNetworkError)

    def remember_session(self) -> None:
        if self.session_key is None or not isinstance(self.context, SSLClientContext):
            return
        lib = _binding.lib
        ffi = _binding.ffi
        session = lib.sp_conn_get_session(self.ptr)
        if session != ffi.NULL:
            self.context._remember_session(self.session_key, ffi.gc(session, lib.sp_session_free))


class SSLStreamReader:
    """The plaintext side of an asyncio TLS connection (asyncio.StreamReader's API)."""

    def __init__(self, conn: AioConnection, limit: int = 2**16) -> None:
        self._sslports_conn = conn
        self._buffer = bytearray()
        self._eof = False
        self._limit = limit

    async def _fill(self) -> bool:
        """Read more plaintext into the buffer; False at EOF."""
        if self._eof:
            return False
        data = await self._sslports_conn.read_some(_CHUNK)
        if not data:
            self._eof = True
            self._sslports_conn.remember_session()
            return False
        self._buffer += data
        return True

    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if n < 0:
            while await self._fill():
                pass
            data = bytes(self._buffer)
            self._buffer.clear()
            return data
        if not self._buffer:
            await self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not await self._fill():
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, n)
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        if not separator:
            raise ValueError("readuntil: separator must not be empty")
        start = 0
        while True:
            i = self._buffer.find(separator, start)
            if i >= 0:
                end = i + len(separator)
                data = bytes(self._buffer[:end])
                del self._buffer[:end]
                return data
            if len(self._buffer) > self._limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", 0)
            start = max(0, len(self._buffer) - len(separator) + 1)
            if not await self._fill():
                partial = bytes(self._buffer)
                self._buffer.clear()
                raise asyncio.IncompleteReadError(partial, None)

    async def readline(self) -> bytes:
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial

    def __aiter__(self) -> SSLStreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class SSLStreamWriter:
    """The plaintext side for writing (asyncio.StreamWriter's API)."""

    def __init__(self, conn: AioConnection, reader: SSLStreamReader) -> None:
        self._sslports_conn = conn
        self._reader = reader

    @property
    def transport(self) -> Any:
        return self._sslports_conn.raw.transport

    def write(self, data: Union[bytes, bytearray, memoryview]) -> None:
        conn = self._sslports_conn
        if conn.closed:
            raise SSLError("write: connection is closed")
        if conn.pending_write is not None:
            conn.pending_write += bytes(data)
            return
        conn.write_now(bytes(data))

    def writelines(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    async def drain(self) -> None:
        conn = self._sslports_conn
        while conn.pending_write is not None:
            rest, conn.pending_write = conn.pending_write, None
            await conn.pull_in(conn.raw.generation)
            conn.write_now(rest)
        await conn.drain()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._sslports_conn.closed or self._sslports_conn.raw.is_closing()

    def close(self) -> None:
        """Close the connection (no close_notify: use shutdown() first for one)."""
        conn = self._sslports_conn
        if not conn.closed:
            conn.closed = True
            conn.remember_session()
            conn.raw.close()

    async def shutdown(self) -> None:
        """Send close_notify (without waiting for the peer's), then drain."""
        lib = _binding.lib
        lib.sp_shutdown(self._sslports_conn.ptr, self._sslports_conn.err)
        await self._sslports_conn.drain()

    async def wait_closed(self) -> None:
        try:
            await self._sslports_conn.raw.wait_closed()
        except (ConnectionError, OSError):
            pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sslports_conn.raw.get_extra_info(name, default)

    async def __aenter__(self) -> SSLStreamWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


def _pair(conn: AioConnection) -> tuple[SSLStreamReader, SSLStreamWriter]:
    reader = SSLStreamReader(conn)
    return reader, SSLStreamWriter(conn, reader)


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
) -> tuple[SSLStreamReader, SSLStreamWriter]:
    """TLS over an asyncio stream pair: the async counterpart of ports_to_ssl_ports.

    :raises SSLNetworkError: the handshake failed (the raw writer is closed).
    :raises TimeoutError: the handshake took longer than `timeout`.
    """
    from .net import wrap_arguments

    func = "wrap_ssl_streams"
    ctx, host, wire = wrap_arguments(func, mode, context, encrypt, hostname, alpn)
    raw = _StreamRaw(reader, writer)
    return await _start(func, raw, ctx, mode == "accept", host, wire, timeout, strict_eof)


async def _start(
    func: str,
    raw: Raw,
    ctx: _Context,
    is_server: bool,
    hostname: Optional[str],
    wire: bytes,
    timeout: Optional[float],
    strict_eof: bool,
    session_key: Optional[tuple[str, int]] = None,
) -> tuple[SSLStreamReader, SSLStreamWriter]:
    from .net import _new_connection

    try:
        ptr = _new_connection(func, ctx, is_server, -1, hostname, wire, SSLNetworkError)
        if isinstance(raw, _ProtocolRaw):
            raw.attach(ptr)
        conn = AioConnection(ptr, raw, ctx, hostname, strict_eof)
        if session_key is not None and isinstance(ctx, SSLClientContext):
            conn.session_key = session_key
            session = ctx._session_for(session_key)
            if session is not None:
                _binding.lib.sp_conn_set_session(ptr, session)
        try:
            await asyncio.wait_for(conn.handshake(func), timeout)
        except asyncio.TimeoutError as exc:
            raise SSLTimeoutError(f"{func}: handshake timed out") from exc
    except BaseException:
        raw.close()
        raise
    return _pair(conn)


def _nodelay(raw: _ProtocolRaw) -> None:
    sock = raw.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def open_ssl_connection(
    host: str,
    port: int,
    context: Union[SSLClientContext, str] = "secure",
    *,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
) -> tuple[SSLStreamReader, SSLStreamWriter]:
    """Connect and run the TLS handshake as a client (asyncio.open_connection's shape).

    :param context: a client context or a protocol name (``"secure"`` by default).
    :raises SSLNetworkError: the connection or the handshake failed.
    """
    from .net import _check_hostname_arg, _check_port_number, _client_context

    func = "open_ssl_connection"
    if not isinstance(host, str):
        raise TypeError(f"{func}: host must be a str")
    _check_hostname_arg(func, host)
    _check_port_number(func, port, 1)
    ctx = _client_context(func, context)
    wire = encode_alpn(func, alpn)
    _binding.require_native(func)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        _transport, raw = await asyncio.wait_for(
            loop.create_connection(_ProtocolRaw, host, port), timeout
        )
    except asyncio.TimeoutError as exc:
        raise SSLTimeoutError(f"{func}: connect timed out") from exc
    except OSError as exc:
        raise SSLNetworkError(f"{func}: connect failed ({exc.strerror or exc})") from exc
    _nodelay(raw)
    left = None if deadline is None else max(0.0, deadline - loop.time())
    return await _start(func, raw, ctx, False, host, wire, left, strict_eof, (host.lower(), port))


ClientConnected = Callable[[SSLStreamReader, SSLStreamWriter], Optional[Awaitable[None]]]


async def start_ssl_server(
    client_connected_cb: ClientConnected,
    host: Optional[str],
    port: int,
    context: SSLServerContext,
    *,
    handshake_timeout: Optional[float] = 30.0,
    **kwargs: Any,
) -> asyncio.Server:
    """Serve TLS: each client's handshake runs, then ``client_connected_cb(reader, writer)``.

    Returns the asyncio.Server (close, wait_closed, serve_forever, sockets, async with). A
    failed or stalled handshake closes that connection; the server keeps serving.
    """
    func = "start_ssl_server"
    if not isinstance(context, SSLServerContext):
        raise TypeError(f"{func}: expected a server context, got {type(context).__name__}")
    _binding.require_native(func)

    async def on_client(raw: _ProtocolRaw) -> None:
        _nodelay(raw)
        try:
            ssl_reader, ssl_writer = await _start(
                "ssl_accept", raw, context, True, None, b"", handshake_timeout, False
            )
        except (SSLError, OSError):
            return  # that client is gone; the server keeps serving
        result = client_connected_cb(ssl_reader, ssl_writer)
        if asyncio.iscoroutine(result):
            await result

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    class _ServerRaw(_ProtocolRaw):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            task = loop.create_task(on_client(self))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    return await loop.create_server(_ServerRaw, host, port, **kwargs)
