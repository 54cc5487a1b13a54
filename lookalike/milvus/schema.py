"""The Milvus schema of a gallery: its two kinds of collection (the entries, and the region
rows of their parts), the rows they hold (``Entry``, ``Hit``), how a collection and its index
are made, and the check that an existing one holds what the settings give.

Each collection is an alias (``images``) over a versioned collection (``images__1``, ...), see
``versions.py``; the descriptor (what the vectors are: ``descriptors.descriptor_name``) is
recorded as a collection property, since Milvus Lite drops descriptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from lookalike.embedding import regions as region_rows
from lookalike.embedding.descriptors import taken_as_unrecorded
from lookalike.errors import SchemaMismatch
from lookalike.limits import KEY_MAX_BYTES, LABEL_MAX_BYTES, SOURCE_MAX_BYTES

OUTPUT_FIELDS = ["key", "label", "source"]
ROW_FIELDS = ["id", *OUTPUT_FIELDS, "embedding"]  # a whole row: what a copy reads and writes
REGION_FIELDS = ["rid", "image", "region", "label", "embedding"]  # a region row (``regions.py``)
MAX_LIMIT = 16384  # Milvus's largest top-k
DESCRIPTOR_PROPERTY = "lookalike.descriptor"


class Table(NamedTuple):
    """One of the gallery's collections, by its alias: the entries, or their region rows."""

    alias: str
    image_field: str  # where a row holds its image's id
    fields: list[str]  # a whole row: what a copy reads and writes
    per_image: int  # rows per image

    @property
    def is_regions(self) -> bool:
        return self.image_field != "id"


def tables(name: str, regions: int) -> tuple[Table, Table]:
    """The gallery ``name``'s entries and its region rows (``regions`` parts per image)."""
    return Table(name, "id", ROW_FIELDS, 1), Table(f"{name}_regions", "image", REGION_FIELDS, max(1, regions))


@dataclass
class Hit:
    id: int
    key: str
    label: str
    source: str
    distance: float
    score: float  # cosine similarity of the unit vectors, whatever the metric
    region: str | None = None  # the part of the image that matched (fractions x,y,w,h); None: the whole

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Entry:
    id: int
    key: str
    label: str
    source: str
    embedding: np.ndarray | None = None
    regions: np.ndarray | None = None  # (regions, dim): the region vectors, in the layout's order

    def to_row(self) -> dict:
        if self.embedding is None:
            raise ValueError("an entry needs its embedding to be written")
        return {"id": int(self.id), "key": clip(self.key, KEY_MAX_BYTES), "label": clip(self.label, LABEL_MAX_BYTES),
                "source": clip(self.source, SOURCE_MAX_BYTES),
                "embedding": np.asarray(self.embedding, np.float32).tolist()}

    def region_rows(self) -> list[dict]:
        if self.regions is None:
            return []
        label = clip(self.label, LABEL_MAX_BYTES)
        return [{"rid": region_rows.row_id(self.id, i), "image": int(self.id), "region": i, "label": label,
                 "embedding": np.asarray(vector, np.float32).tolist()} for i, vector in enumerate(self.regions)]

    @staticmethod
    def of(row: dict) -> "Entry":
        vec = row.get("embedding")
        return Entry(id=int(row["id"]), key=row.get("key", ""), label=row.get("label", ""),
                     source=row.get("source", ""), embedding=None if vec is None else np.asarray(vec, np.float32))


def clip(text: str, max_bytes: int) -> str:
    """VARCHAR limits count UTF-8 bytes: cut there without splitting a character."""
    data = text.encode()
    return text if len(data) <= max_bytes else data[:max_bytes].decode(errors="ignore")


def plain(row: dict) -> dict:
    """A row as read back (vectors may come as numpy or protobuf floats), ready to write again."""
    return {k: (np.asarray(v, np.float32).tolist() if k == "embedding" else v) for k, v in dict(row).items()}


def label_filter(label: str | None) -> str:
    """A Milvus boolean expression matching one label exactly. The label is written as a string
    literal with only backslash and double quote escaped, so any Unicode label ('café', '🍎')
    matches itself (JSON's \\u escapes do not parse in Milvus). Milvus's filter templates
    (``filter_params``) would bind it instead, but Milvus Lite 3.2 rejects their placeholders."""
    if not label:
        return ""
    return 'label == "' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'


def create(connection, name: str, table: Table, dim: int, descriptor: str) -> None:
    """Make the physical collection ``name`` for ``table`` (no index, not loaded)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                        description="Lookalike image embeddings")
    consistency = connection.settings.consistency_level
    if table.is_regions:
        schema.add_field("rid", DataType.INT64, is_primary=True, description="hash of the image id and region")
        schema.add_field("image", DataType.INT64, description="the image's id in the gallery")
        schema.add_field("region", DataType.INT16, description="its place in the layout (regions.boxes)")
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        connection.call("create_collection", name, schema=schema, consistency_level=consistency)
        return
    schema.add_field("id", DataType.INT64, is_primary=True, description="content hash of the image bytes")
    schema.add_field("key", DataType.VARCHAR, max_length=KEY_MAX_BYTES, description="object-store key")
    schema.add_field("label", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
    schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_MAX_BYTES, description="original name or path")
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    connection.call("create_collection", name, schema=schema, consistency_level=consistency,
                    properties={DESCRIPTOR_PROPERTY: descriptor} if descriptor else None)


def create_index(connection, collection: str, *, exist_ok: bool = False, has_rows: bool = False) -> None:
    """The configured index on ``collection``'s vectors (``exist_ok``: one made meanwhile by
    another process is taken). On a new collection (``has_rows`` False) there is nothing to
    build: the call returns once Milvus has the index (pymilvus's ``sync=False``) instead of
    polling its state, first after 0.5 s; a collection with rows waits for it to be built."""
    from pymilvus.exceptions import MilvusException

    settings = connection.settings
    params = connection.client.prepare_index_params()
    # Nested under "params": Milvus Lite silently drops build parameters given flat.
    params.add_index(field_name="embedding", index_name="embedding", index_type=settings.index.type,
                     metric_type=settings.metric, params={"params": settings.index.build_params})
    try:
        connection.call("create_index", collection, params, timeout=settings.index.build_timeout_s, sync=has_rows)
    except MilvusException as exc:
        if not (exist_ok and "already exist" in str(exc.message)):
            raise


def check(connection, table: Table, dim: int, descriptor: str, gallery: str) -> None:
    """Refuse an existing collection that lacks fields, holds another dimension, or (the
    entries) records another descriptor: its vectors would rank garbage."""
    alias = table.alias
    info = connection.call("describe_collection", alias)
    fields = {f["name"]: f for f in info["fields"]}
    missing = set(table.fields) - set(fields)
    if missing:
        raise SchemaMismatch(f"collection {alias!r} lacks fields {sorted(missing)}; "
                             "use another milvus.collection or drop it")
    found = int(fields["embedding"]["params"]["dim"])
    if found != dim:
        raise SchemaMismatch(f"collection {alias!r} holds {found}-d vectors but the model gives {dim}-d; "
                             "use another milvus.collection for this model, or drop and re-ingest")
    if descriptor and not table.is_regions:
        _check_descriptor((info.get("properties") or {}).get(DESCRIPTOR_PROPERTY), descriptor, gallery)


def _check_descriptor(recorded: str | None, descriptor: str, gallery: str) -> None:
    if recorded is None:  # made before descriptors were recorded
        if not taken_as_unrecorded(descriptor):
            raise SchemaMismatch(
                f"collection {gallery!r} was made before descriptors were recorded, with average pooling; "
                f"the settings give {descriptor}. Set model.pooling: avg to keep using it, or use another "
                "milvus.collection and re-ingest")
        return
    if recorded != descriptor:
        raise SchemaMismatch(
            f"collection {gallery!r} holds {recorded} vectors but the settings give {descriptor}; "
            "set the model settings back, re-embed the gallery under these (lookalike reembed), or use "
            "another milvus.collection")
