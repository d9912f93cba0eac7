"""The package version; the native module is stamped with the same string at build time."""

__version__ = "0.1.0"
