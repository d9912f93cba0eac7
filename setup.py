"""setuptools entry point: the package metadata lives in pyproject.toml; this adds the CFFI module."""

from setuptools import setup

setup(cffi_modules=["build_ffi.py:ffibuilder"])
