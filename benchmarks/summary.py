"""docs/benchmarks.md from the benchmarks' own results: the headline figures against the
original design, then each benchmark's full tables and plots. Nothing in it is typed by hand.

    python -m benchmarks.summary [--results docs/benchmarks] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks.common import REPO, machine_line, markdown_table

ORDER = ["embedding", "clip-towers", "words", "vector-search", "http-load", "http-load-direct", "http-load-words",
         "handle-hop",
         "replica-kill", "quality", "duplicate-scan", "scale", "ingest-throughput", "rebuild-load", "reembed-load"]
COMMANDS = {"embedding": "python -m benchmarks.embedding", "clip-towers": "python -m benchmarks.clip_towers",
            "words": "python -m benchmarks.words",
            "vector-search": "python -m benchmarks.vector_search",
            "http-load": "python -m benchmarks.http_load",
            "handle-hop": "python -m benchmarks.handle_hop",
            "http-load-direct": "unshare -rn sh -c 'ip link set lo up && exec python -m benchmarks.http_load "
                                "--targets \"lookalike,direct ingress,before issue 26\" --name http-load-direct'",
            "http-load-words": 'python -m benchmarks.http_load --targets "lookalike,words,CLIP words" --clients 1,8 '
                               "--seconds 15 --name http-load-words",
            "replica-kill": "python -m benchmarks.replica_kill",
            "quality": "python -m benchmarks.quality", "scale": "python -m benchmarks.scale",
            "ingest-throughput": "python -m benchmarks.ingest_throughput",
            "duplicate-scan": "python -m benchmarks.duplicate_scan",
            "rebuild-load": "python -m benchmarks.rebuild_load", "reembed-load": "python -m benchmarks.reembed_load"}


def load(results: Path) -> dict[str, dict]:
    found = {}
    for name in ORDER:
        path = results / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def headline_embedding(data: dict) -> list[dict]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in data["rows"]):
        mine = [r for r in data["rows"] if r["model"] == model]
        base = mine[0]
        for batch in (1, 16):
            served = (r for r in mine if r["batch"] == batch and "spinning" not in r["runtime"])  # as a server runs
            best = max(served, key=lambda r: r["img_per_s"], default=None)
            if best:
                rows.append({"what": f"{model}, batch {batch}", "original": f"{base['img_per_s']:.1f} img/s",
                             "lookalike": f"{best['img_per_s']:.1f} img/s ({best['runtime']})",
                             "ratio": f"{best['img_per_s'] / base['img_per_s']:.2f}×"})
    return rows


def headline_search(data: dict) -> list[dict]:
    """The Milvus server at the search parameters the service is configured with."""
    from lookalike.settings import IndexSettings

    configured = IndexSettings().search
    rows = []
    for run in data.get("runs", []):
        if run["backend"] != "milvus-server":
            continue
        for index_type in ("HNSW", "IVF_FLAT"):
            entry = run["index"].get(index_type)
            if not entry:
                continue
            (name, value), = configured[index_type].items()
            p = next((p for p in entry["sweep"] if p["value"] == value), None)
            if p is None:
                continue
            rows.append({"what": f"{run['n']:,} × {run['dim']}-d, {index_type} {name}={value} (the default)",
                         "original": "~15 ms (210k, Milvus 2.1)",
                         "lookalike": f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, "
                                      f"recall@10 {p['recall_at_10']:.4f}",
                         "ratio": f"{15.0 / p['p50_ms']:.1f}× faster"})
    return rows


def paired_http_rows(data: dict, target: str, against: str) -> list[tuple[str, dict, dict]]:
    """(what, the target's row, the row it is set against) for each client count both measured."""
    rows_by = data.get("rows", {})
    base = {r["clients"]: r for r in rows_by.get(against, [])}
    return [(f"HTTP search, {r['clients']} client{'s' if r['clients'] > 1 else ''}", r, base[r["clients"]])
            for r in rows_by.get(target, []) if r["clients"] in base and r["clients"] in (1, 8, 32)]


def headline_http(data: dict) -> list[dict]:
    return [{"what": what, "original": f"{b['qps']:.1f} QPS, p50 {b['p50_ms']:.0f} ms, {b['errors']} errors",
             "lookalike": f"{r['qps']:.1f} QPS, p50 {r['p50_ms']:.0f} ms, {r['errors']} errors "
                          f"(mean batch {r.get('mean_batch')})",
             "ratio": f"{r['qps'] / b['qps']:.2f}× QPS"}
            for what, r, b in paired_http_rows(data, "lookalike", "original design")]


def headline_direct(data: dict) -> list[dict]:
    """Straight to the Ingress replica against through Serve's proxy, the same run."""
    return [{"what": f"{what}: straight to the Ingress replica, against through Serve's proxy (same run)",
             "original": "–",
             "lookalike": f"{r['qps']:.1f} QPS, p50 {r['p50_ms']:.0f} ms against {b['qps']:.1f} QPS, "
                          f"p50 {b['p50_ms']:.0f} ms",
             "ratio": f"{r['qps'] / b['qps']:.2f}× QPS"}
            for what, r, b in paired_http_rows(data, "direct ingress", "lookalike")]


def headline_quality(data: dict) -> list[dict]:
    rows = []
    for name, r in data.get("service", {}).items():
        rows.append({"what": f"{name}: P@10 / mAP@10", "original": "not measured",
                     "lookalike": f"{r['index']['p_at_10']:.3f} / {r['index']['map_at_10']:.3f} through the service "
                                  f"(exact: {r['exact']['p_at_10']:.3f} / {r['exact']['map_at_10']:.3f})",
                     "ratio": ""})
        for of, found in [("", r), (", originals held once", r.get("distinct", {}))]:
            copies = {**found.get("copies", {}), **found.get("parts", {})}
            if copies:
                text = ", ".join(f"{k} {v['index']['recall_at_1']:.2f}" for k, v in copies.items())
                rows.append({"what": f"{name}: copy detection recall@1{of}", "original": "not measured",
                             "lookalike": text, "ratio": ""})
    layouts = {name: r for name, r in data.get("regions", {}).items() if isinstance(r, dict)}
    for box in ("random 30-70 %", "50 %") if layouts else ():
        text = ", ".join(f"{name} {r[box]['recall_at_1']:.2f}" for name, r in layouts.items())
        rows.append({"what": f"openclipart: search by a box of {box} of an image, recall@1 of the whole, "
                             "per model.regions layout", "original": "no box search",
                     "lookalike": f"{text} (exact search)", "ratio": ""})
    planted = data.get("duplicates", {}).get("by_threshold", {})
    if planted:
        text = ", ".join(f"at {t}: precision {r['precision']:.2f} / recall {r['recall']:.2f}" for t, r in planted.items())
        rows.append({"what": f"openclipart: near-duplicate groups, {data['duplicates']['planted']} planted copies",
                     "original": "byte-identical only", "lookalike": text, "ratio": ""})
    return rows


def headline_duplicate_scan(data: dict) -> list[dict]:
    r = data.get("scan", {})
    if not r:
        return []
    return [{"what": f"near-duplicate scan of {r['n']:,} images (local Milvus server)", "original": "none",
             "lookalike": f"{r['scan_s']:.0f} s ({r['images_per_s']:,} images/s), {r['planted_found']:.2f} of the "
                          "planted copies found", "ratio": ""}]


def headline_scale(data: dict) -> list[dict]:
    """The largest gallery served end to end, against the original's ~15 ms of search at 210k."""
    galleries = data.get("galleries", {})
    large = galleries.get("the large gallery")
    if not large or not large.get("rows"):
        return []
    one, many = large["rows"][0], large["rows"][-1]
    search = one.get("server_search_p50_ms")
    return [{"what": f"{large['count']:,} images through the service ({large['engine']})",
             "original": "~15 ms of search (210k, Milvus 2.1)",
             "lookalike": f"search_ms p50 {search} ms, p99 {one.get('server_search_p99_ms')} ms; end to end p50 "
                          f"{one['p50_ms']:.0f} ms at {one['clients']} client, {many['qps']:.1f} QPS at "
                          f"{many['clients']}, {sum(r['errors'] for r in large['rows'])} errors",
             "ratio": f"{15 / search:.1f}× faster search" if search else ""}]


def headline_reembed(data: dict) -> list[dict]:
    r, phases = data.get("reembed", {}), data.get("phases", [])
    if not r:
        return []
    searches = sum(p.get("requests", 0) for p in phases)
    return [{"what": f"the sample gallery re-embedded under another model while {data['params']['clients']} clients "
                     "search, then the service rolled to it",
             "original": "re-ingest into a new collection, search down or split",
             "lookalike": f"{r['images']:,} images in {r['seconds']:.0f} s; {sum(p.get('failed', 0) for p in phases)} "
                          f"of {searches:,} searches failed, {sum(p.get('wrong', 0) for p in phases)} wrong; count "
                          f"{r['count_before']:,} -> {r['count_after']:,}", "ratio": ""}]


README_START = "<!-- benchmarks:start (python -m benchmarks.summary writes this block) -->"
README_END = "<!-- benchmarks:end -->"


# Targets of benchmarks.http_load that measure the query path as it was, and what they stand for.
BEFORE = {"before issue 11": "before the speed work (torch bf16, 10 ms batch wait, Serve's default mode)",
          "before issue 26": "before the work on the machine's limit (the code of the commit before it, through "
                             "Serve's proxy as now)"}


def before_and_after(data: dict) -> str:
    """The query path as it was (``BEFORE``) and now, measured in the same run."""
    rows_by = data.get("rows", {})
    text = ""
    for target, what in BEFORE.items():
        before = {r["clients"]: r for r in rows_by.get(target, [])}
        rows = []
        for r in rows_by.get("lookalike", []):
            b = before.get(r["clients"])
            if b and b["qps"]:
                rows.append({"clients": r["clients"], "before": f"{b['qps']:.1f} QPS, p50 {b['p50_ms']:.0f} ms",
                             "now": f"{r['qps']:.1f} QPS, p50 {r['p50_ms']:.0f} ms",
                             "ratio": f"{r['qps'] / b['qps']:.2f}× QPS, {b['p50_ms'] / r['p50_ms']:.2f}× faster p50"})
        if rows:
            text += (f"\n\nThe query path {what} and now, same run:\n\n"
                     + markdown_table(rows, ["clients", "before", "now", "ratio"],
                                      ["HTTP clients", "before", "now", ""]))
    return text


def headlines(found: dict[str, dict]) -> str:
    heads = []
    for name, fn in (("embedding", headline_embedding), ("vector-search", headline_search),
                     ("http-load", headline_http), ("http-load-direct", headline_direct),
                     ("quality", headline_quality),
                     ("duplicate-scan", headline_duplicate_scan), ("scale", headline_scale),
                     ("reembed-load", headline_reembed)):
        if name in found:
            heads += fn(found[name])
    machines = "; ".join(sorted({machine_line(d["machine"]) for d in found.values()}))
    speed = "".join(before_and_after(found[name]) for name in ("http-load", "http-load-direct") if name in found)
    return (markdown_table(heads, ["what", "original", "lookalike", "ratio"], ["", "original design", "Lookalike", ""])
            + speed + f"\n\nMeasured on: {machines}.")


def update_readme(readme: Path, found: dict[str, dict], page: str) -> None:
    """Replace the block between the README's markers with the headline table."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    block = f"{README_START}\n{headlines(found)} Every table and plot: [{page}]({page}).\n{README_END}"
    readme.write_text(head + block + tail)
    print(f"updated {readme}")


def build(results: Path, out: Path) -> str:
    found = load(results)
    machines = {machine_line(d["machine"]) for d in found.values()}
    rel = results.relative_to(out.parent) if results.is_relative_to(out.parent) else results
    parts = [
        "# Benchmarks: Lookalike side by side with the original design",
        "",
        "Generated by `python -m benchmarks.summary` from the results of `make bench` (each benchmark alone: "
        "the commands below). Every ratio compares things measured in the same run on the same machine; "
        "timings on a shared 2-vCPU machine vary between runs, ratios much less.",
        "",
        "Measured on: " + "; ".join(sorted(machines)) + ". "
        "No GPU was available to these runs: the same commands run unchanged on a CUDA machine (the encoder "
        "then uses fp16 and the Embedder a GPU), and their figures belong here when measured there.",
        "",
        "## Headlines",
        "",
        headlines(found),
        "",
    ]
    for name in ORDER:
        md = results / f"{name}.md"
        if not md.exists():
            continue
        body = re.sub(r"\]\((?!https?://)", f"]({rel}/", md.read_text())  # plots sit beside the results
        body = body.replace(f"## {name}\n", f"## {name}: `{COMMANDS[name]}`\n", 1)
        parts += [body, ""]
        if (results / f"{name}-profile.md").exists():  # the same loads sampled with --profile
            parts += [f"Where each process's CPU went, sampled (py-spy): "
                      f"[{name}-profile.md]({rel}/{name}-profile.md)", ""]
    text = "\n".join(parts)
    out.write_text(text)
    print(f"wrote {out}")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(REPO / "docs" / "benchmarks"))
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--readme", default=str(REPO / "README.md"), help="its headline block is rewritten; '' skips")
    args = parser.parse_args(argv)
    results, out = Path(args.results).resolve(), Path(args.out).resolve()
    build(results, out)
    if args.readme:
        readme = Path(args.readme).resolve()
        update_readme(readme, load(results), out.relative_to(readme.parent).as_posix()
                      if out.is_relative_to(readme.parent) else str(out))


if __name__ == "__main__":
    main()
