"""Build the OpenSSL that sslports wheels carry, from a pinned tarball with a checked SHA-256.

Used by cibuildwheel's ``before-all`` step (pyproject.toml, [tool.cibuildwheel]) on Linux (inside
the manylinux/musllinux container), macOS and Windows, and usable by hand:

    python scripts/build_openssl.py --prefix /opt/openssl
    SSLPORTS_OPENSSL_DIR=/opt/openssl pip wheel --no-deps -w dist .

It installs only the libraries and headers (``make build_libs`` + ``make install_dev``: no
``openssl`` program, no tests, no docs) into PREFIX as shared libraries -- lib/libssl.so.3 and
lib/libcrypto.so.3, lib/libssl.3.dylib ..., or bin/libssl-3-x64.dll with lib/libssl.lib on
Windows -- so that the wheel repair tool (auditwheel, delocate, delvewheel) vendors them into the
wheel. OPENSSLDIR, where OpenSSL looks for openssl.cnf and the default CA file/directory, is set
to /etc/ssl on Linux and macOS (present on most systems; SSL_CERT_FILE / SSL_CERT_DIR override it)
and left at OpenSSL's default on Windows (sslports uses the Windows certificate store there).

To move to a new OpenSSL release, change OPENSSL_VERSION and OPENSSL_SHA256 below (the SHA-256 is
published next to the tarball as openssl-X.Y.Z.tar.gz.sha256) and rebuild the wheels. For a one-off
build of another release, set both SSLPORTS_OPENSSL_VERSION and SSLPORTS_OPENSSL_SHA256; --tarball
uses a local copy of the tarball (still checked against the SHA-256) instead of downloading it.

Runs on Python 3.9+ with only the standard library; needs perl, make (nmake + MSVC on Windows),
and a C compiler. On Windows NASM is used when found, else OpenSSL is configured with no-asm.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

# OpenSSL 3.5 is the current long-term-support series (supported until April 2030).
OPENSSL_VERSION = "3.5.9"
OPENSSL_SHA256 = "603f5602e2eef00d77fbd429d34dcd5822bb301757a1bc9cdb24c670f1eb859a"

URLS = (
    "https://github.com/openssl/openssl/releases/download/openssl-{v}/openssl-{v}.tar.gz",
    "https://www.openssl.org/source/openssl-{v}.tar.gz",
    "https://www.openssl.org/source/old/{series}/openssl-{v}.tar.gz",
    # Debian's copy of the same upstream tarball (the SHA-256 is what vouches for it), for
    # machines that reach only package registries (scripts/test-openssl.sh runs in CI there).
    "http://deb.debian.org/debian/pool/main/o/openssl/openssl_{v}.orig.tar.gz",
)


def log(message: str) -> None:
    print(f"build_openssl: {message}", flush=True)


def pinned() -> tuple[str, str]:
    version = os.environ.get("SSLPORTS_OPENSSL_VERSION")
    digest = os.environ.get("SSLPORTS_OPENSSL_SHA256")
    if bool(version) != bool(digest):
        sys.exit("build_openssl: set both SSLPORTS_OPENSSL_VERSION and SSLPORTS_OPENSSL_SHA256")
    if version and digest:
        return version, digest.lower()
    return OPENSSL_VERSION, OPENSSL_SHA256


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Unavailable(Exception):
    """The server has no such file (HTTP 4xx), or its name does not resolve (a machine that
    reaches only some hosts): asking again, or with curl, cannot help."""


def download(url: str, dest: Path) -> None:
    """urllib first; curl as a fallback (e.g. an old Python without usable CA certificates)."""
    try:
        with urllib.request.urlopen(url, timeout=120) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out)
        return
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise Unavailable(f"HTTP {exc.code}") from exc
        error: Exception = exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            raise Unavailable(f"no such host ({exc.reason})") from exc
        error = exc
    except Exception as exc:
        error = exc
    curl = shutil.which("curl")
    if curl is None:
        raise error
    log(f"urllib failed ({error}); trying curl")
    subprocess.run([curl, "-fsSL", "--retry", "3", "-o", str(dest), url], check=True)


def fetch(version: str, digest: str, tarball: Optional[Path], workdir: Path) -> Optional[Path]:
    """The verified tarball in workdir, or None (each failure logged)."""
    if tarball is not None:
        candidates: list[Optional[str]] = [None]
    else:
        series = ".".join(version.split(".")[:2])
        candidates = [u.format(v=version, series=series) for u in URLS]
    dest = workdir / f"openssl-{version}.tar.gz"
    errors = []
    for url in candidates:
        try:
            if url is None:
                assert tarball is not None
                shutil.copyfile(tarball, dest)
                source = str(tarball)
            else:
                log(f"downloading {url}")
                for attempt in range(3):
                    try:
                        download(url, dest)
                        break
                    except Exception as exc:
                        if attempt == 2 or isinstance(exc, Unavailable):
                            raise
                        time.sleep(5 * (attempt + 1))
                source = url
        except Exception as exc:
            errors.append(f"{url or tarball}: {exc}")
            continue
        got = sha256_of(dest)
        if got != digest:
            errors.append(f"{source}: SHA-256 {got} != expected {digest}")
            dest.unlink()
            continue
        log(f"openssl-{version}.tar.gz SHA-256 OK ({digest})")
        return dest
    log(f"could not get a verified openssl-{version}.tar.gz:\n  " + "\n  ".join(errors))
    return None


def extract(archive: Path, workdir: Path, version: str) -> Path:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # Python < 3.12 without the backported filters: the checksum vouches for it
            tar.extractall(workdir)
    src = workdir / f"openssl-{version}"
    if not (src / "Configure").is_file():
        sys.exit(f"build_openssl: {src} has no Configure script")
    return src


def find_perl() -> str:
    if sys.platform == "win32":
        # OpenSSL's Windows build needs a native perl (Strawberry Perl on GitHub's runners), not
        # the MSYS perl that comes with Git for Windows.
        for candidate in (os.environ.get("PERL"), r"C:\Strawberry\perl\bin\perl.exe"):
            if candidate and Path(candidate).is_file():
                return candidate
    perl = shutil.which("perl")
    if perl is None:
        sys.exit("build_openssl: perl is required to configure OpenSSL")
    return perl


def msvc_environment() -> dict[str, str]:
    """os.environ plus the MSVC x64 toolchain (vcvars64.bat) unless cl.exe is already set up."""
    env = dict(os.environ)
    if shutil.which("cl") and shutil.which("nmake"):
        return env
    root = os.environ.get("PROGRAMFILES(X86)", r"C:\Program Files (x86)")
    vswhere = Path(root, "Microsoft Visual Studio", "Installer", "vswhere.exe")
    if not vswhere.is_file():
        sys.exit("build_openssl: no MSVC in PATH and no vswhere.exe to find it")
    install = subprocess.run(
        [
            str(vswhere),
            "-latest",
            "-products",
            "*",
            "-requires",
            "Microsoft.VisualStudio.Component.VC.Tools.x86.x64",
            "-property",
            "installationPath",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    vcvars = Path(install, "VC", "Auxiliary", "Build", "vcvars64.bat")
    # A string command with shell=False reaches CreateProcess verbatim; /s strips the outer quotes.
    out = subprocess.run(
        f'cmd.exe /d /s /c ""{vcvars}" >nul && set"', check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key:
            env[key] = value
    return env


def configure_args(prefix: Path) -> tuple[list[str], dict[str, str]]:
    args = [f"--prefix={prefix}", "--libdir=lib", "shared", "no-tests"]
    env = dict(os.environ)
    if sys.platform == "win32":
        env = msvc_environment()
        nasm_dir = Path(os.environ.get("PROGRAMFILES", r"C:\Program Files"), "NASM")
        if not shutil.which("nasm", path=env.get("PATH")) and (nasm_dir / "nasm.exe").is_file():
            env["PATH"] = f"{nasm_dir}{os.pathsep}{env.get('PATH', '')}"
        target = "VC-WIN64A" if platform.machine().lower() in ("amd64", "x86_64") else "VC-WIN32"
        args = [target, *args]
        if not shutil.which("nasm", path=env.get("PATH")):
            log("nasm not found: configuring with no-asm (slower AES/SHA)")
            args.append("no-asm")
    else:
        args.append("--openssldir=/etc/ssl")
        if sys.platform == "darwin":
            arch = os.environ.get("SSLPORTS_OPENSSL_ARCH") or platform.machine()
            target = {"arm64": "darwin64-arm64-cc", "x86_64": "darwin64-x86_64-cc"}[arch]
            args = [target, *args]
            deployment = env.get("MACOSX_DEPLOYMENT_TARGET")
            log(f"macOS target {target}, MACOSX_DEPLOYMENT_TARGET={deployment}")
    return args, env


def build(src: Path, prefix: Path, jobs: int) -> None:
    perl = find_perl()
    args, env = configure_args(prefix)
    log(f"configuring: {' '.join(args)}")
    subprocess.run([perl, "Configure", *args], cwd=src, env=env, check=True)
    if sys.platform == "win32":
        make = ["nmake", "/nologo"]
    else:
        make = [shutil.which("gmake") or "make"]
    parallel = [] if sys.platform == "win32" else [f"-j{jobs}"]
    subprocess.run([*make, *parallel, "build_libs"], cwd=src, env=env, check=True)
    subprocess.run([*make, "install_dev"], cwd=src, env=env, check=True)
    shutil.copyfile(src / "LICENSE.txt", prefix / "LICENSE-OpenSSL.txt")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prefix", required=True, type=Path, help="install prefix, e.g. /opt/openssl"
    )
    parser.add_argument("--tarball", type=Path, help="use this local openssl-X.Y.Z.tar.gz")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--fallback",
        action="append",
        default=[],
        metavar="VERSION=SHA256",
        help="a release to build instead when no verified tarball of the pinned one can be "
        "fetched (repeatable, tried in order; scripts/test-openssl.sh)",
    )
    opts = parser.parse_args()

    releases = [pinned()]
    for spec in opts.fallback:
        version, sep, digest = spec.partition("=")
        if not sep or not version or len(digest) != 64:
            parser.error(f"--fallback {spec!r}: expected VERSION=SHA256")
        releases.append((version, digest.lower()))
    prefix = opts.prefix.resolve()
    for version, _ in releases:
        if (prefix / f".sslports-openssl-{version}").is_file():
            log(f"OpenSSL {version} already built in {prefix}")
            return 0
    prefix.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sslports-openssl-") as tmp:
        workdir = Path(tmp)
        for version, digest in releases:
            archive = fetch(version, digest, opts.tarball, workdir)
            if archive is not None:
                break
        else:
            sys.exit("build_openssl: no verified tarball of any release asked for")
        src = extract(archive, workdir, version)
        build(src, prefix, opts.jobs)
    (prefix / f".sslports-openssl-{version}").write_text(f"{version} {digest}\n")
    log(f"OpenSSL {version} installed in {prefix}; build with SSLPORTS_OPENSSL_DIR={prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
