"""Interoperability with GnuTLS's command-line tools (issue 6).

* sslports client -> ``gnutls-serv --echo``: gnutls-serv's echo mode is line based and treats
  what it receives as a C string (it echoes once a newline arrived, and would stop at a NUL), so
  the 1 MiB payload is random data in base64 lines; the echo must come back byte for byte.
  gnutls-serv also prints everything it echoes to stdout, even with ``-q``: its output goes to
  a file (a pipe nobody reads would fill and stall it).
* ``gnutls-cli`` -> sslports server: 1 MiB of random binary data each way at once (gnutls-cli
  copies stdin to the connection and the connection to stdout).

Each runs for TLS 1.2 and 1.3 (GnuTLS priority strings) and for RSA and ECDSA server
certificates from the session's trustme CA, with full verification on both tools' and sslports'
sides, and ALPN checked on both ends (gnutls-cli reports the protocol in its log file).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL, MIB, free_port, is_listening, random_bytes, run_in_thread, sha1

import sslports

GNUTLS_SERV = shutil.which("gnutls-serv")
GNUTLS_CLI = shutil.which("gnutls-cli")
pytestmark = pytest.mark.skipif(
    GNUTLS_SERV is None or GNUTLS_CLI is None,
    reason="gnutls-bin is not installed (scripts/install-system-deps.sh)",
)

PRIORITY = {
    "tls12": "NORMAL:-VERS-ALL:+VERS-TLS1.2",
    "tls13": "NORMAL:-VERS-ALL:+VERS-TLS1.3",
}
TIMEOUT = 60.0


def credentials(pki: Any, key: str) -> tuple[Path, Path]:
    return (pki.server_chain, pki.server_key) if key == "rsa" else (pki.ec_chain, pki.ec_key)


def text_payload(size: int, seed: int) -> bytes:
    """`size` bytes of base64 lines (64 characters and a newline): no NUL, no CR."""
    raw = random_bytes(size * 3 // 4 + 64, seed)
    text = base64.b64encode(raw)
    lines = [text[i : i + 64] + b"\n" for i in range(0, len(text), 64)]
    out = b"".join(lines)[:size]
    return out[:-1] + b"\n"


@contextlib.contextmanager
def gnutls_serv(args: list[str], log: Path) -> Iterator[int]:
    """``gnutls-serv -p <free port> ...`` (output to `log`), once it listens; killed after."""
    assert GNUTLS_SERV is not None
    for _attempt in range(5):
        port = free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [GNUTLS_SERV, "-q", "-p", str(port), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not is_listening(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None and is_listening(port):
            break
        proc.kill()
        proc.communicate()
    else:
        raise RuntimeError("gnutls-serv did not start")
    try:
        yield port
    finally:
        proc.kill()
        proc.communicate(timeout=10)


# -- sslports client, gnutls-serv --------------------------------------------------------------


@pytest.mark.parametrize("key", ["rsa", "ecdsa"])
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_client_against_gnutls_serv(pki: Any, tmp_path: Path, version: str, key: str) -> None:
    chain, keyfile = credentials(pki, key)
    args = ["--echo", "--crlf", "--x509certfile", str(chain), "--x509keyfile", str(keyfile)]
    args += ["--priority", PRIORITY[version], "--alpn=h2"]
    payload = text_payload(MIB, seed=1 if key == "rsa" else 2)
    with gnutls_serv(args, tmp_path / "gnutls-serv.log") as port:
        ctx = pki.client_context(version)
        inp, out = sslports.ssl_connect(
            LOCAL, port, ctx, alpn=[b"h2", b"http/1.1"], timeout=TIMEOUT
        )
        try:
            assert sslports.ssl_protocol_version(inp) == version
            assert sslports.ssl_get_alpn_selected(inp) == b"h2"
            assert sslports.ssl_peer_verified(inp)
            if version == "tls12":
                assert ("-RSA-" if key == "rsa" else "-ECDSA-") in sslports.ssl_cipher_name(inp)

            def read_echo() -> bytes:
                got = bytearray()
                while len(got) < len(payload):
                    chunk = inp.read1(65536)
                    if not chunk:
                        break
                    got += chunk
                return bytes(got)

            join = run_in_thread(read_echo)
            view = memoryview(payload)
            for i in range(0, len(payload), 65536):
                out.write(view[i : i + 65536])
            out.flush()
            echoed = join(TIMEOUT)
        finally:
            out.close()
            inp.close()
    assert len(echoed) == len(payload)
    assert sha1(echoed) == sha1(payload)


def test_client_alpn_refused_by_gnutls_serv(pki: Any, tmp_path: Path) -> None:
    """``--alpn-fatal``: no common protocol aborts the handshake; sslports raises."""
    args = ["--echo", "--x509certfile", str(pki.server_chain), "--x509keyfile"]
    args += [str(pki.server_key), "--alpn=h2", "--alpn-fatal"]
    log = tmp_path / "gnutls-serv.log"
    with gnutls_serv(args, log) as port, pytest.raises(sslports.SSLNetworkError) as info:
        sslports.ssl_connect(LOCAL, port, pki.client_context(), alpn=[b"smtp"], timeout=TIMEOUT)
    assert info.value.message.startswith("ssl_connect: ")


# -- gnutls-cli, sslports server ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["rsa", "ecdsa"])
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_gnutls_cli_against_server(pki: Any, tmp_path: Path, version: str, key: str) -> None:
    chain, keyfile = credentials(pki, key)
    ctx = pki.server_context(version, chain=chain, key=keyfile)
    sslports.ssl_set_server_alpn(ctx, [b"h2", b"http/1.1"])
    to_server = random_bytes(MIB, seed=3)
    to_client = random_bytes(MIB, seed=4)
    facts: dict[str, Any] = {}

    with sslports.ssl_listen(0, 5, True, LOCAL, ctx, handshake_timeout=TIMEOUT) as listener:
        port = sslports.ssl_addresses(listener, True)[1]

        def serve() -> bytes:
            inp, out = sslports.ssl_accept(listener)
            facts["version"] = sslports.ssl_protocol_version(inp)
            facts["alpn"] = sslports.ssl_get_alpn_selected(inp)
            facts["cipher"] = sslports.ssl_cipher_name(inp)

            def send() -> None:
                view = memoryview(to_client)
                for i in range(0, len(to_client), 65536):
                    out.write(view[i : i + 65536])
                out.flush()

            writer = threading.Thread(target=send, daemon=True)
            writer.start()
            got = bytearray()
            try:
                while True:
                    chunk = inp.read1(65536)
                    if not chunk:
                        break
                    got += chunk
            finally:
                writer.join(TIMEOUT)
                out.close()
                inp.close()
            return bytes(got)

        join = run_in_thread(serve)
        log = tmp_path / "gnutls-cli.log"
        assert GNUTLS_CLI is not None
        cmd = [GNUTLS_CLI, "--x509cafile", str(pki.ca_pem), "--verify-hostname=localhost"]
        cmd += ["-p", str(port), "--priority", PRIORITY[version], "--alpn=h2"]
        cmd += [f"--logfile={log}", LOCAL]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            received, err = proc.communicate(to_server, timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        server_got = join(TIMEOUT)

    info = log.read_text(errors="replace")
    assert proc.returncode == 0, (err, info[-2000:])
    assert "The certificate is trusted" in info
    assert "Application protocol: h2" in info
    assert facts["version"] == version
    assert facts["alpn"] == b"h2"
    if version == "tls12":
        assert ("-RSA-" if key == "rsa" else "-ECDSA-") in facts["cipher"]
    assert len(server_got) == len(to_server) and sha1(server_got) == sha1(to_server)
    assert len(received) == len(to_client) and sha1(received) == sha1(to_client)
