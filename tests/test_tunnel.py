"""TLS inside TLS: ``ports_to_ssl_ports`` over the ports of an sslports connection.

A tunnel through a TLS proxy is this shape. The inner connection's sender thread writes to the
outer output port while reads wait on the outer input port in another thread, which sslports'
ports allow (docs/guide/threading.md) and one ``ssl.SSLSocket``'s ``makefile()`` pair does not.
Both directions at once, more than a MiB each way, every pairing of TLS versions.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import LOCAL, MIB, random_bytes, read_exactly, run_in_thread, sha1

import sslports

LAYERS = [("tls13", "tls13"), ("tls12", "tls13"), ("tls13", "tls12")]


@pytest.mark.parametrize(("outer", "inner"), LAYERS)
def test_tls_inside_tls_both_directions(pki: Any, echo_server: Any, outer: str, inner: str) -> None:
    seen: dict[str, Any] = {}

    def tunnel_end(oin: Any, oout: Any) -> None:
        """The far end of the tunnel: an inner TLS server over the outer ports, echoing."""
        with oin, oout:
            iin, iout = sslports.ports_to_ssl_ports(
                oin, oout, mode="accept", context=pki.server_context(inner)
            )
            seen["inner"] = sslports.ssl_protocol_version(iin)
            server.echo(iin, iout)

    server = echo_server(pki.server_context(outer), tunnel_end)
    data = random_bytes(MIB + 4242, seed=7)
    oin, oout = sslports.ssl_connect(LOCAL, server.port, pki.client_context(outer))
    with oin, oout:
        iin, iout = sslports.ports_to_ssl_ports(
            oin,
            oout,
            mode="connect",
            context=pki.client_context(inner),
            hostname="localhost",
            shutdown_on_close=True,
        )
        assert sslports.ssl_protocol_version(oin) == outer
        assert sslports.ssl_protocol_version(iin) == inner

        def send() -> None:
            for i in range(0, len(data), 50_000):
                iout.write(data[i : i + 50_000])
            iout.flush()

        join = run_in_thread(send)
        got = read_exactly(iin, len(data))  # read while the writer writes
        join()
        iout.close()
        assert iin.read() == b""  # the far end answered our close_notify by closing
        iin.close()
    assert sha1(got) == sha1(data)
    assert seen["inner"] == inner
    server.stop()
    assert server.errors == []
