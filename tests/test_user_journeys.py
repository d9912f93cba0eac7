"""Programs a new user writes from the README and the guide alone, against real peers.

Each test is one small program at a seam between features the other files test one by one:
a virtual-hosting server (SNI callback + server ALPN + a name that requires client
certificates) faced by curl, gnutls-cli and Python's ``ssl`` / ``http.client``; a client that
reconnects, resumes and outlives restarts of its server; mutual TLS and what each end is told
when the client's certificate is missing or untrusted; TLS to a child process over its
stdin/stdout; the asyncio layer with cancellation; and the README's examples as printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from certs import Issued, chain_file, in_thread, key_file, make_cert
from conftest import free_port, wait_listening

import sslports
from sslports import aio

LOCAL = "127.0.0.1"
TIMEOUT = 20.0
CURL = shutil.which("curl")
GNUTLS_CLI = shutil.which("gnutls-cli")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Pki:
    ca: Issued
    ca_file: Path
    a: Issued  # a.example
    b: Issued  # b.example
    localhost: Issued
    alice: Issued  # a client the CA issued
    mallory: Issued  # a client of a CA nobody trusts

    def files(self, who: Issued) -> tuple[Path, Path]:
        """(chain, key) files for `who`, chain without the root."""
        return chain_file(who), key_file(who)


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = make_cert("Journeys CA", ca=True)
    rogue = make_cert("Rogue CA", ca=True)
    return Pki(
        ca,
        chain_file(ca),
        make_cert("a.example", issuer=ca, dns=["a.example"]),
        make_cert("b.example", issuer=ca, dns=["b.example"]),
        make_cert("localhost", issuer=ca, dns=["localhost"]),
        make_cert("alice", issuer=ca),
        make_cert("mallory", issuer=rogue),
    )


def client_context(pki: Pki, who: Optional[Issued] = None, protocol: str = "auto") -> Any:
    """What security.md's "Trusting something other than the system store" builds, with a
    client certificate when `who` is given."""
    kw: dict[str, Any] = {}
    if who is not None:
        chain, key = pki.files(who)
        kw = {"private_key": ("pem", key), "certificate_chain": chain}
    ctx = sslports.ssl_make_client_context(protocol, **kw)
    sslports.ssl_load_verify_source(ctx, pki.ca_file)
    sslports.ssl_set_verify(ctx, True)
    sslports.ssl_set_verify_hostname(ctx, True)
    sslports.ssl_seal_context(ctx)
    return ctx


# -- 1. one threaded server, two names, ALPN, client certificates for one name --------------------


@dataclass
class VirtualHosts:
    """sni-alpn.md's recipe: a context per name, one callback, the listener on a.example's;
    b.example also requires a client certificate from the CA (security.md, Verifying
    clients). Each connection's facts, or its ssl_accept failure, go to `served`."""

    pki: Pki
    names: list[str] = field(default_factory=list)  # what the SNI callback was called with
    served: list[Any] = field(default_factory=list)
    serving: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        def context_for(leaf: Issued, clients: bool) -> Any:
            chain, key = self.pki.files(leaf)
            ctx = sslports.ssl_make_server_context(
                "secure", private_key=("pem", key), certificate_chain=chain
            )
            sslports.ssl_set_server_alpn(ctx, [b"h2", b"http/1.1"])
            if clients:
                sslports.ssl_load_verify_source(ctx, self.pki.ca_file)
                sslports.ssl_load_suggested_certificate_authorities(ctx, self.pki.ca_file)
                sslports.ssl_set_verify(ctx, True)
            return ctx

        contexts = {"a.example": context_for(self.pki.a, False)}
        contexts["b.example"] = context_for(self.pki.b, True)

        def choose(hostname: str) -> Any:
            self.names.append(hostname)
            return contexts.get(hostname)

        for ctx in contexts.values():
            sslports.ssl_set_server_name_identification_callback(ctx, choose)
            sslports.ssl_seal_context(ctx)
        self.listener = sslports.ssl_listen(0, 64, True, LOCAL, contexts["a.example"])
        self.port = sslports.ssl_addresses(self.listener, True)[1]
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:  # README's server loop
        while True:
            try:
                inp, out = sslports.ssl_accept(self.listener)
            except sslports.SSLNetworkError as exc:
                if "listener is closed" in str(exc):
                    return
                self.served.append(exc)
                continue
            t = threading.Thread(target=self._serve, args=(inp, out), daemon=True)
            self.serving.append(t)
            t.start()

    def _serve(self, inp: Any, out: Any) -> None:
        facts = {
            "alpn": sslports.ssl_get_alpn_selected(inp),
            "client": sslports.ssl_peer_subject_name(inp),
        }
        reply = b"%s %s\n" % (facts["alpn"] or b"-", facts["client"] or b"-")
        try:
            with inp, out:
                first = inp.readline()
                if first.startswith(b"GET "):
                    while inp.readline() not in (b"\r\n", b""):
                        pass
                    out.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(reply))
                    out.write(b"Connection: close\r\n\r\n" + reply)
                else:
                    out.write(reply)
                out.flush()
        except sslports.SSLError as exc:
            facts["error"] = exc
        self.served.append(facts)

    def close(self) -> None:
        """Stop accepting and wait for every connection's record in `served` (a client can
        have its whole answer before the server's thread has closed the ports and noted it)."""
        sslports.ssl_close(self.listener)
        self.thread.join(TIMEOUT)
        for t in self.serving:
            t.join(TIMEOUT)


@pytest.fixture
def vhosts(pki: Pki) -> Iterator[VirtualHosts]:
    server = VirtualHosts(pki)
    yield server
    server.close()


def _curl(vh: VirtualHosts, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    cmd = [CURL, "--silent", "--show-error", "--verbose", "--max-time", str(TIMEOUT)]
    cmd += ["--resolve", f"{name}:{vh.port}:{LOCAL}", "--cacert", str(vh.pki.ca_file)]
    cmd += [*args, f"https://{name}:{vh.port}/"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT + 10)


def _subject(curl_stderr: str) -> str:
    return re.search(r"subject: (.*)", curl_stderr).group(1)  # type: ignore[union-attr]


@pytest.mark.skipif(CURL is None, reason="curl missing (scripts/install-system-deps.sh)")
def test_virtual_hosts_with_curl(vhosts: VirtualHosts) -> None:
    """Each name gets its certificate and http/1.1 as asked; b.example wants a client
    certificate (it gets Alice's identity); a name nobody serves gets the listener's context,
    as sni-alpn.md says (the callback returns None), which the client refuses by name."""
    pki = vhosts.pki
    r = _curl(vhosts, "a.example", "--http1.1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "http/1.1 -\n"
    assert _subject(r.stderr).endswith("CN=a.example")

    chain, key = pki.files(pki.alice)
    r = _curl(vhosts, "b.example", "--http1.1", "--cert", str(chain), "--key", str(key))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "http/1.1 /O=sslports tests/CN=alice\n"
    assert _subject(r.stderr).endswith("CN=b.example")

    # Without one: curl's handshake (TLS 1.3) completes, the server's refusal comes as an
    # alert; ssl_accept raised, and the loop went on serving.
    r = _curl(vhosts, "b.example", "--http1.1")
    assert r.returncode != 0
    assert "alert certificate required" in r.stderr
    # The name nobody serves: a.example's certificate, refused by curl...
    r = _curl(vhosts, "c.example", "--http1.1")
    assert r.returncode == 60, r.stderr
    assert _subject(r.stderr).endswith("CN=a.example")
    # ... and served to a client that does not check names.
    r = _curl(vhosts, "c.example", "--http2", "--insecure")
    assert "ALPN: server accepted h2" in r.stderr
    assert _subject(r.stderr).endswith("CN=a.example")
    # No SNI at all (an IP literal): the callback is not called; the listener's context.
    r = _curl(vhosts, LOCAL, "--http1.1", "--insecure")
    assert (r.returncode, r.stdout) == (0, "http/1.1 -\n"), r.stderr
    assert _subject(r.stderr).endswith("CN=a.example")
    vhosts.close()
    assert vhosts.names == ["a.example", "b.example", "b.example", "c.example", "c.example"]
    refused = [s for s in vhosts.served if isinstance(s, sslports.SSLNetworkError)]
    assert [str(e).split("; client ")[0] for e in refused] == [
        "ssl_accept: accept failed (error:0A0000C7:SSL routines::peer did not return a certificate"
    ]
    assert str(refused[0]).endswith(")") and f"; client {LOCAL}:" in str(refused[0])
    alpn = sorted(s["alpn"] for s in vhosts.served if isinstance(s, dict))
    assert alpn == [b"h2", b"http/1.1", b"http/1.1", b"http/1.1", b"http/1.1"]


@pytest.mark.skipif(GNUTLS_CLI is None, reason="gnutls-cli missing (install-system-deps.sh)")
def test_virtual_hosts_with_gnutls_cli_and_python(vhosts: VirtualHosts, tmp_path: Path) -> None:
    """gnutls-cli asks b.example for h2 with Alice's certificate; Python's ssl prefers
    http/1.1 and gets h2 (the server's preference wins); http.client gets a page from
    b.example; Python's ssl refuses the unknown name's certificate by name."""
    pki = vhosts.pki
    chain, key = pki.files(pki.alice)
    log = tmp_path / "gnutls.log"
    cmd = [GNUTLS_CLI, "-p", str(vhosts.port), "--x509cafile", str(pki.ca_file)]
    cmd += ["--sni-hostname=b.example", "--verify-hostname=b.example", "--alpn=h2"]
    cmd += ["--x509certfile", str(chain), "--x509keyfile", str(key), f"--logfile={log}", LOCAL]
    r = subprocess.run(cmd, input=b"hello\n", capture_output=True, timeout=TIMEOUT)
    info = log.read_text(errors="replace")
    assert r.returncode == 0, (r.stderr, info[-2000:])
    assert r.stdout == b"h2 /O=sslports tests/CN=alice\n"
    assert "Application protocol: h2" in info and "The certificate is trusted" in info

    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.set_alpn_protocols(["http/1.1", "h2"])
    raw = socket.create_connection((LOCAL, vhosts.port), timeout=TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname="a.example") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.getpeercert()["subject"][-1] == (("commonName", "a.example"),)
        tls.sendall(b"hi\n")
        assert tls.recv(100) == b"h2 -\n"

    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(chain, key)
    ctx.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection(LOCAL, vhosts.port, context=ctx, timeout=TIMEOUT)
    conn.sock = ctx.wrap_socket(
        socket.create_connection((LOCAL, vhosts.port), timeout=TIMEOUT),
        server_hostname="b.example",
    )
    conn.request("GET", "/", headers={"Host": "b.example"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (200, b"http/1.1 /O=sslports tests/CN=alice\n")
    conn.close()

    strict = ssl.create_default_context(cafile=str(pki.ca_file))
    with (
        socket.create_connection((LOCAL, vhosts.port), timeout=TIMEOUT) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
    ):
        strict.wrap_socket(raw, server_hostname="c.example")
    vhosts.close()
    assert vhosts.names == ["b.example", "a.example", "b.example", "c.example"]


# -- 2. a client that reconnects, resumes, and outlives restarts of its server --------------------


def _round_trip(port: int, ctx: Any) -> tuple[bytes, bool]:
    inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=TIMEOUT)
    with inp, out:
        out.write(b"ping\n")
        out.flush()
        return inp.readline(), sslports.ssl_session_reused(inp)


def _refused_then_stalled(port: int, ctx: Any) -> None:
    """The server is down: a prompt SSLNetworkError (connection refused). A port that takes
    the TCP connection and never answers: the timeout, a TimeoutError and SSLNetworkError."""
    with pytest.raises(sslports.SSLNetworkError) as info:
        sslports.ssl_connect("localhost", port, ctx, timeout=TIMEOUT)
    assert info.value.errno == errno.ECONNREFUSED
    with socket.create_server((LOCAL, port)) as mute:
        with pytest.raises(TimeoutError) as stalled:
            sslports.ssl_connect("localhost", port, ctx, timeout=0.3)
        assert isinstance(stalled.value, sslports.SSLNetworkError)
        peer = mute.accept()[0]
        with peer:
            assert peer.recv(1)  # (it got our ClientHello)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl missing")
def test_reconnecting_client_across_openssl_s_server_restarts(pki: Pki) -> None:
    """ssl_connect with timeout= and one client context, many times: resumed from the second
    connection on; the server down, or taking the connection and saying nothing, raise what
    errors.md names at once or at the deadline; a restarted server (new ticket keys) is
    reached with a full handshake, then resumes again."""
    port = free_port()
    ctx = client_context(pki)
    chain, key = pki.files(pki.localhost)

    def s_server() -> subprocess.Popen[bytes]:
        cmd = ["openssl", "s_server", "-accept", f"{LOCAL}:{port}", "-cert", str(chain)]
        proc = subprocess.Popen(
            [*cmd, "-key", str(key), "-rev", "-quiet"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(port, proc)
        return proc

    for _restart in range(2):
        proc = s_server()
        try:
            got = [_round_trip(port, ctx) for _ in range(4)]
        finally:
            proc.kill()
            proc.wait()
        # a new server process has new ticket keys: its first connection starts afresh
        assert got == [(b"gnip\n", False)] + [(b"gnip\n", True)] * 3
        _refused_then_stalled(port, ctx)


def test_reconnecting_client_across_sslports_server_restarts(pki: Pki) -> None:
    """The same sealed server context after a restart resumes the sessions it gave; a new
    one (new ticket keys) does not, and the client falls back to a full handshake."""
    chain, key = pki.files(pki.localhost)
    ctx = client_context(pki)

    def server_context() -> Any:
        sctx = sslports.ssl_make_server_context(private_key=("pem", key), certificate_chain=chain)
        sslports.ssl_seal_context(sctx)
        return sctx

    def serve(sctx: Any, port: int, n: int) -> list[tuple[bytes, bool]]:
        with sslports.ssl_listen(port, 5, True, LOCAL, sctx) as listener:
            port = sslports.ssl_addresses(listener, True)[1]

            def loop() -> None:
                for _ in range(n):
                    inp, out = sslports.ssl_accept(listener)
                    with inp, out:
                        out.write(inp.readline())

            join = in_thread(loop)
            got = [_round_trip(port, ctx) for _ in range(n)]
            join(TIMEOUT)
        ports.append(port)
        return got

    ports: list[int] = []
    first = server_context()
    assert serve(first, 0, 3) == [(b"ping\n", False), (b"ping\n", True), (b"ping\n", True)]
    _refused_then_stalled(ports[0], ctx)
    assert serve(first, ports[0], 2) == [(b"ping\n", True)] * 2
    assert serve(server_context(), ports[0], 2) == [(b"ping\n", False), (b"ping\n", True)]


# -- 3. mutual TLS --------------------------------------------------------------------------------


def _mtls_server(pki: Pki, version: str) -> Any:
    """security.md's "Verifying clients", as printed."""
    chain, key = pki.files(pki.localhost)
    ctx = sslports.ssl_make_server_context(
        version, private_key=("pem", key), certificate_chain=chain
    )
    sslports.ssl_load_verify_source(ctx, pki.ca_file)
    sslports.ssl_load_suggested_certificate_authorities(ctx, pki.ca_file)
    sslports.ssl_set_verify(ctx, True)
    sslports.ssl_seal_context(ctx)
    return sslports.ssl_listen(0, 5, True, LOCAL, ctx)


def _mtls_client(pki: Pki, port: int, who: Optional[Issued]) -> tuple[Any, Any]:
    return sslports.ssl_connect("localhost", port, client_context(pki, who), timeout=TIMEOUT)


@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_mutual_tls_identity_survives_resumption(pki: Pki, version: str) -> None:
    """The server reads who the client is (verified, subject, issuer, host names), also on
    a resumed connection, where no certificate is sent again."""
    with _mtls_server(pki, version) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        ctx = client_context(pki, pki.alice)
        for reused in (False, True):

            def serve() -> tuple[Any, ...]:
                inp, out = sslports.ssl_accept(listener)
                with inp, out:
                    out.write(inp.readline())
                    return (
                        sslports.ssl_session_reused(inp),
                        sslports.ssl_peer_verified(inp),
                        sslports.ssl_peer_subject_name(inp),
                        sslports.ssl_peer_issuer_name(inp),
                        sslports.ssl_peer_certificate_hostnames(inp),
                    )

            join = in_thread(serve)
            inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=TIMEOUT)
            with inp, out:
                out.write(b"me\n")
                out.flush()
                assert inp.readline() == b"me\n"
            assert join(TIMEOUT) == (
                reused,
                True,
                pki.alice.subject_oneline,
                pki.ca.subject_oneline,
                ["alice"],
            )


@pytest.mark.parametrize("version", ["tls12", "tls13"])
@pytest.mark.parametrize("who", ["none", "untrusted"])
def test_mutual_tls_refusals_say_what_to_fix(pki: Pki, version: str, who: str) -> None:
    """Both ends get SSLNetworkError, with a reason a user can act on: the server "peer did
    not return a certificate" or "certificate verify failed" (with verify_code and
    verify_message), the client the server's alert. On TLS 1.3 the client's handshake ends
    before the server has looked at its certificate (as with every TLS 1.3 library), so the
    alert comes with the client's first read (security.md)."""
    client = None if who == "none" else pki.mallory
    with _mtls_server(pki, version) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        join = in_thread(lambda: sslports.ssl_accept(listener))
        alert = {
            ("tls12", "none"): "sslv3 alert handshake failure",
            ("tls13", "none"): "tlsv13 alert certificate required",
        }.get((version, who), "tlsv1 alert unknown ca")
        if version == "tls13":
            inp, out = _mtls_client(pki, port, client)
            with inp, out:
                out.write(b"hello\n")
                out.flush()
                with pytest.raises(sslports.SSLNetworkError) as info:
                    inp.readline()
        else:
            with pytest.raises(sslports.SSLNetworkError) as info:
                _mtls_client(pki, port, client)
        # (and what it means; OpenSSL 3.2 and later spell SSL 3.0's alerts "ssl/tls alert")
        spellings = (alert, alert.replace("sslv3 alert", "ssl/tls alert"))
        assert any(f"::{a}: the peer " in str(info.value) for a in spellings), info.value
        with pytest.raises(sslports.SSLNetworkError) as server:
            join(TIMEOUT)
    if who == "none":
        assert "peer did not return a certificate" in str(server.value)
        assert server.value.verify_code is None
    else:
        assert "certificate verify failed" in str(server.value)
        assert server.value.verify_code == 20
        assert server.value.verify_message is not None
        assert server.value.verify_message.startswith("unable to get local issuer certificate: ")


# -- 4. TLS to a child process over its stdin and stdout ------------------------------------------

_SSLPORTS_CHILD = """
import sys, sslports
ctx = sslports.ssl_make_server_context(
    private_key=("pem", sslports.TEST_PEM), certificate_chain=sslports.TEST_PEM)
inp, out = sslports.ports_to_ssl_ports(
    sys.stdin.buffer, sys.stdout.buffer, context=ctx, shutdown_on_close=True)
out.write(inp.readline().upper())
if sys.argv[1] == "flush":
    out.flush()
# the end of the program: the ports are left to Python's exit
"""

_PYTHON_SSL_CHILD = """
import os, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1])
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_side=True)

def call(fn, *args, wait=True):
    while True:
        try:
            result, done = fn(*args), True
        except ssl.SSLWantReadError:
            result, done = None, not wait
        data = outgoing.read()
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        if done:
            return result
        data = os.read(0, 65536)
        if not data:
            sys.exit("EOF")
        incoming.write(data)

call(tls.do_handshake)
call(tls.write, call(tls.read, 100).upper())
call(tls.unwrap, wait=False)  # our close_notify, without waiting for the peer's
"""


@contextlib.contextmanager
def _child_client(argv: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], Any, Any]]:
    """TLS over a child's stdin/stdout; the child is killed and the ports closed at the end."""
    proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    ctx = sslports.ssl_make_client_context()
    sslports.ssl_load_verify_source(ctx, sslports.TEST_PEM)
    sslports.ssl_set_verify(ctx, True)
    sslports.ssl_set_verify_hostname(ctx, True)
    inp, out = sslports.ports_to_ssl_ports(
        proc.stdout,
        proc.stdin,
        mode="connect",
        context=ctx,
        hostname="localhost",
        close_original=True,
        shutdown_on_close=True,
        timeout=TIMEOUT,
        strict_eof=True,
    )
    try:
        yield proc, inp, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()
        inp.close()


@pytest.mark.parametrize("flush", ["flush", "no-flush"])
def test_child_process_answers_and_exits_without_closing(flush: str) -> None:
    """A child that serves TLS on its stdin/stdout with sslports and ends without closing
    its ports. It hung at exit: the ports' finalizers waited for the sender thread (a
    daemon, which runs no more once Python finalizes) to write the close_notify, or the
    answer itself; a flushed answer could be lost with it. Now the answer and the
    close_notify arrive (strict_eof: not a truncation) and the child exits."""
    with _child_client(["-c", _SSLPORTS_CHILD, flush]) as (proc, inp, out):
        out.write(b"hello child\n")
        out.flush()
        assert inp.read() == b"HELLO CHILD\n"
        assert proc.wait(TIMEOUT) == 0


def test_child_process_running_python_ssl_memory_bio() -> None:
    """ports_to_ssl_ports against another TLS stack on the far side of two pipes; both
    ends close with close_notify (strict_eof reads it as the clean end)."""
    with _child_client(["-c", _PYTHON_SSL_CHILD, str(sslports.TEST_PEM)]) as (proc, inp, out):
        assert sslports.ssl_peer_verified(inp)
        out.write(b"over pipes\n")
        out.flush()
        assert inp.read() == b"OVER PIPES\n"
        out.close()
        assert proc.wait(TIMEOUT) == 0


# -- 5. asyncio -----------------------------------------------------------------------------------


def test_asyncio_server_and_client_with_cancellation(pki: Pki) -> None:
    """asyncio.md: cancelling a read loses nothing; a deadline of one's own around a read
    leaves the connection usable; a connect cancelled while the server stalls leaves no
    socket behind (the module's leak check); timeout= raises TimeoutError that is an
    SSLNetworkError; ALPN and the client's identity through the writer."""
    chain, key = pki.files(pki.b)

    async def main() -> None:
        sctx = sslports.ssl_make_server_context(private_key=("pem", key), certificate_chain=chain)
        sslports.ssl_load_verify_source(sctx, pki.ca_file)
        sslports.ssl_set_verify(sctx, True)
        sslports.ssl_set_server_alpn(sctx, [b"h2", b"http/1.1"])
        seen: list[Any] = []

        async def handle(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            seen.append(writer.get_extra_info("peercert"))
            try:
                while line := await reader.readline():
                    writer.write(line.upper())
                    await writer.drain()
            finally:
                writer.close()

        server = await aio.start_ssl_server(handle, LOCAL, 0, sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            ctx = client_context(pki, pki.alice)
            reader, writer = await _open(port, ctx)
            assert sslports.ssl_get_alpn_selected(reader) == b"h2"
            waiting = asyncio.ensure_future(reader.readline())
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(reader.readline(), 0.05)
            writer.write(b"still here\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"STILL HERE\n"
            await writer.shutdown()
            writer.close()
            await writer.wait_closed()

            with socket.create_server((LOCAL, 0)) as mute:
                stalled = asyncio.ensure_future(_open(mute.getsockname()[1], ctx))
                await asyncio.sleep(0.05)
                stalled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await stalled
                with pytest.raises(TimeoutError) as info:
                    await _open(mute.getsockname()[1], ctx, timeout=0.2)
                assert isinstance(info.value, sslports.SSLNetworkError)
                for _ in range(2):
                    mute.accept()[0].close()  # (the two connections the stall left)
        assert seen == [
            {
                "subject_name": pki.alice.subject_oneline,
                "issuer_name": pki.ca.subject_oneline,
                "hostnames": ["alice"],
            }
        ]

    asyncio.run(main())


async def _open(port: int, ctx: Any, timeout: float = TIMEOUT) -> tuple[Any, Any]:
    """To 127.0.0.1 naming b.example (asyncio.md: connect with asyncio.open_connection and
    wrap the pair); a failed or cancelled handshake closes the raw writer."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    return await aio.wrap_ssl_streams(
        reader,
        writer,
        context=ctx,
        hostname="b.example",
        alpn=[b"http/1.1", b"h2"],
        timeout=timeout,
    )


# -- 6. the examples of the README and the guide, as printed --------------------------------------


def _examples(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(encoding="utf-8"), re.S)


def _example(doc: str, marker: str, port: int) -> str:
    """The one example of `doc` that contains `marker`, on `port` instead of 4433, with the
    bundled certificate where it names the user's files."""
    (code,) = [c for c in _examples(doc) if marker in c]
    for path in ('"chain.pem"', '"key.pem"'):
        code = code.replace(path, "sslports.TEST_PEM")
    return code.replace("4433", str(port))


def _run(code: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=TIMEOUT)


def _client(port: int) -> str:
    """A client for the servers of the examples, as security.md builds one."""
    return f"""
import sslports
ctx = sslports.ssl_make_client_context()
sslports.ssl_load_verify_source(ctx, sslports.TEST_PEM)
sslports.ssl_set_verify(ctx, True)
sslports.ssl_set_verify_hostname(ctx, True)
inp, out = sslports.ssl_connect("localhost", {port}, ctx, timeout={TIMEOUT})
"""


@pytest.mark.parametrize(
    "doc, marker",
    [("README.md", "ssl_listen(4433"), ("docs/guide/index.md", "ssl_listen(4433")],
)
def test_server_examples_serve_as_printed(doc: str, marker: str) -> None:
    """The README's server (an echo) with its "Wrapping streams" client, which half-closes
    with close_notify and reads the echo to EOF; the guide's index server (one line)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", _example(doc, marker, port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, server)
        if doc == "README.md":
            r = _run(_example(doc, "ports_to_ssl_ports(", port))
            assert (r.returncode, r.stdout) == (0, b"b'hello\\n'\n"), r.stderr
        else:
            code = _client(port) + "out.write(b'one line\\n'); out.flush(); print(inp.read())"
            r = _run(code)
            assert (r.returncode, r.stdout) == (0, b"b'one line\\n'\n"), r.stderr
    finally:
        server.kill()
        server.communicate()


def test_asyncio_example_runs_as_printed() -> None:
    r = _run(_example("README.md", "asyncio.run(main())", 0))
    assert (r.returncode, r.stdout) == (0, b"b'hello\\n' tls13\n"), r.stderr
