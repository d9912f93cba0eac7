"""The ``sslports`` command line, run as ``python -m sslports`` in subprocesses.

Its peers are real: ``openssl s_server`` / ``s_client``, ``curl``, Python's :mod:`ssl`, and
``sha1sum`` / ``md5sum`` for the digest commands. Every subprocess is stopped by the fixture
that started it, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from certs import chain_file, make_cert
from conftest import random_bytes, read_exactly

import sslports

LOCAL = "127.0.0.1"
PEM = str(sslports.TEST_PEM)
OPENSSL = shutil.which("openssl")
CURL = shutil.which("curl")
SHA1SUM = shutil.which("sha1sum")
MD5SUM = shutil.which("md5sum")
TIMEOUT = 60

# The CLI must not trust TEST_PEM through the environment by accident.
ENV = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
ENV["PYTHONUNBUFFERED"] = "1"

needs_tls = pytest.mark.skipif(not sslports.ssl_available, reason="TLS not available")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def run_cli(*args: str, input: Optional[bytes] = None, timeout: float = TIMEOUT) -> Any:
    """``python -m sslports ARGS`` to completion; the CompletedProcess (bytes output)."""
    return subprocess.run(
        [sys.executable, "-m", "sslports", *args],
        input=input if input is not None else b"",
        capture_output=True,
        timeout=timeout,
        env=ENV,
    )


def connect_local(port: int, *args: str, input: Optional[bytes] = None) -> Any:
    """``python -m sslports connect 127.0.0.1:PORT --servername localhost ARGS``: the test
    servers listen on 127.0.0.1 only ("localhost" could reach another process on [::1])."""
    return run_cli("connect", f"{LOCAL}:{port}", "--servername", "localhost", *args, input=input)


def assert_one_error_line(stderr: bytes) -> str:
    """The stderr of an expected failure: exactly one line ``sslports: error: ...``."""
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("sslports: error: "), text
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def python_tls_server(serve: Callable[[ssl.SSLSocket], None]) -> Iterator[int]:
    """A Python ssl server on 127.0.0.1 for one connection, which serve(tls) handles in a
    thread; yields its port and joins the thread at the end. suppress_ragged_eofs=False: a
    cut without close_notify raises SSLEOFError."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(PEM)
    with socket.create_server((LOCAL, 0)) as lsock:
        lsock.settimeout(TIMEOUT)

        def run() -> None:
            conn, _ = lsock.accept()
            with server_ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
                tls.settimeout(TIMEOUT)
                serve(tls)

        server = threading.Thread(target=run, daemon=True)
        server.start()
        try:
            yield lsock.getsockname()[1]
        finally:
            server.join(TIMEOUT)


def read_one(tls: ssl.SSLSocket, seen: list[object]) -> None:
    """Append what one recv on `tls` gets (b"" for close_notify), or the error it raises."""
    try:
        seen.append(tls.recv(100))
    except OSError as exc:
        seen.append(exc)


def run_connect(
    port: int,
    *extra: str,
    feed: Optional[Callable[[Any], None]] = None,
    started: Optional[threading.Event] = None,
    interrupt: bool = True,
    to_a_helper_thread: bool = False,
) -> tuple[int, bytes, bytes]:
    """``connect -q`` to the server at `port`, its stdin a pipe left open (fed by `feed` in a
    thread, if given). With `interrupt`, Ctrl-C once the first line ("ready") arrived, or
    once `started` is set, and a second later with a feed (the write is stuck by then, if
    the server does not read); else wait for the command to end. `to_a_helper_thread`
    hands the SIGINT to one of the command's other threads, not its main thread (the
    kernel may hand a Ctrl-C to any thread). Returns the exit status, stdout and stderr."""
    command = ["connect", f"{LOCAL}:{port}", "--insecure", "-q", *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sslports", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**ENV, "PYTHONFAULTHANDLER": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feeder = threading.Thread(target=feed, args=(proc.stdin,), daemon=True)
    out = b""
    try:
        if feed is not None:
            feeder.start()
        if interrupt:
            if started is not None:
                assert started.wait(TIMEOUT)
                time.sleep(0.5)
            else:
                out = proc.stdout.readline()
                assert out == b"ready\n"
            if feed is not None:
                time.sleep(1.0)
                assert feeder.is_alive()  # (the command does not take more)
            if to_a_helper_thread:
                interrupt_a_helper_thread(proc.pid)
            else:
                proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(timeout=30)  # (the servers hold the connection for 60 s)
        except subprocess.TimeoutExpired:
            # Where it hangs: PYTHONFAULTHANDLER prints every thread's stack on SIGABRT.
            proc.send_signal(signal.SIGABRT)
            proc.wait(TIMEOUT)
            status = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out += proc.stdout.read()
        err = proc.stderr.read()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
        if feeder.is_alive():
            feeder.join(TIMEOUT)
    assert status is not None, "the command did not end; its stacks:\n" + err.decode(
        errors="replace"
    )
    return status, out, err


def interrupt_a_helper_thread(pid: int) -> None:
    """SIGINT to the newest thread of process `pid` (tgkill), not its main thread: connect's
    stdin thread, or serve's thread for its last client."""
    import ctypes

    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert tids, "the command runs no other thread"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.tgkill(pid, tids[-1], int(signal.SIGINT)) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


def feed_lots(stdin: Any) -> None:
    """Far more than the kernel's buffers and the sender's queue hold."""
    with contextlib.suppress(OSError):
        for _ in range(2000):
            stdin.write(b"x" * 65536)


def feed_a_line_then_lots(stdin: Any) -> None:
    """A request line, then far more than anything buffers, until the reader goes away."""
    with contextlib.suppress(OSError):
        stdin.write(b"hello\n")
        stdin.flush()
        feed_lots(stdin)


def wait_for_text(path: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Poll the file `path` (a subprocess's output) until it contains `needle`."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text("utf-8", "replace") if path.exists() else ""
        if needle in text:
            return text
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {needle!r}: {text}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {needle!r} within {timeout} s: {text}")
        time.sleep(0.02)


class Procs:
    """Starts subprocesses with their output in files, and stops them all at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def start(self, argv: list[str], stdin: Any = subprocess.DEVNULL) -> tuple[Any, Path, Path]:
        self.count += 1
        out = self.tmp / f"proc{self.count}.out"
        err = self.tmp / f"proc{self.count}.err"
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=fout, stderr=ferr, env=ENV)
        self.procs.append(proc)
        return proc, out, err

    def openssl_server(self, *args: str) -> int:
        """``openssl s_server`` on a free 127.0.0.1 port; returns the port once it accepts."""
        assert OPENSSL is not None
        for _attempt in range(5):
            port = free_port()
            proc, out, _err = self.start(
                [OPENSSL, "s_server", "-accept", f"{LOCAL}:{port}", *args],
                stdin=subprocess.PIPE,
            )
            try:
                wait_for_text(out, "ACCEPT", proc, 15)
            except RuntimeError:  # the port was taken in between: another one
                self.stop(proc)
                continue
            return port
        raise RuntimeError("openssl s_server did not start")

    def sslports_server(self, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
        """``python -m sslports serve --port 0 ARGS``; (process, port, stderr file)."""
        proc, out, err = self.start(
            [sys.executable, "-m", "sslports", "serve", "--port", "0", *args]
        )
        text = wait_for_text(out, "\n", proc, 30)
        match = re.match(r"listening on 127\.0\.0\.1:(\d+)\n", text)
        assert match, text
        return proc, int(match.group(1)), err

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def cleanup(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    made = Procs(tmp_path)
    yield made
    made.cleanup()


def curl(*args: str, port: int) -> Any:
    """curl with TEST_PEM as the only root and localhost pinned to 127.0.0.1."""
    assert CURL is not None
    pinned = ["--cacert", PEM, "--resolve", f"localhost:{port}:{LOCAL}"]
    return subprocess.run(
        [CURL, "-sS", "--max-time", "30", *pinned, *args],
        capture_output=True,
        timeout=TIMEOUT,
    )


# -- help, info, demo ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [[], ["connect"], ["serve"], ["sha1"], ["md5"], ["demo"], ["info"]]
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert b"usage: sslports" in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "COMMAND" in assert_one_error_line(result.stderr)


def test_info() -> None:
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert sslports.__version__ in text
    assert "ssl available" in text
    if sslports.ssl_available:
        assert "OpenSSL" in text
        assert "tls12" in text


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "sslports"
    if not script.exists():
        pytest.skip("the package is not installed with its console script here")
    result = subprocess.run([str(script), "info"], capture_output=True, timeout=TIMEOUT, env=ENV)
    assert result.returncode == 0, result.stderr


@needs_tls
def test_demo_runs_on_embedded_defaults() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout.decode()
    assert "All checks passed." in text
    assert "FAILED" not in text
    for fact in ("ALPN", "selected h2", "SNI callback", "channel binding", "SHA-1 of bytes sent"):
        assert fact in text
    assert "other.test" in text
    assert b"Traceback" not in result.stderr


# -- connect ----------------------------------------------------------------------------------


@needs_tls
@needs_openssl
def test_connect_verifies_openssl_www_server(procs: Procs) -> None:
    port = procs.openssl_server("-cert", PEM, "-www")
    result = run_cli(
        "connect",
        f"{LOCAL}:{port}",
        "--cafile",
        PEM,
        "--servername",
        "localhost",
        input=b"GET / HTTP/1.0\r\n\r\n",
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert re.search(r"protocol\s+tls1[23]", err), err
    assert re.search(r"verified\s+yes", err), err
    assert "CN=localhost" in err
    assert re.search(r"tls-(exporter|unique)\s+[0-9a-f]{24,}", err), err
    assert b"HTTP/1.0 200 ok" in result.stdout


@needs_tls
@needs_openssl
def test_connect_pipes_stdin_and_exits_when_server_closes(procs: Procs) -> None:
    port = procs.openssl_server("-cert", PEM, "-rev")
    lines = b"".join(b"line %d of the test\n" % i for i in range(50))
    result = connect_local(
        port,
        "--cafile",
        PEM,
        "--tls12",
        "--alpn",
        "x",
        input=lines,
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert re.search(r"protocol\s+tls12", err), err
    assert re.search(r"tls-unique\s+[0-9a-f]{24}\b", err), err
    for i in range(50):
        assert (b"line %d of the test" % i)[::-1] in result.stdout


def test_connect_reads_a_non_blocking_stdin(procs: Procs) -> None:
    """A stdin that another program left non-blocking (a shared terminal or pipe): the first
    read failed with EAGAIN, which the copying thread took for a closed connection; it
    stopped without a word or a close_notify, and the command waited for the server for
    ever. It now waits for stdin to be readable: the line is echoed, then the server's
    close after our close_notify ends the command."""
    _proc, port, _err = procs.sslports_server("--echo")
    r, w = os.pipe()
    os.set_blocking(r, False)
    with open(r, "rb", buffering=0) as stdin:
        client, out, err = procs.start(
            [sys.executable, "-m", "sslports", "connect", f"{LOCAL}:{port}", "--cafile", PEM,
             "--servername", "localhost", "-q"],
            stdin=stdin,
        )  # fmt: skip
    with open(w, "wb", buffering=0) as feed:
        time.sleep(0.5)  # (the command is reading: EAGAIN, before the fix)
        feed.write(b"hello\n")
    assert client.wait(TIMEOUT) == 0, err.read_text()
    assert out.read_bytes() == b"hello\n"


@needs_tls
def test_connect_exits_cleanly_when_server_closes_while_stdin_stays_open() -> None:
    """The server ends the connection while stdin is still open (a terminal nobody typed in):
    the command exits 0 with the server's bytes, although its stdin thread is still waiting
    to read (CPython aborts at exit if that thread holds sys.stdin's buffer lock)."""
    ctx = sslports.ssl_make_server_context("auto")
    sslports.ssl_load_certificate_chain(ctx, str(PEM))
    sslports.ssl_load_private_key(ctx, str(PEM))
    listener = sslports.ssl_listen(0, 4, True, "127.0.0.1", ctx)
    port = sslports.ssl_addresses(listener, True)[1]

    def serve() -> None:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            out.write(b"bye\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sslports", "connect", f"127.0.0.1:{port}", "--insecure"],
        stdin=subprocess.PIPE,  # left open: the stdin thread waits in read
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.wait(timeout=TIMEOUT)  # (its output is a few hundred bytes: no pipe fills up)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out, err = proc.stdout.read(), proc.stderr.read()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()
        server.join(TIMEOUT)
        sslports.ssl_close(listener)
    assert proc.returncode == 0, err.decode()
    assert b"Fatal Python error" not in err, err.decode()
    assert out == b"bye\n"


@needs_tls
def test_connect_fails_when_the_server_closes_while_stdin_still_has_bytes() -> None:
    """A server that answers the first line and closes, while stdin keeps coming: status 1,
    every run (cli.md), not 0 when the close happened to fall between two of the stdin
    thread's writes (its next chunk then met the port closed under it, silently)."""
    ctx = sslports.ssl_make_server_context("auto")
    sslports.ssl_load_certificate_chain(ctx, str(PEM))
    sslports.ssl_load_private_key(ctx, str(PEM))
    listener = sslports.ssl_listen(0, 8, True, "127.0.0.1", ctx)
    port = sslports.ssl_addresses(listener, True)[1]
    runs = 5

    def serve() -> None:
        for _ in range(runs):
            inp, out = sslports.ssl_accept(listener)
            with inp, out:
                inp.readline()
                out.write(b"bye\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        for _ in range(runs):
            proc = subprocess.Popen(
                [sys.executable, "-m", "sslports", "connect", f"127.0.0.1:{port}", "--insecure"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=ENV,
            )
            assert proc.stdin is not None
            feeder = threading.Thread(target=feed_a_line_then_lots, args=(proc.stdin,))
            feeder.start()
            try:
                proc.wait(timeout=TIMEOUT)  # (its output is a few bytes: no pipe fills up)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                assert proc.stdout is not None and proc.stderr is not None
                out, err = proc.stdout.read(), proc.stderr.read()
                proc.stdout.close()
                proc.stderr.close()
                feeder.join(TIMEOUT)
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            assert proc.returncode == 1, err.decode()
            assert out == b"bye\n"
            assert "Traceback" not in err.decode(), err.decode()
    finally:
        sslports.ssl_close(listener)  # (first: a failed run leaves the server in accept)
        server.join(TIMEOUT)


@needs_tls
@needs_openssl
def test_connect_offers_alpn(procs: Procs) -> None:
    port = procs.openssl_server("-cert", PEM, "-www", "-alpn", "h2,http/1.1")
    result = connect_local(
        port,
        "--cafile",
        PEM,
        "--alpn",
        "http/1.1,h2",
        "--tls13",
        input=b"GET / HTTP/1.0\r\n\r\n",
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert re.search(r"alpn\s+h2", err), err
    assert re.search(r"protocol\s+tls13", err), err


@needs_tls
@needs_openssl
def test_connect_secure_rejects_self_signed_server(procs: Procs) -> None:
    port = procs.openssl_server("-cert", PEM, "-www")
    result = connect_local(port, "--secure", input=b"")
    assert result.returncode == 1
    line = assert_one_error_line(result.stderr)
    assert "certificate verify failed" in line
    assert result.stdout == b""


@needs_tls
@needs_openssl
def test_connect_wrong_servername_fails_with_cafile(procs: Procs) -> None:
    port = procs.openssl_server("-cert", PEM, "-www")
    result = run_cli("connect", f"{LOCAL}:{port}", "--cafile", PEM, "--servername", "example.org")
    assert result.returncode == 1
    assert "hostname mismatch" in assert_one_error_line(result.stderr)


@needs_tls
@needs_openssl
def test_connect_insecure_reports_unverified(procs: Procs) -> None:
    port = procs.openssl_server("-cert", PEM, "-www")
    result = connect_local(
        port,
        "--insecure",
        input=b"GET / HTTP/1.0\r\n\r\n",
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert re.search(r"verified\s+no", err), err
    assert b"HTTP/1.0 200 ok" in result.stdout


@needs_tls
def test_connect_to_an_unresolvable_name() -> None:
    result = run_cli("connect", "no-such-host.invalid:443")
    assert result.returncode == 1
    assert "cannot resolve 'no-such-host.invalid'" in assert_one_error_line(result.stderr)


@needs_tls
def test_connect_handshake_timeout_is_one_line() -> None:
    """A server that accepts and says nothing: --timeout ends the handshake with one line,
    not a traceback and not a wait for ever."""
    with socket.create_server((LOCAL, 0)) as silent:
        port = silent.getsockname()[1]
        result = run_cli("connect", f"{LOCAL}:{port}", "--timeout", "0.5")
    assert result.returncode == 1
    line = assert_one_error_line(result.stderr)
    assert line.endswith(f"TLS handshake with {LOCAL}:{port} timed out after 0.5 s"), line


@needs_tls
def test_a_key_log_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """SSLKEYLOGFILE naming a file in a missing directory: the connection works, and stderr
    says so once, in one line, not with a traceback per secret (five per TLS 1.3 connection,
    which Python's last-resort logging handler printed whole)."""
    missing = tmp_path / "no-such-dir" / "keys.log"

    def serve(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"hello\n")
        tls.unwrap()

    with python_tls_server(serve) as port:
        result = subprocess.run(
            [sys.executable, "-m", "sslports", "connect", f"{LOCAL}:{port}", "--insecure", "-q"],
            input=b"",
            capture_output=True,
            timeout=TIMEOUT,
            env={**ENV, "SSLKEYLOGFILE": str(missing)},
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\n"
    text = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    assert text.splitlines() == [
        f"sslports: cannot append to SSLKEYLOGFILE: {missing}: No such file or directory"
    ], text


@needs_tls
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare: a network namespace",
)
def test_a_tcp_connect_the_system_gives_up_on_is_one_line() -> None:
    """connect without --timeout to an address whose SYNs vanish: the kernel gives up
    (ETIMEDOUT, after one SYN retry in a namespace of its own), and the command says so in one
    line. The error is a TimeoutError from Python 3.10, which the command took for its own
    --timeout and then failed formatting the missing value ("unexpected TypeError")."""
    script = (
        "ip link set lo up && ip route add 10.99.0.0/16 dev lo && "
        "sysctl -q -w net.ipv4.tcp_syn_retries=1 && "
        f'exec "{sys.executable}" -m sslports connect 10.99.0.1:443'
    )
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        input=b"",
        capture_output=True,
        timeout=TIMEOUT,
        env=ENV,
    )
    assert result.returncode == 1, result.stderr
    line = assert_one_error_line(result.stderr)
    assert line == "sslports: error: cannot connect to 10.99.0.1:443: Connection timed out", line


@needs_tls
def test_connect_refused() -> None:
    port = free_port()  # nothing listens there
    result = run_cli("connect", f"{LOCAL}:{port}")
    assert result.returncode == 1
    assert "refused" in assert_one_error_line(result.stderr).lower()


@pytest.mark.parametrize(
    "args",
    [
        ["connect", "no-port-here"],
        ["connect", "localhost:0"],
        ["connect", "localhost:99999"],
        ["connect", "::1:443"],
        ["connect", "[::1]443"],
        ["connect", "[::1"],
        ["connect", ":443"],
        ["connect", "localhost:https"],
        ["connect", "localhost:443", "--timeout", "0"],
        ["connect", "localhost:443", "--timeout", "nan"],
        ["connect", "localhost:443", "--timeout", "soon"],
        ["connect", "localhost:443", "--key", PEM],
        ["serve", "--key", PEM],
        ["connect", "localhost:443", "--alpn", "a," + "x" * 300],
        # (each name fits, the list does not: 65535 bytes on the wire)
        ["connect", "localhost:443", "--alpn", ",".join(["x" * 250] * 300)],
        ["serve", "--alpn", ",".join(["x" * 250] * 300)],
        # (every label fits, the name does not: 253 characters)
        ["connect", "localhost:443", "--servername", "a" * 9 + ".a" * 150],
        ["connect", "a" * 9 + ".a" * 150 + ":443"],
        ["serve", "--host", "a" * 9 + ".a" * 150],
        ["connect", "localhost:443", "--tls12", "--tls13"],
        ["connect", "localhost:443", "--cafile", "/nonexistent/ca.pem"],
        ["serve", "--echo", "--www"],
        ["serve", "--host", ""],
        ["connect", "localhost:443", "--servername", ""],
        ["serve", "--dir", "/nonexistent/dir"],
        ["sha1", "--no-such-option"],
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert_one_error_line(result.stderr)


# -- serve ------------------------------------------------------------------------------------


@needs_tls
@needs_openssl
def test_serve_echo_with_openssl_s_client(procs: Procs) -> None:
    _server, port, _err = procs.sslports_server("--echo")
    assert OPENSSL is not None
    proc = subprocess.Popen(
        [
            OPENSSL,
            "s_client",
            "-connect",
            f"{LOCAL}:{port}",
            "-servername",
            "localhost",
            "-CAfile",
            PEM,
            "-verify_return_error",
            "-quiet",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.procs.append(proc)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"echo me, please\n")
    proc.stdin.flush()
    got = b""
    deadline = time.monotonic() + 30
    os.set_blocking(proc.stdout.fileno(), False)
    while b"echo me, please\n" not in got and time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            got += chunk
        time.sleep(0.02)
    assert b"echo me, please\n" in got


@needs_tls
def test_serve_echo_with_python_ssl_client(procs: Procs) -> None:
    _server, port, _err = procs.sslports_server("--echo", "--alpn", "h2,http/1.1")
    ctx = ssl.create_default_context(cafile=PEM)
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    payload = os.urandom(200_000)
    raw = socket.create_connection((LOCAL, port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:  # takes over `raw`
        assert tls.selected_alpn_protocol() == "h2"
        tls.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = tls.recv(65536)
            assert chunk, "server closed early"
            got += chunk
    assert got == payload


@needs_tls
def test_serve_logs_escape_what_clients_send(procs: Procs, tmp_path: Path) -> None:
    """serve's log carries each request's path (and, on errors, its method): a client's
    escape sequences reached the terminal raw (clear it, retitle it, fake a line), and an
    error's path was logged whole. They are escaped now, and an error's detail is cut."""
    (tmp_path / "site").mkdir()
    server, port, err = procs.sslports_server("--dir", str(tmp_path / "site"))
    ctx = ssl.create_default_context(cafile=PEM)
    for request in (b"GET /\x1b[2J\x1b]0;pwned\x07 HTTP/1.0\r\n\r\n",
                    b"\x1b[31mEVIL / HTTP/1.0\r\n\r\n",
                    b"GET /" + b"a" * 5000 + b" HTTP/1.0\r\n\r\n"):  # fmt: skip
        raw = socket.create_connection((LOCAL, port), timeout=30)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(request)
            with contextlib.suppress(OSError):
                while tls.recv(65536):
                    pass
    deadline = time.monotonic() + 20
    while err.read_bytes().count(b"\n") < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    procs.stop(server)
    log = err.read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log, log
    assert b"/\\x1b[2J\\x1b]0;pwned\\x07" in log, log
    assert b"\\x1b[31mEVIL" in log, log
    assert all(len(line) < 400 for line in log.splitlines()), log


@needs_tls
def test_serve_names_a_client_that_reset_as_its_handshake_ended(procs: Procs) -> None:
    """A client gone by the end of its handshake (a reset) was logged as "client": the
    socket no longer tells its peer. The address accept() gave is used then."""
    server, port, err = procs.sslports_server("--echo")
    ctx = ssl.create_default_context(cafile=PEM)
    ports = []
    for _ in range(5):
        raw = socket.create_connection((LOCAL, port), timeout=30)
        ports.append(raw.getsockname()[1])
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"x" * 1000)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
    deadline = time.monotonic() + 20
    while err.read_bytes().count(b"\n") < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    procs.stop(server)
    log = err.read_text("utf-8", "replace")
    assert "serve: client:" not in log, log
    assert any(f"127.0.0.1:{client_port}: connected" in log for client_port in ports), log


@needs_tls
@needs_curl
def test_serve_www_with_curl(procs: Procs) -> None:
    _server, port, _err = procs.sslports_server("--www")
    result = curl(f"https://localhost:{port}/", port=port)
    assert result.returncode == 0, result.stderr
    page = result.stdout.decode()
    assert re.search(r"protocol\s+tls1[23]", page), page
    assert re.search(r"cipher\s+\S+", page), page
    assert "client certificate" in page


@needs_tls
@needs_curl
def test_serve_www_verifies_client_and_survives_failed_handshakes(procs: Procs) -> None:
    _server, port, err = procs.sslports_server("--www", "--verify-client", PEM)
    without_cert = curl(f"https://localhost:{port}/", port=port)
    assert without_cert.returncode != 0
    with socket.create_connection((LOCAL, port), timeout=30) as raw:  # not TLS at all
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with contextlib.suppress(OSError):
            raw.recv(100)
    with_cert = curl(f"https://localhost:{port}/", "--cert", PEM, port=port)
    assert with_cert.returncode == 0, with_cert.stderr
    page = with_cert.stdout.decode()
    assert re.search(r"verified\s+yes", page), page
    assert "CN=localhost" in page
    ours = connect_local(
        port,
        "--cafile",
        PEM,
        "--cert",
        PEM,
        input=b"GET / HTTP/1.0\r\n\r\n",
    )
    assert ours.returncode == 0, ours.stderr
    assert re.search(rb"client certificate\s+required and verified", ours.stdout), ours.stdout
    log = err.read_text()
    assert log.count("handshake failed") >= 2, log
    assert "Traceback" not in log


@needs_tls
@needs_curl
def test_serve_dir_streams_files_byte_identical(procs: Procs, tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    blob = os.urandom(3 * 1024 * 1024 + 17)
    (root / "sub" / "blob.bin").write_bytes(blob)
    (root / "hello.txt").write_text("hello\n")
    (tmp_path / "secret.txt").write_text("outside the served directory\n")
    _server, port, _err = procs.sslports_server("--dir", str(root))

    fetched = tmp_path / "fetched.bin"
    result = curl(f"https://localhost:{port}/sub/blob.bin", "-o", str(fetched), port=port)
    assert result.returncode == 0, result.stderr
    assert fetched.read_bytes() == blob

    listing = curl("-w", "%{http_code}", f"https://localhost:{port}/", port=port)
    assert listing.stdout.endswith(b"200")
    assert b"hello.txt" in listing.stdout and b"sub/" in listing.stdout

    missing = curl("-w", "%{http_code}", f"https://localhost:{port}/nope.txt", port=port)
    assert missing.stdout.endswith(b"404")

    for escape in ("/../secret.txt", "/sub/../../secret.txt", "/%2e%2e/secret.txt"):
        refused = curl(
            "--path-as-is", "-w", "%{http_code}", f"https://localhost:{port}{escape}", port=port
        )
        assert refused.stdout.endswith(b"403"), (escape, refused.stdout)
        assert b"outside the served directory" not in refused.stdout


def _raw_request(port: int, request: bytes) -> bytes:
    """Send `request` as is over TLS to the local server; its answer, read as curl reads it
    (the head, then Content-Length bytes: the server closes only after the client)."""
    inp, out = sslports.ssl_connect(LOCAL, port, timeout=30)
    with inp, out:
        out.write(request)
        out.flush()
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = inp.readline()
            assert line, head
            head += line
        length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
        assert length, head
        return head + inp.read(int(length.group(1)))


@needs_tls
@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 1 or 2 in the child (preexec_fn)")
@pytest.mark.parametrize("closed", [1, 2], ids=["stdout", "stderr"])
def test_connect_started_with_stdout_or_stderr_closed(procs: Procs, closed: int) -> None:
    """Started with stdout closed, connect said "unexpected AttributeError" (the third API
    audit); it now fails with the write error sha1 gives. With stderr closed it relayed
    nothing and failed; it now runs as usual, unheard (as openssl s_client does)."""
    _server, port, _err = procs.sslports_server()
    r = subprocess.run(
        [sys.executable, "-m", "sslports", "connect", f"127.0.0.1:{port}", "--insecure"],
        input=b"hello\n",
        stdout=subprocess.DEVNULL if closed == 1 else subprocess.PIPE,
        stderr=subprocess.DEVNULL if closed == 2 else subprocess.PIPE,
        timeout=TIMEOUT,
        env=ENV,
        preexec_fn=lambda: os.close(closed),
    )
    if closed == 1:
        assert r.returncode == 1
        assert r.stderr.endswith(b"\nsslports: error: write error: standard output is closed\n")
        assert b"unexpected" not in r.stderr
    else:
        assert (r.returncode, r.stdout) == (0, b"hello\n")


@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 1 in the child (preexec_fn)")
@pytest.mark.parametrize("command", ["info", "demo"])
def test_a_report_started_with_stdout_closed_is_a_write_error(command: str) -> None:
    """info and demo print a report and nothing else: started with stdout closed they
    exited 0 having said nothing; now the write error the other commands give, status 1."""
    r = subprocess.run(
        [sys.executable, "-m", "sslports", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=TIMEOUT,
        env=ENV,
        preexec_fn=lambda: os.close(1),
    )
    assert r.returncode == 1, r.stderr
    line = assert_one_error_line(r.stderr)
    assert line == "sslports: error: write error: standard output is closed", line


@needs_tls
@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 1 in the child (preexec_fn)")
def test_connect_started_with_stdout_closed_still_ends_with_close_notify() -> None:
    """Its output port was left to the collector, after the command had closed the socket
    under it: the server saw the connection cut without close_notify, and a debug CPython
    printed the loss at exit ("Exception ignored in: <SSLOutputPort closed>", CI, 1 run in
    10). The command now closes its ports first, which says goodbye as with stdout open."""
    seen: list[object] = []
    with python_tls_server(lambda tls: read_one(tls, seen)) as port:
        command = ["connect", f"{LOCAL}:{port}", "--insecure"]
        r = subprocess.run(
            [sys.executable, "-X", "dev", "-m", "sslports", *command],
            input=b"",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=TIMEOUT,
            env=ENV,
            preexec_fn=lambda: os.close(1),
        )
    assert r.returncode == 1, r.stderr.decode()
    assert r.stderr.endswith(b"\nsslports: error: write error: standard output is closed\n")
    assert b"Exception ignored" not in r.stderr, r.stderr.decode()
    assert seen == [b""]  # the client's close_notify, not a cut


@needs_tls
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_serve_dir_lists_and_serves_a_name_that_is_not_utf8(procs: Procs, tmp_path: Path) -> None:
    """A file name that is not UTF-8 made the whole listing fail (the connection closed without
    an answer: "surrogates not allowed"; the third API audit). It is listed (U+FFFD shown),
    and its link, which quotes its bytes, serves it."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "ok.txt").write_text("ok\n")
    with open(os.path.join(os.fsencode(root), b"bad\xffname"), "wb") as f:
        f.write(b"odd\n")
    _server, port, _err = procs.sslports_server("--dir", str(root))
    listing = _raw_request(port, b"GET / HTTP/1.0\r\n\r\n")
    assert listing.startswith(b"HTTP/1.0 200 "), listing[:80]
    assert b'href="/bad%FFname"' in listing and "bad\ufffdname".encode() in listing
    assert b'href="/ok.txt"' in listing
    answer = _raw_request(port, b"GET /bad%FFname HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"\r\n\r\nodd\n"), answer


@needs_tls
def test_serve_answers_bad_requests_with_their_status(procs: Procs, tmp_path: Path) -> None:
    """--dir and --www: a request the server cannot serve gets its HTTP status, one page,
    and the server goes on serving (the next good request is answered)."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    dir_server, dir_port, dir_err = procs.sslports_server("--dir", str(root))
    _www_server, www_port, _www_err = procs.sslports_server("--www")
    cases = [
        (dir_port, b"POST /hello.txt HTTP/1.0\r\n\r\n", b"405"),
        (www_port, b"POST / HTTP/1.0\r\n\r\n", b"405"),
        (dir_port, b"GET /a%00b HTTP/1.0\r\n\r\n", b"400"),
        (dir_port, b"GET /%ff%fe HTTP/1.0\r\n\r\n", b"404"),  # (a name's bytes: none here)
        (dir_port, b"GET /hello.txt\r\n\r\n", b"400"),  # (no HTTP version)
        (dir_port, b"GET / HTTP/1.0\r\n" + b"X-Filler: y\r\n" * 200 + b"\r\n", b"431"),
    ]
    for port, request, status in cases:
        answer = _raw_request(port, request)
        assert answer.startswith(b"HTTP/1.0 " + status + b" "), (request[:40], answer[:80])
    # a symlink loop, a malformed absolute URL: answered (curl said "Empty reply from server")
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    for request, status in [
        (b"GET /loop1 HTTP/1.0\r\n\r\n", b"404"),
        (b"GET http://[/x HTTP/1.0\r\n\r\n", b"400"),
        (b"GET http://localhost:bad/hello.txt HTTP/1.0\r\n\r\n", b"400"),  # (it served it)
        (b"GET /hello.txt/ HTTP/1.0\r\n\r\n", b"404"),  # (a file as a directory: it served it)
    ]:
        answer = _raw_request(dir_port, request)
        assert answer.startswith(b"HTTP/1.0 " + status + b" "), (request, answer[:80])
    # "//hello.txt" is a path, not a URL naming the host "hello.txt" (it listed the root)
    answer = _raw_request(dir_port, b"GET //hello.txt HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"\r\n\r\nhello\n"), answer
    answer = _raw_request(dir_port, b"GET http://localhost/hello.txt?x=1 HTTP/1.0\r\n\r\n")
    assert answer.endswith(b"\r\n\r\nhello\n"), answer
    # ... and a listing under "//" links with one slash ("//hello.txt" names the host hello.txt)
    answer = _raw_request(dir_port, b"GET // HTTP/1.0\r\n\r\n")
    assert b'href="/hello.txt"' in answer, answer
    # blank lines before the request line are tolerated (RFC 9112 2.2)
    answer = _raw_request(dir_port, b"\r\n\r\nGET /hello.txt HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 ") and answer.endswith(b"\r\n\r\nhello\n"), answer
    # a client that closes without a request: logged, and the server still serves
    inp, out = sslports.ssl_connect(LOCAL, dir_port, timeout=30)
    inp.close()
    out.close()
    answer = _raw_request(dir_port, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert answer.endswith(b"\r\n\r\nhello\n")
    log = wait_for_text(dir_err, "closed before sending a complete request", dir_server, 30)
    assert "Traceback" not in log


@needs_tls
def test_serve_closes_after_each_reply(procs: Procs, tmp_path: Path) -> None:
    """A client that reads until the server closes (HTTP/1.0 tools, `openssl s_client
    -quiet`) gets the whole reply and then EOF while it keeps its own end open. The server
    used to wait up to 5 s for the client to close first: such a client waited 5 s per
    request (its read timed out here). A 4 MiB file, most of it still on its way when the
    server closes, arrives whole (the ports' lingering close)."""
    root = tmp_path / "site"
    root.mkdir()
    big = random_bytes(4 << 20, seed=7)
    (root / "big.bin").write_bytes(big)
    _dir_server, dir_port, _err = procs.sslports_server("--dir", str(root))
    _www_server, www_port, _www_err = procs.sslports_server("--www")
    for port, target in ((www_port, b"/"), (dir_port, b"/big.bin")):
        inp, out = sslports.ssl_connect(LOCAL, port, timeout=30)
        with inp, out:
            out.write(b"GET " + target + b" HTTP/1.0\r\n\r\n")
            out.flush()
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                line = inp.readline()
                assert line, head
                head += line
            assert head.startswith(b"HTTP/1.0 200 "), head[:80]
            length = re.search(rb"\r\nContent-Length: (\d+)", head)
            assert length, head
            body = read_exactly(inp, int(length.group(1)))
            # then the server's EOF: well under the 5 s it used to wait (the transfer above
            # is not timed: a busy machine may take its time)
            inp.settimeout(3.0)
            assert inp.read() == b""
        if target == b"/big.bin":
            assert body == big


@needs_tls
def test_serve_ctrl_c_stops_cleanly(procs: Procs) -> None:
    server, port, err = procs.sslports_server("--echo")
    with socket.create_connection((LOCAL, port), timeout=30):  # an idle client meanwhile
        server.send_signal(signal.SIGINT)
        returncode = server.wait(30)
    assert returncode in (0, 130)
    assert "Traceback" not in err.read_text()


@needs_tls
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_serve_ctrl_c_taken_by_a_client_s_thread_still_stops(procs: Procs) -> None:
    """A Ctrl-C the kernel hands to the thread serving a client, not to the main thread
    waiting for the next client: the server still stops at once. (It used to wait for the
    next client to arrive.)"""
    server, port, err = procs.sslports_server("--echo")
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((LOCAL, port), timeout=30) as raw,
        client_ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"ping\n")
        assert read_exactly(tls, 5) == b"ping\n"  # (its thread is serving it)
        interrupt_a_helper_thread(server.pid)
        try:
            returncode = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise AssertionError("serve did not stop") from None
    assert returncode == 130
    assert "serve: interrupted, stopped" in err.read_text()
    assert "Traceback" not in err.read_text()


@needs_tls
def test_serve_a_client_that_stalls_its_handshake_delays_no_other(procs: Procs) -> None:
    """Each client's handshake runs in its own thread: a client that connects and sends
    nothing (a port scanner, `nc`) no longer keeps the next one waiting for the whole
    --handshake-timeout, here 120 s against the next client's 30 s deadline."""
    server, port, err = procs.sslports_server("--echo", "--handshake-timeout", "120")
    with socket.create_connection((LOCAL, port), timeout=30):  # idle, no ClientHello
        time.sleep(0.2)  # (the server has taken it by now, or takes it first)
        done = run_cli(
            "connect", f"{LOCAL}:{port}", "--insecure", "-q", input=b"hello\n", timeout=30
        )
    assert done.returncode == 0, done.stderr
    assert b"hello\n" in done.stdout
    assert server.poll() is None
    assert "Traceback" not in err.read_text()


@needs_tls
def test_serve_sigterm_stops_cleanly(procs: Procs) -> None:
    server, _port, err = procs.sslports_server("--echo")
    server.terminate()
    assert server.wait(30) == 0
    assert "Traceback" not in err.read_text()


@needs_tls
def test_serve_port_in_use_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind((LOCAL, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 1
    assert "cannot listen" in assert_one_error_line(result.stderr.split(b"\n", 1)[1])


# -- sha1 / md5 --------------------------------------------------------------------------------


@pytest.fixture
def digest_files(tmp_path: Path) -> list[str]:
    files = {
        "empty": b"",
        "abc.txt": b"abc",
        "with space.bin": os.urandom(100_000),
        "big.bin": os.urandom(5 * 1024 * 1024 + 3),
        "back\\slash": b"escaped name",
    }
    names = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        names.append(name)
    return names


@pytest.mark.parametrize("algo", ["sha1", "md5"])
def test_digest_output_equals_coreutils(algo: str, digest_files: list[str], tmp_path: Path) -> None:
    tool = SHA1SUM if algo == "sha1" else MD5SUM
    if tool is None:
        pytest.skip(f"{algo}sum is not installed")
    ours = subprocess.run(
        [sys.executable, "-m", "sslports", algo, *digest_files],
        capture_output=True,
        cwd=tmp_path,
        timeout=TIMEOUT,
        env=ENV,
    )
    theirs = subprocess.run([tool, *digest_files], capture_output=True, cwd=tmp_path, timeout=60)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize("algo", ["sha1", "md5"])
def test_digest_of_stdin(algo: str) -> None:
    data = os.urandom(70_000)
    result = run_cli(algo, "-", input=data)
    assert result.returncode == 0
    assert result.stdout == f"{hashlib.new(algo, data).hexdigest()}  -\n".encode()


@pytest.mark.parametrize("algo", ["sha1", "md5"])
def test_digest_check_round_trip_and_tampering(
    algo: str, digest_files: list[str], tmp_path: Path
) -> None:
    def cli(*args: str) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "sslports", algo, *args],
            capture_output=True,
            cwd=tmp_path,
            timeout=TIMEOUT,
            env=ENV,
        )

    sums = cli(*digest_files)
    assert sums.returncode == 0
    (tmp_path / "SUMS").write_bytes(sums.stdout)

    ok = cli("-c", "SUMS")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.decode().splitlines() == [f"{name}: OK" for name in digest_files]

    (tmp_path / "abc.txt").write_bytes(b"abd")
    tampered = cli("-c", "SUMS")
    assert tampered.returncode == 1
    assert "abc.txt: FAILED" in tampered.stdout.decode().splitlines()
    assert "empty: OK" in tampered.stdout.decode().splitlines()
    assert "1 computed checksum did NOT match" in tampered.stderr.decode()
    assert "Traceback" not in tampered.stderr.decode()

    tool = SHA1SUM if algo == "sha1" else MD5SUM
    if tool is not None:  # coreutils agrees with the verdicts
        theirs = subprocess.run([tool, "-c", "SUMS"], capture_output=True, cwd=tmp_path, timeout=60)
        assert theirs.returncode == 1
        assert theirs.stdout == tampered.stdout


def test_digest_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """``sslports sha1 FILES... | head -1``: once the reader of stdout is gone, the command
    stops with status 1 and says nothing (as coreutils do): no traceback, no BrokenPipeError
    line for each later file."""
    files = []
    for i in range(2000):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"%d\n" % i)
        files.append(str(f))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sslports", "sha1", *files],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        first = proc.stdout.readline()
        proc.stdout.close()  # (head -1 exits)
        err = proc.stderr.read()
        assert proc.wait(TIMEOUT) == 1
    assert first.endswith(f"  {files[0]}\n".encode())
    assert err == b""


def test_digest_missing_file_is_one_line_error(tmp_path: Path) -> None:
    result = run_cli("sha1", str(tmp_path / "no-such-file"))
    assert result.returncode == 1
    assert "No such file or directory" in assert_one_error_line(result.stderr)
    assert result.stdout == b""


def test_digest_check_missing_listed_file(tmp_path: Path) -> None:
    sums = tmp_path / "SUMS"
    sums.write_text(f"{'0' * 32}  {tmp_path / 'gone'}\n")
    result = run_cli("md5", "-c", str(sums))
    assert result.returncode == 1
    assert b"FAILED open or read" in result.stdout
    assert b"Traceback" not in result.stderr


# -- the README ----------------------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text("utf-8").splitlines()
    assert lines[1].startswith("make demo")
    assert lines[2].startswith("make test")


def test_readme_names_every_public_name() -> None:
    import sslports.libcrypto
    import sslports.libssl
    import sslports.md5
    import sslports.sha1

    text = README.read_text("utf-8")
    modules = (sslports, sslports.sha1, sslports.md5, sslports.libcrypto, sslports.libssl)
    missing = [name for module in modules for name in module.__all__ if name not in text]
    assert missing == []


@needs_tls
def test_connect_ctrl_c_while_the_server_stopped_reading_exits_at_once() -> None:
    """Ctrl-C while stdin's bytes are stuck in a write to a server that stopped reading: the
    command exits 130 (interrupted) while the server still holds the connection open. It
    used to wait for the stuck write, ignoring Ctrl-C, until the server closed: closing
    the socket's writer waits for the write that holds its lock, which nothing ends."""
    release = threading.Event()

    def serve(tls: ssl.SSLSocket) -> None:  # handshakes, then reads nothing until released
        tls.sendall(b"ready\n")
        release.wait(TIMEOUT)

    with python_tls_server(serve) as port:
        try:
            status, _out, err = run_connect(port, feed=feed_lots)
        finally:
            release.set()
    assert status == 130, err.decode()
    assert err == b"sslports: interrupted\n", err.decode()


@needs_tls
def test_connect_ends_when_the_server_says_goodbye_but_stopped_reading() -> None:
    """The server sends its reply and close_notify, and keeps the connection open without
    reading, while stdin's bytes are stuck in a write to it: the command ends (the reply
    printed) while the server still holds the connection. It waited, ignoring Ctrl-C, until
    the server closed (the stuck write held the socket's writer). Status 1, since stdin's
    bytes were not all delivered (cli.md); it was 0 or 1 as the goodbye fell."""
    release = threading.Event()
    ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(ctx, PEM)
    sslports.ssl_load_private_key(ctx, PEM)
    with socket.create_server((LOCAL, 0)) as lsock:
        lsock.settimeout(TIMEOUT)

        def serve() -> None:  # (sslports: its output port's close sends close_notify, and
            conn, _ = lsock.accept()  # no more: Python's ssl would read the client's data)
            with conn, conn.makefile("rb") as r, conn.makefile("wb") as w:
                inp, out = sslports.ports_to_ssl_ports(
                    r, w, context=ctx, shutdown_on_close=True, timeout=TIMEOUT
                )
                time.sleep(2.0)  # (stdin's bytes fill every buffer meanwhile)
                out.write(b"bye\n")
                out.close()
                release.wait(TIMEOUT)
                sslports.ssl_abandon_port(inp)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            status, out, err = run_connect(lsock.getsockname()[1], feed=feed_lots, interrupt=False)
        finally:
            release.set()
            server.join(TIMEOUT)
    assert status == 1, err.decode()
    assert "before standard input was all sent" in assert_one_error_line(err)
    assert out == b"bye\n"


@needs_tls
def test_connect_reset_while_stdin_streams_is_a_failure() -> None:
    """The server resets the connection (SO_LINGER 0) while stdin's bytes stream to it: the
    command fails with status 1 and says so (cli.md). When the write took the reset (the
    kernel reports it once), the reader found only the end of the input, and the command
    ended with status 0 and nothing said (an audit saw it in 2 runs of 50)."""
    ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(ctx, PEM)
    sslports.ssl_load_private_key(ctx, PEM)
    with socket.create_server((LOCAL, 0)) as lsock:
        lsock.settimeout(TIMEOUT)

        def serve() -> None:
            conn, _ = lsock.accept()
            with conn, conn.makefile("rb") as r, conn.makefile("wb") as w:
                inp, out = sslports.ports_to_ssl_ports(r, w, context=ctx, timeout=TIMEOUT)
                assert read_exactly(inp, 65536)  # (stdin streams)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sslports.ssl_abandon_port(inp)
                sslports.ssl_abandon_port(out)
            # (the socket's close, with unread bytes and SO_LINGER 0: a reset)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            status, _out, err = run_connect(lsock.getsockname()[1], feed=feed_lots, interrupt=False)
        finally:
            server.join(TIMEOUT)
    assert status == 1, err.decode()
    assert err.decode().startswith("sslports: error: connection failed: "), err.decode()


@needs_tls
def test_connect_ctrl_c_during_the_handshake_under_a_timeout_exits_at_once() -> None:
    """Ctrl-C while the handshake waits for a server that never answers, under --timeout
    60: exit 130 at once. It waited for the timeout (closing the socket's reader waited for
    the read blocked in another thread)."""
    started, release = threading.Event(), threading.Event()
    with socket.create_server((LOCAL, 0)) as lsock:
        lsock.settimeout(TIMEOUT)

        def serve() -> None:  # accepts, then says nothing
            conn, _ = lsock.accept()
            with conn:
                started.set()
                release.wait(TIMEOUT)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            status, _out, err = run_connect(
                lsock.getsockname()[1], "--timeout", "60", started=started
            )
        finally:
            release.set()
            server.join(TIMEOUT)
    assert status == 130, err.decode()
    assert err == b"sslports: interrupted\n", err.decode()


@needs_tls
def test_connect_ctrl_c_in_an_idle_session_still_ends_with_close_notify() -> None:
    """Ctrl-C with nothing on its way: the command exits 130 and the server reads our
    close_notify (a clean end), not a cut connection."""
    seen: list[object] = []

    def serve(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"ready\n")
        read_one(tls, seen)

    with python_tls_server(serve) as port:
        status, _out, err = run_connect(port)
    assert status == 130, err.decode()
    assert err == b"sslports: interrupted\n", err.decode()
    assert seen == [b""]  # the client's close_notify, not a cut


@needs_tls
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_connect_ctrl_c_taken_by_another_thread_still_ends_the_command() -> None:
    """The kernel hands a process's SIGINT to any of its threads. Taken by the stdin or the
    sending thread, it was seen by the main thread only once its blocking read returned:
    in an idle session, never. Now the command still ends at once, with close_notify."""
    seen: list[object] = []

    def serve(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"ready\n")
        read_one(tls, seen)

    with python_tls_server(serve) as port:
        status, _out, err = run_connect(port, to_a_helper_thread=True)
    assert status == 130, err.decode()
    assert err == b"sslports: interrupted\n", err.decode()
    assert seen == [b""]


def _non_blocking_pipe() -> tuple[int, int]:
    """A pipe whose (shared) open file is non-blocking, as another program sharing a
    terminal or pipe may leave it."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    return r, w


def _run_into_a_non_blocking_pipe(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """``python -m sslports ARGS`` with its stdout a non-blocking pipe that is read only after
    a pause (it fills meanwhile): the exit status, all it wrote, its stderr."""
    r, w = _non_blocking_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sslports", *args],
        stdin=subprocess.DEVNULL,
        stdout=w,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(w)
    try:
        got = _read_all_slowly(r)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, got, err


def _read_all_slowly(fd: int) -> bytes:
    """Everything from `fd` (non-blocking) until the writer is gone, read only after a pause
    (the pipe fills meanwhile)."""
    time.sleep(0.5)
    got = bytearray()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        select.select([fd], [], [], 0.2)
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            break
        got += chunk
    return bytes(got)


@needs_tls
@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
def test_connect_writes_everything_to_a_non_blocking_stdout(buffered: bool) -> None:
    """A terminal whose stdin another program made non-blocking has a non-blocking stdout
    too (one open file). connect lost what such a stdout did not take at once: 17-42 KB of
    5 MB reached it, and the command said 0 (Python's unbuffered stdout), or it failed with
    "write could not complete without blocking" (buffered). It waits for room now."""
    size = 4 * 1024 * 1024
    data = os.urandom(size)

    def serve(tls: ssl.SSLSocket) -> None:
        tls.sendall(data)
        tls.unwrap()

    env = dict(ENV)
    if buffered:
        del env["PYTHONUNBUFFERED"]
    with python_tls_server(serve) as port:
        status, got, err = _run_into_a_non_blocking_pipe(
            ["connect", f"{LOCAL}:{port}", "--insecure", "-q"], env
        )
    assert status == 0, err.decode()
    assert len(got) == size and got == data


def test_digest_writes_every_line_to_a_non_blocking_stdout(tmp_path: Path) -> None:
    """sha1 of 1500 files into a non-blocking pipe read late: 65 of 93 KB arrived, and the
    command said 0."""
    names = []
    for i in range(1500):
        path = tmp_path / f"file-{i:04d}-{'x' * 40}"
        path.write_bytes(str(i).encode())
        names.append(str(path))
    status, got, err = _run_into_a_non_blocking_pipe(["sha1", *names], ENV)
    assert status == 0, err.decode()
    lines = got.decode().splitlines()
    assert len(lines) == 1500
    assert lines[-1] == f"{hashlib.sha1(b'1499').hexdigest()}  {names[-1]}"


def test_digest_check_reads_a_non_blocking_list_to_its_end(tmp_path: Path) -> None:
    """sha1 -c reading its list from a non-blocking stdin checked the lines already there
    and said 0 (or, with none there yet, "unexpected AttributeError"). It reads to EOF."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    r, w = _non_blocking_pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sslports", "sha1", "-c"],
        stdin=r,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    os.close(r)
    try:
        time.sleep(0.3)
        os.write(w, f"{hashlib.sha1(b'one').hexdigest()}  {first}\n".encode())
        time.sleep(0.5)
        os.write(w, f"{hashlib.sha1(b'TWO').hexdigest()}  {second}\n".encode())
    finally:
        os.close(w)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert out.decode().splitlines() == [f"{first}: OK", f"{second}: FAILED"], err.decode()
    assert proc.returncode == 1


@needs_tls
def test_connect_ctrl_c_taken_by_another_thread_while_stdout_is_stalled() -> None:
    """Ctrl-C handed to a helper thread while the main thread was blocked writing to a
    stdout nobody reads: the watcher's wake-up (shutting the socket's reading side) did not
    free that write, and the command went on for ever. The watcher now sends the signal to
    the main thread when its handler has not run."""

    def serve(tls: ssl.SSLSocket) -> None:
        with contextlib.suppress(OSError):
            tls.sendall(b"ready\n")
            for _ in range(200):
                tls.sendall(b"y" * 65536)

    with python_tls_server(serve) as port:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sslports", "connect", f"{LOCAL}:{port}", "--insecure", "-q"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(1.0)  # (the pipe fills: the main thread waits in its write)
            interrupt_a_helper_thread(proc.pid)
            status = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err = proc.stderr.read()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()  # type: ignore[union-attr]
    assert status == 130, err.decode()


@needs_tls
@needs_openssl
def test_connect_hint_follows_what_failed(procs: Procs, tmp_path: Path) -> None:
    """The hint after a failed verification was picked by whether --cafile was given: an
    untrusted chain with --cafile was told to check --servername, a name mismatch without
    it to pass --cafile."""
    port = procs.openssl_server("-cert", PEM, "-www")
    other_root = chain_file(make_cert("Some Other Root", ca=True))
    untrusted = connect_local(port, "--cafile", str(other_root))
    assert "(--cafile FILE trusts a certificate" in assert_one_error_line(untrusted.stderr)
    mismatch = subprocess.run(  # (trusted through the default store: no --cafile)
        [sys.executable, "-m", "sslports", "connect", f"{LOCAL}:{port}", "--servername",
         "wrong.example"],
        input=b"",
        capture_output=True,
        timeout=TIMEOUT,
        env={**ENV, "SSL_CERT_FILE": PEM},
    )  # fmt: skip
    assert "hostname mismatch" in assert_one_error_line(mismatch.stderr)
    assert "(check --servername" in assert_one_error_line(mismatch.stderr)


@pytest.mark.parametrize("option", ["--timeout", "--handshake-timeout"])
def test_timeouts_beyond_a_clock_are_usage_errors(option: str) -> None:
    """1e10 seconds passed the check, then failed as "unexpected OverflowError"."""
    command = ["connect", f"{LOCAL}:1"] if option == "--timeout" else ["serve", "--port", "0"]
    result = run_cli(*command, option, "1e10")
    assert result.returncode == 2
    assert "at most" in assert_one_error_line(result.stderr)


class _StopServing(BaseException):
    """Ends the accept loop of the test below (as Ctrl-C would)."""


@needs_tls
def test_serve_survives_a_connection_it_cannot_start_a_thread_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No thread to spare for an accepted connection ("can't start new thread", a process
    at its limit): the server says so, closes that connection (its client's handshake
    fails at once; the socket is not left to the collector), and accepts the next. It used
    to end the whole server. A Ctrl-C there (here: another BaseException) closes the
    connection too."""
    from sslports import cli

    starts: list[str] = []

    class NoThread:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def start(self) -> None:
            starts.append("start")
            if len(starts) == 1:
                raise RuntimeError("can't start new thread")
            raise _StopServing()

    monkeypatch.setattr(cli, "threading", type("T", (), {"Thread": NoThread}))
    args = cli.build_parser().parse_args(["serve", "--port", "0", "--quiet"])
    cli._finish_serve_args(args)
    ctx = sslports.ssl_make_server_context("auto")
    sslports.ssl_load_certificate_chain(ctx, PEM)
    sslports.ssl_load_private_key(ctx, PEM)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, ctx)
    port = sslports.ssl_addresses(listener, True)[1]
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    seen: list[object] = []

    def clients() -> None:
        for _ in range(2):
            with socket.create_connection((LOCAL, port), timeout=TIMEOUT) as raw:
                try:  # (the handshake runs in the client's thread: none, no handshake)
                    with client_ctx.wrap_socket(raw) as tls:
                        seen.append(tls.recv(100))
                except OSError as exc:
                    seen.append(exc)

    client = threading.Thread(target=clients, daemon=True)
    client.start()
    try:
        with pytest.raises(_StopServing):
            cli._accept_loop(listener, args)
    finally:
        sslports.ssl_close(listener)
        client.join(TIMEOUT)
    # both closed at once, not when the collector got to them (nor timed out)
    assert len(seen) == 2, seen
    assert all(isinstance(x, OSError) and not isinstance(x, TimeoutError) for x in seen), seen
    assert starts == ["start", "start"]
    err = capsys.readouterr().err
    assert re.search(r"serve: 127\.0\.0\.1:\d+: connection dropped: can't start new thread\n", err)
