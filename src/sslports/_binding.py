"""Load the native module and turn its error records into exceptions.

`import sslports` must work even when `_native` or libssl cannot be loaded: then `ffi` and `lib`
are None, `ssl_available` is False and `ssl_load_fail_reason` says why. A `_native` built from
another version of the package is refused loudly (ImportError), never used.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Optional

from ._version import __version__
from .errors import SSLError, SSLUnsupportedError

ffi: Any = None
lib: Any = None
ssl_load_fail_reason: Optional[str] = None

try:  # (by its full name: a missing file then reads "No module named 'sslports._native'", not
    # "cannot import name '_native' from partially initialized module ... circular import")
    _native = importlib.import_module(f"{__package__}._native")
except ImportError as exc:  # the extension or libssl/libcrypto could not be loaded
    ssl_load_fail_reason = f"cannot load the sslports native module: {exc}"
else:
    _stamp = _native.ffi.string(_native.lib.sp_build_version()).decode()
    if _stamp != __version__:
        raise ImportError(
            f"stale sslports native module: built for {_stamp}, package is {__version__}; "
            "rebuild it (pip install -e . or make build)"
        )
    ffi, lib = _native.ffi, _native.lib

ssl_available: bool = lib is not None


def endpoint(host: str, port: object) -> str:
    """host:port for messages, an IPv6 address in brackets ("[::1]:443")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unmapped(host: str) -> str:
    """An IPv4 peer of a dual-stack socket in its IPv4 form ("::ffff:127.0.0.1" -> "127.0.0.1")."""
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host


def require_native(func: str) -> Any:
    """Return `lib`, or raise SSLUnsupportedError naming `func` and the load failure."""
    if lib is None:
        raise SSLUnsupportedError(f"{func}: SSL not available ({ssl_load_fail_reason})")
    return lib


def handshake_step(is_server: bool) -> str:
    """What a failed handshake's message says failed: "connect" or "accept", as Racket's
    (API.md: "ssl_connect: connect failed (...)"), by the side that ran it."""
    return "accept" if is_server else "connect"


def err_lines(err: Any) -> list[str]:
    """The OpenSSL errors recorded in an sp_err, one string each."""
    if err.nerrs == 0:
        return []
    return [line for line in ffi.string(err.text).decode("utf-8", "replace").split("\n") if line]


def verify_text(code: int) -> str:
    """OpenSSL's text for an X509 verify result code."""
    return str(ffi.string(lib.X509_verify_cert_error_string(code)).decode("utf-8", "replace"))


# SSL_get_error's kinds that can end an operation with an empty error queue.
_SSL_ERROR_ZERO_RETURN = 6
_SSL_ERROR_NAMES = {1: "SSL_ERROR_SSL", 5: "SSL_ERROR_SYSCALL", 6: "SSL_ERROR_ZERO_RETURN"}


def build_error(
    func: str,
    what: str,
    err: Any = None,
    cls: type[SSLError] = SSLError,
    detail: Optional[str] = None,
    conn: Any = None,
    hostname: Optional[str] = None,
    peer: Optional[str] = None,
    client_peer: bool = False,
    path: Optional[str] = None,
    hint: Optional[str] = None,
) -> SSLError:
    """Make the exception for `func` whose `what` failed, from an sp_err record (or the queue).

    `conn` (the sp_conn that failed) and `hostname` (the name it checked) let a verification
    failure say which certificate it is about (verify_detail). `peer` ("host:port") follows a
    transport failure's reason ("Connection reset by peer: 127.0.0.1:443", as a refused
    connect reads); with `client_peer` (a server's handshake), any reason ("; client ...").
    `path`: the file whose contents failed to load, after the reason (as a missing one's).
    `hint`: what the caller knows the reason means, instead of reason_hint's guess."""
    if err is None:
        err = ffi.new("sp_err *")
        lib.sp_err_reset(err)
        lib.sp_err_drain(err)
    errors = err_lines(err)
    verify_code = int(err.verify_result) if err.verify_result > 0 else None
    verify_message = verify_text(verify_code) if verify_code is not None else None
    if verify_code is not None and conn is not None:
        found = verify_failure(conn, hostname, verify_code)
        if found is not None:
            verify_message = found[1]
    reason = detail or (errors[-1] if errors else None)
    if reason is None and err.sys_errno:
        reason = strerror(err.sys_errno)
    if reason is None and err.ssl_error == _SSL_ERROR_ZERO_RETURN:
        # (the peer's close_notify where an answer was due: during the handshake, since
        # after it a close_notify is an end of the stream, not a failure)
        reason = "the peer closed the connection with a close_notify alert"
    if reason is None and err.ssl_error in _SSL_ERROR_NAMES:  # (still say what kind)
        reason = f"OpenSSL gave no reason: {_SSL_ERROR_NAMES[err.ssl_error]}"
    if verify_message and (reason is None or "certificate verify failed" in reason):
        reason = f"{reason}: {verify_message}" if reason else verify_message
    elif reason is not None and detail is None:
        hint = hint or reason_hint(reason)
        if hint:
            reason = f"{reason}: {hint}"
    if peer is not None:
        if reason is not None and err.sys_errno and not errors:
            reason = f"{reason}: {peer}"
        elif client_peer:
            reason = f"{reason}; client {peer}" if reason else f"client {peer}"
    if path is not None:
        reason = f"{reason}: {path!r}" if reason else repr(path)
    message = f"{func}: {what + ' ' if what else ''}failed" + (f" ({reason})" if reason else "")
    exc = cls(
        message,
        openssl_errors=errors,
        verify_code=verify_code,
        verify_message=verify_message,
        errno=int(err.sys_errno) or None,
    )
    return exc


# What a fatal alert the peer sent means for this end (OpenSSL's reason text names the alert:
# "sslv3 alert handshake failure", "tlsv1 alert unknown ca", ...; OpenSSL 3.2 and later, the
# wheels' among them, spell the alerts SSL 3.0 defined "ssl/tls alert handshake failure"; a
# received alert is the only error whose reason reads so). Certificates are "ours": the peer
# judged the one we sent.
_ALERT_HINTS = {
    "unknown ca": "the peer does not trust the CA that issued our certificate",
    "bad certificate": "the peer rejected our certificate",
    "certificate unknown": "the peer rejected our certificate",
    "unsupported certificate": "the peer rejected our certificate's type or purpose",
    "certificate expired": "the peer says our certificate has expired",
    "certificate revoked": "the peer says our certificate is revoked",
    "certificate required": "the peer requires a client certificate and we sent none",
    "handshake failure": (
        "the peer refused the handshake (no cipher, group or signature algorithm in common, "
        "or it requires a client certificate)"
    ),
    "protocol version": "the peer accepts none of the TLS versions we offered",
    "no application protocol": "the peer supports none of the ALPN protocols we offered",
    "unrecognized name": "the peer does not serve the host name we sent (SNI)",
    "insufficient security": "the peer requires stronger ciphers than we offered",
}
_ALERT = re.compile(r"(?:sslv3|ssl/tls|tlsv1|tlsv13) alert (.+)$")
# A received alert's reason is 1000 + its number (SSL_AD_REASON_OFFSET); one that OpenSSL has no
# text for reads "reason(1255)".
_UNNAMED_ALERT = re.compile(r"SSL routines:[^:]*:reason\((1[0-2][0-9][0-9])\)$")
# Reasons that mean the other end does not speak TLS (OpenSSL's texts).
_NOT_TLS = {
    "wrong version number": "the peer does not speak TLS (a plain-text service?)",
    "packet length too long": "the peer does not speak TLS (a plain-text service?)",
    # (a client can meet these too: the bytes start as a request does; hence "the peer")
    "http request": "the peer sent a plain HTTP request, not TLS",
    "https proxy request": "the peer sent an HTTP proxy request (CONNECT), not TLS",
    "unsupported protocol": "the peer and this end allow no TLS version in common",
    "unexpected eof while reading": "the peer closed the connection",
}


def reason_hint(reason: str) -> Optional[str]:
    """Plain words for an OpenSSL reason a user cannot read at a glance: an alert the peer
    sent (who refused, and about what), or a peer that does not speak TLS."""
    text = reason.rsplit(":", 1)[-1]
    match = _ALERT.search(text)
    if match is not None:
        return _ALERT_HINTS.get(match.group(1), "a fatal alert sent by the peer")
    unnamed = _UNNAMED_ALERT.search(reason)
    if unnamed is not None and int(unnamed.group(1)) <= 1255:
        number = int(unnamed.group(1)) - 1000
        return f"a fatal alert sent by the peer, number {number}, unknown to OpenSSL"
    return _NOT_TLS.get(text)


# Why a server's handshake failed when it has no certificate (OpenSSL only says that no
# cipher, or no TLS version, was left: TLS 1.3 needs a certificate, TLS 1.2 all but aNULL).
_NO_CERTIFICATE = (
    "this server has no certificate (ssl_load_certificate_chain and ssl_load_private_key "
    "give it one)"
)


# (the last: a TLS 1.3 server whose SNI callback switched to a context without a certificate)
_NO_CERTIFICATE_SYMPTOMS = (
    "no shared cipher",
    "unsupported protocol",
    "no suitable signature algorithm",
)


def server_hint(conn: Any, err: Any) -> Optional[str]:
    """What the handshake failure `err` of `conn` means, known from the connection's state: a
    server without a certificate. (The connection is not yet shared: no lock.)"""
    lines = err_lines(err)
    if not lines or not lines[-1].endswith(_NO_CERTIFICATE_SYMPTOMS):
        return None
    ssl = lib.sp_conn_ssl(conn)
    if lib.SSL_is_server(ssl) and lib.SSL_get_certificate(ssl) == ffi.NULL:
        return _NO_CERTIFICATE
    return None


# A TLS 1.2 server's handshake failure alert after its handshake: the client ended a
# renegotiation that the server refused, and reason_hint's words (no cipher in common, ...)
# would mislead. (A client's renegotiation that the server ends keeps them: they fit.)
_RENEGOTIATION_REFUSED = (
    "the client gave up the renegotiation it asked for, which this server refuses (OpenSSL's "
    "default)"
)


def established_hint(conn: Any, err: Any) -> Optional[str]:
    """What a read or write failure `err` of the established connection `conn` means, where
    its state tells more than the reason: a TLS <= 1.2 client ending a refused renegotiation."""
    lines = err_lines(err)
    if not lines:
        return None
    match = _ALERT.search(lines[-1].rsplit(":", 1)[-1])
    if match is None or match.group(1) != "handshake failure":
        return None
    if lib.sp_conn_version(conn) >= lib.TLS1_3_VERSION:
        return None
    return _RENEGOTIATION_REFUSED if lib.SSL_is_server(lib.sp_conn_ssl(conn)) else None


# X509_V_ERR_* codes verify_detail words specially.
_V_UNABLE_TO_GET_ISSUER_CERT = 2
_V_CERT_NOT_YET_VALID = 9
_V_CERT_HAS_EXPIRED = 10
_V_DEPTH_ZERO_SELF_SIGNED = 18
_V_SELF_SIGNED_IN_CHAIN = 19
_V_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_V_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21
_V_HOSTNAME_MISMATCH = 62
_V_IP_ADDRESS_MISMATCH = 64
_MAX_NAMES = 8  # names a hostname mismatch lists (a CDN certificate may carry hundreds)


def verify_failure(
    conn: Any, hostname: Optional[str], code: Optional[int] = None
) -> Optional[tuple[int, str]]:
    """The last failed verification step of `conn` (`code`, when given, must be its code):
    its code, and OpenSSL's text for it followed by which certificate it is about and how.
    None when C kept no certificate for such a failure (sp_conn_verify_failure)."""
    fail = ffi.new("sp_verify_failure *")
    if not lib.sp_conn_verify_failure(conn, fail) or (code is not None and fail.code != code):
        return None
    code = int(fail.code)
    return code, f"{verify_text(code)}: {_verify_detail(fail, code, hostname)}"


def _as_compared(hostname: str) -> str:
    """`hostname` quoted for a mismatch, with the IDNA form the check compared when the name
    is not ASCII (a certificate naming 'bücher.example' itself does not match it)."""
    if hostname.isascii():
        return repr(hostname)
    try:  # (without a trailing dot, as the check takes it: net._host_info)
        compared = hostname.removesuffix(".").encode("idna").decode("ascii")
    except UnicodeError:
        return repr(hostname)
    return f"{hostname!r} (compared as {compared!r})"


def _verify_detail(fail: Any, code: int, hostname: Optional[str]) -> str:
    """An sp_verify_failure in words: the certificate, and what about it failed `code`."""

    def text(field: Any) -> str:
        return str(ffi.string(field).decode("utf-8", "replace"))

    subject = text(fail.subject)
    if fail.depth == 0:
        who = f"certificate {subject!r}"
    else:
        who = f"CA certificate {subject!r} (chain depth {fail.depth})"
    if code in (_V_HOSTNAME_MISMATCH, _V_IP_ADDRESS_MISMATCH):
        # (the names that fit the failure record, 1 KiB; the count has them all)
        names = hostname_list(ffi.buffer(fail.names, min(fail.names_len, len(fail.names)))[:])
        shown = [_printable(n) for n in names[:_MAX_NAMES]]
        left_out = int(fail.names_count) - len(shown)
        if fail.names_unreadable:
            said = "the certificate's subjectAltName cannot be decoded"
        elif shown:
            said = "the certificate is for " + ", ".join(shown)
            said += f" and {left_out} more" if left_out > 0 else ""
        elif left_out > 0:
            said = f"the certificate's {left_out} name(s) are too long to show"
        else:
            said = "the certificate names no host"
        return f"{said}, not {_as_compared(hostname)}" if hostname is not None else said
    if code == _V_CERT_HAS_EXPIRED and fail.not_after[0] != b"\0":
        return f"{who} expired on {text(fail.not_after)}"
    if code == _V_CERT_NOT_YET_VALID and fail.not_before[0] != b"\0":
        return f"{who} is valid only from {text(fail.not_before)}"
    if code in (
        _V_UNABLE_TO_GET_ISSUER_CERT,
        _V_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        _V_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
    ):
        return (
            f"{who} is issued by {text(fail.issuer)!r}, which is not a trusted root "
            "and was not sent by the peer"
        )
    if code == _V_DEPTH_ZERO_SELF_SIGNED:
        return f"{who} is self-signed and not trusted"
    if code == _V_SELF_SIGNED_IN_CHAIN:
        return f"the chain ends in the untrusted root {subject!r}"
    return f"{who}, issued by {text(fail.issuer)!r}"


def hostname_list(raw: bytes) -> list[str]:
    """sp_peer_hostnames' format (a 4-byte length, then the bytes, for each name) as strs;
    an entry cut short (the buffer was full) is left out."""
    names: list[str] = []
    i = 0
    while i + 4 <= len(raw):
        n = int.from_bytes(raw[i : i + 4], "big")
        if i + 4 + n > len(raw):
            break
        names.append(raw[i + 4 : i + 4 + n].decode("utf-8", "replace"))
        i += 4 + n
    return names


def _printable(name: str) -> str:
    """A certificate's name as a message shows it: control characters (a NUL) escaped."""
    return name if name.isprintable() else name.encode("unicode_escape").decode("ascii")


def strerror(code: int) -> str:
    """The system's text for an error number: os.strerror, except for Winsock's codes
    (WSAECONNRESET 10054, ...), which only FormatMessage knows ("Unknown error" otherwise)."""
    if sys.platform == "win32" and code >= 10000:  # pragma: no cover - Windows
        import ctypes

        return ctypes.FormatError(code).strip()
    return os.strerror(code)
