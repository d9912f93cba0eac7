"""ssl_connect / ssl_listen / ssl_accept between two sslports ends over real sockets."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LOCAL,
    MIB,
    PY_ENV,
    read_all,
    read_exactly,
    run_in_thread,
    sha1,
    wait_read_under_way,
)

import sslports
from sslports import SSLError, SSLNetworkError

SRC = str(Path(sslports.__file__).resolve().parent.parent)  # (the sslports under test)


def echo_roundtrip(inp: Any, out: Any, data: bytes) -> bytes:
    """Write data from a thread while reading the echo here; returns what came back."""

    def send() -> None:
        view = memoryview(data)
        for i in range(0, len(data), 50000):  # odd-sized writes exercise the record buffering
            out.write(view[i : i + 50000])
        out.flush()

    join = run_in_thread(send)
    got = read_exactly(inp, len(data))
    join(60)
    return got


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_echo_1mib_verified(pki: Any, echo_server: Any, version: str) -> None:
    server = echo_server(pki.server_context(version))
    data = os.urandom(MIB + 12345)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context(version))
    with inp, out:
        assert sslports.is_ssl_port(inp) and sslports.is_ssl_port(out)
        got = echo_roundtrip(inp, out, data)
    assert len(got) == len(data)
    assert sha1(got) == sha1(data)
    assert server.errors == []


def test_echo_ip_literal_checks_ip_san(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect(LOCAL, server.port, pki.client_context())
    with inp, out:
        out.write(b"ip literal\n")
        out.flush()
        assert inp.readline() == b"ip literal\n"


@pytest.mark.parametrize("size", [MIB, 16384])
def test_full_duplex_64mib(pki: Any, echo_server: Any, size: int) -> None:
    """One thread writes 64 MiB while another reads the echo on the same connection (16 KiB
    writes: every other one is held by the connection, encrypted, while the reading thread's
    waits send whatever is queued)."""
    server = echo_server(pki.server_context())
    total = 64 * MIB
    block = os.urandom(size)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    sent_hash = hashlib.sha1()

    def writer() -> None:
        for i in range(total // len(block)):
            piece = block[i:] + block[:i]  # every piece differs
            sent_hash.update(piece)
            out.write(piece)
        out.flush()

    def reader() -> str:
        h = hashlib.sha1()
        left = total
        buf = bytearray(256 * 1024)
        while left:
            n = inp.readinto1(memoryview(buf)[: min(len(buf), left)])
            assert n > 0, f"early EOF with {left} bytes missing"
            h.update(memoryview(buf)[:n])
            left -= n
        return h.hexdigest()

    join_w = run_in_thread(writer)
    join_r = run_in_thread(reader)
    join_w(240)
    got = join_r(240)
    out.close()
    inp.close()
    assert got == sent_hash.hexdigest()


def test_closing_both_ports_ends_connection(pki: Any, echo_server: Any) -> None:
    """Ports are reference counted: after closing only the output port, reading still works."""
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    out.write(b"hello")
    out.close()  # flushes
    assert read_exactly(inp, 5) == b"hello"
    inp.close()
    with pytest.raises(ValueError):
        inp.read(1)
    with pytest.raises(ValueError):
        out.write(b"x")


def test_server_sees_eof_when_client_closes(pki: Any, echo_server: Any) -> None:
    got: list[bytes] = []
    done = threading.Event()

    def handler(inp: Any, out: Any) -> None:
        with inp, out:
            got.append(read_all(inp))
        done.set()

    server = echo_server(pki.server_context(), handler)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    out.write(b"a" * 100000)
    out.close()
    inp.close()
    assert done.wait(30)
    assert got == [b"a" * 100000]


def test_peer_reads_eof_when_client_closes_with_data_unread(pki: Any, echo_server: Any) -> None:
    """A client that closes while ciphertext it never read sits in its socket (a late TLS 1.3
    ticket, an unwanted response) still ends the connection with a FIN the server reads as
    EOF: the kernel answers the unread bytes with a reset at close(), and the ports' shutdown()
    puts the FIN on the wire before it."""
    results: list[object] = []
    done = threading.Event()

    def handler(inp: Any, out: Any) -> None:
        with inp, out:
            out.write(b"x" * 65536)  # never read by the client
            out.flush()
            try:
                results.append(read_all(inp))
            except Exception as exc:  # a reset instead of EOF
                results.append(exc)
        done.set()

    server = echo_server(pki.server_context(), handler)
    for _ in range(5):
        done.clear()
        results.clear()
        inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
        sock = inp._sslports_conn.transport.sock  # white box: wait until the data is here
        assert select.select([sock], [], [], 10)[0]
        out.close()
        inp.close()
        assert done.wait(30)
        assert results == [b""]


def test_threads_share_a_context_session_cache(pki: Any, echo_server: Any) -> None:
    """Eight threads connect at once, with one client context, to three servers, while a ninth
    keeps resetting the context's verification policy (which empties its session cache): every
    connection works, and once the policy stops changing, each peer's next connection resumes."""
    servers = [echo_server(pki.server_context()) for _ in range(3)]
    ctx = pki.client_context()
    errors: list[BaseException] = []
    stop = threading.Event()

    def talk(port: int) -> bool:
        inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=30)
        with inp, out:
            out.write(b"ping\n")
            out.flush()
            assert inp.readline() == b"ping\n"  # (the tickets came before the echo)
            return bool(sslports.ssl_session_reused(inp))

    def client(n: int) -> None:
        try:
            for i in range(12):
                talk(servers[(n + i) % 3].port)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def churn() -> None:
        while not stop.wait(0.005):
            sslports.ssl_set_verify_hostname(ctx, True)  # same policy, new cache epoch

    churner = threading.Thread(target=churn)
    churner.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    churner.join(10)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    for server in servers:
        talk(server.port)  # files a session after the last forget
        assert talk(server.port)


def test_a_session_from_before_a_policy_change_is_not_resumed(pki: Any, echo_server: Any) -> None:
    """A connection opened under an old verification policy must not file its session in the
    cache after the policy changed (sp_ctx_forget_sessions): the next connection, made under
    the new policy, would resume it and skip the certificate checks. Here the first
    connection trusts nothing and does not verify (the server's certificate is from a CA the
    context does not trust); then verification is required, before the TLS 1.3 tickets
    (which follow the handshake) are read. The second connection must fail verification, not
    resume."""
    server = echo_server(pki.server_context())
    ctx = pki.client_context(verify=False, trust=False)
    inp, out = sslports.ssl_connect("localhost", server.port, ctx)
    sslports.ssl_set_verify(ctx, True)  # forgets the sessions made so far
    out.write(b"ping")
    out.flush()
    assert read_exactly(inp, 4) == b"ping"  # files the server's TLS 1.3 tickets
    out.close()
    inp.close()
    with pytest.raises(sslports.SSLError):
        inp2, out2 = sslports.ssl_connect("localhost", server.port, ctx)
        reused = sslports.ssl_session_reused(inp2)
        inp2.close()
        out2.close()
        pytest.fail(f"connected without a verified certificate (resumed: {reused})")


@pytest.mark.parametrize("protocol", [None, "tls12", "tls13"])
def test_connecting_by_protocol_name_resumes(pki: Any, echo_server: Any, protocol: Any) -> None:
    """A protocol name stands for one shared context per name (security.md, "Session
    resumption"): ssl_connect(host, port), whose default is "auto", resumes as a connection
    with a context of the caller's does (API.md: ssl_connect resumes sessions automatically).
    Each call made a new context before, so none resumed. The server is new: its first
    connection is a full handshake."""
    server = echo_server(pki.server_context())
    named = () if protocol is None else (protocol,)

    def talk() -> tuple[bool, str | None]:
        inp, out = sslports.ssl_connect("localhost", server.port, *named, timeout=30)
        with inp, out:
            out.write(b"ping\n")
            out.flush()
            assert inp.readline() == b"ping\n"  # (the tickets came before the echo)
            return bool(sslports.ssl_session_reused(inp)), sslports.ssl_protocol_version(inp)

    version = protocol or "tls13"
    assert talk() == (False, version)
    assert talk() == (True, version)
    assert talk() == (True, version)


# -- addresses, predicates, listeners ------------------------------------------------------------


def test_ssl_addresses_ports_and_listener(pki: Any) -> None:
    with sslports.ssl_listen(0, 5, True, LOCAL, pki.server_context()) as listener:
        assert sslports.is_ssl_listener(listener)
        assert not sslports.is_ssl_port(listener)
        assert not sslports.is_ssl_server_context(listener)
        host, port, peer, peer_port = sslports.ssl_addresses(listener, True)
        assert (host, peer, peer_port) == (LOCAL, "0.0.0.0", 0)
        assert port > 0
        assert sslports.ssl_addresses(listener) == (LOCAL, "0.0.0.0")
        join = run_in_thread(lambda: sslports.ssl_accept(listener))
        cin, cout = sslports.ssl_connect(LOCAL, port, "auto")
        sin, sout = join(30)
        try:
            c_local, c_lport, c_peer, c_pport = sslports.ssl_addresses(cin, True)
            s_local, s_lport, s_peer, s_pport = sslports.ssl_addresses(sout, True)
            assert (c_local, c_peer, c_pport) == (LOCAL, LOCAL, port)
            assert (s_local, s_lport) == (LOCAL, port)
            assert (s_peer, s_pport) == (c_local, c_lport)
            assert sslports.ssl_addresses(cout) == (LOCAL, LOCAL)
        finally:
            for p in (cin, cout, sin, sout):
                p.close()


def test_listener_works_with_selectors(pki: Any) -> None:
    listener = sslports.ssl_listen(0, 5, False, LOCAL, pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    with listener, selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        assert sel.select(0) == []  # nobody connected yet
        join = run_in_thread(lambda: sslports.ssl_connect(LOCAL, port))
        events = sel.select(30)
        assert [key.fileobj for key, _ in events] == [listener]
        sin, sout = sslports.ssl_accept(listener)
        cin, cout = join(30)
        cout.write(b"via selectors")
        cout.flush()
        assert read_exactly(sin, 13) == b"via selectors"
        for p in (cin, cout, sin, sout):
            p.close()


def test_listener_context_manager_and_close(pki: Any) -> None:
    with sslports.ssl_listen(0, 5, False, LOCAL, pki.server_context()) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        assert not listener.closed
    assert listener.closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCAL, port), timeout=5).close()
    with pytest.raises(SSLNetworkError):
        sslports.ssl_accept(listener)
    other = sslports.ssl_listen(0, 5, False, LOCAL, pki.server_context())
    sslports.ssl_close(other)
    assert other.closed


def test_listener_takes_context_procedures(pki: Any) -> None:
    """A listener made from a protocol name accepts the context procedures (†)."""
    listener = sslports.ssl_listen(0, 5, False, LOCAL, "tls13")
    with listener:
        sslports.ssl_load_certificate_chain(listener, pki.server_chain)
        sslports.ssl_load_private_key(listener, pki.server_key)
        port = sslports.ssl_addresses(listener, True)[1]
        join = run_in_thread(lambda: sslports.ssl_accept(listener))
        cin, cout = sslports.ssl_connect("localhost", port, pki.client_context("tls13"))
        sin, sout = join(30)
        sout.write(b"from listener context")
        sout.close()
        sin.close()  # both ports closed: the connection ends
        assert read_all(cin) == b"from listener context"
        cin.close()
        cout.close()


def test_listener_refuses_the_procedures_without_a_dagger() -> None:
    """API.md section 4: only the procedures marked † also take a listener; the others are
    about a context (Racket: ctx : (or/c ssl-client-context? ssl-server-context?)) and refuse
    a listener with a TypeError naming the function. ssl_set_verify_hostname took one (the
    only one), and changed the listener's context."""
    listener = sslports.ssl_listen(0, 5, False, LOCAL, "auto")
    with listener:
        calls = {
            "ssl_set_verify_hostname": lambda: sslports.ssl_set_verify_hostname(listener, True),
            "ssl_set_ciphers": lambda: sslports.ssl_set_ciphers(listener, "DEFAULT"),
            "ssl_seal_context": lambda: sslports.ssl_seal_context(listener),
            "ssl_load_default_verify_sources": lambda: sslports.ssl_load_default_verify_sources(
                listener
            ),
            "ssl_server_context_enable_ecdh": lambda: sslports.ssl_server_context_enable_ecdh(
                listener
            ),
            "ssl_set_server_alpn": lambda: sslports.ssl_set_server_alpn(listener, [b"h2"]),
        }
        for name, call in calls.items():
            with pytest.raises(TypeError, match=f"^{name}: expected .*, got SSLListener"):
                call()
        sslports.ssl_set_verify(listener, False)  # (clp: a context, listener or port)
        sslports.ssl_try_verify(listener, False)


def test_connection_facts_while_a_port_is_open_then_an_error(pki: Any, echo_server: Any) -> None:
    """errors.md: the connection facts answer while either port is open (here the output
    port, after the input port was closed) and raise SSLError naming the function once both
    are closed (what OpenSSL knew about the connection is gone), never a stale answer."""
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context("tls13"))
    inp.close()
    facts = {
        "ssl_protocol_version": lambda: sslports.ssl_protocol_version(out),
        "ssl_peer_verified": lambda: sslports.ssl_peer_verified(out),
        "ssl_peer_subject_name": lambda: sslports.ssl_peer_subject_name(out),
        "ssl_peer_check_hostname": lambda: sslports.ssl_peer_check_hostname(out, "localhost"),
        "ssl_channel_binding": lambda: sslports.ssl_channel_binding(out, "tls-exporter"),
    }
    answers = {name: fact() for name, fact in facts.items()}
    assert answers["ssl_protocol_version"] == "tls13"
    assert answers["ssl_peer_verified"] is True
    assert answers["ssl_peer_check_hostname"] is True
    assert len(answers["ssl_channel_binding"]) == 32
    out.close()
    for name, fact in facts.items():
        with pytest.raises(SSLError, match=f"^{name}: connection is closed$"):
            fact()


def test_ssl_abandon_port(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    out.write(b"pending data")  # buffered, not yet sent
    sslports.ssl_abandon_port(out)  # still flushed
    assert out.closed
    assert read_exactly(inp, 12) == b"pending data"
    sslports.ssl_abandon_port(inp)
    assert inp.closed
    with pytest.raises(TypeError):
        sslports.ssl_abandon_port(object())


# -- timeouts --------------------------------------------------------------------------------------


class SilentServer:
    """Accepts TCP connections and never answers; records what clients send."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOCAL, 0))
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.got_bytes = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            conn.settimeout(30)
            try:
                if conn.recv(1):
                    self.got_bytes.set()
            except OSError:
                pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def silent_server() -> Any:
    server = SilentServer()
    yield server
    server.close()


def test_connect_timeout_on_stalled_handshake(silent_server: Any) -> None:
    with pytest.raises(TimeoutError) as info:
        sslports.ssl_connect(LOCAL, silent_server.port, timeout=0.5)
    assert isinstance(info.value, SSLNetworkError)
    assert "ssl_connect" in str(info.value)
    # the ClientHello went out: it is the handshake (the server's thread may see it late)
    assert silent_server.got_bytes.wait(10)


def test_port_read_timeout_then_retry(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    with inp, out:
        assert inp.gettimeout() is None
        inp.settimeout(0.3)
        assert inp.gettimeout() == 0.3
        with pytest.raises(TimeoutError):
            inp.read(1)
        with pytest.raises(TimeoutError):
            inp.read1(10)
        out.write(b"still alive")
        out.flush()
        inp.settimeout(None)
        assert read_exactly(inp, 11) == b"still alive"


def test_connect_timeout_becomes_port_timeout(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context(), timeout=20)
    with inp, out:
        assert inp.gettimeout() == 20 and out.gettimeout() == 20


def test_handshake_timeout_then_listener_still_accepts(pki: Any) -> None:
    listener = sslports.ssl_listen(0, 5, False, LOCAL, pki.server_context(), handshake_timeout=0.5)
    port = sslports.ssl_addresses(listener, True)[1]
    with listener:
        # TCP only and never a ClientHello; then the start of a ClientHello and nothing more
        for opening in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):
            listener.handshake_timeout = 0.5
            staller = socket.create_connection((LOCAL, port))
            staller.sendall(opening)
            try:
                with pytest.raises(SSLNetworkError) as info:
                    sslports.ssl_accept(listener)
                assert "ssl_accept" in str(info.value)
                staller.settimeout(10)
                assert staller.recv(100) == b""  # the server closed that socket
            finally:
                staller.close()
            # (a good client's handshake gets the default's time: a loaded machine can take
            # more than the stallers' 0.5 s)
            listener.handshake_timeout = 30.0
            _check_listener_usable(pki, listener, port)


def test_garbage_instead_of_client_hello(pki: Any) -> None:
    listener = sslports.ssl_listen(0, 5, False, LOCAL, pki.server_context())
    port = sslports.ssl_addresses(listener, True)[1]
    with listener:
        garbage_kinds = (
            b"GET / HTTP/1.0\r\n\r\n",
            bytes(range(256)) * 4,
            b"\x17\x03\x03\x00\x05hello",  # application data before any handshake
            b"\x16\x03\x01\x00\x01x",  # a truncated handshake record, then EOF
        )
        for garbage in garbage_kinds:
            peer = socket.create_connection((LOCAL, port))
            peer.sendall(garbage)
            peer.shutdown(socket.SHUT_WR)
            try:
                with pytest.raises(SSLNetworkError) as info:
                    sslports.ssl_accept(listener)
                assert "ssl_accept: accept failed" in str(info.value)
            finally:
                peer.close()
        _check_listener_usable(pki, listener, port)


def _check_listener_usable(pki: Any, listener: Any, port: int) -> None:
    join = run_in_thread(lambda: sslports.ssl_connect("localhost", port, pki.client_context()))
    sin, sout = sslports.ssl_accept(listener)
    cin, cout = join(30)
    cout.write(b"ok")
    cout.flush()
    assert read_exactly(sin, 2) == b"ok"
    for p in (cin, cout, sin, sout):
        p.close()


# -- Ctrl-C ----------------------------------------------------------------------------------------


def _run_child(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**PY_ENV, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_sleeping(pid: int) -> None:
    """Wait until the (single-threaded) child is asleep in a system call."""
    for _ in range(500):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            time.sleep(0.2)
            return
        if state == "S":
            return
        time.sleep(0.01)


def _assert_interrupted(child: subprocess.Popen[str]) -> str:
    child.send_signal(signal.SIGINT)
    try:
        _out, err = child.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise AssertionError("the child did not stop on SIGINT") from None
    assert child.returncode != 0
    assert "KeyboardInterrupt" in err, err
    return err


def test_ctrl_c_interrupts_blocked_read(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    child = _run_child(
        """
        import sys, sslports
        ctx = sslports.ssl_make_client_context()
        inp, out = sslports.ssl_connect("127.0.0.1", int(sys.argv[1]), ctx)
        print("ready", flush=True)
        inp.read(1)  # the echo server never sends unprompted
        print("read returned", flush=True)
        """,
        str(server.port),
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    _wait_sleeping(child.pid)
    err = _assert_interrupted(child)
    assert "in read" in err and "sslports" in err


def test_ctrl_c_interrupts_connect_handshake(silent_server: Any) -> None:
    child = _run_child(
        """
        import sys, sslports
        sslports.ssl_connect("127.0.0.1", int(sys.argv[1]))
        print("connected", flush=True)
        """,
        str(silent_server.port),
    )
    assert silent_server.got_bytes.wait(30), "the child never sent its ClientHello"
    _wait_sleeping(child.pid)
    err = _assert_interrupted(child)
    assert "in ssl_connect" in err


def test_ctrl_c_interrupts_accept_handshake(pki: Any) -> None:
    child = _run_child(
        """
        import sys, sslports
        listener = sslports.ssl_listen(0, 5, False, "127.0.0.1", "auto", handshake_timeout=None)
        print(sslports.ssl_addresses(listener, True)[1], flush=True)
        sslports.ssl_accept_enable_break(listener)
        print("accepted", flush=True)
        """
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    with socket.create_connection((LOCAL, port)):  # TCP, but no ClientHello
        _wait_sleeping(child.pid)
        err = _assert_interrupted(child)
    assert "in ssl_accept" in err


# -- verification failures -------------------------------------------------------------------------


def test_untrusted_server_fails_verification(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    ctx = pki.client_context(trust=False)
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("localhost", server.port, ctx)
    exc = info.value
    assert "certificate verify failed" in str(exc)
    assert str(exc).startswith("ssl_connect: ")
    assert exc.verify_code is not None and exc.verify_code > 0
    assert exc.verify_message
    assert "issuer" in exc.verify_message  # unable to get local issuer certificate
    assert any("certificate verify failed" in line for line in exc.openssl_errors)


def test_rogue_ca_fails_verification(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context(chain=pki.rogue_chain, key=pki.rogue_key))
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("localhost", server.port, pki.client_context())
    assert "certificate verify failed" in str(info.value)
    assert info.value.verify_code is not None


def test_hostname_mismatch(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context(chain=pki.other_chain, key=pki.other_key))
    with pytest.raises(SSLNetworkError) as info:
        sslports.ssl_connect("localhost", server.port, pki.client_context())
    exc = info.value
    assert "certificate verify failed" in str(exc)
    assert exc.verify_code is not None
    assert exc.verify_message is not None
    assert exc.verify_message.startswith("hostname mismatch")


def test_without_verification_anything_goes(pki: Any, echo_server: Any) -> None:
    """'auto' checks neither chain nor hostname (as documented)."""
    server = echo_server(pki.server_context(chain=pki.other_chain, key=pki.other_key))
    inp, out = sslports.ssl_connect("localhost", server.port, "auto")
    with inp, out:
        out.write(b"x")
        out.flush()
        assert inp.read(1) == b"x"


def test_secure_protocol_rejects_test_ca(pki: Any, echo_server: Any) -> None:
    """'secure' uses the default roots, which do not include our test CA."""
    server = echo_server(pki.server_context())
    with pytest.raises(SSLNetworkError, match="certificate verify failed"):
        sslports.ssl_connect("localhost", server.port, "secure")


def test_connect_refused_is_network_error() -> None:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(SSLNetworkError) as info:
            sslports.ssl_connect(LOCAL, port)
    assert isinstance(info.value, ConnectionError)
    assert "ssl_connect" in str(info.value)


def test_transport_reset_after_handshake_is_network_error(pki: Any, echo_server: Any) -> None:
    """A reset after the handshake raises SSLNetworkError on ssl_connect ports."""

    def handler(inp: Any, out: Any) -> None:
        sock = out._sslports_conn.transport.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        inp.read(1)
        inp.close()
        out.close()  # RST, because of SO_LINGER 0

    server = echo_server(pki.server_context(), handler)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    with inp, out:
        out.write(b"x")
        out.flush()
        with pytest.raises(SSLError) as info:
            for _ in range(100):
                out.write(b"y" * 100000)
                out.flush()
                time.sleep(0.01)
        assert isinstance(info.value, SSLNetworkError)


@pytest.mark.parametrize("timeout", [None, 30.0])  # the C fast path, and the deadline path
def test_reset_while_a_read_waits_is_network_error(pki: Any, timeout: Any) -> None:
    """A reset that reaches a read already waiting for data is an error, never an EOF (the
    kernel reports a reset once: a waiting recv() that meets it must hand it on)."""
    ctx = pki.py_server_context("tls13")
    with socket.create_server((LOCAL, 0)) as listener:

        def serve() -> None:
            raw, _ = listener.accept()
            with ctx.wrap_socket(raw, server_side=True) as tls:
                tls.recv(1)
                time.sleep(0.3)  # the client is waiting in read(1) by now
                tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # closed without shutdown() and with SO_LINGER 0: a reset, no FIN before it

        join = run_in_thread(serve)
        inp, out = sslports.ssl_connect(LOCAL, listener.getsockname()[1], pki.client_context())
        with inp, out:
            inp.settimeout(timeout)
            out.write(b"x")
            out.flush()
            with pytest.raises(SSLNetworkError) as info:
                inp.read(1)
            assert info.value.errno == errno.ECONNRESET, info.value
        join()


def test_closing_both_ports_wakes_a_read_waiting_in_another_thread(
    pki: Any, echo_server: Any
) -> None:
    """The last close shuts the socket down first, which ends a read that waits for data
    (inside recv() or poll()) at once: close() does not hang, the reader sees EOF."""
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect(LOCAL, server.port, pki.client_context())
    join = run_in_thread(lambda: inp.read(1))  # the echo server sends nothing unprompted
    wait_read_under_way(inp)
    time.sleep(0.3)  # the reader is waiting by now
    out.close()
    inp.close()
    assert join(10) == b""


# -- more port behaviour ---------------------------------------------------------------------------


def _closing_server(pki: Any, echo_server: Any, payload: bytes) -> Any:
    def handler(inp: Any, out: Any) -> None:
        out.write(payload)
        out.close()  # ssl_accept ports: no close_notify
        inp.close()

    return echo_server(pki.server_context(), handler)


def test_eof_without_close_notify(pki: Any, echo_server: Any) -> None:
    server = _closing_server(pki, echo_server, b"payload")
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    with inp, out:
        assert inp.read() == b"payload"  # lax: the transport's EOF is EOF
        assert inp.read(1) == b""


def test_strict_eof_on_ssl_connect(pki: Any, echo_server: Any) -> None:
    server = _closing_server(pki, echo_server, b"payload")
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context(), strict_eof=True)
    with inp, out:
        assert read_exactly(inp, 7) == b"payload"  # data first, then the verdict
        with pytest.raises(SSLError, match="unexpected eof"):
            inp.read(1)


def test_output_is_buffered_until_flush(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    with inp, out:
        inp.settimeout(0.3)
        out.write(b"small")
        with pytest.raises(TimeoutError):
            inp.read(1)  # nothing was sent: "small" sits in the record buffer
        out.flush()
        inp.settimeout(None)
        assert read_exactly(inp, 5) == b"small"
        out.writelines([b"a" * 10000, b"b" * 10000])  # more than one record: sent by itself
        assert read_exactly(inp, 16384) == b"a" * 10000 + b"b" * 6384


def test_write_timeout_then_retry(pki: Any, echo_server: Any) -> None:
    """A writer blocked by a peer that does not read times out; flush() later sends the rest."""
    start_reading = threading.Event()
    received = hashlib.sha1()
    count = [0]

    def handler(inp: Any, out: Any) -> None:
        start_reading.wait(60)
        with inp, out:
            while True:
                chunk = inp.read1(1 << 20)
                if not chunk:
                    return
                received.update(chunk)
                count[0] += len(chunk)

    server = echo_server(pki.server_context(), handler)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    data = os.urandom(64 * MIB)  # far more than the socket buffers hold
    out.settimeout(0.3)
    with pytest.raises(TimeoutError) as info:
        out.write(data)
    assert getattr(info.value, "characters_written", None) is not None
    start_reading.set()
    out.settimeout(None)
    out.flush()  # the rest goes out now
    out.close()
    inp.close()
    for t in server._threads:
        t.join(60)
    assert count[0] == len(data)
    assert received.hexdigest() == sha1(data)


def test_two_writers_on_one_port_are_serialised(pki: Any, echo_server: Any) -> None:
    chunk_size = 65536
    received = bytearray()
    done = threading.Event()

    def handler(inp: Any, out: Any) -> None:
        with inp, out:
            received.extend(read_all(inp))
        done.set()

    server = echo_server(pki.server_context(), handler)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    chunks = {bytes([tag]) * chunk_size for tag in range(32)}

    def writer(tags: range) -> None:
        for tag in tags:
            out.write(bytes([tag]) * chunk_size)

    joins = [run_in_thread(lambda r=r: writer(r)) for r in (range(0, 16), range(16, 32))]
    for join in joins:
        join(60)
    out.close()
    inp.close()
    assert done.wait(60)
    assert len(received) == 32 * chunk_size
    pieces = {bytes(received[i : i + chunk_size]) for i in range(0, len(received), chunk_size)}
    assert pieces == chunks  # every write arrived whole, none interleaved inside another


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class Interrupted(Exception):
    pass


def test_interrupted_connect_leaves_no_socket(silent_server: Any) -> None:
    """An exception from a signal handler stops ssl_connect, and its socket is closed."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Interrupted

    def alarm_in_the_handshake() -> None:  # (once the server has the ClientHello)
        if silent_server.got_bytes.wait(30):
            signal.pthread_kill(main, signal.SIGALRM)

    before = _open_fds()
    main = threading.get_ident()
    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        alarm = run_in_thread(alarm_in_the_handshake)
        with pytest.raises(Interrupted):
            sslports.ssl_connect(LOCAL, silent_server.port)
        alarm(30)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert silent_server.got_bytes.is_set()  # it was in the handshake
    server_side = {str(c.fileno()) for c in silent_server.conns}  # (the peer is in-process)
    # Daemon threads left by earlier tests may open and close descriptors meanwhile: only a
    # descriptor that stays open counts as leaked.
    leaked = _open_fds() - before - server_side
    for _ in range(10):
        if not leaked:
            break
        time.sleep(0.05)
        leaked &= _open_fds()
    names = []
    for fd in leaked:
        with contextlib.suppress(OSError):  # closed meanwhile: not a leak
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert not names, names


def test_interrupted_read_leaves_port_usable(pki: Any, echo_server: Any) -> None:
    server = echo_server(pki.server_context())

    def on_alarm(signum: int, frame: Any) -> None:
        raise Interrupted

    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context())
    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            inp.read(1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    with inp, out:
        out.write(b"after the interruption")
        out.flush()
        assert read_exactly(inp, 22) == b"after the interruption"
