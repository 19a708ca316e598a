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
trap stop_all EXIT
cargo build --release -q -p linkrift
key=bench-admin-key-0123456789abcdefghij


start_single "$port"
code=$(curl -sf -X POST -H "Authorization: Bearer $key" -H 'content-type: application/json' \
  -d '{"url":"https://example.com/abc123","code":"abc123"}' "http://127.0.0.1:$port/v1/links" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])')

echo "| command | requests/s | p50 ms | p99 ms | statuses | errors |"
echo "|---|---|---|---|---|---|"
hey_row "hey -n 100000 -c 1000 GET /$code" -n 100000 -c 1000 -disable-redirects "http://127.0.0.1:$port/$code"
hey_row "hey -n 10000 -c 100 GET /v1/links" -n 10000 -c 100 -H "Authorization: Bearer $key" \
  "http://127.0.0.1:$port/v1/links"
hey_row "hey -n 1000 -c 50 POST /v1/links" -n 1000 -c 50 -m POST -H "Authorization: Bearer $key" \
  -T application/json -d '{"url":"https://example.com","title":"Test"}' "http://127.0.0.1:$port/v1/links"

# Restart with LINKS links.
load_links "$port" "$links" "$work/codes"
last=$(tail -n 1 "$work/codes")
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$(cat "$work/node.pid")/status")
stop_single
t0=$(date +%s.%N)
start_single "$port"
until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$last") == 302 ]]; do sleep 0.05; done
t1=$(date +%s.%N)
echo
echo "Restart with $links links (RSS before the stop $((rss_kb / 1024)) MB): ready and redirecting in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"
