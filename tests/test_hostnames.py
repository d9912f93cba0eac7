"""Issue 6: the hostname table.

Every case is (certificate, reference hostname, expected). Each case is checked twice and the
two must agree with each other and with the table:

* ``ssl_peer_check_hostname(port, name)`` on an established connection to a server presenting
  that certificate (one connection per certificate, reused for all its cases);
* handshake-time checking: a client context that trusts the test root, with ``ssl_set_verify``
  and ``ssl_set_verify_hostname`` on, connects with ``hostname=name`` (``ssl_wrap_socket`` over a
  TCP connection to 127.0.0.1, so no DNS is involved). True means the handshake completed;
  False means it failed with X509_V_ERR_HOSTNAME_MISMATCH (62) or IP_ADDRESS_MISMATCH (64).
  Any other failure fails the test.

Certificates (all issued by one test root; EC P-256):

* ``main``: DNS SANs www.example.test, *.wild.example.test, f*.partial.example.test,
  xn--bcher-kva.example.test (buecher), UPPER.Example.Test, xn--n3h.example.test (a snowman);
  IP SANs 127.0.0.1, 10.1.2.3, ::1, 2001:db8::5; CN cn.example.test (ignored: DNS SANs exist).
* ``wild``: SANs that are wildcards OpenSSL must refuse or restrict.
* ``nul``: a DNS SAN with an embedded NUL ("good.example.test\\0.evil.test"), and ok.example.test.
* ``cn``: no SAN, CN cnonly.example.test (OpenSSL 3 falls back to the CN).
* ``two_cn``: no SAN, two CNs.
* ``cn_ip``: CN cnip.example.test and only an IP SAN (no DNS SAN, so the CN still counts).
* ``cn_wild``: no SAN, CN *.cnwild.example.test.
* ``v6``: CN v6 and only IPv6 SANs (link-local, v4-mapped, the unspecified address, ...).
* ``dns_ip``: DNS SANs "127.0.0.1" and "::1" (IP addresses spelled as DNS names, which RFC 6125
  forbids) and dnsip.example.test; no IP SAN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from certs import (
    VERSIONS,
    BackgroundServer,
    Issued,
    chain_file,
    client_context,
    make_cert,
    server_context,
    wrap_client,
)
from cryptography import x509

import sslports
from sslports import SSLNetworkError

HOSTNAME_MISMATCH = 62
IP_ADDRESS_MISMATCH = 64

T, F = True, False

CASES: list[tuple[str, str, bool]] = [
    # -- main: plain names, case, dots --------------------------------------------------------
    ("main", "www.example.test", T),
    ("main", "WWW.EXAMPLE.TEST", T),
    ("main", "Www.Example.Test", T),
    ("main", "www.example.test.", T),  # a trailing dot is ignored
    ("main", ".www.example.test", F),  # a leading dot is never a hostname
    ("main", "..www.example.test", F),
    ("main", "www.example.test..", F),
    ("main", "www..example.test", F),
    ("main", "example.test", F),
    ("main", "ww.example.test", F),
    ("main", "wwww.example.test", F),
    ("main", "www.example.tes", F),
    ("main", "www.example.test.evil", F),
    ("main", "evilwww.example.test", F),
    ("main", "x.www.example.test", F),
    ("main", "www-example.test", F),
    ("main", " www.example.test", F),
    ("main", "www.example.test ", F),
    ("main", "www.example.test:443", F),
    ("main", "cn.example.test", F),  # the CN does not count when there are DNS SANs
    ("main", "localhost", F),
    ("main", "", F),
    ("main", ".", F),
    # -- main: the full-label wildcard *.wild.example.test -----------------------------------
    ("main", "a.wild.example.test", T),
    ("main", "A.WILD.EXAMPLE.TEST", T),
    ("main", "a-b.wild.example.test", T),
    ("main", "123.wild.example.test", T),
    ("main", "a.wild.example.test.", T),
    ("main", "wild.example.test", F),  # the wildcard needs a label
    ("main", ".wild.example.test", F),
    ("main", "a.b.wild.example.test", F),  # one label only
    ("main", "_a.wild.example.test", F),  # '_' is no hostname character
    ("main", "xn--bcher-kva.wild.example.test", T),  # a full-label wildcard covers A-labels
    ("main", "bücher.wild.example.test", T),  # ... and so the U-label encodes to one
    ("main", "*.wild.example.test", F),  # a reference name is never a pattern
    ("main", "a.wild.example.tes", F),
    # -- main: the partial wildcard f*.partial.example.test never matches --------------------
    ("main", "foo.partial.example.test", F),
    ("main", "f.partial.example.test", F),
    ("main", "fx.partial.example.test", F),
    ("main", "f*.partial.example.test", F),
    ("main", "partial.example.test", F),
    # -- main: IDNA ----------------------------------------------------------------------------
    ("main", "xn--bcher-kva.example.test", T),
    ("main", "XN--BCHER-KVA.EXAMPLE.TEST", T),
    ("main", "bücher.example.test", T),  # a U-label is encoded to its A-label
    ("main", "BÜCHER.example.test", T),  # nameprep folds the case
    ("main", "bucher.example.test", F),
    ("main", "xn--bcher-kvb.example.test", F),
    ("main", "☃.example.test", T),  # xn--n3h
    ("main", "xn--n3h.example.test", T),
    ("main", "☃☃.example.test", F),
    ("main", "a" * 64 + ".example.test", F),  # a label over 63 octets
    ("main", "ü" * 70 + ".example.test", F),  # not encodable as IDNA
    # -- main: upper case in the certificate ----------------------------------------------------
    ("main", "upper.example.test", T),
    ("main", "UPPER.EXAMPLE.TEST", T),
    ("main", "upper.example.test.", T),
    ("main", "uppe.example.test", F),
    # -- main: IP literals against IP SANs -------------------------------------------------------
    ("main", "127.0.0.1", T),
    ("main", "10.1.2.3", T),
    ("main", "127.0.0.2", F),
    ("main", "10.1.2.4", F),
    ("main", "0.0.0.0", F),
    ("main", "255.255.255.255", F),
    ("main", "::1", T),
    ("main", "0:0:0:0:0:0:0:1", T),
    ("main", "::0:1", T),
    ("main", "::1%lo", T),  # the zone is not part of the address
    # ... but only an IPv6 address has one, of RFC 6874's characters: these are DNS names
    ("main", "127.0.0.1%lo", F),
    ("main", "127.0.0.1%.evil.example", F),
    ("main", "10.1.2.3% any text", F),
    ("main", "::1%/../x y", F),
    ("main", "::1%", F),
    ("main", "::2", F),
    ("main", "::", F),
    ("main", "2001:db8::5", T),
    ("main", "2001:DB8::5", T),
    ("main", "2001:db8:0:0:0:0:0:5", T),
    ("main", "2001:0db8:0000::0005", T),
    ("main", "2001:db8::6", F),
    ("main", "::ffff:127.0.0.1", F),  # a v4-mapped v6 address is another address
    ("main", "::ffff:10.1.2.3", F),
    ("main", "127.0.0.1.", F),  # an IP literal with a trailing dot names nothing
    ("main", "127.1", F),
    ("main", "0177.0.0.1", F),
    ("main", "127.000.000.001", F),
    ("main", "2130706433", F),
    ("main", "[::1]", F),
    ("main", "[127.0.0.1]", F),
    # -- wild: wildcards OpenSSL refuses ---------------------------------------------------------
    ("wild", "a.test", F),  # *.test: too few labels after the wildcard
    ("wild", "anything", F),  # *
    ("wild", "a.b.deep.example.test", F),  # *.*.deep.example.test
    ("wild", "xn--abc.idn.example.test", F),  # xn--*.idn.example.test
    ("wild", "a.b.mid.example.test", F),  # a.*.mid.example.test (not the leftmost label)
    ("wild", "a.x.mid.example.test", F),
    ("wild", "www.xn--bcher-kva.example.test", T),  # *.xn--bcher-kva.example.test
    ("wild", "www.bücher.example.test", T),
    ("wild", "xn--bcher-kva.example.test", F),
    ("wild", "x.upper.example.test", T),  # *.Upper.Example.Test
    ("wild", "X.UPPER.EXAMPLE.TEST", T),
    ("wild", "upper.example.test", F),
    # -- nul: a DNS SAN with an embedded NUL never matches anything --------------------------
    ("nul", "good.example.test", F),
    ("nul", "evil.test", F),
    ("nul", "x.evil.test", F),
    ("nul", "good.example.test.evil.test", F),
    ("nul", "ok.example.test", T),  # the certificate's other SAN still works
    # -- cn: no SAN at all: OpenSSL 3 checks the subject CN ------------------------------------
    ("cn", "cnonly.example.test", T),
    ("cn", "CNONLY.Example.Test", T),
    ("cn", "cnonly.example.test.", T),
    ("cn", "other.example.test", F),
    ("cn", "127.0.0.1", F),  # IP literals are only ever checked against IP SANs
    # -- two_cn: every CN is checked --------------------------------------------------------
    ("two_cn", "first.example.test", T),
    ("two_cn", "second.example.test", T),
    ("two_cn", "third.example.test", F),
    # -- cn_ip: an IP SAN but no DNS SAN: the CN still counts for DNS names -------------------
    ("cn_ip", "cnip.example.test", T),
    ("cn_ip", "127.0.0.1", T),
    ("cn_ip", "127.0.0.2", F),
    # -- v6: more IPv6 SANs -----------------------------------------------------------------
    ("v6", "fe80::1", T),
    ("v6", "FE80::1%eth0", T),
    ("v6", "fe80::1%1", T),
    ("v6", "fe80::2", F),
    ("v6", "1:0:0:1:0:0:1:1", T),
    ("v6", "1::1:0:0:1:1", T),
    ("v6", "1:0:0:1::1:1", T),
    ("v6", "::ffff:127.0.0.1", T),
    ("v6", "::ffff:7f00:1", T),
    ("v6", "127.0.0.1", F),  # the v4-mapped SAN is not the IPv4 address
    ("v6", "::", T),
    # -- dns_ip: DNS SANs that look like IP addresses -----------------------------------------
    ("dns_ip", "127.0.0.1", F),  # an IP literal is checked against IP SANs only
    ("dns_ip", "127.0.0.1.", F),  # ... and with a trailing dot it is no DNS name either
    ("dns_ip", "::1", F),
    ("dns_ip", "::1.", F),
    ("dns_ip", "127.1", F),  # a DNS name (not an IP literal), and no DNS SAN spells it
    ("dns_ip", "dnsip.example.test", T),
    # -- cn_uri, cn_srv: a CN beside SRV or URI names only (RFC 6125 6.4.4: the CN is no name)
    ("cn_uri", "cnuri.example.test", F),
    ("cn_srv", "cnsrv.example.test", F),
    ("cn_srv", "_xmpp.cnsrv.example.test", F),
    # -- cn_wild: a wildcard CN -------------------------------------------------------------
    ("cn_wild", "a.cnwild.example.test", T),
    ("cn_wild", "cnwild.example.test", F),
    ("cn_wild", "a.b.cnwild.example.test", F),
]


def _certs() -> tuple[Path, dict[str, Issued]]:
    root = make_cert("Hostname Root CA", ca=True)
    return chain_file(root), {
        "main": make_cert(
            "cn.example.test",
            issuer=root,
            dns=[
                "www.example.test",
                "*.wild.example.test",
                "f*.partial.example.test",
                "xn--bcher-kva.example.test",
                "UPPER.Example.Test",
                "xn--n3h.example.test",
            ],
            ips=["127.0.0.1", "10.1.2.3", "::1", "2001:db8::5"],
        ),
        "wild": make_cert(
            "wild",
            issuer=root,
            dns=[
                "*.test",
                "*",
                "*.*.deep.example.test",
                "xn--*.idn.example.test",
                "a.*.mid.example.test",
                "*.xn--bcher-kva.example.test",
                "*.Upper.Example.Test",
            ],
        ),
        "nul": make_cert(
            "nul", issuer=root, dns=["good.example.test\0.evil.test", "ok.example.test"]
        ),
        "cn": make_cert("cnonly.example.test", issuer=root),
        "two_cn": make_cert(["first.example.test", "second.example.test"], issuer=root),
        "cn_ip": make_cert("cnip.example.test", issuer=root, ips=["127.0.0.1"]),
        "cn_wild": make_cert("*.cnwild.example.test", issuer=root),
        # (a SPIFFE workload's, a service's: the CN happens to look like a host name)
        "cn_uri": make_cert(
            "cnuri.example.test",
            issuer=root,
            other_sans=[x509.UniformResourceIdentifier("spiffe://example.test/workload")],
        ),
        "cn_srv": make_cert(
            "cnsrv.example.test",
            issuer=root,
            other_sans=[  # (id-on-dnsSRV, an IA5String "_xmpp.cnsrv.example.test")
                x509.OtherName(
                    x509.ObjectIdentifier("1.3.6.1.5.5.7.8.7"), b"\x16\x18_xmpp.cnsrv.example.test"
                )
            ],
        ),
        "dns_ip": make_cert("dns ip", issuer=root, dns=["127.0.0.1", "::1", "dnsip.example.test"]),
        "v6": make_cert(
            "v6",
            issuer=root,
            ips=["fe80::1", "1:0:0:1:0:0:1:1", "::ffff:127.0.0.1", "::", "2001:db8:0:1:1:1:1:1"],
        ),
    }


@dataclass
class Table:
    root: Path
    certs: dict[str, Issued]
    servers: dict[tuple[str, str], BackgroundServer]
    probes: dict[str, tuple[Any, Any]]

    def server(self, cert: str, version: str) -> BackgroundServer:
        key = (cert, version)
        if key not in self.servers:
            self.servers[key] = BackgroundServer(server_context(version, self.certs[cert]))
        return self.servers[key]

    def probe(self, cert: str) -> Any:
        """An open client port to a server presenting `cert` (no verification at all)."""
        if cert not in self.probes:
            ctx = client_context("tls13", verify=False, hostname=False)
            self.probes[cert] = wrap_client(self.server(cert, "tls13").port, ctx, None)
        return self.probes[cert][0]


@pytest.fixture(scope="module")
def table() -> Iterator[Table]:
    root, certs = _certs()
    t = Table(root, certs, {}, {})
    yield t
    for inp, out in t.probes.values():
        inp.close()
        out.close()
    for server in t.servers.values():
        server.close()
        assert server.errors == []


def _case_id(case: tuple[str, str, bool]) -> str:
    return f"{case[0]}:{case[1]!r}"


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 80
    assert len({(c, n) for c, n, _ in CASES}) == len(CASES)  # no duplicates


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_check_hostname(table: Table, case: tuple[str, str, bool]) -> None:
    cert, name, expected = case
    assert sslports.ssl_peer_check_hostname(table.probe(cert), name) is expected


def _handshake_accepts(table: Table, cert: str, name: str, version: str) -> bool:
    ctx = client_context(version, roots=[table.root])
    server = table.server(cert, version)
    try:
        inp, out = wrap_client(server.port, ctx, name)
    except SSLNetworkError as exc:
        assert exc.verify_code in (HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH), repr(exc)
        assert exc.verify_message is not None
        assert exc.verify_message.startswith(
            "hostname mismatch" if exc.verify_code == HOSTNAME_MISMATCH else "IP address mismatch"
        )
        return False
    with inp, out:
        assert sslports.ssl_peer_verified(inp)
        # The port's own check agrees with the handshake that just accepted the name.
        assert sslports.ssl_peer_check_hostname(out, name)
    return True


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_handshake_agrees(table: Table, case: tuple[str, str, bool], version: str) -> None:
    cert, name, expected = case
    accepted = _handshake_accepts(table, cert, name, version)
    checked = sslports.ssl_peer_check_hostname(table.probe(cert), name)
    assert accepted is checked, f"handshake {accepted}, ssl_peer_check_hostname {checked}"
    assert accepted is expected


def test_ip_literal_mismatch_reports_ip_code(table: Table) -> None:
    ctx = client_context("tls13", roots=[table.root])
    with pytest.raises(SSLNetworkError) as info:
        wrap_client(table.server("main", "tls13").port, ctx, "127.0.0.2")
    assert info.value.verify_code == IP_ADDRESS_MISMATCH
    with pytest.raises(SSLNetworkError) as info:
        wrap_client(table.server("main", "tls13").port, ctx, "nope.example.test")
    assert info.value.verify_code == HOSTNAME_MISMATCH


def test_reference_name_with_nul(table: Table) -> None:
    """A NUL in the reference name: ssl_peer_check_hostname says False, and the connect
    functions refuse the argument itself (ValueError) before any handshake."""
    port = table.probe("nul")
    assert sslports.ssl_peer_check_hostname(port, "good.example.test\0.evil.test") is False
    assert sslports.ssl_peer_check_hostname(port, "ok.example.test\0") is False
    ctx = client_context("tls13", roots=[table.root])
    with pytest.raises(ValueError, match="NUL"):
        wrap_client(table.server("nul", "tls13").port, ctx, "good.example.test\0.evil.test")


def test_certificate_hostnames_of_each_cert(table: Table) -> None:
    """ssl_peer_certificate_hostnames: DNS SANs (else the last CN), then IP SANs as text."""
    names = {
        cert: sslports.ssl_peer_certificate_hostnames(table.probe(cert)) for cert in table.certs
    }
    assert names["main"] == [
        "www.example.test",
        "*.wild.example.test",
        "f*.partial.example.test",
        "xn--bcher-kva.example.test",
        "UPPER.Example.Test",
        "xn--n3h.example.test",
        "127.0.0.1",
        "10.1.2.3",
        "::1",
        "2001:db8::5",
    ]
    # The embedded NUL is kept inside the one name, not split into two names.
    assert names["nul"] == ["good.example.test\0.evil.test", "ok.example.test"]
    assert names["cn"] == ["cnonly.example.test"]
    assert names["two_cn"] == ["second.example.test"]  # the last CN
    assert names["cn_ip"] == ["cnip.example.test", "127.0.0.1"]
    assert names["cn_wild"] == ["*.cnwild.example.test"]
    assert names["cn_uri"] == names["cn_srv"] == []  # (their CNs name no host)
    assert names["dns_ip"] == ["127.0.0.1", "::1", "dnsip.example.test"]
    # IPv6 in RFC 5952 form: the first longest run of zero groups (two or more) as "::".
    assert names["v6"] == [
        "v6",
        "fe80::1",
        "1::1:0:0:1:1",
        "::ffff:7f00:1",
        "::",
        "2001:db8:0:1:1:1:1:1",
    ]


def test_check_hostname_type_errors(table: Table) -> None:
    port = table.probe("main")
    with pytest.raises(TypeError, match="ssl_peer_check_hostname"):
        sslports.ssl_peer_check_hostname(port, b"www.example.test")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ssl_peer_check_hostname"):
        sslports.ssl_peer_check_hostname(object(), "www.example.test")
