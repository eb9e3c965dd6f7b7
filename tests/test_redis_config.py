"""Redis settings are checked before anything connects (exit 2, one line, no secret), URLs are logged
only in a form rebuilt from their parts, and both log formats use the names Go's zap logger uses."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from settings import ConfigurationError, Settings, _redact_url, parse_redis_url, setup_logging


def run_worker(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("REDIS_") and k not in ("MODE", "LOG_LEVEL", "QUEUE_CONCURRENCY")}
    full_env.update(env)
    return subprocess.run([sys.executable, str(ROOT / "worker.py"), *args], env=full_env, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0?password=S3cret-Q", "redis://127.0.0.1:6379/0?password=***"),
    ("redis://:p%40ss%2Fw%23rd@127.0.0.1:6379/2", "redis://:***@127.0.0.1:6379/2"),
    ("redis://ops%40site:S3cret-Q@redis.example:6380/1", "redis://ops%40site:***@redis.example:6380/1"),
    ("rediss://u:S3cret-Q@[::1]:6379/0?ssl_ca_certs=/etc/ca.pem&ssl_password=S3cret-K",
     "rediss://u:***@[::1]:6379/0?ssl_ca_certs=/etc/ca.pem&ssl_password=***"),
    ("unix://:S3cret-Q@/run/redis.sock?db=3", "unix://:***@/run/redis.sock?db=3"),
    ("redis://redis:6379", "redis://redis:6379"),
])
def test_logged_url_is_rebuilt_from_its_parts_with_every_secret_masked(url, expected):
    assert _redact_url(url) == expected


def test_percent_encoded_credentials_decode_as_redis_py_reads_them():
    from redis.asyncio.connection import parse_url

    url = "redis://ops%40site:p%40ss%2Fw%23rd%3Fx@127.0.0.1:6379/4"
    parsed, theirs = parse_redis_url(url), parse_url(url)
    assert (parsed.username, parsed.password) == (theirs["username"], theirs["password"]) == ("ops@site", "p@ss/w#rd?x")
    assert (parsed.host, parsed.port, parsed.path) == ("127.0.0.1", 6379, "/4") and theirs["db"] == 4


@pytest.mark.parametrize("password, char", [("pa/ss-Z9", "/"), ("pa#ss-Z9", "#"), ("pa@ss-Z9", "@"), ("pa?ss-Z9", "?"),
                                            ("pa ss-Z9", " ")])
def test_unencoded_delimiter_in_the_password_exits_2_with_one_line_naming_the_fix(password, char):
    proc = run_worker("--redis-url", f"redis://user:{password}@127.0.0.1:6379/0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--redis-url" in lines[0] and ("%20" if char == " " else f"%{ord(char):02X}") in lines[0]
    assert "ss-Z9" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("url, named", [
    ("redis://:S3cret-Q@127.0.0.1:99999/0", "port"),
    ("redis://:S3cret-Q@127.0.0.1:6379/zero", "database number"),
    ("redis://:S3cret-Q@127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
    ("redis://:S3cret-Q@127.0.0.1:6379/0?sockettimeout=5", "sockettimeout"),
    ("redis://:S3cret-Q@127.0.0.1:6379/0?db=x", "db"),
    ("unix://:S3cret-Q@localhost/run/redis.sock", "socket path"),
    ("redis://:S3cret-Q@bad_host!:6379/0", "host"),
])
def test_bad_url_part_exits_2_naming_the_part_without_quoting_the_url(url, named):
    proc = run_worker("--redis-url", url)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and named in lines[0], proc.stderr
    assert "S3cret-Q" not in proc.stderr


def test_redis_host_holding_a_url_or_credentials_is_refused_without_echoing_it():
    for host in ("user:S3cret-Q@redis", "redis://redis:6379", "redis host"):
        proc = run_worker(REDIS_HOST=host)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "REDIS_HOST" in lines[0], proc.stderr
        assert "S3cret-Q" not in proc.stderr and host not in proc.stderr


def test_settings_from_the_environment_are_logged_without_the_password():
    s = Settings(redis_host="::1", redis_port=6380, redis_password="S3cret-Q", redis_db=2)
    assert s.redis_target() == "redis://:***@[::1]:6380/2"
    with pytest.raises(ConfigurationError):
        parse_redis_url("redis://h:6379/0#S3cret-Q")


def _emit(mode: str, **fields) -> list[str]:
    """One record per level through the worker's logging set-up; the logger is restored afterwards."""
    root = logging.getLogger("peekaping")
    saved = root.handlers[:], root.level, root.propagate
    stream = io.StringIO()
    try:
        setup_logging(Settings(mode=mode, log_level="debug"))
        root.handlers[0].setStream(stream)
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
            logging.getLogger("peekaping.test").log(level, "message", extra={"fields": fields})
    finally:
        root.handlers[:], root.level, root.propagate = saved
    return stream.getvalue().splitlines()


def test_prod_json_level_names_are_zaps():
    """Log pipelines built for the Go worker match on zap's names: warn, not warning; fatal, not critical."""
    levels = [json.loads(line)["level"] for line in _emit("prod")]
    assert levels == ["debug", "info", "warn", "error", "fatal"]


def test_dev_lines_show_mappings_as_name_priority_lists_and_quote_only_text_with_spaces():
    lines = _emit("dev", queues={"critical": 6, "healthcheck": 5}, names=["a", "b"], strict=True,
                  error="Connection refused by peer", server="r1")
    assert [line.split()[1] for line in lines] == ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
    assert lines[0].endswith('queues=critical:6,healthcheck:5 names=a,b strict=true '
                             'error="Connection refused by peer" server=r1')
    assert "{" not in lines[0]
