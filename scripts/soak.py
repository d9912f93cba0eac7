"""Soak test: open and close many TLS connections and contexts, then report RSS growth.

    python scripts/soak.py [--connections 20000] [--contexts 1000] [--batch 500]

Everything runs in this process over 127.0.0.1, sslports at both ends: an ``ssl_listen``
server (one accept thread doing the handshakes, two workers echoing) and two client threads.
Connections cycle through the ways in: ``ssl_connect`` with TLS 1.3 and TLS 1.2 (the client
contexts resume sessions), ``ssl_wrap_socket``, ``ports_to_ssl_ports`` over ``socket.makefile``
with ``shutdown_on_close``, and a client whose verification fails (error paths leak too). Each
working connection sends a line and reads its echo. Contexts are made with a chain, a key, a
verify source, ciphers, ALPN, an SNI callback (a reference cycle through the context) and a key
logger, then dropped.

A warm-up (--warmup connections and a tenth of the contexts) fills caches and pools first; the
resident set size is then measured (after gc.collect() and malloc_trim(0)) before and after the
measured run. Exit status 1 when the growth exceeds --max-growth-mb (default 2).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import sslports

LOCAL = "127.0.0.1"
PEM = sslports.TEST_PEM
MIB = 1 << 20


def rss_bytes() -> int:
    """Current resident set size, after collecting garbage and trimming malloc's free lists."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        trim = getattr(libc, "malloc_trim", None)
        if trim is not None:
            trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Server:
    def __init__(self) -> None:
        ctx = sslports.ssl_make_server_context()
        sslports.ssl_load_certificate_chain(ctx, PEM)
        sslports.ssl_load_private_key(ctx, PEM)
        self.listener = sslports.ssl_listen(0, 128, True, LOCAL, ctx, handshake_timeout=10)
        self.port: int = sslports.ssl_addresses(self.listener, True)[1]
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="soak-echo")
        self.failed = 0
        self.served = 0
        self.thread = threading.Thread(target=self._accept_loop, name="soak-accept")
        self.thread.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.listener, selectors.EVENT_READ)
            while not self.stop.is_set():
                if not sel.select(0.05):
                    continue
                try:
                    ports = sslports.ssl_accept(self.listener)
                except sslports.SSLError:
                    self.failed += 1
                    continue
                self.pool.submit(self._echo, *ports)

    def _echo(self, inp: Any, out: Any) -> None:
        try:
            line = inp.readline()
            out.write(line)
            out.flush()
            inp.read1(10)  # until the client is gone
        except sslports.SSLError:
            pass
        finally:
            out.close()
            inp.close()
        self.served += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.pool.shutdown(wait=True)
        self.listener.close()


class Clients:
    """The ways in, cycled connection by connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tls13 = self._trusting("auto")
        self.tls12 = self._trusting("tls12")
        self.wrong = sslports.ssl_make_client_context()  # trusts nothing, verifies
        sslports.ssl_set_verify(self.wrong, True)
        self.kinds: list[Callable[[], bool]] = [
            self.connect13,
            self.connect12,
            self.wrap,
            self.streams,
            self.connect13,
            self.refused,
        ]

    @staticmethod
    def _trusting(protocol: str) -> sslports.SSLClientContext:
        ctx = sslports.ssl_make_client_context(protocol)
        sslports.ssl_load_verify_source(ctx, PEM)
        sslports.ssl_set_verify(ctx, True)
        sslports.ssl_set_verify_hostname(ctx, True)
        return ctx

    @staticmethod
    def _talk(inp: Any, out: Any) -> bool:
        try:
            out.write(b"soak line\n")
            out.flush()
            ok: bool = inp.readline() == b"soak line\n"
        finally:
            out.close()
            inp.close()
        return ok

    def connect13(self) -> bool:
        return self._talk(*sslports.ssl_connect(LOCAL, self.port, self.tls13, timeout=10))

    def connect12(self) -> bool:
        return self._talk(*sslports.ssl_connect(LOCAL, self.port, self.tls12, timeout=10))

    def wrap(self) -> bool:
        sock = socket.create_connection((LOCAL, self.port), timeout=10)
        try:
            ports = sslports.ssl_wrap_socket(
                sock, context=self.tls13, hostname="localhost", timeout=10
            )
        except BaseException:
            sock.close()
            raise
        return self._talk(*ports)

    def streams(self) -> bool:
        sock = socket.create_connection((LOCAL, self.port), timeout=10)
        with sock:
            rfile, wfile = sock.makefile("rb"), sock.makefile("wb")
            ports = sslports.ports_to_ssl_ports(
                rfile,
                wfile,
                mode="connect",
                context=self.tls12,
                hostname="localhost",
                close_original=True,
                shutdown_on_close=True,
                timeout=10,
            )
            return self._talk(*ports)

    def refused(self) -> bool:
        try:
            ports = sslports.ssl_connect(LOCAL, self.port, self.wrong, timeout=10)
        except sslports.SSLNetworkError:
            return True
        for p in ports:
            p.close()
        return False

    def run(self, count: int, start: int) -> int:
        """`count` connections over two threads; returns how many went wrong."""
        errors = [0, 0]

        def worker(slot: int) -> None:
            for i in range(start + slot, start + count, 2):
                try:
                    if not self.kinds[i % len(self.kinds)]():
                        errors[slot] += 1
                except (OSError, sslports.SSLError) as exc:
                    errors[slot] += 1
                    print(f"soak: connection {i}: {exc}", file=sys.stderr)

        threads = [threading.Thread(target=worker, args=(s,)) for s in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(errors)


def make_contexts(count: int) -> None:
    for i in range(count):
        if i % 2:
            ctx: Any = sslports.ssl_make_server_context()
            sslports.ssl_load_certificate_chain(ctx, PEM)
            sslports.ssl_load_private_key(ctx, PEM)
            sslports.ssl_set_server_alpn(ctx, [b"h2", b"http/1.1"])
            sslports.ssl_set_server_name_identification_callback(ctx, lambda name, c=ctx: c)  # type: ignore[misc]
            sslports.ssl_server_context_enable_ecdh(ctx, "prime256v1")
        else:
            ctx = sslports.ssl_make_client_context()
            sslports.ssl_load_verify_source(ctx, PEM)
            sslports.ssl_set_verify(ctx, True)
        sslports.ssl_set_ciphers(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20")
        sslports.ssl_set_keylogger(ctx, lambda line: None)
        sslports.ssl_seal_context(ctx)
        del ctx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--max-growth-mb", type=float, default=2.0)
    args = parser.parse_args()

    server = Server()
    clients = Clients(server.port)
    started = time.monotonic()
    errors = clients.run(args.warmup, 0)
    make_contexts(max(1, args.contexts // 10))
    base = rss_bytes()
    print(f"soak: warm-up {args.warmup} connections; RSS {base / MIB:.2f} MiB", flush=True)

    done = 0
    batch_no = 0
    while done < args.connections:
        n = min(args.batch, args.connections - done)
        errors += clients.run(n, args.warmup + done)
        done += n
        batch_no += 1
        if batch_no % 10 == 0 or done == args.connections:
            rss = rss_bytes()
            print(
                f"soak: {done:>6} connections  RSS {rss / MIB:8.2f} MiB "
                f"({(rss - base) / MIB:+.2f})  {time.monotonic() - started:6.1f} s",
                flush=True,
            )
    after_connections = rss_bytes()
    make_contexts(args.contexts)
    final = rss_bytes()
    server.close()

    growth = (final - base) / MIB
    print(f"soak: {args.contexts} contexts made and dropped")
    print(
        f"soak: {done} connections ({server.failed} refused handshakes on the server, "
        f"{errors} client errors) in {time.monotonic() - started:.1f} s"
    )
    print(f"soak: RSS growth after warm-up: connections {(after_connections - base) / MIB:+.2f} MB")
    print(f"soak: RSS growth after warm-up: {growth:+.2f} MB (target < {args.max_growth_mb} MB)")
    if errors:
        print("soak: FAILED: some connections went wrong")
        return 1
    if growth >= args.max_growth_mb:
        print("soak: FAILED: memory grew past the target")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
