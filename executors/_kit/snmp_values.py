"""SNMP on the wire for the `snmp` executor: BER encoding of requests, decoding of answers with byte
offsets (SNMPv3 signs exact bytes), value texts as Peekaping's Go worker prints the values gosnmp
decodes, and the SNMPv3 USM keys, signatures and ciphers.

Why not pysnmp: values must read as gosnmp decodes them (an IpAddress of 16 or 0 bytes, an Opaque
float, an unknown type all have a Go text; pyasn1 rejects or retypes them), a GET needs a few dozen
bytes of BER, and pysnmp's SNMPv3 runs through an SnmpEngine (0.1 s of CPU to build one, its USM
user table shared by every request on it).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import itertools
import math
import random
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB  # cryptography >= 47
except ImportError:  # older releases keep it in modes
    CFB = modes.CFB

# BER tags (universal, SNMP application types, context types and PDUs)
INTEGER, OCTET_STRING, NULL, OID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
IP_ADDRESS, COUNTER32, GAUGE32, TIMETICKS, OPAQUE, COUNTER64, UINTEGER32 = 0x40, 0x41, 0x42, 0x43, 0x44, 0x46, 0x47
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82
GET_REQUEST, RESPONSE, REPORT = 0xA0, 0xA2, 0xA8

MAX_SUBIDENTIFIER = 0xFFFFFFFF  # gosnmp's MaxObjectSubIdentifierValue
ERROR_STATUS = ("noError", "tooBig", "noSuchName", "badValue", "readOnly", "genErr", "noAccess", "wrongType",
                "wrongLength", "wrongEncoding", "wrongValue", "noCreation", "inconsistentValue",
                "resourceUnavailable", "commitFailed", "undoFailed", "authorizationError", "notWritable",
                "inconsistentName")  # RFC 3416 error-status names, by number
NO_SUCH_NAME = 2


class BerError(ValueError):
    """Bytes that are not the BER an SNMP message needs."""


# --------------------------------------------------------------------------------------------------
# Encoding

def tlv(tag: int, content: bytes) -> bytes:
    return header(tag, len(content)) + content


def header(tag: int, length: int) -> bytes:
    if length < 0x80:
        return bytes((tag, length))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


def integer(value: int) -> bytes:
    return tlv(INTEGER, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def octets(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def sequence(*parts: bytes) -> bytes:
    return tlv(SEQUENCE, b"".join(parts))


def oid_bytes(text: str) -> bytes:
    """The BER content of a dotted OID, read as gosnmp reads it (dots anywhere are skipped, at least
    two arcs, first 0-6, second below 40); ValueError in gosnmp's words."""
    arcs = []
    for part in text.split("."):
        if not part:
            continue
        if not part.isascii() or not part.isdigit():
            raise ValueError("unable to marshal OID: Invalid object identifier")
        arcs.append(int(part) if len(part) <= 20 else MAX_SUBIDENTIFIER + 1)
    if not 2 <= len(arcs) <= 128 or arcs[0] > 6 or arcs[1] >= 40:
        raise ValueError("unable to marshal OID: Invalid object identifier")
    out = bytearray(((arcs[0] * 40 + arcs[1]) & 0xFF,))  # gosnmp writes the first two arcs as one byte
    for arc in arcs[2:]:
        if arc > MAX_SUBIDENTIFIER:
            raise ValueError("unable to marshal OID: Value out of range")
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | arc & 0x7F)
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


def get_pdu(request_id: int, oid: bytes | None) -> bytes:
    """A GetRequest for one OID with a NULL value (no varbind at all when `oid` is None)."""
    varbinds = sequence(tlv(OID, oid) + b"\x05\x00") if oid is not None else b""
    return tlv(GET_REQUEST, integer(request_id) + integer(0) + integer(0) + sequence(varbinds))


def community_message(version: int, community: bytes, pdu: bytes) -> bytes:
    """An SNMPv1 (version 0) or SNMPv2c (version 1) message."""
    return sequence(integer(version), octets(community), pdu)


# --------------------------------------------------------------------------------------------------
# Decoding: positions are offsets into the whole datagram

def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at `pos`; BerError when it does not fit."""
    if pos + 2 > end:
        raise BerError("truncated element")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-byte tags are not SNMP")
    pos += 2
    if first & 0x80:
        size = first & 0x7F
        if not 0 < size <= 4 or pos + size > end:
            raise BerError("bad length")
        length = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    else:
        length = first
    if pos + length > end:
        raise BerError("truncated element")
    return tag, pos, pos + length


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        element = read_tlv(data, pos, end)
        out.append(element)
        pos = element[2]
    return out


def expect(element: tuple[int, int, int], tag: int) -> tuple[int, int]:
    if element[0] != tag:
        raise BerError(f"tag {element[0]:#04x} where {tag:#04x} belongs")
    return element[1], element[2]


def signed(data: bytes, start: int, end: int) -> int:
    if start == end:
        raise BerError("empty integer")
    return int.from_bytes(data[start:end], "big", signed=True)


def unsigned(data: bytes, start: int, end: int) -> int:
    return int.from_bytes(data[start:end], "big")


def int_at(data: bytes, element: tuple[int, int, int]) -> int:
    return signed(data, *expect(element, INTEGER))


def octets_at(data: bytes, element: tuple[int, int, int]) -> bytes:
    start, end = expect(element, OCTET_STRING)
    return data[start:end]


@dataclass(slots=True)
class Pdu:
    tag: int
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[str, int, bytes]]  # (OID text, value tag, value content)


def parse_pdu(data: bytes, element: tuple[int, int, int]) -> Pdu:
    tag, start, end = element
    if tag not in (RESPONSE, REPORT):
        raise BerError(f"PDU type {tag:#04x} is not an answer")
    fields = children(data, start, end)
    if len(fields) != 4:
        raise BerError("PDU without its four fields")
    varbinds = []
    for binding in children(data, *expect(fields[3], SEQUENCE)):
        parts = children(data, *expect(binding, SEQUENCE))
        if len(parts) != 2:
            raise BerError("varbind without name and value")
        value_tag, value_start, value_end = parts[1]
        varbinds.append((oid_text(data[slice(*expect(parts[0], OID))]), value_tag, data[value_start:value_end]))
    return Pdu(tag, int_at(data, fields[0]), int_at(data, fields[1]), int_at(data, fields[2]), varbinds)


def parse_community_message(data: bytes) -> tuple[int, Pdu]:
    """(version, PDU) of an SNMPv1/v2c answer; BerError for anything else."""
    _, start, end = read_tlv(data, 0, len(data))
    parts = children(data, start, end)
    if len(parts) != 3:
        raise BerError("not an SNMP message")
    version = int_at(data, parts[0])
    octets_at(data, parts[1])
    return version, parse_pdu(data, parts[2])


def oid_text(content: bytes) -> str:
    """A dotted OID with a leading dot, as gosnmp prints one (`.1.3.6.1.4.1.8072.3.2.10`)."""
    if not content:
        raise BerError("empty OID")
    arcs, arc = [], 0
    for byte in content:
        arc = arc << 7 | byte & 0x7F
        if not byte & 0x80:
            arcs.append(arc)
            arc = 0
    if content[-1] & 0x80:
        raise BerError("truncated OID")
    first = arcs[0]
    head = [first // 40, first % 40] if first < 80 else [2, first - 80]
    return "." + ".".join(map(str, head + arcs[1:]))


# --------------------------------------------------------------------------------------------------
# Value texts: Peekaping's convertSnmpValueToString over the values gosnmp decodes

def value_text(tag: int, content: bytes) -> str:
    """The text Peekaping's Go worker makes of a varbind value; BerError where gosnmp fails to decode.

    An OctetString is its raw bytes: bytes that are not UTF-8 become lone surrogates here and U+FFFD
    in the result, one per byte, as Go's JSON encoder replaces them."""
    if tag == OCTET_STRING:
        return content.decode("utf-8", "surrogateescape")
    if tag == INTEGER:
        return str(signed(content, 0, len(content)))
    if tag == UINTEGER32:  # gosnmp reads it as a signed integer and keeps the low 32 bits
        return str(signed(content, 0, len(content)) & 0xFFFFFFFF)
    if tag in (COUNTER32, GAUGE32, TIMETICKS, COUNTER64):
        return str(unsigned(content, 0, len(content)))
    if tag == IP_ADDRESS:
        return _ip_text(content)
    if tag == OID:
        return oid_text(content)
    if tag == OPAQUE:
        return _opaque_text(content)
    return "<nil>"  # Null, EndOfMibView and types gosnmp does not know have no value: Go prints <nil>


def _ip_text(content: bytes) -> str:
    if not content:
        return "<nil>"  # gosnmp's allowance for devices that send an empty IpAddress
    if len(content) == 4:
        return str(ipaddress.IPv4Address(content))
    if len(content) == 16:
        address = ipaddress.IPv6Address(content)
        return str(address.ipv4_mapped) if address.ipv4_mapped else address.compressed  # Go's net.IP text
    raise BerError(f"got ipaddress len {len(content)}, expected 4 or 16")


def _opaque_text(content: bytes) -> str:
    """An Opaque holding a float (tag 9f78) or double (9f79) prints as Go's %v of it; any other
    Opaque is a byte slice, printed `[1 2 3]`."""
    if len(content) > 2 and content[0] == 0x9F and content[1] in (0x78, 0x79):
        _, start, end = read_tlv(content, 1, len(content))
        raw = content[start:end]
        if content[1] == 0x78 and len(raw) == 4:
            return go_float(struct.unpack(">f", raw)[0], 32)
        if content[1] == 0x79 and len(raw) == 8:
            return go_float(struct.unpack(">d", raw)[0], 64)
        raise BerError("bad Opaque float")
    return "[" + " ".join(map(str, content)) + "]"


def go_float(value: float, bits: int) -> str:
    """Go's %v of a float32/float64: shortest digits that read back as the same value, exponent
    form (`1e+06`, `1.5e-05`) when the decimal exponent is below -4 or at least 6."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    digits, exponent = _shortest(value, bits)
    sign = "-" if value < 0 else ""
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    point = exponent + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def _shortest(value: float, bits: int) -> tuple[str, int]:
    """(significant digits, decimal exponent) of the shortest text that reads back as `value`."""
    if bits == 64:
        text = f"{abs(value):.17e}"
        for precision in range(1, 18):
            candidate = f"{abs(value):.{precision - 1}e}"
            if float(candidate) == abs(value):
                text = candidate
                break
    else:
        single = struct.Struct(">f")
        text = f"{abs(value):.8e}"
        for precision in range(1, 10):
            candidate = f"{abs(value):.{precision - 1}e}"
            if single.unpack(single.pack(float(candidate)))[0] == abs(value):
                text = candidate
                break
    mantissa, exponent = text.split("e")
    return mantissa.replace(".", "").rstrip("0") or "0", int(exponent)


# --------------------------------------------------------------------------------------------------
# Conditions: Peekaping's evaluateCondition

_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?\d+")
_SPECIAL = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "+infinity": math.inf,
            "-infinity": -math.inf, "nan": math.nan}


def parse_go_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64), or None where Go returns an error (also for out-of-range values)."""
    special = _SPECIAL.get(text.lower())
    if special is not None:
        return special
    if _DECIMAL.fullmatch(text):
        value = float(text)
    elif _HEX.fullmatch(text):
        value = float.fromhex(text)
    else:
        return None
    if math.isinf(value):
        return None  # ErrRange
    return value


_NUMERIC = {"lt": float.__lt__, "gt": float.__gt__, "le": float.__le__, "ge": float.__ge__}


def condition_passes(actual: str, operator: str, expected: str) -> bool:
    """eq/ne compare text; lt gt le ge compare numbers when both sides parse as Go floats and fall back
    to text equality otherwise; any other operator (or none) is text equality."""
    if operator == "ne":
        return actual != expected
    compare = _NUMERIC.get(operator)
    if compare is not None:
        left, right = parse_go_float(actual), parse_go_float(expected)
        if left is not None and right is not None:
            return compare(left, right)
    return actual == expected


# --------------------------------------------------------------------------------------------------
# SNMPv3 USM keys, signatures and ciphers (RFC 3414, RFC 7860 for SHA-2, RFC 3826 and the
# Blumenthal/Reeder drafts for AES-192/256)

AUTH = {"MD5": ("md5", 12), "SHA": ("sha1", 12), "SHA1": ("sha1", 12), "SHA224": ("sha224", 16),
        "SHA256": ("sha256", 24), "SHA384": ("sha384", 32), "SHA512": ("sha512", 48)}  # hash, HMAC bytes sent
PRIV = {"DES": ("des", 16, ""), "AES": ("aes", 16, ""), "AES128": ("aes", 16, ""),  # cipher, key bytes, extension
        "AES192": ("aes", 24, "blumenthal"), "AES256": ("aes", 32, "blumenthal"),
        "AES192C": ("aes", 24, "reeder"), "AES256C": ("aes", 32, "reeder")}
_password_keys: dict[tuple[str, bytes], bytes] = {}  # (hash, SHA-256 of passphrase) -> key; 1 MB of hashing each


def password_key(passphrase: bytes, hash_name: str) -> bytes:
    """RFC 3414 A.2.1: the hash of 1 MiB of the passphrase repeated (cached: the same monitors come back)."""
    cache_key = (hash_name, hashlib.sha256(passphrase).digest())
    key = _password_keys.get(cache_key)
    if key is None:
        stream = (passphrase * (1048576 // len(passphrase) + 1))[:1048576]
        key = hashlib.new(hash_name, stream).digest()
        if len(_password_keys) >= 256:
            _password_keys.pop(next(iter(_password_keys)))
        _password_keys[cache_key] = key
    return key


def localized_key(passphrase: bytes, hash_name: str, engine_id: bytes, size: int = 0, extension: str = "") -> bytes:
    """RFC 3414 A.2.2 key localisation, extended to `size` bytes for AES-192/256 as the drafts do."""
    ku = password_key(passphrase, hash_name)
    key = hashlib.new(hash_name, ku + engine_id + ku).digest()
    while len(key) < size:
        if extension == "reeder":  # the localised key is the passphrase of the next block
            ku = password_key(key, hash_name)
            key += hashlib.new(hash_name, ku + engine_id + ku).digest()
        else:  # Blumenthal: the hash of the key so far
            key += hashlib.new(hash_name, key).digest()
    return key[:size] if size else key


_salts = itertools.count(random.randrange(0, 1 << 63))


def mac(auth: str, key: bytes, whole: bytes) -> bytes:
    """The truncated HMAC of a whole message (its msgAuthenticationParameters zeroed)."""
    hash_name, digest = AUTH[auth]
    return hmac.new(key, whole, hash_name).digest()[:digest]


def encrypt(priv: str, key: bytes, boots: int, engine_time: int, plain: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, msgPrivacyParameters) of a scoped PDU."""
    cipher, size, _ = PRIV[priv]
    if cipher == "des":
        salt = boots.to_bytes(4, "big") + (next(_salts) & 0xFFFFFFFF).to_bytes(4, "big")
        plain += bytes(-len(plain) % 8)
        encryptor = _des(key, salt).encryptor()
    else:
        salt = (next(_salts) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        encryptor = _aes(key, size, boots, engine_time, salt).encryptor()
    return encryptor.update(plain) + encryptor.finalize(), salt


def decrypt(priv: str, key: bytes, boots: int, engine_time: int, salt: bytes, data: bytes) -> bytes:
    """The plaintext of an encrypted scoped PDU; BerError when the parameters cannot be right."""
    cipher, size, _ = PRIV[priv]
    if len(salt) != 8 or cipher == "des" and len(data) % 8:
        raise BerError("bad privacy parameters")
    engine = _des(key, salt) if cipher == "des" else _aes(key, size, boots, engine_time, salt)
    decryptor = engine.decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _des(key: bytes, salt: bytes) -> Cipher:
    """DES-CBC: the first 8 key bytes are the key (as 3DES with three equal keys), the next 8 XOR
    the salt give the IV."""
    iv = bytes(a ^ b for a, b in zip(key[8:16], salt))
    return Cipher(TripleDES(key[:8] * 3), modes.CBC(iv))


def _aes(key: bytes, size: int, boots: int, engine_time: int, salt: bytes) -> Cipher:
    """AES-CFB128 with the IV boots | time | salt."""
    return Cipher(algorithms.AES(key[:size]), CFB(boots.to_bytes(4, "big") + engine_time.to_bytes(4, "big") + salt))
