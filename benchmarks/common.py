"""What every benchmark shares: where results go (JSON + Markdown + PNG, with the machine they ran
on), timing, tables, and the labelled data sets. Servers, load and process statistics are the
harness's (``harness/``), shared with the tests.

Timings on shared machines are noisy: each benchmark measures the things it compares side by
side in one run, and its tables show ratios from that run.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from harness.processes import machine, machine_line

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DATA = REPO / "data" / "bench"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot"]


# -- statistics ------------------------------------------------------------------------------------
class Stopwatch:
    """``with sw: ...`` adds the block's time; ``sw.seconds`` is the total."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> "Stopwatch":
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._t


# -- results ---------------------------------------------------------------------------------------
def markdown_table(rows: Iterable[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    rows = list(rows)
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


class Results:
    """One benchmark run's outputs under ``out``: ``<name>.json``, ``<name>.md`` and PNG plots."""

    def __init__(self, name: str, out: str | os.PathLike | None = None, **params):
        self.name = name
        self.out = Path(out or RESULTS)
        self.out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {"benchmark": name, "params": params, "machine": machine(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.sections: list[str] = []
        self.plots: list[str] = []

    def add(self, key: str, value) -> None:
        self.data[key] = value
        self.save()  # a long run keeps what it measured so far

    def section(self, title: str, body: str) -> None:
        self.sections.append(f"### {title}\n\n{body}\n")

    def plot(self, filename: str, draw) -> Path:
        """``draw(ax)`` fills one matplotlib axis; saved as ``<out>/<filename>``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        draw(ax)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = self.out / filename
        fig.savefig(path)
        plt.close(fig)
        self.plots.append(filename)
        return path

    def save(self) -> Path:
        path = self.out / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2, default=_json_default))
        return path

    def write(self) -> Path:
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        md = [f"## {self.name}\n", f"Machine: {machine_line(self.data['machine'])}. "
              f"Run {self.data['started']}; parameters `{json.dumps(self.data['params'], default=str)}`.\n"]
        md += self.sections
        md += [f"![{p}]({p})\n" for p in self.plots]
        path = self.out / f"{self.name}.md"
        path.write_text("\n".join(md))
        print(f"wrote {path} and {self.name}.json" + (f", {', '.join(self.plots)}" if self.plots else ""))
        return path


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# -- labelled data sets ----------------------------------------------------------------------------
def openclipart_set(out: Path | None = None, per_class: int = 40) -> Path:
    """The sample gallery's layout: openclipart sub-folders as labels (31 classes)."""
    from lookalike.quality.gallery import build_gallery

    out = Path(out or DATA / f"openclipart-{per_class}")
    build_gallery(out, per_class=per_class)
    return out


def fashion_mnist_set(out: Path | None = None, per_class: int = 100) -> Path:
    """Fashion-MNIST's test images as PNG files under ``<class>/`` (``per_class`` each)."""
    out = Path(out or DATA / f"fashion-mnist-{per_class}")
    if out.is_dir() and sum(1 for _ in out.glob("*/*.png")) >= per_class * len(FASHION_CLASSES):
        return out
    from PIL import Image

    if not FASHION_MNIST.is_dir():
        raise SystemExit(f"{FASHION_MNIST} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for cls, name in enumerate(FASHION_CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(np.flatnonzero(labels == cls)[:per_class]):
            # Dark garments on white, like a product photo (the dataset is white on black).
            Image.fromarray(255 - images[i], "L").save(folder / f"{name}_{i:05d}.png")
    return out


# -- embeddings ------------------------------------------------------------------------------------
def embed_files(paths: Sequence[str | os.PathLike], encoder, limits, threads: int = 2
                ) -> tuple[np.ndarray, list[int]]:
    """Unit vectors of the files that decode (through the one preprocessing), and their indices."""
    from concurrent.futures import ThreadPoolExecutor

    from lookalike.errors import LookalikeError
    from lookalike.embedding.images import prepare

    def one(path):
        try:
            return prepare(Path(path).read_bytes(), encoder.input_size, limits).pixels
        except (LookalikeError, OSError):
            return None

    vectors, kept = [], []
    step = 64
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(paths), step):
            pixels = list(pool.map(one, paths[start:start + step]))
            ok = [i for i, p in enumerate(pixels) if p is not None]
            if ok:
                vectors.append(encoder.encode(np.stack([pixels[i] for i in ok])))
                kept += [start + i for i in ok]
    dim = encoder.dim
    return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), kept


def random_weights(model: str) -> str:
    """A random-init torchvision state dict, for models whose real weights cannot be downloaded
    here (speed does not depend on the weights' values; quality does)."""
    import tempfile

    import torch
    import torchvision

    path = Path(tempfile.gettempdir()) / f"lookalike-bench-{model}-random.pth"
    if not path.exists():
        torch.save(getattr(torchvision.models, model)(weights=None).state_dict(), path)
    return str(path)
