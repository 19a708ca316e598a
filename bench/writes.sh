#!/usr/bin/env bash
# Writes on three nodes: Linkrift creates against a three-member etcd cluster's puts of the
# same size at the same concurrency, in one run on this machine.
#
#   bench/writes.sh [REQUESTS] [CONCURRENCY] [RUNS]     defaults: 5000 50 3
#
# Linkrift: three release nodes on 127.0.0.1-3 (16 shards, each on all three), creates
# through node 1 (`hey -m POST /v1/links`, forwarded to each shard's leader, committed on
# a quorum with the log flushed). etcd (Debian's etcd-server, fsync on, as by default):
# three members on 127.0.0.1-3, puts through member 1's gRPC gateway (`hey -m POST
# /v3/kv/put`), a value as long as a created link's JSON. All servers share CPU 1; hey runs
# on CPU 0. Prints one table and the ratio; installs hey and etcd-server when missing;
# stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-5000}; concurrency=${2:-50}; runs=${3:-3}

work=$(mktemp -d /tmp/linkrift-writes.XXXXXX)
source bench/lib.sh
need hey hey
command -v etcd >/dev/null || need etcd etcd-server
trap stop_all EXIT
cargo build --release -q -p linkrift

export LINKRIFT_CLUSTER_SECRET=bench-cluster-secret-0123456789abcdef LINKRIFT_NODE_PLAINTEXT=true key=bench-admin-key-0123456789abcdefghij
export LINKRIFT_ADMIN_KEY=$key
start 1; start 2; start 3
wait_placed 120

cluster=""
for i in 1 2 3; do cluster+="e$i=http://127.0.0.$i:12380,"; done
for i in 1 2 3; do
  taskset -c 1 etcd --name "e$i" --data-dir "$work/e$i" \
    --listen-client-urls "http://127.0.0.$i:12379" --advertise-client-urls "http://127.0.0.$i:12379" \
    --listen-peer-urls "http://127.0.0.$i:12380" --initial-advertise-peer-urls "http://127.0.0.$i:12380" \
    --initial-cluster "${cluster%,}" --initial-cluster-state new --log-level error \
    >"$work/e$i.out" 2>&1 &
  echo $! >"$work/e$i.pid"
done
for _ in $(seq 300); do curl -sf http://127.0.0.1:12379/health | grep -q true && break; sleep 0.1; done
curl -sf http://127.0.0.1:12379/health | grep -q true || { echo "etcd did not become healthy" >&2; exit 1; }

# The same size of request body and stored value: a created link's JSON.
link_body='{"url":"https://example.com/some/fairly/typical/landing-page?utm_source=bench"}'
sample=$(curl -sf -X POST -H "Authorization: Bearer $key" -H 'content-type: application/json' \
  -d "$link_body" http://127.0.0.1:18080/v1/links)
value=$(printf '%s' "$sample" | base64 -w0)
printf '{"key":"%s","value":"%s"}' "$(printf 'bench-key' | base64 -w0)" "$value" >"$work/put.json"
printf '%s' "$link_body" >"$work/create.json"

echo "| what | requests/s | p50 ms | p99 ms | statuses | errors |"
echo "|---|---|---|---|---|---|"
declare -a lr et
for r in $(seq "$runs"); do
  row=$(hey_row "linkrift creates, run $r" -n "$requests" -c "$concurrency" -m POST -T application/json -H "Authorization: Bearer $key" \
    -D "$work/create.json" http://127.0.0.1:18080/v1/links); echo "$row"
  lr+=("$(cut -d'|' -f3 <<<"$row")")
  row=$(hey_row "etcd puts, run $r" -n "$requests" -c "$concurrency" -m POST -T application/json -D "$work/put.json" \
    http://127.0.0.1:12379/v3/kv/put); echo "$row"
  et+=("$(cut -d'|' -f3 <<<"$row")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
l=$(median "${lr[@]}"); e=$(median "${et[@]}")
echo
echo "Median writes/s: linkrift $l, etcd $e: linkrift/etcd $(awk -v a="$l" -v b="$e" 'BEGIN {printf "%.2f", a / b}') (target at least 1.0)"
