"""sslports: Racket's `openssl` collection re-created in Python over the system OpenSSL."""

from ._binding import ssl_available, ssl_load_fail_reason
from ._version import __version__
from .errors import SSLError, SSLNetworkError, SSLUnsupportedError

__all__ = [
    "SSLError",
    "SSLNetworkError",
    "SSLUnsupportedError",
    "__version__",
    "ssl_available",
    "ssl_load_fail_reason",
]
