"""Where a process's CPU goes while a benchmark loads it: py-spy, sampling each process of a role
(the Ingress, the Embedder, the proxy, ...) from outside, and a summary of the samples.

``python -m benchmarks.http_load --profile DIR`` samples every process of the service during
each load and writes, per target, client count and role, py-spy's raw stacks
(``<target>-<clients>c-<role>.txt``: ``frame;frame;... count`` lines, for flamegraph.pl or
speedscope) and a Markdown summary of them (``profile.md``): for each role the functions that
were on the CPU most (self), and the Lookalike, FastAPI / Starlette, Ray and library code the
samples passed through (total). Only samples of threads holding the GIL or in native code count
(py-spy's default leaves idle threads out).

py-spy attaches with ptrace (root, or ``kernel.yama.ptrace_scope`` 0). It samples without
pausing the process (``--nonblocking``), so the load it measures is nearly the load without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import markdown_table

RATE = 50  # samples per second: py-spy itself takes CPU from the service it samples


@dataclass
class Recording:
    """py-spy processes sampling the processes of each role, until ``seconds`` have passed."""

    folder: Path
    name: str
    seconds: float
    procs: list[tuple[str, Path, subprocess.Popen]] = field(default_factory=list)

    def start(self, pids_by_role: dict[str, list[int]]) -> "Recording":
        beside = Path(sys.executable).with_name("py-spy")  # this environment's, activated or not
        spy = str(beside) if beside.exists() else shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.folder.mkdir(parents=True, exist_ok=True)
        for role, pids in pids_by_role.items():
            for pid in pids:
                out = self.folder / f"{self.name}-{role}-{pid}.txt"
                proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(max(1, int(self.seconds))),
                                         "--rate", str(RATE), "--nonblocking", "--format", "raw", "--output", str(out)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.procs.append((role, out, proc))
        return self

    def finish(self) -> dict[str, Counter]:
        """Each role's stacks: ``{role: Counter({stack: samples})}``, its processes merged into one
        file per role."""
        stacks: dict[str, Counter] = {}
        for role, out, proc in self.procs:
            try:
                proc.wait(timeout=self.seconds + 60)
            except subprocess.TimeoutExpired:
                proc.kill()
            if out.exists():
                stacks.setdefault(role, Counter()).update(read_raw(out.read_text()))
                out.unlink()
        for role, counter in stacks.items():
            (self.folder / f"{self.name}-{role}.txt").write_text(
                "".join(f"{stack} {n}\n" for stack, n in counter.most_common()))
        return stacks


def read_raw(text: str) -> Counter:
    """py-spy's raw format: one ``frame;frame;...;frame count`` line per distinct stack."""
    counter: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counter[stack] += int(count)
    return counter


def frame_name(frame: str) -> str:
    """``function (path/to/file.py:123)`` -> ``function (file.py)``: lines merged."""
    function, _, where = frame.partition(" (")
    return f"{function} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})" if where else function


# Which layer a frame is in, by its file's path (first match).
LAYERS = [("lookalike", ("lookalike/", "deployments/", "ingest/")), ("onnxruntime", ("onnxruntime",)),
          ("PIL / numpy", ("PIL/", "numpy/")), ("pymilvus / grpc", ("pymilvus", "grpc/")),
          ("FastAPI / Starlette / pydantic", ("fastapi", "starlette", "pydantic")), ("uvicorn", ("uvicorn",)),
          ("Ray Serve", ("ray/serve",)), ("Ray core", ("ray/",)), ("asyncio", ("asyncio/",))]


def layer(frame: str) -> str:
    for name, parts in LAYERS:
        if any(p in frame for p in parts):
            return name
    return "other"


def summarize(stacks: Counter, top: int = 12) -> dict:
    """The functions on the CPU (self: the innermost frame) and the layers the samples passed
    through (total: counted once per sample), as shares of all samples."""
    total = sum(stacks.values()) or 1
    own: Counter = Counter()
    layers: Counter = Counter()
    for stack, n in stacks.items():
        frames = stack.split(";")
        own[frame_name(frames[-1])] += n
        for name in {layer(f) for f in frames}:
            layers[name] += n
    return {"samples": total,
            "self": [{"function": f, "share": round(n / total, 3)} for f, n in own.most_common(top)],
            "layers": [{"layer": name, "share": round(n / total, 3)} for name, n in layers.most_common()]}


def report(profiles: dict[str, dict[str, dict]]) -> str:
    """``profiles``: {run name: {role: summary}} -> Markdown."""
    parts = ["# Profiles (py-spy, samples on the CPU)\n"]
    for run, roles in profiles.items():
        for role, summary in roles.items():
            parts.append(f"## {run}: {role} ({summary['samples']} samples)\n")
            parts.append(markdown_table(summary["layers"], ["layer", "share"], ["passed through", "share"]) + "\n")
            parts.append(markdown_table(summary["self"], ["function", "share"], ["on the CPU (self)", "share"]) + "\n")
    return "\n".join(parts)
