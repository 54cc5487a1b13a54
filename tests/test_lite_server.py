"""The shared local Milvus Lite server: several processes, one data directory."""

import subprocess
import sys
import textwrap

import pytest

from lookalike.catalog import Catalog, resolve_uri
from lookalike.errors import BackendUnavailable
from lookalike.lite_server import LiteServer
from lookalike.settings import MilvusSettings

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from lookalike.catalog import Catalog, Entry
    from lookalike.settings import MilvusSettings
    uri, start = sys.argv[1], int(sys.argv[2])
    catalog = Catalog.open(MilvusSettings(uri=uri), 8)  # joins the running server
    rng = np.random.default_rng(start)
    for i in range(start, start + 200, 20):
        vecs = rng.normal(size=(20, 8)).astype(np.float32)
        catalog.upsert([Entry(id=j, key=f"{j}", label="", source="", embedding=v)
                        for j, v in zip(range(i, i + 20), vecs)])
    print(catalog.uri)
""")


def test_processes_share_one_server_and_concurrent_writers_lose_nothing(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "shared.db"))
    server = LiteServer(settings.uri)
    assert server.running_uri() is None
    # A one-shot command with no server running opens the directory in-process...
    assert resolve_uri(settings, shared=False)[0] == settings.uri
    # ...while a process that shares it starts the server, which others then join.
    uri, _ = resolve_uri(settings, shared=True)
    try:
        assert uri.startswith("http://127.0.0.1:") and server.running_uri() == uri
        assert resolve_uri(settings, shared=False)[0] == uri
        Catalog.open(settings, 8).ensure_ready()
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, settings.uri, str(start)],
                                    stdout=subprocess.PIPE, text=True) for start in (0, 10_000, 20_000)]
        outputs = [w.communicate(timeout=120)[0].strip() for w in writers]
        assert all(w.returncode == 0 for w in writers)
        assert set(outputs) == {uri}
        catalog = Catalog.open(settings, 8)
        catalog.flush()
        assert catalog.count() == 600
        assert catalog.existing_ids([0, 10_199, 20_100, 30_000]) == {0, 10_199, 20_100}
        catalog.close()
    finally:
        assert server.stop() is True
    assert server.running_uri() is None and not server.state_file.exists()
    # The data outlived the server: reopen it in-process.
    reopened = Catalog.open(settings, 8, shared=False)
    assert reopened.uri == settings.uri and reopened.count() == 600
    reopened.close()


def test_second_in_process_open_is_reported_not_hung(tmp_path):
    settings = MilvusSettings(uri=str(tmp_path / "locked.db"), lite_server=False, timeout_s=5)
    first = Catalog.open(settings, 8)
    first.ensure_ready()
    code = ("from lookalike.catalog import Catalog; from lookalike.settings import MilvusSettings;"
            f"Catalog.open(MilvusSettings(uri={settings.uri!r}, lite_server=False, timeout_s=5), 8).count()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "BackendUnavailable" in result.stderr
    first.close()


def test_server_that_cannot_start_is_a_clear_error(tmp_path):
    holder = Catalog.open(MilvusSettings(uri=str(tmp_path / "held.db"), lite_server=False), 8)
    holder.ensure_ready()  # this process holds the directory's lock
    with pytest.raises(BackendUnavailable) as info:
        LiteServer(tmp_path / "held.db").start(timeout_s=30)
    assert "did not start" in info.value.message
    holder.close()
