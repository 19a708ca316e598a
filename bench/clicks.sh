#!/usr/bin/env bash
# What counting clicks costs a redirect, and how fast ClickHouse takes them: one node, the
# same links, with click capture on and off in turns, in one run.
#
#   bench/clicks.sh [LINKS] [SECONDS] [RUNS] [STORE]   defaults: 100000 10 3 embedded
#
# STORE is `embedded` (roll-ups in the node's own database) or `clickhouse` (a throwaway
# clickhouse-server on loopback, started and stopped here).
#
# A release node on 127.0.0.1 pinned to CPU 1, wrk -t1 -c64 on CPU 0 (random existing
# codes, a browser user agent); the node restarts between turns on the same data. Reports
# requests per server CPU-second and p99 for each turn, and the ratio on/off of the
# medians (target: at least 0.9). With ClickHouse it then measures ingest: ClickHouse is
# stopped while wrk runs SECONDS, and started again; the spooled clicks are timed until
# they are all in ClickHouse (events/s). (That every click is counted is shown by
# node/tests/clicks.rs and node/tests/clickhouse.rs.) Installs wrk (Debian) when missing.
# Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${1:-100000}; seconds=${2:-10}; runs=${3:-3}; store=${4:-embedded}
port=18095; ch_port=18096
case $store in embedded|clickhouse) ;; *) echo "STORE must be embedded or clickhouse" >&2; exit 2;; esac

work=$(mktemp -d /tmp/linkrift-clicks-bench.XXXXXX)
source bench/lib.sh
need wrk wrk
trap stop_all EXIT
cargo build --release -q -p linkrift
key=bench-admin-key-0123456789abcdefghij

ch_flags=()
start_clickhouse() {
  mkdir -p "$work/ch"
  cat >"$work/ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$work/ch/server.log</log><errorlog>$work/ch/server.err.log</errorlog><size>100M</size><count>1</count></logger>
  <http_port>$ch_port</http_port><tcp_port>$((ch_port + 1))</tcp_port><listen_host>127.0.0.1</listen_host>
  <path>$work/ch/data/</path><tmp_path>$work/ch/tmp/</tmp_path><user_files_path>$work/ch/user_files/</user_files_path>
  <format_schema_path>$work/ch/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size><uncompressed_cache_size>268435456</uncompressed_cache_size>
  <users_config>$work/ch/users.xml</users_config><default_profile>default</default_profile><default_database>default</default_database>
  <timezone>UTC</timezone><mlock_executable>false</mlock_executable>
</yandex>
XML
  cat >"$work/ch/users.xml" <<'XML'
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  clickhouse-server --config-file="$work/ch/config.xml" >>"$work/ch/stdout.log" 2>&1 &
  echo $! >"$work/ch.pid"
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$ch_port/ping" >/dev/null && return 0; sleep 0.1; done
  echo "clickhouse-server did not start" >&2; exit 1
}
stop_clickhouse() {
  kill "$(cat "$work/ch.pid")"; while kill -0 "$(cat "$work/ch.pid")" 2>/dev/null; do sleep 0.1; done
  rm -f "$work/ch.pid"
}
ch_count() { curl -sf "http://127.0.0.1:$ch_port/" --data-binary "SELECT count() FROM linkrift.clicks" || echo 0; }
if [[ $store == clickhouse ]]; then
  need clickhouse-server clickhouse-server
  start_clickhouse
  ch_flags=(--clickhouse-url "http://127.0.0.1:$ch_port")
fi

start_node() { LINKRIFT_CLICK_CAPTURE=$1 start_single "$port" "${ch_flags[@]}"; } # CAPTURE(true|false)

start_node true
load_links "$port" "$links" "$work/codes"
stop_single
cat > "$work/random.lua" <<'LUA'
local codes = {}
for line in io.lines(os.getenv("CODES")) do codes[#codes + 1] = "/" .. line end
math.randomseed(os.time())
wrk.headers["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
request = function() return wrk.format("GET", codes[math.random(#codes)]) end
LUA

node_ticks() { cpu_ticks "$(cat "$work/node.pid")"; }
declare -A per_cpu
echo "Store: $store"
echo
echo "| turn | capture | requests/s | p50 ms | p99 ms | requests per server CPU-second | non-3xx |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$runs"); do
  for capture in true false; do
    start_node $capture
    row=$(wrk_run "$work/codes" "http://127.0.0.1:$port" 64 "$seconds" node_ticks)
    read -r rps p50 p99 percpu non3xx _ <<<"$row"
    echo "| $r | $capture | $rps | $p50 | $p99 | $percpu | $non3xx |"
    per_cpu[$capture]+="$percpu "
    stop_single
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
on=$(median <<<"${per_cpu[true]}"); off=$(median <<<"${per_cpu[false]}")
echo
echo "Median requests per server CPU-second: capture on $on, off $off: on/off $(awk "BEGIN {printf \"%.2f\", $on / $off}") (target at least 0.9)"

if [[ $store == clickhouse ]]; then
  metric() { curl -sf "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
  start_node true
  stop_clickhouse
  wrk_run "$work/codes" "http://127.0.0.1:$port" 64 "$seconds" node_ticks >/dev/null
  spooled=$(metric clicks_spooled)
  start_clickhouse
  # Timed from the first batch ClickHouse takes (the shipper may be in its back-off).
  first=$(metric clicks_ingested_total); first=${first:-0}
  while [[ $(metric clicks_ingested_total) == "$first" ]]; do sleep 0.01; done
  t0=$(date +%s.%N); from=$(metric clicks_ingested_total)
  while [[ $(metric clicks_spooled) != 0 ]]; do sleep 0.01; done
  t1=$(date +%s.%N); to=$(metric clicks_ingested_total)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
  rate=$(awk -v n="$((to - from))" -v a="$t0" -v b="$t1" 'BEGIN {printf "%d", n / (b - a)}')
  echo
  echo "ClickHouse ingest: $spooled clicks spooled while ClickHouse was down; $((to - from)) inserted in $secs s from the first batch: $rate events/s. Rows in ClickHouse: $(ch_count)"
  stop_single
fi
