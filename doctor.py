"""`peekaping-worker doctor`: what this host and its Redis allow the worker to do, one line per check,
each OK, WARN or FAIL; exit status 0 when nothing fails, 1 otherwise.

It takes the worker's settings and flags, and reuses the worker's own start-up probes (redis_checks),
so a line that passes here passes when the worker starts. It writes nothing to Redis, and prints no
password: the Redis address is shown as the worker logs it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable

from settings import ConfigurationError, build_parser, load_settings

OK, WARN, FAIL = "OK", "WARN", "FAIL"
STEP_TIMEOUT = 10.0  # seconds for each Redis step; a stalled server is a FAIL, not a hang
CLOCK_FAIL = 30.0  # seconds of skew past which leases, retries and the stale rule go wrong
INGESTER_BACKLOG = 1000  # results waiting in the ingester queue before it is worth a warning
# Commands the worker sends itself that can be tried without changing anything: (name, arguments, needed).
# (redis.acl_check_cmd would check them all, but Redis 7.0 crashes when it is given too few arguments.)
_PROBE_KEY = "asynq:{ingester}:doctor-probe"  # never written; any worker's user may use the ingester's keys
_COMMAND_PROBES = (("zrem", ("asynq:servers", "doctor-probe"), True),
                   ("blmove", (_PROBE_KEY, _PROBE_KEY, "RIGHT", "RIGHT", "0.01"), False))
Emit = Callable[[str, str, str], None]


def say(level: str, name: str, text: str) -> None:
    print(f"{level:<4} {name}: {' '.join(text.split())}", flush=True)


def doctor_command(argv: list[str]) -> int:
    parser = build_parser()
    parser.prog = "peekaping-worker doctor"
    parser.description = ("Check what this host and its Redis allow the worker to do: one line per check, "
                          "OK, WARN or FAIL. Exit status 0 when nothing fails. Takes the worker's settings.")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("peekaping").addHandler(logging.NullHandler())  # the probes' own warnings stay quiet
    logging.getLogger("peekaping").propagate = False
    levels: list[str] = []

    def emit(level: str, name: str, text: str) -> None:
        levels.append(level)
        say(level, name, text)

    try:
        settings = load_settings(dict(os.environ), args)
    except ConfigurationError as exc:
        emit(FAIL, "configuration", str(exc))
        return 1
    from worker import _event_loop_runner

    try:
        _event_loop_runner()(redis_checks(settings, emit))
    except KeyboardInterrupt:
        return 130
    ping_strategy(emit)
    ca_bundle(emit)
    dns_resolver(settings, emit)
    file_descriptors(settings.concurrency, emit)
    return 1 if FAIL in levels else 0


# ==================================================================================================
# Redis

async def redis_checks(settings: Any, emit: Emit) -> None:
    from asynq_protocol import side_client
    from settings import redis_client

    target = settings.redis_target()
    try:
        base = redis_client(settings)
    except ConfigurationError as exc:
        emit(FAIL, "configuration", str(exc))
        return
    client = side_client(base, 1, socket_timeout=5, socket_connect_timeout=5)
    try:
        if await connection(client, settings, target, emit):
            steps = ((acl_permissions, "ACL permissions"), (server_version, "server version"),
                     (clock, "clock skew"), (queues, "queues"), (other_workers, "other workers"))
            served: dict[str, Any] = {"queues": dict(settings.queues)}
            for step, name in steps:
                try:
                    await asyncio.wait_for(step(client, settings, served, emit), STEP_TIMEOUT)
                except Exception as exc:  # Redis went away or stalled mid-way: that line fails, the rest try
                    emit(FAIL, name, _error_text(exc))
    finally:
        await client.aclose()
        await base.aclose()


async def connection(client: Any, settings: Any, target: str, emit: Emit) -> bool:
    """The `redis` and `authentication` lines; True when commands can be sent."""
    from redis.exceptions import AuthenticationError, NoPermissionError

    from redis_checks import refusal

    started = time.perf_counter()
    try:
        await asyncio.wait_for(client.ping(), STEP_TIMEOUT)
    except Exception as exc:
        cause = refusal(exc)
        if isinstance(exc, AuthenticationError):
            emit(OK, "redis", f"{target} reachable")
            emit(FAIL, "authentication", cause or _error_text(exc))
        elif isinstance(exc, NoPermissionError):
            emit(OK, "redis", f"{target} reachable")
            emit(OK, "authentication", f"accepted as user {_user(settings)}")
            emit(FAIL, "ACL permissions", cause or _error_text(exc))
        else:
            emit(FAIL, "redis", cause or f"cannot reach {target}: {_error_text(exc)}")
        return False
    emit(OK, "redis", f"{target} answers PING in {(time.perf_counter() - started) * 1000:.1f} ms")
    emit(OK, "authentication", f"accepted as user {_user(settings)}")
    return True


async def acl_permissions(client: Any, settings: Any, served: dict, emit: Emit) -> None:
    """What the worker's start-up probes (scripts, key permissions, the cancel channel), and the commands it
    sends itself that can be tried without side effects. Commands inside the scripts are not tried."""
    from redis.exceptions import NoPermissionError, ResponseError

    from asynq_protocol import Broker, queue_prefix
    from redis_checks import (RedisStartupError, check_cancel_channel, denied_keys, heartbeat_keys, queue_keys,
                              refusal, result_keys)

    name = "ACL permissions"
    hint = "`peekaping-worker --acl-rule` prints the rule a worker needs"
    try:
        await Broker(client).load_scripts()
        probe = await client.script_load("return 1")
        await client.evalsha(probe, 0)
    except Exception as exc:
        emit(FAIL, name, refusal(exc) or f"cannot load and run the worker's Lua scripts: {_error_text(exc)}")
        served["queues"] = {}
        return
    failures, no_blmove = [], False
    for command, arguments, needed in _COMMAND_PROBES:
        try:
            await client.execute_command(command.upper(), *arguments)
        except NoPermissionError:
            if needed:
                failures.append(f"the Redis user may not run {command.upper()}")
            no_blmove = no_blmove or command == "blmove"
        except ResponseError as exc:  # BLMOVE is unknown before Redis 6.2: the worker polls instead
            if command != "blmove":
                raise
            no_blmove = "unknown command" in str(exc).lower()
    fake = SimpleNamespace(host=socket.gethostname() or "unknown-host", pid=os.getpid(), server_id="doctor")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    heartbeat = heartbeat_keys(fake)
    required = result_keys() + heartbeat
    per_queue = {q: queue_keys(q, day) for q in settings.queues}
    denied = set(await denied_keys(client, required + [k for keys in per_queue.values() for k in keys]))
    failures += [f"the Redis user may not read and write {key}, needed for "
                 f"{'heartbeats' if key in heartbeat else 'results (queue ingester)'}" for key in required if key in denied]
    try:
        await check_cancel_channel(client)
    except RedisStartupError as exc:
        failures.append(str(exc))
    served["queues"] = {q: p for q, p in settings.queues.items() if not denied.intersection(per_queue[q])}
    if not served["queues"]:
        failures.append(f"the Redis user may not read and write the keys of any configured queue "
                        f"({', '.join(settings.queues)})")
    if failures:
        emit(FAIL, name, "; ".join(failures) + f"; {hint}")
        return
    for queue in settings.queues:
        if queue not in served["queues"]:
            blocked = next(k for k in per_queue[queue] if k in denied)
            emit(WARN, name, f"queue {queue} will not be served: the Redis user may not read and write {blocked} "
                             f"(grant ~{queue_prefix(queue)}*)")
    if no_blmove:
        emit(WARN, name, "BLMOVE is refused or unknown (Redis < 6.2): an idle worker polls instead of waking at "
                         "once (add +blmove)")
    # Commands inside the scripts are refused only when a task runs: the README says to compare with --acl-rule.
    emit(OK, name, f"scripts load and run; keys of queues {', '.join(served['queues'])} and ingester; "
                   "channel asynq:cancel")


async def server_version(client: Any, settings: Any, served: dict, emit: Emit) -> None:
    """HELLO needs no ACL permission (INFO does); Redis 7 scripts also know the version."""
    name, version, product = "server version", "", "Redis"
    try:
        reply = await client.execute_command("HELLO", "2")
        fields = dict(zip(reply[::2], reply[1::2]))
        version = _text(fields.get(b"version", b""))
        product = {"redis": "Redis", "valkey": "Valkey"}.get(_text(fields.get(b"server", b"")), product)
    except Exception:  # Redis < 6 has no HELLO
        try:
            version = _text(await client.eval("return redis.REDIS_VERSION", 0) or b"")
        except Exception:
            pass
    if not version:
        emit(WARN, name, "unknown (HELLO and scripts do not say): the worker needs Redis >= 6.2, 7 for ACL probes")
        return
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if numbers < (6, 2):
        emit(WARN, name, f"{product} {version}: no BLMOVE before 6.2, so an idle worker polls; key permissions "
                         "are probed only from Redis 7")
    elif numbers < (7, 0):
        emit(WARN, name, f"{product} {version}: key permissions are probed only from Redis 7, so a missing one "
                         "shows up when a task runs")
    else:
        emit(OK, name, f"{product} {version}")


async def clock(client: Any, settings: Any, served: dict, emit: Emit) -> None:
    from redis_checks import CLOCK_TOLERANCE, check_clock

    offset = await check_clock(client)
    direction = "ahead of" if offset > 0 else "behind"
    text = f"host clock is {abs(offset):.3f} s {direction} Redis TIME"
    if abs(offset) > CLOCK_FAIL:
        emit(FAIL, "clock skew", f"{text}: health checks are skipped as stale and retries mistimed; sync it (NTP)")
    elif abs(offset) > CLOCK_TOLERANCE:
        emit(WARN, "clock skew", f"{text}: sync it (NTP); retry times and stats days use the host clock")
    else:
        emit(OK, "clock skew", text)


async def queues(client: Any, settings: Any, served: dict, emit: Emit) -> None:
    from redis.exceptions import NoPermissionError

    from asynq_protocol import queue_prefix

    names = list(settings.queues) + ["ingester"]
    pipe = client.pipeline(transaction=False)
    for queue in names:
        p = queue_prefix(queue)
        pipe.llen(p + "pending").llen(p + "active").zcard(p + "scheduled").zcard(p + "retry")
        pipe.zcard(p + "archived").exists(p + "paused")
    replies = await pipe.execute(raise_on_error=False)
    if any(isinstance(r, NoPermissionError) for r in replies):
        emit(OK, "queues", f"{', '.join(settings.queues)}: sizes not shown, the Redis user may not run LLEN and "
                           "ZCARD (the worker does not need them)")
        return
    for error in (r for r in replies if isinstance(r, Exception)):
        raise error
    for i, queue in enumerate(names):
        pending, active, scheduled, retry, archived, paused = replies[i * 6:(i + 1) * 6]
        if queue == "ingester":
            level = WARN if pending >= INGESTER_BACKLOG else OK
            note = ": is the Peekaping server's ingester running?" if level == WARN else ""
            emit(level, "queue ingester", f"{pending} results waiting, {active} being written{note}")
            continue
        sizes = f"{pending} pending, {active} active, {scheduled} scheduled, {retry} retry, {archived} archived"
        if paused:
            emit(WARN, f"queue {queue}", f"{sizes}; paused: nothing is taken from it until it is unpaused")
        elif queue not in served["queues"]:
            emit(WARN, f"queue {queue}", f"{sizes}; not served: the Redis user may not use its keys")
        else:
            emit(OK, f"queue {queue}", f"{sizes} (priority {settings.queues[queue]})")


async def other_workers(client: Any, settings: Any, served: dict, emit: Emit) -> None:
    """Asynq servers alive in asynq:servers (Go and Python register alike), and by client library when
    Redis >= 7.2 records it and the user may run CLIENT LIST."""
    from asynq_protocol import ALL_SERVERS, ServerInfo

    keys = await client.zrangebyscore(ALL_SERVERS, time.time(), "+inf")
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)  # GET, not MGET: the worker's ACL rule grants GET
    infos = []
    for key, raw in zip(keys, await pipe.execute() if keys else []):
        if raw is None:
            continue
        info = ServerInfo()
        try:
            info.ParseFromString(raw)
        except Exception:
            continue
        queue_text = ",".join(f"{q}:{p}" for q, p in sorted(info.queues.items(), key=lambda item: -item[1]))
        infos.append(f"{info.host} pid {info.pid} ({info.status}, {info.active_worker_count}/{info.concurrency} busy, "
                     f"{queue_text})")
    libraries = await _client_libraries(client)
    if not infos:
        emit(OK, "other workers", "none alive in asynq:servers" + libraries)
        return
    emit(OK, "other workers", f"{len(infos)} alive: {'; '.join(infos[:8])}"
                              + (f"; and {len(infos) - 8} more" if len(infos) > 8 else "") + libraries)


async def _client_libraries(client: Any) -> str:
    try:
        entries = await client.client_list()
    except Exception:  # NOPERM for a worker's user: asynq does not record Go or Python
        return ""
    counts: dict[str, int] = {}
    for entry in entries:
        if entry.get("cmd") == "client|list":
            continue  # this connection
        library = entry.get("lib-name") or ""
        kind = "Go (go-redis)" if library.startswith("go-redis") else "Python (redis-py)" if library == "redis-py" \
            else None
        if kind:
            counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        return ""
    return "; Redis clients: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


# ==================================================================================================
# This host

def ping_strategy(emit: Emit) -> None:
    from executors import ping
    from executors._kit import icmp

    name = "ICMP"
    try:
        wanted = ping.mode()
    except ValueError as exc:
        emit(FAIL, name, str(exc))
        return
    chosen = ping.strategy()
    forced = f"PEEKAPING_PING_MODE={wanted}"
    if chosen in (icmp.DATAGRAM, icmp.RAW):
        try:
            icmp.open_socket(socket.AF_INET, chosen).close()
        except icmp.Unavailable as exc:
            emit(FAIL, name, f"{forced}, but {exc}")
            return
        v6 = "IPv4 and IPv6" if icmp.can_open(socket.AF_INET6, chosen) else "IPv4 only"
        what = "unprivileged datagram socket" if chosen == icmp.DATAGRAM else "raw socket (root or CAP_NET_RAW)"
        emit(OK, name, f"ping checks use an ICMP {what}, {v6} ({forced})")
        return
    program = ping._find_program("ping")
    if chosen == "command" and program:
        emit(WARN if wanted == "auto" else OK, name,
             f"ping checks run {program} ({forced}); an ICMP socket is faster: grant CAP_NET_RAW or widen "
             "net.ipv4.ping_group_range")
        return
    level = FAIL if wanted == "command" else WARN
    emit(level, name, f"ping and icmp checks will be DOWN: no ICMP socket and no ping program ({forced})")


def ca_bundle(emit: Emit) -> None:
    """The trust roots TLS checks verify against: SSL_CERT_FILE / SSL_CERT_DIR, else OpenSSL's defaults."""
    name = "CA bundle"
    paths = ssl.get_default_verify_paths()
    source = "SSL_CERT_FILE" if os.environ.get("SSL_CERT_FILE") else "system"
    if paths.cafile and os.path.isfile(paths.cafile):
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.load_verify_locations(cafile=paths.cafile)
            count = context.cert_store_stats()["x509_ca"]
        except (ssl.SSLError, OSError):  # not PEM, or no certificate in it: TLS checks get no roots from it
            count = 0
        if count:
            bundled = " (the Mozilla bundle built into the binary)" if getattr(sys, "_MEIPASS", "@") in paths.cafile \
                else ""
            emit(OK, name, f"{paths.cafile}{bundled}: {count} CA certificates ({source})")
            return
        emit(WARN, name, f"{paths.cafile} ({source}) holds no CA certificate: https checks fail verification")
        return
    if paths.capath and os.path.isdir(paths.capath) and os.listdir(paths.capath):
        emit(OK, name, f"directory {paths.capath} ({'SSL_CERT_DIR' if os.environ.get('SSL_CERT_DIR') else 'system'})")
        return
    emit(WARN, name, f"none found (looked for {paths.openssl_cafile}): https checks fail certificate verification; "
                     "install ca-certificates or set SSL_CERT_FILE")


def dns_resolver(settings: Any, emit: Emit) -> None:
    """The name servers of /etc/resolv.conf (what the dns checks ask and Go names in lookup errors) and a
    lookup through the system resolver of the Redis host when it is a name."""
    name = "DNS resolver"
    servers = []
    try:
        with open("/etc/resolv.conf") as fh:
            servers = [parts[1] for parts in (line.split() for line in fh) if len(parts) >= 2 and parts[0] == "nameserver"]
    except OSError:
        pass
    listed = f"name servers {', '.join(servers)} (/etc/resolv.conf)" if servers else \
        "no nameserver in /etc/resolv.conf (127.0.0.1:53 is asked, as in Go)"
    host = _redis_host(settings)
    if not host or _is_address(host) or host == "localhost":
        emit(OK if servers else WARN, name, listed)
        return
    started = time.perf_counter()
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        emit(WARN, name, f"{listed}; looking up {host} failed: {exc.strerror or exc}")
        return
    emit(OK if servers else WARN, name, f"{listed}; {host} resolved in {(time.perf_counter() - started) * 1000:.0f} ms")


def file_descriptors(concurrency: int, emit: Emit) -> None:
    """Open-file limit against what `concurrency` checks need: about two descriptors a check (a socket, and
    a proxy or DNS one), the Redis pool (up to 64) and some slack."""
    import resource

    name = "file descriptors"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        emit(OK, name, "no limit")
        return
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = 0
    free = soft - used
    need = 2 * concurrency + min(max(16, concurrency), 64) + 32
    text = f"{free} of {soft} free (hard limit {hard}); {concurrency} checks in flight need about {need}"
    if free < concurrency + 16:
        emit(FAIL, name, f"{text}: raise it (ulimit -n, or LimitNOFILE= in the systemd unit)")
    elif free < need:
        emit(WARN, name, f"{text}: checks may fail with `too many open files`; raise it")
    else:
        emit(OK, name, text)


# ==================================================================================================

def _user(settings: Any) -> str:
    from settings import parse_redis_url

    if settings.redis_url:
        return parse_redis_url(settings.redis_url).username or "default"
    return "default"


def _redis_host(settings: Any) -> str:
    from settings import parse_redis_url

    if settings.redis_url:
        return parse_redis_url(settings.redis_url).host
    return settings.redis_host


def _is_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {STEP_TIMEOUT:g} s"
    return " ".join(str(exc).split()) or type(exc).__name__
