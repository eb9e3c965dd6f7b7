"""Real peers for the docker executor tests: a private `dockerd` (Debian's docker.io) on its own Unix
socket and a mutual-TLS TCP port on 127.0.0.1, with a private data root, exec root and pidfile, no
iptables and no bridge; an image imported from a root filesystem holding only a static busybox; one
container (all with --network none) in each state the executor reports. Plus TLS listeners with
certificates dockerd cannot be given at the same time (Common Name only, wrong name).

Everything lives in one directory under /tmp (short: socket paths are limited to 108 bytes), removed
with its private keys when the daemon stops or the test process ends.
"""

from __future__ import annotations

import atexit
import datetime as dt
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import trustme

from conftest import TcpPeer, wait_ready

IMAGE = "pk-tiny:1"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, runs without a libc in the image
SLEEP = ["/bin/sleep", "3600"]
# name -> docker run options and command. The health checks run every second, except `starting`'s,
# whose first run is an hour away. `restarting` exits at once and is restarted with growing delays.
CONTAINERS = {
    "pk-running": ([], SLEEP),
    "pk-healthy": (["--health-cmd", "/bin/true", "--health-interval", "1s"], SLEEP),
    "pk-unhealthy": (["--health-cmd", "/bin/false", "--health-interval", "1s", "--health-retries", "1"], SLEEP),
    "pk-starting": (["--health-cmd", "/bin/true", "--health-interval", "1h"], SLEEP),
    "pk-exited": ([], ["/bin/sh", "-c", "exit 3"]),
    "pk-paused": ([], SLEEP),
    "pk-restarting": (["--restart", "always"], ["/bin/false"]),
}
RESTARTS_BEFORE_READY = 4  # from the 4th restart on the daemon waits >= 1.6 s before the next one


class DaemonError(Exception):
    """dockerd is missing or could not be started here; str(exc) says why."""


def missing_tools() -> str | None:
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("containerd", "docker.io"),
                          ("runc", "docker.io")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install docker.io busybox-static, or scripts/ci-docker.sh)"
    if not os.path.isfile(BUSYBOX) or _dynamic(BUSYBOX):
        return f"a static {BUSYBOX} is needed for the test image (apt-get install busybox-static)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return None


def _dynamic(path: str) -> bool:
    """True when the ELF file asks for a program interpreter (it needs a libc the image lacks)."""
    with open(path, "rb") as fh:
        return b"/ld-linux" in fh.read(4096)


class Pki:
    """A CA for the daemon and its clients, a CA nobody trusts, and the certificates the tests use."""

    def __init__(self) -> None:
        self.ca = trustme.CA(organization_name="Peekaping Docker Test CA")
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.client = self.ca.issue_cert("peekaping-monitor")
        self.other_ca = trustme.CA(organization_name="Nobody Trusts Me")
        self.wrong_name = self.ca.issue_cert("docker.invalid")  # valid for another name only
        self.ca_pem = self.ca.cert_pem.bytes().decode()
        self.other_ca_pem = self.other_ca.cert_pem.bytes().decode()
        self.client_cert = self.client.cert_chain_pems[0].bytes().decode()
        self.client_key = self.client.private_key_pem.bytes().decode()

    def common_name_only(self) -> tuple[bytes, bytes]:
        """(cert, key) PEM of a leaf for 127.0.0.1 named only in its Common Name (no SAN), as old daemons had."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), password=None)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
                .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .sign(ca_key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


class DockerDaemon:
    """A private dockerd with the test image and one container per state; `stop` removes every trace."""

    def __init__(self, pki: Pki, tcp_port: int) -> None:
        self.pki = pki
        self.dir = Path(tempfile.mkdtemp(prefix="pkdk-", dir="/tmp"))
        atexit.register(self.stop)  # private keys and the data root go even if a test run is killed
        self.socket = str(self.dir / "docker.sock")
        self.tcp_port = tcp_port
        self.proc: subprocess.Popen | None = None
        self.ids: dict[str, str] = {}
        self.log = self.dir / "dockerd.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self.env["DOCKER_CONFIG"] = str(self.dir / "cli")  # no credential helpers or contexts of the host

    # --- daemon ----------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        reason = missing_tools()
        if reason:
            raise DaemonError(reason)
        tls = self.dir / "tls"
        tls.mkdir(mode=0o700)
        self.pki.ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        self.pki.server.cert_chain_pems[0].write_to_path(str(tls / "server.pem"))
        self.pki.server.private_key_pem.write_to_path(str(tls / "server-key.pem"))
        (self.dir / "daemon.json").write_text("{}")  # not /etc/docker/daemon.json
        command = ["dockerd", "--config-file", str(self.dir / "daemon.json"),
                   "-H", f"unix://{self.socket}", "-H", f"tcp://127.0.0.1:{self.tcp_port}",
                   "--tlsverify", "--tlscacert", str(tls / "ca.pem"), "--tlscert", str(tls / "server.pem"),
                   "--tlskey", str(tls / "server-key.pem"),
                   "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
                   "--pidfile", str(self.dir / "docker.pid"),
                   "--iptables=false", "--ip-masq=false", "--bridge=none", "--storage-driver=vfs",
                   "--shutdown-timeout=1", "--log-level=warn"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        wait_ready(self.ping, "dockerd", timeout, proc=self.proc, log=self.log_tail, error=DaemonError, interval=0.1)

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.socket)
                sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def docker(self, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> str:
        proc = subprocess.run(["docker", "-H", f"unix://{self.socket}", *args], input=stdin, capture_output=True,
                              timeout=timeout, env=self.env, check=False)
        if proc.returncode != 0:
            raise DaemonError(f"docker {' '.join(args[:2])} failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode().strip()

    # --- image and containers --------------------------------------------------------------------
    def create_containers(self, timeout: float = 45.0) -> None:
        self.docker("import", "-", IMAGE, stdin=_rootfs_tar())
        for name, (options, command) in CONTAINERS.items():
            self.ids[name] = self.docker("create", "--name", name, "--network", "none", *options, IMAGE, *command)
        self.docker("start", *CONTAINERS)
        self.docker("pause", "pk-paused")
        deadline = time.monotonic() + timeout
        states: dict = {}
        while time.monotonic() < deadline:
            states = self.states()
            if _ready(states):
                return
            time.sleep(0.2)
        raise DaemonError(f"containers did not reach their states within {timeout:.0f} s: {states}")

    def run_one(self, name: str) -> None:
        """Import the image and run one plain container (for a quick UP, e.g. the `types` example)."""
        self.docker("import", "-", IMAGE, stdin=_rootfs_tar())
        self.ids[name] = self.docker("run", "-d", "--name", name, "--network", "none", IMAGE, *SLEEP)

    def states(self) -> dict[str, dict]:
        out = self.docker("inspect", *CONTAINERS)
        return {c["Name"].lstrip("/"): dict(c["State"], RestartCount=c["RestartCount"]) for c in json.loads(out)}

    # --- teardown --------------------------------------------------------------------------------
    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                names = sorted(set(CONTAINERS) | set(self.ids))
                self.docker("rm", "--force", *names, timeout=30)  # SIGKILL: sleep as PID 1 ignores TERM
            except (DaemonError, subprocess.TimeoutExpired, OSError):
                pass
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # dockerd and the containerd it started
                proc.wait(10)
        _unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


def _ready(states: dict[str, dict]) -> bool:
    def health(name: str) -> str:
        return ((states.get(name) or {}).get("Health") or {}).get("Status", "")

    restarting = states.get("pk-restarting") or {}
    return (states.get("pk-running", {}).get("Status") == "running" and health("pk-healthy") == "healthy"
            and health("pk-unhealthy") == "unhealthy" and health("pk-starting") == "starting"
            and states.get("pk-exited", {}).get("Status") == "exited"
            and states.get("pk-paused", {}).get("Status") == "paused"
            and restarting.get("Restarting") is True and restarting.get("RestartCount", 0) >= RESTARTS_BEFORE_READY)


def _rootfs_tar() -> bytes:
    """A root filesystem of busybox and the applets the containers run, as a tar stream."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "sleep", "true", "false"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return data.getvalue()


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever a killed daemon left mounted below `root` (deepest first)."""
    prefix = str(root) + "/"
    try:
        with open("/proc/self/mounts") as fh:
            points = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    except OSError:
        return
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=10, check=False)


# --------------------------------------------------------------------------------------------------
# TLS listeners with certificates the daemon does not have

class TlsListener(TcpPeer):
    """Accepts TLS on 127.0.0.1 with one certificate, in a thread; the handshake is all that matters."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as fh:  # load_cert_chain wants a path: removed at once
            fh.write(cert_pem + key_pem)
        try:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(fh.name)
        finally:
            os.unlink(fh.name)
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1024)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
