# syntax=docker/dockerfile:1
# The service image: one image, every batchctl process (docker-compose.yml runs it as
# worker, projector and outbox). A production install: the locked dependencies of
# requirements.lock only, so no local broker (the [local] extra) and no dev tools.
#
# The base is pinned to an exact Python release and the digest of its multi-platform
# image index; to move to a newer release change both together (the digest is what
# `docker buildx imagetools inspect python:<version>-slim-bookworm` prints as Digest).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# ---- builder: the locked dependencies (hashes checked) and the service, into a venv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The lock first: this layer is rebuilt only when the dependencies change.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY domain ./domain
COPY application ./application
COPY infrastructure ./infrastructure
COPY projections ./projections
RUN pip install --no-deps . && batchctl --version

# ---- runtime: the venv alone, run as an unprivileged user
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 batchslot \
 && useradd --system --uid 10001 --gid batchslot --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin batchslot
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
ENTRYPOINT ["batchctl"]
CMD ["run"]
