"""`peekaping-worker check TYPE CONFIG`: one check, no Redis, exit code by status."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def check(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "worker.py"), "check", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_open_port_is_up_and_json_has_exactly_the_ingest_fields(open_port):
    proc = check("tcp", json.dumps({"host": "127.0.0.1", "port": open_port}), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"status", "message", "ping_ms", "start_time", "end_time"}
    assert (out["status"], out["message"]) == (1, f"TCP port {open_port} is open")


def test_closed_port_is_down_with_exit_1(closed_port):
    proc = check("tcp", json.dumps({"host": "127.0.0.1", "port": closed_port}))
    assert proc.returncode == 1
    assert proc.stdout.startswith("DOWN") and "connection refused" in proc.stdout


def test_hanging_target_respects_the_timeout(hanging_port):
    proc = check("tcp", json.dumps({"host": "127.0.0.1", "port": hanging_port}), "--timeout", "1", "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and out["status"] == 0 and 900 <= out["ping_ms"] <= 1200


def test_config_and_usage_errors_exit_2():
    bad_config = check("tcp", '{"host":"a","port":1,"extra":true}')
    assert bad_config.returncode == 2 and 'failed to parse config: json: unknown field "extra"' in bad_config.stderr
    unknown = check("gopher", "{}")
    assert unknown.returncode == 2 and "executor not found for monitor type: gopher" in unknown.stderr
    unbuilt = check("kafka-producer", "{}")
    assert unbuilt.returncode == 2 and "not supported by this worker yet" in unbuilt.stderr
    assert check("tcp").returncode == 2
    assert check("tcp", "{}", "--timeout", "0").returncode == 2


def test_push_without_beat_is_down():
    proc = check("push", '{"pushToken":"abc"}', "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["message"] == "No push received yet"
