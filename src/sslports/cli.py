"""The ``sslports`` command line: a TLS client and server for testing, digests and a demo.

Run it as ``python -m sslports COMMAND`` or ``sslports COMMAND``; ``COMMAND --help`` tells
more.

* ``connect HOST:PORT`` -- like ``openssl s_client``: a handshake summary on stderr, then
  stdin and stdout piped to the connection.
* ``serve`` -- like ``openssl s_server``: ``--echo``, ``--www`` (a status page) or
  ``--dir PATH`` (files over HTTP/1.0).
* ``sha1 FILE...`` / ``md5 FILE...`` -- ``sha1sum`` / ``md5sum`` compatible, with ``-c``.
* ``demo`` -- a server and its clients in one process on the bundled test certificate.
* ``info`` -- versions, and what this OpenSSL build supports.

HOW THE COMMANDS CLOSE CONNECTIONS

``ssl_connect`` / ``ssl_accept`` ports never send close_notify (as in Racket). ``connect``
needs to tell the server that stdin ended, so it opens the TCP connection itself and runs TLS
over it with ``ports_to_ssl_ports(..., shutdown_on_close=True)``, the documented way to get a
close_notify. ``serve`` uses ``ssl_listen`` / ``ssl_accept``; its HTTP replies carry a
``Content-Length`` (clients never depend on a close_notify) and it closes the connection right
after each one, so a client that reads until the server closes gets its EOF at once. A reply
still on its way is not cut short by a reset: the ports' last close lingers until it has left
(README, "EOF and close_notify").

ERRORS

Expected failures (refused connections, verification failures, missing files, bad arguments)
print one line ``sslports: error: ...`` on stderr and exit with status 1 (2 for usage errors);
Ctrl-C exits with 130. Neither prints a traceback. ``SSLPORTS_DEBUG=1`` in the environment
re-raises unexpected exceptions so that their traceback shows.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import html
import io
import logging
import mimetypes
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, TextIO, Union

from . import (
    TEST_PEM,
    SSLClientContext,
    SSLError,
    SSLInputPort,
    SSLListener,
    SSLNetworkError,
    SSLOutputPort,
    SSLServerContext,
    _binding,
    _digest,
    ports_to_ssl_ports,
    ssl_accept,
    ssl_addresses,
    ssl_channel_binding,
    ssl_cipher_name,
    ssl_connect,
    ssl_default_channel_binding,
    ssl_default_verify_sources,
    ssl_get_alpn_selected,
    ssl_listen,
    ssl_load_certificate_chain,
    ssl_load_default_verify_sources,
    ssl_load_private_key,
    ssl_load_suggested_certificate_authorities,
    ssl_load_verify_source,
    ssl_make_client_context,
    ssl_make_server_context,
    ssl_max_client_protocol,
    ssl_max_server_protocol,
    ssl_peer_certificate_hostnames,
    ssl_peer_check_hostname,
    ssl_peer_issuer_name,
    ssl_peer_subject_name,
    ssl_peer_verified,
    ssl_protocol_version,
    ssl_seal_context,
    ssl_session_reused,
    ssl_set_ciphers,
    ssl_set_server_alpn,
    ssl_set_server_name_identification_callback,
    ssl_set_verify,
    ssl_set_verify_hostname,
    ssl_try_verify,
    ssl_wrap_socket,
    supported_client_protocols,
    supported_server_protocols,
)
from ._version import __version__
from .context import encode_alpn
from .net import _accept_tcp, _accepted_handshake, _check_hostname_arg, _host_of

__all__ = ["main"]

PROG = "sslports"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# The cipher policy of ssl_secure_client_context, for secure contexts built here by hand.
_SECURE_CIPHERS = "DEFAULT:!aNULL:!eNULL:!LOW:!EXPORT:!SSLv2"
_CHUNK = 65536
_CHANNEL_BINDINGS = ("tls-unique", "tls-exporter", "tls-server-end-point")


class CLIError(Exception):
    """An expected failure: reported as one ``sslports: error: ...`` line, then exit 1.

    :param message: what went wrong, for a person.
    :param status: the exit status.
    """

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


class _Stop(BaseException):
    """Raised in the main thread by the SIGTERM handler of ``serve``: stop like Ctrl-C."""


# -- output helpers ------------------------------------------------------------------------

_stderr_lock = threading.Lock()
# Control characters: a log line carries what peers chose (a request's path and method, the
# names in a certificate), whose escape sequences would reach the user's terminal (retitle it,
# clear it, fake lines), as Python's http.server escapes them in its log.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _say(line: str, stream: Optional[TextIO] = None) -> None:
    """Print one whole line to stderr (or `stream`), never interleaved with another thread,
    its control characters escaped (\\x1b)."""
    target = stream if stream is not None else sys.stderr
    if target is None:  # (started with stderr closed: the command runs on, unheard)
        return
    line = _CONTROL.sub(_escape_control, line)
    with _stderr_lock:
        try:
            target.write(line + "\n")
            target.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not end the server
            pass


def _error_line(message: str) -> None:
    _say(f"{PROG}: error: {message}")


def _reason(exc: BaseException) -> str:
    """The message of a library exception without its leading ``function_name: ``."""
    text = str(exc) or type(exc).__name__
    head, sep, rest = text.partition(": ")
    if sep and re.fullmatch(r"[a-z_0-9]+", head):
        return rest
    return text


def _detail(exc: BaseException) -> str:
    """The parenthesised detail of ``func: what failed (detail)``, else the whole reason."""
    reason = _reason(exc)
    match = re.fullmatch(r"[^(]*failed \((.*)\)", reason, re.DOTALL)
    return match.group(1) if match else reason


def _os_error_text(exc: OSError) -> str:
    """``name: No such file or directory`` instead of ``[Errno 2] ...: 'name'``."""
    if isinstance(exc, SSLError):
        return str(exc)
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {what}"
    return what


class _LogLines(logging.Handler):
    """The library's log records (a key log file it cannot append to: sni.py) on stderr, one
    line each and each text once per run (a key log line comes five times per connection),
    with the exception's reason and no traceback (SSLPORTS_DEBUG=1 leaves Python's default,
    which prints it)."""

    def __init__(self) -> None:
        super().__init__()
        self.said: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, OSError):
            text += f": {_os_error_text(exc)}"
        elif exc is not None:
            text += f": {_reason(exc)}"
        if text not in self.said:
            self.said.add(text)
            _say(text)


def _hex(data: bytes) -> str:
    return data.hex()


def _text(data: Optional[bytes]) -> str:
    return data.decode("utf-8", "replace") if data is not None else ""


def _require_ssl() -> None:
    if not _binding.ssl_available:
        raise CLIError(f"TLS is not available here: {_binding.ssl_load_fail_reason}")


# -- argument types --------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise argparse.ArgumentTypeError(f"expected [IPV6]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise argparse.ArgumentTypeError(
                f"an IPv6 address needs brackets, as in [::1]:443 (got {text!r})"
            )
    if not host:
        raise argparse.ArgumentTypeError(f"missing host in {text!r}")
    return _host_name(host), _port_number(port_text, lowest=1)


def _host_name(text: str) -> str:
    """A host name or address the resolver can be asked about (IDNA-encodable, not empty)."""
    if not text:
        raise argparse.ArgumentTypeError("empty host name")
    try:
        text.encode("idna")
    except UnicodeError as exc:
        raise argparse.ArgumentTypeError(f"not a valid host name: {text!r} ({exc})") from None
    try:  # (the library's own checks: a name longer than DNS allows, a NUL)
        _check_hostname_arg("host", text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{_reason(exc)} (got {len(text)})") from None
    return text


def _port_number(text: str, lowest: int = 0) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not lowest <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in {lowest}..65535, got {port}")
    return port


def _server_port(text: str) -> int:
    return _port_number(text, lowest=0)


def _alpn_list(text: str) -> list[bytes]:
    """``h2,http/1.1`` -> ``[b"h2", b"http/1.1"]``; each name 1..255 bytes."""
    names = [name.strip().encode("utf-8") for name in text.split(",")]
    for name in names:
        if not 1 <= len(name) <= 255:
            raise argparse.ArgumentTypeError(
                f"each ALPN name must be 1..255 bytes long (in {text!r})"
            )
    try:  # (the list's own limit: 65535 bytes on the wire)
        encode_alpn("alpn", names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(_reason(exc)) from None
    return names


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be a positive number, got {text!r}")
    if value > _SECONDS_MAX:  # (a deadline must stay a clock reading: time_t, a C long)
        raise argparse.ArgumentTypeError(f"seconds must be at most {_SECONDS_MAX:g}, got {text!r}")
    return value


_SECONDS_MAX = 1e9  # (about 31 years)


def _existing_file(text: str) -> str:
    if not os.path.isfile(text):
        what = "not a file" if os.path.exists(text) else "no such file"
        raise argparse.ArgumentTypeError(f"{text}: {what}")
    return text


def _existing_dir(text: str) -> str:
    if not os.path.isdir(text):
        what = "not a directory" if os.path.exists(text) else "no such directory"
        raise argparse.ArgumentTypeError(f"{text}: {what}")
    return text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``sslports: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# -- handshake facts ---------------------------------------------------------------------------


def connection_facts(
    port: Union[SSLInputPort, SSLOutputPort], hostname: Optional[str] = None
) -> list[tuple[str, str]]:
    """What the handshake settled, as (label, value) rows for people to read.

    :param port: either port of an established connection.
    :param hostname: also tell whether the peer's certificate is valid for this name.
    :returns: protocol, cipher, ALPN, verification, names, channel bindings, resumption.
    """
    rows: list[tuple[str, str]] = [
        ("protocol", ssl_protocol_version(port) or "unknown"),
        ("cipher", ssl_cipher_name(port) or "unknown"),
        ("alpn", _text(ssl_get_alpn_selected(port)) or "(none selected)"),
        ("verified", "yes" if ssl_peer_verified(port) else "no"),
        ("peer hostnames", ", ".join(ssl_peer_certificate_hostnames(port)) or "(no certificate)"),
    ]
    if hostname is not None:
        matches = ssl_peer_check_hostname(port, hostname)
        rows.append(("name matches", f"{'yes' if matches else 'no'} ({hostname})"))
    subject = ssl_peer_subject_name(port)
    issuer = ssl_peer_issuer_name(port)
    if subject is None:
        rows.append(("subject", "(known only for a verified peer)"))
    else:
        rows.append(("subject", _text(subject)))
        rows.append(("issuer", _text(issuer)))
    for kind in _CHANNEL_BINDINGS:
        try:
            rows.append((kind, _hex(ssl_channel_binding(port, kind))))
        except SSLError:
            continue  # e.g. tls-unique on TLS 1.3: not defined for this connection
    rows.append(("session reused", "yes" if ssl_session_reused(port) else "no"))
    return rows


def _format_rows(rows: Sequence[tuple[str, str]], indent: str = "    ") -> list[str]:
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{indent}{label.ljust(width)}  {value}" for label, value in rows]


# -- connect -----------------------------------------------------------------------------------


def _client_credentials(args: argparse.Namespace) -> dict[str, Any]:
    if args.key and not args.cert:
        raise CLIError("--key needs --cert", EXIT_USAGE)
    if not args.cert:
        return {}
    return {"certificate_chain": args.cert, "private_key": ("pem", args.key or args.cert)}


def _client_context(args: argparse.Namespace) -> SSLClientContext:
    """The client context that `connect`'s options describe.

    ``--secure`` (the default) verifies the chain and the host name: against ``--cafile`` only
    when given, else against ``ssl_default_verify_sources()``. ``--insecure`` still tries to
    verify, so that the summary can tell, but goes on whatever the result.
    """
    protocol = args.protocol or "auto"
    creds = _client_credentials(args)
    if args.secure and not args.cafile and protocol == "auto":
        return ssl_make_client_context("secure", **creds)
    ctx = ssl_make_client_context(protocol, **creds)
    if args.cafile:
        ssl_load_verify_source(ctx, args.cafile)
    else:
        ssl_load_default_verify_sources(ctx)
    if args.secure:
        ssl_set_verify(ctx, True)
        ssl_set_verify_hostname(ctx, True)
        ssl_set_ciphers(ctx, _SECURE_CIPHERS)
    else:
        ssl_try_verify(ctx, True)
    ssl_seal_context(ctx)
    return ctx


def _tcp_connect(host: str, port: int, timeout: Optional[float]) -> socket.socket:
    label = _binding.endpoint(host, port)
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as exc:
        raise CLIError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    except socket.timeout as exc:  # (also the system's own ETIMEDOUT, from Python 3.10)
        if timeout is None:
            raise CLIError(f"cannot connect to {label}: {exc.strerror or exc}") from None
        raise CLIError(f"connect to {label} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise CLIError(f"cannot connect to {label}: {exc.strerror or exc}") from None


def _handshake_error(exc: SSLError, label: str, args: argparse.Namespace) -> CLIError:
    message = f"TLS handshake with {label} failed: {_detail(exc)}"
    if exc.verify_code is not None and args.secure:
        if exc.verify_code in _NAME_MISMATCHES:
            message += " (check --servername; --insecure goes on anyway)"
        else:
            message += " (--cafile FILE trusts a certificate; --insecure goes on anyway)"
    return CLIError(message)


_NAME_MISMATCHES = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


@contextlib.contextmanager
def _signals_also_call(wake: Callable[[], None], *signums: int) -> Iterator[None]:
    """While active, a signal in `signums` also calls wake() from a watching thread.

    CPython runs a signal's Python handler (Ctrl-C's KeyboardInterrupt) in the main thread,
    between two steps of Python code. A signal that lands just before the main thread blocks
    in a system call (recv, poll), or one the kernel hands to another thread, stays pending
    until that call returns: in an idle session, for ever. wake() makes the call return (it
    shuts the socket's reading side, or closes the listener); the handler then runs. The
    watcher learns of the signal through signal.set_wakeup_fd, which CPython's C-level
    handler writes from whichever thread took it, after marking the handler pending. A main
    thread blocked elsewhere (a write to a stalled terminal or pipe) is not woken by that:
    when the handler has not run within _HANDLER_WAIT, the watcher sends the signal to the
    main thread itself, once, which interrupts its system call."""
    if threading.current_thread() is not threading.main_thread():
        yield  # (set_wakeup_fd is the main thread's; only tests call main() elsewhere)
        return
    watch_end, signal_end = socket.socketpair()
    signal_end.setblocking(False)
    handled = threading.Event()
    main_thread = threading.main_thread().ident
    # The watcher sends the signal again only while the handlers are ours and none ran:
    # `active` and `handled` change, and are read for that, under `resend_lock` (a handler
    # that ran just after the wait, or the context's end, must not get a second signal).
    resend_lock = threading.Lock()
    active = [True]

    def watch() -> None:
        resent = False
        with watch_end:
            while True:  # (to the end: a write to a closed pair is reported on stderr)
                try:
                    taken = watch_end.recv(64)
                except OSError:
                    return
                if not taken:
                    return
                for signum in signums:
                    if signum not in taken:
                        continue
                    with contextlib.suppress(OSError):
                        wake()
                    if resent or signum not in wrapped or handled.wait(_HANDLER_WAIT):
                        continue
                    resent = True  # (its own signal comes back here: never again)
                    with resend_lock:
                        if active[0] and not handled.is_set():
                            with contextlib.suppress(OSError, ValueError):
                                signal.pthread_kill(main_thread or 0, signum)

    def note_handled(signum: int, frame: Any) -> Any:
        with resend_lock:
            handled.set()
        return wrapped[signum](signum, frame)

    wrapped: dict[int, Callable[[int, Any], Any]] = {}
    previous: Optional[int] = None
    try:
        for signum in signums:  # (a Python handler only: SIG_DFL and SIG_IGN stay as they are)
            handler = signal.getsignal(signum)
            if callable(handler) and hasattr(signal, "pthread_kill"):
                wrapped[signum] = handler
                signal.signal(signum, note_handled)
        threading.Thread(target=watch, name="sslports-signals", daemon=True).start()
        previous = signal.set_wakeup_fd(signal_end.fileno(), warn_on_full_buffer=False)
    except (RuntimeError, ValueError, OSError):  # (no thread to spare): as before, unwatched
        pass
    finally:
        if previous is None:
            signal_end.close()  # (the watcher, if it started, ends at EOF and closes its end)
    try:
        yield
    finally:
        with resend_lock:
            active[0] = False
        if previous is not None:
            signal.set_wakeup_fd(previous)
            signal_end.close()
        for signum, handler in wrapped.items():
            signal.signal(signum, handler)


_HANDLER_WAIT = 0.25  # seconds the watcher gives the main thread to run a signal's handler


def _cmd_connect(args: argparse.Namespace) -> int:
    _require_ssl()
    host, port = args.target
    label = _binding.endpoint(host, port)
    servername = args.servername or host
    ctx = _client_context(args)
    sock = _tcp_connect(host, port, args.timeout)
    with _signals_also_call(functools.partial(sock.shutdown, socket.SHUT_RD), signal.SIGINT):
        return _connect_session(args, sock, label, servername, ctx)


def _connect_session(
    args: argparse.Namespace,
    sock: socket.socket,
    label: str,
    servername: str,
    ctx: SSLClientContext,
) -> int:
    """connect's TLS session over `sock` (connected): the handshake, then stdin and stdout
    copied to and from the server; closes sock."""
    reader = sock.makefile("rb")
    writer = sock.makefile("wb")

    def close_transport() -> None:
        # Shut the socket down first: a read or write still blocked in a thread (the ports'
        # receiver or sender, after the last close waited its while) holds its file object's
        # lock, and closing that object would wait for it, ignoring Ctrl-C, until the server
        # closed. (The ports are closed by now, or never were: nothing of ours is cut short.)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        for closable in (reader, writer, sock):
            with contextlib.suppress(OSError):
                closable.close()

    try:
        inp, out = ports_to_ssl_ports(
            reader,
            writer,
            mode="connect",
            context=ctx,
            hostname=servername,
            alpn=args.alpn or (),
            timeout=args.timeout,
            close_original=True,
            shutdown_on_close=True,
            error=SSLNetworkError,
        )
    except TimeoutError as exc:
        close_transport()
        if args.timeout is None:  # (the system's ETIMEDOUT: TCP gave up on the server)
            if isinstance(exc, SSLError):
                raise _handshake_error(exc, label, args) from None
            raise CLIError(f"TLS handshake with {label} failed: {exc.strerror or exc}") from None
        raise CLIError(f"TLS handshake with {label} timed out after {args.timeout:g} s") from None
    except SSLError as exc:
        close_transport()
        raise _handshake_error(exc, label, args) from None
    except BaseException:
        close_transport()
        raise
    try:
        sock.settimeout(None)  # --timeout bounds connect + handshake, not the session
        inp.settimeout(None)
        out.settimeout(None)
        if not args.quiet:
            peer = sock.getpeername()[0]
            _say(f"--- connected to {label} ({peer}), server name {servername}")
            for line in _format_rows(connection_facts(inp, servername)):
                _say(line)
            _say("---")
        return _pipe_stdio(inp, out, sock, ignore_eof=args.ign_eof)
    except BaseException:
        # Ctrl-C, or a failure: what is still on its way is abandoned. End the sending half
        # first: a write stuck on a server that stopped reading then fails at once (EPIPE),
        # where closing its writer below would wait for it, ignoring Ctrl-C, until the
        # server closed. (What the kernel holds still goes out; reading is left alone.)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        raise
    finally:
        # Both ports, out first (_pipe_stdio closed it, unless something raised before it
        # could, or the stdin thread's write held it): never left to the collector, whose
        # close would come after the socket's.
        for port in (out, inp):
            with contextlib.suppress(Exception):
                port.close()
        close_transport()


def _stdin_reader() -> Optional[Callable[[int], bytes]]:
    """read(n) on stdin for the copying thread: os.read on its descriptor where there is one.
    A daemon thread blocked in sys.stdin.buffer.read1 holds the buffer's lock, and CPython
    aborts ("could not acquire lock for <stdin> at interpreter shutdown") when the command
    ends while it does; os.read holds no Python lock."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        stdin = getattr(sys.stdin, "buffer", None)
        return None if stdin is None else stdin.read1
    return functools.partial(_read_waiting, fd)


def _read_waiting(fd: int, n: int) -> bytes:
    """os.read that waits on a non-blocking descriptor (a terminal or pipe that another
    program made non-blocking) instead of failing with EAGAIN."""
    while True:
        try:
            return os.read(fd, n)
        except BlockingIOError:
            select.select([fd], [], [])


_UNSENT_WAIT = 0.1  # seconds: how long the end of a connection waits to see stdin's bytes unsent


def _pipe_stdio(
    inp: SSLInputPort, out: SSLOutputPort, sock: socket.socket, *, ignore_eof: bool
) -> int:
    """Copy stdin to the connection (a thread) and the connection to stdout (this thread).

    EOF on stdin closes the output port, which sends close_notify, then shuts down the
    sending half of the TCP connection; the server's close ends the command.
    """
    out_lock = threading.Lock()
    # A write that failed (under out_lock): the reader may see only the end of the input
    # then, when the write took the socket's reset (the kernel reports it once), and the
    # command must not end with status 0 as if everything had been sent.
    write_failures: list[OSError] = []
    read_failures: list[OSError] = []  # (stdin's: said once the connection ends)
    # Bytes read from stdin and not yet written (set before the thread takes out_lock): what
    # the reader's end of the connection leaves unsent, also when the thread has yet to try.
    unsent = [0]

    def stdin_to_connection() -> None:
        read = _stdin_reader()
        try:
            while read is not None:
                try:
                    chunk = read(_CHUNK)
                except OSError as exc:  # as at EOF: close_notify, then the server's end
                    read_failures.append(exc)
                    chunk = b""
                if not chunk:
                    break
                unsent[0] = len(chunk)
                with out_lock:
                    try:
                        out.write(chunk)
                        out.flush()
                    except OSError as exc:
                        write_failures.append(exc)
                        raise
                    unsent[0] = 0
        except (OSError, ValueError):
            return  # the connection is gone (or closed below); the reader reports it
        if ignore_eof:
            return
        with out_lock, contextlib.suppress(OSError, ValueError):
            out.close()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    aborted = True
    sender = threading.Thread(target=stdin_to_connection, name="sslports-stdin", daemon=True)
    try:
        _stdout_buffer()  # (before the thread: a closed stdout fails at once)
        sender.start()
        while True:
            try:
                chunk = inp.read1(_CHUNK)
            except SSLError as exc:
                raise CLIError(f"connection failed: {_reason(exc)}") from None
            if not chunk:
                break
            _write_stdout(chunk)
        aborted = False
    finally:
        # The stdin thread may be stuck in a write the server never reads: don't wait forever.
        if out_lock.acquire(timeout=2.0):
            try:
                with contextlib.suppress(Exception):
                    if aborted:  # (Ctrl-C: still say goodbye, but not for 5 s to a server
                        out.settimeout(1.0)  # that stopped reading)
                    out.close()
            finally:
                out_lock.release()
    if write_failures:  # (the output port's own error: the input ended without one)
        raise CLIError(f"connection failed: {_reason(write_failures[0])}")
    # Bytes of stdin the connection's end left unsent: in a write the server no longer reads,
    # or in a chunk the thread held, or reads next, which meets the port closed here (a moment
    # for it to say so; a thread waiting for a terminal's next line has nothing unsent).
    if not aborted and sender.is_alive():
        sender.join(_UNSENT_WAIT)
    if not aborted and unsent[0]:
        raise CLIError("the server ended the connection before standard input was all sent")
    if read_failures:
        raise CLIError(f"cannot read standard input: {_os_error_text(read_failures[0])}")
    return EXIT_OK


# -- serve -------------------------------------------------------------------------------------


def _server_context(args: argparse.Namespace) -> SSLServerContext:
    if args.key and not args.cert:
        raise CLIError("--key needs --cert", EXIT_USAGE)
    cert = args.cert or str(TEST_PEM)
    key = args.key or cert
    if not args.cert:
        _say(
            f"{PROG}: warning: serving with the bundled test certificate {TEST_PEM}: "
            "its private key is public, so this provides no security"
        )
    ctx = ssl_make_server_context(args.protocol or "auto")
    ssl_load_certificate_chain(ctx, cert)
    ssl_load_private_key(ctx, key, False)
    if args.alpn:
        ssl_set_server_alpn(ctx, args.alpn)
        if args.mode != "echo" and b"h2" in args.alpn:
            _say(f"{PROG}: warning: --{args.mode} speaks HTTP/1.0 only, yet --alpn offers h2")
    if args.verify_client:
        ssl_load_verify_source(ctx, args.verify_client)
        ssl_load_suggested_certificate_authorities(ctx, args.verify_client)
        ssl_set_verify(ctx, True)
    ssl_seal_context(ctx)
    return ctx


class _Session:
    """One accepted connection of ``serve``: its ports, peer label and options."""

    def __init__(
        self, inp: SSLInputPort, out: SSLOutputPort, peer: str, args: argparse.Namespace
    ) -> None:
        self.inp = inp
        self.out = out
        self.peer = peer
        self.args = args

    def log(self, message: str) -> None:
        if not self.args.quiet:
            _say(f"{PROG}: serve: {self.peer}: {message}")

    def close(self) -> None:
        """Send what is buffered and close. The ports' last close reads away what the client
        sent unread and, while the reply has not left, lingers (README, "EOF and
        close_notify"): a reset cannot destroy it. (This used to wait up to 5 s for the
        client to close first, and a client that reads until the server closes waited.)"""
        try:
            self.out.flush()
        except (OSError, ValueError):
            pass
        finally:
            for port in (self.out, self.inp):
                with contextlib.suppress(OSError, ValueError):
                    port.close()


def _serve_echo(session: _Session) -> None:
    inp, out = session.inp, session.out
    total = 0
    try:
        while True:
            chunk = inp.read1(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
            total += len(chunk)
    finally:
        for port in (out, inp):
            with contextlib.suppress(OSError, ValueError):
                port.close()
    session.log(f"closed after echoing {total} bytes")


class _HTTPError(Exception):
    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.detail = detail or reason


def _read_request_head(inp: SSLInputPort) -> Optional[list[str]]:
    """The request line and header lines of one HTTP request, or None at EOF."""
    lines: list[str] = []
    total = 0
    while True:
        raw = inp.readline(8192)
        if not raw:
            return None
        total += len(raw)
        if total > 65536 or len(lines) > 100:
            raise _HTTPError(431, "Request Header Fields Too Large")
        text = raw.decode("latin-1").rstrip("\r\n")
        if not text:
            if lines:
                return lines
            continue  # tolerate blank lines before the request line (RFC 9112 2.2)
        lines.append(text)


def _parse_request_line(line: str) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _HTTPError(400, "Bad Request", f"malformed request line {line!r:.100}")
    return parts[0], parts[1]


def _send_head(
    out: SSLOutputPort, status: int, reason: str, content_type: str, length: int
) -> None:
    head = (
        f"HTTP/1.0 {status} {reason}\r\n"
        f"Server: sslports/{__version__}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    )
    out.write(head.encode("latin-1"))


def _send_page(
    out: SSLOutputPort,
    status: int,
    reason: str,
    body: str,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
) -> None:
    data = body.encode("utf-8")
    _send_head(out, status, reason, content_type, len(data))
    if not head_only:
        out.write(data)
    out.flush()


def _serve_http(session: _Session, respond: Callable[[_Session, str, str], str]) -> None:
    """Read one request, let `respond` answer it, log one line, close."""
    status_text = "no request"
    try:
        session.inp.settimeout(30.0)
        head = _read_request_head(session.inp)
        if head is None:
            session.log("closed before sending a complete request")
            return
        method, target = _parse_request_line(head[0])
        status_text = f"{method} {target[:200]} -> " + respond(session, method, target)
    except _HTTPError as exc:
        status_text = f"{exc.status} {exc.reason}: {exc.detail[:200]}"
        with contextlib.suppress(OSError, ValueError):
            _send_page(session.out, exc.status, exc.reason, f"{exc.status} {exc.reason}\n")
    except TimeoutError:
        status_text = "timed out waiting for the request"
    finally:
        session.close()
    session.log(status_text)


def _www_respond(session: _Session, method: str, target: str) -> str:
    if method not in ("GET", "HEAD"):
        raise _HTTPError(405, "Method Not Allowed", method)
    rows = [("client", session.peer), ("request", f"{method} {target}")]
    rows += connection_facts(session.inp)
    if session.args.verify_client:
        rows.append(("client certificate", "required and verified"))
    else:
        rows.append(("client certificate", "not requested (see --verify-client)"))
    lines = [f"sslports {__version__} test server (like openssl s_server -www)", ""]
    lines += _format_rows(rows, indent="")
    body = "\n".join(lines) + "\n"
    _send_page(session.out, 200, "OK", body, head_only=method == "HEAD")
    return "200 OK"


def _target_path(target: str) -> str:
    """The path of a request target: an absolute URL's ("http://host/x"), or the target up to
    its query ("//x" is the path //x, not a URL naming the host x)."""
    if _ABSOLUTE_URL.match(target):
        try:
            parts = urllib.parse.urlsplit(target)
            _ = parts.port  # (checked only when read: "http://h:bad/x")
        except ValueError:  # ("http://[/x": an unclosed IPv6 host; a port that is no number)
            raise _HTTPError(400, "Bad Request", "malformed URL") from None
        path = parts.path
    else:
        path = target.split("?", 1)[0].split("#", 1)[0]
    # (one leading slash: a listing's links under "//sub/" would read "//sub/a.txt", which a
    # browser takes for the host "sub")
    return "/" + path.lstrip("/")


_ABSOLUTE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # (RFC 3986 3.1: a scheme)


def _resolve_in(root: Path, url_path: str) -> Path:
    """The file `url_path` names under `root`, or _HTTPError 403 when it escapes `root`."""
    path = os.fsdecode(urllib.parse.unquote_to_bytes(url_path))  # (a name's own bytes)
    if "\0" in path:
        raise _HTTPError(400, "Bad Request", "NUL in path")
    candidate = (root / path.lstrip("/")).resolve()
    if candidate != root and root not in candidate.parents:
        raise _HTTPError(403, "Forbidden", f"{url_path!r} escapes the served directory")
    return candidate


def _dir_listing(url_path: str, directory: Path) -> str:
    base = url_path if url_path.endswith("/") else url_path + "/"
    items = []
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        name = entry.name + ("/" if entry.is_dir() else "")
        # A name that is not UTF-8 (its bytes as surrogates): the link quotes its bytes, which
        # _resolve_in maps back; the text shows U+FFFD for them.
        href = urllib.parse.quote(os.fsencode(base + name))
        shown = os.fsencode(name).decode("utf-8", "replace")
        items.append(f'<li><a href="{html.escape(href)}">{html.escape(shown)}</a></li>')
    title = html.escape(f"Index of {urllib.parse.unquote(url_path)}")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>\n"
        f"<body><h1>{title}</h1>\n<ul>\n" + "\n".join(items) + "\n</ul></body></html>\n"
    )


def _dir_respond(session: _Session, method: str, target: str) -> str:
    if method not in ("GET", "HEAD"):
        raise _HTTPError(405, "Method Not Allowed", method)
    root = Path(session.args.dir).resolve()
    url_path = _target_path(target)
    try:
        path = _resolve_in(root, url_path)
    except UnicodeDecodeError:
        raise _HTTPError(400, "Bad Request", "path is not UTF-8") from None
    except (RuntimeError, OSError):  # (a symlink loop: RuntimeError from resolve() before 3.13)
        raise _HTTPError(404, "Not Found", url_path) from None
    head_only = method == "HEAD"
    try:
        if path.is_dir():
            page = _dir_listing(url_path, path)
            _send_page(session.out, 200, "OK", page, "text/html; charset=utf-8", head_only)
            return "200 OK (listing)"
        if url_path.endswith("/"):  # a file used as a directory (resolve() drops the slash)
            raise _HTTPError(404, "Not Found", url_path)
        # O_NONBLOCK: opening a FIFO (or a device) must not block the connection forever.
        nonblock = getattr(os, "O_NONBLOCK", 0)  # (POSIX)
        fd = os.open(path, os.O_RDONLY | nonblock)
        with open(fd, "rb") as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise PermissionError(errno.EACCES, "not a regular file", str(path))
            if nonblock:
                os.set_blocking(fd, True)
            size = info.st_size
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            _send_head(session.out, 200, "OK", kind, size)
            sent = 0
            while not head_only and sent < size:
                chunk = f.read(min(_CHUNK, size - sent))
                if not chunk:
                    break  # the file shrank; the client sees a short body
                session.out.write(chunk)
                sent += len(chunk)
            session.out.flush()
        return f"200 OK ({sent if not head_only else size} bytes)"
    except (PermissionError, IsADirectoryError):
        raise _HTTPError(403, "Forbidden", url_path) from None
    except OSError:  # ENOENT, ENOTDIR (a file used as a directory), ENAMETOOLONG, ELOOP ...
        raise _HTTPError(404, "Not Found", url_path) from None


def _serve_connection(session: _Session) -> None:
    """Run the chosen mode on one connection; report a failure in one line."""
    try:
        if not session.args.quiet:
            inp = session.inp
            alpn = _text(ssl_get_alpn_selected(inp)) or "-"
            verified = "verified client" if ssl_peer_verified(inp) else "no client cert"
            session.log(
                f"connected ({ssl_protocol_version(inp)}, {ssl_cipher_name(inp)}, "
                f"alpn {alpn}, {verified})"
            )
        if session.args.mode == "echo":
            _serve_echo(session)
        elif session.args.mode == "www":
            _serve_http(session, _www_respond)
        else:
            _serve_http(session, _dir_respond)
    except Exception as exc:  # one client's failure must never end the server
        _say(f"{PROG}: serve: {session.peer}: connection failed: {_reason(exc)}")
        for port in (session.out, session.inp):
            with contextlib.suppress(Exception):
                port.close()


def _peer_label(inp: SSLInputPort, addr: Any) -> str:
    """The client's host:port; the address accept() gave when the socket no longer tells (a
    client that reset the connection as its handshake ended)."""
    try:
        _lh, _lp, host, port = ssl_addresses(inp, True)
        return _binding.endpoint(str(host), int(port))
    except (SSLError, OSError):
        try:
            return _binding.endpoint(str(addr[0]), int(addr[1]))
        except (TypeError, ValueError, IndexError):
            return "client"


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While active, SIGTERM raises _Stop in the main thread (a clean exit, like Ctrl-C)."""

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Stop()

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _accept_loop(listener: SSLListener, args: argparse.Namespace) -> None:
    """Accept clients; each one's handshake and session run in a thread of its own (a client
    that stalls its handshake delays nobody else)."""
    failures_in_a_row = 0
    while True:
        try:
            sock, addr = _accept_tcp("ssl_accept", listener)
        except SSLNetworkError as exc:
            _say(f"{PROG}: serve: accept failed: {_detail(exc)}")
            failures_in_a_row += 1
            if failures_in_a_row > 20:  # e.g. out of descriptors: don't spin
                time.sleep(0.05)
            continue
        failures_in_a_row = 0
        try:
            threading.Thread(
                target=_serve_client,
                args=(listener, sock, addr, args),
                name="sslports-conn",
                daemon=True,
            ).start()
        except BaseException as exc:
            sock.close()  # Not served (no thread to spare, or Ctrl-C): closed now.
            if not isinstance(exc, Exception):
                raise
            # (one client's failure must never end the server)
            where = _binding.endpoint(_host_of(addr), addr[1])
            _say(f"{PROG}: serve: {where}: connection dropped: {_reason(exc)}")


def _serve_client(
    listener: SSLListener, sock: socket.socket, addr: Any, args: argparse.Namespace
) -> None:
    """One client's thread: the handshake, bounded by --handshake-timeout, then its mode."""
    try:
        inp, out = _accepted_handshake("ssl_accept", listener, sock, addr)
    except Exception as exc:  # (sock is closed; the message names the client)
        _say(f"{PROG}: serve: handshake failed: {_detail(exc)}")
        return
    _serve_connection(_Session(inp, out, _peer_label(inp, addr), args))


def _cmd_serve(args: argparse.Namespace) -> int:
    _require_ssl()
    ctx = _server_context(args)
    try:
        listener = ssl_listen(
            args.port, 64, True, args.host, ctx, handshake_timeout=args.handshake_timeout
        )
    except SSLNetworkError as exc:
        where = _binding.endpoint(args.host, args.port)
        raise CLIError(f"cannot listen on {where}: {_reason(exc)}") from None
    mode = {"echo": "echo", "www": "status page", "dir": f"files under {args.dir}"}[args.mode]
    with listener:
        try:
            with (
                _sigterm_stops(),
                _signals_also_call(listener.close, signal.SIGINT, signal.SIGTERM),
            ):
                host, port = ssl_addresses(listener, True)[:2]
                print(f"listening on {_binding.endpoint(str(host), int(port))}", flush=True)
                _say(f"{PROG}: serve: {mode}; stop with Ctrl-C")
                _accept_loop(listener, args)
        except KeyboardInterrupt:
            _say(f"{PROG}: serve: interrupted, stopped")
            return EXIT_INTERRUPTED
        except _Stop:
            _say(f"{PROG}: serve: terminated, stopped")
            return EXIT_OK
    return EXIT_OK  # pragma: no cover - the loop only ends by a signal


# -- sha1 / md5 ----------------------------------------------------------------------------------


class _ProgressReader:
    """A file wrapper that draws a progress bar on stderr while a digest reads it."""

    def __init__(self, f: Any, total: int, label: str) -> None:
        self._f = f
        self._total = max(total, 1)
        self._label = label
        self._done = 0
        self._drawn_at = 0.0

    def readinto(self, buffer: Any) -> int:
        n = int(self._f.readinto(buffer) or 0)
        self._done += n
        now = time.monotonic()
        if now - self._drawn_at >= 0.1 or n == 0:
            self._drawn_at = now
            self._draw(final=n == 0)
        return n

    def read(self, size: int = -1) -> bytes:
        data = bytes(self._f.read(size))
        self._done += len(data)
        return data

    def _draw(self, final: bool) -> None:
        fraction = min(self._done / self._total, 1.0)
        width = 30
        filled = int(fraction * width)
        bar = "#" * filled + "-" * (width - filled)
        mib = self._done / (1 << 20)
        line = f"\r{self._label[:40]} [{bar}] {fraction * 100:5.1f}% {mib:,.0f} MiB"
        with _stderr_lock:
            sys.stderr.write(line + ("\r\033[K" if final else ""))
            sys.stderr.flush()


_PROGRESS_MIN = 64 << 20  # files at least this large get a progress bar (on a terminal)


def _digest_of(name: str, hash_port: Callable[[Any], str]) -> str:
    if name == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        if stdin is None:
            raise CLIError("no standard input")
        return hash_port(stdin)
    with open(name, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "Is a directory", name)
        tty = sys.stderr is not None and sys.stderr.isatty()
        if stat.S_ISREG(info.st_mode) and info.st_size >= _PROGRESS_MIN and tty:
            return hash_port(_ProgressReader(f, info.st_size, name))
        return hash_port(f)


def _escape_name(name: bytes, also_cr: bool = True) -> tuple[bool, bytes]:
    """coreutils' file name escaping: a leading backslash marks ``\\\\``, ``\\n``, ``\\r``."""
    specials = (b"\\", b"\n", b"\r") if also_cr else (b"\n",)
    if not any(s in name for s in specials):
        return False, name
    escaped = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n")
    if also_cr:
        escaped = escaped.replace(b"\r", b"\\r")
    return True, escaped


def _unescape_name(name: bytes) -> Optional[bytes]:
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i : i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        nxt = name[i + 1 : i + 2]
        mapping = {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}
        if nxt not in mapping:
            return None
        out += mapping[nxt]
        i += 2
    return bytes(out)


def _stdout_buffer() -> Any:
    if sys.stdout is None:  # (started with stdout closed: coreutils says "write error")
        raise CLIError("write error: standard output is closed", EXIT_FAILURE)
    return sys.stdout.buffer


def _write_stdout(data: bytes) -> None:
    """All of `data` to standard output. Another program may have made it non-blocking (a
    terminal that is also a non-blocking stdin shares the flag): a write there takes part of
    the data, or none (BlockingIOError); wait for room then, as _read_waiting waits for input.
    (Python's unbuffered stdout dropped the rest without a word, its buffered one failed.)"""
    stdout = _stdout_buffer()
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):  # (a stand-in without a descriptor)
        stdout.write(data)
        return
    for stream in (sys.stdout, stdout):  # (what a layer still holds goes first)
        _flush_waiting(stream, fd)
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


def _flush_waiting(stream: Any, fd: int) -> None:
    while True:
        try:
            stream.flush()
            return
        except BlockingIOError:
            select.select([], [fd], [])


def _digest_tool(args: argparse.Namespace) -> tuple[str, int, Callable[[Any], str]]:
    if args.command == "sha1":
        from .sha1 import sha1

        return "SHA1", 40, sha1
    from .md5 import md5

    return "MD5", 32, md5


def _cmd_digest(args: argparse.Namespace) -> int:
    # As coreutils: options of the other mode are usage errors, not silently ignored.
    if args.check and args.tag:
        raise CLIError("the --tag option is meaningless when verifying checksums", EXIT_USAGE)
    if not args.check:
        for option in ("status", "quiet", "strict", "warn", "ignore_missing"):
            if getattr(args, option):
                name = option.replace("_", "-")
                raise CLIError(
                    f"the --{name} option is meaningful only when verifying checksums", EXIT_USAGE
                )
    if args.check:
        return _check_digests(args)
    tag, _hexlen, hash_port = _digest_tool(args)
    status = EXIT_OK
    for name in args.files or ["-"]:
        try:
            hex_digest = _digest_of(name, hash_port)
        except OSError as exc:
            _error_line(_os_error_text(exc) if exc.filename else f"{name}: {_os_error_text(exc)}")
            status = EXIT_FAILURE
            continue
        escaped, raw = _escape_name(os.fsencode(name))
        prefix = b"\\" if escaped else b""
        if args.tag:
            line = prefix + f"{tag} (".encode() + raw + f") = {hex_digest}\n".encode()
        else:
            line = prefix + hex_digest.encode() + b"  " + raw + b"\n"
        _write_stdout(line)
    if sys.stdout is not None:
        sys.stdout.flush()
    return status


def _parse_check_line(line: bytes, tag: str, hexlen: int) -> Optional[tuple[str, bytes]]:
    """``(hex, name)`` from a ``sha1sum`` / ``sha1sum --tag`` line, or None if malformed."""
    line = line.lstrip(b" \t")
    escaped = line.startswith(b"\\")
    if escaped:
        line = line[1:]
    bsd = re.fullmatch(
        rb"%s ?\((.*)\)[ \t]*=[ \t]*([0-9a-fA-F]{%d})" % (tag.encode(), hexlen), line, re.DOTALL
    )
    if bsd is not None:
        name, hex_digest = bsd.group(1), bsd.group(2)
    else:
        gnu = re.fullmatch(rb"([0-9a-fA-F]{%d})[ \t][ *]?(.+)" % hexlen, line, re.DOTALL)
        if gnu is None:
            return None
        hex_digest, name = gnu.group(1), gnu.group(2)
    if escaped:
        unescaped = _unescape_name(name)
        if unescaped is None:
            return None
        name = unescaped
    return hex_digest.decode("ascii").lower(), name


def _checksum_lines(list_name: str) -> list[bytes]:
    if list_name == "-":  # (to its end, also where it is non-blocking: _read_waiting)
        read = _stdin_reader()
        if read is None:
            raise CLIError("no standard input")
        chunks: list[bytes] = []
        while True:
            chunk = read(_CHUNK)
            if not chunk:
                return b"".join(chunks).splitlines()
            chunks.append(chunk)
    with open(list_name, "rb") as f:
        return f.read().splitlines()


def _check_digests(args: argparse.Namespace) -> int:
    tag, hexlen, hash_port = _digest_tool(args)
    failed = unreadable = malformed = checked = 0
    say_ok = not (args.quiet or args.status)
    status = EXIT_OK
    for list_name in args.files or ["-"]:
        try:
            lines = _checksum_lines(list_name)
        except OSError as exc:
            _error_line(_os_error_text(exc))
            status = EXIT_FAILURE
            continue
        well_formed = 0
        malformed_before = malformed
        checked_before = checked
        for number, line in enumerate(lines, 1):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line.strip() or line.startswith(b"#"):
                continue
            parsed = _parse_check_line(line, tag, hexlen)
            if parsed is None:
                malformed += 1
                if args.warn:
                    _say(f"{PROG}: {list_name}: {number}: improperly formatted {tag} line")
                continue
            well_formed += 1
            expected, name = parsed
            escaped, shown = _escape_name(name, also_cr=False)
            shown = (b"\\" if escaped else b"") + shown
            try:
                actual = _digest_of(os.fsdecode(name), hash_port)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
                if args.ignore_missing and isinstance(exc, FileNotFoundError):
                    continue
                unreadable += 1
                if not args.status:
                    what = exc.strerror if isinstance(exc, OSError) else None
                    _error_line(f"{os.fsdecode(name)}: {what or exc}")
                    _write_stdout(shown + b": FAILED open or read\n")
                continue
            checked += 1
            if actual == expected:
                if say_ok:
                    _write_stdout(shown + b": OK\n")
            else:
                failed += 1
                if not args.status:
                    _write_stdout(shown + b": FAILED\n")
        if sys.stdout is not None:
            sys.stdout.flush()
        if well_formed == 0:
            _error_line(f"{list_name}: no properly formatted {tag} checksum lines found")
            status = EXIT_FAILURE
            malformed = malformed_before  # said once, as coreutils does
        elif args.ignore_missing and checked == checked_before:
            _error_line(f"{list_name}: no file was verified")
            status = EXIT_FAILURE
    if not args.status:
        for count, what in (
            (malformed, "line is improperly formatted"),
            (unreadable, "listed file could not be read"),
            (failed, "computed checksum did NOT match"),
        ):
            if count:
                plural = what.replace("line is", "lines are").replace("file could", "files could")
                plural = plural.replace("checksum did", "checksums did")
                _say(f"{PROG}: WARNING: {count} {what if count == 1 else plural}")
    if failed or unreadable or (malformed and args.strict):
        status = EXIT_FAILURE
    return status


# -- demo ------------------------------------------------------------------------------------


def _second_identity(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate and key for ``other.test``, made now with `cryptography`.

    :returns: ``(chain, key, how)``; without `cryptography`, the bundled test file twice.
    """
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return TEST_PEM, TEST_PEM, "the bundled test certificate again (cryptography missing)"
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sslports demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "other.test"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    chain = directory / "other-test.pem"
    key_file = directory / "other-test-key.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return chain, key_file, "a self-signed ECDSA certificate made just now with cryptography"


class _DemoServer:
    """Accepts connections in a thread; each: read a length-prefixed message, echo it back.

    For each connection it records what the server end saw, for comparison with the client.
    """

    def __init__(self, listener: SSLListener, connections: int) -> None:
        self.listener = listener
        self.connections = connections
        self.results: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self.finished = threading.Semaphore(0)  # released once per connection handled
        self.thread = threading.Thread(target=self._run, name="sslports-demo-server", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from .sha1 import sha1

        for _ in range(self.connections):
            try:
                inp, out = ssl_accept(self.listener)
            except BaseException as exc:
                self.errors.append(exc)
                self.finished.release()
                return
            try:
                inp.settimeout(10.0)
                out.settimeout(10.0)
                header = _read_exactly(inp, 4)
                (size,) = struct.unpack("!I", header)
                payload = _read_exactly(inp, size)
                out.write(payload)
                out.flush()
                kind, binding = ssl_default_channel_binding(inp)
                self.results.append(
                    {
                        "sha1": sha1(io.BytesIO(payload)),
                        "binding": (kind, binding),
                        "end_point": ssl_channel_binding(inp, "tls-server-end-point"),
                        "alpn": ssl_get_alpn_selected(inp),
                    }
                )
                self.finished.release()
                while inp.read1(_CHUNK):  # until the client closes
                    pass
            except BaseException as exc:
                self.errors.append(exc)
                self.finished.release()
            finally:
                for port in (out, inp):
                    with contextlib.suppress(Exception):
                        port.close()


def _read_exactly(inp: SSLInputPort, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = inp.read1(min(_CHUNK, size - len(data)))
        if not chunk:
            raise CLIError(f"demo: connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


class _DemoReport:
    """Prints the demo's lines and keeps count of its checks."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    @staticmethod
    def line(text: str = "") -> None:
        print(text, flush=True)

    def row(self, label: str, value: str) -> None:
        self.line(f"    {label:<22}{value}")

    def check(self, label: str, ok: bool, detail: str) -> None:
        self.row(label, f"{'ok' if ok else 'FAILED'}  {detail}")
        if not ok:
            self.failures.append(f"{label}: {detail}")


def _demo_exchange(
    report: _DemoReport,
    server: _DemoServer,
    inp: SSLInputPort,
    out: SSLOutputPort,
    *,
    expect_name: str,
) -> None:
    """Send a message over one demo connection, compare both ends, print what was seen."""
    from .sha1 import sha1

    payload = os.urandom(48 * 1024) + b"hello from the sslports demo\n"
    try:
        out.write(struct.pack("!I", len(payload)) + payload)
        out.flush()
        echoed = _read_exactly(inp, len(payload))
        rows = dict(connection_facts(inp))
        kind, client_binding = ssl_default_channel_binding(inp)
        end_point = ssl_channel_binding(inp, "tls-server-end-point")
        hostname_ok = ssl_peer_check_hostname(inp, expect_name)
    finally:
        for port in (out, inp):
            with contextlib.suppress(Exception):
                port.close()
    if not server.finished.acquire(timeout=10.0):
        raise CLIError("demo: the server did not answer within 10 s")
    if server.errors:
        raise CLIError(f"demo server failed: {_reason(server.errors[0])}")
    seen = server.results[-1]
    report.row("protocol / cipher", f"{rows['protocol']} / {rows['cipher']}")
    report.row("peer hostnames", rows["peer hostnames"])
    report.row("subject", rows["subject"])
    report.row("session reused", rows["session reused"])
    report.check("verified", rows["verified"] == "yes", f"chain and name {expect_name!r}")
    report.check("hostname", hostname_ok, f"certificate is valid for {expect_name!r}")
    report.check("ALPN", rows["alpn"] == "h2", f"selected {rows['alpn']}, the server's first")
    report.check("echo", echoed == payload, f"{len(payload)} bytes sent and received intact")
    client_sha1 = sha1(io.BytesIO(payload))
    report.check(
        "SHA-1 of bytes sent",
        client_sha1 == seen["sha1"],
        f"client {client_sha1} = server {seen['sha1']}",
    )
    report.check(
        "channel binding",
        (kind, client_binding) == seen["binding"],
        f"{kind} equal at both ends: {_hex(client_binding)}",
    )
    report.check(
        "server end point",
        end_point == seen["end_point"],
        f"tls-server-end-point equal at both ends: {_hex(end_point)}",
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    _require_ssl()
    _stdout_buffer()  # (its report is all it gives: a closed stdout fails at once)
    report = _DemoReport()
    versions = _digest.openssl_versions()
    report.line(f"sslports {__version__} demo on {versions['loaded'] or 'OpenSSL'}")
    report.line("Everything below runs in this process on 127.0.0.1; nothing leaves the machine.")
    with tempfile.TemporaryDirectory(prefix="sslports-demo-") as tmp:
        other_chain, other_key, how = _second_identity(Path(tmp))
        distinct = other_chain != TEST_PEM
        default_ctx = ssl_make_server_context(
            "auto", private_key=("pem", TEST_PEM), certificate_chain=TEST_PEM
        )
        other_ctx = ssl_make_server_context(
            "auto", private_key=("pem", other_key), certificate_chain=other_chain
        )
        sni_seen: list[str] = []

        def choose_context(hostname: str) -> Optional[SSLServerContext]:
            sni_seen.append(hostname)
            return other_ctx if hostname == "other.test" else None

        for ctx in (default_ctx, other_ctx):
            ssl_set_server_alpn(ctx, [b"h2", b"http/1.1"])
            ssl_set_server_name_identification_callback(ctx, choose_context)
            ssl_seal_context(ctx)
        listener = ssl_listen(0, 5, True, "127.0.0.1", default_ctx, handshake_timeout=10.0)
        with listener:
            port = int(ssl_addresses(listener, True)[1])
            server = _DemoServer(listener, connections=3)
            report.line()
            report.line(f"server  ssl_listen on 127.0.0.1:{port}")
            report.row("certificate", f"{TEST_PEM.name} (bundled, public: no security)")
            report.row("ALPN preference", "h2, http/1.1")
            report.row("SNI 'other.test'", "switches to a second server context")
            report.row("second certificate", how)

            client_ctx = ssl_make_client_context("auto")
            ssl_load_verify_source(client_ctx, TEST_PEM)
            ssl_set_verify(client_ctx, True)
            ssl_set_verify_hostname(client_ctx, True)
            ssl_set_ciphers(client_ctx, _SECURE_CIPHERS)
            ssl_seal_context(client_ctx)

            report.line()
            report.line(
                f"client 1  ssl_connect('localhost', {port}, <trusts {TEST_PEM.name}>, "
                "alpn=[b'http/1.1', b'h2'])"
            )
            inp, out = ssl_connect(
                "localhost", port, client_ctx, alpn=[b"http/1.1", b"h2"], timeout=10.0
            )
            _demo_exchange(report, server, inp, out, expect_name="localhost")
            report.check(
                "SNI callback",
                sni_seen[-1:] == ["localhost"],
                "saw 'localhost' and kept the default context",
            )

            other_client = ssl_make_client_context("auto")
            ssl_load_verify_source(other_client, other_chain)
            ssl_set_verify(other_client, True)
            ssl_set_verify_hostname(other_client, distinct)
            ssl_seal_context(other_client)
            report.line()
            report.line(
                "client 2  ssl_wrap_socket(<TCP socket to 127.0.0.1>, hostname='other.test', "
                "alpn=[b'h2'])"
            )
            sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
            try:
                inp, out = ssl_wrap_socket(
                    sock,
                    mode="connect",
                    context=other_client,
                    hostname="other.test",
                    alpn=[b"h2"],
                    timeout=10.0,
                )
            except BaseException:
                sock.close()
                raise
            _demo_exchange(
                report, server, inp, out, expect_name="other.test" if distinct else "localhost"
            )
            report.check(
                "SNI callback",
                sni_seen[-1:] == ["other.test"],
                "saw 'other.test' and switched to the second context",
            )

            report.line()
            report.line(f"client 3  ssl_connect('localhost', {port}, <the context of client 1>)")
            inp, out = ssl_connect(
                "localhost", port, client_ctx, alpn=[b"http/1.1", b"h2"], timeout=10.0
            )
            reused = ssl_session_reused(inp)
            _demo_exchange(report, server, inp, out, expect_name="localhost")
            report.check("resumption", reused, "the session of client 1 was resumed")
            server.thread.join(10.0)
    report.line()
    if report.failures:
        raise CLIError(f"demo: {len(report.failures)} check(s) failed: {report.failures[0]}")
    report.line("All checks passed.")
    return EXIT_OK


# -- info ------------------------------------------------------------------------------------


def _describe_source(src: Any) -> str:
    if isinstance(src, tuple):
        return f"{src[0]} {os.fsdecode(src[1]) if not isinstance(src[1], str) else src[1]}"
    return os.fsdecode(src)


def _keylog_row() -> str:
    """What SSLKEYLOGFILE does here (context.keylog_file): the file, or why none."""
    from .context import keylog_file

    path = keylog_file()
    if path is not None:
        return path
    if os.environ.get("SSLKEYLOGFILE"):
        return "(ignored: Python runs with -E or -I)"
    return "(not set)"


def _cmd_info(args: argparse.Namespace) -> int:
    from . import libcrypto, libssl

    _stdout_buffer()  # (a closed stdout: the write error sha1 and connect give)
    versions = _digest.openssl_versions()
    rows: list[tuple[str, str]] = [
        ("sslports", f"{__version__} ({Path(__file__).resolve().parent})"),
        ("python", sys.version.split()[0]),
        ("ssl available", "yes" if _binding.ssl_available else "no"),
    ]
    if not _binding.ssl_available:
        rows.append(("why not", str(_binding.ssl_load_fail_reason)))
    rows += [
        ("OpenSSL loaded", versions["loaded"] or "-"),
        ("OpenSSL built with", versions["linked"] or "-"),
    ]
    for name, handle, reason in (
        ("libssl", libssl.libssl, libssl.libssl_load_fail_reason),
        ("libcrypto", libcrypto.libcrypto, libcrypto.libcrypto_load_fail_reason),
    ):
        rows.append((name, str(getattr(handle, "_name", "?")) if handle else f"- ({reason})"))
    rows.append(("digests", "OpenSSL (native)" if _binding.ssl_available else "hashlib fallback"))
    try:
        sources = ", ".join(_describe_source(s) for s in ssl_default_verify_sources())
    except (SSLError, OSError, TypeError, ValueError) as exc:
        sources = f"- ({exc})"
    rows.append(("default verify sources", sources or "(none)"))
    if _binding.ssl_available:
        rows += [
            ("client protocols", ", ".join(supported_client_protocols())),
            ("server protocols", ", ".join(supported_server_protocols())),
            (
                "newest protocol",
                f"{ssl_max_client_protocol()} (client), {ssl_max_server_protocol()} (server)",
            ),
        ]
    rows += [
        ("test certificate", f"{TEST_PEM} (public: for tests only)"),
        ("SSLKEYLOGFILE", _keylog_row()),
    ]
    for line in _format_rows(rows, indent=""):
        print(line)
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------


def _add_protocol_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--tls12", dest="protocol", action="store_const", const="tls12", help="TLS 1.2 only"
    )
    group.add_argument(
        "--tls13", dest="protocol", action="store_const", const="tls13", help="TLS 1.3 only"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sslports`` command (every subcommand has ``--help``)."""
    parser = _Parser(
        prog=PROG,
        description="TLS client, server, digests and demo on sslports "
        "(Racket's openssl collection in Python).",
        epilog="Run 'sslports COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"sslports {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    connect = commands.add_parser(
        "connect",
        help="connect to a TLS server, like openssl s_client",
        description="Connect to HOST:PORT, print a handshake summary on stderr, then copy "
        "stdin to the connection and the connection to stdout. EOF on stdin sends "
        "close_notify (unless --ign-eof); the command ends when the server closes.",
    )
    connect.add_argument("target", type=_host_port, metavar="HOST:PORT")
    verify = connect.add_mutually_exclusive_group()
    verify.add_argument(
        "--secure",
        dest="secure",
        action="store_true",
        default=True,
        help="verify the certificate chain and the server name (the default)",
    )
    verify.add_argument(
        "--insecure",
        dest="secure",
        action="store_false",
        help="go on whatever the verification result (the summary still tells it)",
    )
    connect.add_argument(
        "--cafile",
        type=_existing_file,
        help="trust only the certificates in this PEM file (instead of the system store)",
    )
    connect.add_argument(
        "--servername",
        type=_host_name,
        help="the name sent as SNI and verified (default: HOST)",
    )
    connect.add_argument(
        "--alpn", type=_alpn_list, metavar="P1,P2", help="offer these ALPN protocols, e.g. h2"
    )
    connect.add_argument("--cert", type=_existing_file, help="client certificate chain (PEM)")
    connect.add_argument("--key", type=_existing_file, help="client private key (default: --cert)")
    _add_protocol_options(connect)
    connect.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="bound the connect and the handshake"
    )
    connect.add_argument(
        "--ign-eof", action="store_true", help="keep the connection open after EOF on stdin"
    )
    connect.add_argument("-q", "--quiet", action="store_true", help="no handshake summary")
    connect.set_defaults(handler=_cmd_connect)

    serve = commands.add_parser(
        "serve",
        help="run a TLS test server, like openssl s_server",
        description="Accept TLS connections, one thread each. Prints 'listening on HOST:PORT' "
        "on stdout once ready. Ctrl-C stops it (exit status 130).",
    )
    serve.add_argument(
        "--host", type=_host_name, default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=_server_port, default=4433, help="port (default 4433; 0 picks a free one)"
    )
    serve.add_argument(
        "--cert", type=_existing_file, help="certificate chain, PEM (default: the public TEST_PEM)"
    )
    serve.add_argument("--key", type=_existing_file, help="private key (default: --cert)")
    serve.add_argument(
        "--alpn", type=_alpn_list, metavar="P1,P2", help="ALPN protocols, server's preference first"
    )
    serve.add_argument(
        "--verify-client",
        type=_existing_file,
        metavar="CAFILE",
        help="require a client certificate that verifies against CAFILE",
    )
    _add_protocol_options(serve)
    serve.add_argument(
        "--handshake-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="drop a client that has not finished its handshake by then (default 10)",
    )
    serve.add_argument("-q", "--quiet", action="store_true", help="log failures only")
    modes = serve.add_mutually_exclusive_group()
    modes.add_argument(
        "--echo", dest="mode", action="store_const", const="echo", help="echo (the default)"
    )
    modes.add_argument(
        "--www",
        dest="mode",
        action="store_const",
        const="www",
        help="answer HTTP requests with a status page",
    )
    modes.add_argument(
        "--dir", type=_existing_dir, metavar="PATH", help="serve the files under PATH over HTTP"
    )
    serve.set_defaults(handler=_cmd_serve, mode=None)

    for name, tool in (("sha1", "sha1sum"), ("md5", "md5sum")):
        digest = commands.add_parser(
            name,
            help=f"print or check {name.upper()} digests, like {tool}",
            description=f"Print or check {name.upper()} digests; output and -c input are "
            f"{tool}'s. With no FILE, or when FILE is -, read standard input.",
        )
        digest.add_argument("files", nargs="*", metavar="FILE")
        digest.add_argument(
            "-c", "--check", action="store_true", help="read digests from the FILEs and check them"
        )
        digest.add_argument("--tag", action="store_true", help="BSD-style output")
        digest.add_argument("--quiet", action="store_true", help="check: don't print OK lines")
        digest.add_argument("--status", action="store_true", help="check: print nothing")
        digest.add_argument(
            "--strict", action="store_true", help="check: fail on improperly formatted lines"
        )
        digest.add_argument(
            "-w", "--warn", action="store_true", help="check: warn about improperly formatted lines"
        )
        digest.add_argument(
            "--ignore-missing", action="store_true", help="check: skip files that do not exist"
        )
        digest.set_defaults(handler=_cmd_digest)

    demo = commands.add_parser(
        "demo",
        help="run a server and verified clients in one process (no network)",
        description="Start a server on the bundled test certificate and connect to it: "
        "verification, SNI switching, ALPN, echo, channel binding, SHA-1, resumption.",
    )
    demo.set_defaults(handler=_cmd_demo)

    info = commands.add_parser(
        "info", help="versions and capabilities", description="Print versions and capabilities."
    )
    info.set_defaults(handler=_cmd_info)
    return parser


def _finish_serve_args(args: argparse.Namespace) -> None:
    if args.command == "serve":
        if args.dir is not None:
            args.mode = "dir"
        elif args.mode is None:
            args.mode = "echo"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``sslports`` command line; returns the exit status.

    :param argv: the arguments after the program name (default: ``sys.argv[1:]``).
    :returns: 0 on success, 1 on a failure, 2 on a usage error, 130 after Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _finish_serve_args(args)
    library_log = logging.getLogger("sslports")
    log_lines = None if os.environ.get("SSLPORTS_DEBUG") else _LogLines()
    if log_lines is not None:
        library_log.addHandler(log_lines)
    try:
        return _run(args)
    finally:
        if log_lines is not None:
            library_log.removeHandler(log_lines)


def _run(args: argparse.Namespace) -> int:
    """main() after the parser: the command, and what its failure prints and returns."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CLIError as exc:
        _error_line(str(exc))
        return exc.status
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): stop quietly, as coreutils do.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except (SSLError, OSError) as exc:
        _error_line(_os_error_text(exc))
        return EXIT_FAILURE
    except Exception as exc:
        if os.environ.get("SSLPORTS_DEBUG"):
            raise
        _error_line(f"unexpected {type(exc).__name__}: {exc} (SSLPORTS_DEBUG=1 shows more)")
        return EXIT_FAILURE
