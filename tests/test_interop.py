"""sslports against other TLS implementations: Python's ssl module and the openssl tool.

Every exchange test runs for TLS 1.2 and 1.3 and for an RSA and an ECDSA (P-256) server
certificate from the session's trustme CA; it moves more than 1 MiB in each direction and
compares SHA-1 digests. The client always verifies the chain (the test CA) and the hostname
("localhost"). Each also checks ALPN (the client offers h2 and http/1.1, the server only takes
http/1.1) and channel binding as far as the peer exposes it:

* Python's ``ssl``: ``get_channel_binding("tls-unique")`` under TLS 1.2; the client's
  ``getpeercert(binary_form=True)`` gives the certificate that tls-server-end-point hashes.
* ``openssl s_server`` / ``s_client``: ``-keymatexport`` prints the RFC 5705 exporter for the
  ``EXPORTER-Channel-Binding`` label without a context. Under TLS 1.3 that is RFC 9266's
  tls-exporter; under TLS 1.2 an absent and an empty context differ (sslports uses the empty one
  RFC 9266 asks for), so there it is compared with ``ssl_export_keying_material`` (no context).
  The tools print these facts only when not ``-quiet``, so their stdout holds the report text
  around the data; the data is cut out of it by its first bytes and then compared in full.
"""

from __future__ import annotations

import hashlib
import re
import selectors
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL, MIB, collect_stdout, random_bytes, read_exactly, run_in_thread, sha1
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import sslports

VERSIONS = ["tls12", "tls13"]
KEYS = ["rsa", "ecdsa"]
OPENSSL_FLAG = {"tls12": "-tls1_2", "tls13": "-tls1_3"}
PY_VERSION_NAME = {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}
ALPN_OFFER = [b"h2", b"http/1.1"]
ALPN_SERVER = b"http/1.1"  # the only protocol the servers take
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
KEYMAT_ARGS = ["-keymatexport", EXPORTER_LABEL.decode(), "-keymatexportlen", "32"]


def _send_all(out: Any, data: bytes) -> None:
    for i in range(0, len(data), 40000):
        out.write(data[i : i + 40000])
    out.flush()


def credentials(pki: Any, key: str) -> tuple[Path, Path]:
    """(chain, key) of the localhost server certificate with an RSA or an ECDSA key."""
    return (pki.server_chain, pki.server_key) if key == "rsa" else (pki.ec_chain, pki.ec_key)


def check_cipher(cipher: str, version: str, key: str) -> None:
    """A TLS 1.2 suite names the certificate's key type (TLS 1.3 suites do not)."""
    if version == "tls12":
        assert ("-RSA-" if key == "rsa" else "-ECDSA-") in cipher, cipher


def end_point_hash(der: bytes) -> bytes:
    """RFC 5929 tls-server-end-point of a DER certificate: its signature hash (MD5 and SHA-1
    upgraded to SHA-256)."""
    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    assert algorithm is not None
    name = "sha256" if algorithm.name in ("md5", "sha1") else algorithm.name
    return hashlib.new(name, der).digest()


def leaf_der(chain: Path) -> bytes:
    return x509.load_pem_x509_certificates(chain.read_bytes())[0].public_bytes(Encoding.DER)


def exporter_facts(p: Any, version: str) -> dict[str, bytes]:
    """What an openssl tool's ``-keymatexport`` output is compared with, from port `p`."""
    facts = {"keymat": sslports.ssl_export_keying_material(p, EXPORTER_LABEL, 32)}
    if version == "tls13":
        facts["tls-exporter"] = sslports.ssl_channel_binding(p, "tls-exporter")
    return facts


def check_keymat(report: bytes, facts: dict[str, bytes]) -> None:
    """The exporter value in an openssl tool's report equals sslports's (`exporter_facts`)."""
    theirs = bytes.fromhex(report_field(report, rb"Keying material: ([0-9A-F]+)"))
    assert len(theirs) == 32
    assert facts["keymat"] == theirs
    assert facts.get("tls-exporter", theirs) == theirs


def split_report(output: bytes, data: bytes) -> tuple[bytes, bytes]:
    """(the data as received, the report text around it) from a non-quiet openssl tool's
    stdout. The data starts where its first 64 bytes are (random bytes: never in the text)."""
    start = output.find(data[:64])
    assert start >= 0, output[:3000]
    end = start + len(data)
    return output[start:end], output[:start] + output[end:]


def report_field(report: bytes, pattern: bytes) -> str:
    match = re.search(pattern, report)
    assert match is not None, (pattern, report.decode(errors="replace")[-3000:])
    return match.group(1).decode()


# -- sslports client <-> Python ssl server --------------------------------------------------------


class PyEchoServer:
    """One-connection echo server on Python's ssl module; records the connection's facts."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server((LOCAL, 0))
        self.port = self.sock.getsockname()[1]
        self.version: str | None = None
        self.alpn: str | None = None
        self.tls_unique: bytes | None = None
        self.join = run_in_thread(self._run)

    def _run(self) -> int:
        raw, _ = self.sock.accept()
        echoed = 0
        with self.context.wrap_socket(raw, server_side=True) as conn:
            self.version = conn.version()
            self.alpn = conn.selected_alpn_protocol()
            if self.version == "TLSv1.2":
                self.tls_unique = conn.get_channel_binding("tls-unique")
            while True:
                try:
                    chunk = conn.recv(65536)
                except ssl.SSLEOFError:  # sslports ports close without close_notify
                    break
                if not chunk:
                    break
                conn.sendall(chunk)
                echoed += len(chunk)
        return echoed

    def close(self) -> None:
        self.sock.close()


def py_server_context(pki: Any, version: str, key: str) -> ssl.SSLContext:
    ctx = pki.py_server_context(version)
    ctx.load_cert_chain(*credentials(pki, key))  # replaces the RSA default
    ctx.set_alpn_protocols([ALPN_SERVER.decode()])
    return ctx


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_sslports_client_python_server(pki: Any, version: str, key: str) -> None:
    server = PyEchoServer(py_server_context(pki, version, key))
    try:
        data = random_bytes(MIB + 777, seed=1)
        inp, out = sslports.ssl_connect(
            "localhost", server.port, pki.client_context(version), alpn=ALPN_OFFER
        )
        assert sslports.ssl_protocol_version(inp) == version
        check_cipher(sslports.ssl_cipher_name(inp), version, key)
        alpn = sslports.ssl_get_alpn_selected(inp)
        tls_unique = sslports.ssl_channel_binding(inp, "tls-unique") if version == "tls12" else None
        end_point = sslports.ssl_channel_binding(inp, "tls-server-end-point")
        join = run_in_thread(lambda: _send_all(out, data))
        got = read_exactly(inp, len(data))
        join(60)
        inp.close()
        out.close()
        assert server.join(60) == len(data)
        assert server.version == PY_VERSION_NAME[version]
        assert sha1(got) == sha1(data)
    finally:
        server.close()
    assert alpn == ALPN_SERVER
    assert server.alpn == ALPN_SERVER.decode()
    assert server.tls_unique == tls_unique  # both None under TLS 1.3
    assert end_point == end_point_hash(leaf_der(credentials(pki, key)[0]))


# -- Python ssl client <-> sslports server --------------------------------------------------------


def _py_echo_exchange(conn: ssl.SSLSocket, data: bytes) -> bytes:
    """Send `data` over Python's `conn` while reading back what the echo server returns, in one
    thread: OpenSSL forbids SSL_read and SSL_write on one SSL object from two threads at once
    (with TLS 1.3 a write made that way can vanish: openssl/openssl#8977), so the socket is
    non-blocking and a selector says which of the two can go on."""
    conn.setblocking(False)
    view, sent, got = memoryview(data), 0, bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(conn, selectors.EVENT_READ)
        while len(got) < len(data):
            before, wait_for = (sent, len(got)), selectors.EVENT_READ
            if sent < len(data):
                try:
                    sent += conn.send(view[sent : sent + 65536])
                except ssl.SSLWantWriteError:
                    wait_for |= selectors.EVENT_WRITE
                except ssl.SSLWantReadError:
                    pass
            try:
                while chunk := conn.recv(65536):
                    got += chunk
                raise AssertionError(f"early EOF after {len(got)} of {len(data)} bytes")
            except ssl.SSLWantReadError:
                pass
            if (sent, len(got)) == before:
                sel.modify(conn, wait_for)
                assert sel.select(60), f"stalled: sent {sent}, got {len(got)} of {len(data)}"
    return bytes(got)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_python_client_sslports_server(pki: Any, echo_server: Any, version: str, key: str) -> None:
    chain, keyfile = credentials(pki, key)
    ctx = pki.server_context(version, chain=chain, key=keyfile)
    sslports.ssl_set_server_alpn(ctx, [ALPN_SERVER, b"h2"])  # its own preference wins
    facts: dict[str, Any] = {}

    def handler(inp: Any, out: Any) -> None:
        facts["alpn"] = sslports.ssl_get_alpn_selected(inp)
        facts["cipher"] = sslports.ssl_cipher_name(inp)
        facts["end-point"] = sslports.ssl_channel_binding(inp, "tls-server-end-point")
        if version == "tls12":
            facts["tls-unique"] = sslports.ssl_channel_binding(out, "tls-unique")
        server.echo(inp, out)

    server = echo_server(ctx, handler)
    data = random_bytes(MIB + 4242, seed=2)
    py_ctx = pki.py_client_context(version)
    py_ctx.set_alpn_protocols([p.decode() for p in ALPN_OFFER])
    with (
        socket.create_connection((LOCAL, server.port)) as raw,
        py_ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        assert conn.version() == PY_VERSION_NAME[version]
        alpn = conn.selected_alpn_protocol()
        tls_unique = conn.get_channel_binding("tls-unique") if version == "tls12" else None
        peer_der = conn.getpeercert(binary_form=True)

        got = _py_echo_exchange(conn, data)
    assert sha1(got) == sha1(data)
    assert server.errors == []
    assert alpn == ALPN_SERVER.decode()
    assert facts["alpn"] == ALPN_SERVER
    check_cipher(facts["cipher"], version, key)
    assert facts.get("tls-unique") == tls_unique
    assert peer_der is not None and facts["end-point"] == end_point_hash(peer_der)


def test_python_client_rejects_wrong_hostname(pki: Any, echo_server: Any) -> None:
    """Sanity check of the verification the other tests rely on."""
    server = echo_server(pki.server_context(chain=pki.other_chain, key=pki.other_key))
    ctx = pki.py_client_context("tls13")
    with (
        socket.create_connection((LOCAL, server.port)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname="localhost")


# -- sslports client <-> openssl s_server ---------------------------------------------------------

# Without -quiet, s_server takes a read from stdin that starts with Q, q, P or S, or is a letter
# among r R k K c followed by a line end, as a command (quit, send clear text, ...). The data
# it sends therefore has those bytes and the line ends replaced (by their value XOR 0x80).
_COMMAND_BYTES = b"QqPS\r\n"
_NO_COMMANDS = bytes.maketrans(_COMMAND_BYTES, bytes(b ^ 0x80 for b in _COMMAND_BYTES))


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_sslports_client_openssl_s_server(
    pki: Any, openssl_tool: Any, version: str, key: str
) -> None:
    """s_server sends its stdin to the client and writes what it receives to stdout, after its
    report on the connection."""
    chain, keyfile = credentials(pki, key)
    args = ["-cert", str(chain), "-key", str(keyfile), OPENSSL_FLAG[version], "-naccept", "1"]
    proc, port = openssl_tool.s_server([*args, "-alpn", ALPN_SERVER.decode(), *KEYMAT_ARGS])
    to_client = random_bytes(MIB + 99, seed=3).translate(_NO_COMMANDS)
    to_server = random_bytes(MIB + 101, seed=4)
    server_stdout = bytearray()
    stdout_thread = collect_stdout(proc, server_stdout)

    inp, out = sslports.ssl_connect("localhost", port, pki.client_context(version), alpn=ALPN_OFFER)
    assert sslports.ssl_protocol_version(inp) == version
    check_cipher(sslports.ssl_cipher_name(inp), version, key)
    assert sslports.ssl_get_alpn_selected(inp) == ALPN_SERVER
    facts = exporter_facts(inp, version)
    feed = run_in_thread(lambda: (proc.stdin.write(to_client), proc.stdin.flush()))
    send = run_in_thread(lambda: _send_all(out, to_server))
    got = read_exactly(inp, len(to_client))
    feed(60)
    send(60)
    inp.close()
    out.close()  # s_server sees the end of the connection and, with -naccept 1, exits
    proc.wait(60)  # (closing its stdin first could make it quit before reading everything)
    stdout_thread.join(30)
    assert sha1(got) == sha1(to_client)
    received, report = split_report(bytes(server_stdout), to_server)
    assert len(received) == len(to_server)
    assert sha1(received) == sha1(to_server)
    offered = report_field(report, rb"ALPN protocols advertised by the client: ([^\r\n]*)")
    assert offered == ", ".join(p.decode() for p in ALPN_OFFER)
    check_keymat(report, facts)


def test_openssl_s_server_untrusted(pki: Any, openssl_tool: Any) -> None:
    proc, port = openssl_tool.s_server(
        ["-cert", str(pki.rogue_chain), "-key", str(pki.rogue_key), "-quiet", "-naccept", "1"]
    )
    with pytest.raises(sslports.SSLNetworkError, match="certificate verify failed"):
        sslports.ssl_connect("localhost", port, pki.client_context())
    proc.stdin.close()
    proc.wait(30)


# -- openssl s_client <-> sslports server ---------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_client_sslports_server(
    pki: Any, echo_server: Any, openssl_tool: Any, tmp_path: Any, version: str, key: str
) -> None:
    """s_client sends its stdin and writes what it receives to stdout, after its report on the
    connection (-nocommands: the data is never taken for a command; -ign_eof: it keeps reading
    after the end of its stdin); the server echoes a known number of bytes and then closes."""
    data = random_bytes(MIB + 555, seed=5)
    infile = tmp_path / "in.bin"
    infile.write_bytes(data)
    facts: dict[str, Any] = {}

    def handler(inp: Any, out: Any) -> None:
        facts["version"] = sslports.ssl_protocol_version(inp)
        facts["cipher"] = sslports.ssl_cipher_name(inp)
        facts["alpn"] = sslports.ssl_get_alpn_selected(inp)
        facts.update(exporter_facts(inp, version))
        left = len(data)
        with inp, out:
            while left:
                chunk = inp.read1(min(65536, left))
                if not chunk:
                    raise AssertionError(f"early EOF, {left} bytes missing")
                out.write(chunk)
                out.flush()
                left -= len(chunk)

    chain, keyfile = credentials(pki, key)
    ctx = pki.server_context(version, chain=chain, key=keyfile)
    sslports.ssl_set_server_alpn(ctx, [ALPN_SERVER, b"h2"])  # its own preference wins
    server = echo_server(ctx, handler)
    with open(infile, "rb") as stdin:
        proc = openssl_tool.spawn(
            [
                "s_client",
                "-connect",
                f"{LOCAL}:{server.port}",
                "-servername",
                "localhost",
                "-CAfile",
                str(pki.ca_pem),
                "-verify_return_error",
                "-verify_hostname",
                "localhost",
                OPENSSL_FLAG[version],
                "-alpn",
                ",".join(p.decode() for p in ALPN_OFFER),
                *KEYMAT_ARGS,
                "-nocommands",
                "-ign_eof",
            ],
            stdin=stdin,
        )
        output, err = proc.communicate(timeout=120)
    assert server.errors == []
    got, report = split_report(output, data)
    assert len(got) == len(data), err
    assert sha1(got) == sha1(data)
    assert report_field(report, rb"Verify return code: (\d+)") == "0"
    assert report_field(report, rb"ALPN protocol: ([^\r\n]+)") == ALPN_SERVER.decode()
    assert facts["version"] == version
    check_cipher(facts["cipher"], version, key)
    assert facts["alpn"] == ALPN_SERVER
    check_keymat(report, facts)


def test_openssl_s_client_rejects_wrong_name(pki: Any, echo_server: Any, openssl_tool: Any) -> None:
    """Sanity check: the flags above really make s_client verify the hostname."""
    server = echo_server(pki.server_context(chain=pki.other_chain, key=pki.other_key))
    proc = openssl_tool.spawn(
        [
            "s_client",
            "-connect",
            f"{LOCAL}:{server.port}",
            "-CAfile",
            str(pki.ca_pem),
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-quiet",
        ],
        stdin=subprocess.DEVNULL,
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert b"verify" in err.lower()
