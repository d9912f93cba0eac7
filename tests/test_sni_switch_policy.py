"""A server's check of its client's name follows an SNI switch, and a client port whose own
verification policy was lowered files no more sessions into its context's cache (security
review, 2026-12-07).

API.md section 4: "After a switch, the ALPN and verify settings of the context switched to
apply." The name check (ssl_set_verify_hostname on a server context, with the name given to
ports_to_ssl_ports / ssl_wrap_socket in accept mode) did not: it was set up from the listener's
context alone, so a switch to a context that checks names checked none (any client certificate
of the trusted CA, or none at all, was accepted), and a switch away from one still checked the
first context's name.
"""

from __future__ import annotations

import ctypes
import socket
import threading
from typing import Any, Optional

import pytest
from certs import (
    LOCAL,
    VERSIONS,
    Issued,
    Server,
    chain_file,
    client_context,
    key_file,
    make_cert,
    outcome,
    server_context,
    wrap_client,
)

import sslports
from sslports import SSLError, SSLNetworkError, _binding

ROOT = make_cert("Switch Root", ca=True)
SERVER = make_cert("server", issuer=ROOT, dns=["a.example", "b.example", "c.example"])
ALICE = make_cert("alice", issuer=ROOT, dns=["alice.example"])
BOB = make_cert("bob", issuer=ROOT, dns=["bob.example"])
ROOTS = [chain_file(ROOT)]


def _contexts(version: str, first_checks_name: bool) -> dict[str, Any]:
    """The listener's context ("a.example") and the two an SNI callback switches to:
    "b.example" verifies clients and checks their name, "c.example" verifies them only."""
    first = server_context(version, SERVER, verify="set" if first_checks_name else None,
                           roots=ROOTS)  # fmt: skip
    if first_checks_name:
        sslports.ssl_set_verify_hostname(first, True)
    names = server_context(version, SERVER, verify="set", roots=ROOTS)
    sslports.ssl_set_verify_hostname(names, True)
    chain_only = server_context(version, SERVER, verify="set", roots=ROOTS)
    switch = {"b.example": names, "c.example": chain_only}
    sslports.ssl_set_server_name_identification_callback(first, switch.get)
    return {"a.example": first, **switch}


def _accept_wrapped(
    context: Any, sni: str, identity: Optional[Issued], version: str, hostname: str
) -> Any:
    """A client presenting `identity` (or nothing) connects with SNI `sni`; the server wraps
    the accepted socket with hostname=`hostname`. The server's outcome: (verified, names)
    or the exception it raised."""
    with socket.create_server((LOCAL, 0)) as listener:
        result: dict[str, Any] = {}

        def serve() -> None:
            sock, _ = listener.accept()
            try:
                inp, out = sslports.ssl_wrap_socket(
                    sock, mode="accept", context=context, hostname=hostname, timeout=10
                )
            except Exception as exc:
                sock.close()
                result["server"] = exc
                return
            with inp, out:
                result["server"] = (
                    sslports.ssl_peer_verified(inp),
                    sslports.ssl_peer_certificate_hostnames(inp),
                )
                out.write(b"ok")

        t = threading.Thread(target=serve)
        t.start()
        ctx = client_context(version, roots=ROOTS, identity=[identity] if identity else [])
        try:
            inp, out = wrap_client(listener.getsockname()[1], ctx, sni)
            with inp, out:
                inp.read()
        except (SSLError, OSError):
            pass  # (the server's refusal)
        t.join(20)
        return result["server"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_switch_to_a_context_that_checks_names_checks_the_name(version: str) -> None:
    contexts = _contexts(version, first_checks_name=False)
    first = contexts["a.example"]
    # alice's certificate is valid but names alice, not bob: refused as by that context itself
    for context, sni in ((contexts["b.example"], "b.example"), (first, "b.example")):
        refused = _accept_wrapped(context, sni, ALICE, version, "bob.example")
        assert isinstance(refused, SSLNetworkError), refused
        assert refused.verify_message is not None
        assert refused.verify_message.startswith("hostname mismatch"), refused
    # ... and bob's is accepted, verified
    assert _accept_wrapped(first, "b.example", BOB, version, "bob.example") == (
        True,
        ["bob.example"],
    )
    # a client without a certificate is refused: a name check needs one
    refused = _accept_wrapped(first, "b.example", None, version, "bob.example")
    assert isinstance(refused, SSLNetworkError), refused
    assert "peer did not return a certificate" in str(refused)
    # the context it stays with checks no name
    assert _accept_wrapped(first, "a.example", None, version, "bob.example") == (False, [])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_switch_away_from_a_context_that_checks_names_checks_none(version: str) -> None:
    """The listener's context checks names; the one switched to verifies the chain only:
    alice's valid certificate is accepted and verified there (it was refused for not naming
    bob, whom the first context would check)."""
    contexts = _contexts(version, first_checks_name=True)
    first = contexts["a.example"]
    assert _accept_wrapped(first, "c.example", ALICE, version, "bob.example") == (
        True,
        ["alice.example"],
    )
    refused = _accept_wrapped(first, "a.example", ALICE, version, "bob.example")
    assert isinstance(refused, SSLNetworkError) and refused.verify_message is not None
    assert refused.verify_message.startswith("hostname mismatch"), refused


@pytest.mark.parametrize("version", VERSIONS)
def test_ssl_accept_has_no_name_for_a_context_switched_to_that_checks_names(
    version: str,
) -> None:
    """ssl_accept has no name to check: a listener whose own context checks names refuses
    every client (API.md section 3); one that switches to such a context accepted them all."""
    contexts = _contexts(version, first_checks_name=False)
    server = Server(contexts["a.example"])
    try:
        for sni in ("b.example", "c.example"):
            join = server.accept(lambda i, o: sslports.ssl_peer_verified(i))
            ctx = client_context(version, roots=ROOTS, identity=[ALICE])
            try:
                inp, out = wrap_client(server.port, ctx, sni)
                with inp, out:
                    inp.read()
            except (SSLError, OSError):
                pass
            result = outcome(join)
            if sni == "b.example":
                assert isinstance(result, SSLNetworkError), result
                assert str(result) == (
                    "ssl_accept: accept failed (hostname not provided for verification)"
                )
            else:  # the chain-only context: verified
                assert result is True
    finally:
        server.close()


def test_a_session_made_under_a_port_s_lowered_policy_is_not_cached() -> None:
    """A client context requires verification; on one of its ports the caller asks only to
    be told (ssl_try_verify on the port). The server then renegotiates (TLS 1.2) with a
    certificate the client does not trust, which that port accepts, as asked. The session of
    that renegotiation was filed in the context's cache, and the context's next connection
    resumed it: a handshake under the strict policy with nothing verified. Now a port's own
    policy change stops its filing: the next connection resumes the first, verified session,
    or none."""
    rogue = make_cert("localhost", dns=["localhost"])  # self-signed: not trusted
    good = make_cert("localhost", issuer=ROOT, dns=["localhost"])
    srv = server_context("tls12", good, verify="try", roots=ROOTS)
    from sslports.libssl import libssl

    assert libssl is not None
    use_cert, use_key = libssl.SSL_use_certificate_file, libssl.SSL_use_PrivateKey_file
    for fn in (use_cert, use_key):
        fn.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    server = Server(srv)

    def swap_and_renegotiate(inp: Any, out: Any) -> None:
        assert inp.read(4) == b"ping"
        ssl = _binding.lib.sp_conn_ssl(inp._sslports_conn.ptr)
        address = int(_binding.ffi.cast("uintptr_t", ssl))
        pem = 1  # SSL_FILETYPE_PEM
        assert use_cert(address, str(chain_file(rogue)).encode(), pem) == 1
        assert use_key(address, str(key_file(rogue)).encode(), pem) == 1
        inp.settimeout(10)
        sslports.ssl_try_verify(inp, True)  # a server's renegotiation (TLS 1.2)
        out.write(b"done")
        out.flush()
        inp.read(1)

    try:
        cli = client_context("tls12", roots=ROOTS)
        sslports.ssl_seal_context(cli)
        join = server.accept(swap_and_renegotiate)
        inp, out = sslports.ssl_connect("localhost", server.port, cli, timeout=10)
        with inp, out:
            assert sslports.ssl_peer_verified(inp)
            sslports.ssl_try_verify(inp, True)  # this port: tell, do not refuse
            out.write(b"ping")
            out.flush()
            assert inp.read(4) == b"done"
            assert not sslports.ssl_peer_verified(inp)  # the rogue certificate, as asked
        join()
        join = server.accept(lambda i, o: o.write(b"second"))
        inp, out = sslports.ssl_connect("localhost", server.port, cli, timeout=10)
        with inp, out:
            assert inp.read() == b"second"
            assert sslports.ssl_peer_verified(inp)
            assert sslports.ssl_peer_subject_name(inp) is not None
        join()
    finally:
        server.close()
