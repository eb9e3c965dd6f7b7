"""packaging/peekaping-worker.service passes `systemd-analyze verify` without a warning, runs unprivileged
with CAP_NET_RAW only, and its example environment file is one the worker accepts."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess

import pytest

from conftest import ROOT
from settings import build_parser, load_settings

UNIT = ROOT / "packaging" / "peekaping-worker.service"
ENV_FILE = ROOT / "packaging" / "peekaping-worker.env"
INSTALLED_BINARY = "/usr/local/bin/peekaping-worker"
# What the worker reads from the environment (README, "Configuration"), and the unit's flag variable.
WORKER_VARIABLES = {"REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB", "QUEUE_CONCURRENCY", "MODE", "LOG_LEVEL",
                    "TZ", "SERVICE_NAME", "METRICS_ADDR", "PEEKAPING_PING_MODE", "PEEKAPING_WORKER_ARGS"}


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def environment_file() -> dict[str, str]:
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_systemd_analyze_verify_passes_without_warnings(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze (Debian package systemd) is required under CI")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at a stand-in, changing nothing else.
    stand_in = tmp_path / "peekaping-worker"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1
    copy = tmp_path / "peekaping-worker.service"
    copy.write_text(text.replace(INSTALLED_BINARY, str(stand_in)))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr

    broken = tmp_path / "broken.service"  # the same check notices a directive systemd ignores
    broken.write_text(copy.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartt=always"))
    proc = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Restartt'" in proc.stdout + proc.stderr


def test_unit_restarts_on_failure_unprivileged_with_cap_net_raw_only():
    service = unit()["Service"]
    assert service["ExecStart"].split()[0] == INSTALLED_BINARY
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert service["DynamicUser"] == "yes" and "User" not in service
    assert service["AmbientCapabilities"] == "CAP_NET_RAW" and service["CapabilityBoundingSet"] == "CAP_NET_RAW"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["EnvironmentFile"] == "/etc/peekaping-worker/peekaping-worker.env"
    assert service["KillMode"] == "mixed" and int(service["TimeoutStopSec"]) > 8 + 10  # drain, then requeue
    assert "AF_NETLINK" in service["RestrictAddressFamilies"].split()  # glibc's resolver asks netlink
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_example_environment_file_is_accepted_by_the_worker():
    values = environment_file()
    assert set(values) <= WORKER_VARIABLES, set(values) - WORKER_VARIABLES
    args = build_parser().parse_args(values["PEEKAPING_WORKER_ARGS"].split())  # systemd splits $VAR on spaces
    settings = load_settings({k: v for k, v in values.items() if k != "PEEKAPING_WORKER_ARGS"}, args)
    assert settings.metrics_addr == "127.0.0.1:9780" and settings.queues == {"healthcheck": 5}
    assert settings.mode == "prod" and settings.redis_password == "CHANGE-ME"
