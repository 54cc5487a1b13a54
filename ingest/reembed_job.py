"""A re-embed started from the API (``POST /api/v1/index`` with the next model): the same job as
``lookalike reembed`` (``pipeline.run_reembed``), run in a detached actor of the serving cluster,
so it outlives the request and the replica that asked, and its stages run beside the replicas
(their CPU asks fitted to what the cluster has free: ``pipeline.beside_serving``).

One at a time: a second request for the same model joins the running job, for another model is
refused (409). What stops the job before it starts (no gallery, a gallery already on that model,
a re-embed or rebuild already staging) is the request's own answer; what stops it later is in
the job's state, which the status route shows to operators. On a Kubernetes cluster the ingest
RayJob (k8s/README) runs the same job on a cluster of its own instead.
"""

from __future__ import annotations

import logging
import threading
import time

import ray

from lookalike.errors import Conflict, LookalikeError
from lookalike.settings import Settings

log = logging.getLogger(__name__)
NAME, NAMESPACE = "lookalike-reembed", "lookalike"


@ray.remote(num_cpus=0, max_concurrency=4)  # the job's stages ask for their own; state reads answer meanwhile
class ReembedJob:
    def __init__(self):
        self.state: dict = {"state": "idle"}
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self, settings: Settings, wait_s: float) -> dict:
        """Start a re-embed under ``settings.model`` (or join the one running for it); answer once
        its next version is staged, or after ``wait_s``."""
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                if self.state["model"] != settings.model.model_dump():
                    raise Conflict(f"a re-embed into {self.state['name']} is running; wait for it to finish")
                return dict(self.state)
            staged, refused = threading.Event(), []
            self.state = {"state": "staging", "name": settings.model.name, "model": settings.model.model_dump(),
                          "started": time.time(), "done": 0, "total": None}
            self.thread = threading.Thread(target=self._run, args=(settings, staged, refused), daemon=True,
                                           name="reembed")
            self.thread.start()
        staged.wait(wait_s)
        if refused:
            raise refused[0]
        return dict(self.state)

    def _run(self, settings: Settings, staged: threading.Event, refused: list) -> None:
        from ingest.pipeline import run_reembed

        def planned(plan, total: int) -> None:
            self.state.update(state="reembedding", into=plan.staged.into, total=total)
            staged.set()

        def progress(report, total: int) -> None:
            self.state["done"] = report.indexed + len(report.skipped)

        try:
            report = run_reembed(settings, planned=planned, progress=progress, in_serving_cluster=True)
            self.state.update(state="done", count=report.run["count"], seconds=round(report.seconds, 1),
                              skipped=len(report.skipped), report=report.path)
        except LookalikeError as exc:
            if not staged.is_set():
                refused.append(exc)
            self.state.update(state="failed", error={"code": exc.code, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - the job's end, whatever it is, is its state
            log.exception("the re-embed failed")
            self.state.update(state="failed", error={"code": "internal", "message": f"{type(exc).__name__}: "
                                                                                    f"{str(exc)[:300]}"})
        finally:
            self.state["finished"] = time.time()
            staged.set()

    def describe(self) -> dict:
        return dict(self.state)


def job(create: bool):
    """The cluster's re-embed actor (made when ``create``; else None when there is none)."""
    if create:
        return ReembedJob.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    try:
        return ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:
        return None
