# Lookalike on the official Ray image (same Ray version as pyproject.toml pins).
#   CPU: docker build -t ghcr.io/lookalike/lookalike:0.1.0-cpu .
#   GPU: docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#          --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t ghcr.io/lookalike/lookalike:0.1.0-gpu .
# No secrets or data are baked in: settings come from LOOKALIKE_* env (k8s ConfigMap/Secret).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
WORKDIR /home/ray/lookalike

# torch from the chosen index (CPU or CUDA wheels) first: the largest, slowest-changing layer.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch>=2.4" "torchvision>=0.19"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users lookalike ./lookalike
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users ingest ./ingest
COPY --chown=ray:users config ./config
RUN pip install --no-cache-dir . && python -c "import deployments.app, ingest.pipeline"

ENV LOOKALIKE_CONFIG=/home/ray/lookalike/config/lookalike.yaml \
    RAY_USAGE_STATS_ENABLED=0
