"""TLS for the HTTP-family executors: cached client contexts, certificate capture and `tls_info`.

Three things the standard library does not give us directly:

* the peer chain of a handshake that *failed* verification (so a bad certificate is still reported):
  our SSLObject subclass stores it on the exception before it propagates;
* whether a chain would verify when `ignore_tls_errors` skipped verification (`valid` tells that):
  checked after the handshake with `cryptography`'s verifier against the same trust anchors;
* Go's renderings: `pkix.Name.String()` DNs, signature algorithm names, x509 error texts.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import ssl
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import _ssl

from executors._kit import limits as _limits
from executors._kit.gotext import format_rfc3339

# `cryptography` (~10 MB of RSS) is imported on first use: a worker that only checks plain-http
# monitors never loads it.


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """Everything that makes two client contexts different; the context cache key."""
    verify: bool = True
    ca_pem: str | None = None  # trust anchors replacing the system roots (mTLS `tlsCa`)
    cert_pem: str | None = None  # client certificate (mTLS)
    key_pem: str | None = None


# --------------------------------------------------------------------------------------------------
# Contexts

class CapturingSSLObject(ssl.SSLObject):
    """Keeps the peer chain on a verification failure (as `exc.peer_chain`): Go reports nothing then,
    we report the cert. Every context built here uses it (SSLContext.sslobject_class)."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLCertVerificationError as exc:
            exc.peer_chain = chain_der(self, verified=False)  # type: ignore[attr-defined]
            raise


_CapturingSSLObject = CapturingSSLObject  # the former name, for code not yet on the public one


def chain_der(ssl_object: Any, verified: bool) -> list[bytes]:
    """DER certificates of the peer: the verified chain (leaf..root) or the chain as sent."""
    inner = getattr(ssl_object, "_sslobj", None)
    try:
        if inner is not None:  # Python 3.10-3.12 keep these on the private object
            certs = inner.get_verified_chain() if verified else inner.get_unverified_chain()
        else:  # Python 3.13+
            certs = ssl_object.get_verified_chain() if verified else ssl_object.get_unverified_chain()
    except (AttributeError, ValueError, ssl.SSLError):
        certs = None
    if not certs:
        leaf = ssl_object.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in certs]


# Keyed by digests of the PEM texts (a config may carry megabytes of them); bounded in bytes too, as
# a context holds its parsed trust anchors and client pair.
_contexts = _limits.BoundedCache(max_bytes=32 << 20, max_entries=256, max_item=4 << 20)


def _system_paths_key() -> tuple[str | None, str | None]:
    # Go and OpenSSL both honour these; tests point them at a test CA to play "publicly trusted".
    return os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")


def _digest(*parts: str | None) -> str | None:
    if all(p is None for p in parts):
        return None
    h = hashlib.sha256()
    for p in parts:
        h.update(b"\0" if p is None else p.encode("utf-8", "surrogateescape") + b"\1")
    return h.hexdigest()


def settings_key(settings: TLSSettings) -> tuple:
    """A short cache key for these settings: digests of the PEM texts (a config may carry megabytes of
    them), and the system roots in use when there is no CA."""
    return (settings.verify, _digest(settings.ca_pem), _digest(settings.cert_pem, settings.key_pem),
            _system_paths_key() if settings.ca_pem is None else None)


def client_context(settings: TLSSettings, alpn: tuple[str, ...] | None = ("http/1.1",)) -> ssl.SSLContext:
    """A client context for these settings (TLS 1.2+, as Go's client), offering the `alpn` protocols
    (None: no ALPN), built once (building one costs ~30 ms of CPU)."""
    key = settings_key(settings) + (alpn,)
    ctx = _contexts.get(key)
    if ctx is not None:
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # Go's client default
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if settings.ca_pem is not None:
        ctx.load_verify_locations(cadata=_valid_ca_pem(settings.ca_pem))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if settings.cert_pem is not None and settings.key_pem is not None:
        _load_client_pair(ctx, settings.cert_pem, settings.key_pem)
    if not settings.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.sslobject_class = CapturingSSLObject
    pem_bytes = sum(len(p) for p in (settings.ca_pem, settings.cert_pem, settings.key_pem) if p)
    _contexts.put(key, ctx, 2 * pem_bytes + (64 << 10))
    return ctx


def _load_client_pair(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """load_cert_chain wants paths: hand it an anonymous in-memory file, never one on disk."""
    data = (cert_pem.strip() + "\n" + key_pem.strip() + "\n").encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("peekaping-client-cert", 0)
        try:
            os.write(fd, data)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile() as fh:  # pragma: no cover - non-Linux
        fh.write(data)
        fh.flush()
        ctx.load_cert_chain(fh.name)


# --------------------------------------------------------------------------------------------------
# PEM checks with Go's texts (tls.X509KeyPair, CertPool.AppendCertsFromPEM)

_PEM_BLOCK = re.compile(r"-----BEGIN ([^-\r\n]*)-----\r?\n(.*?)-----END \1-----", re.S)


def _pem_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(text)]


def _first_pem(text: str, wanted, what: str, missing: str) -> str:
    """The first PEM block of a wanted type, or ValueError in tls.X509KeyPair's words."""
    blocks = _pem_blocks(text)
    for kind, pem in blocks:
        if wanted(kind):
            return pem
    if not blocks:
        raise ValueError(f"tls: failed to find any PEM data in {what} input")
    skipped = " ".join(kind for kind, _ in blocks)
    raise ValueError(f"tls: {missing} after skipping PEM blocks of the following types: [{skipped}]")


def check_client_pair(cert_pem: str, key_pem: str) -> None:
    """Raise ValueError in Go's words when the pair would not load (tls.X509KeyPair)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = _first_pem(cert_pem, lambda kind: kind == "CERTIFICATE", "certificate",
                      'failed to find "CERTIFICATE" PEM block in certificate input')
    try:
        leaf = x509.load_pem_x509_certificate(cert.encode())
    except ValueError:
        raise ValueError("x509: malformed certificate") from None
    key_block = _first_pem(key_pem, lambda kind: kind == "PRIVATE KEY" or kind.endswith(" PRIVATE KEY"), "key",
                           'failed to find PEM block with type ending in "PRIVATE KEY" in key input')
    try:
        key = serialization.load_pem_private_key(key_block.encode(), password=None)
    except (ValueError, TypeError, NotImplementedError):
        raise ValueError("tls: failed to parse private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise ValueError("tls: private key does not match public key")


def _valid_ca_pem(text: str) -> str:
    """The CERTIFICATE blocks that parse; Go's AppendCertsFromPEM skips the rest the same way."""
    from cryptography import x509

    good = []
    for kind, pem in _pem_blocks(text):
        if kind != "CERTIFICATE":
            continue
        try:
            x509.load_pem_x509_certificate(pem.encode())
        except ValueError:
            continue
        good.append(pem)
    return "\n".join(good)


def has_ca_cert(text: str) -> bool:
    return bool(_valid_ca_pem(text))


# --------------------------------------------------------------------------------------------------
# Chain verification when the handshake skipped it (ignore_tls_errors)

_stores = _limits.BoundedCache(max_bytes=32 << 20, max_entries=64, max_item=8 << 20)  # keyed by digest


def _store(ca_pem: str | None) -> Any:
    """A cryptography verification Store with the trust anchors (tlsCa, or the system roots)."""
    from cryptography import x509
    from cryptography.x509 import verification

    key = (_digest(ca_pem),) if ca_pem is not None else _system_paths_key()
    store = _stores.get(key)
    if store is not None:
        return store
    if ca_pem is not None:
        data = _valid_ca_pem(ca_pem).encode()
    else:
        paths = ssl.get_default_verify_paths()
        data = b""
        if paths.cafile and os.path.isfile(paths.cafile):
            with open(paths.cafile, "rb") as fh:
                data = fh.read()
        elif paths.capath and os.path.isdir(paths.capath):
            for name in sorted(os.listdir(paths.capath)):
                if name.endswith((".pem", ".crt")):
                    try:
                        with open(os.path.join(paths.capath, name), "rb") as fh:
                            data += fh.read() + b"\n"
                    except OSError:
                        pass
    certs = []
    with warnings.catch_warnings():  # a few system roots have non-positive serials
        warnings.simplefilter("ignore")
        for kind, pem in _pem_blocks(data.decode("ascii", "replace")):
            if kind == "CERTIFICATE":
                try:
                    certs.append(x509.load_pem_x509_certificate(pem.encode()))
                except ValueError:
                    pass
    if not certs:
        return None
    store = verification.Store(certs)
    _stores.put(key, store, 2 * len(data) + 4096)
    return store


def _must_be_ca(policy: Any, cert: Any, constraints: Any) -> None:
    if constraints is None or not constraints.ca:
        raise ValueError("issuer is not a CA")


@functools.lru_cache(maxsize=1)
def _policies() -> tuple[Any, Any]:
    """The Web PKI defaults reject much of what private CAs issue (e.g. a critical SAN with a subject)
    and what OpenSSL and Go accept; keep the checks that decide trust: signatures, validity, names,
    the CA flag."""
    from cryptography import x509
    from cryptography.x509 import verification

    ca = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, _must_be_ca)
    ee = verification.ExtensionPolicy.permit_all().require_present(
        x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
    return ca, ee


def verify_chain(chain: list[bytes], host: str, ca_pem: str | None) -> list[bytes] | None:
    """The verified chain (leaf..anchor) if `chain` verifies for `host`, else None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import verification

    if not chain:
        return None
    store = _store(ca_pem)
    if store is None:
        return None
    try:
        certs = [x509.load_der_x509_certificate(d) for d in chain]
        try:
            subject: Any = verification.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            subject = verification.DNSName(host)
        ca_policy, ee_policy = _policies()
        verifier = (verification.PolicyBuilder().store(store)
                    .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy).build_server_verifier(subject))
        return [c.public_bytes(serialization.Encoding.DER) for c in verifier.verify(certs[0], certs[1:])]
    except Exception:  # VerificationError, unsupported names or extensions: not verified
        return None


# --------------------------------------------------------------------------------------------------
# tls_info (spec 4.4), with the chain nested through issuerCertificate

_static = _limits.BoundedCache(max_bytes=8 << 20, max_entries=512)  # keyed by DER a peer sent

_SIG_NAMES = {
    "1.2.840.113549.1.1.2": "MD2-RSA", "1.2.840.113549.1.1.4": "MD5-RSA", "1.2.840.113549.1.1.5": "SHA1-RSA",
    "1.2.840.113549.1.1.11": "SHA256-RSA", "1.2.840.113549.1.1.12": "SHA384-RSA",
    "1.2.840.113549.1.1.13": "SHA512-RSA", "1.2.840.10040.4.3": "DSA-SHA1", "2.16.840.1.101.3.4.3.2": "DSA-SHA256",
    "1.2.840.10045.4.1": "ECDSA-SHA1", "1.2.840.10045.4.3.2": "ECDSA-SHA256", "1.2.840.10045.4.3.3": "ECDSA-SHA384",
    "1.2.840.10045.4.3.4": "ECDSA-SHA512", "1.3.101.112": "Ed25519",
}
_PSS = "1.2.840.113549.1.1.10"
_DN_NAMES = {"2.5.4.6": "C", "2.5.4.8": "ST", "2.5.4.7": "L", "2.5.4.9": "STREET", "2.5.4.17": "POSTALCODE",
             "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.3": "CN", "2.5.4.5": "SERIALNUMBER"}
_DN_ORDER = ["2.5.4.6", "2.5.4.8", "2.5.4.7", "2.5.4.9", "2.5.4.17", "2.5.4.10", "2.5.4.11"]
_PRINTABLE = re.compile(r"^[A-Za-z0-9 '()+,\-./:=?]*$")


def _hex_colon(data: bytes) -> str:
    return ":".join(f"{b:02X}" for b in data)


def _der_string(value: str) -> bytes:
    """Go's asn1.Marshal of a string: PrintableString when possible, else UTF8String."""
    body = value.encode("utf-8")
    tag = 0x13 if _PRINTABLE.match(value) else 0x0C
    n = len(body)
    if n < 128:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + body


def _escape_dn_value(value: str) -> str:
    out = []
    last = len(value.encode("utf-8")) - 1
    pos = 0
    for ch in value:
        escape = ch in ',+"\\<>;' or (ch == " " and (pos == 0 or pos == last)) or (ch == "#" and pos == 0)
        out.append("\\" + ch if escape else ch)
        pos += len(ch.encode("utf-8"))
    return "".join(out)


def go_name(name: Any) -> str:
    """Go's pkix.Name.String(): known attributes rebuilt in a fixed order, then printed reversed."""
    values: dict[str, list[str]] = {}
    single: dict[str, str] = {}
    extra: list[tuple[str, str]] = []
    for rdn in name.rdns:
        for attr in rdn:
            oid = attr.oid.dotted_string
            value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
            if oid in ("2.5.4.3", "2.5.4.5"):
                single[oid] = value  # Go keeps the last CommonName / SerialNumber
            elif oid in _DN_NAMES:
                values.setdefault(oid, []).append(value)
            else:
                extra.append((oid, value))
    rdns: list[list[tuple[str, str]]] = [[item] for item in extra]
    for oid in _DN_ORDER:
        if values.get(oid):
            rdns.append([(oid, v) for v in values[oid]])
    for oid in ("2.5.4.3", "2.5.4.5"):
        if single.get(oid):
            rdns.append([(oid, single[oid])])
    parts = []
    for rdn in reversed(rdns):
        items = []
        for oid, value in rdn:
            label = _DN_NAMES.get(oid)
            if label is None:
                items.append(f"{oid}=#{_der_string(value).hex()}")
            else:
                items.append(f"{label}={_escape_dn_value(value)}")
        parts.append("+".join(items))
    return ",".join(parts)


def _static_info(der: bytes) -> dict:
    """The time-independent fields of one certificate, cached by its DER bytes."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

    hit = _static.get(der)
    if hit is not None:
        return hit
    with warnings.catch_warnings():  # Go accepts negative serial numbers; so do we
        warnings.simplefilter("ignore")
        cert = x509.load_der_x509_certificate(der)
    subject, issuer = go_name(cert.subject), go_name(cert.issuer)
    info: dict[str, Any] = {
        "subject": subject,
        "issuer": issuer,
        "fingerprint": _hex_colon(hashlib.sha1(der).digest()),
        "fingerprint256": _hex_colon(hashlib.sha256(der).digest()),
        "serialNumber": str(cert.serial_number),
        "validFrom": format_rfc3339(int(cert.not_valid_before_utc.timestamp()) * 1_000_000_000),
        "validTo": format_rfc3339(int(cert.not_valid_after_utc.timestamp()) * 1_000_000_000),
        "daysRemaining": 0,
        "certType": "self-signed" if subject == issuer else "server",
    }
    names = _sans(cert)
    if names:
        info["validFor"] = names
    info["signatureAlgorithm"] = _sig_name(cert)
    key = cert.public_key()
    info["publicKeyAlgorithm"] = ("RSA" if isinstance(key, rsa.RSAPublicKey) else
                                  "ECDSA" if isinstance(key, ec.EllipticCurvePublicKey) else
                                  "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else
                                  "DSA" if isinstance(key, dsa.DSAPublicKey) else "0")
    if isinstance(key, rsa.RSAPublicKey):
        info["keySize"] = key.key_size
    try:
        info["version"] = cert.version.value + 1
    except Exception:
        info["version"] = 0
    info["_not_after"] = cert.not_valid_after_utc.timestamp()
    _static.put(der, info, 2 * len(der) + 4096)
    return info


def _sans(cert: Any) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    names = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return names


def _sig_name(cert: Any) -> str:
    oid = cert.signature_algorithm_oid.dotted_string
    if oid == _PSS:
        try:
            digest = cert.signature_hash_algorithm
        except Exception:
            return "0"
        return {"sha256": "SHA256-RSAPSS", "sha384": "SHA384-RSAPSS", "sha512": "SHA512-RSAPSS"}.get(
            digest.name if digest else "", "0")
    return _SIG_NAMES.get(oid, "0")


def cert_info(chain: list[bytes], now: float | None = None) -> dict | None:
    """CertificateInfo of chain[0], with the rest of the chain nested as issuerCertificate."""
    if not chain:
        return None
    now = time.time() if now is None else now
    out: dict | None = None
    for der in reversed(chain):  # build from the root down so each level nests its issuer
        try:
            static = _static_info(der)
        except Exception:  # an unparsable certificate ends the chain where it is
            out = None
            continue
        info: dict[str, Any] = {}
        for k, v in static.items():
            if k == "_not_after":
                continue
            if k == "signatureAlgorithm" and out is not None:
                info["issuerCertificate"] = out  # spec 4.4 key order: after validFor
            info[k] = v
        info["daysRemaining"] = int((static["_not_after"] - now) / 3600 / 24)
        out = info
    return out


def tls_info(chain: list[bytes], valid: bool, now: float | None = None) -> dict:
    info: dict[str, Any] = {"valid": valid}
    cert = cert_info(chain, now)
    if cert is not None:
        info["certInfo"] = cert
    return info


# --------------------------------------------------------------------------------------------------
# Go's texts for TLS failures

def _go_time(ts: float) -> str:
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def verify_error_text(exc: ssl.SSLCertVerificationError, host: str) -> str:
    """`tls: failed to verify certificate: x509: ...` as crypto/x509 words it."""
    from cryptography import x509

    code = getattr(exc, "verify_code", 0)
    chain: list[bytes] = getattr(exc, "peer_chain", None) or []
    leaf = None
    if chain:
        try:
            leaf = x509.load_der_x509_certificate(chain[0])
        except ValueError:
            leaf = None
    reason: str
    if code in (2, 18, 19, 20, 21, 27, 28):
        reason = "x509: certificate signed by unknown authority"
    elif code in (9, 10) and leaf is not None:
        now = time.time()
        if code == 10:
            detail = f"current time {_go_time(now)} is after {_go_time(leaf.not_valid_after_utc.timestamp())}"
        else:
            detail = f"current time {_go_time(now)} is before {_go_time(leaf.not_valid_before_utc.timestamp())}"
        reason = "x509: certificate has expired or is not yet valid: " + detail
    elif code in (62, 64) and leaf is not None:
        reason = _hostname_error(leaf, host)
    else:
        message = getattr(exc, "verify_message", "") or str(exc)
        reason = "x509: " + message
    return "tls: failed to verify certificate: " + reason


def _hostname_error(leaf: Any, host: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    try:
        ext = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        dns = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
        ips = [str(n) for n in ext.get_values_for_type(x509.IPAddress)]
        has_san = True
    except x509.ExtensionNotFound:
        dns, ips, has_san = [], [], False
    cns = [a.value for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if not has_san and cns and str(cns[-1]).lower() == host.lower():
        return "x509: certificate relies on legacy Common Name field, use SANs instead"
    try:
        ipaddress.ip_address(host)
        if not ips:
            return f"x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
        valid = ", ".join(ips)
    except ValueError:
        valid = ", ".join(dns)
    if not valid:
        return f"x509: certificate is not valid for any names, but wanted to match {host}"
    return f"x509: certificate is valid for {valid}, not {host}"


_ALERTS = {
    "HANDSHAKE_FAILURE": "handshake failure", "BAD_CERTIFICATE": "bad certificate",
    "UNKNOWN_CA": "unknown certificate authority", "CERTIFICATE_REQUIRED": "certificate required",
    "PROTOCOL_VERSION": "protocol version not supported", "INTERNAL_ERROR": "internal error",
    "ACCESS_DENIED": "access denied", "DECRYPT_ERROR": "error decrypting message",
    "UNRECOGNIZED_NAME": "unrecognized name", "CERTIFICATE_EXPIRED": "expired certificate",
    "CERTIFICATE_REVOKED": "revoked certificate", "UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "CERTIFICATE_UNKNOWN": "unknown certificate", "ILLEGAL_PARAMETER": "illegal parameter",
    "NO_APPLICATION_PROTOCOL": "no application protocol", "INSUFFICIENT_SECURITY": "insufficient security level",
}


def tls_error_text(exc: BaseException, host: str) -> str:
    """A TLS-layer failure in Go's words (`remote error: tls: ...`, `tls: ...`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verify_error_text(exc, host)
    if isinstance(exc, ssl.SSLEOFError):
        return "EOF"
    reason = getattr(exc, "reason", None) or ""
    for marker, text in _ALERTS.items():
        if marker in reason and "ALERT" in reason:
            return f"remote error: tls: {text}"
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"):
        return "tls: first record does not look like a TLS handshake"
    if reason:
        return "tls: " + reason.lower().replace("_", " ")
    return "tls: " + (str(exc) or type(exc).__name__)
