"""The exception classes of API.md.

Racket raises `exn:fail` (and its `:network` / `:unsupported` kinds); Python gets one root class,
`SSLError`, that is also an `OSError`, with subclasses that also inherit the matching builtin.
"""

from __future__ import annotations

from typing import Any, Optional


class NotCopyable:
    """Mixin of the objects that own a live OpenSSL or socket resource (ports, contexts,
    listeners): neither pickled nor copied, as io's files, sockets and ssl.SSLContext refuse (a
    copy would share the resource with a state of its own: a copied port's close counted as
    one of its connection's two)."""

    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"cannot pickle or copy {type(self).__name__!r} object")


class SSLError(OSError):
    """A failure reported by this library (Racket: exn:fail).

    :ivar openssl_errors: the OpenSSL error queue drained at the failure (possibly empty).
    :ivar verify_code: the X509 verify result when certificate verification failed, else None.
    :ivar verify_message: OpenSSL's text for ``verify_code`` (may add detail), else None.
    """

    openssl_errors: list[str]
    verify_code: Optional[int]
    verify_message: Optional[str]

    def __init__(
        self,
        message: str = "",
        *,
        openssl_errors: Optional[list[str]] = None,
        verify_code: Optional[int] = None,
        verify_message: Optional[str] = None,
        errno: Optional[int] = None,
    ) -> None:
        if errno:
            super().__init__(errno, message)
        else:
            super().__init__(message)
        self.message = message
        self.openssl_errors = list(openssl_errors or [])
        self.verify_code = verify_code
        self.verify_message = verify_message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild,
            (
                type(self),
                self.message,
                self.openssl_errors,
                self.verify_code,
                self.verify_message,
                self.errno,
            ),
        )


def _rebuild(
    cls: type[SSLError],
    message: str,
    errs: list[str],
    code: Optional[int],
    vmsg: Optional[str],
    errno: Optional[int] = None,
) -> SSLError:
    return cls(message, openssl_errors=errs, verify_code=code, verify_message=vmsg, errno=errno)


class SSLNetworkError(SSLError, ConnectionError):
    """A connect, accept or transport failure (Racket: exn:fail:network)."""


class SSLUnsupportedError(SSLError):
    """A protocol, source or feature this platform or OpenSSL build lacks (exn:fail:unsupported)."""


class SSLTimeoutError(SSLNetworkError, TimeoutError):
    """A deadline the caller set (``timeout=``, ``settimeout``) expired."""
