#!/usr/bin/env bash
# Two edge binaries (e.g. jemalloc, the default, and `--no-default-features`, the system's
# malloc) on the workload a PoP sees: a site larger than the memory tier (300 mixed files of
# 1 KiB-3 MiB plus 24 large ones of 4-12 MiB, about 230 MiB, with a 32 MiB memory tier),
# filled through a slow origin (chaos-origin, 50 ms + up to 20 ms per object), then served
# warm from memory and disk. Per binary: the cold pass (every file once, 16 connections),
# then a warm run (64 connections, uniform over all files); printed: MiB/s, req/s, p99,
# peak RSS (VmHWM) and RSS 10 s after the load ends. (Slow readers: edge/tests/slow_read.rs.)
#
#   scripts/bench-alloc.sh BIN_A BIN_B [SECONDS]
#
# Needs target/release/loadtest (built when missing). Binds 127.0.0.1 only; stops what it
# started by PID.
set -euo pipefail
A=${1:?BIN_A}
B=${2:?BIN_B}
SECS=${3:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOADTEST=${LOADTEST:-$ROOT/target/release/loadtest}
[ -x "$LOADTEST" ] || (cd "$ROOT" && cargo build --release -q -p loadtest)

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$LOADTEST" gen-site "$WORK/site" --files 300 --sizes mixed >/dev/null
mkdir -p "$WORK/site/large"
python3 - "$WORK/site/large" <<'EOF'
import os, random, sys
r = random.Random(7)
for i in range(24):
    n = r.randint(4, 12) << 20
    with open(os.path.join(sys.argv[1], f"big{i}.bin"), "wb") as f:
        f.write(r.randbytes(n))
EOF
"$A" publish "$WORK/site" --store "$WORK/store" --site bench --no-compress >/dev/null 2>&1
(cd "$WORK/site" && find . -type f | sed 's|^\.||' | sort) >"$WORK/paths"
echo "site: $(wc -l <"$WORK/paths") files, $(du -sm "$WORK/site" | cut -f1) MiB; memory tier 32 MiB"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }

# chaos-origin: the store over HTTP, 50-70 ms per object.
OPORT=$(free_port)
cat >"$WORK/rules.json" <<'EOF'
[{"path": "objects/", "action": {"type": "latency", "ms": 50, "jitter_ms": 20}}]
EOF
"$LOADTEST" chaos-origin --upstream "$WORK/store" --listen "127.0.0.1:$OPORT" --rules "$WORK/rules.json" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
sleep 1

summary() { grep -E "requests/s|MiB/s|p99|errors" "$1" | tr -s ' ' | paste -sd' ' -; }

run_one() {
  local bin=$1 name=$2 port cache pid
  port=$(free_port)
  cache="$WORK/cache-$name"
  rm -rf "$cache"
  cat >"$WORK/$name.toml" <<EOF
[cache]
dir = "$cache"
disk_size = "2GiB"
memory_size = "32MiB"
EOF
  "$bin" serve --store "http://127.0.0.1:$OPORT/" --listen "127.0.0.1:$port" --default-site bench \
    --config "$WORK/$name.toml" >"$WORK/$name.out" 2>"$WORK/$name.log" &
  pid=$!
  PIDS+=($pid)
  for _ in $(seq 50); do grep -q "http://" "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  local urls="$WORK/urls-$name"
  sed "s|^|http://127.0.0.1:$port|" "$WORK/paths" >"$urls"
  echo "== $name ($bin)"
  echo "  RSS at start: $(rss $pid VmRSS) KiB"
  "$LOADTEST" run "http://127.0.0.1:$port/" --urls "$urls" -c 16 --warmup 0s -d 60s \
    --max-requests "$(wc -l <"$WORK/paths")" >"$WORK/$name.cold" 2>&1 || true
  echo "  cold pass (slow origin): $(summary "$WORK/$name.cold")"
  "$LOADTEST" run "http://127.0.0.1:$port/" --urls "$urls" -c 64 --warmup 2s -d "${SECS}s" \
    >"$WORK/$name.warm" 2>&1 || true
  echo "  warm, 64 connections:    $(summary "$WORK/$name.warm")"
  echo "  peak RSS $(rss $pid VmHWM) KiB; now $(rss $pid VmRSS) KiB"
  sleep 10
  echo "  RSS 10 s after the load: $(rss $pid VmRSS) KiB"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

run_one "$A" a
run_one "$B" b
