"""`http-json-query`: the GJSON conformance table (expected values from gjson's README and SYNTAX.md,
whose documents are reproduced here) and spec items 50-58 against a real server."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from http_peers import cfg, peer, run

from executors import DOWN, UP
from executors._kit.gjson import format_float, get, go_parse_float
from executors.http import json_check

# The example document of gjson's README / SYNTAX.md.
DOC = """{
  "name": {"first": "Tom", "last": "Anderson"},
  "age":37,
  "children": ["Sara","Alex","Jack"],
  "fav.movie": "Deer Hunter",
  "friends": [
    {"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]},
    {"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]},
    {"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]}
  ]
}"""
DALE = '{"first": "Dale", "last": "Murphy", "age": 44, "nets": ["ig", "fb", "tw"]}'
ROGER = '{"first": "Roger", "last": "Craig", "age": 68, "nets": ["fb", "tw"]}'
JANE = '{"first": "Jane", "last": "Murphy", "age": 47, "nets": ["ig", "tw"]}'

# SYNTAX.md, "Queries": the `~` operator document.
VALS = """{
  "vals": [
    { "a": 1, "b": true },
    { "a": 2, "b": true },
    { "a": 3, "b": false },
    { "a": 4, "b": "0" },
    { "a": 5, "b": 0 },
    { "a": 6, "b": "1" },
    { "a": 7, "b": 1 },
    { "a": 8, "b": "true" },
    { "a": 9, "b": false },
    { "a": 10, "b": null },
    { "a": 11 }
  ]
}"""

# README, "JSON Lines".
LINES = """{"name": "Gilbert", "age": 61}
{"name": "Alexa", "age": 34}
{"name": "May", "age": 57}
{"name": "Deloise", "age": 44}"""

# README, "Get nested array values".
PROGRAMMERS = """{
  "programmers": [
    {"firstName": "Janet", "lastName": "McLaughlin"},
    {"firstName": "Elliotte", "lastName": "Hunter"},
    {"firstName": "Jason", "lastName": "Harold"}
  ]
}"""

# (document, path, Result.String() or None for "does not exist")
TABLE = [
    # SYNTAX.md: Basic
    (DOC, "name.last", "Anderson"),
    (DOC, "name.first", "Tom"),
    (DOC, "age", "37"),
    (DOC, "children", '["Sara","Alex","Jack"]'),
    (DOC, "children.0", "Sara"),
    (DOC, "children.1", "Alex"),
    (DOC, "friends.1", ROGER),
    (DOC, "friends.1.first", "Roger"),
    # Wildcards, escapes
    (DOC, "child*.2", "Jack"),
    (DOC, "c?ildren.0", "Sara"),
    (DOC, "fav\\.movie", "Deer Hunter"),
    # Arrays
    (DOC, "friends.#", "3"),
    (DOC, "friends.#.age", "[44,68,47]"),
    (DOC, "children.#", "3"),
    (DOC, "friends.#.first", '["Dale","Roger","Jane"]'),
    (DOC, "friends.1.last", "Craig"),
    (DOC, "friends.#.nets", '[["ig", "fb", "tw"],["fb", "tw"],["ig", "tw"]]'),
    # Queries
    (DOC, 'friends.#(last=="Murphy").first', "Dale"),
    (DOC, 'friends.#(last=="Murphy")#.first', '["Dale","Jane"]'),
    (DOC, "friends.#(age>45)#.last", '["Craig","Murphy"]'),
    (DOC, 'friends.#(first%"D*").last', "Murphy"),
    (DOC, 'friends.#(first!%"D*").last', "Craig"),
    (DOC, 'children.#(!%"*a*")', "Alex"),
    (DOC, 'children.#(%"*a*")#', '["Sara","Jack"]'),
    (DOC, 'friends.#(nets.#(=="fb"))#.first', '["Dale","Roger"]'),
    (DOC, "friends.#(age>100)#", "[]"),
    (DOC, "friends.#(age>100).first", None),
    (VALS, "vals.#(b==~true)#.a", "[1,2,6,7,8]"),
    (VALS, "vals.#(b==~false)#.a", "[3,4,5,9,10,11]"),
    (PROGRAMMERS, 'programmers.#(lastName="Hunter").firstName', "Elliotte"),
    (PROGRAMMERS, "programmers.#.lastName", '["McLaughlin","Hunter","Harold"]'),
    # Dot vs pipe
    (DOC, "friends.0.first", "Dale"),
    (DOC, "friends|0.first", "Dale"),
    (DOC, "friends.0|first", "Dale"),
    (DOC, "friends|0|first", "Dale"),
    (DOC, "friends|#", "3"),
    (DOC, 'friends.#(last="Murphy")#', f"[{DALE},{JANE}]"),
    (DOC, 'friends.#(last="Murphy")#.first', '["Dale","Jane"]'),
    (DOC, 'friends.#(last="Murphy")#|first', None),
    (DOC, 'friends.#(last="Murphy")#.0', "[]"),
    (DOC, 'friends.#(last="Murphy")#|0', DALE),
    (DOC, 'friends.#(last="Murphy")#.#', "[]"),
    (DOC, 'friends.#(last="Murphy")#|#', "2"),
    # Modifiers
    (DOC, "children.@reverse", '["Jack","Alex","Sara"]'),
    (DOC, "children.@reverse.0", "Jack"),
    (DOC, "children|@reverse|0", "Jack"),
    (DOC, "name.@keys", '["first","last"]'),
    (DOC, "name.@values", '["Tom","Anderson"]'),
    (DOC, "@this.age", "37"),
    (DOC, "name.@ugly", '{"first":"Tom","last":"Anderson"}'),
    (DOC, "children.@valid.1", "Alex"),
    ('{"a": [1,[2],[3,4],[5,[6,7]]]}', "a.@flatten", "[1,2,3,4,5,[6,7]]"),
    ('{"a": [1,[2],[3,4],[5,[6,7]]]}', 'a.@flatten:{"deep":true}', "[1,2,3,4,5,6,7]"),
    ('[{"first":"Tom","age":37},{"age":41}]', "@join", '{"first":"Tom","age":41}'),
    ('[{"first":"Tom","age":37},{"age":41}]', '@join:{"preserve":true}', '{"first":"Tom","age":37,"age":41}'),
    # Multipaths and literals
    (DOC, '{name.first,age,"the_murphys":friends.#(last="Murphy")#.first}',
     '{"first":"Tom","age":37,"the_murphys":["Dale","Jane"]}'),
    (DOC, '{name.first,age,"company":!"Happysoft","employed":!true}',
     '{"first":"Tom","age":37,"company":"Happysoft","employed":true}'),
    (DOC, "[name.first,age,children.0]", '["Tom",37,"Sara"]'),
    # JSON Lines
    (LINES, "..#", "4"),
    (LINES, "..1", '{"name": "Alexa", "age": 34}'),
    (LINES, "..3", '{"name": "Deloise", "age": 44}'),
    (LINES, "..#.name", '["Gilbert","Alexa","May","Deloise"]'),
    (LINES, '..#(name="May").age', "57"),
    # Values and absence
    (DOC, "name.middle", None),
    (DOC, "children.3", None),
    ('{"a":null}', "a", ""),
    ('{"n":1.50,"e":1e3,"i":100000000000000000001,"neg":-0.5,"t":true}', "n", "1.5"),
    ('{"n":1.50,"e":1e3,"i":100000000000000000001,"neg":-0.5,"t":true}', "e", "1000"),
    ('{"n":1.50,"e":1e3,"i":100000000000000000001,"neg":-0.5,"t":true}', "i", "100000000000000000001"),
    ('{"n":1.50,"e":1e3,"i":100000000000000000001,"neg":-0.5,"t":true}', "neg", "-0.5"),
    ('{"n":1.50,"e":1e3,"i":100000000000000000001,"neg":-0.5,"t":true}', "t", "true"),
    ('{"s":"a\\"b\\u00e9\\n"}', "s", 'a"bé\n'),
    ('{"a\\.b":1,"a":{"b":2}}', "a\\.b", "1"),
    ('{"a\\.b":1,"a":{"b":2}}', "a.b", "2"),
]


@pytest.mark.parametrize("doc,path,expected", TABLE, ids=[f"{i}:{row[1]}" for i, row in enumerate(TABLE)])
def test_gjson_conformance(doc, path, expected):
    result = get(doc, path)
    if expected is None:
        assert not result.exists()
    else:
        assert result.exists()
        assert result.string() == expected


def test_table_is_large_enough():
    assert len(TABLE) >= 40


def test_go_number_helpers():
    assert format_float(1e21) == "1000000000000000000000"
    assert format_float(1.5e-7) == "0.00000015"
    assert format_float(-0.0) == "-0"
    assert go_parse_float("1_000") == (0.0, False)
    assert go_parse_float("0x1p-2") == (0.25, True)
    assert go_parse_float("1e400")[1] is False
    assert go_parse_float(" 1")[1] is False
    assert go_parse_float("Inf") == (float("inf"), True)


# --- spec 6.1.7 / items 50-58 against a real server ---------------------------------------------------

BODY = '{"userId":1,"title":"delectus aut autem","completed":false,"nested":{"value":"test"}}'


def served(body: str) -> str:
    return peer("http").url("/body?type=application/json&text=" + quote(body, safe=""))


async def check(body: str, query: str, cond: str, expected: str):
    return await run(cfg(served(body), json_query=query, json_condition=cond, expected_value=expected),
                     "http-json-query")


@pytest.mark.parametrize("query,expected", [("userId", "1"), ("title", "delectus aut autem"), ("nested.value", "test"),
                                            ("completed", "false")])
async def test_item_50_paths(query, expected):
    r = await check(BODY, query, "==", expected)
    assert (r.status, r.message) == (UP, "200 - 200 OK")


async def test_item_50_missing_path():
    r = await check(BODY, "nonExistent", "==", "anything")
    assert (r.status, r.message) == (DOWN, "JSON query validation error: JSON query path not found: nonExistent")


async def test_item_51_whole_body_json_comparison():
    same = '{ "nested": {"value": "test"}, "completed": false, "title": "delectus aut autem", "userId": 1.0 }'
    assert (await check(BODY, "", "==", same)).status == UP
    other = '{"userId":2}'
    r = await check(BODY, "", "==", other)
    assert (r.status, r.message) == (DOWN, f"JSON query validation failed: query '' with condition '==' and expected value '{other}'")
    assert (await check(BODY, "", "!=", other)).status == UP
    assert (await check(BODY, "", "", same)).status == UP  # empty condition means ==


async def test_item_52_unsupported_whole_json_condition():
    r = await check(BODY, "", ">", '{"a":1}')
    assert r.message == ("JSON query validation error: unsupported condition '>' for full JSON comparison: "
                         "only '==' and '!=' are supported")


async def test_item_53_raw_body_comparison():
    assert (await check("plain text body", "", "==", "plain text body")).status == UP
    r = await check("plain text body", "", "<", "zzz")
    assert r.message == ("JSON query validation error: unsupported condition '<' for non-JSON comparison: "
                         "only '==' and '!=' are supported")


async def test_item_54_arrays_ordered_and_null():
    r = await check('[{"id":1},{"id":2}]', "", "==", '[{"id":2},{"id":1}]')
    assert r.status == DOWN
    assert (await check("null", "", "==", "null")).status == UP


async def test_item_55_numeric_and_lexicographic():
    assert (await check('{"value":15}', "value", ">", "10")).status == UP
    assert (await check('{"value":15}', "value", "<", "10")).status == DOWN
    assert (await check('{"value":9}', "value", "<", "10")).status == UP  # numeric, not "9" < "10" as text
    assert (await check('{"value":"b"}', "value", ">", "a")).status == UP
    assert (await check('{"value":15}', "value", ">=", "15")).status == UP
    assert (await check('{"value":15}', "value", "<=", "14.5")).status == DOWN
    r = await check('{"value":15}', "value", "~=", "15")
    assert r.message == "JSON query validation error: unsupported condition: ~="


async def test_item_56_existence_only():
    assert (await check(BODY, "nested", "", "")).status == UP
    assert (await check(BODY, "nested.none", "", "")).status == DOWN
    assert (await check('{"a":null}', "a", "", "")).status == UP  # null exists


async def test_item_57_web_form_default():
    r = await check(BODY, "", "==", "")
    assert (r.status, r.message) == (DOWN, "JSON query validation failed: query '' with condition '==' and expected value ''")
    assert (await check(BODY, "", "", "")).status == UP


async def test_item_58_number_forms():
    assert (await check('{"v":1.50}', "v", "==", "1.5")).status == UP
    assert (await check('{"v":1e3}', "v", "==", "1000")).status == UP
    assert (await check('{"v":100}', "v", "==", "100")).status == UP
    assert (await check('{"v":100}', "v", "==", "100.0")).status == DOWN  # integer literal: raw text


def test_objects_compare_by_raw_text():
    assert json_check('{"a": {"b": 1}}', "a", "==", '{"b": 1}') == (True, None)
    assert json_check('{"a": {"b": 1}}', "a", "==", '{"b":1}') == (False, None)
    assert json_check("", "", "==", "x") == (False, None)
    assert json_check(json.dumps({"big": 12345678901234567890}), "", "==", '{"big":12345678901234567000}') == (True, None)
