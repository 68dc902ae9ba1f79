#!/usr/bin/env bash
# Prints the path of a `weed` binary (SeaweedFS) at $WEED_VERSION, building it first when
# no cached one exists. Used by bench/vs-seaweedfs.ts; safe to run by hand.
#
# Looks, in order, at: $WEED_BIN (taken as is), $PERF_BIN/weed (default /tmp/perf-bin, a
# shared cache other tools on this machine fill), $HAYSTACK_BENCH_CACHE/weed (default
# ~/.cache/haystack-bench). A cached binary counts only with its `.weed-version` stamp
# next to it naming $WEED_VERSION. Otherwise it builds into $HAYSTACK_BENCH_CACHE:
# `go install …/weed@version` refuses this module (its go.mod has a replace directive), so
# the module is downloaded into the module cache from an empty folder (no go.mod consulted)
# and a writable copy of it is built as the main module. Cold: ~20 min on 2 cores.
# A lock (flock) keeps two builds from racing; the build's output goes to stderr.
set -euo pipefail
WEED_MODULE=github.com/seaweedfs/seaweedfs
WEED_VERSION="${WEED_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
PERF_BIN="${PERF_BIN:-/tmp/perf-bin}"
CACHE="${HAYSTACK_BENCH_CACHE:-$HOME/.cache/haystack-bench}"
say() { printf '[seaweedfs-build] %s\n' "$*" >&2; }

if [ -n "${WEED_BIN:-}" ]; then
  [ -x "$WEED_BIN" ] || { say "WEED_BIN=$WEED_BIN is not an executable"; exit 1; }
  echo "$WEED_BIN"
  exit 0
fi

usable() {  # usable DIR: DIR/weed exists, runs, and its stamp names our version
  [ -x "$1/weed" ] && [ "$(cat "$1/.weed-version" 2>/dev/null)" = "$WEED_VERSION" ] && "$1/weed" version >/dev/null 2>&1
}
for d in "$PERF_BIN" "$CACHE"; do
  if usable "$d"; then echo "$d/weed"; exit 0; fi
done

command -v go >/dev/null || { say "go is missing (the module needs Go >= 1.26.6); or set WEED_BIN"; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9
if usable "$CACHE"; then echo "$CACHE/weed"; exit 0; fi  # another run built it while we waited

work="$(mktemp -d "${TMPDIR:-/tmp}/haystack-weed.XXXXXX")"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
say "go mod download $WEED_MODULE@$WEED_VERSION"
json="$(cd "$work" && go mod download -json "$WEED_MODULE@$WEED_VERSION")" || { say "go mod download failed: $json"; exit 1; }
src="$(node -e 'const j = JSON.parse(require("fs").readFileSync(0, "utf8")); if (j.Error) { console.error(j.Error); process.exit(1) } console.log(j.Dir)' <<<"$json")"
[ -d "$src" ] || { say "go mod download gave no source folder: $json"; exit 1; }
say "go build ./weed from a writable copy of $src (~20 min cold on 2 cores)"
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"   # the module cache is read-only
(cd "$work/src" && go build -buildvcs=false -o "$work/weed" ./weed) >&2
mv -f "$work/weed" "$CACHE/weed"
printf '%s\n' "$WEED_VERSION" > "$CACHE/.weed-version"
say "built $CACHE/weed"
echo "$CACHE/weed"
