#!/usr/bin/env bash
# Cluster benchmark: creates on three nodes; redirects on a node holding the shard's
# replica and on one that does not (near-cache hits, and misses), beside the nginx
# static-redirect baseline in the same run; how long a node goes on redirecting a link
# deleted through another; and the time from killing a shard leader to the first
# successful write to that shard.
#
#   bench/cluster.sh [LINKS] [SECONDS] [KILLS]     defaults: 20000 10 10
#
# Release nodes on 127.0.0.1-3, then a fourth on 127.0.0.4 (every shard on 3 of the 4),
# servers pinned to CPU 1, wrk/hey to CPU 0. "requests per server CPU-second" counts the
# CPU of the node hit; for near-cache misses it also counts the node asked (the cluster's
# CPU). Installs wrk, hey, nginx (Debian) and the xxhash module (PyPI) when missing.
# Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-20000}; seconds=${2:-10}; kills=${3:-10}
baseline_script=${NGINX_BASELINE:-../shared/bench/nginx-baseline.sh}
ng_port=18191

work=$(mktemp -d /tmp/linkrift-cluster-bench.XXXXXX)
source bench/lib.sh
need wrk wrk; need hey hey; need nginx nginx
need_xxhash

cleanup() {
  for f in "$work"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
cargo build --release -q -p linkrift
node_flags=(--near-cache-ttl-ms 600000)
export LINKRIFT_ADMIN_KEY=bench-admin-key-0123456789abcdefghij LINKRIFT_CLUSTER_SECRET=bench-cluster-secret-0123456789abcdef LINKRIFT_NODE_PLAINTEXT=true
key=$LINKRIFT_ADMIN_KEY

for i in 1 2 3; do start $i; done
wait_placed

# Creates on three nodes (every shard on all three), through node 1.
hey_out=$(taskset -c 0 hey -n 5000 -c 50 -m POST -T application/json -H "Authorization: Bearer $key" \
  -d '{"url": "https://example.com/created"}' "http://127.0.0.1:18080/v1/links")
creates="Creates on 3 nodes through node 1, hey -n 5000 -c 50: $(grep -E 'Requests/sec' <<<"$hey_out" | xargs), \
p50 $(grep -E '50% in' <<<"$hey_out" | awk '{print $3*1000 " ms"}'), \
p99 $(grep -E '99% in' <<<"$hey_out" | awk '{print $3*1000 " ms"}'), \
statuses: $(grep -A3 'Status code distribution' <<<"$hey_out" | grep -o '\[[0-9]*\][^[]*' | xargs)"

start 4
wait_placed

# Links through the bulk API; then split their codes by whether node 4 holds their shard.
python3 - "$links" "$key" "$work" <<'PY'
import json, sys, urllib.request, xxhash
n, key, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def call(path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:18080{path}", body and json.dumps(body).encode(),
        {"content-type": "application/json", "authorization": f"Bearer {key}"})
    return json.load(urllib.request.urlopen(req))
codes = []
for start in range(0, n, 1000):
    res = call("/v1/links/bulk", {"links": [{"url": f"https://example.com/{i}"} for i in range(start, min(n, start + 1000))]})
    codes += [r["link"]["code"] for r in res["results"]]
def jump(key, buckets):
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b
status = call("/admin/status")
four = next(x["id"] for x in status["nodes"] if x["http"].startswith("127.0.0.4:"))
held = {g["group"] - 1 for g in status["groups"][1:] if four in g["voters"]}
local = [c for c in codes if jump(xxhash.xxh3_64_intdigest(c.encode()), status["shard_count"]) in held]
remote = [c for c in codes if c not in set(local)]
open(f"{work}/local", "w").write("\n".join(local) + "\n")
open(f"{work}/remote", "w").write("\n".join(remote) + "\n")
print(f"{len(codes)} links; node 4 holds {len(held)} of {status['shard_count']} shards: {len(local)} local codes, {len(remote)} remote", file=sys.stderr)
PY

cluster_ticks() { local t=0; for i in 1 2 3 4; do t=$((t + $(cpu_ticks "$(cat "$work/n$i.pid")"))); done; echo $t; }
write_random_lua
# One wrk run as a table row: LABEL CODES URL CONNECTIONS PID|cluster. CPU: of PID, or of
# every node ("cluster"). Sets $percpu; the ratio is to $base (nginx's, same connections).
row() {
  local ticks=(cpu_ticks "$5"); [[ $5 == cluster ]] && ticks=(cluster_ticks)
  local rps p50 p99 non3xx p999
  read -r rps p50 p99 percpu non3xx p999 < <(wrk_run "$2" "$3" "$4" "$seconds" "${ticks[@]}")
  local ratio; ratio=$(awk -v a="$percpu" -v b="${base:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "1.00" }')
  echo "| $1 | $4 | $rps | $p50 | $p99 | $p999 | $percpu | $ratio | $non3xx |"
}

ng_pid=$("$baseline_script" start $ng_port 1); echo "$ng_pid" >"$work/nginx.pid"
ng_worker=$(pgrep -P "$ng_pid" | head -1); ng_worker=${ng_worker:-$ng_pid}
n4=$(cat "$work/n4.pid")
# Warm node 4's near cache with every remote code once.
CODES="$work/remote" taskset -c 0 wrk -t1 -c16 -d3s -s "$work/random.lua" http://127.0.0.4:18080 >/dev/null
echo "| what | connections | requests/s | p50 ms | p99 ms | p99.9 ms | requests per server CPU-second | × nginx | non-3xx |"
echo "|---|---|---|---|---|---|---|---|---|"
for conns in 64 256; do
  base=
  row "nginx static 302" "$work/local" "http://127.0.0.1:$ng_port" "$conns" "$ng_worker"
  base=$percpu; [[ $conns == 64 ]] && base64=$percpu
  row "node 4, codes it holds (replica)" "$work/local" http://127.0.0.4:18080 "$conns" "$n4"
  row "node 4, codes held elsewhere (near-cache hits)" "$work/remote" http://127.0.0.4:18080 "$conns" "$n4"
done
# Staleness: delete through node 1 a link node 4 has just redirected, and time until node 4
# answers 404 (its near-cache TTL is 600 s here, so only the invalidation or, on a
# follower replica, the replicated delete can do it).
stale=$(python3 - "$key" "$work" <<'PY'
import sys, time, urllib.request, urllib.error
key, work = sys.argv[1], sys.argv[2]
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a): return None
http = urllib.request.build_opener(NoRedirect)
def status(url, method="GET"):
    req = urllib.request.Request(url, method=method, headers={"authorization": f"Bearer {key}"})
    try: return http.open(req).status
    except urllib.error.HTTPError as e: return e.code
out = []
for kind in ("remote", "local"):
    codes = open(f"{work}/{kind}").read().split()[-30:]
    ms = []
    for c in codes:
        assert status(f"http://127.0.0.4:18080/{c}") == 302, c
        assert status(f"http://127.0.0.1:18080/v1/links/{c}", "DELETE") == 204, c
        t0 = time.monotonic()
        while status(f"http://127.0.0.4:18080/{c}") != 404:
            assert time.monotonic() - t0 < 10, f"{c} still served 10 s after its delete"
        ms.append((time.monotonic() - t0) * 1000)
    ms.sort()
    name = "near cache (non-replica)" if kind == "remote" else "replica"
    out.append(f"{name}: median {ms[len(ms)//2]:.1f} ms, worst {ms[-1]:.1f} ms over {len(ms)} deletes")
print("; ".join(out))
PY
)
# Those codes are gone now; keep them out of the miss run.
head -n -30 "$work/remote" >"$work/remote.kept" && mv "$work/remote.kept" "$work/remote"

# Misses: restart node 4 with a near cache too small to hold anything useful.
kill "$n4"; wait "$n4" 2>/dev/null || true
LINKRIFT_NEAR_CACHE_CAPACITY=1 start 4
base=$base64
row "node 4, codes held elsewhere (near-cache misses; cluster CPU)" "$work/remote" http://127.0.0.4:18080 64 cluster

echo
echo "$creates"

echo
echo "Delete on node 1 until node 4 answers 404: $stale"

# Failover: kill the leader of the first shard not led by node 1 (which the script talks
# to), time the first successful write to that shard through node 1 (each attempt a new
# request as soon as the last one answered), restart the victim, repeat.
times=()
for k in $(seq "$kills"); do
  read -r victim code < <(status | python3 -c '
import json, sys, xxhash
s = json.load(sys.stdin)
def jump(key, buckets):
    b, j = -1, 0
    while j < buckets:
        b = j; key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b
shards = [g for g in s["groups"][1:] if g["leader"] and next(n for n in s["nodes"] if n["id"] == g["leader"])["http"].split(":")[0] != "127.0.0.1"]
g = shards[0]
ip = next(n for n in s["nodes"] if n["id"] == g["leader"])["http"].split(":")[0]
code = next(c for c in (f"fo{'$k'}x{i}" for i in range(10**6)) if jump(xxhash.xxh3_64_intdigest(c.encode()), s["shard_count"]) == g["group"] - 1)
print(ip.split(".")[-1], code)')
  vpid=$(cat "$work/n$victim.pid"); t0=$(date +%s%N); { kill -9 "$vpid" && wait "$vpid"; } 2>/dev/null || true
  tries=1
  until [[ $(curl -s -o /dev/null -w "%{http_code}" -X POST http://127.0.0.1:18080/v1/links -H "Authorization: Bearer $key" \
      -H 'content-type: application/json' -d "{\"url\":\"https://example.com/$code\",\"code\":\"$code\"}") == 201 ]]; do
    (( $(date +%s%N) - t0 < 60000000000 )) || { echo "no successful write 60 s after kill $k" >&2; exit 1; }
    tries=$((tries + 1))
  done
  times+=($(( ($(date +%s%N) - t0) / 1000000 )))
  echo "kill $k: node $victim, first write after ${times[-1]} ms, attempt $tries" >&2
  start "$victim"; wait_placed
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "\nLeader kill to first successful write, %d kills: median %d ms, worst %d ms\n", NR, a[int((NR+1)/2)], a[NR]}'
