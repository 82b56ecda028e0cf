# syntax=docker/dockerfile:1
# The kcg-operator image: `kcg run` (the operator) and `kcg relay` (the outbox sidecar).
#
#   docker build -t ghcr.io/kcg-dev/kcg-operator:0.1.0 .
#
# Stage 1 builds wheels for the project and every dependency; stage 2 installs them into a
# clean slim Python with no compiler, no pip cache and no source tree, and runs as uid 65532.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel needs (see .dockerignore): metadata first, then the package.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kcg-operator" \
      org.opencontainers.image.description="Kubernetes operator for Kafka consumer groups" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
# A named user (some libraries look the uid up in /etc/passwd) with a fixed uid/gid, so
# Kubernetes' runAsNonRoot can verify it; no home, no login shell.
RUN groupadd --system --gid 65532 kcg \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kcg
# Install from the builder's wheels only (no index): the same bits that were built.
# A layer cache keys this step on its text, not on the mounted wheels: SOURCE_HASH (the
# source tree's hash, stack/images.py passes it) makes a changed tree miss the cache.
ARG SOURCE_HASH=none
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    echo "source ${SOURCE_HASH}" >/dev/null \
 && pip install --no-index --find-links=/wheels kcg-operator \
 && kcg --help >/dev/null
USER 65532:65532
WORKDIR /tmp
# Liveness (/healthz) and Prometheus metrics (/metrics).
EXPOSE 8080 9090
ENTRYPOINT ["kcg"]
CMD ["run", "--all-namespaces"]
