"""The `docker` executor against a private dockerd started here (tests/docker_peers.py): every container
state over the Unix socket and over mutual TLS on 127.0.0.1, Go's texts for unknown containers, dead
sockets, closed ports, a silent peer, wrong CA, missing client certificate, TLS config errors and the
certificate hints, and 100 checks through the real worker and Redis at concurrency 64.

dockerd is started once for the module. Where it cannot start the tests skip, except under CI=true,
where they fail with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port, skip_or_fail
from docker_peers import DaemonError, DockerDaemon, Pki, TlsListener
from helpers import healthcheck_payload, one_result_each, run_through_worker

import healthcheck
from executors import DOWN, PENDING, UP, Monitor
from executors.docker import HINTS, judge

LEGACY_CN, UNTRUSTED, VERIFY_FAILED = (hint for _, hint in HINTS)


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture(scope="module")
def daemon(pki):
    server = DockerDaemon(pki, free_port())
    try:
        server.start()
        server.create_containers()
    except DaemonError as exc:
        server.stop()
        skip_or_fail(f"dockerd cannot run here: {exc}")
    yield server
    server.stop()


def socket_config(daemon, container: str, **extra) -> dict:
    return {"container_id": container, "connection_type": "socket", "docker_daemon": daemon.socket, **extra}


def tls_config(daemon, container: str, **extra) -> dict:
    pki = daemon.pki
    config = {"container_id": container, "connection_type": "tcp", "docker_daemon": f"tcp://127.0.0.1:{daemon.tcp_port}",
              "tls_enabled": True, "tls_cert": pki.client_cert, "tls_key": pki.client_key, "tls_ca": pki.ca_pem,
              "tls_verify": True}
    config.update(extra)
    return config


async def run(config: dict | str, timeout: int = 3, proxy: dict | None = None):
    """One check through the worker's registry and hard cap, as the worker runs it."""
    text = config if isinstance(config, str) else json.dumps(config)
    monitor = Monitor(id="m1", name="docker test", type="docker", interval=60, timeout=timeout, config=text)
    return await healthcheck.run_check(monitor, proxy, float(timeout))


STATES = [
    ("pk-running", UP, "running"),
    ("pk-healthy", UP, "healthy"),
    ("pk-unhealthy", DOWN, "container is unhealthy: unhealthy"),
    ("pk-starting", PENDING, "starting"),
    ("pk-exited", DOWN, "container state is exited (exit code 3)"),
    ("pk-paused", UP, "paused"),
]


# --------------------------------------------------------------------------------------------------
# Container states, over the socket and over mutual TLS

@pytest.mark.parametrize("transport", ["socket", "tls"])
@pytest.mark.parametrize("container, status, message", STATES)
async def test_container_state_gives_go_status_and_message(daemon, transport, container, status, message):
    config = socket_config(daemon, container) if transport == "socket" else tls_config(daemon, container)
    result = await run(config)
    assert (result.status, result.message) == (status, message)
    assert set(result.timings) == {"connect", "tls", "call"} and result.timings["call"] > 0
    assert (result.timings["tls"] > 0) == (transport == "tls")
    assert result.start_ns < result.end_ns


@pytest.mark.parametrize("transport", ["socket", "tls"])
async def test_restarting_container_is_up_restarting(daemon, transport):
    config = socket_config(daemon, "pk-restarting") if transport == "socket" else tls_config(daemon, "pk-restarting")
    messages = []
    for _ in range(5):  # between two restarts it runs for a few ms: ask again if we met that moment
        result = await run(config)
        messages.append(result.message)
        if result.message != "running":
            break
    assert (result.status, result.message) == (UP, "restarting"), messages


async def test_container_found_by_id_and_by_id_prefix(daemon):
    full = daemon.ids["pk-healthy"]
    assert ((await run(socket_config(daemon, full))).message, (await run(socket_config(daemon, full[:12]))).message) \
        == ("healthy", "healthy")


async def test_container_id_is_trimmed_as_the_go_client_trims_it(daemon):
    assert (await run(socket_config(daemon, "  pk-running\n"))).message == "running"


async def test_proxy_is_ignored(daemon):
    proxy = {"id": "p", "protocol": "http", "host": "127.0.0.1", "port": free_port(), "auth": False}
    assert (await run(socket_config(daemon, "pk-running"), proxy=proxy)).status == UP


async def test_tls_without_verification_needs_no_ca(daemon):
    result = await run(tls_config(daemon, "pk-running", tls_ca="", tls_verify=False))
    assert (result.status, result.message) == (UP, "running")


# --------------------------------------------------------------------------------------------------
# Daemon errors and unreachable daemons

@pytest.mark.parametrize("transport", ["socket", "tls"])
async def test_unknown_container(daemon, transport):
    config = socket_config(daemon, "pk-nope") if transport == "socket" else tls_config(daemon, "pk-nope")
    result = await run(config)
    assert (result.status, result.message) == (DOWN, "container inspect error: Error response from daemon: "
                                                     "No such container: pk-nope")


@pytest.mark.parametrize("container_id", ["", "   "])
async def test_empty_container_id(container_id):
    config = {"container_id": container_id, "connection_type": "socket", "docker_daemon": "/nonexistent/docker.sock"}
    result = await run(config)
    assert (result.status, result.message) == (DOWN, "container inspect error: invalid container name or ID: "
                                                     "value is empty")


async def test_dead_socket_and_missing_socket(tmp_path):
    dead = str(tmp_path / "dead.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(dead)
    listener.close()  # the file stays; nothing listens behind it
    for path in (dead, str(tmp_path / "missing.sock")):
        result = await run({"container_id": "web", "connection_type": "socket", "docker_daemon": path})
        assert (result.status, result.message) == (
            DOWN, f"container inspect error: Cannot connect to the Docker daemon at unix://{path}. "
                  "Is the docker daemon running?")


async def test_closed_tcp_port():
    port = free_port()
    result = await run({"container_id": "web", "connection_type": "tcp", "docker_daemon": f"tcp://127.0.0.1:{port}"})
    assert (result.status, result.message) == (
        DOWN, f"container inspect error: Cannot connect to the Docker daemon at tcp://127.0.0.1:{port}. "
              "Is the docker daemon running?")


async def test_silent_peer_ends_within_the_timeout(open_port):
    started = time.monotonic()
    result = await run({"container_id": "web", "connection_type": "tcp", "docker_daemon": f"tcp://127.0.0.1:{open_port}"},
                       timeout=1)
    assert time.monotonic() - started < 1.5
    assert (result.status, result.message) == (
        DOWN, f'container inspect error: Get "http://127.0.0.1:{open_port}/v1.51/containers/web/json": '
              "context deadline exceeded")


async def test_tls_to_a_socket_path_fails_as_a_tcp_dial(daemon):
    """With TLS on, the Go worker's own transport dials TCP whatever the host names: a unix:// host fails."""
    result = await run(tls_config(daemon, "pk-running", docker_daemon=f"unix://{daemon.socket}"))
    shown = daemon.socket.replace("/", "%2F")
    assert (result.status, result.message) == (
        DOWN, f'container inspect error: error during connect: Get "https://{shown}/v1.51/containers/pk-running/json": '
              f"dial tcp: lookup {daemon.socket}: no such host")


async def test_plain_http_to_the_tls_port(daemon):
    config = {"container_id": "pk-running", "connection_type": "tcp", "docker_daemon": f"tcp://127.0.0.1:{daemon.tcp_port}"}
    result = await run(config)
    assert (result.status, result.message) == (DOWN, "container inspect error: Error response from daemon: "
                                                     "Client sent an HTTP request to an HTTPS server.")


# --------------------------------------------------------------------------------------------------
# TLS failures and the Go worker's hints

async def test_wrong_ca_gets_the_untrusted_hint(daemon):
    result = await run(tls_config(daemon, "pk-running", tls_ca=daemon.pki.other_ca_pem))
    assert (result.status, result.message) == (
        DOWN, f'container inspect error: error during connect: Get "https://127.0.0.1:{daemon.tcp_port}/v1.51/'
              'containers/pk-running/json": tls: failed to verify certificate: x509: certificate signed by unknown '
              f"authority{UNTRUSTED}")


async def test_missing_client_certificate(daemon):
    result = await run(tls_config(daemon, "pk-running", tls_cert="", tls_key=""))
    assert (result.status, result.message) == (
        DOWN, "container inspect error: the server probably has client authentication (--tlsverify) enabled; check "
              f'your TLS client certification settings: Get "https://127.0.0.1:{daemon.tcp_port}/v1.51/containers/'
              'pk-running/json": remote error: tls: bad certificate')


async def test_common_name_only_certificate_gets_the_legacy_hint(pki):
    listener = TlsListener(*pki.common_name_only())
    try:
        result = await run({"container_id": "web", "connection_type": "tcp", "tls_enabled": True, "tls_verify": True,
                            "docker_daemon": f"tcp://127.0.0.1:{listener.port}", "tls_ca": pki.ca_pem})
    finally:
        listener.close()
    assert (result.status, result.message) == (
        DOWN, f'container inspect error: error during connect: Get "https://127.0.0.1:{listener.port}/v1.51/'
              'containers/web/json": tls: failed to verify certificate: x509: certificate relies on legacy Common '
              f"Name field, use SANs instead{LEGACY_CN}")


async def test_certificate_for_another_name_gets_the_verification_hint(pki):
    leaf = pki.wrong_name
    listener = TlsListener(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())
    try:
        result = await run({"container_id": "web", "connection_type": "tcp", "tls_enabled": True, "tls_verify": True,
                            "docker_daemon": f"tcp://127.0.0.1:{listener.port}", "tls_ca": pki.ca_pem})
    finally:
        listener.close()
    assert result.status == DOWN
    assert result.message.endswith(f"tls: failed to verify certificate: x509: cannot validate certificate for "
                                   f"127.0.0.1 because it doesn't contain any IP SANs{VERIFY_FAILED}")


async def test_tls_configuration_errors(pki):
    base = {"container_id": "web", "connection_type": "tcp", "docker_daemon": "tcp://127.0.0.1:1", "tls_enabled": True}
    cases = [
        ({"tls_cert": pki.client_cert}, "TLS configuration error: both certificate and key must be provided for "
                                        "client authentication"),
        ({"tls_key": pki.client_key}, "TLS configuration error: both certificate and key must be provided for "
                                      "client authentication"),
        ({"tls_cert": "garbage", "tls_key": pki.client_key},
         "TLS configuration error: failed to load client certificate: tls: failed to find any PEM data in "
         "certificate input"),
        ({"tls_cert": pki.client_cert, "tls_key": pki.other_ca.private_key_pem.bytes().decode()},
         "TLS configuration error: failed to load client certificate: tls: private key does not match public key"),
        ({"tls_ca": "not a certificate"}, "TLS configuration error: failed to parse CA certificate"),
    ]
    for extra, message in cases:
        result = await run({**base, **extra})
        assert (result.status, result.message) == (DOWN, message)
        assert pki.client_key not in result.message


async def test_no_private_key_is_written_to_disk(daemon):
    key_body = "".join(daemon.pki.client_key.strip().splitlines()[1:-1])[:64]
    since = time.time() - 1
    result = await run(tls_config(daemon, "pk-running"))
    assert result.status == UP
    leaked = []
    for root in {tempfile.gettempdir(), "/tmp", "/dev/shm", os.getcwd()}:
        for path in Path(root).rglob("*"):
            try:
                if path.is_file() and path.stat().st_mtime >= since and path.stat().st_size < 1 << 20 \
                        and key_body in path.read_text(errors="ignore"):
                    leaked.append(str(path))
            except OSError:
                continue
    assert leaked == []
    assert not [fd for fd in os.listdir("/proc/self/fd") if "peekaping-client-cert" in _link(f"/proc/self/fd/{fd}")]


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------------
# Config errors (no daemon needed)

@pytest.mark.parametrize("config, message", [
    ("{}", "unknown docker connection type: "),
    ('{"container_id":"web","connection_type":"invalid","docker_daemon":"/var/run/docker.sock"}',
     "unknown docker connection type: invalid"),
    ('{"container_id":"web","connection_type":"Socket","docker_daemon":"/var/run/docker.sock"}',
     "unknown docker connection type: Socket"),
    ('{"container_id": "web", invalid}',
     "invalid config: failed to parse config: invalid character 'i' looking for beginning of object key string"),
    ('{"container_id":"web","foo":1}', 'invalid config: failed to parse config: json: unknown field "foo"'),
    ('{"container_id":"web","connection_type":"tcp","docker_daemon":"localhost:2375"}',
     "docker client error: unable to parse docker host `localhost:2375`"),
    ('{"container_id":"web","connection_type":"socket","docker_daemon":""}',
     "docker client error: unable to parse docker host `unix://`"),
    ('{"container_id":"web","connection_type":"tcp","docker_daemon":"npipe:////./pipe/docker_engine"}',
     "docker client error: protocol not available"),
    ('{"container_id":"web","connection_type":"socket","docker_daemon":"/' + "x" * 120 + '"}',
     'docker client error: unix socket path "/' + "x" * 120 + '" is too long'),
    ('{"container_id":"web","connection_type":"tcp","docker_daemon":"tcp://host:port"}',
     'docker client error: parse "tcp://host:port": invalid port ":port" after host'),
])
async def test_config_errors(config, message):
    result = await run(config)
    assert (result.status, result.message) == (DOWN, message)
    assert result.start_ns == result.end_ns


def test_verdicts_no_daemon_produces():
    """States a real daemon does not show on demand: judged as the Go worker judges them."""
    def state(status, running, health=None, code=0):
        return {"Status": status, "Running": running, "Health": health, "ExitCode": code}

    assert judge(None) == (DOWN, "container state is nil")
    assert judge(state("running", True, "none")) == (DOWN, "container health status: none")
    assert judge(state("running", True, "")) == (DOWN, "container health status: ")
    assert judge(state("created", False)) == (DOWN, "container state is created")
    assert judge(state("dead", False, code=137)) == (DOWN, "container state is dead")
    assert judge(state("exited", False, "unhealthy", 137)) == (DOWN, "container state is exited (exit code 137)")


# --------------------------------------------------------------------------------------------------
# 100 checks through Redis and the real handler at concurrency 64

async def test_100_tasks_at_concurrency_64_give_one_result_each(daemon, redis):
    cases = [("pk-running", UP, "running"), ("pk-exited", DOWN, "container state is exited (exit code 3)"),
             ("pk-nope", DOWN, "container inspect error: Error response from daemon: No such container: pk-nope"),
             ("pk-starting", PENDING, "starting")]
    payloads, expected = [], {}
    for i in range(100):
        container, status, message = cases[i % len(cases)]
        config = socket_config(daemon, container) if i % 5 else tls_config(daemon, container)
        payloads.append(healthcheck_payload("docker", config, monitor_id=f"m{i}", timeout=10))
        expected[f"m{i}"] = (status, message)
    seen = one_result_each(await run_through_worker(redis, payloads, timeout=60))
    assert all(body["monitor_type"] == "docker" for body in seen.values())
    assert {monitor_id: (body["status"], body["message"]) for monitor_id, body in seen.items()} == expected
