"""Peer verification, names, channel binding and connection facts (API.md section 5).

Every function takes either port of a connection. Queries go to C, which takes the
connection lock, so they are safe while another thread reads or writes.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import _binding
from ._binding import build_error
from ._timing import _Deadline
from .context import is_ip_literal
from .errors import SSLError, SSLTimeoutError
from .net import _reference_name
from .ports import Connection, SSLPort, connection_of

_VERSION_SYMBOLS = {0x0301: "tls", 0x0302: "tls11", 0x0303: "tls12", 0x0304: "tls13"}
_VERSION_SYMBOLS[0x0300] = "sslv3"


def _conn(func: str, p: object) -> Connection:
    conn = connection_of(func, p)
    if conn.closed:
        raise SSLError(f"{func}: connection is closed")
    return conn


# -- verification -------------------------------------------------------------------------


def verify_port_now(func: str, port: Any, on: bool, try_only: bool) -> None:
    """Verify the peer of an established connection now.

    A server asks the client for a certificate: TLS 1.3 post-handshake authentication, or a
    TLS 1.2 renegotiation. Application data that arrives meanwhile is kept for the input
    port. A client checks the certificate the server presented during the handshake. A
    post-handshake message from the client that is half received (a TLS 1.3 KeyUpdate in
    several records), which OpenSSL must finish first, is read to its end before the request.
    A server's exchange is bounded by the timeout of `port` (the port given, input or output).

    A TLS 1.2 client that refuses to renegotiate answers with a no_renegotiation alert, which
    OpenSSL turns into a fatal handshake_failure: then even `try_only` raises, as the
    connection is gone.
    """
    conn = _conn(func, port)
    if getattr(conn, "is_async", False):
        raise SSLError(f"{func}: not supported on asyncio connections (set it on the context)")
    lib = _binding.lib
    flags = lib.sp_conn_get_verify(conn.ptr) & ~(lib.SP_VERIFY_PEER | lib.SP_VERIFY_REQUIRE)
    if on:
        flags |= lib.SP_VERIFY_PEER | (0 if try_only else lib.SP_VERIFY_REQUIRE)
    if not lib.SSL_is_server(lib.sp_conn_ssl(conn.ptr)):
        lib.sp_conn_set_verify(conn.ptr, flags)
        if on and not try_only and not lib.sp_peer_verified(conn.ptr):
            raise _not_verified(func, conn)
        return
    if not on:
        lib.sp_conn_set_verify(conn.ptr, flags)
        return
    deadline = _Deadline(port.gettimeout())
    scratch = bytearray(65536)
    if lib.sp_reauth_pending(conn.ptr):
        # An earlier call's request (it timed out) is still unanswered, and a second would be
        # refused (TLS 1.3: "request sent") or sent in the middle of the renegotiation (TLS
        # 1.2): wait for the answer to the first, under this call's policy.
        lib.sp_conn_set_verify(conn.ptr, flags)
    elif not _send_request(func, conn, flags, try_only, scratch, deadline):
        return
    while lib.sp_reauth_pending(conn.ptr):
        _pump_for_reverify(func, conn, scratch, deadline, lib.sp_reauth_pending)
    _surface_deferred_error(func, conn, scratch)
    if not try_only and not lib.sp_peer_verified(conn.ptr):
        raise _not_verified(func, conn)


def _send_request(
    func: str,
    conn: Connection,
    flags: int,
    try_only: bool,
    scratch: bytearray,
    deadline: _Deadline,
) -> bool:
    """Ask the client for its certificate (and set the policy `flags`); False: it cannot be
    asked (a TLS 1.3 client without post-handshake authentication, to ssl_try_verify)."""
    lib = _binding.lib
    err = _binding.ffi.new("sp_err *")
    while True:
        status = lib.sp_request_reauth(conn.ptr, flags, err)
        if status != lib.SP_REAUTH_LATER:
            break
        # The rest of a post-handshake message from the client (a KeyUpdate in several
        # records) is still to come: read it, then ask.
        _pump_for_reverify(func, conn, scratch, deadline, lib.sp_reauth_blocked)
    if not status:
        no_pha = any(_NO_PHA in line for line in _binding.err_lines(err))
        exc = build_error(func, "", err, hint=_NO_PHA_HINT if no_pha else None)
        if try_only and no_pha:
            # A TLS 1.3 client that did not offer post-handshake authentication cannot be
            # asked: to ssl_try_verify that is a missing certificate. Nothing was sent, the
            # connection goes on as it was, and ssl_peer_verified tells.
            return False
        raise exc
    # The request is sent as a port's write is (the last close waits for it, then closes the
    # fd), within the deadline: a write in another thread may wait for a peer that does not
    # read. The request stays queued (sp_reauth_pending): that write sends it, and a call
    # made again waits for the answer.
    lock = conn.write_lock
    held_before = lock._is_owned()
    try:
        if not lock.acquire(timeout=-1 if deadline.at is None else deadline.remaining()):
            raise SSLTimeoutError(f"{func}: failed (timed out)")
        conn.write(func, memoryview(b""), deadline)  # sends the request
    finally:
        lock.release_taken(held_before)
    return True


def _not_verified(func: str, conn: Connection) -> SSLError:
    """The error of a peer that did not verify: why, when its certificate failed a step."""
    found = _binding.verify_failure(conn.ptr, conn.hostname)
    if found is None:  # (no certificate)
        return SSLError(f"{func}: failed (peer certificate did not verify)")
    code, text = found
    return SSLError(
        f"{func}: failed (peer certificate did not verify: {text})",
        verify_code=code,
        verify_message=text,
    )


def _pump_for_reverify(
    func: str,
    conn: Connection,
    scratch: bytearray,
    deadline: _Deadline,
    waiting: Callable[[Any], int],
) -> None:
    """One pump step while re-verifying (pump_once keeps application data for the reader)
    while `waiting(conn.ptr)`. The deadline is checked first: a client that writes without
    pause gives every step data to read, and a step meets the deadline only when it reads
    nothing."""
    try:
        if deadline.expired():
            raise SSLTimeoutError(f"{func}: timed out")
        n = conn.pump_once(func, memoryview(scratch), deadline, waiting)
    except SSLError as exc:
        raise _reverify_failed(func, exc) from exc
    if n < 0:
        raise SSLError(f"{func}: failed (connection closed during verification)")


def _reverify_failed(func: str, exc: SSLError) -> SSLError:
    cls = SSLTimeoutError if isinstance(exc, TimeoutError) else SSLError  # (API.md: a timeout)
    message = exc.message  # "read: read failed (reason)", or "ssl_set_verify: timed out"
    reason = message.split("(", 1)[1].rstrip(")") if "(" in message else message.split(": ")[-1]
    return cls(
        f"{func}: failed ({reason})",
        openssl_errors=exc.openssl_errors,
        verify_code=exc.verify_code,
        verify_message=exc.verify_message,
    )


def _surface_deferred_error(func: str, conn: Connection, scratch: bytearray) -> None:
    """A pump call that reads data and then fails hands over the data and reports the
    (sticky) failure on the next call: e.g. the client's data followed by its refusal to
    renegotiate. Make that next call now, without waiting, so the failure is this call's."""
    lib = _binding.lib
    ffi = _binding.ffi
    err = ffi.new("sp_err *")
    got = ffi.new("size_t *")
    buf = ffi.from_buffer("unsigned char[]", scratch, require_writable=True)
    while True:
        if conn.closed:
            raise ValueError("I/O operation on closed SSL connection")
        held_before = conn.read_lock._is_owned()
        try:
            if not conn.read_lock.acquire(False):
                return  # a read in another thread has it: that read reports the failure
            got[0] = 0
            try:
                status = lib.sp_read(conn.ptr, buf, len(scratch), 0, got, 0, err)
            finally:  # (also when a signal handler's exception comes as the call returns;
                # inline, no call: a call's start can run a signal handler too)
                if conn.kept is not None:
                    conn.kept += scratch[: got[0]]
        finally:
            conn.read_lock.release_taken(held_before)
        if status == lib.SP_ERROR:
            raise _reverify_failed(func, build_error(func, "read", err))
        if status == lib.SP_OK_SEND:  # (streams: what reading queued goes out now)
            with conn.transport_errors(func, "read"):
                conn.wait_for_pump(lib.SP_WANT_WRITE, _Deadline(0.0), func, 0, reading=True)
            continue
        if status != lib.SP_OK or got[0] == 0:
            return  # nothing more without waiting, or EOF (the reader will see it)


# SSL_R_EXTENSION_NOT_RECEIVED from SSL_verify_client_post_handshake: the client did not send
# the post_handshake_auth extension.
_NO_PHA = ":0A000117:"
_NO_PHA_HINT = (
    "the client did not offer post-handshake authentication (TLS 1.3), so it cannot be asked "
    "for a certificate after the handshake"
)


def ssl_peer_verified(p: SSLPort) -> bool:
    """True when the peer presented a certificate that verified. Racket: ssl-peer-verified?"""
    conn = _conn("ssl_peer_verified", p)
    return bool(_binding.lib.sp_peer_verified(conn.ptr))


def ssl_peer_certificate_hostnames(p: SSLPort) -> list[str]:
    """The peer certificate's DNS names (else its last CN), then its IP addresses as text.

    Racket: ssl-peer-certificate-hostnames

    :raises SSLError: the certificate holds names that cannot be read (a malformed
        subjectAltName, or no memory): never the CN in their place.
    """
    return _hostnames_of(_conn("ssl_peer_certificate_hostnames", p).ptr)


def _hostnames_of(ptr: Any) -> list[str]:
    lib = _binding.lib
    ffi = _binding.ffi
    cap = 4096
    err = ffi.new("sp_err *")
    while True:
        buf = ffi.new("char[]", cap)
        need = lib.sp_peer_hostnames(ptr, buf, cap, err)
        if err.nerrs or err.sys_errno:
            raise build_error("ssl_peer_certificate_hostnames", "reading the names", err)
        if need <= cap:
            break
        cap = need
    return _binding.hostname_list(ffi.buffer(buf, need)[:] if need else b"")


def ssl_peer_check_hostname(p: SSLPort, hostname: str) -> bool:
    """RFC 6125 check of the peer certificate against `hostname` (IP literals against IP SANs).

    Racket: ssl-peer-check-hostname. False (never an exception) without a certificate.
    """
    func = "ssl_peer_check_hostname"
    conn = _conn(func, p)
    if not isinstance(hostname, str):
        raise TypeError(f"{func}: hostname must be a str")
    if "\0" in hostname:  # X509_check_host would accept one at the very end
        return False
    # The same reference name the handshake checks (net.py): no leading dot, empty label or
    # '*'; trailing dot dropped; IDNA A-labels; an IPv6 zone ("%lo") dropped.
    name = _reference_name(hostname)
    if name is None:
        return False
    if is_ip_literal(hostname):
        return bool(_binding.lib.sp_peer_check_hostname(conn.ptr, name, 0, 1))
    return bool(_binding.lib.sp_peer_check_hostname(conn.ptr, name, len(name), 0))


def _peer_name(func: str, p: object, issuer: bool) -> Optional[bytes]:
    return _name_of(_conn(func, p).ptr, issuer)


def _name_of(ptr: Any, issuer: bool) -> Optional[bytes]:
    lib = _binding.lib
    if not lib.sp_peer_verified(ptr):
        return None
    cap = 4096
    while True:  # (a long name, e.g. many RDNs, needs more than the first guess)
        buf = _binding.ffi.new("char[]", cap)
        need = lib.sp_peer_name(ptr, int(issuer), buf, cap)
        if need == 0:
            return None
        if need <= cap:
            return bytes(_binding.ffi.string(buf))
        cap = need


def ssl_peer_subject_name(p: SSLPort) -> Optional[bytes]:
    """The verified peer's subject, X509_NAME_oneline form. Racket: ssl-peer-subject-name"""
    return _peer_name("ssl_peer_subject_name", p, False)


def ssl_peer_issuer_name(p: SSLPort) -> Optional[bytes]:
    """The verified peer's issuer, X509_NAME_oneline form. Racket: ssl-peer-issuer-name"""
    return _peer_name("ssl_peer_issuer_name", p, True)


# -- channel binding ------------------------------------------------------------------------

_BINDING_TYPES = {"tls-unique": "SP_CB_TLS_UNIQUE", "tls-exporter": "SP_CB_TLS_EXPORTER"}
_BINDING_TYPES["tls-server-end-point"] = "SP_CB_TLS_SERVER_END_POINT"


def ssl_channel_binding(p: SSLPort, type: str) -> bytes:
    """Channel binding data: ``"tls-unique"``, ``"tls-server-end-point"``, ``"tls-exporter"``.

    Racket: ssl-channel-binding

    :raises SSLError: the type does not apply to this connection (tls-unique on TLS 1.3,
        tls-exporter without TLS 1.3 or EMS, an end-point certificate with no single hash).
    """
    return _channel_binding("ssl_channel_binding", p, type)


def _channel_binding(func: str, p: object, type: str) -> bytes:
    conn = _conn(func, p)
    if not isinstance(type, str):
        raise TypeError(f"{func}: type must be a str")
    if type not in _BINDING_TYPES:
        raise ValueError(f"{func}: unknown channel binding type {type!r}")
    lib = _binding.lib
    ffi = _binding.ffi
    out = ffi.new("unsigned char[]", 128)
    outlen = ffi.new("size_t *")
    err = ffi.new("sp_err *")
    if not lib.sp_channel_binding(
        conn.ptr, getattr(lib, _BINDING_TYPES[type]), out, 128, outlen, err
    ):
        raise build_error(func, type, err)
    return bytes(ffi.buffer(out, outlen[0]))


def ssl_default_channel_binding(p: SSLPort) -> tuple[str, bytes]:
    """``("tls-exporter", ...)`` on TLS 1.3, else ``("tls-unique", ...)``. Extension."""
    func = "ssl_default_channel_binding"
    conn = _conn(func, p)
    tls13 = _binding.lib.sp_conn_version(conn.ptr) >= 0x0304
    kind = "tls-exporter" if tls13 else "tls-unique"
    return kind, _channel_binding(func, p, kind)


_TLS12_PRF_SEED_MAX = 1024  # (OpenSSL's TLS1-PRF: TLS1_PRF_MAXBUF)
_TLS13_LABEL_MAX = 249  # (HkdfLabel.label: "tls13 " + label, at most 255 bytes)


def ssl_export_keying_material(
    p: SSLPort, label: bytes, length: int, context: Optional[bytes] = None
) -> bytes:
    """RFC 5705 / 8446 exported keying material. Extension."""
    func = "ssl_export_keying_material"
    conn = _conn(func, p)
    if not isinstance(label, (bytes, bytearray)):
        raise TypeError(f"{func}: label must be bytes")
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"{func}: length must be an int")
    length = int.__index__(length)  # (its value: an int subclass's comparisons could pass any)
    if not 1 <= length <= 1 << 16:
        raise ValueError(f"{func}: length must be in 1..65536")
    if context is not None and not isinstance(context, (bytes, bytearray)):
        raise TypeError(f"{func}: context must be bytes or None")
    if context is not None and len(context) > 0xFFFF:  # (TLS 1.2 sends its length in 2 bytes)
        raise ValueError(f"{func}: context must be at most 65535 bytes (RFC 5705)")
    lib = _binding.lib
    ffi = _binding.ffi
    version = lib.sp_conn_version(conn.ptr)
    if version >= 0x0304 and len(label) > _TLS13_LABEL_MAX:
        raise ValueError(
            f"{func}: label must be at most {_TLS13_LABEL_MAX} bytes on TLS 1.3 (RFC 8446 7.1: "
            "it goes after 'tls13 ' into a label of at most 255 bytes)"
        )
    seed = len(label) + 64 + (2 + len(context) if context is not None else 0)
    if 0 < version < 0x0304 and seed > _TLS12_PRF_SEED_MAX:
        raise ValueError(
            f"{func}: label and context too long for TLS 1.2 (its PRF takes the label, 64 "
            f"random bytes and the context with its 2-byte length: {seed} bytes, at most "
            f"{_TLS12_PRF_SEED_MAX})"
        )
    limit = lib.sp_export_max_len(conn.ptr)
    if limit and length > limit:
        raise ValueError(
            f"{func}: length must be at most {limit} on this TLS 1.3 connection"
            " (255 x the hash length of its suite)"
        )
    out = ffi.new("unsigned char[]", length)
    err = ffi.new("sp_err *")
    ctx = ffi.NULL if context is None else bytes(context)
    ok = lib.sp_export_keying_material(
        conn.ptr,
        out,
        length,
        bytes(label),
        len(label),
        ctx,
        len(context or b""),
        int(context is not None),
        err,
    )
    if not ok:
        raise build_error(func, "export", err)
    return bytes(ffi.buffer(out, length))


# -- connection facts -------------------------------------------------------------------------


def ssl_get_alpn_selected(p: SSLPort) -> Optional[bytes]:
    """The ALPN protocol both ends agreed on, or None. Racket: ssl-get-alpn-selected"""
    conn = _conn("ssl_get_alpn_selected", p)
    buf = _binding.ffi.new("unsigned char[]", 256)
    n = _binding.lib.sp_conn_alpn(conn.ptr, buf, 256)
    return None if n < 0 else _binding.ffi.buffer(buf, n)[:]


def ssl_protocol_version(p: SSLPort) -> Optional[str]:
    """The negotiated version: ``"tls13"``, ``"tls12"``, ... or None. Extension."""
    conn = _conn("ssl_protocol_version", p)
    return _VERSION_SYMBOLS.get(_binding.lib.sp_conn_version(conn.ptr))


def ssl_cipher_name(p: SSLPort) -> str:
    """The negotiated cipher suite's OpenSSL name. Extension."""
    conn = _conn("ssl_cipher_name", p)
    name = _binding.lib.sp_conn_cipher(conn.ptr)
    if name == _binding.ffi.NULL:
        return ""
    text = _binding.ffi.string(name).decode()
    return "" if text == "(NONE)" else text  # (OpenSSL's name for none: a failed renegotiation)


def peer_certificate(ptr: Any) -> Optional[dict[str, Any]]:
    """sslports.aio's get_extra_info("peercert"): None unless the peer's certificate verified,
    else what ssl_peer_subject_name, ssl_peer_issuer_name and ssl_peer_certificate_hostnames
    say of it. (`ptr`: the connection's sp_conn, which stays valid after close().)"""
    if not _binding.lib.sp_peer_verified(ptr):
        return None
    return {
        "subject_name": _name_of(ptr, False),
        "issuer_name": _name_of(ptr, True),
        "hostnames": _hostnames_of(ptr),
    }


def cipher_info(ptr: Any) -> Optional[tuple[str, str, int]]:
    """sslports.aio's get_extra_info("cipher"): ``(name, version, secret_bits)`` as
    ssl.SSLSocket.cipher() gives them, e.g. ``("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)``
    (the version is the one that defines the suite, as there); None before a cipher was
    chosen."""
    ffi = _binding.ffi
    version = ffi.new("const char **")
    bits = ffi.new("int *")
    name = _binding.lib.sp_conn_cipher_info(ptr, version, bits)
    if name == ffi.NULL:
        return None
    return ffi.string(name).decode(), ffi.string(version[0]).decode(), bits[0]


def ssl_session_reused(p: SSLPort) -> bool:
    """True when this connection resumed an earlier session. Extension."""
    conn = _conn("ssl_session_reused", p)
    return bool(_binding.lib.sp_conn_session_reused(conn.ptr))
