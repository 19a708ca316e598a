#!/usr/bin/env bash
# Redirect and create benchmark of a single Linkrift node beside the nginx static-redirect
# baseline, in one run on this machine (method: ../../shared/bench/README.md), and beside
# the floor of its own stack (`api/examples/redirect_floor.rs`: axum on tokio answering
# from a read-only HashMap of the same codes, with nothing else), so that the gap to nginx
# splits into what the stack costs and what Linkrift's own work costs.
#
#   bench/redirect.sh [LINKS] [SECONDS] [RUNS]     defaults: 100000 10 3
#
# Starts what it measures on loopback, pins servers to CPU 1 and the load generator to
# CPU 0, prints one markdown table, and stops everything it started. Installs wrk, hey and
# nginx from Debian's packages when missing (needs root). BENCH_MEMORY_LINKS=N also
# loads N links into a fresh node and reports its resident memory per link.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-100000}; seconds=${2:-10}; runs=${3:-3}
baseline_script=${NGINX_BASELINE:-../shared/bench/nginx-baseline.sh}
lr_port=18090; ng_port=18091; fl_port=18093

work=$(mktemp -d /tmp/linkrift-bench.XXXXXX)
source bench/lib.sh
need wrk wrk; need hey hey; need nginx nginx

pids=()
cleanup() {
  local status=$?
  if [[ $status -ne 0 ]]; then
    for f in "$work"/*.out; do [[ -f $f ]] && { echo "--- $f" >&2; grep -m3 -A3 -E "panicked|Error" "$f" >&2; }; done
  fi
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p linkrift -p linkrift-api --example redirect_floor

key=bench-admin-key-0123456789abcdefghij
start_linkrift() { # DIR PORT (runs in a subshell: the PID goes to a file for cleanup)
  if curl -s -o /dev/null "http://127.0.0.1:$2/"; then echo "port $2 is already in use" >&2; exit 1; fi
  LINKRIFT_ADMIN_KEY=$key taskset -c 1 target/release/linkrift serve --data-dir "$1" \
    --http "127.0.0.1:$2" --log warn >"$1.out" 2>&1 &
  echo $! >"$1.pid"; echo $!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "linkrift did not become ready" >&2; exit 1
}

write_random_lua
# One wrk run: prints "req/s p50_ms p99_ms req_per_cpu_s non3xx p999_ms".
measure() { wrk_run "$work/codes" "http://127.0.0.1:$2" "$3" "$seconds" cpu_ticks "$1"; } # PID PORT CONNECTIONS

lr_pid=$(start_linkrift "$work/node" $lr_port)
load_links $lr_port "$links" "$work/codes"
ng_pid=$("$baseline_script" start $ng_port 1); pids+=("$ng_pid")
ng_worker=$(pgrep -P "$ng_pid" | head -1); ng_worker=${ng_worker:-$ng_pid}
taskset -c 1 target/release/examples/redirect_floor "127.0.0.1:$fl_port" "$work/codes" >"$work/floor.out" 2>&1 &
fl_pid=$!; pids+=("$fl_pid")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$fl_port/" && break; sleep 0.1; done
curl -s -o /dev/null "http://127.0.0.1:$fl_port/" || { echo "the floor server did not start:" >&2; cat "$work/floor.out" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratios=(); floors=()
echo "| server | connections | requests/s | p50 ms | p99 ms | requests per server CPU-second | non-3xx | p99.9 ms |"
echo "|---|---|---|---|---|---|---|---|"
for c in 64 256; do
  : >"$work/lr.$c"; : >"$work/ng.$c"; : >"$work/fl.$c"
  for _ in $(seq "$runs"); do
    measure "$lr_pid" $lr_port $c >>"$work/lr.$c"
    measure "$ng_worker" $ng_port $c >>"$work/ng.$c"
    measure "$fl_pid" $fl_port $c >>"$work/fl.$c"
  done
  for s in lr ng fl; do
    case $s in
      lr) name="linkrift, $links links" ;;
      ng) name="nginx static 302" ;;
      fl) name="floor: axum + HashMap" ;;
    esac
    row=""
    for col in 1 2 3 4 5 6; do row="$row | $(cut -d' ' -f$col "$work/$s.$c" | median)"; done
    echo "| $name | $c$row |"
  done
  ratios+=("$c connections: $(awk -v a="$(cut -d' ' -f4 "$work/lr.$c" | median)" \
    -v b="$(cut -d' ' -f4 "$work/ng.$c" | median)" 'BEGIN {printf "%.2f", a / b}')")
  floors+=("$c connections: $(awk -v a="$(cut -d' ' -f4 "$work/fl.$c" | median)" \
    -v b="$(cut -d' ' -f4 "$work/ng.$c" | median)" 'BEGIN {printf "%.2f", a / b}')")
done
echo
echo "Linkrift / nginx, requests per server CPU-second (medians): ${ratios[*]} (target at least 0.8)"
echo "Floor / nginx, the same: ${floors[*]}"

# Creates at concurrency 32 (each request makes a new link with a generated code).
hey_out=$(taskset -c 0 hey -n 5000 -c 32 -m POST -T application/json -H "Authorization: Bearer $key" \
  -d '{"url": "https://example.com/created"}' "http://127.0.0.1:$lr_port/v1/links")
echo
echo "Creates, hey -n 5000 -c 32: $(grep -E 'Requests/sec' <<<"$hey_out" | xargs), \
p50 $(grep -E '50% in' <<<"$hey_out" | awk '{print $3*1000 " ms"}'), \
p99 $(grep -E '99% in' <<<"$hey_out" | awk '{print $3*1000 " ms"}'), \
statuses: $(grep -A3 'Status code distribution' <<<"$hey_out" | grep -o '\[[0-9]*\][^[]*' | xargs)"

if [[ -n ${BENCH_MEMORY_LINKS:-} ]]; then
  m_pid=$(start_linkrift "$work/mem" 18092)
  base_rss=$(awk '/VmRSS/ {print $2}' "/proc/$m_pid/status")
  load_links 18092 "$BENCH_MEMORY_LINKS" "$work/mem-codes"
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$m_pid/status")
  echo "Resident memory: $base_rss KiB empty, $rss KiB with $BENCH_MEMORY_LINKS links:" \
    "$(( (rss - base_rss) * 1024 / BENCH_MEMORY_LINKS )) bytes per link"
fi
