"""A sample gallery for the quick start, from Debian's openclipart-png (public domain).

Copies up to ``per_class`` PNGs from each ``<category>/<sub>`` folder that has at least
``min_class`` usable images into ``<out>/<sub>/``, the ``<label>/<file>`` layout every
source reader takes. Two classes of near-identical style (computer/icons, shapes/stars)
are left out, and so are images over the pixel limit (some are ~168 Mpx).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from PIL import Image

OPENCLIPART = Path("/usr/share/openclipart/png")
EXCLUDED = {"computer/icons", "shapes/stars"}
# The sample gallery and the benchmarks built from openclipart leave out its few huge drawings
# (up to ~50 Mpx): each would cost seconds to decode and tell nothing more.
SAMPLE_MAX_PIXELS = 20_000_000


def usable_image(path: Path, max_pixels: int) -> bool:
    """Pillow opens it and it has at most ``max_pixels`` pixels."""
    try:
        with warnings.catch_warnings():  # we check the size ourselves
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size[0] * img.size[1] <= max_pixels
    except Exception:
        return False


def build_gallery(out: str | Path, *, source: str | Path = OPENCLIPART, per_class: int = 40, min_class: int = 30,
                  max_pixels: int = SAMPLE_MAX_PIXELS) -> dict[str, int]:
    """Returns {label: images copied}. Idempotent: files already there are kept."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} not found: install Debian's openclipart-png (apt-get install openclipart-png) "
            "or index a folder of your own (lookalike index DIR)"
        )
    folders = sorted(p for p in source.glob("*/*") if p.is_dir() and p.relative_to(source).as_posix() not in EXCLUDED)
    names = [f.name for f in folders]
    counts: dict[str, int] = {}
    for folder in folders:
        files = [f for f in sorted(folder.glob("*.png")) if usable_image(f, max_pixels)]
        if len(files) < min_class:
            continue
        label = folder.name if names.count(folder.name) == 1 else f"{folder.parent.name}-{folder.name}"
        target = out / label
        target.mkdir(parents=True, exist_ok=True)
        for f in files[:per_class]:
            if not (target / f.name).exists():
                shutil.copyfile(f, target / f.name)
        counts[label] = min(len(files), per_class)
    return counts
