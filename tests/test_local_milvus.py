"""The local Milvus server Lookalike runs for large galleries: reachable through its Unix socket
only, back by itself when killed, gone with its supervisor; chosen for a large new gallery and
remembered; refused with the alternatives where namespaces are not allowed; a Lite gallery
moved to it without re-embedding."""

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys

import numpy as np
import psutil
import pytest

from lookalike.milvus.catalog import Entry
from lookalike.errors import BackendUnavailable
from lookalike.milvus.engines import choose_for_ingest, engine, gallery_catalog, open_catalog
from lookalike.milvus.migrate import _compare, migrate
from lookalike.milvus.server import SEAL_PROPORTION, MilvusServer
from lookalike.settings import MilvusSettings
from lookalike.milvus.supervisor import pid_alive

from harness.fixtures import make_settings
from harness.processes import server_pid, supervisor_pid
from harness.servers import wait_until

DIM = 1280  # the configured model's: migrate and the CLI read it from there
# What the standalone server of the `milvus` package listens on (gRPC, HTTP/metrics, its
# components): on every interface, and with no setting to change that.
MILVUS_PORTS = {19530, 19529, 9091, 13333, 53100, 19531, 21121, 21122, 21123, 21124}


def _entries(n: int, seed: int = 0, start: int = 1) -> list[Entry]:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Entry(id=start + i, key=f"k{start + i}.png", label="a" if i % 2 else "b", source=f"s/{i}.png",
                  embedding=v) for i, v in enumerate(vectors)]


def _listening() -> set[tuple[str, int, int]]:
    """Every listening TCP socket of this machine: (address, port, pid)."""
    return {(c.laddr.ip, c.laddr.port, c.pid or 0) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def _tree(pid: int) -> set[int]:
    try:
        return {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    except psutil.Error:
        return set()


def _milvus_binary(server: MilvusServer) -> int | None:
    """The Milvus binary's pid (not the Python that starts it), while it runs."""
    pid = server_pid(server)
    with contextlib.suppress(psutil.Error):
        return pid if pid and "python" not in psutil.Process(pid).name() else None
    return None


def test_the_local_server_listens_on_no_host_interface_and_heals(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "lookalike.db"), engine="local_server", timeout_s=3)
    server = MilvusServer(settings.local_server_path)
    before = _listening()
    catalog = open_catalog(settings, DIM, shared=True)  # starts it: this process holds a lease
    try:
        catalog.upsert(_entries(300))
        assert catalog.uri == f"unix:{settings.local_server_path / 'milvus.sock'}"
        assert stat.S_IMODE(os.stat(settings.local_server_path / "milvus.sock").st_mode) == 0o600
        # Segments big enough that compaction never merges them and indexes them again (server.py).
        config = (settings.local_server_path / "milvus" / "configs" / "milvus.yaml").read_text()
        assert re.search(rf"^    sealProportion: {SEAL_PROPORTION}$", config, re.M), "the seal proportion"
        processes = _tree(supervisor_pid(server))
        assert len(processes) >= 4  # supervisor, unshare, relay, the Milvus binary
        # Nothing of it listens in this machine's network: Milvus binds ~10 ports on every interface,
        # in its own namespace (what else opened meanwhile, Ray's workers say, is not its).
        opened = _listening() - before
        assert not {s for s in opened if s[2] in processes}, opened
        assert not {s for s in opened if s[1] in MILVUS_PORTS}, opened

        # SIGKILL of the Milvus binary: 503s (BackendUnavailable), and its supervisor starts another.
        victim = server_pid(server)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(BackendUnavailable):
            catalog.count()
        wait_until(lambda: _milvus_binary(server) not in (None, victim), 60, "the supervisor to restart Milvus")

        # SIGKILL of the supervisor, while that Milvus is still coming up: every process of the
        # server ends with it (the lifeline and the pid namespace), and the next client starts a
        # fresh one on the same data, with every row. (Back after a crash, Milvus waits for its
        # predecessor's session to expire, ~35 s; one such wait serves both crashes.)
        processes = _tree(supervisor_pid(server))
        os.kill(supervisor_pid(server), signal.SIGKILL)
        wait_until(lambda: not any(pid_alive(p) for p in processes), 30, "the local server's processes to end")
        catalog.close()
        fresh = open_catalog(settings, DIM, shared=True)
        wait_until(lambda: fresh.count() == 300, 90, "the restarted local server's rows")
        fresh.close()
    finally:
        catalog.close()
        server.stop()
    assert server.running_uri() is None


def test_without_user_namespaces_it_refuses_and_says_what_remains(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "unshare").write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    (fake / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    settings = MilvusSettings(uri=str(tmp_path / "lookalike.db"), engine="local_server", lite_fast_max_rows=5)
    with pytest.raises(BackendUnavailable) as info:
        MilvusServer(settings.local_server_path).start(timeout_s=30, idle_stop_s=0)
    message = info.value.message
    assert "does not allow" in message and "Operation not permitted" in message
    assert "milvus.engine: lite" in message and "docker compose" in message
    # Chosen for a large gallery, it is not: the gallery stays in Lite, and nothing is remembered.
    auto = settings.model_copy(update={"engine": "auto"})
    assert choose_for_ingest(auto, 100, DIM) == "lite" and not auto.engine_file.exists()


def test_a_gallery_already_in_lite_stays_there_when_it_grows(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "lookalike.db"), lite_server=False, lite_fast_max_rows=5)
    catalog = open_catalog(settings, DIM)
    catalog.upsert(_entries(3))
    catalog.close()
    assert choose_for_ingest(settings, 100, DIM) == "lite"  # lookalike migrate moves it; ingest does not
    assert engine(settings) == "lite" and not settings.engine_file.exists()


def test_a_large_new_gallery_goes_to_the_local_server_and_every_later_run_finds_it(tmp_path, gallery_root):
    env = {**os.environ, "LOOKALIKE_MILVUS__URI": str(tmp_path / "data" / "lookalike.db"),
           "LOOKALIKE_STORE__LOCAL_DIR": str(tmp_path / "data" / "images"),
           "LOOKALIKE_MILVUS__LITE_FAST_MAX_ROWS": "5"}  # the gallery is larger than this
    lookalike = [sys.executable, "-m", "lookalike.cli"]
    try:
        done = subprocess.run([*lookalike, "index", str(gallery_root)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        choice = json.loads((tmp_path / "data" / "lookalike.engine.json").read_text())
        assert choice["engine"] == "local_server" and "past Milvus Lite's fast size" in choice["reason"]
        assert not (tmp_path / "data" / "lookalike.db").exists()  # nothing went to Lite
        indexed = int(done.stdout.split(" indexed")[0].split()[-1])
        status = subprocess.run([*lookalike, "status"], env=env, capture_output=True, text=True, timeout=300)
        milvus = json.loads(status.stdout)["milvus"]
        assert status.returncode == 0 and milvus["count"] == indexed > 5
        assert milvus["uri"].startswith("unix:") and "warning" not in milvus
    finally:
        subprocess.run([*lookalike, "local-milvus", "stop"], env=env, timeout=120)


def test_migrate_moves_a_lite_gallery_to_the_local_server_without_re_embedding(tmp_path):
    settings = make_settings(tmp_path, milvus={"lite_server": False})
    lite = gallery_catalog(settings, shared=False)  # a gallery of the configured model and descriptor
    entries = _entries(500, seed=3)
    lite.upsert(entries)
    lite.flush()
    lite.close()
    try:
        result = migrate(settings, "local", sample=100)
        assert result["copied"] == 500 and result["count"] == {"source": 500, "target": 500}
        assert result["sampled"] == 100 and result["mismatches"] == 0 and result["to"] == "local_server"
        assert engine(settings.milvus) == "local_server"  # remembered for every later run
        moved = open_catalog(settings.milvus, DIM)
        assert moved.uri.startswith("unix:") and moved.count() == 500
        hit = moved.search(entries[42].embedding, 1)[0][0]
        assert (hit.id, hit.key, hit.label, hit.source) == (43, "k43.png", "b", "s/42.png")
        # The check that guards it: a vector that differs is counted.
        source = open_catalog(settings.milvus.model_copy(update={"engine": "lite"}), DIM)
        changed = Entry(id=43, key="k43.png", label="b", source="s/42.png", embedding=entries[0].embedding)
        moved.upsert([changed])
        assert _compare(source, moved, [42, 43, 44]) == 1
        source.close()
        moved.close()
    finally:
        MilvusServer(settings.milvus.local_server_path).stop()
