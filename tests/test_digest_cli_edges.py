"""Edges of the digests and the command line: io base-class subclasses that implement only read(),
sha1/md5 -c lines as coreutils reads them, unencodable host names, serve --dir on paths it
cannot open (a FIFO among them)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

import sslports
from sslports.md5 import md5
from sslports.sha1 import sha1

DATA = bytes(range(256)) * 2000  # 512000 bytes: more than one 256 KiB block
SRC = str(Path(sslports.__file__).resolve().parent.parent)
ENV = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
ENV["PYTHONPATH"] = os.pathsep.join([SRC, ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)
ENV["PYTHONUNBUFFERED"] = "1"


def cli(*args: str, cwd: Optional[Path] = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "sslports", *args],
        input=b"",
        capture_output=True,
        cwd=cwd,
        timeout=60,
        env=ENV,
    )


# ---- digests: subclasses of io.RawIOBase / io.BufferedIOBase that implement only read() ---------


class RawReadOnly(io.RawIOBase):
    """A readable raw stream that implements read() (its readinto is io.RawIOBase's)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self._data)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk


class BufferedReadOnly(io.BufferedIOBase):
    """A buffered stream whose read() returns a bytearray (allowed for a binary stream)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: Optional[int] = -1) -> bytearray:
        if size is None or size < 0:
            size = len(self._data)
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return bytearray(chunk)


def test_rawiobase_subclass_with_only_read_is_hashed() -> None:
    assert RawReadOnly(b"abc").read(2) == b"ab"  # a working binary file-like object
    assert sha1(RawReadOnly(DATA)) == hashlib.sha1(DATA).hexdigest()
    assert md5(RawReadOnly(DATA)) == hashlib.md5(DATA).hexdigest()


def test_bufferediobase_subclass_reading_bytearrays_is_hashed() -> None:
    assert BufferedReadOnly(b"abc").read(2) == b"ab"
    assert sha1(BufferedReadOnly(DATA)) == hashlib.sha1(DATA).hexdigest()
    assert md5(BufferedReadOnly(DATA)) == hashlib.md5(DATA).hexdigest()


# ---- sha1 -c / md5 -c ----------------------------------------------------------------------


def test_check_goes_on_after_a_listed_name_with_a_nul(tmp_path: Path) -> None:
    (tmp_path / "good").write_bytes(b"abc")
    good = hashlib.sha1(b"abc").hexdigest()
    (tmp_path / "SUMS").write_bytes(
        f"{good}  good\n".encode() + b"0" * 40 + b"  a\0b\n" + f"{good}  good\n".encode()
    )
    result = cli("sha1", "-c", "SUMS", cwd=tmp_path)
    assert result.returncode == 1
    assert b"unexpected" not in result.stderr, result.stderr
    assert result.stdout.count(b"good: OK\n") == 2, result.stdout  # the third line is checked
    assert b"FAILED open or read" in result.stdout
    assert b"1 listed file could not be read" in result.stderr


def test_check_ignore_missing_with_nothing_verified_fails(tmp_path: Path) -> None:
    (tmp_path / "SUMS").write_text(f"{'0' * 32}  gone\n")
    result = cli("md5", "-c", "--ignore-missing", "SUMS", cwd=tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)  # coreutils: exit 1
    assert b"no file was verified" in result.stderr


@pytest.mark.parametrize(
    "template",
    [
        "{h} {n}\n",  # one space (md5 -r / "BSD reversed" style): accepted by coreutils
        "  {h}  {n}\n",  # leading white space
        "{h}\t{n}\n",
        "SHA1 ({n})={h}\n",
        "SHA1({n}) = {h}\n",
    ],
)
def test_check_accepts_lines_coreutils_accepts(tmp_path: Path, template: str) -> None:
    (tmp_path / "f1").write_bytes(b"abc")
    line = template.format(h=hashlib.sha1(b"abc").hexdigest(), n="f1")
    (tmp_path / "SUMS").write_text(line)
    result = cli("sha1", "-c", "SUMS", cwd=tmp_path)
    assert result.returncode == 0, (line, result.stderr)
    assert result.stdout == b"f1: OK\n"


def test_check_skips_comments_and_counts_malformed_lines_as_coreutils(tmp_path: Path) -> None:
    """sha1 -c reads a list as sha1sum -c does: comment and blank lines are skipped, a line
    ending in CRLF is accepted, a malformed line is counted (one WARNING line; each named with
    --warn) without failing the check; a list with no valid line at all fails (exit 1)."""
    (tmp_path / "a").write_bytes(b"hi")
    good = f"{hashlib.sha1(b'hi').hexdigest()}  a"
    (tmp_path / "SUMS").write_bytes(
        f"{good}\n# a comment\n\nnot a checksum line\n{good}\r\n".encode()
    )
    quiet = cli("sha1", "-c", "SUMS", cwd=tmp_path)
    warned = cli("sha1", "-c", "--warn", "SUMS", cwd=tmp_path)
    for result in (quiet, warned):
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"a: OK\na: OK\n"
        assert b"WARNING: 1 line is improperly formatted" in result.stderr
        assert b"unexpected" not in result.stderr
    assert b"SUMS: 4: improperly formatted" not in quiet.stderr
    assert b"SUMS: 4: improperly formatted" in warned.stderr
    (tmp_path / "BAD").write_bytes(b"# only a comment\ngarbage\n")
    bad = cli("sha1", "-c", "BAD", cwd=tmp_path)
    assert bad.returncode == 1
    assert b"BAD: no properly formatted SHA1 checksum lines found" in bad.stderr
    assert bad.stdout == b""


# ---- connect / serve: host names that cannot be encoded --------------------------------------


@pytest.mark.parametrize(
    "args", [["connect", "a..b:443"], ["connect", "x" * 300 + ":443"], ["serve", "--host", "a..b"]]
)
def test_unencodable_host_is_a_usage_error(args: list[str]) -> None:
    result = cli(*args)
    text = result.stderr.decode()
    assert "Traceback" not in text and "unexpected" not in text, text
    assert result.returncode == 2, text


# ---- serve --dir -------------------------------------------------------------------------------


@pytest.fixture
def dir_server(tmp_path: Path) -> Any:
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    os.mkfifo(root / "fifo")
    out = tmp_path / "out"
    with open(out, "wb") as out_f, open(tmp_path / "err", "wb") as err_f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sslports", "serve", "--port", "0", "--dir", str(root), "-q"],
            stdin=subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            env=ENV,
        )
    try:
        deadline = time.monotonic() + 30
        while b"listening on" not in out.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        yield int(out.read_bytes().split(b":")[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def http_get(port: int, target: str, timeout: float = 30.0) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with raw, ctx.wrap_socket(raw) as s:
        s.sendall(f"GET {target} HTTP/1.0\r\n\r\n".encode())
        reply = b""
        while b"\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("target", ["/a.txt/x", "/" + "x" * 300])
def test_serve_dir_answers_404_for_unopenable_paths(dir_server: int, target: str) -> None:
    # ENOTDIR, ENAMETOOLONG: the client got no reply at all and waited for the linger (5 s).
    assert http_get(dir_server, target) == b"HTTP/1.0 404 Not Found"


def test_serve_dir_does_not_hang_on_a_fifo(dir_server: int) -> None:
    assert http_get(dir_server, "/fifo") == b"HTTP/1.0 403 Forbidden"
    assert http_get(dir_server, "/a.txt") == b"HTTP/1.0 200 OK"


@pytest.mark.parametrize(
    "args",
    [
        ["--status"],
        ["--quiet"],
        ["--strict"],
        ["-w"],
        ["--ignore-missing"],
        ["--tag", "-c"],
    ],
)
def test_options_of_the_other_mode_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    """As coreutils: --status and the other check options without -c, and --tag with -c, are
    usage errors (they were ignored without a word)."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    r = cli("sha1", *args, str(f))
    assert r.returncode == 2
    assert b"meaning" in r.stderr and r.stdout == b""


@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 1 in the child (preexec_fn)")
def test_closed_stdout_is_a_write_error(tmp_path: Path) -> None:
    """Started with stdout closed, sha1 fails with a write error (it was "unexpected
    AttributeError")."""
    f = tmp_path / "f"
    f.write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-m", "sslports", "sha1", str(f)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
        env=ENV,
        preexec_fn=lambda: os.close(1),
    )
    assert r.returncode == 1
    assert b"write error" in r.stderr and b"unexpected" not in r.stderr
