#!/usr/bin/env bash
# The scaling guide's own benchmark commands (../shared/seed, "Benchmark Commands"), with
# hey, against one release node pinned to CPU 1 (hey on CPU 0), and the time a node with
# LINKS links takes to restart.
#
#   bench/guide.sh [LINKS]     default: 1000000
#
#   hey -n 100000 -c 1000 GET /CODE             (one code; redirects not followed)
#   hey -n 10000 -c 100 GET /v1/links           (with an API key)
#   hey -n 1000 -c 50 POST /v1/links            ({"url":"https://example.com","title":"Test"})
#
# Then LINKS links are loaded through the bulk API, the node is stopped (SIGTERM) and
# started again, timed until /readyz answers 200 and a loaded code redirects. Prints one
# table; installs hey when missing; stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-1000000}
port=18093

work=$(mktemp -d /tmp/linkrift-guide.XXXXXX)
source bench/lib.sh
need hey hey
cleanup() {
  for f in "$work"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p linkrift
key=bench-admin-key-0123456789

start_node() {
  LINKRIFT_ADMIN_KEY=$key taskset -c 1 target/release/linkrift serve --data-dir "$work/node" \
    --http "127.0.0.1:$port" --log warn >>"$work/node.out" 2>&1 &
  echo $! >"$work/node.pid"
  for _ in $(seq 6000); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.05; done
  echo "linkrift did not become ready" >&2; exit 1
}
stop_node() {
  kill "$(cat "$work/node.pid")"; while kill -0 "$(cat "$work/node.pid")" 2>/dev/null; do sleep 0.05; done
  rm -f "$work/node.pid"
}
row() { # NAME hey-args...
  local name=$1; shift
  local out; out=$(taskset -c 0 hey "$@" 2>&1)
  python3 - "$name" "$out" <<'PY'
import re, sys
name, out = sys.argv[1], sys.argv[2]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
def pct(p):
    m = re.search(rf"\s{p}% in ([\d.]+) secs", out)
    return f"{float(m.group(1)) * 1000:.2f}" if m else "-"
codes = ", ".join(f"{n}×{c}" for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
tail = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
errors = sum(int(n) for n in re.findall(r"\[(\d+)\]", tail))
print(f"| {name} | {rps:.0f} | {pct(50)} | {pct(99)} | {codes} | {errors} |")
PY
}

start_node
code=$(curl -sf -X POST -H "Authorization: Bearer $key" -H 'content-type: application/json' \
  -d '{"url":"https://example.com/abc123","code":"abc123"}' "http://127.0.0.1:$port/v1/links" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])')

echo "| command | requests/s | p50 ms | p99 ms | statuses | errors |"
echo "|---|---|---|---|---|---|"
row "hey -n 100000 -c 1000 GET /$code" -n 100000 -c 1000 -disable-redirects "http://127.0.0.1:$port/$code"
row "hey -n 10000 -c 100 GET /v1/links" -n 10000 -c 100 -H "Authorization: Bearer $key" \
  "http://127.0.0.1:$port/v1/links"
row "hey -n 1000 -c 50 POST /v1/links" -n 1000 -c 50 -m POST -H "Authorization: Bearer $key" \
  -T application/json -d '{"url":"https://example.com","title":"Test"}' "http://127.0.0.1:$port/v1/links"

# Restart with LINKS links.
python3 - "$port" "$links" "$key" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
port, n, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def bulk(start):
    body = {"links": [{"url": f"https://example.com/{i}", "code": f"r{i}"} for i in range(start, min(n, start + 1000))]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/links/bulk", json.dumps(body).encode(),
                                 {"content-type": "application/json", "authorization": f"Bearer {key}"})
    urllib.request.urlopen(req, timeout=120).read()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(bulk, range(0, n, 1000)))
PY
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/node.pid")/status")
stop_node
t0=$(date +%s.%N)
start_node
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/r$((links - 1))") == 302 ]]; do sleep 0.05; done
t1=$(date +%s.%N)
echo
echo "Restart with $links links (RSS before the stop $((rss_kb / 1024)) MB): ready and redirecting in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
