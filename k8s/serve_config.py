"""serveConfigV2 for the RayService, generated from config/serve.yaml (the one source of truth).

The cluster variants differ from the local file in three places only: the HTTP proxy listens on
0.0.0.0 (the Kubernetes Service must reach it), the Embedder keeps two replicas at least (a
cluster has the room, and a replica that dies then stalls nothing: the other one answers while
it is replaced), and on GPU clusters the Embedder asks for a GPU.

    python k8s/serve_config.py          # rewrite the generated blocks after editing config/serve.yaml
    python k8s/serve_config.py --check  # exit 1 if they drifted (the tests run this check too)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_YAML = ROOT / "config" / "serve.yaml"
K8S = ROOT / "k8s"
# variant -> (file holding the block, the line that opens it, indentation of the block)
TARGETS = {
    "cpu": (K8S / "base" / "rayservice.yaml", "  serveConfigV2: |", 4),
    "gpu": (K8S / "overlays" / "gpu" / "serve-config-gpu.yaml", "  value: |", 4),
}
HEADER = "# Generated from config/serve.yaml by k8s/serve_config.py ({variant}); do not edit.\n"


def generate(variant: str, serve_yaml: Path = SERVE_YAML) -> str:
    config = yaml.safe_load(serve_yaml.read_text())
    config = copy.deepcopy(config)
    config["http_options"]["host"] = "0.0.0.0"
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            if deployment["name"] == "Embedder":
                scaling = deployment.setdefault("autoscaling_config", {})
                scaling["min_replicas"] = max(2, scaling.get("min_replicas", 1))
                if variant == "gpu":
                    deployment.setdefault("ray_actor_options", {})["num_gpus"] = 1
    return HEADER.format(variant=variant) + yaml.safe_dump(config, sort_keys=False)


def _replace_block(text: str, opener: str, indent: int, block: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == opener)
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" " * indent)):
        end += 1
    body = "".join(" " * indent + line if line.strip() else line for line in block.splitlines(keepends=True))
    return "".join(lines[: start + 1]) + body + "".join(lines[end:])


def check(serve_yaml: Path = SERVE_YAML, targets: dict = TARGETS) -> list[str]:
    """Problems (empty when every generated block matches config/serve.yaml)."""
    problems = []
    for variant, (path, opener, indent) in targets.items():
        text = path.read_text()
        if _replace_block(text, opener, indent, generate(variant, serve_yaml)) != text:
            problems.append(f"{path.relative_to(path.parents[2])}: serveConfigV2 ({variant}) differs from "
                            f"config/serve.yaml; run python k8s/serve_config.py")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        problems = check()
        print("\n".join(problems) or "serveConfigV2 blocks match config/serve.yaml")
        return 1 if problems else 0
    for variant, (path, opener, indent) in TARGETS.items():
        path.write_text(_replace_block(path.read_text(), opener, indent, generate(variant)))
        print(f"wrote {path.relative_to(ROOT)} ({variant})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
