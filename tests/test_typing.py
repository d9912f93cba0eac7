"""What a user's type checker sees: the package ships py.typed, and the public functions whose
result API.md gives a shape return that shape, not Any (mypy --strict on a small program that
imports the sslports under test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sslports

pytest.importorskip("mypy")

PROGRAM = """\
import sslports

reveal_type(sslports.ssl_addresses(sslports.ssl_listen(0), True))
reveal_type(sslports.ssl_addresses(sslports.ssl_listen(0)))
reveal_type(sslports.ssl_default_verify_sources())
reveal_type(sslports.ssl_default_verify_sources([]))
count: int = sslports.ssl_default_verify_sources()
"""


def _mypy(tmp_path: Path, program: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict on `program` (user.py), importing the sslports under test."""
    (tmp_path / "user.py").write_text(program)
    src = str(Path(sslports.__file__).resolve().parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "user.py"],
        cwd=tmp_path, env={"MYPYPATH": src, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return result


def test_a_type_checker_sees_the_shapes_api_md_gives(tmp_path: Path) -> None:
    """ssl_addresses was tuple[Any, ...] and ssl_default_verify_sources() Any: a caller's
    `host, port = ssl_addresses(p)` or `count: int = ssl_default_verify_sources()` passed
    mypy --strict unchecked."""
    result = _mypy(tmp_path, PROGRAM)
    lines = result.stdout.replace("builtins.", "").replace("Tuple[", "tuple[").splitlines()
    revealed = [line.split('Revealed type is "', 1)[1].rstrip('"') for line in lines
                if "Revealed type is" in line]  # fmt: skip
    assert revealed[:2] == ["tuple[str, int, str, int]", "tuple[str, str]"], result.stdout
    assert revealed[2].startswith(("list[str | bytes", "list[Union[str, bytes")), result.stdout
    assert revealed[3] == "None", result.stdout
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1 and "user.py:7:" in errors[0], result.stdout


TAKES = """\
import io
import sslports

client = sslports.ssl_make_client_context()
server = sslports.ssl_make_server_context()
listener = sslports.ssl_listen(0)
inp, out = sslports.ssl_connect("localhost", 443, client)
sslports.ssl_set_verify(client, True)
sslports.ssl_set_verify(listener, True)
sslports.ssl_try_verify(inp, True)
sslports.ssl_load_certificate_chain(listener, "chain.pem")
sslports.ssl_load_private_key(server, "key.pem")
sslports.ssl_server_context_enable_ecdh(server)
sslports.ssl_set_keylogger(client, None)
sslports.ssl_set_verify_hostname(client, True)
host, port, peer, peer_port = sslports.ssl_addresses(out, True)
local, _ = sslports.ssl_addresses(listener)
verified: bool = sslports.ssl_peer_verified(inp)
alpn = sslports.ssl_get_alpn_selected(out)
sslports.ssl_abandon_port(out)
# the mistakes a type checker now sees (each line below: one error)
sslports.ssl_set_verify("client", True)
sslports.ssl_server_context_enable_dhe(client)
sslports.ssl_load_verify_source(listener, "roots.pem")
sslports.ssl_peer_verified(client)
sslports.ssl_addresses(io.BytesIO())
sslports.ssl_set_server_alpn(client, [b"h2"])
sslports.ssl_seal_context(inp)
"""


def test_a_type_checker_sees_what_each_procedure_takes(tmp_path: Path) -> None:
    """The context procedures and connection facts took `object`, so passing a listener where
    API.md allows only a context, a client context to a server's procedure, or a context
    where a port is due passed mypy --strict and failed only when run. Now each parameter
    names what API.md says it takes: the right uses check clean, each mistake is an error."""
    result = _mypy(tmp_path, TAKES)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    first = (
        TAKES.splitlines().index(
            "# the mistakes a type checker now sees (each line below: one error)"
        )
        + 2
    )
    assert lines == list(range(first, len(TAKES.splitlines()) + 1)), result.stdout
    assert all(line.endswith(("[arg-type]", "[call-overload]")) for line in errors), result.stdout
