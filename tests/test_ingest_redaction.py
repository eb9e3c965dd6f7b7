"""Secrets in a monitor's config never come back in the result the worker writes (`monitor_config`).

Peekaping's ingester carries `monitor_config` without reading it; Go echoes the config verbatim, which
left database passwords in Redis for the result's retention. Here every secret is masked, and a config
without one is still echoed byte for byte.
"""

from __future__ import annotations

import json

import pytest

import asynq_protocol as aq
from executors._kit.redact import MASK, masked_config
from helpers import enqueue_healthcheck, healthcheck_payload, ingest_tasks, queue_empty, running_server, wait_until

SECRET = "s3cr3t-Pa55"

CONFIGS = {
    "postgres": {"database_connection_string": f"postgres://app:{SECRET}@127.0.0.1:1/db?sslmode=disable",
                 "database_query": "SELECT 1"},
    "postgres-param": {"database_connection_string": f"postgres://app@127.0.0.1:1/db?password={SECRET}",
                       "database_query": ""},
    "mysql": {"connection_string": f"mysql://root:{SECRET}@127.0.0.1:1/test", "query": ""},
    "sqlserver": {"database_connection_string": f"Server=127.0.0.1,1;Database=d;User Id=sa;Password={SECRET};",
                  "database_query": ""},
    "sqlserver-url": {"database_connection_string": f"sqlserver://sa:{SECRET}@127.0.0.1:1?database=d",
                      "database_query": ""},
    "mongodb": {"connectionString": f"mongodb://u:{SECRET}@127.0.0.1:1,127.0.0.1:2/admin", "command": ""},
    "redis": {"databaseConnectionString": f"redis://default:{SECRET}@127.0.0.1:1", "ignoreTls": False,
              "caCert": "", "clientCert": "", "clientKey": SECRET},
    "kafka-producer": {"brokers": ["127.0.0.1:1"], "topic": "t", "message": "m",
                       "sasl_options": {"mechanism": "SCRAM-SHA-256", "username": "u", "password": SECRET}},
    "mqtt": {"hostname": f"mqtt://u:{SECRET}@127.0.0.1", "port": 1, "topic": "t", "username": "u",
             "password": SECRET},
    "rabbitmq": {"nodes": [f"http://u:{SECRET}@127.0.0.1:1"], "username": "u", "password": SECRET},
    "snmp": {"host": "127.0.0.1", "port": 1, "community": f"user:SHA-256:{SECRET}:AES:{SECRET}", "oid": "1.3.6"},
    "http": {"url": "http://127.0.0.1:1/", "basic_auth_user": "u", "basic_auth_pass": SECRET,
             "oauth_client_secret": SECRET, "keyword": "pass"},
}


@pytest.fixture
async def client(redis):
    broker = aq.Broker(redis)
    yield aq.Client(broker)
    await broker.close()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_kind_of_secret_is_masked(name):
    masked = masked_config(json.dumps(CONFIGS[name]))
    assert SECRET not in masked and MASK in masked
    json.loads(masked)  # still a JSON document


def test_fields_that_only_look_secret_are_kept():
    masked = json.loads(masked_config(json.dumps(CONFIGS["http"])))
    assert masked["keyword"] == "pass" and masked["basic_auth_user"] == "u"
    assert masked["url"] == "http://127.0.0.1:1/"


@pytest.mark.parametrize("config", [
    '{"host": "127.0.0.1",  "port": 80}',  # spacing kept: nothing to mask
    '{"url":"https://user@example.com/","keyword":"token"}',  # a user without a password
    '{"hostname":"a@b","port":1}',
    "not json at all",
    "",
])
def test_a_config_without_secrets_is_echoed_byte_for_byte(config):
    assert masked_config(config) == config


async def test_results_written_by_the_worker_carry_no_password(redis, client):
    """Through the real handler: DOWN results of database, broker and http monitors (dead targets), each
    with its config's secrets masked and everything else as sent."""
    from healthcheck import healthcheck_handler

    names = [n for n in CONFIGS if n.split("-")[0] in
             ("postgres", "mysql", "sqlserver", "redis", "kafka", "mqtt", "rabbitmq", "snmp", "http")]
    for i, name in enumerate(names):
        monitor_type = "kafka-producer" if name == "kafka-producer" else name.split("-")[0]
        body = healthcheck_payload(monitor_type, CONFIGS[name], monitor_id=f"r{i}", timeout=2)
        await enqueue_healthcheck(client, body, monitor_id=f"r{i}", timeout=2)
    async with running_server(redis, {"monitor:healthcheck": healthcheck_handler(client)}, concurrency=16):
        await wait_until(lambda: _all_in(redis, len(names)), 30)
        await wait_until(lambda: queue_empty(redis, "healthcheck"), 10)
    results = await ingest_tasks(redis)
    assert len(results) == len(names)
    for _, result in results:
        assert SECRET not in json.dumps(result), result["monitor_type"]
        assert MASK in result["monitor_config"]
        assert result["status"] == 0  # every target is dead: the check ran and reported DOWN


async def _all_in(redis, n: int) -> bool:
    return await redis.llen("asynq:{ingester}:pending") >= n
