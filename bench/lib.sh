# Shared by the bench scripts (sourced). Needs $work (a scratch directory) set.

# Installs a Debian package when its command is missing (needs root).
need() { command -v "$1" >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; }; }

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
LUA
}

# One wrk run of random codes: prints "req/s p50_ms p99_ms req_per_cpu_s non3xx".
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
print(f"{rps:.0f} {ms('50%'):.3f} {ms('99%'):.3f} {total / cpu if cpu else 0:.0f} {errors.group(1) if errors else 0}")
PY
}
