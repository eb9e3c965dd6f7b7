"""TLS against real HTTPS servers with certificates from a CA made in this test run: verification,
`tls_info` (spec 4.4, with the issue's full chain and `valid` rules), mTLS (items 33, 36-40)."""

from __future__ import annotations

import hashlib
import time
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from http_peers import certs, cfg, peer, run

from executors import DOWN, UP
from executors._kit.tls import go_name


def fp(der: bytes, algo=hashlib.sha256) -> str:
    return ":".join(f"{b:02X}" for b in algo(der).digest())


def der_chain(pem_text: str) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem_text.encode())]


@pytest.fixture
def trusted(monkeypatch):
    """Make the test CA a 'system' root, as SSL_CERT_FILE does for Go and OpenSSL alike."""
    monkeypatch.setenv("SSL_CERT_FILE", certs().ca_file)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


# --- item 36/37: self-signed ----------------------------------------------------------------------------

async def test_self_signed_is_down_with_tls_error_and_cert_reported():
    p = peer("https-self")
    r = await run(cfg(p.url("/status/200")))
    assert r.status == DOWN
    assert r.message == (f'Get "{p.url("/status/200")}": tls: failed to verify certificate: '
                         "x509: certificate signed by unknown authority")
    # issue 3: the certificate is reported although the handshake failed verification
    assert r.tls_info["valid"] is False
    assert r.tls_info["certInfo"]["certType"] == "self-signed"
    assert r.tls_info["certInfo"]["fingerprint256"] == fp(der_chain(certs().self_signed.cert)[0])


async def test_self_signed_with_ignore_tls_errors_is_up_and_invalid():
    p = peer("https-self")
    r = await run(cfg(p.url("/status/200"), ignore_tls_errors=True))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    info = r.tls_info
    assert info["valid"] is False
    cert = info["certInfo"]
    leaf_der = der_chain(certs().self_signed.cert)[0]
    email_hex = bytes([0x0C, len("ops@peekaping.test")]).hex() + b"ops@peekaping.test".hex()
    assert cert["subject"] == f"CN=localhost,O=Self\\, Signed & Co,C=DE,1.2.840.113549.1.9.1=#{email_hex}"
    assert cert["issuer"] == cert["subject"]
    assert cert["certType"] == "self-signed"
    assert cert["serialNumber"] == str(0x1234ABCD)
    assert cert["fingerprint"] == fp(leaf_der, hashlib.sha1)
    assert cert["fingerprint256"] == fp(leaf_der)
    assert cert["validFor"] == ["localhost", "127.0.0.1"]
    assert cert["publicKeyAlgorithm"] == "RSA" and cert["keySize"] == 2048
    assert cert["signatureAlgorithm"] == "SHA256-RSA" and cert["version"] == 3
    assert 88 <= cert["daysRemaining"] <= 90
    assert "issuerCertificate" not in cert
    assert cert["validFrom"].endswith("Z") and cert["validTo"].endswith("Z")
    assert list(cert) == ["subject", "issuer", "fingerprint", "fingerprint256", "serialNumber", "validFrom",
                          "validTo", "daysRemaining", "certType", "validFor", "signatureAlgorithm",
                          "publicKeyAlgorithm", "keySize", "version"]


# --- item 38/39: trusted chains --------------------------------------------------------------------------

async def test_trusted_server_reports_the_full_chain(trusted):
    p = peer("https")
    r = await run(cfg(p.url("/status/200", host="localhost")))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    info = r.tls_info
    assert info["valid"] is True
    leaf = info["certInfo"]
    chain = der_chain(certs().leaf.cert)
    assert leaf["certType"] == "server"
    assert leaf["fingerprint256"] == fp(chain[0])
    assert leaf["validFor"] == ["localhost", "127.0.0.1"]
    assert leaf["subject"].startswith("CN=localhost,OU=Testing cert #") and leaf["subject"].endswith(",O=trustme v1.2.1")
    intermediate = leaf["issuerCertificate"]
    assert intermediate["fingerprint256"] == fp(chain[1])
    assert intermediate["subject"] == leaf["issuer"]
    root = intermediate["issuerCertificate"]  # from the trust store: the chain goes up to the root
    assert root["fingerprint256"] == fp(der_chain(certs().ca_pem)[0])
    assert root["certType"] == "self-signed" and "issuerCertificate" not in root
    assert "validFor" not in root
    assert r.timings["tls"] > 0


async def test_ignore_tls_errors_still_tells_whether_the_chain_verifies(trusted):
    p = peer("https")
    r = await run(cfg(p.url("/status/200"), ignore_tls_errors=True))
    assert r.status == UP
    assert r.tls_info["valid"] is True  # issue 3 (Go: always false with ignore_tls_errors)
    assert r.tls_info["certInfo"]["issuerCertificate"]["issuerCertificate"]["certType"] == "self-signed"
    r = await run(cfg(peer("https-other").url("/status/200"), ignore_tls_errors=True))
    assert r.status == UP and r.tls_info["valid"] is False
    assert "issuerCertificate" in r.tls_info["certInfo"] or r.tls_info["certInfo"]["certType"] == "server"


async def test_untrusted_ca_without_system_trust():
    p = peer("https")
    r = await run(cfg(p.url("/status/200")))
    assert r.status == DOWN and "x509: certificate signed by unknown authority" in r.message
    assert r.tls_info["valid"] is False
    assert r.tls_info["certInfo"]["issuerCertificate"]["subject"] == r.tls_info["certInfo"]["issuer"]


async def test_ec_key_has_no_key_size(trusted):
    p = peer("https-ec")
    r = await run(cfg(p.url("/status/200"), ignore_tls_errors=True))
    cert = r.tls_info["certInfo"]
    assert cert["publicKeyAlgorithm"] == "ECDSA"
    assert cert["signatureAlgorithm"] == "ECDSA-SHA256"
    assert "keySize" not in cert and cert["version"] == 3


async def test_expired_certificate(trusted):
    p = peer("https-expired")
    r = await run(cfg(p.url("/status/200")))
    assert r.status == DOWN
    assert "tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time " in r.message
    assert " is after " in r.message
    assert r.tls_info["valid"] is False
    assert r.tls_info["certInfo"]["daysRemaining"] in (-1, -2)
    r = await run(cfg(p.url("/status/200"), ignore_tls_errors=True))
    assert r.status == UP and r.tls_info["valid"] is False


async def test_hostname_mismatch_texts(trusted):
    p = peer("https-wrongname")
    r = await run(cfg(p.url("/status/200", host="localhost")))
    assert r.message.endswith("tls: failed to verify certificate: x509: certificate is valid for other.example, "
                              "not localhost")
    r = await run(cfg(p.url("/status/200")))
    assert r.message.endswith("x509: certificate is valid for 10.9.9.9, not 127.0.0.1")


# --- item 40: which URLs carry tls_info -----------------------------------------------------------------

async def test_http_url_redirecting_to_https_has_no_tls_info(trusted):
    plain, secure = peer("http"), peer("https")
    r = await run(cfg(plain.url("/to?url=" + quote(secure.url("/tls-info"), safe="")), keyword="tls"))
    assert r.status == UP and r.tls_info is None


async def test_https_url_redirecting_to_http_keeps_the_https_hop(trusted):
    plain, secure = peer("http"), peer("https")
    r = await run(cfg(secure.url("/to?url=" + quote(plain.url("/tls-info"), safe="")), keyword="plain"))
    assert r.status == UP
    assert r.tls_info["valid"] is True
    assert r.tls_info["certInfo"]["fingerprint256"] == fp(der_chain(certs().leaf.cert)[0])


async def test_tls_info_on_status_and_redirect_failures(trusted):
    secure = peer("https")
    r = await run(cfg(secure.url("/status/500")))
    assert r.status == DOWN and r.tls_info["valid"] is True
    r = await run(cfg(secure.url("/redirect/1"), max_redirects=0))
    assert "redirects disabled" in r.message and r.tls_info["valid"] is True


# --- mTLS (item 33) --------------------------------------------------------------------------------------

def mtls(url: str, **extra) -> dict:
    c = certs()
    return cfg(url, authMethod="mtls", tlsCert=c.client.cert, tlsKey=c.client.key, tlsCa=c.ca_pem, **extra)


async def test_mtls_client_certificate_and_private_trust_anchor():
    p = peer("mtls")
    r = await run(mtls(p.url("/tls-info")))
    assert (r.status, r.message) == (UP, "200 - 200 OK")
    assert r.tls_info["valid"] is True  # verified against tlsCa only
    r = await run(cfg(p.url("/tls-info"), ignore_tls_errors=True))  # no client certificate
    assert r.status == DOWN and "tls" in r.message.lower()


async def test_mtls_ca_replaces_system_roots(trusted):
    p = peer("mtls")
    c = certs()
    doc = mtls(p.url("/tls-info"))
    doc["tlsCa"] = c.other_ca.cert_pem.bytes().decode()
    r = await run(doc)
    assert r.status == DOWN and "x509: certificate signed by unknown authority" in r.message


@pytest.mark.parametrize("ignore", [False, True])
async def test_mtls_config_errors(ignore):
    c = certs()
    url = peer("mtls").url("/tls-info")
    cases = [
        (dict(tlsCert="garbage"), "invalid mTLS cert/key: tls: failed to find any PEM data in certificate input"),
        (dict(tlsKey="garbage"), "invalid mTLS cert/key: tls: failed to find any PEM data in key input"),
        (dict(tlsCert=c.client.key),
         'invalid mTLS cert/key: tls: failed to find "CERTIFICATE" PEM block in certificate input after skipping '
         f"PEM blocks of the following types: [{c.client.key.split('-----BEGIN ')[1].split('-----')[0]}]"),
        (dict(tlsKey=c.other_leaf.key), "invalid mTLS cert/key: tls: private key does not match public key"),
        (dict(tlsCa="no certificate here"), "invalid mTLS CA cert"),
        (dict(tlsCa=""), "invalid mTLS CA cert"),
    ]
    for change, message in cases:
        doc = mtls(url, ignore_tls_errors=ignore)
        doc.update(change)
        r = await run(doc)
        assert (r.status, r.message) == (DOWN, message)
        assert r.start_ns == r.end_ns
        assert "PRIVATE KEY-----" not in r.message


def test_go_name_rules():
    from cryptography.x509.oid import NameOID

    name = x509.Name([
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Let's Encrypt")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "b"),
                                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "a")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, " #lead+trail ")]),
        x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example")]),
    ])
    dc = bytes([0x13, 7]).hex() + b"example".hex()
    assert go_name(name) == f"CN=\\ #lead\\+trail\\ ,OU=b+OU=a,O=Let's Encrypt,C=US,0.9.2342.19200300.100.1.25=#{dc}"


async def test_timing_of_tls_is_separate_from_connect(trusted):
    started = time.monotonic()
    r = await run(cfg(peer("https").url("/status/200")))
    assert r.status == UP and time.monotonic() - started < 2
    assert r.timings["tls"] > 0 and r.timings["connect"] > 0
