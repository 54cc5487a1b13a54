"""A shared local `milvus-lite server` for one Milvus Lite data directory.

Milvus Lite lets a single process open a data directory. Serve replicas, the CLI and an
ingest job are different processes, so when they must share the embedded default they talk
to one `milvus-lite server` bound to 127.0.0.1. Its pid and port are recorded next to the
data directory (``<dir>.server.json``) so that every process finds the same server; a file
lock makes concurrent starts safe. Whoever starts it owns it and stops it (``lookalike
serve`` on exit, the tests at teardown, ``lookalike lite-server stop``).
"""

from __future__ import annotations

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

from .errors import BackendUnavailable

log = logging.getLogger(__name__)
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class LiteServer:
    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir).resolve()
        self.state_file = self.data_dir.with_name(self.data_dir.name + ".server.json")
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".server.log")
        self._lock_file = self.data_dir.with_name(self.data_dir.name + ".server.lock")
        self._write_lock_file = self.data_dir.with_name(self.data_dir.name + ".write.lock")

    def _locked(self):
        return _flocked(self._lock_file)

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
        """The URI of the live server for this directory, or None."""
        state = self._read_state()
        if state and _pid_alive(state["pid"]) and _port_open(state["port"]):
            return f"http://{HOST}:{state['port']}"
        return None

    @property
    def pid(self) -> int | None:
        state = self._read_state()
        return state["pid"] if state and _pid_alive(state["pid"]) else None

    def start(self, timeout_s: float = 60.0) -> tuple[str, bool]:
        """Start the server unless one runs; returns (uri, started_by_this_call)."""
        with self._locked():
            uri = self.running_uri()
            if uri:
                return uri, False
            port = _free_port()
            cmd = [sys.executable, "-m", "lookalike.lite_server", "--data-dir", str(self.data_dir),
                   "--port", str(port)]
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            uri = f"http://{HOST}:{port}"
            deadline = time.monotonic() + timeout_s
            while not _port_open(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise BackendUnavailable("milvus", "the embedded Milvus Lite server did not start",
                                             detail=self._log_tail())
                time.sleep(0.1)
            self.state_file.write_text(json.dumps({"pid": proc.pid, "port": port, "data_dir": str(self.data_dir)}))
            log.info("milvus-lite server for %s on %s (pid %d)", self.data_dir, uri, proc.pid)
            return uri, True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the recorded server; True if one was running."""
        with self._locked():
            state = self._read_state()
            self.state_file.unlink(missing_ok=True)
            if not state or not _pid_alive(state["pid"]):
                return False
            pid = state["pid"]
            # SIGTERM: the server drains requests and closes the DB (see serve_forever).
            for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait_s
                while _pid_alive(pid) and time.monotonic() < deadline:
                    _reap(pid)
                    time.sleep(0.1)
                if not _pid_alive(pid):
                    break
            return True

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "no log"


@contextmanager
def _flocked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:  # a fresh open file description: threads exclude each other too
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@contextmanager
def serving(data_dir: str | os.PathLike | None, timeout_s: float = 60.0):
    """While the block runs, the Lite data directory is served to other processes (yields the
    URI; None when ``data_dir`` is None). A server this started is stopped at the end; one that
    was already running is left to its owner."""
    if data_dir is None:
        yield None
        return
    server = LiteServer(data_dir)
    uri, started = server.start(timeout_s)
    try:
        yield uri
    finally:
        if started:
            server.stop()


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
    cli = parser.parse_args()
    serve_forever(cli.data_dir, cli.port)
