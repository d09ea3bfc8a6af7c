#!/usr/bin/env bash
# kubectl exec streaming 100 MiB of stdout (`head -c 104857600 /dev/zero`) through KubeHub
# (kubectl → hub → tunnel → agent → simulator, WebSocket and SPDY) against the same exec straight
# to a simulator, and the latency of small GETs through the hub while such streams run against
# the same GETs on an idle hub.
#
#   perf/exec-stream.sh [ROUNDS]        (default 3 rounds of each)
#
# The hub, agent, simulator and metaserver run in one `kubehub demo` process; the direct target
# is a `kubehub sim` process with the same seed. CPU seconds are the processes' utime+stime
# from /proc over the run: "demo" includes its simulator, so demo − sim is what hub, agent and
# the tunnel cost for the stream. kubectl runs on the same two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source perf/idle.sh
cargo build --release --locked -p kubehub-cli >&2
bin=$PWD/target/release/kubehub
dir=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

"$bin" demo --dir "$dir/demo" --log warn >"$dir/demo.log" 2>&1 &
demo_pid=$!
port=$((20000 + RANDOM % 20000))
"$bin" sim --listen "127.0.0.1:$port" --dir "$dir/sim" --log warn >"$dir/sim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do
  [ -s "$dir/demo/kubeconfig" ] && [ -s "$dir/sim/kubeconfig" ] && grep -q 'Ctrl-C stops' "$dir/demo.log" && break
  sleep 0.2
done
hub="kubectl --kubeconfig $dir/demo/kubeconfig"
direct="kubectl --kubeconfig $dir/sim/kubeconfig"
pod_of() { $1 get pods -n edge-0 -o jsonpath='{.items[0].metadata.name}'; }
container_of() { $1 get pod -n edge-0 "$2" -o jsonpath='{.spec.containers[0].name}'; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)

# One 100 MiB stream: prints seconds and the CPU seconds of the demo and sim processes.
stream() {
  local k=$1 ws=$2 pod c d0 s0 t0 t1 n
  pod=$(pod_of "$k"); c=$(container_of "$k" "$pod")
  d0=$(cpu $demo_pid); s0=$(cpu $sim_pid); t0=$(date +%s%N)
  n=$(KUBECTL_REMOTE_COMMAND_WEBSOCKETS=$ws $k exec -n edge-0 "$pod" -c "$c" -- head -c 104857600 /dev/zero | wc -c)
  t1=$(date +%s%N)
  [ "$n" = 104857600 ] || { echo "short stream: $n bytes" >&2; exit 1; }
  awk -v t=$((t1 - t0)) -v d=$(( $(cpu $demo_pid) - d0 )) -v s=$(( $(cpu $sim_pid) - s0 )) -v tck="$tck" \
    'BEGIN { printf "%.2f %.2f %.2f\n", t / 1e9, d / tck, s / tck }'
}

wait_idle 40
echo "# 100 MiB of stdout through kubectl exec ($rounds rounds each, alternating; $busy)"
echo "| path | transport | seconds (median) | MB/s | CPU s demo (hub+agent+its sim) | CPU s direct sim |"
echo "| --- | --- | --- | --- | --- | --- |"
for ws in true false; do
  proto=$([ $ws = true ] && echo WebSocket || echo SPDY)
  : >"$dir/hub-$ws"; : >"$dir/direct-$ws"
  for _ in $(seq "$rounds"); do
    stream "$hub" $ws >>"$dir/hub-$ws"
    stream "$direct" $ws >>"$dir/direct-$ws"
  done
  for path in hub direct; do
    sort -n "$dir/$path-$ws" | awk -v p="$path" -v proto="$proto" -v r="$rounds" '
      { t[NR] = $1; d[NR] = $2; s[NR] = $3 }
      END { m = int((r + 1) / 2); printf "| %s | %s | %.2f | %.0f | %.2f | %.2f |\n", (p == "hub" ? "through the hub" : "direct to the simulator"), proto, t[m], 104.857600 / t[m], d[m], s[m] }'
  done
done

# GET latency through the hub: idle, then while 100 MiB exec streams run back to back.
field() { awk -v f="$1:" '$1 == f {gsub(/"/, "", $2); print $2}' "$dir/demo/kubeconfig"; }
token=$(field token)
server=$(field server)
field certificate-authority-data | base64 -d >"$dir/ca.crt"
gets() {
  local i
  for i in $(seq 100); do
    curl -s -o /dev/null -w '%{time_total}\n' --cacert "$dir/ca.crt" -H "Authorization: Bearer $token" \
      "$server/api/v1/namespaces/default"
    sleep 0.02
  done | sort -n | awk '{ a[NR] = $1 } END { printf "p50 %.1f ms, p90 %.1f ms, max %.1f ms\n", a[50] * 1000, a[90] * 1000, a[NR] * 1000 }'
}
echo
echo "# GET /api/v1/namespaces/default through the hub, 100 sequential curl requests"
echo "- idle hub: $(gets)"
pod=$(pod_of "$hub"); c=$(container_of "$hub" "$pod")
( while true; do $hub exec -n edge-0 "$pod" -c "$c" -- head -c 104857600 /dev/zero >/dev/null 2>&1 || true; done ) &
loop=$!
sleep 1
echo "- while 100 MiB exec streams run back to back: $(gets)"
kill $loop 2>/dev/null || true
