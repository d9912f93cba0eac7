"""Regenerate src/sslports/test.pem: a PUBLIC self-signed RSA test key and certificate.

CN and DNS SAN `localhost`, IP SANs 127.0.0.1 and ::1, CA:TRUE so it verifies as its own root,
valid for 30 years. It provides no security. Run: .venv/bin/python scripts/make_test_pem.py
"""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sslports public test certificate"),
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
    ]
)
start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(start)
    .not_valid_after(start + datetime.timedelta(days=365 * 30 + 7))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    .add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    .add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        critical=False,
    )
    .add_extension(
        x509.SubjectAlternativeName(
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]
        ),
        critical=False,
    )
    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    .sign(key, hashes.SHA256())
)
pem = key.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
) + cert.public_bytes(serialization.Encoding.PEM)
out = Path(__file__).resolve().parent.parent / "src" / "sslports" / "test.pem"
out.write_bytes(pem)
print(f"wrote {out}")
