"""setuptools entry point: the package metadata lives in pyproject.toml; this adds the native code.

Two extension modules:
- sslports._native (CFFI, build_ffi.py): the C shim and the pump, linked to OpenSSL.
- sslports._fastport (csrc/py/sp_fastport.c): the ports' hot methods as C methods; it reaches the
  pump through function pointers taken from _native at import, so it links nothing itself.

_fastport needs the buffer protocol, which the limited C API lacks before 3.11, so wheels are
built per CPython version (cp39-cp39 ... cp314-cp314, cp314-cp314t) rather than as one abi3
wheel; _native stays a limited-API module inside them. _fastport is built for free-threaded
CPython too (it declares that it needs no GIL: csrc/py/sp_fastport.c, FREE-THREADED CPYTHON),
not for other interpreters (PyPy): there ports.py uses its own Python methods, which do the
same work.
"""

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # PEP 517 builds: find build_ffi
from build_ffi import cflags, openssl_license


class BuildPyWithOpenSSLLicense(build_py):
    """A wheel built against SSLPORTS_OPENSSL_DIR (the release wheels, which vendor that
    OpenSSL) also carries its license text, as sslports/LICENSE-OpenSSL.txt."""

    def run(self):
        super().run()
        license_text = openssl_license()
        if license_text is not None:
            target = os.path.join(self.build_lib, "sslports", "LICENSE-OpenSSL.txt")
            self.copy_file(str(license_text), target)


ext_modules = []
if platform.python_implementation() == "CPython":
    ext_modules.append(
        Extension(
            "sslports._fastport",
            sources=["csrc/py/sp_fastport.c"],
            extra_compile_args=cflags,
            extra_link_args=[a for a in cflags if a.startswith("-fsanitize")],
        )
    )

setup(
    cffi_modules=["build_ffi.py:ffibuilder"],
    ext_modules=ext_modules,
    cmdclass={"build_py": BuildPyWithOpenSSLLicense},
)
