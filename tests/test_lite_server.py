"""The embedded Milvus: one supervised Lite server shared by several processes, which comes
back by itself when killed and goes away when nobody uses it."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from lookalike.milvus.catalog import Catalog, Entry
from lookalike.errors import BackendUnavailable
from lookalike.milvus.engines import open_catalog
from lookalike.milvus.lite_server import LiteServer
from lookalike.milvus.supervisor import pid_alive
from lookalike.settings import MilvusSettings

from harness.processes import server_pid, supervisor_pid
from harness.servers import count_after_kill, wait_until

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from lookalike.milvus.catalog import Entry
    from lookalike.milvus.engines import open_catalog
    from lookalike.settings import MilvusSettings
    uri, start = sys.argv[1], int(sys.argv[2])
    catalog = open_catalog(MilvusSettings(uri=uri), 8)  # joins the running server
    rng = np.random.default_rng(start)
    for i in range(start, start + 200, 20):
        vecs = rng.normal(size=(20, 8)).astype(np.float32)
        catalog.upsert([Entry(id=j, key=f"{j}", label="", source="", embedding=v)
                        for j, v in zip(range(i, i + 20), vecs)])
    print(catalog.uri)
""")


def _entries(ids, dim=8, seed=0):
    vecs = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    return [Entry(id=i, key=str(i), label="", source="", embedding=v) for i, v in zip(ids, vecs)]


def test_processes_share_one_server_and_concurrent_writers_lose_nothing(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "shared.db"))
    server = LiteServer(settings.uri)
    assert server.running_uri() is None
    # A one-shot command with no server running opens the directory in-process...
    assert open_catalog(settings, 8).uri == settings.uri
    # ...while a process that shares it starts the server, which others then join.
    catalog = open_catalog(settings, 8, shared=True)
    uri = catalog.uri
    try:
        assert uri.startswith("http://127.0.0.1:") and server.running_uri() == uri
        assert open_catalog(settings, 8).uri == uri
        catalog.ensure_ready()
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, settings.uri, str(start)],
                                    stdout=subprocess.PIPE, text=True) for start in (0, 10_000, 20_000)]
        outputs = [w.communicate(timeout=120)[0].strip() for w in writers]
        assert all(w.returncode == 0 for w in writers)
        assert set(outputs) == {uri}
        catalog.flush()
        assert catalog.count() == 600
        assert catalog.existing_ids([0, 10_199, 20_100, 30_000]) == {0, 10_199, 20_100}
        catalog.close()
    finally:
        assert server.stop() is True
    assert server.running_uri() is None and not server.state_file.exists()
    # The data outlived the server: reopen it in-process.
    reopened = open_catalog(settings, 8)
    assert reopened.uri == settings.uri and reopened.count() == 600
    reopened.close()


def test_killed_server_is_restarted_and_clients_reconnect(tmp_path):
    """SIGKILL of the server: the supervisor starts it again on the same port, and a client that
    saw it die gets BackendUnavailable until then, and the same rows after."""
    settings = MilvusSettings(uri=str(tmp_path / "heal.db"), timeout_s=3)
    server = LiteServer(settings.uri)
    started = time.monotonic()
    catalog = open_catalog(settings, 8, shared=True)
    try:
        catalog.upsert(_entries(range(300)))
        assert catalog.count() == 300
        # Bounded by what this machine took to start it (and write) in this run, not by an
        # absolute time that a busy machine breaks: the restart is the same start again.
        first_start_s = time.monotonic() - started
        victim, uri = server_pid(server), catalog.uri
        count = count_after_kill(catalog, victim, max(10.0, 3 * first_start_s), "the Lite server")
        assert count == 300 and catalog.uri == uri
        assert server_pid(server) not in (None, victim)
    finally:
        catalog.close()
        server.stop()


def test_supervisor_killed_takes_the_server_with_it_and_the_next_client_starts_one(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "orphan.db"), timeout_s=3)
    server = LiteServer(settings.uri)
    catalog = open_catalog(settings, 8, shared=True)
    try:
        catalog.upsert(_entries(range(50)))
        supervisor, child, uri = supervisor_pid(server), server_pid(server), catalog.uri
        os.kill(supervisor, signal.SIGKILL)
        wait_until(lambda: not pid_alive(child), 10, "the orphaned Lite server to stop")
        catalog.close()  # as after a failed call: the next one locates the server again
        assert catalog.count() == 50
        assert supervisor_pid(server) not in (None, supervisor) and catalog.uri == uri  # same port back
    finally:
        catalog.close()
        server.stop()


LEASEHOLDER = textwrap.dedent("""
    import sys, time
    from lookalike.milvus.engines import open_catalog
    from lookalike.settings import MilvusSettings
    catalog = open_catalog(MilvusSettings(uri=sys.argv[1], local_idle_stop_s=1), 8, shared=True)
    catalog.ensure_ready()
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def test_server_stops_once_no_process_uses_it(tmp_path):
    """However the server was started (here by a process that then just exits, as a plain
    `serve run` does), it stops when its last user is gone, and takes its child along."""
    uri = str(tmp_path / "idle.db")
    server = LiteServer(uri)
    short = subprocess.Popen([sys.executable, "-c", LEASEHOLDER, uri, "0"], stdout=subprocess.PIPE, text=True)
    long = subprocess.Popen([sys.executable, "-c", LEASEHOLDER, uri, "6"], stdout=subprocess.PIPE, text=True)
    try:
        assert short.stdout.readline().strip() == "ready" and long.stdout.readline().strip() == "ready"
        supervisor, child = supervisor_pid(server), server_pid(server)
        assert supervisor and child
        short.wait(timeout=30)
        time.sleep(2)  # past the idle time: the other holder keeps it up
        assert server.running_uri() is not None
        long.wait(timeout=30)
        wait_until(lambda: not pid_alive(supervisor) and not pid_alive(child), 15, "the idle Lite server to stop")
        assert server.running_uri() is None and not server.state_file.exists()
    finally:
        for proc in (short, long):
            proc.kill()
        server.stop()


def test_second_in_process_open_is_reported_not_hung(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "locked.db"), lite_server=False, timeout_s=5)
    first = open_catalog(settings, 8)
    first.ensure_ready()
    code = ("from lookalike.milvus.engines import open_catalog; from lookalike.settings import MilvusSettings;"
            f"open_catalog(MilvusSettings(uri={settings.uri!r}, lite_server=False, timeout_s=5), 8).count()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "BackendUnavailable" in result.stderr
    first.close()


def test_server_that_cannot_start_is_a_clear_error(tmp_path):
    holder = open_catalog(MilvusSettings(uri=str(tmp_path / "held.db"), lite_server=False), 8)
    holder.ensure_ready()  # this process holds the directory's lock
    with pytest.raises(BackendUnavailable) as info:
        LiteServer(tmp_path / "held.db").start(timeout_s=30, idle_stop_s=0)
    assert "did not start" in info.value.message
    holder.close()


def test_lite_channels_are_each_catalogs_own_and_send_no_pings_lite_refuses(tmp_path):
    """Milvus Lite's gRPC server keeps gRPC's default ping policy (none between calls, none more
    often than every 5 minutes) and answers two of pymilvus's 10-second idle pings with GOAWAY
    ``too_many_pings``; a call sent then fails (seen in CI). So each catalog's channel is its
    own — a failure's fresh client is a fresh channel — and to Lite it pings only as permitted."""
    settings = MilvusSettings(uri=str(tmp_path / "pings.db"))
    one, two = open_catalog(settings, 8), open_catalog(settings, 8)
    try:
        handlers = [c.connection.client._handler for c in (one, two)]  # pymilvus's per-channel object
        assert handlers[0] is not handlers[1]
        options = handlers[0]._grpc_options
        assert options["grpc.keepalive_permit_without_calls"] == 0
        assert options["grpc.keepalive_time_ms"] >= 300_000
        one.connection.close()
        assert one.connection.client._handler is not handlers[0]
    finally:
        one.close()
        two.close()
    server = Catalog(MilvusSettings(uri="http://127.0.0.1:1"), 8)  # a Milvus server permits pymilvus's pings
    assert server.connection.grpc_options == {}


def test_a_stopped_process_that_nobody_reaps_yet_counts_as_stopped():
    """`stop()` (and every service stop) returns once the process has exited, not when whoever
    reaps it does: a detached supervisor's zombie waited 1.2 s here for init, and a container
    whose first process never reaps would keep the stop waiting past its whole timeout."""
    from lookalike.milvus.supervisor import stop_process

    # A child that dies on SIGTERM, under a parent that never waits for it: it stays a zombie.
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        print(child, flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        started = time.monotonic()
        stop_process(child, timeout_s=60.0)
        took = time.monotonic() - started
        assert not pid_alive(child)  # exited (a zombie counts as gone)
        assert took < 30, f"stop_process waited {took:.1f}s for a zombie to be reaped"
    finally:
        parent.kill()
        parent.wait()
