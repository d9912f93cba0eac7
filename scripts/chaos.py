"""Seeded concurrent chaos: many TLS connections at once in one process, checked for crashes,
hangs, stray exception types, lost or corrupted bytes and leaked descriptors, threads or memory.

    python scripts/chaos.py [--seconds 60] [--seed S] [--slots 10] [--deadline 25]
                            [--only sslports,python,vanish,sni_raise,hostile_client,
                                    listener,s_server,s_client] [--verbose]

`make chaos` runs it (CHAOS_SECONDS, CHAOS_SEED; CHAOS_ASAN=1 on scripts/asan.sh's build);
tests/test_chaos.py runs a few seconds of it. --verbose prints each scenario and, for a
connection its deadline cut, what each end holds (CHAOS_DUMP=1: every thread's stack too).

Everything runs over 127.0.0.1. Peers: sslports at both ends (an ``ssl_listen`` server whose
accept threads run the handshakes and hand each connection to an echo handler), Python's
``ssl`` (an echo server that can also reset, half-close, stop reading or send garbage), a raw
TCP server that vanishes mid-handshake, ``openssl s_server`` (fed key updates ``k``/``K`` and
TLS 1.2 renegotiations ``r`` on its stdin) and ``openssl s_client``. Each of --slots threads runs
one scenario after another, chosen from a ``random.Random`` seeded by (seed, slot, round): a
client connection over ``ssl_connect``, ``ssl_wrap_socket`` or ``ports_to_ssl_ports`` with
one or two writer threads and one or two reader threads on the same port, timeouts set,
changed and cleared between calls, a third thread closing a port, both or abandoning them
mid-call, or the ports dropped without close; SNI callbacks that raise; listeners closed while
accepts wait; hostile raw clients. Bytes travel as self-checking lines (writer, sequence
number, payload derived from them), so a receiver checks what it got without shared state:
each writer's lines arrive whole, in order, without gaps, and a connection where nobody broke
anything delivers every line.

At the end the descriptors and threads of the process must be back to where they started, and
(after a warm-up, not under ASan or TSan) its RSS within --max-rss-growth-mb. A watchdog dumps
every thread's stack (faulthandler) and exits with status 3 when a scenario outlives its bound.
Exit status 0 when every invariant held, 1 otherwise; the seed is printed for replay.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import gc
import hashlib
import os
import queue
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from soak import rss_bytes  # (scripts/: this script's own directory is on sys.path)

import sslports
from sslports import SSLError, SSLNetworkError

LOCAL = "127.0.0.1"
PEM = str(sslports.TEST_PEM)
OPENSSL = shutil.which("openssl")
SANITIZER = ""  # ASan or TSan (scripts/asan.sh, scripts/tsan.sh): their runtime is preloaded
try:
    with open("/proc/self/maps") as _maps:
        _mapped = _maps.read()
    SANITIZER = "ASan" if "libasan" in _mapped else "TSan" if "libtsan" in _mapped else ""
except OSError:  # pragma: no cover - not Linux
    pass
SLOW = 3.0 if SANITIZER else 1.0  # every bound is this much longer under a sanitizer

# -- self-checking lines ---------------------------------------------------------------------


def make_line(cs: int, wid: int, seq: int) -> bytes:
    """Writer `wid`'s line number `seq` of connection seed `cs`: b"WWSSSSSSSS<hex>\\n"."""
    d = hashlib.blake2b(struct.pack("<IHI", cs, wid, seq), digest_size=32).digest()
    n = d[0] | (d[1] << 8)
    n = n % 400 if d[2] < 230 else n % 24000  # mostly short, sometimes a few records long
    body = (d * (n // 32 + 1))[:n].hex().encode()
    return b"%02x%08x" % (wid, seq) + body + b"\n"


END = b"END\n"


class Verifier:
    """Checks received bytes: whole valid lines, per writer in order from 0 (`ordered`) or as
    a set that must be 0..n-1 (`ordered=False`: two readers, each gets whole lines)."""

    def __init__(self, cs: int, ordered: bool, noise: tuple[bytes, ...] = ()) -> None:
        self.cs = cs
        self.ordered = ordered
        self.noise = noise
        self.lock = threading.Lock()
        self.tail = bytearray()
        self.next: dict[int, int] = collections.defaultdict(int)
        self.seen: dict[int, set[int]] = collections.defaultdict(set)
        self.ended = False
        self.errors: list[str] = []
        self.nbytes = 0

    def _line(self, line: bytes) -> None:
        if line == END:
            if self.ended:
                self.errors.append("END twice")
            self.ended = True
            return
        if line in self.noise:
            return
        if self.ended and self.ordered:  # (two readers: either may pass its line on first)
            self.errors.append(f"line after END: {line[:40]!r}")
            return
        try:
            wid, seq = int(line[:2], 16), int(line[2:10], 16)
        except ValueError:
            self.errors.append(f"bad line {line[:60]!r}")
            return
        want = make_line(self.cs, wid, seq)
        if line != want:
            same = next(
                (i for i, (a, b) in enumerate(zip(line, want)) if a != b), min(len(line), len(want))
            )
            self.errors.append(
                f"corrupt line w{wid} #{seq}: {len(line)} bytes where {len(want)} were due, "
                f"first difference at {same} (stream offset {self.nbytes - len(self.tail)})"
            )
            return
        if self.ordered:
            if seq != self.next[wid]:
                self.errors.append(f"writer {wid}: line {seq} where {self.next[wid]} was due")
            self.next[wid] = seq + 1
        else:
            if seq in self.seen[wid]:
                self.errors.append(f"writer {wid}: line {seq} twice")
            self.seen[wid].add(seq)

    def feed(self, data: bytes) -> None:
        with self.lock:
            self.nbytes += len(data)
            self.tail += data
            while True:
                i = self.tail.find(b"\n")
                if i < 0:
                    break
                line = bytes(self.tail[: i + 1])
                del self.tail[: i + 1]
                self._line(line)

    def feed_line(self, line: bytes) -> None:
        """A whole line from readline() (or its EOF-cut last part)."""
        with self.lock:
            self.nbytes += len(line)
            if line.endswith(b"\n"):
                self._line(line)
            else:
                self.tail += line

    def finish(self) -> None:
        with self.lock:
            if not self.ordered:
                for wid, seqs in self.seen.items():
                    if seqs != set(range(len(seqs))):
                        missing = sorted(set(range(max(seqs) + 1)) - seqs)[:5]
                        self.errors.append(f"writer {wid}: gaps, missing {missing}")
                    self.next[wid] = len(seqs)
            t = bytes(self.tail)
            if t and not END.startswith(t):  # an EOF-cut line: a prefix of a due line
                try:
                    wid = int(t[:2], 16) if len(t) >= 2 else -1
                except ValueError:
                    wid = -2
                if wid == -1:
                    ok = any(make_line(self.cs, w, self.next[w]).startswith(t) for w in self.next)
                    ok = ok or len(t) < 2
                elif wid < 0:
                    ok = False
                else:
                    ok = make_line(self.cs, wid, self.next[wid]).startswith(t)
                if not ok:
                    self.errors.append(f"cut line is no prefix of a due line: {t[:60]!r}")

    def complete(self, sent: dict[int, int]) -> Optional[str]:
        """None when every line of `sent` (writer -> count) and END arrived."""
        got = {w: n for w, n in self.next.items() if n}
        want = {w: n for w, n in sent.items() if n}
        if got != want or not self.ended:
            return f"lost data: got {got} of {want}, END {'seen' if self.ended else 'missing'}"
        return None


# -- the run: invariants, bookkeeping, watchdog --------------------------------------------


class _Boom(Exception):
    """What the chaos SNI callback raises."""


IO_OK = (SSLError, TimeoutError, ValueError)  # API.md: port read/write/flush/close
# Ports of ssl_connect / ssl_accept / ssl_wrap_socket: a transport failure is SSLNetworkError.
SOCKET_IO_OK = (SSLNetworkError, TimeoutError, ValueError)
CONNECT_OK = (SSLNetworkError,)
STREAMS_OK = (SSLError,)


class Run:
    def __init__(self, seed: int, seconds: float, deadline: float, verbose: bool) -> None:
        self.seed = seed
        self.deadline = deadline  # seconds a client connection may take (then: closed)
        self.seconds = seconds
        self.verbose = verbose
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + seconds
        self.violations: list[str] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.active: dict[int, tuple[str, float, float]] = {}  # ident -> (what, start, bound)
        self.done = threading.Event()

    def stopping(self) -> bool:
        return time.monotonic() >= self.stop_at

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.stats[what] += n

    def violation(self, what: str) -> None:
        with self.lock:
            self.violations.append(what)
        print(f"chaos: VIOLATION {what}", file=sys.stderr, flush=True)

    def check_exc(
        self, where: str, exc: BaseException, ok: tuple[type[BaseException], ...]
    ) -> None:
        self.count(f"exc {where} {type(exc).__name__}")
        if not isinstance(exc, ok):
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.violation(f"{where}: unexpected {type(exc).__name__}: {exc}\n{tb}")

    def scenario(self, what: str, bound: float) -> _Active:
        """Register the calling thread's scenario: the watchdog fails the run when it lasts
        longer than `bound` seconds plus the connection deadline (both times SLOW)."""
        return _Active(self, what, (bound + self.deadline) * SLOW)

    def watchdog(self) -> None:
        hard = self.stop_at + 120 * SLOW
        while not self.done.wait(1.0):
            now = time.monotonic()
            late = [(w, now - s) for (w, s, b) in list(self.active.values()) if now > s + b]
            if late or now > hard:
                print(
                    f"chaos: WATCHDOG seed {self.seed}: hung {late or 'run past its end'}; stacks:",
                    file=sys.stderr,
                    flush=True,
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(3)


class _Active:
    def __init__(self, run: Run, what: str, bound: float) -> None:
        self.run, self.what, self.bound = run, what, bound

    def __enter__(self) -> _Active:
        self.key = threading.get_ident()
        with self.run.lock:
            self.run.active[self.key] = (self.what, time.monotonic(), self.bound)
        return self

    def __exit__(self, *exc: object) -> None:
        with self.run.lock:
            self.run.active.pop(self.key, None)


def spawn(target: Callable[..., Any], *args: Any, name: str = "chaos") -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    t.start()
    return t


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# -- peers ---------------------------------------------------------------------------------


def server_context(run: Run) -> Any:
    ctx = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(ctx, PEM)
    sslports.ssl_load_private_key(ctx, PEM)
    other = sslports.ssl_make_server_context()
    sslports.ssl_load_certificate_chain(other, PEM)
    sslports.ssl_load_private_key(other, PEM)
    sslports.ssl_seal_context(other)

    def sni(name: str) -> Any:
        if name.startswith("boom"):
            raise _Boom(name)
        return other if name.startswith("other") else None

    sslports.ssl_set_server_name_identification_callback(ctx, sni)
    sslports.ssl_seal_context(ctx)
    return ctx


class EchoHandler:
    """The server side of one sslports connection: reads b"MODE <mode> <seed>\\n", then echoes.

    Modes: clean (echo until END, close), timeouts (same, with read and write timeouts set,
    changed and cleared between calls), split (a reader thread and a writer thread), and the
    breaking ones: close / abandon / drop (the ports, after a random number of bytes) and
    closeboth (both ports closed from another thread while the echo runs)."""

    def __init__(self, run: Run, inp: Any, out: Any) -> None:
        self.run, self.inp, self.out = run, inp, out

    def serve(self) -> None:
        run = self.run
        inp, out = self.inp, self.out
        with run.scenario("sp-echo", 90):
            try:
                inp.settimeout(40 * SLOW)
                first = inp.readline()
                inp.settimeout(None)
                parts = first.split()
                if len(parts) != 3 or parts[0] != b"MODE":
                    return
                mode = parts[1].decode()
                rng = random.Random(int(parts[2]))
                self.echo(mode, rng)
            except IO_OK as exc:
                run.check_exc("sp-echo", exc, SOCKET_IO_OK)
            except BaseException as exc:
                run.check_exc("sp-echo", exc, SOCKET_IO_OK)
            finally:
                if getattr(self, "dropped", False):
                    run.count("sp-echo dropped")
                else:
                    for p in (out, inp):
                        try:
                            p.close()
                        except BaseException as exc:
                            run.check_exc("sp-echo close", exc, SOCKET_IO_OK)
                self.inp = self.out = None
                del inp, out

    def echo(self, mode: str, rng: random.Random) -> None:
        inp, out = self.inp, self.out
        limit = rng.randint(0, 300000) if mode in ("close", "abandon", "drop", "closeboth") else -1
        if mode == "closeboth":
            delay = rng.uniform(0, 0.3)

            def closer() -> None:
                time.sleep(delay)
                for p in (inp, out):
                    try:
                        p.close()
                    except BaseException as exc:
                        self.run.check_exc("sp-echo closer", exc, SOCKET_IO_OK)

            spawn(closer, name="sp-closer")
        if mode == "split":
            q: queue.Queue[Optional[bytes]] = queue.Queue(64)

            def pump_out() -> None:
                try:
                    while True:
                        data = q.get()
                        if data is None:
                            break
                        out.write(data)
                        out.flush()
                except BaseException as exc:
                    self.run.check_exc("sp-echo split write", exc, SOCKET_IO_OK)
                    while q.get() is not None:
                        pass

            t = spawn(pump_out, name="sp-split")
            try:
                self._loop(rng, -1, q.put)
            finally:
                q.put(None)
                t.join()
            return
        self._loop(rng, limit, lambda data: self._send(rng, mode, data))
        if mode in ("close", "abandon", "drop") and limit >= 0:
            if mode == "abandon":
                sslports.ssl_abandon_port(self.out)
                sslports.ssl_abandon_port(self.inp)
            elif mode == "drop":
                self.dropped = True
                keep = [self.inp, self.out]
                if rng.random() < 0.5:
                    keep.append(keep)  # a cycle: the collector finalizes them later
                self.inp = self.out = None

    def _send(self, rng: random.Random, mode: str, data: bytes) -> None:
        out = self.out
        if mode == "timeouts":
            out.settimeout(rng.choice([None, 0.001, 0.05, 2.0]))
            try:
                out.write(data)
            except TimeoutError as exc:
                took = getattr(exc, "characters_written", None)
                if took != len(data):
                    self.run.violation(f"write TimeoutError took {took} of {len(data)} bytes")
            while True:
                try:
                    out.flush()
                    return
                except TimeoutError:
                    out.settimeout(rng.choice([None, 0.01, 1.0]))
        out.write(data)
        out.flush()

    def _loop(self, rng: random.Random, limit: int, send: Callable[[bytes], None]) -> None:
        inp = self.inp
        total = 0
        tail = b""
        while True:
            if limit >= 0 and total >= limit:
                return
            if self.run.stopping() and time.monotonic() > self.run.stop_at + 30 * SLOW:
                return
            try:
                if rng.random() < 0.3:
                    inp.settimeout(rng.choice([None, 0.001, 0.2]))
                data = inp.read1(rng.choice([1, 100, 4096, 65536]))
            except TimeoutError:
                continue
            if not data:
                return
            total += len(data)
            send(data)
            tail = (tail + data)[-4:]
            if tail == END:
                return


class SslportsServer:
    """An ssl_listen server: accept threads doing the handshakes, a thread per connection."""

    def __init__(self, run: Run, accepters: int = 4) -> None:
        self.run = run
        self.ctx = server_context(run)
        self.listener = sslports.ssl_listen(
            0, 128, True, LOCAL, self.ctx, handshake_timeout=8 * SLOW
        )
        self.port = sslports.ssl_addresses(self.listener, True)[1]
        self.threads = [spawn(self._accept, name="sp-accept") for _ in range(accepters)]
        self.handlers: list[threading.Thread] = []
        self.hlock = threading.Lock()

    def _accept(self) -> None:
        while True:
            try:
                inp, out = sslports.ssl_accept(self.listener)
            except _Boom:
                self.run.count("sni raised")
                continue
            except BaseException as exc:
                if self.listener.closed:
                    return
                self.run.check_exc("ssl_accept", exc, CONNECT_OK)
                continue
            t = spawn(EchoHandler(self.run, inp, out).serve, name="sp-echo")
            del inp, out
            with self.hlock:
                self.handlers = [h for h in self.handlers if h.is_alive()]
                self.handlers.append(t)

    def close(self) -> None:
        sslports.ssl_close(self.listener)
        for t in self.threads:
            t.join(30 * SLOW)
        with self.hlock:
            handlers = list(self.handlers)
        for t in handlers:
            t.join(60 * SLOW)


class RawServer:
    """A TCP server on 127.0.0.1, a thread per connection running self._serve(sock, n) (n: the
    connection's number, from 1); close() waits `wait` seconds (times SLOW) for each."""

    name = "raw"
    wait = 30.0

    def __init__(self) -> None:
        self.sock = socket.create_server((LOCAL, 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.handlers: list[threading.Thread] = []
        self.thread = spawn(self._accept, name=f"{self.name}-accept")

    def _accept(self) -> None:
        n = 0
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            t = spawn(self._serve, sock, n, name=self.name)
            self.handlers = [h for h in self.handlers if h.is_alive()] + [t]

    def _serve(self, sock: socket.socket, n: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Close the listening socket and wait for the accept thread and the handlers."""
        try:  # (close() alone does not wake the accept() of another thread)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)
        for t in list(self.handlers):
            t.join(self.wait * SLOW)


class PyServer(RawServer):
    """Python's ssl as the peer: echo, or reset / halfclose / noread / garbage."""

    name = "py-echo"
    wait = 60.0

    def __init__(self, run: Run) -> None:
        self.run = run
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(PEM)
        super().__init__()

    def _serve(self, raw: socket.socket, n: int) -> None:
        raw.settimeout(40 * SLOW)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ValueError):
            raw.close()
            return
        try:
            f = b""
            while not f.endswith(b"\n"):
                c = s.recv(1)
                if not c:
                    return
                f += c
            _, mode, seed = f.split()
            rng = random.Random(int(seed))
            limit = rng.randint(0, 200000) if mode != b"clean" and mode != b"halfclose" else -1
            if mode == b"noread":
                time.sleep(rng.uniform(0.5, 3))  # (the client writes into full buffers meanwhile)
                rst_close(s)
                return
            total, tail = 0, b""
            while limit < 0 or total < limit:
                data = s.recv(65536)
                if not data:
                    break
                s.sendall(data)
                total += len(data)
                tail = (tail + data)[-4:]
                if tail == END:
                    break
            if mode == b"reset":
                rst_close(s)
            elif mode == b"garbage":
                os.write(s.fileno(), os.urandom(rng.randint(1, 3000)))
                s.close()
            elif mode == b"halfclose":
                s.shutdown(socket.SHUT_WR)  # (a FIN without close_notify)
                while s.recv(65536):
                    pass
                s.close()
            else:
                s.close()
        except OSError:
            s.close()


class VanishServer(RawServer):
    """A raw TCP server that reads the ClientHello (or part of it) and then vanishes: FIN,
    reset, garbage, or the start of a record followed by nothing."""

    name = "vanish"

    def _serve(self, sock: socket.socket, n: int) -> None:
        rng = random.Random(n)
        sock.settimeout(10 * SLOW)
        try:
            sock.recv(rng.choice([1, 5, 100, 4096]))
            how = rng.choice(["fin", "rst", "garbage", "partial", "stall"])
            if how == "garbage":
                sock.sendall(os.urandom(rng.randint(1, 2000)))
            elif how == "partial":
                sock.sendall(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03")
            elif how == "stall":
                time.sleep(rng.uniform(0, 1.5))
            if how == "rst" or rng.random() < 0.3:
                rst_close(sock)
            else:
                sock.close()
        except OSError:
            sock.close()


# -- clients -------------------------------------------------------------------------------


class Client:
    """One sslports client connection with its writer, reader and closer threads."""

    def __init__(self, run: Run, rng: random.Random, contexts: dict[str, Any]) -> None:
        self.run, self.rng, self.contexts = run, rng, contexts
        self.cs = rng.getrandbits(32)
        self.proto = rng.choice(["tls12", "tls13"])
        self.how = rng.choice(["connect", "connect", "wrap", "streams"])
        self.io_ok = IO_OK if self.how == "streams" else SOCKET_IO_OK
        self.writers = 2 if rng.random() < 0.3 else 1
        self.readers = 2 if rng.random() < 0.3 else 1
        self.timeouts = rng.random() < 0.4
        self.closer = rng.choices(
            [None, "input", "output", "both", "abandon", "drop"], [8, 1, 1, 3, 1, 1]
        )[0]
        self.nlines = [rng.randint(0, 120) for _ in range(self.writers)]
        self.sent: dict[int, int] = {w: 0 for w in range(self.writers)}
        self.broken = False
        self.peer_ends = True  # the peer ends the stream after END (all but s_server)
        self.sock: Optional[socket.socket] = None
        self.deadline = time.monotonic() + run.deadline * SLOW

    def open(self, port: int, hostname: str = "localhost") -> tuple[Any, Any]:
        ctx = self.contexts[self.proto]
        timeout = self.rng.choice([None, 20.0 * SLOW])
        if self.how == "connect":
            return sslports.ssl_connect(LOCAL, port, ctx, timeout=timeout)
        sock = socket.create_connection((LOCAL, port))
        if self.how == "wrap":
            return sslports.ssl_wrap_socket(sock, context=ctx, hostname=hostname, timeout=timeout)
        self.sock = sock
        r, w = sock.makefile("rb"), sock.makefile("wb")
        try:
            return sslports.ports_to_ssl_ports(
                r,
                w,
                mode="connect",
                context=ctx,
                hostname=hostname,
                close_original=True,
                shutdown_on_close=self.rng.random() < 0.5,
                timeout=timeout,
            )
        except BaseException:
            # (w may hold the alert the failed handshake wrote, which its own close flushes:
            # to a peer that left, a BrokenPipeError of the caller's buffer, not the library's)
            for stream in (r, w, sock):
                try:
                    stream.close()
                except OSError:
                    pass
            self.sock = None
            raise

    def _maybe_timeout(self, rng: random.Random, port: Any) -> None:
        if self.timeouts and rng.random() < 0.3:
            port.settimeout(rng.choice([None, 0.0005, 0.01, 0.3, 5.0]))

    def _write_all(self, rng: random.Random, out: Any, data: bytes) -> bool:
        """Write `data` (whole, or in pieces when one writer), flush sometimes; False once the
        connection is broken or closed."""
        pieces = [data]
        if self.writers == 1 and len(data) > 1 and rng.random() < 0.5:
            cut = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
            pieces = [data[i:j] for i, j in zip([0, *cut], [*cut, len(data)])]
        try:
            for piece in pieces:
                self._maybe_timeout(rng, out)
                try:
                    out.write(piece)
                except TimeoutError as exc:
                    got = getattr(exc, "characters_written", None)
                    if got != len(piece):
                        self.run.violation(f"write TimeoutError took {got} of {len(piece)} bytes")
                        return False
            if rng.random() < 0.3:
                self._flush(rng, out)
            return True
        except IO_OK as exc:
            self.run.check_exc("write", exc, self.io_ok)
            return False
        except BaseException as exc:
            self.run.check_exc("write", exc, self.io_ok)
            return False

    def _flush(self, rng: random.Random, out: Any) -> None:
        while True:
            try:
                out.flush()
                return
            except TimeoutError:
                if time.monotonic() > self.deadline:
                    raise
                self._maybe_timeout(rng, out)

    def writer(self, wid: int, out: Any, rng: random.Random) -> None:
        for seq in range(self.nlines[wid]):
            if self.broken:
                return
            if not self._write_all(rng, out, make_line(self.cs, wid, seq)):
                self.broken = True
                return
            self.sent[wid] = seq + 1

    def reader(self, inp: Any, ver: Verifier, rng: random.Random) -> None:
        buf = bytearray(70000)
        while True:
            self._maybe_timeout(rng, inp)
            try:
                if self.readers == 2:
                    line = inp.readline()
                    if not line:
                        return
                    ver.feed_line(line)
                    continue
                op = rng.random()
                if not self.peer_ends and (0.3 <= op < 0.5 or op >= 0.8):
                    # (readinto and read(n) wait for n bytes or EOF: a peer that pauses
                    # without ending, s_server, would hold them until the deadline)
                    op = 0.0
                if op < 0.3:
                    data = inp.read1(rng.choice([1, 7, 100, 5000, 65536]))
                elif op < 0.5:
                    n = inp.readinto(memoryview(buf)[: rng.choice([1, 300, 70000])])
                    data = bytes(buf[:n])
                elif op < 0.7:
                    data = inp.readline(rng.choice([-1, -1, 50]))
                elif op < 0.8:
                    inp.peek(rng.choice([0, 1, 10]))
                    continue
                else:
                    data = inp.read(rng.choice([1, 64, 3000]))
            except TimeoutError:
                if time.monotonic() > self.deadline:
                    return
                continue
            except IO_OK as exc:
                self.run.check_exc("read", exc, self.io_ok)
                return
            except BaseException as exc:
                self.run.check_exc("read", exc, self.io_ok)
                return
            if not data:
                return
            ver.feed(data)
            if ver.ended:  # (s_server does not close after END; echo peers do)
                return

    def describe(self, mode: str) -> str:
        return (
            f"{self.how} {self.proto} to {mode} ({self.writers} writers, {self.readers} readers"
            f"{', timeouts' if self.timeouts else ''}, closer {self.closer})"
        )

    def close_ports(self, inp: Any, out: Any, which: str, forced: bool = False) -> None:
        if forced and self.sock is not None:
            # A read blocked in the wrapped stream (a socket.makefile reader) waits for the
            # socket; the ports cannot wake it (and io's close waits for its lock).
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        ports = {"input": [inp], "output": [out], "both": [out, inp], "abandon": [out, inp]}[which]
        for p in ports:
            try:
                if which == "abandon":
                    sslports.ssl_abandon_port(p)
                else:
                    p.close()
            except BaseException as exc:
                self.run.check_exc(f"close {which}", exc, self.io_ok)

    def exchange(self, inp: Any, out: Any, mode: str, ver: Verifier, clean: bool) -> None:
        """Writers, readers and the closer; returns once every thread of theirs ended."""
        rng = self.rng
        seeds = [rng.getrandbits(32) for _ in range(6)]
        readers = [
            spawn(self.reader, inp, ver, random.Random(seeds[i]), name="c-read")
            for i in range(self.readers)
        ]
        writers = [
            spawn(self.writer, w, out, random.Random(seeds[2 + w]), name="c-write")
            for w in range(self.writers)
        ]
        closer = None
        if self.closer in ("input", "output", "both", "abandon"):
            delay = rng.uniform(0, 0.4)
            which = self.closer

            def close_later() -> None:
                time.sleep(delay)
                self.close_ports(inp, out, which)

            closer = spawn(close_later, name="c-close")
        for t in writers:
            t.join(max(0.0, self.deadline - time.monotonic()))
        wrote_end = False
        if not self.broken and not any(t.is_alive() for t in writers):
            wrote_end = self._write_all(random.Random(seeds[5]), out, END)
            if wrote_end:
                try:
                    self._flush(rng, out)
                except BaseException as exc:
                    self.run.check_exc("flush END", exc, self.io_ok)
                    wrote_end = False
        for t in readers:
            t.join(max(0.0, self.deadline - time.monotonic()))
        late = any(t.is_alive() for t in readers + writers)
        if late:  # past the deadline: close both from here, which must end every call
            self.run.count("deadline close")
            if self.run.verbose:
                print(
                    f"chaos: deadline close: {self.describe(mode)}, got {dict(ver.next)} "
                    f"END {ver.ended}, sent {self.sent}",
                    flush=True,
                )
                if os.environ.get("CHAOS_DUMP"):
                    import fcntl

                    conn = inp._sslports_conn
                    sock = getattr(conn.transport, "sock", None)
                    if sock is not None and sock.fileno() >= 0:
                        inq = struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x541B, b"\0" * 4))[0]
                        outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), 0x5411, b"\0" * 4))[0]
                        lib = sslports._binding.lib
                        full = lib.sp_stash_full(conn.ptr)
                        print(
                            f"chaos:   socket inq {inq} outq {outq} stash_full {full} "
                            f"kept {len(inp._buf)} pending_out {len(out._buf)}",
                            flush=True,
                        )
                    srv = getattr(self, "s_server", None)
                    if srv is not None:
                        print(f"chaos:   s_server said {srv.tail[-600:]!r}", flush=True)
                    for pid in getattr(self, "peer_pids", []):
                        try:
                            with open(f"/proc/{pid}/wchan") as f:
                                print(f"chaos:   peer {pid} wchan {f.read()}", flush=True)
                        except OSError:
                            pass
            if clean and self.closer is None:
                self.run.violation(
                    f"clean {self.how} {self.proto} connection to {mode} stalled past its deadline"
                )
            self.close_ports(inp, out, "both", forced=True)
        for t in readers + writers + ([closer] if closer else []):
            t.join(20 * SLOW)
            if t.is_alive():
                self.run.violation(f"{t.name} still running 20 s after both ports closed ({mode})")
        ver.finish()
        for e in ver.errors:
            self.run.violation(f"{self.describe(mode)}: {e}")
        if clean and self.closer is None and not late and wrote_end and not ver.errors:
            lost = ver.complete(self.sent)
            if lost:
                self.run.violation(f"{self.describe(mode)}: {lost}")
            else:
                self.run.count("complete")

    def finish(self, inp: Any, out: Any) -> None:
        if self.closer == "drop":
            keep: list[Any] = [inp, out]
            if self.rng.random() < 0.5:
                keep.append(keep)
            self.run.count("client dropped")
        else:
            self.close_ports(inp, out, "both")
        if self.sock is not None:
            # A read under a deadline may still wait in the stream (sslports-receiver holds it
            # and the socket until it returns: a blocking read cannot be interrupted); the
            # socket's owner ends it, as it would any reader of its makefile().
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


def scenario_sslports(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    c = Client(run, rng, ctxs)
    mode = rng.choices(
        ["clean", "timeouts", "split", "close", "abandon", "drop", "closeboth"],
        [5, 2, 2, 1, 1, 1, 1],
    )[0]
    _echo_scenario(run, rng, c, port, "sslports", mode, mode in ("clean", "timeouts", "split"))


def scenario_python(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    c = Client(run, rng, ctxs)
    mode = rng.choices(["clean", "halfclose", "reset", "garbage", "noread"], [4, 2, 1, 1, 1])[0]
    _echo_scenario(run, rng, c, port, "python", mode, mode in ("clean", "halfclose"))


def _echo_scenario(
    run: Run, rng: random.Random, c: Client, port: int, server: str, mode: str, clean: bool
) -> None:
    """Client `c` against an echo server (`server`: sslports or python) told `mode` first."""
    with run.scenario(f"client {c.how}/{c.proto} to {server} {mode}", 60):
        try:
            inp, out = c.open(port)
        except BaseException as exc:
            run.check_exc(f"open {c.how}", exc, CONNECT_OK if c.how != "streams" else STREAMS_OK)
            return
        if server == "sslports" and c.closer == "drop" and rng.random() < 0.5:
            del inp, out  # (dropped right away)
            run.count("client dropped at once")
            return
        try:
            out.write(b"MODE %s %d\n" % (mode.encode(), rng.getrandbits(32)))
            out.flush()
        except BaseException as exc:
            run.check_exc("write MODE", exc, c.io_ok)
        c.exchange(inp, out, f"{server}-{mode}", Verifier(c.cs, c.readers == 1), clean)
        c.finish(inp, out)
        run.count(f"{server} {mode}")


def scenario_vanish(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    c = Client(run, rng, ctxs)
    with run.scenario(f"client {c.how} to a vanishing server", 40):
        try:
            inp, out = c.open(port)
        except BaseException as exc:
            run.check_exc(
                f"open {c.how} vanish", exc, CONNECT_OK if c.how != "streams" else STREAMS_OK
            )
            if c.sock is not None:
                c.sock.close()
            return
        run.violation(f"{c.how}: handshake with a vanishing server succeeded")
        c.finish(inp, out)


def scenario_sni_raise(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    c = Client(run, rng, ctxs)
    if c.how == "connect":
        c.how, c.io_ok = "wrap", SOCKET_IO_OK
    name = rng.choice(["boom.test", "other.test"])
    with run.scenario(f"client {c.how} SNI {name}", 40):
        try:
            inp, out = c.open(port, hostname=name)
        except BaseException as exc:
            run.check_exc(
                f"open {c.how} sni", exc, CONNECT_OK if c.how != "streams" else STREAMS_OK
            )
            if c.sock is not None:
                c.sock.close()
            if name.startswith("other"):
                run.violation(f"SNI switch to another context failed: {exc!r}")
            return
        if name.startswith("boom"):
            # TLS 1.3: the client may finish before the server's alert arrives; then the
            # first read must fail instead.
            try:
                out.write(b"MODE clean 1\n" + END)
                out.flush()
                data = inp.read()
                if data:
                    run.violation(f"SNI callback raised, yet the server answered {data[:40]!r}")
            except IO_OK as exc:
                run.check_exc("read after SNI raise", exc, c.io_ok)
        c.finish(inp, out)


def scenario_hostile_client(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    """A raw TCP client against the sslports listener: garbage, a cut hello, a reset."""
    with run.scenario("hostile raw client", 30):
        try:
            sock = socket.create_connection((LOCAL, port))
        except OSError as exc:
            run.check_exc("raw connect", exc, ())
            return
        try:
            how = rng.choice(["garbage", "cut", "rst", "fin", "stall"])
            if how == "garbage":
                sock.sendall(os.urandom(rng.randint(1, 4000)))
            elif how == "cut":
                sock.sendall(
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                    + os.urandom(rng.randint(0, 200))
                )
            elif how == "stall":
                time.sleep(rng.uniform(0, 1))
            rst_close(sock) if how == "rst" or rng.random() < 0.3 else sock.close()
        except OSError:
            sock.close()
        run.count("hostile client")


def scenario_listener(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    """Accepts waiting in 1-3 threads while another closes the listener."""
    with run.scenario("listener closed while accepts wait", 40):
        ctx = ctxs["server"]
        lst = sslports.ssl_listen(0, 5, True, LOCAL, ctx, handshake_timeout=5 * SLOW)
        lport = sslports.ssl_addresses(lst, True)[1]
        results: list[Any] = []

        def acc() -> None:
            try:
                ports = sslports.ssl_accept(lst)
                results.append("accepted")
                for p in ports:
                    p.close()
            except BaseException as exc:
                run.check_exc("ssl_accept (closing listener)", exc, CONNECT_OK)
                results.append(exc)

        ts = [spawn(acc, name="lst-accept") for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:  # one client on the way in
            try:
                s = socket.create_connection((LOCAL, lport))
                s.close()
            except OSError:
                pass
        time.sleep(rng.uniform(0, 0.2))
        sslports.ssl_close(lst)
        for t in ts:
            t.join(20 * SLOW)
            if t.is_alive():
                run.violation("ssl_accept still waiting 20 s after ssl_close")
        run.count("listener closed")


class SServer:
    """``openssl s_server`` for one connection: stdin lines become application data to the
    client; `k`/`K`/`r` lines ask for key updates and renegotiations."""

    def __init__(self, proto: str) -> None:
        assert OPENSSL is not None
        args = [OPENSSL, "s_server", "-accept", f"{LOCAL}:0", "-cert", PEM, "-naccept", "1"]
        args.append("-tls1_2" if proto == "tls12" else "-tls1_3")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        self.port = 0
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("s_server did not start")
            if line.startswith(b"ACCEPT"):
                self.port = int(line.rsplit(b":", 1)[1])
                break
        self.drain = spawn(self._drain, name="s_server-out")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        self.tail = b""
        while True:
            data = self.proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                return
            self.tail = (self.tail + data)[-600:]  # (--verbose shows it when a read stalls)

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.drain.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def wait_taken(pipe: Any, bound: float) -> None:
    """Until the process at the other end of `pipe` read all that was written to it (at most
    `bound` seconds): the bytes in it (FIONREAD on its write end, Linux) drop to 0. Elsewhere
    a pause: a sleep of 50 ms, which a loaded machine (a sanitizer) may outlast."""
    try:
        import fcntl
        import termios

        probe = struct.pack("i", 0)
        end = time.monotonic() + bound
        while struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, probe))[0] > 0:
            if time.monotonic() > end:
                return
            time.sleep(0.002)
    except (ImportError, OSError):
        time.sleep(0.05)


def scenario_s_server(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    c = Client(run, rng, ctxs)
    c.writers = c.readers = 1
    c.peer_ends = False
    c.nlines = [rng.randint(0, 60)]
    c.sent = {0: 0}
    if c.closer == "drop":
        c.closer = None
    with run.scenario(f"client {c.how}/{c.proto} to s_server", 60):
        srv = SServer(c.proto)
        c.peer_pids = [srv.proc.pid]  # type: ignore[attr-defined]
        c.s_server = srv  # type: ignore[attr-defined]
        try:
            try:
                inp, out = c.open(srv.port)
            except BaseException as exc:
                run.check_exc(
                    f"open {c.how} s_server", exc, CONNECT_OK if c.how != "streams" else STREAMS_OK
                )
                return
            ver = Verifier(c.cs, True, noise=(b"k\n", b"K\n", b"r\n"))
            n = rng.randint(1, 80)
            cmds = [b"r\n"] if c.proto == "tls12" else [b"k\n", b"K\n"]
            stdin = srv.proc.stdin
            assert stdin is not None
            fed: list[int] = [0]

            stop = threading.Event()  # (the exchange is over: feed no more)

            def feed() -> None:
                try:
                    for seq in range(n):
                        if rng.random() < 0.3:
                            # s_server takes a stdin read that starts with "r\n" or "k\n"
                            # as a command and drops the rest of that read: write one only
                            # once s_server is idle (everything fed so far arrived), alone.
                            caught_up = time.monotonic() + 10 * SLOW
                            while ver.next[7] < seq and time.monotonic() < caught_up:
                                if stop.is_set():
                                    return
                                time.sleep(0.005)
                            stdin.write(rng.choice(cmds))
                            stdin.flush()
                            wait_taken(stdin, 10 * SLOW)  # (before the line: not in that read)
                        stdin.write(make_line(c.cs, 7, seq))
                        stdin.flush()
                        fed[0] = seq + 1
                    stdin.write(END)
                    stdin.flush()
                except (OSError, ValueError):  # (s_server ended, or its stdin was closed)
                    pass

            feeder = spawn(feed, name="s_server-feed")
            # upstream bytes go to s_server's stdout (drained); the check is downstream
            reader_sent: dict[int, int] = {}
            c.exchange(inp, out, "s_server", ver, False)
            stop.set()
            feeder.join(30 * SLOW)
            if c.closer is None and not ver.errors and ver.ended:
                reader_sent[7] = fed[0]
                lost = ver.complete(reader_sent)
                if lost:
                    run.violation(f"{c.how} {c.proto} from s_server: {lost}")
                else:
                    run.count("complete s_server")
            c.finish(inp, out)
        finally:
            srv.close()
        run.count(f"s_server {c.proto}")


def scenario_s_client(run: Run, rng: random.Random, ctxs: dict[str, Any], port: int) -> None:
    """``openssl s_client -quiet`` against the sslports echo server."""
    assert OPENSSL is not None
    proto = rng.choice(["-tls1_2", "-tls1_3"])
    cs = rng.getrandbits(32)
    mode = rng.choice(["clean", "timeouts", "split"])
    kill = rng.random() < 0.2
    with run.scenario(f"s_client {proto} {mode}", 60):
        proc = subprocess.Popen(
            [
                OPENSSL,
                "s_client",
                "-connect",
                f"{LOCAL}:{port}",
                "-quiet",
                proto,
                "-servername",
                "localhost",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        n = rng.randint(0, 100)
        ver = Verifier(cs, True)

        def feed() -> None:
            try:
                proc.stdin.write(b"MODE %s %d\n" % (mode.encode(), rng.getrandbits(32)))  # type: ignore[union-attr]
                for seq in range(n):
                    proc.stdin.write(make_line(cs, 0, seq))  # type: ignore[union-attr]
                proc.stdin.write(END)  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass

        feeder = spawn(feed, name="s_client-feed")
        if kill:
            time.sleep(rng.uniform(0, 0.3))
            proc.kill()
        while True:
            data = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not data:
                break
            ver.feed(data)
        try:
            proc.wait(20 * SLOW)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        feeder.join(10)
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.stdout.close()
        ver.finish()
        for e in ver.errors:
            run.violation(f"s_client {proto} {mode}: {e}")
        if not kill and not ver.errors:
            lost = ver.complete({0: n})
            if lost:
                run.violation(f"s_client {proto} {mode}: {lost}")
            else:
                run.count("complete s_client")
        run.count("s_client")


SCENARIOS: list[tuple[Callable[..., None], str, int]] = [
    (scenario_sslports, "sp", 10),
    (scenario_python, "py", 5),
    (scenario_vanish, "vanish", 1),
    (scenario_sni_raise, "sp", 1),
    (scenario_hostile_client, "sp", 1),
    (scenario_listener, "sp", 1),
    (scenario_s_server, "none", 2),
    (scenario_s_client, "sp", 1),
]


# -- process resources ----------------------------------------------------------------------


def fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def settle(start_threads: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        gc.collect()
        if threading.active_count() <= start_threads:
            return
        time.sleep(0.05)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--slots", type=int, default=10, help="scenarios running at once")
    ap.add_argument(
        "--deadline", type=float, default=25.0, help="seconds a client connection may take"
    )
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline")
    ap.add_argument("--max-rss-growth-mb", type=float, default=8.0)
    ap.add_argument(
        "--only", default="", help="comma-separated scenario names (sslports, python, ...)"
    )
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    faulthandler.enable()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    print(
        f"chaos: seed {seed}, {args.seconds:g} s, {args.slots} slots"
        f"{', ' + SANITIZER if SANITIZER else ''}",
        flush=True,
    )

    gc.collect()
    start_fds = fds()
    start_threads = threading.active_count()
    run = Run(seed, args.seconds, args.deadline, args.verbose)
    dog = threading.Thread(target=run.watchdog, name="chaos-watchdog", daemon=True)
    dog.start()
    start_threads += 1
    # (counted with the watchdog running: TSan's runtime starts a thread of its own at the
    # process's first pthread_create)
    start_tasks = len(os.listdir("/proc/self/task"))

    ctxs: dict[str, Any] = {
        "tls12": sslports.ssl_make_client_context("tls12"),
        "tls13": sslports.ssl_make_client_context("tls13"),
    }
    sp = SslportsServer(run)
    ctxs["server"] = sp.ctx
    py = PyServer(run)
    van = VanishServer()
    ports = {"sp": sp.port, "py": py.port, "vanish": van.port, "none": 0}
    scen = [s for s in SCENARIOS if OPENSSL is not None or s[1] != "none"]
    if OPENSSL is None:
        scen = [s for s in scen if s[0] is not scenario_s_client]
    if args.only:
        only = {f"scenario_{n}" for n in args.only.split(",")}
        scen = [s for s in scen if s[0].__name__ in only]
    weights = [w for (_f, _p, w) in scen]
    warmup = args.warmup if args.warmup is not None else min(args.seconds / 4, 60.0)
    base_rss: list[int] = []
    rounds = [0] * args.slots

    def slot(i: int) -> None:
        while not run.stopping():
            rng = random.Random(f"{seed}:{i}:{rounds[i]}")
            rounds[i] += 1
            func, peer, _w = rng.choices(scen, weights)[0]
            if run.verbose:
                print(f"chaos: slot {i} round {rounds[i]}: {func.__name__}", flush=True)
            t = time.monotonic()
            try:
                func(run, rng, ctxs, ports[peer])
                if run.verbose:
                    took = time.monotonic() - t
                    print(f"chaos: slot {i} round {rounds[i]}: {func.__name__} took {took:.1f} s")
            except BaseException as exc:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                run.violation(f"{func.__name__} raised {type(exc).__name__}: {exc}\n{tb}")

    slots = [
        threading.Thread(target=slot, args=(i,), name=f"chaos-slot{i}") for i in range(args.slots)
    ]
    for t in slots:
        t.start()
    if warmup < args.seconds and not SANITIZER:
        time.sleep(warmup)
        base_rss.append(rss_bytes())
    for t in slots:
        t.join()
    sp.close()
    py.close()
    van.close()
    del sp, py, van
    ctxs.clear()
    settle(start_threads, 30 * SLOW)
    gc.collect()
    end_fds = fds()
    end_threads = threading.active_count()
    end_tasks = len(os.listdir("/proc/self/task"))
    leaked = end_fds - start_fds
    if leaked:
        desc = []
        for fd in sorted(leaked):
            try:
                desc.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                desc.append(str(fd))
        run.violation(f"descriptors left open: {', '.join(desc)}")
    held = sslports.ports.Connection.live_transports
    if held:  # (a transport stays there from its ports' making to their last close)
        run.violation(f"{len(held)} transports held after every port was closed: {held}")
    if end_threads > start_threads or end_tasks > start_tasks:
        names = [t.name for t in threading.enumerate()]
        run.violation(
            f"threads: {start_threads} at start, {end_threads} at end ({end_tasks} tasks): {names}"
        )
    growth = None
    if base_rss:
        growth = (rss_bytes() - base_rss[0]) / (1 << 20)
        if growth > args.max_rss_growth_mb:
            run.violation(f"RSS grew {growth:.1f} MiB after the warm-up")
    run.done.set()
    elapsed = time.monotonic() - run.t0
    print(
        f"chaos: seed {seed}: {sum(rounds)} scenarios in {elapsed:.0f} s"
        + (f", RSS growth after warm-up {growth:+.2f} MiB" if growth is not None else "")
    )
    for k, v in sorted(run.stats.items()):
        print(f"  {v:7d}  {k}")
    if run.violations:
        print(f"chaos: seed {seed}: {len(run.violations)} violation(s)", file=sys.stderr)
        for what in run.violations[:30]:
            print(f"  - {what}", file=sys.stderr)
        return 1
    print(f"chaos: seed {seed}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
