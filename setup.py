"""setuptools entry point: the package metadata lives in pyproject.toml; this adds the CFFI module.

CFFI's out-of-line module uses only the limited C API, so one wheel (tagged cp39-abi3) serves
CPython 3.9 and later. A free-threaded CPython has no stable ABI before 3.15, so there the
wheel keeps its version-specific tag (e.g. cp314-cp314t) and CFFI builds a non-abi3 module.
"""

import sysconfig

from setuptools import setup

options = {}
if not sysconfig.get_config_var("Py_GIL_DISABLED"):
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(cffi_modules=["build_ffi.py:ffibuilder"], options=options)
