"""`peekaping-worker types`: every type with its config fields (taken from the schema each executor
decodes with, so the list cannot drift) and an example `check` line that really works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from urllib.parse import quote, urlsplit

import pytest

from conftest import ROOT
from executors._kit.gojson import _GO_TYPES, _zero, decode_config

import cli
import worker

BUILT = dict(worker.EXECUTORS)
# Where a local peer answers each http example the way example.com would (same scheme, same verdict).
PEER_PATHS = {"http": "/status/200", "https": "/status/200", "http-keyword": "/body?text=Example%20Domain",
              "http-json-query": "/body?type=application/json&text=" + quote('{"status":"ok"}')}


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "worker.py"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def listing() -> str:
    proc = run("types")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def block_of(listing: str, monitor_type: str) -> str:
    for block in listing.split("\n\n"):
        names = block.split(":", 1)[0].split(", ")
        if monitor_type in names:
            return block
    raise AssertionError(f"{monitor_type} is not listed")


def examples(listing: str) -> list[tuple[str, str, dict]]:
    """(type, documented status, config) of every example line `peekaping-worker check TYPE 'CONFIG'`."""
    found = re.findall(r"^  example, gives (\w+) .*:\n    (peekaping-worker check .*)$", listing, re.M)
    out = []
    for status, line in found:
        program, command, monitor_type, config = shlex.split(line)
        out.append((monitor_type, status, json.loads(config)))
    return out


def test_every_built_type_is_listed_with_every_schema_field_its_go_type_and_a_meaning(listing):
    for name, path in BUILT.items():
        block = block_of(listing, name)
        schema = cli.type_docs(path)["SCHEMA"]
        for field, kind in schema.items():
            row = rf"^  {re.escape(field)} +{re.escape(_GO_TYPES[kind])} +{re.escape(json.dumps(_zero(kind)))} +\S"
            assert re.search(row, block, re.M), (name, field)


def test_field_notes_and_examples_cover_exactly_the_decoding_schema():
    """A field added to (or removed from) an executor's SCHEMA fails here until it is documented."""
    for path in set(BUILT.values()):
        docs = cli.type_docs(path)
        assert list(docs["FIELDS"]) == list(docs["SCHEMA"]) and all(docs["FIELDS"].values()), path
        assert docs["SUMMARY"]
        for name in (n for n, p in BUILT.items() if p == path):
            config, status, _ = docs["EXAMPLES"][name]
            assert status in ("UP", "DOWN")
            decode_config(json.dumps(config), docs["SCHEMA"], "Config")  # no unknown or mistyped key


def test_http_examples_list_accepted_statuscodes_and_the_field_says_why(listing):
    block = block_of(listing, "http")
    assert re.search(r"^  accepted_statuscodes +\[\]string +\[\] +.*Empty: every response is DOWN", block, re.M)
    for monitor_type, _, config in examples(listing):
        if monitor_type.startswith("http"):
            assert config["accepted_statuscodes"] == ["2XX"]


def test_every_example_command_gives_its_documented_status_against_a_local_peer(listing, open_port, request):
    from http_peers import certs, peer

    env = {"SSL_CERT_FILE": certs().ca_file}  # the https peer's CA, as a system bundle would be
    seen = set()
    for monitor_type, status, config in examples(listing):
        if monitor_type == "tcp":
            config["port"] = open_port
        elif monitor_type in PEER_PATHS:
            scheme = urlsplit(config["url"]).scheme
            config["url"] = peer(scheme).url(PEER_PATHS[monitor_type], host="localhost")
        elif monitor_type == "dns":
            from dns_peers import Nsd
            nsd = Nsd()
            nsd.start()
            request.addfinalizer(nsd.stop)
            config.update(host="www.peek.test", resolver_server="127.0.0.1", port=nsd.port)
        elif monitor_type == "snmp":
            from snmp_peers import agent
            config["port"] = agent().port
        elif monitor_type == "docker":
            from conftest import free_port
            from docker_peers import DockerDaemon, Pki
            daemon = DockerDaemon(Pki(), free_port())
            request.addfinalizer(daemon.stop)
            daemon.start()
            daemon.run_one("web")
            config["docker_daemon"] = daemon.socket
        elif monitor_type in ("grpc-keyword", "grpc"):
            from grpc_peers import shared
            config["grpcUrl"] = f"127.0.0.1:{shared().plain_port}"
        elif monitor_type == "sqlserver":
            from tds_server import Rows, TDSServer
            tds = TDSServer(users={"sa": "password"}, queries={"SELECT 1": [Rows([("", "int")], [(1,)])]})
            request.addfinalizer(tds.close)
            config["database_connection_string"] = config["database_connection_string"].replace(
                "localhost,1433", f"127.0.0.1,{tds.port}")
        elif monitor_type == "mongodb":
            from mongo_peers import Secantus
            mongo = Secantus(auth=False)
            request.addfinalizer(mongo.cleanup)
            mongo.start()
            config["connectionString"] = f"mongodb://127.0.0.1:{mongo.port}/admin"
        elif monitor_type == "rabbitmq":
            from rabbit_peers import HttpPeer, response
            rabbit = HttpPeer(response("200 OK", b'{"status":"ok"}'))
            request.addfinalizer(rabbit.close)
            config["nodes"] = [rabbit.url]
        elif monitor_type == "kafka-producer":
            from kafka_peers import Tansu
            broker = Tansu()
            broker.start()
            request.addfinalizer(broker.stop)
            broker.create_topic("health", 1)
            config["brokers"] = [broker.address]
        elif monitor_type == "mqtt":
            from mqtt_peers import Mosquitto, publish
            mosquitto = Mosquitto()
            request.addfinalizer(mosquitto.stop)
            publish(mosquitto.anon_port, "sensors/a/temp", "21.5", retain=True)
            config["port"] = mosquitto.anon_port
        elif monitor_type == "websocket":
            from ws_peers import peers
            config["url"] = peers().url("wss", "/echo", host="localhost")
        proc = run("check", monitor_type, json.dumps(config), "--timeout", "10", env=env)
        assert proc.stdout.split("  ")[0] == status, (monitor_type, proc.stdout, proc.stderr)
        assert proc.returncode == (0 if status == "UP" else 1)
        seen.add(monitor_type)
    assert seen == set(BUILT)


def test_the_keyword_example_is_down_where_the_keyword_is_missing(listing):
    """The check above can fail: the same example against a body without the keyword is DOWN."""
    from http_peers import certs, peer

    [config] = [c for t, _, c in examples(listing) if t == "http-keyword"]
    config["url"] = peer("https").url("/body?text=nothing", host="localhost")
    proc = run("check", "http-keyword", json.dumps(config), env={"SSL_CERT_FILE": certs().ca_file})
    assert proc.returncode == 1 and proc.stdout.startswith("DOWN")


def test_types_can_show_one_type_and_rejects_unknown_names():
    one = run("types", "tcp")
    assert one.returncode == 0 and one.stdout.startswith("tcp: ") and "http" not in one.stdout.split("\n\n")[0]
    assert "pushToken" not in one.stdout
    bad = run("types", "gopher")
    assert bad.returncode == 2 and bad.stderr.strip() == "peekaping-worker types: unknown monitor type: gopher"


def test_check_help_and_version_point_to_types():
    help_text = run("check", "--help").stdout
    assert "peekaping-worker types" in help_text and '"accepted_statuscodes"' in help_text
    assert "peekaping-worker types" in run("--version").stdout
