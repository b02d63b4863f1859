# syntax=docker/dockerfile:1
# One image per service, one target each:
#   docker build --target fetcher -t taxonstream-fetcher .
# (skaffold.yaml builds all five). Runtime images: Python slim, dependencies from wheels only,
# no compiler, no pip, non-root user 10001, nothing written outside /tmp (read-only root works).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- dependencies -----------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
COPY pyproject.toml /src/pyproject.toml
COPY tools/k8s/image_requirements.py /src/tools/k8s/image_requirements.py

# --only-binary: every dependency must come as a wheel, so no stage ever needs a compiler.
FROM build AS venv-core
RUN python /src/tools/k8s/image_requirements.py core > /tmp/requirements.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --only-binary=:all: --requirement /tmp/requirements.txt

# Only the detector and the embedder call Triton; only their images carry its client.
FROM build AS venv-triton
RUN python /src/tools/k8s/image_requirements.py triton > /tmp/requirements.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --only-binary=:all: --requirement /tmp/requirements.txt

# The indexer's: the core ones plus the `milvus` extra, so TAXONSTREAM_INDEX_BACKEND=milvus works as shipped.
FROM build AS venv-indexer
RUN python /src/tools/k8s/image_requirements.py indexer > /tmp/requirements.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --only-binary=:all: --requirement /tmp/requirements.txt

# The explorer's: the core ones plus the `portal` extra (FastAPI, uvicorn, Jinja2, multipart).
FROM build AS venv-portal
RUN python /src/tools/k8s/image_requirements.py portal > /tmp/requirements.txt \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --only-binary=:all: --requirement /tmp/requirements.txt

# The CLIP BPE vocabulary, taken at build time from the open_clip wheel (pinned by hash in
# services/taxonstream/models/tokenizer.py); a pod never downloads anything.
FROM venv-triton AS vocab
COPY services/taxonstream/ /src/taxonstream/
RUN /opt/venv/bin/python -m ensurepip --default-pip > /dev/null \
 && PYTHONPATH=/src /opt/venv/bin/python -c \
    "from pathlib import Path; from taxonstream.models.tokenizer import ensure_vocab; ensure_vocab(Path('/opt/tokenizer'))"

# --- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# The base image's pip/setuptools are build tools: not needed at run time.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 10001 taxonstream \
 && useradd --system --uid 10001 --gid taxonstream --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin taxonstream
# Bytecode is compiled at build time; a read-only root never gets .pyc writes.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TAXONSTREAM_BIND_HOST=0.0.0.0 \
    TAXONSTREAM_GRPC_PORT=50051 \
    TAXONSTREAM_METRICS_PORT=9090
EXPOSE 50051 9090
LABEL org.opencontainers.image.title="taxonstream" \
      org.opencontainers.image.description="taxonstream service"

FROM runtime AS runtime-core
COPY --from=venv-core /opt/venv /opt/venv
# The `taxonstream` package is services/taxonstream/ (services/ is the source root, as in pyproject).
COPY services/taxonstream/ /app/taxonstream/
RUN python -m compileall -q /app
USER 10001:10001

FROM runtime AS runtime-triton
COPY --from=venv-triton /opt/venv /opt/venv
COPY services/taxonstream/ /app/taxonstream/
RUN python -m compileall -q /app
USER 10001:10001

FROM runtime AS runtime-indexer
COPY --from=venv-indexer /opt/venv /opt/venv
COPY services/taxonstream/ /app/taxonstream/
RUN python -m compileall -q /app
USER 10001:10001

FROM runtime AS runtime-portal
COPY --from=venv-portal /opt/venv /opt/venv
COPY services/taxonstream/ /app/taxonstream/
RUN python -m compileall -q /app
USER 10001:10001

# --- one target per service -------------------------------------------------------------------
FROM runtime-core AS fetcher
CMD ["python", "-m", "taxonstream.fetcher"]

FROM runtime-core AS checksummer
CMD ["python", "-m", "taxonstream.checksummer"]

FROM runtime-triton AS detector
CMD ["python", "-m", "taxonstream.detector"]

FROM runtime-triton AS embedder
COPY --from=vocab /opt/tokenizer /opt/tokenizer
ENV TAXONSTREAM_TOKENIZER_DIR=/opt/tokenizer \
    HF_HUB_OFFLINE=1
CMD ["python", "-m", "taxonstream.embedder"]

FROM runtime-indexer AS indexer
CMD ["python", "-m", "taxonstream.indexer"]

# The explorer: HTTP on 8080 (pages, /healthz, /metrics); docker build --target portal -t taxonstream-portal .
FROM runtime-portal AS portal
ENV TAXONSTREAM_PORTAL_PORT=8080
EXPOSE 8080
CMD ["python", "-m", "taxonstream.portal"]
