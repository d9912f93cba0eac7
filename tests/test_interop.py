"""sslports against other TLS implementations: Python's ssl module and the openssl tool.

Every test moves more than 1 MiB in each direction and compares SHA-1 digests; the client
always verifies the chain (the test CA) and the hostname ("localhost").
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from typing import Any

import pytest
from conftest import LOCAL, MIB, random_bytes, read_exactly, run_in_thread, sha1

import sslports

VERSIONS = ["tls12", "tls13"]
OPENSSL_FLAG = {"tls12": "-tls1_2", "tls13": "-tls1_3"}
PY_VERSION_NAME = {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}


def _send_all(out: Any, data: bytes) -> None:
    for i in range(0, len(data), 40000):
        out.write(data[i : i + 40000])
    out.flush()


# -- sslports client <-> Python ssl server --------------------------------------------------------


class PyEchoServer:
    """One-connection echo server on Python's ssl module."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server((LOCAL, 0))
        self.port = self.sock.getsockname()[1]
        self.version: str | None = None
        self.join = run_in_thread(self._run)

    def _run(self) -> int:
        raw, _ = self.sock.accept()
        echoed = 0
        with self.context.wrap_socket(raw, server_side=True) as conn:
            self.version = conn.version()
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


@pytest.mark.parametrize("version", VERSIONS)
def test_sslports_client_python_server(pki: Any, version: str) -> None:
    server = PyEchoServer(pki.py_server_context(version))
    try:
        data = random_bytes(MIB + 777, seed=1)
        inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context(version))
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


# -- Python ssl client <-> sslports server --------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_python_client_sslports_server(pki: Any, echo_server: Any, version: str) -> None:
    server = echo_server(pki.server_context(version))
    data = random_bytes(MIB + 4242, seed=2)
    ctx = pki.py_client_context(version)
    with (
        socket.create_connection((LOCAL, server.port)) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        assert conn.version() == PY_VERSION_NAME[version]

        def send() -> None:
            conn.sendall(data)

        join = run_in_thread(send)
        got = bytearray()
        while len(got) < len(data):
            chunk = conn.recv(65536)
            assert chunk, "early EOF"
            got += chunk
        join(60)
    assert sha1(bytes(got)) == sha1(data)
    assert server.errors == []


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


@pytest.mark.parametrize("version", VERSIONS)
def test_sslports_client_openssl_s_server(pki: Any, openssl_tool: Any, version: str) -> None:
    """s_server sends its stdin to the client and writes what it receives to stdout."""
    proc, port = openssl_tool.s_server(
        [
            "-cert",
            str(pki.server_chain),
            "-key",
            str(pki.server_key),
            OPENSSL_FLAG[version],
            "-quiet",
            "-naccept",
            "1",
        ]
    )
    to_client = random_bytes(MIB + 99, seed=3)
    to_server = random_bytes(MIB + 101, seed=4)
    received_by_server = bytearray()

    def pump_stdout() -> None:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                return
            received_by_server.extend(chunk)

    stdout_thread = threading.Thread(target=pump_stdout, daemon=True)
    stdout_thread.start()

    inp, out = sslports.ssl_connect("localhost", port, pki.client_context(version))
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
    assert len(received_by_server) == len(to_server)
    assert sha1(bytes(received_by_server)) == sha1(to_server)


def test_openssl_s_server_untrusted(pki: Any, openssl_tool: Any) -> None:
    proc, port = openssl_tool.s_server(
        ["-cert", str(pki.rogue_chain), "-key", str(pki.rogue_key), "-quiet", "-naccept", "1"]
    )
    with pytest.raises(sslports.SSLNetworkError, match="certificate verify failed"):
        sslports.ssl_connect("localhost", port, pki.client_context())
    proc.stdin.close()
    proc.wait(30)


# -- openssl s_client <-> sslports server ---------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_client_sslports_server(
    pki: Any, echo_server: Any, openssl_tool: Any, tmp_path: Any, version: str
) -> None:
    """s_client sends its stdin and writes what it receives to stdout; the server echoes a
    known number of bytes and then closes."""
    data = random_bytes(MIB + 555, seed=5)
    infile = tmp_path / "in.bin"
    infile.write_bytes(data)

    def handler(inp: Any, out: Any) -> None:
        left = len(data)
        with inp, out:
            while left:
                chunk = inp.read1(min(65536, left))
                if not chunk:
                    raise AssertionError(f"early EOF, {left} bytes missing")
                out.write(chunk)
                out.flush()
                left -= len(chunk)

    server = echo_server(pki.server_context(version), handler)
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
                "-quiet",
                "-nocommands",
            ],
            stdin=stdin,
        )
        got, err = proc.communicate(timeout=120)
    assert server.errors == []
    assert len(got) == len(data), err
    assert sha1(got) == sha1(data)


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
