# cxr-effusion inference service. Two targets, one per ONNX Runtime flavour (never both in one image):
#
#   docker build --target cpu -t cxr-effusion:cpu .     # onnxruntime (CPU execution provider)
#   docker build --target gpu -t cxr-effusion:gpu .     # onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels
#
# Offline (air-gapped) builds: fill a wheelhouse with deploy/wheelhouse.sh, then add
# `--build-arg WHEELHOUSE=wheelhouse` (a folder of the build context); pip then never
# touches an index. Without it, pip installs from PIP_INDEX_URL.
# Only instructions that both the classic builder and BuildKit understand are used (no RUN
# --mount, no heredocs), so hosts without buildx build it too. Stages are ordered so that the
# classic builder, which builds every stage up to its target, never builds the GPU stack for
# `--target cpu`. docs/deployment.md has the rest.

# Two images, one Python. BUILD_IMAGE fills /opt/venv: the project is built from source there,
# with its C extension service.decode._pngfilter (the fast PNG path), so it needs a C compiler and the
# Python headers; the build fails if the extension was not built. BASE_IMAGE runs the service
# and has neither. The venv is copied from one to the other and keeps pointing at the builder's
# interpreter, so both images must have the same Python (3.11+, with its venv module) at the
# same path: the official full and slim images of one tag (the defaults), or an air-gapped
# site's pair from deploy/debian-base-image.sh (its build image is the base plus gcc, libc6-dev
# and python3-dev). The runtime stages check that the copied venv runs.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=python:3.11-bookworm

FROM ${BUILD_IMAGE} AS build-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The project's metadata (not the README: editing it must not reinstall the dependencies), the
# wheelhouse when there is one, and an empty virtual environment at the path the runtime stages
# use. COPY needs a source even when building from an index: pyproject.toml stands in, and pip
# never looks in /wheelhouse then. PIP_INDEX_URL and CXR_WHEELHOUSE live only in build stages.
FROM build-base AS source
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG WHEELHOUSE=
ENV PIP_INDEX_URL=${PIP_INDEX_URL} \
    CXR_WHEELHOUSE=${WHEELHOUSE}
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/docker/install-venv.sh deploy/docker/
COPY ${WHEELHOUSE:-pyproject.toml} /wheelhouse/
RUN python3 -m venv /opt/venv

# Dependencies first (cached until pyproject.toml or the wheelhouse changes), then the code,
# compiled (install-venv.sh fails unless service.decode._pngfilter imports).
FROM source AS cpu-venv
RUN deploy/docker/install-venv.sh dependencies cpu
COPY service/ service/
COPY cxr_client/ cxr_client/
RUN deploy/docker/install-venv.sh project

# What both runtime targets share: BASE_IMAGE, no compilers or headers, no pip, no caches; a
# non-root user that owns nothing it could rewrite; the default model baked in (mount another and
# set CXR_MODEL_PATH).
FROM ${BASE_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cxr
COPY models/ /opt/cxr-effusion/models/
COPY deploy/docker/healthcheck.py /opt/cxr-effusion/healthcheck.py
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    CXR_HOST=0.0.0.0 \
    CXR_PORT=8000 \
    CXR_MODEL_PATH=/opt/cxr-effusion/models/cxr-effusion-resnet18.onnx
WORKDIR /opt/cxr-effusion
USER 10001:10001
EXPOSE 8000
# /ready, not /live: Docker does not restart an unhealthy container, it only reports health (to
# `docker ps`, compose's depends_on and operators), so the useful signal is "can this container
# serve", which includes a model that failed its provider check or warm-up. The start period
# covers loading and warm-up. Kubernetes ignores HEALTHCHECK and probes /ready and /live itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/cxr-effusion/healthcheck.py"]
# On SIGTERM the service says "draining" (CXR_DRAIN_DELAY_S), then uvicorn finishes in-flight
# requests (CXR_DRAIN_TIMEOUT_S). The exec-form entrypoint makes Python PID 1, so the signal
# reaches the server itself, not a shell; its only children (CXR_DECODE_PROCESSES workers) are
# waited for by their pool, so there are no orphans for an init to reap.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "service"]
# OCI labels last, so a new revision or model version rebuilds no earlier layer.
ARG VERSION=unspecified
ARG REVISION=unspecified
ARG SOURCE=unspecified
ARG MODEL_NAME=unspecified
ARG MODEL_VERSION=unspecified
ARG MODEL_SHA256=unspecified
LABEL org.opencontainers.image.title="cxr-effusion" \
      org.opencontainers.image.description="Chest X-ray pleural effusion detector (ONNX Runtime, FastAPI). Research and integration use, not for clinical use." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      io.cxr-effusion.model.name="${MODEL_NAME}" \
      io.cxr-effusion.model.version="${MODEL_VERSION}" \
      io.cxr-effusion.model.sha256="${MODEL_SHA256}"

FROM runtime AS cpu
COPY --from=cpu-venv /opt/venv /opt/venv
# The venv's python is a link to BUILD_IMAGE's interpreter: fail here, not at start-up, when
# BASE_IMAGE has no such Python (another path or version: see BUILD_IMAGE above).
RUN ["/opt/venv/bin/python3", "-I", "-c", "import service.decode._pngfilter"]
LABEL io.cxr-effusion.variant="cpu"

FROM source AS gpu-venv
RUN deploy/docker/install-venv.sh dependencies gpu
COPY service/ service/
COPY cxr_client/ cxr_client/
RUN deploy/docker/install-venv.sh project

# CUDA and cuDNN come from the nvidia-* wheels (onnxruntime.preload_dlls() loads them); the host's
# driver comes in through the NVIDIA container toolkit. The service refuses readiness when CUDA
# is not really active (CXR_EXECUTION_PROVIDER=cuda); set it to `auto` to allow a CPU fallback.
FROM runtime AS gpu
COPY --from=gpu-venv /opt/venv /opt/venv
# The venv's python is a link to BUILD_IMAGE's interpreter: fail here, not at start-up, when
# BASE_IMAGE has no such Python (another path or version: see BUILD_IMAGE above).
RUN ["/opt/venv/bin/python3", "-I", "-c", "import service.decode._pngfilter"]
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CXR_EXECUTION_PROVIDER=cuda
LABEL io.cxr-effusion.variant="gpu"

# A plain `docker build .` gives the CPU image.
FROM cpu AS default
