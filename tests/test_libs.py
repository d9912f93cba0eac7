"""sslports.libcrypto / sslports.libssl: ctypes handles on the extension's own libraries."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pytest

from sslports import _binding, _digest, _openssl_libs
from sslports.libcrypto import libcrypto, libcrypto_load_fail_reason, openssl_lib_versions
from sslports.libssl import libssl, libssl_load_fail_reason


def test_handles_load() -> None:
    assert _binding.lib is not None, _binding.ssl_load_fail_reason
    assert isinstance(libcrypto, ctypes.CDLL), libcrypto_load_fail_reason
    assert isinstance(libssl, ctypes.CDLL), libssl_load_fail_reason
    assert libcrypto_load_fail_reason is None
    assert libssl_load_fail_reason is None


def _address(function: object) -> int:
    value = ctypes.cast(function, ctypes.c_void_p).value
    assert value is not None
    return value


def test_handles_are_the_libraries_the_extension_runs_on() -> None:
    ffi, lib = _binding.ffi, _binding.lib
    assert libcrypto is not None and libssl is not None
    # The same function, at the same address: the same loaded copy of each library.
    for handle, which, name in (
        (libssl, lib.SP_LIB_SSL, "SSL_CTX_new"),
        (libcrypto, lib.SP_LIB_CRYPTO, "EVP_MD_CTX_new"),
    ):
        native = int(ffi.cast("uintptr_t", lib.sp_lib_anchor(which)))
        assert native != 0
        assert _address(getattr(handle, name)) == native


def test_versions_agree_with_the_extension() -> None:
    lib, ffi = _binding.lib, _binding.ffi
    assert libcrypto is not None and libssl is not None
    libcrypto.OpenSSL_version_num.restype = ctypes.c_ulong
    libcrypto.OpenSSL_version_num.argtypes = []
    assert libcrypto.OpenSSL_version_num() == lib.sp_openssl_version_number()
    libcrypto.OpenSSL_version.restype = ctypes.c_char_p
    libcrypto.OpenSSL_version.argtypes = [ctypes.c_int]
    text = libcrypto.OpenSSL_version(0)  # OPENSSL_VERSION
    assert text == ffi.string(lib.sp_openssl_version_text())
    assert text.startswith(b"OpenSSL ")
    major = lib.sp_openssl_version_number() >> 28
    if major >= 3:
        libcrypto.OPENSSL_version_major.restype = ctypes.c_uint
        assert libcrypto.OPENSSL_version_major() == major
    # libssl resolves the version query through its own dependency on the same libcrypto.
    libssl.OpenSSL_version_num.restype = ctypes.c_ulong
    assert libssl.OpenSSL_version_num() == lib.sp_openssl_version_number()
    # The headers the extension was compiled with and the library it runs on: same major.
    assert lib.sp_openssl_linked_version_number() >> 28 == major


def test_linked_and_loaded_version_texts() -> None:
    versions = _digest.openssl_versions()
    assert versions["linked"] is not None and versions["linked"].startswith("OpenSSL ")
    assert versions["loaded"] is not None and versions["loaded"].startswith("OpenSSL ")
    assert (
        versions["loaded"].split()[1].split(".")[0] == versions["linked"].split()[1].split(".")[0]
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_handle_paths_are_mapped_files() -> None:
    assert libcrypto is not None and libssl is not None
    maps = Path("/proc/self/maps").read_text()
    for handle, stem in ((libcrypto, "libcrypto"), (libssl, "libssl")):
        path = Path(handle._name)
        assert path.is_absolute() and stem in path.name
        assert str(path.resolve()) in maps or str(path) in maps


def test_openssl_lib_versions_newest_first() -> None:
    assert openssl_lib_versions == ["3", "1.1"]

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    assert sorted(openssl_lib_versions, key=key, reverse=True) == openssl_lib_versions


def test_fallback_names_follow_the_version_order() -> None:
    for base in ("crypto", "ssl"):
        names = _openssl_libs.candidate_names(base)
        if sys.platform == "win32":
            expected = [f"lib{base}-3-x64.dll", f"lib{base}-3.dll"]
            expected += [f"lib{base}-1_1-x64.dll", f"lib{base}-1_1.dll"]
        elif sys.platform == "darwin":
            expected = [f"lib{base}.3.dylib", f"lib{base}.1.1.dylib"]
        else:
            expected = [f"lib{base}.so.3", f"lib{base}.so.1.1"]
        assert names[: len(expected)] == expected


def test_name_search_when_the_module_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a path from the loader, the versioned names are tried; on a system whose
    # libcrypto is the one the extension uses, that finds the very same loaded copy.
    monkeypatch.setattr(_openssl_libs, "_native_path", lambda which: None)
    handle, reason = _openssl_libs.load_library("crypto")
    assert handle is not None and reason is None
    assert libcrypto is not None
    assert _address(handle.EVP_MD_CTX_new) == _address(libcrypto.EVP_MD_CTX_new)


def test_nothing_loadable_gives_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_openssl_libs, "_native_path", lambda which: None)
    monkeypatch.setattr(
        _openssl_libs, "candidate_names", lambda base: [f"libsslports-missing-{base}.so.99"]
    )
    handle, reason = _openssl_libs.load_library("crypto")
    assert handle is None
    assert reason is not None and "libsslports-missing-crypto.so.99" in reason
