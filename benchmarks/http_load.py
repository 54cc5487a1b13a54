"""End-to-end HTTP search, side by side with the original design, in one run.

  original design   benchmarks/baseline_server.py: one process, a thread per request, each
                    upload embedded alone in fp32, then Milvus
  lookalike         the Ray Serve application exactly as `make run` deploys it (config/serve.yaml:
                    Ingress -> Embedder with @serve.batch -> Searcher, on its defaults), in a
                    Ray cluster started as `make run` starts it (RAY_SERVE_THROUGHPUT_OPTIMIZED=1)
  no batching       lookalike with serve.batch_max_size = 1
  batch wait 20 ms  lookalike with serve.batch_wait_timeout_s = 0.02
  onnx threads spinning  lookalike with model.spin_wait = true
  direct ingress    lookalike, the load sent to the Ingress replica's own port instead of Serve's
                    proxy (throughput mode opens one on each ingress replica: what an external
                    load balancer sends to), in the same cluster
  Serve default mode  lookalike in a Ray cluster without RAY_SERVE_THROUGHPUT_OPTIMIZED
  no Ray token auth   lookalike in a Ray cluster with RAY_AUTH_MODE=disabled (what the token
                    on every internal call costs)
  before issue 11   the query path as it was before the speed work, in that same cluster:
                    torch (bf16 autocast on this CPU), a 10 ms batch wait
  before issue 26   the code as it was before the work on the machine's limit (commit 2034679:
                    its own app, harness and load generator, exported with `git archive`), on
                    the same gallery and Lite server, in a cluster of its own. Its replicas bind
                    every interface (deployments/replica_rpc.py came later), so this target runs
                    only where loopback is the sole interface: in a namespace of its own,
                    `unshare -rn sh -c 'ip link set lo up && exec python -m benchmarks.http_load ...'`
  words             lookalike searched by words instead of images (`text`, the bundled model's
                    class words: no upload to decode, no forward pass)
  CLIP words        lookalike on a CLIP ViT-B/32 (random weights: speed does not depend on them;
                    exported as `lookalike models export` writes it, text cut to its length),
                    searched by captions; its gallery indexed into a collection of its own

All search the same Milvus Lite collection (the sample gallery, indexed once) through the
shared local Lite server. Load: N clients for T seconds each, JSON base64 uploads of gallery
images, top 5 (the original's K), to 127.0.0.1 only. Reports QPS, p50/p95/p99, errors, the
Embedder's mean batch size, where a request's time goes (the server's decode / embed / search,
and everything else: HTTP, proxies, handle calls, queueing), and where the machine's CPU goes
(CPU milliseconds per request by process: each deployment, the proxy, Milvus Lite, the load
generator), and how that compares with the work itself: the same uploads through the query
path's own steps in one process (decode, the forward pass at batch 1, the same Milvus Lite search),
one after another, measured in the same run.

    python -m benchmarks.http_load [--clients 1,8,32] [--seconds 20] [--targets "lookalike,no batching"]
    python -m benchmarks.http_load --targets "lookalike,words,CLIP words" --clients 1,8 --seconds 15 \
        --name http-load-words      # search by words against by image, kept beside the full run
    python -m benchmarks.http_load --targets lookalike --clients 8 --profile DIR
                                    # and where each process's CPU goes (py-spy: benchmarks/profile.py)
    unshare -rn sh -c 'ip link set lo up && exec python -m benchmarks.http_load \
        --targets "lookalike,direct ingress,before issue 26" --name http-load-direct'
                                    # now against the code before issue 26, side by side
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from lookalike.ray_env import use_local_ray_env

# Before Ray is imported: Serve reads its throughput mode once per process, the driver's included
# (the handles it builds follow it), and the auth mode is the cluster's, so a target with another
# cluster environment runs in a child process with a cluster of its own.
use_local_ray_env()

from benchmarks import profile  # noqa: E402
from benchmarks.common import REPO, Results, markdown_table, openclipart_set  # noqa: E402
from harness.load import payloads, run_load  # noqa: E402
from harness.processes import cpu_seconds_by_process, cpu_spent, own_processes  # noqa: E402
from harness.serve import deploy, direct_ingress_urls, serve_session, wait_healthy  # noqa: E402
from harness.servers import HOST, free_port  # noqa: E402


K = 5
PROFILE: Path | None = None  # --profile: py-spy each process of the service during each load, into here


def sample_bodies(gallery: Path, queries: int, k: int) -> list[dict]:
    """What the clients send: ``queries`` of the gallery's images, spread over its classes, each
    asking for ``k`` results."""
    files = sorted(gallery.glob("*/*"))
    return payloads([f.read_bytes() for f in files[:: max(1, len(files) // queries)][:queries]], k=k)


def prepare_gallery(settings, gallery: Path) -> None:
    """Index the gallery once into the benchmark's own Milvus Lite directory (shared server)."""
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.indexing.indexer import index_items
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.indexing.sources import iter_folder
    from lookalike.storage.store import make_store

    encoder = ImageEncoder(settings.model).load()
    catalog = gallery_catalog(settings)
    report = index_items(iter_folder(gallery), settings, encoder=encoder, catalog=catalog,
                         store=make_store(settings.store))
    catalog.close()
    print(f"gallery: {report.summary()}", flush=True)


def process_role(pid: int, cmdline: str) -> str:
    """Who a process is, for the CPU breakdown: a Serve deployment by name, the proxy, the
    Milvus Lite server, this process (the load generator), or the rest (Ray's own daemons)."""
    if pid == os.getpid():
        return "load generator"
    if cmdline.startswith("ray::ServeReplica:"):  # ray::ServeReplica:<app>:<Deployment>[.<method>]
        return cmdline.split()[0].rsplit(":", 1)[-1].split(".")[0]
    if cmdline.startswith("ray::ProxyActor"):
        return "proxy"
    if "lookalike.milvus.lite_server" in cmdline:
        return "Milvus Lite"
    if "benchmarks.baseline_server" in cmdline:
        return "original server"
    return "rest"


def run_processes(milvus=None) -> set[int]:
    """This run's processes (``own_processes``), with the Milvus Lite server it searches: that
    of ``milvus`` (MilvusSettings), else of the environment's settings (the benchmark's own
    directory, or the test app's)."""
    from lookalike.milvus.engines import local_service
    from lookalike.settings import Settings

    service = local_service(milvus or Settings().milvus)
    return own_processes(*([service] if service else []))


CPU_ROLES = ["original server", "Ingress", "Embedder", "Searcher", "proxy", "Milvus Lite", "load generator", "rest"]


def load_series(url: str, bodies: list[dict], clients: list[int], seconds: float, counters=None,
                label: str = "") -> list[dict]:
    """``counters()``: the service's own counters (see ``service_counters``), read before and after
    each load: the Embedder's batches and time in the model, the Searcher's time in Milvus. Every
    row also says where the machine's CPU went (ms per answered request, by ``process_role``), and
    with ``--profile`` where in each process (``row["profile"]``: role -> py-spy summary)."""
    rows = []
    for c in clients:
        before = counters() if counters else None
        cpu_before = cpu_seconds_by_process(run_processes())
        recording = None
        if PROFILE is not None:
            roles: dict[str, list[int]] = {}
            for pid, (cmdline, _) in cpu_before.items():
                role = process_role(pid, cmdline)
                if role not in ("load generator", "rest"):
                    roles.setdefault(role, []).append(pid)
            name = f"{label or 'run'}-{c}c".replace(" ", "_")
            recording = profile.Recording(PROFILE, name, seconds).start(roles)
        row = run_load(url, bodies, c, seconds)
        if recording is not None:
            row["profile"] = {role: profile.summarize(stacks) for role, stacks in recording.finish().items()}
        spent = cpu_spent(cpu_before, cpu_seconds_by_process(run_processes()), process_role)
        row["cpu_ms"] = {role: round(sec * 1000 / max(row["ok"], 1), 2) for role, sec in sorted(spent.items())}
        row["cpu_cores"] = round(sum(spent.values()) / seconds, 2)
        if counters:
            after = counters()
            calls = after["batches"] - before["batches"]
            n = sum(calls.values())
            row["mean_batch"] = round(sum(size * count for size, count in calls.items()) / n, 2) if n else None
            row["batches"] = {str(k): v for k, v in sorted(calls.items())}
            forward = after["forward_seconds"] - before["forward_seconds"]
            searches = after["searches"] - before["searches"]
            # Per request: a batch's forward pass is shared by the requests in it.
            row["model_ms"] = round(forward * 1000 / n, 2) if n else None
            row["milvus_ms"] = round((after["search_seconds"] - before["search_seconds"]) * 1000 / searches, 2) \
                if searches else None
        rows.append(row)
        print(f"  {c:>3} clients: {row['qps']:7.1f} QPS, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
              f"errors {row['errors']}, mean batch {row.get('mean_batch')}", flush=True)
    return rows


def run_baseline(env: dict, bodies, clients, seconds) -> list[dict]:
    """Start the original design's server on the same settings (``env``), measure, stop it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.baseline_server", "--port", str(port)], env=env,
                            cwd=REPO)
    try:
        wait_healthy(f"http://{HOST}:{port}/healthz", 120, proc)
        url = f"http://{HOST}:{port}/search/"
        run_load(url, bodies, 1, 2.0)  # warm-up
        return load_series(url, bodies, clients, seconds, label="original design")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def measure_work(settings, bodies: list[dict], seconds: float) -> dict:
    """The work a search must do, without the service: the same uploads through the query path's
    own steps in this process (``lookalike.query.local``: base64 and image decoding, the forward
    pass at batch 1 on the configured runtime and threads, the search in the same Milvus Lite
    collection through the shared Lite server), one after another for ``seconds``. CPU ms per
    search, of this process and of the Lite server; the steps' mean wall times."""
    from lookalike import query
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.storage.store import make_store

    encoder = ImageEncoder(settings.model).load()
    catalog = gallery_catalog(settings)
    path = query.local(encoder, catalog, make_store(settings.store), settings.images)
    wanted = query.Query(k=K)

    async def searches(until: float) -> list[dict]:
        timings = []
        for n in itertools.count():
            if time.perf_counter() >= until:
                break
            answer = await path.by_image(base64.b64decode(bodies[n % len(bodies)]["image"]), wanted)
            timings.append(answer.timings)
        return timings

    asyncio.run(searches(time.perf_counter() + min(2.0, seconds)))  # warm-up
    ours = run_processes(settings.milvus)
    before = cpu_seconds_by_process(ours)
    timings = asyncio.run(searches(time.perf_counter() + seconds))
    spent = cpu_spent(before, cpu_seconds_by_process(ours),
                      lambda pid, cmdline: {"load generator": "in this process", "Milvus Lite": "Milvus Lite"}.get(
                          process_role(pid, cmdline)))
    catalog.close()
    n = len(timings)
    row = {"searches": n, **{k: round(sum(t[k] for t in timings) / n, 2) for k in ("decode_ms", "embed_ms",
                                                                                   "search_ms")},
           "search_p50_ms": round(statistics.median(t["search_ms"] for t in timings), 2),
           "cpu_ms": {role: round(sec * 1000 / n, 2) for role, sec in sorted(spent.items())}}
    row["total_ms"] = round(sum(row["cpu_ms"].values()), 2)
    print(f"the work in one process: {row['total_ms']} CPU ms a search ({n} searches)", flush=True)
    return row


def service_counters(base: str) -> dict:
    """From the status route: batches run by size, seconds in the model, searches and seconds in Milvus."""
    status = httpx.get(f"{base}/api/v1/status", timeout=30).json()
    model, milvus = status["model"], status["milvus"]
    return {"batches": Counter({int(k): v for k, v in model.get("batch_sizes", {}).items()}),
            "forward_seconds": model.get("forward_seconds", 0.0), "searches": milvus.get("searches", 0),
            "search_seconds": milvus.get("search_seconds", 0.0)}


def measure_lookalike(base: str, bodies, clients, seconds, label: str = "lookalike") -> list[dict]:
    """Load on a running Lookalike at ``base`` (route prefix included)."""
    url = f"{base}/api/v1/search"
    run_load(url, bodies, 2, min(3.0, seconds))  # warm-up: model, handles, Milvus connection
    return load_series(url, bodies, clients, seconds, lambda: service_counters(base), label)


def run_lookalike(base: str, settings, bodies, clients, seconds, label: str) -> list[dict]:
    """Deploy the application, measure, delete it."""
    from ray import serve

    deploy(settings, base)
    print(f"{label}:", flush=True)
    url = direct_ingress_urls()[0] if label == DIRECT else base
    rows = measure_lookalike(url, bodies, clients, seconds, label)
    serve.delete("lookalike")
    return rows


# Each target: its settings overrides, and its cluster's environment beyond `make run`'s.
SERVE_DEFAULT_MODE = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
DIRECT = "direct ingress"
TARGETS = {
    "lookalike": ({}, {}),
    DIRECT: ({}, {}),
    "no batching": ({"serve": {"batch_max_size": 1}}, {}),
    "batch wait 20 ms": ({"serve": {"batch_wait_timeout_s": 0.02}}, {}),
    "onnx threads spinning": ({"model": {"spin_wait": True}}, {}),
    "Serve default mode": ({}, SERVE_DEFAULT_MODE),
    "before issue 11": ({"model": {"runtime": "torch"}, "serve": {"batch_wait_timeout_s": 0.01}}, SERVE_DEFAULT_MODE),
    "no Ray token auth": ({}, {"RAY_AUTH_MODE": "disabled"}),
    "before issue 26": ({}, {}),  # an earlier commit's code (EARLIER), run by its own benchmark
    "words": ({}, {}),  # lookalike searched by words (the bundled model's class words) instead of images
    "CLIP words": ({}, {}),  # lookalike on a CLIP export searched by captions (clip_overrides)
}
# Targets that run an earlier commit's code: its own benchmark, as a child on this run's data.
EARLIER = {"before issue 26": "2034679"}
# What the "words" target's clients send: words the bundled model knows (benchmarks/words.py).
WORDS = ["bird", "insect", "car", "musical instrument", "fruit", "boat", "computer", "drink"]
CLIP_ARCH = "ViT-B-32"


def clip_overrides(settings) -> dict:
    """The CLIP words target's settings: the export beside the benchmark's data, its own collection."""
    folder = Path(settings.store.local_dir).parent / f"{CLIP_ARCH}__random"
    return {"model": {"name": "immich-clip", "weights": str(folder)}, "milvus": {"collection": "clip_words"}}


def prepare_clip(settings, gallery: Path) -> None:
    """Export ViT-B/32 (random weights) and index the gallery with it, for the CLIP words target."""
    import open_clip

    from lookalike.embedding.clip_export import load_open_clip, write_layout

    folder = Path(clip_overrides(settings)["model"]["weights"])
    if not folder.is_dir():
        write_layout(load_open_clip(CLIP_ARCH), open_clip.get_model_config(CLIP_ARCH), folder)
    prepare_gallery(settings.with_overrides(**clip_overrides(settings)), gallery)


def target_load(settings, target: str, bodies: list[dict]) -> tuple:
    """A target's settings and what its clients send."""
    from benchmarks.clip_towers import CAPTIONS

    if target == "CLIP words":
        return settings.with_overrides(**clip_overrides(settings)), [{"text": c, "k": K} for c in CAPTIONS]
    sent = [{"text": w, "k": K} for w in WORDS] if target == "words" else bodies
    return settings.with_overrides(**TARGETS[target][0]), sent


def earlier_code_refusal(targets: list[str]) -> str | None:
    """Why the earlier-code targets among ``targets`` cannot run here, if they cannot: their
    replicas bind every interface, so loopback must be this network namespace's only one; and
    their commit must be in this clone."""
    wanted = [t for t in targets if t in EARLIER]
    if not wanted:
        return None
    others = sorted(name for _, name in socket.if_nameindex() if name != "lo")
    if others:
        return (f"{', '.join(wanted)} runs code whose Serve replicas bind every interface, and this network "
                f"namespace has {', '.join(others)} beside loopback: run it in one of its own, "
                "unshare -rn sh -c 'ip link set lo up && exec python -m benchmarks.http_load ...'")
    for target in wanted:
        commit = EARLIER[target]
        if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                          capture_output=True).returncode:
            return f"{target} needs commit {commit}, which this clone lacks (a shallow clone? git fetch --unshallow)"
    return None


def export_commit(commit: str, folder: Path) -> Path:
    """``commit``'s tracked files in ``folder`` (``git archive``), with this checkout's model
    files (data/models, not tracked) linked file by file: what that code writes stays in ``folder``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True,
                             check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    models = folder / "data" / "models"
    models.mkdir(parents=True, exist_ok=True)
    for file in (REPO / "data" / "models").glob("*"):
        (models / file.name).symlink_to(file)
    return folder


def measure_earlier(target: str, env: dict, args, gallery: Path, work: Path) -> list[dict]:
    """``target``'s rows, measured by the code of commit ``EARLIER[target]``: its own benchmark,
    started as this one's children are (``--rows-to``: its app deployed in a Ray cluster of its
    own, on this run's gallery, Lite server and uploads), its Lookalike target as it was then."""
    code = export_commit(EARLIER[target], work / "earlier")
    out = work / "rows.json"
    child_env = {**env, "PYTHONPATH": str(code)}  # Ray's workers inherit it: the replicas run that code too
    print(f"{target} (commit {EARLIER[target]}, in {code}):", flush=True)
    try:
        found = subprocess.run([sys.executable, "-c", "import importlib.util; "
                                "print(importlib.util.find_spec('deployments').origin)"],
                               env=child_env, cwd=code, capture_output=True, text=True, check=True).stdout.strip()
        if not Path(found).is_relative_to(code):
            raise RuntimeError(f"{target}: the child would import this checkout's code ({found}), not {code}'s")
        return measure_in_child(["lookalike"], args, gallery, out, child_env, code)["lookalike"]
    finally:
        shutil.rmtree(code, ignore_errors=True)


def measure_in_child(targets: list[str], args, gallery: Path, out: Path, env: dict, cwd: Path,
                     *extra: str) -> dict[str, list[dict]]:
    """``targets`` measured by ``python -m benchmarks.http_load --rows-to`` run in ``cwd`` with
    ``env`` (a cluster environment of its own, or an earlier commit's code), on this run's
    gallery, Lite server and uploads; their rows."""
    subprocess.run([sys.executable, "-m", "benchmarks.http_load", "--targets", ",".join(targets), "--clients",
                    args.clients, "--seconds", str(args.seconds), "--gallery", str(gallery), "--queries",
                    str(args.queries), "--rows-to", str(out), *extra], env=env, cwd=cwd, check=True)
    return json.loads(out.read_text())


def measure_targets(settings, targets: list[str], bodies, clients, seconds) -> dict[str, list[dict]]:
    """Each target in turn, in one Ray cluster."""
    rows = {}
    if targets:
        with serve_session() as base:
            for target in targets:
                rows[target] = run_lookalike(base, *target_load(settings, target, bodies), clients, seconds, target)
    return rows


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(t for t in TARGETS if t not in EARLIER),
                        help="which Lookalike targets (comma-separated; the earlier code's only when named)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gallery", default=None, help="a labelled folder (default: the openclipart sample)")
    parser.add_argument("--queries", type=int, default=64, help="distinct images the clients send")
    parser.add_argument("--out", default=None)
    parser.add_argument("--name", default="http-load", help="the results' file name (a partial run kept apart)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="sample each process with py-spy during each load; stacks and profile.md go here")
    parser.add_argument("--rows-to", default=None, help=argparse.SUPPRESS)  # a child: measure, write rows here
    args = parser.parse_args(argv)
    global PROFILE
    PROFILE = Path(args.profile).resolve() if args.profile else None
    clients = [int(c) for c in args.clients.split(",")]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    refusal = earlier_code_refusal(targets)
    if refusal:
        parser.error(refusal)
    results = Results(args.name, args.out, **{k: v for k, v in vars(args).items() if k not in ("out", "name")})

    from lookalike.milvus.lite_server import LiteServer
    from lookalike.settings import load_settings

    work = None if args.rows_to else Path(tempfile.mkdtemp(prefix="lookalike-http-"))
    env = dict(os.environ) if args.rows_to else {  # a child measures on its parent's data
        **os.environ, "LOOKALIKE_MILVUS__URI": str(work / "lookalike.db"),
        "LOOKALIKE_STORE__LOCAL_DIR": str(work / "images")}
    os.environ.update(env)  # the Serve replicas read the same settings
    settings = load_settings()
    gallery = Path(args.gallery) if args.gallery else openclipart_set()
    bodies = sample_bodies(gallery, args.queries, K)
    if args.rows_to:  # a child started below, on the parent's gallery and Lite server
        rows = measure_targets(settings, targets, bodies, clients, args.seconds)
        Path(args.rows_to).write_text(json.dumps(rows))
        return results
    prepare_gallery(settings, gallery)
    if "CLIP words" in targets:
        prepare_clip(settings, gallery)
    lite = LiteServer(settings.milvus.uri)
    rows: dict[str, list[dict]] = {}
    try:
        results.add("work", measure_work(settings, bodies, args.seconds))
        print("original design (baseline_server.py):", flush=True)
        rows["original design"] = run_baseline(env, bodies, clients, args.seconds)
        results.add("rows", rows)
        rows.update(measure_targets(settings, [t for t in targets if not TARGETS[t][1] and t not in EARLIER],
                                    bodies, clients, args.seconds))
        results.add("rows", rows)
        for cluster_env in {json.dumps(TARGETS[t][1], sort_keys=True) for t in targets if TARGETS[t][1]}:
            there = [t for t in targets if json.dumps(TARGETS[t][1], sort_keys=True) == cluster_env]
            rows.update(measure_in_child(there, args, gallery, work / "rows.json", {**env, **json.loads(cluster_env)},
                                         REPO, *(["--profile", str(PROFILE)] if PROFILE else [])))
            results.add("rows", rows)
        for target in (t for t in targets if t in EARLIER):
            rows[target] = measure_earlier(target, env, args, gallery, work)
            results.add("rows", rows)
    finally:
        lite.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results, rows, results.data["work"])
    results.write()
    if PROFILE is not None:
        profiles = {f"{target}, {row['clients']} clients": row["profile"]
                    for target, series in rows.items() for row in series if row.get("profile")}
        (PROFILE / "profile.md").write_text(profile.report(profiles))
        print(f"profiles: {PROFILE / 'profile.md'}", flush=True)
    return results


def report(results: Results, rows: dict[str, list[dict]], work: dict | None = None) -> None:
    table = []
    base = {r["clients"]: r for r in rows.get("original design", [])}
    for name, series in rows.items():
        for r in series:
            b = base.get(r["clients"])
            table.append({"target": name, **r, "qps_ratio": round(r["qps"] / b["qps"], 2) if b and b["qps"] else None,
                          "p50_ratio": round(r["p50_ms"] / b["p50_ms"], 2) if b and r["p50_ms"] else None})
    results.section("Throughput and latency (ratios: to the original design at the same clients)", markdown_table(
        table, ["target", "clients", "qps", "qps_ratio", "p50_ms", "p95_ms", "p99_ms", "p50_ratio", "errors",
                "mean_batch"],
        ["target", "clients", "QPS", "QPS × original", "p50 ms", "p95 ms", "p99 ms", "p50 ÷ original", "errors",
         "mean batch"]))
    results.section(
        "Where a request's time goes (means, ms). decode / embed / search: as the server's handler timed them "
        "(embed and search are whole calls to the Embedder and Searcher); of which model / Milvus: the time "
        "inside the forward pass (per batch) and inside Milvus; other: client latency − decode − embed − search "
        "(HTTP, proxy, routing, queueing)",
        markdown_table(table, ["target", "clients", "mean_ms", "server_decode_ms", "server_embed_ms", "model_ms",
                               "server_search_ms", "milvus_ms", "other_ms"],
                       ["target", "clients", "latency", "decode", "embed", "of which model", "search",
                        "of which Milvus", "other"]))

    def by_clients(key: str, ylabel: str, title: str, log_y: bool):
        def draw(ax):
            for name, series in rows.items():
                ax.plot([r["clients"] for r in series], [r[key] for r in series], marker="o", label=name)
            ax.set_xscale("log", base=2)
            if log_y:
                ax.set_yscale("log")
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(fontsize=8)

        return draw

    cpu = []
    for name, series in rows.items():
        for r in series:
            if "cpu_ms" in r:
                service = sum(ms for role, ms in r["cpu_ms"].items() if role != "load generator")
                cpu.append({"target": name, "clients": r["clients"], "cores": r.get("cpu_cores"),
                            **{role: r["cpu_ms"].get(role) for role in CPU_ROLES},
                            "total": round(sum(r["cpu_ms"].values()), 1),
                            "to_work": round(service / work["total_ms"], 2) if work else None})
    if work:
        results.section(
            "The work a search must do, in one process (the same uploads through the query path's steps: "
            "decode, the forward pass at batch 1, the same Milvus Lite search; one after another, in this run)",
            markdown_table([{**work, **work["cpu_ms"]}],
                           ["searches", "decode_ms", "embed_ms", "search_ms", "in this process", "Milvus Lite",
                            "total_ms"],
                           ["searches", "decode ms", "forward ms", "search ms", "CPU ms, this process",
                            "CPU ms, Milvus Lite", "CPU ms a search"]))
    results.section(
        "Where the CPU goes (CPU ms per answered request, by process of this run; cores: the CPUs they kept busy during "
        "the run; ÷ work: the CPU a search took, the load generator's left out, over the work above). "
        "The original design is one process (original server).",
        markdown_table(cpu, ["target", "clients", "cores", *CPU_ROLES, "total", "to_work"],
                       ["target", "clients", "cores busy", *CPU_ROLES, "total", "÷ work"]))
    results.plot(f"{results.name}-qps.png",
                 by_clients("qps", "searches / s", "End-to-end HTTP search throughput", False))
    results.plot(f"{results.name}-p50.png",
                 by_clients("p50_ms", "p50 latency (ms)", "End-to-end HTTP search latency", True))


if __name__ == "__main__":
    main()
