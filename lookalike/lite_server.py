"""The embedded Milvus: one supervised `milvus-lite server` per Milvus Lite data directory,
and ``open_catalog``, the way every process reaches the configured Milvus.

Milvus Lite lets a single process open a data directory. Serve replicas, the CLI and an ingest
job are different processes, so they share one server bound to 127.0.0.1, started by whichever
of them needs it first. What runs is a small supervisor (``--supervise``) with the server as
its child:

- it restarts the server on the same port when it dies, so clients reconnect by themselves;
- every process that uses the server holds a lease (a file named by its pid), and the
  supervisor stops the server and exits once no leaseholder has been alive for
  ``milvus.lite_server_idle_stop_s``: nothing outlives the processes that used it, however they
  were started (``lookalike serve``, a plain ``serve run``, an ingest job, a test);
- ``stop()`` (``lookalike serve`` on exit, ``lookalike lite-server stop``) stops it at once.

The supervisor's pid and the port are recorded next to the data directory
(``<dir>.server.json``); a file lock makes concurrent starts safe; a server that must be
started again (after the supervisor itself was killed) takes the recorded port back if it can.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BackendUnavailable

if TYPE_CHECKING:
    from .catalog import Catalog
    from .settings import MilvusSettings

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


def _free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            # As the server binds: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port")


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process
    even after the pid is reused. None when no such process runs (zombies count as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    return _start_time(pid) is not None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class LiteServer:
    """The shared server of one data directory, seen from any process."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir).resolve()
        name = self.data_dir.name
        self.state_file = self.data_dir.with_name(name + ".server.json")
        self.log_file = self.data_dir.with_name(name + ".server.log")
        self.lease_dir = self.data_dir.with_name(name + ".server.leases")
        self._lock_file = self.data_dir.with_name(name + ".server.lock")
        self._write_lock_file = self.data_dir.with_name(name + ".write.lock")

    def write_lock(self):
        """Serialise writes from every process and thread: Milvus Lite does not take
        concurrent writers to one collection."""
        return _flocked(self._write_lock_file)

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    def running_uri(self) -> str | None:
        """The URI of this directory's server while its supervisor lives (the server itself may
        be restarting: clients then get a 503 for a moment), else None."""
        state = self._read_state()
        if state and pid_alive(state["pid"]):
            return f"http://{HOST}:{state['port']}"
        return None

    @property
    def pid(self) -> int | None:
        """The supervisor's pid, while it runs."""
        state = self._read_state()
        return state["pid"] if state and pid_alive(state["pid"]) else None

    @property
    def server_pid(self) -> int | None:
        """The server's pid (the supervisor's child), while it runs."""
        state = self._read_state()
        if not state or not pid_alive(state["pid"]):
            return None
        try:
            children = Path(f"/proc/{state['pid']}/task/{state['pid']}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def start(self, timeout_s: float = 60.0, idle_stop_s: float = 10.0) -> tuple[str, bool]:
        """Start the supervised server unless one runs; returns (uri, started_by_this_call)."""
        with _flocked(self._lock_file):
            uri = self.running_uri()
            if uri:
                return uri, False
            previous = self._read_state()
            port = _free_port(previous["port"] if previous else None)
            cmd = [sys.executable, "-m", "lookalike.lite_server", "--data-dir", str(self.data_dir),
                   "--port", str(port), "--supervise", "--idle-stop-s", str(idle_stop_s)]
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            uri = f"http://{HOST}:{port}"
            deadline = time.monotonic() + timeout_s
            while not _port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    _stop_pid(proc.pid, 10.0)
                    raise BackendUnavailable("milvus", "the embedded Milvus Lite server did not start",
                                             detail=self._log_tail())
                time.sleep(0.1)
            self.state_file.write_text(json.dumps({"pid": proc.pid, "port": port, "data_dir": str(self.data_dir)}))
            log.info("milvus-lite server for %s on %s (supervisor pid %d)", self.data_dir, uri, proc.pid)
            return uri, True

    def ensure(self, timeout_s: float = 60.0, idle_stop_s: float = 10.0) -> str:
        """The running server's URI, starting it if needed; this process holds a lease on it."""
        self.lease()
        uri = self.running_uri()
        if uri is None:
            uri, _ = self.start(timeout_s, idle_stop_s)
        return uri

    def lease(self, pid: int | None = None) -> None:
        """Keep the server up while process ``pid`` (this one by default) lives."""
        pid = pid or os.getpid()
        stamp = _start_time(pid)
        if stamp is None:
            return
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        path = self.lease_dir / str(pid)
        with contextlib.suppress(OSError):
            if path.read_text() == stamp:
                return
        path.write_text(stamp)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the supervisor and its server; True if one was running."""
        with _flocked(self._lock_file):
            state = self._read_state()
            self.state_file.unlink(missing_ok=True)
            if not state or not pid_alive(state["pid"]):
                return False
            _stop_pid(state["pid"], timeout_s)
            return True

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "no log"


def live_leases(lease_dir: Path) -> list[int]:
    """The pids holding a lease that still run; forgets the others."""
    alive = []
    for path in lease_dir.glob("*") if lease_dir.is_dir() else ():
        with contextlib.suppress(OSError, ValueError):
            if _start_time(int(path.name)) == path.read_text():
                alive.append(int(path.name))
                continue
            path.unlink()
    return alive


def _stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM (the server drains requests and closes the DB), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if not pid_alive(pid):
            return


@contextmanager
def _flocked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:  # a fresh open file description: threads exclude each other too
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def serving(settings: "MilvusSettings"):
    """While the block runs, the configured Lite directory is served to other processes (yields
    the URI; None when Milvus is a server or sharing is off). A server this started is stopped
    at the end; one that was already running is left to its other leaseholders."""
    if not settings.shared_lite_dir:
        yield None
        return
    server = LiteServer(settings.uri)
    server.lease()
    uri, started = server.start(settings.lite_server_start_timeout_s, settings.lite_server_idle_stop_s)
    try:
        yield uri
    finally:
        if started:
            server.stop()


def share(settings: "MilvusSettings") -> str | None:
    """The URI of the configured Lite directory's shared server, started if needed, with this
    process holding a lease on it; None when Milvus is a server or sharing is off."""
    if not settings.shared_lite_dir:
        return None
    Path(settings.uri).parent.mkdir(parents=True, exist_ok=True)
    return LiteServer(settings.uri).ensure(settings.lite_server_start_timeout_s, settings.lite_server_idle_stop_s)


def open_catalog(settings: "MilvusSettings", dim: int, *, shared: bool = False) -> "Catalog":
    """A catalog for the configured Milvus. A server URI is used as is. A Lite directory shared
    through its server (``lite_server``) is reached through the supervised server: joined if it
    runs, started if ``shared`` (the caller is one of several processes), else opened
    in-process (a one-shot command while nothing else runs). Joined or started, the catalog
    finds the server again by itself when it reconnects (a restarted supervisor, say)."""
    from .catalog import Catalog

    if not settings.is_lite:
        return Catalog(settings, dim)
    Path(settings.uri).parent.mkdir(parents=True, exist_ok=True)
    server = LiteServer(settings.uri)
    if not settings.lite_server:
        return Catalog(settings, dim, write_lock=server.write_lock)
    if not shared and server.running_uri() is None:
        return Catalog(settings, dim, write_lock=server.write_lock)
    return Catalog(settings, dim, uri=share(settings), locate=lambda: share(settings), write_lock=server.write_lock)


# -- the processes ----------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In the server's child process: get SIGTERM when the supervisor dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(data_dir: str, port: int, idle_stop_s: float) -> None:
    """The supervisor process: run the server, restart it when it dies, stop it on SIGTERM /
    SIGINT or once no leaseholder has lived for ``idle_stop_s`` (0: only when asked)."""
    paths = LiteServer(data_dir)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    cmd = [sys.executable, "-m", "lookalike.lite_server", "--data-dir", data_dir, "--port", str(port)]

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def halt(server: subprocess.Popen) -> None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(paths.state_file.read_text())["pid"] == os.getpid():
                paths.state_file.unlink()

    server, started, restarts, idle_since, served = spawn(), time.monotonic(), 0, None, False
    print(f"supervisor {os.getpid()}: server pid {server.pid} on {HOST}:{port}", flush=True)
    while not stop:
        time.sleep(0.1)
        code = server.poll()
        served = served or (code is None and _port_open(port))
        if code is not None and not served:  # it never came up: a restart would fail alike
            print(f"supervisor: the server exited with {code} before serving; giving up", flush=True)
            sys.exit(1)
        if code is not None and not stop:
            restarts = 1 if time.monotonic() - started > 60 else restarts + 1
            delay = min(0.2 * 2 ** (restarts - 3), 5.0) if restarts > 3 else 0.0  # a crash loop backs off
            print(f"supervisor: server exited with {code}; restarting (#{restarts}) in {delay:.1f}s", flush=True)
            time.sleep(delay)
            server, started = spawn(), time.monotonic()
        if idle_stop_s > 0:
            if live_leases(paths.lease_dir):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_stop_s:
                # Under the start lock: a process that comes now waits, then starts a fresh one.
                with _flocked(paths._lock_file):
                    if live_leases(paths.lease_dir):
                        idle_since = None
                        continue
                    print(f"supervisor: no process has used the server for {idle_stop_s:.0f}s; stopping",
                          flush=True)
                    halt(server)
                    return
    halt(server)


def serve_forever(data_dir: str, port: int, host: str = HOST) -> None:
    """The server process. SIGTERM or SIGINT stop it cleanly: drain requests, close the DB.

    (`milvus-lite server` itself only shuts down cleanly on a KeyboardInterrupt, which its
    blocked main thread may not see; so we run the same server under our own signal wait.)
    """
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # inherited by the server's threads
    server, db, bound = start_server_in_thread(data_dir, host=host, port=port)
    print(f"milvus-lite server for {data_dir} on {host}:{bound} (pid {os.getpid()})", flush=True)
    received = signal.sigwait(stop_signals)
    print(f"stopping on signal {received}", flush=True)
    server.stop(grace=5).wait()
    db.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lookalike.lite_server")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--supervise", action="store_true", help="run the server as a supervised child")
    parser.add_argument("--idle-stop-s", type=float, default=10.0)
    cli = parser.parse_args()
    if cli.supervise:
        supervise(cli.data_dir, cli.port, cli.idle_stop_s)
    else:
        serve_forever(cli.data_dir, cli.port)
