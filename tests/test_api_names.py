"""The parameter names API.md spells, for every public function that has parameters.

Callers pass arguments by keyword (``ssl_set_verify_hostname(ctx=c, on=True)``,
``hex_string_to_bytes(s=...)``), so a parameter's name is part of the contract as much as its
position: a renamed parameter breaks them with a TypeError. Each entry below is API.md's
signature, in order; a ``*`` marks a keyword-only parameter. A function may take more
(extensions after these, keyword-only), never fewer, other names, or another order.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pytest

import sslports
from sslports import md5 as md5_module
from sslports import sha1 as sha1_module

CONTRACT = {
    "ssl_connect": "hostname port_no client_protocol *alpn *timeout",
    "ssl_connect_enable_break": "hostname port_no client_protocol *alpn *timeout",
    "ssl_make_client_context": "protocol *private_key *certificate_chain",
    "is_ssl_client_context": "v",
    "ssl_listen": "port_no queue_k reuse hostname_or_none server_protocol *handshake_timeout",
    "ssl_close": "listener",
    "is_ssl_listener": "v",
    "ssl_accept": "listener",
    "ssl_accept_enable_break": "listener",
    "ssl_abandon_port": "p",
    "ssl_addresses": "p_or_listener port_numbers",
    "is_ssl_port": "v",
    "ssl_make_server_context": "protocol *private_key *certificate_chain",
    "is_ssl_server_context": "v",
    "ports_to_ssl_ports": (
        "input_port output_port *mode *context *encrypt *close_original *shutdown_on_close"
        " *error *hostname *alpn *timeout"
    ),
    "ssl_load_verify_source": "context src *try_",
    "ssl_load_default_verify_sources": "context",
    "ssl_load_verify_root_certificates": "context_or_listener pathname",
    "ssl_set_ciphers": "context cipher_spec",
    "ssl_set_ciphersuites": "context spec",
    "ssl_seal_context": "context",
    "ssl_load_certificate_chain": "context_or_listener pathname",
    "ssl_load_private_key": "context_or_listener pathname rsa asn1",
    "ssl_load_suggested_certificate_authorities": "context_or_listener pathname",
    "ssl_server_context_enable_dhe": "context dh_param",
    "ssl_server_context_enable_ecdh": "context curve_name",
    "ssl_set_server_name_identification_callback": "context callback",
    "ssl_set_verify": "clp on",
    "ssl_try_verify": "clp on",
    "ssl_peer_verified": "p",
    "ssl_set_verify_hostname": "ctx on",
    "ssl_peer_certificate_hostnames": "p",
    "ssl_peer_check_hostname": "p hostname",
    "ssl_peer_subject_name": "p",
    "ssl_peer_issuer_name": "p",
    "ssl_channel_binding": "p type",
    "ssl_get_alpn_selected": "p",
    "ssl_set_server_alpn": "server_context protocols allow_no_match",
    "ssl_default_channel_binding": "p",
    "ssl_export_keying_material": "p label length context",
    "ssl_protocol_version": "p",
    "ssl_cipher_name": "p",
    "ssl_set_keylogger": "context callback",
    "ssl_wrap_socket": "sock *mode *context *encrypt *hostname *alpn *timeout *strict_eof",
    "ssl_session_reused": "p",
    "sha1.sha1": "in_port",
    "sha1.sha1_bytes": "in_port",
    "sha1.bytes_to_hex_string": "b",
    "sha1.hex_string_to_bytes": "s",
    "md5.md5": "in_port",
    "md5.md5_bytes": "in_port",
}


def _function(name: str) -> Callable[..., Any]:
    module, _, attr = name.rpartition(".")
    owner = {"": sslports, "sha1": sha1_module, "md5": md5_module}[module]
    return getattr(owner, attr)  # type: ignore[no-any-return]


def _spelled(param: inspect.Parameter) -> str:
    return ("*" if param.kind is inspect.Parameter.KEYWORD_ONLY else "") + param.name


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_parameters_are_named_as_api_md_names_them(name: str) -> None:
    want = CONTRACT[name].split()
    params = list(inspect.signature(_function(name)).parameters.values())
    assert [_spelled(p) for p in params[: len(want)]] == want
    extra = params[len(want) :]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), extra


def test_the_renamed_parameters_work_by_keyword() -> None:
    """The three names an audit found spelled otherwise (context, bstr, hex_str), called as
    API.md spells them."""
    ctx = sslports.ssl_make_client_context()
    sslports.ssl_set_verify_hostname(ctx=ctx, on=True)
    assert sha1_module.bytes_to_hex_string(b=b"\x01\xab") == "01ab"
    assert sha1_module.hex_string_to_bytes(s="01AB") == b"\x01\xab"
