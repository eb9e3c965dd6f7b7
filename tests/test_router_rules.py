"""Routing rules: the file format, matching (globs, ids, types, hosts from each type's config), the errors
refused at start-up with their line, `route --check`, and the edge worker's `--site` / `--worker-id`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from router_helpers import named_payload

from healthcheck import ingest_payload
from router import route_command
from sites_rules import RulesError, config_hosts, glob_regex, parse_rules
from worker import main as worker_main

ISSUE_EXAMPLE = """
unmatched = "run"            # or "queue:healthcheck-central"
[[rule]]
site = "berlin"
names = ["[berlin]*"]        # globs on the monitor name
hosts = ["10.1.0.0/16", "*.berlin.example"]
ids = []
types = []
offline = "down"             # or "run" or "queue"
"""
RULES = ISSUE_EXAMPLE + """
[[rule]]
site = "paris"
ids = ["6830ad485361f19c598d6d90"]
types = ["push"]
hosts = ["192.168.7.0/24", "fd00:7::/32", "db?.paris.example"]
offline = "run"

[[rule]]
site = "central"
names = ["*"]
"""


def decide(rules, monitor_type: str, config: dict | str, name: str = "Monitor", monitor_id: str = "m1"):
    return rules.decide(named_payload(monitor_type, config, monitor_id, name))


def test_the_issue_example_parses_with_run_for_unmatched_tasks():
    rules = parse_rules(ISSUE_EXAMPLE)
    (rule,) = rules.rules
    assert (rule.site, rule.queue, rule.offline, rule.line) == ("berlin", "healthcheck-berlin", "down", 3)
    assert rules.unmatched == "run"
    assert decide(rules, "tcp", {"host": "10.1.2.3", "port": 22}).queue == "healthcheck-berlin"
    unmatched = decide(rules, "tcp", {"host": "10.2.2.3", "port": 22})
    assert (unmatched.queue, unmatched.site) == (None, None)  # None: the router runs it
    central = parse_rules(ISSUE_EXAMPLE.replace('unmatched = "run"', 'unmatched = "queue:healthcheck-central"'))
    assert decide(central, "tcp", {"host": "10.2.2.3", "port": 22}).queue == "healthcheck-central"


def test_name_globs_take_brackets_literally_and_ignore_case():
    assert glob_regex("[berlin]*").fullmatch("[Berlin] core switch")
    assert not glob_regex("[berlin]*").fullmatch("bremen router")  # not a character class
    assert glob_regex("sw-??.*").fullmatch("SW-12.x") and not glob_regex("sw-??").fullmatch("sw-123")
    rules = parse_rules(RULES)
    assert decide(rules, "tcp", {"host": "x", "port": 1}, name="[BERLIN] core switch").site == "berlin"
    assert decide(rules, "tcp", {"host": "x", "port": 1}, name="berlin core").site == "central"


def test_first_matching_rule_wins_and_any_list_can_match():
    rules = parse_rules(RULES)
    assert decide(rules, "push", {}, name="[berlin] push").site == "berlin"  # rule 1 before rule 2's types
    assert decide(rules, "push", {}).site == "paris"
    assert decide(rules, "tcp", {"host": "x", "port": 1}, monitor_id="6830ad485361f19c598d6d90").site == "paris"
    assert decide(rules, "tcp", {"host": "x", "port": 1}).site == "central"


@pytest.mark.parametrize("monitor_type, config, hosts", [
    ("http", {"url": "https://user:pw@Sw1.Berlin.Example:8443/health?x=1"}, ["sw1.berlin.example"]),
    ("websocket", {"url": "ws://[fd00:7::5]:80/ws"}, ["fd00:7::5"]),
    ("tcp", {"host": "10.1.0.7", "port": 22}, ["10.1.0.7"]),
    ("ping", {"host": "fd00:7::1"}, ["fd00:7::1"]),
    ("snmp", {"host": "switch.berlin.example.", "port": 161}, ["switch.berlin.example"]),
    ("dns", {"host": "intranet.example", "resolver_server": "192.168.7.53", "port": 53},
     ["intranet.example", "192.168.7.53"]),
    ("docker", {"connection_type": "tcp", "docker_daemon": "tcp://10.1.9.9:2376"}, ["10.1.9.9"]),
    ("docker", {"connection_type": "socket", "docker_daemon": "/var/run/docker.sock"}, []),
    ("grpc-keyword", {"grpcUrl": "dns:///grpc.berlin.example:443"}, ["grpc.berlin.example"]),
    ("grpc-keyword", {"grpcUrl": "10.1.0.5:50051"}, ["10.1.0.5"]),
    ("mongodb", {"connectionString": "mongodb://u:p@db1.paris.example:27017,db2.paris.example/app"},
     ["db1.paris.example", "db2.paris.example"]),
    ("mysql", {"connection_string": "mysql://u:p@10.1.3.3:3306/app"}, ["10.1.3.3"]),
    ("postgres", {"database_connection_string": "postgres://u:p@pg:5432/app?host=10.1.4.4"}, ["pg", "10.1.4.4"]),
    ("sqlserver", {"database_connection_string": "Server=sql.paris.example,1433;Database=m;User Id=sa;Password=x"},
     ["sql.paris.example"]),
    ("redis", {"databaseConnectionString": "rediss://:pw@[fd00:7::9]:6380/0"}, ["fd00:7::9"]),
    ("mqtt", {"hostname": "mqtts://broker.berlin.example", "port": 8883}, ["broker.berlin.example"]),
    ("rabbitmq", {"nodes": ["https://rmq1:15672", "http://10.1.5.5:15672"]}, ["rmq1", "10.1.5.5"]),
    ("kafka-producer", {"brokers": ["k1.paris.example:9092", "10.1.6.6:9092"]}, ["k1.paris.example", "10.1.6.6"]),
    ("push", {"pushToken": "abc"}, []),
])
def test_target_hosts_are_read_from_each_types_config(monitor_type, config, hosts):
    assert config_hosts(json.dumps(config)) == hosts
    assert config_hosts(json.dumps({k.upper(): v for k, v in config.items()})) == hosts  # Go: any key case


def test_hosts_match_cidr_blocks_on_addresses_and_globs_on_names():
    rules = parse_rules(RULES)
    cases = {
        ("http", "https://10.1.200.1/"): "berlin", ("http", "https://10.2.0.1/"): "central",
        ("tcp", "sw9.berlin.example"): "berlin", ("tcp", "berlin.example"): "central",
        ("tcp", "192.168.7.200"): "paris", ("ping", "fd00:7:1::1"): "paris", ("ping", "fd00:8::1"): "central",
        ("mysql", "mysql://u:p@db1.paris.example/x"): "paris", ("mysql", "mysql://u:p@db10.paris.example/x"): "central",
    }
    for (monitor_type, target), site in cases.items():
        config = {"url": target} if monitor_type == "http" else (
            {"connection_string": target} if monitor_type == "mysql" else {"host": target})
        assert decide(rules, monitor_type, config).site == site, target


def test_a_payload_that_is_not_json_is_unmatched():
    rules = parse_rules(ISSUE_EXAMPLE)
    assert rules.decide(b"{not json").queue is None
    assert rules.decide(b"[]").queue is None


@pytest.mark.parametrize("text, line, reason", [
    ('unmatched = "run"\n[[rule]\nsite = "b"\n', 2, "invalid TOML: "),
    ('unmatched = "runs"\n[[rule]]\nsite = "b"\nnames = ["x"]\n', 1, 'unmatched: must be "run" or "queue:<queue name>"'),
    ('unmatched = "queue:healthcheck"\n[[rule]]\nsite = "b"\nnames = ["x"]\n', 1, "cannot go back into it"),
    ('unmached = "run"\n[[rule]]\nsite = "b"\nnames = ["x"]\n', 1, "unknown setting \"unmached\""),
    ('[rule]\nsite = "b"\n', 1, "write each rule as a [[rule]] table"),
    ('unmatched = "run"\n', None, "no [[rule]] table"),
    ('[[rule]]\nsite = "b"\nnames = ["x"]\n\n[[rule]]\nnames = ["y"]\n', 5, "rule 2: site is missing"),
    ('[[rule]]\nsite = "berlin east"\nnames = ["x"]\n', 2, "site must be 1-63 letters"),
    ('[[rule]]\nsite = "b"\nname = ["x"]\n', 3, "unknown key \"name\""),
    ('[[rule]]\nsite = "b"\nnames = "x"\n', 3, "names must be a list of strings"),
    ('[[rule]]\nsite = "b"\nids = [1]\n', 3, "ids must be a list of strings"),
    ('[[rule]]\nsite = "b"\nnames = [""]\n', 3, "names has an empty string"),
    ('[[rule]]\nsite = "b"\nnames = []\n', 1, "matches nothing"),
    ('[[rule]]\nsite = "b"\ntypes = ["htp"]\n', 3, 'types: unknown monitor type "htp"'),
    ('[[rule]]\nsite = "b"\nhosts = [\n  "10.0.0.0/8",\n  "10.1.0.0/33",\n]\n', 3, '"10.1.0.0/33" is not a CIDR block'),
    ('[[rule]]\nsite = "b"\nhosts = ["https://x.example"]\n', 3, "is a URL"),
    ('[[rule]]\nsite = "b"\nhosts = ["a b"]\n', 3, "not a host pattern"),
    ('[[rule]]\nsite = "b"\nnames = ["x"]\noffline = "later"\n', 4, 'offline must be "down", "run" or "queue"'),
])
def test_each_kind_of_error_names_its_line_and_reason(text, line, reason, tmp_path, capsys):
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "rules.toml")
    assert caught.value.line == line and reason in str(caught.value)
    assert str(caught.value).startswith(f"rules.toml:{line}: " if line else "rules.toml: ")
    path = tmp_path / "rules.toml"
    path.write_text(text)
    assert route_command([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "peekaping-worker route: invalid rules: " + str(caught.value).replace("rules.toml", str(path), 1)


def test_route_command_exits_2_with_the_line_and_check_prints_the_decision(tmp_path):
    good, bad = tmp_path / "rules.toml", tmp_path / "bad.toml"
    good.write_text(RULES)
    bad.write_text('[[rule]]\nsite = "b"\nhosts = ["10.1.0.0/33"]\n')
    route = [sys.executable, str(ROOT / "worker.py"), "route"]
    proc = subprocess.run([*route, str(bad), "--redis-url", "redis://127.0.0.1:1/0"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f'peekaping-worker route: invalid rules: {bad}:3: rule 1 (site "b"): hosts: '
                                   '"10.1.0.0/33" is not a CIDR block (address/prefix length, e.g. 10.1.0.0/16)')
    payload = named_payload("http", {"url": "https://sw1.berlin.example/"}, "m1", "core switch").decode()
    proc = subprocess.run([*route, "--check", str(good), payload], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "site: berlin", "action: queued in healthcheck-berlin",
        'why: rule 1 (line 3): hosts: "*.berlin.example" matches target "sw1.berlin.example"',
        'when no live worker serves healthcheck-berlin: the router reports DOWN: No worker online for site "berlin" '
        '(offline = "down")']


def test_check_explains_unmatched_and_offline_run(tmp_path, capsys):
    path = tmp_path / "rules.toml"
    path.write_text(ISSUE_EXAMPLE + '[[rule]]\nsite = "paris"\ntypes = ["push"]\noffline = "run"\n')
    assert route_command(["--check", str(path), named_payload("tcp", {"host": "10.9.0.1", "port": 1}, "x").decode()]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["site: none", "action: run by the router itself"]
    assert out[2] == 'why: no rule matches (monitor name "Monitor x", id "x", type "tcp", target hosts: 10.9.0.1)'
    assert route_command(["--check", str(path), named_payload("push", {}, "p").decode()]) == 0
    out = capsys.readouterr().out
    assert 'rule 2 (line 10): types: "push" is the monitor type' in out and "run by the router itself" in out
    assert route_command(["--check", str(path), "{oops"]) == 2
    assert capsys.readouterr().err.startswith("peekaping-worker route: the payload is not a JSON object")
    assert route_command(["--check", str(path)]) == 2
    assert route_command([str(path), "--queues", "healthcheck:5"]) == 2
    assert "the router consumes healthcheck" in capsys.readouterr().err


def test_site_flag_serves_the_site_queue_and_the_acl_rule_names_it(capsys):
    assert worker_main(["--site", "berlin", "--acl-rule"]) == 0
    rule = capsys.readouterr().out
    assert "~asynq:{healthcheck-berlin}:* ~asynq:{ingester}:*" in rule and "~asynq:{healthcheck}:*" not in rule
    assert worker_main(["--site", "berlin", "--queues", "low:1", "--acl-rule"]) == 0
    assert "~asynq:{healthcheck-berlin}:* ~asynq:{low}:* ~asynq:{ingester}:*" in capsys.readouterr().out
    for bad in (["--site", "berlin east"], ["--site=-x"], ["--site", "a/b"], ["--worker-id", " "]):
        assert worker_main([*bad, "--acl-rule"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("peekaping-worker: invalid configuration: --") and err.count("\n") == 1


def test_results_carry_site_and_worker_only_with_extensions():
    from executors import UP, Result

    p = {"monitor_id": "m", "monitor_name": "n", "monitor_type": "tcp", "interval": 60, "timeout": 16,
         "max_retries": 0, "retry_interval": 60, "resend_interval": 0, "config": "{}", "check_cert_expiry": False}
    result = Result(UP, "ok", 1_000_000_000, 1_002_000_000)
    origin = {"site": "berlin", "worker": "edge-1"}
    plain = json.loads(ingest_payload(p, result, False, origin))
    assert "site" not in plain and "worker" not in plain
    extended = json.loads(ingest_payload(p, result, True, origin))
    assert (extended["site"], extended["worker"]) == ("berlin", "edge-1")
    assert {k: v for k, v in extended.items() if k not in ("site", "worker", "timings")} == plain


def test_worker_field_is_host_and_pid_unless_a_worker_id_is_given():
    from types import SimpleNamespace

    from settings import Settings
    from worker import result_origin

    server = SimpleNamespace(host="edge7", pid=4242)
    assert result_origin(Settings(), server) == {"worker": "edge7:4242"}
    assert result_origin(Settings(site="paris", worker_id="paris-a"), server) == {"site": "paris", "worker": "paris-a"}
