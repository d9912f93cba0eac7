"""Protocol features of real peers that the other interop tests do not exercise.

* ``openssl s_server`` driven through its stdin commands while an sslports client reads in one
  thread and writes in another (full duplex, as API.md promises): TLS 1.3 KeyUpdate (``k``, and
  ``K``, which asks for one back) and TLS 1.2 renegotiation (``r``) in the middle of a transfer.
  A command is a read of stdin that holds just that line, so a command is written only once
  the client got everything written before it (s_server then has nothing else buffered), and
  the data it sends has the command bytes replaced (as in test_interop.py). s_server writes
  what it receives to stdout, with a line per command it ran; those lines are taken out before
  the data is compared.
* HelloRetryRequest, session tickets (``-num_tickets``), a server that requires a client
  certificate the client does not have.
* ``gnutls-cli`` against an sslports server: resumption, TLS 1.3 early data (rejected: never
  read as application data), a TLS 1.2 rehandshake (refused: OpenSSL 3's default).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import (
    LOCAL,
    MIB,
    collect_stdout,
    random_bytes,
    read_exactly,
    run_in_thread,
    sha1,
    wait_stdin_taken,
)

import sslports

TIMEOUT = 30.0
STOP_BOUND = 10.0  # a stopped writer's last chunk and flush, a 1 MiB read: far less than this
GNUTLS_CLI = shutil.which("gnutls-cli")
needs_gnutls = pytest.mark.skipif(GNUTLS_CLI is None, reason="gnutls-bin is not installed")

_COMMAND_BYTES = b"QqPS\r\nrRkKc"
_NO_COMMANDS = bytes.maketrans(_COMMAND_BYTES, bytes(b ^ 0x80 for b in _COMMAND_BYTES))
# What s_server prints among the data it received when it runs a command.
_REPORT_LINES = (b"SSL_do_handshake -> 1\n", b"Read BLOCK\n")


class DuplexClient:
    """An sslports client of `s_server`: a writer thread sends a paced stream until stopped
    (so that it is still writing whatever the server does meanwhile); the test reads."""

    def __init__(self, pki: Any, proc: Any, port: int, version: str, streams: bool) -> None:
        self.proc = proc
        self.stdout = bytearray()
        self.pump = collect_stdout(proc, self.stdout)
        ctx = pki.client_context(version)
        self.sock: Optional[socket.socket] = None
        if streams:  # TLS over the TCP socket's two stream files (memory BIOs: stream mode)
            self.sock = socket.create_connection((LOCAL, port), timeout=TIMEOUT)
            self.inp, self.out = sslports.ports_to_ssl_ports(
                self.sock.makefile("rb", buffering=0),
                self.sock.makefile("wb", buffering=0),
                mode="connect",
                context=ctx,
                hostname="localhost",
                close_original=True,
                timeout=TIMEOUT,
            )
        else:
            self.inp, self.out = sslports.ssl_connect("localhost", port, ctx, timeout=TIMEOUT)
        assert sslports.ssl_protocol_version(self.inp) == version
        self.stream = random_bytes(32 * MIB, seed=21)
        self.sent = 0
        self.stop = threading.Event()
        self.join_writer = run_in_thread(self._write)
        self.got = bytearray()

    def _write(self) -> None:
        step = 32768
        while not self.stop.is_set() and self.sent + step <= len(self.stream):
            self.out.write(self.stream[self.sent : self.sent + step])
            self.sent += step
            time.sleep(0.002)
        self.out.flush()

    def feed(self, data: bytes) -> None:
        """s_server sends `data`; wait until all of it arrived."""
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        want = len(self.got) + len(data)
        started = time.monotonic()
        chunk = read_exactly(self.inp, want - len(self.got))
        # (a read that waits for the stream while the writer already fed the pump its data
        # comes back only when its timeout runs out: a stall, not a slow machine)
        assert time.monotonic() - started < STOP_BOUND, "the read stalled until its timeout"
        self.got += chunk
        assert len(self.got) == want, "early EOF"

    def command(self, letter: bytes) -> None:
        # (s_server must read the line alone: in a read of its own, not with what follows)
        wait_stdin_taken(self.proc)
        self.proc.stdin.write(letter + b"\n")
        self.proc.stdin.flush()
        wait_stdin_taken(self.proc)

    def finish(self) -> bytes:
        """Stop writing, close, and return what s_server received (its report lines out)."""
        self.stop.set()
        self.join_writer(STOP_BOUND)
        self.inp.close()
        self.out.close()
        if self.sock is not None:
            self.sock.close()
        self.proc.wait(TIMEOUT)
        self.pump.join(TIMEOUT)
        output = bytes(self.stdout)
        for line in _REPORT_LINES:
            output = output.replace(line, b"")
        start = output.find(self.stream[:64])
        assert start >= 0
        return output[start : start + self.sent]


def _duplex_session(
    pki: Any, openssl_tool: Any, version: str, commands: list[bytes], streams: bool = False
) -> tuple[DuplexClient, bytes, list[bytes]]:
    flag = {"tls12": "-tls1_2", "tls13": "-tls1_3"}[version]
    args = ["-cert", str(pki.server_chain), "-key", str(pki.server_key), flag, "-naccept", "1"]
    proc, port = openssl_tool.s_server(args)
    client = DuplexClient(pki, proc, port, version, streams)
    parts = [random_bytes(MIB, seed=30 + i) for i in range(len(commands) + 1)]
    parts = [part.translate(_NO_COMMANDS) for part in parts]
    client.feed(parts[0])
    for letter, part in zip(commands, parts[1:]):
        client.command(letter)
        # The test does not read while s_server runs the command and sends the next part:
        # the writer thread alone meets what the server sent meanwhile.
        time.sleep(0.2)
        client.feed(part)
    return client, client.finish(), parts


def test_key_updates_both_ways_during_full_duplex(pki: Any, openssl_tool: Any) -> None:
    """TLS 1.3: the server updates its keys, twice asking for an update back, while the client
    both reads and writes; nothing is lost or reordered in either direction."""
    client, received, parts = _duplex_session(pki, openssl_tool, "tls13", [b"K", b"k", b"K"])
    assert sha1(bytes(client.got)) == sha1(b"".join(parts))
    assert client.sent > 0 and len(received) == client.sent
    assert sha1(received) == sha1(client.stream[: client.sent])


@pytest.mark.parametrize("streams", [False, True], ids=["socket", "streams"])
def test_server_renegotiation_during_full_duplex(
    pki: Any, openssl_tool: Any, streams: bool
) -> None:
    """TLS 1.2: s_server renegotiates while the client writes; the server's data that follows
    its HelloRequest reaches the client before its ServerHello. The client's writer used to
    drive the renegotiation with SSL_write_ex, which cannot take that data: OpenSSL failed the
    write with an empty error queue (``read: read failed``) and the connection was lost.

    Over streams (ports_to_ssl_ports: the pump reads what the caller feeds it), reader and
    writer both read the stream. The reader used to wait for the stream after the writer had
    fed and kept its data, and the writer returned WANT_READ from the read that ended the
    renegotiation, then waited for bytes the server had no reason to send: each stalled until
    its 30 s timeout."""
    client, received, parts = _duplex_session(pki, openssl_tool, "tls12", [b"r"], streams)
    assert sha1(bytes(client.got)) == sha1(b"".join(parts))
    assert client.sent > 0 and len(received) == client.sent
    assert sha1(received) == sha1(client.stream[: client.sent])


# -- handshake variants against s_server ---------------------------------------------------------


def _round_trip(proc: Any, port: int, ctx: Any) -> tuple[Any, Any]:
    """Connect, send a line each way; return the ports (open)."""
    inp, out = sslports.ssl_connect("localhost", port, ctx, timeout=TIMEOUT)
    out.write(b"ping\n")
    out.flush()
    proc.stdin.write(b"pong\n")
    proc.stdin.flush()
    assert read_exactly(inp, 5) == b"pong\n"
    return inp, out


def test_hello_retry_request(pki: Any, openssl_tool: Any) -> None:
    """s_server takes only P-384: the client's first key share (X25519) gets a HelloRetryRequest."""
    args = ["-cert", str(pki.server_chain), "-key", str(pki.server_key), "-tls1_3", "-quiet"]
    proc, port = openssl_tool.s_server([*args, "-groups", "P-384", "-naccept", "1"])
    inp, out = _round_trip(proc, port, pki.client_context("tls13"))
    assert sslports.ssl_protocol_version(inp) == "tls13"
    inp.close()
    out.close()


@pytest.mark.parametrize("tickets", [0, 5])
def test_session_tickets(pki: Any, openssl_tool: Any, tickets: int) -> None:
    """-num_tickets 5: the next connection resumes; 0: no ticket, a full handshake, no wait."""
    args = ["-cert", str(pki.server_chain), "-key", str(pki.server_key), "-tls1_3", "-quiet"]
    proc, port = openssl_tool.s_server([*args, "-num_tickets", str(tickets), "-naccept", "2"])
    ctx = pki.client_context("tls13")
    reused = []
    for _ in range(2):
        inp, out = _round_trip(proc, port, ctx)
        time.sleep(0.1)  # (the tickets follow the handshake)
        reused.append(sslports.ssl_session_reused(inp))
        inp.close()
        out.close()
    assert reused == [False, tickets > 0]


def test_required_client_certificate_missing(pki: Any, openssl_tool: Any) -> None:
    """-Verify 1 and no client certificate. TLS 1.2: the handshake fails; TLS 1.3: the client's
    handshake completes first, and its first read gets the server's alert, as SSLNetworkError."""
    args = ["-cert", str(pki.server_chain), "-key", str(pki.server_key), "-quiet", "-Verify", "1"]
    _proc, port = openssl_tool.s_server([*args, "-tls1_2", "-naccept", "1"])
    with pytest.raises(sslports.SSLNetworkError, match="handshake failure"):
        sslports.ssl_connect("localhost", port, pki.client_context("tls12"), timeout=TIMEOUT)
    _proc, port = openssl_tool.s_server([*args, "-tls1_3", "-naccept", "1"])
    inp, out = sslports.ssl_connect("localhost", port, pki.client_context("tls13"), timeout=TIMEOUT)
    inp.settimeout(TIMEOUT)
    with pytest.raises(sslports.SSLNetworkError, match="certificate required"):
        inp.read(1)
    inp.close()
    out.close()


# -- gnutls-cli against an sslports server ------------------------------------------------------


def _gnutls_cli_session(
    pki: Any, version: str, cli_args: list[str], payload: bytes, connections: int
) -> tuple[subprocess.CompletedProcess[bytes], list[Any]]:
    """gnutls-cli ... against an sslports echo server; one entry per accepted connection:
    (reused, bytes received) or the exception the connection ended with."""
    ctx = pki.server_context(version)
    results: list[Any] = []
    with sslports.ssl_listen(0, 5, True, LOCAL, ctx, handshake_timeout=TIMEOUT) as listener:
        port = sslports.ssl_addresses(listener, True)[1]

        def serve() -> None:
            for _ in range(connections):
                inp, out = sslports.ssl_accept(listener)
                inp.settimeout(TIMEOUT)
                got = bytearray()
                try:
                    with inp, out:
                        while chunk := inp.read1(65536):
                            got += chunk
                            out.write(chunk)
                            out.flush()
                        results.append((sslports.ssl_session_reused(inp), bytes(got)))
                except sslports.SSLError as exc:
                    results.append(exc)

        join = run_in_thread(serve)
        assert GNUTLS_CLI is not None
        priority = {
            "tls12": "NORMAL:-VERS-ALL:+VERS-TLS1.2",
            "tls13": "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        }
        cmd = [GNUTLS_CLI, "--x509cafile", str(pki.ca_pem), "-p", str(port)]
        cmd += ["--priority", priority[version], *cli_args, "localhost"]
        proc = subprocess.run(cmd, input=payload, capture_output=True, timeout=TIMEOUT)
        join(TIMEOUT)
    return proc, results


def _lines(size: int, seed: int) -> bytes:
    hexed = random_bytes(size // 2, seed).hex().encode()
    return b"".join(hexed[i : i + 99] + b"\n" for i in range(0, len(hexed), 99))


@needs_gnutls
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_gnutls_cli_resumes(pki: Any, version: str) -> None:
    payload = _lines(200_000, seed=40)
    # (--waitresumption: wait for the server's ticket, which a TLS 1.3 server sends at its
    # first write or wait; without it gnutls-cli gives up after a round trip's estimate, and
    # a server thread running late on a busy machine means no resumption)
    proc, results = _gnutls_cli_session(pki, version, ["--resume", "--waitresumption"], payload, 2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r[0] for r in results] == [False, True]
    assert sha1(results[1][1]) == sha1(payload)


@needs_gnutls
def test_gnutls_cli_early_data_is_never_application_data(pki: Any, tmp_path: Path) -> None:
    """gnutls-cli sends 0-RTT data on resumption; the server does not accept early data, so
    the data must not appear in the stream (gnutls-cli then sends only its stdin)."""
    early = tmp_path / "early.bin"
    early.write_bytes(b"EARLY-DATA!" * 100)
    payload = _lines(50_000, seed=41)
    proc, results = _gnutls_cli_session(
        pki, "tls13", ["--resume", "--waitresumption", f"--earlydata={early}"], payload, 2
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results[1][0] is True
    assert b"EARLY-DATA!" not in results[1][1]
    assert sha1(results[1][1]) == sha1(payload)


@needs_gnutls
def test_gnutls_cli_rehandshake_refused_cleanly(pki: Any) -> None:
    """TLS 1.2 client-initiated renegotiation is refused (no_renegotiation warnings); gnutls-cli
    gives up with a fatal alert, which the server reports as SSLNetworkError, without waiting."""
    started = time.monotonic()
    proc, results = _gnutls_cli_session(pki, "tls12", ["--rehandshake"], b"x\n", 1)
    assert proc.returncode != 0
    assert len(results) == 1 and isinstance(results[0], sslports.SSLNetworkError)
    assert "alert" in str(results[0])
    assert time.monotonic() - started < TIMEOUT / 2
