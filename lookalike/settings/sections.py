"""The sections of the one settings object (``lookalike.settings.Settings``): each a typed
model of its fields and their defaults, defined once here, with the reason for each default
where it was measured.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

IndexType = Literal["FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW"]
Metric = Literal["L2", "IP", "COSINE"]


def _absolute(value: str) -> str:
    """A local path made absolute against the working directory ("" stays unset)."""
    return str(Path(value).expanduser().resolve()) if value else ""


LocalPath = Annotated[str, AfterValidator(_absolute)]
# What ingest takes for an image by default (ingest.extensions).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


class _Section(BaseModel):
    # Defaults are validated like given values: a default relative path is made absolute at load
    # time (LocalPath), as one from the file or the environment is, so that processes with
    # another working directory (Ray workers) see the same place.
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _default_build() -> dict[str, dict[str, int]]:
    return {"FLAT": {}, "IVF_FLAT": {"nlist": 1024}, "IVF_SQ8": {"nlist": 1024},
            "HNSW": {"M": 16, "efConstruction": 200}}


def _default_search() -> dict[str, dict[str, int]]:
    return {"FLAT": {}, "IVF_FLAT": {"nprobe": 16}, "IVF_SQ8": {"nprobe": 16}, "HNSW": {"ef": 64}}


class IndexSettings(_Section):
    """The index type, and build/search parameters per type: switching ``type`` alone picks
    that type's parameters."""

    type: IndexType = "HNSW"
    build: dict[IndexType, dict[str, int]] = Field(default_factory=_default_build)
    search: dict[IndexType, dict[str, int]] = Field(default_factory=_default_search)
    build_timeout_s: float = 600.0
    # After a rebuild moves the alias, the old version stays this long before it is dropped, so
    # that searches already sent to it finish (dropping it at once failed two in flight on a
    # Milvus 2.3 server: "failed to get delegator ... for channel").
    retire_after_s: float = Field(default=2.0, ge=0.0)
    # A re-embed's switch catches up with the images written meanwhile, then moves the alias
    # with writers held off; this many tries while writes keep arriving in between.
    switch_attempts: int = Field(default=5, ge=1)

    @field_validator("type", mode="before")
    @classmethod
    def _upper_type(cls, value):
        return value.upper() if isinstance(value, str) else value

    @field_validator("build", "search", mode="before")
    @classmethod
    def _upper_keys(cls, value):
        # Environment variable names arrive lower-cased (LOOKALIKE_MILVUS__INDEX__BUILD__IVF_FLAT).
        return {k.upper(): v for k, v in value.items()} if isinstance(value, dict) else value

    @property
    def build_params(self) -> dict[str, int]:
        return dict(self.build.get(self.type, {}))

    @property
    def search_params(self) -> dict[str, int]:
        return dict(self.search.get(self.type, {}))


class MilvusSettings(_Section):
    # A path ending in .db is a Milvus Lite data directory; anything with a scheme is a server.
    uri: str = "data/lookalike.db"
    token: SecretStr = SecretStr("")
    db_name: str = ""
    collection: str = "images"
    metric: Metric = "L2"  # L2 | IP | COSINE: the vectors are unit length, so all three rank alike
    index: IndexSettings = Field(default_factory=IndexSettings)
    # Reads (search, query, get) at this level. Session: a client sees its own writes at once
    # without waiting for the cluster's next time tick; Strong makes every search on a Milvus
    # server wait for one (~200 ms, measured by benchmarks/vector_search.py).
    consistency_level: Literal["Strong", "Bounded", "Session", "Eventually"] = "Session"
    timeout_s: float = 10.0
    insert_batch_size: int = Field(default=256, ge=1)
    # How often a process checks what the gallery's alias holds (routing.py): a re-embed's
    # switch waits twice this long, so that every replica of the previous model has pinned it.
    route_check_s: float = Field(default=1.0, gt=0, le=60)
    # For a local uri (a .db path): lite (embedded Milvus Lite), local_server (the standalone
    # Milvus server Lookalike runs in its own loopback-only namespaces, for large galleries), or
    # auto: what the data directory remembers (<uri>.engine.json), else Lite; an ingest of more
    # than lite_fast_max_rows images into a fresh gallery picks local_server and remembers it.
    engine: Literal["auto", "lite", "local_server"] = "auto"
    # The local server's data; empty: milvus-server/ beside the Lite uri.
    local_server_dir: LocalPath = ""
    # Milvus Lite opens a data directory in one process only. With this on, every process
    # (Serve replicas, the CLI, an ingest job) shares one local `milvus-lite server`.
    lite_server: bool = True
    # A local process (the Lite server, the local Milvus server) that does not answer this long
    # after its start is reported as failed to start (the Milvus server takes 5-17 s here).
    local_start_timeout_s: float = Field(default=180.0, gt=0)
    # A local process stops this long after the last process using it has gone (0: only when
    # stopped by `lookalike local-milvus stop` or by the `lookalike serve` that started it).
    local_idle_stop_s: float = Field(default=10.0, ge=0)
    # Past this many entities a Milvus Lite collection stops being fast: its per-search cost
    # grows with the row count whatever the index (HNSW, 1280-d: 6.9 ms at 10k, 27 ms at 50k,
    # ~0.5 ms per 1k rows; benchmarks/vector_search.py), passing the original's 15 ms near 25k.
    # Status, the CLI and the logs then say to move to a Milvus server, and engine auto sends a
    # fresh gallery this large to the local server.
    lite_fast_max_rows: int = Field(default=25_000, ge=1)

    @property
    def is_lite(self) -> bool:
        return is_lite_uri(self.uri)

    @property
    def engine_file(self) -> Path:
        """Where a local data directory remembers its engine (see ``milvus.engines.engine``)."""
        return Path(self.uri).with_suffix(".engine.json")

    @property
    def local_server_path(self) -> Path:
        return Path(self.local_server_dir) if self.local_server_dir else Path(self.uri).parent / "milvus-server"

    @field_validator("uri")
    @classmethod
    def _resolve_lite_path(cls, value: str) -> str:
        return _absolute(value) if is_lite_uri(value) else value


class RegionSettings(_Section):
    """Region vectors per gallery image, so that a part of an image (a crop of it, or a box drawn
    on a query) finds the whole (lookalike/embedding/regions.py). Each region is a square-ish part of the
    image: for each fraction of the side in ``sides``, ``steps`` x ``steps`` boxes spread evenly
    over it, each cut out and embedded as a query box is, and stored as a row of its own in the
    ``<collection>_regions`` collection; a search takes the best of an image's rows, one result
    per image, and says which region matched.
    Measured on openclipart (benchmarks/quality.py, exact search): a random box of half of each
    side of a gallery image finds it first 0.44 of the time with the whole only, 0.61 with
    half-side parts at 2 x 2, 0.76 at 3 x 3 (the default; 0.92 within the top 5).
    Cost per image, with the defaults: 9 more rows (9 more vectors of the model's dimension,
    5 KB each at 1,280-d fp32: ~9 GB more index RAM at 200,000 images) and 9 more forward
    passes at ingest (10 in all). Off by default for that cost. Turning them on or off, or
    another layout, is another descriptor: a new collection, re-ingested.
    ``margin``: a part's score counts this much below a whole image's, so that a whole match
    wins unless a part matches clearly better. Without it, parts crowded whole-image search
    (P@10 0.570 -> 0.545, copy recall down 0.01-0.02 on most edits); at 0.06 P@10 is 0.571,
    copy recall within 0.02 of the whole-only figures, and half-side boxes still 0.76 (random
    30-70 % boxes 0.73 -> 0.69). A search setting: changing it needs no re-ingest."""

    enabled: bool = False
    sides: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(default_factory=lambda: [0.5], min_length=1)
    steps: int = Field(default=3, ge=1, le=4)
    margin: float = Field(default=0.06, ge=0.0, le=1.0)


class ModelSettings(_Section):
    # efficientnet-lite0 (1280-d, ImageNet weights in a package) | resnet50 (2048-d, the original's)
    # | immich-clip (a CLIP / SigLIP export in immich's folder layout, at `weights`: its image tower,
    # and its text tower for search by words; lookalike/embedding/clip_folder.py) | open-clip:<arch>
    # (an open_clip architecture, `weights` its pretrained tag or checkpoint file; exported to that
    # layout under cache_dir at the first load: lookalike/embedding/open_clip_source.py)
    # | timm:<arch> (image only, `weights` a local weights file) | onnx-file (image only, `weights`
    # an .onnx encoder with a .json beside it: embed_dim, size, mean, std)
    name: str = "efficientnet-lite0"
    # How the last feature map becomes the vector (lookalike/embedding/descriptors.py): gem (generalised
    # mean, p = gem_p) or avg (global average, the original's). Measured on openclipart
    # (benchmarks/quality.py, exact search): gem raised P@10 0.557 -> 0.570 and mean copy
    # recall@1 0.873 -> 0.898 at no cost. Changing it changes every vector: a collection records
    # its descriptor and refuses settings that give another (re-ingest into a new collection).
    pooling: Literal["gem", "avg"] = "gem"
    gem_p: float = Field(default=3.0, ge=1.0, le=16.0)
    # A local weights file (.pth / .pt state dict). Empty: the model's own source
    # (the package's bundled file, or torchvision's weights enum / hub cache). immich-clip: the
    # export's folder; open-clip: a pretrained tag or a checkpoint file (recorded with the
    # collection's descriptor, by the folder's or the file's name).
    weights: LocalPath = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # onnx: onnxruntime on the network exported from the torch model and its weights (cached
    # under cache_dir, keyed by the weights file and the packages that build it: a process that
    # finds it loads without torch); torch: PyTorch. auto: onnx on the CPU (the
    # faster there, benchmarks/embedding.py) unless precision asks for bf16/fp16; torch on CUDA.
    # Every runtime gives the same vectors (cosine >= 0.995): one collection takes them all.
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    cache_dir: LocalPath = "data/models"
    # torch only. auto: fp16 on CUDA; bf16 autocast + channels_last on CPUs with native bf16; else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_threads: int = Field(default=0, ge=0)  # 0: the CPUs this process may use
    # onnxruntime's threads busy-wait for the next run. Off: in a server they share the CPUs with
    # decoding, the proxy and Milvus, and spinning took ~26 ms of CPU per request from them
    # (benchmarks/http_load.py: 8 clients, 38 -> 45 QPS with it off). On: ~20% faster at batch 1
    # when the process has its CPUs to itself.
    spin_wait: bool = False
    batch_size: int = Field(default=32, ge=1)  # images per forward pass in batch jobs (index, ingest)
    # efficientnet-lite0 only: search by words through its ImageNet classifier's rows for the
    # classes a word names (lookalike/embedding/class_words.py). On: it met its target, mean P@10
    # >= 0.65 over words with ImageNet counterparts on openclipart (benchmarks/words.py).
    class_words: bool = True
    regions: RegionSettings = Field(default_factory=RegionSettings)


class S3Settings(_Section):
    endpoint: str = "127.0.0.1:9000"  # host:port, as the minio SDK takes it
    bucket: str = "lookalike"
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    secure: bool = False
    region: str = ""
    # Base URL under which objects are publicly readable (e.g. a CDN or
    # http://minio:9000/lookalike). Empty: presigned GET URLs.
    public_url_base: str = ""
    # Set an anonymous-read bucket policy when the bucket is created.
    public_read: bool = False
    presign_expiry_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    timeout_s: float = 10.0


class StoreSettings(_Section):
    backend: Literal["local", "s3"] = "local"
    local_dir: LocalPath = "data/images"
    s3: S3Settings = Field(default_factory=S3Settings)
    # An entry indexed in place (its original is the user's own object, not one the service
    # uploaded) is only unlinked by a delete; true deletes that object as well.
    delete_foreign_originals: bool = False


class ImageLimits(_Section):
    """The one preprocessing's limits and its fit to the model's square input."""

    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1)  # per image (an upload, a fetched URL, a file)
    max_pixels: int = Field(default=50_000_000, ge=1)  # larger images are refused from their header (bombs)
    min_side: int = Field(default=8, ge=1)
    # Longest side / shortest side; past it an image is refused from its header (0: no limit).
    # Panoramas are ~4-10; a 100000x8 strip (a few KB of PNG) is 12500.
    max_aspect_ratio: float = Field(default=50.0, ge=0)
    # pad: the whole picture on white; crop: the centre square; stretch: squashed. Measured by
    # benchmarks/quality.py on openclipart (P@10 / mAP@10): pad 0.5575 / 0.512, stretch 0.5567 /
    # 0.511 (a tie), crop 0.532 / 0.485; on square images (Fashion-MNIST) all three are the same.
    # Changing it changes every vector: re-ingest into a new collection.
    fit: Literal["pad", "crop", "stretch"] = "pad"


class ApiSettings(_Section):
    top_k_default: int = Field(default=10, ge=1)
    top_k_max: int = Field(default=100, ge=1)
    page_size_max: int = Field(default=500, ge=1)
    # Write routes (insert, delete, index) require `Authorization: Bearer <key>` or
    # `X-API-Key: <key>` when set (the original's routes also take it as the JSON `key`). Unset,
    # writes are taken only from this machine and never from another site's page
    # (deployments/access.py).
    api_key: SecretStr = SecretStr("")
    # Reverse proxies (addresses or CIDR networks) whose forwarding headers name the client, as
    # uvicorn's forwarded_allow_ips. Empty: a keyless write that carries any forwarding header
    # (X-Forwarded-For, Forwarded, X-Real-IP, ...) is refused, since a proxy on this machine would
    # make every client look local. Matters only without an API key.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Origins whose pages may call the read routes (search, similar, status, images, the
    # original's /search/ and /status/) from a browser: ["*"] any, [] none. Never with
    # credentials, never the write routes.
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    # Search by `{"url": ...}`: the server fetches the image (http/https only) from public
    # addresses only (lookalike/storage/url_fetch.py), within one deadline for the whole fetch.
    url_fetch: bool = True
    url_fetch_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Hosts and CIDRs that may be fetched although not public (an internal image server), e.g.
    # ["images.internal", "10.20.0.0/16"]. Empty: public addresses only.
    url_fetch_allow: list[str] = Field(default_factory=list)
    # The service's public address (https://search.example.com), for the absolute image URLs the
    # original's /search/ and /insert/ answer. Unset: the address a request was sent to when it
    # names this machine (localhost, a loopback address), else the URLs stay relative: a Host
    # header is never copied into a URL unchecked.
    public_url: str = ""

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment):
            raise ValueError(f"api.public_url: {value!r} is not an http(s) address without a query")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(f"api.trusted_proxies: {entry!r} is not an IP address or CIDR network") from None
        return value

    @model_validator(mode="after")
    def _k_bounds(self) -> "ApiSettings":
        if self.top_k_default > self.top_k_max:
            raise ValueError("api.top_k_default must not exceed api.top_k_max")
        return self


class ServeSettings(_Section):
    # HTTP host/port, replicas and autoscaling live in the Serve config (config/serve.yaml).
    # @serve.batch on the Embedder.
    batch_max_size: int = Field(default=16, ge=1)
    # 0: a batch takes the requests that queued while the previous one ran, and a lone request
    # waits for nothing. benchmarks/http_load.py, 1 client: p50 48 ms at 0 against 60 ms at
    # 0.01 (the wait was pure delay); 8 clients on 2 vCPUs: the same QPS either way.
    batch_wait_timeout_s: float = Field(default=0.0, ge=0)
    # The Ingress's threads that decode uploads arriving beside others (a lone search decodes on
    # the event loop's thread); 0: one per CPU the replica may run on. More threads than cores
    # only contend: 8 clients on 2 vCPUs, 2 threads against Python's default 6 (cores + 4): 77
    # QPS against 73, 0.5 ms less of the Ingress's CPU a search (benchmarks/http_load.py).
    decode_threads: int = Field(default=0, ge=0)
    # Deadline for one call from the ingress to the Embedder / Searcher.
    handle_timeout_s: float = 30.0
    # POST /api/v1/index waits this long for the rebuild, then answers 202 while it goes on.
    index_wait_s: float = Field(default=20.0, gt=0)

    @model_validator(mode="after")
    def _index_wait_within_deadline(self) -> "ServeSettings":
        if self.index_wait_s >= self.handle_timeout_s:
            raise ValueError("serve.index_wait_s must be shorter than serve.handle_timeout_s")
        return self


class IngestSettings(_Section):
    """The Ray Data ingest job (python -m ingest)."""

    # separate: read + decode tasks, embedding actors, writers; fused: one actor pool doing all
    # three (each actor reads, decodes, embeds on one thread and writes its files: on CPUs alone
    # the hand-offs between pools cost more than they overlap); auto: fused without GPUs,
    # separate with them. ingest/pipeline.py
    stages: Literal["auto", "fused", "separate"] = "auto"
    read_batch_size: int = Field(default=32, ge=1)  # files per read+decode task call (separate stages)
    # Read tasks and embedding actors must differ in resources, or Ray Data fuses decoding into
    # the embedding actors and loses the parallel decode.
    read_task_cpus: float = Field(default=0.25, gt=0)
    # 0: one per GPU; without GPUs, one for every ~4/3 free CPUs, each on one inference thread
    # (ingest/pipeline.py: embed_pool)
    embed_actors: int = Field(default=0, ge=0)
    embed_actor_cpus: float = Field(default=1.0, ge=0)  # at most (without GPUs: what leaves room)
    embed_actor_gpus: float = Field(default=-1, ge=-1)  # -1: 1 when the cluster has GPUs, else 0
    write_actors: int = Field(default=1, ge=1)
    write_batch_size: int = Field(default=128, ge=1)
    # The pools' actors (models loaded) are all ready before the first batch is handed out, or
    # the run stops after this long saying the cluster lacks resources. Without the wait, on a
    # busy machine the first embedding actor ready took every batch of a small job.
    actors_ready_timeout_s: float = Field(default=600.0, gt=0)
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    exclude_extensions: list[str] = Field(default_factory=list)
    index_wait_s: float = 600.0  # wait this long at the end for the index to cover new rows
    # A backend that fails (object store, Milvus) is tried again this many times, waiting
    # retry_backoff_s, then twice that, ...; then the run stops with the backend named, and
    # running it again completes it exactly.
    retries: int = Field(default=4, ge=0)
    retry_backoff_s: float = Field(default=1.0, ge=0)
    report_dir: LocalPath = "data/reports"


class DuplicateSettings(_Section):
    """Near-duplicate review (``lookalike duplicates``, ``GET /api/v1/duplicates``)."""

    # Two images whose vectors' cosine similarity is at least this are near-duplicates. Measured
    # by benchmarks/quality.py (openclipart, planted copies of six edit kinds + resized +
    # re-encoded): pair precision / recall 0.95 / 0.87 at 0.80, 0.99 / 0.84 at 0.82, 1.00 / 0.72
    # at 0.85. Precision first: the groups are reviewed for deletion.
    threshold: float = Field(default=0.82, ge=-1, le=1)
    neighbours: int = Field(default=10, ge=1, le=100)  # nearest images checked per image
    batch_size: int = Field(default=256, ge=1)  # images per batched search of a scan


def is_lite_uri(uri: str) -> bool:
    return "://" not in uri and uri.rstrip("/").endswith(".db")
