#!/usr/bin/env bash
# Membership benchmark: how long moving replicas takes, and what redirects see meanwhile.
#
#   bench/membership.sh [LINKS] [SLICE_SECONDS]     defaults: 1000000 5
#
# Three release nodes on 127.0.0.1-3 (16 shards, every shard on all three) get LINKS links
# through the bulk API. Then, under steady redirect load on node 1 (wrk -t1 -c64, random
# existing codes, in SLICE_SECONDS slices), a fourth node joins and takes its replicas (about
# three quarters of the shards), and afterwards node 2 leaves (its replicas move to the
# others). Each phase reports its duration from the command to the exact target placement
# (to the end of the first slice that finds it: SLICE_SECONDS resolution), the redirects
# answered and failed during it, and the worst slice's p99; one steady slice before, between
# and after gives the baseline of the same run.
# Servers pinned to CPU 1, wrk to CPU 0. Installs wrk (Debian) and the xxhash module (PyPI)
# when missing. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-1000000}; slice=${2:-5}

work=$(mktemp -d /tmp/linkrift-membership-bench.XXXXXX)
source bench/lib.sh
need wrk wrk
need_xxhash

cleanup() {
  for f in "$work"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p linkrift
export LINKRIFT_ADMIN_KEY=bench-admin-key-0123456789abcdefghij LINKRIFT_CLUSTER_SECRET=bench-cluster-secret-0123456789abcdef LINKRIFT_NODE_PLAINTEXT=true
key=$LINKRIFT_ADMIN_KEY

for i in 1 2 3; do start $i; done
wait_placed

load_started=$(date +%s)
python3 - "$links" "$key" "$work" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
n, key, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def bulk(start):
    body = {"links": [{"url": f"https://example.com/m/{i}"} for i in range(start, min(n, start + 1000))]}
    req = urllib.request.Request("http://127.0.0.1:18080/v1/links/bulk", json.dumps(body).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {key}"})
    results = json.load(urllib.request.urlopen(req, timeout=300))["results"]
    bad = [r for r in results if r["status"] != 201]
    assert not bad, bad[:3]
    return [r["link"]["code"] for r in results]
with ThreadPoolExecutor(4) as pool:
    codes = [c for chunk in pool.map(bulk, range(0, n, 1000)) for c in chunk]
open(f"{work}/codes", "w").write("\n".join(codes) + "\n")
PY
load_secs=$(( $(date +%s) - load_started ))
echo "loaded $links links in ${load_secs} s through the bulk API" >&2
write_random_lua

# Runs COMMAND, then wrk slices against node 1 until the placement is reached (at most 15
# minutes); prints "milliseconds requests failed worst_p99_ms". Failed counts non-3xx
# answers and socket errors.
during() { # COMMAND...
  local t0 requests=0 failed=0 worst=0 out
  t0=$(date +%s%N)
  "$@"
  while true; do
    out=$(CODES="$work/codes" taskset -c 0 wrk -t1 -c64 -d"${slice}s" --latency -s "$work/random.lua" \
      http://127.0.0.1:18080 2>&1)
    read -r r f p < <(python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
v, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()
p99 = float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
total = int(re.search(r"(\d+) requests in", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
print(total, failed, f"{p99:.3f}")
PY
)
    requests=$((requests + r)); failed=$((failed + f))
    worst=$(python3 -c "print(max(float('$worst'), float('$p')))")
    placed && break
    (( $(date +%s%N) - t0 < 900000000000 )) || { echo "placement not reached in 15 min" >&2; exit 1; }
  done
  echo "$(( ($(date +%s%N) - t0) / 1000000 )) $requests $failed $worst"
}

join_node4() { start 4; }
leave_node2() {
  curl -sf -X POST -H "Authorization: Bearer $key" http://127.0.0.1:18080/admin/nodes/2/leave >/dev/null
}

row() { # LABEL MS REQUESTS FAILED P99 (MS empty: a steady slice, no placement change)
  local took="-"; [[ -n $2 ]] && took=$(awk "BEGIN {printf \"%.1f s\", $2 / 1000}")
  echo "| $1 | $took | $3 | $4 | $5 |"
}
rows=()
read -r _ r f p < <(during true); rows+=("$(row "steady, 3 nodes (baseline)" "" "$r" "$f" "$p")")
read -r ms r f p < <(during join_node4)
replicas4=$(status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(next(n["replicas"] for n in s["nodes"] if n["id"] == 4))')
rows+=("$(row "node 4 joins and takes $replicas4 replicas" "$ms" "$r" "$f" "$p")")
read -r _ r f p < <(during true); rows+=("$(row "steady, 4 nodes" "" "$r" "$f" "$p")")
read -r ms r f p < <(during leave_node2); rows+=("$(row "node 2 leaves (its replicas move)" "$ms" "$r" "$f" "$p")")
# Node 2 stops by itself once it has left.
for _ in $(seq 300); do kill -0 "$(cat "$work/n2.pid")" 2>/dev/null || break; sleep 0.1; done
read -r _ r f p < <(during true); rows+=("$(row "steady, 3 nodes again" "" "$r" "$f" "$p")")

echo
echo "$links links, 16 shards, replication factor 3; redirects on node 1: wrk -t1 -c64, ${slice} s slices"
echo
echo "| phase | time to target placement | redirects during it | failed | worst slice p99 ms |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
