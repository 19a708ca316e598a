# Shared by the bench scripts (sourced). Needs $work (a scratch directory) set.

# Benchmarks measure the service, not its rate limits (docs/OPERATIONS.md): off for every
# node the scripts start.
export LINKRIFT_API_RATE_PER_KEY=0 LINKRIFT_API_RATE_PER_IP=0

# Installs a Debian package when its command is missing (needs root).
need() { command -v "$1" >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }; }
# The xxhash module for the placement arithmetic: from PyPI with the machine's pip, or
# Debian's python3-xxhash where pip may not install (a system Python, PEP 668).
need_xxhash() {
  python3 -c 'import xxhash' 2>/dev/null && return 0
  python3 -m pip install -q xxhash >/dev/null 2>&1 || need_package python3-xxhash
  python3 -c 'import xxhash'
}
need_package() { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null; }

# CPU ticks (user + system) a process has used; ticks per second is $hz.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# A wrk script requesting random paths "/<code>" from the file named by $CODES.
write_random_lua() {
  cat > "$work/random.lua" <<'LUA'
local codes = {}
for line in io.lines(os.getenv("CODES")) do codes[#codes + 1] = "/" .. line end
math.randomseed(os.time())
request = function() return wrk.format("GET", codes[math.random(#codes)]) end
done = function(summary, latency, requests) io.write(string.format("P999_US %d\n", latency:percentile(99.9))) end
LUA
}

# One wrk run of random codes: prints "req/s p50_ms p99_ms req_per_cpu_s non3xx p999_ms"
# (p99.9 from the Lua script's `done` hook, "-" when the script has none).
# CPU_TICKS_CMD is a command printing the server's CPU ticks (run before and after).
wrk_run() { # CODES_FILE URL CONNECTIONS SECONDS CPU_TICKS_CMD...
  local codes=$1 url=$2 conns=$3 secs=$4; shift 4
  local before after out
  before=$("$@")
  out=$(CODES="$codes" taskset -c 0 wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/random.lua" "$url" 2>&1)
  after=$("$@")
  python3 - "$out" "$before" "$after" "$hz" <<'PY'
import re, sys
out, before, after, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def ms(label):
    v, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
total = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
cpu = (after - before) / hz
p999 = re.search(r"P999_US (\d+)", out)
p999 = f"{int(p999.group(1)) / 1000:.3f}" if p999 else "-"
print(f"{rps:.0f} {ms('50%'):.3f} {ms('99%'):.3f} {total / cpu if cpu else 0:.0f} {errors.group(1) if errors else 0} {p999}")
PY
}

# Cluster nodes: node I listens on 127.0.0.I (HTTP 18080, peer 18000, cluster 18100),
# pinned to CPU 1, 16 shards, data and output in $work. Needs $key (the admin key, also
# exported as LINKRIFT_ADMIN_KEY) and LINKRIFT_CLUSTER_SECRET; extra flags for every node
# in the array node_flags.
node_flags=()
start() { # I [extra flags...]: node I, joining node 1 unless I is 1; waits until ready
  local i=$1; shift
  local join=(); [[ $i != 1 ]] && join=(--join 127.0.0.1:18100)
  taskset -c 1 target/release/linkrift serve --data-dir "$work/n$i" --http "127.0.0.$i:18080" \
    --peer "127.0.0.$i:18000" --cluster "127.0.0.$i:18100" --shard-count 16 --log warn \
    "${node_flags[@]}" "${join[@]}" "$@" >"$work/n$i.out" 2>&1 &
  echo $! >"$work/n$i.pid"
  for _ in $(seq 600); do curl -sf "http://127.0.0.$i:18080/readyz" >/dev/null && return 0; sleep 0.1; done
  echo "node $i did not become ready" >&2; exit 1
}
status() { curl -sf -H "Authorization: Bearer $key" http://127.0.0.1:18080/admin/status; }
# Whether every shard's voters are exactly its rendezvous replicas over the active nodes
# (as actors/src/placement.rs computes them), with a leader and no learner or joint change.
placed() {
  need_xxhash
  status | python3 -c '
import json, sys, xxhash
s = json.load(sys.stdin)
active = [n["id"] for n in s["nodes"] if n["state"] == "active"]
rf = min(3, len(active))
def replicas(shard):
    w = lambda n: xxhash.xxh3_64_intdigest(shard.to_bytes(4, "big") + n.to_bytes(8, "big"))
    return sorted(sorted(active, key=lambda n: (w(n), n), reverse=True)[:rf])
ok = not s["moves"] and all(
    g["leader"] is not None and not g["learners"] and sorted(g["voters"]) == replicas(g["group"] - 1)
    for g in s["groups"][1:])
sys.exit(0 if ok else 1)'
}
wait_placed() { # [SECONDS, default 120]
  local deadline=$(( $(date +%s) + ${1:-120} ))
  until placed; do
    (( $(date +%s) < deadline )) || { echo "placement did not converge" >&2; exit 1; }
    sleep 0.2
  done
}

# Stops every process whose PID is in $work/*.pid and removes $work: `trap stop_all EXIT`.
stop_all() {
  for f in "$work"/*.pid; do [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$work"
}

# One node on 127.0.0.1:PORT pinned to CPU 1, its data in $work/node (kept across
# restarts), with the admin key $key and any extra flags; waits until it is ready.
start_single() { # PORT [flags...]
  local port=$1; shift
  LINKRIFT_ADMIN_KEY=$key taskset -c 1 target/release/linkrift serve --data-dir "$work/node" \
    --http "127.0.0.1:$port" --log warn "$@" >>"$work/node.out" 2>&1 &
  echo $! >"$work/node.pid"
  for _ in $(seq 6000); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0; sleep 0.05; done
  echo "linkrift did not become ready" >&2; exit 1
}
# Stops it (SIGTERM) and waits until it has exited.
stop_single() {
  local pid; pid=$(cat "$work/node.pid")
  kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$work/node.pid"
}

# Creates N links through the bulk API; writes their codes, one per line, to FILE.
load_links() { # PORT N FILE
  python3 - "$1" "$2" "$3" "$key" <<'PY'
import json, sys, urllib.request
port, n, out, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
codes = []
for start in range(0, n, 1000):
    body = json.dumps({"links": [{"url": f"https://example.com/{i}"} for i in range(start, min(n, start + 1000))]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/links/bulk", body,
                                 {"content-type": "application/json", "authorization": f"Bearer {key}"})
    for item in json.load(urllib.request.urlopen(req, timeout=120))["results"]:
        assert item["status"] == 201, item
        codes.append(item["link"]["code"])
with open(out, "w") as f:
    f.write("\n".join(codes) + "\n")
PY
}

# One hey run on CPU 0, as a table row: "| NAME | req/s | p50 ms | p99 ms | statuses | errors |".
hey_row() { # NAME hey-args...
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
