"""Go's `%v` text of the values encoding/json decodes into an `any` (float64, string, bool, nil,
[]any, map[string]any), for messages that must read as the Go worker's do byte for byte."""

from __future__ import annotations

import math
from typing import Any


def go_float64(value: float) -> str:
    """%v of a float64: the shortest digits that read back as the same value (Python's repr finds the
    same ones), in exponent form (`1e+06`, `1.5e-05`) when the decimal exponent is below -4 or at least 6."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    fraction = fraction.rstrip("0")
    digits = (whole + fraction).lstrip("0")
    # decimal exponent of the first significant digit
    point = int(exponent or 0) + len(whole) - 1 - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0") or "0"
    sign = "-" if value < 0 else ""
    if point < -4 or point >= 6:
        tail = "." + digits[1:] if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{tail}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if point < 0:
        return f"{sign}0.{'0' * (-point - 1)}{digits}"
    if point + 1 >= len(digits):
        return sign + digits + "0" * (point + 1 - len(digits))
    return f"{sign}{digits[:point + 1]}.{digits[point + 1:]}"


def go_json_value(value: Any) -> str:
    """%v of a decoded JSON value: every number is a float64 (an int prints as Go's float64 of it), nil is
    `<nil>`, slices `[a b]`, maps `map[k:v]` with keys sorted."""
    if value is None:
        return "<nil>"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        try:
            return go_float64(float(value))
        except OverflowError:  # beyond float64: Go's JSON decoding would have refused it
            return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, float):
        return go_float64(float(value))
    if isinstance(value, dict):
        return "map[" + " ".join(f"{key}:{go_json_value(value[key])}" for key in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_json_value(item) for item in value) + "]"
    return str(value)
