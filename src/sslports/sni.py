"""Callbacks from C into Python: SNI context switching and the TLS key log.

C reaches Python through CFFI ``extern "Python+C"`` functions (never ``ffi.callback``). They
find their Python objects through two registries keyed by native addresses: connections in
their handshake (`bind_connection`) and live contexts (`register_context`). An exception in
a callback never crosses into C: the SNI callback stores it on the connection, fails the
handshake with a fatal alert, and `ssl_accept` re-raises it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

from . import _binding
from ._timing import BREAKS
from .context import (
    AnyContext,
    SSLServerContext,
    _Context,
    context_of,
    encode_alpn,
    follow_keylog_env,
    keylog_file,
)
from .errors import SSLNetworkError

_log = logging.getLogger("sslports")
_live: dict[int, tuple[Any, str]] = {}  # sp_conn address -> (Connection, the call), in handshake
_contexts: weakref.WeakValueDictionary[int, _Context] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def _address(ptr: Any) -> int:
    return int(_binding.ffi.cast("uintptr_t", ptr))


def register_context(ctx: _Context) -> None:
    """Make `ctx` findable from its SSL_CTX (key log); turn on SSLKEYLOGFILE logging."""
    with _registry_lock:
        _contexts[_address(ctx._ptr)] = ctx
    follow_keylog_env(ctx)


@contextlib.contextmanager
def bind_connection(conn: Any, func: str) -> Iterator[None]:
    """Make `conn` known to the C callbacks for the duration of its handshake, which `func`
    runs (the name a callback's error carries)."""
    key = _address(conn.ptr)
    with _registry_lock:
        _live[key] = (conn, func)
    try:
        yield
    finally:
        with _registry_lock:
            _live.pop(key, None)


def _sni(c: Any, name: Any, switch_to: Any, verify_flags: Any) -> int:
    with _registry_lock:
        conn, func = _live.get(_address(c), (None, ""))
    if conn is None:
        return 0
    try:
        callback = conn.context._sni_callback
        if callback is None:
            return 0
        result = callback(_binding.ffi.string(name).decode("utf-8", "replace"))
        if result is None or result is False:  # False: Racket's #f, `name == x and ctx`
            return 0
        if not isinstance(result, SSLServerContext):
            raise TypeError(
                f"{func}: the server name callback must return an SSLServerContext, None "
                f"or False, not {type(result).__name__}"
            )
        flags, checks_name, _epoch = result._conn_policy
        if checks_name:
            _check_name_given(func, conn.hostname)
        conn.switched_context = result  # keeps the SSL_CTX alive as long as the connection
        switch_to[0] = result._ptr
        verify_flags[0] = flags
        return 1
    except BaseException as exc:  # never let it cross into C
        conn.sni_error = exc
        return -1


def _check_name_given(func: str, hostname: Optional[str]) -> None:
    """A server context that checks its clients' names (ssl_set_verify_hostname) needs one to
    check: as when it is the listener's own (net._new_connection), also when an SNI callback
    switches to it (sp_conn_server_name_check_locked then checks the name)."""
    from .net import _host_info, _uncheckable_name  # (net imports this module)

    if hostname is None or _host_info(hostname)[1] is None:
        raise _uncheckable_name(func, True, hostname, SSLNetworkError)


_keylog_lock = threading.Lock()


def _new_locks_in_child() -> None:
    """fork() copies a lock that another thread holds (every server handshake takes the
    registry's) into a child where nobody will release it: the child gets its own."""
    global _registry_lock, _keylog_lock
    _registry_lock = threading.Lock()
    _keylog_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_in_child)


def _append_keylog_file(path: str, line: bytes) -> None:
    with _keylog_lock:
        # O_NONBLOCK: a FIFO nobody reads (yet) fails the open (ENXIO, logged) instead of
        # blocking the handshake, which runs this, for as long as no reader comes. A FIFO
        # that has one (a live Wireshark) is then written as before, waiting for it.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags, 0o600)
        try:
            if flags & getattr(os, "O_NONBLOCK", 0):
                os.set_blocking(fd, True)
            os.write(fd, line + b"\n")  # one write per line: O_APPEND keeps lines whole
        finally:
            os.close(fd)


def _keylog(ssl: Any, line: Any) -> int:
    """OpenSSL's key log line: to SSLKEYLOGFILE, and to the context's key logger. 1 when a
    request to stop came meanwhile (kept in BREAKS, for the pump call to raise), else 0."""
    try:
        data = bytes(_binding.ffi.string(line))
        path = keylog_file()
        if path:  # first, and on its own: a failing callback must not cost the file its line
            try:
                _append_keylog_file(path, data)
            except OSError:
                _log.exception("sslports: cannot append to SSLKEYLOGFILE")
        with _registry_lock:
            ctx = _contexts.get(_address(_binding.lib.SSL_get_SSL_CTX(ssl)))
        # (read once: another thread's ssl_set_keylogger(ctx, None) may come in between)
        callback = ctx._keylogger if ctx is not None else None
        if callback is not None and BREAKS.exc is None:  # (else: stopping)
            callback(data)
    except (KeyboardInterrupt, SystemExit) as exc:  # a request to stop: the caller raises it
        BREAKS.exc = exc
        return 1
    except BaseException:  # a key logger must never break the handshake
        _log.exception("sslports: key log callback failed")
    return 0


def _lost_in_callback(exc_type: Any, exc: Optional[BaseException], tb: Any) -> int:
    """CFFI's onerror for the key log callback: an exception raised before the callback's own
    `try` (a signal handler's, at its first line: Ctrl-C, or the handler's own exception)
    would be printed and lost. It is the caller's, as if it had come as the pump call
    returned: kept in BREAKS, for the call that drove OpenSSL to raise. 1: the C caller notes
    the break (sp_conn.h BREAKS)."""
    if exc is not None and BREAKS.exc is None:
        BREAKS.exc = exc
    return 1


def _sni_lost(exc_type: Any, exc: Optional[BaseException], tb: Any) -> int:
    """The same for the server name callback: -1 fails the handshake, which raises it."""
    _lost_in_callback(exc_type, exc, tb)
    return -1


if _binding.ffi is not None:
    _binding.ffi.def_extern(name="sp_py_sni", error=-1, onerror=_sni_lost)(_sni)
    _binding.ffi.def_extern(name="sp_py_keylog", error=1, onerror=_lost_in_callback)(_keylog)


def ssl_set_server_name_identification_callback(
    context: SSLServerContext, callback: Callable[[str], Optional[SSLServerContext]]
) -> None:
    """Choose a server context per connection from the client's SNI hostname.

    Racket: ssl-set-server-name-identification-callback!

    :param callback: ``callback(hostname)`` returns a server context to switch to, or None to
        keep this one. Not called without SNI. An exception aborts that handshake with a fatal
        alert and is re-raised from ssl_accept.
    """
    func = "ssl_set_server_name_identification_callback"
    if not isinstance(context, SSLServerContext):
        raise TypeError(f"{func}: expected a server context, got {type(context).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"{func}: callback must be callable")
    ptr = context._mutable(func)
    context._sni_callback = callback
    _binding.lib.sp_ctx_enable_sni(ptr)


def ssl_set_server_alpn(
    server_context: SSLServerContext, protocols: Sequence[bytes], allow_no_match: bool = True
) -> None:
    """The ALPN protocols a server accepts, in its order of preference. Extension.

    :param allow_no_match: with no common protocol, go on without ALPN (True) or abort the
        handshake with a fatal alert (False).
    """
    func = "ssl_set_server_alpn"
    if not isinstance(server_context, SSLServerContext):
        raise TypeError(f"{func}: expected a server context, got {type(server_context).__name__}")
    if not isinstance(allow_no_match, bool):
        raise TypeError(f"{func}: allow_no_match must be a bool")
    wire = encode_alpn(func, protocols)
    with server_context._config(func) as ptr:  # (handshakes read the policy: select_alpn)
        ok = _binding.lib.sp_ctx_set_server_alpn(ptr, wire, len(wire), int(allow_no_match))
    if not ok:
        raise MemoryError(f"{func}: out of memory")


def ssl_set_keylogger(context: AnyContext, callback: Optional[Callable[[bytes], Any]]) -> None:
    """Receive each NSS key-log line (``callback(line: bytes)``), or stop (None). Extension.

    The SSLKEYLOGFILE environment variable, when set, also appends every line to that file
    (unless Python ignores the environment: -E, -I).
    """
    func = "ssl_set_keylogger"
    ctx = context_of(func, context, listener_ok=False)
    if callback is not None and not callable(callback):
        raise TypeError(f"{func}: callback must be callable or None")
    ptr = ctx._mutable(func)
    ctx._keylogger = callback
    on = callback is not None or keylog_file() is not None
    _binding.lib.sp_ctx_enable_keylog(ptr, int(on))
