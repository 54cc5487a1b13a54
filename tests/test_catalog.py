"""The catalog against Milvus Lite and a real Milvus server: same code, same behaviour."""

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from lookalike.milvus.catalog import Catalog, Entry, label_filter
from lookalike.milvus.engines import open_catalog
from lookalike.errors import BackendUnavailable, NotFound, SchemaMismatch
from lookalike.settings import MilvusSettings

from harness.servers import wait_until

DIM = 32


def unit(rng, n):
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["lite", "server"])
def milvus(request, tmp_path):
    """(uri, settings overrides) for a fresh collection on each backend."""
    # Deadlines for a busy machine: two suites at once made a 2,000-row upsert pass the default
    # 10 s. No test here that takes this fixture is about deadlines. An index rebuild drops the
    # old version at once: the wait for searches sent to it is for readers, and only the test of
    # a rebuild under search load has them (it sets the wait back).
    retire = MilvusSettings().index.model_copy(update={"retire_after_s": 0.0})
    if request.param == "lite":
        return MilvusSettings(uri=str(tmp_path / "t.db"), lite_server=False, timeout_s=60, index=retire)
    server = request.getfixturevalue("milvus_server")
    return MilvusSettings(uri=server.uri, collection=f"t_{abs(hash(request.node.name)) % 10**8}", timeout_s=60,
                          index=retire)


def entries(vectors, labels=("a", "b")):
    return [Entry(id=1000 + i, key=f"k{i}.png", label=labels[i % len(labels)], source=f"src/{i}.png",
                  embedding=v) for i, v in enumerate(vectors)]


def test_roundtrip_search_filter_get_delete(milvus):
    rng = np.random.default_rng(0)
    vectors = unit(rng, 300)
    catalog = open_catalog(milvus, DIM)
    assert catalog.upsert(entries(vectors)) == 300
    catalog.flush()
    assert catalog.count() == 300
    assert catalog.count(expr=label_filter("a")) == 150

    hits = catalog.search(vectors[7], 5)[0]
    assert hits[0].id == 1007 and hits[0].key == "k7.png" and hits[0].label == "b"
    assert hits[0].distance == pytest.approx(0.0, abs=1e-4) and hits[0].score == pytest.approx(1.0, abs=1e-4)
    # L2 distances are squared: score is the cosine similarity of the unit vectors.
    assert hits[1].score == pytest.approx(float(vectors[7] @ vectors[hits[1].id - 1000]), abs=1e-3)
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)

    filtered = catalog.search(vectors[7], 5, expr=label_filter("a"))[0]
    assert len(filtered) == 5 and all(h.label == "a" for h in filtered) and 1007 not in {h.id for h in filtered}

    got = catalog.get_one(1003, with_vectors=True)
    assert got.source == "src/3.png" and np.allclose(got.embedding, vectors[3], atol=1e-5)
    with pytest.raises(NotFound):
        catalog.get_one(42)

    assert catalog.delete([1003, 424242]) == 1
    assert catalog.count() == 299
    assert catalog.existing_ids([1003, 1004]) == {1004}
    page = catalog.list(offset=0, limit=10)
    assert len(page) == 10 and all(isinstance(e.id, int) for e in page)
    catalog.close()


def test_a_client_reads_its_own_writes_at_once(milvus):
    """Reads run at Session consistency (a search on a server does not wait for the next time
    tick, which Strong does: ~200 ms each), and still see the client's own writes unflushed."""
    assert milvus.consistency_level == "Session"
    rng = np.random.default_rng(4)
    vectors = unit(rng, 40)
    catalog = open_catalog(milvus, DIM)
    catalog.upsert(entries(vectors[:20]))
    catalog.search(vectors[0], 1)
    catalog.upsert(entries(vectors)[20:])  # no flush
    assert catalog.search(vectors[33], 1)[0][0].id == 1033
    assert catalog.existing_ids([1033, 1039]) == {1033, 1039}
    catalog.close()


def test_a_lite_collection_past_its_fast_size_says_to_move_to_a_server(milvus):
    rng = np.random.default_rng(5)
    catalog = open_catalog(milvus.model_copy(update={"lite_fast_max_rows": 5}), DIM)
    catalog.upsert(entries(unit(rng, 5)))
    assert "warning" not in catalog.describe()
    catalog.upsert([Entry(id=77, key="k", label="", source="", embedding=unit(rng, 1)[0])])
    warning = catalog.describe().get("warning")
    if milvus.is_lite:
        assert "6 images in Milvus Lite" in warning and "Milvus server" in warning
    else:
        assert warning is None  # a server has no such limit
    catalog.close()


def test_same_image_twice_is_one_entity(milvus):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3)
    catalog = open_catalog(milvus, DIM)
    catalog.upsert(entries(vectors))
    catalog.upsert(entries(vectors))  # the same ids again (same content hash)
    catalog.flush()
    assert catalog.count() == 3


def test_quoting_in_label_filters(milvus):
    rng = np.random.default_rng(2)
    catalog = open_catalog(milvus, DIM)
    catalog.upsert(entries(unit(rng, 4), labels=('say "hi"', "back\\slash")))
    catalog.flush()
    assert catalog.count(expr=label_filter('say "hi"')) == 2
    assert catalog.count(expr=label_filter("back\\slash")) == 2
    assert catalog.count(expr=label_filter('" or id > 0 or label == "')) == 0


def test_concurrent_inserts_of_one_image_create_it_once(milvus):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    catalog = open_catalog(milvus, DIM)
    entry = entries(unit(rng, 1))[0]
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda _: catalog.insert_new([entry]), range(8)))
    assert sorted(map(len, created)) == [0] * 7 + [1]
    assert catalog.count() == 1 and catalog.insert_new([entry]) == set()


def test_non_ascii_labels_filter_search_and_list(milvus):
    rng = np.random.default_rng(3)
    vectors = unit(rng, 6)
    catalog = open_catalog(milvus, DIM)
    catalog.upsert(entries(vectors, labels=("café", "🍎", "日本")))
    catalog.flush()
    for label in ("café", "🍎", "日本"):
        assert catalog.count(expr=label_filter(label)) == 2
        assert {e.label for e in catalog.list(expr=label_filter(label))} == {label}
        assert {h.label for h in catalog.search(vectors[0], 6, expr=label_filter(label))[0]} == {label}
    assert catalog.count(expr=label_filter("cafe")) == 0


def test_dimension_mismatch_is_refused(milvus):
    open_catalog(milvus, DIM).ensure_ready()
    with pytest.raises(SchemaMismatch):
        open_catalog(milvus, DIM * 2).ensure_ready()


def test_a_collection_records_its_descriptor_and_refuses_another(milvus):
    made = open_catalog(milvus, DIM, descriptor="m/gem3/pad").ensure_ready()
    assert made.describe()["descriptor"] == "m/gem3/pad"
    open_catalog(milvus, DIM, descriptor="m/gem3/pad").ensure_ready()  # the same: taken
    open_catalog(milvus, DIM).ensure_ready()  # vectors of no model (a benchmark's): nothing to check
    for other in ("m/avg/pad", "m/gem3/crop", "n/gem3/pad"):
        with pytest.raises(SchemaMismatch, match="holds m/gem3/pad vectors but the settings give " + other):
            open_catalog(milvus, DIM, descriptor=other).ensure_ready()
    made.versions.build_index()  # the next version of the collection records it too
    with pytest.raises(SchemaMismatch):
        open_catalog(milvus, DIM, descriptor="m/avg/pad").ensure_ready()


def test_a_collection_from_before_descriptors_is_taken_as_average_pooling(milvus):
    open_catalog(milvus, DIM).ensure_ready()  # no descriptor recorded, as collections made before
    open_catalog(milvus, DIM, descriptor="m/avg/pad").ensure_ready()
    with pytest.raises(SchemaMismatch, match="Set model.pooling: avg to keep using it"):
        open_catalog(milvus, DIM, descriptor="m/gem3/pad").ensure_ready()


INDEXES = [("IVF_FLAT", {"nlist": 8}), ("IVF_SQ8", {"nlist": 8}), ("HNSW", {"M": 8, "efConstruction": 64}),
           ("FLAT", {})]


# Every type on Lite, where the files faiss built are read back; on the server (the same code,
# each rebuild there ~19 s of flushing and loading) the default and the one without parameters.
@pytest.mark.parametrize("milvus, index_type, build",
                         [("lite", *index) for index in INDEXES] + [("server", *INDEXES[2]), ("server", *INDEXES[3])],
                         indirect=["milvus"])
def test_configured_index_is_the_one_built(milvus, index_type, build):
    settings = milvus.model_copy(update={"index": milvus.index.model_copy(update={
        "type": index_type, "build": {**milvus.index.build, index_type: build}})})
    rng = np.random.default_rng(3)
    vectors = unit(rng, 2000)
    catalog = open_catalog(settings, DIM)
    catalog.upsert(entries(vectors))
    info = catalog.versions.build_index()
    assert info["type"] == index_type and info["metric"] == "L2"
    assert info["params"] == build
    # Still finds each vector itself.
    assert catalog.search(vectors[11], 1)[0][0].id == 1011
    if settings.is_lite:
        _check_lite_index_files(Path(settings.uri) / "collections" / catalog.versions.physical(), index_type, build)


def _check_lite_index_files(collection_dir: Path, index_type: str, build: dict):
    """Milvus Lite drops flat build params silently: read what faiss really built."""
    manifest = json.loads((collection_dir / "manifest.json").read_text())
    spec = manifest["index_specs"]["embedding"]
    assert spec["build_params"] == build
    if index_type == "FLAT":
        assert spec["index_type"] == "FLAT"
        return
    # Milvus Lite writes the index file a moment after it reports the index finished.
    wait_until(lambda: list(collection_dir.glob("partitions/*/indexes/*.idx")), 30, "the index file")
    files = sorted(collection_dir.glob("partitions/*/indexes/*.idx"))
    raw = faiss.read_index(str(files[-1]))  # keep a reference: downcast does not own it
    index = faiss.downcast_index(raw)
    if index_type.startswith("IVF"):
        assert index.nlist == build["nlist"]
    else:
        assert index.hnsw.efConstruction == build["efConstruction"]
        assert index.hnsw.nb_neighbors(1) == build["M"]


def test_unreachable_milvus_is_backend_unavailable():
    from harness.servers import free_port

    catalog = Catalog(MilvusSettings(uri=f"http://127.0.0.1:{free_port()}", timeout_s=2), DIM)
    with pytest.raises(BackendUnavailable) as info:
        catalog.count()
    assert info.value.backend == "milvus" and info.value.status == 503
    assert "127.0.0.1" not in info.value.message and "127.0.0.1" in info.value.detail  # the address: log only
    assert catalog.describe()["healthy"] is False


def test_long_unicode_fields_are_clipped_to_the_varchar_byte_limits(milvus):
    rng = np.random.default_rng(4)
    label = "猫" * 200  # 600 bytes in UTF-8, over the 256-byte column
    catalog = open_catalog(milvus, DIM)
    catalog.upsert([Entry(id=7, key="k.png", label=label, source="s" * 5000, embedding=unit(rng, 1)[0])])
    got = catalog.get_one(7)
    assert got.label == "猫" * 85 and len(got.label.encode()) <= 256
    assert len(got.source) == 2048


def test_an_index_rebuild_keeps_search_and_writes_going(milvus):
    """The rebuild fills the next version of the collection and moves the alias: searches all
    answer meanwhile, and rows written or deleted meanwhile are carried over, as are rows not
    flushed yet when it starts."""
    import threading

    milvus = milvus.model_copy(update={"index": MilvusSettings().index})  # searches go on as the old version retires
    rng = np.random.default_rng(9)
    vectors = unit(rng, 2000)
    catalog = open_catalog(milvus, DIM)
    catalog.upsert(entries(vectors))
    catalog.flush()
    unflushed = unit(np.random.default_rng(8), 20)
    catalog.upsert(Entry(id=6000 + i, key="late", label="l", source="", embedding=v) for i, v in enumerate(unflushed))
    before = catalog.versions.physical()
    reader, stop, answers, failures = open_catalog(milvus, DIM), threading.Event(), [], []

    def search() -> None:
        while not stop.is_set():
            i = int(rng.integers(10, 2000))  # not the ten deleted meanwhile
            try:
                answers.append(reader.search(vectors[i], 1)[0][0].id == 1000 + i)
            except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                failures.append(repr(exc))

    def write_after_the_copy(message: str) -> None:
        """Called by the rebuild as it goes: once the rows are copied, add and delete some."""
        if message.startswith("copied"):
            extra = unit(np.random.default_rng(10), 30)
            catalog.upsert(Entry(id=5000 + i, key="new", label="n", source="", embedding=v) for i, v in enumerate(extra))
            catalog.delete([1000 + i for i in range(10)])

    threads = [threading.Thread(target=search) for _ in range(2)]
    for t in threads:
        t.start()
    info = catalog.versions.build_index(progress=write_after_the_copy)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert len(answers) > 10 and all(answers)
    assert info["type"] == milvus.index.type
    after = catalog.versions.physical()
    assert after != before and not catalog.connection.client.has_collection(before)  # the old version is gone
    assert catalog.count() == 2000 + 20 + 30 - 10
    assert catalog.existing_ids([1000, 1011, 5029, 6019]) == {1011, 5029, 6019}
    reader.close()
    catalog.close()


def test_region_rows_find_the_whole_one_result_per_image(milvus):
    """Where the gallery keeps region vectors, a search takes the best of each image's rows: one
    result per image, saying which region matched. Label filters, deletes, copies (migrate) and
    index rebuilds carry them; a gallery with them is another descriptor than one without."""
    from lookalike.embedding.images import Box

    layout = [Box(0.0, 0.0, 0.5, 0.5, True), Box(0.5, 0.5, 0.5, 0.5, True)]
    rng = np.random.default_rng(11)
    whole, parts = unit(rng, 50), unit(rng, 100).reshape(50, 2, DIM)
    catalog = open_catalog(milvus, DIM, descriptor="m/gem3/pad/r0.5x2", regions=layout)
    gallery = entries(whole)
    for entry, vectors in zip(gallery, parts):
        entry.regions = vectors
    catalog.upsert(gallery)
    catalog.flush()
    assert catalog.count() == 50 and catalog.describe()["regions"] == ["0,0,0.5,0.5", "0.5,0.5,0.5,0.5"]

    hits = catalog.search(parts[7, 1], 5)[0]
    assert (hits[0].id, hits[0].region, hits[0].key, hits[0].label) == (1007, "0.5,0.5,0.5,0.5", "k7.png", "b")
    assert hits[0].score == pytest.approx(1.0, abs=1e-4) and len({h.id for h in hits}) == len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    hits = catalog.search(whole[3], 5)[0]
    assert (hits[0].id, hits[0].region) == (1003, None)
    filtered = catalog.search(parts[7, 1], 5, expr=label_filter("a"))[0]
    assert filtered and all(h.label == "a" for h in filtered) and 1007 not in {h.id for h in filtered}

    catalog.delete([1007])
    assert 1007 not in {h.id for h in catalog.search(parts[7, 1], 5)[0]}
    # Its region rows went too (read at Strong: a 2.3 server's Session read lags a delete).
    assert not catalog.connection.client.query(catalog.regions_name, filter="image in [1007]", output_fields=["rid"],
                                    consistency_level="Strong")
    copied = {e.id: e for batch in catalog.rows.entries(with_vectors=True, with_regions=True) for e in batch}
    assert len(copied) == 49 and np.allclose(copied[1003].regions, parts[3], atol=1e-5)

    catalog.versions.build_index()
    hits = catalog.search(parts[9, 0], 1)[0]
    assert (hits[0].id, hits[0].region) == (1009, "0,0,0.5,0.5")
    assert catalog.versions.physical(catalog.regions_name).endswith("_regions__2")
    # A part's score counts region_margin below a whole image's: a query nearer a part of 1006
    # than to the whole of 1005 finds 1006 first without a margin, 1005 with one past the gap.
    query = 0.6 * whole[5] + 0.8 * parts[6, 0]
    query /= np.linalg.norm(query)
    gap = float(query @ parts[6, 0] - query @ whole[5])
    assert gap > 0
    assert [(h.id, h.region) for h in catalog.search(query, 1)[0]] == [(1006, "0,0,0.5,0.5")]
    margined = open_catalog(milvus, DIM, descriptor="m/gem3/pad/r0.5x2", regions=layout, region_margin=gap + 0.05)
    assert [(h.id, h.region) for h in margined.search(query, 1)[0]] == [(1005, None)]
    part = margined.search(parts[9, 0], 1)[0][0]
    assert (part.id, part.region) == (1009, "0,0,0.5,0.5") and part.score == pytest.approx(0.95 - gap, abs=1e-4)
    margined.close()
    # A near-duplicate scan compares whole images: an image that is one of 1004's parts is not its
    # duplicate (it would be, at score 1, through 1004's region row); a copy of 1002's whole is.
    from lookalike.quality import duplicates
    from lookalike.settings import DuplicateSettings

    planted = entries(np.stack([parts[4, 0], whole[2]]))
    for n, entry in enumerate(planted):
        entry.id, entry.key, entry.regions = 1100 + n, f"p{n}.png", unit(rng, 2)
    catalog.upsert(planted)
    # An entry with another number of parts than the layout's is refused before anything is written.
    odd = entries(unit(rng, 1))[0]
    odd.id, odd.regions = 1200, unit(rng, 3)
    with pytest.raises(ValueError, match="entry 1200 has 3 region vectors; this gallery keeps 2"):
        catalog.upsert([odd])
    with pytest.raises(ValueError, match="entry 1200 has 3"):
        catalog.insert_new([odd])
    catalog.flush()
    assert not catalog.existing_ids([1200], consistency_level="Strong")
    groups = [sorted(g.ids) for g in duplicates.find(catalog, DuplicateSettings(threshold=0.9)).groups]
    assert groups == [[1002, 1101]]
    with pytest.raises(SchemaMismatch):
        open_catalog(milvus, DIM, descriptor="m/gem3/pad").ensure_ready()
    catalog.versions.drop()
    assert not catalog.connection.client.has_collection(catalog.regions_name) and not catalog.exists()
    catalog.close()


@pytest.mark.parametrize("milvus", ["lite"], indirect=True)
def test_the_previous_models_reads_stay_on_its_version_while_the_aliases_move(milvus):
    """A router's check reads two things: whether a re-embed stages, and what the alias holds.
    Here a re-embed's switch lands between the two reads of the previous model's check; its
    read must still go to its own version (kept), never to the new model's vectors. (Read in
    the other order, the check saw the previous model's alias and no staging alias at once: a
    busy CI run's searches met the new vectors until the next check.)"""
    settings = milvus.model_copy(update={"route_check_s": 0.001})  # every read checks again
    old = open_catalog(settings, DIM, descriptor="m/gem3/pad").ensure_ready()
    vectors = unit(np.random.default_rng(5), 40)
    old.upsert(entries(vectors))
    old.versions.build_index()  # a gallery in versions, as a re-embed needs
    new = open_catalog(settings, DIM, descriptor="m/avg/pad")  # the next model: its versions only
    staged = new.versions.stage(lambda message: None)
    target = open_catalog(settings.model_copy(update={"collection": staged.alias}), DIM,
                          descriptor="m/avg/pad").ensure_ready()
    target.upsert(entries(-vectors))  # the same images under the other model: other vectors
    assert old.search(vectors[:1], 1)[0][0].score > 0.999  # while staging: pinned to its version

    call, switched = old.router._call, []

    def switch_between_the_reads(name, *args, **kwargs):
        answer = call(name, *args, **kwargs)
        if not switched and name in ("has_collection", "describe_collection"):  # the check's first read
            switched.append(new.versions.switch(staged, lambda ids: None, lambda message: None))
        return answer

    old.router._call = switch_between_the_reads
    hit = old.search(vectors[:1], 1)[0][0]
    assert switched == [len(vectors)]
    assert hit.id == 1000 and hit.score > 0.999  # its own version, not the new model's
    old.router._call = call
    assert old.search(vectors[1:2], 1)[0][0].score > 0.999  # and after, from the kept version
    assert new.search(-vectors[:1], 1, descriptor="m/avg/pad")[0][0].score > 0.999  # the new model: the alias
