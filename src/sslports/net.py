"""TCP-like entry points: connect, listen, accept, wrap a socket or any pair of streams.

API.md sections 1, 2 and 3. Each builds one `Connection` (ports.py) over a C pump and runs
the handshake; failures close what was opened.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import socket
import sys
import threading
import weakref
from _socket import socket as _raw_socket
from collections.abc import Sequence
from typing import Any, Callable, Literal, Optional, TypeVar, Union, cast, overload

from . import _binding
from ._binding import build_error
from ._streams import _StreamTransport
from ._timing import _SLICE_MS, _Deadline
from .context import (
    SSLClientContext,
    SSLServerContext,
    _check_bool,
    _check_protocol,
    _Context,
    encode_alpn,
    literal_family,
    shared_client_context,
    ssl_make_server_context,
)
from .errors import NotCopyable, SSLError, SSLNetworkError, SSLTimeoutError
from .ports import (
    SOCKETS_MAY_BLOCK,
    Connection,
    ErrorArg,
    SSLInputPort,
    SSLOutputPort,
    _check_timeout,
    _per_thread,
    _SocketTransport,
    check_handshake_timeout,
    make_ports,
)
from .sni import bind_connection

Ports = tuple[SSLInputPort, SSLOutputPort]


def _check_port_number(func: str, port_no: object, lowest: int) -> int:
    if isinstance(port_no, bool) or not isinstance(port_no, int):
        raise TypeError(f"{func}: port number must be an int, got {type(port_no).__name__}")
    if not lowest <= port_no <= 65535:
        raise ValueError(f"{func}: port number must be in {lowest}..65535, got {port_no}")
    return port_no


_C = TypeVar("_C", SSLClientContext, SSLServerContext)


def _named_context(func: str, protocol: str, make: Callable[[str], _C]) -> _C:
    """`make(protocol)`, with the name (and the native module) checked first, so that a bad
    name or a missing module is an error of `func`, not of the context maker."""
    protocol = _check_protocol(func, protocol)
    _binding.require_native(func)
    return make(protocol)


def _client_context(func: str, protocol: object) -> SSLClientContext:
    if isinstance(protocol, SSLClientContext):
        return protocol
    if isinstance(protocol, str):
        return _named_context(func, protocol, shared_client_context)
    raise TypeError(f"{func}: expected a client context or protocol name, got {protocol!r}")


def _server_context(func: str, protocol: object) -> SSLServerContext:
    if isinstance(protocol, SSLServerContext):
        return protocol
    if isinstance(protocol, str):
        return _named_context(func, protocol, ssl_make_server_context)
    raise TypeError(f"{func}: expected a server context or protocol name, got {protocol!r}")


def _new_connection(
    func: str,
    ctx: _Context,
    is_server: bool,
    fd: int,
    hostname: Optional[str],
    alpn_wire: bytes,
    cls: type[SSLError],
    cache_port: int = 0,
) -> Any:
    """A configured sp_conn (owned by ffi.gc) for `ctx`, not yet handshaking: verify policy,
    SNI and the name to check, ALPN offer, and with `cache_port` (a client context) the session
    cache entry of (hostname, cache_port) to resume and to file new sessions under, in one C
    call.

    (A context exists, so the native module is loaded.)"""
    lib = _binding.lib
    ffi = _binding.ffi
    flags, verify_hostname, epoch = ctx._conn_policy
    host: Any = ffi.NULL
    cache_host: Any = ffi.NULL
    ip = False
    if hostname is not None:
        ip, name, key = _host_info(hostname)
        if cache_port:
            cache_host = key
        if name is not None:
            host = name
        elif verify_hostname:
            raise _uncheckable_name(func, is_server, hostname, cls)
    elif verify_hostname:
        raise _uncheckable_name(func, is_server, None, cls)
    err, step = _per_thread.pair  # this thread's error record and count cell (the failed step)
    raw = lib.sp_ctx_open_conn(
        ctx._ptr,
        is_server,
        fd,
        flags,
        host,
        ip,
        verify_hostname,
        alpn_wire,
        len(alpn_wire),
        cache_host,
        cache_port,
        epoch,
        err,
        step,
    )
    if raw == ffi.NULL:
        raise build_error(func, _setup_what(step[0]), err, cls)
    return ffi.gc(raw, lib.sp_conn_free)


def _uncheckable_name(
    func: str, is_server: bool, hostname: Optional[str], cls: type[SSLError]
) -> SSLError:
    """The refusal to run a handshake whose context checks the peer's name when `hostname`
    can name no host, or none was given (None): here, and when an SNI callback switches a
    server to such a context (sni._check_name_given)."""
    what = _binding.handshake_step(is_server)
    if hostname is None:
        return cls(f"{func}: {what} failed (hostname not provided for verification)")
    hint = ""
    if hostname.startswith("[") and hostname.endswith("]"):
        hint = "; an IPv6 address is written without brackets here"
    return cls(
        f"{func}: {what} failed (hostname mismatch: {hostname!r} is not a valid reference "
        f"name{hint})",
        verify_code=_X509_V_ERR_HOSTNAME_MISMATCH,
        verify_message="hostname mismatch",
    )


def _setup_what(step: int) -> str:
    """What failed, from sp_ctx_open_conn's failed step (for the error message)."""
    lib = _binding.lib
    if step == lib.SP_SETUP_HOSTNAME:
        return "hostname setup"
    if step == lib.SP_SETUP_ALPN:
        return "ALPN setup"
    return "connection setup"


_X509_V_ERR_HOSTNAME_MISMATCH = 62


def _reference_name(hostname: str) -> Optional[bytes]:
    """The name OpenSSL checks and sends as SNI: an IP literal as is; a DNS name without its
    trailing dot, IDNA-encoded. None for what can never name a host (a leading dot, an
    empty label, a '*': OpenSSL would match it literally against a wildcard SAN; an IP
    literal with a trailing dot, which would be checked against DNS SANs, never IP SANs, and
    sent as SNI, which RFC 6066 forbids for addresses)."""
    return _host_info(hostname)[1]


@functools.lru_cache(maxsize=1024)
def _host_info(hostname: str) -> tuple[bool, Optional[bytes], bytes]:
    """(is an IP literal, the reference name, the session cache's name for the host):
    computed once per hostname, not per connection."""
    key = hostname.lower().encode("utf-8", "surrogatepass")
    if literal_family(hostname):
        return True, hostname.split("%")[0].encode(), key
    try:
        name = hostname.encode("ascii") if hostname.isascii() else hostname.encode("idna")
    except UnicodeError:
        return False, None, key
    # Checked on the encoded name: IDNA folds look-alikes into ASCII ("\uff0a" is "*",
    # "\u3002" is ".").
    if name.endswith(b"."):
        name = name[:-1]
    if not name or name.startswith(b".") or name.endswith(b".") or b".." in name or b"*" in name:
        return False, None, key
    if b"[" in name or b"]" in name:  # ("[::1]": a URL's form of an address, never a name)
        return False, None, key
    if literal_family(name.decode("ascii")):  # ("127.0.0.1.")
        return False, None, key
    return False, name, key


def _check_hostname_arg(func: str, hostname: object) -> Optional[str]:
    if hostname is None:
        return None
    if not isinstance(hostname, str):
        raise TypeError(f"{func}: hostname must be a str or None")
    if "\0" in hostname:
        raise ValueError(f"{func}: hostname contains a NUL character")
    name = _host_info(hostname)[1]
    if name is not None and len(name) > _DNS_NAME_MAX:
        raise ValueError(
            f"{func}: hostname is longer than a DNS name can be ({_DNS_NAME_MAX} characters)"
        )
    return hostname


_DNS_NAME_MAX = 253  # (RFC 1035: 255 octets on the wire, 253 characters written out)


def _start_on_socket(
    func: str,
    sock: _raw_socket,
    ctx: _Context,
    is_server: bool,
    hostname: Optional[str],
    alpn_wire: bytes,
    timeout: Optional[float],
    port_timeout: Optional[float],
    strict_eof: bool,
    cache_port: int = 0,
    prepared: bool = False,
    peer: Optional[tuple[Any, ...]] = None,
) -> Ports:
    """Handshake over a connected socket; the ports own it from then on.

    `cache_port`: a client resuming from and filing into its context's session cache under
    (hostname, cache_port). `prepared`: TCP_NODELAY is set (ssl_connect, ssl_accept). The pump
    owns the descriptor's blocking mode from then on; it needs it non-blocking only where it
    cannot wait in recv().
    """
    if not SOCKETS_MAY_BLOCK:
        sock.setblocking(False)
    if not prepared and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ptr = _new_connection(
        func, ctx, is_server, sock.fileno(), hostname, alpn_wire, SSLNetworkError, cache_port
    )
    # (positional: error, strict_eof, shutdown_on_close, close_original, hostname)
    conn = Connection(
        ptr, _SocketTransport(sock), ctx, SSLNetworkError, strict_eof, False, True, hostname
    )
    if peer is not None:
        conn.peer = peer
    if cache_port:
        conn.caches_session = True
    if ctx._sni_callback is None:
        conn.handshake(func, timeout, SSLNetworkError)
    else:  # the C callback finds the connection (and its context's callback) through sni.py
        with bind_connection(conn, func):
            conn.handshake(func, timeout, SSLNetworkError)
    if peer is not None:  # (only a failed handshake's message names it: an idle connection
        del conn.peer  # would keep ~0.15 K for nothing)
    return make_ports(conn, port_timeout)


# With a deadline, sockets are made non-blocking at creation where the platform can.
_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
# connect() on a non-blocking socket: "in progress", to be waited for (as CPython's own
# connect-with-timeout reads it: EINPROGRESS, or WSAEWOULDBLOCK on Windows).
_CONNECT_PENDING = frozenset(
    (errno.EINPROGRESS, getattr(errno, "WSAEWOULDBLOCK", errno.EINPROGRESS))
)
_WAIT_SLICE = 0.5  # seconds: Windows' select() is not interrupted by Ctrl-C


def _connect_nonblocking(sock: _raw_socket, addr: Any, deadline: _Deadline) -> None:
    """connect() a non-blocking socket, waiting for completion until the deadline.

    Raises OSError (the connect failure) or SSLTimeoutError (the caller names the function).
    """
    code = sock.connect_ex(addr)
    if code == 0:
        return
    if code not in _CONNECT_PENDING:
        raise OSError(code, _binding.strerror(code))
    while True:
        left = deadline.remaining()
        if left is not None and left <= 0:
            raise SSLTimeoutError("connect timed out")
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            # In slices, as the pump waits: a signal that lands just before poll() starts, or
            # in another thread (Ctrl-C), is handled (its exception raised) at the slice's end.
            wait_ms = _SLICE_MS if left is None else min(int(left * 1000) + 1, _SLICE_MS)
            ready = bool(poller.poll(wait_ms))
        else:  # pragma: no cover - Windows
            wait = _WAIT_SLICE if left is None else min(left, _WAIT_SLICE)
            _r, w, x = select.select([], [sock], [sock], wait)
            ready = bool(w or x)
        if ready:
            break
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code != 0:
        raise OSError(code, _binding.strerror(code))


def _not_a_dns_name(func: str, hostname: str, exc: UnicodeError) -> ValueError:
    """The resolver's UnicodeError (its IDNA encoding of `hostname`: a label over 63
    characters, an empty one) as a ValueError that names the call and the name."""
    return ValueError(f"{func}: hostname {hostname!r} is not a valid DNS name: {exc}")


def _resolve(func: str, hostname: str, port_no: int, deadline: Optional[_Deadline]) -> list[Any]:
    """getaddrinfo, in a thread of its own, waited for until the deadline: getaddrinfo blocks
    in C, where neither a timeout (a DNS server that does not answer costs 5 s a try) nor a
    signal (Ctrl-C: API.md, within about 100 ms) reaches it. A lookup that outlives the wait
    ends in its thread, unused."""
    box: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(hostname, port_no, type=socket.SOCK_STREAM))
        except BaseException as exc:  # (handed to the waiting thread)
            box.append(exc)
        finally:
            done.set()

    try:
        threading.Thread(target=lookup, name="sslports-resolve", daemon=True).start()
    except RuntimeError:  # (no thread to be had: look up here, as Python's socket does)
        lookup()
    if not done.wait(None if deadline is None else deadline.remaining()):
        raise SSLTimeoutError(f"{func}: connect timed out (resolving {hostname!r})")
    result = box.pop()  # (leaves no cycle through the exception's traceback)
    if isinstance(result, BaseException):
        raise result
    return cast("list[Any]", result)


def _resolve_failed(func: str, step: str, hostname: str, exc: OSError) -> SSLNetworkError:
    """A failed lookup in words. Without a descriptor left, glibc cannot open /etc/hosts or
    a socket to the DNS server, and may say the name is unknown: say what is wrong."""
    code = None if isinstance(exc, socket.gaierror) else exc.errno
    reason = str(exc) if code is None else exc.strerror or str(exc)
    if code is None:
        try:
            _raw_socket().close()
        except OSError as shortage:
            code, reason = shortage.errno, f"{shortage.strerror}, so: {exc}"
    if hostname.startswith("[") and hostname.endswith("]"):
        reason += "; an IPv6 address is written without brackets here"
    return SSLNetworkError(f"{func}: {step} failed (cannot resolve {hostname!r}: {reason})",
                           errno=code)  # fmt: skip


def _check_not_empty(func: str, hostname: str, hint: str = "") -> None:
    if not hostname:
        raise ValueError(f"{func}: hostname is empty{hint}")


def _tcp_connect(
    func: str, hostname: str, port_no: int, deadline: Optional[_Deadline]
) -> _raw_socket:
    """A connected TCP socket with TCP_NODELAY set (`deadline` None: no limit); blocking or not,
    as connecting left it (_start_on_socket settles that). A bare _socket.socket: only the
    ports use it, and socket.socket's Python __init__ and close cost ~50 bytecodes a
    connection. The addresses are tried in turn; with a deadline, each but the last gets an
    equal share of what is left of it, so that one that never answers (a host's broken IPv6)
    leaves time for the next."""
    family = literal_family(hostname) if "%" not in hostname else 0
    if family:  # an address literal: nothing to resolve
        addr = (hostname, port_no) if family == socket.AF_INET else (hostname, port_no, 0, 0)
        infos: list[Any] = [(family, socket.SOCK_STREAM, 0, "", addr)]
    else:
        _check_not_empty(func, hostname)
        try:
            infos = _resolve(func, hostname, port_no, deadline)
        except UnicodeError as exc:
            raise _not_a_dns_name(func, hostname, exc) from exc
        except SSLNetworkError:
            raise
        except OSError as exc:
            raise _resolve_failed(func, "connect", hostname, exc) from exc
    # Without a deadline a blocking connect() is the cheapest (a signal still interrupts it;
    # one that another thread takes, or that comes just before it begins, only once it ends:
    # timeouts.md); with one, connect without blocking and wait in Python. (Waiting in slices
    # without a deadline too cost 13.7 k instructions and three system calls a connection,
    # +0.6 % of a resumed one.)
    blocking = deadline is None and socket.getdefaulttimeout() is None
    last: Optional[OSError] = None
    for i, (family, kind, proto, _name, addr) in enumerate(infos):
        try:
            sock = _raw_socket(family, kind if blocking else kind | _SOCK_NONBLOCK, proto)
        except OSError as exc:
            last = exc
            continue
        try:
            if blocking:
                sock.connect(addr)
            else:
                if not _SOCK_NONBLOCK:
                    sock.setblocking(False)
                share = deadline
                if deadline is not None:
                    left = len(infos) - 1 - i  # (addresses after this one)
                    if left > 0:
                        share = _Deadline(cast(float, deadline.remaining()) / (left + 1))
                _connect_nonblocking(sock, addr, share or _Deadline(None))
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            return sock
        except SSLTimeoutError as exc:
            sock.close()
            if i == len(infos) - 1:  # (only with a deadline)
                raise SSLTimeoutError(
                    f"{func}: connect timed out ({_binding.endpoint(addr[0], port_no)})"
                ) from exc
            last = TimeoutError(errno.ETIMEDOUT, "its share of the timeout passed")
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    reason = last.strerror if last is not None and last.strerror else str(last)
    code = last.errno if last is not None else None
    if last is not None:  # chained as the cause (as a resolver failure is), without its
        last.__traceback__ = None  # traceback: that holds this frame, a cycle until collected
    raise SSLNetworkError(
        f"{func}: connect failed ({reason}: {_binding.endpoint(hostname, port_no)})", errno=code
    ) from last


def ssl_connect(
    hostname: str,
    port_no: int,
    client_protocol: Union[SSLClientContext, str] = "auto",
    *,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
) -> Ports:
    """Connect over TCP and run the TLS handshake as a client.

    Racket: ssl-connect

    :param client_protocol: a client context, or a protocol name (``"auto"`` verifies
        nothing; ``"secure"`` verifies the chain and the hostname): one shared context per
        name, whose sessions resume as a context's of the caller's do.
    :param alpn: protocols to offer, in order of preference.
    :param timeout: bounds connect + handshake; becomes the ports' initial timeout.
    :returns: ``(input_port, output_port)``.
    :raises SSLNetworkError: the connection or the handshake failed (the socket is closed).
    """
    return _connect("ssl_connect", hostname, port_no, client_protocol, alpn, timeout, strict_eof)


def _connect(
    func: str,
    hostname: str,
    port_no: int,
    client_protocol: Union[SSLClientContext, str],
    alpn: Sequence[bytes],
    timeout: Optional[float],
    strict_eof: bool,
) -> Ports:
    """ssl_connect, whose messages name `func` (ssl_connect_enable_break's are its own)."""
    # Argument checks, with the common cases inline (this runs once per connection, cold).
    if not isinstance(hostname, str):
        raise TypeError(f"{func}: hostname must be a str, got {type(hostname).__name__}")
    if "\0" in hostname or len(hostname) > _DNS_NAME_MAX or not hostname.isascii():
        _check_hostname_arg(func, hostname)  # (NUL, or a name too long once encoded: raises)
    if type(port_no) is not int or not 0 < port_no <= 65535:
        _check_port_number(func, port_no, 1)
    if isinstance(client_protocol, SSLClientContext):
        ctx = client_protocol  # a context: the native module is loaded
    else:
        ctx = _client_context(func, client_protocol)
    wire = b"" if type(alpn) is tuple and not alpn else encode_alpn(func, alpn)
    if timeout is not None:
        timeout = _check_timeout(func, timeout)
    if strict_eof is not False:
        _check_bool(func, "strict_eof", strict_eof)
    deadline = None if timeout is None else _Deadline(timeout)
    sock = _tcp_connect(func, hostname, port_no, deadline)
    try:
        return _start_on_socket(
            func,
            sock,
            ctx,
            False,
            hostname,
            wire,
            None if deadline is None else deadline.remaining(),
            timeout,
            strict_eof,
            port_no,
            prepared=True,
            peer=(hostname, port_no),
        )
    except BaseException:
        sock.close()
        raise


def ssl_connect_enable_break(
    hostname: str,
    port_no: int,
    client_protocol: Union[SSLClientContext, str] = "auto",
    *,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
) -> Ports:
    """Like ssl_connect; KeyboardInterrupt can interrupt it (as it can ssl_connect).

    Racket: ssl-connect/enable-break
    """
    return _connect(
        "ssl_connect_enable_break", hostname, port_no, client_protocol, alpn, timeout, strict_eof
    )


# A child of fork() has none of its parent's other threads, none of them waiting in its
# ssl_accept, and must not wake its parent's: each process makes its own wake-up pair.
_listeners: weakref.WeakSet[SSLListener] = weakref.WeakSet()


def _forget_accepting_threads() -> None:
    for listener in list(_listeners):
        listener._accepting.clear()
        listener._wake = None  # (the parent's: its copies here close with the objects)
        # (an accepting thread takes the lock for a moment in each wait slice: a fork then
        # would leave it held for good, owned by a thread this process does not have)
        listener._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_accepting_threads)

# Linux gives accept()'s socket its own blocking mode; BSDs, macOS and Windows copy the
# listener's, which is non-blocking.
_ACCEPTED_COPIES_NONBLOCKING = not sys.platform.startswith("linux")


class SSLListener(NotCopyable):
    """A listening TCP socket whose accepted connections speak TLS (Racket: ssl-listener?).

    Waiting for a connection: the socket is non-blocking, and ssl_accept polls it together
    with a wake-up socket pair of this process's, on which close() writes. Closing a socket
    does not wake a thread blocked in accept() on it (Linux), and shutdown(), which would,
    stops it for every process that shares it: a prefork server's other workers. A worker
    that closes its copy must leave theirs listening."""

    def __init__(
        self, sock: socket.socket, context: SSLServerContext, handshake_timeout: Optional[float]
    ) -> None:
        self._sock = sock
        self._sslports_context = context
        self.handshake_timeout = handshake_timeout
        # What socket.accept() would look up (as enums) for every connection, once.
        self._family = int(sock.family)
        self._proto = sock.proto
        self._raw_accept = getattr(sock, "_accept", None)
        # Under _lock: the threads waiting in ssl_accept, the wake-up pair (made by the first
        # that has to wait; closed by close(), or by the last waiting thread to leave after
        # it), and whether close() began: a woken thread must not find the socket still open
        # and wait again, nor make a new pair.
        # (reentrant: a signal handler that closes the listener may run in a thread that
        # holds it, inside ssl_accept; every step under it leaves the state consistent)
        self._lock = threading.RLock()
        self._accepting: set[int] = set()
        self._wake: Optional[tuple[socket.socket, socket.socket]] = None
        self._closing = False
        _listeners.add(self)

    def __repr__(self) -> str:
        if self._sock.fileno() < 0:
            return "<SSLListener closed>"
        local = self._sock.getsockname()
        return f"<SSLListener {_binding.endpoint(_host_of(local), local[1])}>"

    def fileno(self) -> int:
        """The listening socket's descriptor, for select/selectors (Racket: sync)."""
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._wake is not None:
                with contextlib.suppress(OSError):
                    self._wake[1].send(b"\0")  # (never read: it stays readable)
                if not self._accepting:
                    self._close_wake_locked()
        self._sock.close()

    def _close_wake_locked(self) -> None:
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None

    def _wait_fds(self) -> tuple[int, int]:
        """The descriptors to poll: the listener's and the wake-up pair's reading end."""
        with self._lock:
            if self._wake is None and not self._closing:
                self._wake = socket.socketpair()
            fds = self._sock.fileno(), -1 if self._wake is None else self._wake[0].fileno()
            # (checked after the fileno() calls: a signal handler may close the listener at any
            # line here, and a close after the check leaves a stale descriptor, which poll()
            # reports at once and the next accept() finds closed, never -1)
            if self._closing or min(fds) < 0:
                raise OSError(errno.EBADF, "closed")
            return fds

    def _left(self, me: int) -> None:
        with self._lock:
            self._accepting.discard(me)
            if self._closing and not self._accepting:
                self._close_wake_locked()

    def __enter__(self) -> SSLListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _accept_raw(lst: SSLListener) -> tuple[_raw_socket, Any]:
    """Accept a connection on lst's non-blocking socket, polling it (and the wake-up pair)
    until one comes; OSError when that fails, or when lst is closed meanwhile."""
    while True:
        try:
            if lst._raw_accept is not None:  # a bare _socket.socket, see _tcp_connect
                fd, addr = lst._raw_accept()
                sock = _raw_socket(lst._family, socket.SOCK_STREAM, lst._proto, fd)
            else:  # pragma: no cover - a socket module without _accept
                sock, addr = lst._sock.accept()
            if _ACCEPTED_COPIES_NONBLOCKING:  # pragma: no cover - not Linux
                sock.setblocking(True)
            return sock, addr
        except BlockingIOError:  # none waiting (or another process took it): wait
            pass
        listen_fd, wake_fd = lst._wait_fds()
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(listen_fd, select.POLLIN)
            poller.register(wake_fd, select.POLLIN)
            # (in slices, as the pump waits: a signal that another thread takes, or that lands
            # just before poll() starts, is handled, its exception raised, at the slice's end)
            poller.poll(_SLICE_MS)
        else:  # pragma: no cover - Windows
            select.select([listen_fd, wake_fd], [], [], _SLICE_MS / 1000)


_MAX_BACKLOG = 0x7FFFFFFF  # listen() takes a C int; the kernel caps it lower (somaxconn)


def _bind_everywhere(
    func: str, port_no: int, queue_k: int, reuse: bool, reuse_port: bool
) -> socket.socket:
    """A socket listening on every address: one dual-stack IPv6 socket where the system has
    them (IPv4 clients arrive as v4-mapped addresses, which ssl_addresses reports in their IPv4
    form), else IPv4 alone; also IPv4 alone when "::" cannot be bound (IPv6 disabled, or the
    port's IPv6 side taken by an IPv6-only socket), as before."""
    if socket.has_ipv6 and socket.has_dualstack_ipv6():
        try:
            return _bound_socket(
                func, socket.AF_INET6, ("::", port_no), queue_k, reuse, reuse_port, v6only=False
            )
        except SSLNetworkError as exc:
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EADDRINUSE):
                raise
    return _bound_socket(
        func, socket.AF_INET, ("0.0.0.0", port_no), queue_k, reuse, reuse_port, v6only=True
    )


def _bound_socket(
    func: str,
    family: int,
    addr: tuple[Any, ...],
    queue_k: int,
    reuse: bool,
    reuse_port: bool,
    *,
    v6only: bool,
) -> socket.socket:
    sock: Optional[socket.socket] = None
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
        # ssl_accept polls it (SSLListener), and waits for a connection without limit
        # (Racket's tcp-accept), whatever socket.setdefaulttimeout() says: ssl_connect
        # ignores that default as well.
        sock.setblocking(False)
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                from .errors import SSLUnsupportedError

                raise SSLUnsupportedError(f"{func}: SO_REUSEPORT not available here")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(addr)
        sock.listen(min(queue_k, _MAX_BACKLOG))
    except BaseException as exc:
        if sock is not None:
            sock.close()
        if isinstance(exc, SSLError) or not isinstance(exc, OSError):
            raise
        where = _binding.endpoint(addr[0], addr[1])
        raise SSLNetworkError(
            f"{func}: listen failed ({exc.strerror or exc}: {where})", errno=exc.errno
        ) from exc
    return sock


def ssl_listen(
    port_no: int,
    queue_k: int = 5,
    reuse: bool = False,
    hostname_or_none: Optional[str] = None,
    server_protocol: Union[SSLServerContext, str] = "auto",
    *,
    handshake_timeout: Optional[float] = 30.0,
    reuse_port: bool = False,
) -> SSLListener:
    """Listen for TLS connections.

    Racket: ssl-listen

    :param port_no: 0..65535; 0 picks a free port (see ssl_addresses).
    :param queue_k: the backlog.
    :param reuse: set SO_REUSEADDR.
    :param hostname_or_none: the address to bind (a host name: its first address), or None
        for every address, IPv4 and IPv6.
    :param server_protocol: a server context, or a protocol name (a fresh context is made).
    :param handshake_timeout: seconds a client may take to finish the handshake.
    :param reuse_port: set SO_REUSEPORT so several processes accept on one port.
    :raises SSLNetworkError: the address cannot be bound.
    """
    func = "ssl_listen"
    _check_port_number(func, port_no, 0)
    if isinstance(queue_k, bool) or not isinstance(queue_k, int):
        raise TypeError(f"{func}: queue_k must be an int")
    if queue_k < 0:
        raise ValueError(f"{func}: queue_k must be >= 0")
    if not isinstance(reuse, bool):
        raise TypeError(f"{func}: reuse must be a bool")
    _check_bool(func, "reuse_port", reuse_port)
    host = _check_hostname_arg(func, hostname_or_none)
    handshake_timeout = check_handshake_timeout(func, handshake_timeout)
    ctx = _server_context(func, server_protocol)
    if host is None:
        sock = _bind_everywhere(func, port_no, queue_k, reuse, reuse_port)
        return SSLListener(sock, ctx, handshake_timeout)
    _check_not_empty(func, host, " (None binds every address)")
    try:
        infos = socket.getaddrinfo(host, port_no, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except UnicodeError as exc:
        raise _not_a_dns_name(func, host, exc) from exc
    except OSError as exc:
        raise _resolve_failed(func, "listen", host, exc) from exc
    family, _kind, _proto, _name, addr = infos[0]
    sock = _bound_socket(func, family, addr, queue_k, reuse, reuse_port, v6only=True)
    return SSLListener(sock, ctx, handshake_timeout)


def _listener(func: str, listener: object) -> SSLListener:
    if not isinstance(listener, SSLListener):
        raise TypeError(f"{func}: expected an SSLListener, got {type(listener).__name__}")
    return listener


def ssl_close(listener: SSLListener) -> None:
    """Stop listening. Racket: ssl-close"""
    _listener("ssl_close", listener).close()


def is_ssl_listener(v: object) -> bool:
    """True for listeners made by ssl_listen. Racket: ssl-listener?"""
    return isinstance(v, SSLListener)


def ssl_accept(listener: SSLListener) -> Ports:
    """Accept one connection and run the TLS handshake as server.

    Racket: ssl-accept

    :raises SSLNetworkError: the handshake failed or stalled past the listener's
        handshake_timeout; that socket is closed and the listener stays usable.
    """
    return _accept("ssl_accept", listener)


def _accept(func: str, listener: SSLListener) -> Ports:
    """ssl_accept, whose messages name `func` (ssl_accept_enable_break's are its own)."""
    # (its context means the native module is loaded; the common case without a Python call:
    # every connection runs this once, cold)
    lst = listener if type(listener) is SSLListener else _listener(func, listener)
    sock, addr = _accept_tcp(func, lst)
    return _accepted_handshake(func, lst, sock, addr)


def _accept_tcp(func: str, lst: SSLListener) -> tuple[_raw_socket, Any]:
    """ssl_accept's first half: the next TCP connection and its peer's address.

    :raises SSLNetworkError: the accept failed, or lst is (or gets) closed."""
    if lst._sock.fileno() < 0:
        raise SSLNetworkError(f"{func}: accept failed (listener is closed)")
    me = threading.get_ident()
    try:
        with lst._lock:  # (inside: a signal handler's exception after the add still leaves)
            lst._accepting.add(me)
        return _accept_raw(lst)
    except OSError as exc:
        if lst._closing or lst._sock.fileno() < 0:  # closed (ssl_close, another thread)
            raise SSLNetworkError(f"{func}: accept failed (listener is closed)") from exc
        raise SSLNetworkError(f"{func}: accept failed ({exc})", errno=exc.errno) from exc
    finally:
        lst._left(me)


def _accepted_handshake(func: str, lst: SSLListener, sock: _raw_socket, addr: Any) -> Ports:
    """ssl_accept's second half: the server's handshake on `sock`, which _accept_tcp took
    from lst, bounded by lst's handshake_timeout; sock is closed when it fails. (The CLI's
    serve runs it in each client's thread: a client that stalls stalls no other.)"""
    try:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return _start_on_socket(
            func,
            sock,
            lst._sslports_context,
            True,
            None,
            b"",
            lst.handshake_timeout,
            None,
            False,
            prepared=True,
            peer=addr,  # (whom a failed handshake's message names)
        )
    except BaseException:
        sock.close()
        raise


def ssl_accept_enable_break(listener: SSLListener) -> Ports:
    """Like ssl_accept; KeyboardInterrupt can interrupt it. Racket: ssl-accept/enable-break"""
    return _accept("ssl_accept_enable_break", listener)


# What ssl_addresses takes: either port of a TCP connection, or a listener.
_PortOrListener = Union[SSLInputPort, SSLOutputPort, SSLListener]


@overload
def ssl_addresses(
    p_or_listener: _PortOrListener,
    port_numbers: Literal[False] = ...,
) -> tuple[str, str]: ...
@overload
def ssl_addresses(
    p_or_listener: _PortOrListener, port_numbers: Literal[True]
) -> tuple[str, int, str, int]: ...
@overload
def ssl_addresses(
    p_or_listener: _PortOrListener, port_numbers: bool
) -> Union[tuple[str, str], tuple[str, int, str, int]]: ...
def ssl_addresses(
    p_or_listener: _PortOrListener, port_numbers: bool = False
) -> Union[tuple[str, str], tuple[str, int, str, int]]:
    """The local and peer addresses (and ports) of a port or listener: numeric hosts, IPv4
    clients of a dual-stack listener in their IPv4 form, a link-local IPv6 address with its
    zone ("fe80::1%eth0").

    Racket: ssl-addresses

    :raises SSLError: the port is not over a TCP socket (``not connected to TCP port``).
    """
    func = "ssl_addresses"
    _check_bool(func, "port_numbers", port_numbers)
    sock: _raw_socket
    if isinstance(p_or_listener, SSLListener):
        sock = p_or_listener._sock
        if sock.fileno() < 0:
            raise SSLError(f"{func}: listener is closed")
        local = sock.getsockname()
        peer: tuple[Any, ...] = ("::", 0) if sock.family == socket.AF_INET6 else ("0.0.0.0", 0)
    elif isinstance(p_or_listener, (SSLInputPort, SSLOutputPort)):
        conn = p_or_listener._sslports_conn
        if conn.closed:  # (both ports: "Bad file descriptor", or a lingering socket's answer)
            raise SSLError(f"{func}: port is closed")
        transport = conn.transport
        if not isinstance(transport, _SocketTransport):
            raise SSLError(f"{func}: not connected to TCP port")
        sock = transport.sock
        try:
            local = sock.getsockname()
            peer = sock.getpeername()
        except OSError as exc:
            raise SSLError(f"{func}: not connected to TCP port ({exc})") from exc
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            raise SSLError(f"{func}: not connected to TCP port")
    else:
        raise TypeError(f"{func}: expected an SSL port or listener")
    local_host, peer_host = _host_of(local), _host_of(peer)
    if port_numbers:
        return (local_host, int(local[1]), peer_host, int(peer[1]))
    return (local_host, peer_host)


def _host_of(addr: tuple[Any, ...]) -> str:
    """The host of a socket address as getnameinfo(NI_NUMERICHOST) spells it (and Racket's
    tcp-addresses): an IPv4 client of a dual-stack socket in its IPv4 form, a scoped IPv6
    address (link-local: fe80::1) with its zone ("fe80::1%eth0"), so that ssl_connect can
    reach it again. Python's getsockname/getpeername give the zone as a number apart."""
    host = _binding.unmapped(str(addr[0]))
    if len(addr) == 4 and addr[3] and "%" not in host:
        try:
            zone = socket.if_indextoname(addr[3])
        except OSError:  # (an interface gone since: its number, which getaddrinfo takes too)
            zone = str(addr[3])
        host = f"{host}%{zone}"
    return host


def _mode_context(func: str, mode: object, context: object, encrypt: object) -> _Context:
    if not isinstance(mode, str):
        raise TypeError(f"{func}: mode must be a str, got {type(mode).__name__}")
    if mode not in ("connect", "accept"):
        raise ValueError(f"{func}: mode must be 'connect' or 'accept', got {mode!r}")
    if context is None:
        if not isinstance(encrypt, str):
            raise TypeError(f"{func}: encrypt must be a protocol name")
        if mode == "connect":
            return _named_context(func, encrypt, shared_client_context)
        return _named_context(func, encrypt, ssl_make_server_context)
    # One isinstance per class: mypy < 2 (the last on Python 3.9) joins a conditional pair of
    # classes to `object` and then reports the narrowed return value.
    if mode == "connect" and isinstance(context, SSLClientContext):
        return context
    if mode == "accept" and isinstance(context, SSLServerContext):
        return context
    want = SSLClientContext if mode == "connect" else SSLServerContext
    raise TypeError(f"{func}: {mode} mode needs a {want.__name__}, got {context!r}")


def wrap_arguments(
    func: str, mode: object, context: object, encrypt: object, hostname: object, alpn: object
) -> tuple[_Context, Optional[str], bytes]:
    """Check the arguments every "wrap this transport" entry point shares.

    :returns: the context for `mode`, the hostname, and the ALPN list in wire format.
    """
    ctx = _mode_context(func, mode, context, encrypt)
    host = _check_hostname_arg(func, hostname)
    wire = encode_alpn(func, alpn)
    if wire and mode == "accept":
        raise ValueError(f"{func}: alpn is for connect mode; use ssl_set_server_alpn on a server")
    return ctx, host, wire


def _check_error_arg(func: str, error: object) -> ErrorArg:
    if isinstance(error, type) and issubclass(error, BaseException):
        return error
    if callable(error):
        return error
    raise TypeError(f"{func}: error must be an exception class or a callable")


def ports_to_ssl_ports(
    input_port: Any,
    output_port: Any,
    *,
    mode: str = "accept",
    context: Optional[_Context] = None,
    encrypt: str = "auto",
    close_original: bool = False,
    shutdown_on_close: bool = False,
    error: ErrorArg = SSLError,
    hostname: Optional[str] = None,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
) -> Ports:
    """Run TLS over any pair of binary streams.

    Racket: ports->ssl-ports

    :param mode: ``"connect"`` (client) or ``"accept"`` (server).
    :param context: a context matching the mode; else one is made from `encrypt`.
    :param close_original: close both given streams once both SSL ports are closed. (If
        this call fails, there are no ports: the streams stay open, for the caller to close.)
    :param shutdown_on_close: closing the SSL output port sends close_notify.
    :param error: exception class (or raising callable) for communication errors.
    :param hostname: SNI and the name to verify.
    :param alpn: protocols to offer (connect mode only).
    :param timeout: bounds the handshake, then the ports' timeout. A stream read under a
        deadline runs in a background thread, so it holds over a stream whose own ``read``
        blocks; a read that outlives it stays outstanding for the next (docs/guide/timeouts.md).
    """
    func = "ports_to_ssl_ports"
    ctx, host, wire = wrap_arguments(func, mode, context, encrypt, hostname, alpn)
    _check_bool(func, "close_original", close_original)
    _check_bool(func, "shutdown_on_close", shutdown_on_close)
    _check_bool(func, "strict_eof", strict_eof)
    error = _check_error_arg(func, error)
    timeout = _check_timeout(func, timeout)
    transport = _StreamTransport(input_port, output_port)
    ptr = _new_connection(func, ctx, mode == "accept", -1, host, wire, SSLError)
    _binding.lib.sp_conn_reader_sends(ptr)
    conn = Connection(
        ptr,
        transport,
        ctx,
        error=error,
        strict_eof=strict_eof,
        shutdown_on_close=shutdown_on_close,
        close_original=close_original,
        hostname=host,
    )
    try:
        with bind_connection(conn, func):
            conn.handshake(func, timeout, SSLError)
    except BaseException:
        transport.abandon()
        raise
    return make_ports(conn, timeout)


def ssl_wrap_socket(
    sock: socket.socket,
    *,
    mode: str = "connect",
    context: Optional[_Context] = None,
    encrypt: str = "auto",
    hostname: Optional[str] = None,
    alpn: Sequence[bytes] = (),
    timeout: Optional[float] = None,
    strict_eof: bool = False,
) -> Ports:
    """TLS over an already connected socket, with the C fast path. Extension.

    The ports take ownership of the connection (closing both closes it) and of its
    descriptor's blocking mode and receive timeout. Without `timeout`, a timeout set on the
    socket (``sock.settimeout(5)``) bounds the handshake and becomes the ports' timeout, as
    it goes on bounding an ``ssl.SSLSocket``'s calls; a non-blocking socket's 0 does not (its
    blocking mode is the ports' now). As Python's ``SSLContext.wrap_socket``
    does, `sock` is detached: it reads as closed from then on, and closing it (the end of a
    ``with`` block) closes nothing. Else that close would free the descriptor's number under
    the ports, and the next socket opened would get it: the ports would send their records
    into an unrelated connection. When the handshake fails, the connection is closed (as
    Python's ssl and ssl_connect do): what is left of a half-made TLS connection is of no
    use, and the pump has changed its settings.

    :raises ValueError: `sock` is closed, not connected, or not a stream socket (it stays the
        caller's).
    :raises SSLNetworkError: the handshake failed (the connection is closed).
    """
    func = "ssl_wrap_socket"
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{func}: expected a socket.socket, got {type(sock).__name__}")
    if sock.fileno() < 0:  # (-1 would mean "no socket" to the C layer: a busy loop)
        raise ValueError(f"{func}: the socket is closed")
    if sock.type != socket.SOCK_STREAM:  # (TLS over datagrams loses records: DTLS's place)
        raise ValueError(f"{func}: only stream sockets are supported, got {sock.type!r}")
    try:
        sock.getpeername()
    except OSError:  # (else the handshake's first write failed: "Broken pipe")
        raise ValueError(f"{func}: the socket is not connected") from None
    ctx, host, wire = wrap_arguments(func, mode, context, encrypt, hostname, alpn)
    timeout = _check_timeout(func, timeout)
    if timeout is None:
        timeout = sock.gettimeout() or None  # (a server's bound on silent clients stays)
    _check_bool(func, "strict_eof", strict_eof)
    _binding.require_native(func)
    own: Optional[_raw_socket] = None
    try:
        own = _raw_socket(sock.family, sock.type, sock.proto, sock.fileno())
        sock.detach()
        return _start_on_socket(
            func, own, ctx, mode == "accept", host, wire, timeout, timeout, strict_eof
        )
    except BaseException:
        if own is None:
            sock.close()
        else:
            sock.detach()  # (again: a no-op once done)
            own.close()
        raise


# context.py's annotations name the listener and the ports, which it cannot import (this module
# and ports.py import it): bound here, once all three exist, for typing.get_type_hints.
vars(sys.modules[_Context.__module__]).update(
    SSLListener=SSLListener, SSLInputPort=SSLInputPort, SSLOutputPort=SSLOutputPort
)
