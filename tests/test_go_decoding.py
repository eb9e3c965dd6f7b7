"""Go encoding/json behaviour our decoders reproduce (spec sections 2.2 and 5.1) and Go time formats."""

from __future__ import annotations

import pytest

from executors import ConfigError, decode_config, decode_struct, format_rfc3339, parse_rfc3339

SCHEMA = {"host": str, "port": int, "flags": list, "on": bool}


def test_keys_match_case_insensitively_and_exact_match_wins():
    assert decode_config('{"HOST":"a","Port":2}', SCHEMA, "X")["host"] == "a"
    assert decode_struct('{"Host":"b","host":"a"}', SCHEMA, "X", strict=True)["host"] == "a"


def test_unknown_key_fails_only_when_strict():
    with pytest.raises(ConfigError, match='^failed to parse config: json: unknown field "foo"$'):
        decode_config('{"host":"a","foo":1}', SCHEMA, "X")
    assert decode_struct('{"host":"a","foo":1}', SCHEMA, "X", strict=False)["host"] == "a"


@pytest.mark.parametrize("doc, text", [
    ('{"port":"80"}', "json: cannot unmarshal string into Go struct field TCPConfig.port of type int"),
    ('{"port":1.5}', "json: cannot unmarshal number 1.5 into Go struct field TCPConfig.port of type int"),
    ('{"on":"true"}', "json: cannot unmarshal string into Go struct field TCPConfig.on of type bool"),
    ('{"flags":[1]}', "json: cannot unmarshal array into Go struct field TCPConfig.flags of type []string"),
    ("", "EOF"),
    ("   ", "EOF"),
])
def test_type_mismatches_and_empty_input_fail_like_go(doc, text):
    with pytest.raises(ConfigError) as info:
        decode_config(doc, SCHEMA, "TCPConfig")
    assert str(info.value) == f"failed to parse config: {text}"


def test_null_and_trailing_text_follow_go():
    assert decode_config("null", SCHEMA, "X") == {"host": "", "port": 0, "flags": [], "on": False}
    assert decode_config('{"host":null,"port":3} trailing', SCHEMA, "X") == {"host": "", "port": 3, "flags": [], "on": False}


@pytest.mark.parametrize("doc, text", [
    ("{host: 1}", "invalid character 'h' looking for beginning of object key string"),
    ('{"host" 1}', "invalid character '1' after object key"),
    ('{"host":"a" "port":1}', "invalid character '\"' after object key:value pair"),
    ('{"port":NaN}', "invalid character 'N' looking for beginning of value"),
    ('{"host":"a', "unexpected end of JSON input"),
])
def test_syntax_errors_are_worded_like_go(doc, text):
    with pytest.raises(ConfigError) as info:
        decode_config(doc, SCHEMA, "X")
    assert str(info.value) == f"failed to parse config: {text}"


@pytest.mark.parametrize("text, expected", [
    ("2025-06-01T12:00:00Z", 1748779200.0),
    ("2025-06-01T12:00:00.123Z", 1748779200.123),
    ("2025-06-01T12:00:00.123456789Z", 1748779200.123456789),
    ("2025-06-01T14:00:00+02:00", 1748779200.0),
    ("2025-06-01T07:30:00-04:30", 1748779200.0),
])
def test_rfc3339_parsing_accepts_any_precision_and_offset(text, expected):
    assert parse_rfc3339(text) == pytest.approx(expected, abs=1e-6)


def test_rfc3339_rejects_garbage():
    with pytest.raises(ValueError):
        parse_rfc3339("2025-06-01 12:00:00")


@pytest.mark.parametrize("ns, text", [
    (1748779200_000000000, "2025-06-01T12:00:00Z"),
    (1748779200_123000000, "2025-06-01T12:00:00.123Z"),
    (1748779200_130123400, "2025-06-01T12:00:00.1301234Z"),
    (1748779200_000000001, "2025-06-01T12:00:00.000000001Z"),
])
def test_times_are_written_like_go_marshal_json(ns, text):
    assert format_rfc3339(ns) == text
