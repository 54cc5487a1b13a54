"""The Ray Data ingest: counts and report, idempotent re-runs, resume after a kill, S3 sources,
the same vector as the served query, and `ray job submit` against a local head node."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from ingest.pipeline import run_ingest
from lookalike.embedding.images import content_id
from lookalike.milvus.engines import gallery_catalog, open_catalog
from lookalike.milvus.lite_server import LiteServer
from lookalike.settings import S3Settings
from lookalike.storage.store import S3Store, make_store
from lookalike.indexing.writer import GalleryWriter

from harness.fixtures import REPO, make_settings
from harness.images import CLASSES, draw, encode, make_gallery, messy_source
from harness.servers import HOST, free_ports, wait_until


def _count(settings) -> int:
    # The gallery's catalog: one opened without the descriptor would create the collection
    # without it if it came first, and the job would then refuse it.
    catalog = gallery_catalog(settings, shared=False)
    try:
        return catalog.count()
    finally:
        catalog.close()


def test_ingest_folder_report_and_idempotent_rerun(ray_cluster, tmp_path, gallery_root):
    source = tmp_path / "source"
    expected_skips, copy, original = messy_source(source, gallery_root)
    n_good = 30
    settings = make_settings(tmp_path, ingest={"read_batch_size": 8, "write_batch_size": 8})

    report = run_ingest(str(source), settings, report_path=str(tmp_path / "report.json"))
    assert report.total == n_good + len(expected_skips) + 1
    assert report.indexed == n_good and report.already_present == 0
    # The first path (in sorted order) is the one indexed; later copies are duplicates of it.
    assert report.duplicates == [{"path": str(original), "same_as": str(copy)}]
    data = json.loads((tmp_path / "report.json").read_text())
    assert {Path(s["path"]).name: s["code"] for s in data["skipped_files"]} == expected_skips
    assert all(s["message"] for s in data["skipped_files"])
    assert data["indexed"] == n_good
    assert data["images_per_s"] == pytest.approx(data["indexed"] / data["seconds"], rel=0.02, abs=0.01)
    assert set(data["stage_seconds"]) >= {"read", "decode", "lookup", "embed", "write", "index"}
    assert data["run"]["count"] == n_good and data["run"]["index"]["type"] == "HNSW"
    assert LiteServer(settings.milvus.uri).running_uri() is None  # it stopped the server it started
    assert len(list(make_store(settings.store).keys())) == n_good

    again = run_ingest(str(source), settings, report_path=str(tmp_path / "again.json"))
    assert again.indexed == 0 and again.already_present == n_good and len(again.duplicates) == 1
    assert _count(settings) == n_good


def test_ingested_image_gives_the_served_query_vector(ray_cluster, api, tmp_path):
    """Ingest (Ray Data actors) and search (Serve Embedder) share one pipeline: same bytes,
    same vector, so the ingested image comes back at distance ~0."""
    folder = tmp_path / "new"
    (folder / "hearts").mkdir(parents=True)
    images = []
    for i in range(3):
        path = folder / "hearts" / f"h{i}.jpg"
        path.write_bytes(encode(draw("triangle", (200, 30, 120), seed=5000 + i, size=300), "JPEG", quality=88))
        images.append(path)
    report = run_ingest(str(folder), api.settings, report_path=str(tmp_path / "r.json"))
    assert report.indexed == 3
    with httpx.Client(base_url=api.url, timeout=60) as client:
        for path in images:
            r = client.post("/api/v1/search", files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                            params={"k": 1})
            hit = r.json()["results"][0]
            assert hit["id"] == str(content_id(path.read_bytes())) and hit["label"] == "hearts"
            assert hit["distance"] < 1e-4
        for path in images:  # leave the shared app as it was
            client.delete(f"/api/v1/images/{content_id(path.read_bytes())}", headers={"X-API-Key": api.key})


def test_the_job_writes_region_rows_where_the_gallery_keeps_them(ray_cluster, api_regions, tmp_path):
    """With model.regions on, the Ray Data job embeds each image's parts too (the stages' region
    columns through its tasks and actors): a new image's top-left quarter finds it, by that part."""
    from PIL import Image

    folder = tmp_path / "grids"
    (folder / "grids").mkdir(parents=True)
    paths = []
    shapes = list(CLASSES.values())
    for i in range(2):  # 4 x 4 grids of small shapes: no gallery image (one shape each) looks like a quarter
        grid = Image.new("RGB", (320, 320), (255, 255, 255))
        for j in range(16):
            shape, colour = shapes[(i + j * 5) % len(shapes)]
            grid.paste(draw(shape, colour, seed=7000 + 100 * i + j, size=80), (80 * (j % 4), 80 * (j // 4)))
        paths.append(folder / "grids" / f"g{i}.png")
        paths[-1].write_bytes(encode(grid))
    report = run_ingest(str(folder), api_regions.settings, report_path=str(tmp_path / "r.json"))
    assert report.indexed == 2
    with api_regions.client() as client:
        for path in paths:
            quarter = encode(Image.open(path).convert("RGB").crop((0, 0, 160, 160)))
            hit = client.post("/api/v1/search", files={"image": ("q.png", quarter, "image/png")},
                              params={"k": 1}).json()["results"][0]
            assert (hit["id"], hit["region"]) == (str(content_id(path.read_bytes())), "0,0,0.5,0.5")
        for path in paths:  # leave the shared app as it was
            client.delete(f"/api/v1/images/{content_id(path.read_bytes())}")


def test_ingest_from_s3(ray_cluster, tmp_path, s3_server):
    s3 = {"endpoint": s3_server.endpoint, "access_key": s3_server.access_key, "secret_key": s3_server.secret_key}
    source_store = S3Store(S3Settings(**s3, bucket="photos"))
    uploaded = {}
    for c, (label, (shape, colour)) in enumerate(list(CLASSES.items())[:3]):
        for i in range(3):
            data = encode(draw(shape, colour, seed=9000 + 10 * c + i), "PNG")
            key = f"2026/{label}/{i}.png"
            source_store.put(key, data, "image/png")
            uploaded[key] = data
    source_store.put("2026/notes/readme.txt", b"not an image", "text/plain")
    source_store.put("2026/.trash/old.png", uploaded["2026/circles/0.png"], "image/png")

    # Into another bucket: the originals are copied under content-addressed keys.
    settings = make_settings(tmp_path / "copy", store={"backend": "s3", "s3": {**s3, "bucket": "gallery-copy"}})
    report = run_ingest("s3://photos/2026", settings, report_path=str(tmp_path / "copy.json"))
    assert report.total == 9 and report.indexed == 9 and not report.skipped
    catalog = open_catalog(settings.milvus, 1280)
    entry = catalog.get_one(content_id(uploaded["2026/squares/1.png"]))
    assert entry.label == "squares" and entry.source == "2026/squares/1.png" and entry.key.endswith(".png")
    assert make_store(settings.store).get(entry.key) == uploaded["2026/squares/1.png"]
    # A copy the service made is its own: deleting the entry deletes it.
    assert GalleryWriter(catalog, make_store(settings.store)).remove(entry.id)[1] is True
    assert entry.key not in set(make_store(settings.store).keys())
    catalog.close()

    # From the store's own bucket: nothing is uploaded, entries point at the existing objects.
    settings = make_settings(tmp_path / "in-place", store={"backend": "s3", "s3": {**s3, "bucket": "photos"}})
    report = run_ingest("s3://photos/2026", settings, report_path=str(tmp_path / "in-place.json"))
    assert report.indexed == 9
    catalog = open_catalog(settings.milvus, 1280)
    assert catalog.get_one(content_id(uploaded["2026/triangles/2.png"])).key == "2026/triangles/2.png"
    # Deleting an in-place entry unlinks it and keeps the user's original...
    writer = GalleryWriter(catalog, make_store(settings.store))
    assert writer.remove(content_id(uploaded["2026/triangles/2.png"]))[1] is False
    assert not catalog.existing_ids([content_id(uploaded["2026/triangles/2.png"])])
    assert sorted(source_store.keys()) == sorted([*uploaded, "2026/notes/readme.txt", "2026/.trash/old.png"])
    # ...unless the settings say to delete originals the service did not upload.
    writer = GalleryWriter(catalog, make_store(settings.store), delete_foreign_originals=True)
    assert writer.remove(content_id(uploaded["2026/circles/0.png"]))[1] is True
    assert "2026/circles/0.png" not in set(source_store.keys())
    catalog.close()


def _ingest_cmd(source: Path, report: Path) -> list[str]:
    return [sys.executable, "-m", "ingest", str(source), "--report", str(report)]


def test_killed_midway_then_rerun_loses_and_duplicates_nothing(tmp_path):
    source = tmp_path / "many"
    files = make_gallery(source, per_class=40)  # 240 images
    n = sum(len(v) for v in files.values())
    env = {**os.environ, "LOOKALIKE_MILVUS__URI": str(tmp_path / "data" / "m.db"),
           "LOOKALIKE_STORE__LOCAL_DIR": str(tmp_path / "data" / "images"),
           "LOOKALIKE_INGEST__READ_BATCH_SIZE": "4", "LOOKALIKE_INGEST__WRITE_BATCH_SIZE": "4",
           "LOOKALIKE_MODEL__BATCH_SIZE": "4"}
    env.pop("RAY_ADDRESS", None)
    settings = make_settings(tmp_path / "data", milvus={"uri": str(tmp_path / "data" / "m.db")})
    lite = LiteServer(settings.milvus.uri)
    proc = subprocess.Popen(_ingest_cmd(source, tmp_path / "first.json"), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: lite.running_uri() is not None and 0 < _count(settings), 240, "first writes", proc)
        count_at_kill = _count(settings)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        proc.wait(timeout=30)
        assert count_at_kill < n, "the job finished before it could be killed"

        rerun = subprocess.run(_ingest_cmd(source, tmp_path / "second.json"), env=env, cwd=REPO,
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        report = json.loads((tmp_path / "second.json").read_text())
        assert report["run"]["count"] == n  # every image exactly once: none lost, none twice
        assert report["indexed"] + report["already_present"] == n
        assert report["already_present"] >= count_at_kill
        assert "ingest: " in rerun.stdout and "indexed" in rerun.stdout
        assert len(list(make_store(settings.store).keys())) == n
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        lite.stop()


def test_ray_job_submit_against_a_local_head_node(tmp_path, gallery_root):
    # Every port explicit: the session's own Ray cluster already holds the default agent ports.
    gcs_port, dashboard_port, agent_port, agent_grpc, env_agent, metrics, client = free_ports(7)
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # As in an activated virtualenv: the job's `python` must be this environment's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head_log = (tmp_path / "head.log").open("wb")  # what the head said, kept with the test's files on a failure
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=2", "--include-dashboard=true",
         f"--dashboard-host={HOST}", f"--dashboard-port={dashboard_port}", f"--temp-dir={temp_dir}",
         f"--dashboard-agent-listen-port={agent_port}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
         f"--ray-client-server-port={client}",
         "--disable-usage-stats"],
        env=env, stdout=head_log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://{HOST}:{dashboard_port}"
    try:
        # Ray's token auth (lookalike/ray_env.py): the dashboard answers only with the cluster's token.
        # The bounds are for a head that hangs: a live one ends the waits as soon as it answers
        # (seconds here; more than 120 s once, at a load of 41 on two cores).
        token = {"Authorization": f"Bearer {Path(env['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"}
        wait_until(lambda: httpx.get(f"{address}/api/version", headers=token, timeout=2).status_code == 200, 600,
                   "Ray head", head)
        assert httpx.get(f"{address}/api/version", timeout=5).status_code in (401, 403)
        runtime_env = {"env_vars": {"LOOKALIKE_MILVUS__URI": str(tmp_path / "job" / "m.db"),
                                    "LOOKALIKE_STORE__LOCAL_DIR": str(tmp_path / "job" / "images")}}
        report = tmp_path / "job-report.json"
        cmd = [ray_bin, "job", "submit", f"--address={address}", f"--working-dir={REPO}",
               f"--runtime-env-json={json.dumps(runtime_env)}", "--", "python", "-m", "ingest", str(gallery_root),
               "--report", str(report)]
        def submitted():  # the dashboard answers before the node's job agent has registered
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            return None if "No available agent" in done.stderr else done

        submit = wait_until(submitted, 600, "ray job submit", interval=2, give_up_on=(subprocess.TimeoutExpired,))
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "succeeded" in submit.stdout and "ingest: 30 indexed" in submit.stdout
        data = json.loads(report.read_text())
        assert data["indexed"] == 30 and data["run"]["count"] == 30
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and every process it started
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        head_log.close()
        logs = Path(temp_dir) / "session_latest" / "logs"
        for name in ("dashboard.log", "gcs_server.out", "raylet.out"):
            if (logs / name).is_file():
                shutil.copy(logs / name, tmp_path / name)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("spec", ["/no/such/folder", "s3://"])
def test_bad_source_is_a_clear_error(spec):
    result = subprocess.run([sys.executable, "-m", "ingest", spec], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("ingest: ")


def test_without_ray_address_the_job_starts_its_own_cluster(monkeypatch):
    """Not the one a `ray start` recorded in /tmp/ray (address=None would join it: a suite
    beside this one, in another network namespace, made the scale smoke run hang)."""
    import ray

    from ingest import pipeline

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    pipeline.connect_ray()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    pipeline.connect_ray()
    assert [c["address"] for c in calls] == ["local", "ray://head:10001"]


def test_the_embedding_pool_fits_the_cluster():
    """By default one actor per GPU, the stages separate; on CPUs alone the stages fused, one
    actor for every free CPU, each on one inference thread; separate on CPUs alone, about three for every
    four free CPUs, asking no more than leaves a read task and a writer room; never more actors
    than the images fill batches for; what the settings name, as named."""
    from ingest.pipeline import WRITE_ACTOR_CPUS, EmbedPool, embed_pool
    from lookalike.settings import Settings

    settings = Settings()  # the default: auto
    batch, ing = settings.model.batch_size, settings.ingest
    assert embed_pool(settings, 10_000, gpus=0, free_cpus=2) == EmbedPool(2, 1.0, 0.0, 1, fused=True)
    assert embed_pool(settings, 10_000, gpus=0, free_cpus=16) == EmbedPool(16, 1.0, 0.0, 1, fused=True)
    assert embed_pool(settings, batch, gpus=0, free_cpus=16).actors == 1  # one batch: one model loaded
    assert embed_pool(settings, 10_000, gpus=0, free_cpus=0.5) == EmbedPool(1, 0.5, 0.0, 1, fused=True)
    assert embed_pool(settings, 10_000, gpus=4, free_cpus=16) == EmbedPool(4, ing.embed_actor_cpus, 1.0, 0)
    named = settings.with_overrides(ingest={"embed_actors": 3, "embed_actor_cpus": 0.5}, model={"num_threads": 2})
    assert embed_pool(named, 10, gpus=0, free_cpus=16) == EmbedPool(3, 0.5, 0.0, 2, fused=True)
    separate = settings.with_overrides(ingest={"stages": "separate"})
    two = embed_pool(separate, 10_000, gpus=0, free_cpus=2)
    assert two == EmbedPool(2, 0.75, 0.0, 1)
    assert ing.read_task_cpus + two.stage_cpus + WRITE_ACTOR_CPUS * ing.write_actors <= 2
    assert embed_pool(separate, 10_000, gpus=0, free_cpus=16) == EmbedPool(12, 1.0, 0.0, 1)
    fused = settings.with_overrides(ingest={"stages": "fused"})
    assert embed_pool(fused, 10_000, gpus=4, free_cpus=16) == EmbedPool(4, ing.embed_actor_cpus, 1.0, 0, fused=True)


def test_on_cpus_alone_the_stages_run_fused_in_one_pool(ray_cluster):
    """The plan Ray Data runs: by default (``ingest.stages`` auto) on a cluster without GPUs (the
    suite's), one actor pool that reads, embeds and writes; the three stages apart when asked."""
    from ingest.pipeline import build_dataset
    from lookalike.indexing.sources import Source
    from lookalike.settings import Settings

    items, source = [{"path": "a.jpg", "label": "x"}] * 100, Source.parse(str(REPO))
    fused = repr(build_dataset(source, items, Settings()))
    assert "MapBatches(FusedActor)" in fused and "Embed" not in fused and "read_prepare" not in fused, fused
    separate = repr(build_dataset(source, items, Settings().with_overrides(ingest={"stages": "separate"})))
    assert all(f"MapBatches({stage})" in separate for stage in ("read_prepare", "Embed", "WriteActor")), separate
    assert "FusedActor" not in separate
