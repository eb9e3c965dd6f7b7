"""Go encoding/json behaviour our decoders reproduce (spec sections 2.2 and 5.1) and Go time formats."""

from __future__ import annotations

import pytest

from executors import ConfigError
from executors._kit.gojson import decode_config, decode_struct
from executors._kit.gotext import format_rfc3339, parse_rfc3339

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
    # Go reports the element's type for a bad list element (e.g. webanalyze#9: `App.cats of type string`)
    ('{"flags":[1]}', "json: cannot unmarshal number into Go struct field TCPConfig.flags of type string"),
    ('{"flags":"a"}', "json: cannot unmarshal string into Go struct field TCPConfig.flags of type []string"),
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


# --------------------------------------------------------------------------------------------------
# Hostile documents (issue 7): Go decodes them or fails with a message; Python must not raise anything else.

def test_lone_surrogates_become_replacement_characters_as_in_go():
    """Go's unquote turns an unpaired \\uD800-\\uDFFF escape into U+FFFD; a lone surrogate left in a
    Python string cannot be encoded as UTF-8 and used to crash writes to Redis."""
    doc = r'{"host":"a\udc80b\ud83d\ude00\ud800\u0041","flags":["\udfff"],"\ud800x":1}'
    out = decode_struct(doc, SCHEMA, "X", strict=False)
    assert out["host"] == "a\ufffdb\U0001F600\ufffdA" and out["flags"] == ["\ufffd"]
    with pytest.raises(ConfigError, match='unknown field "\ufffdx"'):
        decode_config(doc, SCHEMA, "X")
    raw = decode_struct('{"host":"a\udcffb"}', SCHEMA, "X", strict=True)  # argv bytes that were not UTF-8
    assert raw["host"] == "a\ufffdb"
    assert decode_struct(r'{"host":"\\udc80"}', SCHEMA, "X", strict=True)["host"] == "\\udc80"  # escaped backslash


def test_lone_surrogates_deep_inside_ignored_values_are_replaced_too():
    from executors._kit.gojson import decode_json

    value = decode_json(r'{"a":[{"\udc80":["\ud800"]}]}')
    assert value == {"a": [{"\ufffd": ["\ufffd"]}]}
    json_text = __import__("json").dumps(value, ensure_ascii=False)
    assert json_text.encode("utf-8")  # encodes: nothing left that UTF-8 refuses


@pytest.mark.parametrize("doc, text", [
    ('{"port":1e999}', "json: cannot unmarshal number 1e999 into Go struct field T.port of type int"),
    ('{"ratio":1e999}', "json: cannot unmarshal number 1e999 into Go struct field T.ratio of type float64"),
    ('{"ratio":-1e999}', "json: cannot unmarshal number -1e999 into Go struct field T.ratio of type float64"),
    ('{"port":9223372036854775808}',
     "json: cannot unmarshal number 9223372036854775808 into Go struct field T.port of type int"),
    ('{"port":1.0}', "json: cannot unmarshal number 1.0 into Go struct field T.port of type int"),
    ('{"port":1e3}', "json: cannot unmarshal number 1e3 into Go struct field T.port of type int"),
    ('{"host":1e999}', "json: cannot unmarshal number into Go struct field T.host of type string"),
    ('{"port":' + "9" * 5000 + "}", f"json: cannot unmarshal number {'9' * 5000} into Go struct field T.port of type int"),
])
def test_numbers_out_of_range_for_the_go_type_fail_with_gos_text(doc, text):
    """Go's int is 64-bit and ParseFloat rejects overflow; the literal is quoted as written."""
    with pytest.raises(ConfigError) as info:
        decode_config(doc, {"host": str, "port": int, "ratio": float}, "T")
    assert str(info.value) == f"failed to parse config: {text}"


def test_numbers_at_the_edge_of_the_go_types_decode():
    schema = {"port": int, "ratio": float}
    assert decode_config('{"port":9223372036854775807}', schema, "T")["port"] == 2**63 - 1
    assert decode_config('{"port":-9223372036854775808}', schema, "T")["port"] == -2**63
    assert decode_config('{"ratio":1e308,"port":0}', schema, "T")["ratio"] == 1e308
    assert decode_config('{"ratio":12345678901234567890123}', schema, "T")["ratio"] == 1.2345678901234568e22
    assert decode_struct('{"unused":1e999,"also":' + "9" * 5000 + "}", schema, "T", strict=False)["port"] == 0


def test_nesting_up_to_gos_limit_decodes_and_deeper_fails_with_gos_text():
    """encoding/json allows 10,000 levels; Python's own limit (~1,000) raised RecursionError."""
    at_limit = '{"x":' + "[" * 9999 + "]" * 9999 + "}"  # the object is level 1
    assert decode_struct(at_limit, SCHEMA, "X", strict=False)["host"] == ""
    for opener, closer in (("[", "]"), ('{"a":', "}")):
        too_deep = '{"x":' + opener * 10000 + "1" + closer * 10000 + "}"
        with pytest.raises(ValueError, match=rf"^invalid character '\{opener[0]}' exceeded max depth$"):
            decode_struct(too_deep, SCHEMA, "X", strict=False)


def test_a_megabyte_of_open_brackets_fails_fast():
    import time

    started = time.process_time()
    with pytest.raises(ConfigError, match="exceeded max depth"):
        decode_config("[" * 1_000_000, SCHEMA, "X")
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("name, valid", [
    ("localhost", True), ("example.com.", True), ("a_b-c.example", True), ("a" * 63 + ".com", True),
    ("a" * 64 + ".com", False), ("a..b", False), ("-a.b", False), ("a-.b", False), ("127.1", False),
    ("b\u00fccher.de", False), ("a b", False), ("\ufffd", False), ("x" * 60 + ("." + "x" * 60) * 4, False),
])
def test_host_names_are_judged_like_gos_is_domain_name(name, valid):
    from executors._kit.gotext import is_domain_name

    assert is_domain_name(name) is valid
