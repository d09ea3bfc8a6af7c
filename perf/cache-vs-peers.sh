#!/usr/bin/env bash
# The hub's cache against its peers, same machine, same run, same offered rate:
#   GET of one ConfigMap, LIST of a namespace of 50 and one of 5,000 ConfigMaps (~1.3 KB of
#   JSON each; each namespace also holds its kube-root-ca.crt), requested
#     direct   from the simulator itself (plain HTTP: the agent's upstream),
#     hub-rv0  through the hub with resourceVersion=0 (served from the cache as it is),
#     hub      through the hub without resourceVersion (kubectl's default: the agent first
#              confirms the cache is current, one limit=1 probe of the edge per burst),
#     hub-fwd  through the hub with a query option the cache does not interpret, so it is
#              forwarded through the tunnel to the edge (what the cache saves),
#     nginx    the same bytes the hub answers, as a static file over HTTPS (TLS 1.3, the
#              hub's own ECDSA P-256 certificate and key), 2 worker processes.
#   Open loop at a constant rate (`kubehub-perf get`), HDR percentiles, CPU time per request
#   of every server process from /proc/PID/stat, what reached the edge (the simulator's
#   request log), and whether the hub answered from its cache (X-Kubehub-Cache: hit).
# Rounds repeat every measurement; the order of the paths rotates from round to round. Before
# each measurement it waits for the machine to be idle (others build and test on it); one
# taken while it is not is marked "machine busy". It prints Markdown tables (medians over
# rounds, ratios within a round) and keeps every figure in $OUT/records.jsonl.
#
# usage: perf/cache-vs-peers.sh PERF_BIN KUBEHUB_BIN
#   e.g. perf/cache-vs-peers.sh target/release/kubehub-perf target/release/kubehub
# environment: ROUNDS (3), OUT (target/cache-vs-peers), CASES ("get list50 list5000"),
#   PATHS ("direct hub-rv0 hub hub-fwd nginx"), CONNS (8), GET_RATE (2000), LIST50_RATE (500),
#   LIST5000_RATE (20), DURATION (10; LIST 5000: 2x), HUB_CORES (2), NGINX_WORKERS (2),
#   NGINX (nginx), IDLE_TRIES (60: 3-second checks for an idle machine before each run),
#   PROFILE (empty; 1: also `perf record` the hub during one hub-rv0 GET and LIST 5000 run),
#   PERF_RECORD ("-F 1999"; e.g. "--call-graph dwarf,16384 -F 499" for callers: the release
#   profile keeps line tables, not frame pointers).
set -euo pipefail

perf=${1:?usage: $0 PERF_BIN KUBEHUB_BIN}
kubehub=${2:?usage: $0 PERF_BIN KUBEHUB_BIN}
perf=$(realpath "$perf")
kubehub=$(realpath "$kubehub")
rounds=${ROUNDS:-3}
out=$(realpath -m "${OUT:-target/cache-vs-peers}")
cases=${CASES:-get list50 list5000}
paths=${PATHS:-direct hub-rv0 hub hub-fwd nginx}
conns=${CONNS:-8}
duration=${DURATION:-10}
nginx_bin=${NGINX:-nginx}
run="$out/run"
rm -rf "$run"
mkdir -p "$run/www" "$run/nginx"
records="$out/records.jsonl"
: > "$records"
log() { echo "$*" | tee -a "$out/results.txt"; }
: > "$out/results.txt"

# Everything started here is stopped on exit, by pid.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port on loopback: below the ephemeral range (so no outgoing connection holds it),
# not taken by this run already, nothing listening on it.
taken=" "
free_port() {
  local p lo
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
  while :; do
    p=$((10000 + RANDOM % (lo - 10000)))
    [[ "$taken" == *" $p "* ]] && continue
    ss -Htan "( sport = :$p )" 2>/dev/null | grep -q . && continue
    taken+="$p "
    echo "$p"
    return
  done
}

# shellcheck source=perf/idle.sh
. "$(dirname "$0")/idle.sh"

# --- the set-up -----------------------------------------------------------------------------
# (Not $(free_port): a subshell would not remember the ports taken.)
for v in sim_port ctl_port user_port agent_port admin_port nginx_port; do
  free_port > "$run/port"; printf -v "$v" %s "$(cat "$run/port")"; taken+="${!v} "
done
"$kubehub" certs --dir "$run/certs" --clusters edge --users admin > /dev/null
token=$("$perf" access-file --out "$run/access.json" --cluster edge)
cat > "$run/hub.toml" <<EOF
id = "hub-perf"
cores = ${HUB_CORES:-2}
clusters = ["edge"]
impersonate = false
[access]
file = "access.json"
[user_listener]
listen = "127.0.0.1:$user_port"
cert = "certs/hub.crt"
key = "certs/hub.key"
[agent_listener]
listen = "127.0.0.1:$agent_port"
cert = "certs/hub.crt"
key = "certs/hub.key"
client_ca = "certs/ca.crt"
[admin]
listen = "127.0.0.1:$admin_port"
EOF
cat > "$run/agent.toml" <<EOF
cluster_id = "edge"
hubs = ["127.0.0.1:$agent_port"]
[tls]
ca = "certs/ca.crt"
cert = "certs/agent-edge.crt"
key = "certs/agent-edge.key"
server_name = "localhost"
[upstream]
url = "http://127.0.0.1:$sim_port"
EOF

sim="http://127.0.0.1:$sim_port"
edge_log="http://127.0.0.1:$ctl_port/requests"
hub="https://127.0.0.1:$user_port/clusters/edge"
admin="http://127.0.0.1:$admin_port"
"$perf" sim --listen "127.0.0.1:$sim_port" --control "127.0.0.1:$ctl_port" > "$run/sim.out" 2> "$run/sim.log" &
sim_pid=$!; pids+=("$sim_pid")
(cd "$run" && exec "$kubehub" --log warn hub --config hub.toml > hub.out 2> hub.log) &
hub_pid=$!; pids+=("$hub_pid")
for _ in $(seq 100); do curl -sf "$admin/healthz" > /dev/null && curl -sf "$sim/version" > /dev/null && break; sleep 0.1; done
(cd "$run" && exec "$kubehub" --log warn agent --config agent.toml > agent.out 2> agent.log) &
agent_pid=$!; pids+=("$agent_pid")
for _ in $(seq 100); do curl -sf "$admin/readyz" | grep -q "ok: 1 agents" && break; sleep 0.1; done
curl -sf "$admin/readyz" | grep -q "ok: 1 agents" || { echo "the agent did not connect; see $run/*.log" >&2; exit 1; }

log "# cache vs peers, $(date -u +%Y-%m-%dT%H:%MZ), $("$kubehub" --version), $(nproc) CPUs; rounds $rounds"
log "$("$perf" configmaps --url "$sim" --namespace cache-50 --count 50)"
log "$("$perf" configmaps --url "$sim" --namespace cache-5000 --count 5000)"
log "$("$perf" wait-synced --admin "$admin" --cluster edge --type v1/configmaps --like "$sim/api/v1/configmaps")"

# What is requested: one ConfigMap of cache-50, and both namespaces' lists.
name=$(curl -sf "$sim/api/v1/namespaces/cache-50/configmaps" | grep -o '"name":"[a-z]*-00000-config"' | head -1 | cut -d'"' -f4)
[ -n "$name" ] || { echo "no ConfigMap 0 in cache-50" >&2; exit 1; }
declare -A api=(
  [get]="/api/v1/namespaces/cache-50/configmaps/$name"
  [list50]="/api/v1/namespaces/cache-50/configmaps"
  [list5000]="/api/v1/namespaces/cache-5000/configmaps"
)
declare -A rate=([get]=${GET_RATE:-2000} [list50]=${LIST50_RATE:-500} [list5000]=${LIST5000_RATE:-20})
declare -A secs=([get]=$duration [list50]=$duration [list5000]=$((duration * 2)))
declare -A title

# nginx serves exactly what the hub answers from its cache.
for c in $cases; do
  f="$run/www/$c.json"
  hdr=$(curl -sf --cacert "$run/certs/ca.crt" -H "Authorization: Bearer $token" -D - -o "$f" "$hub${api[$c]}?resourceVersion=0")
  echo "$hdr" | grep -qi '^x-kubehub-cache: hit' || { echo "the hub did not answer $c from its cache" >&2; exit 1; }
  if [ "$c" = get ]; then
    title[$c]="GET 1 ConfigMap ($(stat -c %s "$f") B)"
  else
    title[$c]="LIST $(grep -o '"uid":' "$f" | wc -l) ConfigMaps ($(stat -c %s "$f") B)"
  fi
done
cat > "$run/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes ${NGINX_WORKERS:-2};
pid $run/nginx/nginx.pid;
error_log $run/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  client_body_temp_path $run/nginx/body;
  proxy_temp_path $run/nginx/proxy;
  fastcgi_temp_path $run/nginx/fastcgi;
  uwsgi_temp_path $run/nginx/uwsgi;
  scgi_temp_path $run/nginx/scgi;
  server {
    listen 127.0.0.1:$nginx_port ssl;
    ssl_certificate $run/certs/hub.crt;
    ssl_certificate_key $run/certs/hub.key;
    ssl_protocols TLSv1.3;
    root $run/www;
  }
}
EOF
"$nginx_bin" -c "$run/nginx/nginx.conf" -p "$run/nginx" &
nginx_pid=$!; pids+=("$nginx_pid")
for _ in $(seq 50); do curl -sf --cacert "$run/certs/ca.crt" "https://127.0.0.1:$nginx_port/get.json" -o /dev/null && break; sleep 0.1; done
curl -sf --cacert "$run/certs/ca.crt" "https://127.0.0.1:$nginx_port/get.json" -o /dev/null || { echo "nginx did not start; see $run/nginx/error.log" >&2; exit 1; }
nginx_pids=$(echo "$nginx_pid" $(pgrep -P "$nginx_pid") | tr ' ' '+')
log "nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///'): master + workers $nginx_pids; $(curl -sf --cacert "$run/certs/ca.crt" -w '%{ssl_verify_result}' -o /dev/null -v "https://127.0.0.1:$nginx_port/get.json" 2>&1 | grep -o 'SSL connection using [^ ]* / [^ ]*' | head -1)"

# --- the measurements -------------------------------------------------------------------------
measure() {
  local c=$1 p=$2 round=$3
  local args=(--case "${title[$c]}" --label "$p" --round "$round" --rate "${rate[$c]}"
    --duration "${secs[$c]}" --connections "$conns" --record "$records")
  case $p in
    direct) args+=(--url "$sim${api[$c]}" --cpu "sim=$sim_pid" --edge-log "$edge_log") ;;
    hub-rv0) args+=(--url "$hub${api[$c]}?resourceVersion=0" --expect-header "x-kubehub-cache: hit") ;;
    hub) args+=(--url "$hub${api[$c]}" --expect-header "x-kubehub-cache: hit") ;;
    hub-fwd) args+=(--url "$hub${api[$c]}?perf=forwarded") ;;
    nginx) args+=(--url "https://127.0.0.1:$nginx_port/$c.json" --ca "$run/certs/ca.crt" --cpu "nginx=$nginx_pids") ;;
    *) echo "unknown path $p" >&2; return 1 ;;
  esac
  case $p in
    hub*) args+=(--token "$token" --ca "$run/certs/ca.crt" --cpu "hub=$hub_pid" --cpu "agent=$agent_pid"
      --cpu "sim=$sim_pid" --edge-log "$edge_log") ;;
  esac
  wait_idle "${IDLE_TRIES:-60}"
  log "round $round ${title[$c]} $("$perf" get "${args[@]}" --note "$busy")${busy:+ ($busy)}"
}

read -r -a path_list <<< "$paths"
for round in $(seq "$rounds"); do
  for c in $cases; do
    # Rotate the order of the paths from round to round.
    n=${#path_list[@]}
    for i in $(seq 0 $((n - 1))); do
      measure "$c" "${path_list[$(( (i + round - 1) % n ))]}" "$round" || log "round $round $c ${path_list[$(( (i + round - 1) % n ))]}: failed"
    done
  done
done

if [ -n "${PROFILE:-}" ] && command -v perf > /dev/null; then
  for c in get list5000; do
    [[ " $cases " == *" $c "* ]] || continue
    wait_idle "${IDLE_TRIES:-60}"
    # shellcheck disable=SC2086 # PERF_RECORD is a list of options
    perf record ${PERF_RECORD:--F 1999} -p "$hub_pid" -o "$out/hub-$c.perf.data" -- sleep $((secs[$c] + 1)) 2> /dev/null &
    rec=$!
    "$perf" get --url "$hub${api[$c]}?resourceVersion=0" --token "$token" --ca "$run/certs/ca.crt" \
      --rate "${rate[$c]}" --duration "${secs[$c]}" --warmup 1 --connections "$conns" --label "hub-rv0 (profiled)" > /dev/null
    wait "$rec" || true
    log "profile of the hub, hub-rv0 ${title[$c]}: perf report -i $out/hub-$c.perf.data --no-children"
    perf report -i "$out/hub-$c.perf.data" --no-children -g none --percent-limit 1.5 --stdio 2> /dev/null \
      | grep -E '^ +[0-9.]+%' | head -25 | tee -a "$out/results.txt"
  done
fi

"$perf" summary "$records" | tee "$out/summary.md"
