#!/usr/bin/env bash
# Before/after measurements of two (or more) `kubehub` builds, same commands, same machine:
#   1. bulk: a multi-MB LIST and many `logs -f` streams, hub vs direct (`kubehub-perf bulk`);
#   2. the small GET, hub vs direct, exactly as recorded in RESULTS.md (`kubehub demo` +
#      `kubehub-perf get`, two alternating rounds per demo);
#   3. hub memory per idle tunnel (`kubehub-perf idle-agents --count 1000`).
# Rounds interleave the builds (before, after, before, after, ...) so that drift on a noisy
# machine falls on both alike. Every line printed is also appended to $OUT/results.txt.
#
# usage: perf/before-after.sh PERF_BIN LABEL=KUBEHUB_BIN [LABEL=KUBEHUB_BIN ...]
#   e.g. perf/before-after.sh /work/target-after/release/kubehub-perf \
#          before=/work/target-before/release/kubehub after=/work/target-after/release/kubehub
# environment: ROUNDS (3), OUT (target/before-after), ONLY (any of "bulk get idle"; all by default),
#   BULK_ARGS (extra options for `kubehub-perf bulk`), IDLE_COUNT (1000),
#   IDLE_TRIES (120: 3-second checks for an idle machine before each measurement).
set -euo pipefail

perf=${1:?usage: $0 PERF_BIN LABEL=KUBEHUB_BIN ...}
shift
[ $# -ge 1 ] || { echo "usage: $0 PERF_BIN LABEL=KUBEHUB_BIN ..." >&2; exit 2; }
rounds=${ROUNDS:-3}
out=${OUT:-target/before-after}
only=${ONLY:-bulk get idle}
idle_count=${IDLE_COUNT:-1000}
mkdir -p "$out"
log() { echo "$*" | tee -a "$out/results.txt"; }

# shellcheck source=perf/idle.sh
. "$(dirname "$0")/idle.sh"

demo_pid=
cleanup() { [ -n "$demo_pid" ] && kill "$demo_pid" 2>/dev/null && wait "$demo_pid" 2>/dev/null; true; }
trap cleanup EXIT

# The small GET of RESULTS.md: `kubehub demo`, then direct/hub alternating, twice.
get_ratio() {
  local label=$1 bin=$2 round=$3 d="$out/demo-$1"
  rm -rf "$d"; mkdir -p "$d"
  "$bin" --log warn demo --dir "$d" > "$d/demo.out" 2> "$d/demo.err" &
  demo_pid=$!
  for _ in $(seq 200); do grep -q "demo is running" "$d/demo.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "demo is running" "$d/demo.out" || { log "$label round $round get: demo did not start"; cleanup; demo_pid=; return 1; }
  local SIM HUB TOKEN P=/api/v1/namespaces/default/configmaps/kube-root-ca.crt
  SIM=$(sed -n 's/^url = "\(.*\)"/\1/p' "$d/agent.toml")
  HUB=$(sed -n 's#^ *server: "\{0,1\}\(https://[^/"]*\)/clusters/demo"\{0,1\}$#\1#p' "$d/kubeconfig")
  # The demo's kubeconfig carries the token (older builds wrote it to tokens.csv too).
  TOKEN=$(sed -n 's/^ *token: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$d/kubeconfig")
  for r in 1 2; do
    wait_idle "${IDLE_TRIES:-120}"
    log "$label round $round.$r $("$perf" get --label direct --url "$SIM$P" --rate 500 --duration 10 --connections 8)${busy:+ ($busy)}"
    log "$label round $round.$r $("$perf" get --label hub --url "$HUB/clusters/demo$P" --token "$TOKEN" --ca "$d/certs/ca.crt" --rate 500 --duration 10 --connections 8)${busy:+ ($busy)}"
  done
  cleanup; demo_pid=
}

for round in $(seq "$rounds"); do
  for spec in "$@"; do
    label=${spec%%=*} bin=${spec#*=}
    if [[ " $only " == *" bulk "* ]]; then
      wait_idle "${IDLE_TRIES:-120}"
      [ -n "$busy" ] && log "$label round $round bulk: machine busy"
      # shellcheck disable=SC2086
      "$perf" bulk --kubehub "$bin" --dir "$out/bulk-$label" ${BULK_ARGS:-} | sed -e "s/^round 1 /round $round /" -e "s/^/$label /" | tee -a "$out/results.txt" \
        || log "$label round $round bulk: failed (logs in $out/bulk-$label)"
    fi
    if [[ " $only " == *" get "* ]]; then
      get_ratio "$label" "$bin" "$round" || true
    fi
    if [[ " $only " == *" idle "* ]]; then
      wait_idle "${IDLE_TRIES:-120}"
      log "$label round $round $("$perf" idle-agents --hub-bin "$bin" --count "$idle_count" --dir "$out/idle-$label")${busy:+ ($busy)}"
    fi
  done
done
