"""The local Milvus server: the standalone server of the PyPI ``milvus`` package (2.3.5, the
newest Linux wheel), for galleries that outgrow Milvus Lite, reachable by this machine's user
and nothing else.

That server listens on every interface (19530, 9091, 13333, ... with no listen-address
setting), and its port 9091 lists, reads and drops collections without credentials
(CVE-2026-26190). So it never runs in the host's network: ``unshare`` gives it its own user,
network and pid namespaces, where the only interface is loopback, and a relay in there
forwards a Unix socket (mode 0600, in the server's data directory) to its gRPC port. Clients
connect to ``unix:<dir>/milvus.sock``; the host's listening sockets show nothing of it.

The pid namespace ties every process of it to the relay (its init): when the relay ends, the
kernel ends the rest, so a killed supervisor leaves no Milvus binary behind.

Started, shared, restarted and stopped by ``supervisor.py``, like the Lite server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from lookalike.milvus.supervisor import LocalService, on_lifeline_closed

SOCKET_NAME = "milvus.sock"
MILVUS_PORT = 19530  # inside the namespace only
# --mount-proc: Milvus reads its memory from /proc, which must show this pid namespace.
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
SOCKET_PATH_MAX = 107  # sun_path, less the terminating NUL
# Milvus's components keep an etcd session alive; one not renewed for this long counts as dead,
# and the server then shuts itself down (SIGINT to itself, "service not ready: Abnormal"). 10 s
# made a restart after a crash faster (~15 s instead of ~36 s) but killed the server on a busy
# machine: two test suites at once starved it for 8 s and it stopped mid-suite. Milvus's own
# default, 30 s, rides that out; a restart after a crash waits for it.
SESSION_TTL_S = 30
# Segments seal at this share of Milvus's largest segment (512 MB: ~91,000 rows of 1280-d) instead
# of its 0.23 (~21,000 rows). Its compaction merges segments under half the largest and builds
# their index again: 200,000 rows sealed at 0.23 kept two cores busy merging and re-indexing for
# minutes after the index said done, and a 200,000-image ingest took 1,413 s against 1,251 s at
# 0.6, run one after the other (benchmarks.scale's files; README, Scale). At 0.6 (~55,000 rows)
# no segment is small, and the last one, which an ingest's flush seals and the job waits to see
# indexed, stays at most ~55,000 rows (44 s of index wait there, 16 s at 0.23).
SEAL_PROPORTION = 0.6
# A clean stop is given this long before SIGKILL (inserts are in its WAL once acknowledged; a
# killed server comes back with every row). Milvus's own shutdown took over 10 s here.
STOP_GRACE_S = 5


class MilvusServer(LocalService):
    """The local Milvus server of one data directory (``milvus.local_server_dir``)."""

    what = "the local Milvus server"

    def pick_endpoint(self, previous: str | None) -> str:
        return str(self.data_dir / SOCKET_NAME)

    def command(self, endpoint: str) -> list[str]:
        return [*UNSHARE, sys.executable, "-m", "lookalike.milvus.server", "--data-dir", str(self.data_dir),
                "--socket", endpoint]

    def uri(self, endpoint: str) -> str:
        return f"unix:{endpoint}"

    def answers(self, endpoint: str) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(endpoint)
                return True
        except OSError:
            return False

    def refusal(self) -> str | None:
        return namespace_refusal() or _path_refusal(self.data_dir / SOCKET_NAME)


def _path_refusal(path: Path) -> str | None:
    if len(str(path).encode()) > SOCKET_PATH_MAX:
        return (f"the local Milvus server's socket path is longer than {SOCKET_PATH_MAX} bytes: "
                "set milvus.local_server_dir to a shorter path")
    return None


def namespace_refusal() -> str | None:
    """Why the local server cannot run here (no ``unshare``, or user namespaces not allowed),
    with the ways that remain; None when it can."""
    alternatives = ("Use Milvus Lite (milvus.engine: lite; slower past ~25,000 images), a Milvus server of "
                    "your own (milvus.uri: http://host:19530; `docker compose up`, see the README), or allow "
                    "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1).")
    if shutil.which("unshare") is None:
        return "the local Milvus server needs `unshare` (util-linux), which is not installed. " + alternatives
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
        return ("the local Milvus server runs in its own loopback-only network namespace, and this machine does "
                f"not allow creating one ({reason}). " + alternatives)
    return None


# -- inside the namespace ---------------------------------------------------------------------------
def _loopback_up() -> None:
    """Bring up ``lo``, the only interface of a new network namespace (ip link set lo up)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", MILVUS_PORT)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))
    except asyncio.CancelledError:  # the relay is stopping: end the connection quietly
        server_writer.close()
        client_writer.close()


async def _serve(data_dir: Path, socket_path: Path) -> int:
    from milvus import MilvusServer as PackagedServer

    _loopback_up()
    milvus = PackagedServer()
    milvus.set_base_dir(str(data_dir / "milvus"))
    milvus.listen_port = MILVUS_PORT
    milvus.config.set("common.session.ttl", SESSION_TTL_S)
    milvus.config.set("dataCoord.segment.sealProportion", SEAL_PROPORTION)
    await asyncio.to_thread(milvus.start)  # waits until its health check answers
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # as a pid namespace's init, unhandled signals are ignored
        loop.add_signal_handler(sig, stop.set)
    on_lifeline_closed(lambda: loop.call_soon_threadsafe(stop.set))
    socket_path.unlink(missing_ok=True)
    old_umask = os.umask(0o177)  # the socket is born 0600: this user only
    try:
        relay = await asyncio.start_unix_server(_relay, path=str(socket_path))
    finally:
        os.umask(old_umask)
    print(f"milvus server (pid {milvus.server_proc.pid}) relayed at {socket_path}", flush=True)
    code = 0
    async with relay:
        while not stop.is_set():
            if milvus.server_proc.poll() is not None:
                print(f"milvus exited with {milvus.server_proc.returncode}", flush=True)
                code = 1
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
        relay.close()
    socket_path.unlink(missing_ok=True)
    if code == 0:  # a clean stop: more time than the package's stop() gives (1 s)
        milvus.server_proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(milvus.server_proc.wait, STOP_GRACE_S)
    milvus.stop()
    return code


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lookalike.milvus.server",
                                     description="run inside its own namespaces (see MilvusServer.command)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--socket", required=True)
    cli = parser.parse_args()
    Path(cli.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    sys.exit(asyncio.run(_serve(Path(cli.data_dir), Path(cli.socket))))
