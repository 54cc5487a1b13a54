"""One small owner for every local process Lookalike starts: the embedded Milvus Lite server
and the local Milvus server (``lite_server.py``, ``server.py``) are both a
``LocalService`` and share this mechanism.

- **Started once, shared by all.** Whichever process needs the service first starts a small
  supervisor (``python -m lookalike.milvus.supervisor``), under a file lock (filelock), detached from
  it; the supervisor runs the service as its child and records its pid and endpoint next to
  the data directory (``<dir>.server.json``). Later processes read that file and join.
- **Restarted when it dies,** on the same endpoint, so clients reconnect by themselves (a
  crash loop backs off; a service that never came up is not retried).
- **Tied to its supervisor by a lifeline:** the child's stdin is a pipe the supervisor holds
  and never writes. However the supervisor ends (SIGKILL included) the pipe closes, and the
  child shuts itself down cleanly. Closing it is also how the supervisor stops the child.
- **Gone when unused:** every process that uses the service holds a lease (a file named by its
  pid, holding the process's start time from psutil, so a reused pid does not count). Once no
  leaseholder has lived for ``idle_stop_s`` the supervisor stops the child and exits, however
  the users were started (``lookalike serve``, a plain ``serve run``, an ingest job, a test).
  ``stop()`` stops it at once.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from filelock import FileLock

from lookalike.errors import BackendUnavailable
from lookalike.retry import wait_until

log = logging.getLogger(__name__)
# How long a clean shutdown may take (the Milvus server flushes its segments) before SIGKILL.
SHUTDOWN_S = 60.0


def _ended(proc: psutil.Process) -> bool:
    """Gone, or a zombie: it has exited, though whoever reaps it (init, detached processes'
    parent) may not have yet; that took 1.2 s here, and a container whose first process never
    reaps would keep it for good."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _process(pid: int) -> psutil.Process | None:
    """The running process ``pid`` (a zombie counts as gone: ``_ended``), else None."""
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    return None if _ended(proc) else proc


def pid_alive(pid: int) -> bool:
    return _process(pid) is not None


def _stamp(pid: int) -> str | None:
    """What names one process even after its pid is reused: its start time."""
    proc = _process(pid)
    return None if proc is None else repr(proc.create_time())


def stop_process(pid: int, timeout_s: float) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL after ``timeout_s``; done once it has exited."""
    proc = _process(pid)
    if proc is None:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks the pid still names this process
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: _ended(proc), wait_s, f"process {pid} to exit", interval_s=0.02, retry_on=())
            return


class LocalService:
    """One local service per data directory, seen from any process. Subclasses say how to run
    it (``command``), where it answers (``pick_endpoint`` / ``uri``) and how to see it up
    (``answers``); this class starts, shares, finds and stops it."""

    what = "a local service"  # for messages: "the embedded Milvus Lite server"

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = Path(data_dir).resolve()
        name = self.data_dir.name
        self.state_file = self.data_dir.with_name(name + ".server.json")
        self.log_file = self.data_dir.with_name(name + ".server.log")
        self.lease_dir = self.data_dir.with_name(name + ".server.leases")
        self._start_lock = self.data_dir.with_name(name + ".server.lock")
        self._write_lock = self.data_dir.with_name(name + ".write.lock")

    # -- what a kind of service defines -----------------------------------------------------
    def pick_endpoint(self, previous: str | None) -> str:
        """Where a new server will answer (``previous``: where the last one did)."""
        raise NotImplementedError

    def command(self, endpoint: str) -> list[str]:
        """The child process's command line (it must stop cleanly when its stdin closes)."""
        raise NotImplementedError

    def uri(self, endpoint: str) -> str:
        raise NotImplementedError

    def answers(self, endpoint: str) -> bool:
        raise NotImplementedError

    def refusal(self) -> str | None:
        """Why this service cannot run on this machine, if it cannot."""
        return None

    # -- the shared mechanism ---------------------------------------------------------------
    def write_lock(self) -> FileLock:
        """Serialises writes from every process and thread of this machine."""
        return FileLock(self._write_lock, thread_local=False, is_singleton=False)

    def _lock(self) -> FileLock:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(self._start_lock)

    def _state(self) -> dict | None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if pid_alive(state["pid"]) else None

    def running_uri(self) -> str | None:
        """The URI while the supervisor lives (its child may be restarting: clients then get a
        503 for a moment), else None."""
        state = self._state()
        return self.uri(state["endpoint"]) if state else None

    def start(self, timeout_s: float, idle_stop_s: float) -> tuple[str, bool]:
        """Start the supervised service unless it runs; returns (uri, started_by_this_call).
        ``timeout_s``, ``idle_stop_s``: ``milvus.local_start_timeout_s``, ``local_idle_stop_s``."""
        refusal = self.refusal()
        if refusal:
            raise BackendUnavailable("milvus", refusal)
        with self._lock():
            uri = self.running_uri()
            if uri:
                return uri, False
            previous = None
            with contextlib.suppress(OSError, ValueError, KeyError):
                previous = json.loads(self.state_file.read_text())["endpoint"]
            endpoint = self.pick_endpoint(previous)
            kind = f"{type(self).__module__}:{type(self).__name__}"
            cmd = [sys.executable, "-m", "lookalike.milvus.supervisor", "--service", kind, "--data-dir", str(self.data_dir),
                   "--endpoint", endpoint, "--idle-stop-s", str(idle_stop_s)]
            # The supervisor detaches (daemon: a new session, then a fork whose parent exits at
            # once, telling its child's pid): it belongs to no process of ours, so a Ray worker that
            # started it and exits does not take it along (Ray kills its workers' children), and
            # leaseholders alone decide when it stops.
            with open(self.log_file, "ab") as out:
                launcher = subprocess.Popen([*cmd, "--daemon"], stdout=subprocess.PIPE, stderr=out,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                told = launcher.stdout.readline().strip()
                launcher.wait()
            if not told.isdigit():
                raise BackendUnavailable("milvus", f"{self.what} did not start", detail=self._log_tail())
            pid = int(told)

            def up() -> bool:
                if not pid_alive(pid):
                    raise ChildProcessError(f"the supervisor {pid} exited")
                return self.answers(endpoint)

            try:
                wait_until(up, timeout_s, f"{self.what} to answer", interval_s=0.1, retry_on=())
            except (ChildProcessError, TimeoutError) as exc:
                stop_process(pid, 10.0)
                raise BackendUnavailable("milvus", f"{self.what} did not start",
                                         detail=f"{exc}; {self._log_tail()}") from None
            self.state_file.write_text(json.dumps({"pid": pid, "endpoint": endpoint}))
            log.info("%s for %s: %s (supervisor pid %d)", self.what, self.data_dir, self.uri(endpoint), pid)
            return self.uri(endpoint), True

    def ensure(self, timeout_s: float, idle_stop_s: float) -> str:
        """The running service's URI, starting it if needed; this process holds a lease on it."""
        self.lease()
        return self.running_uri() or self.start(timeout_s, idle_stop_s)[0]

    def lease(self, pid: int | None = None) -> None:
        """Keep the service up while process ``pid`` (this one by default) lives."""
        pid = pid or os.getpid()
        stamp = _stamp(pid)
        if stamp is None:
            return
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        path = self.lease_dir / str(pid)
        with contextlib.suppress(OSError):
            if path.read_text() == stamp:
                return
        path.write_text(stamp)

    def live_leases(self) -> list[int]:
        """The pids holding a lease that still run; forgets the others."""
        alive = []
        for path in self.lease_dir.glob("*") if self.lease_dir.is_dir() else ():
            with contextlib.suppress(OSError, ValueError):
                if _stamp(int(path.name)) == path.read_text():
                    alive.append(int(path.name))
                    continue
                path.unlink()
        return alive

    def stop(self, timeout_s: float = SHUTDOWN_S) -> bool:
        """Stop the supervisor and its service; True if one was running."""
        with self._lock():
            state = self._state()
            self.state_file.unlink(missing_ok=True)
            if not state:
                return False
            stop_process(state["pid"], timeout_s)
            return True

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "no log"

    # -- the supervisor process -------------------------------------------------------------
    def supervise(self, endpoint: str, idle_stop_s: float) -> None:
        """Run the service, restart it when it dies, stop it on SIGTERM / SIGINT or once no
        leaseholder has lived for ``idle_stop_s`` (0: only when asked)."""
        stop: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
        signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))

        def spawn() -> subprocess.Popen:
            return subprocess.Popen(self.command(endpoint), stdin=subprocess.PIPE)  # stdin: the lifeline

        child, started, restarts, idle_since, served = spawn(), time.monotonic(), 0, None, False
        print(f"supervisor {os.getpid()}: {self.what} (pid {child.pid}) at {self.uri(endpoint)}", flush=True)
        while not stop:
            time.sleep(0.1)
            code = child.poll()
            served = served or (code is None and self.answers(endpoint))
            if code is not None and not served:  # it never came up: a restart would fail alike
                print(f"supervisor: {self.what} exited with {code} before serving; giving up", flush=True)
                sys.exit(1)
            if code is not None and not stop:
                restarts = 1 if time.monotonic() - started > 60 else restarts + 1
                delay = min(0.2 * 2 ** (restarts - 3), 5.0) if restarts > 3 else 0.0  # a crash loop backs off
                print(f"supervisor: {self.what} exited with {code}; restarting (#{restarts}) in {delay:.1f}s",
                      flush=True)
                time.sleep(delay)
                child, started = spawn(), time.monotonic()
            if idle_stop_s > 0:
                if self.live_leases():
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= idle_stop_s:
                    # Under the start lock: a process that comes now waits, then starts a fresh one.
                    with self._lock():
                        if self.live_leases():
                            idle_since = None
                            continue
                        print(f"supervisor: no process has used it for {idle_stop_s:.0f}s; stopping", flush=True)
                        self._halt(child)
                        return
        self._halt(child)

    def _halt(self, child: subprocess.Popen) -> None:
        """Close the lifeline (the child shuts down cleanly), SIGKILL it if it has not in SHUTDOWN_S;
        forget the state file if it is still ours."""
        with contextlib.suppress(OSError):
            child.stdin.close()
        try:
            child.wait(timeout=SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads(self.state_file.read_text())["pid"] == os.getpid():
                self.state_file.unlink()


def on_lifeline_closed(callback) -> None:
    """In a supervised child: call ``callback`` (from a thread) when stdin closes, that is when
    the supervisor has gone or asks it to stop."""
    import threading

    def watch() -> None:
        try:
            while os.read(0, 4096):  # unbuffered: no lock left held at interpreter exit
                pass
        except OSError:
            pass
        finally:
            callback()

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _service(spec: str, data_dir: str) -> LocalService:
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, LocalService)):
        raise SystemExit(f"{spec} is not a LocalService")
    return cls(data_dir)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lookalike.milvus.supervisor")
    parser.add_argument("--service", required=True, help="module:LocalServiceClass")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--idle-stop-s", type=float, required=True, help="milvus.local_idle_stop_s")
    parser.add_argument("--daemon", action="store_true", help="fork, print the child's pid, exit (the child "
                                                              "supervises, its output to stderr)")
    cli = parser.parse_args()
    if cli.daemon:
        child = os.fork()
        if child:
            print(child, flush=True)
            os._exit(0)
        os.dup2(2, 1)  # stdout was the pipe to the launcher: the log from now on
    _service(cli.service, cli.data_dir).supervise(cli.endpoint, cli.idle_stop_s)


if __name__ == "__main__":
    from lookalike.milvus.supervisor import main as main_of_the_module  # this file runs as __main__: its classes differ

    main_of_the_module()
