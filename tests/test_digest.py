"""sslports.sha1 / sslports.md5: vectors, every kind of input, the descriptor fast path."""

from __future__ import annotations

import array
import contextlib
import errno
import gzip
import hashlib
import io
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from conftest import AgreeingInt, Pki, connected_ports, python_under_openssl_conf, wait_until

from sslports import _binding, _digest
from sslports.md5 import md5, md5_bytes
from sslports.sha1 import bytes_to_hex_string, hex_string_to_bytes, sha1, sha1_bytes

MIB = 1024 * 1024

SHA1_VECTORS = [
    (b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
    ),
    (b"a" * 1_000_000, "34aa973cd4c4daa4f61eeb2bdbad27316534016f"),
]

# RFC 1321, appendix A.5.
MD5_VECTORS = [
    (b"", "d41d8cd98f00b204e9800998ecf8427e"),
    (b"a", "0cc175b9c0f1b6a831c399e269772661"),
    (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
    (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
    (b"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
    (
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        "d174ab98d277d9f5a5611c2c9f419d9f",
    ),
    (b"1234567890" * 8, "57edf4a22be3c955ac49da2e2107b67a"),
]

DIGESTS: dict[str, tuple[Callable[[Any], str], Callable[[Any], bytes]]] = {
    "sha1": (sha1, sha1_bytes),
    "md5": (md5, md5_bytes),
}


def test_native_module_is_in_use() -> None:
    # Every other test here would pass through hashlib too; make sure they test the C path.
    assert _binding.lib is not None, _binding.ssl_load_fail_reason
    assert _digest.native_available()


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


# ---- input kinds: each turns bytes into something sha1/md5 accept ------------------------


class ReadOnly:
    """Only ``read``; returns at most ``step`` bytes (random sizes when step is None)."""

    def __init__(self, data: bytes, step: Optional[int] = None) -> None:
        self._data = data
        self._pos = 0
        self._step = step
        self._rng = random.Random(len(data))

    def read(self, n: int = -1) -> bytes:
        limit = self._step if self._step is not None else self._rng.randint(1, 70_000)
        if n < 0 or n > limit:
            n = limit
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk


class ShortReadinto:
    """Only ``readinto``, filling at most a few bytes per call."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._rng = random.Random(7)
        self.calls = 0

    def readinto(self, buf: Any) -> int:
        self.calls += 1
        n = min(len(buf), self._rng.randint(1, 4099), len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class Feeders:
    """Factories: bytes -> input, with cleanup of files and pipes at the end of a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._stack = contextlib.ExitStack()
        self._count = 0

    def path(self, data: bytes) -> Path:
        self._count += 1
        path = self.tmp_path / f"input-{self._count}.bin"
        path.write_bytes(data)
        return path

    def open(self, data: bytes, buffering: int = -1) -> Any:
        return self._stack.enter_context(open(self.path(data), "rb", buffering=buffering))

    def pipe(self, data: bytes, buffering: int = -1, chunk: int = 65536) -> Any:
        r, w = os.pipe()

        def feed() -> None:
            with open(w, "wb", buffering=0) as out:
                for start in range(0, len(data), chunk):
                    out.write(data[start : start + chunk])

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        self._stack.callback(thread.join, 10)
        return self._stack.enter_context(open(r, "rb", buffering=buffering))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def feeders(tmp_path: Path) -> Iterator[Feeders]:
    f = Feeders(tmp_path)
    yield f
    f.close()


KINDS: dict[str, Callable[[Feeders, bytes], Any]] = {
    "bytes": lambda f, d: d,
    "bytearray": lambda f, d: bytearray(d),
    "memoryview": lambda f, d: memoryview(d),
    "bytesio": lambda f, d: io.BytesIO(d),
    "file": lambda f, d: f.open(d),
    "file-unbuffered": lambda f, d: f.open(d, buffering=0),
    "file-small-buffer": lambda f, d: f.open(d, buffering=3),
    "pipe": lambda f, d: f.pipe(d),
    "pipe-unbuffered": lambda f, d: f.pipe(d, buffering=0),
    "read-only": lambda f, d: ReadOnly(d),
    "read-only-short": lambda f, d: ReadOnly(d, step=5),
    "readinto-short": lambda f, d: ShortReadinto(d),
}


# ---- standard vectors ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("data", "expected"), SHA1_VECTORS, ids=["empty", "abc", "56", "1M-a"])
def test_sha1_vectors(feeders: Feeders, kind: str, data: bytes, expected: str) -> None:
    assert sha1(KINDS[kind](feeders, data)) == expected
    assert sha1_bytes(KINDS[kind](feeders, data)) == bytes.fromhex(expected)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("data", "expected"), MD5_VECTORS, ids=[str(i) for i in range(7)])
def test_md5_vectors(feeders: Feeders, kind: str, data: bytes, expected: str) -> None:
    assert md5(KINDS[kind](feeders, data)) == expected
    assert md5_bytes(KINDS[kind](feeders, data)) == bytes.fromhex(expected)


def test_results_are_lowercase_hex_of_the_right_length() -> None:
    assert len(sha1(b"x")) == 40 and sha1(b"x") == sha1(b"x").lower()
    assert len(md5(b"x")) == 32 and md5(b"x") == md5(b"x").lower()
    assert len(sha1_bytes(b"x")) == 20 and len(md5_bytes(b"x")) == 16


# ---- random data against hashlib -----------------------------------------------------------

SIZES = [0, 1, 63, 64, 65, 127, 128, 129, 4096, 262_143, 262_144, 262_145, 3 * MIB + 7]


@pytest.mark.parametrize("name", sorted(DIGESTS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_random_data_matches_hashlib(feeders: Feeders, name: str, size: int, kind: str) -> None:
    if size > MIB and kind == "read-only-short":
        size = 100_003  # 5 bytes a call: keep the test quick
    data = random_bytes(size)
    hexdigest, rawdigest = DIGESTS[name]
    assert hexdigest(KINDS[kind](feeders, data)) == hashlib.new(name, data).hexdigest()
    assert rawdigest(KINDS[kind](feeders, data)) == hashlib.new(name, data).digest()


@pytest.mark.parametrize("name", sorted(DIGESTS))
@pytest.mark.parametrize("size", [8 * MIB, 9 * MIB + 13, 41 * MIB + 5])
def test_large_files_use_the_reader_thread_and_match(
    feeders: Feeders, name: str, size: int
) -> None:
    # >= 8 MiB left in a regular file: sp_digest_update_fd hands reads to a reader thread.
    data = random_bytes(size, seed=3)
    hexdigest, _ = DIGESTS[name]
    expected = hashlib.new(name, data).hexdigest()
    assert hexdigest(feeders.open(data)) == expected
    assert hexdigest(feeders.open(data, buffering=0)) == expected
    f = feeders.open(data)
    f.read(12_345)
    assert hexdigest(f) == hashlib.new(name, data[12_345:]).hexdigest()
    assert f.read() == b""


@pytest.mark.parametrize("limit", [1, 65_537, MIB + 3, 9 * MIB + 1])
def test_bounded_c_calls_resume_where_they_stopped(
    feeders: Feeders, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    # Each C call stops after _CALL_LIMIT bytes (so signal handlers run); force many calls,
    # through pread offsets (files), read() (pipes), the reader thread and in-memory chunks.
    monkeypatch.setattr(_digest, "_CALL_LIMIT", limit)
    monkeypatch.setattr(_digest, "_ONESHOT_MAX", limit)
    size = 3 * MIB + 7 if limit < MIB else 30 * MIB + 11
    data = random_bytes(size, seed=limit)
    expected = hashlib.sha1(data).hexdigest()
    if limit > 1:
        assert sha1(feeders.open(data)) == expected
        f = feeders.open(data)
        f.read(10)
        assert sha1(f) == hashlib.sha1(data[10:]).hexdigest()
        assert f.tell() == size and f.read() == b""
        assert sha1(data) == expected
        assert sha1(memoryview(data)[5:]) == hashlib.sha1(data[5:]).hexdigest()
    small = data[: 300_000 if limit == 1 else MIB]
    assert sha1(feeders.pipe(small, buffering=0)) == hashlib.sha1(small).hexdigest()


# ---- files: position and buffer state ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_partly_read_buffered_file_hashes_only_the_rest(feeders: Feeders, name: str) -> None:
    data = random_bytes(3 * MIB + 7, seed=11)
    hexdigest, _ = DIGESTS[name]
    with open(feeders.path(data), "rb") as f:
        assert f.read(100) == data[:100]  # the BufferedReader now holds more than it returned
        assert len(f.peek()) > 0
        assert hexdigest(f) == hashlib.new(name, data[100:]).hexdigest()
        assert f.read() == b""
        assert f.tell() == len(data)
        f.seek(17)  # the object stays usable
        assert f.read(5) == data[17:22]
        assert hexdigest(f) == hashlib.new(name, data[22:]).hexdigest()


def test_partly_read_unbuffered_and_seeked_files(feeders: Feeders) -> None:
    data = random_bytes(700_001, seed=12)
    with open(feeders.path(data), "rb", buffering=0) as f:
        f.read(1000)
        assert sha1(f) == hashlib.sha1(data[1000:]).hexdigest()
        assert f.read() == b""
    with open(feeders.path(data), "rb") as f:
        f.seek(654_321)
        assert sha1(f) == hashlib.sha1(data[654_321:]).hexdigest()
        f.seek(len(data) + 100)  # past the end: nothing left
        assert sha1(f) == hashlib.sha1(b"").hexdigest()
    with open(feeders.path(data), "rb") as f:
        f.read()
        assert md5(f) == hashlib.md5(b"").hexdigest()


def test_read_write_file_sees_pending_writes(feeders: Feeders) -> None:
    data = random_bytes(500_000, seed=13)
    path = feeders.path(data)
    with open(path, "r+b") as f:
        assert isinstance(f, io.BufferedRandom)
        f.write(b"X" * 10)  # still in Python's buffer
        f.seek(20)
        f.write(b"Y" * 5)
        f.seek(0)
        f.read(3)
        updated = b"X" * 10 + data[10:20] + b"Y" * 5 + data[25:]
        assert sha1(f) == hashlib.sha1(updated[3:]).hexdigest()
        assert f.read() == b""
    assert path.read_bytes() == updated


def test_pipe_partly_read_then_hashed(feeders: Feeders) -> None:
    data = random_bytes(3 * MIB + 7, seed=14)
    f = feeders.pipe(data, chunk=10_000)
    assert f.read(10) == data[:10]  # the BufferedReader may hold more of the pipe
    assert sha1(f) == hashlib.sha1(data[10:]).hexdigest()
    assert f.read() == b""


def test_pipe_with_a_slow_writer(tmp_path: Path) -> None:
    data = random_bytes(200_000, seed=15)
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb", buffering=0) as out:
            for start in range(0, len(data), 20_000):
                out.write(data[start : start + 20_000])
                time.sleep(0.01)

    thread = threading.Thread(target=feed)
    thread.start()
    with open(r, "rb") as f:
        assert md5(f) == hashlib.md5(data).hexdigest()
    thread.join()


@pytest.mark.parametrize("buffering", [-1, 0])
def test_non_blocking_pipe_is_waited_for(buffering: int) -> None:
    data = random_bytes(300_000, seed=16)
    r, w = os.pipe()
    os.set_blocking(r, False)

    def feed() -> None:
        time.sleep(0.05)
        with open(w, "wb", buffering=0) as out:
            for start in range(0, len(data), 50_000):
                out.write(data[start : start + 50_000])
                time.sleep(0.01)

    thread = threading.Thread(target=feed)
    thread.start()
    with open(r, "rb", buffering=buffering) as f:
        assert sha1(f) == hashlib.sha1(data).hexdigest()
    thread.join()


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/task/<tid>/stat")
@pytest.mark.parametrize("buffering", [-1, 0])
def test_pipe_made_non_blocking_while_it_is_hashed(buffering: int) -> None:
    """O_NONBLOCK belongs to the open pipe, which other holders of it (a process sharing the
    shell's pipe, a dup) may set while the descriptor path reads it in C. A read that then
    finds the pipe empty fails with EAGAIN; the loop waits for the pipe (poll) and goes on:
    the digest is of every byte, with no BlockingIOError."""
    first, second, rest = (random_bytes(n, seed=17 + n) for n in (50_000, 1000, 200_000))
    r, w = os.pipe()
    sharer = os.dup(r)  # (the same open pipe: its O_NONBLOCK is the hasher's)
    result: list[object] = []
    with open(r, "rb", buffering=buffering) as f:

        def hash_it() -> None:
            try:
                result.append(sha1(f))
            except BaseException as exc:  # (reported below)
                result.append(exc)

        hasher = threading.Thread(target=hash_it, daemon=True)
        hasher.start()
        try:
            os.write(w, first)
            # (in the C loop: it took the pipe's bytes)
            wait_until(lambda: unread(sharer) == 0, "gave up waiting", 10)
            os.set_blocking(sharer, False)
            os.write(w, second)  # (taken by a read that began blocking, or by a new one)
            wait_until(lambda: unread(sharer) == 0, "gave up waiting", 10)
            # Its next read finds the pipe empty: EAGAIN, then a wait in poll(). (Running or
            # waiting: it no longer waits inside a read.)
            wait_until(lambda: thread_state(hasher) == "S", "gave up waiting", 10)
            os.write(w, rest)
        finally:
            os.close(w)
            os.close(sharer)
        hasher.join(10)
    assert result == [hashlib.sha1(first + second + rest).hexdigest()]


def thread_state(thread: threading.Thread) -> str:
    """R (running), S (sleeping in a system call)... of a thread of this process (Linux)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def unread(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("file", "descriptor"),
        ("file-unbuffered", "descriptor"),
        ("file-small-buffer", "descriptor"),
        ("pipe", "descriptor"),
        ("pipe-unbuffered", "descriptor"),
        ("bytesio", "in-place"),
        ("read-only", "stream"),
        ("readinto-short", "stream"),
    ],
)
def test_each_input_kind_takes_its_path(
    feeders: Feeders, monkeypatch: pytest.MonkeyPatch, kind: str, path: str
) -> None:
    taken: list[str] = []
    real_update_fd = _digest._NativeHasher.update_fd
    real_stream = _digest._digest_stream_native

    def spy_update_fd(self: Any, fd: int, offset: int) -> int:
        taken.append("descriptor")
        return real_update_fd(self, fd, offset)

    def spy_stream(*args: Any) -> None:
        taken.append("stream")
        real_stream(*args)

    monkeypatch.setattr(_digest._NativeHasher, "update_fd", spy_update_fd)
    monkeypatch.setattr(_digest, "_digest_stream_native", spy_stream)
    data = random_bytes(1_000_000, seed=30)
    assert sha1(KINDS[kind](feeders, data)) == hashlib.sha1(data).hexdigest()
    assert taken == ([] if path == "in-place" else [path])


def test_wrappers_with_a_fileno_are_read_through_their_own_read(tmp_path: Path) -> None:
    # GzipFile.fileno() is the compressed file's descriptor: the digest must be of what
    # read() returns, so only exact FileIO / BufferedReader objects get the descriptor path.
    data = random_bytes(1_000_000, seed=17) + b"z" * 1_000_000
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as g:
        g.write(data)
    with gzip.open(path, "rb") as g:
        assert g.fileno() >= 0
        assert sha1(g) == hashlib.sha1(data).hexdigest()

    class Upper(io.BufferedReader):
        def readinto(self, b: Any) -> int:
            n = super().readinto(b)
            b[:n] = bytes(b[:n]).upper()
            return n

    plain = b"hello world " * 50_000
    (tmp_path / "t.txt").write_bytes(plain)
    with Upper(io.FileIO(tmp_path / "t.txt", "rb")) as f:
        assert sha1(f) == hashlib.sha1(plain.upper()).hexdigest()


def test_bytesio_positions_and_kinds() -> None:
    data = random_bytes(1_000_003, seed=18)
    shared = io.BytesIO(data)
    assert sha1(shared) == hashlib.sha1(data).hexdigest()
    assert shared.read() == b"" and shared.tell() == len(data)
    written = io.BytesIO()
    written.write(data)
    written.seek(0)
    assert sha1(written) == hashlib.sha1(data).hexdigest()
    assert written.read() == b""
    partly = io.BytesIO(data)
    partly.read(999)
    assert md5(partly) == hashlib.md5(data[999:]).hexdigest()
    written.write(b"more")  # still a working BytesIO afterwards
    assert written.getvalue() == data + b"more"


def test_buffer_kinds() -> None:
    data = random_bytes(100_001, seed=19)
    assert sha1(memoryview(data)[::3]) == hashlib.sha1(data[::3]).hexdigest()
    ints = array.array("I", range(1000))
    assert sha1(memoryview(ints)) == hashlib.sha1(ints.tobytes()).hexdigest()
    grid = memoryview(bytearray(data[:1200])).cast("B", (30, 40))
    assert md5(grid) == hashlib.md5(data[:1200]).hexdigest()
    assert sha1(bytearray()) == hashlib.sha1(b"").hexdigest()


def test_readinto_only_stream_crosses_once_per_block() -> None:
    data = random_bytes(2 * MIB, seed=20)

    class Full(io.RawIOBase):
        def __init__(self) -> None:
            self.pos = 0
            self.calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            self.calls += 1
            n = min(len(b), len(data) - self.pos)
            b[:n] = data[self.pos : self.pos + n]
            self.pos += n
            return n

    stream = Full()
    assert sha1(stream) == hashlib.sha1(data).hexdigest()
    assert stream.calls == 2 * MIB // (256 * 1024) + 1  # 256 KiB blocks, then EOF


def test_concurrent_digests_in_threads(feeders: Feeders) -> None:
    inputs = [random_bytes(10 * MIB + i, seed=i) for i in range(4)]
    paths = [feeders.path(d) for d in inputs]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        with open(paths[i], "rb") as f:
            results[i] = sha1(f) + md5(io.BytesIO(inputs[i])) + sha1(ShortReadinto(inputs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, data in enumerate(inputs):
        want = hashlib.sha1(data).hexdigest()
        assert results[i] == want + hashlib.md5(data).hexdigest() + want


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals")
@pytest.mark.parametrize("buffering", [0, -1])
def test_signal_interrupts_a_blocked_pipe_digest(buffering: int) -> None:
    # The C read loop returns on EINTR so Python runs the handler (Ctrl-C works the same way).
    r, w = os.pipe()
    os.write(w, b"some data, then the writer stalls")

    class Interrupted(Exception):
        pass

    def on_signal(signum: int, frame: Any) -> None:
        raise Interrupted

    main = threading.get_ident()
    old = signal.signal(signal.SIGUSR1, on_signal)
    timer = threading.Timer(0.2, lambda: signal.pthread_kill(main, signal.SIGUSR1))
    try:
        with open(r, "rb", buffering=buffering) as f:
            start = time.monotonic()
            timer.start()
            with pytest.raises(Interrupted):
                sha1(f)
            assert time.monotonic() - start < 5
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)
        os.close(w)


def test_read_errors_are_oserrors(tmp_path: Path) -> None:
    path = tmp_path / "d.bin"
    path.write_bytes(b"abc")
    with open(path, "rb") as f:
        pass
    with pytest.raises(ValueError):
        sha1(f)
    if sys.platform.startswith("linux"):
        with open("/proc/self/mem", "rb", buffering=0) as mem:  # pread at 0 fails: EIO
            with pytest.raises(OSError) as info:
                sha1(mem)
            assert info.value.errno == errno.EIO
            assert "sha1" in str(info.value)


# ---- wrong arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("func", [sha1, sha1_bytes, md5, md5_bytes])
@pytest.mark.parametrize("bad", ["abc", "", 42, 0, None, 1.5, True, [b"a"], object()])
def test_wrong_types_raise_type_error_naming_the_function(func: Any, bad: Any) -> None:
    with pytest.raises(TypeError, match=rf"^{func.__name__}: "):
        func(bad)


@pytest.mark.parametrize("func", [sha1, sha1_bytes, md5, md5_bytes])
def test_write_only_files_are_wrong_types(func: Any, tmp_path: Path) -> None:
    """API.md: a readable binary file-like object, or TypeError. A file opened "wb" (buffered
    or raw) is not readable: TypeError naming the function, and the file is left as it was."""
    path = tmp_path / "w.bin"
    with open(path, "wb") as wf:
        wf.write(b"kept")
        with pytest.raises(TypeError, match=rf"^{func.__name__}: .*write-only BufferedWriter"):
            func(wf)
        wf.write(b" and more")
    assert path.read_bytes() == b"kept and more"
    only = rf"^{func.__name__}: .*write-only FileIO"
    with open(path, "ab", buffering=0) as raw, pytest.raises(TypeError, match=only):
        func(raw)


def test_an_output_port_is_a_wrong_type(pki: Pki) -> None:
    """The output half of a TLS connection is not something to hash: TypeError, and the
    connection still works."""
    ports = connected_ports(pki)
    _cin, cout, sin, _sout = next(ports)
    try:
        with pytest.raises(TypeError, match=r"^sha1: .*write-only SSLOutputPort"):
            sha1(cout)
        cout.write(b"ping")
        cout.flush()
        assert sin.read(4) == b"ping"
    finally:
        next(ports, None)


@pytest.mark.parametrize("func", [sha1, md5_bytes])
def test_text_streams_are_rejected(func: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=rf"^{func.__name__}: .*text"):
        func(io.StringIO("abc"))
    (tmp_path / "t.txt").write_text("abc")
    with open(tmp_path / "t.txt") as text, pytest.raises(TypeError, match=func.__name__):
        func(text)

    class StrReader:
        def read(self, n: int = -1) -> str:
            return "abc"

    with pytest.raises(TypeError, match=rf"^{func.__name__}: read\(\) returned str"):
        func(StrReader())


def test_misbehaving_readinto_is_reported() -> None:
    class TooMuch:
        def readinto(self, b: Any) -> int:
            return len(b) + 1

    class NotInt:
        def readinto(self, b: Any) -> bytes:
            return b"x"

    with pytest.raises(OSError, match=r"^sha1: readinto"):
        sha1(TooMuch())
    with pytest.raises(TypeError, match=r"^md5: readinto"):
        md5(NotInt())


@pytest.mark.parametrize("func", [sha1_bytes, md5_bytes])
def test_a_readinto_count_is_checked_by_its_value(func: Any) -> None:
    """A readinto that returned an int subclass whose comparisons lie passed the range check:
    the digest then hashed that many bytes of memory past its 256 KiB block (a wrong digest
    of whatever lay there, or a crash: a segfault with 1000 MB). Its value is checked now;
    an honest subclass is still a count."""

    class Lying:
        def readinto(self, b: Any) -> int:
            return AgreeingInt(4000 * len(b))

    with pytest.raises(OSError, match=rf"^{func.__name__}: readinto\(\) returned \d+, outside"):
        func(Lying())

    class Honest(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            return type("Count", (int,), {})(self.data.readinto(b))

    data = random_bytes(600_000, seed=7)
    assert func(Honest(data)) == func(data)


class KeepsItsBlock(io.RawIOBase):
    """A stream whose readinto keeps (a reference to) every buffer it is lent, and remembers
    what each held when lent."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)
        self.kept: list[Any] = []
        self.lent_with: list[bytes] = []

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self.kept.append(b)
        self.lent_with.append(bytes(b))
        return self.data.readinto(b)


@pytest.mark.parametrize("path", ["native", "fallback"])
def test_a_stream_that_keeps_its_block_changes_no_later_digest(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each thread lent every readinto stream one 256 KiB block, reused from call to call. A
    stream that kept it could empty it afterwards, and every later digest of a stream in that
    thread was the digest of b"" (readinto into an empty buffer reads nothing: EOF); and the
    next stream was lent a block holding the last one's bytes. Each call has a block of its
    own now."""
    if path == "fallback":
        monkeypatch.setattr(_binding, "lib", None)
        monkeypatch.setattr(_digest, "_warn_fallback_once", lambda: None)
    secret = b"SECRET-" * 1000
    first = KeepsItsBlock(secret)
    assert sha1(first) == hashlib.sha1(secret).hexdigest()
    for kept in first.kept:
        kept.clear()  # (the digest is over: the block is the stream's to do with as it likes)
    data = random_bytes(300_000, seed=5)
    second = KeepsItsBlock(data)
    assert sha1(second) == hashlib.sha1(data).hexdigest()
    assert md5_bytes(KeepsItsBlock(data)) == hashlib.md5(data).digest()
    assert not any(b"SECRET-" in lent for lent in second.lent_with)


def test_empty_views_of_any_shape_hash_as_empty() -> None:
    empty = hashlib.sha1(b"").hexdigest()
    for view in (
        memoryview(bytes(64)).cast("B", (8, 8))[0:0],
        memoryview(array.array("d")),
        memoryview(bytes(64)).cast("B", (8, 8))[::2][0:0],
    ):
        assert sha1(view) == empty


@pytest.mark.parametrize("func", [sha1, md5_bytes])
def test_closed_inputs_are_value_errors_naming_the_function(func: Any, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with open(path, "rb") as f:
        pass
    with open(path, "rb", buffering=0) as raw:
        pass
    bio = io.BytesIO(b"abc")
    bio.close()
    view = memoryview(b"abc")
    view.release()
    for closed in (f, raw, bio, view):
        with pytest.raises(ValueError, match=rf"^{func.__name__}: "):
            func(closed)


def test_a_text_spooled_temporary_file_is_a_type_error() -> None:
    import tempfile

    with tempfile.SpooledTemporaryFile(mode="w+") as text:
        text.write("abc")
        text.seek(0)
        with pytest.raises(TypeError, match=r"^sha1: .*text"):
            sha1(text)
    with tempfile.SpooledTemporaryFile() as binary:  # (w+b)
        binary.write(b"abc")
        binary.seek(0)
        assert sha1(binary) == hashlib.sha1(b"abc").hexdigest()


def test_a_stream_that_always_returns_none_while_readable_is_an_error() -> None:
    """read() returning None means no data yet (non-blocking); a stream that returns it while
    its descriptor is readable, for ever, made the digest spin at 100 % of a core until
    interrupted. It gives up after a bounded number of such reads."""
    r, w = os.pipe()
    os.write(w, b"x")  # (readable for good)

    class Stuck:
        calls = 0

        def fileno(self) -> int:
            return r

        def read(self, n: int) -> Optional[bytes]:
            Stuck.calls += 1
            if Stuck.calls > 100_000:
                raise RuntimeError("still spinning")
            return None

    try:
        with pytest.raises(OSError, match=r"^sha1: the stream's read returned None"):
            sha1(Stuck())
    finally:
        os.close(r)
        os.close(w)


_FIPS_DEFAULT_CONF = """\
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
alg_section = algorithm_sect
[provider_sect]
default = default_sect
[default_sect]
activate = 1
[algorithm_sect]
default_properties = fips=yes
"""


@pytest.mark.skipif(not _binding.ssl_available, reason="the native module")
def test_digests_work_where_the_configuration_asks_for_fips_algorithms(tmp_path: Path) -> None:
    """A system whose OpenSSL configuration makes FIPS-approved algorithms the default (FIPS
    mode: default_properties = fips=yes) refused MD5 (and, with no FIPS provider, SHA-1):
    "digest failed (initialization error)", where hashlib(usedforsecurity=False) hashes.
    These are checksums, fetched as not for security ("-fips") as hashlib's are."""
    if _binding.lib.sp_openssl_version_number() < 0x30000000:
        pytest.skip("OpenSSL 1.1.1 has no properties")
    code = (
        "import io, sslports; from sslports.md5 import md5; from sslports.sha1 import sha1; "
        "assert sslports._binding.lib is not None; "
        "print(md5(b'abc'), md5(io.BytesIO(b'abc' * 100000)), sha1(b'abc'))"
    )
    out = python_under_openssl_conf(_FIPS_DEFAULT_CONF, tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        hashlib.md5(b"abc").hexdigest(),
        hashlib.md5(b"abc" * 100000).hexdigest(),
        hashlib.sha1(b"abc").hexdigest(),
    ]


# ---- hex helpers ---------------------------------------------------------------------------


def test_hex_round_trip() -> None:
    for size in (0, 1, 2, 20, 255, 4096):
        data = random_bytes(size, seed=21)
        text = bytes_to_hex_string(data)
        assert text == data.hex() and text == text.lower() and len(text) == 2 * size
        assert hex_string_to_bytes(text) == data
    assert bytes_to_hex_string(bytearray(b"\x00\xff")) == "00ff"
    assert bytes_to_hex_string(memoryview(b"\xab\xcd")) == "abcd"
    assert bytes_to_hex_string(sha1_bytes(b"abc")) == sha1(b"abc")


def test_hex_string_accepts_either_case() -> None:
    assert hex_string_to_bytes("DEADbeef") == b"\xde\xad\xbe\xef"
    assert hex_string_to_bytes("A9993E364706816ABA3E25717850C26C9CD0D89D") == sha1_bytes(b"abc")


@pytest.mark.parametrize("bad", ["a", "abc", "0g", "zz", " 0a", "0a ", "0x0a", "é1", "١٢"])
def test_hex_string_rejects_odd_length_and_non_hex(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^hex_string_to_bytes: "):
        hex_string_to_bytes(bad)


def test_hex_helpers_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^hex_string_to_bytes: not a hex string"):
        hex_string_to_bytes(" ab")  # (it said "odd number of hex digits (3)")
    with pytest.raises(ValueError, match=r"^hex_string_to_bytes: odd number of hex digits \(3\)"):
        hex_string_to_bytes("abc")

    class Lies(bytes):
        def hex(self, *args: Any) -> str:
            return "EVIL"

    assert bytes_to_hex_string(Lies(b"\x01\xff")) == "01ff"
    assert bytes_to_hex_string(memoryview(bytes(4)).cast("I")) == "00000000"


def test_hex_helpers_reject_wrong_types() -> None:
    for bad in (b"00", 12, None):
        with pytest.raises(TypeError, match=r"^hex_string_to_bytes: "):
            hex_string_to_bytes(bad)  # type: ignore[arg-type]
    for bad2 in ("00", 12, None, [1]):
        with pytest.raises(TypeError, match=r"^bytes_to_hex_string: "):
            bytes_to_hex_string(bad2)  # type: ignore[arg-type]
