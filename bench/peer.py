"""One end of a benchmark connection in Python: sslports, or the standard `ssl` module.

    peer.py server impl=sslports|pyssl cert=PEM key=PEM [tickets=2] [conns=1]
                   [model=inline|thread|fork] [host=127.0.0.1] [port=0] [suites=...]
    peer.py client impl=sslports|pyssl port=N ca=PEM mode=up|down|pingpong|hs|idle|echo
                   [size=B] [wbuf=N] [rbuf=N] [count=N] [n=CONNS] [resume=0|1]
                   [start_at=MONOTONIC] [duration=S]

The same options and the same wire protocol (common.py) as bench/c/sp_ref.c. A server prints
"PORT n" once it listens; every run ends with one line "RESULT {json}" on stdout. CPU is this
process's (and its forked children's) getrusage; RSS comes from /proc/self/statm.

Both stacks are reduced to the same few bound methods (`End`), looked up once per connection,
so the loops below cost the same Python for either; what differs is the stack underneath:
sslports' ports (read1/readinto/write/flush), or an SSLSocket (recv_into/sendall), blocking.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import os
import socket
import ssl
import sys
import threading
from typing import Any, Callable, Optional

from common import (
    ACK,
    FLAG_WARMUP,
    HEADER,
    cpu_seconds,
    now,
    pack_header,
    parse_kv,
    raise_nofile,
    rss_bytes,
    set_tickets,
    unpack_header,
)

_libssl: Optional[ctypes.CDLL] = None


def libssl() -> ctypes.CDLL:
    """The process's libssl through ctypes (the same library sslports and _ssl use)."""
    global _libssl
    if _libssl is None:
        _libssl = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
        _libssl.SSL_get_current_cipher.argtypes = [ctypes.c_void_p]
        _libssl.SSL_get_current_cipher.restype = ctypes.c_void_p
        _libssl.SSL_CIPHER_get_name.argtypes = [ctypes.c_void_p]
        _libssl.SSL_CIPHER_get_name.restype = ctypes.c_char_p
    return _libssl


class End:
    """One established connection, as the handful of bound methods the loops call."""

    __slots__ = ("close", "flush", "obj", "readfull", "readinto1", "reused", "session", "write")

    def __init__(
        self,
        readinto1: Callable[[Any], int],
        readfull: Callable[[Any], int],
        write: Callable[[Any], Any],
        flush: Callable[[], None],
        close: Callable[[], None],
        obj: Any,
    ) -> None:
        self.readinto1 = readinto1
        self.readfull = readfull
        self.write = write
        self.flush = flush
        self.close = close
        self.obj = obj
        self.reused: Optional[bool] = None
        self.session: Any = None


def _noop() -> None:
    pass


# -- sslports -------------------------------------------------------------------------------


class SSLPortsStack:
    name = "sslports"

    def __init__(self) -> None:
        import sslports

        self.sp = sslports
        self.reused_fn = getattr(sslports, "ssl_session_reused", None)
        self.cipher_fn = getattr(sslports, "ssl_cipher_name", None)
        self.listener: Any = None
        self.client_ctx: Any = None

    def listen(self, host: str, port: int, cert: str, key: str, suites: str, tickets: int) -> int:
        sp = self.sp
        ctx = sp.ssl_make_server_context("auto")
        sp.ssl_load_certificate_chain(ctx, cert)
        sp.ssl_load_private_key(ctx, key, rsa=False)
        sp.ssl_set_ciphersuites(ctx, suites)
        if tickets != 2:
            set_tickets(ctx, tickets)
        self.listener = sp.ssl_listen(port, 1024, True, host, ctx)
        return int(sp.ssl_addresses(self.listener, True)[1])

    def _end(self, inp: Any, out: Any) -> End:
        def close() -> None:
            out.close()
            inp.close()

        end = End(inp.readinto1, inp.readinto, out.write, out.flush, close, inp)
        if self.reused_fn is not None:
            end.reused = bool(self.reused_fn(inp))
        return end

    def accept(self) -> End:
        inp, out = self.sp.ssl_accept(self.listener)
        return self._end(inp, out)

    def client(self, ca: str, suites: str) -> None:
        sp = self.sp
        ctx = sp.ssl_make_client_context("auto")
        sp.ssl_load_verify_source(ctx, ca)
        sp.ssl_set_verify(ctx, True)
        sp.ssl_set_verify_hostname(ctx, True)
        sp.ssl_set_ciphersuites(ctx, suites)
        self.client_ctx = ctx

    def connect(self, host: str, port: int, session: Any) -> End:
        # sslports resumes by itself (per context, host and port) once that is implemented.
        inp, out = self.sp.ssl_connect(host, port, self.client_ctx)
        return self._end(inp, out)

    def cipher(self, end: End) -> str:
        if self.cipher_fn is not None:
            return str(self.cipher_fn(end.obj))
        from sslports import _binding

        ssl_ptr = _binding.lib.sp_conn_ssl(end.obj._sslports_conn.ptr)
        lib = libssl()
        c = lib.SSL_get_current_cipher(int(_binding.ffi.cast("uintptr_t", ssl_ptr)))
        return lib.SSL_CIPHER_get_name(c).decode() if c else "?"


# -- Python's ssl module --------------------------------------------------------------------


def _recv_full(recv_into: Callable[[Any], int]) -> Callable[[Any], int]:
    def readfull(buf: Any) -> int:
        view = memoryview(buf)
        size = len(view)
        got = recv_into(view)
        while got < size:
            n = recv_into(view[got:])
            if not n:
                break
            got += n
        return got

    return readfull


class PySSLStack:
    name = "pyssl"

    def __init__(self) -> None:
        self.server_ctx: Optional[ssl.SSLContext] = None
        self.client_ctx: Optional[ssl.SSLContext] = None
        self.lsock: Optional[socket.socket] = None

    def listen(self, host: str, port: int, cert: str, key: str, suites: str, tickets: int) -> int:
        # TLS 1.3 suites: the ssl module has no setter; run_all.py sets OPENSSL_CONF for that.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.num_tickets = tickets
        self.server_ctx = ctx
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(1024)
        self.lsock = lsock
        return int(lsock.getsockname()[1])

    def accept_raw(self) -> socket.socket:
        assert self.lsock is not None
        sock, _addr = self.lsock.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def wrap_server(self, sock: socket.socket) -> End:
        assert self.server_ctx is not None
        s = self.server_ctx.wrap_socket(sock, server_side=True)
        end = self._end(s)
        end.reused = s.session_reused
        return end

    def accept(self) -> End:
        return self.wrap_server(self.accept_raw())

    @staticmethod
    def _end(s: ssl.SSLSocket) -> End:
        return End(s.recv_into, _recv_full(s.recv_into), s.sendall, _noop, s.close, s)

    def client(self, ca: str, suites: str) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the hostname
        ctx.load_verify_locations(ca)
        self.client_ctx = ctx

    def connect(self, host: str, port: int, session: Any) -> End:
        assert self.client_ctx is not None
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s = self.client_ctx.wrap_socket(sock, server_hostname=host, session=session)
        except BaseException:
            sock.close()
            raise
        end = self._end(s)
        end.reused = s.session_reused
        return end

    def cipher(self, end: End) -> str:
        c = end.obj.cipher()
        return str(c[0]) if c else "?"


def make_stack(name: str) -> Any:
    if name == "sslports":
        return SSLPortsStack()
    if name == "pyssl":
        return PySSLStack()
    raise SystemExit(f"unknown impl {name!r}")


# -- the traffic of each mode ---------------------------------------------------------------


def send_bytes(end: End, wbuf: int, size: int) -> None:
    chunk = os.urandom(wbuf)
    write = end.write
    for _ in range(size // wbuf):
        write(chunk)
    rest = size % wbuf
    if rest:
        write(chunk[:rest])
    end.flush()


def recv_bytes(end: End, rbuf: int, size: int) -> None:
    view = memoryview(bytearray(rbuf))
    readinto1 = end.readinto1
    left = size
    while left >= rbuf:
        n = readinto1(view)
        if not n:
            raise EOFError(f"early EOF, {left} bytes missing")
        left -= n
    while left > 0:
        n = readinto1(view[:left])
        if not n:
            raise EOFError(f"early EOF, {left} bytes missing")
        left -= n


def read_exact(end: End, n: int) -> bytes:
    buf = bytearray(n)
    if end.readfull(buf) != n:
        raise EOFError("early EOF")
    return bytes(buf)


class ServerStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served = 0
        self.resumed = 0
        self.bytes = 0
        self.data_cpu = 0.0
        self.cipher = ""


def serve(stack: Any, end: End, stats: ServerStats, kept: list[End]) -> str:
    """Answer one connection according to its header (common.py); returns the mode."""
    mode, flags, wbuf, rbuf, count, size = unpack_header(read_exact(end, HEADER.size))
    c0 = cpu_seconds()
    nbytes = 0
    keep = False
    if mode == "up":
        recv_bytes(end, rbuf, size)
        end.write(ACK)
        end.flush()
        nbytes = size
    elif mode == "down":
        send_bytes(end, wbuf, size)
        read_exact(end, 1)
        nbytes = size
    elif mode == "pingpong":
        req = bytearray(wbuf)
        resp = os.urandom(rbuf)
        readfull, write, flush = end.readfull, end.write, end.flush
        for _ in range(count):
            if readfull(req) != wbuf:
                raise EOFError("ping-pong: early EOF")
            write(resp)
            flush()
    elif mode in ("hs", "idle"):
        end.write(ACK)
        end.flush()
        keep = mode == "idle" and not flags & FLAG_WARMUP
    elif mode == "echo":
        view = memoryview(bytearray(rbuf))
        readinto1, write, flush = end.readinto1, end.write, end.flush
        while True:
            try:
                n = readinto1(view)
            except OSError:
                break
            if not n:
                break
            write(view[:n])
            flush()
            nbytes += n
    cpu = cpu_seconds() - c0
    with stats.lock:
        stats.served += 1
        stats.resumed += bool(end.reused)
        stats.bytes += nbytes
        stats.data_cpu += cpu
        if not stats.cipher:
            stats.cipher = stack.cipher(end)
        if keep:
            kept.append(end)
    if not keep:
        end.close()
    return mode


def run_server(o: dict[str, str]) -> None:
    stack = make_stack(o.get("impl", "sslports"))
    conns = int(o.get("conns", "1"))
    model = o.get("model", "inline")
    raise_nofile(2 * conns + 64)
    port = stack.listen(
        o.get("host", "127.0.0.1"),
        int(o.get("port", "0")),
        o["cert"],
        o["key"],
        o.get("suites", "TLS_AES_128_GCM_SHA256"),
        int(o.get("tickets", "2")),
    )
    print(f"PORT {port}", flush=True)
    stats = ServerStats()
    kept: list[End] = []
    threads: list[threading.Thread] = []
    children: list[int] = []
    gc.collect()
    rss0 = rss_bytes()
    rss1 = 0
    t0 = c0 = 0.0
    for i in range(conns):
        if model == "fork":
            sock = stack.accept_raw()
            if i == 0:
                t0, c0 = now(), cpu_seconds()
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    serve(stack, stack.wrap_server(sock), stats, kept)
                except BaseException as exc:
                    print(f"peer.py child: {exc!r}", file=sys.stderr)
                    code = 1
                os._exit(code)
            sock.close()
            children.append(pid)
            continue
        end = stack.accept()
        if i == 0:
            t0, c0 = now(), cpu_seconds()
        if model == "thread":
            t = threading.Thread(target=serve, args=(stack, end, stats, kept), daemon=True)
            t.start()
            threads.append(t)
            continue
        if serve(stack, end, stats, kept) == "idle" and (not kept or i == conns - 1):
            gc.collect()
            if kept:
                rss1 = rss_bytes()  # all idle connections are open
            else:
                rss0 = rss_bytes()  # after the warm-up, before the first kept connection
    for t in threads:
        t.join()
    for pid in children:
        os.waitpid(pid, 0)
    result = {
        "impl": stack.name,
        "role": "server",
        "served": conns if children else stats.served,
        "resumed": stats.resumed,
        "bytes": stats.bytes,
        "data_cpu": stats.data_cpu,
        "cpu": cpu_seconds() - c0,
        "wall": now() - t0,
        "kept": len(kept),
        "rss0": rss0,
        "rss1": rss1,
        "cipher": stats.cipher,
    }
    print("RESULT " + json.dumps(result), flush=True)
    if kept:  # hold the idle connections until the client goes away
        try:
            kept[0].readinto1(bytearray(1))
        except OSError:
            pass
        for end in kept:
            end.close()


def run_client(o: dict[str, str]) -> None:
    stack = make_stack(o.get("impl", "sslports"))
    host = o.get("host", "127.0.0.1")
    port = int(o["port"])
    mode = o["mode"]
    wbuf = int(o.get("wbuf", "16384"))
    rbuf = int(o.get("rbuf", str(wbuf)))
    count = int(o.get("count", "0"))
    size = int(o.get("size", "0"))
    n = int(o.get("n", "1"))
    resume = o.get("resume", "0") == "1"
    stack.client(o["ca"], o.get("suites", "TLS_AES_128_GCM_SHA256"))
    result: dict[str, Any] = {"impl": stack.name, "role": "client", "mode": mode}
    resumed: Optional[int] = 0
    rss0 = rss1 = 0
    nbytes = 0
    if mode in ("up", "down", "pingpong"):
        end = stack.connect(host, port, None)
        cipher = stack.cipher(end)
        t0, c0 = now(), cpu_seconds()
        end.write(pack_header(mode, 0, wbuf, rbuf, count, size))
        if mode == "up":
            send_bytes(end, wbuf, size)
            read_exact(end, 1)
            nbytes = size
        elif mode == "down":
            end.flush()
            recv_bytes(end, rbuf, size)
            end.write(ACK)
            end.flush()
            nbytes = size
        else:
            req = os.urandom(wbuf)
            resp = bytearray(rbuf)
            readfull, write, flush = end.readfull, end.write, end.flush
            for _ in range(count):
                write(req)
                flush()
                if readfull(resp) != rbuf:
                    raise EOFError("ping-pong: early EOF")
        wall, cpu = now() - t0, cpu_seconds() - c0
        end.close()
    elif mode == "hs":
        session = None
        cipher = ""
        t0, c0 = now(), cpu_seconds()
        for _ in range(n):
            end = stack.connect(host, port, session if resume else None)
            end.write(pack_header("hs", 0, 0, 0, 0, 0))
            end.flush()
            read_exact(end, 1)
            if end.reused is None:
                resumed = None
            elif resumed is not None:
                resumed += end.reused
            if not cipher:
                cipher = stack.cipher(end)
            if resume and isinstance(stack, PySSLStack):
                session = end.obj.session
            end.close()
        wall, cpu = now() - t0, cpu_seconds() - c0
    elif mode == "idle":
        raise_nofile(2 * n + 64)
        end = stack.connect(host, port, None)
        end.write(pack_header("idle", FLAG_WARMUP, 0, 0, 0, 0))
        end.flush()
        read_exact(end, 1)
        cipher = stack.cipher(end)
        end.close()
        del end
        gc.collect()
        rss0 = rss_bytes()
        held: list[End] = []
        t0, c0 = now(), cpu_seconds()
        for _ in range(n):
            end = stack.connect(host, port, None)
            end.write(pack_header("idle", 0, 0, 0, 0, 0))
            end.flush()
            read_exact(end, 1)
            held.append(end)
        wall, cpu = now() - t0, cpu_seconds() - c0
        del end
        gc.collect()
        rss1 = rss_bytes()
    elif mode == "echo":
        end = stack.connect(host, port, None)
        cipher = stack.cipher(end)
        end.write(pack_header("echo", 0, wbuf, wbuf, 0, 0))
        end.flush()
        start_at = float(o.get("start_at", "0"))
        duration = float(o.get("duration", "3"))
        delay = start_at - now()
        if delay > 0:
            threading.Event().wait(delay)
        chunk = os.urandom(wbuf)
        back = bytearray(wbuf)
        readfull, write, flush = end.readfull, end.write, end.flush
        t0, c0 = now(), cpu_seconds()
        stop = t0 + duration
        while now() < stop:
            write(chunk)
            flush()
            if readfull(back) != wbuf:
                raise EOFError("echo: early EOF")
            nbytes += wbuf
        wall, cpu = now() - t0, cpu_seconds() - c0
        end.close()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result.update(
        wall=wall,
        cpu=cpu,
        bytes=nbytes,
        conns=n if mode in ("hs", "idle") else 1,
        resumed=resumed,
        rss0=rss0,
        rss1=rss1,
        cipher=cipher,
    )
    print("RESULT " + json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in ("server", "client"):
        raise SystemExit(__doc__)
    opts = parse_kv(argv[2:])
    if argv[1] == "server":
        run_server(opts)
    else:
        run_client(opts)


if __name__ == "__main__":
    main(sys.argv)
