"""Mixed load: clients searching, adding and deleting at once, against a running service (the
driver that tests/test_load.py and benchmarks/mixed_load.py share).

Each client loops until the time is up: mostly searches (a gallery image), some adds and some
deletes (of an image it added itself). An add is a new image no one sent before, or, one time
in three, one of a few images every client keeps adding, so that adds of the same picture
race: exactly one of them may answer 201. The service's count must move by exactly the 201s
minus the deletes, and nothing may answer 5xx. At the end every image
the run added and did not delete is deleted again, so the gallery is left as it was.
"""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image

from .load import require_loopback, run_steps

MIX = (("search", 0.7), ("add", 0.2), ("delete", 0.1))
SHARED = 12  # images that every client adds now and then


def new_image(seed: int) -> bytes:
    """A small PNG no one has sent before (its pixels come from the seed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@dataclass
class Tally:
    requests: Counter = field(default_factory=Counter)  # (kind, status) -> n
    server_errors: list[str] = field(default_factory=list)
    created: int = 0
    deleted: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in MIX})

    def record(self, kind: str, response: httpx.Response, seconds: float) -> None:
        self.requests[(kind, response.status_code)] += 1
        self.latencies[kind].append(seconds)
        if response.status_code >= 500:
            self.server_errors.append(f"{kind} {response.status_code} {response.text[:200]}")


def _mixed_step(seed: int, queries: list[bytes], tally: Tally, mine: list[str]):
    """One client's step: a search, an add or a delete, drawn by MIX."""
    rng, added = random.Random(seed), 0

    async def step(client: httpx.AsyncClient) -> None:
        nonlocal added
        kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        if kind == "delete" and not mine:
            kind = "add"
        started = time.perf_counter()
        if kind == "search":
            r = await client.post("/api/v1/search", params={"k": 5},
                                  files={"image": ("q", rng.choice(queries), "application/octet-stream")})
        elif kind == "add":
            added += 1
            image_seed = 10**12 + rng.randrange(SHARED) if rng.random() < 1 / 3 else seed * 1_000_000 + added
            r = await client.post("/api/v1/images", data={"label": "mixed-load"},
                                  files={"image": ("new.png", new_image(image_seed), "image/png")})
            if r.status_code == 201:
                mine.append(r.json()["id"])
                tally.created += 1
        else:
            r = await client.delete(f"/api/v1/images/{mine.pop(rng.randrange(len(mine)))}")
            if r.status_code == 200:
                tally.deleted += 1
        tally.record(kind, r, time.perf_counter() - started)

    return step


def run(url: str, queries: list[bytes], *, clients: int = 8, seconds: float = 60.0, key: str | None = None,
        seed: int = 0) -> dict:
    """Drive the mixed load (to this machine only: load.run_steps); returns the tally
    and the count before and after (cleaned up)."""
    require_loopback(url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        before = client.get("/api/v1/status").json()["count"]
        tally, owned = Tally(), [[] for _ in range(clients)]
        elapsed = run_steps(url, lambda c: _mixed_step(seed + c + 1, queries, tally, owned[c]), clients, seconds,
                            headers=headers)
        after = client.get("/api/v1/status").json()["count"]
        left = [image_id for ids in owned for image_id in ids]
        cleaned = sum(client.delete(f"/api/v1/images/{i}").status_code == 200 for i in left)
        final = client.get("/api/v1/status").json()["count"]
    total = sum(tally.requests.values())
    return {
        "clients": clients, "seconds": round(elapsed, 1), "requests": total, "rps": round(total / elapsed, 1),
        "by_kind_status": {f"{k} {s}": n for (k, s), n in sorted(tally.requests.items())},
        "p50_ms": {k: round(1000 * float(np.median(v)), 1) for k, v in tally.latencies.items() if v},
        "created": tally.created, "deleted": tally.deleted, "count_before": before, "count_after": after,
        "server_errors": tally.server_errors, "cleaned_up": cleaned, "count_final": final,
    }
