"""TCP-like entry points: connect, listen, accept, wrap a socket or any pair of streams.

API.md sections 1, 2 and 3. Each builds one `Connection` (ports.py) over a C pump and runs
the handshake; failures close what was opened.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import Any, Optional, Union

from . import _binding
from ._binding import build_error
from .context import (
    SSLClientContext,
    SSLServerContext,
    _check_protocol,
    _Context,
    encode_alpn,
    is_ip_literal,
    ssl_make_client_context,
    ssl_make_server_context,
    ssl_secure_client_context,
)
from .errors import SSLError, SSLNetworkError, SSLTimeoutError
from .ports import (
    Connection,
    ErrorArg,
    SSLInputPort,
    SSLOutputPort,
    _check_timeout,
    _Deadline,
    _SocketTransport,
    _StreamTransport,
    make_ports,
)

Ports = tuple[SSLInputPort, SSLOutputPort]


def _check_port_number(func: str, port_no: object, lowest: int) -> int:
    if isinstance(port_no, bool) or not isinstance(port_no, int):
        raise TypeError(f"{func}: port number must be an int, got {type(port_no).__name__}")
    if not lowest <= port_no <= 65535:
        raise ValueError(f"{func}: port number must be in {lowest}..65535, got {port_no}")
    return port_no


def _check_flag(func: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be a bool, got {type(value).__name__}")
    return value


def _client_context(func: str, protocol: object) -> SSLClientContext:
    if isinstance(protocol, SSLClientContext):
        return protocol
    if isinstance(protocol, str):
        # checked here so that a bad name is reported as an error of `func`
        return ssl_make_client_context(_check_protocol(func, protocol))
    raise TypeError(f"{func}: expected a client context or protocol name, got {protocol!r}")


def _server_context(func: str, protocol: object) -> SSLServerContext:
    if isinstance(protocol, SSLServerContext):
        return protocol
    if isinstance(protocol, str):
        return ssl_make_server_context(_check_protocol(func, protocol))
    raise TypeError(f"{func}: expected a server context or protocol name, got {protocol!r}")


def _new_connection(
    func: str,
    ctx: _Context,
    is_server: bool,
    fd: int,
    hostname: Optional[str],
    alpn_wire: bytes,
    cls: type[SSLError],
) -> Any:
    """A configured sp_conn (owned by ffi.gc) for `ctx`, not yet handshaking."""
    lib = _binding.require_native(func)
    ffi = _binding.ffi
    if ctx._verify_hostname and hostname is None:
        raise cls(f"{func}: handshake failed (hostname not provided for verification)")
    err = ffi.new("sp_err *")
    raw = lib.sp_conn_new(ctx._ptr, int(is_server), fd, err)
    if raw == ffi.NULL:
        raise build_error(func, "connection setup", err, cls)
    ptr = ffi.gc(raw, lib.sp_conn_free)
    lib.sp_conn_set_verify(ptr, ctx._verify_flags())
    if hostname is not None:
        ip = is_ip_literal(hostname)
        host = _reference_name(hostname)
        if host is None and ctx._verify_hostname:
            raise cls(
                f"{func}: handshake failed (hostname mismatch: {hostname!r} is not a valid "
                "reference name)",
                verify_code=_X509_V_ERR_HOSTNAME_MISMATCH,
                verify_message="hostname mismatch",
            )
        if host is not None:
            ok = lib.sp_conn_set_host(
                ptr, host, int(ip), int(not is_server), int(ctx._verify_hostname), err
            )
            if not ok:
                raise build_error(func, "hostname setup", err, cls)
    if alpn_wire:
        lib.ERR_clear_error()
        if lib.SSL_set_alpn_protos(lib.sp_conn_ssl(ptr), alpn_wire, len(alpn_wire)) != 0:
            raise build_error(func, "ALPN setup", None, cls)
    return ptr


_X509_V_ERR_HOSTNAME_MISMATCH = 62


def _reference_name(hostname: str) -> Optional[bytes]:
    """The name OpenSSL checks and sends as SNI: an IP literal as is; a DNS name without its
    trailing dot, IDNA-encoded. None for what can never name a host (a leading dot, an
    empty label, a '*': OpenSSL would match it literally against a wildcard SAN)."""
    if is_ip_literal(hostname):
        return hostname.split("%")[0].encode()
    name = hostname[:-1] if hostname.endswith(".") else hostname
    if not name or name.startswith(".") or ".." in name or "*" in name:
        return None
    try:
        return name.encode("ascii") if name.isascii() else name.encode("idna")
    except UnicodeError:
        return None


def _check_hostname_arg(func: str, hostname: object) -> Optional[str]:
    if hostname is None:
        return None
    if not isinstance(hostname, str):
        raise TypeError(f"{func}: hostname must be a str or None")
    if "\0" in hostname:
        raise ValueError(f"{func}: hostname contains a NUL character")
    return hostname


def _start_on_socket(
    func: str,
    sock: socket.socket,
    ctx: _Context,
    is_server: bool,
    hostname: Optional[str],
    alpn_wire: bytes,
    timeout: Optional[float],
    port_timeout: Optional[float],
    strict_eof: bool,
    session_key: Optional[tuple[str, int]] = None,
) -> Ports:
    """Handshake over a connected socket; the ports own it from then on."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ptr = _new_connection(func, ctx, is_server, sock.fileno(), hostname, alpn_wire, SSLNetworkError)
    conn = Connection(
        ptr,
        _SocketTransport(sock),
        ctx,
        error=SSLNetworkError,
        strict_eof=strict_eof,
        shutdown_on_close=False,
        close_original=True,
        hostname=hostname,
    )
    if session_key is not None and isinstance(ctx, SSLClientContext):
        conn.session_key = session_key
        session = ctx._session_for(session_key)
        if session is not None:
            _binding.lib.sp_conn_set_session(ptr, session)
    from .sni import bind_connection

    with bind_connection(conn):
        conn.handshake(func, timeout, SSLNetworkError)
    conn.remember_session()
    return make_ports(conn, port_timeout)


def _tcp_connect(func: str, hostname: str, port_no: int, deadline: _Deadline) -> socket.socket:
    try:
        infos = socket.getaddrinfo(hostname, port_no, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SSLNetworkError(
            f"{func}: connect failed (cannot resolve {hostname!r}: {exc})"
        ) from exc
    last: Optional[OSError] = None
    for family, kind, proto, _name, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(addr)
            return sock
        except socket.timeout as exc:
            sock.close()
            raise SSLTimeoutError(f"{func}: connect timed out") from exc
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    reason = last.strerror if last is not None and last.strerror else str(last)
    raise SSLNetworkError(
        f"{func}: connect failed ({reason}: {hostname}:{port_no})",
        errno=last.errno if last is not None else None,
    )


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
        nothing; ``"secure"`` verifies the chain and the hostname).
    :param alpn: protocols to offer, in order of preference.
    :param timeout: bounds connect + handshake; becomes the ports' initial timeout.
    :returns: ``(input_port, output_port)``.
    :raises SSLNetworkError: the connection or the handshake failed (the socket is closed).
    """
    func = "ssl_connect"
    if not isinstance(hostname, str):
        raise TypeError(f"{func}: hostname must be a str, got {type(hostname).__name__}")
    _check_hostname_arg(func, hostname)
    _check_port_number(func, port_no, 1)
    ctx = _client_context(func, client_protocol)
    wire = encode_alpn(func, alpn)
    timeout = _check_timeout(func, timeout)
    _check_flag(func, "strict_eof", strict_eof)
    _binding.require_native(func)
    deadline = _Deadline(timeout)
    sock = _tcp_connect(func, hostname, port_no, deadline)
    try:
        return _start_on_socket(
            func,
            sock,
            ctx,
            False,
            hostname,
            wire,
            deadline.remaining(),
            timeout,
            strict_eof,
            (hostname.lower(), port_no),
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
    return ssl_connect(
        hostname, port_no, client_protocol, alpn=alpn, timeout=timeout, strict_eof=strict_eof
    )


class SSLListener:
    """A listening TCP socket whose accepted connections speak TLS (Racket: ssl-listener?)."""

    def __init__(
        self, sock: socket.socket, context: SSLServerContext, handshake_timeout: Optional[float]
    ) -> None:
        self._sock = sock
        self._sslports_context = context
        self.handshake_timeout = handshake_timeout

    def __repr__(self) -> str:
        if self._sock.fileno() < 0:
            return "<SSLListener closed>"
        host, port = self._sock.getsockname()[:2]
        return f"<SSLListener {host}:{port}>"

    def fileno(self) -> int:
        """The listening socket's descriptor, for select/selectors (Racket: sync)."""
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SSLListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    :param hostname_or_none: the address to bind, or None for every IPv4 address.
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
    _check_flag(func, "reuse_port", reuse_port)
    host = _check_hostname_arg(func, hostname_or_none)
    handshake_timeout = _check_timeout(func, handshake_timeout)
    ctx = _server_context(func, server_protocol)
    infos: list[Any]
    try:
        if host is None:
            infos = [(socket.AF_INET, socket.SOCK_STREAM, 0, "", ("0.0.0.0", port_no))]
        else:
            infos = socket.getaddrinfo(
                host, port_no, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
    except OSError as exc:
        raise SSLNetworkError(f"{func}: listen failed (cannot resolve {host!r}: {exc})") from exc
    family, kind, proto, _name, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            if not hasattr(socket, "SO_REUSEPORT"):
                from .errors import SSLUnsupportedError

                raise SSLUnsupportedError(f"{func}: SO_REUSEPORT not available here")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(queue_k)
    except OSError as exc:
        sock.close()
        if isinstance(exc, SSLError):
            raise
        raise SSLNetworkError(
            f"{func}: listen failed ({exc.strerror or exc}: {host or '0.0.0.0'}:{port_no})",
            errno=exc.errno,
        ) from exc
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
    func = "ssl_accept"
    lst = _listener(func, listener)
    _binding.require_native(func)
    if lst.closed:
        raise SSLNetworkError(f"{func}: accept failed (listener is closed)")
    try:
        sock, _addr = lst._sock.accept()
    except OSError as exc:
        raise SSLNetworkError(f"{func}: accept failed ({exc})", errno=exc.errno) from exc
    try:
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
        )
    except BaseException:
        sock.close()
        raise


def ssl_accept_enable_break(listener: SSLListener) -> Ports:
    """Like ssl_accept; KeyboardInterrupt can interrupt it. Racket: ssl-accept/enable-break"""
    return ssl_accept(listener)


def ssl_addresses(p_or_listener: object, port_numbers: bool = False) -> tuple[Any, ...]:
    """The local and peer addresses (and ports) of a port or listener.

    Racket: ssl-addresses

    :raises SSLError: the port is not over a TCP socket (``not connected to TCP port``).
    """
    func = "ssl_addresses"
    if isinstance(p_or_listener, SSLListener):
        sock = p_or_listener._sock
        local = sock.getsockname()
        peer: tuple[Any, ...] = ("::", 0) if sock.family == socket.AF_INET6 else ("0.0.0.0", 0)
    elif isinstance(p_or_listener, (SSLInputPort, SSLOutputPort)):
        transport = p_or_listener._sslports_conn.transport
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
    if port_numbers:
        return (local[0], local[1], peer[0], peer[1])
    return (local[0], peer[0])


def _mode_context(func: str, mode: object, context: object, encrypt: object) -> _Context:
    if mode not in ("connect", "accept"):
        raise ValueError(f"{func}: mode must be 'connect' or 'accept', got {mode!r}")
    if context is None:
        if not isinstance(encrypt, str):
            raise TypeError(f"{func}: encrypt must be a protocol name")
        if mode == "connect":
            return ssl_make_client_context(_check_protocol(func, encrypt))
        return ssl_make_server_context(_check_protocol(func, encrypt))
    want = SSLClientContext if mode == "connect" else SSLServerContext
    if not isinstance(context, want):
        raise TypeError(f"{func}: {mode} mode needs a {want.__name__}, got {context!r}")
    return context


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
    :param close_original: close both given streams once both SSL ports are closed.
    :param shutdown_on_close: closing the SSL output port sends close_notify.
    :param error: exception class (or raising callable) for communication errors.
    :param hostname: SNI and the name to verify.
    :param alpn: protocols to offer (connect mode only).
    :param timeout: the ports' timeout. For streams the deadline is checked between
        transport reads: a stream that blocks forever inside ``read`` cannot be interrupted.
    """
    func = "ports_to_ssl_ports"
    ctx, host, wire = wrap_arguments(func, mode, context, encrypt, hostname, alpn)
    _check_flag(func, "close_original", close_original)
    _check_flag(func, "shutdown_on_close", shutdown_on_close)
    _check_flag(func, "strict_eof", strict_eof)
    error = _check_error_arg(func, error)
    timeout = _check_timeout(func, timeout)
    transport = _StreamTransport(input_port, output_port)
    ptr = _new_connection(func, ctx, mode == "accept", -1, host, wire, SSLError)
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
    from .sni import bind_connection

    try:
        with bind_connection(conn):
            conn.handshake(func, timeout, SSLError)
    except BaseException:
        transport.close(False, 0)
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

    The ports take ownership of `sock` (closing both closes it).

    :raises SSLNetworkError: the handshake failed.
    """
    func = "ssl_wrap_socket"
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{func}: expected a socket.socket, got {type(sock).__name__}")
    ctx, host, wire = wrap_arguments(func, mode, context, encrypt, hostname, alpn)
    timeout = _check_timeout(func, timeout)
    _check_flag(func, "strict_eof", strict_eof)
    _binding.require_native(func)
    return _start_on_socket(
        func, sock, ctx, mode == "accept", host, wire, timeout, timeout, strict_eof
    )


def secure_default() -> SSLClientContext:
    """The secure client context (used by the CLI and demo)."""
    return ssl_secure_client_context()
