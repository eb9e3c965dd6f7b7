"""Routing rules of `peekaping-worker route`: which site checks a monitor.

A rules file (TOML) lists `[[rule]]` tables, first match wins; a rule names a site and matches a task when
any of its non-empty lists matches: `names` (globs on the monitor name), `ids`, `types`, `hosts` (globs on
host names, CIDR blocks on addresses, both taken from the monitor's config). Errors are reported with the
file's line, because the file is edited by hand and read once, at start-up. Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from settings import SITE_NAME, SITE_QUEUE_PREFIX

SOURCE_QUEUE = "healthcheck"  # where Peekaping's producer puts every health check
OFFLINE_ACTIONS = ("down", "run", "queue")
RULE_KEYS = ("site", "names", "ids", "types", "hosts", "offline")
# Config fields that name what a check connects to, over every monitor type (Go's field names; matched
# case-insensitively as Go's encoding/json does). dns `host` is the name asked for, `resolver_server` the
# server asked; docker `docker_daemon` is a socket path or a tcp:// URL.
TARGET_FIELDS = ("url", "host", "hostname", "grpcUrl", "resolver_server", "docker_daemon", "connectionString",
                 "connection_string", "database_connection_string", "databaseConnectionString", "nodes", "brokers")
_TARGET_KEYS = {name.lower(): name for name in TARGET_FIELDS}
_CACHE_LIMIT = 20_000  # decisions kept (one per monitor and config in practice)


class RulesError(Exception):
    """A rules file that cannot be used; str() is `path:line: reason`."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
        self.line = line


# --------------------------------------------------------------------------------------------------
# Patterns

def _q(value: Any) -> str:
    """A value as the rules file writes it (double quotes), for messages."""
    return json.dumps(value, ensure_ascii=False, default=str)


def glob_regex(pattern: str) -> re.Pattern:
    """`*` any run of characters, `?` one; everything else literal (so `[berlin]*` means the text
    `[berlin]` then anything, not a character class). Case-insensitive."""
    parts = ((".*" if c == "*" else "." if c == "?" else re.escape(c)) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class HostPattern:
    text: str
    network: Any = None  # ipaddress network for an address or CIDR block
    glob: re.Pattern | None = None

    def matches(self, host: str, address: Any) -> bool:
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        return bool(self.glob.fullmatch(host))


def host_pattern(text: str) -> HostPattern:
    """A `hosts` entry; ValueError says why it is not one."""
    if not text.strip() or text != text.strip() or any(c.isspace() for c in text):
        raise ValueError(f"{_q(text)} is not a host pattern (empty or with spaces)")
    if "://" in text:
        raise ValueError(f"{_q(text)} is a URL; give the host name or address only")
    if "/" in text:
        try:
            return HostPattern(text, network=ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{_q(text)} is not a CIDR block (address/prefix length, e.g. 10.1.0.0/16)") from None
    address = _address(text)
    if address is not None:
        return HostPattern(text, network=ipaddress.ip_network(address))
    if not re.fullmatch(r"[A-Za-z0-9_.*?:\[\]-]+", text):
        raise ValueError(f"{_q(text)} is not a host name pattern (letters, digits, - . _ and * ? globs)")
    return HostPattern(text, glob=glob_regex(text.rstrip(".")))


def _address(text: str) -> Any:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Hosts named by a monitor's config

def config_hosts(config: Any) -> list[str]:
    """Host names and addresses a monitor's config names as targets, lower-case, without ports."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            return []
    if not isinstance(config, dict):
        return []
    hosts: list[str] = []
    for key, value in config.items():
        if key.lower() not in _TARGET_KEYS:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                hosts += hosts_in(item)
    return list(dict.fromkeys(hosts))


def hosts_in(value: str) -> list[str]:
    """The hosts in one target value: a URL (several hosts for mongodb://a,b), an ADO connection string
    (`Server=host,port;…`), a gRPC target (`dns:///h:p`, `ipv4:a,b`), `host:port`, `[v6]:port` or a bare host."""
    value = value.strip()
    if _address(value.strip("[]")) is not None:
        return _clean([value.strip("[]")])
    ado = re.match(r"(?i)\s*(?:server|data source)\s*=\s*(?:tcp:)?([^;,]*)", value)
    if ado:
        return _clean([ado.group(1).split("\\")[0]])
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", value)
    if scheme and not re.fullmatch(r"[^:/]+:\d+", value):
        name, rest = scheme.group(1).lower(), value[scheme.end():]
        if name == "unix" or (name != "dns" and rest.startswith("/") and not rest.startswith("//")):
            return []
        if name in ("ipv4", "ipv6"):
            return _clean(_host_port(item) for item in rest.split(","))
        if name == "dns":  # dns:[//resolver]/host:port
            return _clean([_host_port(rest.rsplit("/", 1)[-1])])
        authority = rest.lstrip("/").partition("/")[0]
        authority = re.split(r"[?#]", authority, maxsplit=1)[0]
        hosts = [_host_port(item) for item in authority.rpartition("@")[2].split(",")]
        query = re.split(r"\?", rest, maxsplit=1)
        if len(query) == 2:  # postgres host=… overrides the URL's host
            hosts += [v for k, _, v in (kv.partition("=") for kv in query[1].split("&")) if k.lower() == "host"]
        return _clean(hosts)
    if value.startswith("/"):
        return []
    return _clean([_host_port(value)])


def _host_port(text: str) -> str:
    text = text.strip()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    if text.count(":") == 1:
        return text.partition(":")[0]
    return text


def _clean(hosts: Any) -> list[str]:
    return [h.strip().rstrip(".").lower() for h in hosts if h and h.strip().rstrip(".")]


# --------------------------------------------------------------------------------------------------
# Rules

@dataclass
class Rule:
    number: int  # 1-based, in file order
    line: int | None
    site: str
    names: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    hosts: list[HostPattern] = field(default_factory=list)
    offline: str = "down"
    _names: list[re.Pattern] = field(default_factory=list, repr=False)

    @property
    def queue(self) -> str:
        return SITE_QUEUE_PREFIX + self.site

    def why(self, task: TaskFacts) -> str | None:
        """Which list entry matches the task, in words; None when the rule does not match."""
        for text, regex in zip(self.names, self._names):
            if regex.fullmatch(task.name):
                return f"names: {_q(text)} matches monitor name {_q(task.name)}"
        if task.id in self.ids:
            return f"ids: {_q(task.id)} is the monitor id"
        if task.type in self.types:
            return f"types: {_q(task.type)} is the monitor type"
        for pattern in self.hosts:
            for host, address in task.addressed_hosts():
                if pattern.matches(host, address):
                    return f"hosts: {_q(pattern.text)} matches target {_q(host)}"
        return None


@dataclass
class TaskFacts:
    """What rules look at in a health-check payload."""
    name: str = ""
    id: str = ""
    type: str = ""
    config: Any = ""
    _hosts: list | None = None

    def addressed_hosts(self) -> list[tuple[str, Any]]:
        if self._hosts is None:
            self._hosts = [(h, _address(h)) for h in config_hosts(self.config)]
        return self._hosts


def task_facts(payload: bytes | str) -> TaskFacts:
    """The monitor name, id, type and config of a payload; ValueError when it is not a JSON object."""
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("the payload is not a JSON object")

    def text(key: str) -> str:
        value = body.get(key)
        if value is None:  # Go's decoding matches keys case-insensitively
            value = next((v for k, v in body.items() if k.lower() == key), None)
        return value if isinstance(value, str) else ""

    config = body.get("config")
    if isinstance(config, (dict, list)):  # `route --check` with the config written as an object
        config = json.dumps(config)
    return TaskFacts(text("monitor_name"), text("monitor_id"), text("monitor_type"),
                     config if isinstance(config, str) else text("config"))


@dataclass
class Decision:
    """Where a task goes: `queue` None means the router runs it; `site` None means no rule matched."""
    queue: str | None
    site: str | None = None
    offline: str = "queue"
    rule: Rule | None = None


class Rules:
    def __init__(self, path: str, rules: list[Rule], unmatched: str) -> None:
        self.path = path
        self.rules = rules
        self.unmatched = unmatched
        self.unmatched_queue = unmatched[len("queue:"):] if unmatched.startswith("queue:") else None
        self._unmatched = Decision(self.unmatched_queue)
        self._cache: dict[tuple, Decision] = {}
        self._decisions = {id(r): Decision(r.queue, r.site, r.offline, r) for r in rules}

    def site_queues(self) -> dict[str, str]:
        """queue -> site, for every site the rules name."""
        return {r.queue: r.site for r in self.rules}

    def match(self, task: TaskFacts) -> tuple[Rule | None, str]:
        for rule in self.rules:
            why = rule.why(task)
            if why:
                return rule, why
        return None, ""

    def decide(self, payload: bytes) -> Decision:
        """The decision for a payload (cached by what rules look at; the payload itself changes every run)."""
        try:
            task = task_facts(payload)
        except ValueError:
            return self._unmatched
        key = (task.name, task.id, task.type, task.config)
        decision = self._cache.get(key)
        if decision is None:
            rule, _ = self.match(task)
            decision = self._decisions[id(rule)] if rule else self._unmatched
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = decision
        return decision

    def explain(self, payload: str) -> str:
        """`route --check`: the site a payload goes to and why; ValueError for a payload that is not JSON."""
        task = task_facts(payload)
        rule, why = self.match(task)
        hosts = ", ".join(h for h, _ in task.addressed_hosts()) or "none"
        facts = f"monitor name {_q(task.name)}, id {_q(task.id)}, type {_q(task.type)}, target hosts: {hosts}"
        if rule is None:
            action = ("run by the router itself" if self.unmatched_queue is None
                      else f"queued in {self.unmatched_queue} (unmatched = {_q(self.unmatched)})")
            return f"site: none\naction: {action}\nwhy: no rule matches ({facts})"
        offline = {"down": f'the router reports DOWN: No worker online for site "{rule.site}"',
                   "run": "run by the router itself", "queue": f"queued in {rule.queue} anyway"}[rule.offline]
        where = f"rule {rule.number}" + (f" (line {rule.line})" if rule.line else "")
        return (f"site: {rule.site}\naction: queued in {rule.queue}\nwhy: {where}: {why}\n"
                f"when no live worker serves {rule.queue}: {offline} (offline = {_q(rule.offline)})")


# --------------------------------------------------------------------------------------------------
# Loading

def load_rules(path: str) -> Rules:
    """Read and check a rules file; RulesError names the line and the reason."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise RulesError(path, None, f"cannot read the rules file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(path, raw[:exc.start].count(b"\n") + 1, "not UTF-8 text") from None
    return parse_rules(text, path)


def parse_rules(text: str, path: str = "rules") -> Rules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc)) or "invalid TOML"
        raise RulesError(path, int(where.group(1)) if where else None, f"invalid TOML: {reason}") from None
    lines = _KeyLines(text)

    def fail(reason: str, key: str | None = None, rule: int | None = None) -> RulesError:
        return RulesError(path, lines.find(key, rule), reason)

    for key in doc:
        if key not in ("unmatched", "rule"):
            raise fail(f"unknown setting {_q(key)} (expected unmatched and [[rule]] tables)", key)
    unmatched = doc.get("unmatched", "run")
    if not isinstance(unmatched, str) or not (unmatched == "run" or re.fullmatch(r"queue:\S+", unmatched)):
        raise fail(f'unmatched: must be "run" or "queue:<queue name>", got {_q(unmatched)}', "unmatched")
    if unmatched == f"queue:{SOURCE_QUEUE}":
        raise fail(f"unmatched: the router consumes {SOURCE_QUEUE}; unmatched tasks cannot go back into it",
                   "unmatched")
    tables = doc.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail("rule: write each rule as a [[rule]] table", "rule")
    if not tables:
        raise RulesError(path, None, "no [[rule]] table: every task would be unmatched")
    rules = [_rule(table, i + 1, lines, fail) for i, table in enumerate(tables)]
    return Rules(path, rules, unmatched)


def _rule(table: dict, number: int, lines: _KeyLines, fail: Any) -> Rule:
    label = f"rule {number}"
    for key in table:
        if key not in RULE_KEYS:
            raise fail(f"{label}: unknown key {_q(key)} (expected {', '.join(RULE_KEYS)})", key, number)
    site = table.get("site")
    if site is None:
        raise fail(f"{label}: site is missing", None, number)
    if not isinstance(site, str) or not SITE_NAME.fullmatch(site):
        raise fail(f"{label}: site must be 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit, "
                   f"got {_q(site)}", "site", number)
    label = f'rule {number} (site "{site}")'
    lists: dict[str, list[str]] = {}
    for key in ("names", "ids", "types", "hosts"):
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(f"{label}: {key} must be a list of strings, e.g. {key} = [\"...\"]", key, number)
        if any(not v for v in value):
            raise fail(f"{label}: {key} has an empty string", key, number)
        lists[key] = value
    if not any(lists.values()):
        raise fail(f"{label}: matches nothing; give names, ids, types or hosts", None, number)
    from worker import EXECUTORS

    for monitor_type in lists["types"]:
        if monitor_type not in EXECUTORS:
            raise fail(f"{label}: types: unknown monitor type {_q(monitor_type)}", "types", number)
    hosts = []
    for entry in lists["hosts"]:
        try:
            hosts.append(host_pattern(entry))
        except ValueError as exc:
            raise fail(f"{label}: hosts: {exc}", "hosts", number) from None
    offline = table.get("offline", "down")
    if offline not in OFFLINE_ACTIONS:
        raise fail(f'{label}: offline must be "down", "run" or "queue", got {_q(offline)}', "offline", number)
    return Rule(number, lines.find(None, number), site, lists["names"], lists["ids"], lists["types"], hosts,
                offline, [glob_regex(n) for n in lists["names"]])


class _KeyLines:
    """Line numbers of top-level keys and of each [[rule]] table and its keys (tomllib gives none)."""

    def __init__(self, text: str) -> None:
        self.top: dict[str, int] = {}
        self.rules: list[tuple[int, dict[str, int]]] = []
        section: dict[str, int] | None = self.top
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if re.match(r"\[\[\s*rule\s*\]\]", stripped):
                self.rules.append((number, {}))
                section = self.rules[-1][1]
            elif stripped.startswith("["):
                section = None
                if re.match(r"\[\s*rule\s*\]", stripped):
                    self.top.setdefault("rule", number)
            elif section is not None:
                key = re.match(r"""["']?([A-Za-z0-9_-]+)["']?\s*=""", stripped)
                if key:
                    section.setdefault(key.group(1), number)

    def find(self, key: str | None, rule: int | None) -> int | None:
        if rule is None:
            return self.top.get(key) if key else None
        if rule > len(self.rules):
            return None
        header, keys = self.rules[rule - 1]
        return keys.get(key, header) if key else header
