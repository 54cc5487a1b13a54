"""The README's run path (make run): `python -m ingest` on a gallery, then `lookalike serve`
(which runs `serve run` on the Serve config file with the shared Milvus Lite server up), a
search over HTTP, the embedded Milvus killed and back by itself, a clean stop; then a plain
`serve run` of the same config, which leaves nothing running either once stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from harness.load import payloads, run_load
from lookalike.embedding.images import content_id
from lookalike.milvus.lite_server import LiteServer
from lookalike.ray_env import LOCAL_RAY_ENV
from lookalike.milvus.supervisor import pid_alive

from harness.fixtures import REPO
from harness.processes import server_pid, supervisor_pid
from harness.servers import free_port, wait_until


def _start_service(cmd: list[str], env: dict, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """``cmd`` + a copy of config/serve.yaml listening on a free port; (the process, its URL)."""
    config = yaml.safe_load((REPO / "config" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    serve_config = tmp_path / "serve.yaml"
    serve_config.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "serve.log", "w")
    # Ctrl-C as a terminal delivers it: a suite started in the background inherits SIGINT ignored.
    proc = subprocess.Popen([*cmd, str(serve_config)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, f"http://127.0.0.1:{port}"


def test_ingest_then_serve_then_search_then_stop(tmp_path, gallery_root):
    data = tmp_path / "data"
    env = {**os.environ, "LOOKALIKE_MILVUS__URI": str(data / "lookalike.db"),
           "LOOKALIKE_STORE__LOCAL_DIR": str(data / "images")}
    # As from a fresh shell: none of the Ray environment the suite set for itself (the commands
    # must set it before Ray is imported: a driver that read RAY_AUTH_MODE unset could not talk
    # to the token-auth cluster it started).
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", *LOCAL_RAY_ENV):
        env.pop(key, None)
    cli = [str(Path(sys.executable).with_name("lookalike"))]
    ingested = subprocess.run([sys.executable, "-m", "ingest", str(gallery_root), "--report",
                               str(data / "ingest-report.json")], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    assert "ingest: 30 indexed" in ingested.stdout

    proc, url = _start_service([*cli, "serve", "--serve-config"], env, tmp_path)
    lite = LiteServer(data / "lookalike.db")
    try:
        def ready() -> bool:
            return httpx.get(f"{url}/api/v1/status", timeout=5).json()["status"] == "ok"

        serving = time.monotonic()
        wait_until(ready, 240, "lookalike serve", proc)
        serve_s = time.monotonic() - serving  # what starting took on this machine, in this run
        assert lite.running_uri() is not None  # the command started the shared Lite server
        query = gallery_root / "rings" / "rings_3.jpg"
        started = time.perf_counter()
        r = httpx.post(f"{url}/api/v1/search", files={"image": query.open("rb")}, timeout=60)
        assert r.status_code == 200, r.text
        first = r.json()["results"][0]
        assert first["id"] == str(content_id(query.read_bytes())) and first["label"] == "rings"
        assert httpx.get(url + first["url"]).content == query.read_bytes()
        print(f"first search through `lookalike serve`: {1000 * (time.perf_counter() - started):.0f} ms")

        # The embedded Milvus dies: searches answer 503 + Retry-After naming it, briefly, then
        # work again on the same data, with nothing restarted by hand.
        os.kill(server_pid(lite), signal.SIGKILL)
        killed, answers = time.monotonic(), []

        def searched() -> bool:
            r = httpx.post(f"{url}/api/v1/search", files={"image": query.open("rb")}, timeout=60)
            answers.append(r.status_code)
            assert r.status_code == 200 or (r.status_code == 503 and r.headers["Retry-After"]
                                             and r.json()["error"]["backend"] == "milvus"), r.text
            return r.status_code == 200

        # Back within what starting the service took in this run (at least 10 s): a busy machine
        # restarts slower, and an absolute bound would fail there.
        wait_until(searched, max(10.0, serve_s), "searches after the Lite server was killed", interval=0.2,
                   give_up_on=(AssertionError,))
        print(f"searches after the Lite server was killed: {answers} in {time.monotonic() - killed:.1f}s")
        assert answers[-1] == 200 and httpx.get(f"{url}/api/v1/status", timeout=10).json()["count"] == 30
        load = run_load(f"{url}/api/v1/search", payloads([query.read_bytes()], k=5), clients=4, seconds=5)
        assert load["errors"] == 0 and load["requests"] > 0, load
    finally:
        stopping = time.monotonic()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    stopped_in = time.monotonic() - stopping
    print(f"`lookalike serve` stopped {stopped_in:.1f}s after Ctrl-C")
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    # Serve's ingress replica used to hold 30 s "for load balancers" (lookalike/ray_env.py); ~8 s
    # here idle, 20 s leaves room for a busy machine.
    assert stopped_in < 20, (tmp_path / "serve.log").read_text()[-3000:]
    assert lite.running_uri() is None and not lite.state_file.exists()  # it stopped what it started


def test_plain_serve_run_leaves_nothing_running(tmp_path, gallery_root):
    """`serve run config/serve.yaml` alone (no `lookalike serve` around it) also starts the
    shared Lite server; once it is stopped, the server stops by itself (its leaseholders are gone)."""
    data = tmp_path / "data"
    env = {**os.environ, "LOOKALIKE_MILVUS__URI": str(data / "lookalike.db"),
           "LOOKALIKE_STORE__LOCAL_DIR": str(data / "images"), "LOOKALIKE_MILVUS__LOCAL_IDLE_STOP_S": "2",
           "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc, url = _start_service([str(Path(sys.executable).with_name("serve")), "run"], env, tmp_path)
    lite = LiteServer(data / "lookalike.db")
    try:
        wait_until(lambda: httpx.get(f"{url}/api/v1/status", timeout=5).json()["status"] == "ok",
                 240, "serve run", proc)
        supervisor, server = supervisor_pid(lite), server_pid(lite)
        assert supervisor and server
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    wait_until(lambda: supervisor_pid(lite) is None and not pid_alive(server), 30, "the Lite server to stop")
    assert lite.running_uri() is None and not lite.state_file.exists()
