"""The in-process indexer (lookalike index): counts, skips with reasons, idempotent re-runs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lookalike.indexing.indexer import index_items
from lookalike.milvus.engines import open_catalog
from lookalike.indexing.sources import iter_folder
from lookalike.storage.store import make_store

from harness.fixtures import REPO, make_settings
from harness.images import collage, messy_source


def test_index_folder_with_bad_files_duplicates_and_rerun(tmp_path, gallery_root, encoder):
    source = tmp_path / "source"
    expected_skips, copy, _ = messy_source(source, gallery_root)
    n_good = sum(1 for p in gallery_root.rglob("*") if p.is_file())

    settings = make_settings(tmp_path, milvus={"lite_server": False})
    catalog = open_catalog(settings.milvus, encoder.dim)
    store = make_store(settings.store)
    items = list(iter_folder(source))
    assert len(items) == n_good + len(expected_skips) + 1
    assert {i.label for i in items} == {"circles", "squares", "triangles", "stripes", "checkers", "rings", "broken"}

    report = index_items(items, settings, encoder=encoder, catalog=catalog, store=store)
    assert report.indexed == n_good and report.total == len(items)
    # Sequential and in path order: the copy (circles/...) comes first, the original is the duplicate.
    assert report.duplicates == [{"path": str(source / "rings" / "rings_0.png"), "same_as": str(copy)}]
    assert {s["path"].rsplit("/", 1)[1]: s["code"] for s in report.skipped} == expected_skips
    assert catalog.count() == n_good
    assert len(list(store.keys())) == n_good

    # Search finds each indexed image itself first, with its label.
    path = source / "triangles" / "triangles_3.jpg"
    from lookalike.embedding.images import prepare

    prepared = prepare(path.read_bytes(), encoder.input_size, settings.images)
    hit = catalog.search(encoder.encode(prepared.pixels[None]), 3)[0][0]
    assert hit.id == prepared.id and hit.label == "triangles" and hit.source == str(path)
    assert store.get(hit.key) == path.read_bytes()

    again = index_items(iter_folder(source), settings, encoder=encoder, catalog=catalog, store=store)
    assert again.indexed == 0 and again.already_present == n_good
    assert catalog.count() == n_good
    catalog.close()


def test_the_lookup_of_stored_ids_does_not_wait_for_its_own_writes(tmp_path, gallery_root, encoder):
    """The look-up and the writes share one Milvus client here (as in the fused ingest actor). At
    the default level, Session, a client's read right after its own write waits for the server's
    next time tick (~200 ms a batch: a third of a 200,000-image ingest into the local server);
    the look-up asks for Bounded, what earlier runs stored, in every query it sends."""
    settings = make_settings(tmp_path, milvus={"lite_server": False}, model={"batch_size": 8})
    catalog = open_catalog(settings.milvus, encoder.dim).ensure_ready()
    client, levels = catalog.connection.client, []
    query = client.query

    def recorded(*args, **kwargs):
        levels.append(kwargs.get("consistency_level"))
        return query(*args, **kwargs)

    client.query = recorded  # the pymilvus client's own method, called with what the catalog sends
    report = index_items(iter_folder(gallery_root), settings, encoder=encoder, catalog=catalog,
                         store=make_store(settings.store))
    assert len(levels) >= 4 and set(levels) == {"Bounded"}, levels  # a look-up a batch, each after a write
    assert report.indexed == 30 and catalog.count() == 30
    catalog.close()


def test_cli_index_search_status(tmp_path, gallery_root):
    env_settings = {"LOOKALIKE_MILVUS__URI": str(tmp_path / "cli.db"),
                    "LOOKALIKE_STORE__LOCAL_DIR": str(tmp_path / "images")}
    import os

    env = {**os.environ, **env_settings}
    cli = [sys.executable, "-m", "lookalike.cli"]
    report = tmp_path / "report.json"
    run = subprocess.run([*cli, "index", str(gallery_root), "--report", str(report)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "30 indexed" in run.stdout
    data = json.loads(report.read_text())
    assert data["indexed"] == 30 and data["skipped"] == 0
    assert data["images_per_s"] == pytest.approx(data["indexed"] / data["seconds"], rel=0.02, abs=0.01)
    assert set(data["stage_seconds"]) >= {"read", "decode", "embed", "write"}

    query = gallery_root / "stripes" / "stripes_2.png"
    run = subprocess.run([*cli, "search", str(query), "-k", "3"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    hits = json.loads(run.stdout)
    assert hits[0]["source"] == str(query) and hits[0]["label"] == "stripes"
    assert hits[0]["url"].startswith("/images/") and np.isclose(hits[0]["score"], 1.0, atol=1e-3)

    both = tmp_path / "collage.png"  # --box: a part of the query
    both.write_bytes(collage(gallery_root / "circles" / "circles_1.jpg", query))
    for box, want in (("170,0,160,160", query), ("0.0,0.0,0.48,1.0", gallery_root / "circles" / "circles_1.jpg")):
        run = subprocess.run([*cli, "search", str(both), "-k", "1", "--box", box], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and json.loads(run.stdout)[0]["source"] == str(want), (box, run.stderr)
    run = subprocess.run([*cli, "search", str(both), "--box", "1,2,3"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2 and "--box: a box is x,y,w,h" in run.stderr

    run = subprocess.run([*cli, "status"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    status = json.loads(run.stdout)
    assert run.returncode == 0 and status["milvus"]["count"] == 30 and status["milvus"]["healthy"]


def test_cli_duplicates_finds_a_planted_copy(tmp_path, gallery_root):
    import os
    import shutil

    from PIL import Image

    folder = tmp_path / "library" / "shapes"
    folder.mkdir(parents=True)
    for label, i in (("circles", 0), ("squares", 1), ("rings", 2)):
        shutil.copy(next((gallery_root / label).glob(f"{label}_{i}.*")), folder)
    original = next(folder.glob("rings_2.*"))
    Image.open(original).convert("RGB").resize((300, 300)).save(folder / "rings_copy.png")
    env = {**os.environ, "LOOKALIKE_MILVUS__URI": str(tmp_path / "dups.db"),
           "LOOKALIKE_STORE__LOCAL_DIR": str(tmp_path / "images")}
    cli = [sys.executable, "-m", "lookalike.cli"]
    run = subprocess.run([*cli, "index", str(tmp_path / "library")], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([*cli, "duplicates", "--threshold", "0.95"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["images"] == 4 and found["groups"] == 1 and found["duplicates"] == 1
    assert {i["source"] for i in found["items"][0]["images"]} == {str(original), str(folder / "rings_copy.png")}
    assert "scanned 4 of 4 images" in run.stderr
