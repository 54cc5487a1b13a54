"""Words on the bundled model (lookalike/embedding/class_words.py): P@10 per word over the
openclipart folders that have ImageNet counterparts, through the query path and a Milvus Lite
HNSW index (what `lookalike search --text` and the service run), and by exact search for the
two ways of making a word's direction from its class rows (their plain mean, and the mean less
what all 1,000 rows share: the one shipped). Its mean P@10 through Milvus decides whether
``model.class_words`` is on by default (the target: 0.65). Words ImageNet has no class for (stars, flags,
arrows) must be refused, not answered.

    python -m benchmarks.words [--per-class 40]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Results, markdown_table, openclipart_set

# word -> the openclipart folder it should find (sub-folders with an ImageNet counterpart)
WORDS = {"bird": "birds", "insect": "bugs", "mammal": "mammals", "house": "homes", "computer": "hardware",
         "beverage": "beverages", "drink": "beverages", "dessert": "desserts", "fruit": "fruit", "flower": "flowers",
         "musical instrument": "music", "toy": "toys", "weapon": "weapons", "boat": "boating", "vehicle": "vehicles",
         "car": "vehicles", "ball": "sports"}
UNKNOWN = {"star": "shapes/stars", "flag": "flags", "arrow": "arrows"}  # no ImageNet class: to be refused


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--gallery", default=None, help="a labelled folder (default: the openclipart sample)")
    parser.add_argument("--words", default=",".join(WORDS), help="comma-separated, from the table in this file")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from lookalike import query
    from lookalike.embedding.class_words import ClassWords, classes_for, efficientnet_lite0_rows
    from lookalike.embedding.encoder import ImageEncoder
    from lookalike.errors import InvalidParameter
    from lookalike.indexing.indexer import index_items
    from lookalike.indexing.sources import iter_folder
    from lookalike.milvus.engines import gallery_catalog
    from lookalike.settings import load_settings
    from lookalike.storage.store import make_store

    results = Results("words", args.out, **{k: v for k, v in vars(args).items() if k not in ("out", "gallery")})
    gallery = Path(args.gallery) if args.gallery else openclipart_set(per_class=args.per_class)
    words = {w: WORDS[w] for w in args.words.split(",")}
    with tempfile.TemporaryDirectory() as work:
        settings = load_settings(overrides={"milvus": {"uri": f"{work}/words.db", "lite_server": False},
                                            "store": {"local_dir": f"{work}/images"}})
        encoder, catalog = ImageEncoder(settings.model).load(), gallery_catalog(settings, shared=False)
        items = list(iter_folder(gallery))
        index_items(items, settings, encoder=encoder, catalog=catalog, store=make_store(settings.store))
        path = query.local(encoder, catalog, make_store(settings.store), settings.images)
        rows = ClassWords(efficientnet_lite0_rows())
        stored = [e for batch in catalog.rows.entries(with_vectors=True) for e in batch]
        vectors = np.asarray([e.embedding for e in stored], np.float32)
        labels = np.asarray([e.label for e in stored])
        table = []
        for word, folder in words.items():
            matched, classes = classes_for(word)
            hits = query.run(path.by_text(word, query.Query(10))).hits
            plain = rows.rows[classes].mean(axis=0)
            exact = {name: float((labels[np.argsort(-(vectors @ (d / np.linalg.norm(d))))[:10]] == folder).mean())
                     for name, d in (("plain", plain), ("centred", rows.direction(classes)))}
            table.append({"word": word, "folder": folder, "classes": len(classes),
                          "p_at_10": float(np.mean([h["label"] == folder for h in hits])),
                          "exact_centred": exact["centred"], "exact_plain": exact["plain"]})
            print(f"{word}: {table[-1]}", flush=True)
        refused = []
        for word, folder in UNKNOWN.items():
            try:
                classes_for(word)
                refused.append({"word": word, "folder": folder, "refused": False, "message": ""})
            except InvalidParameter as exc:
                refused.append({"word": word, "folder": folder, "refused": True, "message": exc.message})
        catalog.close()
    mean = {k: round(float(np.mean([r[k] for r in table])), 3) for k in ("p_at_10", "exact_centred", "exact_plain")}
    table.append({"word": "**mean**", "folder": "", "classes": None, **mean})
    results.add("rows", table)
    results.add("refused", refused)
    results.add("mean_p_at_10", mean["p_at_10"])
    results.section(f"Words on efficientnet-lite0: P@10 per word over {len(items)} openclipart images "
                    f"({len({i.label for i in items})} folders); through the query path and Milvus Lite HNSW, and "
                    "exact search for both ways of making the direction",
                    markdown_table(table, ["word", "folder", "classes", "p_at_10", "exact_centred", "exact_plain"],
                                   ["word", "folder", "ImageNet classes", "P@10 (Milvus, shipped)",
                                    "P@10 exact, centred", "P@10 exact, plain mean"]))
    results.section("Words with no ImageNet class: refused",
                    markdown_table(refused, ["word", "folder", "refused", "message"],
                                   ["word", "folder", "refused", "the 422's message"]))
    results.write()
    return results


if __name__ == "__main__":
    main()
