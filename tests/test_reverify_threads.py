"""A server's ssl_set_verify / ssl_try_verify on an established connection (TLS 1.2:
renegotiation; TLS 1.3: post-handshake authentication) alongside the connection's other uses,
as an independent audit exercised them:

* a thread of the server blocked reading the same connection (full duplex, API.md): the
  request's answer is processed by that read's pump, and the call returns; it waited for the
  read lock, which the blocked read holds, past its timeout and forever;
* a thread of the server blocked writing to a client that does not read: the call times out
  at its port's timeout (it waited for the write lock, which the blocked write holds,
  forever), and once the client reads, the write's bytes arrive whole and the call made again
  gets the answer;
* a call that timed out (the client not reading yet) and is called again before the client
  answers: the second waits for the answer to the first; it sent a second request (TLS 1.2:
  a second HelloRequest, which then failed the connection; TLS 1.3: "request sent").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LOCAL, run_in_thread

import sslports
from sslports import SSLError

TIMEOUT = 20.0


@pytest.fixture(params=["tls12", "tls13"])
def connection(request: pytest.FixtureRequest, pki: Any) -> Iterator[tuple[Any, ...]]:
    """(client in, client out, server in, server out): the client has a certificate the
    server trusts, and the server has not asked for it yet."""
    version = request.param
    sctx = sslports.ssl_make_server_context(
        version, private_key=("pem", str(pki.server_key)), certificate_chain=str(pki.server_chain)
    )
    sslports.ssl_load_verify_source(sctx, str(pki.ca_pem))
    cctx = sslports.ssl_make_client_context(
        version, private_key=("pem", str(pki.other_key)), certificate_chain=str(pki.other_chain)
    )
    with sslports.ssl_listen(0, 5, True, LOCAL, sctx) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        accept = run_in_thread(lambda: sslports.ssl_accept(listener))
        cin, cout = sslports.ssl_connect(LOCAL, port, cctx, timeout=TIMEOUT)
        sin, sout = accept(TIMEOUT)
    ports = (cin, cout, sin, sout)
    try:
        yield ports
    finally:
        for p in ports:
            p.close()


def test_verify_while_another_thread_reads(connection: tuple[Any, ...]) -> None:
    cin, cout, sin, sout = connection
    client_read = run_in_thread(lambda: cin.read1(100))  # answers the request at once
    server_read = run_in_thread(lambda: sin.read1(100))  # waits for the client's next bytes
    time.sleep(0.2)  # (both reads under way: not needed to pass, only to fail before)
    sout.settimeout(TIMEOUT)
    verify = run_in_thread(lambda: sslports.ssl_set_verify(sout, True))
    verify(TIMEOUT)  # (it waited for the blocked read forever)
    assert sslports.ssl_peer_verified(sin)
    cout.write(b"after")
    cout.flush()
    assert server_read(TIMEOUT) == b"after"
    sout.write(b"back")
    sout.flush()
    assert client_read(TIMEOUT) == b"back"


def test_verify_while_another_thread_writes_to_a_peer_that_does_not_read(
    connection: tuple[Any, ...],
) -> None:
    cin, _, sin, sout = connection
    big = os.urandom(1 << 20) * 32  # (more than the loopback socket buffers hold)
    server_write = run_in_thread(lambda: (sout.write(big), sout.flush()))
    time.sleep(0.5)  # (the write waits for the client: not needed to pass, only to fail before)
    sin.settimeout(1.0)
    verify = run_in_thread(lambda: sslports.ssl_try_verify(sin, True))
    with pytest.raises(TimeoutError, match=r"^ssl_try_verify: failed \(timed out\)$"):
        verify(TIMEOUT)  # (it waited for the write lock forever)
    received = bytearray()

    def client_reads() -> None:  # (answers the request on the way)
        while len(received) < len(big) and (data := cin.read1(1 << 16)):
            received.extend(data)

    client_read = run_in_thread(client_reads)
    server_write(TIMEOUT)
    client_read(TIMEOUT)
    assert received == big
    sin.settimeout(TIMEOUT)
    reader = run_in_thread(lambda: cin.read1(100))  # (TLS 1.2: the renegotiation's end)
    sslports.ssl_try_verify(sin, True)  # the answer to the request the write sent
    assert sslports.ssl_peer_verified(sin)
    sout.write(b"after")
    sout.flush()
    assert reader(TIMEOUT) == b"after"


def test_verify_called_again_after_a_timeout(connection: tuple[Any, ...]) -> None:
    cin, cout, sin, sout = connection
    sout.settimeout(0.3)  # the client does not read yet: no answer comes
    for _ in range(2):  # (the second sent another request, which failed)
        with pytest.raises(TimeoutError):
            sslports.ssl_try_verify(sout, True)
    received = bytearray()

    def client_reads() -> None:  # (reads the request, answers it, and every flight after)
        while data := cin.read1(100):
            received.extend(data)

    client_read = run_in_thread(client_reads)
    sout.settimeout(TIMEOUT)
    sslports.ssl_try_verify(sout, True)  # waits for the answer to the first request
    assert sslports.ssl_peer_verified(sin)
    cout.write(b"from the client")
    cout.flush()
    assert sin.read1(100) == b"from the client"
    sout.write(b"from the server")
    sout.close()
    sin.close()  # (the client's read ends at the close)
    client_read(TIMEOUT)
    assert received == b"from the server"


def test_a_timed_out_verify_is_a_timeout_error_naming_the_call(
    connection: tuple[Any, ...],
) -> None:
    _, _, _, sout = connection
    sout.settimeout(0.2)
    with pytest.raises(SSLError, match=r"^ssl_set_verify: failed \(timed out\)$") as info:
        sslports.ssl_set_verify(sout, True)
    assert isinstance(info.value, TimeoutError)


def test_two_threads_verifying_at_once_both_get_the_answer(connection: tuple[Any, ...]) -> None:
    """Two server threads ask for the client's certificate at once: each looked whether a
    request was pending, both saw none, both asked. The second request was refused (TLS 1.3:
    "request sent"), and its failure cleared the first one's pending mark, so the first call
    stopped waiting before the client answered and raised "peer certificate did not verify"
    for a valid certificate. The second ask now joins the first (sp_request_reauth, in C,
    where the two cannot interleave): both calls return, the peer verified. The window is
    made certain here: the second request is made in C while the first is pending."""
    cin, _, sin, sout = connection
    lib = sslports._binding.lib
    ptr = sin._sslports_conn.ptr
    sout.settimeout(TIMEOUT)
    first = run_in_thread(lambda: sslports.ssl_set_verify(sout, True))
    deadline = time.monotonic() + TIMEOUT
    while not lib.sp_reauth_pending(ptr) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert lib.sp_reauth_pending(ptr)  # the first request is out; the client has not read it
    flags = lib.sp_conn_get_verify(ptr) | lib.SP_VERIFY_PEER | lib.SP_VERIFY_REQUIRE
    err = sslports._binding.ffi.new("sp_err *")
    assert lib.sp_request_reauth(ptr, flags, err) == 1  # (joined: before, 0, "request sent")
    assert lib.sp_reauth_pending(ptr)  # (still the first's: before, cleared)
    time.sleep(0.2)  # the client reads (and so answers) only now
    client_read = run_in_thread(lambda: cin.read1(100))
    first(TIMEOUT)
    sslports.ssl_set_verify(sout, True)  # (the second thread's call: answered already)
    assert sslports.ssl_peer_verified(sin)
    sout.write(b"verified")
    sout.flush()
    assert client_read(TIMEOUT) == b"verified"


def test_the_cipher_after_a_failed_renegotiation_is_no_placeholder(pki: Any) -> None:
    """TLS 1.2: the server asks a client without a certificate for one (a renegotiation),
    which fails the connection. ssl_cipher_name then said "(NONE)", OpenSSL's placeholder,
    as if a suite had that name; it says "" (no suite), as before any handshake."""
    sctx = sslports.ssl_make_server_context(
        "tls12", private_key=("pem", str(pki.server_key)), certificate_chain=str(pki.server_chain)
    )
    sslports.ssl_load_verify_source(sctx, str(pki.ca_pem))
    with sslports.ssl_listen(0, 5, True, LOCAL, sctx) as listener:
        port = sslports.ssl_addresses(listener, True)[1]
        accept = run_in_thread(lambda: sslports.ssl_accept(listener))
        cin, cout = sslports.ssl_connect(LOCAL, port, "tls12", timeout=TIMEOUT)
        sin, sout = accept(TIMEOUT)
    with cin, cout, sin, sout:
        before = sslports.ssl_cipher_name(sin)
        assert before.startswith("ECDHE-")
        client_read = run_in_thread(lambda: cin.read(1))  # (answers the HelloRequest)
        sin.settimeout(TIMEOUT)
        with pytest.raises(SSLError, match="ssl_set_verify"):
            sslports.ssl_set_verify(sin, True)
        with pytest.raises(SSLError):
            client_read(TIMEOUT)
        # (OpenSSL 3.0 has no suite then; a later one may keep the first handshake's)
        assert sslports.ssl_cipher_name(sin) in ("", before)
