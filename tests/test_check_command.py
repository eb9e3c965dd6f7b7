"""`peekaping-worker check TYPE CONFIG`: one check, no Redis, exit code by status."""

from __future__ import annotations

import json
import os
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
    assert check("tcp").returncode == 2
    assert check("tcp", "{}", "--timeout", "0").returncode == 2


def test_push_without_beat_is_down():
    proc = check("push", '{"pushToken":"abc"}', "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["message"] == "No push received yet"


def test_non_finite_or_absurd_timeouts_are_usage_errors_without_traceback():
    for value in ("nan", "inf", "-inf", "1e999", "abc", "86401"):
        proc = check("tcp", "{}", f"--timeout={value}")
        assert proc.returncode == 2, (value, proc.stderr)
        assert "--timeout" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_unexpected_exception_in_a_check_prints_one_down_line_and_exits_1():
    code = ("import sys, worker; worker.EXECUTORS['broken'] = 'broken_executor'; "
            "sys.exit(worker.main(['check', 'broken', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, '{"mode":"leak","password":"hunter22"}'], capture_output=True,
                          text=True, timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert proc.returncode == 1
    assert proc.stdout.startswith("DOWN  broken check failed: unexpected ValueError at broken_executor.py:")
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "hunter22" not in proc.stdout + proc.stderr


def test_argv_bytes_that_are_not_utf8_give_replacement_characters_not_a_crash():
    out = subprocess.run([sys.executable, str(ROOT / "worker.py"), "check", "tcp", b'{"host":"x\xffy","port":1}'],
                         capture_output=True, timeout=30)
    assert out.returncode == 1 and out.stdout.decode("utf-8").startswith(
        "DOWN  TCP connection failed: dial tcp: lookup x\ufffdy: no such host")
    bad_type = subprocess.run([sys.executable, str(ROOT / "worker.py"), "check", b"t\xff", "{}"], capture_output=True,
                              timeout=30)
    assert bad_type.returncode == 2
    assert bad_type.stderr.decode("utf-8").strip() == "peekaping-worker check: executor not found for monitor type: t\ufffd"


def test_http_check_with_empty_accepted_statuscodes_hints_at_the_field():
    from http_peers import peer

    proc = check("http", json.dumps({"url": peer("http").url("/status/200")}))
    assert proc.returncode == 1 and proc.stdout.startswith("DOWN  HTTP request failed with status: 200")
    assert 'hint: "accepted_statuscodes" is empty' in proc.stderr
    fine = check("http", json.dumps({"url": peer("http").url("/status/200"), "accepted_statuscodes": ["2XX"]}))
    assert fine.returncode == 0 and "hint" not in fine.stderr
