"""The embedded Milvus Lite server: one ``milvus-lite`` gRPC server per Lite data directory,
bound to 127.0.0.1, so that several processes (Serve replicas, the CLI, an ingest job) can
share a directory that Milvus Lite lets only one process open. Started, shared, restarted and
stopped by the one mechanism in ``supervisor.py``; reached through ``engines.open_catalog``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from lookalike.milvus.supervisor import LocalService, on_lifeline_closed

HOST = "127.0.0.1"


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


class LiteServer(LocalService):
    """The shared server of one Lite data directory; it takes its last port back when it can."""

    what = "the embedded Milvus Lite server"

    def pick_endpoint(self, previous: str | None) -> str:
        return str(_free_port(int(previous) if previous else None))

    def command(self, endpoint: str) -> list[str]:
        return [sys.executable, "-m", "lookalike.milvus.lite_server", "--data-dir", str(self.data_dir), "--port", endpoint,
                "--lifeline"]

    def uri(self, endpoint: str) -> str:
        return f"http://{HOST}:{endpoint}"

    def answers(self, endpoint: str) -> bool:
        try:
            with socket.create_connection((HOST, int(endpoint)), timeout=0.5):
                return True
        except OSError:
            return False


def serve_forever(data_dir: str, port: int, lifeline: bool = False) -> None:
    """The server process. SIGTERM or SIGINT (or, with ``lifeline``, its stdin closing) stop it
    cleanly: drain requests, close the DB.

    (`milvus-lite server` itself only shuts down cleanly on a KeyboardInterrupt, which its
    blocked main thread may not see; so we run the same server under our own signal wait.)
    """
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # inherited by the server's threads
    server, db, bound = start_server_in_thread(data_dir, host=HOST, port=port)
    print(f"milvus-lite server for {data_dir} on {HOST}:{bound} (pid {os.getpid()})", flush=True)
    if lifeline:
        on_lifeline_closed(lambda: os.kill(os.getpid(), signal.SIGTERM))  # sigwait takes it
    received = signal.sigwait(stop_signals)
    print(f"stopping on signal {received}", flush=True)
    server.stop(grace=5).wait()
    db.close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lookalike.milvus.lite_server")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifeline", action="store_true", help="stop when stdin closes (run by the supervisor)")
    cli = parser.parse_args()
    serve_forever(cli.data_dir, cli.port, cli.lifeline)
