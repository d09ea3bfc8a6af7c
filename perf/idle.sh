# Sourced by the measurement scripts: `wait_idle [TRIES]` waits (3 s per try, default 120) until
# the machine is at least 90% idle over 3 s, and leaves `busy` empty, or set to "machine busy"
# if it never was: others may be building or testing on it, and a measurement taken meanwhile
# must say so. Idle is /proc/stat's idle + iowait against wall time x CPUs: its busy fields are
# tick-sampled and miss most of a bursty load on these VMs (see `machine_idle_secs` in
# perf/src/bin/kubehub-perf/sys.rs).
ncpu=$(grep -c '^cpu[0-9]' /proc/stat)
tck=$(getconf CLK_TCK)
busy=
wait_idle() {
  local i a b t0 t1 idle wall
  for i in $(seq "${1:-120}"); do
    a=($(head -1 /proc/stat)); t0=$(date +%s%N); sleep 3; b=($(head -1 /proc/stat)); t1=$(date +%s%N)
    idle=$(( (b[4] - a[4] + b[5] - a[5]) * 1000000000 / tck ))   # ns
    wall=$(( (t1 - t0) * ncpu ))
    if [ $((idle * 100)) -ge $((wall * 90)) ]; then busy=; return 0; fi
    [ "$i" = 1 ] && echo "waiting for the machine to be idle..." >&2
  done
  busy="machine busy"
}
