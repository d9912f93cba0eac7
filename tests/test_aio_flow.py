"""sslports.aio flow control: back-pressure both ways, reads and writes of every shape, and a
renegotiation in the middle of a stream."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from conftest import LOCAL, read_exactly, run_in_thread
from test_aio import LOOPS, client_context, run, server_context

import sslports
from sslports import SSLError, aio

MIB = 1 << 20


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_back_pressure_both_ways(loop_kind: str) -> None:
    """A client that stops reading: its unread plaintext stays bounded (the transport stops
    reading) and the server's drain() waits (the sender is paused), then all of it arrives."""
    total = 48 * MIB
    chunk = bytes(range(256)) * 256  # 64 KiB

    async def main() -> None:
        sent = 0

        async def flood(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
            nonlocal sent
            while sent < total:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
            await writer.shutdown()
            writer.close()

        server = await aio.start_ssl_server(flood, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection("localhost", port, client_context())
            conn: Any = reader._sslports_conn
            deadline = time.monotonic() + 10
            while not conn.paused_reading:  # the client reads nothing meanwhile
                assert time.monotonic() < deadline, "the transport never stopped reading"
                await asyncio.sleep(0.01)
            while True:  # the kernel's buffers fill up, then the server's drain() waits
                stalled = sent
                await asyncio.sleep(0.2)
                if sent == stalled or time.monotonic() > deadline:
                    break
            assert sent == stalled < total, "the server's drain() did not wait"
            assert len(conn.plain) <= aio._READ_HIGH + aio._BUF
            digest = hashlib.sha1()
            got = 0
            while True:
                data = await reader.read(MIB)
                if not data:
                    break
                got += len(data)
                digest.update(data)
            assert got == total
            assert digest.digest() == hashlib.sha1(chunk * (total // len(chunk))).digest()
            writer.close()
            await writer.wait_closed()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_reads_of_every_shape_and_writes_of_every_buffer(loop_kind: str) -> None:
    """Exact-size reads return the record as it came; larger and smaller reads split and join
    it; bytearray, memoryview and empty writes work; a write after close raises."""

    async def echo(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await aio.start_ssl_server(echo, "127.0.0.1", 0, server_context())
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await aio.open_ssl_connection("localhost", port, client_context())
            writer.write(b"exact")
            assert await reader.readexactly(5) == b"exact"
            writer.write(bytearray(b"split-me"))
            assert await reader.readexactly(5) == b"split"
            assert await reader.readexactly(3) == b"-me"
            writer.write(memoryview(b"..abc..")[2:5])
            writer.write(b"")
            writer.writelines([b"d", b"e", b"f\n"])
            assert await reader.readline() == b"abcdef\n"
            assert await reader.readexactly(0) == b""
            writer.write(b"xy")
            assert await reader.read(1) == b"x"
            assert await reader.read(10) == b"y"
            await writer.shutdown()
            assert await reader.read() == b""
            assert reader.at_eof()
            writer.close()
            with pytest.raises(SSLError, match="closed"):
                writer.write(b"late")
            await writer.wait_closed()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_server_initiated_renegotiation_mid_stream(pki: Any, loop_kind: str) -> None:
    """TLS 1.2: a (blocking) sslports server asks the aio client for a certificate by
    renegotiating while the client is still sending 300 kB; the client takes part from its
    reads and writes, nothing is lost or reordered, and data flows afterwards."""
    bulk = hashlib.shake_256(b"bulk").digest(300_000)
    listener = sslports.ssl_listen(0, 4, True, LOCAL, pki.server_context("tls12"))
    port = sslports.ssl_addresses(listener, True)[1]

    def serve() -> dict[str, Any]:
        inp, out = sslports.ssl_accept(listener)
        with inp, out:
            result: dict[str, Any] = {"before": inp.readline()}
            sslports.ssl_try_verify(inp, True)  # the renegotiation, with the bulk in flight
            result["verified"] = sslports.ssl_peer_verified(inp)
            result["bulk_ok"] = read_exactly(inp, len(bulk)) == bulk
            result["after"] = inp.readline()
            out.write(b"answer\n")
            out.flush()
            result["tail"] = inp.readline()
            return result

    join = run_in_thread(serve)

    async def main() -> tuple[bytes, dict[str, Any]]:
        reader, writer = await aio.open_ssl_connection(
            LOCAL, port, pki.client_context("tls12"), timeout=20
        )
        writer.write(b"before\n")
        await writer.drain()
        for i in range(0, len(bulk), 10_000):
            writer.write(bulk[i : i + 10_000])
            await writer.drain()
        writer.write(b"after\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), 20)
        writer.write(b"tail\n")
        await writer.drain()
        result = await asyncio.to_thread(join, 20)
        writer.close()
        await writer.wait_closed()
        return answer, result

    try:
        answer, result = run(loop_kind, main)
    finally:
        listener.close()
    assert answer == b"answer\n"
    assert result == {
        "before": b"before\n",
        "verified": False,  # no client certificate: ssl_try_verify lets it go on
        "bulk_ok": True,
        "after": b"after\n",
        "tail": b"tail\n",
    }
