"""Client and server contexts (API.md sections 1, 2 and 4).

A context wraps one ``SSL_CTX``: trusted roots, credentials, ciphers, protocol range and
verification policy, shared by every connection made from it. Loading happens once per
context, never per connection. Sealing sets a flag every mutator checks.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import ipaddress
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast, overload

from . import _binding
from ._binding import build_error
from ._dhparams import DH4096_PEM
from .errors import NotCopyable, SSLError, SSLUnsupportedError

if TYPE_CHECKING:  # (bound at run time by net.py, which imports this module: bind_names)
    from .net import SSLListener
    from .ports import SSLInputPort, SSLOutputPort

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
VerifySource = Union[PathLike, tuple[str, PathLike]]

TEST_PEM: Path = Path(__file__).resolve().parent / "test.pem"
ssl_dh4096_param_bytes: bytes = DH4096_PEM

SECURE_CIPHERS = "DEFAULT:!aNULL:!eNULL:!LOW:!EXPORT:!SSLv2"
# The lowest OpenSSL security level a context starts with (112-bit keys and signatures: RSA and
# DH of 2048 bits or more, no SHA-1), as Python's ssl; "tls" and "tls11" go down to 0.
MIN_SECURITY_LEVEL = 2

# protocol symbol -> (min version, max version, security level or None), by name of the macro
_VERSION_NAMES = {"tls": "TLS1_VERSION", "tls11": "TLS1_1_VERSION", "tls12": "TLS1_2_VERSION"}
_VERSION_NAMES["tls13"] = "TLS1_3_VERSION"
_ALIASES = {"sslv2-or-v3": "auto"}
_KNOWN_PROTOCOLS = frozenset(
    ("secure", "auto", "sslv2-or-v3", "sslv2", "sslv3", "tls", "tls11", "tls12", "tls13")
)

# The seed's curve names; "prime192v"/"prime256v" are also spelled with a trailing "1".
ECDH_CURVES = [
    "sect163k1",
    "sect163r1",
    "sect163r2",
    "sect193r1",
    "sect193r2",
    "sect233k1",
    "sect233r1",
    "sect239k1",
    "sect283k1",
    "sect283r1",
    "sect409k1",
    "sect409r1",
    "sect571k1",
    "sect571r1",
    "secp160k1",
    "secp160r1",
    "secp160r2",
    "secp192k1",
    "secp224k1",
    "secp224r1",
    "secp256k1",
    "secp384r1",
    "secp521r1",
    "prime192v",
    "prime256v",
    "prime192v1",
    "prime256v1",
]


def fspath_bytes(func: str, path: object, what: str = "path") -> bytes:
    """A str/bytes/PathLike as bytes for OpenSSL, or TypeError naming `func`."""
    if isinstance(path, (str, bytes, os.PathLike)):
        try:
            raw = os.fsencode(path)
        except UnicodeEncodeError as exc:  # (a lone surrogate, say)
            raise ValueError(
                f"{func}: {what} cannot be encoded for the file system ({exc.reason})"
            ) from exc
        if b"\0" in raw:
            raise ValueError(f"{func}: {what} contains a NUL byte")
        return raw
    raise TypeError(
        f"{func}: expected a {what} (str, bytes or os.PathLike), got {type(path).__name__}"
    )


# The largest file a load reads (keys, chains, CA bundles, DH parameters are kilobytes; the
# largest root bundles a few megabytes).
MAX_FILE_BYTES = 64 << 20
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # (a FIFO opens at once instead of waiting for a writer)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def _read_file(func: str, path: object, what: str = "load") -> bytes:
    """The contents of the regular file at `path`, at most MAX_FILE_BYTES.

    Anything else is refused with SSLError before a byte is read: a directory, a FIFO (which
    would block until some writer came), a device (/dev/zero never ends), a socket.
    """
    raw = fspath_bytes(func, path)
    name = os.fsdecode(raw)

    def failed(reason: str, code: Optional[int] = None) -> SSLError:
        return SSLError(f"{func}: {what} failed ({reason}: {name!r})", errno=code)

    try:
        fd = os.open(raw, _OPEN_FLAGS)
    except OSError as exc:
        raise failed(exc.strerror or str(exc), exc.errno) from exc
    try:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise failed("is a directory", errno.EISDIR)
            if not stat.S_ISREG(st.st_mode):
                raise failed("not a regular file")
            too_large = f"larger than {MAX_FILE_BYTES >> 20} MiB"
            if st.st_size > MAX_FILE_BYTES:
                raise failed(too_large, errno.EFBIG)
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_FILE_BYTES:  # (it grew while read)
                    raise failed(too_large, errno.EFBIG)
        except SSLError:
            raise
        except OSError as exc:
            raise failed(exc.strerror or str(exc), exc.errno) from exc
    finally:
        os.close(fd)


def _err_last(err: Any) -> str:
    """The last OpenSSL error an sp_err record holds, or ''."""
    lines = _binding.err_lines(err)
    return lines[-1] if lines else ""


def _path_name(path: object) -> Optional[str]:
    """A path (already checked by fspath_bytes) as a message shows it; None for data."""
    if isinstance(path, (str, bytes, os.PathLike)):
        return os.fsdecode(path)
    return None


def _load_failed(func: str, err: Any, what: str = "load", path: Optional[str] = None) -> SSLError:
    """The SSLError of a failed sp_ctx_use_* / sp_ctx_load_* call (csrc/sp_ctx.h SP_LOAD_*),
    naming the file that held what failed to load (`path`), if any."""
    lib = _binding.lib
    code = int(err.ssl_error)
    detail = {
        lib.SP_LOAD_NOTHING: "no certificate found",
        lib.SP_LOAD_MISMATCH: "private key does not match the certificate",
        lib.SP_LOAD_NOT_RSA: "no RSA private key found",
        lib.SP_LOAD_NO_KEY: "no readable private key found",
        lib.SP_LOAD_BAD_EXTENSIONS: "the certificate's X509v3 extensions cannot be read",
        lib.SP_LOAD_KEY_BROKEN: "the private key is corrupt: its two halves do not match",
    }.get(code)
    if code < 0:
        err.ssl_error = 0  # (not an SSL_get_error kind)
    return build_error(func, what, err, detail=detail, path=path)


def _check_bool(func: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be a bool, got {type(value).__name__}")
    return value


def encode_alpn(func: str, protocols: object) -> bytes:
    """RFC 7301 wire format of a sequence of protocol names (each 1..255 bytes, at most
    65535 bytes in all). A name is any bytes-like object (bytes, bytearray, memoryview, ...)."""
    if type(protocols) is tuple and not protocols:  # the default, once per connection
        return b""
    if isinstance(protocols, (str, bytes, bytearray)) or not isinstance(protocols, Sequence):
        raise TypeError(f"{func}: alpn must be a sequence of bytes")
    wire = bytearray()
    for name in protocols:
        if not isinstance(name, (bytes, bytearray)):
            try:  # (its bytes, whatever its format: len() of a memoryview counts items)
                name = memoryview(name).tobytes()
            except TypeError:
                raise TypeError(
                    f"{func}: each ALPN protocol must be bytes, got {type(name).__name__}"
                ) from None
        if not 1 <= len(name) <= 255:
            raise ValueError(f"{func}: ALPN protocol names must be 1 to 255 bytes long")
        wire.append(len(name))
        wire += name
    if len(wire) > 0xFFFF:  # (ProtocolNameList<2..2^16-1>)
        raise ValueError(f"{func}: the ALPN protocol list must be at most 65535 bytes long")
    return bytes(wire)


class _Context(NotCopyable):
    """What client and server contexts share; see the subclasses."""

    _is_server = False

    def __init__(self, protocol: str = "auto") -> None:
        lib = _binding.require_native(self._maker_name())
        ffi = _binding.ffi
        err = ffi.new("sp_err *")
        ptr = lib.sp_ctx_new(int(self._is_server), err)
        if ptr == ffi.NULL:
            raise build_error(self._maker_name(), "context creation", err)
        self._ptr: Any = ffi.gc(ptr, lib.sp_ctx_free)
        self._protocol = protocol
        self._sealed = False
        self._verify = False
        self._try_verify = False
        self._verify_hostname = False
        self._sni_callback: Optional[Callable[[str], Any]] = None
        self._keylogger: Optional[Callable[[bytes], Any]] = None
        self._has_certificate = False  # set by ssl_load_certificate_chain
        # What a connection reads, once, from the context (kept up to date by _policy_changed):
        # (SP_VERIFY_* flags, check the hostname, the session cache's epoch), one object so that
        # a policy change in another thread is seen whole or not at all.
        self._conn_policy: tuple[int, bool, int] = (self._verify_flags(), False, 0)
        self._apply_protocol(protocol)
        from .sni import register_context

        register_context(self)

    @classmethod
    def _maker_name(cls) -> str:
        return "ssl_make_server_context" if cls._is_server else "ssl_make_client_context"

    def __repr__(self) -> str:
        sealed = ", sealed" if self._sealed else ""
        return f"<{type(self).__name__} {self._protocol}{sealed}>"

    # -- protocol --------------------------------------------------------------------------

    def _apply_protocol(self, protocol: str) -> None:
        lib = _binding.lib
        lib.ERR_clear_error()  # (what fails below is reported from this thread's queue)
        if lib.SSL_CTX_get_security_level(self._ptr) < MIN_SECURITY_LEVEL:
            # Upstream OpenSSL compiles in level 1, and a system configuration may lower it
            # (CipherString = ...@SECLEVEL=1): Python's ssl sets level 2 on every context it
            # makes; so do we (only an explicit "@SECLEVEL=n" in ssl_set_ciphers lowers it).
            lib.SSL_CTX_set_security_level(self._ptr, MIN_SECURITY_LEVEL)
        if protocol in ("auto", "secure"):
            ok = lib.SSL_CTX_set_min_proto_version(self._ptr, lib.TLS1_2_VERSION)
        else:
            version = getattr(lib, _VERSION_NAMES[protocol])
            if protocol in ("tls", "tls11"):
                # TLS 1.0/1.1 sign with SHA-1/MD5, which OpenSSL 3 allows only at level 0.
                lib.SSL_CTX_set_security_level(self._ptr, 0)
                # (being made: no other thread has the context yet, no lock needed)
                if not lib.SSL_CTX_set_cipher_list(self._ptr, b"DEFAULT:@SECLEVEL=0"):
                    lib.ERR_clear_error()  # (then the version's own ciphers decide)
            ok = lib.SSL_CTX_set_min_proto_version(self._ptr, version)
            ok = ok and lib.SSL_CTX_set_max_proto_version(self._ptr, version)
        if not ok:
            raise build_error(self._maker_name(), "protocol selection")

    # -- mutation guard --------------------------------------------------------------------

    def _mutable(self, func: str) -> Any:
        if self._sealed:
            raise SSLError(f"{func}: context is sealed")
        return self._ptr

    @contextlib.contextmanager
    def _config(self, func: str) -> Iterator[Any]:
        """Hold the context's configuration lock (csrc/sp_ctx.c) around OpenSSL calls that
        change it: connections made meanwhile in other threads (SSL_new, handshakes) never see
        it half changed or read what a change frees. The wait is in C, without the GIL."""
        ptr = self._mutable(func)
        lib = _binding.lib
        state = lib.sp_ctx_config_lock(ptr)
        if state == 0:
            raise SSLError(f"{func}: context is sealed")
        if state == lib.SP_CTX_IN_HANDSHAKE:  # (it would wait for its own handshake)
            raise SSLError(f"{func}: cannot change a context from a callback of its own handshake")
        if state == lib.SP_CTX_FORKED:  # (it would wait for a thread this process does not have)
            raise SSLError(
                f"{func}: cannot change a context that another thread was using when this "
                "process forked (seal contexts before forking)"
            )
        if state == lib.SP_CTX_BUSY:  # (their callbacks may be waiting for this one's context)
            raise SSLError(
                f"{func}: cannot change, from a callback of another handshake, a context that "
                "other handshakes kept using for 2 s (their callbacks may be waiting for this "
                "handshake)"
            )
        if state < 0:
            raise MemoryError(f"{func}: cannot lock the context")
        try:
            yield ptr
        finally:
            lib.sp_ctx_config_unlock(ptr)

    def _verify_flags(self) -> int:
        """The policy every new connection starts with (csrc/sp_conn.h SP_VERIFY_*)."""
        flags = 0 if self._is_server else _VERIFY_POST_HANDSHAKE
        if self._verify:
            flags |= _VERIFY_PEER | _VERIFY_REQUIRE
        elif self._try_verify:
            flags |= _VERIFY_PEER
        if self._verify_hostname:
            flags |= _VERIFY_HOSTNAME
        return flags

    def _policy_changed(self) -> None:
        """After a verify setting changed: forget the sessions made under the old policy, then
        publish the new one (`_conn_policy`, read once per connection). A resumed session is
        not verified again, so resuming one made without (or with a failed) verification would
        let a connection skip the checks the new policy asks for. The cache's new epoch goes
        with the policy: a connection set up under the old one (it read the old epoch) can
        neither resume nor file a session in the new epoch (sp_session.c)."""
        epoch = int(_binding.lib.sp_ctx_forget_sessions(self._ptr))  # (server contexts: 0)
        self._conn_policy = (self._verify_flags(), self._verify_hostname, epoch)

    def _identity_changed(self) -> None:
        """After this end's certificate or key, its trusted roots, or the cipher suites it allows
        changed: a resumed session carries what its full handshake saw (the certificate each
        end showed, the verdict on the peer's, the suite), so no session made before is
        resumed, by a client (its cache) or by a server (its session id context,
        csrc/sp_ctx.c)."""
        _binding.lib.sp_ctx_identity_changed(self._ptr)
        self._policy_changed()


# The SP_VERIFY_* bits of csrc/sp_conn.h, read once (no native module: never used).
_VERIFY_PEER, _VERIFY_REQUIRE, _VERIFY_HOSTNAME, _VERIFY_POST_HANDSHAKE = (
    (
        _binding.lib.SP_VERIFY_PEER,
        _binding.lib.SP_VERIFY_REQUIRE,
        _binding.lib.SP_VERIFY_HOSTNAME,
        _binding.lib.SP_VERIFY_POST_HANDSHAKE,
    )
    if _binding.lib is not None
    else (1, 2, 4, 8)
)


class SSLClientContext(_Context):
    """A context for the client side of connections (Racket: ssl-client-context?).

    It also caches one TLS session per (host, port) so that `ssl_connect` resumes: the newest
    a server gave, for the 256 most recently used peers (in C, csrc/sp_session.c).
    """

    _is_server = False

    def __init__(self, protocol: str = "auto") -> None:
        super().__init__(protocol)
        if not _binding.lib.sp_ctx_track_sessions(self._ptr):
            raise MemoryError("ssl_make_client_context: cannot make the session cache")


class SSLServerContext(_Context):
    """A context for the server side of connections (Racket: ssl-server-context?)."""

    _is_server = True

    def __init__(self, protocol: str = "auto") -> None:
        super().__init__(protocol)
        lib = _binding.lib
        sid = b"sslports"
        lib.SSL_CTX_set_session_id_context(self._ptr, sid, len(sid))


def context_of(func: str, value: object, *, listener_ok: bool = True) -> _Context:
    """The context a context procedure acts on: a context, or a listener's context."""
    if isinstance(value, _Context):
        return value
    if listener_ok:
        ctx = getattr(value, "_sslports_context", None)
        if isinstance(ctx, _Context):
            return ctx
    kinds = "a context or listener" if listener_ok else "a client or server context"
    raise TypeError(f"{func}: expected {kinds}, got {type(value).__name__}")


def _check_protocol(func: str, protocol: object) -> str:
    if not isinstance(protocol, str):
        raise TypeError(f"{func}: protocol must be a str, got {type(protocol).__name__}")
    if protocol not in _KNOWN_PROTOCOLS:
        raise ValueError(f"{func}: unknown protocol {protocol!r} ({_protocol_hint(protocol)})")
    protocol = _ALIASES.get(protocol, protocol)
    if protocol in ("sslv2", "sslv3"):
        raise SSLUnsupportedError(f"{func}: requested protocol not supported ({protocol})")
    if protocol in ("tls", "tls11", "tls13") and _binding.lib is None:
        _binding.require_native(func)  # (without it no version is usable: say why)
    if protocol in ("tls", "tls11", "tls13") and protocol not in _usable_versions():
        raise SSLUnsupportedError(f"{func}: requested protocol not supported ({protocol})")
    return protocol


_PROTOCOL_CHOICES = "secure, auto, sslv2-or-v3, sslv2, sslv3, tls, tls11, tls12, tls13"


def _protocol_hint(protocol: str) -> str:
    """The names an unknown protocol name could have been, for its ValueError: the one it
    spells another way ("TLSv1.2", "tls1.3": "tls12", "tls13"), or the list."""
    spelled = "".join(ch for ch in protocol.lower() if ch.isalnum()).replace("tlsv", "tls")
    spelled = {"tls1": "tls", "tls10": "tls", "ssl3": "sslv3", "ssl2": "sslv2"}.get(
        spelled, spelled
    )
    if spelled in _KNOWN_PROTOCOLS:
        return f"did you mean {spelled!r}?"
    return f"expected one of: {_PROTOCOL_CHOICES}"


def _tagged(arg: object) -> object:
    """A tagged argument, ``(tag, value)``, from any two-item sequence whose first item is a
    str (API.md: "Lists in arguments accept any sequence"; Racket writes ``(list 'pem path)``):
    a tuple. Anything else as it is (a path is never such a sequence)."""
    if (
        not isinstance(arg, (tuple, str, bytes, bytearray, memoryview))
        and isinstance(arg, Sequence)
        and len(arg) == 2
        and isinstance(arg[0], str)
    ):
        return (arg[0], arg[1])
    return arg


def _load_credentials(
    func: str, ctx: _Context, private_key: object, certificate_chain: object
) -> None:
    if certificate_chain is not None:
        _load_chain(func, ctx, certificate_chain)
    if private_key is None:
        return
    private_key = _tagged(private_key)
    if not isinstance(private_key, tuple) or len(private_key) != 2:
        raise TypeError(
            f"{func}: private_key must be ('pem', path), ('der', path), ('pem-data', bytes) or None"
        )
    kind, source = private_key
    if kind in ("pem", "der"):
        data = _read_file(func, source)
        der = kind == "der"
        _load_key(func, ctx, data, der=der, rsa=False, password=None, path=_path_name(source))
    elif kind == "pem-data":
        if not isinstance(source, (bytes, bytearray)):
            raise TypeError(f"{func}: ('pem-data', ...) takes bytes")
        _load_key(func, ctx, bytes(source), der=False, rsa=False, password=None)
    else:
        raise ValueError(f"{func}: unknown private key kind {kind!r}")


def ssl_make_client_context(
    protocol: str = "auto",
    *,
    private_key: object = None,
    certificate_chain: object = None,
) -> SSLClientContext:
    """Make a client context.

    Racket: ssl-make-client-context

    :param protocol: ``"secure"``, ``"auto"``, ``"sslv2-or-v3"``, ``"tls"``, ``"tls11"``,
        ``"tls12"`` or ``"tls13"`` (``"sslv2"``/``"sslv3"`` are refused).
    :param private_key: ``("pem", path)``, ``("der", path)``, ``("pem-data", bytes)`` or None.
    :param certificate_chain: a PEM chain path, leaf first, or None.
    :raises SSLUnsupportedError: the protocol is not available in this OpenSSL.
    """
    func = "ssl_make_client_context"
    protocol = _check_protocol(func, protocol)
    if protocol == "secure":
        if private_key is None and certificate_chain is None:
            _binding.require_native(func)  # (its message names this function)
            return ssl_secure_client_context()
        ctx = _configure_secure(SSLClientContext("auto"))
        ctx._protocol = "secure"
        _load_credentials(func, ctx, private_key, certificate_chain)
        ssl_seal_context(ctx)
        return ctx
    ctx = SSLClientContext(protocol)
    _load_credentials(func, ctx, private_key, certificate_chain)
    return ctx


def ssl_make_server_context(
    protocol: str = "auto",
    *,
    private_key: object = None,
    certificate_chain: object = None,
) -> SSLServerContext:
    """Make a server context (``"secure"`` is an alias of ``"auto"`` here).

    Racket: ssl-make-server-context

    :raises SSLUnsupportedError: the protocol is not available in this OpenSSL.
    """
    func = "ssl_make_server_context"
    protocol = _check_protocol(func, protocol)
    ctx = SSLServerContext("auto" if protocol == "secure" else protocol)
    _load_credentials(func, ctx, private_key, certificate_chain)
    return ctx


def _configure_secure(ctx: SSLClientContext) -> SSLClientContext:
    ssl_load_default_verify_sources(ctx)
    ssl_set_verify(ctx, True)
    ssl_set_verify_hostname(ctx, True)
    ssl_set_ciphers(ctx, SECURE_CIPHERS)
    return ctx


_secure_cache: dict[tuple[object, ...], SSLClientContext] = {}
_secure_lock = threading.Lock()
_SECURE_CACHE_SIZE = 8


def _new_lock_in_child() -> None:
    """fork() copies a lock that another thread holds (loading the verify sources takes a
    while) into a child where nobody will release it: the child gets its own (as logging's)."""
    global _secure_lock
    _secure_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


def keylog_file() -> Optional[str]:
    """The file SSLKEYLOGFILE names, or None: unset, empty, or Python told to ignore the
    environment (-E, -I), as ssl.create_default_context does: an environment that a program run
    that way does not trust must not make it write its secrets down."""
    if sys.flags.ignore_environment:
        return None
    return os.environ.get("SSLKEYLOGFILE") or None


def follow_keylog_env(ctx: _Context) -> None:
    """Turn on SSLKEYLOGFILE logging for `ctx` if the variable is set now. A context reads the
    variable when it is made; a context the library shares (the secure one, a protocol name's)
    was made by whoever came first, so it is asked again each time it is handed out, as a new
    context would be. (Only ever on: the file is read again at each line, sni._keylog.)"""
    if keylog_file():
        _binding.lib.sp_ctx_enable_keylog(ctx._ptr, 1)


_shared_clients: dict[str, SSLClientContext] = {}


def shared_client_context(protocol: str) -> SSLClientContext:
    """The client context of a protocol name that ssl_connect and the other connecting entry
    points use (`protocol` checked by _check_protocol): "secure" is ssl_secure_client_context's,
    any other name's is made once and sealed. So a connection by name neither builds an SSL_CTX
    (~0.2 ms, as much CPU as a resumed handshake) nor starts without a session cache:
    ssl_connect(host, port) resumes as a connection with a context of the caller's does. The
    context is sealed (it is no caller's to change) and, apart from its session cache, has
    nothing to share: none of these names verifies."""
    if protocol == "secure":
        return ssl_secure_client_context()
    ctx = _shared_clients.get(protocol)
    if ctx is None:
        ctx = SSLClientContext(protocol)
        ssl_seal_context(ctx)
        ctx = _shared_clients.setdefault(protocol, ctx)  # (a race: both threads get the first)
    follow_keylog_env(ctx)
    return ctx


def ssl_secure_client_context() -> SSLClientContext:
    """The cached, sealed client context that verifies certificates and hostnames.

    Racket: ssl-secure-client-context
    """
    _binding.require_native("ssl_secure_client_context")
    key = tuple(
        (s[0], os.fsdecode(s[1])) if isinstance(s, tuple) else os.fsdecode(s)
        for s in ssl_default_verify_sources()
    )
    with _secure_lock:
        ctx = _secure_cache.get(key)
        if ctx is None:
            ctx = _configure_secure(SSLClientContext("auto"))
            ctx._protocol = "secure"
            ssl_seal_context(ctx)
            # A few entries: threads (or tasks) with their own sources must not evict each
            # other's context on every call.
            while len(_secure_cache) >= _SECURE_CACHE_SIZE:
                del _secure_cache[next(iter(_secure_cache))]
            _secure_cache[key] = ctx
    follow_keylog_env(ctx)
    return ctx


# What the context procedures take (API.md section 4): a context, and for those marked with a
# dagger a listener too (its context). For type checkers and typing.get_type_hints.
AnyContext = Union[SSLClientContext, SSLServerContext]
ContextOrListener = Union[SSLClientContext, SSLServerContext, "SSLListener"]


def is_ssl_client_context(v: object) -> bool:
    """True for client contexts. Racket: ssl-client-context?"""
    return isinstance(v, SSLClientContext)


def is_ssl_server_context(v: object) -> bool:
    """True for server contexts (not listeners). Racket: ssl-server-context?"""
    return isinstance(v, SSLServerContext)


_usable: Optional[list[str]] = None


def _usable_versions() -> list[str]:
    """The version symbols that really complete a handshake here (probed once, in memory)."""
    global _usable
    if _usable is None:
        from .probe import probe_versions

        _usable = probe_versions()
    return _usable


def supported_client_protocols() -> list[str]:
    """Protocols a client can use here. Racket: supported-client-protocols"""
    return ["secure", "auto", *_usable_versions()]


def supported_server_protocols() -> list[str]:
    """Protocols a server can use here. Racket: supported-server-protocols"""
    return ["secure", "auto", *_usable_versions()]


def ssl_max_client_protocol() -> Optional[str]:
    """The newest protocol a client can use here. Racket: ssl-max-client-protocol"""
    versions = _usable_versions()
    return versions[-1] if versions else None


def ssl_max_server_protocol() -> Optional[str]:
    """The newest protocol a server can use here. Racket: ssl-max-server-protocol"""
    return ssl_max_client_protocol()


# -- verify sources ------------------------------------------------------------------------

_default_sources: contextvars.ContextVar[Optional[list[VerifySource]]] = contextvars.ContextVar(
    "ssl_default_verify_sources", default=None
)
_computed_sources: Optional[list[VerifySource]] = None


def _platform_default_sources() -> list[VerifySource]:
    if sys.platform == "win32":
        return [("win32-store", "ROOT")]
    if sys.platform == "darwin":
        return [("macosx-keychain", "/System/Library/Keychains/SystemRootCertificates.keychain")]
    lib = _binding.lib
    ffi = _binding.ffi
    # Each variable replaces only its own default, as OpenSSL reads them and as in Racket:
    # setting SSL_CERT_DIR alone keeps the default file, SSL_CERT_FILE alone the directory.
    env_file = os.environ.get("SSL_CERT_FILE")
    env_dir = os.environ.get("SSL_CERT_DIR")
    if lib is not None:
        if env_file is None:
            env_file = os.fsdecode(ffi.string(lib.X509_get_default_cert_file()))
        if env_dir is None:
            env_dir = os.fsdecode(ffi.string(lib.X509_get_default_cert_dir()))
    files: list[VerifySource] = [f for f in (env_file or "").split(":") if f]
    dirs: list[VerifySource] = [("directory", d) for d in (env_dir or "").split(":") if d]
    return files + dirs


@overload
def ssl_default_verify_sources() -> list[VerifySource]: ...
@overload
def ssl_default_verify_sources(srcs: Sequence[VerifySource], /) -> None: ...
def ssl_default_verify_sources(*args: Sequence[VerifySource]) -> Optional[list[VerifySource]]:
    """Get (no argument) or set (one argument) the default verification sources.

    Racket: ssl-default-verify-sources (a parameter; here backed by a ContextVar, so a thread
    or asyncio task may override it).
    """
    global _computed_sources
    if len(args) > 1:
        raise TypeError("ssl_default_verify_sources: takes at most one argument")
    if args:
        srcs = args[0]
        if isinstance(srcs, (str, bytes)) or not isinstance(srcs, Sequence):
            raise TypeError("ssl_default_verify_sources: expected a sequence of sources")
        kept = [_tagged(s) for s in srcs]  # (once: what is checked is what is kept)
        for s in kept:
            _check_source("ssl_default_verify_sources", s)
        _default_sources.set(cast("list[VerifySource]", kept))  # (checked just above)
        return None
    value = _default_sources.get()
    if value is None:
        if _computed_sources is None:
            _computed_sources = _platform_default_sources()
        value = _computed_sources
    return list(value)


def _check_source(func: str, src: object) -> None:
    if isinstance(src, tuple):
        if len(src) != 2 or src[0] not in ("directory", "win32-store", "macosx-keychain"):
            raise ValueError(f"{func}: unknown verify source {src!r}")
        if src[0] == "win32-store":
            if not isinstance(src[1], str):
                raise TypeError(f"{func}: a win32-store name must be a str")
        else:
            fspath_bytes(func, src[1])
        return
    fspath_bytes(func, src, "verify source")


def ssl_load_verify_source(context: AnyContext, src: object, *, try_: bool = False) -> None:
    """Load trusted roots from `src` into `context`.

    Racket: ssl-load-verify-source!

    :param src: a PEM file path, ``("directory", path)``, ``("win32-store", name)`` or
        ``("macosx-keychain", path)``.
    :param try_: ignore a failing load.
    :raises SSLUnsupportedError: the source kind does not exist on this platform.
    :raises SSLError: the load failed (unless ``try_``).
    """
    func = "ssl_load_verify_source"
    ctx = context_of(func, context, listener_ok=False)
    _check_bool(func, "try_", try_)
    src = _tagged(src)
    _check_source(func, src)
    ptr = ctx._mutable(func)
    lib = _binding.lib
    lib.ERR_clear_error()
    if not isinstance(src, tuple):  # a PEM file of roots (and CRLs)
        try:
            _load_verify_file(func, ctx, src)
        except SSLError:
            if not try_:
                raise
        return
    try:
        _load_verify_tagged(func, ctx, ptr, src, try_)
    finally:
        ctx._identity_changed()  # (also after a failure: a directory or store may load part)


def _load_verify_tagged(
    func: str, ctx: _Context, ptr: Any, src: tuple[str, Any], try_: bool
) -> None:
    """Load a ("directory" | "win32-store" | "macosx-keychain", ...) source's roots."""
    lib = _binding.lib
    if src[0] == "win32-store":
        if sys.platform != "win32":
            raise SSLUnsupportedError(f"{func}: win32-store is only available on Windows")
        ok = _load_win32_store(ctx, src[1])
    elif src[0] == "macosx-keychain":
        if sys.platform != "darwin":
            raise SSLUnsupportedError(f"{func}: macosx-keychain is only available on macOS")
        ok = _load_macos_keychain(ctx, src[1])
    else:
        # (absolute: OpenSSL reads the directory at each lookup, whatever the working
        # directory then is; Racket completes the path when it is given, too)
        path = fspath_bytes(func, src[1])
        if path and not os.path.isabs(path):  # (not abspath: it folds "link/.." by its text)
            path = os.path.join(os.getcwdb(), path)
        if not os.path.isdir(path):
            if not try_:
                raise _not_a_directory(func, path)
            return
        ok = bool(lib.sp_ctx_add_verify_dir(ptr, path))
    if not ok:
        exc = build_error(func, "load", detail=None)
        if not exc.openssl_errors:
            exc = SSLError(f"{func}: load failed (cannot read {src!r})")
        if not try_:
            raise exc
    lib.ERR_clear_error()


def _not_a_directory(func: str, path: bytes) -> SSLError:
    """Why ("directory", path) cannot be a verify source: what the path is instead."""
    name = os.fsdecode(path)
    try:
        os.stat(path)
    except OSError as exc:
        return SSLError(f"{func}: load failed ({exc.strerror}: {name!r})", errno=exc.errno)
    return SSLError(f"{func}: load failed (not a directory: {name!r})", errno=errno.ENOTDIR)


def _load_verify_file(func: str, ctx: _Context, path: object) -> None:
    """Trust every certificate (and CRL) of a PEM file: all of them, or none and SSLError."""
    pem = _read_file(func, path)
    err = _binding.ffi.new("sp_err *")
    # (no configuration lock: the X509_STORE has its own, as for the other verify sources,
    # so that an SNI callback may still add roots to the context it runs for)
    ok = _binding.lib.sp_ctx_load_verify_pem(ctx._mutable(func), pem, len(pem), err)
    if ok:
        ctx._identity_changed()
    else:
        name = _path_name(path)
        if err.ssl_error == _binding.lib.SP_LOAD_NOTHING:
            err.ssl_error = 0
            raise build_error(func, "load", err, detail="no certificate or CRL found", path=name)
        raise build_error(func, "load", err, path=name)


def _add_pem_roots(ctx: _Context, pem: bytes) -> bool:
    lib = _binding.lib
    return bool(pem) and bool(lib.sp_ctx_add_pem_roots(ctx._ptr, pem, len(pem)))


def _load_macos_keychain(ctx: _Context, path: object) -> bool:
    cmd = ["/usr/bin/security", "find-certificate", "-a", "-p", os.fsdecode(fspath_bytes("", path))]
    try:
        pem = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return _add_pem_roots(ctx, pem)


def _load_win32_store(ctx: _Context, name: str) -> bool:  # pragma: no cover - Windows only
    import base64
    import ssl as pyssl

    try:
        certs = pyssl.enum_certificates(name)  # type: ignore[attr-defined]
    except OSError:
        return False
    # Only what Windows trusts for the purpose this end verifies (a server's roots check
    # clients), as Python's ssl.SSLContext.load_default_certs takes them: trust is True (any
    # purpose) or a set of extended key usage OIDs.
    purpose = _CLIENT_AUTH_OID if isinstance(ctx, SSLServerContext) else _SERVER_AUTH_OID
    pem = b"".join(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
        for der, encoding, trust in certs
        if encoding == "x509_asn" and (trust is True or purpose in trust)
    )
    return _add_pem_roots(ctx, pem)


_SERVER_AUTH_OID = "1.3.6.1.5.5.7.3.1"
_CLIENT_AUTH_OID = "1.3.6.1.5.5.7.3.2"


def ssl_load_default_verify_sources(context: AnyContext) -> None:
    """Load every default verify source, ignoring failures.

    Racket: ssl-load-default-verify-sources!
    """
    func = "ssl_load_default_verify_sources"
    ctx = context_of(func, context, listener_ok=False)
    ctx._mutable(func)
    for src in ssl_default_verify_sources() or []:
        with contextlib.suppress(SSLUnsupportedError):
            ssl_load_verify_source(cast("AnyContext", ctx), src, try_=True)


def ssl_load_verify_root_certificates(
    context_or_listener: ContextOrListener, pathname: object
) -> None:
    """Load a PEM file of trusted roots (deprecated form of ssl_load_verify_source).

    Racket: ssl-load-verify-root-certificates!
    """
    func = "ssl_load_verify_root_certificates"
    ctx = context_of(func, context_or_listener)
    fspath_bytes(func, pathname)
    ctx._mutable(func)
    _load_verify_file(func, ctx, pathname)


# -- ciphers, sealing ------------------------------------------------------------------------


def _set_cipher_spec(
    func: str, context: object, spec: object, name: str, setter: str, what: str
) -> None:
    """Hand an OpenSSL cipher string to `setter` (sp_ctx_set_cipher_list, which changes
    nothing when it rejects the spec, / SSL_CTX_set_ciphersuites)."""
    ctx = context_of(func, context, listener_ok=False)
    if not isinstance(spec, str):
        raise TypeError(f"{func}: {name} must be a str")
    try:
        raw = spec.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{func}: {name} cannot be encoded as UTF-8") from None
    lib = _binding.lib
    with ctx._config(func) as ptr:
        lib.ERR_clear_error()
        if b"\0" in raw or not getattr(lib, setter)(ptr, raw):
            errors = build_error(func, what).openssl_errors  # (drains the queue)
            if b"\0" in raw:
                reason = "contains a NUL character"
            else:
                reason = errors[-1] if errors else "OpenSSL rejects it"
            hint = _cipher_hint(setter, spec)
            raise SSLError(
                f"{func}: {what} failed ({reason}: {spec!r}{hint})", openssl_errors=errors
            )
    # A session keeps the suite it was made with: a server would go on resuming (TLS 1.2) a
    # suite it no longer allows, and a client would offer sessions whose suite it no longer
    # offers (a TLS 1.2 server then refuses the connection with an alert).
    ctx._identity_changed()


def _cipher_hint(setter: str, spec: str) -> str:
    """A rejected cipher spec that names suites of the other kind: which call takes them."""
    tls13 = any(name.startswith("TLS_") for name in spec.replace(",", ":").split(":"))
    if setter == "sp_ctx_set_cipher_list" and tls13:
        return "; TLS 1.3 suites (TLS_...) are set with ssl_set_ciphersuites"
    if setter == "SSL_CTX_set_ciphersuites" and not tls13:
        return "; TLS <= 1.2 suites are set with ssl_set_ciphers"
    return ""


def ssl_set_ciphers(context: AnyContext, cipher_spec: str) -> None:
    """Choose the TLS <= 1.2 cipher suites (``openssl ciphers`` syntax).

    Racket: ssl-set-ciphers!

    :raises SSLError: OpenSSL rejects the spec.
    """
    _set_cipher_spec(
        "ssl_set_ciphers",
        context,
        cipher_spec,
        "cipher_spec",
        "sp_ctx_set_cipher_list",
        "cipher selection",
    )


def ssl_set_ciphersuites(context: AnyContext, spec: str) -> None:
    """Choose the TLS 1.3 cipher suites (``TLS_AES_128_GCM_SHA256:...``). Extension.

    :raises SSLError: OpenSSL rejects the spec.
    """
    _set_cipher_spec(
        "ssl_set_ciphersuites",
        context,
        spec,
        "spec",
        "SSL_CTX_set_ciphersuites",
        "cipher suite selection",
    )


def ssl_seal_context(context: AnyContext) -> None:
    """Seal `context`: every later change raises. Racket: ssl-seal-context!"""
    ctx = context_of("ssl_seal_context", context, listener_ok=False)
    ctx._sealed = True
    _binding.lib.sp_ctx_seal(ctx._ptr)  # (waits for a change in progress in another thread)


# -- credentials ------------------------------------------------------------------------------


def ssl_load_certificate_chain(context_or_listener: ContextOrListener, pathname: object) -> None:
    """Load a PEM certificate chain, leaf first, as this end's identity.

    Racket: ssl-load-certificate-chain!

    :raises SSLError: the file is missing or holds no usable certificate.
    """
    func = "ssl_load_certificate_chain"
    _load_chain(func, context_of(func, context_or_listener), pathname)


def _load_chain(func: str, ctx: _Context, pathname: object) -> None:
    ctx._mutable(func)
    pem = _read_file(func, pathname)
    err = _binding.ffi.new("sp_err *")
    with ctx._config(func) as ptr:
        ok = _binding.lib.sp_ctx_use_chain_pem(ptr, pem, len(pem), err)
    if not ok:
        raise _load_failed(func, err, path=_path_name(pathname))
    ctx._has_certificate = True
    ctx._identity_changed()


def _load_key(
    func: str,
    ctx: _Context,
    data: bytes,
    *,
    der: bool,
    rsa: bool,
    password: Optional[bytes],
    path: Optional[str] = None,
) -> None:
    """Use the key in `data` (read from the file `path`, or given as data: None)."""
    lib = _binding.lib
    ffi = _binding.ffi
    ctx._mutable(func)
    err = ffi.new("sp_err *")
    pw = ffi.NULL if password is None else password
    key = lib.sp_load_private_key(data, len(data), int(der), int(rsa), pw, err)
    if key == ffi.NULL:
        code = int(err.ssl_error)
        if code in (lib.SP_LOAD_ENCRYPTED, lib.SP_LOAD_BAD_PASSWORD) or (
            not der and code == 0 and b"ENCRYPTED" in data
        ):
            # (OpenSSL's words for it: "bad decrypt", "pkcs12 cipherfinal error", ...)
            err.ssl_error = 0
            if password is not None:
                detail = "wrong password"
            else:
                detail = "the key is encrypted and no password was given"
            last = _err_last(err)
            detail = f"{detail} ({last})" if last else detail
            raise build_error(func, "load", err, detail=detail, path=path)
        wrong = _wrong_encoding(data, der)
        if wrong:
            err.ssl_error = 0
            last = _err_last(err)
            detail = f"{wrong} ({last})" if last else wrong
            raise build_error(func, "load", err, detail=detail, path=path)
        raise _load_failed(func, err, path=path)
    try:
        # A key must match the certificate of its type; once a certificate is loaded, there
        # must be one of its type (OpenSSL keeps one identity per key type and would take an
        # EC key next to an RSA certificate silently). A failure changes nothing.
        with ctx._config(func) as ptr:
            ok = lib.sp_ctx_use_private_key(ptr, key, int(ctx._has_certificate), err)
        if not ok:
            raise _load_failed(func, err, path=path)
    finally:
        lib.EVP_PKEY_free(key)
    ctx._identity_changed()


def _wrong_encoding(data: bytes, der: bool) -> Optional[str]:
    """Why a key did not load when it is in the other encoding than the one asked for."""
    if der and data.lstrip().startswith(b"-----BEGIN"):
        return "no DER private key found: the data is PEM, which asn1=False reads"
    if not der and data[:1] == b"\x30" and b"-----BEGIN" not in data:
        return "no PEM private key found: the data looks like DER, which asn1=True reads"
    return None


def ssl_load_private_key(
    context_or_listener: ContextOrListener,
    pathname: object,
    rsa: bool = True,
    asn1: bool = False,
    *,
    password: Union[str, bytes, None] = None,
) -> None:
    """Load this end's private key.

    Racket: ssl-load-private-key!

    :param pathname: a path, or ``("data", bytes)`` (extension).
    :param rsa: take the first RSA key (other key types before it are skipped).
    :param asn1: the data is DER instead of PEM.
    :param password: for an encrypted key; there is never a TTY prompt.
    :raises SSLError: unreadable, malformed, wrong password, or not matching the certificate.
    """
    func = "ssl_load_private_key"
    ctx = context_of(func, context_or_listener)
    rsa = _check_bool(func, "rsa", rsa)
    asn1 = _check_bool(func, "asn1", asn1)
    if password is not None and not isinstance(password, (str, bytes)):
        raise TypeError(f"{func}: password must be str or bytes")
    try:
        pw = password.encode() if isinstance(password, str) else password
    except UnicodeEncodeError as exc:
        raise ValueError(f"{func}: password cannot be encoded as UTF-8 ({exc.reason})") from None
    if pw is not None and b"\0" in pw:
        raise ValueError(f"{func}: password contains a NUL byte")
    ctx._mutable(func)  # (before the file is read: a sealed context says so, whatever the path)
    pathname = _tagged(pathname)
    if isinstance(pathname, tuple) and len(pathname) == 2 and pathname[0] == "data":
        if not isinstance(pathname[1], (bytes, bytearray)):
            raise TypeError(f"{func}: ('data', ...) takes bytes")
        data = bytes(pathname[1])
    else:
        data = _read_file(func, pathname)
    path = None if isinstance(pathname, tuple) else _path_name(pathname)
    _load_key(func, ctx, data, der=asn1, rsa=rsa, password=pw, path=path)


def ssl_load_suggested_certificate_authorities(
    context_or_listener: ContextOrListener, pathname: object
) -> None:
    """Set the CA names a server sends when it asks for a client certificate.

    Racket: ssl-load-suggested-certificate-authorities!
    """
    func = "ssl_load_suggested_certificate_authorities"
    ctx = context_of(func, context_or_listener)
    ctx._mutable(func)
    pem = _read_file(func, pathname)
    err = _binding.ffi.new("sp_err *")
    with ctx._config(func) as ptr:
        ok = _binding.lib.sp_ctx_load_client_ca_pem(ptr, pem, len(pem), err)
    if not ok:
        raise _load_failed(func, err, path=_path_name(pathname))


# -- key exchange ----------------------------------------------------------------------------


def ssl_server_context_enable_dhe(context: SSLServerContext, dh_param: object = DH4096_PEM) -> None:
    """Enable finite-field DHE suites (TLS <= 1.2) with the given parameters.

    Racket: ssl-server-context-enable-dhe!

    :param dh_param: a path to a PEM file of PKCS#3 DH parameters, or its contents as
        bytes (bytes that hold no PEM and no NUL byte are a path, as elsewhere).
    """
    func = "ssl_server_context_enable_dhe"
    if not isinstance(context, SSLServerContext):
        raise TypeError(f"{func}: expected a server context, got {type(context).__name__}")
    context._mutable(func)  # (before the file is read: a sealed context says so)
    path = None
    if isinstance(dh_param, bytearray) or (
        # (bytes are a path too, as elsewhere, unless they are PEM, or could not be a path:
        # DER bytes then read as "no DH parameters found", not as a path with a NUL byte)
        isinstance(dh_param, bytes) and (b"-----BEGIN" in dh_param or b"\0" in dh_param)
    ):
        pem = bytes(dh_param)
    else:
        pem = _read_file(func, dh_param)
        path = _path_name(dh_param)
    err = _binding.ffi.new("sp_err *")
    with context._config(func) as ptr:
        ok = _binding.lib.sp_ctx_set_dh_pem(ptr, pem, len(pem), err)
    if not ok:
        detail = None
        if b"X9.42 DH PARAMETERS-----" in pem and not _err_last(err):
            # (OpenSSL 3's `openssl dhparam -dsaparam` writes these)
            detail = "X9.42 DH parameters; TLS takes PKCS#3 ones ('openssl dhparam' writes them)"
        elif b"DH PARAMETERS-----" not in pem:
            last = _err_last(err)
            detail = f"no DH parameters found ({last})" if last else "no DH parameters found"
        raise build_error(func, "loading DH parameters", err, detail=detail, path=path)


_HYBRID_GROUP = "X25519MLKEM768"  # OpenSSL 3.5's default first group (security.md)


def ssl_server_context_enable_ecdh(
    context: SSLServerContext, curve_name: str = "secp521r1"
) -> None:
    """Enable ECDHE with `curve_name` as the server's preferred group.

    Racket: ssl-server-context-enable-ecdh!

    :raises ValueError: not one of the seed's curve names.
    :raises SSLUnsupportedError: this OpenSSL lacks the curve.
    """
    func = "ssl_server_context_enable_ecdh"
    if not isinstance(context, SSLServerContext):
        raise TypeError(f"{func}: expected a server context, got {type(context).__name__}")
    if not isinstance(curve_name, str):
        raise TypeError(f"{func}: curve_name must be a str")
    if curve_name not in ECDH_CURVES:
        raise ValueError(f"{func}: unknown curve {curve_name!r}")
    name = curve_name + "1" if curve_name in ("prime192v", "prime256v") else curve_name
    lib = _binding.lib
    # Preferred first; keep the usual groups after it so other clients still connect, the
    # post-quantum hybrid among them where this OpenSSL has it (3.5 and later, the wheels'):
    # without it, a 3.5 client that sends its X25519MLKEM768 share would get X25519.
    # (OpenSSL refuses a list naming one group twice: prime256v1 is P-256, secp384r1 P-384,
    # and a list naming a group it does not know)
    same = {"prime256v1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(name, name)
    usual = [g for g in ("X25519", "P-256", "P-384") if g != same]
    lists = [[name, _HYBRID_GROUP, *usual], [name, *usual], [name]]
    with context._config(func) as ptr:
        ok = 0
        for groups in lists:
            lib.ERR_clear_error()
            ok = lib.sp_ctx_set_groups(ptr, ":".join(groups).encode())
            if ok:
                break
        lib.ERR_clear_error()
    if not ok:
        raise SSLUnsupportedError(f"{func}: curve {curve_name!r} not supported by this OpenSSL")
        # (the list was refused, the curve alone was not: the server offers that one)


# -- verification policy on contexts (ports are handled in verify.py) -------------------------


def set_context_verify(func: str, ctx: _Context, on: bool, try_only: bool) -> None:
    """Set a context's peer verification policy (shared by ssl_set_verify / ssl_try_verify)."""
    on = _check_bool(func, "on", on)
    ctx._mutable(func)
    if try_only:  # (off: no verification at all, as Racket's ssl-try-verify! #f)
        ctx._try_verify = on
        ctx._verify = False
    else:
        ctx._verify = on
        ctx._try_verify = False
    ctx._policy_changed()


def ssl_set_verify(clp: Union[ContextOrListener, SSLInputPort, SSLOutputPort], on: bool) -> None:
    """Require (or stop requiring) a valid peer certificate.

    Racket: ssl-set-verify!

    :param clp: a context, a listener, or a port (verifies now; see verify.py).
    """
    from .verify import verify_port_now

    if hasattr(clp, "_sslports_conn"):
        verify_port_now("ssl_set_verify", clp, _check_bool("ssl_set_verify", "on", on), False)
        return
    set_context_verify("ssl_set_verify", context_of("ssl_set_verify", clp), on, False)


def ssl_try_verify(clp: Union[ContextOrListener, SSLInputPort, SSLOutputPort], on: bool) -> None:
    """Ask for a peer certificate but let the connection go on without a valid one.

    Racket: ssl-try-verify!
    """
    from .verify import verify_port_now

    if hasattr(clp, "_sslports_conn"):
        verify_port_now("ssl_try_verify", clp, _check_bool("ssl_try_verify", "on", on), True)
        return
    set_context_verify("ssl_try_verify", context_of("ssl_try_verify", clp), on, True)


def ssl_set_verify_hostname(ctx: AnyContext, on: bool) -> None:
    """Check the peer's certificate against the hostname. Racket: ssl-set-verify-hostname!"""
    func = "ssl_set_verify_hostname"
    context = context_of(func, ctx, listener_ok=False)  # (not a † procedure: API.md section 4)
    on = _check_bool(func, "on", on)
    context._mutable(func)
    context._verify_hostname = on
    context._policy_changed()


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address literal (an optional IPv6 zone is ignored)."""
    return literal_family(host) != 0


# An IPv6 zone ("fe80::1%eth0"): RFC 6874's characters. IPv4 has none.
_ZONE = re.compile(r"[A-Za-z0-9._~-]+")


@functools.lru_cache(maxsize=1024)
def literal_family(host: str) -> int:
    """``AF_INET`` or ``AF_INET6`` for an address literal (an IPv6 zone is ignored), else 0.

    Not a literal: an IPv4 address with a zone, or an IPv6 one whose zone holds other
    characters ("127.0.0.1%.evil.example" is checked as the DNS name it is, and matches no
    IP SAN). Cached: a client names the same few hosts over and over, once per connection.
    """
    address, percent, zone = host.partition("%")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return 0
    if percent and (ip.version == 4 or not _ZONE.fullmatch(zone)):
        return 0
    return int(socket.AF_INET if ip.version == 4 else socket.AF_INET6)
