"""Which protocol versions really complete a handshake with this OpenSSL build.

`supported_client_protocols` must list only versions that work, so each is tried once, in
memory: a client and a server pump wired back to back, no sockets, no threads.
"""

from __future__ import annotations

from typing import Any

from . import _binding

VERSIONS = ("tls", "tls11", "tls12", "tls13")


def _pair_handshake(client: Any, server: Any) -> bool:
    lib = _binding.lib
    ffi = _binding.ffi
    err = ffi.new("sp_err *")
    buf = ffi.new("unsigned char[]", 65536)
    done = {0: False, 1: False}
    ends = (client, server)
    for _ in range(50):
        for i, (me, peer) in enumerate((ends, ends[::-1])):
            if not done[i]:
                status = lib.sp_handshake(me, 0, err)
                if status == lib.SP_OK:
                    done[i] = True
                elif status != lib.SP_WANT_READ:
                    return False
            while True:
                n = lib.sp_take(me, buf, 65536)
                if n == 0:
                    break
                lib.sp_feed(peer, buf, n)
        if done[0] and done[1]:
            return True
    return False


def probe_versions() -> list[str]:
    """The version symbols (oldest first) for which an in-memory handshake succeeds."""
    if _binding.lib is None:
        return []
    from .context import TEST_PEM, SSLClientContext, SSLServerContext, _load_key

    lib = _binding.lib
    ffi = _binding.ffi
    usable = []
    pem = TEST_PEM.read_bytes()
    for version in VERSIONS:
        try:
            server = SSLServerContext(version)
            client = SSLClientContext(version)
            for ctx in (server, client):  # no SSLKEYLOGFILE lines for handshakes never on a wire
                lib.sp_ctx_enable_keylog(ctx._ptr, 0)
            if not lib.SSL_CTX_use_certificate_chain_file(server._ptr, str(TEST_PEM).encode()):
                lib.ERR_clear_error()
                continue
            _load_key("probe", server, pem, der=False, rsa=False, password=None)
        except Exception:
            lib.ERR_clear_error()
            continue
        err = ffi.new("sp_err *")
        c = ffi.gc(lib.sp_conn_new(client._ptr, 0, -1, err), lib.sp_conn_free)
        s = ffi.gc(lib.sp_conn_new(server._ptr, 1, -1, err), lib.sp_conn_free)
        if _pair_handshake(c, s):
            usable.append(version)
        lib.ERR_clear_error()
    return usable
