"""Shared fixtures for the TLS engine tests.

* ``pki``: a trustme CA (RSA) and the PEM files the tests need: a server certificate for
  ``localhost`` / ``127.0.0.1``, an EC one, one for another name, and an untrusted CA's.
  Its methods make ready-to-use sslports and Python ``ssl`` contexts.
* ``echo_server``: a threaded sslports echo server (a factory; each server stops at teardown).
* ``openssl_tool``: runs ``openssl s_server`` / ``s_client`` on a free port and waits until the
  server listens (without consuming one of its accepts).
* ``Pipe`` / ``pipe_pair``: an in-memory blocking pipe with a small capacity.
* A socket, file or makefile() stream a test leaves open fails it (see ``_collect_leaks``).

Every socket is on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import trustme
from certs import Server, in_thread

import sslports

LOCAL = "127.0.0.1"
MIB = 1 << 20


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def random_bytes(n: int, seed: int = 0) -> bytes:
    """n pseudo-random bytes (fast: a SHAKE stream, not os.urandom)."""
    return hashlib.shake_256(seed.to_bytes(8, "big")).digest(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


def read_exactly(port: Any, n: int) -> bytes:
    """Read n bytes from an SSL input port (or anything with read1/read), or fewer at EOF."""
    out = bytearray()
    reader = getattr(port, "read1", None) or port.read
    while len(out) < n:
        chunk = reader(min(65536, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_all(port: Any, size: int = 65536) -> bytes:
    """Everything up to EOF, in read1(size) calls."""
    out = bytearray()
    while True:
        chunk = port.read1(size)
        if not chunk:
            return bytes(out)
        out += chunk


def is_listening(port: int) -> bool:
    """True when some process listens on 127.0.0.1:port (from /proc, without connecting)."""
    want = f"0100007F:{port:04X}"
    want_any = f"00000000:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] in (want, want_any) and fields[3] == "0A":
                    return True
    except OSError:  # no /proc: fall back to a short wait
        time.sleep(0.5)
        return True
    return False


def wait_listening(port: int, proc: Optional[subprocess.Popen[bytes]] = None) -> None:
    deadline = time.monotonic() + 15
    while not is_listening(port):
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            raise RuntimeError(f"server exited early ({proc.returncode}): {err!r}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.02)


class AgreeingInt(int):
    """An int whose comparisons say what a range check wants to hear (`lo <= n <= hi` passes,
    `n > limit` does not): a count or length that the library must check by its value."""

    def __le__(self, other: object) -> bool:
        return True

    def __ge__(self, other: object) -> bool:
        return True

    def __gt__(self, other: object) -> bool:
        return False


# -- leaked sockets and files ---------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # A socket, file or makefile() stream left open is closed by its finalizer, often only by
    # the cyclic collector and in a later test: it warns there (ResourceWarning, "unclosed"),
    # and a buffered makefile() writer finalized after its socket flushes to a closed, or
    # reused, descriptor. Both reach pytest as unraisable exceptions (a warning raised as an
    # error in a finalizer is one): make them failures of the test during which they come.
    config.addinivalue_line("filterwarnings", "error:unclosed:ResourceWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True, scope="module")
def _collect_leaks() -> Iterator[None]:
    """Collect each module's cyclic garbage before the next module starts, so that what a
    module leaked fails one of its own tests (the last one, or the one during which the
    collector happened to run). Per module, not per test: a full collection takes ~0.1 s with
    the whole suite loaded, over 2000 tests that would be a large part of the run. To find the
    test, run its module with ``PYTHONTRACEMALLOC=25``: the failure then shows where the
    object was allocated."""
    yield
    gc.collect()


# -- certificates -------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: trustme.CA
    ca_pem: Path
    server_chain: Path  # leaf (RSA) + CA, for localhost / 127.0.0.1
    server_key: Path
    ec_chain: Path  # leaf (ECDSA), same names
    ec_key: Path
    other_chain: Path  # RSA leaf for other.example only
    other_key: Path
    rogue_chain: Path  # RSA leaf for localhost from a CA nobody trusts
    rogue_key: Path
    dir: Path

    def server_context(
        self, protocol: str = "auto", *, chain: Optional[Path] = None, key: Optional[Path] = None
    ) -> sslports.SSLServerContext:
        ctx = sslports.ssl_make_server_context(protocol)
        sslports.ssl_load_certificate_chain(ctx, chain or self.server_chain)
        sslports.ssl_load_private_key(ctx, key or self.server_key, False)
        return ctx

    def client_context(
        self, protocol: str = "auto", *, verify: bool = True, trust: bool = True
    ) -> sslports.SSLClientContext:
        ctx = sslports.ssl_make_client_context(protocol)
        if trust:
            sslports.ssl_load_verify_source(ctx, self.ca_pem)
        if verify:
            sslports.ssl_set_verify(ctx, True)
            sslports.ssl_set_verify_hostname(ctx, True)
        return ctx

    def py_server_context(self, version: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_chain, self.server_key)
        _pin(ctx, version)
        return ctx

    def py_client_context(self, version: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_pem))
        _pin(ctx, version)
        return ctx


def _pin(ctx: ssl.SSLContext, version: str) -> None:
    v = {"tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}[version]
    ctx.minimum_version = v
    ctx.maximum_version = v


def _write_issued(cert: trustme.LeafCert, d: Path, name: str) -> tuple[Path, Path]:
    chain = d / f"{name}-chain.pem"
    key = d / f"{name}-key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return chain, key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    ca_pem = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    rsa = ca.issue_cert("localhost", LOCAL, key_type=trustme.KeyType.RSA)
    ec = ca.issue_cert("localhost", LOCAL, key_type=trustme.KeyType.ECDSA)
    other = ca.issue_cert("other.example", key_type=trustme.KeyType.RSA)
    rogue_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    rogue = rogue_ca.issue_cert("localhost", LOCAL, key_type=trustme.KeyType.RSA)
    server_chain, server_key = _write_issued(rsa, d, "server")
    ec_chain, ec_key = _write_issued(ec, d, "ec")
    other_chain, other_key = _write_issued(other, d, "other")
    rogue_chain, rogue_key = _write_issued(rogue, d, "rogue")
    return Pki(
        ca,
        ca_pem,
        server_chain,
        server_key,
        ec_chain,
        ec_key,
        other_chain,
        other_key,
        rogue_chain,
        rogue_key,
        d,
    )


# -- a threaded sslports echo server -------------------------------------------------------------


class EchoServer:
    """Accepts on 127.0.0.1 and echoes every connection until EOF, one thread per connection.

    ``handler`` replaces the echo loop: it gets (in_port, out_port) and owns them.
    """

    def __init__(
        self,
        context: Any,
        handler: Optional[Callable[[Any, Any], None]] = None,
        handshake_timeout: Optional[float] = 10.0,
    ) -> None:
        self.listener = sslports.ssl_listen(
            0, 16, True, LOCAL, context, handshake_timeout=handshake_timeout
        )
        self.port = sslports.ssl_addresses(self.listener, True)[1]
        self.handler = handler or self.echo
        self.errors: list[BaseException] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @staticmethod
    def echo(inp: Any, out: Any) -> None:
        with inp, out:
            while True:
                chunk = inp.read1(65536)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not sel.select(0.05):
                    continue
                try:
                    inp, out = sslports.ssl_accept(self.listener)
                except sslports.SSLError as exc:
                    self.errors.append(exc)
                    continue
                self.accepted += 1
                t = threading.Thread(target=self._serve, args=(inp, out), daemon=True)
                t.start()
                self._threads.append(t)

    def _serve(self, inp: Any, out: Any) -> None:
        try:
            self.handler(inp, out)
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.listener.close()
        for t in self._threads:
            t.join(10)


@pytest.fixture
def echo_server() -> Iterator[Callable[..., EchoServer]]:
    servers: list[EchoServer] = []

    def make(
        context: Any, handler: Optional[Callable[[Any, Any], None]] = None, **kw: Any
    ) -> EchoServer:
        server = EchoServer(context, handler, **kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# -- openssl command-line peers ------------------------------------------------------------------


OPENSSL = shutil.which("openssl")


class OpenSSLTool:
    """Starts ``openssl`` subprocesses and cleans them up."""

    def __init__(self) -> None:
        if OPENSSL is None:
            pytest.skip("the openssl command is not installed (scripts/install-system-deps.sh)")
        self.procs: list[subprocess.Popen[bytes]] = []

    def s_server(self, args: list[str], **popen: Any) -> tuple[subprocess.Popen[bytes], int]:
        """``openssl s_server -accept 127.0.0.1:<free port> ...``; returns once it listens."""
        for _attempt in range(5):
            port = free_port()
            proc = self.spawn(["s_server", "-accept", f"{LOCAL}:{port}", *args], **popen)
            try:
                wait_listening(port, proc)
            except RuntimeError:  # the port was taken in between: try another one
                proc.kill()
                proc.wait()
                continue
            return proc, port
        raise RuntimeError("openssl s_server did not start")

    def spawn(self, args: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        assert OPENSSL is not None
        popen.setdefault("stdin", subprocess.PIPE)
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen([OPENSSL, *args], **popen)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(10)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()


@pytest.fixture
def openssl_tool() -> Iterator[OpenSSLTool]:
    tool = OpenSSLTool()
    yield tool
    tool.cleanup()


# -- in-memory pipes -----------------------------------------------------------------------------


class Pipe:
    """A one-way, blocking, in-memory byte pipe holding at most ``capacity`` bytes.

    ``write`` blocks until everything fit; ``readinto``/``read`` block until at least one byte
    is there and return what is (short reads), ``b""`` once closed and drained. ``close()``
    ends both sides: later writes raise BrokenPipeError.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf = bytearray()
        self.cond = threading.Condition()
        self.closed = False
        self.close_calls = 0
        self.total_written = 0

    def write(self, data: Any) -> int:
        data = bytes(data)
        done = 0
        with self.cond:
            while done < len(data):
                if self.closed:
                    raise BrokenPipeError("pipe closed")
                space = self.capacity - len(self.buf)
                if space <= 0:
                    self.cond.wait()
                    continue
                part = data[done : done + space]
                self.buf += part
                done += len(part)
                self.total_written += len(part)
                self.cond.notify_all()
        return done

    def flush(self) -> None:
        pass

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        with self.cond:
            while not self.buf and not self.closed:
                self.cond.wait()
            n = min(len(view), len(self.buf))
            view[:n] = self.buf[:n]
            del self.buf[:n]
            self.cond.notify_all()
            return n

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(65536 if n is None or n < 0 else n)
        got = self.readinto(buf)
        return bytes(buf[:got])

    def close(self) -> None:
        with self.cond:
            self.close_calls += 1
            self.closed = True
            self.cond.notify_all()


@pytest.fixture
def pipe_pair() -> Callable[[int], tuple[Pipe, Pipe]]:
    """``pipe_pair(capacity)`` -> (client_to_server, server_to_client)."""
    made: list[Pipe] = []

    def make(capacity: int) -> tuple[Pipe, Pipe]:
        pipes = (Pipe(capacity), Pipe(capacity))
        made.extend(pipes)
        return pipes

    yield make  # type: ignore[misc]
    for p in made:  # unblock any thread a failed test left waiting
        p.close()


def collect_stdout(proc: Any, sink: bytearray) -> threading.Thread:
    """Append everything `proc` writes to its stdout to `sink`, from a daemon thread."""

    def run() -> None:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                return
            sink.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def wait_stdin_taken(proc: Any, timeout: float = 30.0) -> None:
    """Wait until `proc` read everything written to its stdin pipe (FIONREAD on the pipe is 0):
    what is written next reaches it in a read of its own (openssl s_server takes a command
    only from a read that holds just that line)."""
    import fcntl
    import termios

    deadline = time.monotonic() + timeout
    while True:
        exited = proc.poll() is not None  # (first: then what FIONREAD says is final)
        left = fcntl.ioctl(proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4)
        if int.from_bytes(left, "little", signed=True) == 0:
            return
        assert not exited, f"the process exited ({proc.returncode}) with stdin unread"
        assert time.monotonic() < deadline, "the process did not read its stdin"
        time.sleep(0.005)


def wait_until(done: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until done() is true: another thread reached the state a test needs, however late
    it was scheduled (a sleep guesses, and a loaded machine outlasts the guess). AssertionError
    saying `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def wait_read_under_way(port: Any, timeout: float = 30.0) -> None:
    """Wait until a read of another thread holds the input port's lock (it is under way): a
    close() from this thread then comes during that read, never before it began. (A read
    holds its buffer before it takes the lock.)"""
    lock = port._sslports_conn.read_lock
    wait_until(lock.locked, "the read never began", timeout)


def bytearray_exports(b: bytearray) -> int:
    """How many buffer views of `b` are held (CPython's ob_exports, the struct's last field):
    a call in another thread that holds the bytearray makes it more than 0."""
    slot = type(b).__basicsize__ - ctypes.sizeof(ctypes.c_ssize_t)
    return int(ctypes.c_ssize_t.from_address(id(b) + slot).value)


def connect_ports(
    streams: bool, port: int, ctx: Any, timeout: float, strict_eof: bool = False
) -> tuple[Any, Any, Optional[socket.socket]]:
    """A client connection to localhost:port: ssl_connect's ports, or (streams) ports over a
    socket's two unbuffered files (ports_to_ssl_ports, close_original), with that socket."""
    if not streams:
        inp, out = sslports.ssl_connect(
            "localhost", port, ctx, timeout=timeout, strict_eof=strict_eof
        )
        return inp, out, None
    sock = socket.create_connection((LOCAL, port), timeout=timeout)
    inp, out = socket_ports(
        sock, "connect", ctx, hostname="localhost", timeout=timeout, strict_eof=strict_eof
    )
    return inp, out, sock


def socket_ports(sock: socket.socket, mode: str, ctx: Any, **kw: Any) -> tuple[Any, Any]:
    """ports_to_ssl_ports over the two unbuffered files of `sock` (close_original: closing
    both ports closes the files; the socket itself stays the caller's)."""
    return sslports.ports_to_ssl_ports(
        sock.makefile("rb", buffering=0),
        sock.makefile("wb", buffering=0),
        mode=mode,
        context=ctx,
        close_original=True,
        **kw,
    )


# The start of a script run in a child Python: `pipe_pair(**kw)` makes a ports_to_ssl_ports
# connection over two OS pipes, (client ports), (server ports); the client's close_original.
PIPE_PAIR_SCRIPT = """
import os, signal, sys, threading, time
import sslports as sp

PEM = sp.TEST_PEM
ctx = sp.ssl_make_server_context("auto", private_key=("pem", PEM), certificate_chain=PEM)


def pipe_pair(**kw):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    res = {}
    accept = lambda: sp.ports_to_ssl_ports(open(r1, "rb"), open(w2, "wb"), context=ctx)
    t = threading.Thread(target=lambda: res.setdefault("s", accept()))
    t.start()
    client = sp.ports_to_ssl_ports(
        open(r2, "rb"), open(w1, "wb"), mode="connect", close_original=True, **kw
    )
    t.join(10)
    return client, res["s"]
"""


def socket_under(port: Any) -> Any:
    """The socket under a port of ssl_wrap_socket (or ssl_connect, ssl_accept), for tests that
    work below the TLS layer (forged records, resets, send queues): ssl_wrap_socket detaches
    the socket object it was given, as SSLContext.wrap_socket does."""
    return sslports.ports.connection_of("socket_under", port).transport.sock


def run_in_thread(fn: Callable[[], Any]) -> Callable[..., Any]:
    """Start fn in a daemon thread; the returned join(timeout=60) gives its result or re-raises."""
    return in_thread(fn, default_timeout=60.0)


PY_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def system_default_conf(*settings: str) -> str:
    """An OpenSSL configuration whose system_default section (applied to every new SSL_CTX,
    as distributions' crypto policies do) holds `settings` ("Groups = P-384")."""
    return (
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n[ssl_sect]\n"
        "system_default = system_default_sect\n[system_default_sect]\n"
        + "".join(f"{line}\n" for line in settings)
    )


def python_under_openssl_conf(
    conf_text: str, tmp_path: Path, code: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``python -c code ARGS`` in the tests directory (its modules importable), with
    OPENSSL_CONF naming a file of `conf_text` (OpenSSL reads it once, at start-up: a child
    process); its output as text. The caller checks the status."""
    conf = tmp_path / "openssl.cnf"
    conf.write_text(conf_text)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=Path(__file__).parent,
        env={**os.environ, "OPENSSL_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Where the ports' C fast path (sslports._fastport) must be built: CPython (free-threaded too),
# unless SSLPORTS_NO_FASTPORT turns it off.
FAST_BUILT = platform.python_implementation() == "CPython" and not os.environ.get(
    "SSLPORTS_NO_FASTPORT"
)


@contextlib.contextmanager
def python_methods_only() -> Iterator[None]:
    """The ports' Python methods only, meanwhile: ports made have no C fast path, and the port
    classes have their Python methods back in place of the C ones (sp_fastport.c hot_methods,
    close_method)."""
    from sslports import ports

    saved = ports._fastport
    on_classes = {
        cls: {name: cls.__dict__[name] for name in methods}
        for cls, methods in ports.PYTHON_METHODS.items()
    }
    ports._fastport = None
    for cls, methods in ports.PYTHON_METHODS.items():
        for name, method in methods.items():
            setattr(cls, name, method)
    try:
        yield
    finally:
        ports._fastport = saved
        for cls, methods in on_classes.items():
            for name, method in methods.items():
                setattr(cls, name, method)


@pytest.fixture(params=["fast", "python"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the ports' C fast path, then with their Python methods only."""
    from sslports import ports

    if request.param == "fast":
        if not FAST_BUILT:
            pytest.skip("no C fast path on this interpreter")
        assert ports._fastport is not None, "the C fast path was not built"
        yield "fast"
    else:
        with python_methods_only():
            yield "python"


def connected_ports(pki: Pki) -> Iterator[tuple[Any, Any, Any, Any]]:
    """(client in, client out, server in, server out) of one ssl_connect / ssl_accept
    connection over 127.0.0.1, all four closed afterwards: the body of a fixture
    (``yield from connected_ports(pki)``)."""
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    join = run_in_thread(lambda: sslports.ssl_accept(listener))
    cin, cout = sslports.ssl_connect(LOCAL, port, pki.client_context())
    sin, sout = join(30)
    yield cin, cout, sin, sout
    for p in (cin, cout, sin, sout):
        p.close()
    listener.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """certs.Server (or BackgroundServer) instances a test starts (append them), closed after
    the test."""
    made: list[Server] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture(scope="session")
def countrecv_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child Python with tests/countrecv.c preloaded (it counts the
    process's recv() and sendmsg() calls; the child reaches it with ctypes.CDLL(None)) and
    this tree's sslports on its path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build tests/countrecv.c (make setup installs one)")
    shim = tmp_path_factory.mktemp("countrecv") / "countrecv.so"
    source = Path(__file__).with_name("countrecv.c")
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", "-o", str(shim), str(source), "-ldl"], check=True
    )
    env = dict(os.environ)
    # (valgrind's preloads, under scripts/valgrind.sh, are for its own processes: the child
    # runs natively; a sanitizer's runtime, under scripts/asan.sh, stays first)
    preloads = [
        p for p in re.split(r"[ :]", env.get("LD_PRELOAD", "")) if p and "vgpreload" not in p
    ]
    env["LD_PRELOAD"] = " ".join([*preloads, str(shim)])
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(sslports.__file__).parents[1]), env.get("PYTHONPATH")])
    )
    return env


@contextlib.contextmanager
def ctrl_c_after(delay: float = 0.3, within: float = 0.5) -> Iterator[None]:
    """A KeyboardInterrupt from a SIGALRM handler after `delay` s (Ctrl-C): the body must end
    by it, at most `within` s later (API.md: within about 100 ms)."""

    def interrupt(*args: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, delay)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            yield
        assert time.monotonic() - start < delay + within
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
