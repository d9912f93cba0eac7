"""The ``curl`` client against an sslports server (``ssl_listen`` / ``ssl_accept``), issue 6.

A tiny HTTP/1.1 handler over the sslports ports reads curl's POST body (``--data-binary``, a
little over 1 MiB of random bytes, so curl 7 also sends ``Expect: 100-continue``, which the handler
answers) and replies with another 1 MiB of random bytes; SHA-1 and lengths are compared at both
ends. Each runs for TLS 1.2 (``--tlsv1.2 --tls-max 1.2``) and 1.3 (``--tlsv1.3``) and for an
RSA and an ECDSA (P-256) server certificate from the session's trustme CA. curl verifies the
chain (``--cacert``) and the name (``localhost``, resolved to 127.0.0.1 with ``--resolve``);
``--http1.1`` makes it offer ALPN http/1.1 only, which the server (configured for h2 and
http/1.1) selects; curl's verbose log and ``ssl_get_alpn_selected`` both say so. Whether curl
really sent ``Expect: 100-continue`` is not asserted (it depends on curl's version)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL, MIB, random_bytes, read_exactly, sha1

import sslports

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(
    CURL is None, reason="curl is not installed (scripts/install-system-deps.sh)"
)

VERSION_ARGS = {"tls12": ["--tlsv1.2", "--tls-max", "1.2"], "tls13": ["--tlsv1.3"]}
CURL_VERSION_NAME = {"tls12": "TLSv1.2", "tls13": "TLSv1.3"}
TIMEOUT = 60


def credentials(pki: Any, key: str) -> tuple[Path, Path]:
    return (pki.server_chain, pki.server_key) if key == "rsa" else (pki.ec_chain, pki.ec_key)


def http_handler(reply: bytes, facts: dict[str, Any]) -> Any:
    """An HTTP/1.1 handler for one request with a Content-Length body; records what it saw in
    `facts` and answers 200 with `reply`, then closes the connection."""

    def handle(inp: Any, out: Any) -> None:
        with inp, out:
            facts["version"] = sslports.ssl_protocol_version(inp)
            facts["cipher"] = sslports.ssl_cipher_name(inp)
            facts["alpn"] = sslports.ssl_get_alpn_selected(inp)
            facts["request"] = inp.readline(8192).rstrip(b"\r\n")
            headers: dict[bytes, bytes] = {}
            while True:
                line = inp.readline(8192)
                assert line.endswith(b"\n"), line
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            facts["headers"] = headers
            length = int(headers[b"content-length"])
            if headers.get(b"expect", b"").lower() == b"100-continue":
                out.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                out.flush()
            body = read_exactly(inp, length)
            facts["body_length"] = len(body)
            facts["body_sha1"] = hashlib.sha1(body).hexdigest()
            head = (
                b"HTTP/1.1 200 OK\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n"
                b"Connection: close\r\n\r\n" % len(reply)
            )
            out.write(head)
            view = memoryview(reply)
            for i in range(0, len(reply), 50000):
                out.write(view[i : i + 50000])
            out.flush()

    return handle


def curl(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--verbose", "--max-time", str(timeout), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout + 30,
    )


@pytest.mark.parametrize("key", ["rsa", "ecdsa"])
@pytest.mark.parametrize("version", ["tls12", "tls13"])
def test_curl_against_server(
    pki: Any, echo_server: Any, tmp_path: Path, version: str, key: str
) -> None:
    upload = random_bytes(MIB + 333, seed=11)
    reply = random_bytes(MIB + 777, seed=12)
    (tmp_path / "upload.bin").write_bytes(upload)
    download = tmp_path / "download.bin"
    facts: dict[str, Any] = {}
    chain, keyfile = credentials(pki, key)
    ctx = pki.server_context(version, chain=chain, key=keyfile)
    sslports.ssl_set_server_alpn(ctx, [b"h2", b"http/1.1"])
    server = echo_server(ctx, http_handler(reply, facts), handshake_timeout=TIMEOUT)
    url = f"https://localhost:{server.port}/upload"
    result = curl(
        [
            *VERSION_ARGS[version],
            "--http1.1",
            "--cacert",
            str(pki.ca_pem),
            "--resolve",
            f"localhost:{server.port}:{LOCAL}",
            "--data-binary",
            f"@{tmp_path / 'upload.bin'}",
            "--header",
            "Content-Type: application/octet-stream",
            "--output",
            str(download),
            "--write-out",
            "%{http_code} %{http_version} %{size_upload} %{size_download} %{ssl_verify_result}",
            url,
        ]
    )
    log = result.stderr
    assert result.returncode == 0, log[-3000:]
    assert server.errors == []
    # curl's side
    code, http_version, sent, received, verify = result.stdout.split()
    assert (code, http_version, verify) == ("200", "1.1", "0")
    assert int(sent) == len(upload)
    assert int(received) == len(reply)
    got = download.read_bytes()
    assert len(got) == len(reply)
    assert sha1(got) == sha1(reply)
    used = re.search(r"SSL connection using (\S+) / (\S+)", log)
    assert used is not None, log[-3000:]
    assert used.group(1) == CURL_VERSION_NAME[version]
    assert re.search(r"ALPN[:,] offers http/1\.1", log), log[-3000:]
    assert re.search(r"ALPN[:,] server accepted (to use )?http/1\.1", log), log[-3000:]
    # the server's side
    assert facts["request"] == b"POST /upload HTTP/1.1"
    assert facts["headers"][b"host"] == f"localhost:{server.port}".encode()
    assert facts["body_length"] == len(upload)
    assert facts["body_sha1"] == sha1(upload)
    assert facts["version"] == version
    assert facts["alpn"] == b"http/1.1"
    assert facts["cipher"] == used.group(2)
    if version == "tls12":
        assert ("-RSA-" if key == "rsa" else "-ECDSA-") in facts["cipher"]


def test_curl_refuses_untrusted_server(pki: Any, echo_server: Any) -> None:
    """Sanity check of the verification the test above relies on: trusting another CA, curl
    refuses the certificate (exit 60); the server's ``ssl_accept`` raises and it keeps serving."""
    server = echo_server(pki.server_context())
    url = f"https://localhost:{server.port}/"
    args = ["--cacert", str(pki.rogue_chain), "--resolve", f"localhost:{server.port}:{LOCAL}"]
    result = curl([*args, url], timeout=30)
    assert result.returncode == 60, result.stderr[-3000:]
    deadline = time.monotonic() + 10
    while not server.errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(server.errors) == 1
    assert isinstance(server.errors[0], sslports.SSLNetworkError)
    inp, out = sslports.ssl_connect("localhost", server.port, pki.client_context(), timeout=10)
    with inp, out:
        out.write(b"still serving\n")
        out.flush()
        assert inp.readline() == b"still serving\n"
