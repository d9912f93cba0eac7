"""What a connection's Python costs, measured against C in one process (handshakes).

    .venv/bin/python bench/conn_costs.py                  # resumed connections, 1200 each
    .venv/bin/python bench/conn_costs.py --full -n 800    # full handshakes (no tickets)
    .venv/bin/python bench/conn_costs.py --server         # the server end instead

The measured process alternates, connection by connection, between ways of doing the same
connection (connect, handshake verifying 127.0.0.1, 32-byte header, one-byte answer, close),
and reports each one's CPU time per connection (process_time around the call: user + system,
this process only), mean and median, and its ratio to C. Alternating cancels most of the drift
of a shared machine, and every variant runs in the same process state. The differences are
what each layer costs *cold*: between two network waits, after the handshake's crypto has
pushed the interpreter out of the caches (bench/README.md, section 2).

The client end (the default), facing the C server (bench/c/sp_ref, mode hs):

  c           C (bench/c/conn_one.c through ctypes): what OpenSSL and the kernel cost
  floor       sslports' pump through CFFI with the least Python possible: a bare socket, the
              sp_conn, the handshake, write, read, close; no connection or port objects
  connection  floor + a ports.Connection made and dropped (no ports)
  ports       floor + a Connection and its two ports (made in C), both closed
  sslports    ssl_connect, write + flush, readinto, close: the library as users call it
  pyssl       Python's ssl module (only with --variants): wrap_socket, sendall, recv, close,
              resuming with session= like bench/peer.py (the "full vs ssl" target's other side)

The server end (--server), facing the C client (sp_ref, mode hs):

  c           C (conn_one_accept through ctypes) on the library's own server context, so
              that every variant's tickets resume on every other
  floor       the pump through CFFI, accepting with a bare socket, no objects
  sslports    ssl_accept, readinto the header, write + flush the answer, close
  pyssl       Python's ssl module on the same listening socket (only with --full and
              --variants: a ticket from another context would not resume)

Variants named with --variants only are measured on request; with pyssl the process re-runs
itself under bench/common.py's OPENSSL_CONF, as run_all.py does, so that Python's ssl uses the
same TLS 1.3 suite.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, cast

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import OPENSSL_CONF, SUITE, pack_header  # noqa: E402
from run_all import ROOT, build_ref  # noqa: E402

PEM = str(ROOT / "src" / "sslports" / "test.pem")
LIB_SRC = HERE / "c" / "conn_one.c"
LIB = HERE / "c" / "libconn_one.so"
VARIANTS = ("c", "floor", "connection", "ports", "sslports")
SERVER_VARIANTS = ("c", "floor", "sslports")


def build_lib() -> Path:
    """Build bench/c/libconn_one.so when missing or older than its source."""
    if LIB.exists() and LIB.stat().st_mtime >= LIB_SRC.stat().st_mtime:
        return LIB
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-o", str(LIB), str(LIB_SRC)]
    subprocess.run([*cmd, "-lssl", "-lcrypto"], check=True)
    return LIB


def variants(port: int, resume: bool) -> dict[str, Callable[[], bool]]:
    import _socket

    from peer import PySSLStack

    import sslports
    from sslports import _binding, ports

    lib, ffi = _binding.lib, _binding.ffi
    ctx = sslports.ssl_make_client_context("auto")
    sslports.ssl_load_verify_source(ctx, PEM)
    sslports.ssl_set_verify(ctx, True)
    sslports.ssl_set_verify_hostname(ctx, True)
    sslports.ssl_set_ciphersuites(ctx, SUITE)
    c_lib = ctypes.CDLL(str(build_lib()))
    if not c_lib.conn_one_init(PEM.encode()):
        raise SystemExit("conn_one_init failed")
    header = pack_header("hs", 0, 0, 0, 0, 0)
    err, step = ffi.new("sp_err *"), ffi.new("size_t *")
    answer, one = ffi.new("unsigned char[1]"), bytearray(1)
    addr = ("127.0.0.1", port)
    cache_host = b"127.0.0.1" if resume else ffi.NULL
    exchange = _exchanger(lib, ffi)

    def c() -> bool:
        result = c_lib.conn_one(port, int(resume), header)
        if not result:
            raise SystemExit("the C connection failed")
        return bool(result == 2)

    def pump(extra: Callable[[Any], Any]) -> bool:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0)
        sock.connect(addr)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        raw = lib.sp_ctx_open_conn(
            ctx._ptr, 0, sock.fileno(), ctx._conn_policy[0], b"127.0.0.1", 1, 1, b"", 0,
            cache_host, port, ctx._conn_policy[2], err, step,
        )  # fmt: skip
        if raw == ffi.NULL:
            raise SystemExit("sp_ctx_open_conn failed")
        while (status := lib.sp_handshake(raw, 50, err)) != 0:
            if status < 0 or status > 2:
                raise SystemExit("handshake failed")
        made = extra(sock)
        exchange(raw, header, answer)
        reused = bool(lib.sp_conn_session_reused(raw))
        if resume:
            lib.sp_conn_drain_tickets(raw)
        sock.shutdown(_socket.SHUT_RDWR)
        lib.sp_conn_free(raw)
        sock.close()
        if made is not None:  # the ports: closed as a user closes them
            made[1].close()
            made[0].close()
        return reused

    def new_connection(sock: Any) -> Any:
        # A Connection like ssl_connect's, over a null sp_conn (the pump above owns the real
        # one) and a socket that is only closed, by the pump above.
        dummy = ffi.gc(ffi.cast("sp_conn *", 0), lib.sp_conn_free)
        transport = ports._SocketTransport(cast(Any, _Unclosed(sock)))
        conn = ports.Connection(
            dummy, transport, ctx, sslports.SSLNetworkError, False, False, True, "127.0.0.1"
        )
        conn.caches_session = resume
        return conn

    def with_connection(sock: Any) -> None:
        conn = new_connection(sock)
        conn.ptr = None  # nothing for its __del__ to free
        conn._fast_addr = 0

    def with_ports(sock: Any) -> Any:
        conn = new_connection(sock)
        conn.ptr = None
        conn._fast_addr = 0
        return ports.make_ports(conn, None)

    def library() -> bool:
        inp, out = sslports.ssl_connect("127.0.0.1", port, ctx)
        out.write(header)
        out.flush()
        inp.readinto(one)
        reused = sslports.ssl_session_reused(inp)
        out.close()
        inp.close()
        return reused

    pyssl_stack = PySSLStack()
    pyssl_stack.client(PEM, SUITE)
    pyssl_session: list[Any] = [None]

    def pyssl() -> bool:
        end = pyssl_stack.connect("127.0.0.1", port, pyssl_session[0])
        end.write(header)
        if end.readfull(one) != 1:
            raise SystemExit("pyssl: no answer")
        if resume:
            pyssl_session[0] = end.obj.session
        end.close()
        return bool(end.reused)

    return {
        "c": c,
        "floor": lambda: pump(lambda sock: None),
        "connection": lambda: pump(with_connection),
        "ports": lambda: pump(with_ports),
        "sslports": library,
        "pyssl": pyssl,
    }


def server_variants(resume: bool) -> tuple[int, dict[str, Callable[[], bool]]]:
    """The listening port and the server variants (see the top)."""
    import _socket

    from peer import PySSLStack, SSLPortsStack

    import sslports
    from sslports import _binding

    lib, ffi = _binding.lib, _binding.ffi
    stack = SSLPortsStack()  # the bench's own server setup (no tickets for full handshakes)
    port = stack.listen("127.0.0.1", 0, PEM, PEM, SUITE, 2 if resume else 0)
    listener = stack.listener
    ctx = listener._sslports_context
    c_lib = ctypes.CDLL(str(build_lib()))
    c_lib.conn_one_accept.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    ctx_addr = int(ffi.cast("uintptr_t", ctx._ptr))
    # The C server's SSL gets the session id context of the library's (sp_conn.c): without it,
    # no ticket of one variant would resume on the next, and every variant would run full.
    set_sid = int(ffi.cast("uintptr_t", ffi.addressof(lib, "sp_ssl_set_session_id_context")))
    sid_flags = ctx._conn_policy[0] & ~lib.SP_VERIFY_POST_HANDSHAKE
    err, step = ffi.new("sp_err *"), ffi.new("size_t *")
    header, header_buf = ffi.new("unsigned char[32]"), bytearray(32)
    exchange = _exchanger(lib, ffi)

    def c() -> bool:
        result = c_lib.conn_one_accept(listener.fileno(), ctx_addr, set_sid, sid_flags)
        if not result:
            raise SystemExit("the C connection failed")
        return bool(result == 2)

    def floor() -> bool:
        fd, _addr = listener._sock._accept()
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        raw = lib.sp_ctx_open_conn(
            ctx._ptr, 1, fd, ctx._conn_policy[0], ffi.NULL, 0, 0, b"", 0, ffi.NULL, 0, 0, err, step
        )
        if raw == ffi.NULL:
            raise SystemExit("sp_ctx_open_conn failed")
        while (status := lib.sp_handshake(raw, 50, err)) != 0:
            if status < 0 or status > 2:
                raise SystemExit("handshake failed")
        exchange(raw, None, header)
        reused = bool(lib.sp_conn_session_reused(raw))
        sock.shutdown(_socket.SHUT_RDWR)
        lib.sp_conn_free(raw)
        sock.close()
        return reused

    def library() -> bool:
        inp, out = sslports.ssl_accept(listener)
        inp.readinto(header_buf)
        out.write(b"K")
        out.flush()
        reused = sslports.ssl_session_reused(inp)
        out.close()
        inp.close()
        return reused

    pyssl_stack = PySSLStack()  # serves on the library's listening socket, with its own context
    pyssl_stack.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pyssl_stack.server_ctx.load_cert_chain(PEM, PEM)
    pyssl_stack.server_ctx.num_tickets = 2 if resume else 0

    def pyssl() -> bool:
        fd, _addr = listener._sock._accept()
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = pyssl_stack.wrap_server(raw)
        if end.readfull(header_buf) != len(header_buf):
            raise SystemExit("pyssl: early EOF")
        end.write(b"K")
        end.close()
        return bool(end.reused)

    return port, {"c": c, "floor": floor, "sslports": library, "pyssl": pyssl}


def _exchanger(lib: Any, ffi: Any) -> Callable[[Any, Optional[bytes], Any], None]:
    """exchange(sp_conn, header, into): the client's half (write `header`, read the one-byte
    answer into `into`) or, with header None, the server's (read the 32-byte header into `into`,
    answer one byte), through the pump; SystemExit on anything but success."""
    err, got = ffi.new("sp_err *"), ffi.new("size_t *")

    def check(status: int, what: str) -> None:
        if status != 0:
            raise SystemExit(f"{what} failed (pump status {status})")

    def read(raw: Any, into: Any) -> None:
        size = len(into)
        while (status := lib.sp_read(raw, into, size, size, got, 50, err)) != 0:
            if status not in (1, 2):  # a wait slice passed: call again
                check(status, "read")

    def exchange(raw: Any, header: Optional[bytes], into: Any) -> None:
        if header is None:
            read(raw, into)
        out = header if header is not None else b"K"
        check(lib.sp_write(raw, out, len(out), got, 50, err), "write")
        check(lib.sp_flush(raw, 50, err), "flush")
        if header is not None:
            read(raw, into)

    return exchange


class _Unclosed:
    """A socket stand-in for the measured objects: shutdown/close do nothing (the pump's
    socket is closed by the pump)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def measure(
    run: dict[str, Callable[[], bool]], names: list[str], n: int, warm: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """CPU us of each connection after the first `warm`, and in total user / system seconds,
    minor page faults, voluntary context switches and resumed connections, by variant,
    alternating (in a rotating order)."""
    cpu: dict[str, list[float]] = {name: [] for name in names}
    user_sys = {name: [0.0, 0.0, 0.0, 0.0, 0.0] for name in names}
    clock = time.process_time_ns
    for i in range(n):
        # The order rotates every cycle: a variant run right after `c` costs ~3.5 % of C more
        # than elsewhere in the cycle (bench/README.md, section 2), so each takes every place.
        start = i % len(names)
        for name in names[start:] + names[:start]:
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), clock()
            reused = run[name]()
            t1, r1 = clock(), resource.getrusage(resource.RUSAGE_SELF)
            if i >= warm:
                cpu[name].append((t1 - t0) / 1e3)
                user_sys[name][0] += r1.ru_utime - r0.ru_utime
                user_sys[name][1] += r1.ru_stime - r0.ru_stime
                user_sys[name][2] += r1.ru_minflt - r0.ru_minflt
                user_sys[name][3] += r1.ru_nvcsw - r0.ru_nvcsw
                user_sys[name][4] += reused
    return cpu, user_sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1200, help="connections per variant")
    ap.add_argument("--full", action="store_true", help="full handshakes (no tickets)")
    ap.add_argument("--server", action="store_true", help="measure the server end")
    ap.add_argument("--variants", help="comma-separated (default: all)")
    args = ap.parse_args()
    names = (args.variants or ",".join(SERVER_VARIANTS if args.server else VARIANTS)).split(",")
    warm = min(50, args.n // 10)
    resume = not args.full
    if "pyssl" in names:
        if args.server and resume:
            raise SystemExit("conn_costs.py: the pyssl server variant needs --full")
        if "SSLPORTS_BENCH_CONF" not in os.environ:  # Python's ssl: the same TLS 1.3 suite
            conf = Path(tempfile.mkdtemp()) / "openssl.cnf"
            conf.write_text(OPENSSL_CONF)
            env = dict(os.environ, OPENSSL_CONF=str(conf), SSLPORTS_BENCH_CONF="1")
            os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ref, conns = str(build_ref()), args.n * len(names)
    if args.server:
        port, run = server_variants(resume)
        peer = subprocess.Popen(
            [ref, "client", f"ca={PEM}", "mode=hs", f"n={conns}", f"resume={int(resume)}",
             f"port={port}", f"suites={SUITE}"],
            stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
    else:
        peer = subprocess.Popen(
            [ref, "server", f"cert={PEM}", f"key={PEM}", f"suites={SUITE}", f"conns={conns}",
             f"tickets={2 if resume else 0}"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert peer.stdout is not None
        run = variants(int(peer.stdout.readline().split()[1]), resume)
    try:
        cpu, user_sys = measure(run, names, args.n, warm)
    finally:
        peer.kill()
        peer.wait()
    kind = "full" if args.full else "resumed"
    role = "server" if args.server else "client"
    base = statistics.mean(cpu[names[0]])
    print(f"{kind} connections, {role} end, {args.n - warm} per variant, alternating; CPU us each")
    print(
        f"{'variant':<11} {'mean':>7} {'median':>7} {'user':>7} {'system':>7} {'faults':>7} "
        f"{'waits':>6} {'resumed':>7}  vs {names[0]}"
    )
    unlike = []
    for name in names:
        n = len(cpu[name])
        mean = statistics.mean(cpu[name])
        user, system = (x / n * 1e6 for x in user_sys[name][:2])
        faults, waits, reused = (x / n for x in user_sys[name][2:])
        print(
            f"{name:<11} {mean:7.1f} {statistics.median(cpu[name]):7.1f} {user:7.1f} "
            f"{system:7.1f} {faults:7.2f} {waits:6.2f} {reused:7.0%}  {mean / base:.3f}"
        )
        if reused < 0.95 if resume else reused > 0:
            unlike.append(name)
    if unlike:  # the comparison would not be of like with like
        raise SystemExit(f"conn_costs.py: not {kind} as asked: {', '.join(unlike)}")


if __name__ == "__main__":
    main()
