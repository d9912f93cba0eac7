"""The ports under the standard library's consumers of binary file objects.

Users hand an input / output port pair to code written for ``socket.makefile("rb")`` /
``("wb")``: io.TextIOWrapper, io.BufferedReader, http.client, pickle, json, gzip, tarfile,
zipfile, csv, email, codecs, shutil. Each test runs a real TLS connection on 127.0.0.1 with
Python's ``ssl`` as the peer (sslports at both ends where noted), on both paths of the ports
(the C fast path and the Python methods) and over three transports: an ``ssl_connect`` socket,
the same with a port timeout (the ports' Python and KEPT_ONLY paths), and
``ports_to_ssl_ports`` over a socket's makefile() streams. ``test_ports_follow_ssl_makefile``
runs the same calls on ``ssl.SSLSocket.makefile`` and compares the outcomes.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import csv
import email
import email.generator
import gzip
import http.client
import io
import json
import pickle
import random
import selectors
import shutil
import socket
import ssl
import tarfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from conftest import Pki, connected_ports, random_bytes, run_in_thread

import sslports

LOCAL = "127.0.0.1"
TRANSPORTS = ["socket", "timeout", "streams"]
Script = Callable[[ssl.SSLSocket], Any]


@pytest.fixture
def pair(pki: Pki) -> Iterator[tuple[Any, Any, Any, Any]]:
    """sslports at both ends: (client in, client out, server in, server out)."""
    yield from connected_ports(pki)


def _serve(
    pki: Pki, script: Script, end: str = "notify", tickets: bool = True
) -> tuple[int, Callable[..., Any]]:
    """Python's ssl serves one connection on 127.0.0.1: `script(tls)` runs in a thread, then
    the connection ends with close_notify (`end` "notify") or a bare TCP close ("bare").
    Returns the port and a join that gives the script's result or raises its failure.
    `tickets` False: the server sends no TLS 1.3 session tickets (see _exchange)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.ec_chain, pki.ec_key)  # (ECDSA: the cheaper handshake)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if not tickets:
        ctx.num_tickets = 0
    listener = socket.create_server((LOCAL, 0))
    port = int(listener.getsockname()[1])

    def run() -> Any:
        with listener:
            raw, _ = listener.accept()
        with ctx.wrap_socket(raw, server_side=True) as tls:
            result = script(tls)
            if end == "notify":
                with contextlib.suppress(OSError):  # (it then waits for ours, which may not come)
                    tls.unwrap()
            else:
                tls.shutdown(socket.SHUT_RDWR)
            return result

    return port, run_in_thread(run)


@contextlib.contextmanager
def _client(
    pki: Pki, transport: str, port: int, strict_eof: bool = False
) -> Iterator[tuple[Any, Any]]:
    """The client's ports over `transport`, closed afterwards."""
    if transport == "streams":
        with socket.create_connection((LOCAL, port)) as sock:
            cin, cout = sslports.ports_to_ssl_ports(
                sock.makefile("rb"),
                sock.makefile("wb"),
                mode="connect",
                context=pki.client_context(),
                hostname="localhost",
                close_original=True,
                strict_eof=strict_eof,
            )
    else:
        timeout = 30.0 if transport == "timeout" else None
        cin, cout = sslports.ssl_connect(
            LOCAL, port, pki.client_context(), timeout=timeout, strict_eof=strict_eof
        )
    try:
        yield cin, cout
    finally:
        cin.close()
        cout.close()


def _exchange(
    pki: Pki,
    transport: str,
    script: Script,
    client: Callable[[Any, Any], Any],
    end: str = "notify",
    strict_eof: bool = False,
    tickets: bool = True,
) -> tuple[Any, Any]:
    """(what `client(cin, cout)` returned, what the server's script returned).

    `tickets` False for a client that only writes: it never reads the session tickets, and a
    socket closed with bytes unread is reset, which drops what the kernel had still to send
    to a peer that reads slower (Python's ssl as the client loses them the same way). Over
    streams the ports cannot read them away before the close, as ssl_connect's do."""
    port, join = _serve(pki, script, end, tickets)
    try:
        with _client(pki, transport, port, strict_eof) as (cin, cout):
            result = client(cin, cout)
    except BaseException:
        with contextlib.suppress(BaseException):
            join(30)
        raise
    return result, join(30)


def _send(data: bytes, sizes: tuple[int, ...] = (1, 2, 3, 7, 1000, 16384), seed: int = 0) -> Script:
    """A script that sends `data` in pieces of the given sizes (one TLS record each, or more
    for the largest), chosen at random; a client that closes before it took them all (a
    call that closes the ports, a consumer that stops early) ends it."""

    def script(tls: ssl.SSLSocket) -> None:
        rng = random.Random(seed)
        at = 0
        with contextlib.suppress(OSError):
            while at < len(data):
                n = rng.choice(sizes)
                tls.sendall(data[at : at + n])
                at += n

    return script


def _receive_all(tls: ssl.SSLSocket) -> bytes:
    """A script that reads everything up to the client's EOF."""
    got = bytearray()
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            return bytes(got)
        got += chunk


class _FakeSock:
    """What http.client.HTTPResponse wants: a socket whose makefile() is the input port (kept
    open when the response closes it, as a keep-alive connection keeps its socket)."""

    def __init__(self, port: Any) -> None:
        self.port = port

    def makefile(self, mode: str) -> Any:
        port = self.port

        class Keep:
            def __getattr__(self, name: str) -> Any:
                return getattr(port, name)

            def close(self) -> None:
                pass

        return Keep()


# -- text ---------------------------------------------------------------------------------------

TEXT = "naïve café 𝄞 €\r\nzweite Zeile\rdritte ✓\n" * 40 + "no newline at the end ✓"


@pytest.mark.parametrize("newline", [None, "", "\n"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_text_wrapper_reads_multibyte_text_across_records(
    path: str, pki: Pki, transport: str, newline: Optional[str]
) -> None:
    """UTF-8 sent 1 to 7 bytes a record (characters split across records), read by
    io.TextIOWrapper: readline, readlines(hint), iteration, read(), as from a StringIO."""

    def client(cin: Any, _cout: Any) -> list[str]:
        text = io.TextIOWrapper(cin, encoding="utf-8", newline=newline)
        got = [text.readline(), text.readline(5), *text.readlines(100)]
        got += [next(text), *text]
        got.append(text.read())
        text.detach()
        return got

    want = io.StringIO(TEXT, newline=newline)
    expect = [want.readline(), want.readline(5), *want.readlines(100)]
    expect += [next(want), *want, want.read()]
    got, _ = _exchange(pki, transport, _send(TEXT.encode(), (1, 2, 3, 5, 7)), client)
    assert got == expect


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_text_wrapper_request_response(path: str, pki: Pki, transport: str) -> None:
    """A line protocol through TextIOWrappers on both ports: readline returns the line that
    came (it reads what arrives, it does not wait for a buffer's worth), and a write_through
    wrapper's flush() sends the reply."""
    rounds = 5

    def server(tls: ssl.SSLSocket) -> list[bytes]:
        replies = []
        with tls.makefile("rb") as f:
            for k in range(rounds):
                tls.sendall(f"q{k} 𝄞\r\n".encode())
                replies.append(f.readline())
        return replies

    def client(cin: Any, cout: Any) -> list[str]:
        tin = io.TextIOWrapper(cin, encoding="utf-8", newline="")
        tout = io.TextIOWrapper(cout, encoding="utf-8", write_through=True)
        lines = []
        for k in range(rounds):
            lines.append(tin.readline())
            tout.write(f"ack {k} €\n")
            tout.flush()
        tin.detach()
        tout.detach()
        return lines

    lines, replies = _exchange(pki, transport, server, client)
    assert lines == [f"q{k} 𝄞\r\n" for k in range(rounds)]
    assert replies == [f"ack {k} €\n".encode() for k in range(rounds)]


# -- consumers reading the input port -------------------------------------------------------------

OBJECTS = [{"k": k, "blob": random_bytes(k * 7000, seed=k), "t": "é" * k} for k in range(8)]
BIG = random_bytes(300_000, seed=3)


def _tar_gz() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for k in range(3):
            data = random_bytes(40_000 + k, seed=10 + k)
            info = tarfile.TarInfo(f"f{k}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _untar(cin: Any) -> list[tuple[str, int]]:
    with tarfile.open(fileobj=cin, mode="r|*") as tar:
        return [(m.name, len(tar.extractfile(m).read())) for m in tar]  # type: ignore[union-attr]


def _http(cin: Any) -> list[bytes]:
    bodies = []
    for _ in range(2):
        resp = http.client.HTTPResponse(_FakeSock(cin))  # type: ignore[arg-type]
        resp.begin()
        bodies.append(resp.read())
    return bodies


HTTP = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n4000\r\n" + b"c" * 0x4000 + b"\r\n0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"L" * 70000
)
CSV = '"a","b,c"\r\n1,"x\r\ny"\r\nü,€\r\n'
MAIL = b"Subject: hello\r\nFrom: a@example.org\r\n\r\n" + b"body line\r\n" * 2000

# consumer: (what the peer sends, what the consumer does with the input port, its result: None
# for what it gives for an io.BytesIO of the same bytes)
READERS: dict[str, tuple[bytes, Callable[[Any], Any], Any]] = {
    "pickle.load": (
        b"".join(pickle.dumps(obj) for obj in OBJECTS),
        lambda cin: [pickle.load(cin) for _ in OBJECTS] + [cin.read()],
        [*OBJECTS, b""],
    ),
    "json.load": (json.dumps(OBJECTS, default=len).encode(), json.load, None),
    "gzip": (gzip.compress(BIG), lambda cin: gzip.GzipFile(fileobj=cin).read(), BIG),
    "tarfile r|*": (_tar_gz(), _untar, [("f0", 40000), ("f1", 40001), ("f2", 40002)]),
    "http.client": (HTTP, _http, [b"hello world" + b"c" * 0x4000, b"L" * 70000]),
    "csv": (
        CSV.encode(),
        lambda cin: list(csv.reader(io.TextIOWrapper(cin, encoding="utf-8", newline=""))),
        [["a", "b,c"], ["1", "x\r\ny"], ["ü", "€"]],
    ),
    "email": (
        MAIL,
        lambda cin: (lambda m: (m["subject"], m.get_payload()))(
            email.message_from_binary_file(cin)
        ),
        None,
    ),
    "codecs": (
        "żółw\n".encode() * 500,
        lambda cin: codecs.getreader("utf-8")(cin).read(),
        "żółw\n" * 500,
    ),
    "shutil.copyfileobj": (
        BIG,
        lambda cin: (lambda f: (shutil.copyfileobj(cin, f), f.getvalue())[1])(io.BytesIO()),
        BIG,
    ),
    "io.BufferedReader": (
        BIG,
        lambda cin: (lambda b: (b.peek(1)[:1], b.read(5), b.read1(3), b.read()))(
            io.BufferedReader(cin)
        ),
        (BIG[:1], BIG[:5], BIG[5:8], BIG[8:]),
    ),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("consumer", list(READERS))
def test_consumers_read_the_input_port(path: str, pki: Pki, transport: str, consumer: str) -> None:
    data, read, expect = READERS[consumer]
    if expect is None:  # (as from an in-memory file)
        expect = read(io.BytesIO(data))
    got, _ = _exchange(pki, transport, _send(data), lambda cin, _cout: read(cin))
    assert got == expect


# -- consumers writing to the output port ---------------------------------------------------------


def _zip_check(data: bytes) -> bool:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read("a") == BIG and z.read("b") == BIG[:1000]


def _zip(cout: Any) -> None:
    with zipfile.ZipFile(cout, "w", zipfile.ZIP_DEFLATED) as z:  # (an unseekable target)
        z.writestr("a", BIG)
        with z.open("b", "w") as f:
            f.write(BIG[:1000])


def _gzip(cout: Any) -> None:
    with gzip.GzipFile(fileobj=cout, mode="wb") as g:
        g.write(BIG)


def _tar(cout: Any) -> None:
    with tarfile.open(fileobj=cout, mode="w|gz") as tar:
        info = tarfile.TarInfo("big")
        info.size = len(BIG)
        tar.addfile(info, io.BytesIO(BIG))


def _untar_bytes(data: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile("big").read()  # type: ignore[union-attr]


def _text(cout: Any, write: Callable[[io.TextIOWrapper], Any], **kw: Any) -> None:
    text = io.TextIOWrapper(cout, encoding="utf-8", **kw)
    write(text)
    text.flush()
    text.detach()


def _csv_rows(text: io.TextIOWrapper) -> None:
    w = csv.writer(text)
    for k in range(500):
        w.writerow([k, "x,y", "é\r\n"])


def _buffers(cout: Any) -> None:
    ints = array.array("i", range(20000))
    assert cout.write(ints) == 80000  # (bytes, whatever the item format)
    shorts = memoryview(bytearray(range(256)) * 100).cast("H")
    assert cout.write(shorts) == 25600
    cout.writelines([ints, shorts, b"a", bytearray(b"b"), memoryview(b"c")])


def _mail(cout: Any) -> None:
    msg = email.message_from_string("Subject: hi\n\nbody\n")
    email.generator.BytesGenerator(cout).flatten(msg)


_CSV_OUT = io.StringIO(newline="")
_csv_rows(_CSV_OUT)  # type: ignore[arg-type]
_BUFFERS = (array.array("i", range(20000)).tobytes() + bytes(range(256)) * 100) * 2 + b"abc"

WRITERS: dict[str, tuple[Callable[[Any], Any], Callable[[bytes], Any], Any]] = {
    "pickle.dump": (
        lambda cout: [pickle.dump(obj, cout) for obj in OBJECTS],
        lambda data: (lambda f: [pickle.load(f) for _ in OBJECTS] + [f.read()])(io.BytesIO(data)),
        [*OBJECTS, b""],
    ),
    "json.dump": (
        lambda cout: _text(cout, lambda t: json.dump(OBJECTS, t, default=len)),
        json.loads,
        json.loads(json.dumps(OBJECTS, default=len)),
    ),
    "gzip": (_gzip, gzip.decompress, BIG),
    "tarfile w|gz": (_tar, _untar_bytes, BIG),
    "zipfile": (_zip, _zip_check, True),
    "csv": (lambda cout: _text(cout, _csv_rows, newline=""), bytes.decode, _CSV_OUT.getvalue()),
    "write_through": (
        lambda cout: _text(cout, lambda t: [t.write("ż") for _ in range(5000)], write_through=True),
        bytes.decode,
        "ż" * 5000,
    ),
    "shutil.copyfileobj": (lambda cout: shutil.copyfileobj(io.BytesIO(BIG), cout), bytes, BIG),
    "buffers": (_buffers, bytes, _BUFFERS),
    "email": (_mail, bytes, b"Subject: hi\n\nbody\n"),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("consumer", list(WRITERS))
def test_consumers_write_to_the_output_port(
    path: str, pki: Pki, transport: str, consumer: str
) -> None:
    write, decode, expect = WRITERS[consumer]
    _, sent = _exchange(pki, transport, _receive_all, lambda _cin, cout: write(cout), tickets=False)
    assert decode(sent) == expect


def test_ports_have_the_modes_of_socket_makefile(path: str, pair: Any) -> None:
    """gzip.GzipFile(fileobj=port) without a mode takes the file's mode, "rb" when it has
    none: before, it opened the output port for reading ("write() on read-only GzipFile
    object")."""
    cin, cout, sin, _sout = pair
    assert (cin.mode, cout.mode) == ("rb", "wb")
    with warnings.catch_warnings():  # (3.11+: a FutureWarning, "Specify the mode argument")
        warnings.simplefilter("ignore", FutureWarning)
        g = gzip.GzipFile(fileobj=cout)
    with g:
        assert g.mode == gzip.WRITE
        g.write(b"over TLS" * 1000)
    cout.close()
    cin.close()  # (the connection ends with its last port: the reader's EOF)
    with gzip.GzipFile(fileobj=sin) as g:
        assert g.mode == gzip.READ
        assert g.read() == b"over TLS" * 1000


# -- timeouts -------------------------------------------------------------------------------------


def _stalling(first: bytes, rest: bytes, go: threading.Event) -> Script:
    """A script that sends `first` (one record), waits until `go`, then sends `rest` (unless
    the client closed first)."""

    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(first)
        if not go.wait(30):
            raise AssertionError("the client never said go")
        with contextlib.suppress(OSError):
            tls.sendall(rest)

    return script


@pytest.mark.parametrize("how", ["read", "readinto", "kept"])
@pytest.mark.parametrize("transport", ["socket", "streams"])
def test_a_read_that_times_out_part_way_raises_and_keeps_the_part(
    path: str, pki: Pki, transport: str, how: str
) -> None:
    """read(n) / readinto(b) whose deadline passes after part of what they asked for came raise
    TimeoutError, as io's do, and the part is read first after it. Before, they returned the
    part, a short read, which every consumer of a file object takes for the end of the stream
    (http.client: IncompleteRead; pickle: "pickle data was truncated"), and the bytes it took
    were gone. The part is in OpenSSL's buffer (the rest of a record a read took 2000 bytes of)
    or in the port's kept bytes (after a peek), so it is there before the deadline."""
    first, rest = random_bytes(3000, seed=1), random_bytes(9000, seed=2)
    go = threading.Event()

    def client(cin: Any, _cout: Any) -> bytes:
        try:
            cin.settimeout(30)
            head = cin.read(2000) if how != "kept" else b""
            if how == "kept":
                assert cin.peek() == first  # (the whole record, kept)
            cin.settimeout(0.2)
            with pytest.raises(TimeoutError):
                if how == "readinto":
                    cin.readinto(bytearray(5000))
                else:
                    cin.read(5000)
        finally:
            go.set()
        cin.settimeout(30)
        return head + cin.read(len(first) + len(rest) - len(head))

    got, _ = _exchange(pki, transport, _stalling(first, rest, go), client)
    assert got == first + rest


@pytest.mark.parametrize("consumer", ["http.client", "pickle"])
def test_consumers_see_a_timeout_not_the_end_of_the_stream(
    path: str, pki: Pki, consumer: str
) -> None:
    """A peer that stalls part way through a response: http.client and pickle raise
    TimeoutError (before: IncompleteRead, and UnpicklingError "pickle data was truncated"); a
    retried HTTPResponse.read() then returns the whole body."""
    body = random_bytes(50_000, seed=4)
    if consumer == "http.client":
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    else:
        data = pickle.dumps(body)
    go = threading.Event()

    def client(cin: Any, _cout: Any) -> Any:
        try:
            cin.settimeout(30)
            assert cin.peek()  # (the first record came: the stall is in the middle)
            cin.settimeout(0.2)
            if consumer == "pickle":
                with pytest.raises(TimeoutError):
                    pickle.load(cin)
                return None
            resp = http.client.HTTPResponse(_FakeSock(cin))  # type: ignore[arg-type]
            resp.begin()
            with pytest.raises(TimeoutError):
                resp.read()
        finally:
            go.set()
        cin.settimeout(30)
        return resp.read()

    got, _ = _exchange(pki, "socket", _stalling(data[:1000], data[1000:], go), client)
    if consumer == "http.client":
        assert got == body


# -- the end of the stream ------------------------------------------------------------------------


@pytest.mark.parametrize("strict_eof", [False, True], ids=["lenient", "strict"])
@pytest.mark.parametrize("end", ["notify", "bare"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_text_to_the_end_of_the_stream(
    path: str, pki: Pki, transport: str, end: str, strict_eof: bool
) -> None:
    """TextIOWrapper.read() to the end: the whole text after a close_notify, and after a bare
    TCP close unless strict_eof, which raises SSLError there (as Python's ssl with
    suppress_ragged_eofs=False); the text is not lost then: read1 returns it before the error
    comes again."""
    data = TEXT.encode()

    def client(cin: Any, _cout: Any) -> Any:
        text = io.TextIOWrapper(cin, encoding="utf-8", newline="")
        if not (strict_eof and end == "bare"):
            got = text.read()
            text.detach()
            return got
        with pytest.raises(sslports.SSLError, match="unexpected eof"):
            text.read()
        text.detach()
        kept = bytearray()
        with pytest.raises(sslports.SSLError, match="unexpected eof"):
            while True:
                chunk = cin.read1(65536)
                assert chunk
                kept += chunk
        return kept.decode()

    got, _ = _exchange(pki, transport, _send(data), client, end, strict_eof)
    assert got == TEXT


# -- arguments and file conventions ---------------------------------------------------------------


@pytest.mark.parametrize("kept", [False, True], ids=["nothing-kept", "kept"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_readinto_refuses_what_it_cannot_fill(
    path: str, pki: Pki, transport: str, kept: bool
) -> None:
    """readinto / readinto1 of a read-only, non-contiguous or non-buffer object raise io's
    TypeError (API.md: a wrong argument type), on both paths, with bytes read ahead or not,
    and read nothing; before, bytes and a strided memoryview raised BufferError. readline's
    size is positional, as io's (the Python path took size=)."""
    data = b"0123456789" * 100

    def client(cin: Any, _cout: Any) -> bytes:
        if kept:
            assert cin.peek() == data
        bad: list[Any] = [b"xy", memoryview(b"xy"), memoryview(bytearray(8))[::2], "text", 5]
        for b in bad:
            for method in (cin.readinto, cin.readinto1):
                with pytest.raises(TypeError):
                    method(b)
        with pytest.raises(TypeError):
            cin.readline(size=2)
        return bytes(cin.read())

    got, _ = _exchange(pki, transport, _send(data, (len(data),)), client)
    assert got == data


def _outcome(fn: Callable[[Any, Any], Any], cin: Any, cout: Any) -> Any:
    try:
        return ("returned", fn(cin, cout))
    except Exception as exc:
        return ("raised", type(exc).__name__)


def _close_then(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def call(cin: Any, cout: Any) -> Any:
        cin.close()
        cout.close()
        return fn(cin, cout)

    return call


DATA = b"abc\ndef\n" + b"x" * 3000 + b"\nlast"
CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "read(0), read(n), read(-1)": lambda i, o: (i.read(0), i.read(2), i.read(0), i.read(-1)),
    "read(None), read()": lambda i, o: (i.read(None), i.read()),
    "read1(), read1(-1), read1(0)": lambda i, o: (i.read1(0), len(i.read1()), i.read1(-1)),
    "readline(n)": lambda i, o: (i.readline(2), i.readline(0), i.readline(100), i.readline(-1)),
    "readline(None)": lambda i, o: i.readline(None),
    "readline(1.5)": lambda i, o: i.readline(1.5),
    "readlines(hint)": lambda i, o: (
        i.readlines(1),
        i.readlines(4),
        i.readlines(5),
        i.readlines(0),
    ),
    "iteration": lambda i, o: ([next(i), next(i)], list(i), list(i)),
    "peek": lambda i, o: (i.peek(0)[:1], i.read(1), i.peek(1)[:1]),
    "readinto(array('i'))": lambda i, o: (
        lambda a: (i.readinto(a), a.tobytes(), i.readinto(bytearray()))
    )(array.array("i", [0] * 3)),
    "readinto(memoryview 'H')": lambda i, o: (
        lambda m: (i.readinto1(m), i.readinto(m), m.tobytes())
    )(memoryview(bytearray(6)).cast("H")),
    "readinto(2-d memoryview)": lambda i, o: (lambda m: (i.readinto(m), m.tobytes()))(
        memoryview(bytearray(6)).cast("B", (2, 3))
    ),
    "readinto(bytes)": lambda i, o: i.readinto(b"xy"),
    "readinto(strided)": lambda i, o: i.readinto(memoryview(bytearray(8))[::2]),
    "readline(size=)": lambda i, o: i.readline(size=2),
    "with": lambda i, o: (lambda: [i.__enter__() is i, i.__exit__(None, None, None), i.closed])(),
    "inquiries": lambda i, o: (
        i.readable(),
        i.writable(),
        i.seekable(),
        i.isatty(),
        o.readable(),
        o.writable(),
        o.seekable(),
    ),
    "mode": lambda i, o: (i.mode, o.mode),
    "tell": lambda i, o: i.tell(),
    "seek": lambda i, o: i.seek(0),
    "truncate": lambda i, o: o.truncate(0),
    "zipfile": lambda i, o: zipfile.ZipFile(i),
    "write on the input port": lambda i, o: i.write(b"x"),
    "read on the output port": lambda i, o: o.read(),
    "write(array('i'))": lambda i, o: (o.write(array.array("i", [1, 2, 3])), o.flush()),
    "write(2-d memoryview)": lambda i, o: o.write(memoryview(bytearray(6)).cast("B", (2, 3))),
    "write(strided)": lambda i, o: o.write(memoryview(b"abcdef")[::2]),
    "write(str)": lambda i, o: o.write("text"),
    "writelines": lambda i, o: (o.writelines([b"a", bytearray(b"b"), memoryview(b"c")]), 1),
    "iteration after close": _close_then(lambda i, o: list(i)),
    "readlines after close": _close_then(lambda i, o: i.readlines()),
    "read after close": _close_then(lambda i, o: i.read()),
    "readline after close": _close_then(lambda i, o: i.readline()),
    "peek after close": _close_then(lambda i, o: i.peek()),
    "readinto after close": _close_then(lambda i, o: i.readinto(bytearray(2))),
    "write after close": _close_then(lambda i, o: o.write(b"x")),
    "flush after close": _close_then(lambda i, o: o.flush()),
    "with after close": _close_then(lambda i, o: i.__enter__()),
}
_makefile_outcomes: dict[str, Any] = {}


def _makefile_outcomes_once(pki: Pki) -> dict[str, Any]:
    """What each of CALLS does on ssl.SSLSocket.makefile("rb") / ("wb") (once a session)."""
    if not _makefile_outcomes:
        ctx = pki.py_client_context("tls13")
        for name, call in CALLS.items():
            port, join = _serve(pki, _send(DATA, (len(DATA),)))
            with (
                socket.create_connection((LOCAL, port)) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as tls,
                tls.makefile("rb") as cin,
                tls.makefile("wb") as cout,
            ):
                _makefile_outcomes[name] = _outcome(call, cin, cout)
            join(30)
    return _makefile_outcomes


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ports_follow_ssl_makefile(path: str, pki: Pki, transport: str) -> None:
    """Each of CALLS on the ports and on ssl.SSLSocket.makefile, a connection each: the same
    result, or an exception of the same type. (Not compared: messages; fileno(), which the
    ports do not have, see below; and inquiries on a closed file, which io leaves undefined.)"""
    differ = {}
    for name, call in CALLS.items():
        got, _ = _exchange(
            pki,
            transport,
            _send(DATA, (len(DATA),)),
            lambda cin, cout, call=call: _outcome(call, cin, cout),
        )
        want = _makefile_outcomes_once(pki)[name]
        if got != want:
            differ[name] = (got, want)
    assert differ == {}


def test_ports_have_no_descriptor_to_select_on(path: str, pair: Any) -> None:
    """API.md gives a fileno() to listeners only: a port's bytes may already be decrypted and
    kept (in OpenSSL or read ahead) while its socket has nothing, so select() on the socket
    could wait forever for bytes that are there. fileno() raises io.UnsupportedOperation, as
    io's streams without one do, and selectors refuse the port."""
    cin, cout, _sin, _sout = pair
    for p in (cin, cout):
        with pytest.raises(io.UnsupportedOperation):
            p.fileno()
        with selectors.DefaultSelector() as sel, pytest.raises(ValueError):
            sel.register(p, selectors.EVENT_READ)
