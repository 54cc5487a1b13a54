"""The commands that run processes: ``serve`` (``serve run`` with the shared Milvus Lite server
up while it runs), ``reembed`` (the Ray Data job, ``python -m ingest --reembed``) and
``local-milvus`` (the local Milvus process of this data directory, by hand)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from lookalike.settings import CONFIG_ENV, Settings

log = logging.getLogger("lookalike")


def cmd_local_milvus(args, settings: Settings) -> int:
    from lookalike.milvus.engines import engine, local_service

    service = local_service(settings.milvus)
    if service is None:
        print(f"nothing local to run: Milvus is {engine(settings.milvus)} at {settings.milvus.uri}"
              + (" (milvus.lite_server is off)" if settings.milvus.is_lite else ""), file=sys.stderr)
        return 2
    if args.action == "start":  # started by hand: it runs until stopped by hand
        uri, started = service.start(settings.milvus.local_start_timeout_s, idle_stop_s=0)
        print(f"{service.what}: {'started' if started else 'already running'} at {uri}")
    elif args.action == "stop":
        print(f"{service.what}: {'stopped' if service.stop() else 'not running'}")
    else:
        print(f"{service.what}: {service.running_uri() or 'not running'}")
    return 0


def serve_config_with_host(serve_config: str, host: str | None) -> str:
    """The Serve config to run: the file as it is, or (``--http-host``, e.g. 0.0.0.0 inside a
    container) a copy of it that listens on ``host``."""
    import tempfile

    import yaml

    if not host:
        return serve_config
    config = yaml.safe_load(Path(serve_config).read_text()) or {}
    config.setdefault("http_options", {})["host"] = host
    handle, path = tempfile.mkstemp(prefix="serve-", suffix=".yaml")
    with os.fdopen(handle, "w") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    return path


def open_writes_refusal(serve_config: str, settings: Settings, host: str | None = None) -> str | None:
    """Why the service must not start: listening beyond this machine (the config's host, or
    ``host`` given instead) with no API key would leave nothing but the peer-address check between
    the network and the write routes."""
    import ipaddress

    import yaml

    if host is None:
        host = str((yaml.safe_load(Path(serve_config).read_text()) or {}).get("http_options", {})
                   .get("host", "127.0.0.1"))
    else:
        serve_config = "the service (--http-host)"
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if local or settings.api.api_key.get_secret_value():
        return None
    return (f"{serve_config} listens on {host}, beyond this machine, and no API key is set: set api.api_key "
            "(LOOKALIKE_API__API_KEY) to serve the write routes there, or listen on 127.0.0.1")


def cmd_serve(args, settings: Settings) -> int:
    """`serve run` the Serve config, with the shared Milvus Lite server up while it runs (and
    stopped with it, if this command started it)."""
    from lookalike.embedding.models import get_model
    from lookalike.milvus.engines import serving
    from lookalike.ray_env import use_local_ray_env

    refusal = open_writes_refusal(args.serve_config, settings, args.http_host)
    if refusal:
        print(f"lookalike: {refusal}", file=sys.stderr)
        return 2
    get_model(settings.model)  # a model folder with a missing or broken file: refused here, naming it
    serve_config = serve_config_with_host(args.serve_config, args.http_host)

    env = use_local_ray_env(dict(os.environ))
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    with serving(settings.milvus) as uri:
        if uri:
            log.info("the local Milvus for %s is served at %s", settings.milvus.uri, uri)
        serve_bin = Path(sys.executable).with_name("serve")
        # `serve run` shuts Serve and its local Ray down on SIGINT; give it SIGINT's default
        # handling even if ours is ignored (started in the background), and forward TERM/INT.
        proc = subprocess.Popen([str(serve_bin), "run", serve_config], env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        stopping = []

        def forward(signum, frame):
            stopping.append(signum)
            proc.send_signal(signal.SIGINT)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = proc.wait()
    if serve_config != args.serve_config:
        Path(serve_config).unlink(missing_ok=True)
    return 0 if stopping else code  # asked to stop: a clean exit, whatever `serve run` says


def cmd_reembed(args, settings: Settings) -> int:
    """Re-embed the gallery under the configured model: the Ray Data job of ``python -m ingest
    --reembed``, run as its own process (the command line never imports the Ray layers)."""
    from lookalike.embedding.models import get_model

    get_model(settings.model)  # a broken model folder: refused here, naming the file
    env = dict(os.environ)
    if args.config:
        env[CONFIG_ENV] = str(Path(args.config).resolve())
    command = [sys.executable, "-m", "ingest", "--reembed"] + (["--report", args.report] if args.report else [])
    return subprocess.call(command, env=env)
