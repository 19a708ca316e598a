#!/usr/bin/env bash
# What counting clicks costs a redirect: one node, the same links, with click capture on
# and off in turns, in one run.
#
#   bench/clicks.sh [LINKS] [SECONDS] [RUNS]     defaults: 100000 10 3
#
# A release node on 127.0.0.1 pinned to CPU 1, wrk -t1 -c64 on CPU 0 (random existing
# codes, a browser user agent); the node restarts between turns on the same data. Reports
# requests per server CPU-second and p99 for each turn, and the ratio on/off of the
# medians (target: at least 0.9). (That every click is counted is shown by
# node/tests/clicks.rs.) Installs wrk (Debian) when missing. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-100000}; seconds=${2:-10}; runs=${3:-3}
port=18095

work=$(mktemp -d /tmp/linkrift-clicks-bench.XXXXXX)
source bench/lib.sh
need wrk wrk
cleanup() {
  for f in "$work"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p linkrift
key=bench-admin-key-0123456789

start_node() { # CAPTURE(true|false)
  LINKRIFT_ADMIN_KEY=$key LINKRIFT_CLICK_CAPTURE=$1 taskset -c 1 target/release/linkrift serve \
    --data-dir "$work/node" --http "127.0.0.1:$port" --log warn >>"$work/node.out" 2>&1 &
  echo $! >"$work/node.pid"
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "linkrift did not become ready" >&2; exit 1
}
stop_node() {
  kill "$(cat "$work/node.pid")"; while kill -0 "$(cat "$work/node.pid")" 2>/dev/null; do sleep 0.1; done
  rm -f "$work/node.pid"
}

start_node true
python3 - "$port" "$links" "$work/codes" "$key" <<'PY'
import json, sys, urllib.request
port, n, out, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
codes = []
for start in range(0, n, 1000):
    body = json.dumps({"links": [{"url": f"https://example.com/{i}"} for i in range(start, min(n, start + 1000))]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/links/bulk", body,
                                 {"content-type": "application/json", "authorization": f"Bearer {key}"})
    codes += [item["link"]["code"] for item in json.load(urllib.request.urlopen(req))["results"]]
open(out, "w").write("\n".join(codes) + "\n")
PY
stop_node
cat > "$work/random.lua" <<'LUA'
local codes = {}
for line in io.lines(os.getenv("CODES")) do codes[#codes + 1] = "/" .. line end
math.randomseed(os.time())
wrk.headers["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
request = function() return wrk.format("GET", codes[math.random(#codes)]) end
LUA

node_ticks() { cpu_ticks "$(cat "$work/node.pid")"; }
declare -A per_cpu
echo "| turn | capture | requests/s | p50 ms | p99 ms | requests per server CPU-second | non-3xx |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$runs"); do
  for capture in true false; do
    start_node $capture
    row=$(wrk_run "$work/codes" "http://127.0.0.1:$port" 64 "$seconds" node_ticks)
    read -r rps p50 p99 percpu non3xx <<<"$row"
    echo "| $r | $capture | $rps | $p50 | $p99 | $percpu | $non3xx |"
    per_cpu[$capture]+="$percpu "
    stop_node
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
on=$(median <<<"${per_cpu[true]}"); off=$(median <<<"${per_cpu[false]}")
echo
echo "Median requests per server CPU-second: capture on $on, off $off: on/off $(awk "BEGIN {printf \"%.2f\", $on / $off}") (target at least 0.9)"
