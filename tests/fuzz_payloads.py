"""A seeded generator of hostile health-check payloads for the fuzz tests (issue 7): lone surrogates
(escaped and as raw invalid UTF-8), deep nesting, huge numbers, 64+ character host labels, 1 MB strings,
wrong types, unknown and unbuilt monitor types, broken JSON; plus local targets that answer at once.

Every case says what the handler must do with it: `result` (an ingest task for its monitor), `error`
(a TaskError: the task is archived) or `any` (one of the two, e.g. a push check may report nothing).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

from executors._kit.gotext import format_rfc3339

SURROGATES = ["\udc80", "\ud800", "\udfff", "\ud83d", "\ude00", "\udcff"]
BUILT = ["tcp", "http", "https", "http-keyword", "http-json-query"]
UNBUILT: list[str] = []  # every type is built
BIG = 1_000_000


class Raw:
    """JSON text written as is (numbers json.dumps cannot write, deep nesting, broken syntax)."""

    def __init__(self, text: str) -> None:
        self.text = text


def dump(value: Any, ascii_only: bool) -> str:
    """JSON text of `value`; with `ascii_only` lone surrogates become `\\udc80` escapes, otherwise
    they stay raw and turn into invalid UTF-8 when the text is encoded with surrogatepass."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=ascii_only)}:{dump(v, ascii_only)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@dataclass
class Targets:
    closed_port: int
    open_port: int
    http_port: int


@dataclass
class Case:
    monitor_id: str
    payload: bytes
    expect: str  # "result", "error" or "any"
    maintenance: bool = False


class Generator:
    def __init__(self, seed: int, targets: Targets, big_every: int = 150) -> None:
        self.rng = random.Random(seed)
        self.t = targets
        self.big_every = big_every  # about one case in this many carries a 1 MB string

    # ---- building blocks
    def big(self) -> bool:
        return self.rng.randrange(self.big_every) == 0

    def string(self) -> str:
        r = self.rng
        pick = r.randrange(14)
        if pick == 0:
            return ""
        if pick == 1:
            return "".join(r.choice(SURROGATES) for _ in range(r.randint(1, 3)))
        if pick == 2:
            return "x" + r.choice(SURROGATES) + "y"
        if pick == 3:
            return "a" * r.choice([63, 64, 100, 300]) + ".example"
        if pick == 4:
            return "".join(chr(r.choice([r.randint(0, 0x1f), r.randint(0x80, 0x7ff), r.randint(0x800, 0xd7ff),
                                         r.randint(0xe000, 0xffff), r.randint(0x10000, 0x10ffff)]))
                           for _ in range(r.randint(1, 12)))
        if pick == 5:
            return r.choice(["{", "[", "}", "\"", "\\", "\r\n", "\x00", "\u2028", "%", "%zz", "@", "#"]) * r.randint(1, 5)
        if pick == 6 and self.big():
            return r.choice(["x", "\u00e9", "[", "\ud800"]) * BIG
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz0123456789-_. /:?=&") for _ in range(r.randint(1, 20)))

    def number(self) -> Any:
        return self.rng.choice([0, -1, 1, 80, 65535, 65536, 2**63 - 1, -2**63, Raw("9223372036854775808"),
                                Raw("-9223372036854775809"), Raw("1e999"), Raw("-1e999"), Raw("1.5"), Raw("1e3"),
                                Raw("1.0"), Raw("-0"), Raw("1" * 400), Raw("0.000001"), Raw("1E+2")])

    def deep(self) -> Raw:
        depth = self.rng.choice([100, 999, 1000, 1001, 3000, 9999, 10000, 10001, 30000])
        if self.rng.random() < 0.5:
            return Raw("[" * depth + "]" * depth)
        return Raw('{"a":' * depth + "1" + "}" * depth)

    def anything(self) -> Any:
        makers = [lambda: None, lambda: True, self.number, self.string, list, dict,
                  lambda: [self.string(), self.number()], lambda: {self.string(): self.string()}, self.deep]
        return self.rng.choice(makers)()

    def field(self, good: Any) -> Any:
        """Usually `good`, sometimes something hostile in its place."""
        return good if self.rng.random() < 0.6 else self.anything()

    def host(self) -> str:
        return self.rng.choice(["127.0.0.1", "localhost", "::1", "", "a" * 64 + ".example", "b" * 63 + "." + "c" * 63,
                                "x" + self.rng.choice(SURROGATES), "bad host", "127.1", "a..b", "-x.y", self.string()])

    # ---- configs
    def tcp_config(self) -> dict:
        port = self.rng.choice([self.t.closed_port, self.t.open_port, 0, 65536, -1])
        return {"host": self.field(self.host()), "port": self.field(port)}

    def http_config(self, monitor_type: str) -> dict:
        r, t = self.rng, self.t
        base = f"127.0.0.1:{t.http_port}"
        url = r.choice([f"http://{base}/ok", f"http://localhost:{t.http_port}/p?q=" + r.choice(SURROGATES),
                        f"http://127.0.0.1:{t.closed_port}/", f"http://{'a' * 64}.example/", "http://" + r.choice(SURROGATES) + "/",
                        "not a url", "", "http://[::1", f"https://{base}/", "ftp://x/", "http://127.0.0.1:99999/",
                        f"http://us{r.choice(SURROGATES)}er:pa{r.choice(SURROGATES)}ss@{base}/", f"http://{base}/{self.string()}",
                        f"http://{base}/" + ("x" * BIG if self.big() else "y")])
        cfg: dict[str, Any] = {"url": self.field(url), "accepted_statuscodes": self.field(["2XX"])}
        options = {
            "method": lambda: r.choice(["GET", "POST", "HEAD", "", "G\u00e9T", "GET\r\nX: y", self.string()]),
            "headers": lambda: r.choice(['{"X-A":"b"}', '{"X-A":"' + r.choice(SURROGATES) + '"}',
                                         '{"' + r.choice(SURROGATES) + '":"v"}', '{"X":1}', "{bad", self.deep().text,
                                         '{"X-A":"v\\r\\nInjected: 1"}', dump({self.string(): self.string()}, True)]),
            "encoding": lambda: r.choice(["json", "form", "xml", "text", "", self.string()]),
            "body": lambda: r.choice(["", '{"a":1}', self.string(), self.deep().text]),
            "max_redirects": lambda: self.number(),
            "ignore_tls_errors": lambda: r.choice([True, False]),
            "keyword": lambda: r.choice(["ok", "", self.string()]),
            "invert_keyword": lambda: r.choice([True, False]),
            "json_query": lambda: r.choice(["status", "a.#(b==1)", "@reverse", "..", "#", "a|b", "{a,b}", self.string()]),
            "json_condition": lambda: r.choice(["==", "!=", ">", "<=", "", "~", self.string()]),
            "expected_value": lambda: r.choice(["ok", "", "1e999", self.deep().text, self.string()]),
            "authMethod": lambda: r.choice(["none", "basic", "ntlm", "oauth2-cc", "mtls", "", self.string()]),
            "basic_auth_user": self.string, "basic_auth_pass": self.string, "authDomain": self.string,
            "oauth_auth_method": lambda: r.choice(["client_secret_basic", "client_secret_post", self.string()]),
            "oauth_token_url": lambda: r.choice([f"http://{base}/token", f"http://127.0.0.1:{t.closed_port}/t",
                                                 f"http://{base}/" + r.choice(SURROGATES), self.string()]),
            "oauth_client_id": self.string, "oauth_client_secret": self.string, "oauth_scopes": self.string,
            "tlsCert": self.string, "tlsKey": self.string, "tlsCa": self.string,
        }
        for name in r.sample(sorted(options), r.randint(0, 8)):
            cfg[name] = self.field(options[name]())
        return cfg

    def config_text(self, cfg: dict) -> str:
        r = self.rng
        if r.random() < 0.1:
            return r.choice(["", "null", "{", "[]", '"text"', "1e999", self.deep().text, "{}" * 3, self.string()])
        if r.random() < 0.1:
            cfg[r.choice(["unknown", "HOST", "Url", self.string()])] = self.anything()
        return dump(cfg, ascii_only=r.random() < 0.8)

    # ---- payloads
    def envelope(self, monitor_id: str, monitor_type: str, config: str, **changes: Any) -> dict:
        body: dict[str, Any] = {"monitor_id": monitor_id, "monitor_name": f"fuzz {monitor_id}",
                                "monitor_type": monitor_type, "interval": 60, "timeout": 2, "max_retries": 0,
                                "retry_interval": 60, "resend_interval": 0, "config": config,
                                "scheduled_at": format_rfc3339(time.time_ns()), "is_under_maintenance": False,
                                "check_cert_expiry": False}
        body.update(changes)
        return body

    def case(self, i: int) -> Case:
        r = self.rng
        mid = f"f{i}"
        kind = r.choices(["tcp", "http", "push", "maintenance", "type", "envelope", "bytes"],
                         [30, 28, 8, 5, 8, 13, 8])[0]
        ascii_only = r.random() < 0.8
        if kind == "tcp":
            body = self.envelope(mid, "tcp", self.config_text(self.tcp_config()))
            return Case(mid, encode(dump(body, ascii_only)), "result")
        if kind == "http":
            monitor_type = r.choice(BUILT[1:])
            body = self.envelope(mid, monitor_type, self.config_text(self.http_config(monitor_type)))
            if r.random() < 0.8:
                return Case(mid, encode(dump(body, ascii_only)), "result")
            body["proxy"] = {"id": "p", "protocol": self.field(r.choice(["http", "https", "socks", "socks4", "socks5h", ""])),
                             "host": self.field(r.choice(["127.0.0.1", "localhost", self.host()])),
                             "port": self.field(r.choice([self.t.closed_port, self.t.http_port])), "auth": self.field(True),
                             "username": self.string(), "password": self.string()}
            return Case(mid, encode(dump(body, ascii_only)), "any")  # a mistyped proxy field fails the payload
        if kind == "push":
            beat = {"status": self.field(1), "time": self.field(format_rfc3339(time.time_ns() - r.randint(0, 120) * 10**9)),
                    "msg": self.string()}
            body = self.envelope(mid, "push", self.string(), last_heartbeat=self.field(beat))
            return Case(mid, encode(dump(body, ascii_only)), "any")
        if kind == "maintenance":
            monitor_type = r.choice(BUILT + ["push"])
            body = self.envelope(mid, monitor_type, self.string(), is_under_maintenance=True)
            return Case(mid, encode(dump(body, ascii_only)), "result", maintenance=True)
        if kind == "type":
            monitor_type = r.choice(UNBUILT + ["", "HTTP", "tcp ", self.string(), "t" + r.choice(SURROGATES)])
            body = self.envelope(mid, monitor_type, "{}")
            return Case(mid, encode(dump(body, ascii_only)), "error")
        if kind == "envelope":
            name = r.choice(["monitor_id", "monitor_name", "interval", "timeout", "config", "scheduled_at", "proxy",
                             "is_under_maintenance", "max_retries", "last_heartbeat"])
            value = self.anything()
            body = self.envelope(mid, "tcp", dump({"host": "127.0.0.1", "port": self.t.closed_port}, True))
            body[name] = value
            if name == "monitor_id" and isinstance(value, str):
                mid = value
            return Case(mid, encode(dump(body, ascii_only)), "any")
        return Case(mid, self.broken_bytes(mid), "any")

    def broken_bytes(self, mid: str) -> bytes:
        r = self.rng
        good = encode(dump(self.envelope(mid, "tcp", '{"host":"127.0.0.1","port":1}'), True))
        pick = r.randrange(6)
        if pick == 0:
            return good[:r.randrange(len(good))]
        if pick == 1:
            at = r.randrange(len(good))
            return good[:at] + bytes([r.randrange(256)]) + good[at + 1:]
        if pick == 2:
            return bytes(r.randrange(256) for _ in range(r.randint(0, 64)))
        if pick == 3:
            return r.choice([b"", b"null", b"[]", b"1e999", b'"x"', b"{}", b"NaN", b"\xff\xfe"])
        if pick == 4:
            return encode(self.deep().text)
        return good.replace(b'"monitor_type":"tcp"', b'"monitor_type":"tcp","x":' + encode(self.deep().text))


async def start_targets(closed_port: int) -> tuple[Targets, list[asyncio.AbstractServer]]:
    """A TCP listener that accepts and closes, and an HTTP server answering every request at once with
    200 and a small JSON body; both on this event loop."""

    async def accept_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = b'{"status":"ok","access_token":"t","token_type":"Bearer"}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except Exception:  # a client that sent garbage or hung up: nothing to answer
            pass
        finally:
            writer.close()

    tcp = await asyncio.start_server(accept_and_close, "127.0.0.1", 0, backlog=1024)
    http = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024, limit=1 << 16)
    targets = Targets(closed_port, tcp.sockets[0].getsockname()[1], http.sockets[0].getsockname()[1])
    return targets, [tcp, http]
