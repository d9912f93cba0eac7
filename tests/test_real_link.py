"""TLS over a real network link that loses packets, not loopback.

Every other test runs over 127.0.0.1, where a 16 KiB record travels in one 64 KiB segment and
nothing is ever lost. Here the far end runs in a network namespace of its own, joined to the
test's by a veth pair with an MTU of 1280 and, in both directions, a token-bucket queue (tc
tbf: 40 Mbit/s, a 20 KB queue) that drops what does not fit. A record is a dozen TCP segments,
some of them dropped and sent again (SACK recovery, retransmission timeouts), so reads meet
records in pieces, writes meet a full send buffer, and a close meets megabytes still in flight.
Each test checks that the link really dropped packets during it (tc's counters) and that every
byte arrived (SHA-256), with sslports at both ends (ports, and sslports.aio under an event
loop) and against real peers (openssl s_server, curl) across the link.

Needs root (network namespaces, veth, tc; CI runs as root) and iproute2
(scripts/install-system-deps.sh); without root the module is skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import MIB, random_bytes, read_all, read_exactly

import sslports

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: network namespaces, veth and tc"
)

TIMEOUT = 120.0


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Link:
    """Two network namespaces' worth of a lossy link: this process's namespace (address `near`)
    and a new one (`far`), joined by a veth pair with a dropping tbf queue on each side."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.ns, self.a, self.b = f"sp{tag}", f"spa{tag}", f"spb{tag}"
        subnet = f"10.231.{tag % 250}"
        self.near, self.far = f"{subnet}.1", f"{subnet}.2"

    def up(self) -> None:
        for tool in ("ip", "tc"):
            assert shutil.which(tool), f"{tool} is missing (scripts/install-system-deps.sh)"
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.a, "type", "veth", "peer", "name", self.b)
        run("ip", "link", "set", self.b, "netns", self.ns)
        run("ip", "addr", "add", f"{self.near}/24", "dev", self.a)
        run("ip", "link", "set", self.a, "mtu", "1280", "up")
        run(*self.inside("ip", "addr", "add", f"{self.far}/24", "dev", self.b))
        run(*self.inside("ip", "link", "set", self.b, "mtu", "1280", "up"))
        run(*self.inside("ip", "link", "set", "lo", "up"))
        shape = ("root", "tbf", "rate", "40mbit", "burst", "8kb", "limit", "20kb")
        run("tc", "qdisc", "add", "dev", self.a, *shape)
        run(*self.inside("tc", "qdisc", "add", "dev", self.b, *shape))

    def down(self) -> None:
        # (deleting the namespace deletes its end of the pair, and with it the other end)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.a], capture_output=True, timeout=30)

    def inside(self, *argv: str) -> list[str]:
        """`argv` run in the far namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def drops(self) -> int:
        """Packets the two queues have dropped so far."""
        text = run("tc", "-s", "qdisc", "show", "dev", self.a)
        text += run(*self.inside("tc", "-s", "qdisc", "show", "dev", self.b))
        return sum(int(n) for n in re.findall(r"dropped (\d+)", text))


@pytest.fixture(scope="module")
def link() -> Iterator[Link]:
    link = Link()
    link.down()  # (what a killed run of this process id may have left)
    try:
        link.up()
        yield link
    finally:
        link.down()


@pytest.fixture(scope="module")
def creds(link: Link, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA and a certificate for both link addresses."""
    d = tmp_path_factory.mktemp("link-pki")
    ca = trustme.CA()
    leaf = ca.issue_cert(link.near, link.far)
    paths = {"ca": d / "ca.pem", "chain": d / "chain.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    paths["chain"].write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    paths["key"].write_bytes(leaf.private_key_pem.bytes())
    return paths


@pytest.fixture
def lossy(link: Link) -> Iterator[Link]:
    """The link, checked to have dropped packets while the test ran (else the test proved
    nothing about loss)."""
    before = link.drops()
    yield link
    assert link.drops() > before, "the link dropped nothing during the test"


def client_context(creds: dict[str, Path]) -> sslports.SSLClientContext:
    """Verifies the chain and the far address (the certificate names both link addresses)."""
    ctx = sslports.ssl_make_client_context()
    sslports.ssl_load_verify_source(ctx, creds["ca"])
    sslports.ssl_set_verify(ctx, True)
    sslports.ssl_set_verify_hostname(ctx, True)
    return ctx


def server_context(creds: dict[str, Path]) -> sslports.SSLServerContext:
    return sslports.ssl_make_server_context(
        private_key=("pem", str(creds["key"])), certificate_chain=str(creds["chain"])
    )


# The far end: an sslports server in the far namespace, one connection.
#   exchange N SEED: reads an 8-byte length and that many bytes, answers their SHA-256, then
#                    N bytes of random_bytes(N, SEED) in 64 KiB writes, and closes.
#   write-close N SEED: writes random_bytes(N, SEED) in one write() and closes at once.
#   chatty-read N SEED: writes a byte at once (a TLS 1.3 server's tickets go with it), then
#                    reads to EOF, writing another byte after each 64 KiB it read; prints the
#                    SHA-256 of what it read, and whether it ended at EOF or with an error.
FAR_SERVER = """
import hashlib, sys
import sslports
mode, host, chain, key, n, seed = sys.argv[1:7]
n, seed = int(n), int(seed)
ctx = sslports.ssl_make_server_context(private_key=("pem", key), certificate_chain=chain)
listener = sslports.ssl_listen(0, 5, True, host, ctx)
print("PORT", sslports.ssl_addresses(listener, True)[1], flush=True)
inp, out = sslports.ssl_accept(listener)
data = hashlib.shake_256(seed.to_bytes(8, "big")).digest(n)  # (conftest's random_bytes)
if mode == "exchange":
    length = int.from_bytes(inp.read(8), "big")
    digest = hashlib.sha256()
    while length:
        chunk = inp.read1(min(length, 65536))
        assert chunk, "early EOF"
        digest.update(chunk)
        length -= len(chunk)
    out.write(digest.digest())
    for i in range(0, n, 65536):
        out.write(data[i : i + 65536])
elif mode == "chatty-read":
    out.write(b"H")
    out.flush()
    digest, total, ended = hashlib.sha256(), 0, "EOF"
    try:
        while chunk := inp.read1(65536):
            digest.update(chunk)
            if (total + len(chunk)) // 65536 > total // 65536:
                out.write(b"M")
                out.flush()
            total += len(chunk)
    except OSError as exc:
        ended = repr(exc)
    print("READ", total, digest.hexdigest(), ended, flush=True)
else:
    out.write(data)
try:
    out.close()
except OSError:
    pass  # (chatty-read: the peer is gone)
inp.close()
listener.close()
print("DONE", flush=True)
"""


@contextlib.contextmanager
def far_server(
    link: Link, creds: dict[str, Path], mode: str, n: int, seed: int
) -> Iterator[tuple[int, list[str]]]:
    """Runs FAR_SERVER in the far namespace; yields its port and a list that gets the lines
    it printed once it ended; checks that it ended well."""
    args = [mode, link.far, str(creds["chain"]), str(creds["key"]), str(n), str(seed)]
    proc = subprocess.Popen(
        link.inside(sys.executable, "-c", FAR_SERVER, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), proc.stderr.read()
        said: list[str] = []
        yield int(line.split()[1]), said
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0 and "DONE" in out, err
        said.extend(out.splitlines())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("writes", [65536, 16384, 1000])
def test_upload_and_download_across_a_lossy_link(
    lossy: Link, creds: dict[str, Path], writes: int
) -> None:
    """3 MiB each way in writes of 64 KiB, 16 KiB and 1000 bytes, over the dropping link: the
    far end's SHA-256 of what it read is the sent bytes', and the 3 MiB it sent back arrive
    whole, then EOF."""
    up, down = random_bytes(3 * MIB, 1), 3 * MIB
    with far_server(lossy, creds, "exchange", down, 2) as (port, _said):
        inp, out = sslports.ssl_connect(lossy.far, port, client_context(creds), timeout=TIMEOUT)
        with inp, out:
            out.write(len(up).to_bytes(8, "big"))
            view = memoryview(up)
            for i in range(0, len(up), writes):
                out.write(view[i : i + writes])
            out.flush()
            assert read_exactly(inp, 32) == hashlib.sha256(up).digest()
            assert read_all(inp) == random_bytes(down, 2)


@pytest.mark.parametrize("buffering", [0, -1])
def test_streams_over_a_socket_across_a_lossy_link(
    lossy: Link, creds: dict[str, Path], buffering: int
) -> None:
    """ports_to_ssl_ports over a plain TCP socket's files (the pump in stream mode: Python moves
    the ciphertext, in whatever pieces the link delivers), unbuffered and buffered: 3 MiB each
    way across the dropping link, every byte checked."""
    up, down = random_bytes(3 * MIB, 13), 3 * MIB
    with far_server(lossy, creds, "exchange", down, 14) as (port, _said):
        sock = socket.create_connection((lossy.far, port), timeout=TIMEOUT)
        raw_in = sock.makefile("rb", buffering=buffering)
        raw_out = sock.makefile("wb", buffering=buffering)
        inp, out = sslports.ports_to_ssl_ports(
            raw_in,
            raw_out,
            mode="connect",
            context=client_context(creds),
            hostname=lossy.far,
            close_original=True,
        )
        with sock, inp, out:
            out.write(len(up).to_bytes(8, "big"))
            for i in range(0, len(up), 65536):
                out.write(up[i : i + 65536])
            out.flush()
            assert read_exactly(inp, 32) == hashlib.sha256(up).digest()
            assert read_all(inp) == random_bytes(down, 14)


@pytest.mark.parametrize("reads", [65536, 1000])
def test_every_byte_of_a_write_closed_at_once_arrives(
    lossy: Link, creds: dict[str, Path], reads: int
) -> None:
    """The far end writes 4 MiB in one write() and closes both ports at once, with the end of it
    still in its kernel, to cross a 5 MB/s link that drops packets: the close must not cut it
    short (a reset would discard what the far kernel still holds)."""
    with far_server(lossy, creds, "write-close", 4 * MIB, 3) as (port, _said):
        inp, out = sslports.ssl_connect(lossy.far, port, client_context(creds), timeout=TIMEOUT)
        with inp, out:
            assert read_all(inp, reads) == random_bytes(4 * MIB, 3)


def test_a_close_with_megabytes_unsent_and_bytes_unread_delivers_them(
    lossy: Link, creds: dict[str, Path]
) -> None:
    """The client writes 4 MiB and closes both ports at once without reading anything: the far
    end's first byte (and its session tickets) wait unread, and it sends another byte per 64 KiB
    it reads, which go on arriving after the close, while the end of the 4 MiB is still in the
    client's kernel. Closing with unread bytes, or receiving bytes once closed, makes Linux
    reset the connection and drop what it had not delivered; the last close reads away what
    arrived and lingers until the send queue is empty, so the far end reads all 4 MiB, then
    EOF."""
    data = random_bytes(4 * MIB, 8)
    with far_server(lossy, creds, "chatty-read", 0, 0) as (port, said):
        inp, out = sslports.ssl_connect(lossy.far, port, client_context(creds), timeout=TIMEOUT)
        out.write(data)
        out.close()
        inp.close()
    (line,) = [x for x in said if x.startswith("READ ")]
    assert line.split()[1:] == [str(len(data)), hashlib.sha256(data).hexdigest(), "EOF"]


def test_reads_that_time_out_mid_record_lose_nothing(lossy: Link, creds: dict[str, Path]) -> None:
    """Reads with a 1 ms timeout, while 2 MiB of 16 KiB records arrive a segment at a time:
    many of them time out, most with part of a record received (the pump keeps what it got),
    and the bytes that do come back are every byte sent, in order."""
    with far_server(lossy, creds, "write-close", 2 * MIB, 4) as (port, _said):
        inp, out = sslports.ssl_connect(lossy.far, port, client_context(creds), timeout=TIMEOUT)
        with inp, out:
            inp.settimeout(0.001)
            got, timeouts = bytearray(), 0
            while True:
                try:
                    chunk = inp.read1(65536)
                except TimeoutError:
                    timeouts += 1
                    continue
                if not chunk:
                    break
                got += chunk
    assert bytes(got) == random_bytes(2 * MIB, 4)
    assert timeouts > 0  # (~100 here; under valgrind, whose reader is slower than the link, 9)


def test_openssl_s_server_sends_a_file_across(
    lossy: Link, creds: dict[str, Path], tmp_path: Path
) -> None:
    """A real peer: `openssl s_server -WWW` in the far namespace serves a 3 MiB file; the
    sslports client's GET gets it whole (the body after the header is the file)."""
    data = random_bytes(3 * MIB, 5)
    (tmp_path / "blob.bin").write_bytes(data)
    openssl = shutil.which("openssl")
    assert openssl, "openssl is missing (scripts/install-system-deps.sh)"
    port = 18443
    argv = [openssl, "s_server", "-accept", f"{lossy.far}:{port}", "-naccept", "1", "-WWW"]
    argv += ["-cert", str(creds["chain"]), "-key", str(creds["key"])]
    proc = subprocess.Popen(
        lossy.inside(*argv),
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:  # (s_server prints ACCEPT once it listens)
            if line.startswith(b"ACCEPT"):
                break
        else:
            raise AssertionError(f"s_server did not start: {proc.stderr.read()!r}")
        inp, out = sslports.ssl_connect(lossy.far, port, client_context(creds), timeout=TIMEOUT)
        with inp, out:
            out.write(b"GET /blob.bin HTTP/1.0\r\n\r\n")
            out.flush()
            response = read_all(inp)
        head, sep, body = response.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.0 200"), head[:200]
        assert body == data
    finally:
        proc.kill()
        proc.communicate(timeout=30)


def test_curl_uploads_and_downloads_across(
    lossy: Link, creds: dict[str, Path], tmp_path: Path
) -> None:
    """A real peer the other way round: curl in the far namespace POSTs 2 MiB to an sslports
    server in this one and downloads 3 MiB from it; both ends see every byte."""
    curl = shutil.which("curl")
    assert curl, "curl is missing (scripts/install-system-deps.sh)"
    up, down = random_bytes(2 * MIB, 6), random_bytes(3 * MIB, 7)
    (tmp_path / "up.bin").write_bytes(up)
    seen: dict[str, Any] = {}
    listener = sslports.ssl_listen(0, 5, True, lossy.near, server_context(creds))
    port = sslports.ssl_addresses(listener, True)[1]

    def serve() -> None:
        try:
            inp, out = sslports.ssl_accept(listener)
            with inp, out:
                inp.settimeout(TIMEOUT)
                headers = {}
                inp.readline(8192)
                while (line := inp.readline(8192)) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    out.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    out.flush()
                seen["body"] = read_exactly(inp, int(headers[b"content-length"]))
                out.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(down))
                out.write(b"Connection: close\r\n\r\n")
                out.write(down)
        except BaseException as exc:  # (reported by the test)
            seen["error"] = exc

    server = threading.Thread(target=serve, daemon=True)  # (stuck in accept if curl failed)
    server.start()
    try:
        argv = [curl, "-sS", "--fail", "--http1.1", "--cacert", str(creds["ca"])]
        argv += ["--data-binary", f"@{tmp_path / 'up.bin'}", "-o", str(tmp_path / "down.bin")]
        done = subprocess.run(
            lossy.inside(*argv, f"https://{lossy.near}:{port}/"),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    finally:
        server.join(TIMEOUT)
        listener.close()
    assert "error" not in seen, seen.get("error")
    assert done.returncode == 0, done.stderr
    assert seen["body"] == up
    assert (tmp_path / "down.bin").read_bytes() == down


def test_asyncio_client_across(lossy: Link, creds: dict[str, Path]) -> None:
    """sslports.aio's client (the connection is the transport's protocol: the event loop does
    the waiting, records arrive in pieces, writes meet the transport's back-pressure) against
    the far sslports server: 3 MiB each way, every byte checked."""
    from sslports import aio

    up, down = random_bytes(3 * MIB, 9), 3 * MIB

    async def main(port: int) -> tuple[bytes, bytes]:
        reader, writer = await aio.open_ssl_connection(
            lossy.far, port, client_context(creds), timeout=TIMEOUT
        )
        async with writer:
            writer.write(len(up).to_bytes(8, "big"))
            for i in range(0, len(up), 65536):
                writer.write(up[i : i + 65536])
                await writer.drain()
            digest = await reader.readexactly(32)
            return digest, await reader.read()

    with far_server(lossy, creds, "exchange", down, 10) as (port, _said):
        digest, body = asyncio.run(asyncio.wait_for(main(port), TIMEOUT))
    assert digest == hashlib.sha256(up).digest()
    assert body == random_bytes(down, 10)


def test_asyncio_server_serves_curl_clients_at_once(
    lossy: Link, creds: dict[str, Path], tmp_path: Path
) -> None:
    """sslports.aio's server in this namespace, four curl clients in the far one at once, all
    through the same dropping queues: each POSTs 1 MiB of its own and downloads 2 MiB of its
    own, and both ends of every connection see every byte."""
    from sslports import aio

    curl = shutil.which("curl")
    assert curl, "curl is missing (scripts/install-system-deps.sh)"
    clients = 4
    ups = [random_bytes(MIB, 20 + i) for i in range(clients)]
    downs = {hashlib.sha256(up).digest(): random_bytes(2 * MIB, 30 + i) for i, up in enumerate(ups)}
    for i, up in enumerate(ups):
        (tmp_path / f"up{i}.bin").write_bytes(up)
    bodies: list[bytes] = []

    async def handle(reader: Any, writer: Any) -> None:
        async with writer:
            headers = {}
            await reader.readline()
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if headers.get(b"expect", b"").lower() == b"100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(int(headers[b"content-length"]))
            bodies.append(body)
            reply = downs[hashlib.sha256(body).digest()]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(reply))
            writer.write(b"Connection: close\r\n\r\n")
            for i in range(0, len(reply), 65536):
                writer.write(reply[i : i + 65536])
                await writer.drain()

    async def main() -> list[int]:
        server = await aio.start_ssl_server(handle, lossy.near, 0, server_context(creds))
        async with server:
            port = server.sockets[0].getsockname()[1]
            argv = [curl, "-sS", "--fail", "--http1.1", "--cacert", str(creds["ca"])]
            procs = [
                await asyncio.create_subprocess_exec(
                    *lossy.inside(*argv, "--data-binary", f"@{tmp_path / f'up{i}.bin'}"),
                    *("-o", str(tmp_path / f"down{i}.bin"), f"https://{lossy.near}:{port}/"),
                )
                for i in range(clients)
            ]
            return [await proc.wait() for proc in procs]

    codes = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert codes == [0] * clients
    assert sorted(bodies) == sorted(ups)
    for i, up in enumerate(ups):
        assert (tmp_path / f"down{i}.bin").read_bytes() == downs[hashlib.sha256(up).digest()]


def test_a_link_that_goes_dark_times_out_and_the_connection_carries_on(
    lossy: Link, creds: dict[str, Path]
) -> None:
    """Mid-upload the link goes down (the near end of the pair): with a 0.5 s timeout, a read
    and then a write raise TimeoutError instead of waiting for a peer nobody can reach; the
    link comes back, flush() sends what the timed-out write left buffered, the upload goes on
    where it stopped, and the far end got every byte once, in order (its SHA-256), and sends
    its 2 MiB back."""
    up, down = random_bytes(4 * MIB, 11), 2 * MIB
    with far_server(lossy, creds, "exchange", down, 12) as (port, _said):
        inp, out = sslports.ssl_connect(lossy.far, port, client_context(creds), timeout=TIMEOUT)
        with inp, out:
            out.write(len(up).to_bytes(8, "big"))
            out.write(up[:MIB])
            out.flush()
            run("ip", "link", "set", lossy.a, "down")
            try:
                inp.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    inp.read1(65536)
                out.settimeout(0.5)
                sent, timed_out = MIB, False
                while sent < len(up):
                    try:
                        sent += out.write(up[sent : sent + 65536])
                    except TimeoutError as exc:
                        sent += exc.characters_written  # type: ignore[attr-defined]
                        timed_out = True
                        break
                assert timed_out, "every write went through a link that was down"
            finally:
                run("ip", "link", "set", lossy.a, "up")
            out.settimeout(TIMEOUT)
            inp.settimeout(TIMEOUT)
            out.flush()
            for i in range(sent, len(up), 65536):
                out.write(up[i : i + 65536])
            out.flush()
            assert read_exactly(inp, 32) == hashlib.sha256(up).digest()
            assert read_all(inp) == random_bytes(down, 12)


# Clients in the far namespace, one thread each: each sends 8 bytes of length and its own
# random_bytes(N, 100 + i), expects the SHA-256 of it and then those bytes reversed, then EOF;
# at the end a line per client, "OK i <bytes read>" or "BAD i <bytes read or why>".
FAR_CLIENTS = """
import hashlib, sys, threading
import sslports
host, port, ca, clients, n = sys.argv[1:6]
port, clients, n = int(port), int(clients), int(n)
ctx = sslports.ssl_make_client_context()
sslports.ssl_load_verify_source(ctx, ca)
sslports.ssl_set_verify(ctx, True)
sslports.ssl_set_verify_hostname(ctx, True)

def one(i):
    try:
        up = hashlib.shake_256((100 + i).to_bytes(8, "big")).digest(n)
        inp, out = sslports.ssl_connect(host, port, ctx, timeout=120)
        with inp, out:
            out.write(len(up).to_bytes(8, "big") + up)
            out.flush()
            got = bytearray()
            while chunk := inp.read1(65536):
                got += chunk
        ok = got[:32] == hashlib.sha256(up).digest() and got[32:] == up[::-1]
        results.append(f"{'OK' if ok else 'BAD'} {i} {len(got)}")
    except Exception as exc:
        results.append(f"BAD {i} {exc!r}")

results = []
threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(results))  # (one print: threads' prints could interleave)
"""


def test_a_threaded_server_serves_many_clients_across(lossy: Link, creds: dict[str, Path]) -> None:
    """A server with a thread per connection (ssl_listen, ssl_accept) in this namespace and
    twelve clients at once in the far one, all through the same dropping queues: each
    uploads 384 KiB and gets its SHA-256 and the bytes reversed back, whole."""
    clients, n = 12, 384 * 1024
    listener = sslports.ssl_listen(0, 16, True, lossy.near, server_context(creds))
    port = sslports.ssl_addresses(listener, True)[1]
    errors: list[BaseException] = []

    def serve(inp: Any, out: Any) -> None:
        try:
            with inp, out:
                inp.settimeout(TIMEOUT)
                out.settimeout(TIMEOUT)
                up = read_exactly(inp, int.from_bytes(read_exactly(inp, 8), "big"))
                out.write(hashlib.sha256(up).digest())
                out.write(up[::-1])
        except BaseException as exc:  # (reported by the test)
            errors.append(exc)

    servers: list[threading.Thread] = []

    def accept_all() -> None:
        for _ in range(clients):
            try:
                inp, out = sslports.ssl_accept(listener)
            except BaseException as exc:  # (reported by the test)
                errors.append(exc)
                continue
            servers.append(threading.Thread(target=serve, args=(inp, out)))
            servers[-1].start()

    acceptor = threading.Thread(target=accept_all, daemon=True)  # (stuck if clients failed)
    acceptor.start()
    try:
        argv = [sys.executable, "-c", FAR_CLIENTS, lossy.near, str(port), str(creds["ca"])]
        done = subprocess.run(
            lossy.inside(*argv, str(clients), str(n)),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        acceptor.join(TIMEOUT)
        for thread in servers:
            thread.join(TIMEOUT)
    finally:
        listener.close()
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(
        f"OK {i} {32 + n}" for i in range(clients)
    ), (done.stdout, errors)
    assert not errors, errors


def test_connecting_to_a_host_that_does_not_answer_times_out(link: Link) -> None:
    """An address on the link's subnet that no host has: nothing answers the connection's
    ARP queries, so the kernel gives up only after about three seconds (EHOSTUNREACH); with a
    0.5 s timeout, ssl_connect raises TimeoutError (an SSLNetworkError) first, and leaves no
    socket open."""
    absent = link.far.rsplit(".", 1)[0] + ".77"
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(TimeoutError) as info:
        sslports.ssl_connect(absent, 443, sslports.ssl_make_client_context(), timeout=0.5)
    assert isinstance(info.value, sslports.SSLNetworkError)
    assert "timed out" in str(info.value)
    assert len(os.listdir("/proc/self/fd")) == fds
