#!/usr/bin/env bash
# Where a redirect's time and tail go: one Linkrift node (pinned to CPU 1) under wrk at 64
# connections (CPU 0), profiled with perf: CPU samples by thread and by function, and the
# scheduler's view (how long runnable threads waited for CPU 1, and who ran instead).
#
#   bench/profile.sh [LINKS] [SECONDS] [extra serve flags...]   defaults: 100000 10
#
# Installs perf, wrk and hey from Debian's packages when missing (needs root). Prints the
# reports and stops everything it started; the raw perf data is left in $PROFILE_DIR
# (default /tmp/linkrift-profile) for a closer look. PROFILE_CALLGRAPH="--call-graph dwarf"
# (with PROFILE_HZ=199) unwinds through libc too, to see who calls memcmp or malloc.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-100000}; seconds=${2:-10}; shift $(( $# > 2 ? 2 : $# )) || true
out=${PROFILE_DIR:-/tmp/linkrift-profile}; mkdir -p "$out"
port=18095
work=$(mktemp -d /tmp/linkrift-profile-run.XXXXXX)
source bench/lib.sh
need wrk wrk; need perf linux-perf
key=bench-admin-key-0123456789abcdefghij
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release -q -p linkrift
LINKRIFT_ADMIN_KEY=$key taskset -c 1 target/release/linkrift serve --data-dir "$work/node" \
  --http "127.0.0.1:$port" --log warn "$@" >"$work/node.out" 2>&1 &
pid=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
load_links $port "$links" "$work/codes"
write_random_lua
# Warm up, then measure once without perf (the figures to compare) and once with it.
wrk_run "$work/codes" "http://127.0.0.1:$port" 64 3 cpu_ticks "$pid" >/dev/null
drops() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^clicks_(dropped_total|enqueued_total|ingested_total)/ {print}' | tr '\n' ' '; }
echo "without perf (req/s p50_ms p99_ms req_per_cpu_s non3xx p999_ms): $(wrk_run "$work/codes" "http://127.0.0.1:$port" 64 "$seconds" cpu_ticks "$pid")"
echo "clicks after it: $(drops)"
perf record -q -F ${PROFILE_HZ:-999} ${PROFILE_CALLGRAPH:--g} -p "$pid" -o "$out/cpu.data" -- sleep "$seconds" 2>/dev/null &
recorder=$!
wrk_run "$work/codes" "http://127.0.0.1:$port" 64 "$seconds" cpu_ticks "$pid" >/dev/null
wait $recorder || true
perf sched record -q -o "$out/sched.data" -- sleep 3 2>/dev/null &
recorder=$!
wrk_run "$work/codes" "http://127.0.0.1:$port" 64 3 cpu_ticks "$pid" >/dev/null
wait $recorder || true
# (`|| true`: head closing the pipe early must not end the script under pipefail.)
echo; echo "## CPU samples by thread (comm)"
perf report -i "$out/cpu.data" --no-children --sort comm --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -15 || true
echo; echo "## CPU samples by function (self), top 40"
perf report -i "$out/cpu.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -40 || true
echo; echo "## Scheduling latency on the server's threads (runnable, waiting for a CPU)"
perf sched latency -i "$out/sched.data" --sort max 2>/dev/null | grep -E "linkrift|tokio|click|raft|sled|Task|---|Max" | head -25 || true
