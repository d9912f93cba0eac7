"""Ports, connection and C pointer collected together, in whatever order the collector picks.

When a program drops open ports that sit in a reference cycle (or exits with them open), the
cyclic collector runs every finalizer of that garbage in an order of its choosing. A port's
close() must then never reach a C connection that was freed before it: a connection finalized
with a port still open leaves freeing to that port's last close, and a port closing after an
explicit free() only closes the transport.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import LOCAL, PIPE_PAIR_SCRIPT

import sslports as sp

pytestmark = pytest.mark.skipif(not sp.ssl_available, reason="libssl not loadable")
PEM = str(sp.TEST_PEM)


def _connected(echo_server: Any) -> tuple[Any, Any]:
    server = echo_server(_server_context())
    inp, out = sp.ssl_connect(LOCAL, server.port)
    out.write(b"ping")
    out.flush()
    assert inp.read(4) == b"ping"
    return inp, out


def _server_context() -> Any:
    ctx = sp.ssl_make_server_context()
    sp.ssl_load_certificate_chain(ctx, PEM)
    sp.ssl_load_private_key(ctx, PEM)
    return ctx


def test_ports_close_cleanly_after_the_connection_was_freed(echo_server: Any) -> None:
    inp, out = _connected(echo_server)
    conn = inp._sslports_conn
    conn.free()  # what the collector may do first
    assert conn.ptr is None
    out.close()
    inp.close()
    with pytest.raises(ValueError):
        inp.read(1)
    with pytest.raises(ValueError):
        out.write(b"x")
    conn.free()  # twice is harmless


def test_freed_connection_refuses_io_before_close(echo_server: Any) -> None:
    inp, out = _connected(echo_server)
    inp._sslports_conn.free()
    with pytest.raises(ValueError):
        inp.read(1)
    with pytest.raises(ValueError):
        out.write(b"x" * 20000)  # a full record: reaches the connection, not just the buffer
    out.close()
    inp.close()


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # the unclosed socket says so, as files do
def test_unclosed_ports_in_a_cycle_are_collected(echo_server: Any) -> None:
    inp, out = _connected(echo_server)
    inp.partner, out.partner = out, inp
    conn = inp._sslports_conn
    conn.me = conn
    del inp, out, conn
    gc.collect()  # finalizes ports and connection in one batch; must not crash or raise


SCRIPT = textwrap.dedent(
    """
    import threading
    import sslports as sp
    from sslports import _binding

    pem = str(sp.TEST_PEM)
    ctx = sp.ssl_make_server_context()
    sp.ssl_load_certificate_chain(ctx, pem)
    sp.ssl_load_private_key(ctx, pem)
    listener = sp.ssl_listen(0, 5, True, "127.0.0.1", ctx)
    port = sp.ssl_addresses(listener, True)[1]

    def serve():
        i, o = sp.ssl_accept(listener)
        o.write(i.read(5))
        o.flush()
        i.read()

    threading.Thread(target=serve, daemon=True).start()
    inp, out = sp.ssl_connect("127.0.0.1", port)
    out.write(b"hello")
    out.flush()
    assert inp.read(5) == b"hello"
    inp.partner, out.partner = out, inp
    conn = inp._sslports_conn
    ptr = conn.ptr
    err = _binding.ffi.new("sp_err *")
    print("exiting with the ports open", flush=True)
    """
)


@pytest.mark.parametrize("round_", range(3))
def test_exit_with_open_ports_in_a_cycle(round_: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-c", SCRIPT], capture_output=True, timeout=60
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert b"exiting with the ports open" in proc.stdout
    assert "Exception ignored" not in err, err


STUCK_SENDER = PIPE_PAIR_SCRIPT + textwrap.dedent(
    """
    (ci, co), _server = pipe_pair()
    if sys.argv[1] == "timeout":
        co.settimeout(0.5)
    try:
        co.write(b"x" * int(sys.argv[2]))  # more than the pipe holds: nobody reads it
        co.flush()
    except TimeoutError:
        pass
    print("exiting", flush=True)
    """
)


@pytest.mark.parametrize(("how", "size"), [("flush", 100_000), ("timeout", 2_000_000)])
def test_exit_with_a_sender_stuck_in_a_write(how: str, size: int) -> None:
    """A close_original stream connection whose sender thread is stuck in a write of its
    buffered output stream (a peer that does not read) at Python's exit: after the exit's
    drain (5 s), the port's finalizer closed that stream, whose lock the frozen daemon thread
    holds, and CPython aborted ("Fatal Python error: _enter_buffered_busy", SIGABRT)."""
    proc = subprocess.run(
        [sys.executable, "-c", STUCK_SENDER, how, str(size)], capture_output=True, timeout=60
    )
    err = proc.stderr.decode()
    assert b"exiting" in proc.stdout
    assert proc.returncode == 0, err
    assert "Fatal Python error" not in err


@contextlib.contextmanager
def _stream_connection() -> Iterator[tuple[Any, Any, tuple[Any, Any]]]:
    """(inp, out, (server inp, server out)): ports_to_ssl_ports over a socketpair's streams,
    the client saying goodbye at close (shutdown_on_close), the server reading strictly
    (strict_eof); the server's ports and the sockets are closed afterwards."""
    a, b = socket.socketpair()
    ctx = _server_context()
    served: list[Any] = []

    def serve() -> None:
        streams = (b.makefile("rb"), b.makefile("wb"))
        served.extend(
            sp.ports_to_ssl_ports(
                *streams, mode="accept", context=ctx, close_original=True, strict_eof=True
            )
        )

    t = threading.Thread(target=serve)
    t.start()
    try:
        mine = list(
            sp.ports_to_ssl_ports(
                a.makefile("rb"), a.makefile("wb"), mode="connect", shutdown_on_close=True,
                close_original=True,
            )
        )  # fmt: skip
        t.join(30)
        # (popped: this frame keeps no reference, so that the caller can drop them)
        yield mine.pop(0), mine.pop(0), (served[0], served[1])
    finally:
        t.join(30)
        for p in served:
            p.close()
        a.close()
        b.close()


def test_stream_ports_that_say_goodbye_close_cleanly_after_the_connection_was_freed() -> None:
    """ports_to_ssl_ports with shutdown_on_close: a port closing after the connection was freed
    (free() called first) cannot send its close_notify any more, and closes all the same (it
    raised TypeError from C: no pointer)."""
    with _stream_connection() as (inp, out, _server):
        conn = out._sslports_conn
        conn.free()
        out.close()
        inp.close()
        assert out.closed and inp.closed and conn.ptr is None


def test_stream_ports_finalized_after_their_connection_still_say_goodbye() -> None:
    """ports_to_ssl_ports with shutdown_on_close, the connection finalized before its ports (a
    free-threaded CPython 3.14 did so at exit, in a child that served on its stdin and stdout
    and ended without closing its ports): the write the port held and the close_notify still
    reach the peer, which reads them and a clean end (strict_eof); the last close frees the
    connection."""
    with _stream_connection() as (inp, out, (sin, _sout)):
        conn = out._sslports_conn
        out.write(b"HELLO\n")  # held in the port: not sent yet
        conn.__del__()  # what the collector may run first
        out.close()
        inp.close()
        assert conn.ptr is None
        assert sin.read() == b"HELLO\n"  # then the close_notify: no "unexpected eof"


@contextlib.contextmanager
def _unraisable() -> Iterator[list[str]]:
    """What finalizers raised while this runs ("Exception ignored ..."; Python 3.13 and later
    print it, earlier ones drop it outside dev mode), as text."""
    seen: list[str] = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(f"{u.err_msg}: {u.exc_type.__name__}: {u.exc_value}")
    try:
        yield seen
    finally:
        sys.unraisablehook = old


def _drop_in_a_cycle(*ports: Any) -> None:
    """Put `ports` in a reference cycle, for the collector to find once the caller drops
    them: it clears every weak reference to that garbage before it runs a finalizer, and it
    runs the finalizers in an order of its choosing."""
    cycle: list[Any] = [*ports]
    cycle.append(cycle)


@pytest.mark.parametrize("how", ["socket", "ssl_connect timeout", "settimeout", "streams"])
def test_ports_collected_in_a_cycle_still_send_what_they_held(echo_server: Any, how: str) -> None:
    """Ports dropped unclosed in a reference cycle: the collector's close() still sends the
    write the output port held, on every path. Two ways it was lost:
    - from Python 3.12 the socket is such garbage too, and the collector could run its own
      finalizer (which closes it) before the ports' (Connection.live_transports);
    - a port with a timeout or over streams sent its flush through a weak reference to
      itself, which the collector had already cleared: close() raised ValueError ("I/O
      operation on closed SSL port"), which Python 3.13 and later print as "Exception ignored
      while finalizing file" (earlier ones drop it: `seen` stays empty there)."""
    got: list[bytes] = []
    if how == "streams":
        with _stream_connection() as (inp, out, (sin, _sout)):
            sin.settimeout(10.0)  # (the bytes lost, it would wait for ever)
            out.write(b"HELLO\n")  # held in the port: not sent yet
            with _unraisable() as seen:
                _drop_in_a_cycle(inp, out)
                del inp, out
                gc.collect()
            got.append(sin.read())
    else:
        received = threading.Event()

        def handler(i: Any, o: Any) -> None:
            got.append(i.read())
            received.set()

        server = echo_server(_server_context(), handler)
        timeout = 30.0 if how == "ssl_connect timeout" else None
        inp, out = sp.ssl_connect(LOCAL, server.port, timeout=timeout)
        if how == "settimeout":
            out.settimeout(30.0)
        out.write(b"HELLO\n")
        with _unraisable() as seen:
            _drop_in_a_cycle(inp, out)
            del inp, out
            gc.collect()
        assert received.wait(30)
    assert seen == []
    assert got == [b"HELLO\n"]


def test_closed_connections_leave_no_transport_held(echo_server: Any) -> None:
    """Connection.live_transports holds a transport only while its ports are open: closed
    either way round, abandoned, over streams, or collected in a cycle, none stays (each
    would hold its socket or streams for ever); a failed handshake never enters."""
    live = sp.ports.Connection.live_transports
    server = echo_server(_server_context())
    made = []
    for order in ("out first", "in first", "abandoned"):
        inp, out = sp.ssl_connect(LOCAL, server.port, timeout=30 if order == "in first" else None)
        made.append(inp._sslports_conn.transport)
        assert made[-1] in live
        if order == "abandoned":
            sp.ssl_abandon_port(out)
            sp.ssl_abandon_port(inp)
        else:
            for p in (out, inp) if order == "out first" else (inp, out):
                p.close()
        assert made[-1] not in live
    with _stream_connection() as (inp, out, _server):
        made.append(out._sslports_conn.transport)
        assert made[-1] in live
        _drop_in_a_cycle(inp, out)
        del inp, out
        gc.collect()
    assert not live & set(made)
    before = set(live)  # (the echo server's own side may still be closing: it only leaves)
    with pytest.raises(sp.SSLError):
        sp.ssl_connect(LOCAL, server.port, sp.ssl_secure_client_context(), timeout=30)
    assert not set(live) - before
