#!/usr/bin/env bash
# CI-only: what tests/test_monitoring.py needs to check the monitoring kit, outside the lock.
#   promtool                         (Debian's prometheus package: check/test rules, check metrics)
#   node, npm                        (Debian's, only where the machine has none)
#   @kubernetes-models/prometheus-operator
#                                    (npm: validators built from the prometheus-operator API's
#                                     schemas, for the ServiceMonitor and the PrometheusRule)
# Idempotent: a second run only checks what is there.
set -euo pipefail

CRD_MODELS_VERSION="${CRD_MODELS_VERSION:-6.0.0}"
# The test looks here too (GUESTBOOK_CRD_MODELS overrides both).
CRD_MODELS_DIR="${GUESTBOOK_CRD_MODELS:-${XDG_DATA_HOME:-${HOME}/.local/share}/guestbook-ci/crd-models}"

log() { printf 'install-monitoring-tools: %s\n' "$*" >&2; }

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The prometheus package would start a server as a service; only its promtool is wanted.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
else
    log "promtool and node already installed"
fi

package="@kubernetes-models/prometheus-operator"
installed="${CRD_MODELS_DIR}/node_modules/${package}/package.json"
if [[ -f "${installed}" ]] && grep -q "\"version\": \"${CRD_MODELS_VERSION}\"" "${installed}"; then
    log "${package} ${CRD_MODELS_VERSION} already installed"
else
    log "npm install ${package}@${CRD_MODELS_VERSION} into ${CRD_MODELS_DIR}"
    mkdir -p "${CRD_MODELS_DIR}"
    npm install --prefix "${CRD_MODELS_DIR}" --no-audit --no-fund --silent \
        "${package}@${CRD_MODELS_VERSION}"
fi
log "done"
