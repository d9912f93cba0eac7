"""Allocation failures inside our C and inside OpenSSL as called from it.

tests/failmalloc.c, built here with cc and preloaded into a child Python, makes malloc, calloc
or realloc fail on request: only in the thread that armed it, and only for allocations made by
the _native module itself or by libssl / libcrypto (so CPython's and cffi's never fail). Each
case runs in a child process, so a crash is a failed test, not a dead test run. The bar: every
failure is a clear exception (MemoryError, or SSLError with OpenSSL's reason or errno ENOMEM),
never a crash, a hang, a wrong answer or a silently lost byte, and the process goes on working
once memory is back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from certs import chain_file, key_file, make_cert

import sslports

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="LD_PRELOAD shim: Linux only")

SHIM_SOURCE = Path(__file__).with_name("failmalloc.c")
SRC = str(Path(sslports.__file__).resolve().parent.parent)

# What every child runs first: the shim's controls, and a connected pair of socket ports.
PRELUDE = """
import ctypes, errno, os, socket, sys, threading
import sslports

fm = ctypes.CDLL(None)
if not hasattr(fm, "fm_arm"):  # (a sanitizer run replaced LD_PRELOAD)
    print("NO-SHIM")
    sys.exit(0)
fm.fm_arm.argtypes = [ctypes.c_long, ctypes.c_int]
fm.fm_arm_in.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p]
fm.fm_disarm.restype = ctypes.c_long
fm.fm_failed.restype = ctypes.c_long
STICKY, OURS = 1, 2
PEM = str(sslports.TEST_PEM)


def server_context(version, chain=PEM, key=PEM):
    ctx = sslports.ssl_make_server_context(version)
    sslports.ssl_load_certificate_chain(ctx, chain)
    sslports.ssl_load_private_key(ctx, key, False)
    return ctx


def connect(version, client_ctx=None, srv_ctx=None, serve=None):
    '''Socket ports of a client connected to a server thread running serve(i, o).'''
    a, b = socket.socketpair()
    srv_ctx = srv_ctx or server_context(version)

    def run():
        i, o = sslports.ssl_wrap_socket(b, mode="accept", context=srv_ctx, timeout=10)
        try:
            (serve or (lambda i, o: i.read(1)))(i, o)
        except sslports.SSLError:
            pass
        finally:
            i.close()
            o.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ctx = client_ctx or sslports.ssl_make_client_context(version)
    i, o = sslports.ssl_wrap_socket(a, mode="connect", context=ctx, timeout=10)
    return i, o, a, t


def served(srv_ctx, client_ctx=None):
    '''The names of the certificate a server on srv_ctx presents to a client on client_ctx
    (None: no handshake).'''
    try:
        i, o, sock, t = connect("tls13", client_ctx=client_ctx, srv_ctx=srv_ctx)
    except sslports.SSLError:
        return None
    try:
        return sslports.ssl_peer_certificate_hostnames(i)
    finally:
        o.close()
        i.close()
        sock.close()
        t.join(10)


def clear(exc):
    '''A MemoryError, or an SSLError that says why (OpenSSL's reason or ENOMEM).'''
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, sslports.SSLError) and (
        exc.errno == errno.ENOMEM or bool(exc.openssl_errors)
    )
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_shim(tmp_path_factory)


def build_shim(tmp_path_factory: pytest.TempPathFactory) -> str:
    """tests/failmalloc.c built as a shared object (the `shim` fixture; test_load_edges.py)."""
    if os.environ.get("ASAN_OPTIONS") or os.environ.get("TSAN_OPTIONS"):
        # (scripts/asan.sh, scripts/tsan.sh: the sanitizer's malloc comes before the shim's)
        pytest.skip("under a sanitizer the shim's malloc is never called")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/failmalloc.c")
    out = tmp_path_factory.mktemp("failmalloc") / "failmalloc.so"
    subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", "-o", str(out), str(SHIM_SOURCE), "-ldl"], check=True
    )
    return str(out)


def run_child(shim: str, body: str, *args: str, timeout: float = 60) -> list[str]:
    """Run PRELUDE + body in a child Python with the shim preloaded; its output lines."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = shim
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FM_TRACE", None)
    script = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.stdout.startswith("NO-SHIM"):
        pytest.skip("another LD_PRELOAD (a sanitizer) is in force")
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout.splitlines()


# -- one-time setup that failed once must be tried again ---------------------------------------

ONCE = """
import sslports.libcrypto
import sslports.libssl

nth, where = int(sys.argv[1]), sys.argv[2].encode()
# OpenSSL's own one-time setup, which OpenSSL never tries again, is done first (unarmed), and
# without our module: an SSL_CTX and an SSL made and freed through ctypes. (Also fast: the
# shim then walks the stacks of a few hundred allocations, not of thousands.)
vp = ctypes.c_void_p
ls = sslports.libssl.libssl
for name, res, args in [("TLS_client_method", vp, []), ("SSL_CTX_new", vp, [vp]),
                        ("SSL_new", vp, [vp]), ("SSL_free", None, [vp]),
                        ("SSL_CTX_free", None, [vp])]:
    getattr(ls, name).restype = res
    getattr(ls, name).argtypes = args
raw_ctx = ls.SSL_CTX_new(ls.TLS_client_method())
ls.SSL_free(ls.SSL_new(raw_ctx))
ls.SSL_CTX_free(raw_ctx)


def op():
    ctx = sslports.ssl_make_client_context("tls12")
    a, b = socket.socketpair()
    b.close()
    try:
        sslports.ssl_wrap_socket(a, mode="connect", context=ctx, timeout=5)
    except sslports.SSLNetworkError as exc:
        if "connect failed" not in str(exc):  # (the handshake ran: the setup worked)
            raise
    finally:
        a.close()


fm.fm_arm_in(nth, 0, where)
try:
    op()
except Exception as exc:
    assert clear(exc), repr(exc)
failed = fm.fm_failed()
fm.fm_disarm()
op()  # memory is back: everything works again
op()
print("failed", failed)
"""


@pytest.mark.parametrize("where", ["CRYPTO_get_ex_new_index", "BIO_meth_new"])
def test_failed_one_time_setup_is_tried_again(shim: str, where: str) -> None:
    """The ex_data indexes (ALPN policy, context guard, session cache, connection) and the
    socket BIO method are made once per process. Made with CRYPTO_THREAD_run_once, one
    allocation failure there failed every later context or connection for the life of the
    process (`context creation failed` forever); sp_once tries again."""
    failures = 0
    for nth in range(1, 40):
        lines = run_child(shim, ONCE, str(nth), where)
        if lines[-1] == "failed 0":
            break
        failures += 1
    else:
        pytest.fail(f"more than 40 allocations inside {where}")
    assert failures > 0


# -- stream mode: ciphertext the pump could not keep -------------------------------------------

FEED = """
version = sys.argv[1]
sent = threading.Event()
a, b = socket.socketpair()


def serve(i, o):
    i.read(4)
    o.write(b"R" * 60000)
    o.flush()
    sent.set()
    i.read(1)  # the client never sends more


srv_ctx = server_context(version)


def run():
    serve(*sslports.ssl_wrap_socket(b, mode="accept", context=srv_ctx, timeout=10))


t = threading.Thread(target=run, daemon=True)
t.start()


class Transport:
    '''The raw socket as a stream; read1 arms the shim just before the pump is fed.'''

    arm = False

    def read1(self, n=-1):
        data = a.recv(262144)
        if self.arm:
            self.arm = False
            fm.fm_arm(1, 0)  # the next allocation: the pump's buffer for `data` (sp_feed)
        return data

    def write(self, data):
        a.sendall(data)
        return len(data)

    def flush(self):
        pass


tr = Transport()
ctx = sslports.ssl_make_client_context(version)
i, o = sslports.ports_to_ssl_ports(tr, tr, mode="connect", context=ctx)
o.write(b"ping")
o.flush()
assert sent.wait(10)
tr.arm = True  # (all 60000 bytes are in the socket: one feed, larger than the pump's buffer)
try:
    i.read(60000)
    raise AssertionError("the feed did not fail")
except MemoryError as exc:
    print("first:", exc)
finally:
    failed = fm.fm_failed()
    fm.fm_disarm()
assert failed == 1, failed
i.settimeout(5)  # (without the fix: waits for bytes that were dropped, until this timeout)
try:
    i.read(60000)
    raise AssertionError("read after lost ciphertext returned")
except sslports.SSLError as exc:
    assert not isinstance(exc, TimeoutError), repr(exc)
    assert exc.errno == errno.ENOMEM, repr(exc)
    print("then:", exc)
o.close()
i.close()
a.close()
print("ok")
"""


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_lost_ciphertext_breaks_the_connection(shim: str, version: str) -> None:
    """sp_feed could not buffer what the input stream delivered (MemoryError): those bytes are
    gone, so the connection can never read the peer's records. It was not marked broken, and
    the next read waited for the rest forever (here: until its timeout); now it fails at once
    with ENOMEM."""
    lines = run_child(shim, FEED, version)
    assert lines[-1] == "ok", lines


# -- socket mode: the output queue ---------------------------------------------------------------

OUTQ = """
version, flags = sys.argv[1], int(sys.argv[2])
got = bytearray()


def serve(i, o):
    while True:
        data = i.read1(65536)
        if not data:
            return
        got.extend(data)


i, o, sock, t = connect(version, serve=serve)
fm.fm_arm(1, flags)  # our first allocation: growing the queue of records to send
try:
    o.write(b"A" * 200000)
    o.flush()
    raise AssertionError("the write did not fail")
except sslports.SSLError as exc:
    assert exc.errno == errno.ENOMEM and "Cannot allocate memory" in str(exc), repr(exc)
finally:
    failed = fm.fm_failed()
    fm.fm_disarm()
assert failed >= 1
for _ in range(3):  # memory is back; the connection stays broken, with the same reason
    try:
        o.write(b"B" * 1000)
        o.flush()
        raise AssertionError("a write after the failure was sent")
    except sslports.SSLError as exc:
        assert exc.errno == errno.ENOMEM, repr(exc)
o.close()
i.close()
sock.close()
t.join(10)
assert b"B" not in got, "bytes written after the failure reached the peer"
print("ok")
"""


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("sticky", [False, True], ids=["once", "exhausted"])
def test_output_queue_growth_failure(shim: str, version: str, sticky: bool) -> None:
    """The socket BIO could not grow its output queue: the write failed with 'OpenSSL gave no
    reason: SSL_ERROR_SYSCALL' and no errno; now ENOMEM. With memory exhausted, mark_broken
    could not allocate its copy of the error either and left the connection unbroken: the
    failed write's records went out after all and later writes were sent as if nothing had
    happened. Now it is broken (ENOMEM) all the same."""
    lines = run_child(shim, OUTQ, version, str(2 | (1 if sticky else 0)))
    assert lines[-1] == "ok", lines


# -- every allocation of our own, in turn --------------------------------------------------------

OWN = """
version, nth = sys.argv[1], int(sys.argv[2])
srv_ctx = server_context(version)


def echo(i, o):
    while True:
        data = i.read1(65536)
        if not data:
            return
        o.write(data)
        o.flush()


def scenario():
    ctx = sslports.ssl_make_client_context(version)
    i, o, sock, t = connect(version, client_ctx=ctx, srv_ctx=srv_ctx, serve=echo)
    try:
        payload = os.urandom(150000)
        back = bytearray()
        for k in range(0, len(payload), 30000):
            o.write(payload[k : k + 30000])
            o.flush()
            while len(back) < k + 30000:
                data = i.read1(65536)
                assert data, "EOF"
                back += data
        assert bytes(back) == payload, "data changed"
        assert sslports.ssl_peer_certificate_hostnames(i) == ["localhost", "127.0.0.1", "::1"]
    finally:
        try:
            o.close()
            i.close()
        finally:
            sock.close()
            t.join(10)


scenario()  # (the one-time setup happens unarmed)
fm.fm_arm(nth, OURS)
try:
    scenario()
    outcome = "ok"
except Exception as exc:
    assert clear(exc), repr(exc)
    outcome = repr(exc)
failed = fm.fm_failed()
fm.fm_disarm()
scenario()
print(failed, outcome)
"""


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_each_allocation_of_our_own_fails_cleanly(shim: str, version: str) -> None:
    """Context creation, connection setup, handshake, 150 KB each way, names, close: the nth
    allocation our C makes itself fails, for every n. Each failure raises a clear exception
    (a context creation or connection setup that failed used to say only '... failed'), and
    the next connection works."""
    for nth in range(1, 60):
        lines = run_child(shim, OWN, version, str(nth))
        if lines[-1].startswith("0 "):
            break
    else:
        pytest.fail("more than 60 allocations of our own")


# -- what a peer's certificate says ----------------------------------------------------------------

NAMES = """
chain, key = sys.argv[1], sys.argv[2]
i, o, sock, t = connect("tls13", srv_ctx=server_context("tls13", chain, key))
want = sslports.ssl_peer_certificate_hostnames(i)
assert want == ["san.example.test"], want
assert sslports.ssl_peer_check_hostname(i, "san.example.test")
nth = 1
while True:
    fm.fm_arm(nth, 0)
    try:
        names = sslports.ssl_peer_certificate_hostnames(i)
        assert names == want, f"nth={nth}: {names}"
    except (MemoryError, sslports.SSLError) as exc:
        assert clear(exc), repr(exc)
    finally:
        fm.fm_disarm()
    fm.fm_arm(nth, 0)
    try:
        # Only the CN holds this name: never a match, also when the SANs cannot be decoded.
        cn = sslports.ssl_peer_check_hostname(i, "cn-only.example.test")
        assert cn is False, f"nth={nth}: the CN matched"
    finally:
        failed = fm.fm_failed()
        fm.fm_disarm()
    if failed == 0:
        break
    nth += 1
o.close()
i.close()
sock.close()
t.join(10)
print("ok", nth)
"""


@pytest.fixture(scope="module")
def cn_differs() -> tuple[str, str]:
    issued = make_cert("cn-only.example.test", dns=["san.example.test"])
    return str(chain_file(issued)), str(key_file(issued))


def test_peer_names_under_allocation_failure(shim: str, cn_differs: tuple[str, str]) -> None:
    """ssl_peer_certificate_hostnames returned the CN instead of the DNS SANs when decoding
    them failed, and ssl_peer_check_hostname (X509_check_host checks the CN when it cannot
    decode the SANs) accepted a name only the CN holds. Now the one raises and the other
    says False."""
    lines = run_child(shim, NAMES, *cn_differs)
    assert lines[-1].startswith("ok"), lines
