# syntax=docker/dockerfile:1
#
# streamscribe GPU image: code, not weights. The model is hydrated at startup from
# STREAMSCRIBE_MODEL (b2://bucket/prefix or s3://...) into STREAMSCRIBE_CACHE_DIR, which sits
# on the volume at /workspace (RunPod mounts its persistent volume there).
#
# Why a CUDA *base* image and pip's cuBLAS instead of a cudnn-runtime image:
# CTranslate2 >= 4.6.3 wheels no longer link cuDNN (Conv1D has its own CUDA kernel), link
# the CUDA runtime statically, and dlopen only libcublas.so.12 (+ libcublasLt.so.12, which
# may dlopen libnvrtc.so.12). So the image needs the driver (injected by the NVIDIA container
# toolkit) and cuBLAS 12, nothing else. See docs/deploy-runpod.md for the size budget.
#
#   docker build -t streamscribe .
#   docker run --gpus all -p 8000:8000 -v streamscribe-cache:/workspace \
#       -e STREAMSCRIBE_MODEL=b2://my-bucket/models/tiny.en \
#       -e B2_APPLICATION_KEY_ID=... -e B2_APPLICATION_KEY=... streamscribe

# CUDA 12.8 base: needs a host driver >= 570 (also what Blackwell GPUs need).
# Keep CUBLAS_SPEC on the same CUDA minor as the base image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG CUBLAS_SPEC="nvidia-cublas-cu12==12.8.*"

# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS build
ARG CUBLAS_SPEC
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu 24.04's Python 3.12; every dependency installs from manylinux wheels, so no compiler.
# Unpinned on purpose: the distribution's current security updates (hadolint DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# GPU math library in its own layer: it is 1 GB and changes far less often than the code.
# CUBLAS_SPEC pins it (hadolint cannot see through the variable: DL3013).
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "${CUBLAS_SPEC}"
WORKDIR /src
# The build context is allow-listed by .dockerignore: pyproject.toml, README.md and the packages.
COPY . .
# The package alone: no [demo] extra, so no model weights in the image.
# ctranslate2 >= 4.6.3 is the first release whose wheels need no cuDNN.
# deploy/constraints.txt holds the exact version of every runtime package (resolved on the
# image's Python 3.12 by scripts/update-constraints.sh), so rebuilding gives the same image.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . "ctranslate2>=4.6.3,<5" -c deploy/constraints.txt

# ---------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# Only the interpreter the venv links to, and CA certificates for TLS to B2/S3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
# Let the dynamic loader find pip's CUDA libraries (ctranslate2 dlopens libcublas.so.12).
RUN find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/streamscribe-cuda.conf \
    && ldconfig \
    && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin streamscribe \
    && mkdir -p /workspace/streamscribe-cache \
    && chown -R streamscribe:streamscribe /workspace

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    STREAMSCRIBE_HOST=0.0.0.0 \
    STREAMSCRIBE_PORT=8000 \
    STREAMSCRIBE_CACHE_DIR=/workspace/streamscribe-cache \
    STREAMSCRIBE_DEVICE=auto \
    STREAMSCRIBE_LOG_FORMAT=json

VOLUME ["/workspace"]
# An empty working directory: `python -m` puts it first on sys.path.
WORKDIR /home/streamscribe
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000

# Ready = model loaded and sessions accepted; 503 (exit 1) while hydrating, loading or draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; tls = bool(os.environ.get('STREAMSCRIBE_TLS_CERT')); r.urlopen(('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('STREAMSCRIBE_PORT', '8000') + '/readyz', timeout=4, context=ssl._create_unverified_context() if tls else None)"]

# SIGTERM (docker stop, Kubernetes) drains: /readyz 503, open utterances finalized, close 1001.
# Give the orchestrator a stop timeout longer than STREAMSCRIBE_DRAIN_TIMEOUT_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "server"]
