"""Smoke runs of every benchmark on tiny sizes, so that none of them can rot. They run the real
parts (the model, Milvus Lite and the Milvus server, the Serve application, the baseline server)
and check what each writes; the figures themselves come from the long runs (docs/benchmarks.md).
The benchmarks' own checks, beside them: `make test` runs them first, on the fixtures the tests
share (harness/fixtures.py); no test under tests/ imports a benchmark."""

from __future__ import annotations

import argparse
import json
import subprocess

import numpy as np
import pytest

from benchmarks import duplicate_scan, embedding, http_load, profile, quality, rebuild_load, summary, vector_search
from benchmarks.common import Results, markdown_table
from harness import mixed_load
from harness.load import latency_stats, payloads, require_loopback, run_load
from harness.processes import server_pid
from harness.serve import direct_ingress_urls
from lookalike.quality.evaluation import PARTS, PLANTED
from lookalike.settings import ImageLimits


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One results folder for the module: the last test builds the summary page from it."""
    return tmp_path_factory.mktemp("bench-results")


def test_latency_stats_and_tables():
    stats = latency_stats([0.001 * i for i in range(1, 101)])
    assert stats["n"] == 100 and stats["p50_ms"] == pytest.approx(50.5) and stats["p99_ms"] == pytest.approx(99.01)
    table = markdown_table([{"a": 1.23456, "b": None}], ["a", "b"], ["A", "B"])
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.23 | – |"]


def test_load_is_only_ever_sent_to_loopback():
    require_loopback("http://127.0.0.1:8000/x")
    require_loopback("http://localhost:8000/x")
    for url in ("http://192.0.2.1/x", "http://[2001:db8::1]/x"):  # documentation ranges: refused unsent
        with pytest.raises(ValueError):
            require_loopback(url)
        with pytest.raises(ValueError):  # each load generator asks first
            run_load(url, [{}], clients=1, seconds=0.1)
        with pytest.raises(ValueError):
            mixed_load.run(url, [b""], clients=1, seconds=0.1)


def test_earlier_code_runs_only_alone_on_loopback_and_from_its_own_commit(monkeypatch, tmp_path):
    """The earlier code's targets run a past commit, whose replicas bind every interface: refused
    where any interface but loopback exists (checked before anything starts), and where the
    commit is missing. The commit's files are exported as they were."""
    head = subprocess.run(["git", "-C", str(http_load.REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    monkeypatch.setattr(http_load, "EARLIER", {"before issue 26": head})
    monkeypatch.setattr(http_load.socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0")])
    refusal = http_load.earlier_code_refusal(["lookalike", "before issue 26"])
    assert "eth0" in refusal and "unshare -rn" in refusal
    with pytest.raises(SystemExit):
        http_load.main(["--targets", "before issue 26", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(http_load.socket, "if_nameindex", lambda: [(1, "lo")])
    assert http_load.earlier_code_refusal(["lookalike", "before issue 26"]) is None
    assert http_load.earlier_code_refusal(["lookalike"]) is None
    monkeypatch.setattr(http_load, "EARLIER", {"before issue 26": "0" * 40})
    assert "lacks" in http_load.earlier_code_refusal(["before issue 26"])
    code = http_load.export_commit(head, tmp_path / "earlier")
    shown = subprocess.run(["git", "-C", str(http_load.REPO), "show", f"{head}:benchmarks/http_load.py"],
                           capture_output=True, text=True, check=True).stdout
    assert (code / "benchmarks" / "http_load.py").read_text() == shown
    models = sorted((http_load.REPO / "data" / "models").glob("*"))
    assert [p.resolve() for p in sorted((code / "data" / "models").iterdir())] == [p.resolve() for p in models]


def test_embedding_benchmark(out, gallery_root):
    results = embedding.main(["--models", "efficientnet-lite0", "--batches", "1,2", "--seconds", "0.2",
                              "--images", "4", "--gallery", str(gallery_root), "--out", str(out)])
    rows = results.data["rows"]
    assert rows[0]["runtime"] == embedding.ORIGINAL and rows[0]["speedup"] == 1.0
    assert {r["batch"] for r in rows} == {1, 2} and all(r["img_per_s"] > 0 for r in rows)
    assert (out / "embedding-efficientnet-lite0.png").stat().st_size > 1000
    assert "| efficientnet-lite0 |" in (out / "embedding.md").read_text()


def test_clip_towers_benchmark(out, gallery_root, tmp_path):
    """On a tiny architecture registered with open_clip here (the long run: ViT-B-32)."""
    import open_clip

    from benchmarks import clip_towers

    config = tmp_path / "Bench-Tiny-CLIP.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                                  "head_width": 16, "patch_size": 16},
                                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1,
                                               "layers": 1}}))
    open_clip.add_model_config(config)
    results = clip_towers.main(["--arch", "Bench-Tiny-CLIP", "--batches", "1,2", "--seconds", "0.1", "--images", "4",
                                "--gallery", str(gallery_root), "--out", str(out)])
    rows = results.data["rows"]
    assert {(r["tower"], r["batch"]) for r in rows} >= {("image", 1), ("image", 2), ("text", 1), ("text", 2)}
    assert all(r["per_s"] > 0 for r in rows) and rows[-1]["model"] == "efficientnet-lite0"
    assert "| Bench-Tiny-CLIP | text |" in (out / "clip-towers.md").read_text()


def test_words_benchmark(out, gallery_root):
    from benchmarks import words

    results = words.main(["--words", "bird,car", "--gallery", str(gallery_root), "--out", str(out)])
    rows = {r["word"]: r for r in results.data["rows"]}
    assert rows["bird"]["classes"] == 59 and set(rows) == {"bird", "car", "**mean**"}
    assert all(0 <= r["p_at_10"] <= 1 for r in rows.values())
    assert all(r["refused"] for r in results.data["refused"])  # stars, flags, arrows: no ImageNet class
    assert "| bird | birds | 59 |" in (out / "words.md").read_text()


@pytest.fixture(scope="module")
def mixtures(encoder, gallery_root):
    from benchmarks.common import embed_files

    real, _ = embed_files(sorted(str(p) for p in gallery_root.glob("*/*")), encoder,
                          ImageLimits(max_bytes=10**7, max_pixels=10**7))
    return vector_search.Mixtures(real, 64, neighbours=5)


def test_mixtures_keep_the_real_structure_and_truth_is_exact(mixtures):
    a, b = mixtures.chunk(0, 500), mixtures.chunk(0, 500)
    assert np.array_equal(a, b) and not np.array_equal(a, mixtures.chunk(1, 500))  # deterministic per chunk
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    q = mixtures.queries(5)
    truth = vector_search.TopK(q, k=3)
    truth.add(a[:200], np.arange(200))
    truth.add(a[200:], np.arange(200, 500))
    assert [set(r) for r in truth.ids.tolist()] == [set(np.argsort(-(x @ a.T))[:3]) for x in q]
    # Real structure: a vector's nearest neighbours are much closer than random pairs.
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    assert np.mean(np.sort(sims, axis=1)[:, -1]) > np.mean(sims) + 0.2


def _tiny(index_types):
    return argparse.Namespace(index_types=index_types, flat_queries=5, clients=[1, 2], qps_seconds=0.3)


@pytest.mark.milvus_server
def test_vector_search_benchmark_on_the_server_and_on_lite(tmp_path, out, mixtures, milvus_server):
    queries = mixtures.queries(12)
    # Each index type once (a build on the server costs seconds of flushing and loading).
    runs = [vector_search.run_backend("milvus-server", milvus_server.uri, mixtures, 3000, queries,
                                      _tiny(["HNSW"]), lambda: server_pid(milvus_server.service) or 0,
                                      milvus_server.service.data_dir)]
    lite = vector_search.LiteDir(tmp_path)
    with lite as uri:
        runs.append(vector_search.run_backend("milvus-lite", uri, mixtures, 3000, queries, _tiny(["FLAT", "HNSW"]),
                                              lite.pid, lite.server.data_dir))
    assert lite.pid() == 0  # the Lite server it started is gone
    for run in runs:
        for index_type, entry in run["index"].items():
            assert entry["built"] == index_type, (run["backend"], entry["built"])  # measured what it names
            assert entry["rss_mib"] > 0 and entry["build_s"] >= 0
            assert entry["disk_mib"] > 0 and run["disk_after_insert_mib"] > 0  # the data dir is measured
            assert [q["clients"] for q in entry["qps"]] == [1, 2] and all(q["qps"] > 0 for q in entry["qps"])
            best = max(p["recall_at_10"] for p in entry["sweep"])
            assert best >= (1.0 if index_type == "FLAT" else 0.9), (run["backend"], index_type)
    results = Results("vector-search", out)
    results.add("runs", runs)
    vector_search.report(results, runs)
    results.write()
    assert results.data["lite_fast_up_to"] in (0, 3000)
    assert (out / "vector-search-milvus-server-3000x64.png").exists()
    assert "recall@10" in (out / "vector-search.md").read_text()


def test_duplicate_scan_benchmark_finds_the_planted_copies(out, mixtures, milvus_server):
    from lookalike.milvus.engines import open_catalog
    from lookalike.settings import MilvusSettings

    catalog = open_catalog(MilvusSettings(uri=milvus_server.uri, collection="dupscan"), mixtures.dim)
    # 64-d mixtures of 30 images are dense: a threshold above their own likeness, below the copies'.
    row = duplicate_scan.measure(catalog, mixtures, 2000, batch=128, every=50, noise=0.1, threshold=0.99)
    catalog.versions.drop()
    catalog.close()
    assert row["n"] == 2000 and row["planted"] == 40
    assert row["planted_found"] >= 0.9  # each copy in its original's group: the scan goes through the index
    results = Results("duplicate-scan", out)
    duplicate_scan.report(results, row)
    results.write()
    assert "Near-duplicate scan of 2,000 vectors" in (out / "duplicate-scan.md").read_text()


@pytest.fixture
def api_env(api, monkeypatch):
    """The environment that points a process at the test app's Milvus and store."""
    env = {"LOOKALIKE_MILVUS__URI": api.settings.milvus.uri, "LOOKALIKE_STORE__LOCAL_DIR": api.settings.store.local_dir}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_http_benchmark_against_the_service_and_the_original_design(out, api, api_env, gallery, tmp_path,
                                                                    monkeypatch):
    import os

    bodies = payloads([p.read_bytes() for p in gallery["circles"][:3]], k=5)
    rows = {"original design": http_load.run_baseline({**os.environ, **api_env}, bodies, [1], 1.0),
            "lookalike": http_load.measure_lookalike(api.url, bodies, [1, 4], 1.0)}
    for name, series in rows.items():
        for row in series:
            assert row["errors"] == 0 and row["qps"] > 0 and row["p50_ms"] > 0, name
            assert row["server_embed_ms"] > 0 and row["server_search_ms"] > 0 and row["other_ms"] is not None
    assert all(r["mean_batch"] >= 1 and 0 < r["model_ms"] < r["server_embed_ms"] for r in rows["lookalike"])
    assert all(0 < r["milvus_ms"] < r["server_search_ms"] for r in rows["lookalike"])
    # Straight to the Ingress replica's own port (Serve's direct ingress): the proxy does no work.
    rows["direct ingress"] = http_load.measure_lookalike(direct_ingress_urls("main")[0], bodies, [1], 1.0)
    direct, proxied = rows["direct ingress"][0], rows["lookalike"][0]
    assert direct["errors"] == 0 and direct["ok"] > 0
    assert direct["cpu_ms"].get("proxy", 0) < proxied["cpu_ms"]["proxy"] / 2, (direct["cpu_ms"], proxied["cpu_ms"])
    work = http_load.measure_work(api.settings, bodies, 1.0)
    assert work["searches"] > 0 and work["decode_ms"] > 0 and work["embed_ms"] > 0 and work["search_ms"] > 0
    assert work["cpu_ms"]["in this process"] > 0 and work["cpu_ms"]["Milvus Lite"] > 0
    words = http_load.measure_lookalike(api.url, [{"text": w, "k": 5} for w in http_load.WORDS[:2]], [1], 1.0)
    assert words[0]["errors"] == 0 and words[0]["ok"] > 0 and words[0]["server_decode_ms"] is None  # nothing decoded
    assert words[0]["other_ms"] is not None
    rows["words"] = words
    results = Results("http-load", out)
    results.add("rows", rows)
    http_load.report(results, rows, work)
    results.write()
    text = (out / "http-load.md").read_text()
    assert "| original design | 1 |" in text and "| lookalike | 4 |" in text and "| direct ingress | 1 |" in text
    assert "÷ work" in text
    assert (out / "http-load-qps.png").exists()
    # --profile: py-spy samples each process of the service during the load.
    monkeypatch.setattr(http_load, "PROFILE", tmp_path / "profile")
    profiled = http_load.measure_lookalike(api.url, bodies, [2], 2.0)[0]["profile"]
    roles = ("Ingress", "Embedder", "Searcher", "proxy")
    assert set(roles) <= set(profiled), profiled
    # Each process of the path was on the CPU in the samples. (Milvus Lite's Python threads may
    # take none in 2 s on a busy machine: its server's work is mostly native.)
    assert all(profiled[role]["samples"] > 0 and profiled[role]["self"] for role in roles), \
        {role: summary["samples"] for role, summary in profiled.items()}
    assert any(layer["layer"] == "lookalike" for layer in profiled["Ingress"]["layers"])
    assert any(layer["layer"] == "onnxruntime" for layer in profiled["Embedder"]["layers"])
    assert (tmp_path / "profile" / "lookalike-2c-Ingress.txt").read_text().strip()
    assert "## lookalike, 2 clients: Embedder" in profile.report({"lookalike, 2 clients": profiled})
    # The load generator counts failures instead of stopping.
    bad = run_load(f"{api.url}/api/v1/search", [{"image": "bm90IGFuIGltYWdl"}], 1, 0.3)
    assert bad["ok"] == 0 and bad["errors"] > 0 and set(bad["statuses"]) == {"415"}


def test_replica_processes_are_this_runs_own(api):
    """A process titled as a replica of an app of the same name that this run's cluster did not
    start (another run's on the same machine: two suites at once) is never taken for one of ours:
    the harness kills replicas and reads their sockets by these pids, and the HTTP benchmark
    counts where the CPU went by them."""
    import os
    import signal
    import subprocess

    import psutil

    from harness.processes import cpu_seconds_by_process, replica_pids
    from harness.servers import wait_until
    from lookalike.milvus.engines import local_service

    title = "ray::ServeReplica:main:Embedder"
    subprocess.run(["bash", "-c", f'(exec -a "{title}" sleep 120) &'], check=True)  # orphaned: not ours
    strangers = wait_until(lambda: [p.pid for p in psutil.process_iter(["cmdline"])
                                    if (p.info["cmdline"] or []) == [title, "120"]], 10, "the stranger process")
    try:
        ours = replica_pids("main", "Embedder")
        assert ours and not set(strangers) & set(ours), (strangers, ours)
        counted = http_load.run_processes(api.settings.milvus)
        lite = server_pid(local_service(api.settings.milvus))
        assert lite and {*ours, lite, os.getpid()} <= counted and not set(strangers) & counted
        assert set(cpu_seconds_by_process(counted)) <= counted
    finally:
        for pid in strangers:
            os.kill(pid, signal.SIGKILL)


def test_eval_through_the_service_and_exactly(tmp_path, out, api, api_env, gallery_root):
    """`lookalike eval` as the README runs it, against the test app's service and Milvus."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    report = tmp_path / "eval.json"
    done = subprocess.run([str(Path(sys.executable).with_name("lookalike")), "eval", str(gallery_root), "--url",
                           api.url, "--copies", "3", "--report", str(report)], env={**os.environ, **api_env},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["gallery"] == 30 and result["classes"] == 6 and result["index"]["queries"] == 30
    # The generated classes differ in shape and colour: both searches find mostly the right class,
    # and on 30 vectors the HNSW index gives what exact search gives.
    assert result["exact"]["p_at_1"] >= 0.8 and result["index"]["p_at_1"] == result["exact"]["p_at_1"]
    assert set(result["copies"]) == set(quality.EDIT_KINDS) and set(result["parts"]) == set(PARTS)
    # Measured again on the originals held once: those with no other image at the near-duplicate
    # threshold. The generated classes are variations of one shape each: none is held once.
    once = result["distinct"]
    assert once["threshold"] == 0.82 and once["images"] == 0 and once["copies"] == once["parts"] == {}
    # The service embeds the copies through the same pipeline and runtime as the exact search:
    # on 30 vectors (and no region rows) both find the same originals, edit by edit, part by part.
    for kind, r in {**result["copies"], **result["parts"]}.items():
        assert r["index"] == r["exact"], kind
    assert "copy detection" in done.stdout
    # The service's own search time, for each query it answered: 30 leave-one-out, then 3 originals'
    # copies and parts (none is held once, above).
    assert result["search_ms"]["searches"] == 30 + 3 * (len(quality.EDIT_KINDS) + len(PARTS))
    assert 0 < result["search_ms"]["p50"] <= result["search_ms"]["p99"]
    (out / "eval-generated.json").write_text(report.read_text())


def test_preprocessing_descriptor_region_and_duplicate_comparisons(out, gallery_root):
    args = argparse.Namespace(fits=["pad", "crop"], poolings=["avg", "gem"], copies=2, thresholds=[0.9, 0.999])
    fits = quality.preprocessing({"generated": gallery_root}, args)
    assert set(fits["generated"]) == {"pad", "crop"}
    assert fits["generated"]["pad"]["exact"]["queries"] == 30
    pooling = quality.descriptors({"generated": gallery_root}, args)
    assert set(pooling["generated"]) == {"avg", "gem"}
    # Another pooling, other vectors: not the same ranking to the last digit.
    assert pooling["generated"]["avg"]["exact"] != pooling["generated"]["gem"]["exact"]
    embedded = quality.embedded_gallery(gallery_root)
    parts = quality.regions(embedded, args)
    assert set(parts) == {*quality.REGION_LAYOUTS, "region_vectors_per_s"} and parts["none"]["50 %"]["queries"] == 2
    assert [parts[name]["rows_per_image"] for name in quality.REGION_LAYOUTS] == [1, 5, 10, 10, 17, 5, 9]
    assert parts["0.5 x 3"]["margin"] == 0.06 and parts["0.5 x 3, no margin"]["margin"] == 0.0
    assert parts["none"]["50 %, held once"]["queries"] <= 2
    assert set(parts["0.5 x 2"]["copies"]) == set(quality.EDIT_KINDS)
    planted = quality.planted_duplicates(embedded, args)
    assert planted["planted"] == 2 * 8 and planted["images"] == 30 + 16
    loose, strict = planted["by_threshold"]["0.9"], planted["by_threshold"]["0.999"]
    assert loose["recall"] > strict["recall"]  # a lower threshold links more of the planted copies
    assert set(loose["copies_with_original"]) == set(PLANTED)
    service = {}
    if (out / "eval-generated.json").exists():  # from the eval test above
        service["generated"] = json.loads((out / "eval-generated.json").read_text())
    results = Results("quality", out)
    results.add("service", service)
    results.add("preprocessing", fits)
    quality.report(results, service, fits, pooling, parts, planted)
    results.write()
    text = (out / "quality.md").read_text()
    assert "| generated | crop |" in text and "| generated | gem |" in text
    assert "Region search" in text and "Near-duplicate groups: 16 planted copies among 46 images" in text


def test_scale_benchmark_smoke_run(tmp_path, out, gallery_root):
    """benchmarks.scale end to end on a tiny set: made from the test gallery, ingested with
    python -m ingest into the local Milvus server (a fresh install's own choice past Lite's fast
    size, lowered here), served and searched over HTTP. In a child: it runs its own Ray."""
    import subprocess
    import sys

    from harness.fixtures import REPO

    n = 3 * sum(1 for _ in gallery_root.glob("*/*"))  # originals, mirrors and crops
    # Its rebuild under load is benchmarks.rebuild_load's, smoke-run on the suite's app below.
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--n", str(n), "--originals", str(gallery_root),
                           "--lite-n", "0", "--sample-per-class", "0", "--slice", "0", "--seconds", "1",
                           "--queries", "5", "--clients", "2", "--no-rebuild", "--work", str(tmp_path),
                           "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "scale.json").read_text())
    assert data["set"]["files"] == n and data["ingest"]["indexed"] + data["ingest"]["duplicates"] == n
    assert data["ingest"]["run"]["engine"] == "local_server"
    gallery = data["galleries"]["the large gallery"]
    assert gallery["engine"] == "local_server" and gallery["count"] == data["ingest"]["indexed"]
    assert [r["clients"] for r in gallery["rows"]] == [2] and all(r["errors"] == 0 for r in gallery["rows"])
    assert gallery["rss_mib"]["Milvus server"] > 100  # the server's memory is in the table
    assert gallery["alone"]["searches"] > 0 and gallery["alone"]["search_p50_ms"] > 0  # Milvus alone, same run
    assert "| the large gallery |" in (out / "scale.md").read_text()


def test_rebuild_benchmark_on_the_suites_app(out, api, gallery):
    """benchmarks.rebuild_load's measurement (benchmarks.scale's last step on its large gallery):
    search load, then the same load while POST /api/v1/index rebuilds the index."""
    bodies = payloads([p.read_bytes() for p in gallery["rings"][:3]], k=5)
    row = rebuild_load.rebuild_under_load(api.url, api.settings, bodies, 2, 1.0)
    assert row["count_after"] == row["count_before"] > 0 and row["steady"]["errors"] == 0
    assert row["index_answers"][-1] == 200 and row["during"]["ok"] > 0 and row["during"]["errors"] == 0
    results = Results("rebuild-load", out)
    rebuild_load.report(results, row)
    results.write()
    assert "Searches while the index is rebuilt" in (out / "rebuild-load.md").read_text()


def test_summary_page_is_built_from_the_results(out, tmp_path):
    page = tmp_path / "benchmarks.md"
    text = summary.build(out, page)
    assert text.startswith("# Benchmarks") and "## Headlines" in text
    for name in summary.ORDER:
        if (out / f"{name}.json").exists():
            assert f"## {name}: `{summary.COMMANDS[name]}`" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{summary.README_START}\nold figures\n{summary.README_END}\n\n## next\n")
    summary.update_readme(readme, summary.load(out), "docs/benchmarks.md")
    updated = readme.read_text()
    assert "old figures" not in updated and "| original design | Lookalike |" in updated
    assert updated.endswith("## next\n") and updated.count(summary.README_START) == 1
    # The plots are linked where they are.
    for link in [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (page.parent / link).exists(), link


def test_handle_hop_benchmark_on_the_suites_app(out, api, gallery):
    """benchmarks.handle_hop against the suite's app: the Searcher's hop, Milvus alone, and an
    empty round trip deployed beside it (and deleted after)."""
    from ray import serve

    from benchmarks import handle_hop

    bodies = payloads([p.read_bytes() for p in gallery["circles"][:3]], k=5)
    row = handle_hop.measure(api.settings, api.url, bodies, 20, 1.0)
    assert row["searches"] == 20 and row["empty_calls"] == 20
    assert 0 < row["milvus_mean_ms"] < row["search_mean_ms"] and row["hop_mean_ms"] > 0
    assert row["alone_mean_ms"] > 0 and row["empty_p50_ms"] > 0
    assert "empty-hop" not in serve.status().applications
    results = Results("handle-hop", out)
    handle_hop.report(results, row)
    results.write()
    assert "| 20 |" in (out / "handle-hop.md").read_text()
