#!/usr/bin/env bash
# Postgres mirror benchmark: how many rows per second the mirror writes when it catches up,
# and how far it lags under steady writes.
#
#   bench/mirror.sh [LINKS] [SECONDS] [RATE]     defaults: 200000 30 1000
#
# A throwaway PostgreSQL (initdb in a temporary directory, loopback port, fsync on) and
# three release nodes on 127.0.0.1-3 (16 shards, every shard on all three) mirroring to it;
# nodes and Postgres share CPU 1, the load generators run on CPU 0.
# 1. Catch-up: Postgres stopped, LINKS links created through the bulk API, Postgres started:
#    time until every shard's watermark is at its log (mirror lag 0), and rows per second.
# 2. Steady: creates at RATE per second for SECONDS (hey), through node 1, while the
#    mirror's lag (log entries behind, from /admin/status) is sampled every 100 ms, and 200
#    of the creates are timed from their 201 to their row being visible in Postgres.
# Installs hey and PostgreSQL (Debian) when missing. Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-200000}; seconds=${2:-30}; rate=${3:-1000}
pg_port=18432

work=$(mktemp -d /tmp/linkrift-mirror-bench.XXXXXX)
chmod 755 "$work"
source bench/lib.sh
need hey hey
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need psql postgresql
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_ctl() { as_pg "$pg_bin/pg_ctl" -D "$work/pg" "$@" >/dev/null; }
psql_q() { "$pg_bin/psql" -h 127.0.0.1 -p $pg_port -U linkrift -d postgres -tAc "$1"; }

cleanup() {
  for f in "$work"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  pg_ctl -m immediate stop 2>/dev/null || true
  [[ -n ${BENCH_KEEP:-} ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p linkrift
export LINKRIFT_ADMIN_KEY=bench-admin-key-0123456789abcdefghij LINKRIFT_CLUSTER_SECRET=bench-cluster-secret-0123456789abcdef LINKRIFT_NODE_PLAINTEXT=true
key=$LINKRIFT_ADMIN_KEY

mkdir "$work/pg"; [[ $(id -u) == 0 ]] && chown postgres: "$work/pg"
as_pg "$pg_bin/initdb" -D "$work/pg" -U linkrift --auth=trust -E UTF8 >/dev/null
pg_start() { pg_ctl -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" -l "$work/pg/log" -w start; }
pg_start
pg_pid=$(head -1 "$work/pg/postmaster.pid"); taskset -apc 1 "$pg_pid" >/dev/null

node_flags=(--postgres-url "postgres://linkrift@127.0.0.1:$pg_port/postgres")
for i in 1 2 3; do start $i; done
wait_placed
lag() { status | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["mirror_lag"] if s["mirror_lag"] is not None else -1)'; }
wait_caught_up() { # prints the milliseconds it took
  local t0; t0=$(date +%s%N)
  until [[ $(lag) == 0 ]]; do
    (( $(date +%s%N) - t0 < 900000000000 )) || { echo "mirror not caught up in 15 min" >&2; exit 1; }
    sleep 0.05
  done
  echo $(( ($(date +%s%N) - t0) / 1000000 ))
}
wait_caught_up >/dev/null

# 1. Catch-up.
pg_ctl -m fast -w stop
python3 - "$links" "$key" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
n, key = int(sys.argv[1]), sys.argv[2]
def bulk(start):
    body = {"links": [{"url": f"https://example.com/mirror/{i}"} for i in range(start, min(n, start + 1000))]}
    req = urllib.request.Request("http://127.0.0.1:18080/v1/links/bulk", json.dumps(body).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {key}"})
    assert all(r["status"] == 201 for r in json.load(urllib.request.urlopen(req, timeout=300))["results"])
with ThreadPoolExecutor(4) as pool:
    list(pool.map(bulk, range(0, n, 1000)))
PY
behind=$(lag)
pg_start
pg_pid=$(head -1 "$work/pg/postmaster.pid"); taskset -apc 1 "$pg_pid" >/dev/null
catchup_ms=$(wait_caught_up)
rows=$(psql_q "SELECT count(*) FROM links")

# 2. Steady writes at RATE per second, sampling the lag.
( while true; do echo "$(lag 2>/dev/null)"; sleep 0.1; done ) >"$work/lag" 2>/dev/null & echo $! >"$work/sampler.pid"
workers=20
taskset -c 0 hey -z "${seconds}s" -c $workers -q $((rate / workers)) -m POST -T application/json \
  -H "Authorization: Bearer $key" -d '{"url": "https://example.com/steady"}' \
  http://127.0.0.1:18080/v1/links >"$work/hey" &
hey_pid=$!
sleep 2
visible=$(python3 - "$key" "$pg_bin" "$pg_port" <<'PY'
import json, subprocess, sys, time, urllib.request
key, pg_bin, port = sys.argv[1], sys.argv[2], sys.argv[3]
def psql(q):
    return subprocess.run([f"{pg_bin}/psql", "-h", "127.0.0.1", "-p", port, "-U", "linkrift", "-d", "postgres",
                           "-tAc", q], capture_output=True, text=True, check=True).stdout.strip()
ms = []
for i in range(200):
    req = urllib.request.Request("http://127.0.0.1:18080/v1/links", json.dumps({"url": f"https://example.com/timed/{i}"}).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {key}"})
    code = json.load(urllib.request.urlopen(req))["code"]
    t0 = time.monotonic()
    while psql(f"SELECT count(*) FROM links WHERE code = '{code}'") != "1":
        assert time.monotonic() - t0 < 30, f"{code} not mirrored in 30 s"
    ms.append((time.monotonic() - t0) * 1000)
    time.sleep(0.05)
ms.sort()
print(f"create acknowledged to row visible, {len(ms)} creates: p50 {ms[len(ms)//2]:.0f} ms, p99 {ms[int(len(ms)*0.99)-1]:.0f} ms, max {ms[-1]:.0f} ms (polling with psql, about 10 ms a poll)")
PY
)
wait $hey_pid
kill "$(cat "$work/sampler.pid")" 2>/dev/null || true; rm -f "$work/sampler.pid"
steady=$(python3 - "$work/lag" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]).read().split() if x.strip() and int(x) >= 0)
print(f"mirror lag over {len(v)} samples: p50 {v[len(v)//2]}, p99 {v[int(len(v)*0.99)-1]}, max {v[-1]} log entries")
PY
)
done_rate=$(grep -E 'Requests/sec' "$work/hey" | awk '{print $2}')
statuses=$(grep -A3 'Status code distribution' "$work/hey" | grep -o '\[[0-9]*\][^[]*' | xargs)

echo
echo "Catch-up: $links links created with Postgres down ($behind log entries behind); Postgres back: caught up in $(awk "BEGIN {printf \"%.1f\", $catchup_ms / 1000}") s, $rows rows in links, $(awk "BEGIN {printf \"%.0f\", $links * 1000 / $catchup_ms}") rows/s"
echo "Steady: creates at ${rate}/s asked, ${done_rate}/s done for ${seconds} s (statuses: $statuses); $steady"
echo "Steady: $visible"
