"""The local commands: `peekaping-worker check` (run one check without Redis and print its result) and
`peekaping-worker types` (every monitor type with its config fields and an example `check` line)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import shlex
import os
import sys
import time
from typing import Any

from worker import EXECUTORS, TaskError, __version__, _event_loop_runner, load_executor

MAX_TIMEOUT = 86400.0
TYPES_HINT = ("Run `peekaping-worker types` for every type's config fields and a working example.\n"
              'http checks need "accepted_statuscodes", e.g. ["2XX"]: as in the Go worker, an empty list makes '
              "every response DOWN.")
STATUS_NAMES = {0: "DOWN", 1: "UP", 2: "PENDING", 3: "MAINTENANCE"}


def _say(text: str, stream: Any = None) -> None:
    """Print without ever failing on a lone surrogate (argv bytes that were not UTF-8)."""
    from executors._kit.gojson import clean_text

    print(clean_text(text), file=stream or sys.stdout)


# --------------------------------------------------------------------------------------------------
# check

def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, "
                                         f"not {text!r}")
    return value


async def _check_once(monitor: Any, timeout: float) -> Any:
    """The executor under the timeout; an unexpected exception becomes the DOWN result the worker gives."""
    from executors import ConfigError
    from executors._kit.unexpected import unexpected_result

    module = await load_executor(monitor.type)
    start = time.time_ns()
    try:
        return await asyncio.wait_for(module.check(monitor, None, timeout), timeout + 0.1)
    except (ConfigError, asyncio.TimeoutError):
        raise
    except Exception as exc:
        return unexpected_result(monitor, None, exc, start)


def check_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peekaping-worker check", epilog=TYPES_HINT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Run one check locally (no Redis) and print the result.")
    parser.add_argument("type", help="monitor type, e.g. tcp (see `peekaping-worker types`)")
    parser.add_argument("config", help="the monitor's config as a JSON string")
    parser.add_argument("--timeout", type=_seconds, default=16.0, help="seconds, above 0 and at most 86400 (default 16)")
    parser.add_argument("--json", action="store_true", help="print the ingest fields as JSON")
    args = parser.parse_args(argv)
    from executors import ConfigError, Monitor
    from executors._kit.gotext import format_rfc3339

    monitor = Monitor(id="local", name="local check", type=args.type, interval=60,
                      timeout=int(math.ceil(args.timeout)), config=args.config)
    try:
        result = _event_loop_runner()(_check_once(monitor, args.timeout))
    except (ConfigError, TaskError) as exc:
        _say(f"peekaping-worker check: {exc}", sys.stderr)
        return 2
    except asyncio.TimeoutError:
        _say(f"DOWN  check timed out after {args.timeout:g}s")
        return 1
    except KeyboardInterrupt:
        _say("peekaping-worker check: interrupted", sys.stderr)
        return 130
    except Exception as exc:  # outside the check (loading the executor, the event loop): one line
        _say(f"peekaping-worker check: unexpected {type(exc).__name__}: {exc}", sys.stderr)
        return 1
    if result is None:
        _say("nothing to report (the executor returned no result)")
        return 0
    if args.json:
        out: dict[str, Any] = {"status": result.status, "message": result.message, "ping_ms": result.ping_ms,
                               "start_time": format_rfc3339(result.start_ns),
                               "end_time": format_rfc3339(result.end_ns)}
        if result.tls_info is not None:
            out["tls_info"] = result.tls_info
        if result.timings:
            out["timings"] = result.timings
        _say(json.dumps(out, ensure_ascii=False))
    else:
        _say(f"{STATUS_NAMES.get(result.status, str(result.status))}  {result.message}  ({result.ping_ms} ms)")
    if result.message.startswith("HTTP request failed with status: ") and not _accepted_codes(args.config):
        _say('hint: "accepted_statuscodes" is empty, so no status is accepted (as in the Go worker); '
             'add e.g. "accepted_statuscodes":["2XX"]', sys.stderr)
    return 0 if result.status in (1, 3) else 1


def _accepted_codes(config: str) -> list[str]:
    from executors._kit.gojson import decode_struct

    try:
        return decode_struct(config, {"accepted_statuscodes": list}, "HTTPConfig", strict=False)["accepted_statuscodes"]
    except ValueError:
        return ["?"]


# --------------------------------------------------------------------------------------------------
# types
#
# The field list and Go types come from the SCHEMA each executor decodes its config with. A module
# documents its fields in FIELDS, a one-line SUMMARY and EXAMPLES (type -> (config, status, when));
# executors/http.py does not carry them yet, so they are here, checked against http.SCHEMA by the tests.

_HTTP_DOCS: dict[str, Any] = {
    "SUMMARY": "one HTTP(S) request judged by status class, then keyword (http-keyword) or GJSON query "
               "(http-json-query)",
    "FIELDS": {
        "url": "request URL (http:// or https://)",
        "method": "GET POST PUT DELETE PATCH HEAD OPTIONS; empty means GET",
        "headers": 'JSON object text of string values, e.g. "{\\"X-Key\\": \\"v\\"}"',
        "encoding": "json form xml text: sets Content-Type; empty sets none",
        "body": "request body, sent when not empty",
        "accepted_statuscodes": 'status classes that are UP: 2XX 3XX 4XX 5XX. Empty: every response is DOWN',
        "max_redirects": "redirects to follow; 0 follows none",
        "ignore_tls_errors": "skip certificate verification",
        "check_cert_expiry": "not used by the check (the producer copies it into the task)",
        "keyword": "text the body must contain (any http type, when not empty)",
        "invert_keyword": "the body must not contain keyword",
        "json_query": "http-json-query: GJSON path, e.g. status or items.0.name",
        "json_condition": "http-json-query: == != > < >= <=; empty means ==",
        "expected_value": "http-json-query: value the query result is compared with",
        "authMethod": "none basic ntlm oauth2-cc mtls; empty means none",
        "basic_auth_user": "basic/ntlm: user name",
        "basic_auth_pass": "basic/ntlm: password",
        "authDomain": "ntlm: domain",
        "authWorkstation": "ntlm: not used",
        "oauth_auth_method": "oauth2-cc: client_secret_basic or client_secret_post",
        "oauth_token_url": "oauth2-cc: token endpoint",
        "oauth_client_id": "oauth2-cc: client id",
        "oauth_client_secret": "oauth2-cc: client secret",
        "oauth_scopes": "oauth2-cc: scope value, sent when not empty",
        "tlsCert": "mtls: client certificate (PEM)",
        "tlsKey": "mtls: client private key (PEM)",
        "tlsCa": "mtls: CA certificates (PEM) the server is verified against, instead of the system's",
    },
    "EXAMPLES": {
        "http": ({"url": "http://example.com/", "accepted_statuscodes": ["2XX"]}, "UP",
                 "when the server answers with a 2xx status"),
        "https": ({"url": "https://example.com/", "accepted_statuscodes": ["2XX"]}, "UP",
                  "when the certificate verifies and the status is 2xx"),
        "http-keyword": ({"url": "https://example.com/", "accepted_statuscodes": ["2XX"],
                          "keyword": "Example Domain"}, "UP", "when the body contains the keyword"),
        "http-json-query": ({"url": "https://example.com/health", "accepted_statuscodes": ["2XX"],
                             "json_query": "status", "json_condition": "==", "expected_value": "ok"}, "UP",
                            'when the body is JSON with "status": "ok"'),
    },
}
_DOCS_HERE = {"executors.http": _HTTP_DOCS}


def type_docs(path: str) -> dict[str, Any]:
    """SCHEMA, FIELDS, SUMMARY and EXAMPLES of one executor module."""
    module = importlib.import_module(path)
    here = _DOCS_HERE.get(path, {})
    return {"SCHEMA": module.SCHEMA, **{name: getattr(module, name, None) or here.get(name)
                                        for name in ("FIELDS", "SUMMARY", "EXAMPLES")}}


def example_command(monitor_type: str, config: dict) -> str:
    return f"peekaping-worker check {monitor_type} {shlex.quote(json.dumps(config, separators=(',', ':')))}"


def types_text(wanted: list[str]) -> str:
    from executors._kit.gojson import _GO_TYPES, _zero

    modules: dict[str, list[str]] = {}
    for name, path in EXECUTORS.items():
        if not wanted or name in wanted:
            modules.setdefault(path, []).append(name)
    blocks = []
    for path, names in modules.items():
        docs = type_docs(path)
        rows = [("field", "Go type", "if absent", "meaning")]
        rows += [(field, _GO_TYPES[kind], json.dumps(_zero(kind)), docs["FIELDS"].get(field, ""))
                 for field, kind in docs["SCHEMA"].items()]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [f"{', '.join(names)}: {docs['SUMMARY']}"]
        lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3]
                  for row in rows]
        for name in names:
            config, status, when = docs["EXAMPLES"][name]
            lines += [f"  example, gives {status} {when}:", f"    {example_command(name, config)}"]
        blocks.append("\n".join(lines))
    blocks.append("Config keys match case-insensitively and an absent key has the value shown. A key that is not "
                  "listed makes the check DOWN with `failed to parse config: json: unknown field`, as in the Go "
                  "worker (push does not read its config).")
    return "\n\n".join(blocks)


def types_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="peekaping-worker types",
                                     description="List every monitor type with its config fields and an example "
                                                 "`check` command line.")
    parser.add_argument("type", nargs="*", help="only these types")
    args = parser.parse_args(argv)
    unknown = [name for name in args.type if name not in EXECUTORS]
    if unknown:
        _say(f"peekaping-worker types: unknown monitor type: {', '.join(unknown)}", sys.stderr)
        return 2
    _say(types_text(args.type))
    return 0


def version_text() -> str:
    built = sorted(EXECUTORS)
    return (f"peekaping-worker {__version__} (Python {sys.version.split()[0]})\n"
            f"executors: {', '.join(built)}\n"
            f"ping: {_ping_strategy()}\n"
            "config fields and examples: peekaping-worker types")


def _ping_strategy() -> str:
    """How this host will send pings, as the first ping task will find it."""
    from executors.ping import strategy

    try:
        return f"{strategy()} (PEEKAPING_PING_MODE={os.environ.get('PEEKAPING_PING_MODE') or 'auto'})"
    except ValueError as exc:
        return f"none: {exc}"
