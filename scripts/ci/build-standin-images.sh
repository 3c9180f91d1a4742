#!/usr/bin/env bash
# CI-only: build local stand-ins for the base images that the Dockerfile and compose.yaml name.
#
# No container registry is reachable from CI, so `podman build --pull=never` needs every
# image it names to be in local storage already. The stand-ins are built from Debian
# packages (debootstrap + apt) and tagged with the exact references the project uses:
#
#   docker.io/library/python:3.11-slim-bookworm   Debian's python3 (3.11), venv
#   ghcr.io/astral-sh/uv:<version>                static uv/uvx from PyPI's musllinux wheel
#   docker.io/valkey/valkey:<version>             Debian's redis-server, also as valkey-server/-cli
#
# The stand-ins trust this machine's extra CA certificates, because HTTPS leaving the build
# is re-signed by the egress proxy here. That trust lives in the stand-ins only; the
# project's Dockerfile carries no TLS settings at all.
#
# Idempotent: an image already present with the current recipe revision is kept, so a
# second run takes a second or two. FORCE=1 rebuilds everything.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-${here}/containers.conf}"

# Bump when a recipe below changes, so cached stand-ins are rebuilt.
RECIPE=3
BASE_TAG="localhost/guestbook-ci/debian-base:bookworm"
PYTHON_TAG="$(sed -n 's/^FROM \([^ ]*python:[^ ]*\).*/\1/p' "${repo}/Dockerfile" | head -n1)"
UV_TAG="$(sed -n 's/^COPY --from=\([^ ]*astral-sh\/uv:[^ ]*\) .*/\1/p' "${repo}/Dockerfile" | head -n1)"
VALKEY_TAG="$(sed -n 's/^[[:space:]]*image:[[:space:]]*\(.*valkey.*\)$/\1/p' "${repo}/compose.yaml" | head -n1 | tr -d "\"'")"
UV_VERSION="${UV_TAG##*:}"

log() { printf 'build-standin-images: %s\n' "$*" >&2; }

[[ -n "${PYTHON_TAG}" && -n "${UV_TAG}" && -n "${VALKEY_TAG}" ]] || {
    log "could not read the image references from Dockerfile/compose.yaml"; exit 1; }

current() {  # tag -> true when present and built from this recipe revision
    [[ "${FORCE:-0}" != 1 ]] || return 1
    podman image exists "$1" || return 1
    [[ "$(podman image inspect --format '{{ index .Labels "org.guestbook.ci.recipe" }}' "$1")" == "${RECIPE}" ]]
}

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# --- Debian base from debootstrap ------------------------------------------
if current "${BASE_TAG}"; then
    log "${BASE_TAG} is current"
else
    # Use the Debian mirror apt is already configured with on this machine.
    mirror="$(
        { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
          grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
        } | grep -v -- '-security' | grep -m1 '/debian/\?$' || true)"
    [[ -n "${mirror}" ]] || { log "no Debian mirror found in apt's sources"; exit 1; }
    log "debootstrap bookworm from ${mirror}"
    debootstrap --variant=minbase bookworm "${work}/rootfs" "${mirror}" >"${work}/debootstrap.log" 2>&1 \
        || { tail -n 30 "${work}/debootstrap.log" >&2; exit 1; }
    rm -rf "${work}"/rootfs/var/cache/apt/archives/*.deb "${work}"/rootfs/var/lib/apt/lists/*
    tar -C "${work}/rootfs" -c . | podman import \
        --change "LABEL org.guestbook.ci.recipe=${RECIPE}" --change 'CMD ["/bin/bash"]' \
        - "${BASE_TAG}" >/dev/null
    rm -rf "${work}/rootfs"
fi

# The machine's extra CA certificates (Debian's local CA folder), for HTTPS inside builds.
mkdir -p "${work}/ctx/ca"
cp /usr/local/share/ca-certificates/*.crt "${work}/ctx/ca/" 2>/dev/null || true

build() {  # tag, Containerfile on stdin
    cat >"${work}/ctx/Containerfile"
    log "building ${1}"
    # Host network for RUN steps: the default podman network does not reach this
    # machine's DNS resolver.
    podman build --quiet --pull=never --network host --label "org.guestbook.ci.recipe=${RECIPE}" \
        -t "$1" -f "${work}/ctx/Containerfile" "${work}/ctx" >/dev/null
}

# --- python:3.11-slim stand-in ---------------------------------------------
if current "${PYTHON_TAG}"; then
    log "${PYTHON_TAG} is current"
else
    build "${PYTHON_TAG}" <<CONTAINERFILE
FROM ${BASE_TAG}
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3 python3-venv python-is-python3 \
 && update-ca-certificates \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8
CMD ["python3"]
CONTAINERFILE
fi

# --- uv image stand-in: FROM scratch with /uv and /uvx -------------------------
if current "${UV_TAG}"; then
    log "${UV_TAG} is current"
else
    log "fetching uv ${UV_VERSION} (static musl build) from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform musllinux_1_1_x86_64 --dest "${work}/uv" "uv==${UV_VERSION}"
    python3 - "${work}/uv" "${work}/ctx" <<'PY'
import pathlib, sys, zipfile

src, ctx = map(pathlib.Path, sys.argv[1:3])
with zipfile.ZipFile(next(src.glob("uv-*.whl"))) as wheel:
    for name in ("uv", "uvx"):
        member = next(n for n in wheel.namelist() if n.endswith(f".data/scripts/{name}"))
        target = ctx / name
        target.write_bytes(wheel.read(member))
        target.chmod(0o755)
PY
    build "${UV_TAG}" <<CONTAINERFILE
FROM scratch
COPY uv uvx /
ENTRYPOINT ["/uv"]
CONTAINERFILE
fi

# --- valkey stand-in: Debian's redis-server under the valkey names ---------------
if current "${VALKEY_TAG}"; then
    log "${VALKEY_TAG} is current"
else
    # The official image's user is valkey, uid/gid 999, data in /data; keep that shape.
    build "${VALKEY_TAG}" <<CONTAINERFILE
FROM ${BASE_TAG}
RUN groupadd --system --gid 999 valkey \
 && useradd --system --uid 999 --gid 999 --home-dir /data --no-create-home valkey \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/redis-server /usr/local/bin/valkey-server \
 && ln -s /usr/bin/redis-cli /usr/local/bin/valkey-cli \
 && mkdir /data && chown valkey:valkey /data
WORKDIR /data
EXPOSE 6379
CMD ["valkey-server"]
CONTAINERFILE
fi

podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' \
    | grep -E "guestbook-ci|python|astral-sh/uv|valkey" >&2 || true
log "done"
