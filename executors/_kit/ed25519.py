"""Ed25519 signing for MariaDB's client_ed25519 auth: the signature of the scramble whose secret is
SHA-512(password), for a password of any length (which is why a library's Ed25519, fed 32-byte seeds,
cannot do it). Plain integer arithmetic: one signature per login.
"""

from __future__ import annotations

import hashlib

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D2 = 2 * -121665 * pow(121666, _P - 2, _P) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
_BASE = (_BX, _BY, 1, _BX * _BY % _P)


def _point_add(p: tuple, q: tuple) -> tuple:
    """Twisted Edwards addition in extended coordinates (also right for doubling)."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a, b = (y1 - x1) * (y2 - x2) % _P, (y1 + x1) * (y2 + x2) % _P
    c, d = t1 * _D2 * t2 % _P, 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _base_times(scalar: int) -> bytes:
    result, addend = (0, 1, 1, 0), _BASE
    while scalar:
        if scalar & 1:
            result = _point_add(result, addend)
        addend = _point_add(addend, addend)
        scalar >>= 1
    x, y, z, _ = result
    inverse = pow(z, _P - 2, _P)
    x, y = x * inverse % _P, y * inverse % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def sign(secret: bytes, message: bytes) -> bytes:
    """The Ed25519 signature of `message` with the key whose seed hash is SHA-512(`secret`) (RFC 8032 when
    `secret` is a 32-byte seed)."""
    digest = hashlib.sha512(secret).digest()
    scalar = int.from_bytes(digest[:32], "little") & ((1 << 254) - 8) | 1 << 254
    public = _base_times(scalar)
    nonce = int.from_bytes(hashlib.sha512(digest[32:] + message).digest(), "little") % _L
    r = _base_times(nonce)
    k = int.from_bytes(hashlib.sha512(r + public + message).digest(), "little") % _L
    return r + ((nonce + k * scalar) % _L).to_bytes(32, "little")
